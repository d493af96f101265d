// F and D conformance: every arithmetic, conversion, compare and min/max
// instruction, in both formats and the rounding modes RNE, RTZ, RDN, RUP, is
// executed by the core and compared bit for bit (result and fflags) with the
// host CPU's IEEE 754 arithmetic (oracle.c, built with the host's gcc). Operands
// are edge cases (zeros, subnormals, extremes, infinities, quiet and signaling
// NaNs, ties, integer boundaries) plus seeded random values. RMM, which x86
// lacks, is checked on hand-computed ties.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createHart, type TestHart } from "../testing/hart-harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const oracleSource = join(here, "..", "..", "..", "..", "src", "core", "fp", "testing", "oracle.c");

// ---- instruction encodings (rd = f3/x3, rs1 = f1/x1, rs2 = f2, rs3 = f4) -----------
const opFp = (funct5: number, fmt: number, rs2: number, rm: number) =>
  ((funct5 << 27) | (fmt << 25) | (rs2 << 20) | (1 << 15) | (rm << 12) | (3 << 7) | 0x53) >>> 0;
const fmaOp = (opcode: number, fmt: number, rm: number) =>
  ((4 << 27) | (fmt << 25) | (2 << 20) | (1 << 15) | (rm << 12) | (3 << 7) | opcode) >>> 0;

type Kind = "fp" | "int" | "fromInt";
interface Op { name: string; arity: number; kind: Kind; encode(fmt: number, rm: number): number; }
const OPS: Op[] = [
  { name: "add", arity: 2, kind: "fp", encode: (f, rm) => opFp(0x00, f, 2, rm) },
  { name: "sub", arity: 2, kind: "fp", encode: (f, rm) => opFp(0x01, f, 2, rm) },
  { name: "mul", arity: 2, kind: "fp", encode: (f, rm) => opFp(0x02, f, 2, rm) },
  { name: "div", arity: 2, kind: "fp", encode: (f, rm) => opFp(0x03, f, 2, rm) },
  { name: "sqrt", arity: 1, kind: "fp", encode: (f, rm) => opFp(0x0b, f, 0, rm) },
  { name: "fmadd", arity: 3, kind: "fp", encode: (f, rm) => fmaOp(0x43, f, rm) },
  { name: "fmsub", arity: 3, kind: "fp", encode: (f, rm) => fmaOp(0x47, f, rm) },
  { name: "fnmsub", arity: 3, kind: "fp", encode: (f, rm) => fmaOp(0x4b, f, rm) },
  { name: "fnmadd", arity: 3, kind: "fp", encode: (f, rm) => fmaOp(0x4f, f, rm) },
  { name: "min", arity: 2, kind: "fp", encode: (f) => opFp(0x05, f, 2, 0) },
  { name: "max", arity: 2, kind: "fp", encode: (f) => opFp(0x05, f, 2, 1) },
  { name: "feq", arity: 2, kind: "int", encode: (f) => opFp(0x14, f, 2, 2) },
  { name: "flt", arity: 2, kind: "int", encode: (f) => opFp(0x14, f, 2, 1) },
  { name: "fle", arity: 2, kind: "int", encode: (f) => opFp(0x14, f, 2, 0) },
  { name: "w", arity: 1, kind: "int", encode: (f, rm) => opFp(0x18, f, 0, rm) },
  { name: "wu", arity: 1, kind: "int", encode: (f, rm) => opFp(0x18, f, 1, rm) },
  { name: "l", arity: 1, kind: "int", encode: (f, rm) => opFp(0x18, f, 2, rm) },
  { name: "lu", arity: 1, kind: "int", encode: (f, rm) => opFp(0x18, f, 3, rm) },
  { name: "from_w", arity: 1, kind: "fromInt", encode: (f, rm) => opFp(0x1a, f, 0, rm) },
  { name: "from_wu", arity: 1, kind: "fromInt", encode: (f, rm) => opFp(0x1a, f, 1, rm) },
  { name: "from_l", arity: 1, kind: "fromInt", encode: (f, rm) => opFp(0x1a, f, 2, rm) },
  { name: "from_lu", arity: 1, kind: "fromInt", encode: (f, rm) => opFp(0x1a, f, 3, rm) },
];
// FCVT.D.S reads a single and writes a double (fmt field D); FCVT.S.D the reverse.
const CVT_D = { name: "cvt_d", encode: (rm: number) => opFp(0x08, 1, 0, rm) };
const CVT_S = { name: "cvt_s", encode: (rm: number) => opFp(0x08, 0, 1, rm) };

// ---- operands -------------------------------------------------------------------------
const SPECIAL64 = [
  0x0n, 0x8000000000000000n, 0x3ff0000000000000n, 0xbff0000000000000n, 0x1n, 0x800fffffffffffffn,
  0x0010000000000000n, 0x7fefffffffffffffn, 0x7ff0000000000000n, 0xfff0000000000000n, 0x7ff8000000000000n,
  0x7ff4000000000000n, 0x3ff8000000000000n, 0xc004000000000000n, 0x43e0000000000000n, 0xc3e0000000000000n,
  0x41e0000000000000n, 0xc1e0000000000000n, 0x41efffffffe00000n, 0x3fe0000000000000n, 0x3ff0000000000001n,
  0x3ca0000000000000n, 0x43f0000000000000n, 0x0008000000000000n,
  0x3fefffffffffffffn, // 1 - 2^-53: times the smallest normal, rounds up to it from below (tiny: UF)
];
const SPECIAL32 = [
  0x0n, 0x80000000n, 0x3f800000n, 0xbf800000n, 0x1n, 0x807fffffn, 0x00800000n, 0x7f7fffffn, 0x7f800000n,
  0xff800000n, 0x7fc00000n, 0x7fa00000n, 0x3fc00000n, 0xc0200000n, 0x5f000000n, 0xdf000000n, 0x4f000000n,
  0xcf000000n, 0x4f7fffffn, 0x3f000000n, 0x3f800001n, 0x33800000n, 0x5f800000n, 0x00400000n,
  0x3f7fffffn, // 1 - 2^-24, as above
];

/** xorshift64*: seeded, so failures reproduce. */
function rng(seed: bigint) {
  let s = seed;
  return () => {
    s ^= s >> 12n; s ^= (s << 25n) & 0xffffffffffffffffn; s ^= s >> 27n;
    return (s * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn;
  };
}

function randomOperand(next: () => bigint, f32: boolean): bigint {
  const r = next();
  const pick = Number(r & 3n);
  if (f32) {
    const sign = (r >> 8n) & 1n, frac = (r >> 16n) & 0x7fffffn;
    if (pick === 0) return (r >> 20n) & 0xffffffffn; //                           any bits
    if (pick === 1) return (sign << 31n) | ((127n - 20n + ((r >> 40n) % 41n)) << 23n) | frac; // near 1
    if (pick === 2) return (sign << 31n) | (((r >> 40n) % 4n) << 23n) | frac; //   near the subnormal range
    return (sign << 31n) | ((127n + ((r >> 40n) % 70n)) << 23n) | frac; //          integer-sized
  }
  const sign = (r >> 3n) & 1n, frac = (next() >> 12n) & 0xfffffffffffffn;
  if (pick === 0) return next(); //                                                   any bits
  if (pick === 1) return (sign << 63n) | ((1023n - 60n + ((r >> 20n) % 121n)) << 52n) | frac;
  if (pick === 2) return (sign << 63n) | (((r >> 20n) % 4n) << 52n) | frac;
  return (sign << 63n) | ((1023n + ((r >> 20n) % 70n)) << 52n) | frac;
}

const f64Bits = (x: number) => { const d = new DataView(new ArrayBuffer(8)); d.setFloat64(0, x); return d.getBigUint64(0); };
const f64Of = (b: bigint) => { const d = new DataView(new ArrayBuffer(8)); d.setBigUint64(0, b); return d.getFloat64(0); };

/** Fused multiply-adds whose result an unfused or badly fused computation gets
 *  wrong: addends cancelling the product (the result is the product's rounding
 *  error), sitting half an ulp of the product away (a tie if the product were
 *  rounded first), or small-mantissa products (1 + i ulp)(1 + j ulp) whose
 *  lowest bits decide a tie; products from overflow to deep underflow. */
function fmaHardCases(next: () => bigint): [bigint, bigint, bigint][] {
  const out: [bigint, bigint, bigint][] = [];
  const one = 0x3ff0000000000000n;
  for (let i = 1n; i <= 4n; i++) {
    for (let j = 1n; j <= 4n; j++) {
      out.push([one | i, one | j, 0x3ca0000000000000n], [one | i, one | j, 0xbca0000000000000n], [one | i, one | j, 0xbcb0000000000001n]);
    }
  }
  for (let k = 0; k < 300; k++) {
    const ep = Number(next() % 2100n) - 1075; // the product's exponent
    const ea = Math.max(-1022, Math.min(1023, Math.floor(ep / 2) + Number(next() % 41n) - 20));
    const eb = Math.max(-1022, Math.min(1023, ep - ea));
    const a = ((next() & 1n) << 63n) | (BigInt(ea + 1023) << 52n) | (next() & 0xfffffffffffffn);
    const b = ((next() & 1n) << 63n) | (BigInt(eb + 1023) << 52n) | (next() & 0xfffffffffffffn);
    const p = f64Of(a) * f64Of(b);
    if (!Number.isFinite(p) || p === 0) { out.push([a, b, next()]); continue; }
    const pb = f64Bits(p), pe = Number((pb >> 52n) & 0x7ffn);
    switch (k % 3) {
      case 0: out.push([a, b, f64Bits(-p)]); break;
      case 1: out.push([a, b, (f64Bits(-p) + (next() % 5n) - 2n) & 0xffffffffffffffffn]); break;
      default: out.push([a, b, ((next() & 1n) << 63n) | (BigInt(Math.max(1, pe - 53)) << 52n)]);
    }
  }
  return out;
}

/** [x * y, y] with x * y exact in binary64 (26-bit significands), over a
 *  wide exponent range, and the same product one ulp off (inexact): quotients
 *  and, with `square` (y = x), square roots that are exact or just not. */
function exactProducts(next: () => bigint, square = false): [bigint, bigint][] {
  const out: [bigint, bigint][] = [];
  for (let k = 0; k < 60; k++) {
    const ex = Number(next() % 1200n) - 600, ey = square ? ex : Number(next() % 1200n) - 600;
    const x = Number((next() >> 38n) | 1n) * 2 ** (ex - 25);
    const y = square ? x : Number((next() >> 38n) | 1n) * 2 ** (ey - 25) * (next() & 1n ? -1 : 1);
    const p = f64Bits(x * y);
    out.push([p, f64Bits(y)], [p + 1n, f64Bits(y)]);
  }
  return out;
}

interface Case { op: string; f32: boolean; rm: number; a: bigint; b: bigint; c: bigint; insn: number; kind: Kind | "cvt"; }

function buildCases(): Case[] {
  const cases: Case[] = [];
  const next = rng(0x5eed_f00d_1234_5678n);
  for (const f32 of [true, false]) {
    const special = f32 ? SPECIAL32 : SPECIAL64;
    for (const rm of [0, 1, 2, 3]) {
      for (const op of OPS) {
        const fmt = f32 ? 0 : 1;
        const insn = op.encode(fmt, rm);
        const add = (a: bigint, b = 0n, c = 0n) => cases.push({ op: op.name, f32, rm, a, b, c, insn, kind: op.kind });
        if (op.kind === "fromInt") {
          const ints = [0n, 1n, 0xffffffffffffffffn, 0x7fffffffn, 0x80000000n, 0xffffffffn, 0x7fffffffffffffffn,
            0x8000000000000000n, 0x1000001n, 0x20000001n, 0xfffffffffffff801n, 0x20000000000001n];
          for (const v of ints) add(v);
          for (let k = 0; k < 60; k++) { const v = next(); add(k % 2 ? v : v >> (next() % 60n)); }
          continue;
        }
        if (op.arity === 1) {
          for (const a of special) add(a);
        } else if (op.arity === 2) {
          for (const a of special) for (const b of special) add(a, b);
        } else {
          const few = special.filter((_, i) => i % 3 === 0);
          for (const a of few) for (const b of few) for (const c of few) add(a, b, c);
        }
        if (op.arity === 3 && !f32) for (const [a, b, c] of fmaHardCases(next)) add(a, b, c);
        if (op.name === "div" && !f32) for (const [a, b] of exactProducts(next)) add(a, b);
        if (op.name === "sqrt" && !f32) for (const [a] of exactProducts(next, true)) add(a);
        const randomCount = op.arity === 3 ? 400 : 250;
        for (let k = 0; k < randomCount; k++) {
          const a = randomOperand(next, f32);
          let b = randomOperand(next, f32);
          // Close exponents make cancellation and carries happen in add/sub.
          if (k % 3 === 0) b = a ^ (next() & (f32 ? 0x8000ffffn : 0x80000000ffffffffn));
          add(a, b, randomOperand(next, f32));
        }
      }
      for (const a of special) {
        cases.push({ op: f32 ? CVT_D.name : CVT_S.name, f32, rm, a, b: 0n, c: 0n, insn: (f32 ? CVT_D : CVT_S).encode(rm), kind: "cvt" });
      }
      for (let k = 0; k < 200; k++) {
        const a = randomOperand(next, f32);
        cases.push({ op: f32 ? CVT_D.name : CVT_S.name, f32, rm, a, b: 0n, c: 0n, insn: (f32 ? CVT_D : CVT_S).encode(rm), kind: "cvt" });
      }
    }
  }
  return cases;
}

function oracle(cases: Case[]): { result: bigint; flags: number }[] {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-fp-"));
  const exe = join(dir, "oracle");
  const cc = spawnSync("gcc", ["-O0", "-mfma", "-frounding-math", "-fsignaling-nans", "-o", exe, oracleSource, "-lm"], { encoding: "utf8" });
  if (cc.error || cc.status !== 0) throw new Error(`cannot build the FP oracle with the host gcc: ${cc.error?.message ?? cc.stderr}`);
  const input = cases.map((c) => `${c.op} ${c.f32 ? 1 : 0} ${c.rm} ${c.a.toString(16)} ${c.b.toString(16)} ${c.c.toString(16)}`).join("\n") + "\n";
  const out = spawnSync(exe, [], { input, encoding: "utf8", maxBuffer: 64 << 20 });
  if (out.status !== 0) throw new Error(`FP oracle failed: ${out.stderr}`);
  return out.stdout.trim().split("\n").map((l) => {
    const [r, f] = l.split(" ");
    return { result: BigInt("0x" + r), flags: parseInt(f, 16) };
  });
}

const BOX = 0xffffffff00000000n;

/** Run one FP instruction on the hart; returns the destination's bits and fflags. */
function execute(t: TestHart, c: Case): { result: bigint; flags: number } {
  const { core, hart } = t;
  const boxIn = (v: bigint) => (c.f32 ? v | BOX : v);
  t.writeCode([c.insn]);
  core.setPc(hart, 0x8000_0000n);
  core.csrWrite(hart, 0x001, 0n); // fflags
  if (c.kind === "fromInt") core.setX(hart, 1, c.a);
  else {
    core.setF(hart, 1, boxIn(c.a));
    core.setF(hart, 2, boxIn(c.b));
    core.setF(hart, 4, boxIn(c.c));
  }
  core.setF(hart, 3, 0n);
  core.setX(hart, 3, 0n);
  t.run(1);
  const flags = Number(t.csr(0x001));
  if (c.kind === "int") return { result: t.x(3), flags };
  const raw = t.f(3);
  // Single results must be NaN-boxed (spec 11.2); FCVT.D.S writes a double.
  const singleResult = c.kind === "cvt" ? !c.f32 : c.f32;
  if (singleResult) {
    if ((raw & BOX) !== BOX) return { result: -1n, flags };
    return { result: raw & 0xffffffffn, flags };
  }
  return { result: raw, flags };
}

const FLAG_NAMES = ["NX", "UF", "OF", "DZ", "NV"];
const showFlags = (f: number) => FLAG_NAMES.filter((_, i) => f & (1 << i)).join("|") || "-";

test("F and D instructions match IEEE 754 (host oracle) in result bits and fflags, for RNE/RTZ/RDN/RUP", () => {
  const cases = buildCases();
  const expected = oracle(cases);
  assert.equal(expected.length, cases.length);
  const t = createHart();
  t.core.csrWrite(t.hart, 0x300, 1n << 13n); // mstatus.FS = Initial
  const failures: string[] = [];
  cases.forEach((c, i) => {
    const got = execute(t, c);
    const want = expected[i];
    if (got.result !== want.result || got.flags !== want.flags) {
      failures.push(
        `${c.op}.${c.f32 ? "s" : "d"} rm=${c.rm} a=${c.a.toString(16)} b=${c.b.toString(16)} c=${c.c.toString(16)}: ` +
          `expected ${want.result.toString(16)} ${showFlags(want.flags)}, got ${got.result.toString(16)} ${showFlags(got.flags)}`,
      );
    }
  });
  assert.equal(failures.length, 0, `${failures.length} of ${cases.length} cases differ:\n${failures.slice(0, 25).join("\n")}`);
});

test("RMM rounds ties away from zero (hand-computed cases)", () => {
  const t = createHart();
  t.core.csrWrite(t.hart, 0x300, 1n << 13n);
  const RMM = 4;
  const run = (c: Case) => execute(t, c);
  const mk = (op: string, f32: boolean, a: bigint, b: bigint, kind: Kind, insn: number): Case => ({ op, f32, rm: RMM, a, b, c: 0n, insn, kind });
  // 1 + 2^-53 lies exactly between 1 and 1 + 2^-52: RMM picks the larger.
  assert.deepEqual(run(mk("add", false, 0x3ff0000000000000n, 0x3ca0000000000000n, "fp", opFp(0, 1, 2, RMM))), { result: 0x3ff0000000000001n, flags: 1 });
  // -(1 + 2^-24) in single: away from zero is more negative.
  assert.deepEqual(run(mk("add", true, 0xbf800000n, 0xb3800000n, "fp", opFp(0, 0, 2, RMM))), { result: 0xbf800001n, flags: 1 });
  // 2.5 -> 3 and -2.5 -> -3 (RNE would give 2 and -2).
  assert.deepEqual(run(mk("w", false, 0x4004000000000000n, 0n, "int", opFp(0x18, 1, 0, RMM))), { result: 3n, flags: 1 });
  assert.deepEqual(run(mk("l", false, 0xc004000000000000n, 0n, "int", opFp(0x18, 1, 2, RMM))), { result: 0xfffffffffffffffdn, flags: 1 });
  // Not a tie: 1 + 2^-53 + 2^-60 rounds up in every nearest mode.
  assert.deepEqual(run(mk("add", false, 0x3ff0000000000000n, 0x3ca0200000000000n, "fp", opFp(0, 1, 2, RMM))), { result: 0x3ff0000000000001n, flags: 1 });
});

test("reserved rounding modes and FS=Off make FP instructions illegal", () => {
  const t = createHart([opFp(0, 1, 2, 5)]);
  t.writeCode([0x0000006f], 0x800); // the trap handler: j .
  t.core.csrWrite(t.hart, 0x305, 0x8000_0800n); // mtvec
  t.core.csrWrite(t.hart, 0x300, 1n << 13n);
  t.run(1);
  assert.equal(t.csr(0x342), 2n, "rm = 5 is reserved: illegal instruction");
  t.core.setPc(t.hart, 0x8000_0000n);
  t.writeCode([opFp(0, 1, 2, 7)]);
  t.core.csrWrite(t.hart, 0x002, 6n); // frm = 6 (reserved), used through rm = DYN
  t.core.csrWrite(t.hart, 0x342, 0n);
  t.run(1);
  assert.equal(t.csr(0x342), 2n, "dynamic rounding with frm = 6 is illegal");
  t.core.setPc(t.hart, 0x8000_0000n);
  t.core.csrWrite(t.hart, 0x002, 0n);
  t.core.csrWrite(t.hart, 0x300, 0n); // FS = Off
  t.core.csrWrite(t.hart, 0x342, 0n);
  t.run(1);
  assert.equal(t.csr(0x342), 2n, "FS = Off: illegal");
  assert.equal(t.csr(0x343), BigInt(opFp(0, 1, 2, 7)), "mtval holds the instruction");
});
