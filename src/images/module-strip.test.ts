// stripModule checked against the host's binutils: riscv64-linux-gnu-readelf
// (binutils-riscv64-linux-gnu) reads the result; riscv64-unknown-elf-gcc,
// -ld and -objcopy (the ISA tests' toolchain) build module-like objects the
// way Debian's are made (compiled with -g, linked with ld -r, installed with
// --strip-debug, which leaves behind the .L labels only the debug info
// referred to) and link original and rewritten object to the same program. A real Debian module comes from the pulled image's
// initramfs (after this rewrite it is already rewritten once, so the test then
// checks that a second rewrite changes nothing) or, to check a pristine one,
// from TSVISOR_TEST_MODULE=/path/to/ext4.ko[.xz] (e.g. out of the kernel .deb).

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ImageError } from "./errors.js";
import { defaultCacheDir, INITRD_FILE } from "./image-cache.js";
import { MODULE_SIG_MAGIC, stripModule } from "./module-strip.js";
import { buildKo } from "./test-fixtures.js";

const READELF = "riscv64-linux-gnu-readelf";
const CC = "riscv64-unknown-elf-gcc";
const LD = "riscv64-unknown-elf-ld";
const OBJCOPY = "riscv64-unknown-elf-objcopy";
const BIG = 1 << 30;

const have = (cmd: string) => spawnSync(cmd, ["--version"], { stdio: "ignore" }).status === 0;
const missingTools = [READELF, CC, LD, OBJCOPY].filter((c) => !have(c));
const needTools = missingTools.length > 0 ? `needs ${missingTools.join(", ")} (scripts/ensure.mjs --test installs them)` : false;

const dir = mkdtempSync(join(tmpdir(), "tsvisor-strip-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
let files = 0;

function file(bytes: Uint8Array, name = `f${files++}.o`): string {
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

/** readelf -W with these options; fails the test on any warning. */
function readelf(args: string[], bytes: Uint8Array): string {
  const r = spawnSync(READELF, ["-W", ...args, file(bytes)], { encoding: "utf8", maxBuffer: BIG });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, "", `readelf ${args.join(" ")} warns`);
  return r.stdout;
}

interface SectionLine {
  index: number;
  /** The line with offset and size masked, and sh_info where it is a symbol index or count. */
  shape: string;
  offset: number;
  size: number;
  type: string;
  info: number;
  align: number;
}

function sections(bytes: Uint8Array): SectionLine[] {
  const out: SectionLine[] = [];
  // [Nr] Name Type Address Off Size ES Flg Lk Inf Al; Name may be empty, Type may hold spaces.
  const re = /^\s*\[\s*(\d+)\] (.*?) ([0-9a-f]{16}) ([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]{2}) (.*?)(\d+)\s+(\d+)\s+(\d+)$/;
  for (const line of readelf(["-S"], bytes).split("\n")) {
    const m = re.exec(line);
    if (!m) continue;
    const type = m[2].trim().split(/\s+/).slice(1).join(" ") || m[2].trim();
    out.push({
      index: Number(m[1]), type, offset: parseInt(m[4], 16), size: parseInt(m[5], 16), info: Number(m[9]), align: Number(m[10]),
      shape: `${m[1]} ${m[2].trim()} ${m[3]} ${m[6]} ${m[7].trim()} ${m[8]} ${/^(SYMTAB|GROUP)/.test(type) ? "-" : m[9]} ${m[10]}`,
    });
  }
  return out;
}

interface Relocations {
  /** Every entry as offset, type, symbol value, name + addend (not the symbol index), by section. */
  entries: string[];
  /** Symbol indices used. */
  symbols: Set<number>;
}

function relocations(bytes: Uint8Array): Relocations {
  const entries: string[] = [];
  const symbols = new Set<number>();
  for (const line of readelf(["-r"], bytes).split("\n")) {
    const head = /^Relocation section '(.*)' at offset 0x[0-9a-f]+ contains (\d+) entr/.exec(line);
    const m = /^([0-9a-f]{16})\s+([0-9a-f]{16})\s+(\S+)\s*(.*)$/.exec(line);
    if (head) entries.push(`${head[1]} ${head[2]}`);
    else if (m) {
      const sym = parseInt(m[2].slice(0, 8), 16);
      symbols.add(sym);
      entries.push(`${m[1]} ${m[3]} ${m[4]}`);
    }
  }
  return { entries, symbols };
}

interface Symbol {
  index: number;
  /** value size type bind vis ndx name */
  text: string;
  local: boolean;
  name: string;
}

function symbols(bytes: Uint8Array): Symbol[] {
  const out: Symbol[] = [];
  for (const line of readelf(["-s"], bytes).split("\n")) {
    const m = /^\s*(\d+): ([0-9a-f]{16})\s+(\S+) (\S+)\s+(\S+)\s+(\S+(?: \[[^\]]*\])?)\s+(\S+) ?(.*)$/.exec(line);
    if (m) out.push({ index: Number(m[1]), text: m.slice(2).join(" "), local: m[5] === "LOCAL", name: m[8] });
  }
  return out;
}

const groupSymbols = (s: SectionLine[]) => s.filter((x) => x.type === "GROUP").map((x) => x.info);
const endsWithSignature = (b: Uint8Array) => Buffer.from(b.subarray(b.length - MODULE_SIG_MAGIC.length)).toString("latin1") === MODULE_SIG_MAGIC;

/**
 * What a correct rewrite of `before` looks like, in readelf's words: the same
 * sections (offsets and sizes aside; each keeps its alignment), the same
 * relocations against the same symbols, the same symbols minus the ".L"
 * locals nothing referred to, and no signature.
 */
function checkRewrite(before: Uint8Array, after: Uint8Array): { removed: number } {
  const [s0, s1] = [sections(before), sections(after)];
  assert.deepEqual(s1.map((s) => s.shape), s0.map((s) => s.shape), "same sections");
  for (const [i, s] of s1.entries()) {
    if (s.align > 1 && s.type !== "NOBITS") assert.equal(s.offset % s.align, s0[i].offset % s.align, `section ${i} keeps its alignment`);
    if (!/^(SYMTAB|STRTAB)/.test(s.type)) assert.equal(s.size, s0[i].size, `section ${i} keeps its size`);
  }
  const [r0, r1] = [relocations(before), relocations(after)];
  assert.deepEqual(r1.entries, r0.entries, "same relocations against the same symbols");

  const referenced = new Set([...r0.symbols, ...groupSymbols(s0)]);
  const [y0, y1] = [symbols(before), symbols(after)];
  const kept = y0.filter((y) => !(y.local && y.name.startsWith(".L") && !referenced.has(y.index)));
  assert.deepEqual(y1.map((y) => y.text), kept.map((y) => y.text), "the same symbols but the unreferenced .L locals, in order");
  for (const [i, s] of s1.entries()) {
    if (s.type === "GROUP") assert.equal(y1[s.info].text, y0[s0[i].info].text, `group section ${i} keeps its signature symbol`);
  }
  const referencedAfter = new Set([...r1.symbols, ...groupSymbols(s1)]);
  assert.deepEqual(y1.filter((y) => y.local && y.name.startsWith(".L") && !referencedAfter.has(y.index)), [], "no unreferenced .L symbol left");
  const firstGlobal = y1.findIndex((y) => !y.local);
  assert.equal(s1.find((s) => s.type === "SYMTAB")!.info, firstGlobal < 0 ? y1.length : firstGlobal, ".symtab's sh_info is the first non-local symbol");
  assert.ok(!endsWithSignature(after), "no signature");
  return { removed: y0.length - y1.length };
}

/** A signature as sign-file appends it: PKCS#7 blob, struct module_signature, magic. */
function sign(bytes: Uint8Array, sigLen = 300): Uint8Array {
  const info = new Uint8Array(12);
  info[2] = 2; // PKEY_ID_PKCS7
  new DataView(info.buffer).setUint32(8, sigLen, false);
  const blob = new Uint8Array(sigLen).map((_, i) => (i * 7 + 0x30) & 0xff);
  return new Uint8Array(Buffer.concat([bytes, blob, info, Buffer.from(MODULE_SIG_MAGIC, "latin1")]));
}

/** A module-like object: two C files compiled with -g, linked with ld -r and stripped of debug info, as kbuild and Debian do. */
function compiledModule(): Uint8Array {
  writeFileSync(join(dir, "a.c"), `
    static int counter;
    struct ops { int (*f)(int); const char *name; };
    static int helper(int x) { return x * 3 + counter; }
    static const struct ops table[] = { { helper, "helper" } };
    __attribute__((section(".modinfo"), used)) static const char license[] = "license=GPL";
    extern int other(int);
    int entry(int x) {
      if (x > 10) return table[0].f(x);
      for (int i = 0; i < x; i++) counter += other(i);
      switch (x) { case 1: return 5; case 2: return 9; case 3: return 11; case 4: return 2; case 5: return 7; case 6: return 1; }
      return counter;
    }
    const char *name(void) { return table[0].name; }
  `);
  writeFileSync(join(dir, "b.c"), `
    long big[64] __attribute__((aligned(64)));
    int other(int i) { return i > 3 ? (int)big[i & 63] : i * 2; }
  `);
  for (const f of ["a", "b"]) execFileSync(CC, ["-O2", "-mcmodel=medany", "-fno-common", "-g", "-c", join(dir, `${f}.c`), "-o", join(dir, `${f}.o`)]);
  // A COMDAT group whose signature is a local .L label: referenced only by the group.
  writeFileSync(join(dir, "g.s"), `
    .section .text.grp,"axG",@progbits,.Lsig,comdat
.Lsig:
    ret
  `);
  execFileSync(CC, ["-c", join(dir, "g.s"), "-o", join(dir, "g.o")]);
  const out = join(dir, "module.o");
  execFileSync(LD, ["-r", join(dir, "a.o"), join(dir, "b.o"), join(dir, "g.o"), "-o", out]);
  execFileSync(OBJCOPY, ["--strip-debug", out]);
  return new Uint8Array(readFileSync(out));
}

/** Links an object into a program and returns its loadable bytes. */
function linked(object: Uint8Array): Buffer {
  const exe = join(dir, `exe${files++}`);
  execFileSync(LD, ["-e", "entry", "-Ttext=0x80000000", file(object), "-o", exe]);
  execFileSync(OBJCOPY, ["-O", "binary", exe, `${exe}.bin`]);
  return readFileSync(`${exe}.bin`);
}

test("a compiled module: unreferenced .L locals and the signature go, everything else stays", { skip: needTools }, () => {
  const unsigned = compiledModule();
  const dotL = symbols(unsigned).filter((y) => y.local && y.name.startsWith(".L"));
  assert.ok(dotL.length > 10, `the object has .L locals (${dotL.length})`);
  const signed = sign(unsigned);
  const r = stripModule(signed, "module.ko");
  assert.equal(r.signatureRemoved, true);
  assert.equal(r.unchanged, undefined);
  const { removed } = checkRewrite(unsigned, r.bytes);
  assert.ok(removed > 0 && removed < dotL.length, `some .L locals removed (${removed}), the referenced ones kept`);
  assert.equal(r.removedSymbols, removed);
  assert.ok(symbols(r.bytes).some((y) => y.name === ".Lsig"), "a group's signature symbol is kept");
  assert.ok(r.bytes.length < unsigned.length);
  assert.deepEqual(linked(r.bytes), linked(unsigned), "links to the very same program");
  // Rewriting again changes nothing; an unsigned module loses its .L all the same.
  assert.deepEqual(stripModule(r.bytes, "module.ko").bytes, r.bytes);
  assert.deepEqual(stripModule(unsigned, "module.ko").bytes, r.bytes);
});

test("extended section numbering: .symtab_shndx shrinks with .symtab", { skip: needTools }, () => {
  // Over 0xff00 sections: section symbols' indices go to SHT_SYMTAB_SHNDX.
  let asm = "";
  for (let i = 0; i < 0xff10; i++) asm += `.section .d${i},"a"\n.byte ${i & 255}\n.Lunused${i}:\n`;
  asm += ".text\n.globl f\nf:\n beqz a0, .Lb\n lla a0, .Lunused65295\n.Lb:\n ret\n";
  writeFileSync(join(dir, "big.s"), asm);
  execFileSync(CC, ["-Wa,-L", "-c", join(dir, "big.s"), "-o", join(dir, "big.o")]);
  const before = new Uint8Array(readFileSync(join(dir, "big.o")));
  assert.ok(sections(before).some((s) => s.type === "SYMTAB SECTION INDICES"), "the object has .symtab_shndx");
  const r = stripModule(before, "big.o");
  const { removed } = checkRewrite(before, r.bytes);
  assert.ok(removed >= 0xff00, `${removed} removed`);
  const shndx = sections(r.bytes).find((s) => s.type === "SYMTAB SECTION INDICES")!;
  assert.equal(shndx.size, symbols(r.bytes).length * 4, "one extended index per kept symbol");
});

/** ext4.ko: TSVISOR_TEST_MODULE, else out of the pulled image's initramfs. */
function realModule(): { bytes: Uint8Array; from: string } | string {
  const given = process.env.TSVISOR_TEST_MODULE;
  if (given) {
    const raw = readFileSync(given);
    return { bytes: new Uint8Array(given.endsWith(".xz") ? execFileSync("xz", ["-dc"], { input: raw, maxBuffer: BIG }) : raw), from: given };
  }
  const initrd = join(defaultCacheDir(), "images", "debian-trixie-riscv64", INITRD_FILE);
  if (!existsSync(initrd)) return `no real module: no pulled image (${initrd}; run tsvisor image pull) and no TSVISOR_TEST_MODULE`;
  if (spawnSync("cpio", ["--version"], { stdio: "ignore" }).status !== 0) return "no real module: cpio is not installed";
  const bytes = execFileSync("cpio", ["-i", "--quiet", "--to-stdout", "lib/modules/*/kernel/fs/ext4/ext4.ko"], { input: readFileSync(initrd), maxBuffer: BIG });
  if (bytes.length === 0) return `no real module: ${initrd} holds no ext4.ko`;
  return { bytes: new Uint8Array(bytes), from: initrd };
}

const real = needTools ? undefined : realModule();

test("Debian's ext4.ko", { skip: needTools || (typeof real === "string" ? real : false) }, () => {
  const { bytes, from } = real as { bytes: Uint8Array; from: string };
  const r = stripModule(bytes, "ext4.ko");
  const signed = endsWithSignature(bytes);
  assert.equal(r.signatureRemoved, signed);
  checkRewrite(bytes, r.bytes);
  if (signed || r.removedSymbols > 0) {
    // Debian's own: ~216,000 symbols, all but ~11,000 of them unreferenced .L labels.
    assert.ok(r.removedSymbols > 100_000, `${r.removedSymbols} symbols removed from ${from}'s ext4.ko`);
    assert.ok(r.bytes.length < bytes.length / 2, `${bytes.length} -> ${r.bytes.length} bytes`);
  } else {
    assert.deepEqual(r.bytes, bytes, `${from}'s ext4.ko is already rewritten: a second rewrite changes nothing`);
  }
});

// Malformed input, made from the compiled module.

interface Edit {
  view: DataView;
  bytes: Uint8Array;
  /** Section header offset of the first section of this type. */
  shdr(type: number): number;
}

function edited(base: Uint8Array, edit: (e: Edit) => void): Uint8Array {
  const bytes = new Uint8Array(base); // a copy, at offset 0 of its own buffer
  const view = new DataView(bytes.buffer);
  const shoff = Number(view.getBigUint64(0x28, true));
  const count = view.getUint16(0x3c, true);
  const shdr = (type: number) => {
    for (let i = 0; i < count; i++) if (view.getUint32(shoff + i * 64 + 4, true) === type) return shoff + i * 64;
    throw new Error(`no section of type ${type}`);
  };
  edit({ view, bytes, shdr });
  return bytes;
}

const SHT_SYMTAB = 2;
const SHT_RELA = 4;

test("malformed modules are refused, naming the module, in one line", { skip: needTools }, () => {
  const good = compiledModule();
  const refuses = (bytes: Uint8Array, pattern: RegExp) => assert.throws(() => stripModule(bytes, "kernel/fs/bad.ko"),
    (e: unknown) => e instanceof ImageError && e.message.startsWith("kernel/fs/bad.ko: cannot rewrite kernel module: ") && pattern.test(e.message) && !e.message.includes("\n"),
    pattern.source);
  refuses(new Uint8Array(100), /no ELF magic/);
  refuses(good.subarray(0, 40), /no ELF magic/);
  refuses(edited(good, ({ bytes }) => (bytes[4] = 1)), /ELF class 1, expected 64-bit/);
  refuses(edited(good, ({ bytes }) => (bytes[5] = 2)), /expected little-endian/);
  refuses(edited(good, ({ view }) => view.setUint16(16, 2, true)), /ELF type 2, expected a relocatable object/);
  refuses(edited(good, ({ view }) => view.setUint16(18, 62, true)), /ELF machine 62, expected RISC-V/);
  refuses(edited(good, ({ view }) => view.setBigUint64(0x28, BigInt(good.length), true)), /section header table at 0x[0-9a-f]+ is outside the file/);
  refuses(edited(good, ({ view }) => view.setUint16(0x3c, 60000, true)), /section headers at .* run past the end of the file/);
  refuses(edited(good, ({ view, shdr }) => view.setBigUint64(shdr(SHT_SYMTAB) + 32, BigInt(good.length), true)), /section \d+ \(offset 0x[0-9a-f]+, \d+ bytes\) is outside the file/);
  refuses(edited(good, ({ view, shdr }) => view.setBigUint64(shdr(SHT_SYMTAB) + 24, 2n ** 60n, true)), /beyond any file/);
  refuses(edited(good, ({ view, shdr }) => view.setUint32(shdr(SHT_SYMTAB) + 40, 1, true)), /symbol table \(section \d+\) links to section 1, which is not a string table/);
  refuses(edited(good, ({ view, shdr }) => view.setUint32(shdr(SHT_SYMTAB) + 40, 9999, true)), /links to section 9999/);
  refuses(edited(good, ({ view, shdr }) => view.setUint32(shdr(SHT_SYMTAB) + 44, 99999, true)), /first non-local index 99999 is beyond its \d+ symbols/);
  refuses(edited(good, ({ view, shdr }) => view.setBigUint64(shdr(SHT_SYMTAB) + 56, 16n, true)), /symbol table entry size 16/);
  refuses(edited(good, ({ view, shdr }) => view.setUint32(shdr(SHT_RELA) + 40, 1, true)), /relocation section \d+ links to section 1, not the symbol table/);
  refuses(edited(good, ({ view, shdr }) => {
    const rela = Number(view.getBigUint64(shdr(SHT_RELA) + 24, true));
    view.setUint32(rela + 24 + 12, 0x00ffffff, true); // the second entry's symbol
  }), /relocation section \d+ entry 1 refers to symbol 16777215, beyond the \d+ symbols/);
  refuses(edited(good, ({ view, shdr }) => {
    const symtab = Number(view.getBigUint64(shdr(SHT_SYMTAB) + 24, true));
    view.setUint32(symtab + 24 * 3, 0x7fffffff, true);
  }), /symbol 3 name offset 2147483647 is outside the string table/);
  refuses(edited(good, ({ view, shdr }) => view.setBigUint64(shdr(SHT_RELA) + 48, 3n, true)), /alignment 3 is not a power of two/);
  // Signatures: too long for the file, not PKCS#7.
  refuses(Buffer.concat([good.subarray(0, 70), Buffer.from(MODULE_SIG_MAGIC, "latin1")]), /signature marker but no room for the signature/);
  refuses(edited(sign(good), ({ view, bytes }) => view.setUint32(bytes.length - 28 - 4, good.length + 1000, false)), /signature of \d+ bytes does not fit in the file/);
  refuses(edited(sign(good), ({ bytes }) => (bytes[bytes.length - 28 - 12 + 2] = 1)), /signature of type 1, expected PKCS#7/);
});

test("what is valid but not to be rewritten is returned as it is", { skip: needTools }, () => {
  const good = compiledModule();
  // A section of a type this code does not know, linked to the symbol table.
  const unknown = sign(edited(good, ({ view, shdr }) => {
    const symtabIndex = (shdr(SHT_SYMTAB) - Number(view.getBigUint64(0x28, true))) / 64;
    const rela = shdr(SHT_RELA);
    view.setUint32(rela + 4, 0x6fff0001, true);
    view.setUint32(rela + 40, symtabIndex, true);
  }));
  const r = stripModule(unknown, "odd.ko");
  assert.equal(r.bytes, unknown);
  assert.match(r.unchanged ?? "", /^section \d+ of type 0x6fff0001 refers to the symbol table/);
  assert.equal(r.signatureRemoved, false);
});

test("a module without a symbol table (the image tests' fixtures) is returned as it is", () => {
  const ko = buildKo(["name=x"]);
  const r = stripModule(ko, "x.ko");
  assert.equal(r.bytes, ko);
  assert.equal(r.unchanged, "no symbol table");
});
