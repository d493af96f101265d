// Reclaim under pressure: cold pages leave the pool for the page store.
//
// Cold pages are found by a clock over the accessed bits the p2m keeps (the
// core sets ACCESSED when a TLB miss maps a frame): the hand sweeps a VM's
// entries, clears the bit of pages used since its last pass and picks those
// still clear. A cleared bit is set again only by a TLB refill, so after each
// sweep every hart of the VM is asked to flush its TLB (without waiting):
// pages in use are refilled, and marked, before the hand comes round again.
//
// Picked pages are stowed with the VM held (held-pages.ts): zero pages are
// dropped, others compressed into the bounded pool if they halve, else
// written to the swap file. When the compressed pool runs full, its oldest
// pages move to the swap file. A fault brings any of them back (p2m.ts).

import type { FramePool } from "../frame-pool.js";
import { FRAME_SIZE } from "../frame-pool.js";
import { Absent, P2M_ACCESSED, P2M_SHARED, absentEntry, absentKind, entryFrame, entrySlot, isPresent } from "../p2m-entry.js";
import { withClaims, finish, putBack, type Claim, type ManagedVm } from "./held-pages.js";
import type { PageStore } from "./page-store.js";

export interface ReclaimVm extends ManagedVm {
  /** Ask every hart to flush its TLB (not waiting for it). */
  flushTlbs(): void;
}

export interface ReclaimCounts {
  /** Pages taken out: dropped as zero, compressed, written to swap raw. */
  zero: number;
  compressed: number;
  swapped: number;
  /** Compressed pages moved on to the swap file. */
  movedToSwap: number;
  /** Clock sweeps (a whole VM's entries looked at). */
  sweeps: number;
}

export class Reclaimer {
  private readonly hands = new Map<ReclaimVm, number>();
  private turn = 0;
  /** Compressed pages in the order they were stowed: the oldest go to swap first. */
  private compressedFifo: { vm: ReclaimVm; index: number; slot: number }[] = [];
  readonly counts: ReclaimCounts = { zero: 0, compressed: 0, swapped: 0, movedToSwap: 0, sweeps: 0 };
  /** The last swap write error (the file full is not one). */
  lastError: Error | undefined;

  constructor(
    private readonly pool: FramePool,
    private readonly store: PageStore,
    private readonly allow: { compress: boolean; swap: boolean },
  ) {}

  add(vm: ReclaimVm): void {
    this.hands.set(vm, 0);
  }

  remove(vm: ReclaimVm): void {
    this.hands.delete(vm);
    this.compressedFifo = this.compressedFifo.filter((p) => p.vm !== vm);
  }

  /** Take up to `pages` cold pages out of the guests; resolves to how many left the pool. */
  async reclaim(pages: number): Promise<number> {
    const vms = [...this.hands.keys()];
    if (vms.length === 0 || (!this.allow.compress && !this.allow.swap)) return 0;
    // The guest with the most frames gives first.
    vms.sort((a, b) => b.p2m.populated - a.p2m.populated);
    const vm = vms[this.turn++ % Math.min(vms.length, 2)];
    const picked = this.sweep(vm, pages);
    if (picked.length === 0) return 0;
    let freed = 0;
    await withClaims(picked, (claimed) => {
      for (const c of claimed) freed += this.stow(c) ? 1 : 0;
    });
    return freed;
  }

  /** Move the oldest compressed pages to the swap file until the pool is under `targetBytes`. */
  spillCompressed(targetBytes: number): number {
    const compressed = this.store.compressed;
    if (!compressed || !this.store.swap || !this.allow.swap) return 0;
    let moved = 0;
    while (this.compressedFifo.length > 0 && compressed.stats().usedBytes > targetBytes) {
      const p = this.compressedFifo.shift()!;
      if (!this.hands.has(p.vm)) continue;
      const e = p.vm.p2m.entry(p.index);
      if (isPresent(e) || absentKind(e) !== Absent.Compressed || entrySlot(e) !== p.slot) continue; // brought back since
      let slot: number;
      try {
        slot = this.store.moveToSwap(p.slot);
      } catch (err) {
        this.lastError = err as Error;
        this.compressedFifo.unshift(p);
        break;
      }
      if (slot < 0) {
        this.compressedFifo.unshift(p);
        break; // the swap file is full
      }
      // A fault may bring the page back meanwhile: the entry decides who frees what.
      if (p.vm.p2m.casEntry(p.index, e, absentEntry(Absent.Swapped, slot))) {
        compressed.free(p.slot);
        moved++;
      } else {
        this.store.swap!.free(slot);
      }
    }
    this.counts.movedToSwap += moved;
    return moved;
  }

  /** Sweep `vm`'s entries from its hand until `want` cold pages are found or every entry was seen twice. */
  private sweep(vm: ReclaimVm, want: number): Claim[] {
    const p2m = vm.p2m;
    const picked: Claim[] = [];
    let hand = this.hands.get(vm) ?? 0;
    let cleared = false;
    for (let seen = 0; seen < 2 * p2m.count && picked.length < want; seen++) {
      const e = p2m.entry(hand);
      if (isPresent(e) && (e & P2M_SHARED) === 0) {
        if ((e & P2M_ACCESSED) !== 0) {
          p2m.casEntry(hand, e, e & ~P2M_ACCESSED);
          cleared = true;
        } else {
          picked.push({ vm, index: hand, seen: e });
        }
      }
      if (++hand === p2m.count) {
        hand = 0;
        this.counts.sweeps++;
      }
    }
    this.hands.set(vm, hand);
    if (cleared) vm.flushTlbs();
    return picked;
  }

  /** Put one claimed page in the store; false (entry back as it was) when there is no room. */
  private stow(c: Claim): boolean {
    const frame = entryFrame(c.was!);
    const page = this.pool.bytes.subarray(frame, frame + FRAME_SIZE);
    let where;
    try {
      where = this.store.stow(page, this.allow.compress, this.allow.swap);
    } catch (err) {
      this.lastError = err as Error;
      where = undefined;
    }
    if (!where) {
      putBack(c);
      return false;
    }
    if (where.kind === Absent.Zero) {
      finish(c, absentEntry(Absent.Zero));
      this.counts.zero++;
    } else {
      finish(c, absentEntry(where.kind, where.slot));
      if (where.kind === Absent.Compressed) {
        this.counts.compressed++;
        this.compressedFifo.push({ vm: c.vm as ReclaimVm, index: c.index, slot: where.slot });
      } else {
        this.counts.swapped++;
      }
    }
    this.pool.free(frame);
    c.vm.p2m.notePopulated(-1);
    return true;
  }
}
