// The I/O thread of a virtio-fs device (device.ts, thread "worker"), as
// blk-iothread-worker.ts is a disk's: it owns the FuseServer, so every host
// file call (open, read, fsync, readdir...) blocks this thread, never the
// main one, and, while the driver runs, its own VirtQueues over the VM's RAM
// (the host's frame pool and the VM's p2m, attached here). A request goes
// from the guest's QueueNotify to this thread (the vCPU's worker kicks it:
// vmm/queue-doorbell.ts DirectKick) and back with the interrupt raised here
// (host/irqfd.ts): the main thread takes no part in it. The main thread's
// side is iothread.ts; what they share, iothread-protocol.ts.
//
// The thread sleeps on C_SEQ. Messages are taken between requests only, so
// when it acknowledges a quiesce it has finished the request in hand and
// will not touch guest memory again until the next activate.

import { workerData, receiveMessageOnPort } from "node:worker_threads";
import { FramePool } from "../../../memory/frame-pool.js";
import { PageStore } from "../../../memory/manager/page-store.js";
import { P2m } from "../../../memory/p2m.js";
import { GuestMemory, GuestMemoryError } from "../../../memory/guest-memory.js";
import { CodePageMap } from "../../../jit/code-page-map.js";
import { Irqfd } from "../../../host/irqfd.js";
import { VirtQueue, QueueStats, QueueBroken, ChainError } from "../queue.js";
import { INT_USED_BUFFER } from "../mmio-registers.js";
import { FuseServer } from "./server.js";
import { serveFuseQueue } from "./requests.js";
import {
  C_SEQ, C_KICK, C_STOP, C_ACK, C_IRQ, C_IRQ_SEQ, C_ALIVE, FS_QUEUES, OPS_AT, OP_SLOTS, QUEUE_STAT_KEYS, SERVER_STATS_AT,
  Q_STATE, Q_LAST_AVAIL, Q_USED_IDX, Q_SIGNALLED_USED, Q_PENDING_USED, queueWord,
  type FsThreadData, type ToFsThread, type FromFsThread,
} from "./iothread-protocol.js";
import { Op } from "./fuse.js";

class FsThread {
  private readonly ctl: Int32Array;
  private readonly stats: Float64Array;
  private pool: FramePool | undefined;
  private queues: (VirtQueue | undefined)[] = [];
  private queueStats: QueueStats[] = [];
  /** How this thread raises the used-buffer interrupt itself (undefined: through the main thread). */
  private irqfd: Irqfd | undefined;
  /** The rings failed: nothing more until the driver resets the device. */
  private broken = false;
  /** Queue sets served so far (the main thread counts them too). */
  private activations = 0;

  constructor(private readonly data: FsThreadData, private readonly server: FuseServer) {
    this.ctl = new Int32Array(data.control);
    this.stats = new Float64Array(data.stats);
  }

  run(): void {
    const { ctl } = this;
    for (;;) {
      const seq = Atomics.load(ctl, C_SEQ);
      let serve = false;
      for (let m = receiveMessageOnPort(this.data.port); m; m = receiveMessageOnPort(this.data.port)) {
        const msg = m.message as ToFsThread;
        if (msg.kind === "close") return this.close();
        // Queues going live are served once at once: a kick that came with
        // them may have been taken (and dropped) before the message was.
        if (msg.kind === "activate") serve = this.activate(msg);
        else if (msg.kind === "quiesce") this.quiesce();
        else this.server.reset();
      }
      if (Atomics.exchange(ctl, C_KICK, 0) !== 0) serve = true;
      if (serve) this.serve();
      Atomics.wait(ctl, C_SEQ, seq);
    }
  }

  private activate(msg: Extract<ToFsThread, { kind: "activate" }>): boolean {
    if (msg.pool) this.pool = FramePool.attach(msg.pool);
    if (!this.pool) throw new Error("activate without a frame pool");
    const p2m = P2m.attach(this.pool, msg.p2m);
    if (msg.pages) p2m.usePageSource(PageStore.attach(msg.pages));
    // READ replies land in guest pages: retire code translated from them, as DMA on the main thread does.
    if (msg.codePageMap) CodePageMap.attach(this.pool, p2m, msg.codePageMap);
    const mem = new GuestMemory(p2m);
    this.queueStats = msg.queues.map(() => new QueueStats());
    this.queues = msg.queues.map((q, i) => {
      if (!q) return undefined;
      const queue = new VirtQueue(i, q.config, mem, () => this.interrupt(), this.queueStats[i]);
      queue.setIndices(q.indices);
      return queue;
    });
    this.irqfd = msg.irqfd && new Irqfd(msg.irqfd, this.pool.words);
    this.broken = false;
    this.activations++;
    return true;
  }

  private quiesce(): void {
    for (let i = 0; i < FS_QUEUES; i++) {
      const q = this.queues[i];
      // Where each queue stands, for the main thread's copy of it.
      if (q) {
        const ix = q.indices;
        Atomics.store(this.ctl, queueWord(i, Q_LAST_AVAIL), ix.lastAvail);
        Atomics.store(this.ctl, queueWord(i, Q_USED_IDX), ix.usedIdx);
        Atomics.store(this.ctl, queueWord(i, Q_SIGNALLED_USED), ix.signalledUsed);
        Atomics.store(this.ctl, queueWord(i, Q_PENDING_USED), ix.pendingUsed ? 1 : 0);
      }
      Atomics.store(this.ctl, queueWord(i, Q_STATE), q ? 1 : 0);
    }
    this.queues = [];
    this.irqfd = undefined;
    this.publishStats();
    Atomics.add(this.ctl, C_ACK, 1);
    Atomics.notify(this.ctl, C_ACK);
  }

  /** Every request available now, hiprio first, unless told to stop. */
  private serve(): void {
    const stop = () => Atomics.load(this.ctl, C_STOP) !== 0;
    if (this.broken || stop()) return;
    try {
      this.queues.forEach((q, i) => {
        if (!q) return;
        try {
          serveFuseQueue(this.server, q, i, stop);
        } finally {
          q.notifyDriver();
        }
      });
    } catch (e) {
      // The transport's guarded() on the main thread judges the same errors the same way (mmio.ts).
      this.broken = true;
      const why = e instanceof QueueBroken ? e.message
        : e instanceof ChainError || e instanceof GuestMemoryError ? `${e.message} (not handled by the device)`
        : `internal error in its I/O thread: ${(e as Error).stack ?? String(e)}`;
      this.post({ kind: "needs-reset", why, activation: this.activations });
    }
    this.publishStats();
  }

  /** The driver wants the used-buffer interrupt: raised here (irqfd.ts), or by the main thread. */
  private interrupt(): void {
    if (this.irqfd) return this.irqfd.raise(INT_USED_BUFFER);
    Atomics.store(this.ctl, C_IRQ, 1);
    Atomics.add(this.ctl, C_IRQ_SEQ, 1);
    Atomics.notify(this.ctl, C_IRQ_SEQ);
  }

  private publishStats(): void {
    const { stats } = this;
    this.queueStats.forEach((qs, q) => QUEUE_STAT_KEYS.forEach((k, i) => (stats[q * QUEUE_STAT_KEYS.length + i] = qs[k])));
    const s = this.server.stats;
    const fs = this.server.fs;
    [s.requests, s.errors, s.dropped, s.internalErrors, fs.nodeCount, fs.handleCount].forEach((v, i) => (stats[SERVER_STATS_AT + i] = v));
    for (const [name, n] of Object.entries(s.byOp)) {
      const op = Op[name as keyof typeof Op] as number | undefined;
      stats[OPS_AT + (op !== undefined && op < OP_SLOTS ? op : 0)] = n;
    }
  }

  private close(): void {
    this.queues = [];
    this.server.close();
    this.post({ kind: "closed" });
  }

  private post(msg: FromFsThread): void {
    this.data.port.postMessage(msg);
  }
}

function main(): void {
  const data = workerData as FsThreadData;
  const ctl = new Int32Array(data.control);
  try {
    Atomics.store(ctl, C_ALIVE, 1);
    new FsThread(data, new FuseServer(data.hostDir, data.readOnly, data.umask)).run();
  } finally {
    // Whoever waits for this thread (a quiesce, the interrupt loop) stops waiting.
    Atomics.store(ctl, C_ALIVE, 0);
    Atomics.add(ctl, C_ACK, 1);
    Atomics.notify(ctl, C_ACK);
    Atomics.add(ctl, C_IRQ_SEQ, 1);
    Atomics.notify(ctl, C_IRQ_SEQ);
    data.port.close();
  }
}

main();
