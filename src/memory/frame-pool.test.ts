import { test } from "node:test";
import assert from "node:assert/strict";
import {
  FramePool, FRAME_SIZE, OutOfHostMemory, FramePoolError, WASM_PAGE_SIZE, CORE_MIN_PAGES, OWNER_HOST, OWNER_FREE, FIRST_VM_OWNER, MAX_OWNER,
} from "./frame-pool.js";

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

test("a limit below the memory's maximum is enforced, and the memory never grows past it", () => {
  const pool = new FramePool({ reservedBytes: 1 << 16, limitBytes: (4 << 20) + 5 * FRAME_SIZE + 123 });
  assert.equal(pool.limitBytes, (4 << 20) + 5 * FRAME_SIZE, "rounded down to a frame");
  const frames = (pool.limitBytes - pool.base) / FRAME_SIZE;
  assert.equal(pool.stats().framesNeverUsed, frames);
  pool.allocContiguous(3);
  for (let i = 3; i < frames; i++) pool.alloc();
  assert.throws(() => pool.alloc(), OutOfHostMemory);
  assert.throws(() => pool.allocContiguous(2, FIRST_VM_OWNER), OutOfHostMemory);
  assert.ok(pool.committedBytes <= Math.ceil(pool.limitBytes / WASM_PAGE_SIZE) * WASM_PAGE_SIZE);
  assert.deepEqual(pool.stats(), { framesInUse: frames, framesFree: 0, framesNeverUsed: 0 });
});

test("every frame has an owner, charged for it; the host by default", () => {
  const pool = new FramePool(1 << 16);
  const vm = FIRST_VM_OWNER + 3;
  const h = pool.alloc();
  const a = pool.alloc(vm);
  const run = pool.allocContiguous(4, vm);
  assert.equal(pool.ownerOf(h), OWNER_HOST);
  assert.equal(pool.ownerOf(a), vm);
  assert.equal(pool.ownerOf(run + 3 * FRAME_SIZE), vm);
  assert.equal(pool.framesOwnedBy(OWNER_HOST), 1);
  assert.equal(pool.framesOwnedBy(vm), 5);
  pool.free(a);
  assert.equal(pool.ownerOf(a), OWNER_FREE);
  assert.equal(pool.framesOwnedBy(vm), 4);
  assert.throws(() => pool.alloc(OWNER_FREE), FramePoolError);
  assert.throws(() => pool.alloc(MAX_OWNER + 1), FramePoolError);
  assert.throws(() => pool.ownerOf(pool.base - FRAME_SIZE), FramePoolError);
});

test("a retained frame returns to the pool with its last reference", () => {
  const pool = new FramePool(1 << 16);
  const f = pool.alloc(FIRST_VM_OWNER);
  assert.equal(pool.refCount(f), 1);
  assert.equal(pool.retain(f), 2);
  pool.bytes[f] = 7;
  pool.free(f);
  assert.equal(pool.refCount(f), 1);
  assert.ok(pool.isAllocated(f));
  assert.equal(pool.bytes[f], 7, "still the holder's data");
  pool.free(f);
  assert.equal(pool.refCount(f), 0);
  assert.ok(!pool.isAllocated(f));
  assert.equal(pool.bytes[f], 0);
  assert.throws(() => pool.retain(f), FramePoolError, "a free frame cannot be retained");
});

test("freeContiguous changes nothing when one of the frames is not allocated", () => {
  const pool = new FramePool(1 << 16);
  const run = pool.allocContiguous(3);
  pool.free(run + FRAME_SIZE);
  assert.throws(() => pool.freeContiguous(run, 3), FramePoolError);
  assert.equal(pool.framesInUse, 2);
  assert.ok(pool.isAllocated(run) && pool.isAllocated(run + 2 * FRAME_SIZE));
});

test("releaseOwner returns exactly the owner's frames, zeroed, whatever their references", () => {
  const pool = new FramePool(1 << 16);
  const [doomed, kept] = [FIRST_VM_OWNER, FIRST_VM_OWNER + 1];
  const frames: { addr: number; owner: number }[] = [];
  for (let i = 0; i < 5000; i++) {
    const owner = i % 3 === 0 ? kept : doomed;
    const count = i % 50 === 0 ? 4 : 1;
    const addr = pool.allocContiguous(count, owner);
    for (let k = 0; k < count; k++) frames.push({ addr: addr + k * FRAME_SIZE, owner });
  }
  for (const { addr, owner } of frames) pool.bytes.fill(owner, addr, addr + FRAME_SIZE);
  const doomedFrames = frames.filter((f) => f.owner === doomed);
  pool.retain(doomedFrames[7].addr);
  assert.equal(pool.releaseOwner(doomed), doomedFrames.length);
  assert.equal(pool.framesOwnedBy(doomed), 0);
  assert.equal(pool.framesInUse, frames.length - doomedFrames.length);
  assert.equal(pool.releaseOwner(doomed), 0, "nothing left the second time");
  for (const { addr, owner } of frames) {
    const page = pool.bytes.subarray(addr, addr + FRAME_SIZE);
    if (owner === kept) assert.ok(pool.isAllocated(addr) && page.every((b) => b === kept), "the other owner keeps its frames");
    else assert.ok(!pool.isAllocated(addr) && page.every((b) => b === 0), "released frames are zero");
  }
  const again = new Set(Array.from({ length: doomedFrames.length }, () => pool.alloc(FIRST_VM_OWNER + 2)));
  assert.deepEqual(again, new Set(doomedFrames.map((f) => f.addr)), "reused before any new frame");
});

test("attach gives a second FramePool object over the same books and memory", () => {
  const pool = new FramePool(1 << 16);
  const handle = structuredClone(pool.handle());
  const other = FramePool.attach(handle);
  assert.equal(other.base, pool.base);
  assert.equal(other.limitBytes, pool.limitBytes);
  const a = pool.alloc();
  const b = other.alloc(FIRST_VM_OWNER);
  assert.notEqual(a, b);
  assert.equal(pool.ownerOf(b), FIRST_VM_OWNER);
  other.bytes[b] = 9;
  assert.equal(pool.bytes[b], 9);
  for (let i = 0; i < 10_000; i++) other.alloc(); // grows the memory through the other object
  assert.equal(pool.framesInUse, 10_002);
  const last = pool.base + 10_001 * FRAME_SIZE;
  other.bytes[last] = 5;
  assert.equal(pool.bytes[last], 5, "views follow a growth made through another object");
  other.free(a);
  assert.ok(!pool.isAllocated(a));
});

test("free frames given back to the kernel leave the process, read as zero and are handed out again", () => {
  const pool = new FramePool({ reservedBytes: 1 << 16, limitBytes: 256 << 20 });
  const frames: number[] = [];
  for (let i = 0; i < 8192; i++) {
    const f = pool.alloc();
    pool.bytes.fill(0xee, f, f + FRAME_SIZE);
    frames.push(f);
  }
  const touched = process.memoryUsage.rss();
  for (const f of frames) pool.free(f);
  const released = pool.trimFree(1 << 20);
  if (released === 0) return; // build/release-pages.node not built here: frames are only zeroed
  assert.equal(released, 8192);
  assert.ok(touched - process.memoryUsage.rss() > 16 << 20, "the process's resident size fell");
  assert.equal(pool.stats().framesFree, 8192, "all still free");
  for (let i = 0; i < 8192; i++) {
    const f = pool.alloc();
    assert.ok(pool.bytes.subarray(f, f + FRAME_SIZE).every((b) => b === 0), "zero when handed out again");
  }
});
