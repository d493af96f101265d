// Price of one VM exit: a bare-metal loop that does an MMIO load (or store)
// every iteration, against the same loop without the access, both run through
// the Vcpu exit loop as a machine runs them (core run() returns, the bus finds
// the device, the device answers, run() re-enters and re-executes the access).
// Prints host ns per exit and how many guest instructions of this tight loop
// the interpreter retires in that time (kernel code runs 2-3x slower per
// instruction, so an exit is worth fewer of those).
//
//   npm run bench:exit
//   node dist/bench/exit.js [seconds per case, default 1]

import { instantiateCore, CORE_RESERVED_BYTES } from "../src/vcpu/core.js";
import { FramePool } from "../src/memory/frame-pool.js";
import { P2m } from "../src/memory/p2m.js";
import { GuestMemory } from "../src/memory/guest-memory.js";
import { MmioBus, type MmioDevice } from "../src/bus/mmio-bus.js";
import { Vcpu } from "../src/vcpu/vcpu.js";

const RAM = 0x8000_0000n;
const DEV = 0x1000_0000n;

// lui a0,0x10000 ; loop: <access> ; addi a2,a2,1 ; j loop
const LUI_A0 = 0x10000537;
const LW_A1_0_A0 = 0x00052583;
const SW_A1_0_A0 = 0x00b52023;
const ADDI_A2_1 = 0x00160613;
const NOP = 0x00000013;
const J_BACK_8 = 0xff9ff06f;

class Dummy implements MmioDevice {
  readonly name = "dummy";
  read(): bigint { return 0n; }
  write(): void {}
}

function measure(access: number, seconds: number): { insns: bigint; exits: number; ms: number } {
  const pool = new FramePool(CORE_RESERVED_BYTES);
  const core = instantiateCore(pool.memory);
  const p2m = new P2m(pool, RAM, 1 << 20);
  const ram = new GuestMemory(p2m, pool.memory);
  const bus = new MmioBus();
  bus.register(DEV, 0x1000n, new Dummy());
  const vcpu = new Vcpu(core, pool, 0, p2m, bus);
  const code = new Uint8Array(new Uint32Array([LUI_A0, access, ADDI_A2_1, J_BACK_8]).buffer);
  ram.write(RAM, code);
  vcpu.reset(RAM);
  core.fn.setTickInsns(vcpu.hart, 100);
  core.fn.setSbiMode(vcpu.hart, 0);
  vcpu.runSlice(100_000); // warm up (p2m fault, JIT)
  const i0 = vcpu.stats.instructions;
  const e0 = vcpu.stats.byReason.get("mmio") ?? 0;
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < seconds * 1000) {
    vcpu.runSlice(100_000);
    t = performance.now();
  }
  return {
    insns: vcpu.stats.instructions - i0,
    exits: (vcpu.stats.byReason.get("mmio") ?? 0) - e0,
    ms: t - t0,
  };
}

const seconds = Number(process.argv[2] ?? 1);
const base = measure(NOP, seconds);
const baseNsPerInsn = (base.ms * 1e6) / Number(base.insns);
console.log(`no access:  ${(Number(base.insns) / base.ms / 1e3).toFixed(1)} MIPS (${baseNsPerInsn.toFixed(2)} ns per instruction)`);
for (const [name, insn] of [["load", LW_A1_0_A0], ["store", SW_A1_0_A0]] as const) {
  const r = measure(insn, seconds);
  // Time not explained by the instructions themselves, per exit.
  const nsPerExit = (r.ms * 1e6 - Number(r.insns) * baseNsPerInsn) / r.exits;
  console.log(
    `MMIO ${name}: ${r.exits} exits in ${r.ms.toFixed(0)} ms, ${((r.ms * 1e6) / r.exits).toFixed(0)} ns per iteration, ` +
      `${nsPerExit.toFixed(0)} ns per exit = ${(nsPerExit / baseNsPerInsn).toFixed(0)} instructions`,
  );
}
