// User programs in the Debian guest, tsvisor against QEMU's TCG (issue 16):
// the same kernel, initramfs, binaries and data under both, in the same run,
// each program timed by the guest's own clock (CLOCK_MONOTONIC), so boot is
// not counted.
//
// - C programs of our own (bench/programs/guestbench.c, static, built with
//   Debian's riscv64-linux-gnu-gcc -O2): sort, hash, chase (pointer chasing
//   over 16 MiB), matmul and nbody (floating point), string, interp (a
//   bytecode interpreter), lz (a compressor and decompressor). "long": about
//   a second under QEMU, steady state; "short": one unit of work, tens of
//   milliseconds, where code run for the first time dominates.
// - busybox tools on 4 MB of generated text: gzip, sha256sum, sort, awk.
// - parallel: two threads of `hash` in a guest with 2 vCPUs (both engines).
//
// Each program prints a checksum of its work; the two engines must agree,
// so a wrong result fails the bench instead of being timed. Every figure is
// the best of --reps runs in one boot (median in brackets); the ratio is
// QEMU's time / tsvisor's (above 1: tsvisor is faster), and the geometric
// mean is over every row. Figures only, no assertions.
//
//   npm run bench:guest
//   node dist/bench/guest.js --reps 1 --only sort,gzip --no-qemu --verbose

import { readFileSync, mkdirSync, statSync, existsSync } from "node:fs";
import { cpus as hostCpus } from "node:os";
import { dirname, join } from "node:path";
import { spawnSync } from "node:child_process";
import { parseArgs } from "node:util";
import { log, prelude, prepareGuestBench, root, type Engine, type GuestBench } from "./guest-run.js";

const MEM = "512M";
/** Scale of each program's "long" run: about a second under QEMU TCG here. */
const LONG: Record<string, number> = { sort: 35, hash: 150, chase: 3, matmul: 65, nbody: 100, string: 90, interp: 20, lz: 16 };
const TOOLS: Record<string, string> = {
  gzip: "gzip -c /tmp/data",
  sha256sum: "sha256sum /tmp/data",
  sort: "sort /tmp/data",
  awk: "awk '{ s += $2; n[$1]++ } END { print s, n[\"page\"] }' /tmp/data",
};
const PARALLEL_SCALE = 60;
const DATA_BYTES = 4_000_000;

function fail(message: string): never {
  process.stderr.write(`bench:guest: ${message}\n`);
  process.exit(1);
}

const { values } = (() => {
  try {
    return parseArgs({
      options: { reps: { type: "string" }, only: { type: "string" }, "no-qemu": { type: "boolean" }, verbose: { type: "boolean" } },
      allowPositionals: false,
    });
  } catch (e) {
    fail((e as Error).message);
  }
})();
const reps = values.reps === undefined ? 3 : Number(values.reps);
if (!Number.isInteger(reps) || reps < 1 || reps > 20) fail("--reps: expected 1..20");
const known = [...Object.keys(LONG), ...Object.keys(TOOLS).map((t) => `tool-${t}`), "parallel"];
const only = values.only?.split(",").map((s) => (TOOLS[s] && !LONG[s] ? `tool-${s}` : s));
for (const o of only ?? []) if (!known.includes(o) && !known.includes(`tool-${o}`)) fail(`--only: unknown program '${o}' (${known.join(", ")})`);
const wanted = (name: string) => !only || only.includes(name) || (name.startsWith("tool-") && only.includes(name.slice(5)));

/** bench/out/guestbench, rebuilt when its source is newer. */
function buildGuestbench(): Uint8Array {
  const src = join(root, "bench", "programs", "guestbench.c");
  const out = join(root, "bench", "out", "guestbench");
  if (!existsSync(out) || statSync(out).mtimeMs <= statSync(src).mtimeMs) {
    mkdirSync(dirname(out), { recursive: true });
    const r = spawnSync("riscv64-linux-gnu-gcc", ["-static", "-O2", "-s", "-Wall", "-Wextra", "-o", out, src, "-lm", "-lpthread"], { encoding: "utf8" });
    if (r.error) throw new Error("riscv64-linux-gnu-gcc not found: install Debian's gcc-riscv64-linux-gnu and libc6-dev-riscv64-cross");
    if (r.status !== 0) throw new Error(`building ${src} failed:\n${r.stderr}`);
  }
  return readFileSync(out);
}

/** The guest script: its lines "RUN CLASS NAME SECONDS SUM" are the figures. */
function script(helperBytes: number, smp: boolean): string {
  const lines = [
    prelude(`head -c ${helperBytes} /tsvisor/stdin > /tmp/p`),
    "tail -c +" + (helperBytes + 1) + " /tsvisor/stdin > /tmp/g && chmod +x /tmp/g || fail guestbench",
    "settle",
    // guestbench prints "BENCH NAME elapsed S sum X"
    "prog() { r=$(/tmp/g $2 $3) || fail $2; set -- $1 $r; echo \"RUN $1 $3 $5 $7\"; }",
    "tool() { /tmp/p time sh -c \"$2\" > /tmp/out 2>/tmp/t || fail $1; echo \"RUN tool $1 $(sed -n 's/^elapsed //p' /tmp/t) $(md5sum < /tmp/out | cut -c1-16)\"; }",
  ];
  if (smp) {
    if (wanted("parallel")) for (let r = 0; r < reps; r++) lines.push(`prog smp parallel ${PARALLEL_SCALE}`);
    return lines.join("\n");
  }
  for (const [name, scale] of Object.entries(LONG)) {
    if (!wanted(name)) continue;
    // The short run first: its code has not run in this guest yet.
    lines.push(`prog short ${name} 1`);
    for (let r = 0; r < reps; r++) lines.push(`prog long ${name} ${scale}`);
  }
  const tools = Object.entries(TOOLS).filter(([t]) => wanted(`tool-${t}`));
  if (tools.length) {
    lines.push(`/tmp/g gen ${DATA_BYTES} > /tmp/data || fail gen`);
    for (let r = 0; r < reps; r++) for (const [t, cmd] of tools) lines.push(`tool ${t} ${shq(cmd)}`);
  }
  return lines.join("\n");
}

const shq = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** class/name -> seconds of each run, and the checksum (all runs agree). */
type Figures = Map<string, { secs: number[]; sum: string }>;

function parse(out: string, label: string): Figures {
  const f: Figures = new Map();
  for (const line of out.split(/\r?\n/)) {
    const m = /^RUN (\w+) (\S+) ([\d.]+) (\w+)\s*$/.exec(line.trim());
    if (!m) continue;
    const key = `${m[1]}/${m[2]}`;
    const e = f.get(key) ?? { secs: [], sum: m[4] };
    if (e.sum !== m[4]) throw new Error(`${label}: ${key} gave two checksums (${e.sum}, ${m[4]})`);
    e.secs.push(Number(m[3]));
    f.set(key, e);
  }
  return f;
}

async function runEngine(b: GuestBench, engine: Engine, stdin: Uint8Array, helperBytes: number): Promise<Figures> {
  const single = [...Object.keys(LONG), ...Object.keys(TOOLS).map((t) => `tool-${t}`)].some(wanted);
  const out: Figures = new Map();
  for (const smp of [false, true]) {
    if (smp ? !wanted("parallel") : !single) continue;
    const label = `${engine}${smp ? " (2 vCPUs)" : ""}`;
    log(`${label}: booting`);
    const t0 = performance.now();
    const text = await b.runner.run({
      engine, script: script(helperBytes, smp), stdin, mem: MEM,
      tsvisorArgs: ["--net", "none", ...(smp ? ["--cpus", "2"] : [])],
      qemuArgs: smp ? ["-smp", "2"] : [],
    }, b.image, label);
    for (const [k, v] of parse(text, label)) out.set(k, v);
    log(`${label}: done in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  }
  return out;
}

const best = (xs: number[]) => Math.min(...xs);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];

async function main(): Promise<void> {
  let b: GuestBench;
  let stdin: Uint8Array;
  let helperBytes: number;
  try {
    b = await prepareGuestBench("guest", values["no-qemu"] === true, values.verbose === true);
    helperBytes = b.helper.length;
    stdin = Buffer.concat([b.helper, buildGuestbench()]);
  } catch (e) {
    fail((e as Error).message);
  }
  const date = new Date().toISOString().slice(0, 10);
  console.log(`bench:guest on ${hostCpus()[0]?.model.trim() ?? "?"} (${hostCpus().length} cores), Node ${process.version}, ${date}; Debian kernel ${b.kernelVersion}, ${MEM}, best of ${reps}`);
  const figures = new Map<Engine, Figures>();
  try {
    for (const engine of b.engines) figures.set(engine, await runEngine(b, engine, stdin, helperBytes));
  } catch (e) {
    b.runner.stopAll();
    fail((e as Error).message.split("\n").join("\n  "));
  }
  const ts = figures.get("tsvisor")!;
  const qemu = figures.get("qemu");
  const rows: { key: string; ts: number; tsMed: number; q?: number }[] = [];
  for (const [key, f] of ts) {
    const q = qemu?.get(key);
    if (qemu && !q) fail(`QEMU gave no figure for ${key}`);
    if (q && q.sum !== f.sum) fail(`${key}: tsvisor and QEMU computed different results (${f.sum} vs ${q.sum})`);
    rows.push({ key, ts: best(f.secs), tsMed: median(f.secs), q: q && best(q.secs) });
  }
  const w = Math.max(...rows.map((r) => r.key.length), 8);
  console.log(`${"program".padEnd(w)} ${"tsvisor s (median)".padStart(20)}${qemu ? ` ${"QEMU TCG s".padStart(11)} ${"QEMU/tsvisor".padStart(13)}` : ""}`);
  for (const r of rows) {
    let line = `${r.key.padEnd(w)} ${`${r.ts.toFixed(3)} (${r.tsMed.toFixed(3)})`.padStart(20)}`;
    if (r.q !== undefined) line += ` ${r.q.toFixed(3).padStart(11)} ${(r.q / r.ts).toFixed(2).padStart(12)}x`;
    console.log(line);
  }
  if (qemu) {
    const geo = (rs: typeof rows) => Math.exp(rs.reduce((s, r) => s + Math.log(r.q! / r.ts), 0) / rs.length);
    const by = (cls: string) => rows.filter((r) => r.key.startsWith(`${cls}/`));
    console.log(`geometric mean QEMU/tsvisor: ${geo(rows).toFixed(2)}x over ${rows.length} (long ${by("long").length ? geo(by("long")).toFixed(2) : "-"}x, short ${by("short").length ? geo(by("short")).toFixed(2) : "-"}x, tools ${by("tool").length ? geo(by("tool")).toFixed(2) : "-"}x, smp ${by("smp").length ? geo(by("smp")).toFixed(2) : "-"}x)`);
  } else {
    console.log("(QEMU not installed: tsvisor's figures only; install Debian's qemu-system-misc for the comparison)");
  }
}

await main();
