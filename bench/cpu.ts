// CPU benchmark: builds CPU-bound C kernels (bench/programs/) with the RISC-V
// cross compiler at -O2, runs each in bare-metal mode in this process with the
// interpreter alone and with binary translation (the JIT, default settings),
// and prints guest MIPS per kernel side by side. When qemu-system-riscv64 is
// installed (Debian's qemu-system-misc), QEMU's TCG runs the same ELF on its
// `spike` machine (same HTIF protocol) in the same run, and the ratios are
// printed; its MIPS use tsvisor's instruction count and QEMU's wall time
// (process start included, ~10 ms). Each figure is the best of --runs
// (default 3). Every kernel checks its own result and reports it through HTIF
// (exit code 0 = pass), so a fast but wrong core does not produce a figure.
//
//   npm run bench:cpu                 all kernels
//   node dist/bench/cpu.js crc32 ...  only the named ones
//   node dist/bench/cpu.js --verbose  also show what each guest printed
//   node dist/bench/cpu.js --runs 1   one run each (default: best of 3)
//
// Seconds are wall-clock time of the run alone (ELF build, load and core
// instantiation excluded); MIPS = guest instructions retired / seconds / 1e6.

import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { cpus } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { parseElf } from "../src/loader/elf.js";
import { BareMachine } from "../src/vmm/bare-machine.js";

interface Kernel {
  name: string;
  source: string;
  what: string;
}

const KERNELS: Kernel[] = [
  { name: "crc32", source: "crc32.c", what: "integer: table-driven CRC-32, 64 KiB x 200" },
  { name: "sieve", source: "sieve.c", what: "integer: sieve to 4e6 + heapsort of 200k keys" },
  { name: "memory", source: "memory.c", what: "memory: stream copy/triad/memcpy 4 MiB, pointer chase" },
  { name: "nbody", source: "nbody.c", what: "double: n-body 20k steps + 96x96 matmul" },
];

const CC = "riscv64-unknown-elf-gcc";
const CFLAGS = [
  "-O2", "-march=rv64gc", "-mabi=lp64d", "-mcmodel=medany",
  // Freestanding: no libc. gcc must not turn our own memcpy loop into a call to memcpy.
  "-ffreestanding", "-fno-tree-loop-distribute-patterns", "-nostdlib", "-nostartfiles",
  "-Wall", "-Wextra",
];
const GUEST_RAM = 64 << 20;
/** Far above any kernel's needs: a core bug that loops forever still ends. */
const MAX_INSNS = 50_000_000_000n;

// dist/bench/cpu.js -> repository root
const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const programs = join(root, "bench", "programs");
const out = join(root, "bench", "out");

function fail(message: string): never {
  process.stderr.write(`bench:cpu: ${message}\n`);
  process.exit(1);
}

function mtime(path: string): number {
  return existsSync(path) ? statSync(path).mtimeMs : 0;
}

/** Build one kernel (skipped when the ELF is newer than every source). */
function build(kernel: Kernel): string {
  const common = ["crt.S", "htif.c", "htif.h", "link.ld"];
  const elf = join(out, `${kernel.name}.elf`);
  const newest = Math.max(...[...common, kernel.source].map((f) => mtime(join(programs, f))));
  if (mtime(elf) > newest) return elf;
  mkdirSync(out, { recursive: true });
  const args = [...CFLAGS, "-T", "link.ld", "crt.S", "htif.c", kernel.source, "-lgcc", "-o", elf];
  const r = spawnSync(CC, args, { cwd: programs, encoding: "utf8" });
  if (r.error) fail(`${CC} not found: install Debian's gcc-riscv64-unknown-elf (npm test installs it)`);
  if (r.status !== 0) fail(`building ${kernel.name} failed:\n${r.stderr}`);
  return elf;
}

interface Result {
  kernel: Kernel;
  insns: bigint;
  seconds: number;
  outcome: string;
  passed: boolean;
  console: string;
}

function run(kernel: Kernel, elf: string, jit: boolean): Result {
  const chunks: Uint8Array[] = [];
  const machine = new BareMachine(parseElf(new Uint8Array(readFileSync(elf))), {
    memBytes: GUEST_RAM,
    maxInsns: MAX_INSNS,
    console: (bytes) => chunks.push(Uint8Array.from(bytes)),
    jit: jit ? {} : false,
  });
  const start = performance.now();
  let outcome: string;
  let passed = false;
  try {
    const result = machine.run();
    if (result.kind === "exit") {
      passed = result.code === 0;
      outcome = passed ? "pass" : `FAIL (exit ${result.code})`;
    } else {
      outcome = `FAIL (${result.what} limit at pc 0x${result.pc.toString(16)})`;
    }
  } catch (e) {
    outcome = `FAIL (${(e as Error).message})`;
  }
  const seconds = (performance.now() - start) / 1000;
  const console = Buffer.concat(chunks).toString("latin1");
  return { kernel, insns: machine.vcpu.stats.instructions, seconds, outcome, passed, console };
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows
    .map((r) => r.map((cell, c) => (c > 0 && c < r.length - 1 ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join("  ").trimEnd())
    .join("\n");
}

/** QEMU TCG on the same ELF (spike machine: HTIF like ours); seconds, or a reason it did not run. */
function runQemu(elf: string): { seconds: number } | { error: string } {
  const start = performance.now();
  const r = spawnSync("qemu-system-riscv64", ["-M", "spike", "-bios", "none", "-kernel", elf, "-nographic", "-no-reboot"], {
    encoding: "latin1",
    timeout: 600_000,
  });
  const seconds = (performance.now() - start) / 1000;
  if (r.error) return { error: r.error.message };
  if (r.status !== 0) return { error: `exit ${r.status}` };
  return { seconds };
}

const mips = (insns: bigint, s: number) => (s > 0 ? Number(insns) / s / 1e6 : 0);

function main(): void {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { verbose: { type: "boolean", short: "v" }, runs: { type: "string", default: "3" } },
  });
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) fail(`--runs must be a positive integer, not ${values.runs}`);
  const unknown = positionals.filter((p) => !KERNELS.some((k) => k.name === p));
  if (unknown.length > 0) fail(`unknown kernel ${unknown.join(", ")} (kernels: ${KERNELS.map((k) => k.name).join(", ")})`);
  const selected = positionals.length > 0 ? KERNELS.filter((k) => positionals.includes(k.name)) : KERNELS;
  const haveQemu = spawnSync("sh", ["-c", "command -v qemu-system-riscv64"]).status === 0;

  const elves = selected.map((k) => build(k));
  process.stdout.write(`tsvisor CPU benchmark: node ${process.version}, ${cpus()[0]?.model ?? "unknown CPU"}\n\n`);
  const head = ["kernel", "guest insns", "interp MIPS", "JIT MIPS", "JIT/interp"];
  if (haveQemu) head.push("QEMU MIPS", "JIT/QEMU");
  head.push("result");
  const rows = [head];
  const results: Result[] = [];
  // Best of `runs` for each engine and QEMU: the short kernels' figures vary
  // from run to run with the host (V8's optimizing tier works in the background).
  const best = (engine: () => Result) => {
    let b = engine();
    for (let r = 1; r < runs && b.passed; r++) {
      const next = engine();
      if (!next.passed || next.seconds < b.seconds) b = next;
    }
    return b;
  };
  selected.forEach((kernel, i) => {
    const interp = best(() => run(kernel, elves[i], false));
    const jit = best(() => run(kernel, elves[i], true));
    results.push(interp, jit);
    const mi = mips(interp.insns, interp.seconds), mj = mips(jit.insns, jit.seconds);
    const row = [kernel.name, jit.insns.toLocaleString("en-US"), mi.toFixed(0), mj.toFixed(0), `${(mj / mi).toFixed(1)}x`];
    let outcome = interp.passed && jit.passed ? "pass" : `interpreter ${interp.outcome}, JIT ${jit.outcome}`;
    if (haveQemu) {
      let q = runQemu(elves[i]);
      for (let r = 1; r < runs && "seconds" in q; r++) {
        const next = runQemu(elves[i]);
        if (!("seconds" in next) || next.seconds < q.seconds) q = next;
      }
      if ("seconds" in q) {
        const mq = mips(jit.insns, q.seconds);
        row.push(mq.toFixed(0), `${(mj / mq).toFixed(2)}x`);
      } else {
        row.push("-", "-");
        outcome += ` (QEMU: ${q.error})`;
      }
    }
    row.push(outcome);
    rows.push(row);
  });
  process.stdout.write(table(rows) + "\n\n");
  for (const k of selected) process.stdout.write(`  ${k.name.padEnd(8)} ${k.what}\n`);
  if (!haveQemu) process.stdout.write("\nQEMU: qemu-system-riscv64 not installed (apt-get install qemu-system-misc), no ratio\n");
  for (const r of results) {
    if (values.verbose || !r.passed) process.stdout.write(`\n--- ${r.kernel.name} guest output ---\n${r.console}`);
  }
  process.exitCode = results.every((r) => r.passed) ? 0 : 1;
}

main();
