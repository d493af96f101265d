// The vCPU scheduler: proportional share with caps and affinity, after Xen's
// credit2 (ANCHORS.md), over a table in shared memory so that every pCPU
// worker makes its own scheduling decisions (as each Xen pCPU does) and the
// main thread can wake, pause and re-weigh vCPUs without asking a worker.
//
// Credit: every vCPU holds credit in nanoseconds. Running burns it at
// maxWeight / weight times real time (the heaviest VM burns 1:1), so over
// time each VM gets pCPU time in proportion to its weight. A pCPU picks the
// runnable vCPU with the most credit; when the best candidate has none left,
// every vCPU gets CREDIT_INIT more, within bounds (credit2's reset; see
// resetCredit).
// A vCPU that blocks keeps its credit, so one that mostly sleeps (an
// interactive or I/O-bound guest) wins the pCPU when it wakes.
//
// Time is accounted by timestamps (host monotonic nanoseconds at pick and at
// release), never by ticks: credit1's tick-sampled debit let a guest that
// yielded just before each tick run for free (ANCHORS.md).
//
// Caps: a VM with cap C (percent of one pCPU) gets a budget of C% of
// CAP_PERIOD_NS each period, shared by its vCPUs; a VM out of budget is not
// picked until the next refill, and a slice never runs past the budget left.

import { SharedMutex } from "../memory/shared-mutex.js";

/** Xen credit2's defaults (ANCHORS.md): credit reset to 10 ms, a slice
 *  between 0.5 ms (its minimum timer) and 10 ms, and a vCPU that has run less
 *  than 1 ms (its rate limit) is not preempted by a waking one. */
export const CREDIT_INIT_NS = 10_000_000;
export const MIN_SLICE_NS = 500_000;
export const MAX_SLICE_NS = 10_000_000;
export const RATELIMIT_NS = 1_000_000;
/** The most credit a competing vCPU keeps through a reset (resetCredit):
 *  credit2 clips at CREDIT_INIT plus 0.5 ms of carry-over; on the simulated
 *  clock (scheduler.test.ts) weights hold with any bound from CREDIT_INIT
 *  plus 10 ms up (plus 5 ms gave 256/256/512 28/28/43 %), so this leaves
 *  two maximum slices. */
export const CREDIT_MAX_NS = CREDIT_INIT_NS + 2 * MAX_SLICE_NS;
/** Caps are enforced over 10 ms periods, as credit2 refills its budgets. */
export const CAP_PERIOD_NS = 10_000_000;
/** A runnable vCPU waits this long for the idle pCPU it last ran on before
 *  another pCPU takes it: each worker has its own translation cache, and a
 *  vCPU that wanders between workers translates its code once per worker. */
export const MIGRATION_DELAY_NS = 1_000_000;
export const DEFAULT_WEIGHT = 256;
export const MAX_WEIGHT = 65535;

export enum VcpuState { Free = 0, Stopped = 1, Runnable = 2, Running = 3, Blocked = 4 }
export enum VmRunState { None = 0, Running = 1, Paused = 2 }

/** Exit reasons counted per vCPU in the shared table (the worker counts; the
 *  main thread reads). Names as `--stats` prints them. */
export const EXIT_NAMES = ["mmio", "p2m-fault", "wfi", "sbi", "time-slice", "preempt", "halt", "doorbell", "irqchip"] as const;
export type ExitName = (typeof EXIT_NAMES)[number];
export const exitIndex = (name: ExitName): number => EXIT_NAMES.indexOf(name);

// ---- shared layout ----------------------------------------------------------
// Int32 header words.
const H_LOCK = 0;
/** Bumped (and notified) whenever a pCPU may find new work: idle workers sleep on it. */
export const H_IDLE_SEQ = 1;
/** Bumped (and notified) when a vCPU posts an exit for the main thread. */
export const H_DOORBELL = 2;
const H_WORDS = 16;
// Per-vCPU Int32 fields.
const VI_STATE = 0, VI_VM = 1, VI_PCPU = 2, VI_MAILBOX = 3, VI_AFF_LO = 4, VI_AFF_HI = 5, VI_HART = 6, VI_INDEX = 7, VI_LAST_PCPU = 8;
const VI_STRIDE = 10;
// Per-vCPU Float64 fields.
const VF_CREDIT = 0, VF_RUN_NS = 1, VF_WAIT_NS = 2, VF_RUNNABLE_SINCE = 3, VF_DEADLINE = 4, VF_START = 5, VF_INSNS = 6;
const VF_STRIDE = 8;
// Per-VM Int32 and Float64 fields.
const MI_STATE = 0, MI_WEIGHT = 1, MI_CAP = 2;
const MI_STRIDE = 4;
const MF_BUDGET = 0, MF_PERIOD_START = 1;
const MF_STRIDE = 2;
// Per-pCPU Int32 fields. FREE: running no vCPU (idle, or between two turns).
const PI_FREE = 0;
const PI_STRIDE = 2;

/** The most pCPUs an affinity mask can name (two 32-bit words). */
export const MAX_PCPUS = 64;

export interface SchedulerHandle {
  buffer: SharedArrayBuffer;
  maxVcpus: number;
  maxVms: number;
  pcpus: number;
}

export type Pick = { kind: "run"; vcpu: number; sliceNs: number } | { kind: "idle"; idleNs: number };

/** How a vCPU's turn on a pCPU ended. */
export type Release =
  | { kind: "runnable" }
  /** WFI with nothing pending: sleep until `deadlineNs` (Infinity: no timer). */
  | { kind: "blocked"; deadlineNs: number; wakePending?: () => boolean }
  | { kind: "stopped" };

export interface VcpuAccounting {
  state: VcpuState;
  credit: number;
  runNs: number;
  waitNs: number;
  instructions: number;
  exits: Record<ExitName, number>;
}

export class Scheduler {
  readonly words: Int32Array;
  private readonly f64: Float64Array;
  private readonly lock: SharedMutex;
  private readonly viBase: number;
  private readonly vfBase: number;
  private readonly exitBase: number;
  private readonly miBase: number;
  private readonly mfBase: number;
  private readonly piBase: number;

  static create(pcpus: number, maxVcpus: number, maxVms: number): Scheduler {
    if (!Number.isInteger(pcpus) || pcpus < 1 || pcpus > MAX_PCPUS) throw new RangeError(`pCPUs must be 1..${MAX_PCPUS}`);
    const ints = H_WORDS + maxVcpus * VI_STRIDE + maxVms * MI_STRIDE + pcpus * PI_STRIDE;
    const floats = maxVcpus * (VF_STRIDE + EXIT_NAMES.length) + maxVms * MF_STRIDE;
    const intBytes = Math.ceil((ints * 4) / 8) * 8;
    return new Scheduler({ buffer: new SharedArrayBuffer(intBytes + floats * 8), maxVcpus, maxVms, pcpus });
  }

  constructor(readonly handle: SchedulerHandle) {
    const { buffer, maxVcpus, maxVms, pcpus } = handle;
    this.viBase = H_WORDS;
    this.miBase = this.viBase + maxVcpus * VI_STRIDE;
    this.piBase = this.miBase + maxVms * MI_STRIDE;
    const ints = this.piBase + pcpus * PI_STRIDE;
    const intBytes = Math.ceil((ints * 4) / 8) * 8;
    this.words = new Int32Array(buffer, 0, ints);
    this.f64 = new Float64Array(buffer, intBytes);
    this.vfBase = 0;
    this.exitBase = maxVcpus * VF_STRIDE;
    this.mfBase = this.exitBase + maxVcpus * EXIT_NAMES.length;
    this.lock = new SharedMutex(this.words, H_LOCK);
  }

  get pcpus(): number {
    return this.handle.pcpus;
  }

  // ---- field access -----------------------------------------------------------
  private vi(v: number, f: number): number { return this.viBase + v * VI_STRIDE + f; }
  private vf(v: number, f: number): number { return this.vfBase + v * VF_STRIDE + f; }
  private mi(m: number, f: number): number { return this.miBase + m * MI_STRIDE + f; }
  private mf(m: number, f: number): number { return this.mfBase + m * MF_STRIDE + f; }
  private state(v: number): VcpuState { return Atomics.load(this.words, this.vi(v, VI_STATE)); }
  private setState(v: number, s: VcpuState): void { Atomics.store(this.words, this.vi(v, VI_STATE), s); }

  /** Index in `words` of vCPU `v`'s exit mailbox (exit-mailbox.ts). */
  mailboxIndex(v: number): number { return this.vi(v, VI_MAILBOX); }
  /** Host address of v's hart block (stored in an Int32 word: read back unsigned, pools pass 2 GiB). */
  hartOf(v: number): number { return this.words[this.vi(v, VI_HART)] >>> 0; }
  vmOf(v: number): number { return this.words[this.vi(v, VI_VM)]; }
  hartIndexOf(v: number): number { return this.words[this.vi(v, VI_INDEX)]; }
  stateOf(v: number): VcpuState { return this.state(v); }

  /** Count an exit (only the thread running the vCPU writes these). */
  countExit(v: number, reason: number): void { this.f64[this.exitBase + v * EXIT_NAMES.length + reason]++; }
  addInstructions(v: number, n: number): void { this.f64[this.vf(v, VF_INSNS)] += n; }

  // ---- VMs and vCPUs (main thread) -----------------------------------------------

  /** A free VM slot, marked paused (not scheduled) until setVmState(Running). */
  addVm(weight: number, capPct: number): number {
    return this.lock.with(() => {
      for (let m = 0; m < this.handle.maxVms; m++) {
        if (this.words[this.mi(m, MI_STATE)] !== VmRunState.None) continue;
        this.words[this.mi(m, MI_STATE)] = VmRunState.Paused;
        this.words[this.mi(m, MI_WEIGHT)] = weight;
        this.words[this.mi(m, MI_CAP)] = capPct;
        this.f64[this.mf(m, MF_BUDGET)] = 0;
        this.f64[this.mf(m, MF_PERIOD_START)] = -Infinity;
        return m;
      }
      throw new RangeError(`the host's scheduler table is full (${this.handle.maxVms} VMs)`);
    });
  }

  /** A free vCPU slot for hart `hartIndex` (block at `hart`) of VM `vm`, stopped. */
  addVcpu(vm: number, hartIndex: number, hart: number, affinity: bigint): number {
    return this.lock.with(() => {
      for (let v = 0; v < this.handle.maxVcpus; v++) {
        if (this.state(v) !== VcpuState.Free) continue;
        const w = this.words;
        w[this.vi(v, VI_VM)] = vm;
        w[this.vi(v, VI_INDEX)] = hartIndex;
        w[this.vi(v, VI_HART)] = hart;
        w[this.vi(v, VI_PCPU)] = -1;
        w[this.vi(v, VI_LAST_PCPU)] = -1;
        Atomics.store(w, this.vi(v, VI_MAILBOX), 0);
        this.writeAffinity(v, affinity);
        for (let f = 0; f < VF_STRIDE; f++) this.f64[this.vf(v, f)] = 0;
        this.f64[this.vf(v, VF_CREDIT)] = CREDIT_INIT_NS;
        this.f64.fill(0, this.exitBase + v * EXIT_NAMES.length, this.exitBase + (v + 1) * EXIT_NAMES.length);
        this.setState(v, VcpuState.Stopped);
        return v;
      }
      throw new RangeError(`the host's scheduler table is full (${this.handle.maxVcpus} vCPUs)`);
    });
  }

  /** Forget a VM and its vCPUs; none may be running (pause it first). */
  removeVm(vm: number, vcpus: number[]): void {
    this.lock.with(() => {
      for (const v of vcpus) {
        if (this.state(v) === VcpuState.Running) throw new Error(`internal error: removing a running vCPU`);
        this.setState(v, VcpuState.Free);
      }
      this.words[this.mi(vm, MI_STATE)] = VmRunState.None;
    });
  }

  setVmState(vm: number, s: VmRunState.Running | VmRunState.Paused): void {
    this.lock.with(() => {
      this.words[this.mi(vm, MI_STATE)] = s;
    });
    if (s === VmRunState.Running) this.tickleIdle();
  }

  setWeight(vm: number, weight: number): void {
    this.lock.with(() => { this.words[this.mi(vm, MI_WEIGHT)] = weight; });
  }

  setCap(vm: number, capPct: number): void {
    this.lock.with(() => {
      this.words[this.mi(vm, MI_CAP)] = capPct;
      this.f64[this.mf(vm, MF_PERIOD_START)] = -Infinity;
    });
    this.tickleIdle();
  }

  setAffinity(v: number, mask: bigint): void {
    this.lock.with(() => this.writeAffinity(v, mask));
    this.tickleIdle();
  }

  private writeAffinity(v: number, mask: bigint): void {
    this.words[this.vi(v, VI_AFF_LO)] = Number(mask & 0xffff_ffffn) | 0;
    this.words[this.vi(v, VI_AFF_HI)] = Number((mask >> 32n) & 0xffff_ffffn) | 0;
  }

  private allows(v: number, pcpu: number): boolean {
    const word = pcpu < 32 ? this.words[this.vi(v, VI_AFF_LO)] : this.words[this.vi(v, VI_AFF_HI)];
    return ((word >>> (pcpu & 31)) & 1) === 1;
  }

  /**
   * Make a blocked vCPU runnable (an interrupt, an IPI; `start`: also a
   * stopped one, HSM hart_start). Returns a running vCPU to preempt (post
   * it REQ_EXIT) when no pCPU is idle and the woken one deserves a pCPU
   * more, else -1.
   */
  wake(v: number, now: number, start = false): number {
    let woke = false;
    const victim = this.lock.with(() => {
      const s = this.state(v);
      if (s !== VcpuState.Blocked && !(start && s === VcpuState.Stopped)) return -1;
      this.makeRunnable(v, now);
      woke = true;
      return this.preemptionVictim(v, now);
    });
    // Only a vCPU that became runnable is news to an idle pCPU; waking the
    // idle ones for a vCPU already running (an interrupt for it) costs a
    // futex wake-up each time, ~15 us of the main thread.
    if (woke) this.tickleIdle();
    return victim;
  }

  private makeRunnable(v: number, now: number): void {
    this.setState(v, VcpuState.Runnable);
    this.f64[this.vf(v, VF_RUNNABLE_SINCE)] = now;
  }

  private preemptionVictim(v: number, now: number): number {
    for (let p = 0; p < this.handle.pcpus; p++) {
      if (this.words[this.piBase + p * PI_STRIDE + PI_FREE] === 1 && this.allows(v, p)) return -1;
    }
    const credit = this.f64[this.vf(v, VF_CREDIT)];
    let victim = -1, lowest = credit;
    for (let u = 0; u < this.handle.maxVcpus; u++) {
      if (this.state(u) !== VcpuState.Running || !this.allows(v, this.words[this.vi(u, VI_PCPU)])) continue;
      if (now - this.f64[this.vf(u, VF_START)] < RATELIMIT_NS) continue;
      const c = this.f64[this.vf(u, VF_CREDIT)] - this.burn(u, now - this.f64[this.vf(u, VF_START)]);
      if (c < lowest) { lowest = c; victim = u; }
    }
    return victim;
  }

  /** Wake idle workers: there may be work for them. */
  tickleIdle(): void {
    Atomics.add(this.words, H_IDLE_SEQ, 1);
    Atomics.notify(this.words, H_IDLE_SEQ);
  }

  // ---- pCPU side ---------------------------------------------------------------------

  /** Choose what pCPU `pcpu` runs next. */
  pick(pcpu: number, now: number): Pick {
    return this.lock.with(() => {
      let wakeAt = Infinity;
      let best = -1, bestCredit = -Infinity, second = -Infinity;
      const maxWeight = this.maxWeight();
      for (let v = 0; v < this.handle.maxVcpus; v++) {
        let s = this.state(v);
        if (s === VcpuState.Free || s === VcpuState.Stopped || s === VcpuState.Running) continue;
        const vm = this.words[this.vi(v, VI_VM)];
        if (this.words[this.mi(vm, MI_STATE)] !== VmRunState.Running) continue;
        if (s === VcpuState.Blocked) {
          const d = this.f64[this.vf(v, VF_DEADLINE)];
          if (d > now) { wakeAt = Math.min(wakeAt, d); continue; }
          this.makeRunnable(v, d);
          s = VcpuState.Runnable;
        }
        if (!this.allows(v, pcpu)) continue;
        const last = this.words[this.vi(v, VI_LAST_PCPU)];
        if (last >= 0 && last !== pcpu && this.words[this.piBase + last * PI_STRIDE + PI_FREE] === 1) {
          const since = this.f64[this.vf(v, VF_RUNNABLE_SINCE)];
          if (now - since < MIGRATION_DELAY_NS) {
            wakeAt = Math.min(wakeAt, since + MIGRATION_DELAY_NS);
            continue;
          }
        }
        const budgetLeft = this.budgetLeft(vm, now);
        if (budgetLeft <= 0) {
          wakeAt = Math.min(wakeAt, this.f64[this.mf(vm, MF_PERIOD_START)] + CAP_PERIOD_NS);
          continue;
        }
        const c = this.f64[this.vf(v, VF_CREDIT)];
        if (c > bestCredit) { second = bestCredit; bestCredit = c; best = v; }
        else if (c > second) second = c;
      }
      const idleWord = this.piBase + pcpu * PI_STRIDE + PI_FREE;
      if (best < 0) {
        this.words[idleWord] = 1;
        return { kind: "idle", idleNs: Math.max(0, wakeAt - now) };
      }
      this.words[idleWord] = 0;
      if (bestCredit <= 0) this.resetCredit(bestCredit);
      const credit = this.f64[this.vf(best, VF_CREDIT)];
      // credit2's slice: until the chosen vCPU's credit would fall to the next
      // candidate's, within the minimum and maximum timer, and never past the cap.
      const burnRate = maxWeight / this.weightOf(best);
      const lead = second === -Infinity ? MAX_SLICE_NS : (credit - Math.max(second, 0)) / burnRate;
      let slice = Math.min(MAX_SLICE_NS, Math.max(MIN_SLICE_NS, lead));
      const vm = this.words[this.vi(best, VI_VM)];
      if (this.words[this.mi(vm, MI_CAP)] > 0) slice = Math.min(slice, Math.max(this.budgetLeft(vm, now), 50_000));
      this.setState(best, VcpuState.Running);
      this.words[this.vi(best, VI_PCPU)] = pcpu;
      this.words[this.vi(best, VI_LAST_PCPU)] = pcpu;
      this.f64[this.vf(best, VF_WAIT_NS)] += Math.max(0, now - this.f64[this.vf(best, VF_RUNNABLE_SINCE)]);
      this.f64[this.vf(best, VF_START)] = now;
      return { kind: "run", vcpu: best, sliceNs: slice };
    });
  }

  /** vCPU `v`'s turn ended at `now`: charge it and put it where `how` says. */
  release(v: number, now: number, how: Release): void {
    this.lock.with(() => {
      const ran = Math.max(0, now - this.f64[this.vf(v, VF_START)]);
      this.f64[this.vf(v, VF_RUN_NS)] += ran;
      this.f64[this.vf(v, VF_CREDIT)] -= this.burn(v, ran);
      const vm = this.words[this.vi(v, VI_VM)];
      if (this.words[this.mi(vm, MI_CAP)] > 0) this.f64[this.mf(vm, MF_BUDGET)] -= ran;
      const pcpu = this.words[this.vi(v, VI_PCPU)];
      if (pcpu >= 0) this.words[this.piBase + pcpu * PI_STRIDE + PI_FREE] = 1;
      this.words[this.vi(v, VI_PCPU)] = -1;
      switch (how.kind) {
        case "runnable":
          this.makeRunnable(v, now);
          break;
        case "blocked":
          // Whoever wakes a vCPU first posts to its request word, then takes
          // this lock: looking again here, under it, loses no wake-up.
          if (how.wakePending?.()) {
            this.makeRunnable(v, now);
            break;
          }
          this.f64[this.vf(v, VF_DEADLINE)] = how.deadlineNs;
          this.setState(v, VcpuState.Blocked);
          break;
        case "stopped":
          this.setState(v, VcpuState.Stopped);
          break;
      }
    });
    if (how.kind !== "stopped") this.tickleIdle();
  }

  private burn(v: number, ns: number): number {
    return (ns * this.maxWeight()) / this.weightOf(v);
  }

  private weightOf(v: number): number {
    return this.words[this.mi(this.words[this.vi(v, VI_VM)], MI_WEIGHT)];
  }

  private maxWeight(): number {
    let w = 1;
    for (let m = 0; m < this.handle.maxVms; m++) {
      if (this.words[this.mi(m, MI_STATE)] !== VmRunState.None) w = Math.max(w, this.words[this.mi(m, MI_WEIGHT)]);
    }
    return w;
  }

  /** credit2's reset: everyone gets CREDIT_INIT more (as many times as it
   *  takes to put the best candidate, at `bestCredit`, back in the black:
   *  turns overrun their slices, since a worker looks at the clock only
   *  between run() calls and a turn waiting in an exit runs on, so a vCPU
   *  alone on its pCPUs sinks a little at every turn), and nobody keeps
   *  more than a bound: vCPUs that are not competing (blocked, stopped)
   *  CREDIT_INIT, so a sleeper cannot bank credit; the others
   *  CREDIT_MAX_NS (clipping those to CREDIT_INIT too erased the lead a
   *  heavier VM earned: 256/256/512 came out 33/33/35 %).
   *  Without both bounds a reset, which comes from whichever pCPU finds its
   *  best candidate out of credit, gave 10 ms to vCPUs that could not be
   *  that candidate (their affinity keeps them on other pCPUs, or their VM
   *  is paused) and took nothing from one that sank: put next to others, or
   *  resumed, the rich one kept their pCPU for as long as it had banked and
   *  the poor one waited for as long as it had sunk. Measured with Debian
   *  guests: two hogs pinned to pCPU 0 beside a free one for 12 s, then one
   *  moved to pCPU 1: the free one got 0.2 % of a pCPU in the next 8 s
   *  (0 % for 4 s with the upper bound alone: it stood at -11 s). */
  private resetCredit(bestCredit: number): void {
    const add = (1 + Math.floor(-bestCredit / CREDIT_INIT_NS)) * CREDIT_INIT_NS;
    for (let v = 0; v < this.handle.maxVcpus; v++) {
      const s = this.state(v);
      if (s === VcpuState.Free) continue;
      const i = this.vf(v, VF_CREDIT);
      const max = s === VcpuState.Blocked || s === VcpuState.Stopped ? CREDIT_INIT_NS : CREDIT_MAX_NS;
      this.f64[i] = Math.min(max, this.f64[i] + add);
    }
  }

  /** Budget left in the current cap period (Infinity when uncapped); refills at period ends. */
  private budgetLeft(vm: number, now: number): number {
    const cap = this.words[this.mi(vm, MI_CAP)];
    if (cap <= 0) return Infinity;
    const start = this.mf(vm, MF_PERIOD_START);
    if (now - this.f64[start] >= CAP_PERIOD_NS) {
      // Overspending (a slice that ran past the budget) carries into the next period.
      const carried = Math.min(0, this.f64[this.mf(vm, MF_BUDGET)]);
      this.f64[this.mf(vm, MF_BUDGET)] = carried + (cap / 100) * CAP_PERIOD_NS;
      this.f64[start] = this.f64[start] === -Infinity ? now : now - ((now - this.f64[start]) % CAP_PERIOD_NS);
    }
    return this.f64[this.mf(vm, MF_BUDGET)];
  }

  // ---- accounting (any thread) ------------------------------------------------------------

  accounting(v: number, now: number): VcpuAccounting {
    return this.lock.with(() => {
      const s = this.state(v);
      let runNs = this.f64[this.vf(v, VF_RUN_NS)];
      let waitNs = this.f64[this.vf(v, VF_WAIT_NS)];
      if (s === VcpuState.Running) runNs += Math.max(0, now - this.f64[this.vf(v, VF_START)]);
      if (s === VcpuState.Runnable) waitNs += Math.max(0, now - this.f64[this.vf(v, VF_RUNNABLE_SINCE)]);
      const exits = {} as Record<ExitName, number>;
      EXIT_NAMES.forEach((name, i) => (exits[name] = this.f64[this.exitBase + v * EXIT_NAMES.length + i]));
      return { state: s, credit: this.f64[this.vf(v, VF_CREDIT)], runNs, waitNs, instructions: this.f64[this.vf(v, VF_INSNS)], exits };
    });
  }
}
