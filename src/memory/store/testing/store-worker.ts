// A worker thread for the page store's thread test (store-threads.test.ts):
// attaches the store and the swap file by handle, checks the main thread's
// pages, puts pages of its own, then churns alongside it from the start line.

import { parentPort, workerData } from "node:worker_threads";
import { CompressedStore, SwapFile, type CompressedStoreHandle, type SwapFileHandle } from "../index.js";
import { checkPages, churn, putPages, type PutPages } from "./store-work.js";

export interface StoreWorkerData {
  store: CompressedStoreHandle;
  swap: SwapFileHandle;
  tag: number;
  mainTag: number;
  mainPages: PutPages;
  operations: number;
  /** [ready count, go]: both threads churn at once. */
  startLine: SharedArrayBuffer;
}

export interface StoreWorkerResult {
  problems: string[];
  refused: number;
  mine: PutPages;
}

const task = workerData as StoreWorkerData;
const store = CompressedStore.attach(task.store);
const swap = SwapFile.attach(task.swap);
const problems = checkPages(store, swap, task.mainTag, task.mainPages);
const mine = putPages(store, swap, task.tag, 50);
const line = new Int32Array(task.startLine);
Atomics.add(line, 0, 1);
while (Atomics.load(line, 1) === 0) Atomics.wait(line, 1, 0);
const churned = churn(store, swap, task.tag, task.operations);
problems.push(...churned.problems);
swap.close(); // an attached object's: the file stays open for the main thread
parentPort!.postMessage({ problems, refused: churned.refused, mine } satisfies StoreWorkerResult);
