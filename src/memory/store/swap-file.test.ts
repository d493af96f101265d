// The swap file: slots allocated, written, read back and freed; what happens
// when it is full, misused, or the disk fails.

import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomFillSync } from "node:crypto";
import { SwapFile } from "./swap-file.js";
import { PageStoreError, SwapError } from "./errors.js";
import { PAGE_SIZE } from "./page-codec.js";

/** A fresh directory for the test's swap files, removed after it. */
function scratch(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-swap-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test("a raw page from shared memory and a short object round-trip; close() removes the file", (t) => {
  const path = join(scratch(t), "swap");
  const swap = SwapFile.open(path, 16 * PAGE_SIZE);
  assert.equal(statSync(path).mode & 0o777, 0o600, "guest memory: only the host user may read it");
  const page = randomFillSync(new Uint8Array(new SharedArrayBuffer(PAGE_SIZE)));
  const short = new Uint8Array([1, 2, 3, 4, 5]);
  const [a, b] = [swap.alloc(), swap.alloc()];
  swap.write(a, page);
  swap.write(b, short);
  assert.deepEqual(swap.read(a), new Uint8Array(page), "the page");
  assert.deepEqual(swap.read(b), short, "exactly the five bytes, not a page");
  swap.write(a, short);
  assert.deepEqual(swap.read(a), short, "a write replaces the slot's object");
  assert.deepEqual(swap.stats(), { capacityBytes: 16 * PAGE_SIZE, usedSlots: 2, slots: 16, path });
  swap.close();
  assert.equal(existsSync(path), false);
  assert.throws(() => swap.alloc(), PageStoreError, "closed");
});

test("a leftover file is truncated and made private", (t) => {
  const path = join(scratch(t), "swap");
  writeFileSync(path, "old data", { mode: 0o644 });
  const swap = SwapFile.open(path, PAGE_SIZE);
  assert.equal(statSync(path).size, 0);
  assert.equal(statSync(path).mode & 0o777, 0o600);
  swap.close();
});

test("a full swap file returns -1, freed slots are reused, and the file never passes its capacity", (t) => {
  const path = join(scratch(t), "swap");
  const swap = SwapFile.open(path, 4 * PAGE_SIZE + 123); // rounded down: 4 slots
  const slots = [swap.alloc(), swap.alloc(), swap.alloc(), swap.alloc()];
  assert.deepEqual([...slots].sort(), [0, 1, 2, 3]);
  assert.equal(swap.alloc(), -1);
  for (const s of slots) swap.write(s, new Uint8Array(PAGE_SIZE).fill(s + 1));
  assert.equal(statSync(path).size, 4 * PAGE_SIZE);
  swap.free(slots[2]);
  assert.equal(swap.stats().usedSlots, 3);
  assert.equal(swap.alloc(), slots[2]);
  assert.equal(swap.alloc(), -1);
  assert.deepEqual(swap.read(slots[3]), new Uint8Array(PAGE_SIZE).fill(slots[3] + 1));
  swap.close();
});

test("bad slots throw PageStoreError: double free, garbage, never allocated, never written", (t) => {
  const swap = SwapFile.open(join(scratch(t), "swap"), 8 * PAGE_SIZE);
  t.after(() => swap.close());
  const slot = swap.alloc();
  assert.throws(() => swap.read(slot), PageStoreError, "allocated but never written");
  swap.write(slot, new Uint8Array(10));
  swap.free(slot);
  assert.throws(() => swap.free(slot), PageStoreError, "double free");
  assert.throws(() => swap.read(slot), PageStoreError, "read after free");
  for (const bad of [-1, 8, 2 ** 27, NaN, Infinity, 0.5, 5]) {
    assert.throws(() => swap.free(bad), PageStoreError, `free(${bad})`);
    assert.throws(() => swap.read(bad), PageStoreError, `read(${bad})`);
    assert.throws(() => swap.write(bad, new Uint8Array(1)), PageStoreError, `write(${bad})`);
  }
  const ok = swap.alloc();
  assert.throws(() => swap.write(ok, new Uint8Array(0)), PageStoreError);
  assert.throws(() => swap.write(ok, new Uint8Array(PAGE_SIZE + 1)), PageStoreError);
  assert.equal(swap.stats().usedSlots, 1);
});

test("capacity is validated", (t) => {
  const path = join(scratch(t), "swap");
  for (const bad of [0, PAGE_SIZE - 1, NaN, 2 ** 27 * PAGE_SIZE + PAGE_SIZE]) assert.throws(() => SwapFile.open(path, bad), RangeError, `${bad}`);
  assert.equal(existsSync(path), false, "checked before the file is made");
});

// A disk that is full, deterministically: the swap file's path is a symlink to
// /dev/full (Linux), which takes the open, the truncation and positioned
// writes, and fails every write with ENOSPC; close() unlinks the symlink only.
test("a failing write is a SwapError naming the file and the errno; the slot stays allocated", { skip: !existsSync("/dev/full") && "no /dev/full here" }, (t) => {
  const path = join(scratch(t), "swap");
  symlinkSync("/dev/full", path);
  const swap = SwapFile.open(path, 4 * PAGE_SIZE);
  const slot = swap.alloc();
  assert.throws(
    () => swap.write(slot, new Uint8Array(PAGE_SIZE).fill(1)),
    (e: unknown) => e instanceof SwapError && e.code === "ENOSPC" && e.message.includes(path) && e.message.includes("ENOSPC") && !e.message.includes("\n"),
  );
  assert.equal(swap.stats().usedSlots, 1, "still allocated: the caller decides");
  assert.throws(() => swap.read(slot), PageStoreError, "and holds nothing");
  swap.free(slot);
  swap.close();
  assert.equal(existsSync("/dev/full"), true);
});

test("a file opened in a directory that does not exist is a SwapError", () => {
  assert.throws(() => SwapFile.open("/nonexistent-dir/swap", PAGE_SIZE), (e: unknown) => e instanceof SwapError && e.code === "ENOENT");
});

test("an attached object shares the slots; its close() leaves the file to the creator", (t) => {
  const path = join(scratch(t), "swap");
  const swap = SwapFile.open(path, 8 * PAGE_SIZE);
  const other = SwapFile.attach(structuredClone(swap.handle()));
  const slot = other.alloc();
  other.write(slot, new Uint8Array([9, 8, 7]));
  assert.deepEqual(swap.read(slot), new Uint8Array([9, 8, 7]));
  other.close();
  assert.throws(() => other.read(slot), PageStoreError);
  assert.deepEqual(swap.read(slot), new Uint8Array([9, 8, 7]), "still open for the creator");
  const third = SwapFile.attach(swap.handle());
  swap.close();
  assert.throws(() => third.read(slot), PageStoreError, "closed by the creator: refused, not a read of a reused descriptor");
});
