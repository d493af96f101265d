// A worker thread for the frame pool's thread tests: attaches the pool (and a
// p2m) from workerData, waits at the start line with the others, does its
// task, posts the result. See pool-threads.ts for the main thread's side.

import { parentPort, workerData } from "node:worker_threads";
import { FramePool } from "../frame-pool.js";
import { P2m } from "../p2m.js";
import { churn, exhaust, fillForOwner } from "./pool-churn.js";
import { waitAtStartLine, type PoolTask, type PoolWorkerData, type PopulateResult } from "./pool-threads.js";

const task = workerData as PoolWorkerData;
const pool = FramePool.attach(task.pool);
waitAtStartLine(task.startLine);
parentPort!.postMessage(run(task));

function run(t: PoolTask): unknown {
  switch (t.kind) {
    case "churn":
      return churn(pool, t.churn);
    case "fill":
      return fillForOwner(pool, t.owner, t.frames);
    case "exhaust":
      return exhaust(pool, t.owner);
    case "populate":
      return populateAll(t.p2m);
  }
}

/** Populate every entry in order, counting our allocations and the mappings we published. */
function populateAll(handle: Parameters<typeof P2m.attach>[1]): PopulateResult {
  let allocations = 0;
  const alloc = pool.alloc.bind(pool);
  pool.alloc = (owner) => {
    allocations++;
    return alloc(owner);
  };
  const p2m = P2m.attach(pool, handle);
  let published = 0;
  p2m.onChange(() => published++);
  const frames: number[] = [];
  for (let i = 0; i < p2m.count; i++) frames.push(p2m.populate(i));
  return { frames, allocations, published };
}
