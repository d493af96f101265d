// Makes a kernel module cheap to load in an interpreted guest, the way
// `strip -X` would, written out here because users' machines have no RISC-V
// binutils.
//
// Why: RISC-V assemblers leave a local label for every relaxable
// instruction pair and branch target (".L0 ", ".L123", ".Lpcrel_hi4"), and
// Debian's modules keep them: ext4.ko's .symtab holds ~216,000 symbols
// (5.2 MB of its 7 MB), of which only a few thousand are used by a
// relocation. The kernel's loader walks every symbol (simplify_symbols,
// the kallsyms layout) and hashes the whole file for the signature check;
// in tsvisor's interpreter that made `modprobe ext4` take ~7 s of guest time,
// ~0.5 s without them.
//
// What: local symbols named ".L..." that no relocation (SHT_RELA/SHT_REL
// r_info) and no section group (SHT_GROUP sh_info) refers to are removed;
// every other symbol keeps its order, .symtab's sh_info (first non-local) and
// every relocation's symbol index are renumbered, SHT_SYMTAB_SHNDX (extended
// section indices, parallel to .symtab) is filtered alongside. .strtab is
// rebuilt with only the names still used when nothing else shares it. The
// sections after a shrunk one move down by a multiple of the largest
// sh_addralign, so every section keeps its alignment.
//
// The trade-off: the module signature (kernel scripts/sign-file.c appends
// a PKCS#7 blob, struct module_signature and "~Module signature appended~\n"
// to the file) covers the bytes changed here, and the kernel rejects a module
// whose signature does not verify (kernel/module/signing.c:
// module_sig_check), so it is removed. Debian's kernel has CONFIG_MODULE_SIG
// without CONFIG_MODULE_SIG_FORCE: it loads an unsigned module and taints
// itself once ("module verification failed: signature and/or required key
// missing - tainting kernel", taint flag E). Outside Secure Boot no lockdown
// forbids it; `module.sig_enforce=1` on the command line would. The kernel
// image itself is not modified and still boots as Debian signed it.
//
// Input is untrusted (it comes out of a package, through xz): every offset,
// size, link and symbol index is checked. A file that is not a well-formed
// ELF64 little-endian RISC-V relocatable object is refused with an
// ImageError naming it: the kernel would refuse it too, later and less
// clearly, and a module tsvisor cannot read means a broken download or
// cache, which should stop the build, not ship. A well-formed module this
// code does not fully understand (a section of unknown type linked to the
// symbol table, which might hold symbol indices) is returned untouched,
// signature included: slower to load, but exactly Debian's.

import { ImageError } from "./errors.js";

/** Bump when stripModule's output changes for the same input (it is part of the initramfs recipe). */
export const MODULE_STRIP_VERSION = 1;

export interface StrippedModule {
  bytes: Uint8Array;
  /** Symbols removed from .symtab. */
  removedSymbols: number;
  /** Whether an appended signature was removed. */
  signatureRemoved: boolean;
  /** Why the module was returned unchanged, when it was. */
  unchanged?: string;
}

/** include/linux/module_signature.h */
export const MODULE_SIG_MAGIC = "~Module signature appended~\n";
const MODULE_SIG_INFO_SIZE = 12; // algo, hash, id_type, signer_len, key_id_len, pad[3], __be32 sig_len
const PKEY_ID_PKCS7 = 2;

const EHDR_SIZE = 64;
const SHDR_SIZE = 64;
const SYM_SIZE = 24;
const ET_REL = 1;
const EM_RISCV = 243;
const SHN_XINDEX = 0xffff;
const SHT_SYMTAB = 2;
const SHT_STRTAB = 3;
const SHT_RELA = 4;
const SHT_NOBITS = 8;
const SHT_REL = 9;
const SHT_GROUP = 17;
const SHT_SYMTAB_SHNDX = 18;
const SHF_LINK_ORDER = 0x80;
const STB_LOCAL = 0;

interface Section {
  index: number;
  /** Where the header is in the file. */
  at: number;
  type: number;
  flags: number;
  offset: number;
  size: number;
  link: number;
  info: number;
  align: number;
  entsize: number;
}

/** A section whose contents are replaced by shorter ones. */
interface Shrink {
  section: Section;
  contents: Uint8Array;
}

/**
 * Removes unreferenced ".L" local symbols and the signature from a kernel
 * module (see the top of this file); `source` names the module in errors.
 */
export function stripModule(input: Uint8Array, source: string): StrippedModule {
  const bad = (why: string) => new ImageError(`${source}: cannot rewrite kernel module: ${why}`);
  const unchanged = (why: string): StrippedModule => ({ bytes: input, removedSymbols: 0, signatureRemoved: false, unchanged: why });

  checkHeader(input, bad);
  const length = unsignedLength(input, bad);
  const bytes = input.slice(0, length);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u16 = (at: number) => view.getUint16(at, true);
  const u32 = (at: number) => view.getUint32(at, true);
  const u64 = (at: number) => {
    const v = view.getBigUint64(at, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`offset or size 0x${v.toString(16)} at 0x${at.toString(16)} beyond any file`);
    return Number(v);
  };
  const set32 = (at: number, v: number) => view.setUint32(at, v, true);

  // The section header table, with extended numbering (gABI: e_shnum 0 ->
  // section 0's sh_size, e_shstrndx SHN_XINDEX -> section 0's sh_link).
  const shoff = u64(0x28);
  if (u16(0x3a) !== SHDR_SIZE) throw bad(`section header size ${u16(0x3a)}, expected ${SHDR_SIZE}`);
  if (shoff < EHDR_SIZE || shoff % 8 !== 0 || shoff + SHDR_SIZE > length) throw bad(`section header table at 0x${shoff.toString(16)} is outside the file (${length} bytes) or misaligned`);
  let count = u16(0x3c);
  if (count === 0) count = u64(shoff + 32);
  let shstrndx = u16(0x3e);
  if (shstrndx === SHN_XINDEX) shstrndx = u32(shoff + 40);
  if (count > (length - shoff) / SHDR_SIZE) throw bad(`${count} section headers at 0x${shoff.toString(16)} run past the end of the file`);
  if (shstrndx >= count) throw bad(`section name table index ${shstrndx} out of range (${count} sections)`);
  const shtEnd = shoff + count * SHDR_SIZE;

  const sections: Section[] = [];
  let maxAlign = 8; // the section header table's own alignment
  for (let i = 0; i < count; i++) {
    const at = shoff + i * SHDR_SIZE;
    const s: Section = {
      index: i, at, type: u32(at + 4), flags: u32(at + 8), offset: u64(at + 24), size: u64(at + 32),
      link: u32(at + 40), info: u32(at + 44), align: u64(at + 48), entsize: u64(at + 56),
    };
    if (i > 0 && s.type !== SHT_NOBITS && (s.offset > length || s.size > length - s.offset)) {
      throw bad(`section ${i} (offset 0x${s.offset.toString(16)}, ${s.size} bytes) is outside the file (${length} bytes)`);
    }
    if (s.align > 1 && (s.align > 2 ** 30 || (s.align & (s.align - 1)) !== 0)) throw bad(`section ${i} alignment ${s.align} is not a power of two up to 2^30`);
    maxAlign = Math.max(maxAlign, s.align);
    sections.push(s);
  }

  const symtabs = sections.filter((s) => s.type === SHT_SYMTAB);
  if (symtabs.length === 0) return unchanged("no symbol table");
  if (symtabs.length > 1) throw bad(`${symtabs.length} symbol tables, a module has one`);
  const symtab = symtabs[0];
  if (symtab.entsize !== SYM_SIZE || symtab.size % SYM_SIZE !== 0) throw bad(`symbol table entry size ${symtab.entsize} or size ${symtab.size} is not a multiple of ${SYM_SIZE}`);
  const nsyms = symtab.size / SYM_SIZE;
  if (nsyms === 0) throw bad("empty symbol table (not even the null symbol)");
  if (symtab.info > nsyms) throw bad(`symbol table's first non-local index ${symtab.info} is beyond its ${nsyms} symbols`);
  const strtab = linked(sections, symtab, SHT_STRTAB, "symbol table", bad);

  // Who else refers to symbol indices: relocations (r_info's high 32 bits),
  // groups (sh_info: the signature symbol) and the extended index table.
  const relocs: Section[] = [];
  const groups: Section[] = [];
  let shndx: Section | undefined;
  for (const s of sections) {
    if (s.type === SHT_RELA || s.type === SHT_REL) {
      if (s.link !== symtab.index) throw bad(`relocation section ${s.index} links to section ${s.link}, not the symbol table (${symtab.index})`);
      const entsize = s.type === SHT_RELA ? 24 : 16;
      if (s.entsize !== entsize || s.size % entsize !== 0) throw bad(`relocation section ${s.index}: entry size ${s.entsize} or size ${s.size} is not a multiple of ${entsize}`);
      relocs.push(s);
    } else if (s.type === SHT_GROUP) {
      if (s.link !== symtab.index) throw bad(`group section ${s.index} links to section ${s.link}, not the symbol table (${symtab.index})`);
      if (s.info >= nsyms) throw bad(`group section ${s.index} names symbol ${s.info}, beyond the ${nsyms} symbols`);
      groups.push(s);
    } else if (s.type === SHT_SYMTAB_SHNDX) {
      if (s.link !== symtab.index || shndx) throw bad(`extended section index table ${s.index} links to section ${s.link}, not the symbol table (${symtab.index}), or is not the only one`);
      if (s.size !== nsyms * 4) throw bad(`extended section index table ${s.index} has ${s.size} bytes for ${nsyms} symbols`);
      shndx = s;
    } else if (s.link === symtab.index && s.type !== SHT_SYMTAB && s.index !== 0 && (s.flags & SHF_LINK_ORDER) === 0) {
      return unchanged(`section ${s.index} of type 0x${s.type.toString(16)} refers to the symbol table in a way this rewrite does not know`);
    }
  }

  // Symbols any of them uses.
  const used = new Uint8Array(nsyms);
  used[0] = 1;
  for (const r of relocs) {
    const entsize = r.entsize;
    for (let at = r.offset; at < r.offset + r.size; at += entsize) {
      const sym = u32(at + 12); // ELF64_R_SYM(r_info): the high half of the little-endian r_info at +8
      if (sym >= nsyms) throw bad(`relocation section ${r.index} entry ${(at - r.offset) / entsize} refers to symbol ${sym}, beyond the ${nsyms} symbols`);
      used[sym] = 1;
    }
  }
  for (const g of groups) used[g.info] = 1;

  // Which to keep, and their new indices.
  const newIndex = new Uint32Array(nsyms);
  let kept = 0;
  let keptLocals = 0;
  for (let i = 0; i < nsyms; i++) {
    const at = symtab.offset + i * SYM_SIZE;
    const name = u32(at);
    if (name >= strtab.size) throw bad(`symbol ${i} name offset ${name} is outside the string table (${strtab.size} bytes)`);
    const local = i < symtab.info && bytes[at + 4] >> 4 === STB_LOCAL;
    const dotL = name + 1 < strtab.size && bytes[strtab.offset + name] === 0x2e && bytes[strtab.offset + name + 1] === 0x4c; // ".L"
    if (local && dotL && !used[i]) continue;
    newIndex[i] = kept++;
    if (i < symtab.info) keptLocals++;
    used[i] = 1; // from here on: kept
  }
  const removed = nsyms - kept;

  // Renumber, in place (the entries stay where they are).
  for (const r of relocs) {
    for (let at = r.offset; at < r.offset + r.size; at += r.entsize) set32(at + 12, newIndex[u32(at + 12)]);
  }
  for (const g of groups) set32(g.at + 44, newIndex[g.info]);
  set32(symtab.at + 44, keptLocals);

  const shrinks: Shrink[] = [];
  if (removed > 0) {
    const newSymtab = new Uint8Array(kept * SYM_SIZE);
    const newShndx = shndx ? new Uint8Array(kept * 4) : undefined;
    for (let i = 0, j = 0; i < nsyms; i++) {
      if (!used[i]) continue;
      newSymtab.set(bytes.subarray(symtab.offset + i * SYM_SIZE, symtab.offset + (i + 1) * SYM_SIZE), j * SYM_SIZE);
      if (shndx && newShndx) newShndx.set(bytes.subarray(shndx.offset + i * 4, shndx.offset + i * 4 + 4), j * 4);
      j++;
    }
    const newStrtab = compactStrings(sections, symtab, strtab, shstrndx, bytes, newSymtab, bad);
    shrinks.push({ section: symtab, contents: newSymtab });
    if (shndx && newShndx) shrinks.push({ section: shndx, contents: newShndx });
    if (newStrtab) shrinks.push({ section: strtab, contents: newStrtab });
  }

  const out = compact(bytes, sections, shoff, shtEnd, shrinks, maxAlign, bad);
  return { bytes: out, removedSymbols: removed, signatureRemoved: length < input.length };
}

function checkHeader(b: Uint8Array, bad: (why: string) => ImageError): void {
  if (b.length < EHDR_SIZE || b[0] !== 0x7f || b[1] !== 0x45 || b[2] !== 0x4c || b[3] !== 0x46) throw bad("no ELF magic");
  if (b[4] !== 2) throw bad(`ELF class ${b[4]}, expected 64-bit (2)`);
  if (b[5] !== 1) throw bad(`ELF data encoding ${b[5]}, expected little-endian (1)`);
  const type = b[16] | (b[17] << 8);
  const machine = b[18] | (b[19] << 8);
  if (type !== ET_REL) throw bad(`ELF type ${type}, expected a relocatable object (${ET_REL})`);
  if (machine !== EM_RISCV) throw bad(`ELF machine ${machine}, expected RISC-V (${EM_RISCV})`);
}

/**
 * The length of the module without its appended signature (the whole file
 * when it has none). Layout, from the end (scripts/sign-file.c): the magic,
 * struct module_signature, then before it the signature (sig_len bytes),
 * the key id and the signer's name (both empty for PKCS#7).
 */
function unsignedLength(b: Uint8Array, bad: (why: string) => ImageError): number {
  const magic = new TextEncoder().encode(MODULE_SIG_MAGIC);
  if (b.length < magic.length || !magic.every((c, i) => b[b.length - magic.length + i] === c)) return b.length;
  const info = b.length - magic.length - MODULE_SIG_INFO_SIZE;
  if (info < EHDR_SIZE) throw bad("signature marker but no room for the signature");
  const idType = b[info + 2];
  const signerLen = b[info + 3];
  const keyIdLen = b[info + 4];
  const sigLen = new DataView(b.buffer, b.byteOffset + info + 8, 4).getUint32(0, false);
  if (idType !== PKEY_ID_PKCS7) throw bad(`signature of type ${idType}, expected PKCS#7 (${PKEY_ID_PKCS7})`);
  const total = sigLen + signerLen + keyIdLen;
  if (sigLen === 0 || total > info - EHDR_SIZE) throw bad(`signature of ${sigLen} bytes does not fit in the file (${b.length} bytes)`);
  return info - total;
}

function linked(sections: Section[], from: Section, type: number, what: string, bad: (why: string) => ImageError): Section {
  const to = sections[from.link];
  if (from.link === 0 || !to || to.type !== type) throw bad(`${what} (section ${from.index}) links to section ${from.link}, which is not a ${type === SHT_STRTAB ? "string table" : `section of type ${type}`}`);
  return to;
}

/**
 * .strtab holding only the names of `symbols`, with those symbols' st_name
 * updated; undefined (and st_name untouched) when another section uses the
 * same string table or nothing would be saved.
 */
function compactStrings(sections: Section[], symtab: Section, strtab: Section, shstrndx: number, bytes: Uint8Array, symbols: Uint8Array, bad: (why: string) => ImageError): Uint8Array | undefined {
  if (strtab.index === shstrndx || sections.some((s) => s !== symtab && s.index !== 0 && s.link === strtab.index && (s.flags & SHF_LINK_ORDER) === 0)) return undefined;
  const old = bytes.subarray(strtab.offset, strtab.offset + strtab.size);
  const view = new DataView(symbols.buffer, symbols.byteOffset, symbols.byteLength);
  const offsets = new Map<string, number>();
  const parts: Uint8Array[] = [new Uint8Array(1)];
  let size = 1;
  const renamed = new Uint32Array(symbols.length / SYM_SIZE);
  for (let i = 0; i < renamed.length; i++) {
    const name = view.getUint32(i * SYM_SIZE, true);
    if (name === 0) continue;
    const end = old.indexOf(0, name);
    if (end < 0) throw bad(`symbol name at string table offset ${name} is not NUL-terminated`);
    const key = Buffer.from(old.buffer, old.byteOffset + name, end - name).toString("latin1");
    let at = offsets.get(key);
    if (at === undefined) {
      at = size;
      offsets.set(key, at);
      parts.push(old.subarray(name, end + 1));
      size += end + 1 - name;
    }
    renamed[i] = at;
  }
  if (size >= old.length) return undefined;
  for (let i = 0; i < renamed.length; i++) view.setUint32(i * SYM_SIZE, renamed[i], true);
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * The file with each shrunk section's contents replaced and everything
 * after it moved down by the largest multiple of `align` the shrink frees,
 * section offsets and e_shoff updated to match.
 */
function compact(bytes: Uint8Array, sections: Section[], shoff: number, shtEnd: number, shrinks: Shrink[], align: number, bad: (why: string) => ImageError): Uint8Array {
  shrinks.sort((a, b) => a.section.offset - b.section.offset);
  // Nothing else may lie in a shrunk section's bytes: it would be overwritten.
  for (const { section: s } of shrinks) {
    const end = s.offset + s.size;
    const overlaps = (from: number, to: number) => from < end && to > s.offset;
    if (overlaps(shoff, shtEnd)) throw bad(`the section header table overlaps section ${s.index}`);
    const other = sections.find((o) => o !== s && o.index !== 0 && o.type !== SHT_NOBITS && o.size > 0 && overlaps(o.offset, o.offset + o.size));
    if (other) throw bad(`section ${other.index} overlaps section ${s.index}`);
  }

  // Old file position -> how far it moves down.
  const moves: { from: number; by: number }[] = [];
  const out = new Uint8Array(bytes.length);
  let pos = 0;
  let by = 0;
  for (const { section: s, contents } of shrinks) {
    out.set(bytes.subarray(pos, s.offset), pos - by);
    out.set(contents, s.offset - by);
    by += Math.floor((s.size - contents.length) / align) * align;
    pos = s.offset + s.size;
    moves.push({ from: pos, by });
  }
  out.set(bytes.subarray(pos), pos - by);
  const shift = (offset: number) => {
    let d = 0;
    for (const m of moves) if (offset >= m.from) d = m.by;
    return d;
  };

  const view = new DataView(out.buffer);
  const newShoff = shoff - shift(shoff);
  view.setBigUint64(0x28, BigInt(newShoff), true);
  for (const s of sections) {
    const at = s.at - shoff + newShoff;
    if (s.index > 0) view.setBigUint64(at + 24, BigInt(s.offset - shift(s.offset)), true);
    const shrunk = shrinks.find((x) => x.section === s);
    if (shrunk) view.setBigUint64(at + 32, BigInt(shrunk.contents.length), true);
  }
  return out.subarray(0, bytes.length - by);
}
