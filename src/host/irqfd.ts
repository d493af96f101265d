// A virtio device's interrupt raised by the thread that completed the work
// (a disk's I/O thread), as KVM's irqfd: without it, each completion went
// to the main thread (a futex wake), which set InterruptStatus, raised the
// PLIC source and woke the vCPU (another wake), so two hand-offs of a
// disk request's four were the main thread's, which had nothing to decide.
//
// Everything involved is shared memory: the transport's InterruptStatus word
// (vmm/virt-machine.ts), the PLIC's state (devices/irq/plic.ts), the hart
// blocks' line and request words (core hart.ts, as setIrqLine writes them)
// and the scheduler's table. The raising thread does what the main thread
// would: it sets the status bit, has the PLIC's line follow the status
// (under the PLIC's lock, so a vCPU's worker acknowledging at the same time
// never leaves the line stale), drives each hart output that changes, and
// wakes a hart whose line went high through the scheduler (host.ts kick).

import { Plic } from "../devices/irq/plic.js";
import { InterruptStatus } from "../devices/virtio/interrupt-status.js";
import { Scheduler, type SchedulerHandle } from "./scheduler.js";
import { monoNs } from "./pcpu-protocol.js";

/** What a thread needs to raise one transport's interrupt: plain data, sent to it. */
export interface IrqfdRoute {
  /** Host address of the transport's InterruptStatus word (an Int32). */
  interruptStatus: number;
  /** The VM's PLIC state, its context count, and the transport's source. */
  plic: SharedArrayBuffer;
  contexts: number;
  source: number;
  /** Host addresses of the VM's hart blocks and their scheduler slots, by hart index. */
  harts: number[];
  vcpus: number[];
  sched: SchedulerHandle;
  /** Core constants: the line words' offsets in a hart block, the request word's, and its bits. */
  lineMeipOff: number;
  lineSeipOff: number;
  reqOff: number;
  reqIrq: number;
  reqExit: number;
}

export class Irqfd {
  private readonly sched: Scheduler;
  private readonly status: InterruptStatus;
  /** Harts whose line went high in the last raise, to wake once the PLIC's lock is let go. */
  private readonly toWake: number[] = [];

  /** `words`: an Int32Array over the host's pool memory (FramePool.words). */
  constructor(private readonly route: IrqfdRoute, private readonly words: Int32Array) {
    // A route from a mismatched core (an offset missing) would write at word 0 of the pool.
    const numbers = [route.interruptStatus, route.lineMeipOff, route.lineSeipOff, route.reqOff, route.reqIrq, route.reqExit, ...route.harts, ...route.vcpus];
    if (!numbers.every((n) => Number.isInteger(n) && n >= 0) || route.harts.length !== route.vcpus.length) {
      throw new RangeError(`irqfd: a route with a missing or bad number (${JSON.stringify({ ...route, plic: undefined, sched: undefined })})`);
    }
    this.sched = new Scheduler(route.sched);
    const plic = new Plic(route.contexts, (context, level) => this.driveLine(context, level), route.plic);
    this.status = new InterruptStatus(words, route.interruptStatus >>> 2, (high) => plic.setLevelFrom(route.source, high));
  }

  /** Set `bits` in InterruptStatus (virtio 1.2, 4.2.2) and raise the line. */
  raise(bits: number): void {
    this.status.raise(bits);
    while (this.toWake.length) this.wake(this.toWake.pop()!);
  }

  /** Context 2h is hart h's M-mode line, 2h+1 its S-mode one (plic.ts). Under the PLIC's lock. */
  private driveLine(context: number, level: boolean): void {
    const r = this.route;
    const h = context >> 1;
    const hart = r.harts[h];
    if (hart === undefined) return;
    // The u64 line word's high half is always 0: the low one holds the level (setIrqLine).
    Atomics.store(this.words, (hart + (context & 1 ? r.lineSeipOff : r.lineMeipOff)) >>> 2, level ? 1 : 0);
    Atomics.or(this.words, (hart + r.reqOff) >>> 2, r.reqIrq);
    if (level) this.toWake.push(h);
  }

  private wake(h: number): void {
    wakeVcpu(this.sched, this.route.vcpus[h], this.words, this.route.reqOff, this.route.reqExit);
  }
}

/** From any thread (the host's kick, irqfd): a blocked vCPU becomes runnable
 *  (`start`: one never run before may start), and a running one that
 *  deserves its pCPU less is told to leave it (REQ_EXIT in its request word). */
export function wakeVcpu(sched: Scheduler, v: number, words: Int32Array, reqOff: number, reqExit: number, start = false): void {
  const victim = sched.wake(v, monoNs(), start);
  if (victim >= 0) Atomics.or(words, (sched.hartOf(victim) + reqOff) >>> 2, reqExit);
}
