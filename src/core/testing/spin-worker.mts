// A worker thread that runs one hart spinning in a tight loop, for
// cross-thread.test.mts: it builds a bare-metal machine, hands the test its
// shared memory and hart block, then calls run() once with the largest
// budget (about 4.3e9 instructions, far more than the test waits), so only a
// request noticed inside run() can end it in time.
import { parentPort, workerData } from "node:worker_threads";
import { BareMachine } from "../../vmm/bare-machine.js";
import { bareImage } from "../../jit/testing/bare.js";

export interface SpinJob {
  code: Uint8Array;
  at: bigint;
  tohost: bigint;
  jit: boolean;
}

export interface SpinResult {
  reason: number;
  insns: number;
  pc: bigint;
  mcause: bigint;
  t1: bigint;
  /** run() again after the exit: its reason (the hart goes on where it stopped). */
  resumed: number;
}

const { code, at, tohost, jit } = workerData as SpinJob;
const m = new BareMachine(bareImage([[at, code]], tohost), {
  memBytes: 1 << 20, console: () => {}, jit: jit ? { threshold: 1 } : false,
});
const { fn, k } = m.core;
const h = m.vcpu.hart;
parentPort!.postMessage({ memory: m.core.memory, hart: h });
const reason = fn.run(h, 0xffffffff);
const rec = new DataView(m.core.memory.buffer);
const result: SpinResult = {
  reason,
  insns: Number(rec.getBigUint64(h + k.RUN_INSNS_OFF, true)),
  pc: BigInt.asUintN(64, fn.getPc(h)),
  mcause: BigInt.asUintN(64, fn.csrRead(h, 0x342)),
  t1: BigInt.asUintN(64, fn.getX(h, 6)),
  resumed: reason === k.EXIT_KICK ? fn.run(h, 1000) : -1,
};
parentPort!.postMessage(result);
