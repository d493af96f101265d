// The pages of a post-copy migration still at the source, as every thread of
// the target sees them (p2m entries of kind Remote). A thread touching one
// (a vCPU's pCPU worker, an I/O thread, the main thread) posts the page's
// index to a shared request ring, rings the migration thread's doorbell and
// sleeps on the arrivals counter (Atomics.wait) until the entry is no longer
// Remote; the migration thread (postcopy-worker.ts) maps arriving pages and
// bumps the counter. When the source is gone the failed flag wakes every
// waiter, which throws: the guest cannot go on without that page.
//
// Shared words (Int32Array over one SharedArrayBuffer):
//   [0] arrivals   bumped (and notified) after every page mapped
//   [1] failed     1: no page will come any more
//   [2] head       next ring slot a requester takes (Atomics.add)
//   [3] doorbell   bumped (and notified) after every request
//   [CTL + i]      the ring: index + 1 of a requested page, 0 = empty slot
// A request is a hint: every missing page comes anyway, those asked for
// first; a ring overrun may drop one, the requester asks again after a while.

import { SnapshotError } from "../state.js";

const ARRIVALS = 0;
const FAILED = 1;
const HEAD = 2;
const DOORBELL = 3;
const CTL = 4;
export const RING_SLOTS = 1024;
/** A waiter asks again this often (a dropped request). */
const REASK_MS = 200;

export interface RemotePagesHandle {
  readonly words: SharedArrayBuffer;
  /** Why it failed, set by the migration thread before the flag. */
  readonly reason: SharedArrayBuffer;
}

export class RemotePages {
  private readonly w: Int32Array;
  private readonly reasonBytes: Uint8Array;
  /** Ring slots taken so far by the consumer (migration thread only). */
  private tail = 0;

  private constructor(readonly h: RemotePagesHandle) {
    this.w = new Int32Array(h.words);
    this.reasonBytes = new Uint8Array(h.reason);
  }

  static create(): RemotePages {
    return new RemotePages({ words: new SharedArrayBuffer((CTL + RING_SLOTS) * 4), reason: new SharedArrayBuffer(512) });
  }

  static attach(h: RemotePagesHandle): RemotePages {
    return new RemotePages(h);
  }

  handle(): RemotePagesHandle {
    return this.h;
  }

  // ---- any thread: wait for a page ----

  /** Ask for page `index` and block until `stillRemote()` is false. */
  await(index: number, stillRemote: () => boolean): void {
    let asked = -Infinity;
    for (;;) {
      const seen = Atomics.load(this.w, ARRIVALS);
      if (!stillRemote()) return;
      if (Atomics.load(this.w, FAILED) !== 0) throw new SnapshotError(`guest page ${index} never arrived: ${this.reason()}`);
      const now = performance.now();
      if (now - asked >= REASK_MS) {
        this.request(index);
        asked = now;
      }
      Atomics.wait(this.w, ARRIVALS, seen, REASK_MS);
    }
  }

  private request(index: number): void {
    const slot = Atomics.add(this.w, HEAD, 1);
    Atomics.store(this.w, CTL + (slot & (RING_SLOTS - 1)), index + 1);
    Atomics.add(this.w, DOORBELL, 1);
    Atomics.notify(this.w, DOORBELL);
  }

  // ---- the migration thread ----

  /** Page indices asked for since the last call (deduplicated, in order). */
  takeRequests(): number[] {
    const out: number[] = [];
    const head = Atomics.load(this.w, HEAD);
    if (head - this.tail > RING_SLOTS) this.tail = head - RING_SLOTS; // overrun: the oldest are lost
    while (this.tail < head) {
      const v = Atomics.exchange(this.w, CTL + (this.tail & (RING_SLOTS - 1)), 0);
      if (v === 0) break; // taken but not yet written: next time
      this.tail++;
      out.push(v - 1);
    }
    return [...new Set(out)];
  }

  /** Resolves when a request may be waiting. */
  async doorbell(): Promise<void> {
    const seen = Atomics.load(this.w, DOORBELL);
    if (this.tail < Atomics.load(this.w, HEAD)) return;
    const r = (Atomics as unknown as AtomicsWaitAsync).waitAsync(this.w, DOORBELL, seen, 1000);
    if (r.async) await r.value;
  }

  /** Pages were mapped: wake the waiters to look. */
  arrived(): void {
    Atomics.add(this.w, ARRIVALS, 1);
    Atomics.notify(this.w, ARRIVALS);
  }

  /** No page will come any more: every waiter throws with `reason`. */
  fail(reason: string): void {
    const b = new TextEncoder().encode(reason.slice(0, 400));
    this.reasonBytes.fill(0);
    this.reasonBytes.set(b.subarray(0, this.reasonBytes.length - 1));
    Atomics.store(this.w, FAILED, 1);
    this.arrived();
  }

  get failed(): boolean {
    return Atomics.load(this.w, FAILED) !== 0;
  }

  reason(): string {
    const end = this.reasonBytes.indexOf(0);
    return new TextDecoder().decode(this.reasonBytes.slice(0, end < 0 ? undefined : end)) || "the migration source is gone";
  }
}

/** Node has Atomics.waitAsync (V8); the project's lib setting does not name it. */
interface AtomicsWaitAsync {
  waitAsync(a: Int32Array, index: number, value: number, timeoutMs: number): { async: false; value: string } | { async: true; value: Promise<string> };
}
