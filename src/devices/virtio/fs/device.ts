// virtio-fs, the file system device (virtio 1.2, 5.11): a host directory the
// guest mounts with `mount -t virtiofs TAG DIR`. Queue 0 is the hiprio queue
// (FORGET and BATCH_FORGET, which get no reply), queues 1.. the request
// queues; each chain is a FUSE request (device-readable) and room for its
// reply (device-writable). Configuration space: tag[36] (UTF-8, NUL-padded),
// num_request_queues u32. No feature bits (no notification queue, no DAX
// window).
//
// Where the host file calls run (`thread`):
// - "worker" (what `tsvisor run --share` and the daemon use): the FUSE server
//   lives on its own I/O thread (worker.ts). notify() copies each request out
//   of guest memory and posts it; replies come back in order and are written
//   into their chains and completed on the main thread as they arrive. A
//   slow host filesystem stalls only this device's requests. The hop costs
//   latency: about 1 ms more per request than "main" on a busy 2-core host.
// - "main": the server runs synchronously within notify() on the main
//   thread. Simple and deterministic, which is what the FUSE-level tests
//   use; a slow host call there would stall the I/O side of every VM.
//
// Snapshots and migration: the node ids the guest holds name host inodes
// through open fds, which a snapshot cannot carry (QEMU's vhost-user-fs
// refuses migration for the same reason). saveState() refuses with one
// line, and the daemon refuses before pausing (api/managed-vm.ts).

import { Worker } from "node:worker_threads";
import type { VirtioDevice, VirtioContext } from "../virtio.js";
import { ChainError, type VirtQueue, type DescriptorChain } from "../queue.js";
import { SnapshotError, type Plain } from "../../../snapshot/state.js";
import { FuseServer, MAX_REQUEST, processUmask, type ServerStats } from "./server.js";
import type { FromWorker, ToWorker } from "./worker.js";
import { IN_HEADER_SIZE } from "./fuse.js";

export const VIRTIO_ID_FS = 26;
export const TAG_SIZE = 36;
const QUEUE_SIZE = 128;
/** Request queues offered (num_request_queues): one, served in order. */
const REQUEST_QUEUES = 1;

export interface VirtioFsOptions {
  /** The mount tag the guest names (at most 36 bytes of UTF-8). */
  tag: string;
  hostDir: string;
  readOnly?: boolean;
  name?: string;
  /** Where the host file calls run (see above); default "worker". */
  thread?: "worker" | "main";
}

/** A request the I/O thread has: its chain, completed when the reply comes. */
interface InFlight {
  chain: DescriptorChain;
  queue: VirtQueue;
  index: number;
}

export class VirtioFs implements VirtioDevice {
  readonly deviceId = VIRTIO_ID_FS;
  readonly name: string;
  readonly queueMaxSizes = Array.from({ length: 1 + REQUEST_QUEUES }, () => QUEUE_SIZE);
  readonly features = 0n;
  private readonly tag: Uint8Array;
  private queues: readonly (VirtQueue | undefined)[] = [];
  private ctx?: VirtioContext;
  /** Thread "main": the server itself. */
  private readonly local?: FuseServer;
  /** Thread "worker": the I/O thread, its requests in flight and replies to complete. */
  private readonly worker?: Worker;
  private readonly inFlight = new Map<number, InFlight>();
  private readonly done: { f: InFlight; len: number }[] = [];
  private nextId = 1;
  private drained?: () => void;
  private paused = false;
  private workerStats: ServerStats & { nodes: number; handles: number } = { requests: 0, errors: 0, dropped: 0, internalErrors: 0, byOp: {}, nodes: 1, handles: 0 };

  constructor(readonly opts: VirtioFsOptions) {
    this.name = opts.name ?? `fs-${opts.tag}`;
    const tag = new TextEncoder().encode(opts.tag);
    if (tag.length === 0 || tag.length > TAG_SIZE) throw new Error(`virtio-fs tag '${opts.tag}': 1 to ${TAG_SIZE} bytes`);
    this.tag = new Uint8Array(TAG_SIZE);
    this.tag.set(tag);
    if ((opts.thread ?? "worker") === "main") {
      this.local = new FuseServer(opts.hostDir, opts.readOnly ?? false);
    } else {
      // Opened here first so a share that cannot be opened fails now, in this thread, with its reason.
      new FuseServer(opts.hostDir, opts.readOnly ?? false).close();
      this.worker = new Worker(new URL("./worker.js", import.meta.url), { workerData: { hostDir: opts.hostDir, readOnly: opts.readOnly ?? false, umask: processUmask() } });
      this.worker.on("message", (m: FromWorker) => this.fromWorker(m));
      this.worker.on("error", (e) => this.ctx?.needsReset(`${this.name}: its I/O thread failed: ${e.message}`));
      this.worker.unref();
    }
  }

  /** The FUSE server, when it runs on the main thread (tests look into its tables). */
  get server(): FuseServer {
    if (!this.local) throw new Error(`${this.name}: the FUSE server runs on its I/O thread`);
    return this.local;
  }

  get stats(): ServerStats & { nodes: number; handles: number } {
    return this.local ? { ...this.local.stats, nodes: this.local.fs.nodeCount, handles: this.local.fs.handleCount } : this.workerStats;
  }

  readConfig(offset: number, size: number): number {
    let v = 0;
    for (let i = 0; i < size; i++) {
      const at = offset + i;
      const byte = at < TAG_SIZE ? this.tag[at] : at < TAG_SIZE + 4 ? (REQUEST_QUEUES >> (8 * (at - TAG_SIZE))) & 0xff : 0;
      v |= byte << (8 * i);
    }
    return v >>> 0;
  }

  writeConfig(): void {}

  activate(ctx: VirtioContext, queues: readonly (VirtQueue | undefined)[]): void {
    this.ctx = ctx;
    this.queues = queues;
  }

  notify(index: number): void {
    const q = this.queues[index];
    if (!q || this.paused) return;
    if (!this.local) {
      for (let chain = q.pop(); chain; chain = q.pop()) this.post(chain, q, index);
      return;
    }
    try {
      for (let chain = q.pop(); chain; chain = q.pop()) {
        const req = this.request(chain, index === 0);
        let len = 0;
        if (req) {
          const reply = this.local.handle(req, chain.writableLength);
          if (reply) len = this.writeReply(chain, reply);
        }
        q.push(chain, len);
      }
    } finally {
      q.notifyDriver();
    }
  }

  /** The request's bytes, or undefined for a chain not to be answered. */
  private request(chain: DescriptorChain, hiprio: boolean): Uint8Array | undefined {
    try {
      if (chain.readableLength < IN_HEADER_SIZE) {
        this.countDropped();
        return undefined;
      }
      let req: Uint8Array;
      if (chain.readableLength > MAX_REQUEST) {
        // Too long to be any request we serve: answered from its header alone, unread beyond it.
        req = chain.read(0, IN_HEADER_SIZE);
        new DataView(req.buffer).setUint32(0, 0xffff_ffff, true); // its len then lies: EINVAL
      } else {
        req = chain.read(0, chain.readableLength);
      }
      // The hiprio queue carries FORGETs only (5.11.6.1): anything else there is not answered.
      const opcode = new DataView(req.buffer, req.byteOffset).getUint32(4, true);
      if (hiprio && opcode !== 2 && opcode !== 42) {
        this.countDropped();
        return undefined;
      }
      return req;
    } catch (e) {
      // Guest memory refused the buffers: this request fails, the queue goes on.
      if (e instanceof ChainError) return undefined;
      throw e;
    }
  }

  private countDropped(): void {
    if (this.local) this.local.stats.dropped++;
    else this.workerStats.dropped++;
  }

  /** The reply into the chain's writable part: its length, or 0 when guest memory refuses it. */
  private writeReply(chain: DescriptorChain, reply: Uint8Array): number {
    try {
      chain.write(0, reply);
      return reply.length;
    } catch (e) {
      if (e instanceof ChainError) return 0;
      throw e;
    }
  }

  private post(chain: DescriptorChain, queue: VirtQueue, index: number): void {
    const req = this.request(chain, index === 0);
    const f = { chain, queue, index };
    if (!req) {
      // Nothing to ask the thread; completed in order behind what is in flight.
      this.done.push({ f, len: 0 });
      this.ctx?.requestPoll();
      return;
    }
    const id = this.nextId++;
    this.inFlight.set(id, f);
    const msg: ToWorker = { kind: "req", id, req, outRoom: chain.writableLength };
    this.worker!.postMessage(msg, [req.buffer as ArrayBuffer]);
    this.worker!.ref(); // requests in flight keep the process up
  }

  private fromWorker(m: FromWorker): void {
    if (m.kind !== "reply") return;
    this.workerStats = m.stats;
    const f = this.inFlight.get(m.id);
    if (!f) return; // its queue was stopped or the device reset meanwhile
    this.inFlight.delete(m.id);
    if (this.inFlight.size === 0) {
      this.worker!.unref();
      this.drained?.();
    }
    // The queue it came from must still be the live one (not stopped, not reset).
    if (this.queues[f.index] !== f.queue) return;
    const len = m.reply ? this.writeReply(f.chain, m.reply) : 0;
    if (this.paused || this.done.length > 0) {
      // Behind other completions, or paused: poll() completes it in its turn.
      this.done.push({ f, len });
      this.ctx?.requestPoll();
      return;
    }
    // At once, as blk-iothread.ts raises its interrupt: a FUSE request is
    // synchronous in the guest, whose task waits for exactly this.
    f.queue.push(f.chain, len);
    f.queue.notifyDriver();
  }

  /** Completes the replies that came back (thread "worker"). */
  poll(): void {
    if (this.done.length === 0) return;
    const touched = new Set<VirtQueue>();
    for (const { f, len } of this.done.splice(0)) {
      if (this.queues[f.index] !== f.queue) continue;
      f.queue.push(f.chain, len);
      touched.add(f.queue);
    }
    for (const q of touched) q.notifyDriver();
  }

  queueStopped(index: number): void {
    for (const [id, f] of this.inFlight) if (f.index === index) this.inFlight.delete(id);
    for (let i = this.done.length - 1; i >= 0; i--) if (this.done[i].f.index === index) this.done.splice(i, 1);
    if (this.inFlight.size === 0) this.drained?.();
  }

  reset(): void {
    this.queues = [];
    this.inFlight.clear();
    this.done.length = 0;
    this.drained?.();
    if (this.local) this.local.reset();
    else this.worker!.postMessage({ kind: "reset" } satisfies ToWorker);
  }

  /** Until the thread answered every request in flight (their replies then go nowhere if the queues went). */
  private drain(): Promise<void> {
    if (this.inFlight.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.drained = () => {
        if (this.inFlight.size > 0) return;
        this.drained = undefined;
        resolve();
      };
    });
  }

  async quiesce(): Promise<void> {
    await this.drain();
  }

  async pauseIo(): Promise<void> {
    this.paused = true;
    await this.drain();
    this.poll();
  }

  resumeIo(): void {
    this.paused = false;
    for (let i = 0; i < this.queues.length; i++) this.notify(i);
  }

  async close(): Promise<void> {
    if (this.local) {
      this.local.close();
      return;
    }
    const w = this.worker!;
    w.ref();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 2000);
      w.on("message", (m: FromWorker) => {
        if (m.kind === "closed") {
          clearTimeout(timer);
          resolve();
        }
      });
      w.postMessage({ kind: "close" } satisfies ToWorker);
    });
    await w.terminate();
  }

  statsLines(): string[] {
    const s = this.stats;
    const ops = Object.entries(s.byOp).sort((a, b) => b[1] - a[1]).map(([op, n]) => `${op.toLowerCase()} ${n}`).join(", ");
    return [`  ${this.name}: ${s.requests} FUSE requests (${ops}), ${s.errors} errors, ${s.dropped} dropped, ${s.nodes} nodes, ${s.handles} open handles`];
  }

  /** Why a VM with this device cannot be snapshotted or migrated. */
  get snapshotBlocker(): string {
    return `a VM with a shared folder (virtio-fs ${this.opts.tag}: ${this.opts.hostDir}) cannot be snapshotted or migrated: the guest's open files and cached nodes name host inodes`;
  }

  saveState(): Plain {
    throw new SnapshotError(this.snapshotBlocker);
  }

  restoreState(): void {
    throw new SnapshotError(this.snapshotBlocker);
  }
}
