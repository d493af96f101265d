// A pCPU: one worker thread with its own core instance and translation
// caches over the host's shared memory, running whichever vCPU the scheduler
// gives it (DESIGN.md, "The host layer").
//
// It handles the exits that need nothing but the vCPU's own VM memory here
// (p2m faults: allocate on first touch; WFI: block; the end of a budget;
// queue notifications, as KVM's ioeventfd; the PLIC and the virtio
// transports' InterruptStatus and InterruptACK, as KVM's in-kernel irqchip)
// and hands every other exit (MMIO, SBI, a halted hart) to the main thread
// through the exit mailbox, waiting for the answer, as a KVM vCPU thread
// returns to its VMM. It never touches host resources.

import { workerData, parentPort, receiveMessageOnPort, type MessagePort } from "node:worker_threads";
import { instantiateCore, asU64, runMarked, type Core } from "../vcpu/core.js";
import { FramePool, OutOfHostMemory, type FramePoolHandle } from "../memory/frame-pool.js";
import { P2m } from "../memory/p2m.js";
import { PageStore } from "../memory/manager/page-store.js";
import { Jit } from "../jit/jit.js";
import { RealtimeClock } from "../vmm/clock.js";
import { Scheduler, H_IDLE_SEQ, exitIndex, type SchedulerHandle } from "./scheduler.js";
import { postExitAndWait, ringHostDoorbell, Mailbox } from "./exit-mailbox.js";
import { ringQueueDoorbell, Doorbell } from "../vmm/queue-doorbell.js";
import { Plic } from "../devices/irq/plic.js";
import { wakeVcpu } from "./irqfd.js";
import { monoNs, type PcpuMessage, type VmDescriptor } from "./pcpu-protocol.js";
import { VIRT_VIRTIO_BASE, VIRT_VIRTIO_STRIDE, VIRT_VIRTIO_IRQ_BASE } from "../arch/riscv/layout.js";
import { REG } from "../devices/virtio/mmio-registers.js";
import { InterruptStatus } from "../devices/virtio/interrupt-status.js";

export interface PcpuWorkerData {
  pcpu: number;
  pool: FramePoolHandle;
  sched: SchedulerHandle;
  port: MessagePort;
  /** The host's compiled core: one compilation (and one tier-up) for all threads. */
  coreModule: WebAssembly.Module;
}

/** The workerData of a worker started before its host (pcpu-prestart.ts
 *  startPcpuWorker): its PcpuWorkerData comes later, as its first message. */
export interface PcpuWorkerStart {
  prestarted: true;
}

/** Instructions per run() call inside a slice: the worker looks at the clock
 *  (slice end, guest time) between calls. About 0.3 ms of translated code. */
const RUN_BUDGET = 100_000;
const U64_MAX = 0xffff_ffff_ffff_ffffn;

/** One VM as this worker sees it: its p2m and (lazily) this worker's translation cache. */
class VmContext {
  readonly p2m: P2m;
  private readonly clock: RealtimeClock;
  private jit: Jit | undefined;
  /** The VM's PLIC, over the state the main thread's shares (undefined: its accesses go there). */
  readonly plic: Plic | undefined;
  /** Harts whose line an access here raised, woken once the PLIC's lock is let go. */
  private readonly toWake: number[] = [];
  /** By virtio slot: its transport's InterruptStatus, with the PLIC source that follows it. */
  private readonly interruptStatus: InterruptStatus[] = [];
  constructor(readonly d: VmDescriptor, private readonly core: Core, private readonly pool: FramePool, private readonly sched: Scheduler) {
    this.p2m = P2m.attach(pool, d.p2m);
    if (d.pages) this.p2m.usePageSource(PageStore.attach(d.pages));
    this.clock = new RealtimeClock(d.clockStartNs);
    if (d.irqchip) {
      const { fn, k } = core;
      // Context 2h is hart h's M-mode, 2h+1 its S-mode (plic.ts). A claim or
      // completion may raise another hart's line (a source enabled on both):
      // that hart is woken through the scheduler, as the main thread would.
      this.plic = new Plic(d.irqchip.contexts, (context, level) => {
        fn.setIrqLine(d.harts[context >> 1], context & 1 ? k.IRQ_LINE_SEIP : k.IRQ_LINE_MEIP, level ? 1 : 0);
        if (level) this.toWake.push(context >> 1);
      }, d.irqchip.state);
      const plic = this.plic;
      // Each keeps today's view of the pool, though the pool may grow (which
      // frame-pool.ts says to fetch the view again for): the words lie in the
      // VM's frame, allocated before this, and an older buffer of a shared
      // memory still reaches the bytes it spanned.
      for (let slot = 0; slot < d.irqchip.virtioSlots; slot++) {
        const source = VIRT_VIRTIO_IRQ_BASE + slot;
        this.interruptStatus.push(new InterruptStatus(pool.words, (d.irqchip.interruptStatus >>> 2) + slot, (high) => plic.setLevelFrom(source, high)));
      }
    }
  }

  /** An MMIO access of hart `h` to the PLIC or to a virtio transport's
   *  InterruptStatus or InterruptACK, answered here; false when it is neither. */
  serveIrqchip(view: DataView, h: number, write: boolean): boolean {
    const area = this.d.irqchip;
    if (!this.plic || !area) return false;
    const { k } = this.core;
    const addr = view.getBigUint64(h + k.RUN_ADDR_OFF, true);
    const size = Number(view.getBigUint64(h + k.RUN_SIZE_OFF, true));
    if (addr >= area.base && addr + BigInt(size) <= area.base + area.size) {
      const offset = Number(addr - area.base);
      if (write) this.plic.write(offset, size, view.getBigUint64(h + k.RUN_DATA_OFF, true));
      else view.setBigUint64(h + k.RUN_DATA_OFF, BigInt.asUintN(64, this.plic.read(offset, size)), true);
    } else if (!this.serveInterruptStatus(view, h, addr, size, write)) {
      return false;
    }
    view.setBigUint64(h + k.RUN_MMIO_DONE_OFF, k.MMIO_COMPLETED, true);
    // The hart making the access runs here: it sees its own line at its next instruction.
    while (this.toWake.length) {
      const other = this.toWake.pop()!;
      if (this.d.harts[other] !== h) wakeVcpu(this.sched, this.d.vcpus[other], this.pool.words, k.REQ_OFF, k.REQ_EXIT);
    }
    return true;
  }

  /**
   * A 32-bit read of a transport's InterruptStatus or write of its
   * InterruptACK (virtio 1.2, 4.2.2): the status word is shared with the
   * transport and the I/O threads, and the line follows it under the PLIC's
   * lock (plic.ts setLevelFrom), as mmio.ts would do it. Linux's driver makes
   * both accesses on every interrupt.
   */
  private serveInterruptStatus(view: DataView, h: number, addr: bigint, size: number, write: boolean): boolean {
    if (size !== 4 || addr < VIRT_VIRTIO_BASE) return false;
    const slot = Number((addr - VIRT_VIRTIO_BASE) / VIRT_VIRTIO_STRIDE);
    const offset = Number((addr - VIRT_VIRTIO_BASE) % VIRT_VIRTIO_STRIDE);
    const status = this.interruptStatus[slot];
    if (!status || offset !== (write ? REG.InterruptACK : REG.InterruptStatus)) return false;
    const { k } = this.core;
    if (write) status.acknowledge(Number(view.getBigUint64(h + k.RUN_DATA_OFF, true) & 0xffff_ffffn));
    else view.setBigUint64(h + k.RUN_DATA_OFF, BigInt(status.value), true);
    return true;
  }

  /** Point hart `h` at this worker's translation cache for the VM. */
  prepareHart(h: number): void {
    if (this.d.jit === false) return;
    if (!this.jit) {
      try {
        this.jit = new Jit(this.core, this.pool, this.p2m, this.d.jit, { pageMap: this.d.pageMap, owner: this.d.owner, harts: this.d.harts });
      } catch (e) {
        // The pool is full: the hart runs interpreted this turn (no cache,
        // not another worker's), and the cache is tried again on the next.
        if (e instanceof OutOfHostMemory) return this.core.fn.setJitCache(h, 0);
        throw e;
      }
    }
    this.jit.use(h);
  }

  jitStats() {
    return this.jit?.stats();
  }

  release(): void {
    this.jit?.release();
    this.jit = undefined;
  }

  /** Guest timer ticks now (the VM's clock, shared by all its harts). */
  ticksNow(): bigint {
    return this.clock.now();
  }

  /** Host monotonic ns at which the VM clock reads `ticks`. */
  nsAt(ticks: bigint): number {
    return this.clock.hostNsAt(ticks);
  }
}

class Pcpu {
  private readonly core: Core;
  private readonly pool: FramePool;
  private readonly sched: Scheduler;
  private readonly vms = new Map<number, VmContext>();
  private quit = false;

  constructor(private readonly data: PcpuWorkerData) {
    this.pool = FramePool.attach(data.pool);
    this.core = instantiateCore(this.pool.memory, data.coreModule);
    this.sched = new Scheduler(data.sched);
  }

  loop(): void {
    const w = this.sched.words;
    for (;;) {
      const seq = Atomics.load(w, H_IDLE_SEQ);
      this.drainMessages();
      if (this.quit) return;
      const pick = this.sched.pick(this.data.pcpu, monoNs());
      if (pick.kind === "idle") {
        const ms = pick.idleNs === Infinity ? undefined : Math.max(pick.idleNs / 1e6, 0.05);
        Atomics.wait(w, H_IDLE_SEQ, seq, ms);
        continue;
      }
      this.runTurn(pick.vcpu, monoNs() + pick.sliceNs);
    }
  }

  private drainMessages(): void {
    for (;;) {
      const m = receiveMessageOnPort(this.data.port);
      if (!m) return;
      const msg = m.message as PcpuMessage;
      switch (msg.kind) {
        case "add-vm":
          this.vms.set(msg.vm.id, new VmContext(msg.vm, this.core, this.pool, this.sched));
          break;
        case "drop-vm":
          this.vms.get(msg.id)?.release();
          this.vms.delete(msg.id);
          this.data.port.postMessage({ kind: "dropped", id: msg.id, token: msg.token });
          break;
        case "jit-stats":
          this.data.port.postMessage({ kind: "jit-stats", token: msg.token, stats: this.vms.get(msg.id)?.jitStats() });
          break;
        case "quit":
          this.quit = true;
          break;
      }
    }
  }

  /** Run vCPU `v` until `sliceEnd` (host ns) or until its turn ends otherwise. */
  private runTurn(v: number, sliceEnd: number): void {
    const { fn, k } = this.core;
    const sched = this.sched;
    if (!this.vms.has(sched.vmOf(v))) this.drainMessages();
    const ctx = this.vms.get(sched.vmOf(v));
    const h = sched.hartOf(v);
    if (!ctx) {
      // Its VM is being torn down (the worker already forgot it): leave it.
      sched.release(v, monoNs(), { kind: "stopped" });
      return;
    }
    ctx.prepareHart(h);
    let noProgress = 0;
    for (;;) {
      const now = ctx.ticksNow();
      if (asU64(fn.getTime(h)) < now) fn.setTime(h, now);
      const reason = runMarked(this.core, this.pool.words, h, RUN_BUDGET);
      const view = this.pool.view;
      const retired = Number(view.getBigUint64(h + k.RUN_INSNS_OFF, true));
      sched.addInstructions(v, retired);
      noProgress = retired === 0 ? noProgress + 1 : 0;
      switch (reason) {
        case k.EXIT_P2M_FAULT: {
          sched.countExit(v, exitIndex("p2m-fault"));
          const gpa = view.getBigUint64(h + k.RUN_ADDR_OFF, true);
          const write = view.getBigUint64(h + k.RUN_WRITE_OFF, true) === 1n;
          let resolved: boolean;
          try {
            resolved = ctx.p2m.resolveFault(gpa, write);
          } catch {
            // No frame to be had, or the page store failed: the main thread
            // decides (the VM waits for memory, paused, with a message).
            resolved = false;
          }
          if (!resolved && !this.toMainThread(v)) return;
          break;
        }
        case k.EXIT_WFI: {
          sched.countExit(v, exitIndex("wfi"));
          if (fn.wakeupPending(h)) break;
          const deadline = asU64(fn.timerDeadline(h));
          const deadlineNs = deadline === U64_MAX ? Infinity : ctx.nsAt(deadline);
          // A request posted since run() returned (an interrupt line, an IPI)
          // keeps it runnable: the scheduler checks the word under its lock.
          sched.release(v, monoNs(), { kind: "blocked", deadlineNs, wakePending: () => this.requestPending(h) || fn.wakeupPending(h) !== 0 });
          return;
        }
        case k.EXIT_BUDGET:
          break;
        case k.EXIT_KICK:
          sched.countExit(v, exitIndex("preempt"));
          sched.release(v, monoNs(), { kind: "runnable" });
          return;
        case k.EXIT_MMIO_READ:
        case k.EXIT_MMIO_WRITE:
          if (reason === k.EXIT_MMIO_WRITE && this.ringDoorbell(ctx, h)) {
            sched.countExit(v, exitIndex("doorbell"));
            break;
          }
          if (ctx.serveIrqchip(view, h, reason === k.EXIT_MMIO_WRITE)) {
            sched.countExit(v, exitIndex("irqchip"));
            break;
          }
          sched.countExit(v, exitIndex("mmio"));
          if (!this.toMainThread(v)) return;
          break;
        case k.EXIT_SBI:
          sched.countExit(v, exitIndex("sbi"));
          if (!this.toMainThread(v)) return;
          break;
        default:
          // EXIT_HALT and anything unexpected: the main thread ends the VM.
          sched.countExit(v, exitIndex("halt"));
          if (!this.toMainThread(v)) return;
          break;
      }
      if (noProgress >= 100_000) {
        // A trap handler whose first instruction exits and then faults
        // restarts forever one exit at a time (vcpu.ts NO_PROGRESS_LIMIT).
        view.setBigUint64(h + k.RUN_REASON_OFF, BigInt(k.EXIT_HALT), true);
        if (!this.toMainThread(v)) return;
        noProgress = 0;
      }
      if (monoNs() >= sliceEnd) {
        sched.countExit(v, exitIndex("time-slice"));
        sched.release(v, monoNs(), { kind: "runnable" });
        return;
      }
    }
  }

  /** A virtio queue notification: record it or kick the queue's thread, complete the write, go on (ioeventfd). */
  private ringDoorbell(ctx: VmContext, h: number): boolean {
    const { k } = this.core;
    const view = this.pool.view;
    const gpa = view.getBigUint64(h + k.RUN_ADDR_OFF, true);
    const size = Number(view.getBigUint64(h + k.RUN_SIZE_OFF, true));
    const value = view.getBigUint64(h + k.RUN_DATA_OFF, true);
    const rung = ringQueueDoorbell(ctx.d.doorbells, this.pool.words, gpa, size, value);
    if (rung === Doorbell.None) return false;
    view.setBigUint64(h + k.RUN_MMIO_DONE_OFF, k.MMIO_COMPLETED, true);
    if (rung === Doorbell.Recorded) ringHostDoorbell(this.sched);
    return true;
  }

  private requestPending(h: number): boolean {
    return Atomics.load(this.pool.words, (h + this.core.k.REQ_OFF) >>> 2) !== 0;
  }

  /** Hand the exit in v's run record to the main thread; false when the turn ends. */
  private toMainThread(v: number): boolean {
    const answer = postExitAndWait(this.sched, v);
    const now = monoNs();
    switch (answer) {
      case Mailbox.Resume:
        return true;
      case Mailbox.Block:
        this.sched.release(v, now, { kind: "blocked", deadlineNs: Infinity });
        return false;
      case Mailbox.Stop:
        this.sched.release(v, now, { kind: "stopped" });
        return false;
    }
  }
}

if ("prestarted" in (workerData as PcpuWorkerStart | PcpuWorkerData)) {
  parentPort!.once("message", (data: PcpuWorkerData) => new Pcpu(data).loop());
} else {
  new Pcpu(workerData as PcpuWorkerData).loop();
}
