// Writing and opening whole snapshots: the sections of a VM (format.ts) in
// the order restore needs them.
//
//   "meta"     who wrote it (tsvisor version), its id, its parent (a diff
//              snapshot), the VM's shape, and what the caller adds (the
//              daemon's VM definition, to rebuild the devices)
//   "machine"  harts, clocks, interrupt controllers, UART, RTC, virtio
//              devices with their queues (VirtMachine.saveState)
//   "pagemap", "pages"  guest RAM (memory.ts)

import { randomUUID } from "node:crypto";
import { resolve } from "node:path";
import { VERSION } from "../cli/version.js";
import type { P2m } from "../memory/p2m.js";
import { SnapshotWriter, SnapshotFile } from "./format.js";
import { writeMemory, PageWriter, SnapshotPages, type MemoryWriteResult } from "./memory.js";
import { readsAsZero } from "../memory/p2m-entry.js";
import { SnapshotError, StateReader, type Plain } from "./state.js";
import { ConvergenceWatch, THROTTLE_MAX_PCT, nextThrottle } from "./throttle.js";

/** What "meta" says. */
export interface SnapshotMeta {
  tsvisor: string;
  id: string;
  createdAt: string;
  /** A diff snapshot's parent: its path when written and its id. */
  parent?: { path: string; id: string };
  vm: { name: string; cpus: number; memBytes: number; cmdline: string; console: "ttyS0" | "hvc0" };
  /** The caller's own description of the VM (the daemon's VM definition). */
  definition?: Plain;
}

/**
 * A live snapshot (`vm snapshot --live`): the RAM is written while the VM
 * runs, then the pages it wrote meanwhile, round after round, and only the
 * last of them and the machine state in the pause, as QEMU's migration to a
 * file does. The state is that of the moment of the pause.
 */
export interface LiveCopy {
  /** The pages written since the last call (the first call starts the count). */
  takeDirty(): Promise<number[]>;
  /** Pause the vCPUs and the devices; the machine state then. */
  pause(): Promise<Plain>;
  /** Slow the vCPUs by this many percent (0: not at all), when the rounds do not converge. */
  throttle?(pct: number): void;
}

/** Rounds of dirty pages at most before the pause, and the set small enough to stop at once. */
const LIVE_ROUNDS = 8;
const LIVE_LAST_PAGES = 256;

/** A live snapshot after its first pass: pages written again, a round at a time. */
export interface LiveRound {
  /** 1, 2, ...: the rounds while the VM runs; the last, in the pause. */
  round: number;
  /** The VM is paused: this round's pages are the last. */
  paused: boolean;
  /** Pages of the round written so far, of `pages`. */
  donePages: number;
  pages: number;
}

export interface WriteSnapshotOptions {
  meta: Omit<SnapshotMeta, "tsvisor" | "id" | "createdAt">;
  /** The machine state, or, for a live snapshot, `live` gives it at the pause. */
  machine?: Plain;
  live?: LiveCopy;
  p2m: P2m;
  /** Diff snapshot: only these pages (the rest are the parent's). */
  dirty?: Set<number>;
  /** Pages gone through, of all of RAM; a live snapshot then reports its rounds too. */
  progress?(done: number, total: number, round?: LiveRound): void;
}

export interface WrittenSnapshot {
  path: string;
  id: string;
  bytes: number;
  memory: MemoryWriteResult;
  /** A live snapshot: how long the VM was paused for the last pages and the state (ms). */
  pausedMs?: number;
  /** A live snapshot: pages written again in rounds after the first pass. */
  rewrittenPages?: number;
  /** A live snapshot: how far auto-converge slowed the vCPUs (percent, 0 = not at all). */
  maxThrottlePct?: number;
}

export async function writeSnapshot(path: string, o: WriteSnapshotOptions): Promise<WrittenSnapshot> {
  const id = randomUUID();
  const meta: SnapshotMeta = { tsvisor: VERSION, id, createdAt: new Date().toISOString(), ...o.meta };
  const w = await SnapshotWriter.create(path);
  try {
    await w.json("meta", meta as unknown as Plain);
    if (o.live) {
      const live = await writeLive(w, o.p2m, o.live, o.progress);
      const bytes = w.bytesWritten;
      await w.finish();
      return { path: resolve(path), id, bytes, ...live };
    }
    if (o.machine === undefined) throw new Error("writeSnapshot: the machine state or a live copy is needed");
    await w.json("machine", o.machine);
    const memory = await writeMemory(w, o.p2m, o.dirty, o.progress);
    const bytes = w.bytesWritten;
    await w.finish();
    return { path: resolve(path), id, bytes, memory };
  } catch (e) {
    await w.abort();
    throw e;
  }
}

async function writeLive(w: SnapshotWriter, p2m: P2m, live: LiveCopy, progress?: WriteSnapshotOptions["progress"]): Promise<{ memory: MemoryWriteResult; pausedMs: number; rewrittenPages: number; maxThrottlePct: number }> {
  const pages = new PageWriter(w, p2m);
  await live.takeDirty();
  const count = p2m.count;
  for (let i = 0; i < count; i++) {
    if (!readsAsZero(p2m.entry(i))) await pages.write(i);
    if ((i & 1023) === 1023) progress?.(i + 1, count);
  }
  // The rounds after the first pass: a guest rewriting its memory keeps
  // them going, and they are what its user waits for then.
  const writeRound = async (dirty: number[], round: number, paused: boolean) => {
    for (let k = 0; k < dirty.length; k++) {
      if ((k & 255) === 0) progress?.(count, count, { round, paused, donePages: k, pages: dirty.length });
      await pages.write(dirty[k]);
    }
  };
  let rewritten = 0;
  let rounds = 0;
  // A guest that dirties pages as fast as they are written would make the
  // pause as long as a paused snapshot's: each round that does not shrink
  // the set slows its vCPUs a step more (auto-converge, throttle.ts), so the
  // last set, written in the pause, is small. The throttle ends at the pause.
  const watch = new ConvergenceWatch();
  let throttle = 0;
  try {
    while (rounds < LIVE_ROUNDS) {
      const dirty = await live.takeDirty();
      await writeRound(dirty, ++rounds, false);
      rewritten += dirty.length;
      if (dirty.length <= LIVE_LAST_PAGES) break;
      if (live.throttle && watch.round(dirty.length, 1) && throttle < THROTTLE_MAX_PCT) {
        throttle = nextThrottle(throttle);
        live.throttle(throttle);
      }
    }
  } catch (e) {
    if (throttle > 0) live.throttle?.(0);
    throw e;
  }
  const maxThrottlePct = throttle;
  const pausedAt = performance.now();
  const machine = await live.pause();
  if (throttle > 0) live.throttle?.(0);
  const last = await live.takeDirty();
  await writeRound(last, rounds + 1, true);
  const memory = await pages.finish();
  await w.json("machine", machine);
  progress?.(count, count);
  return { memory, pausedMs: performance.now() - pausedAt, rewrittenPages: rewritten + last.length, maxThrottlePct };
}

/** A snapshot opened for restore: its meta checked, its parents opened. */
export interface OpenedSnapshot {
  meta: SnapshotMeta;
  /** The machine section, to check and apply (VirtMachine.restoreState). */
  machine: StateReader;
  guestTicks: bigint;
  /** The snapshot, then its parents (a diff chain); they stay open while the VM runs. */
  chain: SnapshotFile[];
  pages: SnapshotPages;
  close(): void;
}

const MAX_CHAIN = 64;

export function openSnapshot(path: string): OpenedSnapshot {
  const chain: SnapshotFile[] = [];
  const close = () => {
    for (const f of chain) f.close();
  };
  try {
    const first = SnapshotFile.open(path);
    chain.push(first);
    const meta = readMeta(first);
    let child = meta;
    while (child.parent) {
      if (chain.length >= MAX_CHAIN) throw new SnapshotError(`${path}: a chain of more than ${MAX_CHAIN} diff snapshots`);
      const parent = SnapshotFile.open(child.parent.path);
      chain.push(parent);
      const pm = readMeta(parent);
      if (pm.id !== child.parent.id) throw new SnapshotError(`${parent.path} is not the parent this diff snapshot was taken against (another snapshot was written there since)`);
      if (pm.vm.memBytes !== meta.vm.memBytes || pm.vm.cpus !== meta.vm.cpus) throw new SnapshotError(`${parent.path} is of a VM with another shape than its diff`);
      child = pm;
    }
    const machine = new StateReader(first.json("machine"), "machine");
    const guestTicks = machine.u64("guestTicks");
    const pages = SnapshotPages.fromChain(chain, meta.vm.memBytes / 4096);
    return { meta, machine, guestTicks, chain, pages, close };
  } catch (e) {
    close();
    throw e;
  }
}

/** Only "meta", checked (`vm restore` reads it to rebuild the devices first). */
export function readSnapshotMeta(path: string): SnapshotMeta {
  const f = SnapshotFile.open(path);
  try {
    return readMeta(f);
  } finally {
    f.close();
  }
}

function readMeta(f: SnapshotFile): SnapshotMeta {
  const raw = f.json("meta");
  const r = new StateReader(raw, "meta");
  const tsvisor = r.str("tsvisor", 64);
  if (tsvisor !== VERSION) throw new SnapshotError(`${f.path} was written by tsvisor ${tsvisor}; this is tsvisor ${VERSION}, which restores only its own snapshots`);
  const vm = r.obj("vm");
  const cpus = vm.int("cpus", 1, 512);
  const memBytes = vm.int("memBytes", 4096, 2 ** 46);
  if (memBytes % 4096 !== 0) throw new SnapshotError(`${f.path}: meta.vm.memBytes is not a whole number of pages`);
  const meta: SnapshotMeta = {
    tsvisor, id: r.str("id", 64), createdAt: r.str("createdAt", 64),
    vm: { name: vm.str("name", 63), cpus, memBytes, cmdline: vm.str("cmdline", 65536), console: vm.oneOf("console", ["ttyS0", "hvc0"]) },
  };
  if (r.has("parent")) {
    const p = r.obj("parent");
    meta.parent = { path: p.str("path"), id: p.str("id", 64) };
  }
  // The caller checks its own part (the daemon validates a definition as it would a client's).
  if (r.has("definition")) meta.definition = (raw as Record<string, Plain>).definition;
  return meta;
}
