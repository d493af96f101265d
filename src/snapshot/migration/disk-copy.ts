// Disks copied along with a live migration (`vm migrate --copy-disks`), for
// hosts that do not share storage: QEMU's block migration, in the same
// pre-copy rounds as the RAM.
//
//   - before round 0 every disk starts recording the chunks the guest
//     changes (a bit per CHUNK_BYTES, set by the disk's I/O thread once the
//     change is in the image: backends/disk/wrappers.ts), then its whole
//     content goes over, chunks of zeros skipped (the target's copy is a new,
//     empty image);
//   - every round sends the chunks changed since the last, before the pages;
//   - in the pause (devices stopped, no request in flight) the last changed
//     chunks go; the target runs only once it has every byte.
//
// Reads go through the disk's I/O thread between requests, so a chunk is
// read whole before or after a guest write, never half way, and a write that
// lands after its chunk was read sets the bit again. The guest sees the
// content of its disk, not the image file: a qcow2 backing chain arrives as
// one image.

import { Cmd, DISK_HEADER_BYTES, MAX_DISK_RUN, MigrationError, type MessageWriter } from "./stream.js";
import { isAllZero } from "../../memory/zero.js";

/** The disk at the source: what IoThreadBlk offers (devices/virtio/blk-iothread.ts). */
export interface DiskCopySource {
  readonly name: string;
  readonly capacityBytes: number;
  trackWrites(chunkShift: number): Int32Array;
  stopTrackingWrites(): void;
  readDisk(offset: number, length: number): Promise<Uint8Array>;
}

/** Its copy at the target, opened by the device that serves it there, not yet serving the guest. */
export interface DiskCopySink {
  readonly name: string;
  readonly capacityBytes: number;
  writeDisk(offset: number, data: Uint8Array): Promise<void>;
  writeDiskZeroes(offset: number, length: number): Promise<void>;
}

/** 256 KiB: a guest's 4 KiB write resends this much; a bitmap word covers 8 MiB. */
const CHUNK_SHIFT = 18;
const CHUNK_BYTES = 2 ** CHUNK_SHIFT;
const ZERO_FLAG = 1;
const SECTOR = 512;

/** The source's side: announce, bulk copy, changed chunks per round. */
export class DiskCopier {
  private readonly bitmaps: Int32Array[] = [];
  /** Disk bytes sent (data and zero markers' lengths are not counted twice: only data). */
  sentBytes = 0;

  /** `afterSend`, after each message: waits as long as a bandwidth limit asks (and reports progress). */
  constructor(
    private readonly disks: readonly DiskCopySource[],
    private readonly writer: MessageWriter,
    private readonly check: () => void,
    private readonly afterSend?: () => Promise<void>,
  ) {}

  /** What Config says of the disks coming. */
  announce(): { bytes: number }[] {
    return this.disks.map((d) => ({ bytes: d.capacityBytes }));
  }

  /** Start recording changes: from here on nothing the guest writes is missed. */
  startTracking(): void {
    for (const d of this.disks) this.bitmaps.push(d.trackWrites(CHUNK_SHIFT));
  }

  stopTracking(): void {
    for (const d of this.disks) d.stopTrackingWrites();
  }

  /** Every disk whole, runs of zeros skipped (the target's copy reads as zero already). */
  async sendAll(): Promise<void> {
    for (let i = 0; i < this.disks.length; i++) {
      const d = this.disks[i];
      for (let at = 0; at < d.capacityBytes; at += MAX_DISK_RUN) {
        this.check();
        const length = Math.min(MAX_DISK_RUN, d.capacityBytes - at);
        const data = await d.readDisk(at, length);
        // Chunk by chunk: a mostly empty disk sends only what it holds.
        for (let c = 0; c < length; c += CHUNK_BYTES) {
          const part = data.subarray(c, Math.min(length, c + CHUNK_BYTES));
          if (!isAllZero(part)) await this.send(i, at + c, part);
        }
      }
    }
  }

  /** Bytes the guest changed since the last take (at chunk granularity), without taking them. */
  dirtyBytes(): number {
    let n = 0;
    for (const bits of this.bitmaps) for (let w = 0; w < bits.length; w++) n += popcount(Atomics.load(bits, w));
    return n * CHUNK_BYTES;
  }

  /** Take the changed chunks and send them, runs merged; returns the bytes they cover. */
  async sendChanged(): Promise<number> {
    let covered = 0;
    for (let i = 0; i < this.disks.length; i++) {
      const d = this.disks[i];
      const bits = this.bitmaps[i];
      const chunks: number[] = [];
      for (let w = 0; w < bits.length; w++) {
        let word = Atomics.exchange(bits, w, 0);
        while (word !== 0) {
          const low = word & -word;
          word ^= low;
          chunks.push(w * 32 + 31 - Math.clz32(low));
        }
      }
      for (let k = 0; k < chunks.length;) {
        let end = k + 1;
        while (end < chunks.length && chunks[end] === chunks[end - 1] + 1 && (end - k + 1) * CHUNK_BYTES <= MAX_DISK_RUN) end++;
        const offset = chunks[k] * CHUNK_BYTES;
        const length = Math.min(d.capacityBytes, chunks[end - 1] * CHUNK_BYTES + CHUNK_BYTES) - offset;
        k = end;
        if (length <= 0) continue;
        this.check();
        const data = await d.readDisk(offset, length);
        covered += length;
        await this.send(i, offset, data);
      }
    }
    return covered;
  }

  private async send(disk: number, offset: number, data: Uint8Array): Promise<void> {
    const zero = isAllZero(data);
    const h = Buffer.alloc(DISK_HEADER_BYTES);
    h.writeUInt32LE(disk, 0);
    h.writeUInt32LE(zero ? ZERO_FLAG : 0, 4);
    h.writeBigUInt64LE(BigInt(offset), 8);
    h.writeBigUInt64LE(BigInt(data.length), 16);
    if (!zero) this.sentBytes += data.length;
    await this.writer.send(Cmd.Disk, zero ? h : Buffer.concat([h, data]));
    await this.afterSend?.();
  }
}

/**
 * The target's side: one Disk message into its copy. Untrusted: the disk,
 * the range and the length are checked before anything is written.
 */
export async function applyDisk(payload: Buffer, sinks: readonly DiskCopySink[]): Promise<void> {
  if (payload.length < DISK_HEADER_BYTES) throw new MigrationError(`a Disk message of ${payload.length} bytes (its header is ${DISK_HEADER_BYTES})`);
  const index = payload.readUInt32LE(0);
  const flags = payload.readUInt32LE(4);
  const offset = payload.readBigUInt64LE(8);
  const length = payload.readBigUInt64LE(16);
  const sink = sinks[index];
  if (!sink) throw new MigrationError(`a Disk message for disk ${index}, ${sinks.length} announced`);
  if ((flags & ~ZERO_FLAG) !== 0) throw new MigrationError(`a Disk message with unknown flags ${flags.toString(16)}`);
  if (length > BigInt(MAX_DISK_RUN) || offset % BigInt(SECTOR) !== 0n || length % BigInt(SECTOR) !== 0n || offset + length > BigInt(sink.capacityBytes)) {
    throw new MigrationError(`a Disk message for ${sink.name} at offset ${offset}, length ${length}: outside its ${sink.capacityBytes} bytes or not whole sectors`);
  }
  const zero = (flags & ZERO_FLAG) !== 0;
  const dataBytes = payload.length - DISK_HEADER_BYTES;
  if (zero ? dataBytes !== 0 : BigInt(dataBytes) !== length) throw new MigrationError(`a Disk message for ${sink.name} of ${dataBytes} data bytes for a length of ${length}${zero ? " of zeroes" : ""}`);
  try {
    if (zero) await sink.writeDiskZeroes(Number(offset), Number(length));
    else await sink.writeDisk(Number(offset), new Uint8Array(payload.subarray(DISK_HEADER_BYTES))); // a copy of its own: handed to the I/O thread
  } catch (e) {
    throw new MigrationError(`writing the copy of ${sink.name}: ${(e as Error).message}`);
  }
}

function popcount(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}
