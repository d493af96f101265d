// The bundled demo guest for `tsvisor run --demo` (and `npm start` until Linux
// boots): a small bare-metal RV64 program, assembled here so it needs no cross
// toolchain. It prints a greeting through HTIF, computes 1 + 2 + ... + 100 with
// a loop and prints the result in decimal (div/rem by 10), then exits with 0.

import type { ElfImage } from "../loader/elf.js";

const BASE = 0x8000_0000n;
const TEXT_OFF = 0x400; //   the greeting
const DIGITS_END = 0x520; // decimal digits are written downwards from here, "\n" at it
const TOHOST_OFF = 0x600;

// RV64 instruction encoders (unprivileged spec chapter 2, "Base Instruction Formats").
const r = (f7: number, rs2: number, rs1: number, f3: number, rd: number, op: number) =>
  ((f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0;
const i = (imm: number, rs1: number, f3: number, rd: number, op: number) =>
  (((imm & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0;
const s = (imm: number, rs2: number, rs1: number, f3: number) =>
  ((((imm >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 0x1f) << 7) | 0x23) >>> 0;
const b = (off: number, rs2: number, rs1: number, f3: number) =>
  ((((off >> 12) & 1) << 31) | (((off >> 5) & 0x3f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) |
    (((off >> 1) & 0xf) << 8) | (((off >> 11) & 1) << 7) | 0x63) >>> 0;
const j = (off: number, rd: number) =>
  ((((off >> 20) & 1) << 31) | (((off >> 1) & 0x3ff) << 21) | (((off >> 11) & 1) << 20) | (((off >> 12) & 0xff) << 12) |
    (rd << 7) | 0x6f) >>> 0;

const [ZERO, RA, T1, T2, S0, S1, A0, A1, A2, A3, A4, S2, S3, T3] = [0, 1, 6, 7, 8, 9, 10, 11, 12, 13, 14, 18, 19, 28];
const addi = (rd: number, rs1: number, imm: number) => i(imm, rs1, 0, rd, 0x13);

function program(): number[] {
  const code: number[] = [];
  const at = () => code.length * 4;
  const labels = new Map<string, number>();
  const fixups: { pos: number; label: string; make: (off: number) => number }[] = [];
  const ref = (label: string, make: (off: number) => number) => {
    fixups.push({ pos: code.length, label, make });
    code.push(0);
  };

  code.push(0x00000417); //                       auipc s0, 0       s0 = program base
  code.push(addi(S2, S0, TOHOST_OFF)); //         s2 = &tohost
  code.push(addi(T1, ZERO, 0x101), i(48, T1, 1, T1, 0x13)); // t1 = console putchar command (1 << 56 | 1 << 48)
  code.push(addi(S1, S0, TEXT_OFF));
  ref("print", (o) => j(o, RA)); //               print the greeting
  // a2 = 1 + 2 + ... + 100
  code.push(addi(A2, ZERO, 0), addi(A3, ZERO, 1), addi(A4, ZERO, 101));
  labels.set("sum", at());
  code.push(r(0, A3, A2, 0, A2, 0x33), addi(A3, A3, 1));
  ref("sum", (o) => b(o, A4, A3, 1)); //           bne a3, a4, sum
  // decimal digits of a2, written downwards ending at DIGITS_END
  code.push(addi(S3, S0, DIGITS_END), addi(T2, ZERO, 10));
  labels.set("digit", at());
  code.push(r(1, T2, A2, 7, T3, 0x33)); //         remu t3, a2, t2
  code.push(r(1, T2, A2, 5, A2, 0x33)); //         divu a2, a2, t2
  code.push(addi(T3, T3, 48), addi(S3, S3, -1), s(0, T3, S3, 0)); // sb t3, 0(s3)
  ref("digit", (o) => b(o, ZERO, A2, 1)); //       bne a2, zero, digit
  code.push(addi(S1, S3, 0));
  ref("print", (o) => j(o, RA));
  code.push(addi(A0, ZERO, 1), s(0, A0, S2, 3)); // tohost = 1: exit code 0
  labels.set("halt", at());
  ref("halt", (o) => j(o, ZERO));
  // print: write bytes from s1 until NUL to the console
  labels.set("print", at());
  code.push(i(0, S1, 4, A0, 0x03)); //             lbu a0, 0(s1)
  ref("printed", (o) => b(o, ZERO, A0, 0)); //     beq a0, zero, printed
  code.push(r(0, T1, A0, 6, A1, 0x33), s(0, A1, S2, 3), addi(S1, S1, 1)); // or; sd a1, 0(s2); s1++
  ref("print", (o) => j(o, ZERO));
  labels.set("printed", at());
  code.push(i(0, RA, 0, ZERO, 0x67)); //           ret
  for (const f of fixups) code[f.pos] = f.make(labels.get(f.label)! - f.pos * 4);
  return code;
}

export function demoImage(): ElfImage {
  const bytes = new Uint8Array(TOHOST_OFF + 16);
  const dv = new DataView(bytes.buffer);
  program().forEach((w, k) => dv.setUint32(4 * k, w, true));
  bytes.set(new TextEncoder().encode("Hello from a RISC-V guest running on tsvisor.\nThe guest computed 1 + 2 + ... + 100 = "), TEXT_OFF);
  bytes[DIGITS_END] = 0x0a;
  return {
    entry: BASE,
    segments: [{ paddr: BASE, vaddr: BASE, data: bytes, memsz: BigInt(bytes.length) }],
    symbol: (name) => (name === "tohost" ? BASE + BigInt(TOHOST_OFF) : name === "fromhost" ? BASE + BigInt(TOHOST_OFF + 8) : undefined),
  };
}
