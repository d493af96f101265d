// RV64I base integer instructions (unprivileged spec chapters 2 and 5), except
// SYSTEM (system.ts). Each function executes one instruction group and returns
// the next pc; a faulting instruction leaves `status` set and writes nothing.

import { getX, setX, illegal, status, STATUS_OK } from "../hart";
import { load8, load16, load32, load64, store8, store16, store32, store64 } from "../memory";
import { execMulDiv, execMulDivW } from "./m";
import { execZbOp, execZbOp32, execZbOpImm, execZbOpImm32 } from "./zb";

@inline function sext32(v: u64): u64 {
  return <u64>(<i64>(<i32>v));
}
@inline function immI(insn: u32): u64 {
  return <u64>(<i64>((<i32>insn) >> 20));
}
@inline function immS(insn: u32): u64 {
  return <u64>(<i64>((((<i32>insn) >> 25) << 5) | <i32>((insn >> 7) & 0x1f)));
}

@inline export function execLoad(insn: u32): void {
  const va = getX((insn >> 15) & 31) + immI(insn);
  let v: u64;
  switch ((insn >> 12) & 7) {
    case 0: v = <u64>(<i64>(<i8>load8(va))); break;
    case 1: v = <u64>(<i64>(<i16>load16(va))); break;
    case 2: v = sext32(load32(va)); break;
    case 3: v = load64(va); break;
    case 4: v = load8(va); break;
    case 5: v = load16(va); break;
    case 6: v = load32(va); break;
    default: illegal(insn); return;
  }
  if (status == STATUS_OK) setX((insn >> 7) & 31, v);
}

@inline export function execStore(insn: u32): void {
  const va = getX((insn >> 15) & 31) + immS(insn);
  const v = getX((insn >> 20) & 31);
  switch ((insn >> 12) & 7) {
    case 0: store8(va, v); break;
    case 1: store16(va, v); break;
    case 2: store32(va, v); break;
    case 3: store64(va, v); break;
    default: illegal(insn);
  }
}

@inline export function execOpImm(insn: u32): void {
  const rd = (insn >> 7) & 31;
  const a = getX((insn >> 15) & 31);
  const imm = immI(insn);
  const f3 = (insn >> 12) & 7;
  switch (f3) {
    case 0: setX(rd, a + imm); return;
    case 2: setX(rd, <i64>a < <i64>imm ? 1 : 0); return;
    case 3: setX(rd, a < imm ? 1 : 0); return;
    case 4: setX(rd, a ^ imm); return;
    case 6: setX(rd, a | imm); return;
    case 7: setX(rd, a & imm); return;
    case 1:
      if ((insn >> 26) == 0) { setX(rd, a << (imm & 63)); return; }
      break;
    case 5:
      if ((insn >> 26) == 0) { setX(rd, a >> (imm & 63)); return; }
      if ((insn >> 26) == 0x10) { setX(rd, <u64>(<i64>a >> <i64>(imm & 63))); return; }
      break;
  }
  if (!execZbOpImm(insn, f3, rd, a)) illegal(insn);
}

@inline export function execOpImm32(insn: u32): void {
  const rd = (insn >> 7) & 31;
  const a = getX((insn >> 15) & 31);
  const f3 = (insn >> 12) & 7;
  const f7 = insn >> 25;
  const sh = (insn >> 20) & 31;
  if (f3 == 0) { setX(rd, sext32(a + immI(insn))); return; }
  if (f3 == 1 && f7 == 0) { setX(rd, sext32(<u64>((<u32>a) << sh))); return; }
  if (f3 == 5 && f7 == 0) { setX(rd, sext32(<u64>((<u32>a) >> sh))); return; }
  if (f3 == 5 && f7 == 0x20) { setX(rd, sext32(<u64>((<i32>a) >> sh))); return; }
  if (!execZbOpImm32(insn, f3, rd, a)) illegal(insn);
}

@inline export function execOp(insn: u32): void {
  const rd = (insn >> 7) & 31;
  const a = getX((insn >> 15) & 31);
  const b = getX((insn >> 20) & 31);
  const f3 = (insn >> 12) & 7;
  const f7 = insn >> 25;
  if (f7 == 0) {
    switch (f3) {
      case 0: setX(rd, a + b); return;
      case 1: setX(rd, a << (b & 63)); return;
      case 2: setX(rd, <i64>a < <i64>b ? 1 : 0); return;
      case 3: setX(rd, a < b ? 1 : 0); return;
      case 4: setX(rd, a ^ b); return;
      case 5: setX(rd, a >> (b & 63)); return;
      case 6: setX(rd, a | b); return;
      case 7: setX(rd, a & b); return;
    }
  }
  if (f7 == 0x20) {
    if (f3 == 0) { setX(rd, a - b); return; }
    if (f3 == 5) { setX(rd, <u64>(<i64>a >> <i64>(b & 63))); return; }
  }
  if (f7 == 1) { execMulDiv(insn, rd, a, b); return; }
  if (!execZbOp(f7, f3, rd, a, b)) illegal(insn);
}

@inline export function execOp32(insn: u32): void {
  const rd = (insn >> 7) & 31;
  const a = getX((insn >> 15) & 31);
  const b = getX((insn >> 20) & 31);
  const f3 = (insn >> 12) & 7;
  const f7 = insn >> 25;
  if (f7 == 0) {
    if (f3 == 0) { setX(rd, sext32(a + b)); return; }
    if (f3 == 1) { setX(rd, sext32(<u64>((<u32>a) << <u32>(b & 31)))); return; }
    if (f3 == 5) { setX(rd, sext32(<u64>((<u32>a) >> <u32>(b & 31)))); return; }
  } else if (f7 == 0x20) {
    if (f3 == 0) { setX(rd, sext32(a - b)); return; }
    if (f3 == 5) { setX(rd, sext32(<u64>((<i32>a) >> <i32>(b & 31)))); return; }
  } else if (f7 == 1) {
    execMulDivW(insn, rd, a, b);
    return;
  }
  if (!execZbOp32(f7, f3, rd, (insn >> 20) & 31, a, b)) illegal(insn);
}

/** Conditional branches; returns the next pc. */
@inline export function execBranch(insn: u32, pc: u64, len: u64): u64 {
  const a = getX((insn >> 15) & 31);
  const b = getX((insn >> 20) & 31);
  let taken: bool;
  switch ((insn >> 12) & 7) {
    case 0: taken = a == b; break;
    case 1: taken = a != b; break;
    case 4: taken = <i64>a < <i64>b; break;
    case 5: taken = <i64>a >= <i64>b; break;
    case 6: taken = a < b; break;
    case 7: taken = a >= b; break;
    default: illegal(insn); return pc;
  }
  if (!taken) return pc + len;
  const imm = <u64>(<i64>(
    ((<i32>(insn & 0x80000000)) >> 19) | <i32>((insn & 0x80) << 4) | <i32>((insn >> 20) & 0x7e0) | <i32>((insn >> 7) & 0x1e)
  ));
  return pc + imm;
}

@inline export function jalTarget(insn: u32, pc: u64): u64 {
  const imm = <u64>(<i64>(
    ((<i32>(insn & 0x80000000)) >> 11) | <i32>(insn & 0xff000) | <i32>((insn >> 9) & 0x800) | <i32>((insn >> 20) & 0x7fe)
  ));
  return pc + imm;
}

export { immI };
