// The snapshot benchmark (npm run bench:snapshot, issue 15): what snapshots,
// restores and clones cost, with a real Debian guest through the Host API.
//
//   snapshot  a booted Debian guest (256 MiB, 1 vCPU) idling in a shell loop:
//             full snapshot (file size, write time, pause), then a diff
//             snapshot a second later.
//   restore   that snapshot restored again and again: the time restoreVm()
//             takes, and the time until the guest's vCPU has executed its
//             first instructions (restore to running), and to its next line
//             on the console.
//   clones    N VMs restored from the one snapshot, left running 2 s: time per
//             clone and host frames per clone (pages a clone touched since
//             come from the file into its own frames).
//   migrate   live migration between two hosts in this process over
//             127.0.0.1: an idle guest (bare patterns.c, 64 MiB, waiting with
//             60 MiB written) and a memory-writing one (bare dirty.c, 8 MiB
//             rewritten without pause), pre-copy and post-copy: total time,
//             data sent, rounds, throttle, downtime.
//   faststart `tsvisor run -- true` from the cached snapshot (warm) and with
//             --no-snapshot (cold), wall time from spawn to exit; the same
//             for `run --share DIR:/mnt -- ls /mnt`.
//
// Figures are printed, never asserted. Options:
//   --only a,b    sections: snapshot, restore, clones, migrate, faststart (default all)
//   --clones N    (default 8)
//   --runs N      restores to time (default 20)

import { mkdtempSync, rmSync, statSync } from "node:fs";
import { cpus as hostCpus, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Host, type Vm } from "../src/host/host.js";
import { defineGuest } from "../src/host/testing/guests.js";
import { monoNs } from "../src/host/pcpu-protocol.js";
import { buildBareKernel, bareProgram } from "../src/host/testing/bare-kernel.js";
import { benchFastStart } from "./fast-start.js";

const MiB = 1 << 20;
const { values: opts } = parseArgs({
  options: {
    only: { type: "string", default: "snapshot,restore,clones,migrate,faststart" },
    clones: { type: "string", default: "8" },
    runs: { type: "string", default: "20" },
  },
});
const sections = new Set(opts.only.split(","));
const nClones = Number(opts.clones);
const runs = Number(opts.runs);
const ALL = ["snapshot", "restore", "clones", "migrate", "faststart"];
for (const s of sections) if (!ALL.includes(s)) fail(`unknown section '${s}' (${ALL.join(", ")})`);
if (!Number.isInteger(nClones) || nClones < 1) fail("--clones must be a positive integer");
if (!Number.isInteger(runs) || runs < 1) fail("--runs must be a positive integer");

function fail(message: string): never {
  process.stderr.write(`bench:snapshot: ${message}\n`);
  process.exit(1);
}
const say = (line = "") => process.stdout.write(`${line}\n`);
const t00 = monoNs();
const progress = (line: string) => process.stderr.write(`bench:snapshot [${((monoNs() - t00) / 1e9).toFixed(0)} s] ${line}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ms = (ns: number) => ns / 1e6;
const f2 = (x: number) => x.toFixed(2);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const p90 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.9))];

const dir = mkdtempSync(join(tmpdir(), "tsvisor-bench-snapshot-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

/** The guest prints a dot every 10 ms: a restored clone shows it runs within 10 ms of guest time. */
const TICKER = ["sh", "-c", "echo ready; while :; do usleep 10000; echo -n .; done"];

function instructions(vm: Vm): number {
  return vm.stats().vcpus.reduce((n, v) => n + v.instructions, 0);
}

async function migrations(): Promise<void> {
  const TOKEN = "bench-migration-token";
  const target = await Host.create({ pcpus: 2 });
  const source = await Host.create({ pcpus: 2 });
  try {
    const l = await target.listenForMigrations({ port: 0, token: TOKEN, config: () => ({ consoleOut: () => {}, warn: () => {} }) });
    const rows: string[] = [];
    const cases: [string, string, Parameters<Vm["migrate"]>[1]][] = [
      ["idle, pre-copy", "patterns", {}],
      ["idle, post-copy", "patterns", { postcopy: true }],
      ["writing 8 MiB, pre-copy (300 ms limit)", "dirty", {}],
      ["writing 8 MiB, pre-copy (30 ms limit)", "dirty", { maxDowntimeMs: 30 }],
      ["writing 8 MiB, post-copy", "dirty", { postcopy: true }],
    ];
    for (const [what, program, o] of cases) {
      progress(`migrating: ${what}`);
      let text = "";
      const vm = source.createVm({ name: `m${rows.length}`, kernel: buildBareKernel(bareProgram(program)), cmdline: "", cpus: 2, memBytes: 64 * MiB, consoleOut: (b) => { text += Buffer.from(b).toString(); }, warn: () => {} });
      vm.start();
      while (!text.includes("written")) await sleep(10);
      if (program === "dirty") await sleep(500);
      const r = await vm.migrate({ host: "127.0.0.1", port: l.port, token: TOKEN }, o);
      rows.push(`  ${what.padEnd(40)} ${f2(r.totalMs / 1000).padStart(6)} s  ${f2(r.sentBytes / MiB).padStart(7)} MiB  ${String(r.rounds).padStart(3)} rounds  throttle ${String(r.maxThrottlePct).padStart(2)} %  downtime ${f2(r.downtimeMs)} ms` +
        (r.postcopy ? `  (post-copy: ${r.postcopy.pages} pages after the switch, ${r.postcopy.fetched} on demand, ${f2(r.postcopy.ms)} ms)` : ""));
      for (const v of target.vms) await v.destroy();
    }
    say();
    say("Live migration between two hosts in one process over 127.0.0.1 (64 MiB bare guests, 2 vCPUs; target downtime for an idle guest: under 30 ms)");
    for (const r of rows) say(r);
  } finally {
    await source.close();
    await target.close();
  }
}

async function main(): Promise<void> {
  say(`bench:snapshot on ${hostCpus()[0]?.model ?? "?"} (${hostCpus().length} cores), Node ${process.version}, ${new Date().toISOString().slice(0, 10)}`);
  if (sections.has("migrate")) await migrations();
  if (sections.has("faststart")) {
    progress("tsvisor run -- true, warm and cold");
    const r = await benchFastStart(10);
    say();
    say("`tsvisor run -- true`, wall time from spawn to exit (target warm: under 150 ms)");
    say(`  warm (restored from the cached snapshot), 10 runs: median ${f2(median(r.warmMs))} ms, best ${f2(Math.min(...r.warmMs))} ms`);
    say(`  node -e 0 between them (Node's own start and exit): median ${f2(median(r.nodeMs))} ms`);
    say(`  cold (--no-snapshot): ${f2(r.coldMs[0])} ms`);
    say("`tsvisor run --share DIR:/mnt -- ls /mnt` (its own snapshot; the restored guest mounts the share)");
    say(`  warm, 10 runs: median ${f2(median(r.share.warmMs))} ms, best ${f2(Math.min(...r.share.warmMs))} ms; cold (--no-snapshot): ${f2(r.share.coldMs[0])} ms`);
  }
  if (!sections.has("snapshot") && !sections.has("restore") && !sections.has("clones")) return;
  const host = await Host.create({ pcpus: 2 });
  try {
    progress("booting a 256 MiB Debian guest");
    const g = defineGuest(host, "base", TICKER, { memBytes: 256 * MiB });
    g.vm.start();
    await g.waitFor(/ready/, 120_000);
    await sleep(1000);
    const full = join(dir, "full.snap");
    const t0 = monoNs();
    const written = await g.vm.snapshot(full);
    const fullNs = monoNs() - t0;
    await sleep(1000);
    const t1 = monoNs();
    const diff = await g.vm.snapshot(join(dir, "diff.snap"), { diff: true });
    const diffNs = monoNs() - t1;
    const t2 = monoNs();
    const live = await g.vm.snapshot(join(dir, "live.snap"), { live: true });
    const liveNs = monoNs() - t2;
    if (sections.has("snapshot")) {
      say();
      say("Snapshot of an idle 256 MiB Debian guest (1 vCPU); the VM is paused while it is written");
      say(`  full: ${f2(statSync(full).size / MiB)} MiB file (${written.memory.stored} pages stored, ${written.memory.zero} zero), ${f2(ms(fullNs))} ms`);
      say(`  diff after 1 s: ${f2(statSync(diff.path).size / MiB)} MiB file (${diff.memory.stored} pages stored, ${diff.memory.inParent} in the parent), ${f2(ms(diffNs))} ms`);
      say(`  live (--live, the VM running while its RAM is written): ${f2(statSync(live.path).size / MiB)} MiB file, ${f2(ms(liveNs))} ms in all, paused ${f2(live.pausedMs ?? 0)} ms, ${live.rewrittenPages} pages written again`);
    }
    await g.vm.destroy();

    if (sections.has("restore")) {
      progress(`restoring ${runs} times`);
      const call: number[] = [], running: number[] = [], output: number[] = [];
      for (let i = 0; i < runs; i++) {
        let text = "";
        const t = monoNs();
        const vm = host.restoreVm(full, { name: `r${i}`, consoleOut: (b) => { text += Buffer.from(b).toString("latin1"); } });
        const returned = monoNs();
        const before = instructions(vm);
        while (instructions(vm) === before) await new Promise((r) => setImmediate(r));
        const ran = monoNs();
        while (!text.includes(".")) await new Promise((r) => setImmediate(r));
        const printed = monoNs();
        call.push(ms(returned - t));
        running.push(ms(ran - t));
        output.push(ms(printed - t));
        await vm.destroy();
      }
      say();
      say(`Restore of that snapshot (256 MiB guest), ${runs} runs: median / p90`);
      say(`  restoreVm() returns:           ${f2(median(call))} / ${f2(p90(call))} ms`);
      say(`  its vCPU has run (restore to running): ${f2(median(running))} / ${f2(p90(running))} ms (target: under 10 ms)`);
      say(`  its next console output:       ${f2(median(output))} / ${f2(p90(output))} ms (the guest sleeps up to 10 ms between dots)`);
    }

    if (sections.has("clones")) {
      progress(`${nClones} clones`);
      const before = host.memory.stats().frames.inUse;
      const times: number[] = [];
      const clones: Vm[] = [];
      for (let i = 0; i < nClones; i++) {
        const t = monoNs();
        clones.push(host.restoreVm(full, { name: `clone${i}`, consoleOut: () => {} }));
        times.push(ms(monoNs() - t));
      }
      await sleep(2000);
      const after = host.memory.stats().frames.inUse;
      const resident = clones.map((vm) => vm.stats().residentBytes / MiB);
      say();
      say(`${nClones} clones of that snapshot, each running 2 s`);
      say(`  restore per clone: median ${f2(median(times))} ms`);
      say(`  host memory per clone: ${f2(((after - before) * 4096) / MiB / nClones)} MiB (resident guest RAM ${f2(median(resident))} MiB of 256; the booted guest had ${f2((written.memory.stored * 4096) / MiB)} MiB of non-zero pages)`);
      for (const vm of clones) await vm.destroy();
    }
  } finally {
    await host.close();
  }
}

await main();
