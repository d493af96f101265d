// The host's memory manager (DESIGN.md, "The host layer"): one per host, on
// the main thread, over the host's frame pool. It keeps the pool from running
// dry when the VMs' memory adds up to more than the pool holds, with every
// mechanism ESXi has, cheapest for the guest first (ESX lists sharing first:
// like tsvisor's while overcommitted, it runs in the background all the time):
//
//   1. balloon: a guest that runs a balloon driver and reports free memory is
//      asked for it first; the guest picks what to give (its free pages), so
//      nothing it uses is touched. It takes seconds, so it is asked early;
//   2. page sharing (page-sharing.ts): runs all the time at its own rate, and
//      one pass more under pressure; costs the guest nothing until it writes
//      a shared page;
//   3. compression (reclaim.ts): cold pages, picked by the clock over
//      accessed bits, into a bounded pool; a fault brings one back in
//      microseconds;
//   4. swap: pages that do not halve, and compressed pages pushed out of a
//      full pool, go to the swap file; a fault costs a file read.
//
// Pressure is the pool's free frames below the low watermark; reclaim runs
// until they are above the high one. A VM whose fault finds no frame at all
// (everything full) waits paused, with a message, until memory is free again:
// nothing is killed and no page is dropped (waitForMemory).

import type { FramePool, FrameOwner } from "../frame-pool.js";
import { FRAME_SIZE } from "../frame-pool.js";
import { CompressedStore, SwapFile } from "../store/index.js";
import { P2mCounter } from "../p2m.js";
import { Absent, absentEntry, absentKind, entryFrame, entrySlot, isPresent, type PageCensus } from "../p2m-entry.js";
import { withClaims, finish } from "./held-pages.js";
import { PageSharing, type SharingOptions, type SharingStats } from "./page-sharing.js";
import { Reclaimer, type ReclaimVm, type ReclaimCounts } from "./reclaim.js";
import { PageStore } from "./page-store.js";

export interface OvercommitOptions {
  /** Page sharing, within each VM unless VMs are put in one share group.
   *  "auto" (the default, as ksmtuned runs KSM): the scanner runs while the
   *  VMs' memory adds up to more than the pool or the pool is three-quarters
   *  full, and rests otherwise (its passes briefly stop the VMs it merges in).
   *  true: always; an object: always, at that rate; false: never. */
  sharing?: boolean | "auto" | Partial<SharingOptions>;
  /** Bytes of the compressed page pool (0: no compression). Default: 1/8 of the pool, at most 256 MiB. */
  compressBytes?: number;
  /** A swap file (default none). */
  swap?: { path: string; bytes: number };
  /** Take memory back from guests under pressure (default on). */
  reclaim?: boolean;
  /** Ask guests' balloon drivers first (default on). */
  balloonFirst?: boolean;
  /** Free frames below which reclaim starts, and up to which it goes (default 2 % and 4 % of the pool, at least 4 and 8 MiB). */
  lowWaterBytes?: number;
  highWaterBytes?: number;
}

/** What the manager needs of a VM's balloon (devices/virtio/balloon.ts). */
export interface BalloonControl {
  /** The guest's available memory as its driver last reported it. */
  guestAvailableBytes(): number | undefined;
  readonly targetBytes: number;
  setTarget(bytes: number): void;
}

export interface MemoryVm extends ReclaimVm {
  /** Undefined until the guest's driver is up. */
  balloon(): BalloonControl | undefined;
}

export interface VmMemoryStats {
  /** Guest frames by state. */
  pages: PageCensus;
  cowBreaks: number;
  /** Sharing breaks that had the VM's harts flush their TLBs first (p2m.ts shootDownTlbs). */
  tlbShootdowns: number;
  decompressions: number;
  swapIns: number;
  /** Host reads of compressed or swapped pages that left them there (double paging avoided). */
  storeReads: number;
}

export interface HostMemoryStats {
  poolBytes: number;
  /** Frames by state over the whole pool. */
  frames: { free: number; inUse: number; shared: number };
  /** Sum of the VMs' RAM, and that over the pool: the overcommit. */
  guestRamBytes: number;
  overcommit: number;
  compressed: { capacityBytes: number; usedBytes: number; storedBytes: number; pages: number } | undefined;
  swap: { capacityBytes: number; usedBytes: number; path: string } | undefined;
  sharing: (SharingStats & { enabled: boolean; scanning: boolean }) | undefined;
  reclaim: ReclaimCounts & { enabled: boolean; lowWaterBytes: number; highWaterBytes: number; lastError: string | undefined };
  /** Pages guests gave back through their balloons and free page reporting since the start. */
  balloon: { inflated: number; reported: number; skipped: number };
  /** VMs paused until memory is free. */
  waiting: string[];
  /** The process's resident memory, and the freed frames whose pages went back to the kernel. */
  processResidentBytes: number;
  releasedToKernelBytes: number;
}

const TICK_MS = 50;
const DEFAULT_SHARING: SharingOptions = { pagesPerPass: 2048, intervalMs: 100 };
/** Pages stowed per held batch: a batch stops the VM's vCPUs for about a millisecond. */
const RECLAIM_BATCH = 512;
/** Freed frames given back to the kernel per tick: at least this many (fewer
 *  wait for the next), at most that many: scattered frames cost about 25 us
 *  each (the kernel splits the transparent huge page around them), so a tick
 *  spends at most ~50 ms of the main thread on it; neighbours go in one call. */
const TRIM_MIN_FRAMES = 256;
const TRIM_MAX_FRAMES = 2048;
/** A guest keeps this much of its own free memory when the host asks its balloon. */
const BALLOON_GUEST_MARGIN = 32 << 20;
/** After asking balloons, how long to give them before the host reclaims itself. */
const BALLOON_GRACE_MS = 2000;

export class MemoryManager {
  readonly store: PageStore;
  private readonly sharing: PageSharing | undefined;
  private readonly sharingRate: SharingOptions;
  private readonly reclaimer: Reclaimer;
  private readonly vms = new Set<MemoryVm>();
  private readonly waiting = new Map<MemoryVm, () => void>();
  private readonly lowWaterFrames: number;
  private readonly highWaterFrames: number;
  private readonly reclaimOn: boolean;
  private readonly sharingAuto: boolean;
  private readonly balloonFirst: boolean;
  private readonly timer: NodeJS.Timeout;
  private busy = false;
  private lastSharingPass = 0;
  private balloonAskedAt = -Infinity;
  private readonly discards = { inflated: 0, reported: 0, skipped: 0 };
  private lastFreeDepth = 0;
  private trimmedFrames = 0;
  /** Frames held only as a cache (restored clones' shared snapshot pages): dropped first under pressure. */
  private readonly caches: (() => number)[] = [];

  constructor(private readonly pool: FramePool, opts: OvercommitOptions, newOwner: () => FrameOwner) {
    const poolBytes = pool.limitBytes;
    const compressBytes = opts.compressBytes ?? Math.min(Math.floor(poolBytes / 8), 256 << 20);
    const compressed = compressBytes >= FRAME_SIZE ? CompressedStore.create(compressBytes) : undefined;
    const swap = opts.swap ? SwapFile.open(opts.swap.path, opts.swap.bytes) : undefined;
    this.store = new PageStore(compressed, swap);
    this.sharingRate = { ...DEFAULT_SHARING, ...(typeof opts.sharing === "object" ? opts.sharing : {}) };
    this.sharing = opts.sharing === false ? undefined : new PageSharing(pool, newOwner);
    this.sharingAuto = opts.sharing === undefined || opts.sharing === "auto";
    this.reclaimOn = opts.reclaim ?? true;
    this.balloonFirst = opts.balloonFirst ?? true;
    this.reclaimer = new Reclaimer(pool, this.store, { compress: compressed !== undefined, swap: swap !== undefined });
    const frames = poolBytes / FRAME_SIZE;
    this.lowWaterFrames = Math.ceil((opts.lowWaterBytes ?? Math.max(poolBytes * 0.02, 4 << 20)) / FRAME_SIZE);
    this.highWaterFrames = Math.min(Math.ceil((opts.highWaterBytes ?? Math.max(poolBytes * 0.04, 8 << 20)) / FRAME_SIZE), frames);
    if (this.highWaterFrames < this.lowWaterFrames) this.highWaterFrames = this.lowWaterFrames;
    // Half the low watermark stays for the host's own allocations (a VM's
    // translation cache, a new VM's hart blocks) when guests fill the pool.
    pool.guestReserveFrames = Math.floor(this.lowWaterFrames / 2);
    this.timer = setInterval(() => void this.tick(), TICK_MS);
    this.timer.unref();
  }

  add(vm: MemoryVm): void {
    this.vms.add(vm);
    vm.p2m.usePageSource(this.store);
    this.sharing?.add(vm);
    this.reclaimer.add(vm);
  }

  remove(vm: MemoryVm): void {
    this.vms.delete(vm);
    this.waiting.delete(vm);
    this.sharing?.remove(vm);
    this.reclaimer.remove(vm);
  }

  /** Free frames in the pool now (freed ones and ones never handed out). */
  get freeFrames(): number {
    const s = this.pool.stats();
    return s.framesFree + s.framesNeverUsed;
  }

  /** `vm` found no frame for a fault: it stays paused until reclaim makes room, then `resume` is called. */
  waitForMemory(vm: MemoryVm, resume: () => void): void {
    this.waiting.set(vm, resume);
    void this.tick();
  }

  vmStats(vm: MemoryVm): VmMemoryStats {
    const p = vm.p2m;
    return {
      pages: p.census(),
      cowBreaks: p.counter(P2mCounter.CowBreaks),
      tlbShootdowns: p.counter(P2mCounter.Shootdowns),
      decompressions: p.counter(P2mCounter.Decompressions),
      swapIns: p.counter(P2mCounter.SwapIns),
      storeReads: p.counter(P2mCounter.StoreReads),
    };
  }

  stats(): HostMemoryStats {
    const s = this.pool.stats();
    const guestRamBytes = [...this.vms].reduce((n, vm) => n + vm.p2m.count * FRAME_SIZE, 0);
    const c = this.store.compressed?.stats();
    const w = this.store.swap?.stats();
    const sharing = this.sharing?.stats();
    return {
      poolBytes: this.pool.limitBytes,
      frames: { free: s.framesFree + s.framesNeverUsed, inUse: s.framesInUse, shared: sharing?.sharedFrames ?? 0 },
      guestRamBytes,
      overcommit: guestRamBytes / this.pool.limitBytes,
      compressed: c && { capacityBytes: c.capacityBytes, usedBytes: c.usedBytes, storedBytes: c.storedBytes, pages: c.objects },
      swap: w && { capacityBytes: w.capacityBytes, usedBytes: w.usedSlots * FRAME_SIZE, path: w.path },
      sharing: sharing && { ...sharing, enabled: true, scanning: this.sharingWanted() },
      reclaim: {
        ...this.reclaimer.counts, enabled: this.reclaimOn,
        lowWaterBytes: this.lowWaterFrames * FRAME_SIZE, highWaterBytes: this.highWaterFrames * FRAME_SIZE,
        lastError: this.reclaimer.lastError?.message,
      },
      balloon: { ...this.discards },
      waiting: [...this.waiting.keys()].map((v) => v.name),
      processResidentBytes: process.memoryUsage.rss(),
      releasedToKernelBytes: this.trimmedFrames * FRAME_SIZE,
    };
  }

  /**
   * The guest gave these pages up (its balloon inflated, or it reported them
   * free): their frames and store slots go back, and their entries say why
   * (a touch maps a zeroed frame). Pages being moved at that moment by
   * another thread are left as they are (counted as skipped): the guest
   * does not use them either way.
   */
  async discard(vm: MemoryVm, indices: readonly number[], kind: Absent.Ballooned | Absent.Reported): Promise<void> {
    let left = [...indices];
    for (let tries = 0; left.length > 0 && tries < 20; tries++) {
      const claims = left
        .map((index) => ({ vm, index, seen: vm.p2m.entry(index), ignoreAccessed: true }))
        .filter((c) => isPresent(c.seen) || absentKind(c.seen) !== Absent.Busy);
      const done = new Set<number>();
      const held = await withClaims(claims, (claimed) => {
        for (const c of claimed) {
          const e = c.was!;
          finish(c, absentEntry(kind));
          if (isPresent(e)) {
            this.pool.free(entryFrame(e)); // a shared frame loses one reference
            vm.p2m.notePopulated(-1);
          } else if (absentKind(e) === Absent.Compressed || absentKind(e) === Absent.Swapped) {
            this.store.freeSlot(absentKind(e) as Absent.Compressed | Absent.Swapped, entrySlot(e));
          }
          done.add(c.index);
        }
      });
      if (!held && !this.vms.has(vm)) return; // the VM stopped
      left = left.filter((i) => !done.has(i));
      if (left.length > 0) await new Promise((r) => setTimeout(r, 1));
    }
    const n = indices.length - left.length;
    if (kind === Absent.Ballooned) this.discards.inflated += n;
    else this.discards.reported += n;
    this.discards.skipped += left.length;
  }

  /** Balloon deflate: the guest has these pages again (a touch maps a zeroed frame). */
  undiscard(vm: MemoryVm, indices: readonly number[]): void {
    for (const index of indices) vm.p2m.casEntry(index, absentEntry(Absent.Ballooned), absentEntry(Absent.Untouched));
  }

  /** `drop` gives back frames held only as a cache, returning how many: the
   *  first thing reclaim does (page-share.ts dropUnmapped). */
  addCache(drop: () => number): void {
    this.caches.push(drop);
  }

  /** Run one sharing pass now (tests, and bench:mem's density figures). */
  async shareNow(pages = this.sharingRate.pagesPerPass): Promise<number> {
    return this.sharing ? this.sharing.pass(pages) : 0;
  }

  /** Reclaim until the pool has `frames` free (tests and benchmarks); resolves to the pages taken. */
  async reclaimNow(frames = this.highWaterFrames): Promise<number> {
    let taken = 0;
    for (const drop of this.caches) if (this.freeFrames < frames) drop();
    for (let tries = 0; this.freeFrames < frames && tries < 1000; tries++) {
      const n = await this.reclaimer.reclaim(RECLAIM_BATCH);
      this.reclaimer.spillCompressed(this.spillTarget());
      if (n === 0) break;
      taken += n;
    }
    return taken;
  }

  close(): void {
    clearInterval(this.timer);
    this.store.close();
  }

  private async tick(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const now = performance.now();
      if (this.sharing && this.sharingWanted() && now - this.lastSharingPass >= this.sharingRate.intervalMs) {
        this.lastSharingPass = now;
        await this.sharing.pass(this.sharingRate.pagesPerPass);
      }
      this.reclaimer.spillCompressed(this.spillTarget());
      if (this.freeFrames < this.lowWaterFrames || this.waiting.size > 0) await this.relievePressure();
      if (this.freeFrames >= this.lowWaterFrames) this.wakeWaiting();
      this.trimFreed();
    } finally {
      this.busy = false;
    }
  }

  private async relievePressure(): Promise<void> {
    if (!this.reclaimOn) return;
    // Cached frames cost no guest anything: they go before balloons are asked.
    for (const drop of this.caches) drop();
    if (this.freeFrames >= this.highWaterFrames && this.waiting.size === 0) return;
    const now = performance.now();
    if (this.balloonFirst) {
      if (now - this.balloonAskedAt >= BALLOON_GRACE_MS) this.askBalloons();
      // Guests are giving memory back: unless the pool is nearly dry, let them.
      const giving = now - this.balloonAskedAt < BALLOON_GRACE_MS;
      if (giving && this.waiting.size === 0 && this.freeFrames > this.lowWaterFrames / 2) return;
    }
    if (this.sharing) await this.sharing.pass(this.sharingRate.pagesPerPass * 4);
    for (let tries = 0; this.freeFrames < this.highWaterFrames && tries < 16; tries++) {
      const n = await this.reclaimer.reclaim(RECLAIM_BATCH);
      this.reclaimer.spillCompressed(this.spillTarget());
      if (n === 0) break;
    }
  }

  /** Raise the balloon targets of guests that report free memory; true when one was raised. */
  private askBalloons(): boolean {
    const need = (this.highWaterFrames - this.freeFrames) * FRAME_SIZE;
    if (need <= 0) return false;
    let asked = false;
    const balloons = [...this.vms].map((vm) => vm.balloon()).filter((b): b is BalloonControl => b !== undefined);
    for (const b of balloons) {
      const spare = (b.guestAvailableBytes() ?? 0) - BALLOON_GUEST_MARGIN;
      if (spare <= 0) continue;
      const more = Math.min(spare, Math.ceil(need / balloons.length));
      b.setTarget(b.targetBytes + Math.floor(more / FRAME_SIZE) * FRAME_SIZE);
      asked = true;
    }
    if (asked) this.balloonAskedAt = performance.now();
    return asked;
  }

  /** Frames freed since the last tick leave the process (pool.trimFree): those
   *  on top of the free stack, as many as the stack grew by. */
  private trimFreed(): void {
    const free = this.pool.stats().framesFree;
    const grew = free - this.lastFreeDepth;
    if (grew >= TRIM_MIN_FRAMES) this.trimmedFrames += this.pool.trimFree(Math.min(grew, TRIM_MAX_FRAMES));
    this.lastFreeDepth = free;
  }

  /** Should the scanner run now? */
  private sharingWanted(): boolean {
    if (!this.sharingAuto) return true;
    let ram = 0;
    for (const vm of this.vms) ram += vm.p2m.count;
    const frames = this.pool.limitBytes / FRAME_SIZE;
    return ram > frames || this.freeFrames < frames / 4;
  }

  private spillTarget(): number {
    const cap = this.store.compressed?.stats().capacityBytes ?? 0;
    return Math.floor(cap * 0.9);
  }

  private wakeWaiting(): void {
    const waiting = [...this.waiting];
    this.waiting.clear();
    for (const [, resume] of waiting) resume();
  }
}
