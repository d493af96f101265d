// Fixtures for the image tests: hand-made kernel modules and RISC-V ELF
// headers, and temporary directory trees. Not used by tsvisor itself.

import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

/**
 * A minimal kernel module: ELF64 header, .shstrtab, .modinfo, then the
 * section header table (null, .shstrtab, .modinfo), little-endian.
 */
export function buildKo(modinfo: string[]): Uint8Array {
  const enc = new TextEncoder();
  const shstrtab = enc.encode("\0.shstrtab\0.modinfo\0");
  const info = enc.encode(modinfo.map((s) => `${s}\0`).join(""));
  const shstrOff = 64;
  const infoOff = shstrOff + shstrtab.length;
  const shoff = (infoOff + info.length + 7) & ~7;
  const out = new Uint8Array(shoff + 3 * 64);
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0); // magic, ELFCLASS64, little-endian, version
  v.setUint16(16, 1, true); // ET_REL
  v.setUint16(18, 243, true); // EM_RISCV
  v.setUint32(20, 1, true);
  v.setBigUint64(0x28, BigInt(shoff), true);
  v.setUint16(0x34, 64, true);
  v.setUint16(0x3a, 64, true);
  v.setUint16(0x3c, 3, true);
  v.setUint16(0x3e, 1, true);
  out.set(shstrtab, shstrOff);
  out.set(info, infoOff);
  const section = (i: number, name: number, type: number, off: number, size: number) => {
    const at = shoff + i * 64;
    v.setUint32(at, name, true);
    v.setUint32(at + 4, type, true);
    v.setBigUint64(at + 24, BigInt(off), true);
    v.setBigUint64(at + 32, BigInt(size), true);
  };
  section(1, 1, 3 /* SHT_STRTAB */, shstrOff, shstrtab.length);
  section(2, 11, 1 /* SHT_PROGBITS */, infoOff, info.length);
  return out;
}

/** A .ko for module `name` (the file name decides the name, as in kbuild). */
export function ko(name: string, opts: { depends?: string[]; aliases?: string[]; softdep?: string; vermagic?: string } = {}): Uint8Array {
  return buildKo([
    "license=GPL",
    ...(opts.aliases ?? []).map((a) => `alias=${a}`),
    ...(opts.softdep ? [`softdep=${opts.softdep}`] : []),
    `depends=${(opts.depends ?? []).join(",")}`,
    "intree=Y",
    `name=${name}`,
    `vermagic=${opts.vermagic ?? "6.12.0-test SMP mod_unload riscv"}`,
  ]);
}

export async function withTree(files: Record<string, Uint8Array>, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-ko-"));
  try {
    for (const [path, bytes] of Object.entries(files)) {
      mkdirSync(dirname(join(dir, path)), { recursive: true });
      writeFileSync(join(dir, path), bytes);
    }
    await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** xz-compressed, as Debian ships modules. */
export function xz(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(execFileSync("xz", ["-c"], { input: bytes }));
}

/** The first 64 bytes of a static RISC-V 64-bit executable, enough for the initramfs's check. */
export function fakeRiscvExecutable(): Uint8Array {
  const b = new Uint8Array(4096);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0);
  b[16] = 2; // ET_EXEC
  b[18] = 243; // EM_RISCV
  return b;
}
