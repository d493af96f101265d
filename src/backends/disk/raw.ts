// Raw disk images: the file's bytes are the disk's bytes, its size is the
// disk's size.
//
// When the format was probed rather than given, a guest write that would put
// the qcow2 magic at offset 0 is refused (as QEMU does): the next probe would
// take the disk for a qcow2 image, and the guest could name any host file as
// its backing file.

import { HostFile } from "./host-file.js";
import { DiskImageError, checkRange, type CacheMode, type DiskImage } from "./types.js";

export const QCOW2_MAGIC = [0x51, 0x46, 0x49, 0xfb]; // "QFI\xfb"

/** Zero-filled chunk used for write-zeroes and discard. */
const ZERO_CHUNK = new Uint8Array(1 << 20);

export class RawImage implements DiskImage {
  readonly format = "raw" as const;
  readonly virtualSize: number;
  private readonly file: HostFile;

  constructor(
    readonly path: string,
    readonly readOnly: boolean,
    private readonly cache: CacheMode,
    /** The format was probed: guard the first sector. */
    private readonly probed: boolean,
  ) {
    this.file = HostFile.open(path, readOnly);
    this.virtualSize = this.file.size;
  }

  read(offset: number, into: Uint8Array): void {
    checkRange(this.path, this.virtualSize, offset, into.length);
    // The file may have shrunk under us; what is missing reads as zeros.
    this.file.readZeroPadded(into, offset);
  }

  write(offset: number, data: Uint8Array): void {
    this.checkWritable(offset, data.length);
    if (this.probed && offset < QCOW2_MAGIC.length && data.length > 0) this.guardMagic(offset, data);
    this.file.pwrite(data, offset);
    if (this.cache === "writethrough") this.file.sync();
  }

  flush(): void {
    if (!this.readOnly && this.cache !== "unsafe") this.file.sync();
  }

  discard(offset: number, length: number): void {
    this.writeZeroes(offset, length, true);
  }

  writeZeroes(offset: number, length: number, mayUnmap: boolean): void {
    this.checkWritable(offset, length);
    if (length === 0) return;
    // A range reaching the end of the file becomes a hole: shrink the file,
    // then extend it again (Node has no fallocate to punch holes elsewhere).
    if (mayUnmap && offset + length === this.virtualSize && this.file.size === this.virtualSize) {
      this.file.truncate(offset);
      this.file.truncate(this.virtualSize);
    } else {
      for (let pos = offset; pos < offset + length; pos += ZERO_CHUNK.length) {
        this.file.pwrite(ZERO_CHUNK.subarray(0, Math.min(ZERO_CHUNK.length, offset + length - pos)), pos);
      }
    }
    if (this.cache === "writethrough") this.file.sync();
  }

  close(): void {
    this.file.close();
  }

  private checkWritable(offset: number, length: number): void {
    if (this.readOnly) throw new DiskImageError(`${this.path}: the disk is read-only`);
    checkRange(this.path, this.virtualSize, offset, length);
  }

  /** Refuses a write after which the first bytes would be the qcow2 magic. */
  private guardMagic(offset: number, data: Uint8Array): void {
    const head = new Uint8Array(QCOW2_MAGIC.length);
    this.file.readZeroPadded(head, 0);
    for (let i = 0; i < data.length && offset + i < head.length; i++) head[offset + i] = data[i];
    if (head.every((b, i) => b === QCOW2_MAGIC[i])) {
      throw new DiskImageError(
        `${this.path}: refused a write of a qcow2 header to the start of a raw disk whose format was probed (give format=raw to allow it)`,
      );
    }
  }
}
