// The host frame pool: all memory that guests run on, in 4 KiB frames.
//
// It is one shared WebAssembly.Memory (DESIGN.md: one pool, so vCPU worker
// threads run on it in parallel). The CPU core's own static data sits at the
// bottom of that memory, below `reservedBytes` (at least the core's
// coreDataEnd()); every byte above is handed out here, as frames. VMs own
// frames only through their p2m; hart state blocks and p2m tables are frames too.
//
// Every thread can allocate and free: the books (frame-ledger.ts) are in a
// SharedArrayBuffer beside the memory, guarded by a futex mutex
// (shared-mutex.ts). The thread that creates the pool passes handle() to its
// workers, which call FramePool.attach(handle) to work on the same pool.
//
// Each frame has an owner (the host, a VM, a share group) charged for it, and
// a reference count: alloc() gives one reference, retain() adds one, free()
// drops one, and the frame returns to the pool when none is left.
// releaseOwner() takes back everything an owner holds (a VM destroyed).
//
// Allocation: single frames come from a stack of freed frames (LIFO: the most
// recently freed frame is the likeliest still in cache), else from the top,
// frames never handed out. Runs of contiguous frames (p2m tables, hart blocks,
// JIT areas) come first-fit from the freed frames, else from the top. When the
// top passes the end of the memory, the memory grows, by at least
// GROW_STEP_PAGES so a guest touching its RAM page by page does not grow it
// page by page.
//
// Frames are zeroed when freed, not when allocated: allocation is the hot path
// (a boot takes 16,000 first-touch faults, each waiting for its frame), frames
// from the top are zero already, and a dead VM's data does not linger in free
// memory. Zeroing happens outside the lock, while the frame is on no list, so
// nobody can be handed it half-zeroed. Where the platform allows, a freed
// frame is not written at all: its pages go back to the kernel (madvise
// MADV_DONTNEED, frame-zeroer.ts), which hands them out zeroed when next
// touched, so memory the pool gets back leaves the process's resident size.

import type { HostAddress } from "./address.js";
import { PAGE_SIZE, hex } from "./address.js";
import { FrameLedger, MAX_OWNER, OWNER_FREE, OWNER_HOST, type FrameOwner } from "./frame-ledger.js";
import { frameZeroer, frameReleaser } from "./frame-zeroer.js";

export { OWNER_FREE, OWNER_HOST, FIRST_VM_OWNER, MAX_OWNER, type FrameOwner } from "./frame-ledger.js";

export const FRAME_SIZE = PAGE_SIZE;
/** A WebAssembly page is 64 KiB; a 32-bit memory has at most 65536 of them (4 GiB). */
export const WASM_PAGE_SIZE = 65536;
export const WASM_MAX_PAGES = 65536;
/** The core declares its imported memory with at least this many pages
 *  (scripts/build.mjs: --initialMemory 32); a smaller memory fails to link. */
export const CORE_MIN_PAGES = 32;
/** Grow by at least 16 MiB at a time: growing is a system call and, for a
 *  shared memory, replaces the buffer every view is made from. */
const GROW_STEP_PAGES = 256;
/** Frames releaseOwner() looks at per hold of the lock. */
const RELEASE_CHUNK_FRAMES = 4096;
/** Tries at taking a free run found without the lock before taking new frames instead. */
const RUN_TRIES = 3;

/** The pool cannot provide the frames asked for (its memory is at its limit). */
export class OutOfHostMemory extends Error {
  override readonly name = "OutOfHostMemory";
  constructor(frames: number, limitBytes: number) {
    super(`out of host memory: cannot allocate ${frames} more frame${frames === 1 ? "" : "s"} (pool limit ${limitBytes / (1 << 20)} MiB)`);
  }
}

/** Misuse of the pool (double free, bad count, bad owner): a hypervisor bug. */
export class FramePoolError extends Error {
  override readonly name = "FramePoolError";
}

export interface FramePoolOptions {
  /** Bytes at the bottom of the memory that hold the core's data (rounded up to a frame). */
  reservedBytes: number;
  /** Upper bound of the memory in 64 KiB pages (default and at most 65536). */
  maxPages?: number;
  /** Most bytes the pool spans, reserved area included (rounded down to a
   *  frame); frames past it are refused with OutOfHostMemory. Default: all of maxPages. */
  limitBytes?: number;
}

/** Everything another thread needs to work on the same pool; structured-cloneable
 *  (postMessage, workerData). */
export interface FramePoolHandle {
  readonly memory: WebAssembly.Memory;
  readonly ledger: SharedArrayBuffer;
}

/** Where the pool's frames are; the three add up to all the frames it may hand out. */
export interface FramePoolStats {
  /** Held by some owner. */
  framesInUse: number;
  /** Freed, zeroed, waiting for reuse. */
  framesFree: number;
  /** Between the top and the limit: never handed out. */
  framesNeverUsed: number;
}

export class FramePool {
  readonly memory: WebAssembly.Memory;
  /** Address of the first frame the pool manages. */
  readonly base: HostAddress;
  private readonly ledger: FrameLedger;
  private readonly refs: Int32Array;
  private readonly zero: (address: number, length: number) => void;
  /** Gives free frames' pages back to the kernel (where it can: frame-zeroer.ts);
   *  null where it cannot, undefined until first needed (release). */
  private releaser: ((address: number, length: number) => boolean) | null | undefined;
  private bytesView: Uint8Array;
  private dataView: DataView;
  private wordsView: Int32Array;
  /** Length of the three views: a number, because a view's own byteLength costs
   *  30 ns on a WebAssembly memory's buffer, too much for every access. */
  private viewedBytes: number;

  /** `new FramePool(reservedBytes)` or `new FramePool({ reservedBytes, maxPages, limitBytes })`:
   *  a new, empty pool on a new memory. */
  constructor(options: number | FramePoolOptions, attachTo?: FramePoolHandle) {
    if (attachTo !== undefined) {
      this.memory = attachTo.memory;
      this.ledger = new FrameLedger(attachTo.ledger);
    } else {
      const o: FramePoolOptions = typeof options === "number" ? { reservedBytes: options } : options;
      const maxPages = Math.min(o.maxPages ?? WASM_MAX_PAGES, WASM_MAX_PAGES);
      const limitBytes = Math.min(o.limitBytes ?? Infinity, maxPages * WASM_PAGE_SIZE);
      const baseFrame = Math.ceil(o.reservedBytes / FRAME_SIZE);
      const limitFrames = Math.floor(limitBytes / FRAME_SIZE);
      if (baseFrame >= limitFrames) throw new FramePoolError(`reserved area of ${o.reservedBytes} bytes leaves no room for frames`);
      const initial = Math.max(CORE_MIN_PAGES, Math.ceil((baseFrame * FRAME_SIZE) / WASM_PAGE_SIZE));
      this.memory = new WebAssembly.Memory({
        initial,
        maximum: Math.max(initial, Math.ceil(limitBytes / WASM_PAGE_SIZE)),
        shared: true,
      });
      this.ledger = FrameLedger.create(baseFrame, limitFrames, initial);
    }
    this.base = this.ledger.baseFrame * FRAME_SIZE;
    this.refs = this.ledger.refs;
    this.zero = frameZeroer(this.memory);
    this.viewedBytes = this.memory.buffer.byteLength;
    this.bytesView = new Uint8Array(this.memory.buffer);
    this.dataView = new DataView(this.memory.buffer);
    this.wordsView = new Int32Array(this.memory.buffer);
  }

  /** The releaser, made when first needed: loading the native addon took a
   *  millisecond of every host's start (and of every pCPU worker's), and a
   *  `run` that exits with its VM never gives a frame back. */
  private get release(): ((address: number, length: number) => boolean) | undefined {
    if (this.releaser === undefined) this.releaser = frameReleaser(this.memory) ?? null;
    return this.releaser ?? undefined;
  }

  /** This thread's FramePool object over the pool another thread made (its handle()). */
  static attach(handle: FramePoolHandle): FramePool {
    return new FramePool(0, handle);
  }

  /** Plain data naming this pool, to post to another thread for attach(). */
  handle(): FramePoolHandle {
    return { memory: this.memory, ledger: this.ledger.buffer };
  }

  /** The whole memory as bytes. Growing (by any thread) replaces the underlying
   *  buffer, so get this again after anything that may allocate; never keep it across one. */
  get bytes(): Uint8Array {
    if (this.viewedBytes < this.ledger.committedPages * WASM_PAGE_SIZE) this.refreshViews();
    return this.bytesView;
  }

  /** The whole memory as a DataView (same caveat as `bytes`). */
  get view(): DataView {
    if (this.viewedBytes < this.ledger.committedPages * WASM_PAGE_SIZE) this.refreshViews();
    return this.dataView;
  }

  /** The whole memory as 32-bit words, for Atomics on structures other threads
   *  use (p2m entries); index = address / 4. Same caveat as `bytes`. Words are in
   *  the host's byte order, little-endian like WebAssembly's on every host Node runs on. */
  get words(): Int32Array {
    if (this.viewedBytes < this.ledger.committedPages * WASM_PAGE_SIZE) this.refreshViews();
    return this.wordsView;
  }

  /** Frames held now, by every owner. */
  get framesInUse(): number {
    return this.ledger.inUse;
  }

  /** A snapshot of the books; exact when no other thread is changing them. */
  stats(): FramePoolStats {
    const ledger = this.ledger;
    return { framesInUse: ledger.inUse, framesFree: ledger.freeDepth, framesNeverUsed: ledger.limitFrames - ledger.top };
  }

  /** Bytes the memory spans now (it grows on demand). */
  get committedBytes(): number {
    return this.memory.buffer.byteLength;
  }

  /** The pool never spans more than this, reserved area included. */
  get limitBytes(): number {
    return this.ledger.limitFrames * FRAME_SIZE;
  }

  isAllocated(addr: HostAddress): boolean {
    if (!Number.isInteger(addr) || addr % FRAME_SIZE !== 0 || addr < this.base) return false;
    const frame = addr / FRAME_SIZE;
    return frame < this.ledger.top && Atomics.load(this.refs, frame) > 0;
  }

  /** Who holds the frame at `addr`; OWNER_FREE when nobody does. */
  ownerOf(addr: HostAddress): FrameOwner {
    const frame = this.frameOf(addr);
    return Atomics.load(this.refs, frame) > 0 ? this.ledger.ownerOf(frame) : OWNER_FREE;
  }

  /** References to the frame at `addr`; 0 when it is free. */
  refCount(addr: HostAddress): number {
    return Atomics.load(this.refs, this.frameOf(addr));
  }

  /** Frames `owner` holds now (what it is charged for). */
  framesOwnedBy(owner: FrameOwner): number {
    checkOwner(owner);
    return this.ledger.framesOwnedBy(owner);
  }

  /** One zeroed frame, held by `owner` with one reference. */
  alloc(owner: FrameOwner = OWNER_HOST): HostAddress {
    checkOwner(owner);
    const ledger = this.ledger;
    let frame: number;
    ledger.lock.lock();
    try {
      frame = ledger.popFree();
      if (frame < 0) frame = this.takeFresh(1);
      if (frame >= 0) ledger.assign(frame, owner);
    } finally {
      ledger.lock.unlock();
    }
    if (frame < 0) throw new OutOfHostMemory(1, this.limitBytes);
    return frame * FRAME_SIZE;
  }

  /**
   * Frames a guest page may not take: when no more than this many are free,
   * allocGuest() refuses, so the host's own allocations (translation caches,
   * hart blocks of a VM starting) still succeed while guests fill the pool
   * and the memory manager makes room. Every thread sees the same value.
   */
  get guestReserveFrames(): number {
    return this.ledger.guestReserve;
  }

  set guestReserveFrames(frames: number) {
    this.ledger.guestReserve = Math.max(0, Math.floor(frames));
  }

  /** A frame for a guest page (alloc(), short of the guest reserve). */
  allocGuest(owner: FrameOwner): HostAddress {
    const ledger = this.ledger;
    const free = ledger.freeDepth + ledger.limitFrames - ledger.top;
    if (free <= ledger.guestReserve) throw new OutOfHostMemory(1, this.limitBytes);
    return this.alloc(owner);
  }

  /** `count` zeroed frames at consecutive addresses, each held by `owner`; returns the first. */
  allocContiguous(count: number, owner: FrameOwner = OWNER_HOST): HostAddress {
    if (!Number.isInteger(count) || count < 1) throw new FramePoolError(`bad frame count ${count}`);
    checkOwner(owner);
    if (count === 1) return this.alloc(owner);
    const ledger = this.ledger;
    for (let tries = 0; tries < RUN_TRIES; tries++) {
      const first = this.findFreeRun(count);
      if (first < 0) break;
      if (this.takeFreeRun(first, count, owner)) return first * FRAME_SIZE;
      // another thread took part of the run between the scan and the lock: look again
    }
    let first: number;
    ledger.lock.lock();
    try {
      first = this.takeFresh(count);
      for (let i = 0; first >= 0 && i < count; i++) ledger.assign(first + i, owner);
    } finally {
      ledger.lock.unlock();
    }
    if (first < 0) throw new OutOfHostMemory(count, this.limitBytes);
    return first * FRAME_SIZE;
  }

  /** A held frame is charged to `owner` from now on (a page that becomes shared
   *  belongs to its share group, so it outlives the VM it came from). */
  transfer(addr: HostAddress, owner: FrameOwner): void {
    checkOwner(owner);
    const frame = this.frameOf(addr);
    this.ledger.lock.lock();
    try {
      if (Atomics.load(this.refs, frame) <= 0) throw new FramePoolError(`transferring frame ${hex(addr)}, which is not allocated`);
      this.ledger.transfer(frame, owner);
    } finally {
      this.ledger.lock.unlock();
    }
  }

  /** One more reference to a held frame (sharing it); returns the new count. */
  retain(addr: HostAddress): number {
    const frame = this.frameOf(addr);
    for (;;) {
      const refs = Atomics.load(this.refs, frame);
      if (refs <= 0) throw new FramePoolError(`retaining frame ${hex(addr)}, which is not allocated`);
      if (refs === 0x7fffffff) throw new FramePoolError(`frame ${hex(addr)} has too many references`);
      if (Atomics.compareExchange(this.refs, frame, refs, refs + 1) === refs) return refs + 1;
    }
  }

  /** retain() when the frame is held, else false: for a frame named by a
   *  table another thread may drop it from (the caller checks the table still
   *  names it afterwards, and frees the reference if not). */
  tryRetain(addr: HostAddress): boolean {
    const frame = this.frameOf(addr);
    for (;;) {
      const refs = Atomics.load(this.refs, frame);
      if (refs <= 0 || refs === 0x7fffffff) return false;
      if (Atomics.compareExchange(this.refs, frame, refs, refs + 1) === refs) return true;
    }
  }

  /** Drop one reference to the frame at `addr` (an allocation is one); with the
   *  last one it is zeroed and returned to the pool. */
  free(addr: HostAddress): void {
    const frame = this.frameOf(addr);
    if (this.dropReference(frame) > 0) return;
    // One page at a time is cheaper written than given back (a madvise may
    // split a transparent huge page: 40 us); trimFree() gives them back in runs.
    this.zero(addr, FRAME_SIZE);
    this.ledger.lock.lock();
    this.ledger.pushFree(frame);
    this.ledger.lock.unlock();
  }

  /** free() each of `count` frames from `addr`. Nothing changes when one of them is not allocated. */
  freeContiguous(addr: HostAddress, count: number): void {
    if (!Number.isInteger(count) || count < 1) throw new FramePoolError(`bad frame count ${count}`);
    const first = this.frameOf(addr);
    for (let i = 0; i < count; i++) {
      if (first + i >= this.ledger.limitFrames || Atomics.load(this.refs, first + i) <= 0) {
        throw new FramePoolError(`freeing frame ${hex(addr + i * FRAME_SIZE)}, which is not allocated`);
      }
    }
    const unreferenced: number[] = [];
    for (let i = 0; i < count; i++) {
      if (this.dropReference(first + i) === 0) unreferenced.push(first + i);
    }
    this.recycle(unreferenced);
  }

  /**
   * Take back every frame `owner` holds, whatever its reference count (a VM
   * destroyed: DESIGN.md, "destroying a VM returns all of them"), zeroed
   * before reuse. Returns how many. Stop the owner's vCPUs first: a frame the
   * owner allocates while this runs may be missed. Frames a VM shares with
   * others belong to their share group, not to the VM, so they survive it.
   */
  releaseOwner(owner: FrameOwner): number {
    checkOwner(owner);
    const ledger = this.ledger;
    const seized: number[] = [];
    let released = 0;
    for (let start = ledger.baseFrame; start < ledger.top && ledger.framesOwnedBy(owner) > 0; start += RELEASE_CHUNK_FRAMES) {
      ledger.lock.lock();
      try {
        ledger.seizeOwned(owner, start, Math.min(start + RELEASE_CHUNK_FRAMES, ledger.top), seized);
      } finally {
        ledger.lock.unlock();
      }
      this.recycle(seized);
      released += seized.length;
      seized.length = 0;
    }
    return released;
  }

  /**
   * Give the pages of up to `maxFrames` free frames back to the kernel (the
   * most recently freed first, in runs of neighbours), so the process's
   * resident size falls with what the pool holds. They are off the free stack
   * meanwhile, so nobody can be handed one in the middle. Returns how many
   * frames it gave back (0 where the platform cannot).
   */
  trimFree(maxFrames: number): number {
    if (!this.release) return 0;
    const ledger = this.ledger;
    const taken: number[] = [];
    ledger.lock.lock();
    try {
      while (taken.length < maxFrames) {
        const frame = ledger.popFree();
        if (frame < 0) break;
        taken.push(frame);
      }
    } finally {
      ledger.lock.unlock();
    }
    taken.sort((a, b) => a - b);
    let released = 0;
    for (let i = 0; i < taken.length; ) {
      let end = i + 1;
      while (end < taken.length && taken[end] === taken[end - 1] + 1) end++;
      if (this.release(taken[i] * FRAME_SIZE, (end - i) * FRAME_SIZE)) released += end - i;
      i = end;
    }
    // Back on the stack, lowest on top: the next allocations fill the lowest
    // frames, which keeps the memory's used part compact.
    ledger.lock.lock();
    for (let i = taken.length - 1; i >= 0; i--) ledger.pushFreeUnowned(taken[i]);
    ledger.lock.unlock();
    return released;
  }

  /** Zero frames nobody references any more and put them back on the free stack. */
  private recycle(frames: readonly number[]): void {
    if (frames.length === 0) return;
    // Runs of neighbouring frames go back to the kernel in one call each.
    const sorted = this.release ? [...frames].sort((a, b) => a - b) : frames;
    for (let i = 0; i < sorted.length; ) {
      let end = i + 1;
      while (this.release && end < sorted.length && sorted[end] === sorted[end - 1] + 1) end++;
      const at = sorted[i] * FRAME_SIZE;
      const bytes = (end - i) * FRAME_SIZE;
      if (!this.release?.(at, bytes)) this.zero(at, bytes);
      i = end;
    }
    this.ledger.lock.lock();
    for (const frame of frames) this.ledger.pushFree(frame);
    this.ledger.lock.unlock();
  }

  /** One reference fewer on a held frame; returns how many are left. */
  private dropReference(frame: number): number {
    for (;;) {
      const refs = Atomics.load(this.refs, frame);
      if (refs <= 0) throw new FramePoolError(`freeing frame ${hex(frame * FRAME_SIZE)}, which is not allocated`);
      if (Atomics.compareExchange(this.refs, frame, refs, refs - 1) === refs) return refs - 1;
    }
  }

  /** Frame number of `addr`, which must be a frame the pool can hand out. */
  private frameOf(addr: HostAddress): number {
    if (!Number.isInteger(addr) || addr % FRAME_SIZE !== 0 || addr < this.base || addr >= this.limitBytes) {
      throw new FramePoolError(`${hex(addr)} is not a frame of the pool`);
    }
    return addr / FRAME_SIZE;
  }

  /** With the lock held: `count` frames from the top, the memory grown to
   *  cover them; -1 past the limit or when the host will not commit more. */
  private takeFresh(count: number): number {
    const first = this.ledger.top;
    if (first + count > this.ledger.limitFrames || !this.commitUpTo((first + count) * FRAME_SIZE)) return -1;
    return this.ledger.takeFromTop(count);
  }

  /** With the lock held: grow the memory to span `end` bytes. */
  private commitUpTo(end: number): boolean {
    const havePages = this.ledger.committedPages;
    const needPages = Math.ceil(end / WASM_PAGE_SIZE) - havePages;
    if (needPages <= 0) return true;
    const limitPages = Math.ceil(this.limitBytes / WASM_PAGE_SIZE);
    try {
      this.memory.grow(Math.max(needPages, Math.min(GROW_STEP_PAGES, limitPages - havePages)));
    } catch {
      try {
        this.memory.grow(needPages); // the memory's maximum is nearer than the step
      } catch {
        return false; // the host refused to commit more
      }
    }
    this.ledger.setCommittedPages(this.memory.buffer.byteLength / WASM_PAGE_SIZE);
    return true;
  }

  /** First-fit among freed frames below the top, without the lock (the result
   *  is checked under it). Contiguous runs are rare (one p2m table per VM, one
   *  block per hart), so a linear scan is fine. -1 when there is none. */
  private findFreeRun(count: number): number {
    const ledger = this.ledger;
    if (ledger.freeDepth < count) return -1;
    const top = ledger.top;
    let runStart = ledger.baseFrame;
    for (let frame = runStart; frame < top; frame++) {
      if (!ledger.isStacked(frame)) runStart = frame + 1;
      else if (frame - runStart + 1 === count) return runStart;
    }
    return -1;
  }

  /** Take the free run at `first` if all of it is still free. */
  private takeFreeRun(first: number, count: number, owner: FrameOwner): boolean {
    const ledger = this.ledger;
    ledger.lock.lock();
    try {
      for (let i = 0; i < count; i++) if (!ledger.isStacked(first + i)) return false;
      for (let i = 0; i < count; i++) {
        ledger.unstack(first + i);
        ledger.assign(first + i, owner);
      }
      return true;
    } finally {
      ledger.lock.unlock();
    }
  }

  private refreshViews(): void {
    // Grown by another thread, a shared memory's buffer in this one follows
    // once this thread's isolate has handled V8's grow interrupt; grow(0)
    // makes it follow now. A view short of the ledger's pages would throw
    // on the newest frames (a pCPU worker once died of "Invalid atomic
    // access index" that this is the one explanation found for).
    if (this.memory.buffer.byteLength < this.ledger.committedPages * WASM_PAGE_SIZE) this.memory.grow(0);
    this.viewedBytes = this.memory.buffer.byteLength;
    this.bytesView = new Uint8Array(this.memory.buffer);
    this.dataView = new DataView(this.memory.buffer);
    this.wordsView = new Int32Array(this.memory.buffer);
  }
}

function checkOwner(owner: FrameOwner): void {
  if (!Number.isInteger(owner) || owner <= OWNER_FREE || owner > MAX_OWNER) {
    throw new FramePoolError(`bad frame owner ${owner}: owners are 1 (the host) to ${MAX_OWNER}`);
  }
}

/** Frames needed to hold `bytes`, rounded up. */
export function framesFor(bytes: number): number {
  return Math.ceil(bytes / FRAME_SIZE);
}
