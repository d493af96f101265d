// virtio-fs, the file system device (virtio 1.2, 5.11): a host directory the
// guest mounts with `mount -t virtiofs TAG DIR`. Queue 0 is the hiprio queue
// (FORGET and BATCH_FORGET, which get no reply), queues 1.. the request
// queues; each chain is a FUSE request (device-readable) and room for its
// reply (device-writable). Configuration space: tag[36] (UTF-8, NUL-padded),
// num_request_queues u32. No feature bits (no notification queue, no DAX
// window).
//
// Limitation, plainly: the FUSE server (server.ts, host-fs.ts) makes its host
// file calls synchronously on the main thread, within notify(). A slow host
// filesystem (a network mount, an fsync of a large file) stalls the I/O side
// of every VM of the process for that long: the rule "nothing blocks the I/O
// side" is not kept yet. Moving FuseServer to an I/O worker (as
// blk-iothread.ts does for disks) is the next step; it takes request bytes
// and gives reply bytes, so it moves as it is.
//
// Snapshots and migration: the node ids the guest holds name host inodes
// through open fds, which a snapshot cannot carry (QEMU's vhost-user-fs
// refuses migration for the same reason). saveState() refuses with one
// line; the VM layer checks first (snapshotBlocker) so nothing is paused in
// vain.

import type { VirtioDevice, VirtioContext } from "../virtio.js";
import { ChainError, type VirtQueue, type DescriptorChain } from "../queue.js";
import { SnapshotError, type Plain } from "../../../snapshot/state.js";
import { FuseServer, MAX_REQUEST, type ServerStats } from "./server.js";
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
}

export class VirtioFs implements VirtioDevice {
  readonly deviceId = VIRTIO_ID_FS;
  readonly name: string;
  readonly queueMaxSizes = Array.from({ length: 1 + REQUEST_QUEUES }, () => QUEUE_SIZE);
  readonly features = 0n;
  readonly server: FuseServer;
  private readonly tag: Uint8Array;
  private queues: readonly (VirtQueue | undefined)[] = [];

  constructor(readonly opts: VirtioFsOptions) {
    this.name = opts.name ?? `fs-${opts.tag}`;
    const tag = new TextEncoder().encode(opts.tag);
    if (tag.length === 0 || tag.length > TAG_SIZE) throw new Error(`virtio-fs tag '${opts.tag}': 1 to ${TAG_SIZE} bytes`);
    this.tag = new Uint8Array(TAG_SIZE);
    this.tag.set(tag);
    this.server = new FuseServer(opts.hostDir, opts.readOnly ?? false);
  }

  get stats(): ServerStats {
    return this.server.stats;
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

  activate(_ctx: VirtioContext, queues: readonly (VirtQueue | undefined)[]): void {
    this.queues = queues;
  }

  notify(index: number): void {
    const q = this.queues[index];
    if (!q) return;
    try {
      for (let chain = q.pop(); chain; chain = q.pop()) q.push(chain, this.serve(chain, index === 0));
    } finally {
      q.notifyDriver();
    }
  }

  /** One chain: its reply written, the bytes written returned (0 for none). */
  private serve(chain: DescriptorChain, hiprio: boolean): number {
    try {
      if (chain.readableLength < IN_HEADER_SIZE) {
        this.server.stats.dropped++;
        return 0;
      }
      let req: Uint8Array;
      if (chain.readableLength > MAX_REQUEST) {
        // Too long to be any request we serve: answer from its header alone, unread beyond it.
        req = chain.read(0, IN_HEADER_SIZE);
        new DataView(req.buffer).setUint32(0, 0xffff_ffff, true); // its len then lies: EINVAL
      } else {
        req = chain.read(0, chain.readableLength);
      }
      // The hiprio queue carries FORGETs only (5.11.6.1): anything else there is not answered.
      const opcode = new DataView(req.buffer, req.byteOffset).getUint32(4, true);
      if (hiprio && opcode !== 2 && opcode !== 42) {
        this.server.stats.dropped++;
        return 0;
      }
      const reply = this.server.handle(req, chain.writableLength);
      if (!reply) return 0;
      chain.write(0, reply);
      return reply.length;
    } catch (e) {
      // Guest memory refused the buffers: this request fails, the queue goes on.
      if (e instanceof ChainError) return 0;
      throw e;
    }
  }

  reset(): void {
    this.queues = [];
    this.server.reset();
  }

  close(): void {
    this.server.close();
  }

  statsLines(): string[] {
    const s = this.server.stats;
    return [`  ${this.name}: ${s.requests} FUSE requests, ${s.errors} errors, ${s.dropped} dropped, ${this.server.fs.nodeCount} nodes, ${this.server.fs.handleCount} open handles`];
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

