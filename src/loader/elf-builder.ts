// Writes small ELF64 little-endian files byte by byte: test inputs for the
// loader and the CLI (valid programs and deliberately broken ones), without a
// cross toolchain. Layout (System V gABI, "ELF Header", "Program Header",
// "Sections", "Symbol Table"):
//   ELF header | program headers | segment data... | .symtab | .strtab | .shstrtab | section headers

export interface BuildSegment {
  paddr: bigint;
  vaddr?: bigint;
  data: Uint8Array;
  /** Memory size; defaults to data.length. */
  memsz?: bigint;
  /** Program header type; PT_LOAD (1) by default. */
  type?: number;
}

export interface BuildElf {
  entry: bigint;
  segments: BuildSegment[];
  /** name -> value; written as a .symtab/.strtab pair when present. */
  symbols?: Record<string, bigint>;
  machine?: number; // EM_RISCV = 243 by default
  type?: number; //    ET_EXEC = 2 by default
  elfClass?: number; // ELFCLASS64 = 2
  data?: number; //     ELFDATA2LSB = 1
}

const EHDR = 64;
const PHDR = 56;
const SHDR = 64;
const SYM = 24;

export function buildElf(spec: BuildElf): Uint8Array {
  const phoff = EHDR;
  let cursor = phoff + PHDR * spec.segments.length;
  const dataOffsets = spec.segments.map((s) => {
    const at = cursor;
    cursor += s.data.length;
    return at;
  });

  const names = Object.keys(spec.symbols ?? {});
  const hasSymbols = spec.symbols !== undefined;
  const strtab: number[] = [0];
  const nameOffsets = names.map((n) => {
    const at = strtab.length;
    strtab.push(...new TextEncoder().encode(n), 0);
    return at;
  });
  const shstrNames = ["", ".symtab", ".strtab", ".shstrtab"];
  const shstrtab: number[] = [];
  const shstrOffsets = shstrNames.map((n) => {
    const at = shstrtab.length;
    shstrtab.push(...new TextEncoder().encode(n), 0);
    return at;
  });

  cursor = align(cursor, 8);
  const symOff = cursor;
  const symSize = hasSymbols ? SYM * (names.length + 1) : 0;
  cursor += symSize;
  const strOff = cursor;
  cursor += hasSymbols ? strtab.length : 0;
  const shstrOff = cursor;
  cursor += hasSymbols ? shstrtab.length : 0;
  cursor = align(cursor, 8);
  const shoff = hasSymbols ? cursor : 0;
  const shnum = hasSymbols ? 4 : 0;
  cursor += SHDR * shnum;

  const out = new Uint8Array(cursor);
  const dv = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, spec.elfClass ?? 2, spec.data ?? 1, 1], 0);
  dv.setUint16(16, spec.type ?? 2, true);
  dv.setUint16(18, spec.machine ?? 243, true);
  dv.setUint32(20, 1, true);
  dv.setBigUint64(24, spec.entry, true);
  dv.setBigUint64(32, BigInt(phoff), true);
  dv.setBigUint64(40, BigInt(shoff), true);
  dv.setUint16(52, EHDR, true);
  dv.setUint16(54, PHDR, true);
  dv.setUint16(56, spec.segments.length, true);
  dv.setUint16(58, SHDR, true);
  dv.setUint16(60, shnum, true);
  dv.setUint16(62, hasSymbols ? 3 : 0, true);

  spec.segments.forEach((s, i) => {
    const o = phoff + i * PHDR;
    dv.setUint32(o, s.type ?? 1, true);
    dv.setUint32(o + 4, 7, true); // RWX
    dv.setBigUint64(o + 8, BigInt(dataOffsets[i]), true);
    dv.setBigUint64(o + 16, s.vaddr ?? s.paddr, true);
    dv.setBigUint64(o + 24, s.paddr, true);
    dv.setBigUint64(o + 32, BigInt(s.data.length), true);
    dv.setBigUint64(o + 40, s.memsz ?? BigInt(s.data.length), true);
    dv.setBigUint64(o + 48, 0x1000n, true);
    out.set(s.data, dataOffsets[i]);
  });

  if (hasSymbols) {
    names.forEach((n, i) => {
      const o = symOff + SYM * (i + 1); // entry 0 is the null symbol
      dv.setUint32(o, nameOffsets[i], true);
      out[o + 4] = 0x11; // STB_GLOBAL, STT_OBJECT
      dv.setUint16(o + 6, 0xfff1, true); // SHN_ABS
      dv.setBigUint64(o + 8, spec.symbols![n], true);
      dv.setBigUint64(o + 16, 8n, true);
    });
    out.set(strtab, strOff);
    out.set(shstrtab, shstrOff);
    const section = (i: number, name: number, type: number, offset: number, size: number, link: number, entsize: number) => {
      const o = shoff + i * SHDR;
      dv.setUint32(o, name, true);
      dv.setUint32(o + 4, type, true);
      dv.setBigUint64(o + 24, BigInt(offset), true);
      dv.setBigUint64(o + 32, BigInt(size), true);
      dv.setUint32(o + 40, link, true);
      dv.setUint32(o + 44, type === 2 ? 1 : 0, true); // symtab: index of the first global
      dv.setBigUint64(o + 48, 8n, true);
      dv.setBigUint64(o + 56, BigInt(entsize), true);
    };
    section(1, shstrOffsets[1], 2, symOff, symSize, 2, SYM); // SHT_SYMTAB, linked to .strtab
    section(2, shstrOffsets[2], 3, strOff, strtab.length, 0, 0); // SHT_STRTAB
    section(3, shstrOffsets[3], 3, shstrOff, shstrtab.length, 0, 0);
  }
  return out;
}

function align(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** RV64 words as little-endian bytes (for hand-assembled test programs). */
export function words(...insns: number[]): Uint8Array {
  const out = new Uint8Array(4 * insns.length);
  const dv = new DataView(out.buffer);
  insns.forEach((w, i) => dv.setUint32(4 * i, w >>> 0, true));
  return out;
}
