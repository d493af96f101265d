// The bit-manipulation extensions Zba, Zbb and Zbs (the B extension, which
// the RVA22/RVA23 profiles Debian's kernel is built for include) as wasm i64
// code. The kernel's string functions run ORC.B and REV8 on every word and
// its bitmap code CLZ/CTZ/CPOP: through the core's execute they were the
// commonest instructions translated code handed over (a million per boot).
// Encodings as the core's src/core/isa/zb.ts decodes them; anything else
// returns false and goes to the core's execute (which raises illegal).

import { Op } from "./wasm-emitter.js";
import { L_VA, type InsnWriter } from "./region-abi.js";

const rdOf = (i: number) => (i >>> 7) & 31;
const rs1Of = (i: number) => (i >>> 15) & 31;
const rs2Of = (i: number) => (i >>> 20) & 31;
const f3Of = (i: number) => (i >>> 12) & 7;

const LOW7 = 0x7f7f7f7f7f7f7f7fn, HIGH1 = -0x7f7f7f7f7f7f7f80n; // 0x8080808080808080
const M8 = 0x00ff00ff00ff00ffn, M16 = 0x0000ffff0000ffffn;

/** Emit instruction `insn` (OP, OP-32, OP-IMM or OP-IMM-32) if it is a Zb*
 *  instruction: its value into x[rd]. */
export function translateZb(w: InsnWriter, insn: number): boolean {
  const emit = value(w, insn);
  if (!emit) return false;
  emit();
  w.setX(rdOf(insn));
  return true;
}

/** The code leaving the result on the stack, or undefined. */
function value(w: InsnWriter, i: number): (() => void) | undefined {
  const { c } = w;
  const f3 = f3Of(i), f7 = i >>> 25, rs2 = rs2Of(i), imm12 = i >>> 20, funct6 = i >>> 26;
  const sh = (i >>> 20) & 63;
  const a = () => w.getX(rs1Of(i));
  const b = () => w.getX(rs2);
  const aw = () => { a(); c.i64(0xffffffffn).op(Op.i64_and); };
  const bit = (n: () => void) => { c.i64(1); n(); c.op(Op.i64_shl); };
  const binary = (op: number) => () => { a(); b(); c.op(op); };
  switch (i & 0x7f) {
    case 0x33:
      switch (f7) {
        case 0x10: // sh1add, sh2add, sh3add
          if (f3 === 2 || f3 === 4 || f3 === 6) return () => { a(); c.i64(f3 >> 1).op(Op.i64_shl); b(); c.op(Op.i64_add); };
          return undefined;
        case 0x20: // andn, orn, xnor
          if (f3 === 7) return () => { a(); b(); c.i64(-1).op(Op.i64_xor).op(Op.i64_and); };
          if (f3 === 6) return () => { a(); b(); c.i64(-1).op(Op.i64_xor).op(Op.i64_or); };
          if (f3 === 4) return () => { a(); b(); c.op(Op.i64_xor).i64(-1).op(Op.i64_xor); };
          return undefined;
        case 0x05: { // min, minu, max, maxu: select(a, b, a < b) or (a > b)
          if (f3 < 4) return undefined;
          const cmp = [Op.i64_lt_s, Op.i64_lt_u, Op.i64_gt_s, Op.i64_gt_u][f3 - 4];
          return () => { a(); b(); a(); b(); c.op(cmp).op(Op.select); };
        }
        case 0x30: // rol, ror (wasm rotates by the count mod 64, as RISC-V does)
          if (f3 === 1) return binary(Op.i64_rotl);
          if (f3 === 5) return binary(Op.i64_rotr);
          return undefined;
        case 0x24: // bclr, bext
          if (f3 === 1) return () => { a(); bit(b); c.i64(-1).op(Op.i64_xor).op(Op.i64_and); };
          if (f3 === 5) return () => { a(); b(); c.op(Op.i64_shr_u).i64(1).op(Op.i64_and); };
          return undefined;
        case 0x14: // bset
          return f3 === 1 ? () => { a(); bit(b); c.op(Op.i64_or); } : undefined;
        case 0x34: // binv
          return f3 === 1 ? () => { a(); bit(b); c.op(Op.i64_xor); } : undefined;
      }
      return undefined;
    case 0x3b:
      switch (f7) {
        case 0x04: // add.uw, zext.h
          if (f3 === 0) return () => { aw(); b(); c.op(Op.i64_add); };
          if (f3 === 4 && rs2 === 0) return () => { a(); c.i64(0xffff).op(Op.i64_and); };
          return undefined;
        case 0x10: // sh1add.uw, sh2add.uw, sh3add.uw
          if (f3 === 2 || f3 === 4 || f3 === 6) return () => { aw(); c.i64(f3 >> 1).op(Op.i64_shl); b(); c.op(Op.i64_add); };
          return undefined;
        case 0x30: { // rolw, rorw
          if (f3 !== 1 && f3 !== 5) return undefined;
          return () => {
            a(); c.op(Op.i32_wrap_i64); b(); c.op(Op.i32_wrap_i64).op(f3 === 1 ? Op.i32_rotl : Op.i32_rotr).op(Op.i64_extend_i32_s);
          };
        }
      }
      return undefined;
    case 0x13:
      if (f3 === 1) {
        switch (imm12) {
          case 0x600: return () => { a(); c.op(Op.i64_clz); };
          case 0x601: return () => { a(); c.op(Op.i64_ctz); };
          case 0x602: return () => { a(); c.op(Op.i64_popcnt); };
          case 0x604: return () => { a(); c.op(Op.i64_extend8_s); };
          case 0x605: return () => { a(); c.op(Op.i64_extend16_s); };
        }
        const k = () => c.i64(sh);
        if (funct6 === 0x12) return () => { a(); bit(k); c.i64(-1).op(Op.i64_xor).op(Op.i64_and); }; // bclri
        if (funct6 === 0x0a) return () => { a(); bit(k); c.op(Op.i64_or); }; // bseti
        if (funct6 === 0x1a) return () => { a(); bit(k); c.op(Op.i64_xor); }; // binvi
        return undefined;
      }
      if (f3 !== 5) return undefined;
      if (imm12 === 0x287) return () => orcB(w, a); // orc.b
      if (imm12 === 0x6b8) return () => rev8(w, a); // rev8
      if (funct6 === 0x18) return () => { a(); c.i64(sh).op(Op.i64_rotr); }; // rori
      if (funct6 === 0x12) return () => { a(); c.i64(sh).op(Op.i64_shr_u).i64(1).op(Op.i64_and); }; // bexti
      return undefined;
    case 0x1b:
      if (f3 === 1) {
        if (funct6 === 0x02) return () => { aw(); c.i64(sh).op(Op.i64_shl); }; // slli.uw
        const op = imm12 === 0x600 ? Op.i32_clz : imm12 === 0x601 ? Op.i32_ctz : imm12 === 0x602 ? Op.i32_popcnt : 0;
        return op ? () => { a(); c.op(Op.i32_wrap_i64).op(op).op(Op.i64_extend_i32_u); } : undefined; // clzw, ctzw, cpopw
      }
      if (f3 === 5 && f7 === 0x30) return () => { a(); c.op(Op.i32_wrap_i64).i32(sh & 31).op(Op.i32_rotr).op(Op.i64_extend_i32_s); }; // roriw
      return undefined;
  }
  return undefined;
}

/** ORC.B: 0xff in every byte that is nonzero. Adding 0x7f to the low seven
 *  bits of a byte carries into its top bit exactly when they are nonzero. */
function orcB(w: InsnWriter, a: () => void): void {
  const { c } = w;
  a();
  c.tee(L_VA).i64(LOW7).op(Op.i64_and).i64(LOW7).op(Op.i64_add).get(L_VA).op(Op.i64_or).i64(HIGH1).op(Op.i64_and);
  c.i64(7).op(Op.i64_shr_u).i64(0xff).op(Op.i64_mul);
}

/** REV8: byte swap (wasm has none) by swapping bytes, halfwords, words. */
function rev8(w: InsnWriter, a: () => void): void {
  const { c } = w;
  a();
  c.tee(L_VA).i64(8).op(Op.i64_shr_u).i64(M8).op(Op.i64_and).get(L_VA).i64(M8).op(Op.i64_and).i64(8).op(Op.i64_shl).op(Op.i64_or);
  c.tee(L_VA).i64(16).op(Op.i64_shr_u).i64(M16).op(Op.i64_and).get(L_VA).i64(M16).op(Op.i64_and).i64(16).op(Op.i64_shl).op(Op.i64_or);
  c.i64(32).op(Op.i64_rotl);
}
