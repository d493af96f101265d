// SMP correctness as a Linux guest sees it: static riscv64 programs
// (testing/guest/*.c, built with Debian's riscv64-linux-gnu-gcc) run in the
// stock Debian guest through the real CLI with more threads than vCPUs, and
// check themselves; these tests assert their verdicts. They exist for the
// host engine that runs a VM's harts in parallel on worker threads:
//
// - smp.c: AMOs, LR/SC loops, spinlocks, a pthread mutex, a futex semaphore,
//   futex ping-pong and single-producer/single-consumer rings with
//   release/acquire ordering; every final count exact, every payload checked.
// - clock.c: CLOCK_MONOTONIC read millions of times by threads that hop
//   between vCPUs never goes backwards, neither against the thread's own
//   previous read nor against what another thread read before; the guest's
//   elapsed time agrees with the host's.
//
// Each program reaches the guest as the command's stdin (/tsvisor/stdin). The
// binaries are cached under build/guest/ and rebuilt when their source is newer.
import { test, before, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, renameSync, statSync } from "node:fs";
import { join } from "node:path";
import { pullImage, bin, root, BOOT_TIMEOUT_MS } from "../cli/test-tsvisor.js";

const CC = "riscv64-linux-gnu-gcc";
const OBJDUMP = "riscv64-linux-gnu-objdump";
const SRC_DIR = join(root, "src", "host", "testing", "guest");
const OUT_DIR = join(root, "build", "guest");
/** vCPUs for the runs: more than the host's cores on the 2-core machines the
 *  suite runs on, fewer than the programs' 8 threads. */
const CPUS = "4";

const haveCompiler = spawnSync(CC, ["--version"], { stdio: "ignore" }).status === 0;
const noCompiler = !haveCompiler && `${CC} not installed (npm test installs gcc-riscv64-linux-gnu and libc6-dev-riscv64-cross)`;

// The first boot of a fresh machine pulls the guest image; not inside a timed run.
before(() => {
  if (haveCompiler) pullImage();
});

const mtime = (path: string) => (existsSync(path) ? statSync(path).mtimeMs : 0);

/** build/guest/NAME, static, rebuilt when testing/guest/NAME.c is newer. */
function buildGuestProgram(name: string): string {
  const src = join(SRC_DIR, `${name}.c`);
  const out = join(OUT_DIR, name);
  if (mtime(out) > mtime(src)) return out;
  mkdirSync(OUT_DIR, { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  const r = spawnSync(CC, ["-static", "-O2", "-pthread", "-Wall", "-Wextra", "-o", tmp, src], { encoding: "utf8" });
  assert.equal(r.status, 0, `building ${src} failed:\n${r.stderr}`);
  renameSync(tmp, out); // whole or not at all: a concurrent run never sees half a binary
  return out;
}

/** The command that copies /tsvisor/stdin to an executable and runs it. */
function runProgram(args: string[]): string[] {
  return ["sh", "-c", `cp /tsvisor/stdin /tmp/p && chmod +x /tmp/p && exec /tmp/p ${args.join(" ")}`];
}

interface GuestRun {
  status: number | null;
  stdout: string;
  stderr: string;
  /** Host time (ms, performance.now) of the whole tsvisor process. */
  spawned: number;
  exited: number;
  /** Host time at which the first line starting with each watched prefix arrived. */
  lineAt: Map<string, number>;
}

/** `tsvisor run` with `program` as stdin, timestamping watched output lines as they arrive. */
function runGuest(program: Uint8Array, cpus: string, args: string[], watch: string[] = []): Promise<GuestRun> {
  return new Promise((resolve, reject) => {
    const spawned = performance.now();
    const child = spawn(process.execPath, [bin, "run", "--cpus", cpus, "--mem", "256M", "--timeout", "240", "--", ...runProgram(args)], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    const lineAt = new Map<string, number>();
    child.stdout.on("data", (d: Buffer) => {
      const at = performance.now();
      const lineStart = stdout.lastIndexOf("\n") + 1;
      stdout += d.toString("latin1");
      // A line counts once it is whole (its newline arrived).
      for (const line of stdout.slice(lineStart).split("\n").slice(0, -1))
        for (const prefix of watch) if (line.startsWith(prefix) && !lineAt.has(prefix)) lineAt.set(prefix, at);
    });
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), BOOT_TIMEOUT_MS);
    child.on("error", reject);
    child.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr, spawned, exited: performance.now(), lineAt });
    });
    child.stdin.on("error", () => {}); // a guest that fails to boot may not read it all
    child.stdin.end(program);
  });
}

/** Asserts the program's verdict: exit 0, an "ok" line per check, no FAIL line. */
function assertPassed(r: GuestRun, name: string, checks: string[], summary: RegExp): void {
  const lines = r.stdout.split("\n");
  const show = `${name} in the guest:\n${r.stdout}${r.stderr}`;
  assert.ok(!lines.some((l) => l.startsWith("FAIL")), show);
  assert.equal(r.status, 0, show);
  for (const check of checks) assert.ok(lines.some((l) => l.startsWith(`ok   ${check}: `)), `no "ok   ${check}:" line\n${show}`);
  assert.ok(lines.some((l) => summary.test(l)), `no summary line ${summary}\n${show}`);
}

const SMP_CHECKS = [
  "amo-add", "amo-minmax", "amo-logic", "amo-swap-lock", "lrsc-add",
  "lrsc-lock", "mutex", "futex-sem", "futex-pingpong", "spsc-ring",
];
const CLOCK_CHECKS = ["backwards-global", "backwards-own", "step", "sleep"];

test("the guest programs build, and the atomics in smp.c are the instructions they claim", { skip: noCompiler }, () => {
  buildGuestProgram("clock");
  const smp = buildGuestProgram("smp");
  const r = spawnSync(OBJDUMP, ["-d", "--no-show-raw-insn", smp], { encoding: "utf8", maxBuffer: 256 << 20 });
  assert.equal(r.status, 0, r.stderr);
  // Mnemonics in the check functions (work_*), as the compiler emitted them:
  // the inline asm and GCC's mapping of the __atomic builtins.
  const used = new Set<string>();
  let inWork = false;
  for (const line of r.stdout.split("\n")) {
    const fn = /^[0-9a-f]+ <([^>]+)>:$/.exec(line);
    if (fn) inWork = fn[1].startsWith("work_");
    else if (inWork) {
      const insn = /^\s+[0-9a-f]+:\s+((?:lr|sc|amo[a-z]+)\.[wd](?:\.aqrl|\.aq|\.rl)?)\s/.exec(line);
      if (insn) used.add(insn[1]);
    }
  }
  for (const want of [
    "lr.d", "sc.d", "lr.w.aq", "sc.w.rl", "sc.w",
    "amoadd.w", "amoadd.d", "amoswap.w.aq", "amoswap.w.rl", "amoxor.d", "amoxor.w.aqrl",
    "amoor.d.aq", "amoand.d.rl", "amoor.w", "amoand.w",
    "amomax.d", "amomaxu.d", "amomin.d", "amominu.d", "amomax.w", "amomaxu.w.aq", "amomin.w.rl", "amominu.w.aqrl",
  ]) assert.ok(used.has(want), `${want} not in smp's work_* functions; found: ${[...used].sort().join(" ")}`);
});

test(`smp: 8 threads on ${CPUS} vCPUs, AMOs, LR/SC, locks, futexes and release/acquire rings, every count exact`, { skip: noCompiler, timeout: 600_000 }, async () => {
  const program = readFileSync(buildGuestProgram("smp"));
  const r = await runGuest(program, CPUS, []);
  assertPassed(r, "smp", SMP_CHECKS, /^smp: all 10 checks passed$/);
});

/** Runs clock.c and checks its verdict and its elapsed time against the host's. */
async function clockTest(t: TestContext, cpus: string): Promise<void> {
  const program = readFileSync(buildGuestProgram("clock"));
  const r = await runGuest(program, cpus, [], ["clock: start", "clock: elapsed "]);
  assertPassed(r, "clock", CLOCK_CHECKS, /^clock: all 4 checks passed$/);
  // The guest timed itself from just after printing "clock: start" (drained
  // from its tty first) to just before "clock: elapsed": the host saw those
  // lines arrive around the same moments. Boot is outside that span.
  const elapsed = /^clock: elapsed (\d+) ns$/m.exec(r.stdout);
  assert.ok(elapsed, r.stdout);
  const guestMs = Number(elapsed[1]) / 1e6;
  const start = r.lineAt.get("clock: start");
  const end = r.lineAt.get("clock: elapsed ");
  assert.ok(start !== undefined && end !== undefined, r.stdout);
  const hostMs = end - start;
  const facts = `guest ${guestMs.toFixed(1)} ms, host ${hostMs.toFixed(1)} ms between the lines, ${(r.exited - r.spawned).toFixed(0)} ms for the whole run`;
  t.diagnostic(facts);
  // Never more than the host saw: the whole process is a hard bound; between
  // the lines, allow for the start line's trip from guest to this process.
  assert.ok(guestMs <= r.exited - r.spawned, `the guest's clock ran ahead of the host's: ${facts}`);
  assert.ok(guestMs <= hostMs + 250, `the guest's clock ran ahead of the host's: ${facts}`);
  // Not much less either: the end line's trip can only lengthen the host's
  // span by milliseconds, unless the host stalls for a second or more.
  assert.ok(guestMs >= hostMs * 0.5, `the guest's clock lost time against the host's: ${facts}`);
}

test("clock on one vCPU: monotonic for 8 threads, and the guest's elapsed time agrees with the host's", { skip: noCompiler, timeout: 600_000 }, async (t) => {
  await clockTest(t, "1");
});

test(`clock on ${CPUS} vCPUs: monotonic across vCPUs for 8 migrating threads, and the guest's elapsed time agrees with the host's`, { skip: noCompiler, timeout: 600_000 }, async (t) => {
  await clockTest(t, CPUS);
});
