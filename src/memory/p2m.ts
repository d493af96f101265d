// A VM's p2m: guest-physical frame -> host frame, for one window of guest frames
// [baseGfn, baseGfn + count) (the VM's RAM). The CPU core consults it on every
// TLB miss (src/core/p2m.ts); addresses outside the window are device space and
// become MMIO exits.
//
// The table is `count` little-endian u32 entries in frames from the pool:
//   entry = page-aligned host address | P2M_PRESENT | P2M_WRITABLE
// An entry without P2M_PRESENT is a frame not allocated yet: the guest's first
// touch is a p2m-fault exit and `populate()` allocates it (DESIGN.md: allocate
// on first touch). Taking a mapping away or making it read-only requires every
// vCPU using this p2m to flush its TLB; adding one does not, because the core
// never caches a translation that faulted.

import type { GuestAddress, HostAddress } from "./address.js";
import { PAGE_SHIFT, PAGE_SIZE, hex } from "./address.js";
import { FramePool, framesFor } from "./frame-pool.js";

/** Entry flags, as the core defines them (src/core/p2m.ts). */
export const P2M_PRESENT = 1;
export const P2M_WRITABLE = 2;
const P2M_ADDRESS_MASK = 0xfffff000;
const ENTRY_SIZE = 4;

export class P2mError extends Error {
  override readonly name = "P2mError";
}

export class P2m {
  readonly pool: FramePool;
  readonly baseGfn: bigint;
  readonly count: number;
  /** Host address of the entry table (what the core's setP2m() takes). */
  readonly table: HostAddress;
  private readonly tableFrames: number;
  private populatedFrames = 0;
  private released = false;

  constructor(pool: FramePool, baseGfn: bigint, count: number) {
    if (!Number.isInteger(count) || count < 1) throw new P2mError(`bad p2m size ${count}`);
    if (baseGfn < 0n || baseGfn + BigInt(count) > 1n << BigInt(64 - PAGE_SHIFT)) throw new P2mError("p2m window beyond the 64-bit address space");
    this.pool = pool;
    this.baseGfn = baseGfn;
    this.count = count;
    this.tableFrames = framesFor(count * ENTRY_SIZE);
    this.table = pool.allocateContiguous(this.tableFrames);
  }

  /** First guest-physical address of the window. */
  get start(): GuestAddress {
    return (this.baseGfn << BigInt(PAGE_SHIFT)) as GuestAddress;
  }

  /** One past the last guest-physical address of the window. */
  get end(): bigint {
    return (this.baseGfn + BigInt(this.count)) << BigInt(PAGE_SHIFT);
  }

  get sizeBytes(): number {
    return this.count * PAGE_SIZE;
  }

  /** Frames of RAM allocated so far (not counting the table). */
  get populated(): number {
    return this.populatedFrames;
  }

  /** Index of `gpa`'s frame in the window, or -1 outside it. */
  indexOf(gpa: GuestAddress): number {
    const i = (gpa >> BigInt(PAGE_SHIFT)) - this.baseGfn;
    return i >= 0n && i < BigInt(this.count) ? Number(i) : -1;
  }

  contains(gpa: GuestAddress): boolean {
    return this.indexOf(gpa) >= 0;
  }

  entry(index: number): number {
    this.checkIndex(index);
    return this.pool.view.getUint32(this.table + index * ENTRY_SIZE, true);
  }

  /** Host frame backing window frame `index`, or undefined if not allocated yet. */
  frameAt(index: number): HostAddress | undefined {
    const e = this.entry(index);
    return (e & P2M_PRESENT) !== 0 ? (e & P2M_ADDRESS_MASK) >>> 0 : undefined;
  }

  /** Host frame for window frame `index`, allocating (zeroed, writable) on first use. */
  populate(index: number): HostAddress {
    const present = this.frameAt(index);
    if (present !== undefined) return present;
    const frame = this.pool.allocate();
    this.setEntry(index, frame | P2M_PRESENT | P2M_WRITABLE);
    this.populatedFrames++;
    return frame;
  }

  /** Allocate every frame of the window now (no first-touch faults later). */
  populateAll(): void {
    for (let i = 0; i < this.count; i++) this.populate(i);
  }

  /**
   * Resolve a p2m fault the core reported at `gpa` (EXIT_P2M_FAULT). Returns
   * false when the address is outside the window or the fault is not one this
   * p2m can resolve (a write to a present read-only frame: copy-on-write does not
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
    return !write || (e & P2M_WRITABLE) !== 0; // already mapped: a stale fault, just retry
  }

  /** Return every frame (RAM and table) to the pool. The p2m is unusable after. */
  release(): void {
    if (this.released) return;
    for (let i = 0; i < this.count; i++) {
      const frame = this.frameAt(i);
      if (frame !== undefined) this.pool.free(frame);
    }
    this.pool.freeContiguous(this.table, this.tableFrames);
    this.populatedFrames = 0;
    this.released = true;
  }

  private setEntry(index: number, value: number): void {
    this.checkIndex(index);
    this.pool.view.setUint32(this.table + index * ENTRY_SIZE, value >>> 0, true);
  }

  private checkIndex(index: number): void {
    if (this.released) throw new P2mError("p2m used after release");
    if (!Number.isInteger(index) || index < 0 || index >= this.count) {
      throw new P2mError(`p2m index ${index} outside [0, ${this.count}) (window ${hex(this.start)})`);
    }
  }
}
