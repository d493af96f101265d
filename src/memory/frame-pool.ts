// The host frame pool: all memory that guests run on, in 4 KiB frames.
//
// It is one shared WebAssembly.Memory (DESIGN.md: one pool, so vCPU worker
// threads can later run on it in parallel). The CPU core's own static data sits
// at the bottom of that memory, below `firstUsable` (the core's coreDataEnd());
// every byte above is handed out here, as frames. VMs own frames only through
// their p2m; hart state blocks and p2m tables are frames too.
//
// Allocation: single frames come from a free stack (frames returned earlier)
// before new ones; runs of contiguous frames (p2m tables, hart blocks) come
// first-fit from the free map, else from the top. When the top reaches the end
// of the memory, the memory grows, in steps of GROW_STEP_PAGES so a guest
// touching its RAM page by page does not grow it page by page. Frames are
// zeroed when freed, so the next owner never sees the previous owner's data.

import type { HostAddress } from "./address.js";
import { PAGE_SIZE } from "./address.js";

/** A WebAssembly page is 64 KiB; a 32-bit memory has at most 65536 of them (4 GiB). */
export const WASM_PAGE_SIZE = 65536;
export const WASM_MAX_PAGES = 65536;
const FRAMES_PER_WASM_PAGE = WASM_PAGE_SIZE / PAGE_SIZE;
/** Grow by at least 16 MiB at a time: growing is a system call and, for a
 *  shared memory, replaces every view of it. */
const GROW_STEP_PAGES = 256;

export class OutOfHostMemoryError extends Error {
  override readonly name = "OutOfHostMemoryError";
  constructor(frames: number, limitBytes: number) {
    super(`host frame pool exhausted: cannot allocate ${frames} more frame${frames === 1 ? "" : "s"} (pool limit ${limitBytes / (1 << 20)} MiB)`);
  }
}

export class FramePoolError extends Error {
  override readonly name = "FramePoolError";
}

export interface FramePoolOptions {
  /** The shared memory, already holding the core's data below `firstUsable`. */
  memory: WebAssembly.Memory;
  /** First byte the pool may hand out (rounded up to a frame). */
  firstUsable: number;
  /** Upper bound of the memory in 64 KiB pages (the memory's declared maximum). */
  maxPages?: number;
}

export class FramePool {
  readonly memory: WebAssembly.Memory;
  /** Address of the first frame the pool manages. */
  readonly base: HostAddress;
  private readonly maxBytes: number;
  /** One byte per frame of the whole possible memory: 1 = in use. Indexed by host address >> 12. */
  private readonly used: Uint8Array;
  /** Frames freed and available for reuse (may hold stale entries that a
   *  contiguous allocation took since: `used` is the truth). */
  private readonly freeStack: number[] = [];
  private freeCount = 0;
  /** Frames at or above this address have never been handed out. */
  private top: HostAddress;
  private inUse = 0;
  private bytesView: Uint8Array;
  private dataView: DataView;

  constructor(options: FramePoolOptions) {
    this.memory = options.memory;
    const maxPages = Math.min(options.maxPages ?? WASM_MAX_PAGES, WASM_MAX_PAGES);
    this.maxBytes = maxPages * WASM_PAGE_SIZE;
    this.base = Math.ceil(options.firstUsable / PAGE_SIZE) * PAGE_SIZE;
    if (this.base >= this.maxBytes) throw new FramePoolError("the core's data leaves no room for frames");
    this.top = this.base;
    this.used = new Uint8Array(this.maxBytes / PAGE_SIZE);
    this.bytesView = new Uint8Array(this.memory.buffer);
    this.dataView = new DataView(this.memory.buffer);
  }

  /** The whole memory as bytes. Growing replaces the underlying buffer, so take
   *  this again after anything that may allocate; never keep it across one. */
  get bytes(): Uint8Array {
    if (this.bytesView.byteLength !== this.memory.buffer.byteLength) this.refreshViews();
    return this.bytesView;
  }

  /** The whole memory as a DataView (same caveat as `bytes`). */
  get view(): DataView {
    if (this.dataView.byteLength !== this.memory.buffer.byteLength) this.refreshViews();
    return this.dataView;
  }

  get framesInUse(): number {
    return this.inUse;
  }

  /** Bytes the memory currently spans (grows on demand). */
  get committedBytes(): number {
    return this.memory.buffer.byteLength;
  }

  get limitBytes(): number {
    return this.maxBytes;
  }

  isAllocated(addr: HostAddress): boolean {
    return addr % PAGE_SIZE === 0 && addr >= this.base && addr < this.top && this.used[addr / PAGE_SIZE] === 1;
  }

  /** One zeroed frame. */
  allocate(): HostAddress {
    while (this.freeStack.length > 0) {
      const addr = this.freeStack.pop()!;
      const index = addr / PAGE_SIZE;
      if (this.used[index] === 0) {
        this.used[index] = 1;
        this.freeCount--;
        this.inUse++;
        return addr;
      }
    }
    return this.allocateFromTop(1);
  }

  /** `count` zeroed frames at consecutive addresses; returns the first. */
  allocateContiguous(count: number): HostAddress {
    if (!Number.isInteger(count) || count < 1) throw new FramePoolError(`bad frame count ${count}`);
    if (count === 1) return this.allocate();
    const reused = this.findFreeRun(count);
    if (reused !== undefined) {
      for (let i = 0; i < count; i++) this.used[reused / PAGE_SIZE + i] = 1;
      this.freeCount -= count;
      this.inUse += count;
      return reused;
    }
    return this.allocateFromTop(count);
  }

  free(addr: HostAddress): void {
    this.freeContiguous(addr, 1);
  }

  /** Return frames; they are zeroed now so no later owner can read them. */
  freeContiguous(addr: HostAddress, count: number): void {
    for (let i = 0; i < count; i++) {
      const frame = addr + i * PAGE_SIZE;
      if (!this.isAllocated(frame)) throw new FramePoolError(`freeing frame 0x${frame.toString(16)} that is not allocated`);
    }
    this.bytes.fill(0, addr, addr + count * PAGE_SIZE);
    for (let i = 0; i < count; i++) {
      const frame = addr + i * PAGE_SIZE;
      this.used[frame / PAGE_SIZE] = 0;
      this.freeStack.push(frame);
    }
    this.freeCount += count;
    this.inUse -= count;
  }

  private allocateFromTop(count: number): HostAddress {
    const addr = this.top;
    const end = addr + count * PAGE_SIZE;
    if (end > this.maxBytes) throw new OutOfHostMemoryError(count, this.maxBytes);
    this.ensureCommitted(end);
    for (let i = 0; i < count; i++) this.used[addr / PAGE_SIZE + i] = 1;
    this.top = end;
    this.inUse += count;
    return addr; // fresh memory from grow() is zero
  }

  /** First-fit search of the freed frames below `top` (contiguous runs are rare:
   *  one per VM for its p2m table, one per hart). */
  private findFreeRun(count: number): HostAddress | undefined {
    if (this.freeCount < count) return undefined;
    const first = this.base / PAGE_SIZE;
    const last = this.top / PAGE_SIZE;
    let runStart = first;
    for (let i = first; i < last; i++) {
      if (this.used[i] === 1) {
        runStart = i + 1;
      } else if (i - runStart + 1 === count) {
        return runStart * PAGE_SIZE;
      }
    }
    return undefined;
  }

  private ensureCommitted(end: number): void {
    const have = this.memory.buffer.byteLength;
    if (end <= have) return;
    const maxPages = this.maxBytes / WASM_PAGE_SIZE;
    const havePages = have / WASM_PAGE_SIZE;
    const needPages = Math.ceil(end / WASM_PAGE_SIZE) - havePages;
    const growPages = Math.min(Math.max(needPages, GROW_STEP_PAGES), maxPages - havePages);
    try {
      this.memory.grow(growPages);
    } catch {
      // The host could not commit the memory (or the limit is lower than we thought).
      throw new OutOfHostMemoryError(Math.ceil((end - have) / PAGE_SIZE), this.maxBytes);
    }
    this.refreshViews();
  }

  private refreshViews(): void {
    this.bytesView = new Uint8Array(this.memory.buffer);
    this.dataView = new DataView(this.memory.buffer);
  }
}

/** Frames in `bytes`, rounded up. */
export function framesFor(bytes: number): number {
  return Math.ceil(bytes / PAGE_SIZE);
}

/** Pages of 64 KiB the memory needs at least, for a given byte size. */
export function wasmPagesFor(bytes: number): number {
  return Math.ceil(bytes / WASM_PAGE_SIZE);
}

export { FRAMES_PER_WASM_PAGE };
