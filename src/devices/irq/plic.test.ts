// The PLIC as a guest driver programs it: priorities, enables, thresholds,
// claim and complete, with level-triggered device lines.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Plic, plicSize } from "./plic.js";
import { SnapshotError, StateReader } from "../../snapshot/state.js";

const prio = (s: number) => 4 * s;
const enable = (c: number) => 0x2000 + 0x80 * c;
const threshold = (c: number) => 0x200000 + 0x1000 * c;
const claim = (c: number) => threshold(c) + 4;

function setup(harts = 1) {
  const lines = new Map<number, boolean>();
  const plic = new Plic(2 * harts, (c, level) => lines.set(c, level));
  const w = (off: number, v: number) => plic.write(off, 4, BigInt(v));
  const r = (off: number) => Number(plic.read(off, 4));
  return { plic, lines, w, r };
}

test("the window covers an M and an S context per hart", () => {
  assert.equal(plicSize(1), 0x202000n);
  assert.equal(plicSize(8), 0x210000n);
});

test("an enabled source above the threshold raises the context's line until claimed", () => {
  const { plic, lines, w, r } = setup();
  w(prio(10), 1);
  w(enable(1), 1 << 10); // S-mode context of hart 0
  plic.setLevel(10, true);
  assert.equal(lines.get(1), true);
  assert.equal(lines.get(0) ?? false, false, "M context has it disabled");
  assert.equal(r(0x1000) & (1 << 10), 1 << 10, "pending bit visible");
  assert.equal(r(claim(1)), 10);
  assert.equal(lines.get(1), false, "claimed: no longer pending");
  assert.equal(r(claim(1)), 0, "nothing else to claim");
  // The line is still high: after completion the gateway forwards it again.
  w(claim(1), 10);
  assert.equal(lines.get(1), true);
  plic.setLevel(10, false);
  assert.equal(r(claim(1)), 10, "already pending before the line dropped");
  w(claim(1), 10);
  assert.equal(lines.get(1), false);
});

test("priority zero, the threshold and disabled sources keep the line low", () => {
  const { plic, lines, w } = setup();
  w(enable(1), 1 << 5);
  plic.setLevel(5, true);
  assert.equal(lines.get(1) ?? false, false, "priority 0 never interrupts");
  w(prio(5), 3);
  assert.equal(lines.get(1), true);
  w(threshold(1), 3);
  assert.equal(lines.get(1), false, "priority must exceed the threshold");
  w(threshold(1), 2);
  assert.equal(lines.get(1), true);
  w(enable(1), 0);
  assert.equal(lines.get(1), false);
});

test("claim picks the highest priority, then the lowest ID", () => {
  const { plic, w, r } = setup();
  w(enable(0), (1 << 1) | (1 << 2) | (1 << 3));
  w(prio(1), 2);
  w(prio(2), 5);
  w(prio(3), 5);
  [1, 2, 3].forEach((s) => plic.setLevel(s, true));
  assert.deepEqual([r(claim(0)), r(claim(0)), r(claim(0)), r(claim(0))], [2, 3, 1, 0]);
});

test("registers are WARL and bounded: priorities clip to 7, source 0 stays off, junk is ignored", () => {
  const { w, r, plic } = setup();
  w(prio(4), 100);
  assert.equal(r(prio(4)), 7);
  w(enable(0), 0xffff_ffff);
  assert.equal(r(enable(0)) & 1, 0);
  w(claim(0), 9999); // completing a source that does not exist
  w(claim(5), 1); //   a context that does not exist
  assert.equal(r(claim(5)), 0);
  assert.equal(plic.read(prio(4), 8), 0n, "only 32-bit accesses");
  assert.throws(() => plic.setLevel(0, true), RangeError);
});

test("snapshot: mid-state survives a JSON round trip onto a new PLIC, outputs driven", () => {
  const a = setup(2);
  a.w(prio(3), 2);
  a.w(prio(40), 5);
  a.w(prio(100), 1);
  a.w(enable(1), 1 << 3);
  a.w(enable(1) + 4, 1 << 8); // source 40
  a.w(enable(2) + 12, 1 << 4); // source 100 for hart 1's M context
  a.w(threshold(3), 4);
  a.plic.setLevel(3, true);
  a.plic.setLevel(40, true);
  a.plic.setLevel(100, true);
  assert.equal(a.r(claim(1)), 40, "source 40 in service");
  const saved = JSON.parse(JSON.stringify(a.plic.saveState()));

  const b = setup(2);
  b.plic.restoreState(new StateReader(saved, "plic"));
  assert.deepEqual([0, 1, 2, 3].map((c) => b.lines.get(c)), [false, true, true, false], "every output driven");
  for (const off of [prio(3), prio(40), prio(100), 0x1000, 0x1004, 0x100c, enable(1), enable(1) + 4, enable(2) + 12, threshold(3)]) {
    assert.equal(b.r(off), a.r(off), `register ${off.toString(16)}`);
  }
  assert.equal(b.r(claim(1)), 3);
  b.w(claim(1), 40); // completing the claimed source: its line is still high, pending again
  assert.equal(b.r(0x1004) & (1 << 8), 1 << 8);
  assert.equal(b.r(claim(1)), 40);
});

test("snapshot: tampered state is refused with a SnapshotError naming the field, nothing applied", () => {
  const a = setup();
  a.w(prio(5), 3);
  const good = a.plic.saveState() as Record<string, unknown>;
  const bad = (patch: Record<string, unknown>, match: RegExp) => {
    const b = setup();
    assert.throws(() => b.plic.restoreState(new StateReader({ ...good, ...patch }, "plic")), (e: Error) => e instanceof SnapshotError && match.test(e.message));
    assert.equal(b.r(prio(5)), 0, "nothing applied");
    assert.equal(b.lines.size, 0, "no output driven");
  };
  bad({ priority: [0, 8, ...Array(126).fill(0)] }, /^plic\.priority\[1\]: expected an integer 0\.\.7/);
  bad({ priority: [1, ...Array(127).fill(0)] }, /^plic: priority: source 0/);
  bad({ priority: [0, 1] }, /^plic: priority: 2 entries/);
  bad({ pending: [0, 0, 0] }, /^plic: pending: 3 words/);
  bad({ level: [0, -1, 0, 0] }, /^plic\.level\[1\]/);
  bad({ pending: [1 << 4, 0, 0, 0], claimed: [1 << 4, 0, 0, 0] }, /both pending and claimed/);
  bad({ enable: [0, 0, 0, 0] }, /^plic: enable: 4 words, this PLIC has 8/);
  bad({ enable: [0, 0, 0, 0, 1, 0, 0, 0] }, /^plic: enable: source 0/);
  bad({ threshold: [0, 9] }, /^plic\.threshold\[1\]/);
  bad({ threshold: [0, 0, 0] }, /^plic\.threshold: 3 entries, at most 2/);
  bad({ claimed: "x" }, /^plic\.claimed: expected an array/);
  assert.throws(() => setup().plic.restoreState(new StateReader([], "plic")), SnapshotError);
});

test("two threads' views of one PLIC: the vCPU's thread claims and completes what the devices' thread raised, each driving its own outputs", async () => {
  const { Worker } = await import("node:worker_threads");
  const main = setup();
  main.w(prio(7), 1);
  main.w(enable(1), 1 << 7);
  main.plic.setLevel(7, true);
  assert.equal(main.lines.get(1), true);
  // The other thread claims (its output goes down there, and the state says so here) ...
  const worker = new Worker(`
    const { workerData, parentPort } = require("node:worker_threads");
    import(workerData.plic).then(({ Plic }) => {
      const lines = [];
      const plic = new Plic(2, (c, level) => lines.push([c, level]), workerData.state);
      const claimed = Number(plic.read(0x201004, 4));
      parentPort.postMessage({ claimed, lines });
    });
  `, { eval: true, workerData: { plic: new URL("./plic.js", import.meta.url).href, state: main.plic.buffer } });
  const fromWorker = await new Promise<{ claimed: number; lines: [number, boolean][] }>((resolve, reject) => {
    worker.once("message", resolve);
    worker.once("error", reject);
  });
  await worker.terminate();
  assert.equal(fromWorker.claimed, 7);
  assert.deepEqual(fromWorker.lines, [[1, false]]);
  assert.equal(main.r(0x1000) & (1 << 7), 0, "no longer pending, here too");
  assert.equal(main.r(claim(1)), 0, "claimed there: nothing to claim here");
  // ... and the completion here forwards the still-high line again, driving this thread's output.
  main.lines.clear();
  main.w(claim(1), 7);
  assert.equal(main.lines.get(1), true);
  assert.throws(() => new Plic(4, () => {}, main.plic.buffer), RangeError, "a state of another shape is refused");
});
