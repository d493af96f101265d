import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openDisk } from "./disk.js";
import { ReadOnlyView, WriteTrackedDisk } from "./wrappers.js";
import { DiskImageError } from "./types.js";

function rawDisk(bytes: number) {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-wrap-"));
  const path = join(dir, "d.raw");
  writeFileSync(path, Buffer.alloc(bytes));
  return { disk: openDisk(path, { format: "raw" }), done: () => rmSync(dir, { recursive: true, force: true }) };
}

test("a tracked disk sets one bit per chunk a write, discard or write-zeroes touched, and reads pass through", () => {
  const { disk, done } = rawDisk(1 << 20);
  try {
    const bitmap = new SharedArrayBuffer(4);
    const tracked = new WriteTrackedDisk(disk, bitmap, 16); // 64 KiB chunks: 16 of them
    const bits = new Int32Array(bitmap);
    tracked.write((64 << 10) - 512, new Uint8Array(1024).fill(9)); // straddles chunks 0 and 1
    assert.equal(bits[0], 0b11);
    tracked.writeZeroes(5 << 16, 512, false);
    tracked.discard(15 << 16, 4096);
    assert.equal(bits[0] >>> 0, (0b11 | (1 << 5) | (1 << 15)) >>> 0);
    const back = new Uint8Array(1024);
    tracked.read((64 << 10) - 512, back);
    assert.ok(back.every((b) => b === 9));
    // A write the image refused marks nothing.
    Atomics.store(bits, 0, 0);
    assert.throws(() => tracked.write(1 << 20, new Uint8Array(512)), DiskImageError);
    assert.equal(bits[0], 0);
    tracked.close();
  } finally {
    done();
  }
});

test("a read-only view refuses the guest's writes while the image under it takes the copy's", () => {
  const { disk, done } = rawDisk(64 << 10);
  try {
    const view = new ReadOnlyView(disk);
    assert.equal(view.readOnly, true);
    assert.throws(() => view.write(0, new Uint8Array(512)), /read-only/);
    assert.throws(() => view.writeZeroes(0, 512, true), /read-only/);
    view.inner.write(0, new Uint8Array(512).fill(3));
    const b = new Uint8Array(512);
    view.read(0, b);
    assert.equal(b[511], 3);
    view.close();
  } finally {
    done();
  }
});
