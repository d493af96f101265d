// CRC-32 (IEEE 802.3, the zlib/PNG polynomial 0xEDB88320, reflected): the
// checksum of every snapshot section and of every page of guest memory in
// it. zlib's own (node:zlib crc32, from Node 20.15 and 22.2) when the Node
// running has it: 0.9 us a page against 3.9 us for the table below, which
// older Node 20 releases use. node:zlib is loaded only once the table has
// checked ZLIB_AFTER_BYTES, or for a buffer of ZLIB_AT_ONCE_BYTES: loading
// it costs what the table takes for about 500 pages, and a pCPU worker
// would pay that before the first page fault of a fast start.

import { nodeZlib } from "../lazy-builtins.js";

type NativeCrc = (data: Uint8Array, value?: number) => number;

const ZLIB_AFTER_BYTES = 2 << 20;
const ZLIB_AT_ONCE_BYTES = 64 << 10;
/** zlib's crc32; null where this Node has none; undefined until loaded. */
let native: NativeCrc | null | undefined;
let tableBytes = 0;

const TABLE = (() => {
  const t = new Int32Array(256 * 4);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  // Slicing-by-4 tables: four bytes per step.
  for (let n = 0; n < 256; n++) {
    for (let s = 1; s < 4; s++) t[s * 256 + n] = TABLE_STEP(t, t[(s - 1) * 256 + n]);
  }
  return t;
})();

function TABLE_STEP(t: Int32Array, c: number): number {
  return t[c & 0xff] ^ (c >>> 8);
}

/** CRC-32 of `data`, continuing from `crc` (0 to start). */
export function crc32(data: Uint8Array, crc = 0): number {
  if (native === undefined && (data.length >= ZLIB_AT_ONCE_BYTES || tableBytes >= ZLIB_AFTER_BYTES)) {
    native = (nodeZlib() as { crc32?: NativeCrc }).crc32 ?? null;
  }
  if (native) return native(data, crc);
  tableBytes += data.length;
  return crc32Table(data, crc);
}

/** The same, computed here (exported for the test that holds it to zlib's). */
export function crc32Table(data: Uint8Array, crc = 0): number {
  let c = ~crc;
  let i = 0;
  const n = data.length;
  const t = TABLE;
  for (; i + 4 <= n; i += 4) {
    c ^= data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24);
    c = t[768 + (c & 0xff)] ^ t[512 + ((c >>> 8) & 0xff)] ^ t[256 + ((c >>> 16) & 0xff)] ^ t[c >>> 24];
  }
  for (; i < n; i++) c = t[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}
