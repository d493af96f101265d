// The page codec: what the memory manager does with a cold page.

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomFillSync } from "node:crypto";
import { PAGE_SIZE, MAX_COMPRESSED, PageCodecError, isZeroPage, compressPage, decompressPage } from "./page-codec.js";

/** A page in shared memory, as the frame pool's frames are, at `offset` in its buffer. */
function sharedPage(offset = 0): Uint8Array {
  return new Uint8Array(new SharedArrayBuffer(PAGE_SIZE + offset), offset, PAGE_SIZE);
}

/** A page like much of a kernel's: a little text, a few pointers, zeros. */
function typicalPage(): Uint8Array {
  const page = sharedPage();
  new TextEncoder().encodeInto("tsvisor page codec test: a line of text like a kernel log. ".repeat(8), page);
  const words = new BigUint64Array(page.buffer, 2048, 64);
  for (let i = 0; i < words.length; i++) words[i] = 0xffffffff80000000n + BigInt(i * 64);
  return page;
}

test("zero pages are told from pages with one non-zero byte anywhere, aligned or not", () => {
  for (const offset of [0, 3]) {
    const page = sharedPage(offset);
    assert.equal(isZeroPage(page), true);
    for (const at of [0, 1, 7, 8, 2049, PAGE_SIZE - 1]) {
      page[at] = 0x80;
      assert.equal(isZeroPage(page), false, `byte ${at}, offset ${offset}`);
      page[at] = 0;
    }
  }
  assert.throws(() => isZeroPage(new Uint8Array(100)), RangeError);
});

test("a compressible page in shared memory round-trips into shared memory", () => {
  const page = typicalPage();
  const data = compressPage(page);
  assert.ok(data !== undefined && data.byteLength <= MAX_COMPRESSED, "kept");
  const out = sharedPage();
  decompressPage(data, out);
  assert.deepEqual(out, page);
});

test("a random page does not compress to half: undefined, to be swapped raw", () => {
  const page = randomFillSync(sharedPage());
  assert.equal(compressPage(page), undefined);
});

test("corrupt or truncated data throws PageCodecError and leaves the output alone", () => {
  const out = new Uint8Array(PAGE_SIZE).fill(0xaa);
  const data = compressPage(typicalPage())!;
  const garbage = randomFillSync(new Uint8Array(300));
  // 0xff: a block header with the reserved block type 3 (RFC 1951, 3.2.3)
  const badBlock = Uint8Array.from(data, (b, i) => (i === 0 ? 0xff : b));
  const truncated = data.subarray(0, data.byteLength >> 1);
  for (const bad of [garbage, badBlock, truncated, new Uint8Array(0)]) {
    assert.throws(() => decompressPage(bad, out), PageCodecError);
  }
  assert.ok(out.every((b) => b === 0xaa));
});

test("data inflating to more or less than a page throws PageCodecError", async () => {
  const { deflateRawSync } = await import("node:zlib");
  const out = new Uint8Array(PAGE_SIZE);
  assert.throws(() => decompressPage(deflateRawSync(new Uint8Array(PAGE_SIZE + 1)), out), PageCodecError);
  assert.throws(() => decompressPage(deflateRawSync(new Uint8Array(1 << 20)), out), PageCodecError);
  assert.throws(() => decompressPage(deflateRawSync(new Uint8Array(PAGE_SIZE - 1)), out), PageCodecError);
});
