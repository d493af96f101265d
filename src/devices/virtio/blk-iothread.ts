// virtio-blk with its requests served on an I/O thread (blk-iothread-worker.ts),
// so the main thread, which serves every VM's exits in a host, never waits
// for a disk. This is the device the transport sees on the main thread: it
// answers features and configuration space itself (the I/O thread's VirtioBlk
// computed them when it opened the disk) and hands the request queue to the
// thread when the driver makes it live. While the thread holds the queue
// (C_ARMED), a vCPU's worker kicks it on QueueNotify itself and the thread
// raises the used-buffer interrupt itself (vmm/queue-doorbell.ts DirectKick,
// host/irqfd.ts): a request needs nothing from the main thread. The control
// words (C_*) and the handshakes below are every I/O thread's
// (iothread-link.ts; a shared folder's thread works the same way).
//
//   main thread (transport, this)            I/O thread (VirtioBlk, its VirtQueue)
//   activate / new queue  -- "activate" -->  attach pool + p2m, build the queue, C_ARMED = 1
//   (vCPU's worker: QueueNotify -- C_KICK)   pop, read/write/flush, push
//   notify(0), not armed  -- C_KICK ----->
//                                            notifyDriver (EVENT_IDX decides): irqfd raises it,
//   usedBuffer(0)         <-- C_IRQ -----    or, with no route to the harts yet, the main thread
//   reset / queue stopped -- C_STOP + "quiesce", wait for C_ACK (synchronous)
//   VM teardown           -- the same, awaited (quiesce())
//   snapshot pause        -- the same, awaited (pauseIo()); the thread writes its queue's
//                            indices into control words, the main thread's VirtQueue takes them
//   resume / restore      -- "activate" with the queue's indices: the thread goes on from them
//   close                 -- "close": the thread closes the disk and ends
//
// A reset returns only once the thread has finished the request in hand and
// dropped the queue: the driver takes reset as complete when its status
// write returns (virtio 1.2, 2.4 and 4.2.3.1), so that wait (one request at
// most, the rest stay in the ring) is on the main thread, as QEMU drains a
// device's in-flight requests on reset.

import { MessageChannel, type MessagePort, type Worker } from "node:worker_threads";
import { startWorker } from "../../worker-script.js";
import { DiskImageError } from "../../backends/disk/types.js";
import type { VirtioDevice, VirtioContext } from "./virtio.js";
import type { DirectKick } from "../../vmm/queue-doorbell.js";
import { VIRTIO_ID_BLOCK } from "./virtio.js";
import { checkNoneInFlight, type VirtQueue, type QueueStats } from "./queue.js";
import type { Plain, StateReader } from "../../snapshot/state.js";
import { QUEUE_SIZE, blkStatsLine, type BlkStats, type VirtioBlkOptions } from "./blk.js";
import { IoThreadLink, newControl } from "./iothread-link.js";
import {
  STAT_WORDS, QUEUE_STAT_KEYS, BLK_STAT_KEYS, BLK_STATS_AT,
  type IoThreadData, type IoThreadDiskSpec, type FromIoThread, type ToIoThread,
} from "./blk-iothread-protocol.js";

export type { IoThreadDiskSpec } from "./blk-iothread-protocol.js";

export class IoThreadBlk implements VirtioDevice {
  readonly deviceId = VIRTIO_ID_BLOCK;
  readonly queueMaxSizes = [QUEUE_SIZE];
  readonly features: bigint;
  /** While the thread serves the request queue, vCPUs' workers kick it themselves (ioeventfd). */
  readonly directKick: DirectKick;

  /** Serving the request queue (the transport's VirtQueue). */
  private readonly link: IoThreadLink<VirtQueue>;
  private readonly stats: Float64Array;
  private ctx: VirtioContext | undefined;
  private queues: readonly (VirtQueue | undefined)[] = [];
  private negotiated = 0n;
  /** The transport's counts of the last queue served, and their values when it went live. */
  private statsOf: QueueStats | undefined;
  private statsBase: Record<(typeof QUEUE_STAT_KEYS)[number], number> | undefined;
  private ended: string | undefined;
  private closing: Promise<void> | undefined;
  private closedReply: ((error: string | undefined) => void) | undefined;
  private reopenReply: ((msg: Extract<FromIoThread, { kind: "reopened" }> | string) => void) | undefined;
  /** disk-read / disk-write messages awaiting the thread's "disk-done". */
  private readonly diskOps = new Map<number, { resolve(data: Uint8Array | undefined): void; reject(e: Error): void }>();
  private nextDiskOp = 1;
  private readonly exited: Promise<void>;
  /** The configuration space, as the thread's VirtioBlk computed it. */
  private readonly config: Uint8Array;

  private constructor(
    readonly name: string,
    worker: Worker,
    private readonly port: MessagePort,
    control: SharedArrayBuffer,
    stats: SharedArrayBuffer,
    ready: Extract<FromIoThread, { kind: "ready" }>,
    private disk: { path: string; format: "raw" | "qcow2"; readOnly: boolean },
  ) {
    this.link = new IoThreadLink(control, port, worker);
    this.directKick = this.link.directKick(0);
    this.stats = new Float64Array(stats);
    this.features = ready.features;
    this.config = ready.config;
    this.exited = new Promise((resolve) => worker.once("exit", () => resolve()));
    worker.on("exit", () => this.threadEnded(`${this.name}: its I/O thread ended`));
    worker.on("error", (e) => this.threadEnded(`${this.name}: its I/O thread failed: ${e.message}`));
    port.on("message", (msg: FromIoThread) => this.onMessage(msg));
    port.unref();
    worker.unref();
    void this.link.relayInterrupts(() => this.ctx?.usedBuffer(0));
  }

  /**
   * Start the I/O thread and open the disk there. Rejects with the disk's
   * own DiskImageError (no such file, a bad qcow2 header) as openDisk would.
   */
  static async open(disk: IoThreadDiskSpec, opts: Omit<VirtioBlkOptions, "stopRequested">): Promise<IoThreadBlk> {
    const control = newControl(1);
    const stats = new SharedArrayBuffer(STAT_WORDS * 8);
    const { port1, port2 } = new MessageChannel();
    const data: IoThreadData = { control, stats, port: port2, disk, name: opts.name, serial: opts.serial };
    const worker = startWorker(new URL("./blk-iothread-worker.js", import.meta.url), { workerData: data, transferList: [port2] });
    const first = await new Promise<FromIoThread | Error>((resolve) => {
      port1.once("message", resolve);
      worker.once("error", resolve);
      worker.once("exit", (code) => resolve(new Error(`${opts.name}: its I/O thread exited (status ${code}) before opening ${disk.path}`)));
    });
    if (first instanceof Error || first.kind !== "ready") {
      port1.close();
      await worker.terminate();
      if (first instanceof Error) throw first;
      if (first.kind === "open-failed") throw first.diskError ? new DiskImageError(first.message) : new RangeError(first.message);
      throw new Error(`${opts.name}: unexpected first message from its I/O thread: ${first.kind}`);
    }
    return new IoThreadBlk(opts.name, worker, port1, control, stats, first, first.disk);
  }

  // ---- what the transport asks --------------------------------------------------------

  readConfig(offset: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) {
      const at = offset + i;
      v = v * 256 + (at >= 0 && at < this.config.length ? this.config[at] : 0);
    }
    return v;
  }

  /** Nothing in this configuration space is writable (as blk.ts). */
  writeConfig(): void {}

  activate(ctx: VirtioContext, queues: readonly (VirtQueue | undefined)[], features: bigint): void {
    this.ctx = ctx;
    this.queues = queues;
    this.negotiated = features;
    if (!ctx.shared) return ctx.needsReset(`${this.name}: its I/O thread needs the VM's RAM shared (a VM in a host)`);
    if (this.ended) return ctx.needsReset(this.ended);
    const q = queues[0];
    if (q && !this.link.paused) this.serve(q);
  }

  notify(index: number): void {
    // The queue is looked up each time, as blk.ts does: the driver may have set it up again since.
    const q = index === 0 ? this.queues[0] : undefined;
    if (!q || !this.ctx?.shared || this.ended || this.link.paused) return;
    if (q !== this.link.served) this.serve(q);
    this.link.kick();
  }

  reset(): void {
    this.ctx = undefined;
    this.queues = [];
    this.negotiated = 0n;
    this.stopSync();
  }

  queueStopped(index: number): void {
    if (index === 0) this.stopSync();
  }

  /** The VM's RAM goes away: the thread finishes its request in hand and lets go (awaited, the main thread serves on). */
  async quiesce(): Promise<void> {
    this.ctx = undefined;
    this.queues = [];
    await this.link.quiesce();
    this.stopped();
  }

  // ---- snapshots -----------------------------------------------------------------------

  /**
   * The thread finishes the request in hand (the rest stay in the ring), lets
   * go of the queue and reports its indices, which go into the transport's
   * VirtQueue (saved by the transport's saveState). An interrupt it asked
   * for on the way is raised, so InterruptStatus is saved with it.
   */
  async pauseIo(): Promise<void> {
    // False: resumed (or paused again) meanwhile; the thread may serve again, this pause is over.
    if (!(await this.link.pause())) return;
    if (this.link.takeInterrupt()) this.ctx?.usedBuffer(0);
    this.stopped();
  }

  /** The image the thread serves. */
  get image(): { path: string; format: "raw" | "qcow2"; readOnly: boolean } {
    return this.disk;
  }

  /**
   * Between pauseIo() and resumeIo() (or before the driver runs): the thread
   * closes its image, flushed, and serves `disk` (of the same size) instead.
   * Rejects with DiskImageError when that does not open or fit; the old
   * image is served again then.
   */
  async reopen(disk: IoThreadDiskSpec): Promise<void> {
    if (this.link.served || this.link.stopPending) throw new Error(`${this.name}: reopen() while its I/O thread serves the queue (pauseIo() first)`);
    if (this.ended) throw new DiskImageError(this.ended);
    if (this.reopenReply) throw new Error(`${this.name}: reopen() while one is under way`);
    try {
      const reply = await this.link.holding(() => new Promise<Extract<FromIoThread, { kind: "reopened" }> | string>((resolve) => {
        this.reopenReply = resolve;
        this.post({ kind: "reopen", disk });
      }));
      if (typeof reply === "string") throw new DiskImageError(reply);
      this.disk = reply.disk;
      if (reply.error !== undefined) throw new DiskImageError(reply.error);
    } finally {
      this.reopenReply = undefined;
    }
  }

  // ---- migration with the disk copied along (snapshot/migration/disk-copy.ts) ----

  /** The disk's size in bytes (its capacity in the configuration space, virtio 1.2 5.2.4). */
  get capacityBytes(): number {
    return Number(new DataView(this.config.buffer, this.config.byteOffset).getBigUint64(0, true)) * 512;
  }

  /**
   * From now on the thread sets a bit for every chunk of 2^chunkShift bytes
   * the guest changes, once the change is in the image; the caller takes
   * them with Atomics. stopTrackingWrites() ends it.
   */
  trackWrites(chunkShift: number): Int32Array {
    const chunks = Math.ceil(this.capacityBytes / 2 ** chunkShift);
    const bitmap = new SharedArrayBuffer(Math.max(1, Math.ceil(chunks / 32)) * 4);
    this.post({ kind: "track-writes", bitmap, chunkShift });
    return new Int32Array(bitmap);
  }

  stopTrackingWrites(): void {
    if (!this.ended) this.post({ kind: "track-writes", bitmap: null, chunkShift: 0 });
  }

  /** The disk's bytes, read by the thread between requests (so never half a guest write). */
  async readDisk(offset: number, length: number): Promise<Uint8Array> {
    const data = await this.diskOp({ kind: "disk-read", id: 0, offset, length });
    if (!data || data.length !== length) throw new DiskImageError(`${this.name}: its I/O thread read ${data?.length ?? 0} bytes of ${length}`);
    return data;
  }

  /** Fill the image (a migration's copy, before the guest runs here); `data` is handed over to the thread. */
  async writeDisk(offset: number, data: Uint8Array): Promise<void> {
    await this.diskOp({ kind: "disk-write", id: 0, offset, data }, [data.buffer as ArrayBuffer]);
  }

  async writeDiskZeroes(offset: number, length: number): Promise<void> {
    await this.diskOp({ kind: "disk-write", id: 0, offset, zeroes: length });
  }

  private diskOp(msg: Extract<ToIoThread, { kind: "disk-read" | "disk-write" }>, transfer: ArrayBuffer[] = []): Promise<Uint8Array | undefined> {
    if (this.ended) return Promise.reject(new DiskImageError(this.ended));
    const id = this.nextDiskOp++;
    return new Promise((resolve, reject) => {
      this.diskOps.set(id, { resolve, reject });
      this.link.post({ ...msg, id }, transfer);
    });
  }

  /** Hand the queue to the thread again, from the indices it reported (or the restored ones). */
  resumeIo(): void {
    if (!this.link.resume()) return;
    const q = this.queues[0];
    if (q && this.ctx?.shared && !this.ended) this.serve(q);
  }

  /**
   * Nothing of its own: after pauseIo() the thread holds no request, and
   * the queue's indices are the transport's VirtQueue's (the thread starts
   * from them again on resume or restore). Negotiated features come back
   * through activate(); the disk is reopened by the caller; counters are not saved.
   */
  saveState(): Plain {
    if (this.link.served) throw new Error(`${this.name}: saveState() while its I/O thread serves the queue (pauseIo() first)`);
    return {};
  }

  restoreState(r: StateReader): void {
    checkNoneInFlight(r, this.queues[0]);
  }

  /** Wait for the request in flight, close the disk in the thread and end it. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  syncStats(): void {
    if (!this.statsOf || !this.statsBase) return;
    this.statsOf.notifications += this.link.takeKicks();
    QUEUE_STAT_KEYS.forEach((k, i) => (this.statsOf![k] = this.statsBase![k] + this.stats[i]));
  }

  statsLines(): string[] {
    const s = {} as BlkStats;
    BLK_STAT_KEYS.forEach((k, i) => (s[k] = this.stats[BLK_STATS_AT + i]));
    return [blkStatsLine(this.name, this.disk, s)];
  }

  // ---- the thread ------------------------------------------------------------------------

  /** Hand queue `q` to the thread (after it has let go of any other). */
  private serve(q: VirtQueue): void {
    this.stopSync();
    // The thread is idle: its counters are ours to reset.
    this.stats.fill(0, 0, QUEUE_STAT_KEYS.length);
    this.statsOf = q.stats;
    this.statsBase = Object.fromEntries(QUEUE_STAT_KEYS.map((k) => [k, q.stats[k]])) as typeof this.statsBase;
    this.link.activate(q, { kind: "activate", ram: this.link.ram(this.ctx!), features: this.negotiated, queue: { ...q.config }, indices: q.indices } satisfies ToIoThread);
  }

  /** Stop the thread if it serves the queue and wait for every stop sent; the transport's queue goes on from where it left it. */
  private stopSync(): void {
    this.link.stopSync();
    this.stopped();
  }

  /** After a stop: an interrupt the thread asked for before it is moot; the counts are final. */
  private stopped(): void {
    const q = this.link.takeStopped();
    if (!q) return; // taken already (a stopSync() came first), or none sent
    this.link.takeInterrupt();
    this.syncStats();
    const left = this.link.takeIndices(0);
    if (!left) return;
    // The thread's queue went this far: the transport's copy (what a snapshot saves) follows.
    q.setIndices(left.indices);
    // Broken rings the thread's message has not told of yet (a pause came first): DEVICE_NEEDS_RESET now.
    if (left.broken && this.link.pausePending) this.ctx?.needsReset(`${this.name}: its I/O thread found the request queue broken`);
  }

  private post(msg: ToIoThread): void {
    this.link.post(msg);
  }

  private onMessage(msg: FromIoThread): void {
    if (msg.kind === "needs-reset") {
      if (this.link.current(msg)) this.ctx?.needsReset(`${this.name}: ${msg.why}`);
    } else if (msg.kind === "closed") {
      this.closedReply?.(msg.error);
    } else if (msg.kind === "reopened") {
      this.reopenReply?.(msg);
    } else if (msg.kind === "disk-done") {
      const op = this.diskOps.get(msg.id);
      this.diskOps.delete(msg.id);
      if (msg.error !== undefined) op?.reject(new DiskImageError(`${this.name}: ${msg.error}`));
      else op?.resolve(msg.data);
    }
  }

  private threadEnded(why: string): void {
    if (this.ended) return;
    this.ended = why;
    this.link.ended();
    this.closedReply?.(undefined);
    this.reopenReply?.(why);
    for (const op of this.diskOps.values()) op.reject(new DiskImageError(why));
    this.diskOps.clear();
    if (!this.closing && this.link.served) this.ctx?.needsReset(why);
  }

  private async doClose(): Promise<void> {
    if (this.ended) return;
    await this.quiesce();
    // Until the thread has closed the disk, the process must not end under it.
    const error = await this.link.holding(async () => {
      const reply = new Promise<string | undefined>((resolve) => (this.closedReply = resolve));
      this.post({ kind: "close" });
      const closed = await reply;
      await this.exited;
      return closed;
    });
    this.port.close();
    if (error) throw new DiskImageError(error);
  }
}
