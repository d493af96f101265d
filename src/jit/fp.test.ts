// Native floating point in translated code (translate-fp.ts) against the
// core's softfloat. A guest program runs every D operation the translator
// does natively on a table of operand triples — random values across the
// whole exponent range, zeros, subnormals, infinities, quiet and signalling
// NaNs, and the hard cases of a fused multiply-add (an addend cancelling the
// product, or sitting half an ulp from it so that rounding the product first
// would give a different answer) — and stores every result and the flags each
// triple raised. Interpreter and JIT (translation before first execution)
// must write the same bytes. Run twice: with NX already set (the native paths
// run) and with fflags cleared before every triple (they must not).
import { test } from "node:test";
import assert from "node:assert/strict";
import { BareMachine } from "../vmm/bare-machine.js";
import type { ElfImage } from "../loader/elf.js";
import { rType, iType, sType, addi, li, csrrs, Asm } from "./testing/rv-encode.js";
import { Rng, bareImage } from "./testing/bare.js";

const CODE = 0x8000_0000n;
const TABLE = 0x8010_0000n;
const OUT = 0x8020_0000n;
const TOHOST = 0x8038_0000n;
const CASES = 3000;
/** Results stored per triple (8 bytes each). */
const SLOTS = 24 + 2 * 13;

const T0 = 5, T1 = 6, A0 = 10, A1 = 11, A2 = 12, A3 = 13;
const FFLAGS = 0x001, MSTATUS = 0x300;
const RNE = 0, DYN = 7, RTZ = 1;

const fld = (fd: number, off: number, rs1: number) => iType(off, rs1, 3, fd, 0x07);
const fsd = (fs: number, off: number, rs1: number) => sType(off, fs, rs1, 3, 0x27);
const add = (rd: number, rs1: number, rs2: number) => rType(0, rs2, rs1, 0, rd, 0x33);
const sd = (rs2: number, off: number, rs1: number) => sType(off, rs2, rs1, 3, 0x23);
const opD = (funct5: number, rs2: number, rs1: number, rm: number, rd: number) => rType((funct5 << 2) | 1, rs2, rs1, rm, rd, 0x53);
const r4D = (op: number, rs3: number, rs2: number, rs1: number, rm: number, rd: number) =>
  ((rs3 << 27) | (1 << 25) | (rs2 << 20) | (rs1 << 15) | (rm << 12) | (rd << 7) | op) >>> 0;
const csrrwi = (rd: number, csr: number, uimm: number) => iType(csr, uimm, 5, rd, 0x73);
const BNE = 1;

// ---- operands ----------------------------------------------------------------------

const bits = (x: number) => {
  const v = new DataView(new ArrayBuffer(8));
  v.setFloat64(0, x, true);
  return v.getBigUint64(0, true);
};
const fromBits = (b: bigint) => {
  const v = new DataView(new ArrayBuffer(8));
  v.setBigUint64(0, BigInt.asUintN(64, b), true);
  return v.getFloat64(0, true);
};
const make = (sign: number, exp: number, mant: bigint) => (BigInt(sign) << 63n) | (BigInt(exp) << 52n) | (mant & ((1n << 52n) - 1n));

const SPECIAL = [
  0n, 1n << 63n, // +-0
  1n, (1n << 52n) - 1n, (1n << 63n) | 5n, // subnormals
  make(0, 1, 0n), make(1, 1, 3n), make(0, 2046, (1n << 52n) - 1n), // smallest normal, largest finite
  make(0, 2047, 0n), make(1, 2047, 0n), // +-inf
  0x7ff8000000000000n, 0xfff8000000000123n, 0x7ff0000000000001n, 0x7ff4000000000000n, // qNaN, sNaN
  bits(1), bits(-1), bits(0.5), bits(3), bits(1e300), bits(1e-300),
  0x3fefffffffffffffn, 0x3ff0000000000001n, // 1 -+ 1 ulp: times the smallest normal, tiny or not
];

function operand(rng: Rng): bigint {
  switch (rng.int(5)) {
    case 0: return SPECIAL[rng.int(SPECIAL.length)];
    case 1: return rng.u64(); //                                          anything, NaNs included
    case 2: return make(rng.int(2), 1023 - 600 + rng.int(1200), rng.u64()); // around the native ranges' edges
    default: return make(rng.int(2), 1023 - 40 + rng.int(80), rng.u64()); //   everyday magnitudes
  }
}

/** a, b, c: c often chosen against a*b so that an unfused or badly fused
 *  multiply-add rounds differently; half the time a*b is aimed at an exponent
 *  anywhere from overflow to deep underflow. */
function triple(rng: Rng): [bigint, bigint, bigint] {
  let a = operand(rng), b = operand(rng);
  if (rng.int(2) === 0) {
    const ep = -1080 + rng.int(2110); // unbiased exponent of the product
    const ea = Math.max(-1022, Math.min(1023, rng.int(2) ? Math.floor(ep / 2) + rng.int(41) - 20 : ep - (rng.int(2046) - 1022)));
    const eb = Math.max(-1022, Math.min(1023, ep - ea));
    a = make(rng.int(2), ea + 1023, rng.int(4) ? rng.u64() : BigInt(rng.int(4)));
    b = make(rng.int(2), eb + 1023, rng.int(4) ? rng.u64() : ((1n << 52n) - 1n) ^ BigInt(rng.int(4)));
  }
  const p = fromBits(a) * fromBits(b);
  if (!Number.isFinite(p) || p === 0 || rng.int(3) === 0) return [a, b, operand(rng)];
  const pb = bits(p);
  const e = Number((pb >> 52n) & 0x7ffn);
  switch (rng.int(4)) {
    case 0: return [a, b, bits(-p)]; //                                    the product's rounding error alone
    case 1: return [a, b, BigInt.asUintN(64, bits(-p) + BigInt(rng.int(5) - 2))]; // near cancellation
    case 2: { // half an ulp of the product, either sign: a tie if the product were rounded first
      const half = make(rng.int(2), Math.max(1, e - 53), 0n);
      return [a, b, half];
    }
    default: return [a, b, make(rng.int(2), Math.max(1, e - 53 - rng.int(3)), rng.u64() & 0xfn)];
  }
}

/** Small-mantissa products with an addend at the rounding boundary (1+i*2^-52
 *  times 1+j*2^-52 has bits far below the ulp, which decide the tie), and
 *  products and quotients that round up to the smallest normal number from
 *  below (tiny before rounding: underflow) or land just above it. */
function hardCases(): [bigint, bigint, bigint][] {
  const out: [bigint, bigint, bigint][] = [];
  for (let k = 0n; k <= 4n; k++) {
    for (let j = 0n; j <= 4n; j++) {
      out.push([make(0, 1022, (1n << 52n) - 1n - k), make(Number(j & 1n), 1, j), make(0, 1, k)]); // (1 - (k+1)/2^53) * 2^-1022(1 + j/2^52)
      out.push([make(0, 1, j), make(0, 1023, k), make(1, 1, 0n)]); // 2^-1022(1 + j/2^52) / (1 + k/2^52)
    }
  }
  for (let i = 1n; i <= 6n; i++) {
    for (let j = 1n; j <= 6n; j++) {
      for (const s of [0, 1]) {
        out.push([make(0, 1023, i), make(s, 1023, j), make(0, 1023 - 53, 0n)]);
        out.push([make(0, 1023, i), make(0, 1023, j), make(1, 1023 - 53, 0n)]);
        out.push([make(s, 1023, i), make(0, 1023, j), make(1 - s, 1023 - 52, 1n)]);
      }
    }
  }
  return out;
}

// ---- program ---------------------------------------------------------------------

/**
 * For each triple (f1, f2, f3) at a0: clear or set fflags, run the operations,
 * store the results at a1 and fflags after them, next.
 */
function program(triples: [bigint, bigint, bigint][], nxFirst: boolean): ElfImage {
  const a = new Asm();
  a.w(...li(T0, 0x2000n), csrrs(0, MSTATUS, T0)); // FS = Initial: the first FP instruction makes it Dirty
  a.w(...li(A0, TABLE), ...li(A1, OUT), ...li(A2, BigInt(triples.length)), addi(A3, 0, 0));
  a.label("loop");
  a.w(csrrwi(0, FFLAGS, nxFirst ? 1 : 0));
  a.w(fld(1, 0, A0), fld(2, 8, A0), fld(3, 16, A0));
  const ops = [
    r4D(0x43, 3, 2, 1, RNE, 4), r4D(0x47, 3, 2, 1, DYN, 5), r4D(0x4b, 3, 2, 1, RNE, 6), r4D(0x4f, 3, 2, 1, DYN, 7),
    opD(0x00, 2, 1, RNE, 8), opD(0x01, 2, 1, DYN, 9), opD(0x02, 2, 1, RNE, 10), opD(0x03, 2, 1, DYN, 11),
    opD(0x0b, 0, 1, RNE, 12), opD(0x02, 3, 1, RTZ, 13), // FSQRT; FMUL in RTZ (softfloat only)
    opD(0x04, 2, 1, 0, 14), opD(0x04, 2, 1, 1, 15), opD(0x04, 2, 1, 2, 16), // FSGNJ, FSGNJN, FSGNJX
    r4D(0x43, 1, 1, 1, RNE, 17), opD(0x00, 4, 8, RNE, 18), // chained on earlier results
  ];
  a.w(...ops);
  for (let r = 4; r <= 18; r++) a.w(fsd(r, (r - 4) * 8, A1));
  // Comparisons, moves and conversions into x registers, stored after.
  a.w(opD(0x14, 2, 1, 0, 20), sd(20, 15 * 8, A1)); // FLE
  a.w(opD(0x14, 2, 1, 1, 20), sd(20, 16 * 8, A1)); // FLT
  a.w(opD(0x14, 2, 1, 2, 20), sd(20, 17 * 8, A1)); // FEQ
  a.w(opD(0x1c, 0, 3, 0, 21), opD(0x1e, 0, 21, 0, 19), fsd(19, 18 * 8, A1)); // FMV.X.D, FMV.D.X
  a.w(opD(0x1a, 2, 21, RNE, 19), fsd(19, 19 * 8, A1)); // FCVT.D.L (inexact for most bit patterns)
  a.w(opD(0x1a, 3, 21, DYN, 19), fsd(19, 20 * 8, A1)); // FCVT.D.LU
  a.w(opD(0x1a, 0, 21, RNE, 19), fsd(19, 21 * 8, A1)); // FCVT.D.W (exact)
  a.w(opD(0x1a, 1, 21, RTZ, 19), fsd(19, 22 * 8, A1)); // FCVT.D.WU
  a.w(csrrs(T1, FFLAGS, 0), sd(T1, 23 * 8, A1));
  // The same operations one at a time, each followed by the flags it raised
  // (fflags swapped back to the starting value): a flag one operation misses
  // is not hidden by another raising it.
  const single: { op: number; toX?: boolean }[] = [
    ...ops.slice(0, 9).map((op) => ({ op: (op & ~(31 << 7)) | (20 << 7) })),
    { op: opD(0x1a, 2, 21, RNE, 20) },
    ...[0, 1, 2].map((kind) => ({ op: opD(0x14, 2, 1, kind, 20), toX: true })),
  ];
  single.forEach(({ op, toX }, n) => {
    a.w(op, csrrwi(T1, FFLAGS, nxFirst ? 1 : 0));
    a.w(toX ? sd(20, (24 + 2 * n) * 8, A1) : fsd(20, (24 + 2 * n) * 8, A1), sd(T1, (25 + 2 * n) * 8, A1));
  });
  a.w(addi(A0, A0, 24), ...li(T0, BigInt(SLOTS * 8)), add(A1, A1, T0), addi(A3, A3, 1));
  a.b(BNE, A3, A2, "loop");
  a.w(...li(T0, TOHOST), addi(T1, 0, 1), sd(T1, 0, T0));
  a.label("spin");
  a.j(0, "spin");
  const code = a.bytes();
  const table = new Uint8Array(triples.length * 24);
  const v = new DataView(table.buffer);
  triples.forEach(([x, y, z], i) => {
    v.setBigUint64(i * 24, x, true);
    v.setBigUint64(i * 24 + 8, y, true);
    v.setBigUint64(i * 24 + 16, z, true);
  });
  return bareImage([[CODE, code], [TABLE, table]], TOHOST);
}

function run(img: ElfImage, jit: boolean, n: number): Uint8Array {
  const m = new BareMachine(img, { memBytes: 4 << 20, console: () => {}, jit: jit ? { threshold: 1 } : false, maxInsns: 50_000_000n });
  const r = m.run();
  assert.deepEqual(r, { kind: "exit", code: 0 });
  return m.ram.read(OUT, n * SLOTS * 8);
}

function compare(nxFirst: boolean): void {
  const rng = new Rng(nxFirst ? 0x5eed : 0xf1a9);
  const triples = [...hardCases()];
  while (triples.length < CASES) triples.push(triple(rng));
  const img = program(triples, nxFirst);
  const want = run(img, false, triples.length);
  const got = run(img, true, triples.length);
  const w = new DataView(want.buffer, want.byteOffset), g = new DataView(got.buffer, got.byteOffset);
  const names = ["fmadd", "fmsub", "fnmsub", "fnmadd", "fadd", "fsub", "fmul", "fdiv", "fsqrt", "fmul.rtz", "fsgnj", "fsgnjn", "fsgnjx",
    "fmadd(a,a,a)", "fadd(fmadd,fadd)", "fle", "flt", "feq", "fmv", "fcvt.d.l", "fcvt.d.lu", "fcvt.d.w", "fcvt.d.wu", "fflags"];
  for (const op of ["fmadd", "fmsub", "fnmsub", "fnmadd", "fadd", "fsub", "fmul", "fdiv", "fsqrt", "fcvt.d.l", "fle", "flt", "feq"]) {
    names.push(`${op} alone`, `fflags of ${op} alone`);
  }
  for (let t = 0; t < triples.length; t++) {
    for (let s = 0; s < SLOTS; s++) {
      const off = (t * SLOTS + s) * 8;
      const x = w.getBigUint64(off, true), y = g.getBigUint64(off, true);
      if (x !== y) {
        const hex = (b: bigint) => "0x" + b.toString(16).padStart(16, "0");
        assert.fail(`triple ${t} (${triples[t].map(hex).join(", ")}): ${names[s]} is ${hex(y)} translated, ${hex(x)} interpreted`);
      }
    }
  }
}

test("native D arithmetic with NX already set gives the softfloat's results and flags bit for bit", () => {
  compare(true);
});

test("with fflags clear every inexact operation still raises NX exactly as the softfloat does", () => {
  compare(false);
});

test("FP loads check mstatus.FS: illegal while Off, and make the state Dirty", () => {
  // FS = Off; the trap handler records mcause, turns FS on (Initial) and
  // returns to the FLD, which then loads and must make FS Dirty.
  const a = new Asm();
  const MCAUSE = 0x342, MTVEC = 0x305, S0 = 8, T2 = 7;
  const csrrc = (rd: number, csr: number, rs1: number) => iType(csr, rs1, 3, rd, 0x73);
  a.w(...li(T0, 0x6000n), csrrc(0, MSTATUS, T0));
  a.w(...li(T0, CODE + 0x800n), iType(MTVEC, T0, 1, 0, 0x73));
  a.w(...li(A0, TABLE), ...li(A1, OUT), addi(S0, 0, 0));
  a.w(fld(1, 0, A0));
  a.w(csrrs(T1, MSTATUS, 0), sd(T1, 0, A1), fsd(1, 8, A1), sd(S0, 16, A1));
  a.w(...li(T0, TOHOST), addi(T1, 0, 1), sd(T1, 0, T0));
  a.label("spin");
  a.j(0, "spin");
  a.org(0x800);
  a.w(csrrs(S0, MCAUSE, 0), ...li(T2, 0x2000n), csrrs(0, MSTATUS, T2), 0x30200073); // mret
  const code = a.bytes();
  const table = new Uint8Array(8);
  new DataView(table.buffer).setFloat64(0, 1.5, true);
  const img = bareImage([[CODE, code], [TABLE, table]], TOHOST);
  for (const jit of [false, true]) {
    const out = new DataView(run(img, jit, 1).buffer);
    const engine = jit ? "translated" : "interpreted";
    assert.equal((out.getBigUint64(0, true) >> 13n) & 3n, 3n, `${engine}: mstatus.FS is Dirty after the load`);
    assert.equal(out.getFloat64(8, true), 1.5, `${engine}: the load completed after the trap`);
    assert.equal(out.getBigUint64(16, true), 2n, `${engine}: the first attempt was an illegal instruction (mcause 2)`);
  }
});
