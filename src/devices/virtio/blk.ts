// virtio-blk, the block device (virtio 1.2, 5.2 "Block Device"): one request
// queue, a disk image behind it (src/backends/disk/: raw or qcow2). The guest
// sees it as /dev/vda, /dev/vdb, ...
//
// A request (5.2.6) is one descriptor chain:
//
//   device-readable   header: type u32, reserved u32, sector u64 (16 bytes)
//                     then, for OUT, the data; for DISCARD and WRITE_ZEROES,
//                     16-byte segments: sector u64, num_sectors u32, flags u32
//   device-writable   for IN, the data; for GET_ID, the 20-byte id
//                     then the status byte, the LAST writable byte
//
// Sectors are always 512 bytes. The used length is what the device wrote into
// the writable part: the data it read from the disk (IN) or the id (GET_ID),
// plus the status byte.
//
// The guest is hostile: a request whose shape is wrong (a short header, data on
// the wrong side, a length that is not whole sectors, a range beyond the disk)
// fails with VIRTIO_BLK_S_IOERR when there is a writable last byte to put that
// in, and is given back with length 0 when there is not. The device never
// writes into a device-readable buffer, and never allocates in proportion to a
// size the guest claims: data moves between guest memory and the disk through
// a bounce buffer of at most BOUNCE_BYTES.
//
// Configuration space (5.2.4), little-endian:
//
//   0x00 capacity u64 (512-byte sectors)   0x24 max_discard_sectors u32
//   0x08 size_max u32 (0: not offered)      0x28 max_discard_seg u32
//   0x0c seg_max u32                        0x2c discard_sector_alignment u32
//   0x10 geometry (not offered: 0)          0x30 max_write_zeroes_sectors u32
//   0x14 blk_size u32                       0x34 max_write_zeroes_seg u32
//   0x18 topology (not offered: 0)          0x38 write_zeroes_may_unmap u8
//   0x20 writeback u8, 0x22 num_queues u16  0x39 unused1[3], then secure erase
//        (neither offered: 0)                    and zoned fields (not offered: 0)

import { basename } from "node:path";
import type { VirtioDevice, VirtioContext } from "./virtio.js";
import { VIRTIO_ID_BLOCK } from "./virtio.js";
import { ChainError, checkNoneInFlight, type DescriptorChain, type VirtQueue } from "./queue.js";
import type { Plain, StateReader } from "../../snapshot/state.js";
import { GuestMemoryError } from "../../memory/guest-memory.js";
import { DiskImageError, type DiskImage } from "../../backends/disk/disk.js";
import { formatBytes } from "./format-bytes.js";

/** Feature bits (5.2.3). */
export const VIRTIO_BLK_F_SIZE_MAX = 1n << 1n;
export const VIRTIO_BLK_F_SEG_MAX = 1n << 2n;
export const VIRTIO_BLK_F_RO = 1n << 5n;
export const VIRTIO_BLK_F_BLK_SIZE = 1n << 6n;
export const VIRTIO_BLK_F_FLUSH = 1n << 9n;
export const VIRTIO_BLK_F_CONFIG_WCE = 1n << 11n;
export const VIRTIO_BLK_F_MQ = 1n << 12n;
export const VIRTIO_BLK_F_DISCARD = 1n << 13n;
export const VIRTIO_BLK_F_WRITE_ZEROES = 1n << 14n;

/** Request types (5.2.6). */
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;

/** Request status (5.2.6). */
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

/** Flag of a discard / write-zeroes segment (5.2.6). */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

export const SECTOR_SIZE = 512;
export const REQUEST_HEADER_SIZE = 16;
export const DISCARD_SEGMENT_SIZE = 16;
/** GET_ID answers with exactly this many bytes, the serial zero padded (5.2.6). */
export const VIRTIO_BLK_ID_BYTES = 20;

/** The request queue's largest size; seg_max leaves room for the header and the status (as QEMU). */
export const QUEUE_SIZE = 256;
export const SEG_MAX = QUEUE_SIZE - 2;
/** Per-segment limit of DISCARD and WRITE_ZEROES: just under 2 GiB, as QEMU. */
export const MAX_DISCARD_SECTORS = 0x3f_ffff;
export const MAX_WRITE_ZEROES_SECTORS = 0x3f_ffff;
/** Segments per DISCARD / WRITE_ZEROES request (read into a buffer of 16 bytes each). */
export const MAX_DISCARD_SEG = 32;
export const MAX_WRITE_ZEROES_SEG = 32;

/** The most guest data held in host memory at once for one request. */
export const BOUNCE_BYTES = 1 << 20;

/** Bytes of the configuration space that carry values (up to write_zeroes_may_unmap and its padding). */
const CONFIG_SIZE = 0x3c;

export interface VirtioBlkOptions {
  /** "blk0", "blk1", ... */
  name: string;
  /** What GET_ID answers (the guest's /sys/block/vdX/serial), at most 20 bytes of UTF-8. */
  serial: string;
  /** Checked before each request of a batch: true stops the batch there, the
   *  rest staying in the ring (an I/O thread being told to stop, blk-iothread.ts). */
  stopRequested?(): boolean;
}

export interface BlkStats {
  reads: number;
  bytesRead: number;
  writes: number;
  bytesWritten: number;
  flushes: number;
  discards: number;
  writeZeroes: number;
  getIds: number;
  /** Requests that failed: IOERR, UNSUPP, or no place for a status. */
  errors: number;
}

/** A request that fails with this status. */
class RequestFailed extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

export class VirtioBlk implements VirtioDevice {
  readonly deviceId = VIRTIO_ID_BLOCK;
  readonly name: string;
  readonly queueMaxSizes = [QUEUE_SIZE];
  readonly features: bigint;
  readonly stats: BlkStats = { reads: 0, bytesRead: 0, writes: 0, bytesWritten: 0, flushes: 0, discards: 0, writeZeroes: 0, getIds: 0, errors: 0 };
  /** Why the last request failed (for tests and debugging). */
  lastError: string | undefined;

  private readonly capacity: number;
  private readonly config = new Uint8Array(CONFIG_SIZE);
  private readonly id = new Uint8Array(VIRTIO_BLK_ID_BYTES);
  /** The transport's live queues (activate()): the request queue is looked up there at each notify. */
  private queues: readonly (VirtQueue | undefined)[] = [];
  private negotiated = 0n;
  private bounce: Uint8Array | undefined;

  private readonly stopRequested: () => boolean;

  constructor(private disk: DiskImage, opts: VirtioBlkOptions) {
    this.name = opts.name;
    this.stopRequested = opts.stopRequested ?? (() => false);
    const serial = new TextEncoder().encode(opts.serial);
    if (serial.length > VIRTIO_BLK_ID_BYTES) throw new RangeError(`${opts.name}: serial '${opts.serial}' is longer than ${VIRTIO_BLK_ID_BYTES} bytes`);
    this.id.set(serial);
    this.capacity = Math.floor(disk.virtualSize / SECTOR_SIZE);

    let features = VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH;
    if (disk.readOnly) features |= VIRTIO_BLK_F_RO;
    else features |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
    this.features = features;

    const c = new DataView(this.config.buffer);
    c.setBigUint64(0x00, BigInt(this.capacity), true);
    c.setUint32(0x08, 0, true); // size_max: VIRTIO_BLK_F_SIZE_MAX not offered, no per-buffer limit
    c.setUint32(0x0c, SEG_MAX, true);
    c.setUint32(0x14, SECTOR_SIZE, true);
    if (!disk.readOnly) {
      c.setUint32(0x24, MAX_DISCARD_SECTORS, true);
      c.setUint32(0x28, MAX_DISCARD_SEG, true);
      c.setUint32(0x2c, 1, true); // discard_sector_alignment: one sector (blk_size / 512)
      c.setUint32(0x30, MAX_WRITE_ZEROES_SECTORS, true);
      c.setUint32(0x34, MAX_WRITE_ZEROES_SEG, true);
      c.setUint8(0x38, 1); // write_zeroes_may_unmap: the backends may free the space
    }
  }

  readConfig(offset: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) {
      const at = offset + i;
      v = v * 256 + (at >= 0 && at < CONFIG_SIZE ? this.config[at] : 0);
    }
    return v;
  }

  /** Nothing in this configuration space is writable (no VIRTIO_BLK_F_CONFIG_WCE). */
  writeConfig(): void {}

  activate(_ctx: VirtioContext, queues: readonly (VirtQueue | undefined)[], features: bigint): void {
    this.queues = queues;
    this.negotiated = features;
  }

  /** Every request available now, then one interrupt for the batch. */
  notify(index: number): void {
    // Not kept from activate(): the driver may have stopped the queue, or set it up again with another size.
    const q = index === 0 ? this.queues[0] : undefined;
    if (!q) return;
    try {
      for (let chain = q.pop(); chain; chain = this.stopRequested() ? undefined : q.pop()) this.handle(q, chain);
    } finally {
      q.notifyDriver();
    }
  }

  reset(): void {
    this.queues = [];
    this.negotiated = 0n;
  }

  close(): void {
    this.disk.close();
  }

  /**
   * Serve another image from now on (a snapshot's disk frozen under a new
   * overlay): between requests only, of the same size and writability, so
   * what the driver negotiated and read from the configuration still holds.
   */
  replaceDisk(disk: DiskImage): void {
    if (disk.virtualSize !== this.disk.virtualSize || disk.readOnly !== this.disk.readOnly) {
      throw new DiskImageError(`${disk.path}: ${disk.virtualSize} bytes${disk.readOnly ? ", read-only" : ""} cannot replace ${this.disk.path} (${this.disk.virtualSize} bytes${this.disk.readOnly ? ", read-only" : ""})`);
    }
    this.disk = disk;
  }

  /**
   * Nothing of its own: every request taken is completed within its notify
   * (pauseIo has nothing to wait for), the negotiated features are the
   * transport's and come back through activate(), the disk is reopened by
   * the caller. The counters are not saved (a restored VM counts from zero).
   */
  saveState(): Plain {
    return {};
  }

  restoreState(r: StateReader): void {
    checkNoneInFlight(r, this.queues[0]);
  }

  statsLines(): string[] {
    return [blkStatsLine(this.name, this.disk, this.stats)];
  }

  /** One request: do it, put the status in the last writable byte, give the chain back. */
  private handle(q: VirtQueue, chain: DescriptorChain): void {
    if (chain.writableLength === 0) {
      // No writable byte for the status (or it is in a device-readable buffer): nothing can be said.
      this.fail("no writable status byte");
      q.push(chain, 0);
      return;
    }
    let status = VIRTIO_BLK_S_OK;
    let written = 0;
    try {
      written = this.execute(chain);
    } catch (e) {
      if (e instanceof RequestFailed) {
        status = e.status;
        written = 0;
        this.fail(e.message);
      } else if (e instanceof PartialRead) {
        status = VIRTIO_BLK_S_IOERR;
        written = e.written;
        this.fail(e.message);
      } else if (isRequestError(e)) {
        status = VIRTIO_BLK_S_IOERR;
        written = 0;
        this.fail(e.message);
      } else {
        throw e;
      }
    }
    try {
      chain.write(chain.writableLength - 1, Uint8Array.of(status));
    } catch (e) {
      if (!isRequestError(e)) throw e;
      if (status === VIRTIO_BLK_S_OK) this.fail(e.message);
      q.push(chain, written);
      return;
    }
    q.push(chain, written + 1);
  }

  /** Performs the request; returns the data bytes written into the writable part (the status aside). */
  private execute(chain: DescriptorChain): number {
    if (chain.readableLength < REQUEST_HEADER_SIZE) {
      throw new RequestFailed(VIRTIO_BLK_S_IOERR, `request header of ${chain.readableLength} bytes (${REQUEST_HEADER_SIZE} needed)`);
    }
    const header = new DataView(chain.read(0, REQUEST_HEADER_SIZE).buffer);
    const type = header.getUint32(0, true);
    const sector = header.getBigUint64(8, true);
    /** Readable bytes after the header, writable bytes before the status. */
    const readData = chain.readableLength - REQUEST_HEADER_SIZE;
    const writeData = chain.writableLength - 1;

    switch (type) {
      case VIRTIO_BLK_T_IN: {
        if (readData !== 0) throw ioerr(`read request with ${readData} device-readable data bytes`);
        const offset = this.checkRange(sector, writeData);
        return this.readIntoGuest(chain, offset, writeData);
      }
      case VIRTIO_BLK_T_OUT: {
        if (this.disk.readOnly) throw ioerr("write to a read-only disk");
        if (writeData !== 0) throw ioerr(`write request with ${writeData} device-writable data bytes`);
        const offset = this.checkRange(sector, readData);
        this.writeFromGuest(chain, offset, readData);
        this.writeDone();
        return 0;
      }
      case VIRTIO_BLK_T_FLUSH:
        this.disk.flush();
        this.stats.flushes++;
        return 0;
      case VIRTIO_BLK_T_GET_ID: {
        const n = Math.min(VIRTIO_BLK_ID_BYTES, writeData);
        if (n > 0) chain.write(0, this.id.subarray(0, n));
        this.stats.getIds++;
        return n;
      }
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES:
        this.discardOrZero(chain, type, readData, writeData);
        return 0;
      default:
        throw new RequestFailed(VIRTIO_BLK_S_UNSUPP, `unknown request type ${type}`);
    }
  }

  /** The byte offset of [sector, sector + bytes / 512) if it is whole sectors inside the disk. */
  private checkRange(sector: bigint, bytes: number): number {
    if (bytes % SECTOR_SIZE !== 0) throw ioerr(`data of ${bytes} bytes is not a multiple of ${SECTOR_SIZE}`);
    const count = bytes / SECTOR_SIZE;
    // A sector above the capacity (a u64 from the guest, perhaps above 2^53) is out of range before any arithmetic.
    if (sector > BigInt(this.capacity) || Number(sector) + count > this.capacity) {
      throw ioerr(`sectors ${sector}+${count} beyond the disk's ${this.capacity}`);
    }
    return Number(sector) * SECTOR_SIZE;
  }

  /** Disk -> guest, BOUNCE_BYTES at a time. A failure part way reports how much reached the guest. */
  private readIntoGuest(chain: DescriptorChain, offset: number, len: number): number {
    let done = 0;
    try {
      while (done < len) {
        const n = Math.min(BOUNCE_BYTES, len - done);
        const buf = this.bounceBuffer(n);
        this.disk.read(offset + done, buf);
        chain.write(done, buf);
        done += n;
      }
    } catch (e) {
      if (done > 0 && isRequestError(e)) throw new PartialRead(done, e.message);
      throw e;
    }
    this.stats.reads++;
    this.stats.bytesRead += len;
    return len;
  }

  /** Guest -> disk, BOUNCE_BYTES at a time. */
  private writeFromGuest(chain: DescriptorChain, offset: number, len: number): void {
    for (let done = 0; done < len; ) {
      const n = Math.min(BOUNCE_BYTES, len - done);
      this.disk.write(offset + done, chain.read(REQUEST_HEADER_SIZE + done, n));
      done += n;
    }
    this.stats.writes++;
    this.stats.bytesWritten += len;
  }

  /** DISCARD and WRITE_ZEROES: every segment is checked before any is done. */
  private discardOrZero(chain: DescriptorChain, type: number, readData: number, writeData: number): void {
    const discard = type === VIRTIO_BLK_T_DISCARD;
    const what = discard ? "discard" : "write-zeroes";
    if (this.disk.readOnly) throw ioerr(`${what} on a read-only disk`);
    const feature = discard ? VIRTIO_BLK_F_DISCARD : VIRTIO_BLK_F_WRITE_ZEROES;
    if (!(this.negotiated & feature)) throw new RequestFailed(VIRTIO_BLK_S_UNSUPP, `${what} without its feature negotiated`);
    if (writeData !== 0) throw ioerr(`${what} request with ${writeData} device-writable data bytes`);
    if (readData % DISCARD_SEGMENT_SIZE !== 0) throw ioerr(`${what} data of ${readData} bytes is not whole ${DISCARD_SEGMENT_SIZE}-byte segments`);
    const count = readData / DISCARD_SEGMENT_SIZE;
    const maxSeg = discard ? MAX_DISCARD_SEG : MAX_WRITE_ZEROES_SEG;
    const maxSectors = discard ? MAX_DISCARD_SECTORS : MAX_WRITE_ZEROES_SECTORS;
    if (count > maxSeg) throw new RequestFailed(VIRTIO_BLK_S_UNSUPP, `${what} of ${count} segments (at most ${maxSeg})`);

    const raw = new DataView(chain.read(REQUEST_HEADER_SIZE, readData).buffer);
    const segs: { sector: bigint; sectors: number; unmap: boolean }[] = [];
    for (let i = 0; i < count; i++) {
      const at = i * DISCARD_SEGMENT_SIZE;
      const flags = raw.getUint32(at + 12, true);
      // 5.2.6.2: unknown flags, and unmap on a discard, are UNSUPP.
      if (flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP || (discard && flags !== 0)) {
        throw new RequestFailed(VIRTIO_BLK_S_UNSUPP, `${what} segment ${i} with flags 0x${flags.toString(16)}`);
      }
      segs.push({ sector: raw.getBigUint64(at, true), sectors: raw.getUint32(at + 8, true), unmap: flags !== 0 });
    }
    const ranges = segs.map((s, i) => {
      if (s.sectors > maxSectors) throw ioerr(`${what} segment ${i} of ${s.sectors} sectors (at most ${maxSectors})`);
      return { offset: this.checkRange(s.sector, s.sectors * SECTOR_SIZE), length: s.sectors * SECTOR_SIZE, unmap: s.unmap };
    });
    for (const r of ranges) {
      if (discard) this.disk.discard(r.offset, r.length);
      else this.disk.writeZeroes(r.offset, r.length, r.unmap);
    }
    if (discard) this.stats.discards++;
    else this.stats.writeZeroes++;
    this.writeDone();
  }

  /** Without VIRTIO_BLK_F_FLUSH negotiated, a completed write must be stable (5.2.6.2). */
  private writeDone(): void {
    if (!(this.negotiated & VIRTIO_BLK_F_FLUSH)) this.disk.flush();
  }

  private bounceBuffer(n: number): Uint8Array {
    if (!this.bounce || this.bounce.length < n) this.bounce = new Uint8Array(n <= 64 * 1024 ? 64 * 1024 : BOUNCE_BYTES);
    return this.bounce.subarray(0, n);
  }

  private fail(why: string): void {
    this.stats.errors++;
    this.lastError = why;
  }
}

/** The `--stats` line of a block device. */
export function blkStatsLine(name: string, disk: Pick<DiskImage, "path" | "format" | "readOnly">, s: BlkStats): string {
  return `${name} (${basename(disk.path)}, ${disk.format}${disk.readOnly ? ", read-only" : ""}): ` +
    `${s.reads} reads ${formatBytes(s.bytesRead)}, ${s.writes} writes ${formatBytes(s.bytesWritten)}, ` +
    `${s.flushes} flushes, ${s.discards} discards, ${s.writeZeroes} write-zeroes, ${s.errors} errors`;
}

/** A read that failed after some data reached the guest. */
class PartialRead extends Error {
  constructor(readonly written: number, message: string) {
    super(message);
  }
}

function ioerr(message: string): RequestFailed {
  return new RequestFailed(VIRTIO_BLK_S_IOERR, message);
}

/** Failures that end one request with IOERR: the disk's, and guest memory that is not there. */
function isRequestError(e: unknown): e is Error {
  return e instanceof DiskImageError || e instanceof ChainError || e instanceof GuestMemoryError;
}
