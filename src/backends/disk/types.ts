// The interface between a block device model (virtio-blk) and a disk image
// backend (raw.ts, qcow2/). Kept apart from disk.ts, which opens images, so the
// backends can import it without an import cycle.
//
// All I/O is synchronous (fs.readSync/writeSync/fsyncSync on a file descriptor):
// the device model runs inside the VM's run loop. Offsets and sizes are byte
// counts as JS numbers (exact up to 2^53).

/** A one-line, user-facing message, e.g.
 *  "disk.qcow2: L2 table offset 0x30000 is outside the file". */
export class DiskImageError extends Error {
  override name = "DiskImageError";
}

/** QEMU's meanings: writeback = fsync on flush; writethrough = fsync after
 *  every write; unsafe = flush is a no-op. */
export type CacheMode = "writeback" | "writethrough" | "unsafe";

export interface DiskOpenOptions {
  /** Probed from the magic when undefined. */
  format?: "raw" | "qcow2";
  readOnly?: boolean;
  /** Default "writeback". */
  cache?: CacheMode;
}

export interface DiskImage {
  readonly path: string;
  readonly format: "raw" | "qcow2";
  /** Bytes the guest sees. */
  readonly virtualSize: number;
  readonly readOnly: boolean;
  /** Fills `into` from the disk at `offset`; a range beyond the end throws DiskImageError. */
  read(offset: number, into: Uint8Array): void;
  /** Throws DiskImageError when read-only or out of range. */
  write(offset: number, data: Uint8Array): void;
  /** Makes everything written so far durable (fsync), as the cache mode says. */
  flush(): void;
  /** May free clusters or punch holes; the range reads as zeros afterwards. */
  discard(offset: number, length: number): void;
  /** The range reads as zeros afterwards; with mayUnmap the space may be freed. */
  writeZeroes(offset: number, length: number, mayUnmap: boolean): void;
  close(): void;
}

export const SECTOR_SIZE = 512;

/** Throws DiskImageError unless [offset, offset + length) lies inside [0, size). */
export function checkRange(path: string, size: number, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new DiskImageError(`${path}: request at offset ${offset}, length ${length} is outside the disk (${size} bytes)`);
  }
}
