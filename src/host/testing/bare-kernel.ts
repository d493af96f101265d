// Builds the bare S-mode programs of testing/bare/ (and the benchmarks') into
// RISC-V Linux Images a VM boots like Debian's kernel: the host engine's
// tests and bench:host use them where they need exact control of what a vCPU
// does (an MMIO load in a loop, an IPI to a hart that spins in translated
// code, a scan of all of RAM) without a kernel in the way. Built with
// Debian's riscv64-unknown-elf-gcc (installed by `npm test`'s setup), cached
// under build/bare/ and rebuilt when a source is newer.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { parseKernelImage, type KernelImage } from "../../arch/riscv/boot-image.js";
import { projectRoot } from "../../project-root.js";

const root = projectRoot();
const BARE_DIR = join(root, "src", "host", "testing", "bare");
const OUT_DIR = join(root, "build", "bare");
const CC = "riscv64-unknown-elf-gcc";
const OBJCOPY = "riscv64-unknown-elf-objcopy";

export const haveBareCompiler = (): boolean => spawnSync(CC, ["--version"], { stdio: "ignore" }).status === 0;

const mtime = (p: string) => (existsSync(p) ? statSync(p).mtimeMs : 0);

/** The Image built from `src` (a C file with bare_main) and testing/bare/'s start-up code. */
export function buildBareKernel(src: string): KernelImage {
  const name = basename(src).replace(/\.c$/, "");
  const out = join(OUT_DIR, `${name}.Image`);
  const inputs = [src, ...readdirSync(BARE_DIR).map((f) => join(BARE_DIR, f))];
  if (mtime(out) <= Math.max(...inputs.map(mtime))) {
    mkdirSync(OUT_DIR, { recursive: true });
    const elf = join(OUT_DIR, `${name}.${process.pid}.elf`);
    const cc = spawnSync(CC, [
      "-march=rv64imac_zicsr", "-mabi=lp64", "-mcmodel=medany", "-O2", "-Wall", "-Wextra",
      "-ffreestanding", "-fno-builtin", "-nostdlib", "-static", "-I", BARE_DIR,
      "-T", join(BARE_DIR, "link.ld"), "-o", elf, join(BARE_DIR, "head.S"), src,
    ], { encoding: "utf8" });
    if (cc.status !== 0) throw new Error(`building ${src} failed:\n${cc.stderr}`);
    const tmp = `${out}.${process.pid}.tmp`;
    const oc = spawnSync(OBJCOPY, ["-O", "binary", elf, tmp], { encoding: "utf8" });
    if (oc.status !== 0) throw new Error(`objcopy ${elf} failed:\n${oc.stderr}`);
    rmSync(elf, { force: true });
    renameSync(tmp, out); // whole or not at all
  }
  return parseKernelImage(new Uint8Array(readFileSync(out)));
}

/** A program of testing/bare/ by name. */
export const bareProgram = (name: string): string => join(BARE_DIR, `${name}.c`);
