// Bit manipulation: Zba (address generation), Zbb (basic), Zbs (single bit)
// from the ratified B extension, version 1.0.0. Each function returns false when
// the encoding is not one of these instructions (the caller raises illegal).

import { setX } from "../hart";

@inline function sext32(v: u64): u64 {
  return <u64>(<i64>(<i32>v));
}

function orcb(v: u64): u64 {
  let r: u64 = 0;
  for (let i: u64 = 0; i < 64; i += 8) if (((v >> i) & 0xff) != 0) r |= (<u64>0xff) << i;
  return r;
}

function rev8(v: u64): u64 {
  return bswap<u64>(v);
}

/** OP (0x33) register-register forms with funct7 != 0, 1, 0x20 base cases. */
export function execZbOp(f7: u32, f3: u32, rd: u32, a: u64, b: u64): bool {
  const sh = b & 63;
  switch (f7) {
    case 0x10: // sh1add, sh2add, sh3add
      if (f3 == 2) { setX(rd, (a << 1) + b); return true; }
      if (f3 == 4) { setX(rd, (a << 2) + b); return true; }
      if (f3 == 6) { setX(rd, (a << 3) + b); return true; }
      return false;
    case 0x20: // andn, orn, xnor (sub/sra handled by the base)
      if (f3 == 7) { setX(rd, a & ~b); return true; }
      if (f3 == 6) { setX(rd, a | ~b); return true; }
      if (f3 == 4) { setX(rd, ~(a ^ b)); return true; }
      return false;
    case 0x05: // min, minu, max, maxu
      if (f3 == 4) { setX(rd, <i64>a < <i64>b ? a : b); return true; }
      if (f3 == 5) { setX(rd, a < b ? a : b); return true; }
      if (f3 == 6) { setX(rd, <i64>a > <i64>b ? a : b); return true; }
      if (f3 == 7) { setX(rd, a > b ? a : b); return true; }
      return false;
    case 0x30: // rol, ror
      if (f3 == 1) { setX(rd, rotl<u64>(a, sh)); return true; }
      if (f3 == 5) { setX(rd, rotr<u64>(a, sh)); return true; }
      return false;
    case 0x24: // bclr, bext
      if (f3 == 1) { setX(rd, a & ~((<u64>1) << sh)); return true; }
      if (f3 == 5) { setX(rd, (a >> sh) & 1); return true; }
      return false;
    case 0x14: // bset
      if (f3 == 1) { setX(rd, a | ((<u64>1) << sh)); return true; }
      return false;
    case 0x34: // binv
      if (f3 == 1) { setX(rd, a ^ ((<u64>1) << sh)); return true; }
      return false;
  }
  return false;
}

/** OP-32 (0x3b) forms: add.uw, zext.h, shNadd.uw, rolw, rorw. */
export function execZbOp32(f7: u32, f3: u32, rd: u32, rs2: u32, a: u64, b: u64): bool {
  const aw = a & 0xffffffff;
  switch (f7) {
    case 0x04:
      if (f3 == 0) { setX(rd, aw + b); return true; }
      if (f3 == 4 && rs2 == 0) { setX(rd, a & 0xffff); return true; }
      return false;
    case 0x10:
      if (f3 == 2) { setX(rd, (aw << 1) + b); return true; }
      if (f3 == 4) { setX(rd, (aw << 2) + b); return true; }
      if (f3 == 6) { setX(rd, (aw << 3) + b); return true; }
      return false;
    case 0x30:
      if (f3 == 1) { setX(rd, sext32(<u64>rotl<u32>(<u32>a, <u32>(b & 31)))); return true; }
      if (f3 == 5) { setX(rd, sext32(<u64>rotr<u32>(<u32>a, <u32>(b & 31)))); return true; }
      return false;
  }
  return false;
}

/** OP-IMM (0x13) with funct3 1 or 5 and a nonzero funct6: clz, ctz, cpop,
 *  sext.b, sext.h, bclri, bseti, binvi, rori, bexti, orc.b, rev8. */
export function execZbOpImm(insn: u32, f3: u32, rd: u32, a: u64): bool {
  const imm12 = insn >> 20;
  const funct6 = insn >> 26;
  const sh = <u64>((insn >> 20) & 63);
  if (f3 == 1) {
    switch (imm12) {
      case 0x600: setX(rd, clz<u64>(a)); return true;
      case 0x601: setX(rd, ctz<u64>(a)); return true;
      case 0x602: setX(rd, popcnt<u64>(a)); return true;
      case 0x604: setX(rd, <u64>(<i64>(<i8>a))); return true;
      case 0x605: setX(rd, <u64>(<i64>(<i16>a))); return true;
    }
    if (funct6 == 0x12) { setX(rd, a & ~((<u64>1) << sh)); return true; }
    if (funct6 == 0x0a) { setX(rd, a | ((<u64>1) << sh)); return true; }
    if (funct6 == 0x1a) { setX(rd, a ^ ((<u64>1) << sh)); return true; }
    return false;
  }
  if (imm12 == 0x287) { setX(rd, orcb(a)); return true; }
  if (imm12 == 0x6b8) { setX(rd, rev8(a)); return true; }
  if (funct6 == 0x18) { setX(rd, rotr<u64>(a, sh)); return true; }
  if (funct6 == 0x12) { setX(rd, (a >> sh) & 1); return true; }
  return false;
}

/** OP-IMM-32 (0x1b) forms: slli.uw, clzw, ctzw, cpopw, roriw. */
export function execZbOpImm32(insn: u32, f3: u32, rd: u32, a: u64): bool {
  const imm12 = insn >> 20;
  const f7 = insn >> 25;
  if (f3 == 1) {
    if ((insn >> 26) == 0x02) { setX(rd, (a & 0xffffffff) << <u64>((insn >> 20) & 63)); return true; }
    if (imm12 == 0x600) { setX(rd, <u64>clz<u32>(<u32>a)); return true; }
    if (imm12 == 0x601) { setX(rd, <u64>ctz<u32>(<u32>a)); return true; }
    if (imm12 == 0x602) { setX(rd, <u64>popcnt<u32>(<u32>a)); return true; }
    return false;
  }
  if (f7 == 0x30) { setX(rd, sext32(<u64>rotr<u32>(<u32>a, (insn >> 20) & 31))); return true; }
  return false;
}
