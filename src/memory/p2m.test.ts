import { test } from "node:test";
import assert from "node:assert/strict";
import { FramePool, FRAME_SIZE } from "./frame-pool.js";
import { P2m, P2mFault, P2M_PRESENT, P2M_WRITABLE } from "./p2m.js";

const RAM = 0x8000_0000n;

test("a new p2m maps nothing; its window is the RAM range", () => {
  const pool = new FramePool(1 << 16);
  const p2m = new P2m(pool, RAM, 16 * FRAME_SIZE);
  assert.equal(p2m.baseGfn, 0x80000n);
  assert.equal(p2m.count, 16);
  assert.equal(p2m.end, RAM + 16n * 4096n);
  for (let i = 0; i < 16; i++) assert.equal(p2m.entry(i), 0);
  assert.ok(p2m.contains(RAM));
  assert.ok(p2m.contains(RAM + 16n * 4096n - 1n));
  assert.ok(!p2m.contains(RAM + 16n * 4096n));
  assert.ok(!p2m.contains(RAM - 1n));
});

test("first touch allocates a writable frame; the entry has the core's format", () => {
  const pool = new FramePool(1 << 16);
  const p2m = new P2m(pool, RAM, 16 * FRAME_SIZE);
  const frame = p2m.hostFrame(RAM + 0x3456n);
  assert.equal(frame % FRAME_SIZE, 0);
  assert.equal(p2m.entry(3), (frame | P2M_PRESENT | P2M_WRITABLE) >>> 0);
  assert.equal(p2m.hostFrame(RAM + 0x3000n), frame, "the same frame on the next touch");
  assert.equal(p2m.populated, 1);
  assert.equal(pool.view.getUint32(p2m.table + 3 * 4, true), p2m.entry(3), "the table lives in pool memory");
});

test("faults resolve inside the window and not outside", () => {
  const pool = new FramePool(1 << 16);
  const p2m = new P2m(pool, RAM, 4 * FRAME_SIZE);
  assert.equal(p2m.resolveFault(RAM + 0x1008n, true), true);
  assert.notEqual(p2m.frameAt(1), undefined);
  assert.equal(p2m.resolveFault(RAM + 0x1008n, false), true, "a stale fault on a mapped frame just retries");
  assert.equal(p2m.resolveFault(RAM + 0x4000n, false), false);
  assert.throws(() => p2m.hostFrame(0x1000n), P2mFault);
  assert.throws(() => p2m.hostFrame(RAM + 4n * 4096n), /outside guest RAM/);
});

test("bad windows are refused", () => {
  const pool = new FramePool(1 << 16);
  assert.throws(() => new P2m(pool, RAM + 1n, FRAME_SIZE), P2mFault);
  assert.throws(() => new P2m(pool, RAM, 100), P2mFault);
  assert.throws(() => new P2m(pool, RAM, 0), P2mFault);
  assert.throws(() => new P2m(pool, 0xffff_ffff_ffff_f000n, 2 * FRAME_SIZE), P2mFault);
});

test("release returns RAM and table frames to the pool", () => {
  const pool = new FramePool(1 << 16);
  const p2m = new P2m(pool, RAM, 2048 * FRAME_SIZE); // table: 2 frames
  assert.equal(pool.framesInUse, 2);
  p2m.populateAll();
  assert.equal(pool.framesInUse, 2 + 2048);
  p2m.release();
  assert.equal(pool.framesInUse, 0);
  assert.throws(() => p2m.entry(0), /after release/);
});
