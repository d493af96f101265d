// The host engine's benchmark (npm run bench:host): what a user of many VMs
// on one machine notices, with real guests through the Host API.
//
//   latency   MMIO exit round trip (a vCPU's exit to the main thread's device
//             and back) and device interrupt latency (main thread -> a vCPU
//             spinning in translated code, or one blocked in WFI), median and
//             p99, from a bare S-mode probe (bench/programs/host-latency.c).
//   smp       a CPU-bound parallel program in the Debian guest, 2 threads, on
//             1 and on 2 vCPUs: the speed-up.
//   fair      3 VMs running CPU hogs under weights 256/256/512 on 2 pCPUs
//             (expected shares 25/25/50 %), then a VM capped at 30 % of one
//             pCPU among hogs: shares and errors in percentage points.
//   density   idle Debian guests (128 MiB, booted to a shell command that
//             sleeps) started until N run or the pool is full: host memory
//             and CPU while they idle. (The issue asks for 64 MiB guests; the
//             stock kernel and initramfs need 79 MiB to load and run out of
//             memory unpacking the initramfs below 128 MiB.)
//   boot      one Debian guest booting to poweroff (`true`) through the
//             engine, best of 3 (bench:boot times the same through the CLI).
//
//   npm run bench:host
//   node dist/bench/host.js --only latency,smp --density-vms 20 --window 20
//
// Figures only, no pass/fail: the machine's noise is the reader's to judge.

import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Host, type Vm } from "../src/host/host.js";
import { monoNs } from "../src/host/pcpu-protocol.js";
import { buildBareKernel, haveBareCompiler } from "../src/host/testing/bare-kernel.js";
import { pullDebianImage } from "../src/images/debian.js";
import { parseKernelImage, type KernelImage } from "../src/arch/riscv/boot-image.js";
import { withCommand, DEFAULT_CMDLINE } from "../src/cli/run-linux.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const MiB = 1 << 20;

const { values: opts } = parseArgs({
  options: {
    only: { type: "string", default: "latency,smp,fair,density,boot" },
    "density-vms": { type: "string", default: "100" },
    window: { type: "string", default: "20" },
    pcpus: { type: "string", default: "2" },
  },
});
const sections = new Set(opts.only.split(","));
for (const s of sections) {
  if (!["latency", "smp", "fair", "density", "boot"].includes(s)) fail(`unknown section '${s}' (latency, smp, fair, density, boot)`);
}
const densityVms = Number(opts["density-vms"]);
const windowS = Number(opts.window);
const pcpus = Number(opts.pcpus);
if (!Number.isInteger(densityVms) || densityVms < 1) fail("--density-vms must be a positive integer");
if (!(windowS >= 1)) fail("--window must be at least 1 (seconds)");
if (!Number.isInteger(pcpus) || pcpus < 1) fail("--pcpus must be a positive integer");

function fail(message: string): never {
  process.stderr.write(`bench:host: ${message}\n`);
  process.exit(1);
}
const say = (line: string) => process.stdout.write(`${line}\n`);
const progress = (line: string) => process.stderr.write(`bench:host: ${line}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (x: number) => `${(100 * x).toFixed(1)} %`;

function percentiles(samples: number[]): { p50: number; p99: number; max: number } {
  const s = [...samples].sort((a, b) => a - b);
  return { p50: s[Math.floor(s.length / 2)], p99: s[Math.floor(s.length * 0.99)], max: s[s.length - 1] };
}
const us = (ns: number) => `${(ns / 1000).toFixed(1)} us`;

// ---- guests ----------------------------------------------------------------------------

let debian: { kernel: KernelImage; initrd: Uint8Array } | undefined;
async function debianGuest() {
  if (!debian) {
    const image = await pullDebianImage({ progress: (m) => progress(m) });
    debian = {
      kernel: parseKernelImage(new Uint8Array(readFileSync(image.kernelPath))),
      initrd: new Uint8Array(readFileSync(image.initrdPath)),
    };
  }
  return debian;
}

interface Guest {
  vm: Vm;
  output(): string;
  /** Resolves when the console shows `text`. */
  sees(text: string): Promise<void>;
}

async function linuxGuest(host: Host, name: string, argv: string[], o: { cpus?: number; memBytes?: number; stdin?: Uint8Array; weight?: number; capPct?: number } = {}): Promise<Guest> {
  const { kernel, initrd } = await debianGuest();
  let text = "";
  const waiters: { text: string; resolve(): void }[] = [];
  const vm = host.createVm({
    name, kernel, cpus: o.cpus ?? 1, memBytes: o.memBytes ?? 128 * MiB, cmdline: DEFAULT_CMDLINE,
    initrd: withCommand(initrd, argv, o.stdin), weight: o.weight, capPct: o.capPct,
    consoleOut: (b) => {
      text += Buffer.from(b).toString("latin1");
      for (const w of waiters.splice(0)) {
        if (text.includes(w.text)) w.resolve();
        else waiters.push(w);
      }
    },
  });
  return {
    vm,
    output: () => text,
    sees: (t) =>
      text.includes(t)
        ? Promise.resolve()
        : new Promise<void>((resolve, reject) => {
            waiters.push({ text: t, resolve });
            void vm.waitForEnd().then((end) => reject(new Error(`${name} ended (${end.kind}) before printing '${t}':\n${text.slice(-2000)}`)));
          }),
  };
}

/** Run time of each VM's vCPUs (ns, summed). */
const runNs = (vm: Vm) => vm.stats().vcpus.reduce((a, c) => a + c.runNs, 0);

// ---- latency -----------------------------------------------------------------------------

async function latency(): Promise<void> {
  if (!haveBareCompiler()) fail("riscv64-unknown-elf-gcc is missing (npm run bench:host installs it)");
  say("## Exit and interrupt latency (bare S-mode probe, 2 vCPUs, pCPUs " + pcpus + ")");
  const kernel = buildBareKernel(join(root, "bench", "programs", "host-latency.c"));
  const host = await Host.create({ pcpus });
  try {
    let text = "";
    const vm = host.createVm({ name: "probe", kernel, cmdline: "", cpus: 2, memBytes: 64 * MiB, consoleOut: (b) => { text += Buffer.from(b).toString("latin1"); } });
    vm.start();
    const deadline = Date.now() + 120_000;
    while (!/ready 0x[0-9a-f]+\n/.test(text)) {
      if (Date.now() > deadline || vm.state !== "running") fail(`the latency probe did not get ready:\n${text}`);
      await sleep(10);
    }
    const m = /mmio n=(\d+) min=(\d+) p50=(\d+) p90=(\d+) p99=(\d+) max=(\d+)/.exec(text);
    if (!m) fail(`no mmio line from the probe:\n${text}`);
    const tick = 100; // ns per 10 MHz tick
    say(`MMIO exit round trip (vCPU -> main thread -> vCPU, ${m[1]} samples): median ${us(+m[3] * tick)}, p90 ${us(+m[4] * tick)}, p99 ${us(+m[5] * tick)}, max ${us(+m[6] * tick)} (one-thread engine: ~0.35 us, npm run bench:exit)`);

    const machine = vm.vmm!;
    const gpa = BigInt(/ready (0x[0-9a-f]+)/.exec(text)![1]);
    const probe = (machine.p2m.hostFrame(gpa) + Number(gpa & 0xfffn)) >>> 2;
    const words = host.pool.words;
    const IRQS = probe, DONE = probe + 1, MODE = probe + 2;
    for (const [mode, label] of [[0, "vCPU spinning in translated code"], [1, "vCPU blocked in WFI"]] as const) {
      Atomics.store(words, MODE, mode);
      await sleep(50);
      const samples: number[] = [];
      const calls: number[] = [];
      for (let i = 0; i < 2000; i++) {
        const irqs = Atomics.load(words, IRQS);
        const done = Atomics.load(words, DONE);
        const t0 = monoNs();
        machine.consoleInput(Uint8Array.of(0x61));
        machine.afterExit(); // the UART takes the byte and raises its line now
        calls.push(monoNs() - t0);
        // Busy-wait: the handler's first store is what is timed.
        while (Atomics.load(words, IRQS) === irqs) {
          if (monoNs() - t0 > 2e9) fail(`no interrupt reached the probe (${label})`);
        }
        samples.push(monoNs() - t0);
        // The handler claims and completes through MMIO exits the event loop serves.
        while (Atomics.load(words, DONE) === done) await new Promise((r) => setImmediate(r));
        if (mode === 1) await sleep(1); // let it block again
      }
      const p = percentiles(samples);
      const c = percentiles(calls);
      say(`device interrupt, main thread -> ${label}: median ${us(p.p50)}, p99 ${us(p.p99)}, max ${us(p.max)}; of which raising it (UART, PLIC, scheduler wake on the main thread): median ${us(c.p50)}, p99 ${us(c.p99)}`);
    }
    await vm.stop();
  } finally {
    await host.close();
  }
}

// ---- SMP scaling ---------------------------------------------------------------------------

function buildParallel(): Uint8Array {
  const out = join(root, "build", "bench", "parallel");
  mkdirSync(dirname(out), { recursive: true });
  const r = spawnSync("riscv64-linux-gnu-gcc", ["-static", "-O2", "-pthread", "-o", out, join(root, "bench", "programs", "parallel.c")], { encoding: "utf8" });
  if (r.status !== 0) fail(`building parallel.c failed (npm run bench:host installs riscv64-linux-gnu-gcc):\n${r.stderr ?? ""}`);
  return new Uint8Array(readFileSync(out));
}

async function smp(): Promise<void> {
  say(`## SMP scaling (Debian guest, 2 threads of an integer kernel, pCPUs ${pcpus})`);
  const binary = buildParallel();
  const host = await Host.create({ pcpus });
  const rounds = "30000";
  try {
    const ms: Record<number, number> = {};
    for (const cpus of [1, 2]) {
      const best: number[] = [];
      for (let run = 0; run < 2; run++) {
        const g = await linuxGuest(host, `smp${cpus}-${run}`, ["sh", "-c", `cp /tsvisor/stdin /tmp/p && chmod +x /tmp/p && exec /tmp/p 2 ${rounds}`], { cpus, stdin: binary });
        g.vm.start();
        const end = await g.vm.waitForEnd();
        const m = /parallel threads=2 ms=(\d+)/.exec(g.output());
        if (end.kind !== "poweroff" || !m) fail(`the parallel program failed on ${cpus} vCPUs (${end.kind}):\n${g.output().slice(-2000)}`);
        best.push(+m[1]);
        await g.vm.destroy();
      }
      ms[cpus] = Math.min(...best);
      say(`${cpus} vCPU${cpus > 1 ? "s" : ""}: ${ms[cpus]} ms (guest clock, best of 2: ${best.join(", ")})`);
    }
    say(`speed-up of 2 vCPUs over 1: ${(ms[1] / ms[2]).toFixed(2)}x (target 1.8x; ideal 2x)`);
  } finally {
    await host.close();
  }
}

// ---- fairness ------------------------------------------------------------------------------

const HOG = ["sh", "-c", "echo hog-ready; while :; do :; done"];

/** Shares of the VMs' total run time (and of wall time) over the window. */
async function measureShares(vms: Vm[]): Promise<{ ofTotal: number[]; ofOnePcpu: number[] }> {
  const r0 = vms.map(runNs);
  const t0 = monoNs();
  await sleep(windowS * 1000);
  const d = vms.map((vm, i) => runNs(vm) - r0[i]);
  const wall = monoNs() - t0;
  const total = d.reduce((a, b) => a + b, 0);
  return { ofTotal: d.map((x) => x / total), ofOnePcpu: d.map((x) => x / wall) };
}

async function fair(): Promise<void> {
  say(`## Fairness (1-vCPU Debian guests running a shell busy loop, pCPUs ${pcpus}, ${windowS} s windows)`);
  const host = await Host.create({ pcpus });
  try {
    const weights = [256, 256, 512];
    const guests = await Promise.all(weights.map((weight, i) => linuxGuest(host, `w${i}`, HOG, { weight, memBytes: 128 * MiB })));
    for (const g of guests) g.vm.start();
    await Promise.all(guests.map((g) => g.sees("hog-ready")));
    const s = await measureShares(guests.map((g) => g.vm));
    const expected = weights.map((w) => w / weights.reduce((a, b) => a + b, 0));
    const err = Math.max(...s.ofTotal.map((x, i) => Math.abs(x - expected[i]))) * 100;
    say(`weights ${weights.join("/")}: shares ${s.ofTotal.map(pct).join(" / ")} (expected ${expected.map(pct).join(" / ")}); largest error ${err.toFixed(1)} points (target < 3)`);
    say(`  of one pCPU each: ${s.ofOnePcpu.map(pct).join(" / ")}`);
    for (const g of guests) await g.vm.destroy();

    const capped = await linuxGuest(host, "cap30", HOG, { capPct: 30, memBytes: 128 * MiB });
    const hogs = await Promise.all([0, 1].map((i) => linuxGuest(host, `hog${i}`, HOG, { memBytes: 128 * MiB })));
    for (const g of [capped, ...hogs]) g.vm.start();
    await Promise.all([capped, ...hogs].map((g) => g.sees("hog-ready")));
    const c = await measureShares([capped, ...hogs].map((g) => g.vm));
    const capErr = Math.abs(c.ofOnePcpu[0] - 0.3) * 100;
    say(`cap 30 % next to 2 uncapped hogs: the capped VM ran ${pct(c.ofOnePcpu[0])} of one pCPU; error ${capErr.toFixed(1)} points (target < 3); the hogs ${c.ofOnePcpu.slice(1).map(pct).join(" / ")}`);
  } finally {
    await host.close();
  }
}

// ---- density ---------------------------------------------------------------------------------

const DENSITY_MEM = 128 * MiB;

async function density(): Promise<void> {
  say(`## Density (idle Debian guests, 128 MiB, 1 vCPU, booted to 'sleep'; pCPUs ${pcpus})`);
  const host = await Host.create({ pcpus });
  const guests: Guest[] = [];
  let stoppedBy = "";
  const t0 = monoNs();
  try {
    // A few boot at a time: a hundred booting at once would each get 2 % of
    // a pCPU and trip the guests' own stall detectors.
    const inFlight = new Set<Promise<void>>();
    for (let i = 0; i < densityVms && !stoppedBy; i++) {
      if (host.pool.limitBytes - host.pool.framesInUse * 4096 < DENSITY_MEM) {
        stoppedBy = `the pool (${(host.pool.limitBytes / MiB).toFixed(0)} MiB) has no room for another guest's RAM`;
        break;
      }
      const g = await linuxGuest(host, `idle${i}`, ["sh", "-c", "echo idle-ready; exec sleep 1000000"], { memBytes: DENSITY_MEM });
      try {
        g.vm.start();
      } catch (e) {
        stoppedBy = `VM ${i + 1} could not start: ${(e as Error).message}`;
        break;
      }
      guests.push(g);
      const booted = g.sees("idle-ready").catch((e: Error) => { stoppedBy ||= `VM ${i + 1}: ${e.message.split("\n")[0]}`; });
      const tracked: Promise<void> = booted.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
      if (inFlight.size >= 2 * pcpus) await Promise.race(inFlight);
      if ((i + 1) % 10 === 0) progress(`density: ${i + 1} started, pool ${(host.pool.framesInUse * 4096 / MiB).toFixed(0)} MiB in use`);
    }
    await Promise.all(inFlight);
    const running = guests.filter((g) => g.vm.state === "running" && g.output().includes("idle-ready"));
    say(`${running.length} guests booted and idle in ${((monoNs() - t0) / 1e9).toFixed(0)} s${stoppedBy ? `; stopped early: ${stoppedBy}` : ""}`);
    await sleep(5000); // let boot's deferred work settle
    const cpu0 = process.cpuUsage();
    const w0 = monoNs();
    await sleep(windowS * 1000);
    const cpu = process.cpuUsage(cpu0);
    const wall = (monoNs() - w0) / 1e3;
    const mem = process.memoryUsage();
    const pool = host.pool.framesInUse * 4096;
    say(`while idle: host CPU ${pct((cpu.user + cpu.system) / wall)} of one core (target < 2 % for 100 guests)`);
    say(`memory: guest frames ${(pool / MiB).toFixed(0)} MiB (${(pool / MiB / Math.max(running.length, 1)).toFixed(1)} MiB per guest), process RSS ${(mem.rss / MiB).toFixed(0)} MiB`);
  } finally {
    await host.close();
  }
}

// ---- single-VM boot -------------------------------------------------------------------------

async function boot(): Promise<void> {
  say("## Single-VM boot to poweroff through the engine (`true`, 1 vCPU, 256 MiB)");
  const host = await Host.create({ pcpus });
  try {
    const times: number[] = [];
    for (let run = 0; run < 3; run++) {
      const g = await linuxGuest(host, `boot${run}`, ["true"], { memBytes: 256 * MiB });
      const t0 = monoNs();
      g.vm.start();
      const end = await g.vm.waitForEnd();
      if (end.kind !== "poweroff") fail(`boot ${run} ended with ${end.kind}`);
      times.push((monoNs() - t0) / 1e9);
      await g.vm.destroy();
    }
    say(`best ${Math.min(...times).toFixed(2)} s (runs: ${times.map((t) => t.toFixed(2)).join(", ")})`);
  } finally {
    await host.close();
  }
}

// ---- main ----------------------------------------------------------------------------------

for (const [name, fn] of [["latency", latency], ["smp", smp], ["fair", fair], ["density", density], ["boot", boot]] as const) {
  if (!sections.has(name)) continue;
  progress(`${name}...`);
  await fn();
  say("");
}
process.exit(0);
