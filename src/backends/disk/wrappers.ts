// Disk images seen through another image, for live migration with its disks
// copied along (snapshot/migration/disk-copy.ts):
//
//   - WriteTrackedDisk records which chunks the guest changed (writes,
//     discards, write-zeroes) in a bitmap shared with the main thread, as
//     QEMU's dirty bitmaps do for block migration. A chunk's bit is set only
//     once the change is in the image: a copier that clears the bit and then
//     reads the chunk either sees the change or finds the bit set again.
//   - ReadOnlyView shows a writable image to the device as read-only: the
//     target of a migration fills a copy of a read-only disk through the
//     image underneath while the guest (and the device's VIRTIO_BLK_F_RO)
//     sees what it saw at the source.

import { DiskImageError, type DiskImage } from "./types.js";

export class WriteTrackedDisk implements DiskImage {
  private readonly bits: Int32Array;

  constructor(
    readonly inner: DiskImage,
    /** One bit per chunk of 2^chunkShift bytes, Atomics-set (the main thread takes them). */
    bitmap: SharedArrayBuffer,
    private readonly chunkShift: number,
  ) {
    this.bits = new Int32Array(bitmap);
    const chunks = Math.ceil(inner.virtualSize / 2 ** chunkShift);
    if (this.bits.length * 32 < chunks) throw new RangeError(`a write bitmap of ${this.bits.length * 32} chunks for ${chunks}`);
  }

  get path(): string { return this.inner.path; }
  get format(): "raw" | "qcow2" { return this.inner.format; }
  get virtualSize(): number { return this.inner.virtualSize; }
  get readOnly(): boolean { return this.inner.readOnly; }

  read(offset: number, into: Uint8Array): void {
    this.inner.read(offset, into);
  }

  write(offset: number, data: Uint8Array): void {
    this.inner.write(offset, data);
    this.mark(offset, data.length);
  }

  flush(): void {
    this.inner.flush();
  }

  discard(offset: number, length: number): void {
    this.inner.discard(offset, length);
    this.mark(offset, length);
  }

  writeZeroes(offset: number, length: number, mayUnmap: boolean): void {
    this.inner.writeZeroes(offset, length, mayUnmap);
    this.mark(offset, length);
  }

  close(): void {
    this.inner.close();
  }

  private mark(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / 2 ** this.chunkShift);
    const last = Math.floor((offset + length - 1) / 2 ** this.chunkShift);
    for (let c = first; c <= last; c++) Atomics.or(this.bits, c >>> 5, 1 << (c & 31));
  }
}

export class ReadOnlyView implements DiskImage {
  readonly readOnly = true;

  constructor(readonly inner: DiskImage) {}

  get path(): string { return this.inner.path; }
  get format(): "raw" | "qcow2" { return this.inner.format; }
  get virtualSize(): number { return this.inner.virtualSize; }

  read(offset: number, into: Uint8Array): void {
    this.inner.read(offset, into);
  }

  write(_offset: number, _data: Uint8Array): void {
    throw new DiskImageError(`${this.path}: the disk is read-only`);
  }

  flush(): void {
    this.inner.flush();
  }

  discard(_offset: number, _length: number): void {
    throw new DiskImageError(`${this.path}: the disk is read-only`);
  }

  writeZeroes(_offset: number, _length: number, _mayUnmap: boolean): void {
    throw new DiskImageError(`${this.path}: the disk is read-only`);
  }

  close(): void {
    this.inner.close();
  }
}
