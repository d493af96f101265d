// The source side of a live migration (Vm.migrate): pre-copy, as QEMU and
// Cloud Hypervisor do it.
//
//   1. connect, authenticate both ways (stream.ts), send Config
//   2. start the dirty log; round 0 sends every page that is not zero while
//      the VM runs
//   3. rounds: while the pages dirtied since the last round would take longer
//      than maxDowntimeMs to send at the measured bandwidth, take them (vCPUs
//      held for the take, their TLBs flushed after: dirty-log.ts) and send
//      them, the VM still running. Auto-converge: when the dirty set does not
//      shrink for two rounds, the VM's vCPUs are capped through the scheduler,
//      20 % throttle first, then 10 % more each time up to 99 % (QEMU's steps)
//   4. final: pause the VM and its devices, take the last dirty pages, send
//      them with the machine State, Complete; the target restores and says
//      Ready; Go; it runs and says Resumed; the source VM is stopped
//      ("migrated to HOST:PORT") and destroyed. Downtime: pause to Resumed.
//
// Failure semantics:
//   - anything failing before Go is sent (connection refused or cut, target
//     killed, the target abandoning, a timeout, the VM ending): the source VM
//     runs on as it was (resumed if it was paused for the final phase, its
//     cap restored), the target destroys what it built; migrate() rejects
//     with one line. The dirty log stays on (a later diff snapshot has no
//     base: the migration took its pages).
//   - Go sent but no Resumed (the connection broke, the target died): the
//     outcome is unknown, the target may or may not run the VM. The source VM
//     stays PAUSED, its devices too, and migrate() rejects saying so: never
//     two running copies. Resume it by hand (vm.resume()) only once sure the
//     target does not run it.
//
// Post-copy (postcopy: true): after round 0 the VM pauses at once; State,
// the bitmap of the pages dirtied since round 0 (Pending) and Complete go
// over; the target maps those pages as Remote and opens a port for its
// migration thread; the source connects there, sends Go, and once Resumed
// pushes the pending pages on that second connection, pages the target's
// threads wait for (Fetch) first. Downtime stays that of a pause with no
// pages to send, whatever the dirty rate. The price (as QEMU's): from Go
// until the target acknowledges the last page, the guest lives on both
// hosts at once. If either side fails then (the connection breaks, the
// source VM or host goes away, the target dies) the guest is lost: the
// target's VM ends (a vCPU touching a missing page fails, and the target
// stops it saying "the guest is lost"), and migrate() rejects saying the
// same; the source's copy stays paused and is stale (the guest ran on the
// target since): destroy it, never resume it.

import type { Socket } from "node:net";
import type { Vm } from "../../host/vm.js";
import type { VirtMachine } from "../../vmm/virt-machine.js";
import type { DirtyLog } from "../../memory/dirty-log.js";
import { FRAME_SIZE } from "../../memory/frame-pool.js";
import { readsAsZero } from "../../memory/p2m-entry.js";
import type { Plain } from "../state.js";
import { DiskCopier, type DiskCopySource } from "./disk-copy.js";
import {
  Cmd, MIGRATION_VERSION, MessageReader, MessageWriter, MigrationError, checkToken, connectMigration, encodePages, expect, mac, macMatches, newNonce, pageBuffer, readJson, tlsKey, writeBitmap,
} from "./stream.js";
import { THROTTLE_MAX_PCT, nextThrottle, throttledCap } from "../throttle.js";

export interface MigrateTarget {
  host: string;
  port: number;
  /** The shared secret the target's listener was given. */
  token: string | Uint8Array;
  /** TLS with a key from the token (the listener must have `tls` too): the stream encrypted. */
  tls?: boolean;
}

export interface MigrationProgress {
  round: number;
  /** Bytes sent so far (all rounds, headers included). */
  sentBytes: number;
  /** Pages found dirty at the end of this round. */
  dirtyPages: number;
  dirtyRateBytesPerSec: number;
  bandwidthBytesPerSec: number;
  /** Sending the dirty pages now would pause the VM this long. */
  expectedDowntimeMs: number;
  /** Auto-converge's throttle now (0..99 %). */
  throttlePct: number;
  /** Disks copied along: bytes the guest changed since they were last sent (whole chunks). */
  dirtyDiskBytes?: number;
  /** The round is still being sent: the figures so far (the link's pace in this round alone). */
  inRound?: boolean;
}

export interface MigrateOptions {
  /** The pause the final phase may cost (default 300 ms, as QEMU and Cloud Hypervisor). */
  maxDowntimeMs?: number;
  /** Post-copy: right after round 0 (true), or once the dirty set stops
   *  shrinking in pre-copy rounds ("auto": instead of auto-converge; a dirty
   *  set that fits maxDowntimeMs ends in pre-copy as usual), the VM pauses
   *  here, its state goes over and it runs on the target at once; the pages
   *  dirtied since follow while it runs, those it touches first (see the header). */
  postcopy?: boolean | "auto";
  /** Send no faster than this (default: as fast as the link takes). */
  bandwidthBytesPerSec?: number;
  /** Throttle the vCPUs when the dirty set does not shrink (default true). */
  autoConverge?: boolean;
  /** After this many dirty rounds the final phase comes anyway, longer than maxDowntimeMs (default 30). */
  maxRounds?: number;
  /** The caller's own description of the VM, handed to the target's listener (the daemon's definition). */
  definition?: Plain;
  /** Copy these disks along (hosts without shared storage): their whole
   *  content, then what the guest changes, in the same rounds (disk-copy.ts).
   *  The target's listener gives a sink for each, in this order. */
  disks?: readonly DiskCopySource[];
  /** In the pause, once the devices have stopped: leave the storage both
   *  hosts share whole for the target (the daemon reopens each disk it does
   *  not copy, so a qcow2 image writes back the clusters and refcount
   *  changes it held). The target reads it afresh (IncomingVmConfig's
   *  acquireStorage) before the VM runs there. */
  releaseStorage?(): Promise<void>;
  progress?(p: MigrationProgress): void;
  /** The phase now, when it changes after the pre-copy rounds: "final" (the VM paused, its last pages and state
   *  going over), "postcopy" (it runs on the target, its last pages follow). */
  phase?(phase: "final" | "postcopy"): void;
}

export interface MigrationResult {
  target: string;
  rounds: number;
  sentBytes: number;
  /** Pages sent with their bytes, and as zero markers. */
  pagesSent: number;
  zeroPagesSent: number;
  totalMs: number;
  /** The VM paused at the source until the target said it runs. */
  downtimeMs: number;
  /** The strongest throttle auto-converge applied (0: none). */
  maxThrottlePct: number;
  /** Post-copy: pages sent after the VM ran on the target, those of them it asked for, and how long it took. */
  postcopy?: { pages: number; fetched: number; ms: number };
  /** Disks copied along: data bytes sent for them (zero runs not counted). */
  diskBytes?: number;
}

/** What Vm hands the sender (vm.ts migrationSource()). */
export interface MigrationSource {
  vm: Vm;
  machine: VirtMachine;
  /** The run being migrated still runs (not stopped, not ended). */
  alive(): boolean;
  /** The dirty log, started now if it was not on (harts flush their TLBs). */
  dirtyLog(): DirtyLog;
  holdVcpus(): Promise<boolean>;
  releaseVcpus(): void;
  /** Wait until the memory manager holds the vCPUs no more. */
  quiesce(): Promise<void>;
  meta(): { name: string; cpus: number; memBytes: number; cmdline: string; console: "ttyS0" | "hvc0" };
  capPct(): number;
  maxCapPct(): number;
  /** Go sent, no Resumed: devices stay paused until the user's resume(). */
  leaveDevicesPaused(): void;
  /** The dirty log's bits were taken here: no diff snapshot against the last one. */
  forgetDiffBase(): void;
  end(reason: string): Promise<void>;
}

/** Bytes in flight (sent, not yet with the OS) before the sender waits. */
const MAX_INFLIGHT = 8 << 20;
const CONNECT_TIMEOUT_MS = 10_000;
const REPLY_TIMEOUT_MS = 30_000;
/** Inside a round, a report at most this often: round 0 of a large guest on a slow link takes minutes. */
const PROGRESS_EVERY_MS = 250;

export async function migrateVm(src: MigrationSource, to: MigrateTarget, opts: MigrateOptions): Promise<MigrationResult> {
  const where = `${to.host}:${to.port}`;
  const fail = (m: string) => new MigrationError(`migration of VM '${src.vm.name}' to ${where} failed: ${m}`);
  try {
    checkToken(to.token);
  } catch (e) {
    throw fail((e as Error).message);
  }
  const maxDowntimeMs = opts.maxDowntimeMs ?? 300;
  const maxRounds = opts.maxRounds ?? 30;
  const limit = opts.bandwidthBytesPerSec;
  if (!(maxDowntimeMs >= 0) || (limit !== undefined && !(limit > 0))) throw fail("maxDowntimeMs must be >= 0 and bandwidthBytesPerSec > 0");
  const t0 = performance.now();
  const { vm, machine } = src;
  const p2m = machine.p2m;
  const userCap = src.capPct();
  let throttle = 0;
  let maxThrottle = 0;
  let paused = false;
  let wasRunning = vm.state === "running";
  let goSent = false;
  let postcopyRunning = false;
  let pcSocket: Socket | undefined;
  let pcBytes = 0;
  let socket: Socket | undefined;
  let writer: MessageWriter | undefined;
  let disks: DiskCopier | undefined;
  const stats = { pages: 0, zero: 0 };

  const setThrottle = (pct: number) => {
    throttle = pct;
    maxThrottle = Math.max(maxThrottle, pct);
    vm.setCap(throttledCap(pct, userCap, src.meta().cpus, src.maxCapPct()));
  };

  try {
    socket = await connectMigration(to.host, to.port, to.tls ? tlsKey(to.token) : undefined, CONNECT_TIMEOUT_MS);
    const reader = new MessageReader(socket, "the target");
    writer = new MessageWriter(socket, "the target");
    const w = writer;
    const peerName = "the target";
    const next = (cmd: Cmd, what: string, ms = REPLY_TIMEOUT_MS) => reader.next(ms, what).then((m) => expect(m, cmd, peerName));

    // ---- hello: both sides prove they know the token ----
    const hello = readJson(await next(Cmd.Hello, "its Hello").catch((e: Error) => {
      // A listener that takes only TLS waits for a handshake that a plain source never starts.
      throw !to.tls && reader.received === 0 ? new MigrationError(`${e.message} (it said nothing: does it take migrations only over TLS? then --tls)`) : e;
    }), peerName);
    const version = hello.int("version", 0, 0xffff);
    if (version !== MIGRATION_VERSION) throw new MigrationError(`the target speaks migration version ${version}, this host ${MIGRATION_VERSION}`);
    const theirNonce = hello.bytes("nonce", 64);
    const myNonce = newNonce();
    await w.json(Cmd.Hello, { version: MIGRATION_VERSION, nonce: myNonce.toString("base64"), mac: mac(to.token, "source", theirNonce).toString("base64") });
    const ack = readJson(await next(Cmd.Ack, "the answer to its Hello"), peerName);
    if (!macMatches(to.token, "target", myNonce, ack.bytes("mac", 64))) throw new MigrationError("the target does not know the token (it answered with a wrong proof)");

    // ---- config ----
    // One pace for the main stream, pages and disks alike, restarted by each run of sends (no burst after a wait for an Ack).
    const pacer = limit ? new Pacer(limit, () => w.sent) : undefined;
    disks = opts.disks && opts.disks.length > 0 ? new DiskCopier(opts.disks, w, () => check(), () => afterSend()) : undefined;
    await w.json(Cmd.Config, {
      vm: src.meta(), postcopy: opts.postcopy === true || opts.postcopy === "auto",
      ...(opts.definition !== undefined ? { definition: opts.definition } : {}),
      ...(disks ? { disks: disks.announce() } : {}),
    });
    await next(Cmd.Ack, "the VM to be created there");

    /** Post-copy: every pending page, those the target asks for first; resolves once it has them all. */
    const pushPending = async (pc: { reader: MessageReader; writer: MessageWriter }, pending: number[]): Promise<NonNullable<MigrationResult["postcopy"]>> => {
      const start = performance.now();
      const pcPacer = limit ? new Pacer(limit, () => pc.writer.sent) : undefined;
      pcPacer?.begin();
      const sent = new Uint8Array(p2m.count);
      const isPending = new Uint8Array(p2m.count);
      for (const i of pending) isPending[i] = 1;
      let fetched = 0;
      let pages = 0;
      const sendNow = async (indices: number[]) => {
        for (let k = 0; k < indices.length;) {
          check();
          const run = encodePages(p2m, indices, k, false, buf);
          k += run.used;
          pages += run.pages;
          await pc.writer.send(Cmd.Memory, Buffer.from(run.payload));
          await pcPacer?.pace();
        }
      };
      const serveFetches = async () => {
        for (let m = pc.reader.poll(); m; m = pc.reader.poll()) {
          const wanted = readFetch(expect(m, Cmd.Fetch, "the target's migration thread").payload, p2m.count).filter((i) => isPending[i] && !sent[i]);
          for (const i of wanted) sent[i] = 1;
          fetched += wanted.length;
          await sendNow(wanted);
        }
      };
      for (let k = 0; k < pending.length;) {
        await serveFetches();
        const batch: number[] = [];
        while (k < pending.length && batch.length < 64) {
          const i = pending[k++];
          if (!sent[i]) {
            sent[i] = 1;
            batch.push(i);
          }
        }
        await sendNow(batch);
      }
      await pc.writer.send(Cmd.Memory, Buffer.alloc(4));
      for (;;) {
        const m = await pc.reader.next(REPLY_TIMEOUT_MS, "it to map the last pages");
        if (m.cmd === Cmd.Fetch) continue; // asked before the last pages came: it has them now
        expect(m, Cmd.Ack, "the target's migration thread");
        break;
      }
      pcBytes = pc.writer.sent;
      return { pages, fetched, ms: performance.now() - start };
    };

    const check = () => {
      if (!src.alive()) throw new MigrationError("the VM stopped during the migration");
    };
    const buf = pageBuffer();
    let inflight: Promise<void>[] = [];
    let inflightBytes = 0;
    // The rounds' figures, reported by report(); the log is there from round 0 (not while disks go whole before it).
    let log: DirtyLog | undefined;
    let round = 0;
    let lastTake = 0;
    let dirtyRate = 0;
    let bandwidth = 0; // measured by round 0's end
    let lastReport = 0;
    const report = (linkBytesPerSec: number, inRound: boolean) => {
      const dirtyNow = log?.count() ?? 0;
      const sinceTake = (performance.now() - lastTake) / 1000;
      const rate = sinceTake > 0 ? (dirtyNow * FRAME_SIZE) / sinceTake : 0;
      // The round's end sets the rate the last report gives (the final phase's in-round reports see an emptied log).
      if (!inRound) dirtyRate = rate;
      const dirtyDiskBytes = disks?.dirtyBytes() ?? 0;
      const expectedDowntimeMs = ((dirtyNow * FRAME_SIZE + dirtyDiskBytes) / linkBytesPerSec) * 1000;
      lastReport = performance.now();
      opts.progress?.({
        round, sentBytes: w.sent, dirtyPages: dirtyNow, dirtyRateBytesPerSec: rate, bandwidthBytesPerSec: linkBytesPerSec, expectedDowntimeMs, throttlePct: throttle,
        ...(disks ? { dirtyDiskBytes } : {}), ...(inRound ? { inRound } : {}),
      });
      return expectedDowntimeMs;
    };
    // A run of sends (a round's pages, the disks' part of one): paced from its
    // start, and its figures so far reported now and then.
    let runStart = 0;
    let runFrom = 0;
    const beginRun = () => {
      runStart = performance.now();
      runFrom = w.sent;
      pacer?.begin();
    };
    /** After each message of a run. */
    const afterSend = async () => {
      await pacer?.pace();
      const now = performance.now();
      if (opts.progress && now - Math.max(runStart, lastReport) >= PROGRESS_EVERY_MS && w.sent - runFrom >= 64 << 10) {
        report(measure(w.sent - runFrom, (now - runStart) / 1000, limit, undefined), true);
      }
    };
    /** Send pages `indices`; returns the seconds it took. */
    const sendPages = async (indices: ArrayLike<number>, skipZero: boolean, endRound = true): Promise<number> => {
      const start = performance.now();
      beginRun();
      for (let k = 0; k < indices.length;) {
        check();
        const run = encodePages(p2m, indices, k, skipZero, buf);
        k += run.used;
        if (run.pages === 0) continue;
        stats.pages += run.pages - run.zero;
        stats.zero += run.zero;
        inflight.push(w.send(Cmd.Memory, Buffer.from(run.payload)));
        inflightBytes += run.payload.length;
        if (inflightBytes >= MAX_INFLIGHT) {
          await Promise.all(inflight);
          inflight = [];
          inflightBytes = 0;
        }
        await afterSend();
      }
      await Promise.all(inflight);
      inflight = [];
      inflightBytes = 0;
      if (endRound) {
        // The round ends when the target has written it all (not when the OS took it).
        await w.send(Cmd.Memory, Buffer.alloc(4));
        await next(Cmd.Ack, "it to write a round of pages");
      }
      return (performance.now() - start) / 1000;
    };

    // ---- disks copied along: recording changes, then their whole content ----
    if (disks) {
      disks.startTracking();
      beginRun();
      await disks.sendAll();
    }

    // ---- round 0: everything that is not zero, the VM running ----
    if (!(await src.holdVcpus())) throw new MigrationError("the VM stopped during the migration");
    log = src.dirtyLog();
    src.forgetDiffBase();
    log.take();
    src.releaseVcpus();
    lastTake = performance.now();
    const all: number[] = [];
    for (let i = 0; i < p2m.count; i++) if (!readsAsZero(p2m.entry(i))) all.push(i);
    let before = w.sent;
    let secs = await sendPages(all, true);
    bandwidth = measure(w.sent - before, secs, limit, undefined);
    let prevDirty = Infinity;
    let notShrinking = 0;
    let usePostcopy = false;

    // ---- dirty rounds ----
    for (;;) {
      check();
      const expectedDowntimeMs = report(bandwidth, false);
      // Post-copy: at once after round 0, or ("auto") once pre-copy stops getting anywhere.
      if (opts.postcopy === true && vm.state === "running") {
        usePostcopy = true;
        break;
      }
      if (expectedDowntimeMs <= maxDowntimeMs || vm.state !== "running") break;
      if (opts.postcopy === "auto" && (notShrinking >= 1 || round >= maxRounds)) {
        usePostcopy = true;
        break;
      }
      if (round >= maxRounds) break;
      round++;
      if (!(await src.holdVcpus())) throw new MigrationError("the VM stopped during the migration");
      const dirty = log.take();
      src.releaseVcpus();
      lastTake = performance.now();
      notShrinking = dirty.length > prevDirty * 0.9 ? notShrinking + 1 : 0;
      if (opts.autoConverge !== false && !opts.postcopy) {
        if (notShrinking >= 2 && throttle < THROTTLE_MAX_PCT) {
          setThrottle(nextThrottle(throttle));
          notShrinking = 0;
        }
      }
      prevDirty = dirty.length;
      before = w.sent;
      const diskStart = performance.now();
      beginRun();
      await disks?.sendChanged();
      secs = (performance.now() - diskStart) / 1000 + (await sendPages(dirty, false));
      if (w.sent - before >= 1 << 20) bandwidth = measure(w.sent - before, secs, limit, bandwidth);
    }

    // ---- final phase: paused ----
    opts.phase?.("final");
    wasRunning = vm.state === "running";
    const pausedAt = performance.now();
    await vm.pause();
    trace("pause", pausedAt);
    paused = true;
    await src.quiesce();
    await machine.pauseDevices();
    trace("pauseDevices", pausedAt);
    check();
    const last = log.take();
    // Disks go whole before the target runs, post-copy or not.
    beginRun();
    await disks?.sendChanged();
    await opts.releaseStorage?.();
    if (!usePostcopy) await sendPages(last, false, false);
    trace("lastPages", pausedAt);
    await w.json(Cmd.State, machine.saveState());
    trace("state", pausedAt);
    if (usePostcopy) await w.send(Cmd.Pending, writeBitmap(last, p2m.count));
    await w.json(Cmd.Complete, usePostcopy ? { run: wasRunning, postcopy: true } : { run: wasRunning });
    const ready = readJson(await next(Cmd.Ready, "it to restore the VM"), peerName);
    trace("ready", pausedAt);
    let pc: { reader: MessageReader; writer: MessageWriter; socket: Socket } | undefined;
    if (usePostcopy) {
      // The second connection, to the target's migration thread, before Go: it must be there when the guest faults.
      const p = ready.obj("postcopy");
      const port = p.int("port", 1, 65535);
      const key = p.bytes("key", 64);
      const s = await connectMigration(to.host, port, to.tls ? Buffer.from(key) : undefined, CONNECT_TIMEOUT_MS);
      pcSocket = s;
      pc = { socket: s, reader: new MessageReader(s, "the target's migration thread"), writer: new MessageWriter(s, "the target's migration thread") };
      await pc.writer.json(Cmd.Hello, { key: Buffer.from(key).toString("base64") });
      expect(await pc.reader.next(REPLY_TIMEOUT_MS, "it to take the post-copy connection"), Cmd.Ack, "the target's migration thread");
    }
    check();
    goSent = true;
    await w.json(Cmd.Go, {});
    await next(Cmd.Resumed, "it to run the VM");
    trace("resumed", pausedAt);
    const downtimeMs = performance.now() - pausedAt;
    let postcopy: MigrationResult["postcopy"];
    if (pc) {
      postcopyRunning = true;
      opts.phase?.("postcopy");
      socket.end();
      postcopy = await pushPending(pc, last);
    }
    // The last report has every field the rounds' had (nothing of the disks is left to send): a poll that sees it shows the same line.
    opts.progress?.({
      round: round + 1, sentBytes: w.sent, dirtyPages: 0, dirtyRateBytesPerSec: dirtyRate, bandwidthBytesPerSec: bandwidth, expectedDowntimeMs: downtimeMs, throttlePct: throttle,
      ...(disks ? { dirtyDiskBytes: 0 } : {}),
    });
    socket.end();
    const result: MigrationResult = {
      target: where, rounds: round + 1, sentBytes: w.sent + pcBytes, pagesSent: stats.pages, zeroPagesSent: stats.zero,
      totalMs: performance.now() - t0, downtimeMs, maxThrottlePct: maxThrottle, ...(postcopy ? { postcopy } : {}),
      ...(disks ? { diskBytes: disks.sentBytes } : {}),
    };
    await src.end(`migrated to ${where}`);
    await vm.destroy();
    return result;
  } catch (e) {
    const reason = (e as Error).message.replace(/\s+/g, " ");
    pcSocket?.destroy();
    if (postcopyRunning) {
      // The guest runs there, part of its memory still here: neither copy can go on (as QEMU).
      src.leaveDevicesPaused();
      socket?.destroy();
      throw fail(`post-copy broke off after the VM started on the target (${reason}); the guest is lost: its memory is split between the two hosts. The paused copy here is stale: do not resume it, destroy it`);
    }
    if (goSent) {
      // The target may run it: this copy must not (see the header).
      src.leaveDevicesPaused();
      socket?.destroy();
      throw fail(`Go was sent but the target did not confirm it runs the VM (${reason}); the VM stays PAUSED here: resume it only if it does not run on ${where}`);
    }
    if (writer) writer.abandon(reason); // says why, then closes
    else socket?.destroy();
    disks?.stopTracking();
    if (paused && src.alive()) {
      machine.resumeDevices();
      if (wasRunning && vm.state === "paused") vm.resume();
    }
    throw e instanceof MigrationError && e.message.startsWith("migration of") ? e : fail(reason);
  } finally {
    if (throttle > 0 && vm.state !== "destroyed") setThrottle(0);
  }
}

const TRACE = process.env.TSVISOR_MIGRATION_TRACE === "1";
function trace(what: string, since: number): void {
  if (TRACE) process.stderr.write(`migration: ${what} at ${(performance.now() - since).toFixed(2)} ms (t=${performance.now().toFixed(1)})\n`);
}

/** A Fetch payload: u32 count, then the page indices, each checked. */
function readFetch(payload: Buffer, pages: number): number[] {
  if (payload.length < 4) throw new MigrationError("a Fetch message without its count");
  const n = payload.readUInt32LE(0);
  if (payload.length !== 4 + 4 * n) throw new MigrationError(`a Fetch message of ${payload.length} bytes for ${n} pages`);
  const out: number[] = [];
  for (let k = 0; k < n; k++) {
    const i = payload.readUInt32LE(4 + 4 * k);
    if (i >= pages) throw new MigrationError(`a Fetch for page ${i}, the VM has ${pages}`);
    out.push(i);
  }
  return out;
}

/** Bytes per second a run of sends achieved (the limit, when one is set and lower). */
function measure(bytes: number, secs: number, limit: number | undefined, previous: number | undefined): number {
  if (bytes < 64 << 10 || secs <= 0) return previous ?? limit ?? 1e9;
  const bw = bytes / secs;
  return limit ? Math.min(limit, bw) : bw;
}

/** Holds a stream to `limit` bytes a second (QEMU's max-bandwidth): from begin(), what was sent against the time since. */
class Pacer {
  private start = 0;
  private from = 0;

  constructor(private readonly limit: number, private readonly sent: () => number) {}

  begin(): void {
    this.start = performance.now();
    this.from = this.sent();
  }

  /** After a send: waits while the stream is ahead of the limit by more than 2 ms. */
  async pace(): Promise<void> {
    const ahead = ((this.sent() - this.from) / this.limit) * 1000 - (performance.now() - this.start);
    if (ahead > 2) await new Promise((r) => setTimeout(r, ahead));
  }
}
