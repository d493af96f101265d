// The metadata of a Linux kernel module (.ko), read the way depmod and modinfo
// read it: a .ko is an ELF64 relocatable object whose `.modinfo` section holds
// NUL-separated "key=value" strings (MODULE_INFO() in include/linux/module.h;
// `name`, `depends` and `vermagic` are added by modpost, scripts/mod/modpost.c).
//
// The file is untrusted input: every offset and size is checked against the
// file before it is used (ELF-64 Object File Format 1.5: header and section
// header layout; System V gABI for extended section numbering).

import { ImageError } from "./errors.js";

export interface ModInfo {
  /** KBUILD_MODNAME: the file's base name with "-" turned into "_" */
  name?: string;
  /** Modules this one needs loaded first (hard dependencies, by name). */
  depends: string[];
  /** Patterns modprobe matches requests against (fs-ext4, virtio:d00000002v*). */
  aliases: string[];
  /** Soft dependencies ("softdep=pre: crypto-crc32c"): names or aliases, optional. */
  softdeps: string[];
  vermagic?: string;
}

const ELF_MAGIC = [0x7f, 0x45, 0x4c, 0x46]; // "\x7fELF"
const ELFCLASS64 = 2;
const ET_REL = 1;
const EHDR_SIZE = 64;
const SHDR_SIZE = 64;
const SHT_NOBITS = 8;
const SHN_XINDEX = 0xffff;

interface Section {
  name: number;
  type: number;
  offset: number;
  size: number;
}

/** Reads and parses `.modinfo`; `source` names the file in error messages. */
export function readModinfo(bytes: Uint8Array, source: string): ModInfo {
  return parseModinfo(modinfoSection(bytes, source));
}

/** The raw `.modinfo` section of an ELF64 relocatable object. */
export function modinfoSection(bytes: Uint8Array, source: string): Uint8Array {
  const bad = (why: string) => new ImageError(`${source}: not a valid kernel module: ${why}`);
  if (bytes.length < EHDR_SIZE || !ELF_MAGIC.every((b, i) => bytes[i] === b)) throw bad("no ELF magic");
  if (bytes[4] !== ELFCLASS64) throw bad(`ELF class ${bytes[4]}, expected 64-bit`);
  if (bytes[5] !== 1 && bytes[5] !== 2) throw bad(`unknown ELF data encoding ${bytes[5]}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const le = bytes[5] === 1;
  const u16 = (at: number) => view.getUint16(at, le);
  const u32 = (at: number) => view.getUint32(at, le);
  const u64 = (at: number) => {
    const v = view.getBigUint64(at, le);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`offset or size 0x${v.toString(16)} beyond any file`);
    return Number(v);
  };

  if (u16(16) !== ET_REL) throw bad(`ELF type ${u16(16)}, expected a relocatable object (1)`);
  const shoff = u64(0x28);
  const shentsize = u16(0x3a);
  if (shentsize !== SHDR_SIZE) throw bad(`section header size ${shentsize}, expected ${SHDR_SIZE}`);
  if (shoff < EHDR_SIZE || shoff + SHDR_SIZE > bytes.length) throw bad(`section header table at 0x${shoff.toString(16)} is outside the file (${bytes.length} bytes)`);

  const section = (i: number): Section => {
    const at = shoff + i * SHDR_SIZE;
    return { name: u32(at), type: u32(at + 4), offset: u64(at + 24), size: u64(at + 32) };
  };
  // Extended numbering: with 0xff00 or more sections, e_shnum is 0 and the
  // count is section 0's sh_size; e_shstrndx is SHN_XINDEX and the index is
  // section 0's sh_link.
  let count = u16(0x3c);
  let strndx = u16(0x3e);
  if (count === 0) count = section(0).size;
  if (strndx === SHN_XINDEX) strndx = u32(shoff + 40);
  if (shoff + count * SHDR_SIZE > bytes.length) throw bad(`${count} section headers at 0x${shoff.toString(16)} run past the end of the file`);
  if (strndx === 0 || strndx >= count) throw bad(`section name table index ${strndx} out of range (${count} sections)`);

  const contents = (s: Section, what: string): Uint8Array => {
    if (s.type === SHT_NOBITS) return new Uint8Array(0);
    if (s.offset > bytes.length || s.size > bytes.length - s.offset) throw bad(`${what} (offset 0x${s.offset.toString(16)}, ${s.size} bytes) is outside the file`);
    return bytes.subarray(s.offset, s.offset + s.size);
  };
  const names = contents(section(strndx), "section name table");
  const decoder = new TextDecoder();
  for (let i = 1; i < count; i++) {
    const s = section(i);
    if (s.name >= names.length) throw bad(`section ${i} name offset ${s.name} is outside the name table`);
    const end = names.indexOf(0, s.name);
    if (end < 0) throw bad(`section ${i} name is not NUL-terminated`);
    if (decoder.decode(names.subarray(s.name, end)) === ".modinfo") return contents(s, ".modinfo");
  }
  throw bad("no .modinfo section");
}

/** "key=value" strings separated (and padded) by NULs -> the fields modprobe needs. */
export function parseModinfo(section: Uint8Array): ModInfo {
  const info: ModInfo = { depends: [], aliases: [], softdeps: [] };
  for (const entry of new TextDecoder().decode(section).split("\0")) {
    const eq = entry.indexOf("=");
    if (eq <= 0) continue; // alignment padding
    const key = entry.slice(0, eq);
    const value = entry.slice(eq + 1);
    if (key === "name") info.name = value;
    else if (key === "vermagic") info.vermagic = value;
    else if (key === "alias") info.aliases.push(value);
    else if (key === "depends") info.depends.push(...value.split(",").filter((d) => d !== ""));
    else if (key === "softdep") info.softdeps.push(...softdepNames(value));
  }
  return info;
}

/**
 * "pre: a b post: c" -> [a, b, c]. As in kmod's softdep parser, words before
 * the first "pre:" or "post:" belong to neither list and are ignored.
 */
function softdepNames(value: string): string[] {
  const out: string[] = [];
  let inList = false;
  for (const word of value.split(/\s+/)) {
    if (word === "pre:" || word === "post:") inList = true;
    else if (inList && word !== "") out.push(word);
  }
  return out;
}
