// One p2m populated by two threads at once, as two vCPUs of a VM faulting on
// the same guest frames (testing/pool-worker.ts does the workers' side).

import { test } from "node:test";
import assert from "node:assert/strict";
import { FramePool, FRAME_SIZE, FIRST_VM_OWNER } from "./frame-pool.js";
import { P2m } from "./p2m.js";
import { PoolWorkers, type PopulateResult } from "./testing/pool-threads.js";

const RAM = 0x8000_0000n;
const ENTRIES = 16384;
const ROUNDS = 4;

test("two threads populating the same entries end with one mapping each and no frame leaked", async (t) => {
  const pool = new FramePool(1 << 16);
  const vm = FIRST_VM_OWNER + 4;
  let lost = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const p2m = new P2m(pool, RAM, ENTRIES * FRAME_SIZE, { owner: vm });
    const tableFrames = pool.framesOwnedBy(vm);
    const workers = new PoolWorkers([0, 1].map(() => ({ kind: "populate" as const, pool: pool.handle(), p2m: p2m.handle() })));
    await workers.ready();
    workers.go();
    const [a, b] = (await workers.results) as PopulateResult[];
    assert.deepEqual(a.frames, b.frames, "both threads got the same frame for every entry");
    for (let i = 0; i < ENTRIES; i++) assert.equal(p2m.frameAt(i), a.frames[i]);
    assert.equal(new Set(a.frames).size, ENTRIES, "distinct frames");
    assert.equal(a.published + b.published, ENTRIES, "each mapping published once");
    assert.equal(p2m.populated, ENTRIES);
    assert.equal(pool.framesOwnedBy(vm), tableFrames + ENTRIES, "the losers' frames went back");
    assert.equal(pool.framesInUse, tableFrames + ENTRIES);
    lost += a.allocations + b.allocations - ENTRIES;
    p2m.release();
    assert.equal(pool.framesInUse, 0);
  }
  t.diagnostic(`compare-and-swaps lost to the other thread: ${lost} in ${ROUNDS * ENTRIES} entries`);
});
