// The main thread's side of a virtio-fs device's I/O thread (worker.ts),
// after blk-iothread.ts: it hands the live queues to the thread, which then
// serves them in guest memory itself. While it holds them (C_ARMED), a
// vCPU's worker kicks it on a QueueNotify of the request queue and the
// thread raises the used-buffer interrupt through irqfd, so a FUSE request
// needs nothing from the main thread; hiprio's rare FORGETs come through
// notify() here.
//
//   main thread (this)                       I/O thread (FuseServer, its VirtQueues)
//   activate / queues changed -- "activate" --> attach pool + p2m, build the queues, serve once
//   (vCPU's worker: QueueNotify 1 -- C_KICK)    pop, handle, push
//   notify(0), or not armed -- C_KICK ------->
//                                               notifyDriver (EVENT_IDX decides): irqfd raises
//   usedBuffer(1)            <-- C_IRQ ------    it, or, with no route to the harts, the main thread
//   queue stopped / reset / pause -- C_STOP + "quiesce", wait for C_ACK; the thread reports
//                               each queue's indices, the transport's VirtQueues go on from them
//   reset                    -- "reset" after it: the guest's nodes and handles go
//   close                    -- "close": the thread closes its fds and ends
//
// A reset returns only once the thread has finished the request in hand and
// dropped the queues: the driver takes reset as complete when its status
// write returns (virtio 1.2, 2.4 and 4.2.3.1).

import { Worker, MessageChannel, type MessagePort } from "node:worker_threads";
import type { VirtioContext } from "../virtio.js";
import type { DirectKick } from "../../../vmm/queue-doorbell.js";
import type { VirtQueue } from "../queue.js";
import { Op } from "./fuse.js";
import { processUmask, type ServerStats } from "./server.js";
import {
  C_SEQ, C_KICK, C_STOP, C_ACK, C_IRQ, C_IRQ_SEQ, C_ALIVE, C_ARMED, C_KICKS, CONTROL_WORDS, STAT_WORDS, DIRECT_QUEUE, FS_QUEUES,
  QUEUE_STAT_KEYS, SERVER_STAT_KEYS, SERVER_STATS_AT, OPS_AT, OP_SLOTS, Q_STATE, Q_LAST_AVAIL, Q_USED_IDX, Q_SIGNALLED_USED, Q_PENDING_USED, queueWord,
  type FsThreadData, type ToFsThread, type FromFsThread,
} from "./iothread-protocol.js";

// ES2024's Atomics.waitAsync (in Node since 16); TypeScript's ES2022 lib lacks it.
const waitAsync = (Atomics as unknown as {
  waitAsync(a: Int32Array, i: number, v: number, t?: number): { async: boolean; value: Promise<string> | string };
}).waitAsync;

/** How long a synchronous stop waits between looks at whether the thread still lives. */
const STOP_POLL_MS = 100;
/** How long close() waits for the thread to close its fds before ending it. */
const CLOSE_WAIT_MS = 2000;

type QueueCounts = Record<(typeof QUEUE_STAT_KEYS)[number], number>;

export class FsIoThread {
  /** While the thread serves the queues, vCPUs' workers kick the request queue straight (ioeventfd). */
  readonly directKick: DirectKick;
  private readonly ctl: Int32Array;
  private readonly counters: Float64Array;
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private ctx: VirtioContext | undefined;
  private queues: readonly (VirtQueue | undefined)[] = [];
  /** The queues the thread serves now (undefined: it touches no guest memory). */
  private served: (VirtQueue | undefined)[] | undefined;
  /** The queues last told to stop: the thread's indices go back into them once it has (stopped()). */
  private stopping: (VirtQueue | undefined)[] | undefined;
  /** The transport's counts of the queues served, and their values when they went to the thread. */
  private countsOf: { queue: VirtQueue; base: QueueCounts }[] = [];
  /** pauseIo() to resumeIo(): the thread holds no queue and none is handed to it. */
  private ioPaused = false;
  /** pauseIo() waiting for the thread: an interrupt it asks for meanwhile is raised, not dropped. */
  private pausing = false;
  private pauses = 0;
  /** The pool memory the thread has attached (sent once per pool). */
  private attachedPool: WebAssembly.Memory | undefined;
  private stopsSent = 0;
  /** Queue sets handed to the thread so far: a message about an earlier one is stale. */
  private activations = 0;
  private ended: string | undefined;
  private closing: Promise<void> | undefined;
  private closedReply: (() => void) | undefined;
  private readonly exited: Promise<void>;

  constructor(private readonly name: string, hostDir: string, readOnly: boolean) {
    const control = new SharedArrayBuffer(CONTROL_WORDS * 4);
    this.ctl = new Int32Array(control);
    this.counters = new Float64Array(new SharedArrayBuffer(STAT_WORDS * 8));
    this.directKick = { queue: DIRECT_QUEUE, control, armed: C_ARMED, kick: C_KICK, count: C_KICKS, seq: C_SEQ };
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    const data: FsThreadData = { control, stats: this.counters.buffer as SharedArrayBuffer, port: port2, hostDir, readOnly, umask: processUmask() };
    this.worker = new Worker(new URL("./worker.js", import.meta.url), { workerData: data, transferList: [port2] });
    this.exited = new Promise((resolve) => this.worker.once("exit", () => resolve()));
    this.worker.on("exit", () => this.threadEnded(`${name}: its I/O thread ended`));
    this.worker.on("error", (e) => this.threadEnded(`${name}: its I/O thread failed: ${e.message}`));
    this.port.on("message", (msg: FromFsThread) => this.onMessage(msg));
    this.port.unref();
    this.worker.unref();
    // Alive from now: a stop sent before the thread has started waits for it (threadEnded() clears it).
    Atomics.store(this.ctl, C_ALIVE, 1);
    void this.serveInterrupts();
  }

  // ---- what the device forwards from the transport --------------------------------------

  activate(ctx: VirtioContext, queues: readonly (VirtQueue | undefined)[]): void {
    this.ctx = ctx;
    this.queues = queues;
    if (!ctx.shared) return ctx.needsReset(`${this.name}: its I/O thread needs the VM's RAM shared (a VM in a host)`);
    if (this.ended) return ctx.needsReset(this.ended);
    if (!this.ioPaused) this.serve();
  }

  notify(): void {
    if (!this.ctx?.shared || this.ended || this.ioPaused) return;
    // The queues are looked up each time: the driver may have set one up again since.
    if (this.queuesChanged()) this.serve();
    Atomics.store(this.ctl, C_KICK, 1);
    this.wake();
  }

  queueStopped(index: number): void {
    if (!this.served?.[index]) return;
    this.stopSync();
    // The other queue goes on: requests waiting in it were notified already.
    if (this.ctx?.shared && !this.ended && !this.ioPaused && this.queues.some((q) => q)) this.serve();
  }

  /** Device reset: the thread lets go of the queues, then forgets the guest's nodes and handles. */
  reset(): void {
    this.ctx = undefined;
    this.queues = [];
    this.stopSync();
    if (!this.ended) this.post({ kind: "reset" });
  }

  /** The VM's RAM goes away: the thread finishes its request in hand and lets go (awaited, the main thread serves on). */
  async quiesce(): Promise<void> {
    this.ctx = undefined;
    this.queues = [];
    this.sendStop();
    await this.waitStopped();
    this.stopped();
  }

  /** The thread finishes the request in hand (the rest stay in the rings) and reports the queues' indices. */
  async pauseIo(): Promise<void> {
    const mine = ++this.pauses;
    this.ioPaused = true;
    this.pausing = true;
    this.sendStop();
    await this.waitStopped();
    // Resumed (or paused again) meanwhile: this pause is over.
    if (mine !== this.pauses) return;
    this.pausing = false;
    if (Atomics.exchange(this.ctl, C_IRQ, 0) !== 0) this.ctx?.usedBuffer(DIRECT_QUEUE);
    this.stopped();
  }

  resumeIo(): void {
    if (!this.ioPaused) return;
    this.pauses++;
    this.ioPaused = false;
    this.pausing = false;
    if (this.ctx?.shared && !this.ended && this.queues.some((q) => q)) this.serve();
  }

  /** Wait for the request in hand, close the thread's fds and end it. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  /** The FUSE server's counts, as the thread last published them. */
  get stats(): ServerStats & { nodes: number; handles: number } {
    const c = this.counters;
    const [requests, errors, dropped, internalErrors, nodes, handles] = SERVER_STAT_KEYS.map((_, i) => c[SERVER_STATS_AT + i]);
    const byOp: Record<string, number> = {};
    for (let op = 0; op < OP_SLOTS; op++) {
      if (c[OPS_AT + op] > 0) byOp[op === 0 ? "other" : (Op[op] ?? "other")] = c[OPS_AT + op];
    }
    return { requests, errors, dropped, internalErrors, byOp, nodes, handles };
  }

  /** The transport's queue counts, brought up to date with the thread's. */
  syncStats(): void {
    for (const { queue, base } of this.countsOf) {
      const at = queue.index * QUEUE_STAT_KEYS.length;
      QUEUE_STAT_KEYS.forEach((k, i) => (queue.stats[k] = base[k] + this.counters[at + i]));
      if (queue.index === DIRECT_QUEUE) queue.stats.notifications += Atomics.exchange(this.ctl, C_KICKS, 0);
    }
  }

  // ---- the thread ------------------------------------------------------------------------

  private queuesChanged(): boolean {
    for (let i = 0; i < FS_QUEUES; i++) if (this.queues[i] !== this.served?.[i]) return true;
    return false;
  }

  /** Hand the live queues to the thread (after it has let go of any others). */
  private serve(): void {
    const ctx = this.ctx!;
    const shared = ctx.shared!;
    if (this.served) this.stopSync();
    this.waitStoppedSync();
    // The thread is idle: its counters and the stop word are ours to reset.
    this.counters.fill(0, 0, FS_QUEUES * QUEUE_STAT_KEYS.length);
    const live = Array.from({ length: FS_QUEUES }, (_, i) => this.queues[i]);
    this.countsOf = live.flatMap((queue) => (queue ? [{ queue, base: Object.fromEntries(QUEUE_STAT_KEYS.map((k) => [k, queue.stats[k]])) as QueueCounts }] : []));
    Atomics.store(this.ctl, C_STOP, 0);
    const pool = shared.pool.memory === this.attachedPool ? undefined : shared.pool;
    this.attachedPool = shared.pool.memory;
    this.post({
      kind: "activate", pool, p2m: shared.p2m, codePageMap: shared.codePageMap, pages: shared.pages,
      queues: live.map((q) => q && { config: { ...q.config }, indices: q.indices }), irqfd: ctx.irqfd?.(),
    });
    this.served = live;
    this.activations++;
    Atomics.store(this.ctl, C_ARMED, 1);
  }

  /** Tell the thread to let go of guest memory (no wait). */
  private sendStop(): void {
    if (!this.served) return;
    Atomics.store(this.ctl, C_ARMED, 0);
    this.stopping = this.served;
    this.served = undefined;
    Atomics.store(this.ctl, C_STOP, 1);
    this.post({ kind: "quiesce" });
    this.stopsSent++;
  }

  private stopPending(): boolean {
    return Atomics.load(this.ctl, C_ACK) < this.stopsSent && Atomics.load(this.ctl, C_ALIVE) === 1;
  }

  private stopSync(): void {
    this.sendStop();
    this.waitStoppedSync();
  }

  /** Block until every stop sent is acknowledged: the thread is between requests, holding no queue. */
  private waitStoppedSync(): void {
    if (!this.stopPending()) return;
    while (this.stopPending()) Atomics.wait(this.ctl, C_ACK, Atomics.load(this.ctl, C_ACK), STOP_POLL_MS);
    this.stopped();
  }

  /** Until every stop sent is acknowledged (awaited: the main thread serves on). */
  private async waitStopped(): Promise<void> {
    if (!this.stopPending()) return;
    // A pending Atomics.waitAsync does not keep the process alive; the thread does, while we wait for it.
    this.worker.ref();
    try {
      while (this.stopPending()) {
        const r = waitAsync(this.ctl, C_ACK, Atomics.load(this.ctl, C_ACK), STOP_POLL_MS);
        if (r.async) await r.value;
      }
    } finally {
      if (!this.closing) this.worker.unref();
    }
  }

  /** After a stop: an interrupt asked for before it is moot; the counts are final; the transport's queues go on from the thread's indices. */
  private stopped(): void {
    Atomics.store(this.ctl, C_IRQ, 0);
    this.syncStats();
    this.countsOf = [];
    const queues = this.stopping;
    this.stopping = undefined;
    for (let i = 0; i < FS_QUEUES; i++) {
      const state = Atomics.exchange(this.ctl, queueWord(i, Q_STATE), 0);
      const q = queues?.[i];
      if (!q || state !== 1) continue;
      q.setIndices({
        lastAvail: Atomics.load(this.ctl, queueWord(i, Q_LAST_AVAIL)), usedIdx: Atomics.load(this.ctl, queueWord(i, Q_USED_IDX)),
        signalledUsed: Atomics.load(this.ctl, queueWord(i, Q_SIGNALLED_USED)), pendingUsed: Atomics.load(this.ctl, queueWord(i, Q_PENDING_USED)) !== 0,
      });
    }
  }

  private post(msg: ToFsThread): void {
    this.port.postMessage(msg);
    this.wake();
  }

  private wake(): void {
    Atomics.add(this.ctl, C_SEQ, 1);
    Atomics.notify(this.ctl, C_SEQ);
  }

  /** Raise the used-buffer interrupt whenever the thread asks (until it ends). */
  private async serveInterrupts(): Promise<void> {
    for (;;) {
      const seen = Atomics.load(this.ctl, C_IRQ_SEQ);
      if (Atomics.exchange(this.ctl, C_IRQ, 0) !== 0 && (this.served || this.pausing)) this.ctx?.usedBuffer(DIRECT_QUEUE);
      if (Atomics.load(this.ctl, C_ALIVE) !== 1) return;
      const r = waitAsync(this.ctl, C_IRQ_SEQ, seen);
      if (r.async) await r.value;
    }
  }

  private onMessage(msg: FromFsThread): void {
    if (msg.kind === "needs-reset") {
      if (this.served && msg.activation === this.activations) this.ctx?.needsReset(`${this.name}: ${msg.why}`);
    } else {
      this.closedReply?.();
    }
  }

  private threadEnded(why: string): void {
    if (this.ended) return;
    this.ended = why;
    Atomics.store(this.ctl, C_ARMED, 0);
    // A thread that never ran its loop's end (it failed to start): whoever waits for it stops waiting.
    Atomics.store(this.ctl, C_ALIVE, 0);
    for (const word of [C_ACK, C_IRQ_SEQ]) {
      Atomics.add(this.ctl, word, 1);
      Atomics.notify(this.ctl, word);
    }
    this.closedReply?.();
    if (!this.closing && this.served) this.ctx?.needsReset(why);
  }

  private async doClose(): Promise<void> {
    if (this.ended) return;
    await this.quiesce();
    // Until the thread has closed its fds, the process must not end under it; a host call that hangs is not waited for long.
    this.worker.ref();
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.closedReply = resolve;
      timer = setTimeout(resolve, CLOSE_WAIT_MS);
      this.post({ kind: "close" });
    });
    clearTimeout(timer);
    await this.worker.terminate();
    await this.exited;
    this.port.close();
  }
}
