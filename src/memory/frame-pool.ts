// The host frame pool: all memory that guests run on, in 4 KiB frames.
//
// It is one shared WebAssembly.Memory (DESIGN.md: one pool, so vCPU worker
// threads can later run on it in parallel). The CPU core's own static data sits
// at the bottom of that memory, below `reservedBytes` (at least the core's
// coreDataEnd()); every byte above is handed out here, as frames. VMs own frames
// only through their p2m; hart state blocks and p2m tables are frames too.
//
// Allocation: single frames come from a stack of freed frames before new ones;
// runs of contiguous frames (p2m tables, hart blocks) come first-fit from the
// freed frames, else from the top. When the top passes the end of the memory,
// the memory grows, by at least GROW_STEP_PAGES so a guest touching its RAM
// page by page does not grow it page by page. Frames are zeroed when freed, so
// the next owner never sees the previous owner's data.

import type { HostAddress } from "./address.js";
import { PAGE_SIZE, hex } from "./address.js";

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

/** The pool cannot provide the frames asked for (its memory is at its limit). */
export class OutOfHostMemory extends Error {
  override readonly name = "OutOfHostMemory";
  constructor(frames: number, limitBytes: number) {
    super(`out of host memory: cannot allocate ${frames} more frame${frames === 1 ? "" : "s"} (pool limit ${limitBytes / (1 << 20)} MiB)`);
  }
}

/** Misuse of the pool (double free, bad count): a hypervisor bug. */
export class FramePoolError extends Error {
  override readonly name = "FramePoolError";
}

export interface FramePoolOptions {
  /** Bytes at the bottom of the memory that hold the core's data (rounded up to a frame). */
  reservedBytes: number;
  /** An existing shared memory (a worker thread's view of the pool); created when absent. */
  memory?: WebAssembly.Memory;
  /** Upper bound of the memory in 64 KiB pages (default and at most 65536). */
  maxPages?: number;
}

export class FramePool {
  readonly memory: WebAssembly.Memory;
  /** Address of the first frame the pool manages. */
  readonly base: HostAddress;
  private readonly maxBytes: number;
  /** One byte per frame of the whole possible memory: 1 = in use. Index = address / FRAME_SIZE. */
  private readonly used: Uint8Array;
  /** Freed frames available for reuse. May hold frames a contiguous allocation
   *  took since they were pushed: `used` is the truth, checked on pop. */
  private readonly freeStack: number[] = [];
  private freeCount = 0;
  /** Frames at or above this address have never been handed out. */
  private top: HostAddress;
  private inUse = 0;
  private bytesView: Uint8Array;
  private dataView: DataView;

  /** `new FramePool(reservedBytes)` or `new FramePool({ reservedBytes, memory, maxPages })`. */
  constructor(options: number | FramePoolOptions) {
    const o: FramePoolOptions = typeof options === "number" ? { reservedBytes: options } : options;
    const maxPages = Math.min(o.maxPages ?? WASM_MAX_PAGES, WASM_MAX_PAGES);
    this.maxBytes = maxPages * WASM_PAGE_SIZE;
    this.base = Math.ceil(o.reservedBytes / FRAME_SIZE) * FRAME_SIZE;
    if (this.base >= this.maxBytes) throw new FramePoolError(`reserved area of ${o.reservedBytes} bytes leaves no room for frames`);
    this.memory =
      o.memory ??
      new WebAssembly.Memory({
        initial: Math.max(CORE_MIN_PAGES, Math.ceil(this.base / WASM_PAGE_SIZE)),
        maximum: maxPages,
        shared: true,
      });
    this.top = this.base;
    this.used = new Uint8Array(this.maxBytes / FRAME_SIZE);
    this.bytesView = new Uint8Array(this.memory.buffer);
    this.dataView = new DataView(this.memory.buffer);
  }

  /** The whole memory as bytes. Growing replaces the underlying buffer, so get
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

  /** Bytes the memory spans now (it grows on demand). */
  get committedBytes(): number {
    return this.memory.buffer.byteLength;
  }

  get limitBytes(): number {
    return this.maxBytes;
  }

  isAllocated(addr: HostAddress): boolean {
    return addr % FRAME_SIZE === 0 && addr >= this.base && addr < this.top && this.used[addr / FRAME_SIZE] === 1;
  }

  /** One zeroed frame. */
  alloc(): HostAddress {
    while (this.freeStack.length > 0) {
      const addr = this.freeStack.pop()!;
      const index = addr / FRAME_SIZE;
      if (this.used[index] === 0) {
        this.used[index] = 1;
        this.freeCount--;
        this.inUse++;
        return addr;
      }
    }
    return this.allocFromTop(1);
  }

  /** `count` zeroed frames at consecutive addresses; returns the first. */
  allocContiguous(count: number): HostAddress {
    if (!Number.isInteger(count) || count < 1) throw new FramePoolError(`bad frame count ${count}`);
    if (count === 1) return this.alloc();
    const reused = this.findFreeRun(count);
    if (reused === undefined) return this.allocFromTop(count);
    this.used.fill(1, reused / FRAME_SIZE, reused / FRAME_SIZE + count);
    this.freeCount -= count;
    this.inUse += count;
    return reused;
  }

  free(addr: HostAddress): void {
    this.freeContiguous(addr, 1);
  }

  /** Return frames to the pool; they are zeroed now, so no later owner can read them. */
  freeContiguous(addr: HostAddress, count: number): void {
    for (let i = 0; i < count; i++) {
      const frame = addr + i * FRAME_SIZE;
      if (!this.isAllocated(frame)) throw new FramePoolError(`freeing frame ${hex(frame)}, which is not allocated`);
    }
    this.bytes.fill(0, addr, addr + count * FRAME_SIZE);
    for (let i = 0; i < count; i++) {
      const frame = addr + i * FRAME_SIZE;
      this.used[frame / FRAME_SIZE] = 0;
      this.freeStack.push(frame);
    }
    this.freeCount += count;
    this.inUse -= count;
  }

  private allocFromTop(count: number): HostAddress {
    const addr = this.top;
    const end = addr + count * FRAME_SIZE;
    if (end > this.maxBytes) throw new OutOfHostMemory(count, this.maxBytes);
    this.ensureCommitted(end, count);
    this.used.fill(1, addr / FRAME_SIZE, end / FRAME_SIZE);
    this.top = end;
    this.inUse += count;
    return addr; // memory never handed out is still zero (fresh from grow())
  }

  /** First-fit among freed frames below `top`. Contiguous runs are rare (one p2m
   *  table per VM, one block per hart), so a linear scan is fine. */
  private findFreeRun(count: number): HostAddress | undefined {
    if (this.freeCount < count) return undefined;
    const first = this.base / FRAME_SIZE;
    const last = this.top / FRAME_SIZE;
    let runStart = first;
    for (let i = first; i < last; i++) {
      if (this.used[i] === 1) runStart = i + 1;
      else if (i - runStart + 1 === count) return runStart * FRAME_SIZE;
    }
    return undefined;
  }

  private ensureCommitted(end: number, frames: number): void {
    const have = this.memory.buffer.byteLength;
    if (end <= have) return;
    const havePages = have / WASM_PAGE_SIZE;
    const needPages = Math.ceil(end / WASM_PAGE_SIZE) - havePages;
    const growPages = Math.min(Math.max(needPages, GROW_STEP_PAGES), this.maxBytes / WASM_PAGE_SIZE - havePages);
    try {
      this.memory.grow(growPages);
    } catch {
      throw new OutOfHostMemory(frames, this.maxBytes); // the host refused to commit more
    }
    this.refreshViews();
  }

  private refreshViews(): void {
    this.bytesView = new Uint8Array(this.memory.buffer);
    this.dataView = new DataView(this.memory.buffer);
  }
}

/** Frames needed to hold `bytes`, rounded up. */
export function framesFor(bytes: number): number {
  return Math.ceil(bytes / FRAME_SIZE);
}
