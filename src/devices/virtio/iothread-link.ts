// How a device's main-thread side and the I/O thread that serves its queues
// (a disk's: blk-iothread.ts; a shared folder's: fs/iothread.ts) talk, as
// KVM's ioeventfd and irqfd let QEMU's iothreads serve a queue without the
// vCPU thread: control words in a SharedArrayBuffer for what happens often
// (a kick, an interrupt, the stop handshake), a MessagePort for what happens
// seldom (the queues going live, device-specific requests).
//
// The stop handshake: the main thread sets C_STOP and sends a "quiesce"
// message; the thread finishes the request in hand, writes each queue's
// indices into the control words (so the main thread's VirtQueues, which a
// snapshot saves, go on from there) and counts C_ACK up. Until the next
// activation it touches no guest memory. A thread that ends, by its own
// end or a failure, clears C_ALIVE and wakes every waiter.

import { receiveMessageOnPort, type Worker, type MessagePort } from "node:worker_threads";
import { QueueBroken, ChainError, type QueueIndices, type VirtQueue } from "./queue.js";
import type { VirtioContext } from "./virtio.js";
import type { DirectKick } from "../../vmm/queue-doorbell.js";
import { GuestMemory, GuestMemoryError } from "../../memory/guest-memory.js";
import { FramePool, type FramePoolHandle } from "../../memory/frame-pool.js";
import { P2m, type P2mHandle } from "../../memory/p2m.js";
import { PageStore, type PageStoreHandle } from "../../memory/manager/page-store.js";
import { CodePageMap } from "../../jit/code-page-map.js";
import { Irqfd, type IrqfdRoute } from "../../host/irqfd.js";
import { INT_USED_BUFFER } from "./mmio-registers.js";

/** The VM's RAM as the thread attaches it when it gets its queues (in the device's "activate" message). */
export interface ThreadRam {
  /** The host's frame pool, when it is not the one the thread attached before. */
  pool?: FramePoolHandle;
  p2m: P2mHandle;
  /** The JIT's code page map (0: none): the thread's writes retire code translated from the pages. */
  codePageMap: number;
  /** Where the thread finds compressed and swapped pages. */
  pages?: PageStoreHandle;
  /** How the thread raises the used-buffer interrupt itself; absent: it asks the main thread (C_IRQ). */
  irqfd?: IrqfdRoute;
}

/** What the thread tells the main thread besides the device's own messages. */
export interface NeedsReset {
  kind: "needs-reset";
  why: string;
  /** Which handover of queues it is about (a message about an earlier one is stale). */
  activation: number;
}

/** Control words (Int32Array indices). */
export const C_SEQ = 0;      // bumped and notified with every event for the I/O thread (it sleeps on it)
export const C_KICK = 1;     // main thread or a vCPU's worker: a queue was notified
export const C_STOP = 2;     // main thread: stop after the request in hand (a quiesce is coming)
export const C_ACK = 3;      // I/O thread: quiesces done so far (notified)
export const C_IRQ = 4;      // I/O thread: the driver wants the used-buffer interrupt (no irqfd route)
export const C_IRQ_SEQ = 5;  // I/O thread: bumped and notified with C_IRQ, and when the thread ends
export const C_ALIVE = 6;    // 1 from the thread's start to its end
/** 1 while the thread serves the queues: vCPUs' workers kick it straight
 *  through C_KICK (vmm/queue-doorbell.ts DirectKick), counting in C_KICKS. */
export const C_ARMED = 7;
export const C_KICKS = 8;
/** Per queue, written by the thread for a quiesce: Q_STATE 0 (it served none),
 *  1 (the indices follow) or 2 (they follow, and the rings had broken). */
const QUEUE_WORDS_AT = 9;
const Q_STATE = 0;
const Q_LAST_AVAIL = 1;
const Q_USED_IDX = 2;
const Q_SIGNALLED_USED = 3;
const Q_PENDING_USED = 4;
const QUEUE_WORDS = 5;

/**
 * The control words for a device of `queues` queues, made before its thread
 * is: alive from the start, so a stop sent before the thread runs waits for
 * it; the thread's end (or its exit event, IoThreadLink.ended) clears it.
 */
export function newControl(queues: number): SharedArrayBuffer {
  const control = new SharedArrayBuffer(4 * (QUEUE_WORDS_AT + queues * QUEUE_WORDS));
  Atomics.store(new Int32Array(control), C_ALIVE, 1);
  return control;
}

function queueWord(q: number, field: number): number {
  return QUEUE_WORDS_AT + q * QUEUE_WORDS + field;
}

/** How long a synchronous stop waits between looks at whether the thread still lives. */
const STOP_POLL_MS = 100;

// ES2024's Atomics.waitAsync (in Node since 16); TypeScript's ES2022 lib lacks it.
const waitAsync = (Atomics as unknown as {
  waitAsync(a: Int32Array, i: number, v: number, t?: number): { async: boolean; value: Promise<string> | string };
}).waitAsync;

/** The main thread's end; `S`: what the device hands the thread to serve (its queue, or its queues). */
export class IoThreadLink<S> {
  readonly ctl: Int32Array;
  private stopsSent = 0;
  private servedNow: S | undefined;
  private stopping: S | undefined;
  /** Handovers so far (the thread counts them too). */
  private activations = 0;
  /** The pool memory the thread has attached (sent once per pool). */
  private attachedPool: WebAssembly.Memory | undefined;
  /** pause() to resume(): the thread holds nothing and nothing is handed to it. */
  private pausedNow = false;
  /** pause() waiting for the thread: an interrupt it asks for meanwhile is raised, not dropped. */
  private pausing = false;
  /** pause() and resume() calls so far: a pause that ends after a later call leaves things to it. */
  private pauses = 0;
  /** Something awaits the thread: it keeps the process up meanwhile (worker.ref()). */
  private holds = 0;

  /** Queues with index words (newControl's count). */
  private readonly queues: number;

  constructor(readonly control: SharedArrayBuffer, private readonly port: MessagePort, private readonly worker: Worker) {
    this.ctl = new Int32Array(control);
    this.queues = (this.ctl.length - QUEUE_WORDS_AT) / QUEUE_WORDS;
  }

  /** Queue `queue`'s notifications go straight to the thread while it serves its queues (vmm/queue-doorbell.ts). */
  directKick(queue: number): DirectKick {
    return { queue, control: this.control, armed: C_ARMED, kick: C_KICK, count: C_KICKS, seq: C_SEQ };
  }

  /** A message for the thread, which is woken to take it. */
  post(msg: unknown, transfer: ArrayBuffer[] = []): void {
    this.port.postMessage(msg, transfer);
    this.wake();
  }

  private wake(): void {
    Atomics.add(this.ctl, C_SEQ, 1);
    Atomics.notify(this.ctl, C_SEQ);
  }

  /** A queue notification that came to the main thread. */
  kick(): void {
    Atomics.store(this.ctl, C_KICK, 1);
    this.wake();
  }

  /** What the thread serves now (undefined: it touches no guest memory). */
  get served(): S | undefined {
    return this.servedNow;
  }

  /**
   * Hand the thread `served` (`msg`, the device's "activate" message
   * describing it): it serves it once on arrival and whenever kicked after,
   * and vCPUs' workers kick it straight from now. Only after stopSync()
   * (the thread is idle: the stop word and what the last quiesce left are ours).
   */
  activate(served: S, msg: unknown): void {
    Atomics.store(this.ctl, C_STOP, 0);
    for (let q = 0; q < this.queues; q++) Atomics.store(this.ctl, queueWord(q, Q_STATE), 0);
    this.post(msg);
    this.servedNow = served;
    this.activations++;
    Atomics.store(this.ctl, C_ARMED, 1);
  }

  /** The VM's RAM for the "activate" message (the device's context has it shared). */
  ram(ctx: VirtioContext): ThreadRam {
    const shared = ctx.shared!;
    const pool = shared.pool.memory === this.attachedPool ? undefined : shared.pool;
    this.attachedPool = shared.pool.memory;
    return { pool, p2m: shared.p2m, codePageMap: shared.codePageMap, pages: shared.pages, irqfd: ctx.irqfd?.() };
  }

  /** Does the thread's needs-reset message concern the queues it serves now? */
  current(msg: NeedsReset): boolean {
    return this.servedNow !== undefined && msg.activation === this.activations;
  }

  /** Tell the thread to let go of guest memory, if it serves anything (no wait). */
  sendStop(): void {
    if (this.servedNow === undefined) return;
    this.stopping = this.servedNow;
    this.servedNow = undefined;
    Atomics.store(this.ctl, C_ARMED, 0);
    Atomics.store(this.ctl, C_STOP, 1);
    this.post({ kind: "quiesce" });
    this.stopsSent++;
  }

  /** The VM's RAM goes away: the thread finishes its request in hand and lets go (awaited, the main thread serves on). */
  async quiesce(): Promise<void> {
    this.sendStop();
    await this.waitStopped();
  }

  /**
   * A snapshot's pause: the thread finishes the request in hand (the rest
   * stay in the rings) and lets go, and nothing is handed to it until
   * resume(). False when a resume() (or another pause) came meanwhile: this
   * pause is over and the device leaves things to that call.
   */
  async pause(): Promise<boolean> {
    const mine = ++this.pauses;
    this.pausedNow = true;
    this.pausing = true;
    this.sendStop();
    await this.waitStopped();
    if (mine !== this.pauses) return false;
    this.pausing = false;
    return true;
  }

  /** After pause(): true when it was paused (the device hands its queues over again). */
  resume(): boolean {
    if (!this.pausedNow) return false;
    this.pauses++;
    this.pausedNow = false;
    this.pausing = false;
    return true;
  }

  get paused(): boolean {
    return this.pausedNow;
  }

  /** Waiting for a pause's stop: what the thread reports now belongs to the pause. */
  get pausePending(): boolean {
    return this.pausing;
  }

  /** sendStop(), then block until every stop sent is acknowledged; takeStopped() says what it left. */
  stopSync(): void {
    this.sendStop();
    this.waitStoppedSync();
  }

  /**
   * What the thread served until the last stop, once that stop is
   * acknowledged (taken: the next call says undefined until another stop).
   * The device brings its transport's queues up to date from takeIndices().
   * A stop an awaited pause sent may be taken by a stopSync() meanwhile.
   */
  takeStopped(): S | undefined {
    if (this.stopPending) return undefined;
    const s = this.stopping;
    this.stopping = undefined;
    return s;
  }

  /** A stop sent and not acknowledged yet by a live thread. */
  get stopPending(): boolean {
    return Atomics.load(this.ctl, C_ACK) < this.stopsSent && this.alive;
  }

  get alive(): boolean {
    return Atomics.load(this.ctl, C_ALIVE) === 1;
  }

  /** Block until every stop sent is acknowledged: the thread is between requests, holding no queue. */
  waitStoppedSync(): void {
    while (this.stopPending) Atomics.wait(this.ctl, C_ACK, Atomics.load(this.ctl, C_ACK), STOP_POLL_MS);
  }

  /** Until every stop sent is acknowledged (awaited: the main thread serves on). */
  async waitStopped(): Promise<void> {
    if (!this.stopPending) return;
    // A pending Atomics.waitAsync does not keep the process alive; the thread does, while we wait for it.
    await this.holding(async () => {
      while (this.stopPending) {
        const r = waitAsync(this.ctl, C_ACK, Atomics.load(this.ctl, C_ACK), STOP_POLL_MS);
        if (r.async) await r.value;
      }
    });
  }

  /** Keep the process up while `work` waits for the thread (the thread is unref'd otherwise). */
  async holding<T>(work: () => Promise<T>): Promise<T> {
    if (this.holds++ === 0) this.worker.ref();
    try {
      return await work();
    } finally {
      if (--this.holds === 0) this.worker.unref();
    }
  }

  /** Did the thread ask for the used-buffer interrupt (the request is taken)? */
  takeInterrupt(): boolean {
    return Atomics.exchange(this.ctl, C_IRQ, 0) !== 0;
  }

  /** Kicks that went straight to the thread since the last call. */
  takeKicks(): number {
    return Atomics.exchange(this.ctl, C_KICKS, 0);
  }

  /**
   * Queue `q` as the thread left it at its last quiesce (taken: a second
   * call says undefined): its indices and whether its rings had broken, or
   * undefined when the thread served no such queue.
   */
  takeIndices(q: number): { indices: QueueIndices; broken: boolean } | undefined {
    const state = Atomics.exchange(this.ctl, queueWord(q, Q_STATE), 0);
    if (state === 0) return undefined;
    const word = (field: number) => Atomics.load(this.ctl, queueWord(q, field));
    return {
      indices: { lastAvail: word(Q_LAST_AVAIL), usedIdx: word(Q_USED_IDX), signalledUsed: word(Q_SIGNALLED_USED), pendingUsed: word(Q_PENDING_USED) !== 0 },
      broken: state === 2,
    };
  }

  /** Call `raise` whenever the thread asks for the used-buffer interrupt while it serves (or a pause waits for it), until it ends. */
  async relayInterrupts(raise: () => void): Promise<void> {
    for (;;) {
      const seen = Atomics.load(this.ctl, C_IRQ_SEQ);
      if (this.takeInterrupt() && (this.servedNow !== undefined || this.pausing)) raise();
      if (!this.alive) return;
      const r = waitAsync(this.ctl, C_IRQ_SEQ, seen);
      if (r.async) await r.value;
    }
  }

  /** The thread is gone (its exit or error event): no kick goes to it, nobody waits for it. */
  ended(): void {
    Atomics.store(this.ctl, C_ARMED, 0);
    threadEnded(this.ctl);
  }
}

/** The I/O thread's end. */
export class IoThreadSide {
  readonly ctl: Int32Array;
  /** How the thread raises the used-buffer interrupt itself (undefined: through the main thread). */
  private irqfd: Irqfd | undefined;
  private pool: FramePool | undefined;
  /** Handovers so far (the main thread counts them too). */
  private activations = 0;
  /** The rings failed: nothing more until the queues are handed over again (after the driver's reset). */
  private brokenNow = false;

  constructor(control: SharedArrayBuffer, private readonly port: MessagePort) {
    this.ctl = new Int32Array(control);
  }

  /**
   * The thread's loop: the messages waiting (`take` answers true when the
   * device's queues are to be served at once, "end" to end the loop), then
   * a kick; `serve` runs when either asks for it; then sleep until the next
   * event. Messages are taken between requests only, so a quiesce is
   * acknowledged with the request in hand finished.
   */
  run(take: (msg: unknown) => boolean | "end", serve: () => void): void {
    for (;;) {
      const seq = this.seq;
      let now = false;
      for (let m = receiveMessageOnPort(this.port); m; m = receiveMessageOnPort(this.port)) {
        const r = take(m.message);
        if (r === "end") return;
        if (r) now = true;
      }
      if (this.takeKick()) now = true;
      if (now && !this.brokenNow && !this.stopRequested) serve();
      this.wait(seq);
    }
  }

  /** The queues are handed over: the VM's RAM as guest memory here (the pool attached once), the interrupt route taken. */
  attach(ram: ThreadRam): GuestMemory {
    if (ram.pool) this.pool = FramePool.attach(ram.pool);
    if (!this.pool) throw new Error("queues handed over without a frame pool");
    const p2m = P2m.attach(this.pool, ram.p2m);
    if (ram.pages) p2m.usePageSource(PageStore.attach(ram.pages));
    // The thread's writes land in guest pages: retire code translated from them, as DMA on the main thread does.
    if (ram.codePageMap) CodePageMap.attach(this.pool, p2m, ram.codePageMap);
    this.irqfd = ram.irqfd && new Irqfd(ram.irqfd, this.pool.words);
    this.brokenNow = false;
    this.activations++;
    return new GuestMemory(p2m);
  }

  /** The rings failed with `e`: the main thread sets DEVICE_NEEDS_RESET; nothing is served until the next handover. */
  ringsBroken(e: unknown): void {
    this.brokenNow = true;
    this.port.postMessage({ kind: "needs-reset", why: brokenRingReason(e), activation: this.activations } satisfies NeedsReset);
  }

  get broken(): boolean {
    return this.brokenNow;
  }

  /** The event count to sleep on: take it before looking for work, then wait(seq). */
  get seq(): number {
    return Atomics.load(this.ctl, C_SEQ);
  }

  /** Sleep until an event after `seq` (a message, a kick). */
  wait(seq: number): void {
    Atomics.wait(this.ctl, C_SEQ, seq);
  }

  /** Was a queue notified (the kick is taken)? */
  takeKick(): boolean {
    return Atomics.exchange(this.ctl, C_KICK, 0) !== 0;
  }

  /** Stop after the request in hand: a quiesce is coming. */
  get stopRequested(): boolean {
    return Atomics.load(this.ctl, C_STOP) !== 0;
  }

  /** A quiesce is done: each queue's indices (by queue index; undefined: none served) go to the main thread, then the acknowledgement. */
  acknowledgeStop(queues: readonly (VirtQueue | undefined)[], count: number): void {
    const broken = this.brokenNow;
    this.irqfd = undefined;
    for (let q = 0; q < count; q++) {
      const queue = queues[q];
      if (queue) {
        const ix = queue.indices;
        Atomics.store(this.ctl, queueWord(q, Q_LAST_AVAIL), ix.lastAvail);
        Atomics.store(this.ctl, queueWord(q, Q_USED_IDX), ix.usedIdx);
        Atomics.store(this.ctl, queueWord(q, Q_SIGNALLED_USED), ix.signalledUsed);
        Atomics.store(this.ctl, queueWord(q, Q_PENDING_USED), ix.pendingUsed ? 1 : 0);
      }
      Atomics.store(this.ctl, queueWord(q, Q_STATE), !queue ? 0 : broken ? 2 : 1);
    }
    Atomics.add(this.ctl, C_ACK, 1);
    Atomics.notify(this.ctl, C_ACK);
  }

  /** The driver wants the used-buffer interrupt: raised here (irqfd.ts), or asked of the main thread. */
  usedBuffer(): void {
    if (this.irqfd) return this.irqfd.raise(INT_USED_BUFFER);
    Atomics.store(this.ctl, C_IRQ, 1);
    Atomics.add(this.ctl, C_IRQ_SEQ, 1);
    Atomics.notify(this.ctl, C_IRQ_SEQ);
  }

  /** The thread's loop is over (its finally): whoever waits for it stops waiting. */
  ended(): void {
    threadEnded(this.ctl);
  }
}

function threadEnded(ctl: Int32Array): void {
  Atomics.store(ctl, C_ALIVE, 0);
  for (const word of [C_ACK, C_IRQ_SEQ]) {
    Atomics.add(ctl, word, 1);
    Atomics.notify(ctl, word);
  }
}

/** Why the thread stopped serving after `e` (the main thread's transport judges the same errors the same way: mmio.ts guarded()). */
function brokenRingReason(e: unknown): string {
  return e instanceof QueueBroken ? e.message
    : e instanceof ChainError || e instanceof GuestMemoryError ? `${e.message} (not handled by the device)`
    : `internal error in its I/O thread: ${(e as Error)?.stack ?? String(e)}`;
}
