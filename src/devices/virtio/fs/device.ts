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
// name host inodes through open fds, which a snapshot cannot carry (QEMU's
// vhost-user-fs refused migration for the same reason until virtiofsd
// learned to reopen by path). So saveState() refuses with one line while
// the server knows any node but the root or has a handle open; otherwise
// the device's whole state is the session INIT agreed (none before the
// share is mounted), which is what a fast-start snapshot holds: the guest
// mounts the share only after the restore (cli/fast-start.ts), so the host
// directory may even differ between the snapshot and the run. The daemon
// still refuses its VMs with shares before pausing (api/managed-vm.ts):
// their init mounts the share at boot.

import type { VirtioDevice, VirtioContext } from "../virtio.js";
import { checkNoneInFlight, type VirtQueue } from "../queue.js";
import type { DirectKick } from "../../../vmm/queue-doorbell.js";
import { SnapshotError, type Plain, type StateReader } from "../../../snapshot/state.js";
import { FuseServer, INIT_FLAGS, type FuseSession, type ServerStats } from "./server.js";
import { FUSE_KERNEL_MINOR_VERSION } from "./fuse.js";
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

  /** Why this device cannot be snapshotted or migrated now (undefined: it can). Final once paused. */
  get snapshotBlocker(): string | undefined {
    this.syncStats();
    const { nodes, handles } = this.stats;
    if (nodes <= 1 && handles === 0) return undefined;
    return `virtio-fs ${this.opts.tag} (${this.opts.hostDir}): the guest holds ${nodes - 1} nodes and ${handles} open handles of the shared folder, which name host inodes a snapshot cannot carry (unmount it in the guest first)`;
  }

  private get session(): FuseSession | undefined {
    return this.local ? this.local.init : this.thread!.session;
  }

  saveState(): Plain {
    const blocker = this.snapshotBlocker;
    if (blocker) throw new SnapshotError(blocker);
    const s = this.session;
    return { initialized: s !== undefined, minor: s?.minor ?? 0, maxReadahead: s?.maxReadahead ?? 0, flags: s?.flags ?? 0 };
  }

  /** The saved session, checked: a minor we speak, flags we offer. Requests come again from the rings (none is held). */
  restoreState(r: StateReader): void {
    this.queues.forEach((q) => checkNoneInFlight(r, q));
    const minor = r.int("minor", 0, FUSE_KERNEL_MINOR_VERSION);
    const maxReadahead = r.int("maxReadahead", 0, 0xffff_ffff);
    const flags = r.int("flags", 0, 0xffff_ffff);
    r.check((flags & ~INIT_FLAGS) === 0, `flags 0x${flags.toString(16)} has bits this server never agrees to`);
    const init = r.bool("initialized") ? { minor, maxReadahead, flags } : undefined;
    if (this.local) this.local.init = init;
    else this.thread!.restoreSession(init);
  }
}
