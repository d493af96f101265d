// F and D instructions (unprivileged spec chapters 11 and 12) on top of the
// softfloat in softfloat.ts. Called by the interpreter for the major opcodes
// LOAD-FP, STORE-FP, MADD, MSUB, NMSUB, NMADD and OP-FP; the caller advances pc.
//
// Precise traps: nothing (registers, fflags, mstatus.FS) changes unless the
// instruction completes.

import {
  getX, setX, getF, setF, illegal, status, STATUS_OK, fsOff, markFsDirty, accrueFflags, rd, FRM_OFF,
} from "../hart";
import { load32, load64, store32, store64 } from "../memory";
import * as sf from "./softfloat";

const BOX: u64 = 0xffffffff00000000;

/** A single-precision operand: improperly NaN-boxed values read as the
 *  canonical NaN (spec 11.2). */
@inline function readS(i: u32): u64 {
  const v = getF(i);
  return (v & BOX) == BOX ? v & 0xffffffff : sf.F32_CANONICAL_NAN;
}
@inline function writeS(i: u32, v: u64): void {
  setF(i, (v & 0xffffffff) | BOX);
}

/** The rounding mode of the instruction: its rm field, or frm when rm = 7
 *  (dynamic); -1 when that is a reserved value (spec 11.2). */
function roundingMode(insn: u32): i32 {
  let m = (insn >> 12) & 7;
  if (m == 7) m = <u32>rd(FRM_OFF);
  return m > 4 ? -1 : <i32>m;
}

function complete(flags: u32): void {
  accrueFflags(flags);
  markFsDirty();
}

export function execFp(insn: u32): void {
  if (fsOff()) { illegal(insn); return; }
  const op = insn & 0x7f;
  const rdIdx = (insn >> 7) & 31;
  const rs1 = (insn >> 15) & 31;
  const rs2 = (insn >> 20) & 31;
  const width = (insn >> 12) & 7;

  if (op == 0x07) { // FLW, FLD
    const va = getX(rs1) + <u64>(<i64>((<i32>insn) >> 20));
    if (width == 2) {
      const v = load32(va);
      if (status != STATUS_OK) return;
      writeS(rdIdx, v);
    } else if (width == 3) {
      const v = load64(va);
      if (status != STATUS_OK) return;
      setF(rdIdx, v);
    } else { illegal(insn); return; }
    markFsDirty();
    return;
  }
  if (op == 0x27) { // FSW, FSD: stores raw bits (no NaN-box check)
    const imm = ((<i32>insn) >> 25 << 5) | <i32>((insn >> 7) & 0x1f);
    const va = getX(rs1) + <u64>(<i64>imm);
    if (width == 2) store32(va, getF(rs2));
    else if (width == 3) store64(va, getF(rs2));
    else illegal(insn);
    return;
  }

  const fmt = (insn >> 25) & 3; // 0 = S, 1 = D; 2 = H and 3 = Q belong to Zfh and Q, which this hart does not have
  if (fmt > 1) { illegal(insn); return; }
  const f32 = fmt == 0;

  if (op != 0x53) { // fused multiply-add family, R4-type
    const m = roundingMode(insn);
    if (m < 0) { illegal(insn); return; }
    const rs3 = insn >> 27;
    sf.begin(<u32>m);
    const a = f32 ? readS(rs1) : getF(rs1);
    const b = f32 ? readS(rs2) : getF(rs2);
    const c = f32 ? readS(rs3) : getF(rs3);
    // FMADD: a*b+c, FMSUB: a*b-c, FNMSUB: -(a*b)+c, FNMADD: -(a*b)-c
    const negProduct = op == 0x4b || op == 0x4f;
    const negAddend = op == 0x47 || op == 0x4f;
    const r = sf.fma(a, b, c, negProduct, negAddend, f32);
    if (f32) writeS(rdIdx, r); else setF(rdIdx, r);
    complete(sf.flags);
    return;
  }

  const funct5 = insn >> 27;
  const a = f32 ? readS(rs1) : getF(rs1);
  const b = f32 ? readS(rs2) : getF(rs2);
  let needsRm = false;
  switch (funct5) {
    case 0x00: case 0x01: case 0x02: case 0x03: case 0x0b:
    case 0x08: case 0x18: case 0x1a:
      needsRm = true;
  }
  let mode: i32 = 0;
  if (needsRm) {
    mode = roundingMode(insn);
    if (mode < 0) { illegal(insn); return; }
  }
  sf.begin(<u32>mode);
  let r: u64 = 0;
  let toInt = false; // result goes to x[rd]
  switch (funct5) {
    case 0x00: r = sf.add(a, b, f32); break;
    case 0x01: r = sf.sub(a, b, f32); break;
    case 0x02: r = sf.mul(a, b, f32); break;
    case 0x03: r = sf.div(a, b, f32); break;
    case 0x0b: // FSQRT
      if (rs2 != 0) { illegal(insn); return; }
      r = sf.sqrt(a, f32);
      break;
    case 0x04: { // FSGNJ, FSGNJN, FSGNJX: bit operations, no flags
      const signBit: u64 = f32 ? 0x80000000 : 0x8000000000000000;
      const sb = b & signBit;
      if (width == 0) r = (a & ~signBit) | sb;
      else if (width == 1) r = (a & ~signBit) | (sb ^ signBit);
      else if (width == 2) r = a ^ sb;
      else { illegal(insn); return; }
      break;
    }
    case 0x05: // FMIN, FMAX
      if (width > 1) { illegal(insn); return; }
      r = sf.fminmax(a, b, width == 1, f32);
      break;
    case 0x08: // FCVT.S.D (fmt S, rs2 = 1) and FCVT.D.S (fmt D, rs2 = 0)
      if (f32 && rs2 == 1) r = sf.convert(getF(rs1), false, true);
      else if (!f32 && rs2 == 0) r = sf.convert(readS(rs1), true, false);
      else { illegal(insn); return; }
      break;
    case 0x14: // FLE, FLT, FEQ
      toInt = true;
      if (width == 0) r = sf.fle(a, b, f32);
      else if (width == 1) r = sf.flt(a, b, f32);
      else if (width == 2) r = sf.feq(a, b, f32);
      else { illegal(insn); return; }
      break;
    case 0x18: // FCVT.W/WU/L/LU from float
      toInt = true;
      if (rs2 > 3) { illegal(insn); return; }
      r = sf.toInt(a, (rs2 & 1) == 0, rs2 < 2 ? 32 : 64, f32);
      break;
    case 0x1a: { // FCVT to float from W/WU/L/LU
      if (rs2 > 3) { illegal(insn); return; }
      let v = getX(rs1);
      if (rs2 == 0) v = <u64>(<i64>(<i32>v));
      else if (rs2 == 1) v &= 0xffffffff;
      r = sf.fromInt(v, (rs2 & 1) == 0, f32);
      break;
    }
    case 0x1c: // FMV.X.W / FMV.X.D (width 0), FCLASS (width 1)
      if (rs2 != 0) { illegal(insn); return; }
      toInt = true;
      if (width == 0) r = f32 ? <u64>(<i64>(<i32>getF(rs1))) : getF(rs1);
      else if (width == 1) r = sf.fclass(a, f32);
      else { illegal(insn); return; }
      break;
    case 0x1e: // FMV.W.X / FMV.D.X
      if (rs2 != 0 || width != 0) { illegal(insn); return; }
      if (f32) writeS(rdIdx, getX(rs1)); else setF(rdIdx, getX(rs1));
      markFsDirty();
      return;
    default:
      illegal(insn);
      return;
  }
  if (toInt) {
    setX(rdIdx, r);
    accrueFflags(sf.flags);
    if (sf.flags != 0) markFsDirty();
    return;
  }
  if (f32) writeS(rdIdx, r); else setF(rdIdx, r);
  complete(sf.flags);
}
