import { test } from "node:test";
import assert from "node:assert/strict";
import { FramePool, FRAME_SIZE, FIRST_VM_OWNER, OWNER_HOST, type FrameOwner } from "./frame-pool.js";
import { P2m, P2mFault, P2M_PRESENT, P2M_WRITABLE, P2M_ACCESSED } from "./p2m.js";

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
  assert.equal(p2m.entry(3), (frame | P2M_PRESENT | P2M_WRITABLE | P2M_ACCESSED) >>> 0);
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

test("a VM's p2m charges its table and RAM to the VM's owner id", () => {
  const pool = new FramePool(1 << 16);
  const vm = FIRST_VM_OWNER + 1;
  const p2m = new P2m(pool, RAM, 64 * FRAME_SIZE, { owner: vm });
  p2m.populate(0);
  p2m.populate(63);
  assert.equal(pool.ownerOf(p2m.table), vm);
  assert.equal(pool.ownerOf(p2m.frameAt(63)!), vm);
  assert.equal(pool.framesOwnedBy(vm), 1 + 2);
  assert.equal(pool.framesOwnedBy(OWNER_HOST), 0);
  assert.equal(pool.releaseOwner(vm), 3, "destroying the VM takes back table and RAM");
});

test("an attached p2m shares the table and the populated count, and allocates nothing", () => {
  const pool = new FramePool(1 << 16);
  const p2m = new P2m(pool, RAM, 16 * FRAME_SIZE, { owner: FIRST_VM_OWNER });
  const inUse = pool.framesInUse;
  const other = P2m.attach(FramePool.attach(pool.handle()), structuredClone(p2m.handle()));
  assert.equal(pool.framesInUse, inUse);
  assert.equal(other.table, p2m.table);
  assert.equal(other.start, p2m.start);
  assert.equal(other.owner, FIRST_VM_OWNER);
  const f = other.hostFrame(RAM + 0x5000n);
  assert.equal(p2m.peekFrame(RAM + 0x5000n), f);
  assert.equal(p2m.hostFrame(RAM + 0x5000n), f);
  assert.equal(p2m.populated, 1);
  assert.equal(other.populated, 1);
  assert.throws(() => P2m.attach(pool, { ...p2m.handle(), table: pool.base + 100 * FRAME_SIZE }), P2mFault);
});

test("populate that loses the race to another thread keeps the winner's frame and frees its own", () => {
  // Another thread's populate lands while this one is inside alloc(): the
  // compare-and-swap sees the entry changed, and the frame just allocated goes back.
  class RacingPool extends FramePool {
    rival?: P2m;
    override alloc(owner?: FrameOwner): number {
      const rival = this.rival;
      this.rival = undefined;
      rival?.populate(2);
      return super.alloc(owner);
    }
  }
  const pool = new RacingPool(1 << 16);
  const mine = new P2m(pool, RAM, 4 * FRAME_SIZE);
  const theirs = P2m.attach(pool, mine.handle());
  const changes: number[] = [];
  mine.onChange((index) => changes.push(index));
  pool.rival = theirs;
  const frame = mine.populate(2);
  assert.equal(frame, theirs.frameAt(2), "the winner's frame");
  assert.equal(mine.frameAt(2), frame);
  assert.equal(mine.populated, 1);
  assert.equal(pool.framesInUse, 1 + 1, "table + one RAM frame: the loser's went back");
  assert.equal(pool.stats().framesFree, 1);
  assert.deepEqual(changes, [], "this object changed no mapping");
});

test("onChange hears a new mapping made through the same object", () => {
  const pool = new FramePool(1 << 16);
  const p2m = new P2m(pool, RAM, 4 * FRAME_SIZE);
  const changes: number[] = [];
  p2m.onChange((index, count) => changes.push(index, count));
  p2m.populate(3);
  p2m.populate(3);
  assert.deepEqual(changes, [3, 1]);
});
