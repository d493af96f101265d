// The scheduler's promises (weights, caps, affinity) as a user of the Host API
// sees them, with Debian guests running CPU hogs: each VM's share of pCPU
// time, from vm.stats(), over windows of a few seconds once every guest is
// up; and the same after setWeight / setCap / setAffinity on running VMs.
// scheduler.test.ts checks the policy on a simulated clock; here it runs on
// the real threads, with real exits, on a 2-pCPU host.
//
// Tolerances. Run time is what the scheduler accounts: host wall time
// between a vCPU's pick and its release, the same timestamps its credit and
// cap budgets use. So other load on the machine (the suite runs on noisy 2-core
// boxes) does not move the shares much: a worker the OS takes off its core
// still holds its vCPU, and the time counts. What does move them: a turn
// overruns its slice until the worker next looks at the clock (one run()
// call, or an exit the main thread is slow to answer), a change of
// parameters lands in the middle of a 10 ms slice, and the window's two
// readings are not taken at one instant. Those are milliseconds per second;
// the bounds below leave ten times that and stay far from what a broken
// policy gives (named at each bound). A cap is a ceiling, so its bounds are
// tight above and loose below: under it a VM loses time when the machine is
// loaded, as the worker idles until the next 10 ms budget period and the OS
// wakes it late (measured: 41 % under a 50 % cap, load average 9 on 2 cores).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Host } from "./host.js";
import { defineGuest, HOG, measure, describe, type Guest } from "./testing/guests.js";

/** Booting three guests at once on 2 pCPUs takes 10 to 40 s on a loaded machine. */
const READY_MS = 180_000;
const WINDOW_MS = 4_000;

async function allReady(guests: Guest[]): Promise<void> {
  await Promise.all(guests.map((g) => g.waitFor(/hog-ready/, READY_MS)));
}

function inRange(got: number, lo: number, hi: number, what: string): void {
  assert.ok(got >= lo && got <= hi, `${what}: ${got.toFixed(3)}, want ${lo} .. ${hi}`);
}

test("weights 256/256/512: three hogs on 2 pCPUs get 25/25/50 % of the run time; setWeight on the running heavy one evens it out", { timeout: 300_000 }, async (t) => {
  const host = await Host.create({ pcpus: 2 });
  try {
    const guests = [
      defineGuest(host, "w256a", HOG, { weight: 256 }),
      defineGuest(host, "w256b", HOG, { weight: 256 }),
      defineGuest(host, "w512", HOG, { weight: 512 }),
    ];
    for (const g of guests) g.vm.start();
    await allReady(guests);
    const vms = guests.map((g) => g.vm);
    const names = vms.map((v) => v.name);

    const w = await measure(vms, WINDOW_MS);
    const total = w.runNs.reduce((a, b) => a + b);
    const shares = w.runNs.map((n) => n / total);
    const got = `shares ${describe(names, shares)}; pCPUs ${describe(names, w.pcpus)}`;
    t.diagnostic(got);
    // Work-conserving: three hogs keep both pCPUs busy.
    inRange(total / w.wallNs, 1.8, 2.05, `pCPUs in use (${got})`);
    // 10 points around 25/25/50: weights ignored would give 33/33/33, which
    // the heavy VM's bound rejects (17 points off).
    [0.25, 0.25, 0.5].forEach((want, i) => inRange(shares[i], want - 0.1, want + 0.1, `${names[i]}'s share (${got})`));

    vms[2].setWeight(256);
    const e = await measure(vms, WINDOW_MS);
    const eTotal = e.runNs.reduce((a, b) => a + b);
    const eShares = e.runNs.map((n) => n / eTotal);
    t.diagnostic(`after setWeight: shares ${describe(names, eShares)}`);
    // Still 25/25/50 (the weight change ignored) is 17 points off for the heavy VM.
    eShares.forEach((s, i) => inRange(s, 1 / 3 - 0.1, 1 / 3 + 0.1, `${names[i]}'s share after setWeight(256) (shares ${describe(names, eShares)})`));
  } finally {
    await host.close();
  }
});

test("capPct 30 holds a VM to 30 % of a pCPU from its boot on, beside an uncapped hog that runs fully; setCap lifts it and caps a running VM", { timeout: 300_000 }, async (t) => {
  const host = await Host.create({ pcpus: 2 });
  try {
    const capped = defineGuest(host, "capped", HOG, { capPct: 30 });
    const free = defineGuest(host, "free", HOG);
    capped.vm.start();
    free.vm.start();
    const vms = [capped.vm, free.vm];
    const names = vms.map((v) => v.name);
    // A booting kernel is as busy as a hog (it never waits for anything
    // here), so the cap is measured on the boot: booting at 30 % takes
    // three times as long, and the suite has no time to wait for it.
    await new Promise((r) => setTimeout(r, 500));
    const boot = await measure(vms, WINDOW_MS);
    const got = describe(names, boot.pcpus);
    t.diagnostic(`booting: pCPUs ${got}`);
    // Uncapped it would take a whole pCPU (the other one is free's).
    inRange(boot.pcpus[0], 0.15, 0.4, `the capped VM's pCPUs while it boots (${got})`);
    inRange(boot.pcpus[1], 0.85, 1.02, `the uncapped VM's pCPUs beside it (${got})`);
    assert.equal(capped.vm.stats().state, "running");

    capped.vm.setCap(0);
    await allReady([capped, free]);
    free.vm.setCap(50);
    const after = await measure(vms, WINDOW_MS);
    const got2 = describe(names, after.pcpus);
    t.diagnostic(`after setCap: pCPUs ${got2}`);
    inRange(after.pcpus[0], 0.85, 1.02, `the VM whose cap was lifted (${got2})`);
    // Still uncapped it would run fully (1.0).
    inRange(after.pcpus[1], 0.3, 0.6, `the running VM capped at 50 % (${got2})`);
    assert.deepEqual(free.vm.scheduling, { weight: 256, capPct: 50, affinity: [0, 1] });
  } finally {
    await host.close();
  }
});

test("affinity: two hogs pinned to pCPU 0 share it, never both at once, while a free one has pCPU 1; setAffinity moves running VMs", { timeout: 300_000 }, async (t) => {
  const host = await Host.create({ pcpus: 2 });
  try {
    const guests = [
      defineGuest(host, "pinned-a", HOG, { affinity: [0] }),
      defineGuest(host, "pinned-b", HOG, { affinity: [0] }),
      defineGuest(host, "anywhere", HOG),
    ];
    for (const g of guests) g.vm.start();
    await allReady(guests);
    const vms = guests.map((g) => g.vm);
    const names = vms.map((v) => v.name);

    const w = await measure(vms, WINDOW_MS);
    const got = describe(names, w.pcpus);
    t.diagnostic(`pinned: pCPUs ${got}`);
    // Together one pCPU: at most its wall time (plus the readings' skew).
    // Ignoring the affinity, three hogs on 2 pCPUs get 0.67 each: 1.33 together.
    inRange(w.pcpus[0] + w.pcpus[1], 0.85, 1.05, `the pinned VMs together, in pCPUs (${got})`);
    inRange(w.pcpus[0], 0.35, 0.65, `pinned-a (${got})`);
    inRange(w.pcpus[1], 0.35, 0.65, `pinned-b (${got})`);
    inRange(w.pcpus[2], 0.85, 1.02, `the unpinned VM, which has pCPU 1 to itself (${got})`);

    // pinned-a and the free one now share pCPU 1; pinned-b has pCPU 0 alone.
    vms[0].setAffinity([1]);
    vms[2].setAffinity([1]);
    const m = await measure(vms, WINDOW_MS);
    const got2 = describe(names, m.pcpus);
    t.diagnostic(`after setAffinity: pCPUs ${got2}`);
    inRange(m.pcpus[1], 0.85, 1.02, `pinned-b, alone on pCPU 0 (${got2})`);
    inRange(m.pcpus[0] + m.pcpus[2], 0.85, 1.05, `the two VMs moved to pCPU 1 together (${got2})`);
    // Credit one of them banked (or sank) while apart must not keep the pCPU from the other.
    inRange(m.pcpus[0], 0.35, 0.65, `pinned-a, moved to pCPU 1 (${got2})`);
    inRange(m.pcpus[2], 0.35, 0.65, `the free VM, pinned to pCPU 1 (${got2})`);
    assert.deepEqual(vms[2].scheduling.affinity, [1]);
  } finally {
    await host.close();
  }
});
