// A virtio interrupt raised by a thread other than the main one (a disk's
// I/O thread), as KVM's irqfd: what the guest and the scheduler see of it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Worker } from "node:worker_threads";
import { FramePool, FRAME_SIZE } from "../memory/frame-pool.js";
import { instantiateCore, CORE_RESERVED_BYTES } from "../vcpu/core.js";
import { Plic } from "../devices/irq/plic.js";
import { Scheduler, VcpuState, VmRunState } from "./scheduler.js";
import type { IrqfdRoute } from "./irqfd.js";

const SOURCE = 3;
const S_CONTEXT = 1; // hart 0's S-mode (plic.ts)
const CLAIM = 0x200004 + 0x1000 * S_CONTEXT;

/** One hart blocked in WFI, its PLIC as the main thread drives it, and the route another thread raises through. */
function setup() {
  const pool = new FramePool(CORE_RESERVED_BYTES);
  const { fn, k } = instantiateCore(pool.memory);
  const hart = pool.allocContiguous(Math.ceil(fn.hartStateSize() / FRAME_SIZE));
  fn.hartReset(hart, 0n, 0x8000_0000n);
  const isrWord = pool.allocContiguous(1);
  const plic = new Plic(2, (c, level) => fn.setIrqLine(hart, c & 1 ? k.IRQ_LINE_SEIP : k.IRQ_LINE_MEIP, level ? 1 : 0));
  plic.write(4 * SOURCE, 4, 1n); // priority 1
  plic.write(0x2000 + 0x80 * S_CONTEXT, 4, BigInt(1 << SOURCE));
  const sched = Scheduler.create(1, 4, 2);
  const vm = sched.addVm(256, 0);
  const v = sched.addVcpu(vm, 0, hart, 1n);
  sched.wake(v, 0, true);
  sched.setVmState(vm, VmRunState.Running);
  const pick = sched.pick(0, 1);
  assert.equal(pick.kind, "run");
  sched.release(v, 2, { kind: "blocked", deadlineNs: Infinity });
  const route: IrqfdRoute = {
    interruptStatus: isrWord, plic: plic.buffer, contexts: 2, source: SOURCE, harts: [hart], vcpus: [v], sched: sched.handle,
    lineMeipOff: k.LINE_MEIP_OFF, lineSeipOff: k.LINE_SEIP_OFF, reqOff: k.REQ_OFF, reqIrq: k.REQ_IRQ, reqExit: k.REQ_EXIT,
  };
  const isr = { words: pool.words, index: isrWord >>> 2 };
  /** The guest's handler: read InterruptStatus, acknowledge it, the line follows (mmio.ts). */
  const acknowledge = () => {
    const bits = Atomics.load(isr.words, isr.index);
    Atomics.and(isr.words, isr.index, ~bits);
    plic.setLevelFrom(SOURCE, () => Atomics.load(isr.words, isr.index) !== 0);
    return bits;
  };
  return { pool, fn, k, hart, plic, sched, v, route, isr, acknowledge };
}

/** Run `raises` raises of `bits` through an Irqfd on a thread of its own; resolves when it is done. */
async function raiseOnThread(route: IrqfdRoute, memory: WebAssembly.Memory, raises: number, bits = 1): Promise<void> {
  const worker = new Worker(`
    const { workerData, parentPort } = require("node:worker_threads");
    import(workerData.irqfd).then(({ Irqfd }) => {
      const irqfd = new Irqfd(workerData.route, new Int32Array(workerData.memory.buffer));
      for (let i = 0; i < workerData.raises; i++) irqfd.raise(workerData.bits);
      parentPort.postMessage("done");
    });
  `, { eval: true, workerData: { irqfd: new URL("./irqfd.js", import.meta.url).href, route, memory, raises, bits } });
  try {
    await new Promise((resolve, reject) => {
      worker.once("message", resolve);
      worker.once("error", reject);
    });
  } finally {
    await worker.terminate();
  }
}

test("raised on another thread: InterruptStatus set, the hart's S-mode line up as the core sees it, the hart out of WFI", async () => {
  const { pool, fn, k, hart, plic, sched, v, route, isr, acknowledge } = setup();
  assert.equal(sched.stateOf(v), VcpuState.Blocked);
  await raiseOnThread(route, pool.memory, 1);
  assert.equal(Atomics.load(isr.words, isr.index), 1, "InterruptStatus: used buffer");
  assert.equal(fn.getIrqLine(hart, k.IRQ_LINE_SEIP), 1);
  assert.equal(fn.getIrqLine(hart, k.IRQ_LINE_MEIP), 0, "M-mode has the source disabled");
  assert.notEqual(Atomics.load(pool.words, (hart + k.REQ_OFF) >>> 2) & k.REQ_IRQ, 0, "a running hart would look at its lines");
  assert.equal(sched.stateOf(v), VcpuState.Runnable, "woken through the scheduler");
  // The guest's handler on this side: claim, acknowledge, complete; nothing is left pending.
  assert.equal(Number(plic.read(CLAIM, 4)), SOURCE);
  assert.equal(fn.getIrqLine(hart, k.IRQ_LINE_SEIP), 0);
  assert.equal(acknowledge(), 1);
  plic.write(CLAIM, 4, BigInt(SOURCE));
  assert.equal(Number(plic.read(CLAIM, 4)), 0);
  assert.equal(fn.getIrqLine(hart, k.IRQ_LINE_SEIP), 0);
});

test("a raise on one thread racing an acknowledgement on another never leaves the line stale: it is up exactly when InterruptStatus is not 0", async () => {
  const { pool, plic, route, isr, acknowledge } = setup();
  // Rounds in lockstep: the other thread raises while this one acknowledges,
  // started together by a shared round number, with a varying head start.
  const ROUNDS = 3000;
  const sync = new Int32Array(new SharedArrayBuffer(8)); // [round started, round the raise finished]
  const worker = new Worker(`
    const { workerData } = require("node:worker_threads");
    import(workerData.irqfd).then(({ Irqfd }) => {
      const irqfd = new Irqfd(workerData.route, new Int32Array(workerData.memory.buffer));
      const sync = workerData.sync;
      for (let r = 1; r <= workerData.rounds; r++) {
        while (Atomics.load(sync, 0) !== r) {}
        irqfd.raise(1);
        Atomics.store(sync, 1, r);
      }
    });
  `, { eval: true, workerData: { irqfd: new URL("./irqfd.js", import.meta.url).href, route, memory: pool.memory, sync, rounds: ROUNDS } });
  const failed = new Promise<never>((_, reject) => worker.once("error", reject));
  try {
    for (let r = 1; r <= ROUNDS; r++) {
      Atomics.store(sync, 0, r);
      for (let spin = (r * 7919) % 400; spin > 0; spin--) Atomics.load(sync, 1);
      acknowledge();
      while (Atomics.load(sync, 1) !== r) await Promise.race([failed, undefined]);
      // Claim what is pending and complete it: the gateway forwards the source again only while its line is up.
      plic.read(CLAIM, 4);
      plic.write(CLAIM, 4, BigInt(SOURCE));
      const pending = (Number(plic.read(0x1000, 4)) & (1 << SOURCE)) !== 0;
      assert.equal(pending, Atomics.load(isr.words, isr.index) !== 0, `round ${r}: the line does not follow InterruptStatus`);
      acknowledge();
      plic.read(CLAIM, 4);
      plic.write(CLAIM, 4, BigInt(SOURCE));
    }
  } finally {
    await worker.terminate();
  }
});
