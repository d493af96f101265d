// The codec for cold pages: how the memory manager tells a zero page from one
// worth compressing, and what it keeps of the compressible ones.
//
// Like ESXi's memory compression, a page is kept compressed only when it
// shrinks to at most half (MAX_COMPRESSED); otherwise compressing it saves too
// little to pay for the CPU, and the caller swaps it out raw. Zero pages need
// no storage at all: the caller drops them and maps a fresh frame back.
//
// The codec is raw DEFLATE (RFC 1951) at level 1 from node:zlib: part of the
// platform, so no dependency, native code, and at Z_BEST_SPEED fast enough for
// a page at a time (measured: 18 us to deflate a text page, 28 us to give up
// on a random one, 6 us to inflate; mostly the cost of a sync zlib call). Raw, because the zlib/gzip wrappers'
// headers and checksums would cost bytes on every page; the store keeps each
// object's exact length, and decompressPage() checks the output's length.
//
// node:zlib reads and writes views on a SharedArrayBuffer (a WebAssembly
// shared memory's frames) directly. The caller must keep the page still while
// it is compressed (unmapped or read-only in every vCPU's p2m): a page changing
// under the compressor gives a consistent but unspecified result.

import { nodeZlib } from "../../lazy-builtins.js";
import { PAGE_SIZE } from "../address.js";
import { isAllZero } from "../zero.js";

export { PAGE_SIZE };
/** Largest compressed page kept: half a page. */
export const MAX_COMPRESSED = PAGE_SIZE / 2;

/** Compressed data that does not inflate to exactly one page. */
export class PageCodecError extends Error {
  override readonly name = "PageCodecError";
}

function checkPage(page: Uint8Array, what: string): void {
  if (page.byteLength !== PAGE_SIZE) throw new RangeError(`${what} is ${page.byteLength} bytes, not a page (${PAGE_SIZE})`);
}

/** Is every byte of `page` (4096 bytes) zero? */
export function isZeroPage(page: Uint8Array): boolean {
  checkPage(page, "page");
  return isAllZero(page);
}

/** `page` (4096 bytes) deflated, or undefined when that takes more than MAX_COMPRESSED bytes. */
export function compressPage(page: Uint8Array): Uint8Array | undefined {
  checkPage(page, "page");
  const zlib = nodeZlib();
  const out = zlib.deflateRawSync(page, { level: zlib.constants.Z_BEST_SPEED });
  return out.byteLength <= MAX_COMPRESSED ? out : undefined;
}

/** Inflate `data` (from compressPage) into `out` (4096 bytes). Throws
 *  PageCodecError, leaving `out` untouched, unless exactly one page comes out. */
export function decompressPage(data: Uint8Array, out: Uint8Array): void {
  checkPage(out, "output");
  let page: Buffer;
  try {
    // maxOutputLength bounds the work on corrupt data (a stream inflating to
    // gigabytes); a stream longer than a page fails with ERR_BUFFER_TOO_LARGE.
    page = nodeZlib().inflateRawSync(data, { maxOutputLength: PAGE_SIZE });
  } catch (e) {
    throw new PageCodecError(`corrupt compressed page (${data.byteLength} bytes): ${(e as Error).message}`);
  }
  if (page.byteLength !== PAGE_SIZE) throw new PageCodecError(`compressed page (${data.byteLength} bytes) inflates to ${page.byteLength} bytes, not ${PAGE_SIZE}`);
  out.set(page);
}
