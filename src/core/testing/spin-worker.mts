// A worker thread that runs one hart spinning in a tight loop, for
// cross-thread.test.mts: it sets up a bare-metal hart (as BareMachine does,
// but keeping the p2m to hand), tells the test its shared memory, its hart
// block and where the guest's loop counter lives, then calls run() once with
// the largest budget (about 4.3e9 instructions, far more than the test
// waits), so only a request noticed inside run() can end it in time.
import { parentPort, workerData } from "node:worker_threads";
import { instantiateCore, CORE_RESERVED_BYTES } from "../../vcpu/core.js";
import { FramePool } from "../../memory/frame-pool.js";
import { P2m } from "../../memory/p2m.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { MmioBus } from "../../bus/mmio-bus.js";
import { Vcpu } from "../../vcpu/vcpu.js";
import { Jit } from "../../jit/jit.js";
import { BARE_RAM_BASE, BARE_INSNS_PER_TICK } from "../../vmm/bare-machine.js";

export interface SpinJob {
  code: Uint8Array;
  /** Guest-physical addresses: the code (also the entry), HTIF tohost, the
   *  doubleword the guest's loop stores its count to. */
  at: bigint;
  tohost: bigint;
  counter: bigint;
  jit: boolean;
}

export interface SpinStart {
  memory: WebAssembly.Memory;
  hart: number;
  /** Host address of the guest's loop counter. */
  counter: number;
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

const job = workerData as SpinJob;
const pool = new FramePool(CORE_RESERVED_BYTES);
const core = instantiateCore(pool.memory);
const p2m = new P2m(pool, BARE_RAM_BASE, 1 << 20);
const vcpu = new Vcpu(core, pool, 0, p2m, new MmioBus());
if (job.jit) new Jit(core, pool, p2m, { threshold: 1 }).attachHart(vcpu.hart);
const ram = new GuestMemory(p2m);
ram.write(job.at, job.code);
ram.write(job.tohost, new Uint8Array(16));
ram.write(job.counter, new Uint8Array(8));
const { fn, k } = core;
const h = vcpu.hart;
vcpu.reset(job.at);
fn.setTickInsns(h, BARE_INSNS_PER_TICK);
fn.setSbiMode(h, 0);
fn.setHtifTohost(h, job.tohost);

const start: SpinStart = { memory: pool.memory, hart: h, counter: p2m.hostFrame(job.counter) + Number(job.counter & 0xfffn) };
parentPort!.postMessage(start);
const reason = fn.run(h, 0xffffffff);
const rec = new DataView(pool.memory.buffer);
const result: SpinResult = {
  reason,
  insns: Number(rec.getBigUint64(h + k.RUN_INSNS_OFF, true)),
  pc: BigInt.asUintN(64, fn.getPc(h)),
  mcause: BigInt.asUintN(64, fn.csrRead(h, 0x342)),
  t1: BigInt.asUintN(64, fn.getX(h, 6)),
  resumed: reason === k.EXIT_KICK ? fn.run(h, 1000) : -1,
};
parentPort!.postMessage(result);
