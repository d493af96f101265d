// Dirty logging on the host side: writes into guest memory through any
// thread's P2m object set the pages' bits; take() returns and clears them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { FramePool, FRAME_SIZE, FIRST_VM_OWNER } from "./frame-pool.js";
import { P2m, P2mFault } from "./p2m.js";
import { GuestMemory } from "./guest-memory.js";
import { DirtyLog } from "./dirty-log.js";

const RAM = 0x8000_0000n;
const PAGES = 100; // four bitmap words, the last one partly used
const page = (i: number) => RAM + BigInt(i) * 4096n;

function setup() {
  const pool = new FramePool(1 << 16);
  const p2m = new P2m(pool, RAM, PAGES * FRAME_SIZE, { owner: FIRST_VM_OWNER });
  // Another thread's P2m object over the same table and counters (an I/O thread's).
  const other = P2m.attach(pool, p2m.handle());
  return { pool, p2m, mem: new GuestMemory(p2m), otherMem: new GuestMemory(other) };
}

test("host writes through any P2m object mark their pages; take() returns them once", () => {
  const { p2m, mem, otherMem } = setup();
  mem.write(page(1), Uint8Array.of(1)); // before the log: not marked
  mem.write(page(99), Uint8Array.of(1));
  const log = DirtyLog.start(p2m);
  assert.equal(log.address % FRAME_SIZE, 0);
  assert.equal(p2m.dirtyLog, log.address);
  assert.equal(log.words, 4);
  assert.equal(log.count(), 0);
  mem.write(page(2) - 2n, Uint8Array.of(1, 2, 3, 4)); // pages 1 and 2
  otherMem.writeU64(page(40), 7n); // from the other object
  mem.zero(page(99), 4096);
  mem.zero(page(98), 4096); // reads as zero without a frame: left alone, not marked
  mem.read(page(50), 16); // reads mark nothing
  assert.equal(log.count(), 4);
  assert.deepEqual(log.take(), [1, 2, 40, 99]);
  assert.deepEqual(log.take(), [], "take() cleared them");
  assert.equal(log.pagesTaken, 4);
  otherMem.write(page(33), Uint8Array.of(9));
  p2m.populate(70); // a host-side writable frame, however it is asked for
  const words = log.takeWords();
  assert.deepEqual([...words], [0, 1 << 1, 1 << 6, 0]);
  assert.equal(log.pagesTaken, 6);
  log.stop();
});

test("markAll marks exactly the window's pages; count() and take() agree", () => {
  const { p2m } = setup();
  const log = DirtyLog.start(p2m);
  log.markAll();
  assert.equal(log.count(), PAGES);
  const all = log.take();
  assert.equal(all.length, PAGES);
  assert.deepEqual(all, Array.from({ length: PAGES }, (_, i) => i));
  log.stop();
});

test("one log per p2m; stop() unpublishes it and gives its frames back", () => {
  const { pool, p2m, mem } = setup();
  const before = pool.framesInUse;
  const log = DirtyLog.start(p2m);
  assert.equal(pool.framesInUse, before + 1);
  assert.throws(() => DirtyLog.start(p2m), P2mFault);
  log.stop();
  assert.equal(p2m.dirtyLog, 0);
  assert.equal(pool.framesInUse, before);
  assert.throws(() => log.take(), /after stop/);
  log.stop(); // twice is harmless
  mem.write(page(3), Uint8Array.of(1)); // log off: nothing marked anywhere
  const again = DirtyLog.start(p2m);
  assert.deepEqual(again.take(), [], "a new log starts clean");
  mem.write(page(3), Uint8Array.of(2));
  assert.deepEqual(again.take(), [3]);
  again.stop();
});

test("with the core: a guest store marks its page in the same bitmap, once the hart has the log", async () => {
  const { instantiateCore, CORE_RESERVED_BYTES } = await import("../vcpu/core.js");
  const pool = new FramePool(CORE_RESERVED_BYTES);
  const core = instantiateCore(pool.memory);
  const { fn, k } = core;
  const p2m = new P2m(pool, RAM, PAGES * FRAME_SIZE, { owner: FIRST_VM_OWNER });
  const mem = new GuestMemory(p2m);
  const hart = pool.allocContiguous(Math.ceil(fn.hartStateSize() / FRAME_SIZE));
  fn.hartReset(hart, 0n, RAM);
  fn.setP2m(hart, p2m.table, p2m.baseGfn, BigInt(p2m.count));
  // auipc a0, 5; addi a1, x0, 1; sd a1, 0(a0) (page 5); auipc a2, 6; sw a1, 0(a2) (page 6 + 12); j .
  const code = [0x00005517, 0x00100593, 0x00b53023, 0x00006617, 0x00b62023, 0x0000006f];
  const words = new Uint8Array(new Uint32Array(code).buffer);
  const log = DirtyLog.start(p2m);
  mem.write(RAM, words); // the loader's write is logged too
  assert.deepEqual(log.take(), [0]);
  /** Retire `budget` instructions, resolving p2m faults (first touches) on the way. */
  const run = (budget: number) => {
    for (;;) {
      const reason = fn.run(hart, budget);
      const view = new DataView(pool.memory.buffer);
      budget -= Number(view.getBigUint64(hart + k.RUN_INSNS_OFF, true));
      if (reason !== k.EXIT_P2M_FAULT) return reason;
      p2m.resolveFault(view.getBigUint64(hart + k.RUN_ADDR_OFF, true), view.getBigUint64(hart + k.RUN_WRITE_OFF, true) === 1n);
    }
  };
  assert.equal(run(3), k.EXIT_BUDGET);
  assert.deepEqual(log.take(), [], "the hart does not log yet");
  assert.equal(fn.setDirtyLog(hart, log.address), 1);
  fn.tlbFlush(hart);
  run(2);
  assert.deepEqual(log.take(), [6], "the store to page 6 (first touch: after the p2m fault) is logged");
  assert.equal(mem.readU32(page(6) + 12n), 1);
  fn.setDirtyLog(hart, 0);
  log.stop();
});
