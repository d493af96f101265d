// M extension: integer multiply and divide (unprivileged spec chapter 7).
// Division never traps: by zero and signed overflow have defined results
// (table 7.1), which wasm's trapping i64.div_s must not see.

import { setX, illegal } from "../hart";

/** High 64 bits of the unsigned 128-bit product, from 32-bit halves. */
export function mulhu(a: u64, b: u64): u64 {
  const a0 = a & 0xffffffff, a1 = a >> 32, b0 = b & 0xffffffff, b1 = b >> 32;
  const p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
  const mid = (p00 >> 32) + (p01 & 0xffffffff) + (p10 & 0xffffffff);
  return p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}

export function mulh(a: u64, b: u64): u64 {
  let r = mulhu(a, b);
  if (<i64>a < 0) r -= b;
  if (<i64>b < 0) r -= a;
  return r;
}

export function mulhsu(a: u64, b: u64): u64 {
  let r = mulhu(a, b);
  if (<i64>a < 0) r -= b;
  return r;
}

function div(a: u64, b: u64): u64 {
  if (b == 0) return 0xffffffffffffffff;
  if (a == 0x8000000000000000 && b == 0xffffffffffffffff) return a;
  return <u64>(<i64>a / <i64>b);
}
function rem(a: u64, b: u64): u64 {
  if (b == 0) return a;
  if (a == 0x8000000000000000 && b == 0xffffffffffffffff) return 0;
  return <u64>(<i64>a % <i64>b);
}
@inline function sext32(v: u64): u64 {
  return <u64>(<i64>(<i32>v));
}

/** OP with funct7 = 1 (RV64M). */
export function execMulDiv(insn: u32, rd: u32, a: u64, b: u64): void {
  let r: u64 = 0;
  switch ((insn >> 12) & 7) {
    case 0: r = a * b; break;
    case 1: r = mulh(a, b); break;
    case 2: r = mulhsu(a, b); break;
    case 3: r = mulhu(a, b); break;
    case 4: r = div(a, b); break;
    case 5: r = b == 0 ? 0xffffffffffffffff : a / b; break;
    case 6: r = rem(a, b); break;
    case 7: r = b == 0 ? a : a % b; break;
  }
  setX(rd, r);
}

/** OP-32 with funct7 = 1 (MULW, DIVW, DIVUW, REMW, REMUW): 32-bit operands,
 *  sign-extended 32-bit result. */
export function execMulDivW(insn: u32, rd: u32, a64: u64, b64: u64): void {
  const a = <i32>a64, b = <i32>b64;
  let r: i32 = 0;
  switch ((insn >> 12) & 7) {
    case 0: r = a * b; break;
    case 4: r = b == 0 ? -1 : (a == i32.MIN_VALUE && b == -1) ? a : a / b; break;
    case 5: r = b == 0 ? -1 : <i32>(<u32>a / <u32>b); break;
    case 6: r = b == 0 ? a : (a == i32.MIN_VALUE && b == -1) ? 0 : a % b; break;
    case 7: r = b == 0 ? a : <i32>(<u32>a % <u32>b); break;
    default: illegal(insn); return;
  }
  setX(rd, sext32(<u64>r));
}

