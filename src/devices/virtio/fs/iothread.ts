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
//   restored from a snapshot -- "session": the INIT agreed before it, the tables opened again
//   paused (a snapshot may follow) -- "export" --> the session and HostFs.exportTable()
//                                   <-- "table" --
//   close                    -- "close": the thread closes its fds and ends
//
// A reset returns only once the thread has finished the request in hand and
// dropped the queues: the driver takes reset as complete when its status
// write returns (virtio 1.2, 2.4 and 4.2.3.1).

import { MessageChannel, type MessagePort, type Worker } from "node:worker_threads";
import { startWorker } from "../../../worker-script.js";
import type { VirtioContext } from "../virtio.js";
import type { DirectKick } from "../../../vmm/queue-doorbell.js";
import type { VirtQueue } from "../queue.js";
import { Op } from "./fuse.js";
import { processUmask, type FuseSession, type ServerStats } from "./server.js";
import { closeReopened, type ExportedTable, type ReopenedTable } from "./saved-table.js";
import { IoThreadLink, newControl } from "../iothread-link.js";
import {
  STAT_WORDS, DIRECT_QUEUE, FS_QUEUES, QUEUE_STAT_KEYS, SERVER_STAT_KEYS, SERVER_STATS_AT, OPS_AT, OP_SLOTS,
  type FsThreadData, type ToFsThread, type FromFsThread,
} from "./iothread-protocol.js";

/** What a snapshot keeps of the thread's server: the session INIT agreed and the tables. */
type SessionAndTables = ExportedTable & { init: FuseSession | undefined };

/** How long close() waits for the thread to close its fds before ending it. */
const CLOSE_WAIT_MS = 2000;

type QueueCounts = Record<(typeof QUEUE_STAT_KEYS)[number], number>;

export class FsIoThread {
  /** While the thread serves the queues, vCPUs' workers kick the request queue straight (ioeventfd). */
  readonly directKick: DirectKick;
  /** Serving the queues by index (the transport's VirtQueues, undefined where one is not live). */
  private readonly link: IoThreadLink<(VirtQueue | undefined)[]>;
  private readonly counters: Float64Array;
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private ctx: VirtioContext | undefined;
  private queues: readonly (VirtQueue | undefined)[] = [];
  /** The transport's counts of the queues served, and their values when they went to the thread. */
  private countsOf: { queue: VirtQueue; base: QueueCounts }[] = [];
  private ended: string | undefined;
  private closing: Promise<void> | undefined;
  private closedReply: (() => void) | undefined;
  /** The tables the last pause fetched, and the answer awaited. */
  private fetched: SessionAndTables | undefined;
  private tableReply: ((t: SessionAndTables | undefined) => void) | undefined;
  private tableRequest: Promise<SessionAndTables | undefined> | undefined;
  private readonly exited: Promise<void>;

  constructor(private readonly name: string, hostDir: string, readOnly: boolean) {
    const control = newControl(FS_QUEUES);
    this.counters = new Float64Array(new SharedArrayBuffer(STAT_WORDS * 8));
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    const data: FsThreadData = { control, stats: this.counters.buffer as SharedArrayBuffer, port: port2, hostDir, readOnly, umask: processUmask() };
    this.worker = startWorker(new URL("./worker.js", import.meta.url), { workerData: data, transferList: [port2] });
    this.link = new IoThreadLink(control, port1, this.worker);
    this.directKick = this.link.directKick(DIRECT_QUEUE);
    this.exited = new Promise((resolve) => this.worker.once("exit", () => resolve()));
    this.worker.on("exit", () => this.threadEnded(`${name}: its I/O thread ended`));
    this.worker.on("error", (e) => this.threadEnded(`${name}: its I/O thread failed: ${e.message}`));
    this.port.on("message", (msg: FromFsThread) => this.onMessage(msg));
    this.port.unref();
    this.worker.unref();
    void this.link.relayInterrupts(() => this.ctx?.usedBuffer(DIRECT_QUEUE));
  }

  // ---- what the device forwards from the transport --------------------------------------

  activate(ctx: VirtioContext, queues: readonly (VirtQueue | undefined)[]): void {
    this.ctx = ctx;
    this.queues = queues;
    if (!ctx.shared) return ctx.needsReset(`${this.name}: its I/O thread needs the VM's RAM shared (a VM in a host)`);
    if (this.ended) return ctx.needsReset(this.ended);
    if (!this.link.paused) this.serve();
  }

  notify(): void {
    if (!this.ctx?.shared || this.ended || this.link.paused) return;
    // The queues are looked up each time: the driver may have set one up again since.
    if (this.queuesChanged()) this.serve();
    this.link.kick();
  }

  queueStopped(index: number): void {
    if (!this.link.served?.[index]) return;
    this.stopSync();
    // The other queue goes on: requests waiting in it were notified already.
    if (this.ctx?.shared && !this.ended && !this.link.paused && this.queues.some((q) => q)) this.serve();
  }

  /** Device reset: the thread lets go of the queues, then forgets the guest's nodes and handles. */
  reset(): void {
    this.ctx = undefined;
    this.queues = [];
    this.stopSync();
    if (!this.ended) this.link.post({ kind: "reset" } satisfies ToFsThread);
  }

  /** The VM's RAM goes away: the thread finishes its request in hand and lets go (awaited, the main thread serves on). */
  async quiesce(): Promise<void> {
    this.ctx = undefined;
    this.queues = [];
    await this.link.quiesce();
    this.stopped();
  }

  /** The thread finishes the request in hand (the rest stay in the rings) and reports the queues' indices; a snapshot may follow, so it sends its session and tables. */
  async pauseIo(): Promise<void> {
    this.fetched = undefined;
    if (!(await this.link.pause())) return;
    if (this.link.takeInterrupt()) this.ctx?.usedBuffer(DIRECT_QUEUE);
    this.stopped();
    if (!this.ended) this.fetched = await this.fetchTables();
  }

  /** The thread's tables (one request at a time: a second pause meanwhile waits for the same answer). */
  private fetchTables(): Promise<SessionAndTables | undefined> {
    this.tableRequest ??= this.link.holding(() => new Promise<SessionAndTables | undefined>((resolve) => {
      this.tableReply = (t) => {
        this.tableRequest = undefined;
        this.tableReply = undefined;
        resolve(t);
      };
      this.link.post({ kind: "export" } satisfies ToFsThread);
    }));
    return this.tableRequest;
  }

  resumeIo(): void {
    if (!this.link.resume()) return;
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

  /** A restored device: the thread's server goes on with the session and the tables its snapshot kept (before the queues go live). */
  restoreSession(init: FuseSession | undefined, table?: ReopenedTable): void {
    if (this.ended) {
      if (table) closeReopened(table);
      return;
    }
    this.link.post({ kind: "session", init, ...(table ? { table } : {}) } satisfies ToFsThread);
  }

  /** The session and tables pauseIo() fetched for a snapshot; undefined when the thread could not give them. */
  get exported(): SessionAndTables | undefined {
    return this.fetched;
  }

  /** The transport's queue counts, brought up to date with the thread's. */
  syncStats(): void {
    for (const { queue, base } of this.countsOf) {
      const at = queue.index * QUEUE_STAT_KEYS.length;
      QUEUE_STAT_KEYS.forEach((k, i) => (queue.stats[k] = base[k] + this.counters[at + i]));
      if (queue.index === DIRECT_QUEUE) queue.stats.notifications += this.link.takeKicks();
    }
  }

  // ---- the thread ------------------------------------------------------------------------

  private queuesChanged(): boolean {
    for (let i = 0; i < FS_QUEUES; i++) if (this.queues[i] !== this.link.served?.[i]) return true;
    return false;
  }

  /** Hand the live queues to the thread (after it has let go of any others). */
  private serve(): void {
    this.stopSync();
    // The thread is idle: its counters are ours to reset.
    this.counters.fill(0, 0, FS_QUEUES * QUEUE_STAT_KEYS.length);
    const live = Array.from({ length: FS_QUEUES }, (_, i) => this.queues[i]);
    this.countsOf = live.flatMap((queue) => (queue ? [{ queue, base: Object.fromEntries(QUEUE_STAT_KEYS.map((k) => [k, queue.stats[k]])) as QueueCounts }] : []));
    this.link.activate(live, {
      kind: "activate", ram: this.link.ram(this.ctx!), queues: live.map((q) => q && { config: { ...q.config }, indices: q.indices }),
    } satisfies ToFsThread);
  }

  /** Stop the thread if it serves queues and wait for every stop sent; the transport's queues go on from where it left them. */
  private stopSync(): void {
    this.link.stopSync();
    this.stopped();
  }

  /** After a stop: an interrupt asked for before it is moot; the counts are final; the transport's queues go on from the thread's indices. */
  private stopped(): void {
    const queues = this.link.takeStopped();
    if (!queues) return; // taken already (a stopSync() came first), or none sent
    this.link.takeInterrupt();
    this.syncStats();
    this.countsOf = [];
    for (let i = 0; i < FS_QUEUES; i++) {
      const left = this.link.takeIndices(i);
      if (left) queues[i]?.setIndices(left.indices);
    }
  }

  private onMessage(msg: FromFsThread): void {
    if (msg.kind === "needs-reset") {
      if (this.link.current(msg)) this.ctx?.needsReset(`${this.name}: ${msg.why}`);
    } else if (msg.kind === "table") {
      this.tableReply?.({ init: msg.init, table: msg.table, lost: msg.lost });
    } else {
      this.closedReply?.();
    }
  }

  private threadEnded(why: string): void {
    if (this.ended) return;
    this.ended = why;
    this.tableReply?.(undefined);
    this.link.ended();
    this.closedReply?.();
    if (!this.closing && this.link.served) this.ctx?.needsReset(why);
  }

  private async doClose(): Promise<void> {
    if (this.ended) return;
    await this.quiesce();
    // Until the thread has closed its fds, the process must not end under it; a host call that hangs is not waited for long.
    let timer: NodeJS.Timeout | undefined;
    await this.link.holding(() => new Promise<void>((resolve) => {
      this.closedReply = resolve;
      timer = setTimeout(resolve, CLOSE_WAIT_MS);
      this.link.post({ kind: "close" } satisfies ToFsThread);
    }));
    clearTimeout(timer);
    await this.worker.terminate();
    await this.exited;
    this.port.close();
  }
}
