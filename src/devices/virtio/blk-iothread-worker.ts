// A virtio-blk device's I/O thread (as QEMU's iothreads, Cloud Hypervisor's
// per-device threads): it owns the disk image and, while the driver runs,
// its own VirtQueue over the VM's RAM (the host's frame pool and the VM's
// p2m, attached here), and runs the request logic of blk.ts unchanged: it
// pops chains, does the reads, writes and flushes, pushes used entries and
// decides with EVENT_IDX whether the driver wants an interrupt. So a slow
// write or fsync waits here, never on the main thread, whose event loop
// serves every VM's exits. The main thread's side is blk-iothread.ts.
//
// The thread sleeps on its control words (iothread-link.ts); the main thread
// bumps them with every event (a kick, a message). Messages are taken
// between requests only, so when the thread acknowledges a quiesce it has
// finished the request in hand and will not touch guest memory again until
// the next activate.

import { workerData } from "node:worker_threads";
import { openDisk, DiskImageError, type DiskImage } from "../../backends/disk/disk.js";
import { ReadOnlyView, WriteTrackedDisk } from "../../backends/disk/wrappers.js";
import { VirtioBlk } from "./blk.js";
import { VirtQueue, QueueStats } from "./queue.js";
import type { VirtioContext } from "./virtio.js";
import { IoThreadSide } from "./iothread-link.js";
import { QUEUE_STAT_KEYS, BLK_STAT_KEYS, BLK_STATS_AT, type IoThreadData, type IoThreadDiskSpec, type ToIoThread, type FromIoThread } from "./blk-iothread-protocol.js";

/** Bytes of the configuration space handed to the main thread (blk.ts's is 0x3c). */
const CONFIG_BYTES = 0x40;

class IoThread {
  private readonly stats: Float64Array;
  private queue: VirtQueue | undefined;
  private queueStats = new QueueStats();

  constructor(private readonly data: IoThreadData, private readonly link: IoThreadSide, private disk: DiskImage, private readonly blk: VirtioBlk) {
    this.stats = new Float64Array(data.stats);
  }

  run(): void {
    this.link.run((m) => {
      const msg = m as ToIoThread;
      if (msg.kind === "close") {
        this.close();
        return "end";
      }
      // A queue going live is served once at once: a kick that came with it
      // may have been taken (and dropped) before the message was.
      if (msg.kind === "activate") return this.activate(msg);
      if (msg.kind === "reopen") this.reopen(msg.disk);
      else if (msg.kind === "track-writes") this.trackWrites(msg.bitmap, msg.chunkShift);
      else if (msg.kind === "disk-read") this.diskRead(msg);
      else if (msg.kind === "disk-write") this.diskWrite(msg);
      else this.quiesce();
      return false;
    }, () => this.serve());
  }

  private activate(msg: Extract<ToIoThread, { kind: "activate" }>): boolean {
    const mem = this.link.attach(msg.ram);
    this.queueStats = new QueueStats();
    this.queue = new VirtQueue(0, msg.queue, mem, () => this.link.usedBuffer(), this.queueStats);
    // From where the main thread's queue is: 0 for a new one, further on after a pause or a restore.
    this.queue.setIndices(msg.indices);
    const ctx: VirtioContext = { mem, configChanged() {}, requestPoll() {}, usedBuffer() {}, needsReset() {} };
    this.blk.activate(ctx, [this.queue], msg.features);
    return true;
  }

  /** The old image is closed first (flushed: a new overlay may read it as its backing file). */
  private reopen(spec: IoThreadDiskSpec): void {
    const old = this.disk;
    const again = { path: old.path, format: old.format, readOnly: old.readOnly, cache: this.data.disk.cache };
    let error: string | undefined;
    let next: DiskImage | undefined;
    try {
      if (this.queue) throw new Error("reopen while a queue is served");
      old.close();
      try {
        next = openDisk(spec.path, { format: spec.format, readOnly: spec.readOnly, cache: spec.cache });
        this.blk.replaceDisk(next);
      } catch (e) {
        next?.close();
        error = (e as Error).message;
        next = openDisk(again.path, { format: again.format, readOnly: again.readOnly, cache: again.cache });
        this.blk.replaceDisk(next);
      }
      this.disk = next;
    } catch (e) {
      error ??= (e as Error).message;
    }
    const d = this.disk;
    this.post({ kind: "reopened", disk: { path: d.path, format: d.format, readOnly: d.readOnly }, error });
  }

  private trackWrites(bitmap: SharedArrayBuffer | null, chunkShift: number): void {
    const bare = this.disk instanceof WriteTrackedDisk ? this.disk.inner : this.disk;
    const next = bitmap ? new WriteTrackedDisk(bare, bitmap, chunkShift) : bare;
    this.blk.replaceDisk(next);
    this.disk = next;
  }

  private diskRead(msg: Extract<ToIoThread, { kind: "disk-read" }>): void {
    try {
      const data = new Uint8Array(msg.length);
      this.disk.read(msg.offset, data);
      this.data.port.postMessage({ kind: "disk-done", id: msg.id, data } satisfies FromIoThread, [data.buffer]);
    } catch (e) {
      this.post({ kind: "disk-done", id: msg.id, error: (e as Error).message });
    }
  }

  /** Into the image under a ReadOnlyView (a copied read-only disk), never while the guest's queue is served. */
  private diskWrite(msg: Extract<ToIoThread, { kind: "disk-write" }>): void {
    try {
      if (this.queue) throw new Error("disk-write while the request queue is served");
      let image = this.disk instanceof WriteTrackedDisk ? this.disk.inner : this.disk;
      if (image instanceof ReadOnlyView) image = image.inner;
      if (msg.data) image.write(msg.offset, msg.data);
      else image.writeZeroes(msg.offset, msg.zeroes ?? 0, true);
      this.post({ kind: "disk-done", id: msg.id });
    } catch (e) {
      this.post({ kind: "disk-done", id: msg.id, error: (e as Error).message });
    }
  }

  private quiesce(): void {
    this.blk.reset();
    this.publishStats();
    // Where the queue stands goes to the main thread's copy of it (a snapshot saves that one).
    this.link.acknowledgeStop([this.queue], 1);
    this.queue = undefined;
  }

  /** Every request available now (blk.ts notify), unless told to stop. */
  private serve(): void {
    if (!this.queue) return;
    try {
      this.blk.notify(0);
    } catch (e) {
      this.link.ringsBroken(e);
    }
    this.publishStats();
  }

  private publishStats(): void {
    QUEUE_STAT_KEYS.forEach((k, i) => (this.stats[i] = this.queueStats[k]));
    BLK_STAT_KEYS.forEach((k, i) => (this.stats[BLK_STATS_AT + i] = this.blk.stats[k]));
  }

  private close(): void {
    this.blk.reset();
    this.queue = undefined;
    let error: string | undefined;
    try {
      this.disk.close();
    } catch (e) {
      error = (e as Error).message;
    }
    this.post({ kind: "closed", error });
  }

  private post(msg: FromIoThread): void {
    this.data.port.postMessage(msg);
  }
}

function main(): void {
  const data = workerData as IoThreadData;
  const link = new IoThreadSide(data.control, data.port);
  const post = (msg: FromIoThread) => data.port.postMessage(msg);
  let disk: DiskImage;
  let blk: VirtioBlk;
  try {
    const copyReadOnly = data.disk.importCopy === true && data.disk.readOnly === true;
    disk = openDisk(data.disk.path, { format: data.disk.format, readOnly: copyReadOnly ? false : data.disk.readOnly, cache: data.disk.cache });
    if (copyReadOnly) disk = new ReadOnlyView(disk);
  } catch (e) {
    post({ kind: "open-failed", message: (e as Error).message, diskError: e instanceof DiskImageError });
    data.port.close();
    return;
  }
  try {
    blk = new VirtioBlk(disk, { name: data.name, serial: data.serial, stopRequested: () => link.stopRequested });
  } catch (e) {
    disk.close();
    post({ kind: "open-failed", message: (e as Error).message, diskError: false });
    data.port.close();
    return;
  }
  const config = new Uint8Array(CONFIG_BYTES);
  for (let i = 0; i < CONFIG_BYTES; i++) config[i] = blk.readConfig(i, 1);
  post({ kind: "ready", features: blk.features, config, disk: { path: disk.path, format: disk.format, readOnly: disk.readOnly } });
  try {
    new IoThread(data, link, disk, blk).run();
  } catch (e) {
    // A bug here: the disk is closed all the same (whatever was flushed stays), the main thread hears of it.
    try {
      disk.close();
    } catch {
      // the error that ended the thread is the one to report
    }
    throw e;
  } finally {
    // Whoever waits for this thread (a quiesce, the interrupt loop) stops waiting.
    link.ended();
    data.port.close();
  }
}

main();
