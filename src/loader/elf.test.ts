import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, existsSync } from "node:fs";
import { parseElf, ElfError } from "./elf.js";
import { buildElf, words } from "./elf-builder.js";

const RAM = 0x8000_0000n;
const JSELF = 0x0000006f; // jal x0, 0

function valid(extra: Partial<Parameters<typeof buildElf>[0]> = {}) {
  return buildElf({
    entry: RAM,
    segments: [
      { paddr: RAM, data: words(JSELF) },
      { paddr: RAM + 0x1000n, data: new Uint8Array([1, 2, 3]), memsz: 0x100n },
    ],
    symbols: { tohost: RAM + 0x1000n, fromhost: RAM + 0x1040n },
    ...extra,
  });
}

/** parseElf must throw an ElfError whose message is one line matching `pattern`. */
function rejects(bytes: Uint8Array, pattern: RegExp) {
  assert.throws(
    () => parseElf(bytes),
    (e: unknown) => {
      assert.ok(e instanceof ElfError, `expected ElfError, got ${String(e)}`);
      assert.match(e.message, pattern);
      assert.ok(!e.message.includes("\n"), "one line");
      return true;
    },
  );
}

test("a valid image: entry, segments at their physical addresses, bss, symbols", () => {
  const img = parseElf(valid());
  assert.equal(img.entry, RAM);
  assert.equal(img.segments.length, 2);
  assert.equal(img.segments[0].paddr, RAM);
  assert.deepEqual([...img.segments[0].data], [0x6f, 0, 0, 0]);
  assert.equal(img.segments[1].memsz, 0x100n);
  assert.equal(img.segments[1].data.length, 3);
  assert.equal(img.symbol("tohost"), RAM + 0x1000n);
  assert.equal(img.symbol("fromhost"), RAM + 0x1040n);
  assert.equal(img.symbol("nothere"), undefined);
});

test("an image without a symbol table has no symbols", () => {
  const img = parseElf(valid({ symbols: undefined }));
  assert.equal(img.symbol("tohost"), undefined);
});

test("segments with p_paddr different from p_vaddr load at p_paddr", () => {
  const img = parseElf(buildElf({ entry: RAM, segments: [{ paddr: RAM, vaddr: 0xffff_ffff_8000_0000n, data: words(JSELF) }] }));
  assert.equal(img.segments[0].paddr, RAM);
  assert.equal(img.segments[0].vaddr, 0xffff_ffff_8000_0000n);
});

test("non-ELF and truncated input", () => {
  rejects(new Uint8Array(0), /not an ELF file/);
  rejects(new TextEncoder().encode("#!/bin/sh\necho hi\n"), /not an ELF file/);
  rejects(valid().subarray(0, 40), /truncated ELF header/);
  rejects(valid().subarray(0, 100), /truncated/); // program headers cut off
});

test("wrong class, byte order, machine and type", () => {
  rejects(valid({ elfClass: 1 }), /64-bit/);
  rejects(valid({ data: 2 }), /little-endian/);
  rejects(valid({ machine: 62 }), /not a RISC-V ELF file \(e_machine 62/);
  rejects(valid({ type: 3 }), /not an executable/); // ET_DYN
  rejects(valid({ type: 1 }), /not an executable/); // ET_REL
});

test("the host's own executables are refused as not RISC-V", { skip: !existsSync("/bin/true") }, () => {
  const bytes = new Uint8Array(readFileSync("/bin/true"));
  assert.throws(() => parseElf(bytes), (e: unknown) => e instanceof ElfError && /not a RISC-V ELF file|not an executable/.test(e.message));
});

test("a segment whose file data lies past the end of the file", () => {
  const bytes = valid();
  const dv = new DataView(bytes.buffer);
  dv.setBigUint64(64 + 8, BigInt(bytes.length - 2), true); // p_offset of segment 0
  rejects(bytes, /segment 0 lies past its end/);
});

test("a segment with more file bytes than memory bytes", () => {
  rejects(buildElf({ entry: RAM, segments: [{ paddr: RAM, data: new Uint8Array(16), memsz: 8n }] }), /file size larger than memory size/);
});

test("overlapping segments", () => {
  const overlapping = buildElf({
    entry: RAM,
    segments: [
      { paddr: RAM, data: new Uint8Array(0x100) },
      { paddr: RAM + 0x80n, data: new Uint8Array(0x10) },
    ],
  });
  rejects(overlapping, /segments overlap/);
  // Adjacent is fine.
  parseElf(buildElf({ entry: RAM, segments: [{ paddr: RAM, data: new Uint8Array(0x100) }, { paddr: RAM + 0x100n, data: new Uint8Array(1) }] }));
});

test("a segment whose address range wraps around 2^64", () => {
  rejects(buildElf({ entry: RAM, segments: [{ paddr: 0xffff_ffff_ffff_fff0n, data: new Uint8Array(0x20) }] }), /wraps/);
});

test("no program headers, or none loadable", () => {
  rejects(buildElf({ entry: RAM, segments: [] }), /no program headers/);
  rejects(buildElf({ entry: RAM, segments: [{ paddr: RAM, data: new Uint8Array(4), type: 4 }] }), /no loadable segments/);
});

test("a symbol table that points past the end of the file", () => {
  const bytes = valid();
  const dv = new DataView(bytes.buffer);
  const shoff = Number(dv.getBigUint64(40, true));
  dv.setBigUint64(shoff + 64 + 24, BigInt(bytes.length), true); // .symtab sh_offset
  const img = parseElf(bytes);
  assert.throws(() => img.symbol("tohost"), (e: unknown) => e instanceof ElfError && /symbol table lies past its end/.test(e.message));
});
