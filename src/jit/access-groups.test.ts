// Consecutive loads or stores off one base register share one TLB probe in
// translated code (translate.ts accessGroup). The cases that could go wrong:
// a load in the group replacing the base register (the accesses after it use
// the new base), a group whose span crosses a page boundary (every access then
// takes the slow path, and the second page may be unmapped), and stores then
// loads of the same bytes. Results and instruction counts must equal the
// interpreter's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { BareMachine } from "../vmm/bare-machine.js";
import type { ElfImage } from "../loader/elf.js";
import { rType, iType, sType, addi, slli, li, Asm } from "./testing/rv-encode.js";
import { bareImage } from "./testing/bare.js";

const CODE = 0x8000_0000n;
const DATA = 0x8010_0000n;
const TOHOST = 0x8020_0000n;
const T0 = 5, T1 = 6, A0 = 10, A1 = 11, A2 = 12, A3 = 13, A4 = 14, S0 = 8, S1 = 9;
const ld = (rd: number, off: number, rs1: number) => iType(off, rs1, 3, rd, 0x03);
const lw = (rd: number, off: number, rs1: number) => iType(off, rs1, 2, rd, 0x03);
const sd = (rs2: number, off: number, rs1: number) => sType(off, rs2, rs1, 3, 0x23);
const sw = (rs2: number, off: number, rs1: number) => sType(off, rs2, rs1, 2, 0x23);
const add = (rd: number, rs1: number, rs2: number) => rType(0, rs2, rs1, 0, rd, 0x33);
const sub = (rd: number, rs1: number, rs2: number) => rType(0x20, rs2, rs1, 0, rd, 0x33);
const BNE = 1;

/** A linked list of 8 nodes {next, value, value2} at DATA + 0x100 * i; the last
 *  node sits at the end of a page so that a group off it spans two pages. */
function data(): Uint8Array {
  const bytes = new Uint8Array(0x2000);
  const v = new DataView(bytes.buffer);
  const at = (i: number) => (i === 7 ? 0xff8 : 0x100 * i);
  for (let i = 0; i < 8; i++) {
    v.setBigUint64(at(i), i === 7 ? DATA + BigInt(at(0)) : DATA + BigInt(at(i + 1)), true);
    v.setBigUint64(at(i) + 8, BigInt(i + 1), true);
    v.setBigUint64(at(i) + 16, BigInt((i + 1) * 100), true);
  }
  return bytes;
}

function program(): ElfImage {
  const a = new Asm();
  a.w(...li(A0, DATA), addi(S0, 0, 0), addi(S1, 0, 0), ...li(A3, 4000n));
  a.label("loop");
  // value, then the base replaced by next, then the next node's value2: the
  // third load must use the new base.
  a.w(ld(A1, 8, A0), ld(A0, 0, A0), ld(A2, 16, A0));
  a.w(slli(T0, S0, 5), sub(S0, T0, S0), add(S0, S0, A1), add(S0, S0, A2)); // s0 = s0 * 31 + a1 + a2: order matters
  // Store a pair and a word off the stack pointer-like base, read them back.
  a.w(...li(A4, DATA + 0x1800n));
  a.w(sd(S0, 0, A4), sw(A1, 8, A4), sd(A2, 16, A4));
  a.w(ld(T0, 0, A4), lw(T1, 8, A4), ld(T1, 16, A4));
  a.w(add(S1, S1, T1), addi(A3, A3, -1));
  a.b(BNE, A3, 0, "loop");
  a.w(...li(T0, TOHOST), addi(T1, 0, 1), sd(T1, 0, T0));
  a.label("spin");
  a.j(0, "spin");
  const code = a.bytes();
  const d = data();
  return bareImage([[CODE, code], [DATA, d]], TOHOST);
}

function run(jit: boolean): { s0: bigint; s1: bigint; instructions: bigint } {
  const m = new BareMachine(program(), { memBytes: 4 << 20, console: () => {}, jit: jit ? { threshold: 1 } : false, maxInsns: 10_000_000n });
  assert.deepEqual(m.run(), { kind: "exit", code: 0 });
  const x = (r: number) => BigInt.asUintN(64, m.core.fn.getX(m.vcpu.hart, r));
  return { s0: x(S0), s1: x(S1), instructions: m.vcpu.stats.instructions };
}

test("grouped loads and stores: a load replacing the base, a group across a page boundary", () => {
  // Expected: node i's value plus the next node's value2, over the ring.
  let s0 = 0n, s1 = 0n;
  for (let k = 0; k < 4000; k++) {
    const i = k % 8, next = (i + 1) % 8;
    s0 = BigInt.asUintN(64, s0 * 31n + BigInt(i + 1) + BigInt((next + 1) * 100));
    s1 += BigInt((next + 1) * 100);
  }
  const interp = run(false);
  assert.equal(interp.s0, s0);
  assert.equal(interp.s1, s1);
  const jit = run(true);
  assert.deepEqual(jit, interp);
});
