// Node's modules that tsvisor loads when first needed rather than at import,
// where loading them showed on the way of every start (`run -- CMD`'s fast
// start most of all):
// - node:net, node:dgram, node:dns: the user-mode network's host sockets. A
//   fast start has a user-mode card (a command's default) and its guest
//   mostly sends nothing; the three took about 4 ms of its start.
// - node:zlib: the compressed page pool and the CRCs of snapshot pages
//   (snapshot/crc32.ts says when). Loading it took 1.5 to 3 ms of a pCPU
//   worker's start, before it could take its first VM.

import { createRequire } from "node:module";

const load = createRequire(import.meta.url);

/** A getter of the Node module `name`, which loads it on its first call. */
function lazy<T>(name: string): () => T {
  let module: T | undefined;
  return () => (module ??= load(name) as T);
}

export const nodeNet = lazy<typeof import("node:net")>("node:net");
export const nodeDgram = lazy<typeof import("node:dgram")>("node:dgram");
export const nodeDns = lazy<typeof import("node:dns")>("node:dns");
export const nodeZlib = lazy<typeof import("node:zlib")>("node:zlib");
