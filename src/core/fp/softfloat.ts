// IEEE 754-2008 binary32 and binary64 arithmetic in integers, exact in every
// rounding mode with all five exception flags, as the F and D extensions
// require (unprivileged spec chapters 11-12). WebAssembly's float instructions
// only round to nearest-even and raise no flags, so they cannot be used here.
//
// One internal form serves both formats: a finite nonzero value is
//   (-1)^sign * sig * 2^(e - 62)
// with `sig` a u64 whose leading one is at bit 62 (value = 1.f * 2^e); bits
// below a format's precision are round bits, the lowest one a "sticky" bit that
// records any nonzero bits shifted out. Every operation computes its exact
// result in this form (or exact plus sticky), then roundPack rounds once.
// A binary32 operand is exactly representable in this form, so the binary32
// operations share the binary64 code and differ only in the final rounding.

import { mulhu } from "../isa/m";

// Rounding modes (spec 11.2, table 11.1).
export const RNE: u32 = 0;
export const RTZ: u32 = 1;
export const RDN: u32 = 2;
export const RUP: u32 = 3;
export const RMM: u32 = 4;

// fflags bits (spec 11.2, table 11.2).
export const NX: u32 = 1;
export const UF: u32 = 2;
export const OF: u32 = 4;
export const DZ: u32 = 8;
export const NV: u32 = 16;

export const F32_CANONICAL_NAN: u64 = 0x7fc00000;
export const F64_CANONICAL_NAN: u64 = 0x7ff8000000000000;

/** Flags raised by the operations since the caller last cleared them. */
export let flags: u32 = 0;
/** Rounding mode the operations use. */
export let rm: u32 = RNE;

export function begin(mode: u32): void {
  flags = 0;
  rm = mode;
}
@inline function raiseFlags(f: u32): void {
  flags |= f;
}

// ---- formats ----------------------------------------------------------------------

@inline function fracBits(f32: bool): i32 { return f32 ? 23 : 52; }
@inline function bias(f32: bool): i32 { return f32 ? 127 : 1023; }
@inline function expField(f32: bool): i32 { return f32 ? 0xff : 0x7ff; }
@inline export function canonicalNaN(f32: bool): u64 { return f32 ? F32_CANONICAL_NAN : F64_CANONICAL_NAN; }
@inline function signShift(f32: bool): u64 { return f32 ? 31 : 63; }

export const CLASS_ZERO: i32 = 0;
export const CLASS_NORMAL: i32 = 1; // normal or subnormal: finite nonzero
export const CLASS_INF: i32 = 2;
export const CLASS_QNAN: i32 = 3;
export const CLASS_SNAN: i32 = 4;

/** An unpacked operand. Plain globals-backed struct to avoid allocation. */
@unmanaged export class Unpacked {
  sign: u64;
  e: i32;
  sig: u64;
  cls: i32;
  subnormal: bool;
}

export function unpack(bits: u64, f32: bool, u: Unpacked): void {
  const fb = fracBits(f32);
  const frac = bits & (((<u64>1) << <u64>fb) - 1);
  const ef = <i32>((bits >> <u64>fb) & <u64>expField(f32));
  u.sign = (bits >> signShift(f32)) & 1;
  u.subnormal = false;
  if (ef == expField(f32)) {
    u.cls = frac == 0 ? CLASS_INF : (frac >> <u64>(fb - 1)) != 0 ? CLASS_QNAN : CLASS_SNAN;
    return;
  }
  if (ef == 0) {
    if (frac == 0) { u.cls = CLASS_ZERO; return; }
    // Subnormal: normalise so the leading one sits at bit 62.
    const lz = <i32>clz<u64>(frac);
    u.sig = frac << <u64>(lz - 1);
    u.e = 1 - bias(f32) - (lz - 1 - (62 - fb));
    u.cls = CLASS_NORMAL;
    u.subnormal = true;
    return;
  }
  u.sig = (frac | ((<u64>1) << <u64>fb)) << <u64>(62 - fb);
  u.e = ef - bias(f32);
  u.cls = CLASS_NORMAL;
}

@inline export function isNaNClass(cls: i32): bool {
  return cls >= CLASS_QNAN;
}

export function shiftRightJam(v: u64, n: i32): u64 {
  if (n <= 0) return v;
  if (n >= 64) return v != 0 ? 1 : 0;
  return (v >> <u64>n) | ((v & (((<u64>1) << <u64>n) - 1)) != 0 ? 1 : 0);
}

@inline function packInf(sign: u64, f32: bool): u64 {
  return (sign << signShift(f32)) | ((<u64>expField(f32)) << <u64>fracBits(f32));
}
@inline export function packZero(sign: u64, f32: bool): u64 {
  return sign << signShift(f32);
}

/**
 * Round (sign, e, sig) to the format and pack it, raising NX, UF, OF. `sig` has
 * its leading one at bit 62. Tininess is detected after rounding (RISC-V, as
 * IEEE 754 permits): the result is tiny if rounding to the format's precision
 * with an unbounded exponent would give a magnitude below the smallest normal.
 */
export function roundPack(sign: u64, e: i32, sig: u64, f32: bool): u64 {
  const fb = fracBits(f32);
  const rs = <u64>(62 - fb); //                   number of round bits
  const mask: u64 = ((<u64>1) << rs) - 1;
  const half: u64 = (<u64>1) << (rs - 1);
  let incr: u64;
  if (rm == RNE || rm == RMM) incr = half;
  else if (rm == (sign != 0 ? RDN : RUP)) incr = mask;
  else incr = 0;
  // Biased exponent minus one: adding the significand with its leading one at
  // bit fb then bumps it to the right field value (and a rounding carry, to the
  // next binade, falls out for free).
  let exp = e + bias(f32) - 1;
  const top = expField(f32) - 2;
  if (exp < 0) {
    const tiny = exp < -1 || sig + incr < 0x8000000000000000;
    sig = shiftRightJam(sig, -exp);
    exp = 0;
    if (tiny && (sig & mask) != 0) raiseFlags(UF);
  } else if (exp >= top) {
    if (exp > top || sig + incr >= 0x8000000000000000) {
      raiseFlags(OF | NX);
      // Modes rounding toward zero for this sign give the largest finite number.
      if (incr == 0) return (sign << signShift(f32)) | (((<u64>expField(f32) - 1) << <u64>fb) | (((<u64>1) << <u64>fb) - 1));
      return packInf(sign, f32);
    }
  }
  const roundBits = sig & mask;
  if (roundBits != 0) raiseFlags(NX);
  sig = (sig + incr) >> rs;
  if (rm == RNE && roundBits == half) sig &= ~(<u64>1); // ties to even
  if (sig == 0) exp = 0;
  return (sign << signShift(f32)) + ((<u64>exp) << <u64>fb) + sig;
}

/** Normalise sig (leading one anywhere, or bit 63) to bit 62, then round. */
export function normRoundPack(sign: u64, e: i32, sig: u64, f32: bool): u64 {
  if (sig == 0) return packZero(sign, f32);
  const lz = <i32>clz<u64>(sig);
  if (lz == 0) return roundPack(sign, e + 1, shiftRightJam(sig, 1), f32);
  return roundPack(sign, e - (lz - 1), sig << <u64>(lz - 1), f32);
}

// ---- NaN rules ---------------------------------------------------------------------

/** Any NaN operand makes a canonical NaN; a signaling one also raises NV. */
function nanResult(a: Unpacked, b: Unpacked, f32: bool): u64 {
  if (a.cls == CLASS_SNAN || b.cls == CLASS_SNAN) raiseFlags(NV);
  return canonicalNaN(f32);
}

function invalid(f32: bool): u64 {
  raiseFlags(NV);
  return canonicalNaN(f32);
}

// Scratch operands (the core is single-threaded per instance).
const ua = new Unpacked();
const ub = new Unpacked();
const uc = new Unpacked();

// ---- add, sub ----------------------------------------------------------------------

function addUnpacked(a: Unpacked, b: Unpacked, f32: bool): u64 {
  if (isNaNClass(a.cls) || isNaNClass(b.cls)) return nanResult(a, b, f32);
  if (a.cls == CLASS_INF) {
    if (b.cls == CLASS_INF && a.sign != b.sign) return invalid(f32); // inf - inf
    return packInf(a.sign, f32);
  }
  if (b.cls == CLASS_INF) return packInf(b.sign, f32);
  if (a.cls == CLASS_ZERO && b.cls == CLASS_ZERO) {
    // Exact zero sum: -0 only if both are -0, or signs differ and rounding down.
    const s: u64 = a.sign == b.sign ? a.sign : (rm == RDN ? 1 : 0);
    return packZero(s, f32);
  }
  if (a.cls == CLASS_ZERO) return roundPack(b.sign, b.e, b.sig, f32);
  if (b.cls == CLASS_ZERO) return roundPack(a.sign, a.e, a.sig, f32);
  // Align to the larger exponent; one spare bit on top for the carry. If the
  // operands are more than one place apart the result loses at most one
  // leading bit, so the sticky bit stays far below the round position.
  let ea = a.e, eb = b.e, ma = a.sig >> 1, mb = b.sig >> 1, sa = a.sign, sb = b.sign;
  if (ea < eb || (ea == eb && ma < mb)) {
    const te = ea; ea = eb; eb = te;
    const tm = ma; ma = mb; mb = tm;
    const ts = sa; sa = sb; sb = ts;
  }
  mb = shiftRightJam(mb, ea - eb);
  let r: u64;
  if (sa == sb) r = ma + mb;
  else r = ma - mb;
  if (r == 0) return packZero(rm == RDN ? 1 : 0, f32); // x - x
  return normRoundPack(sa, ea + 1, r, f32);
}

// ---- native fast paths ------------------------------------------------------------
// In round-to-nearest-even the host's IEEE arithmetic gives the right result;
// what it does not give is the flags. These paths handle the cases where the
// flags can be decided exactly and cheaply, and return NO_FAST_PATH otherwise.
//  - Sums: TwoSum recovers the exact rounding error (Knuth), so NX is exact;
//    a tiny sum is always exact, so UF cannot occur.
//  - Binary32 sums and products computed in binary64 then narrowed are
//    correctly rounded (53 >= 2 * 24 + 2); the binary64 product is exact.
//  - Binary64 products: exact iff the product of the significands' odd parts
//    fits in 53 bits.
//  - Binary64 quotients and square roots: exact iff multiplying back (made
//    exact by Dekker's two-product) gives the operand.
//  - Binary64 fused multiply-adds: see fmaFast.
// Overflow and results at or below the smallest normal go to the softfloat.

const NO_FAST_PATH: u64 = 1; // never a result the fast paths return (a subnormal)
const F64_MIN_NORMAL: f64 = 2.2250738585072014e-308;
const F32_MIN_NORMAL: f64 = 1.1754943508222875e-38;

@inline function finite64(v: u64): bool { return (v & 0x7ff0000000000000) != 0x7ff0000000000000; }
@inline function finite32(v: u64): bool { return (v & 0x7f800000) != 0x7f800000; }

function addFast(a: u64, b: u64, negB: bool, f32: bool): u64 {
  if (f32) {
    if (!finite32(a) || !finite32(b)) return NO_FAST_PATH;
    const x = <f64>reinterpret<f32>(<u32>a);
    let y = <f64>reinterpret<f32>(<u32>b);
    if (negB) y = -y;
    const s = x + y;
    const bb = s - x;
    const err = (x - (s - bb)) + (y - bb);
    const r = <f32>s;
    if (!isFinite<f32>(r)) return NO_FAST_PATH;
    const inexact = err != 0 || <f64>r != s;
    if (inexact && Math.abs(<f64>r) < F32_MIN_NORMAL) return NO_FAST_PATH;
    if (inexact) raiseFlags(NX);
    return <u64>reinterpret<u32>(r);
  }
  if (!finite64(a) || !finite64(b)) return NO_FAST_PATH;
  const x = reinterpret<f64>(a);
  let y = reinterpret<f64>(b);
  if (negB) y = -y;
  const s = x + y;
  if (!isFinite<f64>(s)) return NO_FAST_PATH;
  const bb = s - x;
  if ((x - (s - bb)) + (y - bb) != 0) raiseFlags(NX);
  return reinterpret<u64>(s);
}

function mulFast(a: u64, b: u64, f32: bool): u64 {
  if (f32) {
    if (!finite32(a) || !finite32(b)) return NO_FAST_PATH;
    const p = <f64>reinterpret<f32>(<u32>a) * <f64>reinterpret<f32>(<u32>b); // exact
    const r = <f32>p;
    if (!isFinite<f32>(r)) return NO_FAST_PATH;
    const inexact = <f64>r != p;
    // Rounded up to the smallest normal, the product may have been tiny
    // before (underflow, decided after rounding with an unbounded exponent).
    if (inexact && Math.abs(<f64>r) <= F32_MIN_NORMAL) return NO_FAST_PATH;
    if (inexact) raiseFlags(NX);
    return <u64>reinterpret<u32>(r);
  }
  const ea = (a >> 52) & 0x7ff, eb = (b >> 52) & 0x7ff;
  // Normal operands only (zeros too: their product is exact).
  const aZero = (a << 1) == 0, bZero = (b << 1) == 0;
  if (!aZero && (ea == 0 || ea == 0x7ff)) return NO_FAST_PATH;
  if (!bZero && (eb == 0 || eb == 0x7ff)) return NO_FAST_PATH;
  const p = reinterpret<f64>(a) * reinterpret<f64>(b);
  if (aZero || bZero) return reinterpret<u64>(p);
  // At the smallest normal or below, the exact product may lie in the
  // subnormal range, where fewer than 53 bits are kept (and may be tiny).
  if (!isFinite<f64>(p) || Math.abs(p) <= F64_MIN_NORMAL) return NO_FAST_PATH;
  let ma = (a & 0xfffffffffffff) | 0x10000000000000;
  let mb = (b & 0xfffffffffffff) | 0x10000000000000;
  ma >>= ctz<u64>(ma);
  mb >>= ctz<u64>(mb);
  if (mulhu(ma, mb) != 0 || ma * mb >= 0x20000000000000) raiseFlags(NX);
  return reinterpret<u64>(p);
}

/** Whether the biased exponent of binary64 `bits` is in lo..hi. */
@inline function exponentIn(bits: u64, lo: u64, hi: u64): bool {
  return ((bits >> 52) & 0x7ff) - lo <= hi - lo;
}

/** x * y - p exactly, p being x * y rounded (Dekker's two-product with
 *  Veltkamp's splitting by 2^27 + 1), for x and y of magnitude 2^-450..2^451:
 *  there no step overflows or underflows. */
@inline function productError(x: f64, y: f64, p: f64): f64 {
  let t = x * 134217729.0;
  const xh = t - (t - x), xl = x - xh;
  t = y * 134217729.0;
  const yh = t - (t - y), yl = y - yh;
  return (((xh * yh - p) + xh * yl) + xl * yh) + xl * yl;
}

/** Binary64 division in RNE by the host's: exact (no NX) when quotient times
 *  divisor gives the dividend back exactly. Operands and quotient of
 *  magnitude 2^-450..2^451 only, so nothing is tiny and the check cannot
 *  overflow. */
function divFast(a: u64, b: u64): u64 {
  if (!exponentIn(a, 573, 1473) || !exponentIn(b, 573, 1473)) return NO_FAST_PATH;
  const x = reinterpret<f64>(a), y = reinterpret<f64>(b);
  const q = x / y;
  if (!exponentIn(reinterpret<u64>(q), 573, 1473)) return NO_FAST_PATH;
  const p = q * y;
  if (p != x || productError(q, y, p) != 0) raiseFlags(NX);
  return reinterpret<u64>(q);
}

/** Binary64 square root in RNE by the host's: exact when the root squared
 *  gives the radicand back exactly. Positive radicands of 2^-900..2^902. */
function sqrtFast(a: u64): u64 {
  if ((a >> 63) != 0 || !exponentIn(a, 123, 1923)) return NO_FAST_PATH;
  const x = reinterpret<f64>(a);
  const r = Math.sqrt(x);
  const p = r * r;
  if (p != x || productError(r, r, p) != 0) raiseFlags(NX);
  return reinterpret<u64>(r);
}

/**
 * Binary64 FMA in RNE from f64 arithmetic: Dekker's two-product, TwoSum and a
 * round-to-odd sum of the error terms before the one final rounding (Boldo and
 * Melquiond, "Emulation of a FMA and correctly rounded sums", IEEE TC 2008),
 * for normal a and b of magnitude 2^-450..2^451 and c = 0 or 2^-900..2^901,
 * where nothing overflows or underflows. The result is exact when both error
 * terms left over are zero; a result below 2^-962 (it could be tiny) goes to
 * the softfloat. The translator emits the same computation (src/jit/translate-fp.ts).
 */
function fmaFast(a: u64, b: u64, c: u64, negProduct: bool, negAddend: bool): u64 {
  if (!exponentIn(a, 573, 1473) || !exponentIn(b, 573, 1473)) return NO_FAST_PATH;
  if ((c << 1) != 0 && !exponentIn(c, 123, 1923)) return NO_FAST_PATH;
  let x = reinterpret<f64>(a);
  const y = reinterpret<f64>(b);
  let z = reinterpret<f64>(c);
  if (negProduct) x = -x;
  if (negAddend) z = -z;
  const p = x * y;
  const ul = productError(x, y, p);
  const th = z + p;
  let t = th - z;
  const tl = (z - (th - t)) + (p - t);
  let v = tl + ul;
  t = v - tl;
  const e2 = (tl - (v - t)) + (ul - t);
  const vb = reinterpret<u64>(v);
  if (e2 != 0 && (vb & 1) == 0) v = reinterpret<f64>(vb + (((reinterpret<u64>(e2) ^ vb) >> 63) == 0 ? 1 : <u64>-1));
  const r = th + v;
  if (((reinterpret<u64>(r) >> 52) & 0x7ff) < 61) return NO_FAST_PATH;
  t = r - th;
  const e1 = (th - (r - t)) + (v - t);
  if (e1 != 0 || e2 != 0) raiseFlags(NX);
  return reinterpret<u64>(r);
}

export function add(a: u64, b: u64, f32: bool): u64 {
  if (rm == RNE) {
    const r = addFast(a, b, false, f32);
    if (r != NO_FAST_PATH) return r;
  }
  unpack(a, f32, ua);
  unpack(b, f32, ub);
  return addUnpacked(ua, ub, f32);
}

export function sub(a: u64, b: u64, f32: bool): u64 {
  if (rm == RNE) {
    const r = addFast(a, b, true, f32);
    if (r != NO_FAST_PATH) return r;
  }
  unpack(a, f32, ua);
  unpack(b, f32, ub);
  if (!isNaNClass(ub.cls)) ub.sign ^= 1;
  return addUnpacked(ua, ub, f32);
}

// ---- mul ----------------------------------------------------------------------------

export function mul(a: u64, b: u64, f32: bool): u64 {
  if (rm == RNE) {
    const r = mulFast(a, b, f32);
    if (r != NO_FAST_PATH) return r;
  }
  unpack(a, f32, ua);
  unpack(b, f32, ub);
  if (isNaNClass(ua.cls) || isNaNClass(ub.cls)) return nanResult(ua, ub, f32);
  const sign = ua.sign ^ ub.sign;
  if (ua.cls == CLASS_INF || ub.cls == CLASS_INF) {
    if (ua.cls == CLASS_ZERO || ub.cls == CLASS_ZERO) return invalid(f32); // 0 * inf
    return packInf(sign, f32);
  }
  if (ua.cls == CLASS_ZERO || ub.cls == CLASS_ZERO) return packZero(sign, f32);
  // 53-bit significands; their product has 105 or 106 bits.
  const x = ua.sig >> 10, y = ub.sig >> 10;
  const hi = mulhu(x, y), lo = x * y;
  const sig = (hi << 22) | (lo >> 42) | ((lo & 0x3ffffffffff) != 0 ? 1 : 0);
  return normRoundPack(sign, ua.e + ub.e, sig, f32);
}

// ---- div ----------------------------------------------------------------------------

export function div(a: u64, b: u64, f32: bool): u64 {
  if (rm == RNE && !f32) {
    const r = divFast(a, b);
    if (r != NO_FAST_PATH) return r;
  }
  unpack(a, f32, ua);
  unpack(b, f32, ub);
  if (isNaNClass(ua.cls) || isNaNClass(ub.cls)) return nanResult(ua, ub, f32);
  const sign = ua.sign ^ ub.sign;
  if (ua.cls == CLASS_INF) {
    if (ub.cls == CLASS_INF) return invalid(f32); // inf / inf
    return packInf(sign, f32);
  }
  if (ub.cls == CLASS_INF) return packZero(sign, f32);
  if (ub.cls == CLASS_ZERO) {
    if (ua.cls == CLASS_ZERO) return invalid(f32); // 0 / 0
    raiseFlags(DZ);
    return packInf(sign, f32);
  }
  if (ua.cls == CLASS_ZERO) return packZero(sign, f32);
  // q = floor(x * 2^62 / y) by long division in 10-bit steps (x, y < 2^53, so
  // the shifted remainder stays below 2^63), then 2 more bits.
  const x = ua.sig >> 10, y = ub.sig >> 10;
  let q = x / y;
  let r = x % y;
  for (let i = 0; i < 6; i++) {
    r <<= 10;
    q = (q << 10) | (r / y);
    r = r % y;
  }
  r <<= 2;
  q = (q << 2) | (r / y);
  r = r % y;
  return normRoundPack(sign, ua.e - ub.e, q | (r != 0 ? 1 : 0), f32);
}

// ---- sqrt ---------------------------------------------------------------------------

export function sqrt(a: u64, f32: bool): u64 {
  if (rm == RNE && !f32) {
    const r = sqrtFast(a);
    if (r != NO_FAST_PATH) return r;
  }
  unpack(a, f32, ua);
  if (isNaNClass(ua.cls)) return nanResult(ua, ua, f32);
  if (ua.cls == CLASS_ZERO) return a; // sqrt(-0) = -0
  if (ua.sign != 0) return invalid(f32);
  if (ua.cls == CLASS_INF) return a;
  // value = x * 2^E with an even E; the root of x * 2^70 (below 2^124) is a
  // 62-bit integer computed digit by digit (two radicand bits per step).
  let x = ua.sig >> 10;
  let E = ua.e - 52;
  if ((E & 1) != 0) { x <<= 1; E -= 1; }
  const hi = x << 6; // x << 70 = (hi, lo = 0)
  let rem: u64 = 0, root: u64 = 0;
  for (let i = 61; i >= 0; i--) {
    const pos = 2 * i;
    const pair: u64 = pos >= 64 ? (hi >> <u64>(pos - 64)) & 3 : 0;
    rem = (rem << 2) | pair;
    const trial = (root << 2) | 1;
    if (rem >= trial) { rem -= trial; root = (root << 1) | 1; } else root <<= 1;
  }
  return normRoundPack(0, (E >> 1) + 27, root | (rem != 0 ? 1 : 0), f32);
}

// ---- fused multiply-add -----------------------------------------------------------

// 128-bit helpers on (hi, lo) pairs kept in globals.
let h128: u64 = 0;
let l128: u64 = 0;
function shr128Jam(hi: u64, lo: u64, n: i32): void {
  if (n <= 0) { h128 = hi; l128 = lo; return; }
  if (n >= 128) { h128 = 0; l128 = (hi | lo) != 0 ? 1 : 0; return; }
  if (n >= 64) {
    const s = n - 64;
    const lostFromHi: u64 = s == 0 ? 0 : hi << <u64>(64 - s);
    l128 = (s == 0 ? hi : hi >> <u64>s) | (lo != 0 || lostFromHi != 0 ? 1 : 0);
    h128 = 0;
    return;
  }
  l128 = (lo >> <u64>n) | (hi << <u64>(64 - n)) | ((lo << <u64>(64 - n)) != 0 ? 1 : 0);
  h128 = hi >> <u64>n;
}

/** a * b + c with one rounding. negProduct / negAddend implement fmsub, fnmadd,
 *  fnmsub (spec 11.6): they flip signs before the exact computation. */
export function fma(a: u64, b: u64, c: u64, negProduct: bool, negAddend: bool, f32: bool): u64 {
  if (rm == RNE && !f32) {
    const r = fmaFast(a, b, c, negProduct, negAddend);
    if (r != NO_FAST_PATH) return r;
  }
  unpack(a, f32, ua);
  unpack(b, f32, ub);
  unpack(c, f32, uc);
  const prodInvalid = (ua.cls == CLASS_INF && ub.cls == CLASS_ZERO) || (ua.cls == CLASS_ZERO && ub.cls == CLASS_INF);
  if (isNaNClass(ua.cls) || isNaNClass(ub.cls) || isNaNClass(uc.cls)) {
    // 0 * inf is invalid even when the addend is a quiet NaN.
    if (prodInvalid || ua.cls == CLASS_SNAN || ub.cls == CLASS_SNAN || uc.cls == CLASS_SNAN) raiseFlags(NV);
    return canonicalNaN(f32);
  }
  if (prodInvalid) return invalid(f32);
  let sp = ua.sign ^ ub.sign;
  if (negProduct) sp ^= 1;
  let sc = uc.sign;
  if (negAddend) sc ^= 1;
  const prodInf = ua.cls == CLASS_INF || ub.cls == CLASS_INF;
  if (prodInf) {
    if (uc.cls == CLASS_INF && sc != sp) return invalid(f32); // inf - inf
    return packInf(sp, f32);
  }
  if (uc.cls == CLASS_INF) return packInf(sc, f32);
  const prodZero = ua.cls == CLASS_ZERO || ub.cls == CLASS_ZERO;
  if (prodZero) {
    if (uc.cls == CLASS_ZERO) return packZero(sp == sc ? sp : (rm == RDN ? 1 : 0), f32);
    return roundPack(sc, uc.e, uc.sig, f32);
  }
  // Exact product x*y (< 2^106) scaled to P = x*y << 20 with value P * 2^ep.
  const x = ua.sig >> 10, y = ub.sig >> 10;
  let ph = mulhu(x, y), pl = x * y;
  ph = (ph << 20) | (pl >> 44);
  pl = pl << 20;
  let ep = ua.e + ub.e - 124;
  if (uc.cls == CLASS_ZERO) {
    return finish128(sp, ep, ph, pl, f32);
  }
  // Addend z << 72 (leading one at bit 124), value Z * 2^ez.
  const z = uc.sig >> 10;
  let zh = z << 8, zl: u64 = 0;
  let ez = uc.e - 124;
  // Align to the larger exponent.
  if (ep >= ez) {
    shr128Jam(zh, zl, ep - ez); zh = h128; zl = l128;
  } else {
    shr128Jam(ph, pl, ez - ep); ph = h128; pl = l128;
    ep = ez;
  }
  if (sp == sc) {
    const lo = pl + zl;
    const hi = ph + zh + (lo < pl ? 1 : 0);
    return finish128(sp, ep, hi, lo, f32);
  }
  // Subtract the smaller magnitude from the larger.
  let sign = sp;
  let ah = ph, al = pl, bh = zh, bl = zl;
  if (zh > ph || (zh == ph && zl > pl)) { sign = sc; ah = zh; al = zl; bh = ph; bl = pl; }
  const lo = al - bl;
  const hi = ah - bh - (al < bl ? 1 : 0);
  if (hi == 0 && lo == 0) return packZero(rm == RDN ? 1 : 0, f32);
  return finish128(sign, ep, hi, lo, f32);
}

/** Round the 128-bit magnitude (hi, lo) * 2^e. */
function finish128(sign: u64, e: i32, hi: u64, lo: u64, f32: bool): u64 {
  // Leading one at bit L; bring it to bit 62 of a 64-bit sticky significand.
  const L: i32 = hi != 0 ? 127 - <i32>clz<u64>(hi) : 63 - <i32>clz<u64>(lo);
  let sig: u64;
  if (L > 62) {
    shr128Jam(hi, lo, L - 62);
    sig = l128;
  } else {
    sig = lo << <u64>(62 - L);
  }
  return roundPack(sign, e + L, sig, f32);
}

// ---- conversions ------------------------------------------------------------------

/** Integer -> float. `signed`: the value is an i64 (i32 values arrive sign-extended). */
export function fromInt(v: u64, signed: bool, f32: bool): u64 {
  if (v == 0) return 0;
  let sign: u64 = 0;
  let mag = v;
  if (signed && <i64>v < 0) { sign = 1; mag = 0 - v; }
  return normRoundPack(sign, 62, mag, f32);
}

/**
 * Float -> integer with the result width `bits` (32 or 64), RISC-V saturation
 * (spec 11.7, table 11.4): NaN gives the largest value, out-of-range values the
 * nearest end, both raising NV and not NX. 32-bit results come back
 * sign-extended to 64 bits, as FCVT.W[U] writes them on RV64.
 */
export function toInt(a: u64, signed: bool, bits: i32, f32: bool): u64 {
  unpack(a, f32, ua);
  const maxPos: u64 = signed ? (((<u64>1) << <u64>(bits - 1)) - 1) : (bits == 64 ? 0xffffffffffffffff : 0xffffffff);
  const maxNegMag: u64 = signed ? ((<u64>1) << <u64>(bits - 1)) : 0;
  if (isNaNClass(ua.cls)) { raiseFlags(NV); return ext(maxPos, bits); }
  if (ua.cls == CLASS_ZERO) return 0;
  const neg = ua.sign != 0;
  if (ua.cls == CLASS_INF) { raiseFlags(NV); return neg ? ext(0 - maxNegMag, bits) : ext(maxPos, bits); }
  // |value| = sig * 2^(e - 62): split into integer part and fraction.
  let intPart: u64;
  let inexact = false;
  let incr = false;
  if (ua.e > 63) { raiseFlags(NV); return neg ? ext(0 - maxNegMag, bits) : ext(maxPos, bits); }
  const shift = 62 - ua.e;
  if (shift <= 0) {
    intPart = ua.sig << <u64>(-shift);
  } else if (shift >= 64) {
    intPart = 0;
    inexact = true; // |value| < 2^-1 with room to spare: below one half
    incr = (rm == RDN && neg) || (rm == RUP && !neg);
  } else {
    intPart = ua.sig >> <u64>shift;
    const rem = ua.sig & (((<u64>1) << <u64>shift) - 1);
    const half = (<u64>1) << <u64>(shift - 1);
    inexact = rem != 0;
    if (rm == RNE) incr = rem > half || (rem == half && (intPart & 1) != 0);
    else if (rm == RMM) incr = rem >= half;
    else if (rm == RDN) incr = neg && rem != 0;
    else if (rm == RUP) incr = !neg && rem != 0;
  }
  if (incr) intPart += 1;
  // Range check on the magnitude (intPart may have wrapped only from 2^64-1).
  const overflow = incr && intPart == 0 ? true : neg ? (intPart > maxNegMag) : (intPart > maxPos);
  if (overflow || (!signed && neg && intPart != 0)) {
    raiseFlags(NV);
    return neg ? ext(signed ? 0 - maxNegMag : 0, bits) : ext(maxPos, bits);
  }
  if (inexact) raiseFlags(NX);
  return ext(neg ? 0 - intPart : intPart, bits);
}

@inline function ext(v: u64, bits: i32): u64 {
  return bits == 32 ? <u64>(<i64>(<i32>v)) : v;
}

/** Float -> float (S <-> D). Widening is exact; narrowing rounds. */
export function convert(a: u64, fromF32: bool, toF32: bool): u64 {
  unpack(a, fromF32, ua);
  if (isNaNClass(ua.cls)) {
    if (ua.cls == CLASS_SNAN) raiseFlags(NV);
    return canonicalNaN(toF32);
  }
  if (ua.cls == CLASS_INF) return packInf(ua.sign, toF32);
  if (ua.cls == CLASS_ZERO) return packZero(ua.sign, toF32);
  return roundPack(ua.sign, ua.e, ua.sig, toF32);
}

// ---- compare, min/max, classify ---------------------------------------------------

/** -1, 0, 1 for a < b, a == b, a > b; 2 when unordered. */
function compare(a: u64, b: u64, f32: bool): i32 {
  unpack(a, f32, ua);
  unpack(b, f32, ub);
  if (isNaNClass(ua.cls) || isNaNClass(ub.cls)) return 2;
  if (ua.cls == CLASS_ZERO && ub.cls == CLASS_ZERO) return 0;
  const sa = ua.sign, sb = ub.sign;
  // Order by sign, then magnitude bits (IEEE encodings order like integers).
  const m = f32 ? (<u64>0x7fffffff) : 0x7fffffffffffffff;
  const ma = a & m, mb = b & m;
  if (sa != sb) return sa != 0 ? -1 : 1;
  if (ma == mb) return 0;
  const less = ma < mb;
  return (sa != 0) != less ? -1 : 1;
}

/** FEQ: quiet, NV only for signaling NaNs. */
export function feq(a: u64, b: u64, f32: bool): u64 {
  const c = compare(a, b, f32);
  if (c == 2) { if (ua.cls == CLASS_SNAN || ub.cls == CLASS_SNAN) raiseFlags(NV); return 0; }
  return c == 0 ? 1 : 0;
}

/** FLT, FLE: signaling, NV for any NaN. */
export function flt(a: u64, b: u64, f32: bool): u64 {
  const c = compare(a, b, f32);
  if (c == 2) { raiseFlags(NV); return 0; }
  return c < 0 ? 1 : 0;
}
export function fle(a: u64, b: u64, f32: bool): u64 {
  const c = compare(a, b, f32);
  if (c == 2) { raiseFlags(NV); return 0; }
  return c <= 0 ? 1 : 0;
}

/** FMIN/FMAX (spec 11.6, IEEE 754-2019 minimumNumber/maximumNumber): a NaN
 *  operand yields the other one; both NaN, the canonical NaN; -0 < +0; NV for
 *  signaling NaNs. */
export function fminmax(a: u64, b: u64, isMax: bool, f32: bool): u64 {
  const c = compare(a, b, f32);
  if (ua.cls == CLASS_SNAN || ub.cls == CLASS_SNAN) raiseFlags(NV);
  const aNaN = isNaNClass(ua.cls), bNaN = isNaNClass(ub.cls);
  if (aNaN && bNaN) return canonicalNaN(f32);
  if (aNaN) return b;
  if (bNaN) return a;
  if (c == 0) {
    // Equal values differ only for zeros of different sign.
    if (ua.sign != ub.sign) return isMax ? (ua.sign == 0 ? a : b) : (ua.sign != 0 ? a : b);
    return a;
  }
  return (c < 0) != isMax ? a : b;
}

/** FCLASS: one-hot class mask (spec 11.9, table 11.5). */
export function fclass(a: u64, f32: bool): u64 {
  unpack(a, f32, ua);
  const neg = ua.sign != 0;
  switch (ua.cls) {
    case CLASS_INF: return neg ? 1 << 0 : 1 << 7;
    case CLASS_NORMAL:
      if (ua.subnormal) return neg ? 1 << 2 : 1 << 5;
      return neg ? 1 << 1 : 1 << 6;
    case CLASS_ZERO: return neg ? 1 << 3 : 1 << 4;
    case CLASS_SNAN: return 1 << 8;
  }
  return 1 << 9;
}
