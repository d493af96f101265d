// The frame pool's books: who holds each frame, how many references it has,
// which frames are free. They live in one SharedArrayBuffer beside the pool's
// WebAssembly memory, so every thread that attaches the pool keeps the same
// books; and outside that memory, so the CPU core (which can address all of
// it) cannot corrupt them.
//
// Layout, in 32-bit words unless said otherwise, every array indexed by frame
// number (host address / 4 KiB) up to the pool's limit:
//   header      LOCK, TOP, IN_USE, FREE_DEPTH, BASE_FRAME, LIMIT_FRAMES,
//               COMMITTED_PAGES (the memory's size: only the pool grows it)
//   refs        reference count per frame; 0 = not held
//   freeStack   frame numbers of freed frames, FREE_DEPTH of them
//   stackSlot   per frame: its index in freeStack + 1; 0 = not on the stack.
//               It lets a contiguous allocation take frames out of the middle
//               of the stack in O(1) each, so the stack never holds stale or
//               duplicate entries and never outgrows one slot per frame.
//   ownerFrames frames held per owner id (65536 of them)
//   owners      (16 bits) owner id per frame; 0 = free
// Frames at or above TOP were never handed out (and are still zero); a frame
// below TOP is held (refs > 0), on the free stack, or, briefly, neither: its
// last reference is gone and its old holder is zeroing it before pushing it.
//
// Every method here except the constructor and the read-only getters must run
// holding the pool's lock (header[LOCK], a SharedMutex). Reference counts are
// the exception: they change with atomic read-modify-writes, outside the lock.

import { SharedMutex } from "./shared-mutex.js";

/** Who holds a frame: 0 = nobody (free), 1 = the host, 2 and up = VMs and share groups. */
export type FrameOwner = number;
export const OWNER_FREE: FrameOwner = 0;
export const OWNER_HOST: FrameOwner = 1;
export const FIRST_VM_OWNER: FrameOwner = 2;
/** Owner ids are 16 bits: 65534 VMs or share groups at once is plenty, and it
 *  halves the per-frame cost against 32. */
export const MAX_OWNER: FrameOwner = 0xffff;

const LOCK = 0;
const TOP = 1;
const IN_USE = 2;
const FREE_DEPTH = 3;
const BASE_FRAME = 4;
const LIMIT_FRAMES = 5;
const COMMITTED_PAGES = 6;
const GUEST_RESERVE = 7;
const HEADER_WORDS = 16;
const OWNER_IDS = MAX_OWNER + 1;

export class FrameLedger {
  readonly buffer: SharedArrayBuffer;
  readonly lock: SharedMutex;
  private readonly header: Int32Array;
  readonly refs: Int32Array;
  private readonly freeStack: Int32Array;
  private readonly stackSlot: Int32Array;
  private readonly ownerFrames: Int32Array;
  private readonly owners: Uint16Array;

  /** New books for frames [baseFrame, limitFrames), all free, in a memory of `committedPages`. */
  static create(baseFrame: number, limitFrames: number, committedPages: number): FrameLedger {
    const words = HEADER_WORDS + 3 * limitFrames + OWNER_IDS;
    const buffer = new SharedArrayBuffer(words * 4 + Math.ceil(limitFrames / 2) * 4);
    const header = new Int32Array(buffer, 0, HEADER_WORDS);
    header[TOP] = baseFrame;
    header[BASE_FRAME] = baseFrame;
    header[LIMIT_FRAMES] = limitFrames;
    header[COMMITTED_PAGES] = committedPages;
    return new FrameLedger(buffer);
  }

  /** Another thread's view of existing books. */
  constructor(buffer: SharedArrayBuffer) {
    this.buffer = buffer;
    this.header = new Int32Array(buffer, 0, HEADER_WORDS);
    const frames = this.header[LIMIT_FRAMES];
    let at = HEADER_WORDS * 4;
    const words = (n: number): Int32Array => {
      const a = new Int32Array(buffer, at, n);
      at += n * 4;
      return a;
    };
    this.refs = words(frames);
    this.freeStack = words(frames);
    this.stackSlot = words(frames);
    this.ownerFrames = words(OWNER_IDS);
    this.owners = new Uint16Array(buffer, at, frames);
    this.lock = new SharedMutex(this.header, LOCK);
  }

  get baseFrame(): number {
    return this.header[BASE_FRAME];
  }

  /** One past the last frame the pool may hand out. */
  get limitFrames(): number {
    return this.header[LIMIT_FRAMES];
  }

  /** First frame never handed out. */
  get top(): number {
    return Atomics.load(this.header, TOP);
  }

  /** 64 KiB pages the memory has (at least: it grows just before this is raised). Reading
   *  it is much cheaper than memory.buffer, a call into the runtime (40 ns). */
  get committedPages(): number {
    return Atomics.load(this.header, COMMITTED_PAGES);
  }

  /** Free frames guest pages may not take (allocGuest): the host's own needs. */
  get guestReserve(): number {
    return Atomics.load(this.header, GUEST_RESERVE);
  }

  set guestReserve(frames: number) {
    Atomics.store(this.header, GUEST_RESERVE, frames);
  }

  get inUse(): number {
    return Atomics.load(this.header, IN_USE);
  }

  get freeDepth(): number {
    return Atomics.load(this.header, FREE_DEPTH);
  }

  ownerOf(frame: number): FrameOwner {
    return Atomics.load(this.owners, frame);
  }

  framesOwnedBy(owner: FrameOwner): number {
    return Atomics.load(this.ownerFrames, owner);
  }

  /** Is `frame` on the free stack (below TOP and free)? */
  isStacked(frame: number): boolean {
    return Atomics.load(this.stackSlot, frame) !== 0;
  }

  // ---- with the lock held ----

  /** The most recently freed frame, off the stack; -1 when there is none. */
  popFree(): number {
    const depth = this.header[FREE_DEPTH];
    if (depth === 0) return -1;
    const frame = this.freeStack[depth - 1];
    this.header[FREE_DEPTH] = depth - 1;
    this.stackSlot[frame] = 0;
    return frame;
  }

  /** Take `frame` out of the middle of the stack: the top entry fills its slot. */
  unstack(frame: number): void {
    const slot = this.stackSlot[frame] - 1;
    const depth = this.header[FREE_DEPTH] - 1;
    const last = this.freeStack[depth];
    this.freeStack[slot] = last;
    this.stackSlot[last] = slot + 1;
    this.stackSlot[frame] = 0;
    this.header[FREE_DEPTH] = depth;
  }

  /** The memory has grown to `pages`. */
  setCommittedPages(pages: number): void {
    Atomics.store(this.header, COMMITTED_PAGES, pages);
  }

  /** `count` frames from TOP up, or -1 when they would pass the limit. */
  takeFromTop(count: number): number {
    const first = this.header[TOP];
    if (first + count > this.header[LIMIT_FRAMES]) return -1;
    this.header[TOP] = first + count;
    return first;
  }

  /** `frame` (free, off the stack) now held by `owner`, one reference. */
  assign(frame: number, owner: FrameOwner): void {
    this.owners[frame] = owner;
    Atomics.store(this.refs, frame, 1);
    this.ownerFrames[owner]++;
    this.header[IN_USE]++;
  }

  /** A held frame changes hands (a VM's frame becomes its share group's). */
  transfer(frame: number, owner: FrameOwner): void {
    this.ownerFrames[this.owners[frame]]--;
    this.owners[frame] = owner;
    this.ownerFrames[owner]++;
  }

  /**
   * Drop every reference to the frames of `owner` in [start, end) and list
   * them in `out`: they are then the caller's to zero and pushFree(). Owner and
   * count are read under the lock, so a frame freed and handed to someone else
   * meanwhile is not taken by mistake; the exchange on the count makes a
   * racing free() of the same frame see it already gone.
   */
  seizeOwned(owner: FrameOwner, start: number, end: number, out: number[]): void {
    for (let frame = start; frame < end; frame++) {
      if (this.owners[frame] === owner && Atomics.exchange(this.refs, frame, 0) > 0) out.push(frame);
    }
  }

  /** A free frame taken off the stack (popFree) goes back on it, as it was. */
  pushFreeUnowned(frame: number): void {
    const depth = this.header[FREE_DEPTH];
    this.freeStack[depth] = frame;
    this.stackSlot[frame] = depth + 1;
    this.header[FREE_DEPTH] = depth + 1;
  }

  /** `frame` (its last reference dropped, zeroed) back on the free stack. */
  pushFree(frame: number): void {
    this.ownerFrames[this.owners[frame]]--;
    this.owners[frame] = OWNER_FREE;
    this.header[IN_USE]--;
    const depth = this.header[FREE_DEPTH];
    this.freeStack[depth] = frame;
    this.stackSlot[frame] = depth + 1;
    this.header[FREE_DEPTH] = depth + 1;
  }
}
