import { test } from "node:test";
import assert from "node:assert/strict";
import { FramePool, FRAME_SIZE, OutOfHostMemory, FramePoolError, WASM_PAGE_SIZE, CORE_MIN_PAGES } from "./frame-pool.js";

test("frames start above the reserved area, page aligned, and never repeat while in use", () => {
  const pool = new FramePool(5000); // reserved area not a multiple of a frame
  assert.equal(pool.base, 2 * FRAME_SIZE);
  const seen = new Set<number>();
  for (let i = 0; i < 100; i++) {
    const f = pool.alloc();
    assert.equal(f % FRAME_SIZE, 0);
    assert.ok(f >= pool.base);
    assert.ok(!seen.has(f));
    seen.add(f);
  }
  assert.equal(pool.framesInUse, 100);
});

test("the memory is shared and at least as large as the core needs to link", () => {
  const pool = new FramePool(1 << 16);
  assert.ok(pool.memory.buffer instanceof SharedArrayBuffer);
  assert.ok(pool.committedBytes >= CORE_MIN_PAGES * WASM_PAGE_SIZE);
});

test("allocation grows the memory on demand and views follow the growth", () => {
  const pool = new FramePool(1 << 16);
  const before = pool.committedBytes;
  const frames = before / FRAME_SIZE + 10; // more than fits now
  let last = 0;
  for (let i = 0; i < frames; i++) last = pool.alloc();
  assert.ok(pool.committedBytes > before);
  pool.bytes[last + FRAME_SIZE - 1] = 0xab;
  assert.equal(pool.view.getUint8(last + FRAME_SIZE - 1), 0xab);
});

test("freed frames are zeroed and reused", () => {
  const pool = new FramePool(1 << 16);
  const f = pool.alloc();
  pool.bytes.fill(0x5a, f, f + FRAME_SIZE);
  pool.free(f);
  assert.equal(pool.framesInUse, 0);
  const g = pool.alloc();
  assert.equal(g, f, "the freed frame comes back first");
  assert.ok(pool.bytes.subarray(g, g + FRAME_SIZE).every((b) => b === 0), "and holds no old data");
});

test("contiguous runs are consecutive and can reuse freed runs", () => {
  const pool = new FramePool(1 << 16);
  const a = pool.allocContiguous(4);
  const b = pool.allocContiguous(3);
  assert.equal(b, a + 4 * FRAME_SIZE);
  pool.freeContiguous(a, 4);
  const c = pool.allocContiguous(3);
  assert.equal(c, a, "first fit in the freed run");
  const d = pool.alloc();
  assert.equal(d, a + 3 * FRAME_SIZE, "the one frame left of the run");
  assert.equal(pool.framesInUse, 3 + 3 + 1);
});

test("double free and bad counts are refused", () => {
  const pool = new FramePool(1 << 16);
  const f = pool.alloc();
  pool.free(f);
  assert.throws(() => pool.free(f), FramePoolError);
  assert.throws(() => pool.free(f + 1), FramePoolError);
  assert.throws(() => pool.allocContiguous(0), FramePoolError);
});

test("the pool stops at its limit with OutOfHostMemory", () => {
  const pool = new FramePool({ reservedBytes: 1 << 16, maxPages: CORE_MIN_PAGES });
  const frames = (CORE_MIN_PAGES * WASM_PAGE_SIZE - (1 << 16)) / FRAME_SIZE;
  for (let i = 0; i < frames; i++) pool.alloc();
  assert.throws(() => pool.alloc(), OutOfHostMemory);
  assert.throws(() => pool.allocContiguous(2), /out of host memory/);
});
