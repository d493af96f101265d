// The frame pool used by several threads at once: real worker_threads on one
// pool, alongside the main thread (testing/pool-worker.ts does the workers' side).

import { test } from "node:test";
import assert from "node:assert/strict";
import { FramePool, FRAME_SIZE, FIRST_VM_OWNER } from "./frame-pool.js";
import { churn, exhaust, fillForOwner, type ChurnResult } from "./testing/pool-churn.js";
import { PoolWorkers } from "./testing/pool-threads.js";

const WORKERS = 2;

test("threads allocating and freeing at once never get the same frame, and the books add up", async (t) => {
  const pool = new FramePool(1 << 16);
  const total = pool.stats().framesNeverUsed;
  const options = (tag: number) => ({ tag, owner: FIRST_VM_OWNER + tag, operations: 40_000, maxHeld: 2000, seed: 0x9e3779b9 * tag });
  const workers = new PoolWorkers(Array.from({ length: WORKERS }, (_, i) => ({ kind: "churn" as const, pool: pool.handle(), churn: options(i + 1) })));
  await workers.ready();
  workers.go();
  const mine = churn(pool, options(WORKERS + 1));
  const results = [...((await workers.results) as ChurnResult[]), mine];
  assert.deepEqual(results.flatMap((r) => r.problems), []);
  t.diagnostic(`frames allocated per thread: ${results.map((r) => r.frames).join(", ")}; memory ${pool.committedBytes >> 20} MiB`);
  assert.ok(results.every((r) => r.frames >= 20_000), "tens of thousands of frames each");
  const stats = pool.stats();
  assert.equal(stats.framesInUse, 0, "everything freed");
  for (let tag = 1; tag <= WORKERS + 1; tag++) assert.equal(pool.framesOwnedBy(FIRST_VM_OWNER + tag), 0);
  assert.equal(stats.framesFree + stats.framesNeverUsed, total, "every frame handed out is back on the free stack");
  // and the free stack holds each frame once: taking them all gives distinct, zeroed frames
  const again = new Set<number>();
  for (let i = 0; i < stats.framesFree; i++) again.add(pool.alloc());
  assert.equal(again.size, stats.framesFree);
  assert.equal(pool.stats().framesNeverUsed, stats.framesNeverUsed, "all of them came from the free stack");
  assert.ok([...again].every((f) => pool.words.subarray(f / 4, f / 4 + FRAME_SIZE / 4).every((w) => w === 0)));
});

test("releaseOwner takes back exactly the frames a worker allocated for its owner, zeroed", async () => {
  const pool = new FramePool(1 << 16);
  const [doomed, kept] = [FIRST_VM_OWNER + 10, FIRST_VM_OWNER + 11];
  const workers = new PoolWorkers([{ kind: "fill", pool: pool.handle(), owner: doomed, frames: 6000 }]);
  await workers.ready();
  workers.go();
  const keptFrames = fillForOwner(pool, kept, 3000);
  const [doomedFrames] = (await workers.results) as number[][];
  assert.equal(new Set([...doomedFrames, ...keptFrames]).size, 9000);
  assert.equal(pool.framesOwnedBy(doomed), 6000);
  assert.equal(pool.releaseOwner(doomed), 6000);
  assert.equal(pool.framesOwnedBy(doomed), 0);
  assert.equal(pool.framesInUse, 3000);
  for (const f of keptFrames) assert.ok(pool.bytes.subarray(f, f + FRAME_SIZE).every((b) => b === kept), "the other owner's frames are untouched");
  const reused = Array.from({ length: 6000 }, () => pool.alloc());
  assert.deepEqual(new Set(reused), new Set(doomedFrames), "the released frames come back before new ones");
  for (const f of reused) assert.ok(pool.bytes.subarray(f, f + FRAME_SIZE).every((b) => b === 0), "without the old owner's data");
});

test("threads racing for the last frames of a limited pool share them exactly, the rest refused", async () => {
  const pool = new FramePool({ reservedBytes: 1 << 16, limitBytes: 16 << 20 });
  const frames = pool.stats().framesNeverUsed;
  const workers = new PoolWorkers(Array.from({ length: WORKERS }, (_, i) => ({ kind: "exhaust" as const, pool: pool.handle(), owner: FIRST_VM_OWNER + i })));
  await workers.ready();
  workers.go();
  const mine = exhaust(pool, FIRST_VM_OWNER + WORKERS);
  const results = [...((await workers.results) as ReturnType<typeof exhaust>[]), mine];
  assert.ok(results.every((r) => r.refusedWithOutOfHostMemory), "each thread was refused with OutOfHostMemory");
  const all = results.flatMap((r) => r.addrs);
  assert.equal(all.length, frames);
  assert.equal(new Set(all).size, frames, "no frame twice");
  assert.equal(pool.framesInUse, frames);
  assert.ok(all.every((f) => f + FRAME_SIZE <= pool.limitBytes));
});
