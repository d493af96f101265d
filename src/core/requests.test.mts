// Requests posted to a hart's request word (requests.ts), the VM's shared
// time floor (time.ts) and FENCE: what each does, on one thread. Requests
// noticed while run() executes on another thread: cross-thread.test.mts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHart, RAM_BASE } from "./testing/hart-harness.mjs";
import { translateRegion, fenceNeedsBarrier, type CoreLayout } from "../jit/translate.js";

const I = (op: number, rd: number, f3: number, rs1: number, imm: number) =>
  (((imm & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0;
const AUIPC = (rd: number, imm20: number) => ((imm20 << 12) | (rd << 7) | 0x17) >>> 0;
const ld = (rd: number, rs1: number, imm: number) => I(0x03, rd, 3, rs1, imm);
const addi = (rd: number, rs1: number, imm: number) => I(0x13, rd, 0, rs1, imm);
const RDTIME = (rd: number) => I(0x73, rd, 2, 0, 0xc01); // csrrs rd, time, x0
const JSELF = 0x0000006f;
/** FENCE pred, succ (bits: I 8, O 4, R 2, W 1); fm 8 is FENCE.TSO. */
const FENCE = (pred: number, succ: number, fm = 0) => ((fm << 28) | (pred << 24) | (succ << 20) | 0x0f) >>> 0;
const R = 2, W = 1;
const MIP_SSIP = 1n << 1n;

const req = (t: ReturnType<typeof createHart>) => t.dv.getUint32(t.hart + t.core.REQ_OFF.value, true);

test("REQ_EXIT posted before run() ends it before the first instruction with EXIT_KICK", () => {
  const t = createHart([addi(5, 5, 1), JSELF]);
  const c = t.core;
  c.postRequest(t.hart, c.REQ_EXIT.value);
  assert.equal(t.run(), c.EXIT_KICK.value);
  assert.equal(t.rec("RUN_REASON_OFF"), BigInt(c.EXIT_KICK.value));
  assert.equal(t.rec("RUN_INSNS_OFF"), 0n);
  assert.equal(t.pc(), RAM_BASE);
  assert.equal(req(t), 0, "the hart took the request");
  assert.equal(t.run(1), c.EXIT_BUDGET.value, "and runs on");
  assert.equal(t.x(5), 1n);
});

test("REQ_SSIP sets mip.SSIP on the hart's own thread, and wakes a hart waiting for it", () => {
  const t = createHart([JSELF]);
  const c = t.core;
  c.csrWrite(t.hart, 0x304, MIP_SSIP); // mie.SSIE
  assert.equal(Boolean(c.wakeupPending(t.hart)), false);
  // The host may also post with Atomics on the shared buffer.
  Atomics.or(new Int32Array(t.dv.buffer), (t.hart + c.REQ_OFF.value) >> 2, c.REQ_SSIP.value);
  assert.equal(t.csr(0x344) & MIP_SSIP, 0n, "not before the hart runs");
  assert.equal(Boolean(c.wakeupPending(t.hart)), true, "a waiting IPI wakes the hart");
  t.run(0);
  assert.equal(t.csr(0x344) & MIP_SSIP, MIP_SSIP);
  assert.equal(req(t), 0);
});

test("REQ_TLB_FLUSH flushes the TLB: a page the hypervisor remapped becomes visible", () => {
  // a0 = 0x8000_4000 (pc-relative); ld a1, 0(a0), run again after the remap.
  const t = createHart([AUIPC(10, 4), ld(11, 10, 0), JSELF]);
  const c = t.core;
  t.dv.setBigUint64(t.ram + 4 * 4096, 0x1111n, true);
  t.dv.setBigUint64(t.ram + 5 * 4096, 0x2222n, true);
  t.run(2);
  assert.equal(t.x(11), 0x1111n);
  // Guest page 4 now maps host frame 5 (as a remap, migration or sharing would).
  t.dv.setUint32(t.p2m + 16, t.dv.getUint32(t.p2m + 20, true), true);
  c.setPc(t.hart, RAM_BASE + 4n);
  t.run(1);
  assert.equal(t.x(11), 0x1111n, "the TLB still maps the old frame");
  c.setPc(t.hart, RAM_BASE + 4n);
  c.postRequest(t.hart, c.REQ_TLB_FLUSH.value);
  t.run(1);
  assert.equal(t.x(11), 0x2222n);
});

test("setIrqLine stores the level and posts REQ_IRQ; a reset keeps the line and REQ_EXIT only", () => {
  const t = createHart([JSELF]);
  const c = t.core;
  c.setIrqLine(t.hart, c.IRQ_LINE_SEIP.value, 1);
  assert.equal(req(t), c.REQ_IRQ.value);
  c.postRequest(t.hart, c.REQ_EXIT.value | c.REQ_SSIP.value);
  c.hartReset(t.hart, 0n, RAM_BASE);
  assert.equal(req(t), c.REQ_EXIT.value);
  assert.equal(t.csr(0x344) & (1n << 9n), 1n << 9n, "the PLIC's line is still high after the reset");
});

/** Two harts on one memory sharing the RAM of the first. */
function twoHarts(code: number[]) {
  const a = createHart(code);
  const c = a.core;
  const size = Math.ceil(c.hartStateSize() / 4096) * 4096;
  const b = a.ram + 16 * 4096;
  const floor = b + size;
  c.hartReset(b, 1n, RAM_BASE);
  c.setP2m(b, a.p2m, RAM_BASE >> 12n, 16n);
  return { a, b, floor, c };
}

test("with a shared time floor, a time read is never below one another hart completed before it", () => {
  const { a, b, floor, c } = twoHarts([RDTIME(10), JSELF]);
  const u64 = (v: bigint) => BigInt.asUintN(64, v);
  assert.equal(c.setTimeShared(a.hart, floor + 4), 0, "a misaligned floor is refused");
  assert.equal(c.setTimeShared(a.hart, floor), 1);
  assert.equal(c.setTimeShared(b, floor), 1);
  c.setTime(a.hart, 1_000_000n);
  c.setTime(b, 5n);
  a.run(1);
  assert.equal(a.x(10), 1_000_000n);
  assert.equal(c.run(b, 1), c.EXIT_BUDGET.value);
  assert.ok(u64(c.getX(b, 10)) >= 1_000_000n, `hart 1 read ${u64(c.getX(b, 10))} after hart 0 read 1000000`);
  assert.ok(u64(c.getTime(b)) >= 1_000_000n, "and its own time moved up with it");
  c.setTime(b, 7n);
  assert.ok(u64(c.getTime(b)) >= 1_000_000n, "the host cannot move time backwards either");
});

test("without a time floor, each hart's time is its own (single hart, deterministic mode)", () => {
  const { a, b, c } = twoHarts([RDTIME(10), JSELF]);
  c.setTime(a.hart, 1_000_000n);
  c.setTime(b, 5n);
  a.run(1);
  c.run(b, 1);
  assert.equal(BigInt.asUintN(64, c.getX(b, 10)), 5n);
  c.setTime(b, 3n);
  assert.equal(BigInt.asUintN(64, c.getTime(b)), 3n);
});

test("only a FENCE ordering W before R needs a host barrier; translated code emits atomic.fence for it", () => {
  assert.equal(fenceNeedsBarrier(FENCE(R | W, R | W)), true);
  assert.equal(fenceNeedsBarrier(FENCE(W, R)), true);
  assert.equal(fenceNeedsBarrier(0x0ff0000f), true, "fence iorw, iorw");
  assert.equal(fenceNeedsBarrier(FENCE(R, R | W)), false, "acquire: TSO keeps it");
  assert.equal(fenceNeedsBarrier(FENCE(R | W, W)), false, "release: TSO keeps it");
  assert.equal(fenceNeedsBarrier(FENCE(R | W, R | W, 8)), false, "FENCE.TSO");
  const t = createHart();
  const k = Object.fromEntries(Object.entries(t.core).filter(([, v]) => v instanceof WebAssembly.Global).map(([n, v]) => [n, Number((v as WebAssembly.Global).value)]));
  const region = (fence: number) => {
    const page = new Uint8Array(4096);
    const dv = new DataView(page.buffer);
    [addi(5, 5, 1), fence, addi(6, 6, 1), JSELF].forEach((w, i) => dv.setUint32(4 * i, w, true));
    const r = translateRegion(page, 0, (c) => t.core.expandC(c), k as unknown as CoreLayout, "f");
    return Buffer.from(r!.func.code.toUint8Array());
  };
  const atomicFence = Buffer.from([0xfe, 0x03, 0x00]);
  assert.ok(region(FENCE(R | W, R | W)).includes(atomicFence));
  assert.ok(!region(FENCE(R | W, W)).includes(atomicFence));
  assert.ok(!region(FENCE(R | W, R | W, 8)).includes(atomicFence));
});
