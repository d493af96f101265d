// A VM's dirty log: which pages of its RAM were written since the log last
// looked, for diff snapshots and live migration (as KVM's dirty page log).
//
// One bit per page of the p2m window, in u32 words (page i: word i >> 5, bit
// i & 31), in contiguous frames of the host's pool charged to the VM, so the
// core can index it. Writers set bits with an atomic OR:
//   - the core, on every p2m lookup for a write (src/core/p2m.ts), on harts
//     whose DIRTY_LOG_OFF field holds the bitmap's address (setDirtyLog);
//   - host-side writes into guest memory (device DMA, loaders: P2m's
//     writableFrame() and GuestMemory), on any thread, through the address
//     published in the p2m's shared counters.
//
// The caller's part (the hypervisor, which owns the harts):
//   - start():   DirtyLog.start(p2m), then on every hart
//                fn.setDirtyLog(h, log.address) and a TLB flush (tlbFlush on
//                the hart's thread, or postRequest(h, REQ_TLB_FLUSH)). Stores
//                that hit a hart's store TLB do not look up the p2m, so a page
//                with a live store TLB entry is not logged until the flush.
//   - a round:   take() (or takeWords()) clears the bits it returns; then flush
//                every hart's TLB and wait until each has done it (harts out
//                of run(), or having taken REQ_TLB_FLUSH); only then copy the
//                pages take() returned. A store after the flush sets its bit
//                again; one before it landed in a page the round copies.
//   - stop():    on every hart fn.setDirtyLog(h, 0) first, with the harts out
//                of run() and no host write to guest memory in progress on
//                another thread (as for P2m.release()): a writer that read the
//                address just before could otherwise OR into frames freed for
//                other use. Then log.stop().
// A hart snapshot holds DIRTY_LOG_OFF as a host address: restoring one must
// set the field again (0, or the log of the new run).

import type { HostAddress } from "./address.js";
import { framesFor } from "./frame-pool.js";
import { P2m, P2mFault } from "./p2m.js";

/** A VM's dirty page bitmap (see the header for the protocol). The core
 *  logs a store only when it looks up the p2m, not on a store TLB hit: after
 *  start() (once each hart has setDirtyLog) and after every take(), the
 *  caller must flush every hart's TLB before relying on the log. */
export class DirtyLog {
  /** Host address of the bitmap (what the core's setDirtyLog() takes). */
  readonly address: HostAddress;
  /** Pages covered: the p2m window. */
  readonly pages: number;
  /** u32 words of the bitmap. */
  readonly words: number;
  private readonly frames: number;
  private stopped = false;
  /** Dirty pages take() and takeWords() returned since start(). */
  private taken = 0;

  private constructor(private readonly p2m: P2m) {
    this.pages = p2m.count;
    this.words = Math.ceil(this.pages / 32);
    this.frames = framesFor(this.words * 4);
    // Zeroed frames (the pool hands out zeroed frames).
    this.address = p2m.pool.allocContiguous(this.frames, p2m.owner);
  }

  /** Start logging writes to `p2m`'s window: a zeroed bitmap, published to
   *  every thread's P2m object. Throws P2mFault when a log is already on. */
  static start(p2m: P2m): DirtyLog {
    if (p2m.dirtyLog !== 0) throw new P2mFault("a dirty log is already on for this p2m");
    const log = new DirtyLog(p2m);
    if (!p2m.swapDirtyLog(0, log.address)) {
      p2m.pool.freeContiguous(log.address, log.frames);
      throw new P2mFault("a dirty log is already on for this p2m");
    }
    return log;
  }

  get active(): boolean {
    return !this.stopped;
  }

  /** Dirty pages take() and takeWords() returned since start(). */
  get pagesTaken(): number {
    return this.taken;
  }

  /** Pages marked now (a look, nothing cleared). */
  count(): number {
    this.checkActive();
    const words = this.p2m.pool.words;
    const first = this.address >>> 2;
    let n = 0;
    for (let i = 0; i < this.words; i++) n += popcount(Atomics.load(words, first + i));
    return n;
  }

  /** Window indices of the pages written since the last take (ascending),
   *  their bits cleared atomically word by word. Flush the harts' TLBs after
   *  (see the header). */
  take(): number[] {
    const bits = this.takeWords();
    const out: number[] = [];
    for (let w = 0; w < bits.length; w++) {
      let b = bits[w];
      while (b !== 0) {
        const low = b & -b;
        out.push(w * 32 + 31 - Math.clz32(low));
        b ^= low;
      }
    }
    return out;
  }

  /** take() as the bitmap's words (page i: bit i & 31 of word i >> 5), a copy. */
  takeWords(): Uint32Array {
    this.checkActive();
    const words = this.p2m.pool.words;
    const first = this.address >>> 2;
    const out = new Uint32Array(this.words);
    let n = 0;
    for (let i = 0; i < this.words; i++) {
      if (Atomics.load(words, first + i) === 0) continue; // most words of a quiet guest: no write
      const v = Atomics.exchange(words, first + i, 0) >>> 0;
      out[i] = v;
      n += popcount(v);
    }
    this.taken += n;
    return out;
  }

  /** Mark every page of the window (a full first round; tests). */
  markAll(): void {
    this.checkActive();
    const words = this.p2m.pool.words;
    const first = this.address >>> 2;
    for (let i = 0; i < this.words; i++) {
      const left = this.pages - i * 32;
      Atomics.or(words, first + i, left >= 32 ? -1 : (1 << left) - 1);
    }
  }

  /** Unpublish the log and free its frames. Clear every hart's field first
   *  (setDirtyLog(h, 0)), with the harts out of run() and no host write in
   *  progress on another thread: see the header. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.p2m.swapDirtyLog(this.address, 0);
    this.p2m.pool.freeContiguous(this.address, this.frames);
  }

  private checkActive(): void {
    if (this.stopped) throw new P2mFault("dirty log used after stop()");
  }
}

function popcount(v: number): number {
  v = v - ((v >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
}
