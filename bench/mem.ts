// The memory overcommit benchmark (npm run bench:mem, issue 14): what the
// host's memory manager (src/memory/manager/) saves and what it costs, with
// real Debian guests through the Host API.
//
//   density   N identical idle Debian guests (256 MiB, 1 vCPU) in one host,
//             under five configurations: (a) every mechanism off, (b) page
//             sharing within each VM, (c) sharing across all VMs (one share
//             group), (d) (c) plus the balloon and free page reporting, (e)
//             everything plus reclaim (compression) in a 512 MiB pool. Host
//             frames in use per guest, the sharing ratio, the saving over (a).
//   reclaim   one guest that touched ~200 MiB: how fast the balloon and free
//             page reporting give it back, how fast the host compresses and
//             swaps (reclaimNow, swap file in a temp dir), and how long the
//             guest takes to get 100 MiB back (deflate + allocate).
//   cost      a guest re-reading a 64 MiB file in /dev/shm, with a large pool,
//             with the file's 32 copies of 2 MiB merged by the sharing scanner
//             (reads through shared frames), and with the pool squeezed to
//             about half its footprint (compression + swap): the run times
//             and the slowdown.
//
// Figures are printed, never asserted. Options:
//   --vms N          density guests (default 8)
//   --only a,b       sections: density, reclaim, cost (default all)
//   --configs abcde  density configurations (default all five)
//   --squeeze M,N    the cost section's small pools in MiB (default 64,48; none: no squeezed runs)

import { mkdtempSync, rmSync } from "node:fs";
import { cpus as hostCpus, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Host } from "../src/host/host.js";
import type { OvercommitOptions } from "../src/memory/manager/memory-manager.js";
import { defineGuest, type Guest, type GuestOptions } from "../src/host/testing/guests.js";
import { monoNs } from "../src/host/pcpu-protocol.js";

const MiB = 1 << 20;
const PAGE = 4096;

const { values: opts } = parseArgs({
  options: {
    vms: { type: "string", default: "8" },
    only: { type: "string", default: "density,reclaim,cost" },
    configs: { type: "string", default: "abcde" },
    pcpus: { type: "string", default: "2" },
    squeeze: { type: "string", default: "64,48" },
  },
});
const nVms = Number(opts.vms);
const pcpus = Number(opts.pcpus);
const sections = new Set(opts.only.split(","));
if (!Number.isInteger(nVms) || nVms < 1) fail("--vms must be a positive integer");
if (!Number.isInteger(pcpus) || pcpus < 1) fail("--pcpus must be a positive integer");
for (const s of sections) if (!["density", "reclaim", "cost"].includes(s)) fail(`unknown section '${s}' (density, reclaim, cost)`);

function fail(message: string): never {
  process.stderr.write(`bench:mem: ${message}\n`);
  process.exit(1);
}
const say = (line = "") => process.stdout.write(`${line}\n`);
const t00 = monoNs();
const progress = (line: string) => process.stderr.write(`bench:mem [${((monoNs() - t00) / 1e9).toFixed(0)} s] ${line}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mib = (bytes: number) => bytes / MiB;
const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : "-");

/** Temp dirs holding swap files: removed at exit whatever happens. */
const tempDirs: string[] = [];
function cleanup(): void {
  for (const d of tempDirs.splice(0)) rmSync(d, { recursive: true, force: true });
}
process.on("exit", cleanup);
for (const sig of ["SIGINT", "SIGTERM"] as const) process.on(sig, () => { cleanup(); process.exit(130); });

/** A table: a header row, then rows; columns right-aligned but the first. */
function printTable(head: string[], rows: string[][]): void {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join("  ");
  say(line(head));
  say(w.map((n) => "-".repeat(n)).join("  "));
  for (const r of rows) say(line(r));
}

/** A guest with options defineGuest passes through to createVm (shareGroup, balloon). */
function guest(host: Host, name: string, argv: string[], o: GuestOptions & { shareGroup?: string; balloon?: boolean }): Guest {
  return defineGuest(host, name, argv, o as GuestOptions);
}

/** Waits for `re` on the console, failing early if the VM ends or waits for memory for good. */
async function waitOrStall(host: Host, g: Guest, re: RegExp, timeoutMs: number): Promise<"ok" | "stalled"> {
  let stalledSince = 0;
  let done = false;
  const seen = g.waitFor(re, timeoutMs).then(() => { done = true; });
  seen.catch(() => {});
  while (!done) {
    await Promise.race([seen, sleep(250)]);
    if (done) break;
    if (g.vm.state !== "running" && g.vm.state !== "paused") throw new Error(`${g.vm.name} ended (${g.vm.state}) before ${re}:\n${g.output().slice(-1500)}`);
    if (host.memory.stats().waiting.includes(g.vm.name)) {
      stalledSince ||= Date.now();
      if (Date.now() - stalledSince > 5000) return "stalled";
    } else stalledSince = 0;
  }
  await seen;
  return "ok";
}

/** Host figures: frames in use, frames guests own (private + shared frames). */
function frames(host: Host) {
  const s = host.memory.stats();
  let priv = 0, sharing = 0;
  for (const vm of host.vms) {
    const m = vm.stats().memory;
    if (!m) continue;
    priv += m.pages.private;
    sharing += m.pages.shared;
  }
  return { inUse: s.frames.inUse, guestPrivate: priv, sharingPages: sharing, sharedFrames: s.frames.shared, stats: s };
}

/** Sharing passes over all guest memory until one merges nothing more. */
async function shareToFixpoint(host: Host): Promise<{ passes: number; ms: number }> {
  const pages = host.vms.reduce((n, vm) => n + Math.ceil(vm.config.memBytes / PAGE), 0);
  const t0 = monoNs();
  let passes = 0, idle = 0;
  while (passes < 20) {
    const before = host.memory.stats().sharing;
    const merged = await host.memory.shareNow(pages);
    const after = host.memory.stats().sharing;
    passes++;
    const gained = merged + ((after?.zeroPagesDropped ?? 0) - (before?.zeroPagesDropped ?? 0));
    // The first rounds only learn hashes (a page is merged once seen twice unchanged); idle
    // guests keep changing a few pages, so "nothing more" is under 128 KiB a pass.
    if (passes >= 3 && gained < 32) idle++;
    else idle = 0;
    if (idle >= 2) break;
  }
  return { passes, ms: (monoNs() - t0) / 1e6 };
}

// ---- density ------------------------------------------------------------------------------

const IDLE = ["sh", "-c", "echo idle-ready; while :; do sleep 1; done"];
const DENSITY_MEM = 256 * MiB;
const SETTLE_MS = 10_000;

interface DensityConfig {
  key: string;
  what: string;
  poolBytes: number;
  overcommit: OvercommitOptions;
  shareGroup: boolean;
  balloon: boolean;
}

const CONFIGS: DensityConfig[] = [
  { key: "a", what: "(a) all off", poolBytes: 1 << 30, overcommit: { sharing: false, reclaim: false }, shareGroup: false, balloon: false },
  { key: "b", what: "(b) sharing within each VM", poolBytes: 1 << 30, overcommit: { sharing: true, reclaim: false }, shareGroup: false, balloon: false },
  { key: "c", what: "(c) sharing across VMs", poolBytes: 1 << 30, overcommit: { sharing: true, reclaim: false }, shareGroup: true, balloon: false },
  { key: "d", what: "(d) (c) + balloon/reporting", poolBytes: 1 << 30, overcommit: { sharing: true, reclaim: false }, shareGroup: true, balloon: true },
  { key: "e", what: "(e) all on, 512 MiB pool", poolBytes: 512 << 20, overcommit: { sharing: true, reclaim: true }, shareGroup: true, balloon: true },
];

interface DensityResult {
  cfg: DensityConfig;
  booted: number;
  bootS: number;
  inUseMiB: number;
  perGuestMiB: number;
  ratio: number;
  sharedFrames: number;
  sharingPages: number;
  compressedMiB: number;
  note: string;
}

async function densityRun(cfg: DensityConfig): Promise<DensityResult> {
  progress(`density ${cfg.what}: pool ${mib(cfg.poolBytes)} MiB, ${nVms} guests`);
  const host = await Host.create({ pcpus, memLimitBytes: cfg.poolBytes, overcommit: cfg.overcommit });
  const guests: Guest[] = [];
  let note = "";
  const t0 = monoNs();
  try {
    let maxPerGuest = 0;
    // Two at a time (2 cores): more and the boots time out.
    for (let i = 0; i < nVms; i += 2) {
      const batch: Guest[] = [];
      for (let j = i; j < Math.min(i + 2, nVms); j++) {
        if (!cfg.overcommit.reclaim) {
          // Without reclaim a guest that finds the pool full waits for ever:
          // start one only if a booted guest's worth (and a margin) is free.
          const free = host.memory.stats().frames.free * PAGE;
          const need = Math.max(maxPerGuest * 1.3, 96 * MiB) * (j - i + 1);
          if (free < need) {
            note = `stopped at ${j} guests: ${mib(free).toFixed(0)} MiB free, a booting guest needs ~${mib(need / (j - i + 1)).toFixed(0)} MiB`;
            break;
          }
        }
        const g = guest(host, `idle${j}`, IDLE, { memBytes: DENSITY_MEM, shareGroup: cfg.shareGroup ? "all" : undefined, balloon: cfg.balloon });
        g.vm.start();
        batch.push(g);
      }
      if (batch.length === 0) break;
      const results = await Promise.all(batch.map((g) => waitOrStall(host, g, /idle-ready/, 240_000)));
      const stalled = results.filter((r) => r === "stalled").length;
      if (stalled > 0) {
        note = `${stalled} guest(s) stalled waiting for memory (pool full)`;
        for (const [k, g] of batch.entries()) if (results[k] === "stalled") await g.vm.destroy();
        guests.push(...batch.filter((_, k) => results[k] === "ok"));
        break;
      }
      guests.push(...batch);
      const f = frames(host);
      maxPerGuest = Math.max(maxPerGuest, (f.inUse * PAGE) / guests.length);
      progress(`  ${guests.length}/${nVms} booted, pool ${mib(f.inUse * PAGE).toFixed(0)} MiB in use (${mib(f.inUse * PAGE / guests.length).toFixed(0)} MiB/guest)`);
      if (note) break;
    }
    const bootS = (monoNs() - t0) / 1e9;
    progress(`  settling ${SETTLE_MS / 1000} s`);
    await sleep(SETTLE_MS);
    if (cfg.overcommit.sharing !== false) {
      const r = await shareToFixpoint(host);
      progress(`  sharing: ${r.passes} passes over all guest memory in ${(r.ms / 1000).toFixed(1)} s`);
      await sleep(2000);
    }
    if (cfg.overcommit.reclaim) {
      // Let the manager's own pressure handling (balloons first, then compression) finish.
      await sleep(5000);
    }
    const f = frames(host);
    const alive = guests.filter((g) => g.vm.state === "running").length;
    if (alive !== guests.length) note += `${note ? "; " : ""}${guests.length - alive} guest(s) no longer running`;
    const s = f.stats;
    progress(`  in use ${mib(f.inUse * PAGE).toFixed(0)} MiB; shared frames ${f.sharedFrames}, pages mapping them ${f.sharingPages}; zero pages dropped ${s.sharing?.zeroPagesDropped ?? 0}; balloon inflated ${s.balloon.inflated} reported ${s.balloon.reported}; compressed ${s.compressed?.pages ?? 0} pages`);
    return {
      cfg, booted: guests.length, bootS,
      inUseMiB: mib(f.inUse * PAGE),
      perGuestMiB: mib(f.inUse * PAGE) / Math.max(guests.length, 1),
      ratio: f.sharedFrames > 0 ? f.sharingPages / f.sharedFrames : NaN,
      sharedFrames: f.sharedFrames, sharingPages: f.sharingPages,
      compressedMiB: mib(s.compressed?.usedBytes ?? 0),
      note,
    };
  } finally {
    await host.close();
  }
}

async function density(): Promise<void> {
  say(`## Density: ${nVms} idle Debian guests, ${mib(DENSITY_MEM)} MiB and 1 vCPU each, booted two at a time to \`${IDLE.join(" ")}\`, settled ${SETTLE_MS / 1000} s; pCPUs ${pcpus}`);
  say("   host frames in use = the pool's frames in use (guest pages and the host's own: translation caches, hart blocks)");
  say("   sharing ratio = guest pages mapping shared frames / shared frames (sharing run to a fixpoint with shareNow)");
  const results: DensityResult[] = [];
  for (const cfg of CONFIGS) {
    if (!opts.configs.includes(cfg.key)) continue;
    results.push(await densityRun(cfg));
  }
  const base = results.find((r) => r.cfg.key === "a");
  const rows = results.map((r) => [
    r.cfg.what, `${r.booted}/${nVms}`, `${mib(r.cfg.poolBytes)}`, r.bootS.toFixed(0), r.inUseMiB.toFixed(0), r.perGuestMiB.toFixed(1),
    (r.perGuestMiB * nVms).toFixed(0),
    f1(r.ratio), base ? `${(100 * (1 - r.perGuestMiB / base.perGuestMiB)).toFixed(1)} %` : "-",
    r.compressedMiB ? r.compressedMiB.toFixed(1) : "-",
  ]);
  printTable(["configuration", "booted", "pool MiB", "boot s", "in use MiB", "MiB/guest", `x${nVms} MiB`, "share ratio", "saved vs (a)", "compr MiB"], rows);
  for (const r of results) if (r.note) say(`   ${r.cfg.what}: ${r.note}`);
  if (base && base.booted < nVms) say(`   (a) booted only ${base.booted}: its "x${nVms}" column is ${base.booted}'s per-guest figure times ${nVms}, an extrapolation`);
  const e = results.find((r) => r.cfg.key === "e");
  if (e) say(`   target "${nVms} guests idle in under 512 MiB": ${e.booted === nVms && e.inUseMiB < 512 ? "met" : "not met"} (${e.booted} booted, ${e.inUseMiB.toFixed(0)} MiB in use)`);
}

// ---- reclaim speed -----------------------------------------------------------------------

const memFree = "awk '/^MemFree/{print $2}' /proc/meminfo";
/** The balloon guest: fills and frees 200 MiB, waits for the host to inflate its balloon and
 *  deflate it again (it watches MemFree), then times taking 100 MiB back. */
const BALLOON_SCRIPT = `
t() { read u _ < /proc/uptime; echo \${u%.*}\${u#*.}; }
s=$(t); dd if=/dev/zero of=/dev/shm/y bs=1M count=100 2>/dev/null; e=$(t); rm /dev/shm/y; echo "BENCH fresh100 cs $((e - s))"
dd if=/dev/urandom of=/dev/shm/x bs=1M count=200 2>/dev/null; rm /dev/shm/x; echo filled-and-freed
f0=$(${memFree})
while [ $(${memFree}) -gt $((f0 - 150000)) ]; do sleep 0.2; done
echo inflated
while [ $(${memFree}) -lt $((f0 - 40000)) ]; do sleep 0.1; done
echo deflated
s=$(t); dd if=/dev/zero of=/dev/shm/y bs=1M count=100 2>/dev/null; e=$(t); echo "BENCH regrow100 cs $((e - s))"
while :; do sleep 1; done
`;

/** The compression guest: keeps 100 MiB of text (compressible) and 100 MiB of random bytes, each a
 *  1 MiB piece written 100 times (quick to make; sharing is off in its host, so the copies stay apart). */
const KEEP_SCRIPT = `
seq 1 200000 | head -c 1048576 > /tmp/t1
head -c 1048576 /dev/urandom > /tmp/r1
for i in $(seq 100); do cat /tmp/t1; done > /dev/shm/text
for i in $(seq 100); do cat /tmp/r1; done > /dev/shm/random
rm /tmp/t1 /tmp/r1
echo kept
while :; do sleep 1; done
`;

/** A figure the guest timed with /proc/uptime (10 ms resolution), in ns. */
/** Waits for `re` on g's console; fails at once if the guest stops. */
async function until(g: Guest, re: RegExp, timeoutMs: number): Promise<void> {
  let done = false;
  const seen = g.waitFor(re, timeoutMs).then(() => { done = true; });
  seen.catch(() => {});
  while (!done) {
    await Promise.race([seen, sleep(250)]);
    if (!done && g.vm.state !== "running" && g.vm.state !== "paused") throw new Error(`${g.vm.name} ended (${g.vm.state}) before ${re}:\n${g.output().slice(-1500)}`);
  }
  await seen;
}

const guestNs = (g: Guest, key: string) => 1e7 * Number(new RegExp(`BENCH ${key} cs (\\d+)`).exec(g.output())?.[1] ?? NaN);

async function waitUntil(what: string, cond: () => boolean, timeoutMs: number, stepMs = 20): Promise<number> {
  const t0 = monoNs();
  while (!cond()) {
    if ((monoNs() - t0) / 1e6 > timeoutMs) throw new Error(`timed out (${timeoutMs / 1000} s) waiting for ${what}`);
    await sleep(stepMs);
  }
  return (monoNs() - t0) / 1e9;
}

async function reclaimSpeed(): Promise<void> {
  say("## Reclaim speed (one Debian guest, 384 MiB, 1 vCPU)");
  const rows: string[][] = [];
  const notes: string[] = [];

  // Balloon and free page reporting: default overcommit, 1 GiB pool, no pressure.
  progress("reclaim: balloon guest");
  {
    const host = await Host.create({ pcpus, memLimitBytes: 1 << 30, overcommit: { sharing: false, reclaim: false } });
    try {
      const g = guest(host, "balloon", ["sh", "-c", BALLOON_SCRIPT], { memBytes: 384 * MiB, balloon: true });
      g.vm.start();
      // Sample host frames while the guest fills and frees: reporting gives the freed pages back by itself.
      let peak = 0;
      const sampler = setInterval(() => { peak = Math.max(peak, host.memory.stats().frames.inUse); }, 50);
      await until(g, /filled-and-freed/, 300_000);
      const tFreed = monoNs();
      const atFree = host.memory.stats().frames.inUse;
      peak = Math.max(peak, atFree);
      // Free page reporting: how far and how fast frames drop after rm, with nobody asking.
      let settledAt = tFreed, last = atFree;
      const t1 = monoNs();
      while ((monoNs() - t1) / 1e9 < 15) {
        await sleep(100);
        const now = host.memory.stats().frames.inUse;
        if (now < last - 256) settledAt = monoNs(); // still dropping (more than 1 MiB per 100 ms)
        last = now;
      }
      clearInterval(sampler);
      const reportedMiB = mib(host.memory.stats().balloon.reported * PAGE);
      const reportS = (settledAt - tFreed) / 1e9;
      const dropMiB = mib((peak - last) * PAGE);
      rows.push(["free page reporting, after rm of 200 MiB", `${dropMiB.toFixed(0)} MiB in ${reportS.toFixed(1)} s`, reportS > 0 ? f1(dropMiB / reportS) : "-"]);
      notes.push(`reporting: the guest reported ${reportedMiB.toFixed(0)} MiB; host frames peaked at ${mib(peak * PAGE).toFixed(0)} MiB, ${mib(last * PAGE).toFixed(0)} MiB 15 s after the rm (the drop is timed to the last 100 ms in which frames fell by over 1 MiB)`);

      // Balloon inflation.
      const target = 200 * MiB;
      const inUse0 = host.memory.stats().frames.inUse;
      const tInf = monoNs();
      g.vm.setBalloon(target);
      const infS = await waitUntil("the balloon to inflate", () => (g.vm.balloonStats()?.actualPages ?? 0) * PAGE >= target, 120_000);
      const inUse1 = host.memory.stats().frames.inUse;
      rows.push([`balloon inflate to ${mib(target)} MiB`, `${mib(target)} MiB in ${infS.toFixed(2)} s`, f1(mib(target) / infS)]);
      notes.push(`balloon: host frames ${mib(inUse0 * PAGE).toFixed(0)} -> ${mib(inUse1 * PAGE).toFixed(0)} MiB while it inflated (most of the guest's free memory had been reported already); ${((monoNs() - tInf) / 1e9).toFixed(2)} s from setBalloon`);
      await until(g, /inflated/, 60_000);

      // Deflate and take 100 MiB back.
      g.vm.setBalloon(0);
      const defS = await waitUntil("the balloon to deflate", () => (g.vm.balloonStats()?.actualPages ?? 1) === 0, 120_000);
      await until(g, /BENCH regrow100/, 120_000);
      const regrow = guestNs(g, "regrow100") / 1e9;
      const fresh = guestNs(g, "fresh100") / 1e9;
      rows.push([`balloon deflate from ${mib(target)} MiB`, `${defS.toFixed(2)} s`, f1(mib(target) / defS)]);
      rows.push(["guest takes 100 MiB back (deflate + write 100 MiB)", `${(defS + regrow).toFixed(2)} s`, f1(100 / (defS + regrow))]);
      notes.push(`writing 100 MiB into /dev/shm in the guest: ${regrow.toFixed(2)} s on pages given back by the balloon, ${fresh.toFixed(2)} s on never-touched pages at boot (dd bs=1M; /proc/uptime, 10 ms resolution; the guest polls MemFree every 0.1 s before it starts, so the sum is up to 0.1 s pessimistic)`);
    } finally {
      await host.close();
    }
  }

  // Host compression and swap.
  progress("reclaim: compression and swap");
  {
    const dir = mkdtempSync(join(tmpdir(), "tsvisor-bench-mem-"));
    tempDirs.push(dir);
    const swapPath = join(dir, "swap");
    const compressBytes = 64 * MiB;
    const host = await Host.create({
      pcpus, memLimitBytes: 1 << 30,
      overcommit: { sharing: false, reclaim: false, compressBytes, swap: { path: swapPath, bytes: 512 * MiB } },
    });
    try {
      const g = guest(host, "keep", ["sh", "-c", KEEP_SCRIPT], { memBytes: 384 * MiB, balloon: false });
      g.vm.start();
      await until(g, /kept/, 300_000);
      await sleep(3000);
      const s0 = host.memory.stats();
      const want = 200 * MiB / PAGE;
      const t0 = monoNs();
      const taken = await host.memory.reclaimNow(s0.frames.free + want);
      const sec = (monoNs() - t0) / 1e9;
      const s1 = host.memory.stats();
      const freed = s0.frames.inUse - s1.frames.inUse;
      rows.push([`host compression + swap (reclaimNow 200 MiB)`, `${mib(taken * PAGE).toFixed(0)} MiB in ${sec.toFixed(2)} s`, f1(mib(taken * PAGE) / sec)]);
      notes.push(`compression/swap: compressed pool ${mib(compressBytes)} MiB, swap file 512 MiB; frames in use ${mib(s0.frames.inUse * PAGE).toFixed(0)} -> ${mib(s1.frames.inUse * PAGE).toFixed(0)} MiB (${mib(freed * PAGE).toFixed(0)} MiB freed); now ${s1.compressed?.pages ?? 0} pages compressed into ${f1(mib(s1.compressed?.usedBytes ?? 0))} MiB, ${f1(mib(s1.swap?.usedBytes ?? 0))} MiB in swap`);
      const v = g.vm.stats().memory!;
      notes.push(`guest pages after: ${v.pages.private} private, ${v.pages.compressed} compressed, ${v.pages.swapped} swapped, ${v.pages.zero} zero (decompressions ${v.decompressions}, swap-ins ${v.swapIns} meanwhile)`);
      if (s1.reclaim.lastError) notes.push(`reclaim error: ${s1.reclaim.lastError}`);
    } finally {
      await host.close();
    }
    rmSync(dir, { recursive: true, force: true });
  }
  printTable(["what", "amount / time", "MiB/s"], rows);
  for (const n of notes) say(`   ${n}`);
}

// ---- cost ----------------------------------------------------------------------------------

/** A 64 MiB file (1 MiB random, 1 MiB text, 32 times: half of it compressible), then read three
 *  times, in three rounds, with dd (read(2) copies every page; busybox cat to /dev/null would
 *  splice and touch nothing). Sharing is off in its hosts so the repeated pieces are not merged. */
const walkScript = (pauseS: number) => `
t() { read u _ < /proc/uptime; echo \${u%.*}\${u#*.}; }
seq 1 200000 | head -c 1048576 > /tmp/t1
head -c 1048576 /dev/urandom > /tmp/r1
for i in $(seq 32); do cat /tmp/r1 /tmp/t1; done > /dev/shm/x
rm /tmp/t1 /tmp/r1
echo filled
sleep ${pauseS}
for round in 1 2 3; do
  s=$(t); for i in 1 2 3; do dd if=/dev/shm/x of=/dev/null bs=1M 2>/dev/null; done; e=$(t)
  echo "BENCH walk$round cs $((e - s))"
done
echo walk-done
while :; do sleep 1; done
`;

/** `merge`: once the file is written, the sharing scanner merges what it can before the reads
 *  (the guest waits 30 s instead of 3 for it). */
async function costRun(poolBytes: number, overcommit: OvercommitOptions, label: string, merge = false) {
  progress(`cost: ${label}`);
  const host = await Host.create({ pcpus, memLimitBytes: poolBytes, overcommit });
  try {
    const g = guest(host, "walk", ["sh", "-c", walkScript(merge ? 30 : 3)], { memBytes: 256 * MiB });
    const t0 = monoNs();
    g.vm.start();
    let peak = 0;
    const sampler = setInterval(() => { peak = Math.max(peak, host.memory.stats().frames.inUse); }, 100);
    try {
      await until(g, /filled/, 400_000);
      const filledS = (monoNs() - t0) / 1e9;
      const atFill = host.memory.stats().frames.inUse;
      if (merge) await shareToFixpoint(host);
      const shared = g.vm.stats().memory!.pages.shared;
      await until(g, /walk-done/, 600_000);
      const walks = [1, 2, 3].map((r) => guestNs(g, `walk${r}`) / 1e9);
      const s = host.memory.stats();
      const m = g.vm.stats().memory!;
      return { walks, filledS, atFillMiB: mib(atFill * PAGE), peakMiB: mib(peak * PAGE), s, m, shared };
    } finally {
      clearInterval(sampler);
    }
  } finally {
    await host.close();
  }
}

async function cost(): Promise<void> {
  say("## Cost: a Debian guest (256 MiB, 1 vCPU) reading a 64 MiB /dev/shm file (32 MiB random + 32 MiB text) 3 times with dd, timed in the guest, 3 rounds; balloon on, sharing off but in the row that says so; slowdown = best round over best round");
  const big = await costRun(1 << 30, { sharing: false }, "pool 1 GiB, sharing off (nothing to reclaim)");
  const best = (w: number[]) => Math.min(...w);
  // The loop's working set is the 64 MiB file and a few MiB of kernel and shell: a 48 MiB pool
  // (which also holds the host's own frames for the VM) keeps about half of it, 64 MiB about 3/4.
  const rows = [["pool 1 GiB (no pressure)", `${big.atFillMiB.toFixed(0)}`, big.walks.map((w) => w.toFixed(2)).join(" / "), best(big.walks).toFixed(2), "1.00"]];
  const notes = [`pool 1 GiB: file written ${big.filledS.toFixed(0)} s after start; guest pages ${JSON.stringify(big.m.pages)}`];
  // The file is 32 copies of 2 MiB: merged, the reads go through shared frames (what sharing costs a guest).
  const merged = await costRun(1 << 30, { sharing: true }, "pool 1 GiB, the file's copies merged by the sharing scanner", true);
  rows.push(["pool 1 GiB, sharing on (file merged)", `${merged.atFillMiB.toFixed(0)}`, merged.walks.map((w) => w.toFixed(2)).join(" / "), best(merged.walks).toFixed(2), (best(merged.walks) / best(big.walks)).toFixed(2)]);
  notes.push(`sharing on: ${merged.shared} guest pages shared when the reads began; ${merged.m.cowBreaks} copy-on-write breaks, ${merged.m.tlbShootdowns} TLB shootdowns`);
  for (const sq of opts.squeeze.split(",").filter((x) => x !== "" && x !== "none").map(Number)) {
    const squeezed = sq * MiB;
    const dir = mkdtempSync(join(tmpdir(), "tsvisor-bench-mem-"));
    tempDirs.push(dir);
    try {
      const small = await costRun(squeezed, { sharing: false, compressBytes: 32 * MiB, swap: { path: join(dir, "swap"), bytes: 512 * MiB } },
        `pool ${sq} MiB, compression 32 MiB + swap`);
      rows.push([`pool ${sq} MiB, compression + swap`, `${small.atFillMiB.toFixed(0)}`, small.walks.map((w) => w.toFixed(2)).join(" / "), best(small.walks).toFixed(2), (best(small.walks) / best(big.walks)).toFixed(2)]);
      notes.push(`pool ${sq} MiB: file written ${small.filledS.toFixed(0)} s after start; guest pages at the end ${JSON.stringify(small.m.pages)}`);
      notes.push(`pool ${sq} MiB: decompressions ${small.m.decompressions}, swap-ins ${small.m.swapIns}, store reads ${small.m.storeReads}; compressed ${small.s.compressed?.pages ?? 0} pages in ${f1(mib(small.s.compressed?.usedBytes ?? 0))} MiB, swap ${f1(mib(small.s.swap?.usedBytes ?? 0))} MiB; balloon inflated ${small.s.balloon.inflated} reported ${small.s.balloon.reported}; reclaim ${JSON.stringify(small.s.reclaim)}`);
    } catch (e) {
      rows.push([`pool ${sq} MiB, compression + swap`, "-", "failed", "-", "-"]);
      notes.push(`pool ${sq} MiB: failed: ${(e as Error).message.split("\n").slice(0, 12).join("\n")}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  printTable(["configuration", "in use at fill MiB", "3x64 MiB read s (rounds)", "best s", "slowdown"], rows);
  for (const n of notes) say(`   ${n}`);
}

// ---- main ----------------------------------------------------------------------------------

say(`# bench:mem — ${new Date().toISOString()}, ${hostCpus()[0]?.model ?? "?"} x${hostCpus().length}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`);
say();
for (const [name, fn] of [["density", density], ["reclaim", reclaimSpeed], ["cost", cost]] as const) {
  if (!sections.has(name)) continue;
  progress(`${name}...`);
  await fn();
  say();
}
progress("done");
cleanup();
process.exit(0);

