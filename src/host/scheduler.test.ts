// The scheduler's policy on a simulated clock: pCPUs pick and release vCPUs
// that always have work (CPU hogs), and the shares of pCPU time they get are
// compared with what weights, caps and affinity promise. The real threads
// run the same code (pcpu-worker.ts); here time is exact, so tolerances are
// tight.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Scheduler, VmRunState } from "./scheduler.js";

interface SimVm { weight: number; cap?: number; vcpus: number; affinity?: bigint }

/** Run hogs for `seconds` of simulated time on `pcpus`; returns each VM's
 *  pCPU time as a share of the whole host (pcpus x seconds). */
function simulate(pcpus: number, vms: SimVm[], seconds: number, onPick?: (pcpu: number, vm: number) => void): number[] {
  const sched = Scheduler.create(pcpus, 64, 16);
  const vcpuVm = new Map<number, number>();
  vms.forEach((vm, i) => {
    const id = sched.addVm(vm.weight, vm.cap ?? 0);
    for (let c = 0; c < vm.vcpus; c++) {
      const v = sched.addVcpu(id, c, 0, vm.affinity ?? (1n << BigInt(pcpus)) - 1n);
      vcpuVm.set(v, i);
      sched.wake(v, 0, true);
    }
    sched.setVmState(id, VmRunState.Running);
  });
  const ran = vms.map(() => 0);
  const end = seconds * 1e9;
  // Each pCPU: when its current turn ends, and what it runs.
  const pc = Array.from({ length: pcpus }, () => ({ at: 0, vcpu: -1, start: 0 }));
  for (;;) {
    const p = pc.reduce((best, x, i) => (x.at < pc[best].at ? i : best), 0);
    const cur = pc[p];
    if (cur.at >= end) break;
    if (cur.vcpu >= 0) {
      ran[vcpuVm.get(cur.vcpu)!] += cur.at - cur.start;
      sched.release(cur.vcpu, cur.at, { kind: "runnable" });
      cur.vcpu = -1;
    }
    const pick = sched.pick(p, cur.at);
    if (pick.kind === "idle") {
      cur.at += Math.min(pick.idleNs, 1e6) || 1e5;
      continue;
    }
    onPick?.(p, vcpuVm.get(pick.vcpu)!);
    cur.vcpu = pick.vcpu;
    cur.start = cur.at;
    cur.at += pick.sliceNs;
  }
  return ran.map((ns) => ns / (pcpus * end));
}

const points = (a: number, b: number) => Math.abs(a - b) * 100;

test("weights 256/256/512 share 2 pCPUs 25/25/50 % among three one-vCPU hogs", () => {
  const shares = simulate(2, [{ weight: 256, vcpus: 1 }, { weight: 256, vcpus: 1 }, { weight: 512, vcpus: 1 }], 10);
  [0.25, 0.25, 0.5].forEach((want, i) => assert.ok(points(shares[i], want) < 1, `VM ${i}: ${(shares[i] * 100).toFixed(1)} %, want ${want * 100} %`));
});

test("a weight counts per VM's vCPU: equal weights on 1 pCPU split it evenly", () => {
  const shares = simulate(1, [{ weight: 256, vcpus: 1 }, { weight: 256, vcpus: 1 }], 5);
  assert.ok(points(shares[0], 0.5) < 1 && points(shares[1], 0.5) < 1, `${shares}`);
});

test("a 30 % cap holds a VM to 30 % of one pCPU even when pCPUs are idle", () => {
  const shares = simulate(2, [{ weight: 256, cap: 30, vcpus: 2 }], 5);
  // Host shares are of 2 pCPUs: 30 % of one pCPU is 15 % of the host.
  assert.ok(points(shares[0], 0.15) < 1, `capped VM got ${(shares[0] * 200).toFixed(1)} % of a pCPU`);
});

test("a capped VM beside an uncapped one: the cap holds, the other takes the rest", () => {
  const shares = simulate(2, [{ weight: 256, cap: 30, vcpus: 1 }, { weight: 256, vcpus: 2 }], 5);
  assert.ok(points(shares[0], 0.15) < 1, `capped: ${(shares[0] * 200).toFixed(1)} % of a pCPU`);
  assert.ok(points(shares[1], 0.85) < 2, `uncapped: ${(shares[1] * 100).toFixed(1)} % of the host`);
});

test("affinity: a VM pinned to pCPU 1 only ever runs there", () => {
  const seen = new Set<string>();
  const shares = simulate(2, [{ weight: 256, vcpus: 2, affinity: 0b10n }, { weight: 256, vcpus: 1 }], 2, (p, vm) => seen.add(`${vm}@${p}`));
  assert.ok(!seen.has("0@0"), `pinned VM ran on pCPU 0: ${[...seen]}`);
  assert.ok(points(shares[0], 0.5) < 1, `pinned VM (2 vCPUs on one pCPU) got ${(shares[0] * 100).toFixed(1)} % of the host`);
});

/** Hogs on `pcpus` through phases of simulated time; before each, `change`
 *  may re-pin or pause VMs (by index). Every turn runs `overrunNs` past its
 *  slice, as real ones do (a worker looks at the clock between run() calls).
 *  Returns each VM's pCPU time per phase, in pCPUs (1 = one pCPU the whole phase). */
function simulatePhases(
  pcpus: number, vms: SimVm[], overrunNs: number,
  phases: { seconds: number; change?: (ctl: { affinity(vm: number, mask: bigint): void; pause(vm: number, paused: boolean): void }) => void }[],
): number[][] {
  const sched = Scheduler.create(pcpus, 64, 16);
  const ids: number[] = [];
  const vcpusOf: number[][] = [];
  const vcpuVm = new Map<number, number>();
  vms.forEach((vm, i) => {
    ids.push(sched.addVm(vm.weight, vm.cap ?? 0));
    vcpusOf.push([]);
    for (let c = 0; c < vm.vcpus; c++) {
      const v = sched.addVcpu(ids[i], c, 0, vm.affinity ?? (1n << BigInt(pcpus)) - 1n);
      vcpusOf[i].push(v);
      vcpuVm.set(v, i);
      sched.wake(v, 0, true);
    }
    sched.setVmState(ids[i], VmRunState.Running);
  });
  const ctl = {
    affinity: (vm: number, mask: bigint) => vcpusOf[vm].forEach((v) => sched.setAffinity(v, mask)),
    pause: (vm: number, paused: boolean) => sched.setVmState(ids[vm], paused ? VmRunState.Paused : VmRunState.Running),
  };
  const pc = Array.from({ length: pcpus }, () => ({ at: 0, vcpu: -1, start: 0 }));
  const out: number[][] = [];
  let from = 0;
  for (const phase of phases) {
    phase.change?.(ctl);
    const ran = vms.map(() => 0);
    const end = from + phase.seconds * 1e9;
    for (;;) {
      const p = pc.reduce((best, x, i) => (x.at < pc[best].at ? i : best), 0);
      const cur = pc[p];
      if (cur.at >= end) break;
      if (cur.vcpu >= 0) {
        ran[vcpuVm.get(cur.vcpu)!] += cur.at - Math.max(cur.start, from); // a turn across phases counts in the last
        sched.release(cur.vcpu, cur.at, { kind: "runnable" });
        cur.vcpu = -1;
      }
      const pick = sched.pick(p, cur.at);
      if (pick.kind === "idle") {
        cur.at += Math.min(pick.idleNs, 1e6) || 1e5;
        continue;
      }
      cur.vcpu = pick.vcpu;
      cur.start = cur.at;
      cur.at += pick.sliceNs + overrunNs;
    }
    out.push(ran.map((ns) => ns / (end - from)));
    from = end;
  }
  return out;
}

test("credit neither piles up nor sinks without end: hogs pinned apart for long, then put together, share at once", () => {
  // Two hogs pinned to pCPU 0 beside a free one for 20 s (turns 2 ms over their
  // slices); then one of them and the free one move to pCPU 1.
  const [pinned, moved] = simulatePhases(2, [{ weight: 256, vcpus: 1, affinity: 0b01n }, { weight: 256, vcpus: 1, affinity: 0b01n }, { weight: 256, vcpus: 1 }], 2e6, [
    { seconds: 20 },
    { seconds: 1, change: (c) => (c.affinity(0, 0b10n), c.affinity(2, 0b10n)) },
  ]);
  [0.5, 0.5, 1].forEach((want, i) => assert.ok(points(pinned[i], want) < 2, `pinned: VM ${i} got ${pinned[i].toFixed(3)} pCPUs, want ${want}`));
  [0.5, 1, 0.5].forEach((want, i) => assert.ok(points(moved[i], want) < 5, `in the first second after the move: VM ${i} got ${moved[i].toFixed(3)} pCPUs, want ${want}`));
});

test("a VM paused for long does not keep the pCPU from the others when it resumes", () => {
  const [, paused, resumed] = simulatePhases(1, [{ weight: 256, vcpus: 1 }, { weight: 256, vcpus: 1 }], 0, [
    { seconds: 1 },
    { seconds: 20, change: (c) => c.pause(0, true) },
    { seconds: 1, change: (c) => c.pause(0, false) },
  ]);
  assert.ok(paused[0] === 0 && points(paused[1], 1) < 1, `while paused: ${paused}`);
  resumed.forEach((got, i) => assert.ok(points(got, 0.5) < 5, `after resume: VM ${i} got ${got.toFixed(3)} of the pCPU, want 0.5`));
});

test("a paused VM is not picked; a blocked vCPU sleeps until its deadline", () => {
  const sched = Scheduler.create(1, 8, 4);
  const vm = sched.addVm(256, 0);
  const v = sched.addVcpu(vm, 0, 0, 1n);
  sched.wake(v, 0, true);
  assert.equal(sched.pick(0, 0).kind, "idle", "a VM that was never set running is paused");
  sched.setVmState(vm, VmRunState.Running);
  const first = sched.pick(0, 0);
  assert.equal(first.kind, "run");
  sched.release(v, 1000, { kind: "blocked", deadlineNs: 5e6 });
  const idle = sched.pick(0, 2000);
  assert.ok(idle.kind === "idle" && Math.abs(idle.idleNs - (5e6 - 2000)) < 1, "idle until the timer deadline");
  assert.equal(sched.pick(0, 5e6).kind, "run", "runnable at its deadline");
  sched.release(v, 5e6 + 1000, { kind: "blocked", deadlineNs: Infinity, wakePending: () => true });
  assert.equal(sched.pick(0, 6e6).kind, "run", "a request posted before blocking keeps it runnable");
});
