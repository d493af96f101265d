// The compressed store: putting compressed pages in, reading them back,
// freeing them, and what it says about its memory.

import { test } from "node:test";
import assert from "node:assert/strict";
import { CompressedStore, MAX_STORE_BYTES, SLOT_BITS } from "./compressed-store.js";
import { PageStoreError } from "./errors.js";
import { MAX_COMPRESSED, PAGE_SIZE, compressPage, decompressPage } from "./page-codec.js";

/** `len` bytes that tell objects apart: every byte is `tag`. */
const object = (len: number, tag: number): Uint8Array => new Uint8Array(len).fill(tag);

test("a compressed page goes in and comes back, as a private copy", () => {
  const store = CompressedStore.create(1 << 20);
  const page = new Uint8Array(PAGE_SIZE).fill(7, 100, 900);
  const slot = store.put(compressPage(page)!);
  assert.ok(slot >= 0 && slot < 2 ** SLOT_BITS);
  const data = store.read(slot);
  assert.ok(!(data.buffer instanceof SharedArrayBuffer), "not a view on the store");
  const out = new Uint8Array(PAGE_SIZE);
  decompressPage(data, out);
  assert.deepEqual(out, page);
  assert.equal(store.lengthOf(slot), data.byteLength);
  assert.deepEqual(store.stats(), { capacityBytes: 1 << 20, usedBytes: PAGE_SIZE, storedBytes: data.byteLength, objects: 1 });
  store.free(slot);
  assert.deepEqual(store.stats(), { capacityBytes: 1 << 20, usedBytes: 0, storedBytes: 0, objects: 0 });
});

test("objects of every length keep their exact bytes beside their neighbours", () => {
  const store = CompressedStore.create(4 << 20);
  const slots = new Map<number, number>();
  for (let len = 1; len <= MAX_COMPRESSED; len += 7) slots.set(store.put(object(len, len & 0xff)), len);
  assert.equal(new Set(slots.keys()).size, slots.size);
  for (const [slot, len] of slots) assert.deepEqual(store.read(slot), object(len, len & 0xff));
  const stats = store.stats();
  assert.equal(stats.objects, slots.size);
  assert.equal(stats.storedBytes, [...slots.values()].reduce((a, b) => a + b));
  assert.ok(stats.usedBytes >= stats.storedBytes && stats.usedBytes < 1.5 * stats.storedBytes + 20 * PAGE_SIZE, `${stats.usedBytes} used for ${stats.storedBytes}`);
});

test("a full store returns -1; freeing makes room again, and empty zpages serve any size", () => {
  const store = CompressedStore.create(4 * PAGE_SIZE + 100); // rounded down: 4 zpages
  assert.equal(store.stats().capacityBytes, 4 * PAGE_SIZE);
  const halves = Array.from({ length: 8 }, (_, i) => store.put(object(MAX_COMPRESSED, i + 1)));
  assert.ok(halves.every((s) => s >= 0));
  assert.equal(store.put(object(MAX_COMPRESSED, 9)), -1);
  assert.equal(store.put(object(10, 9)), -1, "small objects too: no zpage is free");
  assert.equal(store.stats().usedBytes, 4 * PAGE_SIZE);
  store.free(halves[0]);
  assert.equal(store.stats().usedBytes, 4 * PAGE_SIZE, "its zpage still holds the other half");
  assert.equal(store.put(object(10, 9)), -1, "a 2048-byte place is not for a 10-byte object");
  const again = store.put(object(MAX_COMPRESSED, 10));
  assert.equal(again, halves[0], "the freed place is reused");
  store.free(halves[2]);
  store.free(halves[3]);
  assert.equal(store.stats().usedBytes, 3 * PAGE_SIZE, "an empty zpage goes back");
  const small = Array.from({ length: 32 }, (_, i) => store.put(object(100, 0x40 + i)));
  assert.ok(small.every((s) => s >= 0), "32 small objects share the freed zpage");
  assert.equal(store.put(object(100, 0x80)), -1);
  for (let i = 0; i < 8; i++) if (i !== 2 && i !== 3) assert.equal(store.read(halves[i])[0], i === 0 ? 10 : i + 1);
  small.forEach((s, i) => assert.deepEqual(store.read(s), object(100, 0x40 + i)));
});

test("bad slots throw PageStoreError: double free, garbage, never handed out", () => {
  const store = CompressedStore.create(64 * PAGE_SIZE);
  const slot = store.put(object(300, 1));
  const neighbour = slot + 1; // same zpage, never handed out
  store.free(slot);
  assert.throws(() => store.free(slot), PageStoreError, "double free");
  assert.throws(() => store.read(slot), PageStoreError, "read after free");
  for (const bad of [-1, 2 ** SLOT_BITS, 64 * 32, 1e300, NaN, Infinity, 1.5, neighbour, 0]) {
    assert.throws(() => store.read(bad), PageStoreError, `read(${bad})`);
    assert.throws(() => store.free(bad), PageStoreError, `free(${bad})`);
  }
  const big = store.put(object(MAX_COMPRESSED, 2)); // 2 objects per zpage
  assert.throws(() => store.read(big + 5), PageStoreError, "an index past its class's objects");
  assert.throws(() => store.put(new Uint8Array(0)), PageStoreError);
  assert.throws(() => store.put(new Uint8Array(MAX_COMPRESSED + 1)), PageStoreError);
  assert.deepEqual(store.stats().objects, 1, "nothing changed by the failures");
});

test("capacity is validated: at least a zpage, at most what 27-bit slots address", () => {
  for (const bad of [0, 4095, NaN, -PAGE_SIZE, MAX_STORE_BYTES + PAGE_SIZE]) assert.throws(() => CompressedStore.create(bad), RangeError, `${bad}`);
  assert.equal(CompressedStore.create(PAGE_SIZE).stats().capacityBytes, PAGE_SIZE);
});

test("another object attached by handle sees the same store", () => {
  const store = CompressedStore.create(16 * PAGE_SIZE);
  const other = CompressedStore.attach(structuredClone(store.handle()));
  const slot = store.put(object(500, 0x5a));
  assert.deepEqual(other.read(slot), object(500, 0x5a));
  other.free(slot);
  assert.throws(() => store.read(slot), PageStoreError);
  assert.equal(store.stats().objects, 0);
});

test("random puts and frees keep every object intact and the books exact", () => {
  const store = CompressedStore.create(256 * PAGE_SIZE);
  const held = new Map<number, Uint8Array>();
  let rng = 0x2545f491;
  const next = (): number => {
    rng ^= rng << 13;
    rng ^= rng >>> 17;
    rng ^= rng << 5;
    return rng >>> 0;
  };
  let refused = 0;
  for (let op = 0; op < 30_000; op++) {
    const r = next();
    if (held.size > 0 && r % 5 < 2) {
      const slots = [...held.keys()];
      const slot = slots[r % slots.length];
      assert.deepEqual(store.read(slot), held.get(slot));
      store.free(slot);
      held.delete(slot);
      continue;
    }
    const data = object(1 + (next() % MAX_COMPRESSED), r & 0xff);
    const slot = store.put(data);
    if (slot < 0) refused++;
    else {
      assert.ok(!held.has(slot), `slot ${slot} handed out twice`);
      held.set(slot, data);
    }
  }
  assert.ok(refused > 0, "the store filled up along the way");
  for (const [slot, data] of held) assert.deepEqual(store.read(slot), data);
  const stats = store.stats();
  assert.equal(stats.objects, held.size);
  assert.equal(stats.storedBytes, [...held.values()].reduce((a, d) => a + d.byteLength, 0));
  for (const slot of held.keys()) store.free(slot);
  assert.deepEqual(store.stats(), { capacityBytes: 256 * PAGE_SIZE, usedBytes: 0, storedBytes: 0, objects: 0 });
});
