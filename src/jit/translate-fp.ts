// Floating point (D, and F loads/stores) as native WebAssembly f64 code.
//
// WebAssembly's f64 arithmetic is IEEE 754 binary64 with round-to-nearest-
// even (core spec 4.3.3), so for RNE its results are the RISC-V results. What
// wasm does not give is the accrued exception flags, NaN canonicalisation
// (unprivileged spec 11.3: every NaN result is the canonical NaN) and a fused
// multiply-add. So the native code runs only where none of that can matter, and
// otherwise the instruction goes to the core's softfloat (execHelper), as QEMU's
// "hardfloat" fast path does:
//   - mstatus.FS is Dirty (nothing to trap on, nothing to mark),
//   - the rounding mode is RNE (rm = 0, or rm = DYN with frm = 0),
//   - for operations that can be inexact, fflags.NX is already set (flags are
//     sticky, so an inexact result changes nothing; real FP code sets NX on
//     its first inexact operation and never clears it),
//   - the result is checked afterwards: a NaN or infinite result (invalid,
//     divide by zero, overflow) or one that could be tiny (underflow) is thrown
//     away and the instruction re-run by the softfloat. The native attempt has
//     written nothing by then.
// The first three are computed once per region entry into L_FPOK (see
// RegionWriter.fpGate); every gated instruction tests its bits.
//
// FMADD and friends: the product is made exact with Dekker's two-product
// (Veltkamp splitting), added to the addend with Knuth's TwoSum, and the two
// error terms are summed with rounding to odd before the final RNE addition —
// the FMA emulation of Boldo and Melquiond ("Emulation of a FMA and correctly
// rounded sums: proved algorithms using rounding to odd", IEEE TC 57(4),
// 2008), correct when nothing over- or underflows, which the exponent checks
// before it guarantee. It is one function per module (fmaFunc), called
// from each FMA: inline it was 400 bytes of wasm per instruction. The core's
// interpreter runs the same computation (softfloat.ts fmaFast); calling that
// from generated code instead (an import from the core's instance) was tried
// and made nbody 17% slower, so the two copies stay, each tested against the
// host's FMA (fp.test.mts) or against the other (fp.test.ts).
//
// Everything else (single precision, directed rounding, conversions to
// integers, FMIN/FMAX, FCLASS) calls the core's execute like other
// instructions the translator leaves alone.

import { Code, Op, F64, type Func } from "./wasm-emitter.js";
import { F_FMA, L_H, L_FPOK, L_F0, type InsnWriter, type Insn } from "./region-abi.js";

/** L_FPOK bits. */
const FP_FS_DIRTY = 1, FP_NX = 2, FP_FRM_RNE = 4;
const SIGN = -(1n << 63n);
const NAN_BOX = -(1n << 32n);
/** Veltkamp's splitting constant for binary64: 2^27 + 1. */
const SPLITTER = 134217729;

// f64 scratch locals of a region.
const A = L_F0, B = L_F0 + 1, T = L_F0 + 2;

const rdOf = (i: number) => (i >>> 7) & 31;
const rs1Of = (i: number) => (i >>> 15) & 31;
const rs2Of = (i: number) => (i >>> 20) & 31;
const f3Of = (i: number) => (i >>> 12) & 7;

/** Emit F/D instruction `it` (index `index` of its block): natively with a
 *  softfloat fallback where it has a native form, else through the core. */
export function translateFp(w: InsnWriter, it: Insn, index: number): void {
  if (!nativeFp(w, it, index)) softFp(w, it, index);
}

/** The core's execute for an F/D instruction, told which fields are x
 *  registers (spilling f-register numbers as x registers would be wrong work). */
function softFp(w: InsnWriter, it: Insn, index: number): void {
  const i = it.insn, op = i & 0x7f, funct5 = i >>> 27;
  let reads: number[] = [], write = 0;
  if (op === 0x07 || op === 0x27) reads = [rs1Of(i)]; // address base
  else if (op === 0x53) {
    if (funct5 === 0x1a || funct5 === 0x1e) reads = [rs1Of(i)]; // FCVT.fmt.int, FMV.fmt.X
    else if (funct5 === 0x14 || funct5 === 0x18 || funct5 === 0x1c) write = rdOf(i); // compares, FCVT.int.fmt, FMV.X.fmt, FCLASS
  }
  w.execHelper(it, index, reads, write);
}

function nativeFp(w: InsnWriter, it: Insn, index: number): boolean {
  const i = it.insn;
  const op = i & 0x7f;
  if (op === 0x07 || op === 0x27) {
    const f3 = f3Of(i);
    if (f3 !== 2 && f3 !== 3) return false;
    gated(w, FP_FS_DIRTY, it, index, (slow) => (op === 0x07 ? fpLoad(w, it, index, f3 === 3) : fpStore(w, it, index)));
    return true;
  }
  if (((i >>> 25) & 3) !== 1) return false; // single precision: softfloat
  const rm = f3Of(i);
  if (op !== 0x53) {
    const mask = rmMask(rm, false);
    if (mask === null) return false;
    gated(w, mask, it, index, (slow) => fma(w, i, slow));
    return true;
  }
  const funct5 = i >>> 27, rs2 = rs2Of(i);
  switch (funct5) {
    case 0x00: case 0x01: case 0x02: case 0x03: case 0x0b: { // FADD FSUB FMUL FDIV FSQRT
      const mask = rmMask(rm, false);
      if (mask === null || (funct5 === 0x0b && rs2 !== 0)) return false;
      gated(w, mask, it, index, (slow) => arith(w, i, funct5, slow));
      return true;
    }
    case 0x04: // FSGNJ FSGNJN FSGNJX
      if (rm > 2) return false;
      gated(w, FP_FS_DIRTY, it, index, () => signInject(w, i, rm));
      return true;
    case 0x14: // FLE FLT FEQ
      if (rm > 2) return false;
      gated(w, FP_FS_DIRTY, it, index, (slow) => compare(w, i, rm, slow));
      return true;
    case 0x1a: { // FCVT.D.W, .WU, .L, .LU
      if (rs2 > 3) return false;
      const mask = rmMask(rm, rs2 < 2); // 32-bit integers convert exactly
      if (mask === null) return false;
      gated(w, mask, it, index, () => fromInt(w, i, rs2));
      return true;
    }
    case 0x1c: // FMV.X.D (FCLASS.D is width 1)
      if (rm !== 0 || rs2 !== 0) return false;
      gated(w, FP_FS_DIRTY, it, index, () => { fBits(w, rs1Of(i)); w.setX(rdOf(i)); });
      return true;
    case 0x1e: // FMV.D.X
      if (rm !== 0 || rs2 !== 0) return false;
      gated(w, FP_FS_DIRTY, it, index, () => { w.c.get(L_H); w.getX(rs1Of(i)); storeFBits(w, rdOf(i)); });
      return true;
  }
  return false;
}

/** The L_FPOK bits an instruction with rounding mode field `rm` needs; null
 *  when only the softfloat can run it (a directed rounding mode). */
function rmMask(rm: number, exact: boolean): number | null {
  const nx = exact ? 0 : FP_NX;
  if (rm === 0) return FP_FS_DIRTY | nx;
  if (rm === 7) return FP_FS_DIRTY | nx | FP_FRM_RNE;
  return exact && rm <= 4 ? FP_FS_DIRTY : null;
}

/**
 * block $done { block $slow { <gate> <fast> br $done } <softfloat> }
 * `fast` may leave for the softfloat with `br_if slow()`; it must leave on
 * the stack only what it stores or sets itself.
 */
function gated(w: InsnWriter, mask: number, it: Insn, index: number, fast: (slow: () => number) => void): void {
  const { c } = w;
  w.fpUsed = true;
  c.block();
  c.block();
  w.depth += 2;
  const slowLevel = w.depth;
  const slow = () => w.depth - slowLevel;
  if (mask === FP_FS_DIRTY) c.get(L_FPOK).op(Op.i32_eqz);
  else c.get(L_FPOK).i32(mask).op(Op.i32_and).i32(mask).op(Op.i32_ne);
  c.op(Op.br_if).u32(slow());
  fast(slow);
  c.br(slow() + 1);
  c.end();
  w.depth--;
  softFp(w, it, index);
  c.end();
  w.depth--;
}

// ---- f registers (in the hart block: raw bits, NaN-boxed for F) ----
function fValue(w: InsnWriter, r: number): void {
  w.c.get(L_H).mem(Op.f64_load, w.k.F_OFF + r * 8, 3);
}
function fBits(w: InsnWriter, r: number): void {
  w.c.get(L_H).mem(Op.i64_load, w.k.F_OFF + r * 8, 3);
}
/** Stores the value on the stack (above a L_H pushed before it) into f[r]. */
function storeF(w: InsnWriter, r: number): void {
  w.c.mem(Op.f64_store, w.k.F_OFF + r * 8, 3);
}
function storeFBits(w: InsnWriter, r: number): void {
  w.c.mem(Op.i64_store, w.k.F_OFF + r * 8, 3);
}

/** Leaves the biased exponent field of f64 local `l`. */
function exponent(w: InsnWriter, l: number): void {
  w.c.get(l).op(Op.i64_reinterpret_f64).i64(52).op(Op.i64_shr_u).op(Op.i32_wrap_i64).i32(0x7ff).op(Op.i32_and);
}

// ---- loads and stores (unprivileged spec 11.5, 12.3) ----

/** FLD / FLW: the integer load's inline TLB probe; FLW NaN-boxes (11.2). */
function fpLoad(w: InsnWriter, it: Insn, index: number, double: boolean): void {
  w.c.get(L_H);
  w.loadValue(it, index, double ? 3 : 6); // 6: 32 bits zero-extended (LWU)
  if (!double) w.c.i64(NAN_BOX).op(Op.i64_or);
  storeFBits(w, rdOf(it.insn));
}

/** FSD / FSW: raw bits, as the integer store (a miss goes through jitStore,
 *  which also catches stores into translated code). */
function fpStore(w: InsnWriter, it: Insn, index: number): void {
  w.storeValue(it, index, () => fBits(w, rs2Of(it.insn)));
}

// ---- arithmetic ----

/** FADD/FSUB/FMUL/FDIV/FSQRT.D. A sum is exact when it is tiny, so only NaN
 *  and infinity go back; a product, quotient or root also does when its
 *  exponent is the smallest normal one or below (it might be tiny before
 *  rounding: underflow, 11.3 "tininess after rounding"). */
function arith(w: InsnWriter, i: number, funct5: number, slow: () => number): void {
  const { c } = w;
  c.get(L_H);
  fValue(w, rs1Of(i));
  if (funct5 === 0x0b) c.op(Op.f64_sqrt);
  else {
    fValue(w, rs2Of(i));
    c.op([Op.f64_add, Op.f64_sub, Op.f64_mul, Op.f64_div][funct5]);
  }
  c.set(T);
  exponent(w, T);
  if (funct5 <= 1) c.i32(0x7ff).op(Op.i32_eq);
  else c.i32(2).op(Op.i32_sub).i32(0x7fd).op(Op.i32_ge_u);
  c.op(Op.br_if).u32(slow());
  c.get(T);
  storeF(w, rdOf(i));
}

/** FSGNJ.D, FSGNJN.D, FSGNJX.D: sign bit operations on the raw bits, no flags. */
function signInject(w: InsnWriter, i: number, kind: number): void {
  const { c } = w;
  c.get(L_H);
  if (kind === 2) {
    fBits(w, rs1Of(i));
    fBits(w, rs2Of(i));
    c.i64(SIGN).op(Op.i64_and).op(Op.i64_xor);
  } else {
    fBits(w, rs1Of(i));
    c.i64(~SIGN).op(Op.i64_and);
    fBits(w, rs2Of(i));
    if (kind === 1) c.i64(-1n).op(Op.i64_xor);
    c.i64(SIGN).op(Op.i64_and).op(Op.i64_or);
  }
  storeFBits(w, rdOf(i));
}

/** FLE/FLT/FEQ.D when neither operand is a NaN (NaNs raise NV, 11.8). */
function compare(w: InsnWriter, i: number, kind: number, slow: () => number): void {
  const { c } = w;
  fValue(w, rs1Of(i));
  c.set(A);
  fValue(w, rs2Of(i));
  c.set(B);
  c.get(A).get(A).op(Op.f64_ne).get(B).get(B).op(Op.f64_ne).op(Op.i32_or).op(Op.br_if).u32(slow());
  c.get(A).get(B).op([Op.f64_le, Op.f64_lt, Op.f64_eq][kind]).op(Op.i64_extend_i32_u);
  w.setX(rdOf(i));
}

/** FCVT.D.W/WU/L/LU: wasm's conversions round to nearest-even. */
function fromInt(w: InsnWriter, i: number, kind: number): void {
  const { c } = w;
  c.get(L_H);
  w.getX(rs1Of(i));
  if (kind < 2) c.op(Op.i32_wrap_i64);
  c.op([Op.f64_convert_i32_s, Op.f64_convert_i32_u, Op.f64_convert_i64_s, Op.f64_convert_i64_u][kind]);
  storeF(w, rdOf(i));
}

/**
 * FMADD.D, FMSUB.D, FNMSUB.D, FNMADD.D (12.6: FMSUB = a*b-c, FNMSUB = -(a*b)+c,
 * FNMADD = -(a*b)-c; negating a and c is exact) through fmaFunc, which
 * returns a NaN when the operands are outside its ranges; a result of at
 * least 2^-962 (biased exponent 61) cannot be tiny.
 */
function fma(w: InsnWriter, i: number, slow: () => number): void {
  const { c } = w;
  const op = i & 0x7f;
  c.get(L_H);
  fValue(w, rs1Of(i));
  if (op === 0x4b || op === 0x4f) c.op(Op.f64_neg);
  fValue(w, rs2Of(i));
  fValue(w, i >>> 27);
  if (op === 0x47 || op === 0x4f) c.op(Op.f64_neg);
  c.call(F_FMA).set(T);
  exponent(w, T);
  c.i32(61).op(Op.i32_sub).i32(2046 - 61 + 1).op(Op.i32_ge_u).op(Op.br_if).u32(slow());
  c.get(T);
  storeF(w, rdOf(i));
}

/**
 * (param a f64) (param b f64) (param c f64) (result f64): a*b+c rounded once
 * (RNE) for normal a and b of magnitude 2^-450..2^451 and c = 0 or
 * 2^-900..2^901 — there the splitting and the partial products neither
 * overflow nor underflow and every intermediate is a multiple of 2^-1004 —
 * and NaN for other operands (the caller then uses the softfloat).
 */
export function fmaFunc(): Func {
  const c = new Code();
  const a = 0, b = 1, z = 2; // parameters
  const P = 3, AH = 4, AL = 5, BH = 6, BL = 7, UL = 8, TH = 9, TL = 10, V = 11, T = 12;
  const expIn = (l: number, lo: number, hi: number) =>
    c.get(l).op(Op.i64_reinterpret_f64).i64(52).op(Op.i64_shr_u).op(Op.i32_wrap_i64).i32(0x7ff).op(Op.i32_and)
      .i32(lo).op(Op.i32_sub).i32(hi - lo + 1).op(Op.i32_lt_u);
  expIn(a, 1023 - 450, 1023 + 450);
  expIn(b, 1023 - 450, 1023 + 450);
  c.op(Op.i32_and);
  expIn(z, 1023 - 900, 1023 + 900);
  c.get(z).op(Op.i64_reinterpret_f64).i64(1).op(Op.i64_shl).op(Op.i64_eqz).op(Op.i32_or);
  c.op(Op.i32_and).op(Op.i32_eqz);
  c.if().f64(NaN).op(Op.return).end();

  // Two-product: P + UL = a * b exactly.
  const split = (x: number, hi: number, lo: number) => {
    c.get(x).f64(SPLITTER).op(Op.f64_mul).set(T);
    c.get(T).get(T).get(x).op(Op.f64_sub).op(Op.f64_sub).set(hi);
    c.get(x).get(hi).op(Op.f64_sub).set(lo);
  };
  c.get(a).get(b).op(Op.f64_mul).set(P);
  split(a, AH, AL);
  split(b, BH, BL);
  c.get(AH).get(BH).op(Op.f64_mul).get(P).op(Op.f64_sub)
    .get(AH).get(BL).op(Op.f64_mul).op(Op.f64_add)
    .get(AL).get(BH).op(Op.f64_mul).op(Op.f64_add)
    .get(AL).get(BL).op(Op.f64_mul).op(Op.f64_add).set(UL);
  // TwoSum: TH + TL = z + P exactly (T is the virtual addend).
  c.get(z).get(P).op(Op.f64_add).set(TH);
  c.get(TH).get(z).op(Op.f64_sub).set(T);
  c.get(z).get(TH).get(T).op(Op.f64_sub).op(Op.f64_sub)
    .get(P).get(T).op(Op.f64_sub).op(Op.f64_add).set(TL);
  // V = TL + UL rounded to odd: the RNE sum, moved one unit away from the
  // even candidate toward the exact sum when it was inexact (its error, from
  // TwoSum again, is nonzero; V is then nonzero too).
  c.get(TL).get(UL).op(Op.f64_add).set(V);
  c.get(V).get(TL).op(Op.f64_sub).set(T);
  c.get(TL).get(V).get(T).op(Op.f64_sub).op(Op.f64_sub)
    .get(UL).get(T).op(Op.f64_sub).op(Op.f64_add).set(T); // T = error of V
  c.get(V).op(Op.i64_reinterpret_f64);
  c.i64(1n).i64(-1n); // +1 ulp away from zero when the error has V's sign, else toward it
  c.get(T).op(Op.i64_reinterpret_f64).get(V).op(Op.i64_reinterpret_f64).op(Op.i64_xor).i64(0).op(Op.i64_ge_s);
  c.op(Op.select);
  c.i64(0);
  c.get(T).f64(0).op(Op.f64_ne).get(V).op(Op.i64_reinterpret_f64).i64(1).op(Op.i64_and).op(Op.i64_eqz).op(Op.i32_and);
  c.op(Op.select).op(Op.i64_add).op(Op.f64_reinterpret_i64).set(V);
  // The one rounding of the result.
  c.get(TH).get(V).op(Op.f64_add);
  return { type: { params: [F64, F64, F64], results: [F64] }, locals: [[10, F64]], code: c };
}
