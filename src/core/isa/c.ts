// C extension: each 16-bit instruction expands to the 32-bit instruction it
// stands for (unprivileged spec chapter 16, tables 16.5-16.7; RV64 column), so
// the interpreter has one execution path. Returns 0 for reserved or illegal
// encodings (0 is not a valid 32-bit instruction either).

@inline function bits(c: u32, hi: u32, lo: u32): u32 {
  return (c >> lo) & ((1 << (hi - lo + 1)) - 1);
}
@inline function sext(v: u32, width: u32): i32 {
  return (<i32>(v << (32 - width))) >> (32 - width);
}

// 32-bit encoders for the formats we produce.
@inline function iType(op: u32, rd: u32, f3: u32, rs1: u32, imm: i32): u32 {
  return ((<u32>imm & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op;
}
@inline function sType(op: u32, f3: u32, rs1: u32, rs2: u32, imm: i32): u32 {
  const u = <u32>imm;
  return (((u >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((u & 0x1f) << 7) | op;
}
@inline function rType(op: u32, rd: u32, f3: u32, rs1: u32, rs2: u32, f7: u32): u32 {
  return (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op;
}
@inline function bType(f3: u32, rs1: u32, rs2: u32, imm: i32): u32 {
  const u = <u32>imm;
  return (((u >> 12) & 1) << 31) | (((u >> 5) & 0x3f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) |
    (((u >> 1) & 0xf) << 8) | (((u >> 11) & 1) << 7) | 0x63;
}
@inline function jType(rd: u32, imm: i32): u32 {
  const u = <u32>imm;
  return (((u >> 20) & 1) << 31) | (((u >> 1) & 0x3ff) << 21) | (((u >> 11) & 1) << 20) |
    (((u >> 12) & 0xff) << 12) | (rd << 7) | 0x6f;
}

const OP_LOAD: u32 = 0x03, OP_LOAD_FP: u32 = 0x07, OP_IMM: u32 = 0x13, OP_IMM_32: u32 = 0x1b;
const OP_STORE: u32 = 0x23, OP_STORE_FP: u32 = 0x27, OP: u32 = 0x33, OP_LUI: u32 = 0x37, OP_32: u32 = 0x3b;
const OP_JALR: u32 = 0x67;

export function expandCompressed(c: u32): u32 {
  const f3 = bits(c, 15, 13);
  const rdFull = bits(c, 11, 7);
  const rs2Full = bits(c, 6, 2);
  const rdP = 8 + bits(c, 4, 2); //  rd' / rs2'
  const rs1P = 8 + bits(c, 9, 7); // rs1' / rd'
  switch (c & 3) {
    case 0: {
      // Offsets of the register-based loads and stores, scaled by 4 and 8.
      const off4 = (bits(c, 12, 10) << 3) | (bits(c, 6, 6) << 2) | (bits(c, 5, 5) << 6);
      const off8 = (bits(c, 12, 10) << 3) | (bits(c, 6, 5) << 6);
      switch (f3) {
        case 0: { // C.ADDI4SPN
          const imm = (bits(c, 12, 11) << 4) | (bits(c, 10, 7) << 6) | (bits(c, 6, 6) << 2) | (bits(c, 5, 5) << 3);
          if (imm == 0) return 0;
          return iType(OP_IMM, rdP, 0, 2, <i32>imm);
        }
        case 1: return iType(OP_LOAD_FP, rdP, 3, rs1P, <i32>off8); // C.FLD
        case 2: return iType(OP_LOAD, rdP, 2, rs1P, <i32>off4); //    C.LW
        case 3: return iType(OP_LOAD, rdP, 3, rs1P, <i32>off8); //    C.LD
        case 5: return sType(OP_STORE_FP, 3, rs1P, rdP, <i32>off8); // C.FSD
        case 6: return sType(OP_STORE, 2, rs1P, rdP, <i32>off4); //    C.SW
        case 7: return sType(OP_STORE, 3, rs1P, rdP, <i32>off8); //    C.SD
      }
      return 0;
    }
    case 1: {
      const imm6 = sext((bits(c, 12, 12) << 5) | bits(c, 6, 2), 6);
      switch (f3) {
        case 0: return iType(OP_IMM, rdFull, 0, rdFull, imm6); // C.ADDI (C.NOP, hints)
        case 1: // C.ADDIW
          if (rdFull == 0) return 0;
          return iType(OP_IMM_32, rdFull, 0, rdFull, imm6);
        case 2: return iType(OP_IMM, rdFull, 0, 0, imm6); // C.LI
        case 3: {
          if (rdFull == 2) { // C.ADDI16SP
            const imm = sext((bits(c, 12, 12) << 9) | (bits(c, 6, 6) << 4) | (bits(c, 5, 5) << 6) |
              (bits(c, 4, 3) << 7) | (bits(c, 2, 2) << 5), 10);
            if (imm == 0) return 0;
            return iType(OP_IMM, 2, 0, 2, imm);
          }
          // C.LUI
          const imm = sext((bits(c, 12, 12) << 17) | (bits(c, 6, 2) << 12), 18);
          if (imm == 0) return 0;
          return ((<u32>imm) & 0xfffff000) | (rdFull << 7) | OP_LUI;
        }
        case 4: {
          const shamt = (bits(c, 12, 12) << 5) | bits(c, 6, 2);
          switch (bits(c, 11, 10)) {
            case 0: return iType(OP_IMM, rs1P, 5, rs1P, <i32>shamt); //              C.SRLI
            case 1: return iType(OP_IMM, rs1P, 5, rs1P, <i32>(shamt | 0x400)); //   C.SRAI
            case 2: return iType(OP_IMM, rs1P, 7, rs1P, imm6); //                    C.ANDI
          }
          const op2 = bits(c, 6, 5);
          if (bits(c, 12, 12) == 0) {
            if (op2 == 0) return rType(OP, rs1P, 0, rs1P, rdP, 0x20); // C.SUB
            if (op2 == 1) return rType(OP, rs1P, 4, rs1P, rdP, 0); //    C.XOR
            if (op2 == 2) return rType(OP, rs1P, 6, rs1P, rdP, 0); //    C.OR
            return rType(OP, rs1P, 7, rs1P, rdP, 0); //                   C.AND
          }
          if (op2 == 0) return rType(OP_32, rs1P, 0, rs1P, rdP, 0x20); // C.SUBW
          if (op2 == 1) return rType(OP_32, rs1P, 0, rs1P, rdP, 0); //    C.ADDW
          return 0;
        }
        case 5: { // C.J
          const imm = sext((bits(c, 12, 12) << 11) | (bits(c, 11, 11) << 4) | (bits(c, 10, 9) << 8) |
            (bits(c, 8, 8) << 10) | (bits(c, 7, 7) << 6) | (bits(c, 6, 6) << 7) | (bits(c, 5, 3) << 1) |
            (bits(c, 2, 2) << 5), 12);
          return jType(0, imm);
        }
        default: { // C.BEQZ (6), C.BNEZ (7)
          const imm = sext((bits(c, 12, 12) << 8) | (bits(c, 11, 10) << 3) | (bits(c, 6, 5) << 6) |
            (bits(c, 4, 3) << 1) | (bits(c, 2, 2) << 5), 9);
          return bType(f3 == 6 ? 0 : 1, rs1P, 0, imm);
        }
      }
    }
    case 2: {
      const spOff8 = (bits(c, 12, 12) << 5) | (bits(c, 6, 5) << 3) | (bits(c, 4, 2) << 6);
      const spSt8 = (bits(c, 12, 10) << 3) | (bits(c, 9, 7) << 6);
      switch (f3) {
        case 0: { // C.SLLI
          const shamt = (bits(c, 12, 12) << 5) | bits(c, 6, 2);
          return iType(OP_IMM, rdFull, 1, rdFull, <i32>shamt);
        }
        case 1: return iType(OP_LOAD_FP, rdFull, 3, 2, <i32>spOff8); // C.FLDSP
        case 2: { // C.LWSP
          if (rdFull == 0) return 0;
          const off = (bits(c, 12, 12) << 5) | (bits(c, 6, 4) << 2) | (bits(c, 3, 2) << 6);
          return iType(OP_LOAD, rdFull, 2, 2, <i32>off);
        }
        case 3: // C.LDSP
          if (rdFull == 0) return 0;
          return iType(OP_LOAD, rdFull, 3, 2, <i32>spOff8);
        case 4: {
          if (bits(c, 12, 12) == 0) {
            if (rs2Full == 0) { // C.JR
              if (rdFull == 0) return 0;
              return iType(OP_JALR, 0, 0, rdFull, 0);
            }
            return rType(OP, rdFull, 0, 0, rs2Full, 0); // C.MV
          }
          if (rs2Full == 0) {
            if (rdFull == 0) return 0x00100073; //        C.EBREAK
            return iType(OP_JALR, 1, 0, rdFull, 0); //    C.JALR
          }
          return rType(OP, rdFull, 0, rdFull, rs2Full, 0); // C.ADD
        }
        case 5: return sType(OP_STORE_FP, 3, 2, rs2Full, <i32>spSt8); // C.FSDSP
        case 6: { // C.SWSP
          const off = (bits(c, 12, 9) << 2) | (bits(c, 8, 7) << 6);
          return sType(OP_STORE, 2, 2, rs2Full, <i32>off);
        }
        case 7: return sType(OP_STORE, 3, 2, rs2Full, <i32>spSt8); // C.SDSP
      }
      return 0;
    }
  }
  return 0;
}
