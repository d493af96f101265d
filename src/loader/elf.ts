// ELF64 loader for RISC-V executables (System V gABI and the RISC-V ELF psABI:
// e_machine EM_RISCV = 243). Everything read from the file is checked before
// use: a malformed image gives one ElfError with a one-line message.

export class ElfError extends Error {}

export interface ElfSegment {
  /** Physical load address (p_paddr): bare-metal programs are loaded there. */
  paddr: bigint;
  vaddr: bigint;
  /** File bytes; memsz - data.length bytes after them are zero (bss). */
  data: Uint8Array;
  memsz: bigint;
}

export interface ElfImage {
  entry: bigint;
  segments: ElfSegment[];
  /** Value of a symbol from the symbol table, if the file has one. */
  symbol(name: string): bigint | undefined;
}

const EM_RISCV = 243;
const ET_EXEC = 2;
const PT_LOAD = 1;
const SHT_SYMTAB = 2;
const EHDR_SIZE = 64;
const PHDR_SIZE = 56;
const SHDR_SIZE = 64;

export function parseElf(file: Uint8Array): ElfImage {
  if (file.length < 4 || file[0] !== 0x7f || file[1] !== 0x45 || file[2] !== 0x4c || file[3] !== 0x46) {
    throw new ElfError("not an ELF file");
  }
  if (file.length < EHDR_SIZE) throw new ElfError("truncated ELF header");
  if (file[4] !== 2) throw new ElfError("not a 64-bit ELF file (RV64 programs are ELFCLASS64)");
  if (file[5] !== 1) throw new ElfError("not a little-endian ELF file");
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const machine = dv.getUint16(18, true);
  if (machine !== EM_RISCV) throw new ElfError(`not a RISC-V ELF file (e_machine ${machine}, expected ${EM_RISCV})`);
  const type = dv.getUint16(16, true);
  if (type !== ET_EXEC) throw new ElfError(`not an executable ELF file (e_type ${type}); link it statically at its load address`);
  const entry = dv.getBigUint64(24, true);
  const phoff = dv.getBigUint64(32, true);
  const shoff = dv.getBigUint64(40, true);
  const phentsize = dv.getUint16(54, true);
  const phnum = dv.getUint16(56, true);
  const shentsize = dv.getUint16(58, true);
  const shnum = dv.getUint16(60, true);
  const size = BigInt(file.length);

  if (phnum === 0) throw new ElfError("ELF file has no program headers");
  if (phentsize !== PHDR_SIZE) throw new ElfError(`unexpected program header size ${phentsize}`);
  if (phoff + BigInt(phnum * PHDR_SIZE) > size) throw new ElfError("truncated ELF file: program headers lie past its end");

  const segments: ElfSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const o = Number(phoff) + i * PHDR_SIZE;
    if (dv.getUint32(o, true) !== PT_LOAD) continue;
    const offset = dv.getBigUint64(o + 8, true);
    const vaddr = dv.getBigUint64(o + 16, true);
    const paddr = dv.getBigUint64(o + 24, true);
    const filesz = dv.getBigUint64(o + 32, true);
    const memsz = dv.getBigUint64(o + 40, true);
    if (filesz > memsz) throw new ElfError(`segment ${i}: file size larger than memory size`);
    if (offset + filesz > size) throw new ElfError(`truncated ELF file: segment ${i} lies past its end`);
    if (paddr + memsz > 1n << 64n) throw new ElfError(`segment ${i}: address range wraps around`);
    if (memsz === 0n) continue;
    segments.push({ paddr, vaddr, data: file.subarray(Number(offset), Number(offset + filesz)), memsz });
  }
  if (segments.length === 0) throw new ElfError("ELF file has no loadable segments");
  const sorted = [...segments].sort((a, b) => (a.paddr < b.paddr ? -1 : 1));
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    if (sorted[i].paddr < prev.paddr + prev.memsz) {
      throw new ElfError(
        `segments overlap: 0x${prev.paddr.toString(16)}+0x${prev.memsz.toString(16)} and 0x${sorted[i].paddr.toString(16)}`,
      );
    }
  }

  let symbols: Map<string, bigint> | undefined;
  const symbol = (name: string): bigint | undefined => {
    symbols ??= readSymbols(file, dv, shoff, shentsize, shnum);
    return symbols.get(name);
  };
  return { entry, segments, symbol };
}

function readSymbols(file: Uint8Array, dv: DataView, shoff: bigint, shentsize: number, shnum: number): Map<string, bigint> {
  const out = new Map<string, bigint>();
  const size = BigInt(file.length);
  if (shoff === 0n || shnum === 0) return out;
  if (shentsize !== SHDR_SIZE || shoff + BigInt(shnum * SHDR_SIZE) > size) throw new ElfError("truncated ELF file: section headers lie past its end");
  const section = (i: number) => {
    const o = Number(shoff) + i * SHDR_SIZE;
    return {
      type: dv.getUint32(o + 4, true),
      offset: dv.getBigUint64(o + 24, true),
      size: dv.getBigUint64(o + 32, true),
      link: dv.getUint32(o + 40, true),
      entsize: dv.getBigUint64(o + 56, true),
    };
  };
  for (let i = 0; i < shnum; i++) {
    const sym = section(i);
    if (sym.type !== SHT_SYMTAB) continue;
    if (sym.link >= shnum) throw new ElfError("symbol table names a missing string table");
    const str = section(sym.link);
    if (sym.offset + sym.size > size || str.offset + str.size > size) throw new ElfError("truncated ELF file: symbol table lies past its end");
    if (sym.entsize !== 24n) throw new ElfError("unexpected symbol table entry size");
    const strStart = Number(str.offset);
    const strEnd = strStart + Number(str.size);
    for (let o = Number(sym.offset); o + 24 <= Number(sym.offset + sym.size); o += 24) {
      const nameOff = dv.getUint32(o, true);
      if (nameOff === 0 || strStart + nameOff >= strEnd) continue;
      let end = strStart + nameOff;
      while (end < strEnd && file[end] !== 0) end++;
      const name = new TextDecoder().decode(file.subarray(strStart + nameOff, end));
      if (!out.has(name)) out.set(name, dv.getBigUint64(o + 8, true));
    }
  }
  return out;
}
