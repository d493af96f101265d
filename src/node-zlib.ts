// node:zlib, loaded when first needed. Loading it takes 1.5 to 3 ms, which
// a pCPU worker paid before it could take its first VM, though it needs it
// only for the compressed page pool and for its CRCs (snapshot/crc32.ts
// says when).

import { createRequire } from "node:module";

let zlib: typeof import("node:zlib") | undefined;

export function nodeZlib(): typeof import("node:zlib") {
  return (zlib ??= createRequire(import.meta.url)("node:zlib") as typeof import("node:zlib"));
}
