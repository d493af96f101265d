// The map of translated code of one VM: one u32 per guest frame of its RAM,
// bit 0 CODE (translations were made from this frame), bits 1..7 how often
// it was rewritten after translation (saturating), bits 8..31 a generation
// (core jit-cache.ts defines the format). Every translation cache of the VM
// (one per pCPU worker that ran it) shares this map, so a write that any
// thread sees retires the page's translations in all of them: a guest store
// (the core bumps the word), device DMA or a p2m change (the host, here).
// Words are updated with compare-and-swap: other threads bump them too.

import type { FramePool } from "../memory/frame-pool.js";
import { FRAME_SIZE } from "../memory/frame-pool.js";
import type { P2m } from "../memory/p2m.js";

const PAGE_CODE = 1;
const INVAL_MAX = 127;

export class CodePageMap {
  readonly count: number;
  private readonly frames: number;
  /** Pages whose translations a host-side write retired. */
  invalidations = 0;
  private wordsView: Uint32Array | undefined;

  /** A new, empty map for `p2m`'s window (frames charged to `owner`). */
  static create(pool: FramePool, p2m: P2m, owner?: number): CodePageMap {
    const frames = Math.max(1, Math.ceil((p2m.count * 4) / FRAME_SIZE));
    return new CodePageMap(pool, p2m, pool.allocContiguous(frames, owner), true);
  }

  /** Another thread's view of an existing map (at host address `address`). */
  static attach(pool: FramePool, p2m: P2m, address: number): CodePageMap {
    return new CodePageMap(pool, p2m, address, false);
  }

  private constructor(private readonly pool: FramePool, p2m: P2m, readonly address: number, private readonly owned: boolean) {
    this.count = p2m.count;
    this.frames = Math.max(1, Math.ceil((p2m.count * 4) / FRAME_SIZE));
    // This thread's writes and p2m changes: the other threads' reach the map
    // through their own views.
    p2m.onChange((index, count) => this.invalidate(index, count));
  }

  /** The whole memory as u32 words; word `address / 4 + i` is frame i's. */
  words(): Uint32Array {
    const buf = this.pool.memory.buffer;
    if (this.wordsView?.buffer !== buf) this.wordsView = new Uint32Array(buf);
    return this.wordsView;
  }

  /** Frame `index`'s word (a plain read: a snapshot). */
  word(index: number): number {
    return Atomics.load(this.words(), (this.address >>> 2) + index);
  }

  /** Mark frame `index` as holding translated code. An atomic OR: a
   *  generation bump another thread makes meanwhile stays. */
  markCode(index: number): void {
    Atomics.or(this.words(), (this.address >>> 2) + index, PAGE_CODE);
  }

  /** Clear every CODE bit (a translation cache flush, when the map is the
   *  cache's alone: a shared map keeps them for the other caches). */
  clearCode(): void {
    const w = this.words();
    const first = this.address >>> 2;
    for (let i = 0; i < this.count; i++) if (w[first + i] & PAGE_CODE) Atomics.and(w, first + i, ~PAGE_CODE >>> 0);
  }

  /** Guest frames [index, index + count) changed behind the vCPUs' back
   *  (DMA wrote them, or their mapping changed): retire their translations.
   *  Returns how many pages had some. */
  invalidate(index: number, count: number): number {
    const w = this.words();
    const first = this.address >>> 2;
    let killed = 0;
    for (let i = Math.max(0, index); i < Math.min(this.count, index + count); i++) {
      for (;;) {
        const old = Atomics.load(w, first + i);
        if ((old & PAGE_CODE) === 0) break;
        const n = Math.min(((old >>> 1) & INVAL_MAX) + 1, INVAL_MAX);
        if (Atomics.compareExchange(w, first + i, old, ((((old >>> 8) + 1) << 8) | (n << 1)) >>> 0) === old) {
          killed++;
          break;
        }
      }
    }
    this.invalidations += killed;
    return killed;
  }

  /** Free the map's frames (only the thread that created it). */
  release(): void {
    if (this.owned) this.pool.freeContiguous(this.address, this.frames);
  }
}
