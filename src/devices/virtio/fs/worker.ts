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
// The thread sleeps on its control words (../iothread-link.ts). Messages are
// taken between requests only, so when it acknowledges a quiesce it has
// finished the request in hand and will not touch guest memory again until
// the next activate.

import { workerData } from "node:worker_threads";
import { VirtQueue, QueueStats } from "../queue.js";
import { IoThreadSide } from "../iothread-link.js";
import { FuseServer, type FuseSession } from "./server.js";
import type { ReopenedTable } from "./saved-table.js";
import { serveFuseQueue } from "./requests.js";
import { Op } from "./fuse.js";
import { FS_QUEUES, OPS_AT, OP_SLOTS, QUEUE_STAT_KEYS, SERVER_STATS_AT, type FsThreadData, type ToFsThread, type FromFsThread } from "./iothread-protocol.js";

class FsThread {
  private readonly stats: Float64Array;
  private queues: (VirtQueue | undefined)[] = [];
  private queueStats: QueueStats[] = [];

  constructor(private readonly data: FsThreadData, private readonly link: IoThreadSide, private readonly server: FuseServer) {
    this.stats = new Float64Array(data.stats);
  }

  run(): void {
    this.link.run((m) => {
      const msg = m as ToFsThread;
      if (msg.kind === "close") {
        this.close();
        return "end";
      }
      // Queues going live are served once at once: a kick that came with
      // them may have been taken (and dropped) before the message was.
      if (msg.kind === "activate") return this.activate(msg);
      if (msg.kind === "quiesce") this.quiesce();
      else if (msg.kind === "session") this.restoreSession(msg.init, msg.table);
      else if (msg.kind === "export") this.post({ kind: "table", init: this.server.init, ...this.server.fs.exportTable() });
      else this.resetSession();
      return false;
    }, () => this.serve());
  }

  private activate(msg: Extract<ToFsThread, { kind: "activate" }>): boolean {
    const mem = this.link.attach(msg.ram);
    this.queueStats = msg.queues.map(() => new QueueStats());
    this.queues = msg.queues.map((q, i) => {
      if (!q) return undefined;
      const queue = new VirtQueue(i, q.config, mem, () => this.link.usedBuffer(), this.queueStats[i]);
      queue.setIndices(q.indices);
      return queue;
    });
    return true;
  }

  /** Device reset (published at once, as below). */
  private resetSession(): void {
    this.server.reset();
    this.publishStats();
  }

  /** A restored device goes on with the session and tables its snapshot kept (the counts published at once). */
  private restoreSession(init: FuseSession | undefined, table: ReopenedTable | undefined): void {
    this.server.init = init;
    if (table) this.server.fs.adopt(table);
    this.publishStats();
  }

  private quiesce(): void {
    this.publishStats();
    this.link.acknowledgeStop(this.queues, FS_QUEUES);
    this.queues = [];
  }

  /** Every request available now, hiprio first, unless told to stop. */
  private serve(): void {
    const stop = () => this.link.stopRequested;
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
      this.link.ringsBroken(e);
    }
    this.publishStats();
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
  const link = new IoThreadSide(data.control, data.port);
  try {
    new FsThread(data, link, new FuseServer(data.hostDir, data.readOnly, data.umask)).run();
  } finally {
    link.ended();
    data.port.close();
  }
}

main();
