// A VM's p2m: guest-physical frame -> host frame, for one window of guest frames
// [baseGfn, baseGfn + count) (the VM's RAM). The CPU core consults it on every
// TLB miss (src/core/p2m.ts); guest-physical addresses outside the window are
// device space, and accesses there become MMIO exits.
//
// The table is `count` little-endian u32 entries in frames from the pool:
//   entry = page-aligned host address | P2M_PRESENT | P2M_WRITABLE
// An entry without P2M_PRESENT is a frame not allocated yet: the guest's first
// touch is a p2m-fault exit, and hostFrame()/resolveFault() allocate it
// (DESIGN.md: allocate on first touch). Taking a mapping away or making it
// read-only requires every vCPU using this p2m to flush its TLB; adding one does
// not, because the core never caches a translation that faulted.
//
// Several threads use one p2m at once (each vCPU's worker resolves its own
// faults): each has its own P2m object over the same table (handle(), then
// P2m.attach() in the other thread). Two vCPUs may fault on the same guest
// frame together; each allocates a frame, and publishing the entry is a
// compare-and-swap, so one mapping wins and the loser gives its frame back.
// The count of populated frames is in a small SharedArrayBuffer of counters
// the P2m objects share (not in the table: a word after the entries would cost
// a whole frame more for every power-of-two RAM size). RAM and table frames are
// charged to the VM's owner id.

import type { GuestAddress, HostAddress } from "./address.js";
import { PAGE_SHIFT, hex, isPageAligned } from "./address.js";
import { FramePool, FRAME_SIZE, OWNER_HOST, framesFor, type FrameOwner } from "./frame-pool.js";

/** Entry flags, as the core defines them (src/core/p2m.ts). */
export const P2M_PRESENT = 1;
export const P2M_WRITABLE = 2;
const P2M_ADDRESS_MASK = 0xfffff000;
const ENTRY_SIZE = 4;
/** The shared counters: */
const POPULATED = 0;
const COUNTERS = 1;
const SHIFT = BigInt(PAGE_SHIFT);

/** A guest-physical address the p2m cannot map: outside the VM's RAM. */
export class P2mFault extends Error {
  override readonly name: string = "P2mFault";
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
  /** Counters every thread's P2m object shares: [populated]. */
  private readonly counters: Int32Array;
  private released = false;
  private readonly changeListeners: ((index: number, count: number) => void)[] = [];

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

  /** Frames of RAM allocated so far, by every thread (not counting the table). */
  get populated(): number {
    return this.released ? 0 : Atomics.load(this.counters, POPULATED);
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

  /** Host frame backing window frame `index`, or undefined while not allocated. */
  frameAt(index: number): HostAddress | undefined {
    const e = this.entry(index);
    return (e & P2M_PRESENT) !== 0 ? (e & P2M_ADDRESS_MASK) >>> 0 : undefined;
  }

  /** Host frame backing `gpa`, or undefined while not allocated; throws outside RAM. */
  peekFrame(gpa: GuestAddress): HostAddress | undefined {
    return this.frameAt(this.indexOrThrow(gpa));
  }

  /** Host frame backing `gpa`, allocated (zeroed, writable) on first use; throws
   *  P2mFault outside the window. */
  hostFrame(gpa: GuestAddress): HostAddress {
    return this.populate(this.indexOrThrow(gpa));
  }

  /** Host frame for window frame `index`, allocated on first use. When another
   *  thread populates it at the same time, both get the frame that won. */
  populate(index: number): HostAddress {
    this.checkIndex(index);
    const word = this.firstWord + index;
    let seen = Atomics.load(this.pool.words, word);
    while ((seen & P2M_PRESENT) === 0) {
      const frame = this.pool.alloc(this.owner); // may grow the memory: get pool.words again after
      const was = Atomics.compareExchange(this.pool.words, word, seen, frame | P2M_PRESENT | P2M_WRITABLE);
      if (was === seen) {
        Atomics.add(this.counters, POPULATED, 1);
        for (const l of this.changeListeners) l(index, 1);
        return frame;
      }
      this.pool.free(frame); // another thread mapped it first (or changed the entry: look again)
      seen = was;
    }
    return (seen & P2M_ADDRESS_MASK) >>> 0;
  }

  /** Allocate every frame of the window now (no first-touch faults later). */
  populateAll(): void {
    for (let i = 0; i < this.count; i++) this.populate(i);
  }

  /**
   * Resolve a p2m fault the core reported at `gpa` (EXIT_P2M_FAULT): allocate the
   * frame on first touch. Returns false when this p2m cannot resolve it: outside
   * the window, or a write to a present read-only frame (copy-on-write does not
   * exist yet), so the caller can end the VM with a clear message.
   */
  resolveFault(gpa: GuestAddress, write: boolean): boolean {
    const index = this.indexOf(gpa);
    if (index < 0) return false;
    const e = this.entry(index);
    if ((e & P2M_PRESENT) === 0) {
      this.populate(index);
      return true;
    }
    return !write || (e & P2M_WRITABLE) !== 0; // already mapped: a stale fault, retrying is enough
  }

  /** Return every frame (RAM and table) to the pool. The p2m is unusable after,
   *  through every thread's P2m object: vCPUs that used it must be stopped
   *  first, and not run again until given another. (pool.releaseOwner(owner)
   *  does the same for a VM in one sweep, with everything else it holds.) */
  release(): void {
    if (this.released) return;
    for (let i = 0; i < this.count; i++) {
      const frame = this.frameAt(i);
      if (frame !== undefined) this.pool.free(frame);
    }
    this.pool.freeContiguous(this.table, this.tableFrames);
    Atomics.store(this.counters, POPULATED, 0);
    this.released = true;
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
