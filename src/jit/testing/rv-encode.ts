// RV64 instruction encoders for the JIT's tests, which hand-assemble their
// guest programs (no cross toolchain needed). Formats as the unprivileged
// spec's "Base Instruction Formats" lay them out; immediates are byte offsets.

export const rType = (f7: number, rs2: number, rs1: number, f3: number, rd: number, op: number) =>
  ((f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0;
export const iType = (imm: number, rs1: number, f3: number, rd: number, op: number) =>
  (((imm & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0;
export const sType = (imm: number, rs2: number, rs1: number, f3: number, op: number) =>
  ((((imm >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 0x1f) << 7) | op) >>> 0;
export const bType = (imm: number, rs2: number, rs1: number, f3: number) =>
  ((((imm >> 12) & 1) << 31) | (((imm >> 5) & 0x3f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) |
    (((imm >> 1) & 0xf) << 8) | (((imm >> 11) & 1) << 7) | 0x63) >>> 0;
export const uType = (imm20: number, rd: number, op: number) => (((imm20 & 0xfffff) << 12) | (rd << 7) | op) >>> 0;
export const jType = (imm: number, rd: number) =>
  ((((imm >> 20) & 1) << 31) | (((imm >> 1) & 0x3ff) << 21) | (((imm >> 11) & 1) << 20) | (((imm >> 12) & 0xff) << 12) |
    (rd << 7) | 0x6f) >>> 0;

export const addi = (rd: number, rs1: number, imm: number) => iType(imm, rs1, 0, rd, 0x13);
export const addiw = (rd: number, rs1: number, imm: number) => iType(imm, rs1, 0, rd, 0x1b);
export const slli = (rd: number, rs1: number, sh: number) => iType(sh, rs1, 1, rd, 0x13);
export const lui = (rd: number, imm20: number) => uType(imm20, rd, 0x37);
export const csrrw = (rd: number, csr: number, rs1: number) => iType(csr, rs1, 1, rd, 0x73);
export const csrrs = (rd: number, csr: number, rs1: number) => iType(csr, rs1, 2, rd, 0x73);
export const FENCE_I = 0x0000100f;

/** `li rd, v` as lui/addiw/addi/slli (the usual recursive expansion). */
export function li(rd: number, value: bigint): number[] {
  const v = BigInt.asIntN(64, value);
  const lo = BigInt.asIntN(12, v);
  if (v >= -(1n << 31n) && v < 1n << 31n) {
    const hi = Number((BigInt.asIntN(32, v - lo) >> 12n) & 0xfffffn);
    if (hi === 0) return [addi(rd, 0, Number(lo))];
    return lo === 0n ? [lui(rd, hi)] : [lui(rd, hi), addiw(rd, rd, Number(lo))];
  }
  let hi = (v - lo) >> 12n;
  let shift = 12;
  while ((hi & 1n) === 0n) {
    hi >>= 1n;
    shift++;
  }
  const out = [...li(rd, hi), slli(rd, rd, shift)];
  if (lo !== 0n) out.push(addi(rd, rd, Number(lo)));
  return out;
}

type Parcel = number | ((at: number) => number);

/** A little assembler: 16- and 32-bit parcels at byte offsets, with labels
 *  resolved when the bytes are made (a parcel may be a function of its offset). */
export class Asm {
  private parts: { at: number; size: 2 | 4; enc: Parcel }[] = [];
  private labels = new Map<string, number>();
  size = 0;
  label(name: string): void {
    this.labels.set(name, this.size);
  }
  /** Byte offset of a label (in parcel callbacks, once every label is placed). */
  at(name: string): number {
    const v = this.labels.get(name);
    if (v === undefined) throw new Error(`undefined label ${name}`);
    return v;
  }
  /** 32-bit instructions. */
  w(...encs: Parcel[]): void {
    for (const enc of encs) {
      this.parts.push({ at: this.size, size: 4, enc });
      this.size += 4;
    }
  }
  /** One 16-bit (compressed) instruction. */
  h(enc: Parcel): void {
    this.parts.push({ at: this.size, size: 2, enc });
    this.size += 2;
  }
  /** pc-relative branch or jump to `label`. */
  b(f3: number, rs1: number, rs2: number, label: string): void {
    this.w((at) => bType(this.at(label) - at, rs2, rs1, f3));
  }
  j(rd: number, label: string): void {
    this.w((at) => jType(this.at(label) - at, rd));
  }
  /** Pad with c.nop to a multiple of `n` bytes. */
  align(n: number): void {
    while (this.size % n !== 0) this.h(0x0001);
  }
  /** Pad with zero bytes (illegal instructions) up to offset `off`. */
  org(off: number): void {
    if (off < this.size) throw new Error(`code overlaps offset ${off}`);
    while (this.size < off) this.h(0);
  }
  bytes(): Uint8Array {
    const out = new Uint8Array(this.size);
    const dv = new DataView(out.buffer);
    for (const p of this.parts) {
      const v = typeof p.enc === "number" ? p.enc : p.enc(p.at);
      if (p.size === 4) dv.setUint32(p.at, v >>> 0, true);
      else dv.setUint16(p.at, v & 0xffff, true);
    }
    return out;
  }
}
