// The page store used by two threads at once: a worker attaches the
// compressed store and the swap file by handle, reads what the main thread
// put and puts pages of its own; both churn together, filling the stores; the
// main thread then reads what the worker put.
// testing/store-worker.ts is the worker's side.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Worker } from "node:worker_threads";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CompressedStore, SwapFile, PAGE_SIZE } from "./index.js";
import { checkPages, churn, putPages } from "./testing/store-work.js";
import type { StoreWorkerData, StoreWorkerResult } from "./testing/store-worker.js";

const [MAIN, WORKER] = [1, 2];
/** Small enough that the two churns, holding up to 200 pages each (a fifth
 *  swapped), fill them at times beside the 100 pages kept in each. */
const STORE_BYTES = 12 * PAGE_SIZE;
const SWAP_BYTES = 150 * PAGE_SIZE;

test("a worker reads the main thread's pages, both churn at once, and the main thread reads the worker's", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-swap-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const store = CompressedStore.create(STORE_BYTES);
  const swap = SwapFile.open(join(dir, "swap"), SWAP_BYTES);
  t.after(() => swap.close());
  const mainPages = putPages(store, swap, MAIN, 50);
  const startLine = new Int32Array(new SharedArrayBuffer(8));
  const data: StoreWorkerData = { store: store.handle(), swap: swap.handle(), tag: WORKER, mainTag: MAIN, mainPages, operations: 20_000, startLine: startLine.buffer as SharedArrayBuffer };
  const worker = new Worker(new URL("./testing/store-worker.js", import.meta.url), { workerData: data });
  const result = new Promise<StoreWorkerResult>((resolve, reject) => {
    worker.once("message", resolve);
    worker.once("error", reject);
    worker.once("exit", (code) => reject(new Error(`store worker exited (${code}) without a result`)));
  });
  result.catch(() => {});
  while (Atomics.load(startLine, 0) === 0) await new Promise((r) => setTimeout(r, 1));
  Atomics.store(startLine, 1, 1);
  Atomics.notify(startLine, 1);
  const mine = churn(store, swap, MAIN, 20_000);
  const theirs = await result;
  await worker.terminate();
  assert.deepEqual(theirs.problems, [], "the worker saw the main thread's pages and its own intact");
  assert.deepEqual(mine.problems, [], "the main thread's churn saw its pages intact");
  t.diagnostic(`puts refused for a full store: ${mine.refused} here, ${theirs.refused} in the worker`);
  assert.ok(mine.refused + theirs.refused > 0, "the threads filled the stores between them");
  assert.deepEqual(checkPages(store, swap, WORKER, theirs.mine), [], "the worker's pages, read here");
  assert.deepEqual(checkPages(store, swap, MAIN, mainPages), [], "the main thread's pages, untouched by all that");
  assert.equal(store.stats().objects, 100);
  assert.equal(swap.stats().usedSlots, 100);
  for (const p of [mainPages, theirs.mine]) {
    p.store.forEach((s) => store.free(s));
    p.swap.forEach((s) => swap.free(s));
  }
  assert.deepEqual(store.stats(), { capacityBytes: STORE_BYTES, usedBytes: 0, storedBytes: 0, objects: 0 });
  assert.equal(swap.stats().usedSlots, 0);
});
