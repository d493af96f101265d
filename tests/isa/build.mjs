// Builds the bare-metal ISA test programs: every tests/isa/<group>/*.S and *.c
// into tests/isa/out/<group>/<name>.elf with Debian's riscv64-unknown-elf-gcc.
// Incremental: a program is rebuilt when it, a header beside it or anything in
// common/ is newer.
//   node tests/isa/build.mjs          build all, print the ELF paths
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, statSync } from "node:fs";
import { join, dirname, basename, extname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const common = join(here, "common");
const outRoot = join(here, "out");
export const CC = "riscv64-unknown-elf-gcc";
// Everything the hart implements, so the assembler accepts every instruction.
const MARCH = "rv64gc_zba_zbb_zbs_zicsr_zifencei_zihintpause";

const mtime = (p) => (existsSync(p) ? statSync(p).mtimeMs : 0);

/** Build all test programs; returns [{group, name, elf}] sorted by group and name. */
export function buildIsaTests() {
  if (spawnSync(CC, ["--version"]).status !== 0) {
    throw new Error(`${CC} not found: install Debian's gcc-riscv64-unknown-elf (npm test does)`);
  }
  const commonTime = Math.max(...readdirSync(common).map((f) => mtime(join(common, f))));
  const built = [];
  for (const group of readdirSync(here, { withFileTypes: true })) {
    if (!group.isDirectory() || group.name === "common" || group.name === "out") continue;
    const dir = join(here, group.name);
    // Headers in the group folder are included by its programs.
    const headerTime = Math.max(0, ...readdirSync(dir).filter((f) => f.endsWith(".h")).map((f) => mtime(join(dir, f))));
    for (const file of readdirSync(dir).sort()) {
      const ext = extname(file);
      if (ext !== ".S" && ext !== ".c") continue;
      const name = basename(file, ext);
      const src = join(dir, file);
      const outDir = join(outRoot, group.name);
      const elf = join(outDir, `${name}.elf`);
      mkdirSync(outDir, { recursive: true });
      if (mtime(elf) < Math.max(mtime(src), commonTime, headerTime)) {
        // -fno-math-errno: sqrt and fma compile to the instructions (no libm here).
        const extra = ext === ".c" ? [join(common, "crt.S"), "-O2", "-ffreestanding", "-fno-math-errno", "-Wl,--no-warn-rwx-segments"] : ["-Wl,--no-warn-rwx-segments"];
        const r = spawnSync(CC, [
          `-march=${MARCH}`, "-mabi=lp64d", "-mcmodel=medany", "-static", "-nostdlib", "-nostartfiles",
          "-T", join(common, "link.ld"), "-I", common, ...extra, src, "-o", elf,
        ], { encoding: "utf8" });
        if (r.status !== 0) throw new Error(`building ${group.name}/${file} failed:\n${r.stderr}`);
      }
      built.push({ group: group.name, name, elf });
    }
  }
  return built.sort((a, b) => (a.group + a.name < b.group + b.name ? -1 : 1));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  try {
    for (const t of buildIsaTests()) console.log(t.elf);
  } catch (e) {
    console.error(`isa build: ${e.message}`);
    process.exit(1);
  }
}
