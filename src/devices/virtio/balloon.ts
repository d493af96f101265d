// virtio-balloon, the traditional memory balloon (virtio 1.2, 5.5 "Traditional
// Memory Balloon Device"; section numbers below are 1.2's, with their
// titles): how the host takes memory back from a running guest, for overcommit. The host sets a target
// (num_pages, in 4 KiB pages); the guest's driver allocates that many pages
// and names them on the inflate queue, and the host gives their frames back to
// its pool. When the target drops the driver names pages on the deflate queue
// and uses them again. Besides: guest memory statistics (statsq) and free page
// reporting (reporting_vq), where the guest names free pages it keeps but
// does not mind losing the contents of.
//
// The device never writes guest memory (every buffer it is given is read, or
// only its address matters) and talks to the host's memory manager only
// through BalloonMemory. The driver is hostile by assumption: every PFN,
// range and statistic from the rings is checked, and what fails a check is
// counted and skipped, never thrown.
//
// Linux is the driver to match: drivers/virtio/virtio_balloon.c and
// include/uapi/linux/virtio_balloon.h.

import type { VirtioDevice, VirtioContext } from "./virtio.js";
import { VIRTIO_ID_BALLOON } from "./virtio.js";
import { ChainError, QueueBroken, checkNoneInFlight, readHeldChains, type DescriptorChain, type VirtQueue } from "./queue.js";
import { SnapshotError, type Plain, type StateReader } from "../../snapshot/state.js";
import { GuestMemoryError } from "../../memory/guest-memory.js";
import { formatBytes } from "./format-bytes.js";

/** What the device needs of the host's memory manager (and all it may do to guest memory). */
export interface BalloonMemory {
  /** Take these guest pages from the guest (inflate or free page report): their host frames go back to the pool.
   *  gpas are 4 KiB-aligned guest-physical addresses, already checked to be guest RAM and deduplicated. Resolves when done. */
  discard(gpas: bigint[], reason: "balloon" | "reported"): Promise<void>;
  /** Deflate: the guest takes these (ballooned) pages back; they read as zero when touched. */
  reclaim(gpas: bigint[]): void;
  /** Is [gpa, gpa + len) guest RAM? */
  isRam(gpa: bigint, len: number): boolean;
  /** Bytes of guest RAM (inflate beyond it is refused). */
  readonly ramBytes: number;
}

/** A host-side request the balloon cannot do (a target outside guest RAM). */
export class BalloonError extends Error {}

// --- feature bits (5.5.3 "Feature bits") -------------------------------------

/** Not offered: the driver would have to wait for the device before it uses a
 *  deflated page again. Nothing here needs that: a ballooned page the guest
 *  touches early just gets a zero frame from the host (as any discarded page
 *  does), so the guest may deflate at once. */
export const VIRTIO_BALLOON_F_MUST_TELL_HOST = 1n << 0n;
export const VIRTIO_BALLOON_F_STATS_VQ = 1n << 1n;
/** The guest may deflate on its own when it runs out of memory (5.5.6.1
 *  "Driver Requirements: Device Operation"): better an overcommitted host
 *  than an OOM-killed guest. */
export const VIRTIO_BALLOON_F_DEFLATE_ON_OOM = 1n << 2n;
/** Not offered: free page hinting serves live migration (which pages need not be copied). */
export const VIRTIO_BALLOON_F_FREE_PAGE_HINT = 1n << 3n;
/** Not offered: with it the guest names a value its free pages must keep
 *  (poison_val), and a discarded page comes back zero. Linux then reports
 *  nothing from a guest that poisons or zeroes pages on free
 *  (virtballoon_validate turns PAGE_REPORTING off), a price worth a simpler device. */
export const VIRTIO_BALLOON_F_PAGE_POISON = 1n << 4n;
export const VIRTIO_BALLOON_F_PAGE_REPORTING = 1n << 5n;

/** Balloon pages are 4 KiB whatever the guest's page size (VIRTIO_BALLOON_PFN_SHIFT). */
export const BALLOON_PAGE_SHIFT = 12;
export const BALLOON_PAGE_SIZE = 1 << BALLOON_PAGE_SHIFT;
const PAGE = BigInt(BALLOON_PAGE_SIZE);

// --- configuration space (5.5.4 "Device configuration layout") ---------------
//   0  num_pages              le32  device: the target, in 4 KiB pages
//   4  actual                 le32  driver: pages it has in the balloon
//   8  free_page_hint_cmd_id  le32  FREE_PAGE_HINT only: reads 0
//  12  poison_val             le32  PAGE_POISON only: reads 0
const CONFIG_NUM_PAGES = 0;
const CONFIG_ACTUAL = 4;
const CONFIG_SIZE = 16;

// --- queues (5.5.2 "Virtqueues") ---------------------------------------------
//
// The spec lists inflateq 0, deflateq 1, statsq 2, free_page_vq 3,
// reporting_vq 4, each of the last three only with its feature. Over
// virtio-mmio Linux numbers only the queues it sets up (vm_find_vqs skips the
// unnamed ones without using up an index, and virtio_balloon's init_vqs names
// statsq and reporting_vq only when their features were negotiated):
// reporting_vq is queue 2 without STATS_VQ and 3 with it. FREE_PAGE_HINT is
// never offered, so four queues cover every case, and activate() maps
// index to role from the negotiated features.
type Role = "inflate" | "deflate" | "stats" | "free-page-hint" | "reporting";
const QUEUE_SIZE = 128;

/** PFNs in one inflate or deflate buffer at most (Linux sends 256, VIRTIO_BALLOON_ARRAY_PFNS_MAX): bounds the host work per buffer. */
export const MAX_PFNS_PER_BUFFER = 16384;
/** One reported range at most (Linux reports pageblocks: 2 MiB with 4 KiB pages, 512 MiB with 64 KiB ones). */
export const MAX_REPORT_RANGE = 1 << 30;
/** Pages in one report at most, 1 GiB: Linux reports at most 32 ranges at a
 *  time (PAGE_REPORTING_CAPACITY), 128 MiB on a RISC-V guest's 4 MiB blocks. */
export const MAX_REPORT_PAGES = 1 << 18;

// --- memory statistics (5.5.6.3 "Memory Statistics", 5.5.6.4 "... Tags") ----
// A buffer of packed {le16 tag, le64 val} entries, 10 bytes each.
const STAT_ENTRY = 10;
/** Bytes of a stats buffer read at most: Linux sends 16 entries (160 bytes); the rest is ignored. */
export const MAX_STATS_BYTES = 4096;
const S_SWAP_IN = 0;
const S_SWAP_OUT = 1;
const S_MAJFLT = 2;
const S_MINFLT = 3;
const S_MEMFREE = 4;
const S_MEMTOT = 5;
const S_AVAIL = 6;
const S_CACHES = 7;
const S_HTLB_PGALLOC = 8;
const S_HTLB_PGFAIL = 9;
/** Linux 6.12 added tags 10 to 15 (OOM kills, allocation stalls, scan and
 *  reclaim counts): known, so not counted as garbage, but not kept. */
const S_LINUX_LAST = 15;

/** What the guest last said of its memory (undefined: not in its last report, or no report yet). */
export interface BalloonGuestStats {
  /** Bytes swapped in and out since boot. */
  swapIn?: number;
  swapOut?: number;
  majorFaults?: number;
  minorFaults?: number;
  freeBytes?: number;
  totalBytes?: number;
  /** MemAvailable: what the guest could hand out without swapping. */
  availableBytes?: number;
  cachesBytes?: number;
  hugetlbAllocations?: number;
  hugetlbFailures?: number;
  /** When (options.now() ms) the report arrived. */
  updatedAt?: number;
}

/** What failed a check, by reason: skipped and counted, the rest of the request done. */
export interface BalloonRefusals {
  /** Inflated, deflated or reported pages outside guest RAM. */
  outsideRam: number;
  /** A page named twice in one request. */
  duplicate: number;
  /** Inflate (or report) of a page already in the balloon. */
  alreadyBallooned: number;
  /** Deflate of a page not in the balloon. */
  notBallooned: number;
  /** Reported ranges not 4 KiB aligned, longer than MAX_REPORT_RANGE, or past MAX_REPORT_PAGES. */
  badRange: number;
  /** Buffers of the wrong shape (device-writable where only readable makes
   *  sense, a length not a multiple of 4, too long, unreadable): completed
   *  with length 0 and nothing done. */
  malformed: number;
  /** Stats entries ignored: unknown tags, a trailing partial entry, bytes past MAX_STATS_BYTES. */
  statsIgnored: number;
}

export interface BalloonStats {
  targetPages: number;
  /** What the driver last wrote into `actual`. */
  actualPages: number;
  /** Pages the host holds (inflated and not deflated since). */
  balloonedPages: number;
  inflatedTotal: number;
  deflatedTotal: number;
  reportedTotal: number;
  refused: BalloonRefusals;
  /** memory.discard() calls that failed (the request is completed all the same). */
  discardErrors: number;
  guest: BalloonGuestStats;
}

export interface VirtioBalloonOptions {
  /** "balloon0" */
  name?: string;
  /** Ask the guest for fresh statistics this often (ms); 0: keep the first report. Default 2000. */
  statsIntervalMs?: number;
  /** The clock (ms), for tests. Default Date.now. */
  now?: () => number;
  /** Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM. Default true. */
  deflateOnOom?: boolean;
  /** Offer VIRTIO_BALLOON_F_PAGE_REPORTING. Default true. */
  reporting?: boolean;
}

export class VirtioBalloon implements VirtioDevice {
  readonly deviceId = VIRTIO_ID_BALLOON;
  readonly name: string;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE];
  readonly features: bigint;

  private readonly statsIntervalMs: number;
  private readonly now: () => number;
  private readonly ramPages: number;

  // Configuration space.
  private numPages = 0;
  private actual = 0;

  // The running driver (activate() to reset()).
  private ctx: VirtioContext | undefined;
  private queues: readonly (VirtQueue | undefined)[] = [];
  /** Role of each queue index under the negotiated features. */
  private roles: Role[] = [];
  /** A ring turned out broken while the device worked asynchronously: nothing more until reset. */
  private stopped = false;
  /** Bumped by reset() and quiesce(): work begun before must not touch the new rings. */
  private generation = 0;
  /** pauseIo() to resumeIo(): no request is taken and no stats buffer given back (the one in hand completes). */
  private ioPaused = false;

  /**
   * Pages in the balloon, by PFN: inflated (including the request whose
   * discard is under way) and not deflated. At most one per page of guest RAM,
   * since each is checked to be RAM and not already here.
   */
  private readonly ballooned = new Set<number>();
  /**
   * The discard under way, if any. One request at a time, whatever its queue:
   * the memory manager sees discards and reclaims in the order the driver
   * asked for them (Linux itself waits for each inflate, deflate and report
   * before the next), and a deflate never overtakes the inflate of its page.
   */
  private busy: Promise<void> | undefined;
  /** PFNs of the inflate request whose discard is under way. */
  private inFlightInflate: number[] | undefined;
  /** The queue index pump() looks at next. */
  private turn = 0;

  // Statistics (5.5.6.3): the buffer the device holds until it wants fresh figures.
  private statsHeld: { q: VirtQueue; chain: DescriptorChain } | undefined;
  private lastStatsRequest: number | undefined;
  private guest: BalloonGuestStats = {};

  // Counters, for the whole run.
  private inflatedTotal = 0;
  private deflatedTotal = 0;
  private reportedTotal = 0;
  private discardErrors = 0;
  private readonly refused: BalloonRefusals = {
    outsideRam: 0, duplicate: 0, alreadyBallooned: 0, notBallooned: 0, badRange: 0, malformed: 0, statsIgnored: 0,
  };

  constructor(private readonly memory: BalloonMemory, options: VirtioBalloonOptions = {}) {
    this.name = options.name ?? "balloon0";
    this.statsIntervalMs = Math.max(0, options.statsIntervalMs ?? 2000);
    this.now = options.now ?? Date.now;
    this.ramPages = Math.floor(memory.ramBytes / BALLOON_PAGE_SIZE);
    this.features = VIRTIO_BALLOON_F_STATS_VQ |
      (options.deflateOnOom ?? true ? VIRTIO_BALLOON_F_DEFLATE_ON_OOM : 0n) |
      (options.reporting ?? true ? VIRTIO_BALLOON_F_PAGE_REPORTING : 0n);
  }

  // --- the host's side -------------------------------------------------------

  /** The host wants `bytes` of guest RAM back (rounded to 4 KiB pages); 0 empties the balloon. */
  setTarget(bytes: number): void {
    if (!Number.isFinite(bytes) || bytes < 0 || bytes > this.memory.ramBytes) {
      throw new BalloonError(`${this.name}: balloon target ${bytes} bytes is outside 0..${this.memory.ramBytes} (the guest's RAM)`);
    }
    const pages = Math.min(Math.round(bytes / BALLOON_PAGE_SIZE), this.ramPages);
    if (pages === this.numPages) return;
    this.numPages = pages;
    // The driver reads num_pages at probe; a running one is told (4.2.2, config change interrupt).
    this.ctx?.configChanged();
  }

  /** The target in bytes. */
  get target(): number {
    return this.numPages * BALLOON_PAGE_SIZE;
  }

  stats(): BalloonStats {
    return {
      targetPages: this.numPages,
      actualPages: this.actual,
      balloonedPages: this.ballooned.size,
      inflatedTotal: this.inflatedTotal,
      deflatedTotal: this.deflatedTotal,
      reportedTotal: this.reportedTotal,
      refused: { ...this.refused },
      discardErrors: this.discardErrors,
      guest: this.guestStats(),
    };
  }

  guestStats(): BalloonGuestStats {
    return { ...this.guest };
  }

  statsLines(): string[] {
    const pages = (n: number) => formatBytes(n * BALLOON_PAGE_SIZE);
    const r = this.refused;
    const refused = r.outsideRam + r.duplicate + r.alreadyBallooned + r.notBallooned + r.badRange + r.malformed;
    const lines = [
      `${this.name}: target ${pages(this.numPages)}, guest says ${pages(this.actual)}, host holds ${pages(this.ballooned.size)}; ` +
        `inflated ${pages(this.inflatedTotal)}, deflated ${pages(this.deflatedTotal)}, reported ${pages(this.reportedTotal)}; ` +
        `${refused} refused, ${r.statsIgnored} stats ignored, ${this.discardErrors} discard errors`,
    ];
    const g = this.guest;
    if (g.updatedAt !== undefined) {
      const b = (n: number | undefined) => (n === undefined ? "?" : formatBytes(n));
      lines.push(
        `${this.name} guest: ${b(g.freeBytes)} free, ${b(g.availableBytes)} available of ${b(g.totalBytes)}, ` +
          `caches ${b(g.cachesBytes)}, swap in ${b(g.swapIn)} out ${b(g.swapOut)}, ` +
          `faults ${g.majorFaults ?? "?"} major ${g.minorFaults ?? "?"} minor (${Math.max(0, this.now() - g.updatedAt)} ms ago)`,
      );
    }
    return lines;
  }

  // --- configuration space (5.5.4) -------------------------------------------

  readConfig(offset: number, size: number): number {
    const b = new Uint8Array(CONFIG_SIZE);
    const dv = new DataView(b.buffer);
    dv.setUint32(CONFIG_NUM_PAGES, this.numPages, true);
    dv.setUint32(CONFIG_ACTUAL, this.actual, true);
    let v = 0;
    for (let i = 0; i < size; i++) v |= (offset + i >= 0 && offset + i < b.length ? b[offset + i] : 0) << (8 * i);
    return v >>> 0;
  }

  /** Only `actual` is the driver's to write (5.5.4); a partial write changes just its bytes. */
  writeConfig(offset: number, size: number, value: number): void {
    for (let i = 0; i < size; i++) {
      const at = offset + i - CONFIG_ACTUAL;
      if (at < 0 || at > 3) continue;
      const shift = 8 * at;
      this.actual = ((this.actual & ~(0xff << shift)) | (((value >>> (8 * i)) & 0xff) << shift)) >>> 0;
    }
  }

  // --- the driver's side -----------------------------------------------------

  activate(ctx: VirtioContext, queues: readonly (VirtQueue | undefined)[], features: bigint): void {
    this.ctx = ctx;
    this.queues = queues;
    this.stopped = false;
    this.roles = ["inflate", "deflate"];
    if (features & VIRTIO_BALLOON_F_STATS_VQ) this.roles.push("stats");
    // Never offered (so never negotiated), but it would come before reporting_vq.
    if (features & VIRTIO_BALLOON_F_FREE_PAGE_HINT) this.roles.push("free-page-hint");
    if (features & VIRTIO_BALLOON_F_PAGE_REPORTING) this.roles.push("reporting");
    // Linux adds and kicks its first stats buffer in init_vqs(), before its
    // probe sets DRIVER_OK (drivers/virtio/virtio_balloon.c), and the transport
    // drops notifications before DRIVER_OK (mmio.ts): without a look now the
    // buffer would sit there unseen, and Linux sends no other until it is used.
    if (this.roles.includes("stats") && !this.ioPaused) this.takeStats();
  }

  notify(index: number): void {
    if (this.ioPaused) return;
    const role = this.roles[index];
    if (role === "stats") this.takeStats();
    else if (role !== undefined) this.pump();
  }

  /** The host calls this every 50 ms: time to ask for fresh statistics? */
  poll(): void {
    this.requestStatsIfDue();
  }

  /**
   * Device reset (status 0): the driver that filled the balloon is gone, and
   * the next one (a rebooted guest, a reloaded module) starts with an empty
   * balloon and all of its RAM: nothing will ever deflate the old pages. So
   * they go back to the guest here (Linux deflates before a planned reset, so
   * this is for the unplanned ones). Pages of an inflate still under way are
   * given back when its discard ends, so the memory manager sees the two in order.
   */
  reset(): void {
    this.generation++;
    this.ctx = undefined;
    this.queues = [];
    this.roles = [];
    this.stopped = false;
    this.statsHeld = undefined;
    this.lastStatsRequest = undefined;
    this.actual = 0;
    const pending = new Set(this.inFlightInflate ?? []);
    const back: bigint[] = [];
    for (const pfn of this.ballooned) if (!pending.has(pfn)) back.push(pfnToGpa(pfn));
    this.ballooned.clear();
    for (const pfn of pending) this.ballooned.add(pfn); // until their discard ends (finish())
    if (back.length > 0) this.memory.reclaim(back);
  }

  /** Guest RAM is about to go: stop touching the rings; resolves when the discard under way is over. */
  async quiesce(): Promise<void> {
    this.generation++;
    this.ctx = undefined;
    this.queues = [];
    this.statsHeld = undefined;
    while (this.busy) await this.busy;
  }

  // --- snapshots --------------------------------------------------------------

  /** The discard under way ends and its request completes; no other is taken until resumeIo(). */
  async pauseIo(): Promise<void> {
    this.ioPaused = true;
    while (this.busy) await this.busy;
  }

  /** The transport's resumeIo() then looks at every queue (pump, takeStats). */
  resumeIo(): void {
    this.ioPaused = false;
  }

  /**
   * After pauseIo(): the target, what the driver says it holds (`actual`),
   * the pages in the balloon (as [first PFN, count] pairs, flattened), the
   * stats buffer held (its head) and the guest's last statistics. The memory
   * manager's own record of those pages (their frames given back) is saved
   * with guest memory, not here. Not saved: the counters (inflated, refused
   * ...: a restored VM counts from zero), when stats were last requested
   * (a clock of another process: the next request comes an interval after
   * the restore), and the turn between queues (fairness only).
   */
  saveState(): Plain {
    if (this.busy) throw new Error(`${this.name}: saveState() with a discard under way (pauseIo() first)`);
    const pfns = [...this.ballooned].sort((a, b) => a - b);
    const ranges: number[] = [];
    for (const pfn of pfns) {
      const n = ranges.length;
      if (n > 0 && ranges[n - 2] + ranges[n - 1] === pfn) ranges[n - 1]++;
      else ranges.push(pfn, 1);
    }
    const held = this.statsHeld;
    const guest: { [key: string]: number } = {};
    for (const key of GUEST_STAT_KEYS) if (this.guest[key] !== undefined) guest[key] = this.guest[key];
    return {
      numPages: this.numPages,
      actual: this.actual,
      ballooned: ranges,
      statsHeld: held && this.queues[held.q.index] === held.q ? [held.chain.head] : [],
      guest,
    };
  }

  restoreState(r: StateReader): void {
    // Everything is checked before anything is applied.
    const numPages = r.int("numPages", 0, this.ramPages);
    const actual = r.int("actual", 0, 0xffff_ffff);
    const flat = r.ints("ballooned", 2 * this.ramPages, 0, 0xffff_ffff);
    const field = `${r.path}.ballooned`;
    if (flat.length % 2 !== 0) throw new SnapshotError(`${field}: expected [first PFN, count] pairs`);
    const ballooned: number[] = [];
    let end = 0;
    for (let i = 0; i < flat.length; i += 2) {
      const [first, count] = [flat[i], flat[i + 1]];
      if (count === 0 || first < end) throw new SnapshotError(`${field}[${i}]: ranges must be non-empty and in increasing order`);
      if (ballooned.length + count > this.ramPages) throw new SnapshotError(`${field}: more pages than guest RAM has (${this.ramPages})`);
      if (!this.memory.isRam(pfnToGpa(first), count * BALLOON_PAGE_SIZE)) {
        throw new SnapshotError(`${field}[${i}]: pages 0x${first.toString(16)}+${count} are not guest RAM`);
      }
      for (let pfn = first; pfn < first + count; pfn++) ballooned.push(pfn);
      end = first + count;
    }
    const g = r.obj("guest");
    const guest: BalloonGuestStats = {};
    for (const key of GUEST_STAT_KEYS) if (g.has(key)) guest[key] = g.num(key, 0);
    let statsHeld: { q: VirtQueue; chain: DescriptorChain } | undefined;
    if (this.ctx) {
      this.roles.forEach((role, index) => {
        const q = this.queues[index];
        if (role !== "stats") return checkNoneInFlight(r, q);
        if (!q) return void r.ints("statsHeld", 0, 0, 0);
        const chains = readHeldChains(r, "statsHeld", q);
        if (chains.length > 1) throw new SnapshotError(`${r.path}.statsHeld: the device holds one stats buffer at most`);
        if (chains[0] && chains[0].writableLength > 0) throw new SnapshotError(`${r.path}.statsHeld[0]: a stats buffer is device-readable only`);
        if (chains[0]) statsHeld = { q, chain: chains[0] };
      });
    } else {
      r.ints("statsHeld", 1, 0, 0xffff); // no driver running: nothing held, but the field must make sense
    }

    this.numPages = numPages;
    this.actual = actual;
    this.ballooned.clear();
    for (const pfn of ballooned) this.ballooned.add(pfn);
    this.guest = guest;
    this.statsHeld = statsHeld;
    this.lastStatsRequest = statsHeld ? this.now() : undefined;
  }

  queueStopped(index: number): void {
    if (this.roles[index] === "stats") this.statsHeld = undefined;
  }

  // --- inflate, deflate, report: one request at a time, in order -------------

  /** Take requests from the inflate, deflate and reporting queues in turn until they are empty or one has to wait. */
  private pump(): void {
    if (this.busy || this.stopped || !this.ctx || this.ioPaused) return;
    const touched = new Set<VirtQueue>();
    try {
      for (let progress = true; progress && !this.busy; ) {
        progress = false;
        for (let n = 0; n < this.roles.length && !this.busy; n++) {
          // Take turns from where the last wait left off, so a stream of inflates cannot starve the deflates.
          const index = this.turn % this.roles.length;
          this.turn = index + 1;
          const role = this.roles[index];
          if (role !== "inflate" && role !== "deflate" && role !== "reporting") continue;
          const q = this.queues[index];
          const chain = q?.pop();
          if (!q || !chain) continue;
          progress = true;
          touched.add(q);
          if (role === "inflate") this.inflate(q, chain);
          else if (role === "deflate") this.deflate(q, chain);
          else this.report(q, chain);
        }
      }
    } finally {
      for (const q of touched) q.notifyDriver();
    }
  }

  /** Inflate (5.5.6 "Device Operation"): the driver gives up these pages; the host frees their frames. */
  private inflate(q: VirtQueue, chain: DescriptorChain): void {
    const pfns = this.readPfns(chain);
    if (!pfns) return q.push(chain, 0);
    const take = this.acceptPfns(pfns, false);
    // Pages beyond num_pages are taken all the same: the driver may be
    // inflating towards a target the host has lowered since it looked, and
    // will deflate them once it sees the new one. The balloon cannot grow past
    // guest RAM anyway: each of its pages is a distinct page of RAM.
    if (take.length === 0) return q.push(chain, 0);
    for (const pfn of take) this.ballooned.add(pfn);
    this.inflatedTotal += take.length;
    this.inFlightInflate = take;
    this.wait(this.memory.discard(take.map(pfnToGpa), "balloon"), q, chain);
  }

  /** Deflate (5.5.6): the driver takes these pages back. Without MUST_TELL_HOST
   *  it may already be using them; their frames come back as zero pages on touch. */
  private deflate(q: VirtQueue, chain: DescriptorChain): void {
    const pfns = this.readPfns(chain);
    if (!pfns) return q.push(chain, 0);
    // Deflate without DEFLATE_ON_OOM below num_pages breaks a driver rule
    // (5.5.6.1), but refusing it would not stop the guest from using the
    // page: it is accepted like any other.
    const back = this.acceptPfns(pfns, true).map((pfn) => {
      this.ballooned.delete(pfn);
      return pfnToGpa(pfn);
    });
    if (back.length > 0) {
      this.deflatedTotal += back.length;
      this.memory.reclaim(back);
    }
    q.push(chain, 0);
  }

  /** The PFNs of a request that are guest RAM, named once, and in the balloon
   *  (deflate) or not (inflate) as `inBalloon` says; the others are counted by reason. */
  private acceptPfns(pfns: number[], inBalloon: boolean): number[] {
    const seen = new Set<number>();
    const accepted: number[] = [];
    for (const pfn of pfns) {
      if (!this.memory.isRam(pfnToGpa(pfn), BALLOON_PAGE_SIZE)) this.refused.outsideRam++;
      else if (seen.has(pfn)) this.refused.duplicate++;
      else if (this.ballooned.has(pfn) !== inBalloon) this.refused[inBalloon ? "notBallooned" : "alreadyBallooned"]++;
      else {
        seen.add(pfn);
        accepted.push(pfn);
      }
    }
    return accepted;
  }

  /**
   * Free page reporting (5.5.6.7 "Free Page Reporting"): each buffer of the chain is a free range
   * of guest memory; the device may drop its contents and completes the chain
   * when done, after which the guest uses the pages again without a word (so
   * they are not ballooned: a touch gets a zero frame). Linux adds the ranges
   * as device-writable buffers (virtqueue_add_inbuf); readable ones are taken
   * too. The device writes nothing: used length 0.
   */
  private report(q: VirtQueue, chain: DescriptorChain): void {
    const seen = new Set<number>();
    const take: number[] = [];
    for (const s of [...chain.readable, ...chain.writable]) {
      const pages = s.len / BALLOON_PAGE_SIZE;
      if (s.addr % PAGE !== 0n || !Number.isInteger(pages) || s.len > MAX_REPORT_RANGE || seen.size + pages > MAX_REPORT_PAGES) {
        this.refused.badRange++;
        continue;
      }
      if (!this.memory.isRam(s.addr, s.len)) {
        this.refused.outsideRam += pages;
        continue;
      }
      const first = Number(s.addr >> BigInt(BALLOON_PAGE_SHIFT));
      for (let pfn = first; pfn < first + pages; pfn++) {
        if (seen.has(pfn)) this.refused.duplicate++;
        else if (this.ballooned.has(pfn)) this.refused.alreadyBallooned++; // its frame is gone already
        else {
          seen.add(pfn);
          take.push(pfn);
        }
      }
    }
    if (take.length === 0) return q.push(chain, 0);
    this.reportedTotal += take.length;
    this.wait(this.memory.discard(take.map(pfnToGpa), "reported"), q, chain);
  }

  /**
   * The PFNs of an inflate or deflate buffer (5.5.6: an array of le32 page
   * numbers, PFN << 12 the guest-physical address), or undefined for a
   * malformed one (counted).
   */
  private readPfns(chain: DescriptorChain): number[] | undefined {
    const len = chain.readableLength;
    if (chain.writableLength > 0 || len % 4 !== 0 || len > 4 * MAX_PFNS_PER_BUFFER) {
      this.refused.malformed++;
      return undefined;
    }
    const dv = this.readChain(chain, len);
    if (!dv) return undefined;
    const out: number[] = [];
    for (let at = 0; at < len; at += 4) out.push(dv.getUint32(at, true));
    return out;
  }

  /** Complete `chain` once the discard is over (failed or not), then go on with the queues. */
  private wait(discard: Promise<void>, q: VirtQueue, chain: DescriptorChain): void {
    const generation = this.generation;
    const done = discard.then(
      () => undefined,
      () => {
        this.discardErrors++;
      },
    );
    this.busy = done.then(() => this.finish(generation, q, chain));
  }

  private finish(generation: number, q: VirtQueue, chain: DescriptorChain): void {
    const inflated = this.inFlightInflate;
    this.busy = undefined;
    this.inFlightInflate = undefined;
    if (generation !== this.generation) {
      // Reset while the discard was under way: its pages go back now (reset()).
      if (inflated) {
        for (const pfn of inflated) this.ballooned.delete(pfn);
        this.memory.reclaim(inflated.map(pfnToGpa));
      }
    } else if (!this.stopped && this.queues[q.index] === q) {
      // The same queue still (not stopped and set up again meanwhile): complete the request.
      if (!this.guestErrors(() => {
        q.push(chain, 0);
        q.notifyDriver();
      })) return;
    }
    this.guestErrors(() => this.pump());
  }

  /** Run ring work outside the transport's guard (after a discard): a broken ring sets DEVICE_NEEDS_RESET, it does not end the VM. */
  private guestErrors(work: () => void): boolean {
    try {
      work();
      return true;
    } catch (e) {
      if (!(e instanceof QueueBroken || e instanceof ChainError || e instanceof GuestMemoryError)) throw e;
      this.stopped = true;
      this.ctx?.needsReset(e.message);
      return false;
    }
  }

  // --- memory statistics (5.5.6.3) -------------------------------------------
  //
  // The driver adds one buffer of statistics at start. The device keeps it
  // and, when it wants fresh figures, gives it back (used length 0); the
  // driver refills it and adds it again. Figures every statsIntervalMs, counted
  // from one request to the next; checked when a buffer comes and in poll().

  private takeStats(): void {
    const index = this.roles.indexOf("stats");
    const q = this.queues[index];
    if (!q) return;
    try {
      for (let chain = q.pop(); chain; chain = q.pop()) {
        // A second buffer while one is held: the older one is given back unread
        // (unless it came on a queue since stopped: then it is not ours to give back).
        if (this.statsHeld?.q === q) q.push(this.statsHeld.chain, 0);
        this.statsHeld = undefined;
        if (chain.writableLength > 0) {
          this.refused.malformed++;
          q.push(chain, 0);
          continue;
        }
        this.parseStats(chain);
        this.statsHeld = { q, chain };
        this.lastStatsRequest ??= this.now();
      }
      this.requestStatsIfDue();
    } finally {
      q.notifyDriver();
    }
  }

  /** The first `len` readable bytes of a chain, or undefined (counted as
   *  malformed) when guest memory refuses them. */
  private readChain(chain: DescriptorChain, len: number): DataView | undefined {
    try {
      const bytes = chain.read(0, len);
      return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    } catch (e) {
      if (!(e instanceof ChainError)) throw e;
      this.refused.malformed++;
      return undefined;
    }
  }

  private parseStats(chain: DescriptorChain): void {
    const len = Math.min(chain.readableLength, MAX_STATS_BYTES);
    if (chain.readableLength > len) this.refused.statsIgnored++;
    const dv = this.readChain(chain, len);
    if (!dv) return;
    const g: BalloonGuestStats = {};
    for (let at = 0; at + STAT_ENTRY <= len; at += STAT_ENTRY) {
      const tag = dv.getUint16(at, true);
      // u64 figures as numbers: exact up to 8 PiB, and a hostile value is only a wrong figure.
      const val = Number(dv.getBigUint64(at + 2, true));
      switch (tag) {
        case S_SWAP_IN: g.swapIn = val; break;
        case S_SWAP_OUT: g.swapOut = val; break;
        case S_MAJFLT: g.majorFaults = val; break;
        case S_MINFLT: g.minorFaults = val; break;
        case S_MEMFREE: g.freeBytes = val; break;
        case S_MEMTOT: g.totalBytes = val; break;
        case S_AVAIL: g.availableBytes = val; break;
        case S_CACHES: g.cachesBytes = val; break;
        case S_HTLB_PGALLOC: g.hugetlbAllocations = val; break;
        case S_HTLB_PGFAIL: g.hugetlbFailures = val; break;
        default:
          if (tag > S_LINUX_LAST) this.refused.statsIgnored++;
      }
    }
    if (len % STAT_ENTRY !== 0) this.refused.statsIgnored++;
    g.updatedAt = this.now();
    this.guest = g;
  }

  private requestStatsIfDue(): void {
    const held = this.statsHeld;
    if (!held || this.statsIntervalMs === 0 || this.stopped || this.ioPaused) return;
    const now = this.now();
    if (this.lastStatsRequest !== undefined && now - this.lastStatsRequest < this.statsIntervalMs) return;
    this.statsHeld = undefined;
    // The queue may have been stopped or set up anew since the buffer came: then it is not ours to give back.
    if (this.queues[held.q.index] !== held.q) return;
    this.lastStatsRequest = now;
    held.q.push(held.chain, 0);
    held.q.notifyDriver();
  }
}

/** The guest statistics a snapshot keeps (all of BalloonGuestStats). */
const GUEST_STAT_KEYS = [
  "swapIn", "swapOut", "majorFaults", "minorFaults", "freeBytes", "totalBytes", "availableBytes", "cachesBytes",
  "hugetlbAllocations", "hugetlbFailures", "updatedAt",
] as const satisfies readonly (keyof BalloonGuestStats)[];

function pfnToGpa(pfn: number): bigint {
  return BigInt(pfn) << BigInt(BALLOON_PAGE_SHIFT);
}
