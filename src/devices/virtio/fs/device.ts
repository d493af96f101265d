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
//   lives on its own I/O thread (worker.ts), which serves the queues in guest
//   memory itself while the driver runs (iothread.ts): a vCPU's QueueNotify
//   kicks it and it raises the interrupt, with no hop through the main
//   thread. A slow host filesystem stalls only this device's requests. It
//   needs the VM's RAM shared (a VM in a host).
// - "main": the server runs synchronously within notify() on the main
//   thread. Simple and deterministic, which is what the FUSE-level tests
//   use; a slow host call there would stall the I/O side of every VM.
//
// Snapshots and migration: the node ids and file handles the guest holds
// name host inodes through open fds, which no snapshot can carry. As
// virtiofsd's "find-paths" migration mode does, the device saves each node
// by the name it was last found under in its parent, and each handle by its
// node and open flags, beside the session INIT agreed; a restore finds them
// again in the share (saved-table.ts). So a file the guest holds must still
// be where it found it: one deleted or moved on the host since refuses the
// snapshot (SnapshotRefused, one line; the VM goes on), and one gone by the
// restore fails it. A fast-start snapshot holds no session at all: the
// guest mounts its shares only after the restore (cli/fast-start.ts), so
// each run's host folders may be other ones.

import type { VirtioDevice, VirtioContext } from "../virtio.js";
import { checkNoneInFlight, type VirtQueue } from "../queue.js";
import type { DirectKick } from "../../../vmm/queue-doorbell.js";
import { SnapshotError, SnapshotRefused, type Plain, type StateReader } from "../../../snapshot/state.js";
import { FuseServer, INIT_FLAGS, type ServerStats } from "./server.js";
import { FUSE_KERNEL_MINOR_VERSION } from "./fuse.js";
import { readSavedTable, reopenTable } from "./saved-table.js";
import { FS_QUEUES } from "./iothread-protocol.js";
import { FsIoThread } from "./iothread.js";
import { serveFuseQueue } from "./requests.js";

export const VIRTIO_ID_FS = 26;
export const TAG_SIZE = 36;
const QUEUE_SIZE = 128;
/** Request queues offered (num_request_queues): one, served in order, after hiprio. */
const REQUEST_QUEUES = FS_QUEUES - 1;

export interface VirtioFsOptions {
  /** The mount tag the guest names (at most 36 bytes of UTF-8). */
  tag: string;
  hostDir: string;
  readOnly?: boolean;
  name?: string;
  /** Where the host file calls run (see above); default "worker". */
  thread?: "worker" | "main";
}

export class VirtioFs implements VirtioDevice {
  readonly deviceId = VIRTIO_ID_FS;
  readonly name: string;
  readonly queueMaxSizes = Array.from({ length: 1 + REQUEST_QUEUES }, () => QUEUE_SIZE);
  readonly features = 0n;
  /** Thread "worker": vCPUs' workers kick its request queue straight (queue-doorbell.ts). */
  readonly directKick?: DirectKick;
  private readonly tag: Uint8Array;
  private queues: readonly (VirtQueue | undefined)[] = [];
  /** Thread "main": the server itself. */
  private readonly local?: FuseServer;
  /** Thread "worker": the I/O thread serving the queues. */
  private readonly thread?: FsIoThread;

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
      this.thread = new FsIoThread(this.name, opts.hostDir, opts.readOnly ?? false);
      this.directKick = this.thread.directKick;
    }
  }

  /** The FUSE server, when it runs on the main thread (tests look into its tables). */
  get server(): FuseServer {
    if (!this.local) throw new Error(`${this.name}: the FUSE server runs on its I/O thread`);
    return this.local;
  }

  get stats(): ServerStats & { nodes: number; handles: number } {
    return this.local ? { ...this.local.stats, nodes: this.local.fs.nodeCount, handles: this.local.fs.handleCount } : this.thread!.stats;
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
    this.queues = queues;
    this.thread?.activate(ctx, queues);
  }

  notify(index: number): void {
    if (this.thread) return this.thread.notify();
    const q = this.queues[index];
    if (!q || !this.local) return;
    try {
      serveFuseQueue(this.local, q, index);
    } finally {
      q.notifyDriver();
    }
  }

  queueStopped(index: number): void {
    this.thread?.queueStopped(index);
  }

  reset(): void {
    this.queues = [];
    if (this.local) this.local.reset();
    else this.thread!.reset();
  }

  async quiesce(): Promise<void> {
    await this.thread?.quiesce();
  }

  /** The transport takes no notify while paused and looks at every queue on resume: only the thread has work to stop. */
  async pauseIo(): Promise<void> {
    await this.thread?.pauseIo();
  }

  resumeIo(): void {
    this.thread?.resumeIo();
  }

  async close(): Promise<void> {
    if (this.local) this.local.close();
    else await this.thread!.close();
  }

  syncStats(): void {
    this.thread?.syncStats();
  }

  statsLines(): string[] {
    const s = this.stats;
    const ops = Object.entries(s.byOp).sort((a, b) => b[1] - a[1]).map(([op, n]) => `${op.toLowerCase()} ${n}`).join(", ");
    return [`  ${this.name}: ${s.requests} FUSE requests (${ops}), ${s.errors} errors, ${s.dropped} dropped, ${s.nodes} nodes, ${s.handles} open handles`];
  }

  /**
   * The session and the tables of what the guest holds (saved-table.ts).
   * Refused with one line when a node the guest holds is no longer found by
   * its name (deleted, or moved on the host): a restore could not open it again.
   */
  saveState(): Plain {
    const held = this.local ? { init: this.local.init, ...this.local.fs.exportTable() } : this.thread!.exported;
    if (!held) throw new SnapshotError(`virtio-fs ${this.opts.tag}: its I/O thread did not give its tables (it ended?)`);
    if (held.lost.length > 0) {
      throw new SnapshotRefused(`virtio-fs ${this.opts.tag} (${this.opts.hostDir}): ${held.lost.length} files the guest holds are no longer where it found them (deleted, or moved on the host; '${held.lost[0]}' among them), so a restore could not open them again`);
    }
    const s = held.init;
    const { nodes, handles, nextNode, nextHandle } = held.table;
    return { initialized: s !== undefined, minor: s?.minor ?? 0, maxReadahead: s?.maxReadahead ?? 0, flags: s?.flags ?? 0, nodes, handles, nextNode, nextHandle };
  }

  /**
   * The saved session and tables, checked (a minor we speak, flags we offer,
   * tables well formed), then every node the guest held found again in this
   * device's folder and every handle opened again. Requests come again from
   * the rings (none is held).
   */
  restoreState(r: StateReader): void {
    this.queues.forEach((q) => checkNoneInFlight(r, q));
    const minor = r.int("minor", 0, FUSE_KERNEL_MINOR_VERSION);
    const maxReadahead = r.int("maxReadahead", 0, 0xffff_ffff);
    const flags = r.int("flags", 0, 0xffff_ffff);
    r.check((flags & ~INIT_FLAGS) === 0, `flags 0x${flags.toString(16)} has bits this server never agrees to`);
    const init = r.bool("initialized") ? { minor, maxReadahead, flags } : undefined;
    const table = r.has("nodes") ? readSavedTable(r) : undefined;
    const reopened = table && (table.nodes.length > 0 || table.handles.length > 0) ? reopenTable(this.opts.hostDir, this.opts.readOnly ?? false, table, this.opts.tag) : undefined;
    if (this.local) {
      this.local.init = init;
      if (reopened) this.local.fs.adopt(reopened);
    } else {
      this.thread!.restoreSession(init, reopened);
    }
  }
}
