// Work for the frame pool's thread tests, run by the main thread and by
// workers (pool-worker.ts) on the same pool at once. Each checks what it can
// see of the others: a frame it is handed must be zero, and must still hold
// only its own tag when it frees it; a frame handed to two threads at once,
// or not zeroed before reuse, shows up as the wrong words.

import { hex } from "../address.js";
import { FRAME_SIZE, OutOfHostMemory, type FramePool, type FrameOwner } from "../frame-pool.js";

const FRAME_WORDS = FRAME_SIZE / 4;

export interface ChurnOptions {
  /** Written into every word of this thread's frames (not 0). */
  tag: number;
  owner: FrameOwner;
  /** Allocations and frees, about half each. */
  operations: number;
  /** Most allocations held at once. */
  maxHeld: number;
  seed: number;
}

export interface ChurnResult {
  allocations: number;
  frames: number;
  /** What went wrong (the first few), empty when all is well. */
  problems: string[];
}

/** Allocate (mostly single frames, some runs of 2-8) and free at random. */
export function churn(pool: FramePool, o: ChurnOptions): ChurnResult {
  const held: { addr: number; count: number }[] = [];
  const result: ChurnResult = { allocations: 0, frames: 0, problems: [] };
  const problem = (msg: string): void => {
    if (result.problems.length < 10) result.problems.push(`tag ${o.tag}: ${msg}`);
  };
  let rng = o.seed | 1;
  const next = (): number => {
    rng ^= rng << 13;
    rng ^= rng >>> 17;
    rng ^= rng << 5;
    return rng >>> 0;
  };
  const release = (k: number): void => {
    const { addr, count } = held[k];
    held[k] = held[held.length - 1];
    held.pop();
    const words = pool.words;
    for (let w = addr / 4; w < addr / 4 + count * FRAME_WORDS; w++) {
      if (words[w] !== o.tag) {
        problem(`frame ${hex(w * 4 - (w * 4) % FRAME_SIZE)} held ${words[w]} when freed: someone else wrote it`);
        break;
      }
    }
    if (count === 1) pool.free(addr);
    else pool.freeContiguous(addr, count);
  };
  for (let op = 0; op < o.operations; op++) {
    const r = next();
    if (held.length > 0 && (held.length >= o.maxHeld || (r & 1) === 0)) {
      release((r >>> 1) % held.length);
      continue;
    }
    const count = (r >>> 1) % 16 === 0 ? 2 + ((r >>> 5) % 7) : 1;
    const addr = count === 1 ? pool.alloc(o.owner) : pool.allocContiguous(count, o.owner);
    result.allocations++;
    result.frames += count;
    if (pool.ownerOf(addr) !== o.owner || pool.refCount(addr) !== 1) problem(`frame ${hex(addr)} handed out with owner ${pool.ownerOf(addr)}, ${pool.refCount(addr)} refs`);
    const words = pool.words; // after alloc(): it may have grown the memory
    for (let w = addr / 4; w < addr / 4 + count * FRAME_WORDS; w++) {
      if (words[w] !== 0) {
        problem(`frame ${hex(w * 4 - (w * 4) % FRAME_SIZE)} handed out holding ${words[w]}: not zeroed, or someone else's`);
        break;
      }
    }
    words.fill(o.tag, addr / 4, addr / 4 + count * FRAME_WORDS);
    held.push({ addr, count });
  }
  while (held.length > 0) release(held.length - 1);
  return result;
}

/** Allocate `frames` frames for `owner` (some as runs), each filled with the
 *  owner's id in every byte; returns their addresses. */
export function fillForOwner(pool: FramePool, owner: FrameOwner, frames: number): number[] {
  const addrs: number[] = [];
  while (addrs.length < frames) {
    const count = addrs.length % 100 === 0 ? Math.min(5, frames - addrs.length) : 1;
    const addr = pool.allocContiguous(count, owner);
    pool.bytes.fill(owner & 0xff, addr, addr + count * FRAME_SIZE);
    for (let i = 0; i < count; i++) addrs.push(addr + i * FRAME_SIZE);
  }
  return addrs;
}

/** Allocate until the pool refuses; the frames are kept. */
export function exhaust(pool: FramePool, owner: FrameOwner): { addrs: number[]; refusedWithOutOfHostMemory: boolean } {
  const addrs: number[] = [];
  for (;;) {
    try {
      addrs.push(pool.alloc(owner));
    } catch (e) {
      return { addrs, refusedWithOutOfHostMemory: e instanceof OutOfHostMemory };
    }
  }
}
