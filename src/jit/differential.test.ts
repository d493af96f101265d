// Differential test of binary translation against the interpreter.
//
// A seeded PRNG writes random RV64GC programs (encoded here, no assembler
// needed): integer and M-extension arithmetic with its corner cases, loads and
// stores of every width (misaligned, across a page boundary, and to addresses
// no device claims), forward branches and jumps, compressed instructions, a
// little floating point, atomics (some misaligned), CSR reads, ECALL/EBREAK and
// illegal instructions. Each program runs in two bare machines, one
// interpreting and one translating every block before its first execution,
// with the same random sequence of small instruction budgets; after every slice
// the pc, all registers, the instruction count and the trap CSRs must agree,
// and at the end the data area too.
//
// Program layout (all in guest RAM at 0x8000_0000):
//   0x8000_0000  prologue: mtvec, mstatus.FS, base registers, random values
//                loop: body (random items) x3; store 1 to tohost
//                trap handler: mepc += length of the instruction at mepc; mret
//                (a trap from outside the program ends it: tohost = ESCAPED)
//   0x8010_0000  16 KiB data area (random bytes)
//   0x8020_0000  tohost
// Registers the body never writes: x5 = data + 0x800 and x8 = data + 0x1f80
// (bases), x6 = 0x1000_0000 (no device there: accesses fault), x28/x29 (the
// trap handler's scratch), x30 (addresses for atomics), x31 (loop counter).
import { test } from "node:test";
import assert from "node:assert/strict";
import { BareMachine } from "../vmm/bare-machine.js";
import type { ElfImage } from "../loader/elf.js";
import { rType, iType, sType, bType, uType, jType, addi, addiw, slli, lui, csrrw, csrrs, FENCE_I, li, Asm } from "./testing/rv-encode.js";
import { Rng } from "./testing/bare.js";

const CODE = 0x8000_0000n;
const DATA = 0x8010_0000n;
const DATA_SIZE = 0x4000;
const TOHOST = 0x8020_0000n;
const MEM_BYTES = 4 << 20;
const NO_DEVICE = 0x1000_0000n;
/** tohost value of a program whose trap handler saw mepc outside the program
 *  (exit code 63). */
const ESCAPED = (63n << 1n) | 1n;

const SEEDS = Array.from({ length: 24 }, (_, i) => 0x1000 + i * 7919);
/** Slices per program before it counts as stuck (a program retires ~1500 instructions). */
const MAX_STEPS = 4000;

// ---- instruction encoders ------------------------------------------------------


const fmvDX = (fd: number, rs1: number) => rType(0x79, 0, rs1, 0, fd, 0x53);
const MRET = 0x30200073;
const ECALL = 0x00000073;
const EBREAK = 0x00100073;
const FENCE = 0x0ff0000f;

// Compressed forms (RVC, unprivileged spec chapter 16). r' registers are x8..x15.
const cImm6 = (f3: number, rd: number, imm: number, op: number) =>
  (f3 << 13) | (((imm >> 5) & 1) << 12) | (rd << 7) | ((imm & 0x1f) << 2) | op;
const cAddi = (rd: number, imm: number) => cImm6(0, rd, imm, 1);
const cAddiw = (rd: number, imm: number) => cImm6(1, rd, imm, 1);
const cLi = (rd: number, imm: number) => cImm6(2, rd, imm, 1);
const cSlli = (rd: number, sh: number) => cImm6(0, rd, sh, 2);
const cMv = (rd: number, rs2: number) => (4 << 13) | (rd << 7) | (rs2 << 2) | 2;
const cAdd = (rd: number, rs2: number) => (4 << 13) | (1 << 12) | (rd << 7) | (rs2 << 2) | 2;
/** c.srli (0), c.srai (1), c.andi (2) on rd' (x8..x15). */
const cShAnd = (f2: number, rdp: number, imm: number) =>
  (4 << 13) | (((imm >> 5) & 1) << 12) | (f2 << 10) | ((rdp - 8) << 7) | ((imm & 0x1f) << 2) | 1;
/** c.sub c.xor c.or c.and (w = 0), c.subw c.addw (w = 1). */
const cArith = (w: number, f2: number, rdp: number, rs2p: number) =>
  (4 << 13) | (w << 12) | (3 << 10) | ((rdp - 8) << 7) | (f2 << 5) | ((rs2p - 8) << 2) | 1;
/** c.lw/c.sw (f3 2/6, offsets scaled by 4) and c.fld/c.ld/c.fsd/c.sd (f3 1/3/5/7, by 8). */
const cMem = (f3: number, rs1p: number, rp: number, off: number) => {
  const mid = f3 === 2 || f3 === 6 ? (((off >> 2) & 1) << 6) | (((off >> 6) & 1) << 5) : ((off >> 6) & 3) << 5;
  return (f3 << 13) | (((off >> 3) & 7) << 10) | ((rs1p - 8) << 7) | mid | ((rp - 8) << 2);
};
const cJ = (imm: number) =>
  (5 << 13) | (((imm >> 11) & 1) << 12) | (((imm >> 4) & 1) << 11) | (((imm >> 8) & 3) << 9) | (((imm >> 10) & 1) << 8) |
  (((imm >> 6) & 1) << 7) | (((imm >> 7) & 1) << 6) | (((imm >> 1) & 7) << 3) | (((imm >> 5) & 1) << 2) | 1;
/** c.beqz (f3 6), c.bnez (f3 7). */
const cBz = (f3: number, rs1p: number, imm: number) =>
  (f3 << 13) | (((imm >> 8) & 1) << 12) | (((imm >> 3) & 3) << 10) | ((rs1p - 8) << 7) | (((imm >> 6) & 3) << 5) |
  (((imm >> 1) & 3) << 3) | (((imm >> 5) & 1) << 2) | 1;
const C_NOP = 0x0001;
const C_EBREAK = 0x9002;

/** Split a code offset (below 0x10000) for lui + addi. */
function hiLo(off: number): { hi: number; lo: number } {
  const hi = (off + 0x800) >> 12;
  return { hi, lo: off - (hi << 12) };
}

/** rd += offset of `label` in the code (fixed length: lui x29, addi x29, add). */
function addOffset(asm: Asm, rd: number, label: string): void {
  asm.w(() => lui(29, hiLo(asm.at(label)).hi));
  asm.w(() => addi(29, 29, hiLo(asm.at(label)).lo));
  asm.w(rType(0, 29, rd, 0, rd, 0x33));
}


// ---- program generator -----------------------------------------------------------

const RESERVED = new Set([0, 5, 6, 8, 28, 29, 30, 31]);
const DEST = Array.from({ length: 32 }, (_, i) => i).filter((r) => !RESERVED.has(r));
const C_DEST = [9, 10, 11, 12, 13, 14, 15];
const C_SRC = [8, 9, 10, 11, 12, 13, 14, 15];
const X5 = DATA + 0x800n;
const X8 = DATA + 0x1f80n;
const RMS = [0, 1, 2, 3, 4, 7];

function randomValue(rng: Rng): bigint {
  switch (rng.int(12)) {
    case 0: return 0n;
    case 1: return -1n;
    case 2: return -(1n << 63n);
    case 3: return (1n << 63n) - 1n;
    case 4: return -(1n << 31n);
    case 5: return (1n << 31n) - 1n;
    case 6: return 0xffff_ffffn;
    case 7: return BigInt(rng.range(-2048, 2047));
    case 8: return BigInt.asIntN(32, BigInt(rng.u32()));
    default: return rng.u64();
  }
}

function randomDoubleBits(rng: Rng): bigint {
  const dv = new DataView(new ArrayBuffer(8));
  switch (rng.int(10)) {
    case 0: return 0x7ff8_0000_0000_0000n; // qNaN
    case 1: return 0x7ff4_0000_0000_0000n; // sNaN
    case 2: return rng.pick([0x7ff0_0000_0000_0000n, 0xfff0_0000_0000_0000n, 0x8000_0000_0000_0000n, 0n, 1n]);
    case 3: return rng.u64();
    case 4: dv.setFloat64(0, rng.pick([1e300, -1e-300, 9.2233720368547758e18, -9.2233720368547758e18, 0.5, 2.5, -2.5])); return dv.getBigUint64(0);
    default: dv.setFloat64(0, (rng.u32() - 2 ** 31) / rng.range(1, 1000)); return dv.getBigUint64(0);
  }
}

/** Base register and offset for an access of `size` bytes. */
function memOperand(rng: Rng, size: number): { base: number; off: number } {
  const p = rng.int(100);
  if (p < 5) return { base: 6, off: rng.range(-64, 64) }; // no device: access fault
  if (p < 8) return { base: 0, off: rng.range(-2048, 2047) }; // near 0 or near 2^64: fault
  if (p < 20 && size > 1) {
    // Across a page boundary: data + 0x1000 (x5 + 0x800) or data + 0x2000 (x8 + 0x80).
    const d = rng.range(1, size - 1);
    return rng.chance(0.5) ? { base: 5, off: 0x800 - d } : { base: 8, off: 0x80 - d };
  }
  const base = rng.chance(0.75) ? 5 : 8;
  let off = rng.range(-2048, 2047);
  if (rng.chance(0.7)) off &= ~(size - 1);
  return { base, off };
}

type Item = (a: Asm, target: (skip: number) => string) => void;

function randomItem(rng: Rng): Item {
  const rd = () => rng.pick(DEST);
  const rs = () => rng.int(32);
  const f = () => rng.int(32);
  const kind = rng.int(100);
  // Integer register-register, RV64I and M, W forms included.
  if (kind < 16) {
    const ops: [number, number, number][] = [
      [0, 0, 0x33], [0x20, 0, 0x33], [0, 1, 0x33], [0, 2, 0x33], [0, 3, 0x33], [0, 4, 0x33], [0, 5, 0x33], [0x20, 5, 0x33],
      [0, 6, 0x33], [0, 7, 0x33], [0, 0, 0x3b], [0x20, 0, 0x3b], [0, 1, 0x3b], [0, 5, 0x3b], [0x20, 5, 0x3b],
      [1, 0, 0x33], [1, 1, 0x33], [1, 2, 0x33], [1, 3, 0x33], [1, 4, 0x33], [1, 5, 0x33], [1, 6, 0x33], [1, 7, 0x33],
      [1, 0, 0x3b], [1, 4, 0x3b], [1, 5, 0x3b], [1, 6, 0x3b], [1, 7, 0x3b],
      // Zba, Zbb, Zbs
      [0x10, 2, 0x33], [0x10, 4, 0x33], [0x10, 6, 0x33], [0x20, 7, 0x33], [0x20, 6, 0x33], [0x20, 4, 0x33],
      [0x05, 4, 0x33], [0x05, 5, 0x33], [0x05, 6, 0x33], [0x05, 7, 0x33], [0x30, 1, 0x33], [0x30, 5, 0x33],
      [0x24, 1, 0x33], [0x24, 5, 0x33], [0x14, 1, 0x33], [0x34, 1, 0x33],
      [0x04, 0, 0x3b], [0x10, 2, 0x3b], [0x10, 4, 0x3b], [0x10, 6, 0x3b], [0x30, 1, 0x3b], [0x30, 5, 0x3b],
    ];
    const [f7, f3, op] = rng.pick(ops);
    const a = rs();
    const b = rng.chance(0.1) ? a : rng.chance(0.08) ? 0 : rs();
    const d = rd();
    return (asm) => asm.w(rType(f7, b, a, f3, d, op));
  }
  // Division overflow: MIN / -1 in 64 and 32 bits.
  if (kind < 19) {
    const x = rd(), y = rd(), d = rd();
    const w = rng.chance(0.5);
    const f3 = rng.pick([4, 5, 6, 7]);
    return (asm) => {
      if (w) asm.w(lui(x, 0x80000));
      else asm.w(...[addi(x, 0, -1), slli(x, x, 63)]);
      asm.w(addi(y, 0, -1));
      asm.w(rType(1, y, x, f3, d, w ? 0x3b : 0x33));
    };
  }
  // Register-immediate.
  if (kind < 30) {
    const d = rd(), a = rs();
    switch (rng.int(15)) {
      case 0: case 1: { const f3 = rng.pick([0, 2, 3, 4, 6, 7]); const imm = rng.range(-2048, 2047); return (asm) => asm.w(iType(imm, a, f3, d, 0x13)); }
      case 2: { const imm = rng.range(-2048, 2047); return (asm) => asm.w(addiw(d, a, imm)); }
      case 3: { const sh = rng.int(64); return (asm) => asm.w(iType(sh, a, 1, d, 0x13)); }
      case 4: { const sh = rng.int(64); return (asm) => asm.w(iType(sh, a, 5, d, 0x13)); }
      case 5: { const sh = rng.int(64); return (asm) => asm.w(iType(0x400 | sh, a, 5, d, 0x13)); }
      case 6: { const sh = rng.int(32); return (asm) => asm.w(iType(sh, a, 1, d, 0x1b)); }
      case 7: { const sh = rng.int(32); return (asm) => asm.w(iType(sh, a, 5, d, 0x1b)); }
      case 8: { const sh = rng.int(32); return (asm) => asm.w(iType(0x400 | sh, a, 5, d, 0x1b)); }
      case 9: { const imm = rng.u32() >>> 12; return (asm) => asm.w(lui(d, imm)); }
      case 10: { const imm = rng.u32() >>> 12; return (asm) => asm.w(uType(imm, d, 0x17)); } // AUIPC
      case 11: { // Zbb/Zbs immediate forms: clz ctz cpop sext.b sext.h, bclri bseti binvi; orc.b rev8 rori bexti
        const sh = rng.int(64);
        const [imm, f3] = rng.pick([[0x600, 1], [0x601, 1], [0x602, 1], [0x604, 1], [0x605, 1], [0x480 | sh, 1], [0x280 | sh, 1],
          [0x680 | sh, 1], [0x287, 5], [0x6b8, 5], [0x600 | sh, 5], [0x480 | sh, 5]] as const);
        return (asm) => asm.w(iType(imm, a, f3, d, 0x13));
      }
      case 12: { // clzw ctzw cpopw, slli.uw, roriw, zext.h
        const sh = rng.int(32);
        const [imm, f3, op] = rng.pick([[0x600, 1, 0x1b], [0x601, 1, 0x1b], [0x602, 1, 0x1b], [0x080 | rng.int(64), 1, 0x1b],
          [0x600 | sh, 5, 0x1b], [0x080, 4, 0x3b]] as const);
        return (asm) => asm.w(iType(imm, a, f3, d, op));
      }
      default: { const v = randomValue(rng); return (asm) => asm.w(...li(d, v)); }
    }
  }
  // Loads.
  if (kind < 40) {
    const [f3, size] = rng.pick([[0, 1], [1, 2], [2, 4], [3, 8], [4, 1], [5, 2], [6, 4]] as const);
    const { base, off } = memOperand(rng, size);
    const d = rd();
    return (asm) => asm.w(iType(off, base, f3, d, 0x03));
  }
  // Stores.
  if (kind < 50) {
    const f3 = rng.int(4);
    const { base, off } = memOperand(rng, 1 << f3);
    const v = rs();
    return (asm) => asm.w(sType(off, v, base, f3, 0x23));
  }
  // Forward branches (all six conditions) and JAL, skipping 1-4 items.
  if (kind < 60) {
    const skip = rng.range(1, 4);
    if (rng.chance(0.2)) {
      const d = rng.chance(0.5) ? 0 : rd();
      return (asm, target) => asm.w((at) => jType(asm.at(target(skip)) - at, d));
    }
    const f3 = rng.pick([0, 1, 4, 5, 6, 7]);
    const a = rs();
    const b = rng.chance(0.2) ? a : rs();
    return (asm, target) => asm.w((at) => bType(asm.at(target(skip)) - at, b, a, f3));
  }
  // Compressed.
  if (kind < 75) {
    switch (rng.int(12)) {
      case 0: { const d = rd(), imm = rng.range(-32, 31) || 1; return (asm) => asm.h(cAddi(d, imm)); }
      case 1: { const d = rd(), imm = rng.range(-32, 31); return (asm) => asm.h(cLi(d, imm)); }
      case 2: { const d = rd(), s = rng.range(1, 31); return (asm) => asm.h(cMv(d, s)); }
      case 3: { const d = rd(), s = rng.range(1, 31); return (asm) => asm.h(cAdd(d, s)); }
      case 4: { const d = rd(), imm = rng.range(-32, 31); return (asm) => asm.h(cAddiw(d, imm)); }
      case 5: { const d = rd(), sh = rng.range(1, 63); return (asm) => asm.h(cSlli(d, sh)); }
      case 6: {
        const f2 = rng.int(3), d = rng.pick(C_DEST);
        const imm = f2 === 2 ? rng.range(-32, 31) : rng.range(1, 63);
        return (asm) => asm.h(cShAnd(f2, d, imm));
      }
      case 7: {
        const w = rng.int(2), f2 = w ? rng.int(2) : rng.int(4), d = rng.pick(C_DEST), s = rng.pick(C_SRC);
        return (asm) => asm.h(cArith(w, f2, d, s));
      }
      case 8: case 9: {
        // Loads and stores off x8 (aligned: its offsets are scaled).
        const f3 = rng.pick([1, 2, 3, 5, 6, 7]);
        const off = f3 === 2 || f3 === 6 ? rng.int(32) * 4 : rng.int(32) * 8;
        // f3 2 and 3 load x registers (never x8); the others read them or use f8..f15.
        const r = f3 === 2 || f3 === 3 ? rng.pick(C_DEST) : rng.pick(C_SRC);
        return (asm) => asm.h(cMem(f3, 8, r, off));
      }
      case 10: {
        const skip = rng.range(1, 4);
        if (rng.chance(0.3)) return (asm, target) => asm.h((at) => cJ(asm.at(target(skip)) - at));
        const f3 = rng.pick([6, 7]), r = rng.pick(C_SRC);
        return (asm, target) => asm.h((at) => cBz(f3, r, asm.at(target(skip)) - at));
      }
      default: return (asm) => asm.h(C_NOP);
    }
  }
  // Floating point (double).
  if (kind < 84) {
    const rm = rng.pick(RMS);
    switch (rng.int(12)) {
      case 0: case 1: {
        const f7 = rng.pick([0x01, 0x05, 0x09, 0x0d]); // fadd fsub fmul fdiv
        const d = f(), a = f(), b = f();
        return (asm) => asm.w(rType(f7, b, a, rm, d, 0x53));
      }
      case 2: { const d = f(), a = rs(); return (asm) => asm.w(rType(0x69, rng.pick([0, 2]), a, rm, d, 0x53)); } // fcvt.d.w/l
      case 3: { const d = rd(), a = f(), t = rng.pick([0, 1, 2, 3]); return (asm) => asm.w(rType(0x61, t, a, rm, d, 0x53)); } // fcvt.{w,wu,l,lu}.d
      case 4: { const d = f(), a = rs(); return (asm) => asm.w(fmvDX(d, a)); }
      case 5: { const d = rd(), a = f(); return (asm) => asm.w(rType(0x71, 0, a, 0, d, 0x53)); } // fmv.x.d
      case 6: { const d = rd(), a = f(), b = f(), f3 = rng.pick([0, 1, 2]); return (asm) => asm.w(rType(0x51, b, a, f3, d, 0x53)); } // fle flt feq
      case 7: { const d = f(), a = f(), b = f(), c = f(); return (asm) => asm.w(((c << 27) | (1 << 25) | (b << 20) | (a << 15) | (rm << 12) | (d << 7) | 0x43) >>> 0); } // fmadd.d
      case 8: { const d = f(), a = f(); return (asm) => asm.w(rType(0x2d, 0, a, rm, d, 0x53)); } // fsqrt.d
      case 9: { const d = f(), a = f(), b = f(), f3 = rng.pick([0, 1]); return (asm) => asm.w(rType(0x15, b, a, f3, d, 0x53)); } // fmin fmax
      default: {
        // fld/flw, fsd/fsw
        const size = rng.pick([4, 8]);
        const { base, off } = memOperand(rng, size);
        const r = f();
        return rng.chance(0.5)
          ? (asm) => asm.w(iType(off, base, size === 8 ? 3 : 2, r, 0x07))
          : (asm) => asm.w(sType(off, r, base, size === 8 ? 3 : 2, 0x27));
      }
    }
  }
  // Atomics.
  if (kind < 90) {
    const size = rng.pick([4, 8]);
    const base = rng.chance(0.9) ? 5 : 6;
    let off = rng.range(-2048, 2047) & ~(size - 1);
    if (rng.chance(0.2)) off += rng.range(1, size - 1); // misaligned: traps
    const f3 = size === 8 ? 3 : 2;
    const d = rng.chance(0.1) ? 0 : rd(), v = rs();
    const aqrl = rng.int(4);
    if (rng.chance(0.2)) {
      // LR/SC pair.
      const d2 = rd();
      return (asm) => {
        asm.w(addi(30, base, off));
        asm.w(rType((0x02 << 2) | aqrl, 0, 30, f3, d, 0x2f));
        asm.w(rType((0x03 << 2) | aqrl, v, 30, f3, d2, 0x2f));
      };
    }
    const f5 = rng.pick([0x00, 0x01, 0x04, 0x08, 0x0c, 0x10, 0x14, 0x18, 0x1c]);
    return (asm) => {
      asm.w(addi(30, base, off));
      asm.w(rType((f5 << 2) | aqrl, v, 30, f3, d, 0x2f));
    };
  }
  // SYSTEM and MISC-MEM: CSR reads (counters mid-region), fflags/frm writes,
  // ECALL/EBREAK, fences.
  if (kind < 96) {
    const d = rd();
    switch (rng.int(8)) {
      case 0: case 1: { const csr = rng.pick([0xb02, 0xc02, 0xb00, 0xc01, 0x001, 0x300, 0x341, 0x342, 0x343]); return (asm) => asm.w(csrrs(d, csr, 0)); }
      case 2: { const a = rs(); return (asm) => asm.w(csrrw(d, 0x001, a)); } // fflags
      case 3: { const v = rng.int(5); return (asm) => asm.w(iType(0x002, v, 5, d, 0x73)); } // csrrwi frm
      case 4: return (asm) => asm.w(rng.chance(0.5) ? ECALL : EBREAK);
      case 5: return (asm) => asm.h(C_EBREAK);
      default: { const fe = rng.chance(0.5) ? FENCE : FENCE_I; return (asm) => asm.w(fe); }
    }
  }
  // Illegal instructions.
  const ill = rng.int(3);
  return (asm) => (ill === 0 ? asm.w(0) : ill === 1 ? asm.w(0xffffffff) : asm.h(0));
}

interface Program {
  elf: ElfImage;
  /** Byte offset of the body in the code, for messages. */
  body: number;
  items: number;
}

function generate(seed: number): Program {
  const rng = new Rng(seed);
  const asm = new Asm();
  // Prologue.
  // mtvec = handler, as an absolute address (no AUIPC, so that a translation
  // error cannot send every trap astray).
  asm.w(...[addi(28, 0, 1), slli(28, 28, 31)]); // x28 = CODE
  addOffset(asm, 28, "handler");
  asm.w(csrrw(0, 0x305, 28)); // mtvec
  asm.w(...[lui(28, 0x2), csrrs(0, 0x300, 28)]); // mstatus.FS = Initial
  asm.w(...li(5, X5));
  asm.w(...li(6, NO_DEVICE));
  asm.w(...li(8, X8));
  asm.w(addi(30, 5, 0));
  asm.w(addi(31, 0, 3));
  for (const r of DEST) asm.w(...li(r, randomValue(rng)));
  for (let fr = 0; fr < 32; fr++) {
    asm.w(...li(28, randomDoubleBits(rng)));
    asm.w(fmvDX(fr, 28));
  }
  // Body, three times.
  const n = rng.range(100, 300);
  const items = Array.from({ length: n }, () => randomItem(rng));
  asm.label("top");
  const body = asm.size;
  items.forEach((item, idx) => {
    asm.label(`i${idx}`);
    item(asm, (skip) => `i${Math.min(n, idx + 1 + skip)}`);
  });
  asm.label(`i${n}`);
  asm.w(addi(31, 31, -1));
  asm.w(bType(8, 0, 31, 0)); // beq x31, x0, +8
  asm.w((at) => jType(asm.at("top") - at, 0));
  // Exit: tohost = 1.
  asm.w(...li(28, TOHOST));
  asm.w(addi(29, 0, 1));
  asm.w(sType(0, 29, 28, 3, 0x23));
  asm.w(jType(0, 0));
  // Trap handler: skip the instruction at mepc (its length from its low bits).
  asm.align(4);
  asm.label("handler");
  asm.w(...[csrrs(28, 0x341, 0), addi(29, 0, 1), slli(29, 29, 31), rType(0x20, 29, 28, 0, 28, 0x33)]); // x28 = mepc - CODE
  asm.w(() => lui(29, hiLo(asm.at("end")).hi));
  asm.w(() => addi(29, 29, hiLo(asm.at("end")).lo));
  asm.w((at) => bType(asm.at("escape") - at, 29, 28, 7)); // bgeu: mepc outside the program
  asm.w(...[
    csrrs(28, 0x341, 0),
    iType(0, 28, 5, 29, 0x03), // lhu x29, 0(x28)
    iType(3, 29, 7, 29, 0x13), // andi x29, x29, 3
    addi(29, 29, -3),
    iType(1, 29, 3, 29, 0x13), // sltiu x29, x29, 1
    slli(29, 29, 1),
    addi(29, 29, 2),
    rType(0, 29, 28, 0, 28, 0x33), // add x28, x28, x29
    csrrw(0, 0x341, 28),
    MRET,
  ]);
  // A trap from outside the program (control went astray): report tohost =
  // ESCAPED rather than read an instruction there (where no device is, that
  // load would fault again and again).
  asm.label("escape");
  asm.w(...li(28, TOHOST));
  asm.w(addi(29, 0, Number(ESCAPED)));
  asm.w(sType(0, 29, 28, 3, 0x23));
  asm.w(jType(0, 0));
  asm.label("end");
  const code = asm.bytes();
  const data = new Uint8Array(DATA_SIZE);
  for (let i = 0; i < DATA_SIZE; i += 4) new DataView(data.buffer).setUint32(i, rng.u32(), true);
  return {
    elf: {
      entry: CODE,
      segments: [
        { paddr: CODE, vaddr: CODE, data: code, memsz: BigInt(code.length) },
        // The data pages one by one, out of order: the loader backs them in
        // this order, so neighbouring guest pages are not neighbours in host
        // memory and an access across their boundary must not be done as one.
        ...[3, 1, 0, 2].map((i) => {
          const at = DATA + BigInt(i * 4096);
          return { paddr: at, vaddr: at, data: data.subarray(i * 4096, (i + 1) * 4096), memsz: 4096n };
        }),
        { paddr: TOHOST, vaddr: TOHOST, data: new Uint8Array(16), memsz: 16n },
      ],
      symbol: (name) => (name === "tohost" ? TOHOST : undefined),
    },
    body,
    items: n,
  };
}

// ---- running and comparing ------------------------------------------------------------

const CSRS: [string, number][] = [
  ["mstatus", 0x300], ["mepc", 0x341], ["mcause", 0x342], ["mtval", 0x343], ["fflags", 0x001], ["minstret", 0xb02],
];

function snapshot(m: BareMachine): [string, bigint][] {
  const { fn } = m.core;
  const h = m.vcpu.hart;
  const out: [string, bigint][] = [["pc", BigInt.asUintN(64, fn.getPc(h))]];
  for (let i = 1; i < 32; i++) out.push([`x${i}`, BigInt.asUintN(64, fn.getX(h, i))]);
  for (let i = 0; i < 32; i++) out.push([`f${i}`, BigInt.asUintN(64, fn.getF(h, i))]);
  out.push(["instructions retired", m.vcpu.stats.instructions]);
  for (const [name, csr] of CSRS) out.push([name, BigInt.asUintN(64, fn.csrRead(h, csr))]);
  return out;
}

const hex = (v: bigint) => `0x${v.toString(16)}`;

function newMachine(elf: ElfImage, jit: boolean): BareMachine {
  return new BareMachine(elf, { memBytes: MEM_BYTES, console: () => {}, jit: jit ? { threshold: 1 } : false });
}

/** Mcause values seen at slice ends across all programs (so the test can tell
 *  that the traps it means to exercise happened). */
const causesSeen = new Set<bigint>();
let programsRun = 0;

function runDifferential(seed: number): void {
  const prog = generate(seed);
  const interp = newMachine(prog.elf, false);
  const jit = newMachine(prog.elf, true);
  const budgets = new Rng(seed ^ 0x5bd1e995);
  for (let step = 0; ; step++) {
    assert.ok(step < MAX_STEPS, `seed ${seed}: the program did not finish within ${MAX_STEPS} slices`);
    // Mostly small slices (translated code must stop exactly at their end),
    // sometimes long ones (long runs inside translated regions).
    const budget = budgets.chance(0.9) ? budgets.range(1, 64) : budgets.range(65, 1000);
    const ea = interp.vcpu.runSlice(budget);
    const eb = jit.vcpu.runSlice(budget);
    const sa = snapshot(interp);
    const sb = snapshot(jit);
    const where = () =>
      `seed ${seed}, step ${step} (budget ${budget}): pc interpreter ${hex(sa[0][1])}, jit ${hex(sb[0][1])} ` +
      `(body starts at ${hex(CODE + BigInt(prog.body))})`;
    assert.equal(eb.kind, ea.kind, `slice end differs: interpreter ${ea.kind}, jit ${eb.kind}; ${where()}`);
    for (let i = 0; i < sa.length; i++) {
      if (sa[i][1] !== sb[i][1]) {
        assert.fail(`${sa[i][0]} differs: interpreter ${hex(sa[i][1])}, jit ${hex(sb[i][1])}; ${where()}`);
      }
    }
    causesSeen.add(sa.find(([name]) => name === "mcause")![1]);
    if (ea.kind === "htif") {
      const what = (v: bigint) => (v === ESCAPED ? "a trap from outside the program" : `tohost ${hex(v)}`);
      assert.equal(ea.value, 1n, `seed ${seed}: interpreter ended with ${what(ea.value)}; ${where()}`);
      assert.equal(eb.kind === "htif" && eb.value, 1n, `seed ${seed}: jit ended with ${eb.kind === "htif" ? what(eb.value) : eb.kind}; ${where()}`);
      break;
    }
    assert.equal(ea.kind, "budget", `seed ${seed}, step ${step}: unexpected slice end ${ea.kind}`);
  }
  const da = (interp as any).ram.read(DATA, DATA_SIZE) as Uint8Array;
  const db = (jit as any).ram.read(DATA, DATA_SIZE) as Uint8Array;
  for (let i = 0; i < DATA_SIZE; i++) {
    if (da[i] !== db[i]) {
      assert.fail(`seed ${seed}: data byte at ${hex(DATA + BigInt(i))} differs: interpreter 0x${da[i].toString(16)}, jit 0x${db[i].toString(16)}`);
    }
  }
  const stats = jit.jit!.stats();
  assert.ok(stats.translatedInstructions > 0, `seed ${seed}: no instruction ran in translated code (${JSON.stringify(stats)})`);
  programsRun++;
}

test("the encoders agree with the core's decoder on compressed forms", () => {
  const m = newMachine(generate(SEEDS[0]).elf, false);
  const expand = (c: number) => m.core.fn.expandC(c) >>> 0;
  assert.equal(expand(cAddi(10, -3)), addi(10, 10, -3));
  assert.equal(expand(cAddiw(11, 31)), addiw(11, 11, 31));
  assert.equal(expand(cLi(12, -32)), addi(12, 0, -32));
  assert.equal(expand(cSlli(13, 63)), slli(13, 13, 63));
  assert.equal(expand(cMv(14, 15)), rType(0, 15, 0, 0, 14, 0x33));
  assert.equal(expand(cAdd(14, 15)), rType(0, 15, 14, 0, 14, 0x33));
  assert.equal(expand(cShAnd(0, 9, 33)), iType(33, 9, 5, 9, 0x13)); // c.srli
  assert.equal(expand(cShAnd(1, 9, 33)), iType(0x400 | 33, 9, 5, 9, 0x13)); // c.srai
  assert.equal(expand(cShAnd(2, 9, -7)), iType(-7, 9, 7, 9, 0x13)); // c.andi
  assert.equal(expand(cArith(0, 0, 10, 11)), rType(0x20, 11, 10, 0, 10, 0x33)); // c.sub
  assert.equal(expand(cArith(0, 3, 10, 11)), rType(0, 11, 10, 7, 10, 0x33)); // c.and
  assert.equal(expand(cArith(1, 1, 10, 11)), rType(0, 11, 10, 0, 10, 0x3b)); // c.addw
  assert.equal(expand(cMem(2, 8, 9, 124)), iType(124, 8, 2, 9, 0x03)); // c.lw
  assert.equal(expand(cMem(3, 8, 9, 248)), iType(248, 8, 3, 9, 0x03)); // c.ld
  assert.equal(expand(cMem(1, 8, 9, 136)), iType(136, 8, 3, 9, 0x07)); // c.fld
  assert.equal(expand(cMem(6, 8, 9, 68)), sType(68, 9, 8, 2, 0x23)); // c.sw
  assert.equal(expand(cMem(7, 8, 9, 200)), sType(200, 9, 8, 3, 0x23)); // c.sd
  assert.equal(expand(cMem(5, 8, 9, 8)), sType(8, 9, 8, 3, 0x27)); // c.fsd
  assert.equal(expand(cJ(2046)), jType(2046, 0));
  assert.equal(expand(cJ(-2048)), jType(-2048, 0));
  assert.equal(expand(cJ(0x2aa)), jType(0x2aa, 0));
  assert.equal(expand(cBz(6, 9, 254)), bType(254, 0, 9, 0)); // c.beqz
  assert.equal(expand(cBz(7, 9, -256)), bType(-256, 0, 9, 1)); // c.bnez
  assert.equal(expand(cBz(7, 9, 0x56)), bType(0x56, 0, 9, 1));
  assert.equal(expand(C_EBREAK), EBREAK);
  assert.equal(expand(0), 0, "c.illegal");
});

for (const seed of SEEDS) {
  test(`random program, seed ${seed}: the JIT matches the interpreter slice by slice`, () => runDifferential(seed));
}

test("the random programs took the traps they were written to take", () => {
  assert.equal(programsRun, SEEDS.length, "every program ran to the end");
  for (const [cause, what] of [[2n, "illegal instruction"], [3n, "breakpoint"], [5n, "load access fault"], [6n, "misaligned AMO"], [7n, "store access fault"], [11n, "ECALL from M-mode"]] as const) {
    assert.ok(causesSeen.has(cause), `no ${what} (mcause ${cause}) seen at any slice end`);
  }
});
