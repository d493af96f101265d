import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FramePool, FRAME_SIZE, FIRST_VM_OWNER } from "../memory/frame-pool.js";
import { P2m } from "../memory/p2m.js";
import { GuestMemory } from "../memory/guest-memory.js";
import { ConvergenceWatch, nextThrottle, throttledCap } from "./throttle.js";
import { writeSnapshot, type LiveCopy, type LiveRound } from "./snapshot.js";

test("auto-converge steps as QEMU's cpu-throttle: 20 %, then 10 % more a step, at most 99 %", () => {
  const steps = [0];
  while (steps.at(-1)! < 99) steps.push(nextThrottle(steps.at(-1)!));
  assert.deepEqual(steps, [0, 20, 30, 40, 50, 60, 70, 80, 90, 99]);
});

test("the throttle is a share of the user's cap, or of all vCPUs flat out when there is none", () => {
  assert.equal(throttledCap(0, 0, 2, 200), 0, "no throttle: no cap, as the user had it");
  assert.equal(throttledCap(0, 150, 2, 200), 150, "no throttle: the user's cap");
  assert.equal(throttledCap(20, 0, 2, 200), 160, "2 vCPUs on 2 pCPUs slowed 20 %");
  assert.equal(throttledCap(50, 0, 4, 200), 100, "4 vCPUs on 2 pCPUs can use only 200 %");
  assert.equal(throttledCap(50, 60, 2, 200), 30, "half of the user's own cap");
  assert.equal(throttledCap(99, 0, 1, 200), 1, "never 0, which would mean no cap");
});

test("a round counts as not converging when it keeps more than 90 % of the previous round's pages", () => {
  const w = new ConvergenceWatch();
  assert.equal(w.round(1000, 2), false, "the first round has nothing to compare with");
  assert.equal(w.round(950, 2), false, "one round without shrinking");
  assert.equal(w.round(990, 2), true, "two in a row: a step more");
  assert.equal(w.round(980, 2), false, "the count starts again after a step");
  assert.equal(w.round(100, 1), false, "shrank");
  assert.equal(w.round(100, 1), true);
});

test("a live snapshot of a guest that dirties pages as fast as they are written slows its vCPUs a step a round, and lets them go at the pause", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-throttle-"));
  try {
    const PAGES = 1024;
    const p2m = new P2m(new FramePool(4096), 0x8000_0000n, PAGES * FRAME_SIZE, { owner: FIRST_VM_OWNER });
    const mem = new GuestMemory(p2m);
    for (let i = 0; i < PAGES; i++) mem.write(0x8000_0000n + BigInt(i * FRAME_SIZE), Uint8Array.of(i & 0xff, 1));
    const throttles: number[] = [];
    let paused = false;
    const live: LiveCopy = {
      // The same 600 pages every round, until the pause: it never converges alone.
      takeDirty: async () => (paused ? [] : Array.from({ length: 600 }, (_, i) => i)),
      pause: async () => {
        paused = true;
        throttles.push(-1); // the pause, in the order of calls
        return { machine: "state" };
      },
      throttle: (pct) => throttles.push(pct),
    };
    const reports: string[] = [];
    const progress = (done: number, total: number, round?: LiveRound) =>
      reports.push(round ? `round ${round.round}${round.paused ? " paused" : ""} ${round.donePages}/${round.pages}` : `${done}/${total}`);
    const w = await writeSnapshot(join(dir, "live.snap"), { meta: { vm: { name: "t", cpus: 1, memBytes: PAGES * FRAME_SIZE, cmdline: "", console: "ttyS0" } }, live, p2m, progress });
    assert.deepEqual(throttles, [20, 30, 40, 50, 60, 70, 80, -1, 0], "a step after each round but the first, then back to none once paused");
    assert.equal(w.maxThrottlePct, 80);
    // Progress: the first pass, then each round of pages written again (a report every 256), then done.
    const rounds = Array.from({ length: 8 }, (_, r) => [0, 256, 512].map((k) => `round ${r + 1} ${k}/600`)).flat();
    assert.deepEqual(reports, ["1024/1024", ...rounds, "1024/1024"]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
