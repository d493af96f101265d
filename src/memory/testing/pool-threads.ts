// The main thread's side of the frame pool's thread tests: start workers
// (pool-worker.ts) on one pool, let them all go at once, collect what they post.

import { Worker } from "node:worker_threads";
import type { FramePoolHandle, FrameOwner } from "../frame-pool.js";
import type { P2mHandle } from "../p2m.js";
import type { ChurnOptions } from "./pool-churn.js";

export type PoolTask = { pool: FramePoolHandle } & (
  | { kind: "churn"; churn: ChurnOptions }
  | { kind: "fill"; owner: FrameOwner; frames: number }
  | { kind: "exhaust"; owner: FrameOwner }
  | { kind: "populate"; p2m: P2mHandle }
);

export interface PopulateResult {
  /** The frame populate() returned for each entry. */
  frames: number[];
  /** Frames this worker allocated (one per entry it found absent). */
  allocations: number;
  /** Entries whose mapping this worker published (its compare-and-swap won). */
  published: number;
}

const READY = 0;
const GO = 1;

/** Workers at the start line, ready to go together; results in task order. */
export class PoolWorkers {
  private readonly startLine = new Int32Array(new SharedArrayBuffer(8));
  private readonly workers: Worker[];
  readonly results: Promise<unknown[]>;

  constructor(tasks: PoolTask[]) {
    this.workers = tasks.map((t) => new Worker(new URL("./pool-worker.js", import.meta.url), { workerData: { ...t, startLine: this.startLine.buffer } }));
    this.results = Promise.all(
      this.workers.map(
        (w) =>
          new Promise<unknown>((resolve, reject) => {
            w.once("message", resolve);
            w.once("error", reject);
            w.once("exit", (code) => reject(new Error(`pool worker exited (${code}) without a result`)));
          }),
      ),
    ).finally(() => Promise.all(this.workers.map((w) => w.terminate())));
    // Handled even when the test fails before awaiting it (its own share threw):
    // the workers' failure is then just not reported a second time.
    this.results.catch(() => {});
  }

  /** Resolves when every worker waits at the start line. */
  async ready(): Promise<void> {
    while (Atomics.load(this.startLine, READY) < this.workers.length) await new Promise((r) => setTimeout(r, 1));
  }

  /** Start them all; the caller can then do its own share on this thread. */
  go(): void {
    Atomics.store(this.startLine, GO, 1);
    Atomics.notify(this.startLine, GO);
  }
}

/** What a pool worker gets as workerData. */
export type PoolWorkerData = PoolTask & { startLine: SharedArrayBuffer };

/** A worker's side: say ready, then wait for go. */
export function waitAtStartLine(startLine: SharedArrayBuffer): void {
  const line = new Int32Array(startLine);
  Atomics.add(line, READY, 1);
  while (Atomics.load(line, GO) === 0) Atomics.wait(line, GO, 0);
}
