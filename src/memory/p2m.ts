// A VM's p2m: guest-physical frame -> host frame, for one window of guest frames
// [baseGfn, baseGfn + count) (the VM's RAM). The CPU core consults it on every
// TLB miss (src/core/p2m.ts); guest-physical addresses outside the window are
// device space, and accesses there become MMIO exits.
//
// The table is `count` little-endian u32 entries in frames from the pool, in
// the format of p2m-entry.ts: a present entry names a host frame (private and
// writable, or shared and read-only); an absent one says where the page is
// (nowhere yet, zero, ballooned, reported free, compressed, swapped, or busy
// being moved). Every access the entry forbids is a p2m fault, which
// resolveFault() settles by that state (DESIGN.md): a zeroed frame, a private
// copy of a shared frame (copy-on-write), or the page's bytes brought back
// from the page store. Host-side accesses (device DMA, loaders) go through
// the same rules: writableFrame() breaks sharing first, readInto() reads a
// compressed or swapped page without bringing it back.
//
// Several threads use one p2m at once (each vCPU's worker resolves its own
// faults; an I/O thread does DMA): each has its own P2m object over the same
// table (handle(), then P2m.attach() in the other thread). Entries change only
// by compare-and-swap, so two threads resolving the same fault agree on one
// outcome and the loser gives back what it took. Moving a page out of a
// present entry (the memory manager's reclaim and merge) happens with the
// VM's vCPUs off their pCPUs, and only when no host accessor is inside an
// access (enterAccess()/exitAccess(), counted in the shared counters): an
// accessor finding a BUSY entry steps out while it waits.
//
// Counters shared by the P2m objects of all threads live in a small
// SharedArrayBuffer (not in the table: a word after the entries would cost a
// whole frame more for every power-of-two RAM size). RAM and table frames
// are charged to the VM's owner id; a shared frame to its share group.

import type { GuestAddress, HostAddress } from "./address.js";
import { SHARE_FILLED, SHARE_FRAMES, SHARE_MAPPED, type SharedSnapshotFramesHandle } from "../snapshot/page-share.js";
import { PAGE_SHIFT, hex, isPageAligned } from "./address.js";
import { FramePool, FRAME_SIZE, OWNER_HOST, framesFor, type FrameOwner } from "./frame-pool.js";
import {
  Absent, P2M_PRESENT, P2M_WRITABLE, P2M_ACCESSED, P2M_SHARED,
  absentEntry, absentKind, entryFrame, entrySlot, isPresent, readsAsZero, pageState, emptyCensus, type PageCensus, type StoredKind,
} from "./p2m-entry.js";

export { P2M_PRESENT, P2M_WRITABLE, P2M_ACCESSED, P2M_SHARED } from "./p2m-entry.js";

const ENTRY_SIZE = 4;
/** The shared counters, by index: */
export const enum P2mCounter {
  /** Present entries (private or shared mappings). */
  Populated = 0,
  /** Host accessors inside an access now (enterAccess). */
  Accessors = 1,
  /** Writes that broke a page's sharing (copy-on-write). */
  CowBreaks = 2,
  /** Pages brought back from the compressed store / the swap file by a fault. */
  Decompressions = 3,
  SwapIns = 4,
  /** Host reads of a compressed or swapped page served without bringing it back. */
  StoreReads = 5,
  /** Times a thread waited for a BUSY entry. */
  BusyWaits = 6,
  /** A word nobody notifies: busy waits sleep on it. */
  Sleep = 7,
  /** Host address (u32) of the dirty log's bitmap (dirty-log.ts), 0 = off. */
  DirtyLog = 8,
  /** Sharing breaks that made the VM's harts flush their TLBs (shootDownTlbs). */
  Shootdowns = 9,
  /** The harts that cache translations to this p2m's frames (setTlbHolders):
   *  their count, the request bit that flushes a TLB, then each request word's address. */
  TlbHolders = 10,
  TlbFlushBit = 11,
  TlbHolder0 = 12,
}
/** Harts a p2m's shootdown reaches (a VM has at most 8 on the virt machine). */
export const MAX_TLB_HOLDERS = 64;
const COUNTERS = P2mCounter.TlbHolder0 + MAX_TLB_HOLDERS;
const SHIFT = BigInt(PAGE_SHIFT);
/** How long a thread sleeps before looking at a BUSY entry again. */
const BUSY_WAIT_MS = 0.05;

/** A guest-physical address the p2m cannot map: outside the VM's RAM. */
export class P2mFault extends Error {
  override readonly name: string = "P2mFault";
}

/** Where compressed and swapped pages are (the host's page store, attached in this thread). */
export interface PageSource {
  /** The page at `slot` of kind Compressed, Swapped or Snapshot, as its 4096 bytes, into `out`. */
  readPage(kind: StoredKind, slot: number, out: Uint8Array): void;
  /** The slot is no longer needed. */
  freeSlot(kind: StoredKind, slot: number): void;
  /** Page `index` is still at a post-copy migration's source: ask for it and
   *  wait (this thread blocks) until `stillRemote()` is false. Throws when it
   *  will never come (the source is gone). */
  awaitRemote?(index: number, stillRemote: () => boolean): void;
  /** A restored VM's snapshot pages that its clones share (snapshot/page-share.ts): a read maps the table's frame. */
  snapshotShare?(): SharedSnapshotFramesHandle | undefined;
}

export interface P2mOptions {
  /** Who is charged for the RAM and table frames: the VM's owner id (default the host). */
  owner?: FrameOwner;
}

/** Plain data naming a p2m, to post to another thread for P2m.attach(). */
export interface P2mHandle {
  readonly table: HostAddress;
  readonly baseGfn: bigint;
  readonly count: number;
  readonly owner: FrameOwner;
  readonly counters: SharedArrayBuffer;
}

export class P2m {
  readonly pool: FramePool;
  /** Owner id of the VM the frames are charged to. */
  readonly owner: FrameOwner;
  /** First guest frame of the window. */
  readonly baseGfn: bigint;
  /** Frames in the window. */
  readonly count: number;
  /** Host address of the entry table (what the core's setP2m() takes). */
  readonly table: HostAddress;
  private readonly tableFrames: number;
  /** Word index of entry 0 in pool.words. */
  private readonly firstWord: number;
  /** Counters every thread's P2m object shares (P2mCounter). */
  private readonly counters: Int32Array;
  private released = false;
  private readonly changeListeners: ((index: number, count: number) => void)[] = [];
  private pages: PageSource | undefined;
  /** Nesting of this thread's enterAccess(). */
  private accessDepth = 0;
  /** The resolve in progress is a host-side write's (it may use the guest reserve). */
  private fromReserve = false;

  /** A window of `bytes` of RAM at guest-physical `base` (both page-aligned),
   *  with a new, empty table. (`existing` is attach()'s: a table and counters to share.) */
  constructor(pool: FramePool, base: GuestAddress, bytes: number, options: P2mOptions = {}, existing?: Pick<P2mHandle, "table" | "counters">) {
    if (!isPageAligned(base) || base < 0n) throw new P2mFault(`RAM base ${hex(base)} is not 4 KiB aligned`);
    if (!Number.isSafeInteger(bytes) || bytes < FRAME_SIZE || bytes % FRAME_SIZE !== 0) {
      throw new P2mFault(`RAM size ${bytes} is not a positive multiple of 4 KiB`);
    }
    if (base + BigInt(bytes) > 1n << 64n) throw new P2mFault("RAM would extend beyond the 64-bit address space");
    this.pool = pool;
    this.owner = options.owner ?? OWNER_HOST;
    this.baseGfn = base >> SHIFT;
    this.count = bytes / FRAME_SIZE;
    this.tableFrames = framesFor(this.count * ENTRY_SIZE);
    this.table = existing?.table ?? pool.allocContiguous(this.tableFrames, this.owner);
    this.firstWord = this.table / ENTRY_SIZE;
    this.counters = new Int32Array(existing?.counters ?? new SharedArrayBuffer(COUNTERS * 4));
  }

  /** This thread's P2m object over a p2m another thread made (its handle()):
   *  same table, nothing allocated. */
  static attach(pool: FramePool, handle: P2mHandle): P2m {
    if (!pool.isAllocated(handle.table)) throw new P2mFault(`p2m table ${hex(handle.table)} is not a frame of this pool`);
    return new P2m(pool, handle.baseGfn << SHIFT, handle.count * FRAME_SIZE, { owner: handle.owner }, handle);
  }

  /** Plain data naming this p2m, to post to another thread for attach(). */
  handle(): P2mHandle {
    return { table: this.table, baseGfn: this.baseGfn, count: this.count, owner: this.owner, counters: this.counters.buffer as SharedArrayBuffer };
  }

  /**
   * The harts whose TLBs may hold this p2m's frames, by the host address of
   * each one's request word (core hart.ts REQ_OFF, with IN_RUN_OFF the word
   * after it), and the request bit that flushes a TLB (REQ_TLB_FLUSH): a
   * store that breaks a page's sharing, on any thread, has every one of them
   * flush before it lands (shootDownTlbs). Set by the machine once its harts
   * exist, before any runs.
   */
  setTlbHolders(requestWords: number[], flushBit: number): void {
    if (requestWords.length > MAX_TLB_HOLDERS) throw new P2mFault(`${requestWords.length} harts on one p2m (at most ${MAX_TLB_HOLDERS})`);
    const c = this.counters;
    requestWords.forEach((addr, i) => Atomics.store(c, P2mCounter.TlbHolder0 + i, addr));
    Atomics.store(c, P2mCounter.TlbFlushBit, flushBit);
    Atomics.store(c, P2mCounter.TlbHolders, requestWords.length);
  }

  /** Where this thread finds compressed and swapped pages (none: such entries cannot be resolved here). */
  usePageSource(pages: PageSource | undefined): void {
    this.pages = pages;
  }

  /**
   * Be told when the contents or the mapping of window frames change behind
   * the vCPUs' back: a new host frame for an index, or the hypervisor writing
   * guest memory (device DMA, loaders). The translation cache uses it to retire
   * code translated from those frames. Only changes made through this P2m
   * object are told: each thread's listeners hear their own thread.
   */
  onChange(listener: (index: number, count: number) => void): void {
    this.changeListeners.push(listener);
  }

  /** The hypervisor wrote [gpa, gpa + length) of guest RAM (GuestMemory calls this). */
  noteWritten(gpa: GuestAddress, length: number): void {
    if (this.changeListeners.length === 0 || length <= 0) return;
    const first = this.indexOf(gpa);
    const last = this.indexOf(gpa + BigInt(length - 1));
    if (first < 0 || last < 0) return;
    for (const l of this.changeListeners) l(first, last - first + 1);
  }

  /** First guest-physical address of the window. */
  get start(): GuestAddress {
    return this.baseGfn << SHIFT;
  }

  /** One past the last guest-physical address of the window. */
  get end(): GuestAddress {
    return (this.baseGfn + BigInt(this.count)) << SHIFT;
  }

  /** Present entries (private and shared mappings), by every thread. */
  get populated(): number {
    return this.released ? 0 : Atomics.load(this.counters, P2mCounter.Populated);
  }

  counter(c: P2mCounter): number {
    return Atomics.load(this.counters, c);
  }

  /** Index of `gpa`'s frame in the window, or -1 outside it. */
  indexOf(gpa: GuestAddress): number {
    const i = (gpa >> SHIFT) - this.baseGfn;
    return i >= 0n && i < BigInt(this.count) ? Number(i) : -1;
  }

  contains(gpa: GuestAddress): boolean {
    return this.indexOf(gpa) >= 0;
  }

  /** Is [gpa, gpa + length) entirely inside the window? */
  containsRange(gpa: GuestAddress, length: number | bigint): boolean {
    const len = BigInt(length);
    return len >= 0n && gpa >= this.start && gpa + len <= this.end;
  }

  /** The raw entry of window frame `index`. */
  entry(index: number): number {
    this.checkIndex(index);
    return Atomics.load(this.pool.words, this.firstWord + index) >>> 0;
  }

  /** Replace entry `index` if it still is `expected` (the memory manager's one way to change entries). */
  casEntry(index: number, expected: number, next: number): boolean {
    this.checkIndex(index);
    return Atomics.compareExchange(this.pool.words, this.firstWord + index, expected | 0, next | 0) === (expected | 0);
  }

  /** Host frame mapped at window frame `index` (private or shared), or undefined while absent. */
  frameAt(index: number): HostAddress | undefined {
    const e = this.entry(index);
    return isPresent(e) ? entryFrame(e) : undefined;
  }

  /** Host frame mapped at `gpa`, or undefined while absent; throws outside RAM. */
  peekFrame(gpa: GuestAddress): HostAddress | undefined {
    return this.frameAt(this.indexOrThrow(gpa));
  }

  /** Host frame backing `gpa`, private and writable (allocated, brought back or
   *  unshared as needed); throws P2mFault outside the window. */
  hostFrame(gpa: GuestAddress): HostAddress {
    return this.writableFrame(this.indexOrThrow(gpa));
  }

  /** Host frame for window frame `index`, private and writable. When another
   *  thread resolves it at the same time, both get the frame that won. */
  populate(index: number): HostAddress {
    return this.writableFrame(index);
  }

  /** For host-side writes: these may take frames from the guest reserve
   *  (frame-pool.ts allocGuest), so a DMA in flight completes when guests
   *  have filled the pool. */
  writableFrame(index: number): HostAddress {
    const frame = entryFrame(this.resolve(index, true, true));
    this.markDirty(index);
    return frame;
  }

  /** Host address of the dirty log's bitmap (dirty-log.ts) every thread's
   *  P2m object sees, 0 while no log is on. */
  get dirtyLog(): HostAddress {
    return Atomics.load(this.counters, P2mCounter.DirtyLog) >>> 0;
  }

  /** Replace the published dirty log `expected` by `next` (0: none); false
   *  when another thread changed it first. DirtyLog.start() and stop() use it. */
  swapDirtyLog(expected: HostAddress, next: HostAddress): boolean {
    return Atomics.compareExchange(this.counters, P2mCounter.DirtyLog, expected | 0, next | 0) === (expected | 0);
  }

  /** A host-side write to window frame `index`: set its bit in the dirty log
   *  when one is on. writableFrame() does it before the write, GuestMemory
   *  again after it (so a take() that ran in between cannot lose the write). */
  markDirty(index: number): void {
    const log = Atomics.load(this.counters, P2mCounter.DirtyLog);
    if (log !== 0) Atomics.or(this.pool.words, (log >>> 2) + (index >>> 5), 1 << (index & 31));
  }

  /** Allocate every frame of the window now (no first-touch faults later). */
  populateAll(): void {
    for (let i = 0; i < this.count; i++) this.populate(i);
  }

  /**
   * Resolve a p2m fault the core reported at `gpa` (EXIT_P2M_FAULT) by the
   * entry's state. Returns false outside the window (the caller ends the VM
   * with a clear message). Throws OutOfHostMemory when no frame can be had,
   * and the page store's error when a page cannot be read back: the entry is
   * left as it was, so the fault can be retried once the host has memory.
   */
  resolveFault(gpa: GuestAddress, write: boolean): boolean {
    const index = this.indexOf(gpa);
    if (index < 0) return false;
    this.resolve(index, write);
    return true;
  }

  /**
   * Copy `n` bytes at offset `off` of window frame `index` into `out` at
   * `outOff`, for a host-side read. An absent page is not brought back for it:
   * zero pages read as zero, and a compressed or swapped page is read from the
   * store where it stays (a guest swapping out a page the host swapped reads
   * it once, without it coming back into the pool: the double-paging case).
   */
  readInto(index: number, off: number, n: number, out: Uint8Array, outOff: number): void {
    for (;;) {
      const e = this.entry(index);
      if (isPresent(e)) {
        const at = entryFrame(e) + off;
        out.set(this.pool.bytes.subarray(at, at + n), outOff);
        return;
      }
      if (readsAsZero(e)) {
        out.fill(0, outOff, outOff + n);
        return;
      }
      const kind = absentKind(e) as StoredKind | Absent.Busy | Absent.Remote;
      if (kind === Absent.Busy) {
        this.waitBusy();
        continue;
      }
      if (kind === Absent.Remote) {
        this.awaitRemote(index, e);
        continue;
      }
      const page = new Uint8Array(FRAME_SIZE);
      try {
        this.source().readPage(kind, entrySlot(e), page);
      } catch (err) {
        if (this.entry(index) === e) throw err;
        continue; // brought back meanwhile (its slot freed under us): look again
      }
      // The slot may have been freed and reused while we read: only an entry
      // still naming it vouches for the bytes.
      if (this.entry(index) !== e) continue;
      Atomics.add(this.counters, P2mCounter.StoreReads, 1);
      out.set(page.subarray(off, off + n), outOff);
      return;
    }
  }

  /** A host accessor (device DMA on some thread) starts an access: the memory
   *  manager moves no present page out from under it until exitAccess(). */
  enterAccess(): void {
    if (this.accessDepth++ === 0) Atomics.add(this.counters, P2mCounter.Accessors, 1);
  }

  exitAccess(): void {
    if (--this.accessDepth === 0) Atomics.sub(this.counters, P2mCounter.Accessors, 1);
  }

  /** Host accessors inside an access now, on every thread. */
  get activeAccessors(): number {
    return Atomics.load(this.counters, P2mCounter.Accessors);
  }

  /** Guest frames by state (a scan of the table). */
  census(): PageCensus {
    const c = emptyCensus();
    if (this.released) return c;
    const words = this.pool.words;
    for (let i = 0; i < this.count; i++) c[pageState(Atomics.load(words, this.firstWord + i) >>> 0)]++;
    return c;
  }

  /**
   * A restored VM's RAM before any hart runs: `pages`, those with bytes in
   * the snapshot, become absent of kind Snapshot (read from the snapshot
   * file when first touched, its slot being its own index); the rest read
   * as zero, as untouched pages do. The table is fresh and no other thread
   * uses it yet.
   */
  presetSnapshotPages(pages: ArrayLike<number>): void {
    const words = this.pool.words;
    for (let k = 0; k < pages.length; k++) {
      const i = pages[k];
      if (!Number.isInteger(i) || i < 0 || i >= this.count) throw new P2mFault(`snapshot page ${i} outside a p2m of ${this.count} pages`);
      words[this.firstWord + i] = absentEntry(Absent.Snapshot, i);
    }
  }

  /** Is page `index` still in the snapshot (no fault has read it)? */
  inSnapshot(index: number): boolean {
    return isSnapshotEntry(this.entry(index));
  }

  /**
   * Read ahead: a private frame for page `index`, with `bytes` (read from the
   * snapshot and checked), if it is still in the snapshot. The frame is
   * filled before the entry names it, and the entry changes only if no
   * fault took the page meanwhile, so harts may run. True if it was mapped.
   */
  fillSnapshotPage(index: number, bytes: Uint8Array): boolean {
    const seen = this.entry(index);
    if (!isSnapshotEntry(seen) || bytes.length !== FRAME_SIZE) return false;
    const frame = this.allocFrame(); // may grow the memory: pool.bytes after it
    this.pool.bytes.set(bytes, frame);
    if (!this.casEntry(index, seen, frame | P2M_PRESENT | P2M_WRITABLE | P2M_ACCESSED)) {
      this.pool.free(frame);
      return false;
    }
    Atomics.add(this.counters, P2mCounter.Populated, 1);
    return true;
  }

  /** Of `pages` (those with bytes in the snapshot, presetSnapshotPages), the ones read from it since. */
  snapshotPagesRead(pages: ArrayLike<number>): Uint32Array {
    const read: number[] = [];
    for (let k = 0; k < pages.length; k++) {
      const i = pages[k];
      if (i >= 0 && i < this.count && !isSnapshotEntry(this.entry(i))) read.push(i);
    }
    return Uint32Array.from(read);
  }

  /** Add `delta` to the count of present entries (the memory manager mapped or unmapped some). */
  notePopulated(delta: number): void {
    Atomics.add(this.counters, P2mCounter.Populated, delta);
  }

  /** Return every frame (RAM and table) and every store slot. The p2m is
   *  unusable after, through every thread's P2m object: vCPUs that used it
   *  must be stopped first, and not run again until given another. */
  release(): void {
    if (this.released) return;
    this.releaseRam(false);
    this.pool.freeContiguous(this.table, this.tableFrames);
    Atomics.store(this.counters, P2mCounter.Populated, 0);
    this.released = true;
  }

  /**
   * Let go of what pool.releaseOwner(owner) cannot take back: references to
   * shared frames (their share group owns them) and store slots. Call it
   * before releaseOwner() when a VM is destroyed that way.
   */
  releaseBorrowed(): void {
    this.releaseRam(true);
  }

  private releaseRam(borrowedOnly: boolean): void {
    for (let i = 0; i < this.count; i++) {
      const e = this.entry(i);
      if (isPresent(e)) {
        if (!borrowedOnly || (e & P2M_SHARED) !== 0) this.pool.free(entryFrame(e));
      } else {
        const kind = absentKind(e);
        if ((kind === Absent.Compressed || kind === Absent.Swapped) && this.pages) this.pages.freeSlot(kind, entrySlot(e));
      }
      if (borrowedOnly) Atomics.store(this.pool.words, this.firstWord + i, 0);
    }
  }

  /** Make entry `index` allow a read (or a write); returns the present entry. */
  private resolve(index: number, write: boolean, host = false): number {
    this.checkIndex(index);
    this.fromReserve = host;
    for (;;) {
      const e = this.entry(index);
      if (isPresent(e)) {
        if (!write || (e & P2M_WRITABLE) !== 0) return e;
        if ((e & P2M_SHARED) !== 0) this.breakSharing(index, e);
        else this.casEntry(index, e, e | P2M_WRITABLE); // read-only for no reason left: allow it
        continue;
      }
      const kind = absentKind(e);
      // A read of a snapshot page whose clones share their pages maps the shared copy.
      const share = kind === Absent.Snapshot && !write ? this.pages?.snapshotShare?.() : undefined;
      if (kind === Absent.Busy) this.waitBusy();
      else if (kind === Absent.Remote) this.awaitRemote(index, e);
      else if (share) this.mapSnapshotShared(index, e, share);
      else if (kind === Absent.Compressed || kind === Absent.Swapped || kind === Absent.Snapshot) this.bringBack(index, e, kind);
      else this.mapZeroFrame(index, e);
    }
  }

  /** A zeroed private frame for a page that has none (first touch, zero, ballooned, reported). */
  private mapZeroFrame(index: number, seen: number): void {
    const frame = this.allocFrame(); // may grow the memory: get pool.words again after
    if (this.casEntry(index, seen, frame | P2M_PRESENT | P2M_WRITABLE | P2M_ACCESSED)) {
      Atomics.add(this.counters, P2mCounter.Populated, 1);
      for (const l of this.changeListeners) l(index, 1);
    } else {
      this.pool.free(frame); // another thread mapped it first (or changed the entry: look again)
    }
  }

  /** A store to a shared page: this VM gets a private copy; the shared frame loses a reference. */
  private breakSharing(index: number, seen: number): void {
    const shared = entryFrame(seen);
    const frame = this.allocFrame();
    const bytes = this.pool.bytes;
    bytes.copyWithin(frame, shared, shared + FRAME_SIZE);
    if (this.casEntry(index, seen, frame | P2M_PRESENT | P2M_WRITABLE | P2M_ACCESSED)) {
      this.pool.free(shared);
      Atomics.add(this.counters, P2mCounter.CowBreaks, 1);
      this.shootDownTlbs();
    } else {
      this.pool.free(frame);
    }
  }

  /**
   * A page's sharing was just broken: harts of this VM may still have the
   * shared frame in their TLBs, and would read its old bytes after the store
   * that broke it lands in the private copy. Every hart is asked to flush
   * its TLB; those inside run() are waited for (each takes its requests
   * within a bounded time, also in translated loops: core requests.ts), the
   * others flush at run() entry. Until the store lands the two frames hold
   * the same bytes, so what a hart reads meanwhile is right. KVM does the
   * same with an IPI to the VM's vCPUs when it zaps an SPTE.
   */
  private shootDownTlbs(): void {
    const c = this.counters;
    const n = Atomics.load(c, P2mCounter.TlbHolders);
    if (n === 0) return;
    const bit = Atomics.load(c, P2mCounter.TlbFlushBit);
    const words = this.pool.words;
    for (let i = 0; i < n; i++) Atomics.or(words, Atomics.load(c, P2mCounter.TlbHolder0 + i) >>> 2, bit);
    for (let i = 0; i < n; i++) {
      const req = Atomics.load(c, P2mCounter.TlbHolder0 + i) >>> 2;
      for (let spins = 0; Atomics.load(words, req + 1) !== 0 && (Atomics.load(words, req) & bit) !== 0; spins++) {
        // A hart inside run() takes it within microseconds; past that, sleep in short steps.
        if (spins > 2000) Atomics.wait(c, P2mCounter.Sleep, 0, BUSY_WAIT_MS);
      }
    }
    Atomics.add(c, P2mCounter.Shootdowns, 1);
  }

  /** A compressed or swapped page comes back into a new private frame. The
   *  entry is BUSY meanwhile; on failure it is put back as it was. */
  private bringBack(index: number, seen: number, kind: StoredKind): void {
    if (!this.casEntry(index, seen, absentEntry(Absent.Busy))) return;
    let frame: HostAddress;
    try {
      const source = this.source();
      frame = this.allocFrame();
      try {
        // A snapshot page a clone has read already: a copy of its shared frame, not the file again.
        const share = kind === Absent.Snapshot ? source.snapshotShare?.() : undefined;
        if (!share || !this.copySharedSnapshotPage(share, index, frame)) {
          source.readPage(kind, entrySlot(seen), this.pool.bytes.subarray(frame, frame + FRAME_SIZE));
        }
      } catch (err) {
        this.pool.free(frame);
        throw err;
      }
      source.freeSlot(kind, entrySlot(seen));
    } catch (err) {
      Atomics.store(this.pool.words, this.firstWord + index, seen | 0);
      throw err;
    }
    Atomics.store(this.pool.words, this.firstWord + index, frame | P2M_PRESENT | P2M_WRITABLE | P2M_ACCESSED);
    Atomics.add(this.counters, P2mCounter.Populated, 1);
    if (kind !== Absent.Snapshot) Atomics.add(this.counters, kind === Absent.Compressed ? P2mCounter.Decompressions : P2mCounter.SwapIns, 1);
  }

  /**
   * A read of a snapshot page in a VM whose clones share the snapshot's
   * pages: map the table's frame for it, shared and read-only, reading it
   * from the file into a new one when the table has none (retainSharedFrame
   * says how a frame is taken from it). The entry is BUSY meanwhile; on
   * failure it is put back.
   */
  private mapSnapshotShared(index: number, seen: number, share: SharedSnapshotFramesHandle): void {
    if (!this.casEntry(index, seen, absentEntry(Absent.Busy))) return;
    const slot = (share.table >>> 2) + SHARE_FRAMES + index;
    const counter = (which: number) => (share.table >>> 2) + which;
    let frame: number;
    try {
      for (;;) {
        const found = this.retainSharedFrame(slot);
        if (found !== 0) {
          frame = found;
          break;
        }
        const fresh = this.fromReserve ? this.pool.alloc(share.owner) : this.pool.allocGuest(share.owner);
        try {
          this.source().readPage(Absent.Snapshot, entrySlot(seen), this.pool.bytes.subarray(fresh, fresh + FRAME_SIZE));
        } catch (err) {
          this.pool.free(fresh);
          throw err;
        }
        this.pool.retain(fresh); // the table's reference, and this mapping's
        if (Atomics.compareExchange(this.pool.words, slot, 0, fresh | 0) === 0) {
          frame = fresh;
          Atomics.add(this.pool.words, counter(SHARE_FILLED), 1);
          break;
        }
        // Another clone read it meanwhile: use theirs.
        this.pool.free(fresh);
        this.pool.free(fresh);
      }
    } catch (err) {
      Atomics.store(this.pool.words, this.firstWord + index, seen | 0);
      throw err;
    }
    Atomics.store(this.pool.words, this.firstWord + index, frame | P2M_PRESENT | P2M_SHARED | P2M_ACCESSED);
    Atomics.add(this.counters, P2mCounter.Populated, 1);
    Atomics.add(this.pool.words, counter(SHARE_MAPPED), 1);
  }

  /** Copy page `index`'s frame in the clones' table into `to`; false when the table has none. */
  private copySharedSnapshotPage(share: SharedSnapshotFramesHandle, index: number, to: HostAddress): boolean {
    const found = this.retainSharedFrame((share.table >>> 2) + SHARE_FRAMES + index);
    if (found === 0) return false;
    this.pool.bytes.copyWithin(to, found, found + FRAME_SIZE);
    this.pool.free(found);
    return true;
  }

  /**
   * The frame the clones' table names at word `slot`, with a reference taken
   * for the caller; 0 when it names none. The table may drop a frame at any
   * time (page-share.ts dropUnmapped: slot first, then its reference), so a
   * frame counts only once retained and still named by the slot.
   */
  private retainSharedFrame(slot: number): number {
    for (;;) {
      const found = Atomics.load(this.pool.words, slot) >>> 0;
      if (found === 0) return 0;
      if (!this.pool.tryRetain(found)) continue; // freed meanwhile: the slot reads 0 now, or another frame
      if ((Atomics.load(this.pool.words, slot) >>> 0) === found) return found;
      this.pool.free(found); // dropped meanwhile (perhaps reused since): not ours
    }
  }

  /** A post-copy migration's page not here yet: wait for it, out of any access. */
  private awaitRemote(index: number, seen: number): void {
    const source = this.source();
    if (!source.awaitRemote) throw new P2mFault("a page still at a migration's source, and no link to it on this thread");
    const inside = this.accessDepth > 0;
    if (inside) Atomics.sub(this.counters, P2mCounter.Accessors, 1);
    try {
      source.awaitRemote(index, () => this.entry(index) === seen);
    } finally {
      if (inside) Atomics.add(this.counters, P2mCounter.Accessors, 1);
    }
  }

  /**
   * A post-copy migration's page arrived: map a new private frame holding
   * `bytes` (undefined: it reads as zero) at `index` if the entry is still
   * Remote. False when it no longer is (ballooned meanwhile).
   */
  fillRemote(index: number, bytes: Uint8Array | undefined): boolean {
    const e = this.entry(index);
    if (isPresent(e) || absentKind(e) !== Absent.Remote) return false;
    if (!bytes) return this.casEntry(index, e, absentEntry(Absent.Untouched));
    this.fromReserve = true;
    const frame = this.allocFrame();
    this.pool.bytes.set(bytes.subarray(0, FRAME_SIZE), frame);
    if (!this.casEntry(index, e, frame | P2M_PRESENT | P2M_WRITABLE | P2M_ACCESSED)) {
      this.pool.free(frame);
      return false;
    }
    Atomics.add(this.counters, P2mCounter.Populated, 1);
    return true;
  }

  /** Another thread is moving the page: step out of any access (the mover
   *  may be waiting for accessors to leave) and look again shortly. */
  private waitBusy(): void {
    Atomics.add(this.counters, P2mCounter.BusyWaits, 1);
    const inside = this.accessDepth > 0;
    if (inside) Atomics.sub(this.counters, P2mCounter.Accessors, 1);
    Atomics.wait(this.counters, P2mCounter.Sleep, 0, BUSY_WAIT_MS);
    if (inside) Atomics.add(this.counters, P2mCounter.Accessors, 1);
  }

  private allocFrame(): HostAddress {
    return this.fromReserve ? this.pool.alloc(this.owner) : this.pool.allocGuest(this.owner);
  }

  private source(): PageSource {
    if (!this.pages) throw new P2mFault("a compressed, swapped or snapshot page, and no page store on this thread");
    return this.pages;
  }

  private indexOrThrow(gpa: GuestAddress): number {
    const index = this.indexOf(gpa);
    if (index < 0) throw new P2mFault(`guest-physical address ${hex(gpa)} is outside guest RAM [${hex(this.start)}, ${hex(this.end)})`);
    return index;
  }

  private checkIndex(index: number): void {
    if (this.released) throw new P2mFault("p2m used after release");
    if (!Number.isInteger(index) || index < 0 || index >= this.count) {
      throw new P2mFault(`p2m index ${index} outside [0, ${this.count})`);
    }
  }
}

function isSnapshotEntry(e: number): boolean {
  return !isPresent(e) && absentKind(e) === Absent.Snapshot;
}
