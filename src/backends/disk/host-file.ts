// A host file opened for a disk image: positioned, synchronous reads and writes
// on a file descriptor, with every system error turned into a DiskImageError
// (the device model reports those to the guest as I/O errors).

import * as fs from "node:fs";
import { DiskImageError } from "./types.js";

function why(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  switch (err.code) {
    case "ENOENT": return "no such file";
    case "EACCES": case "EPERM": return "permission denied";
    case "EISDIR": return "is a directory";
    case "EROFS": return "read-only file system";
    case "ENOSPC": return "no space left on device";
    case "EIO": return "input/output error";
    case "EFBIG": return "file too large";
    default: return err.message ?? String(e);
  }
}

export class HostFile {
  /** The file's size in bytes, kept up to date by this object's writes. */
  size: number;
  private closed = false;

  private constructor(readonly path: string, readonly fd: number, readonly readOnly: boolean) {
    this.size = this.stat().size;
  }

  static open(path: string, readOnly: boolean): HostFile {
    let fd: number;
    try {
      fd = fs.openSync(path, readOnly ? "r" : "r+");
    } catch (e) {
      throw new DiskImageError(`${path}: ${why(e)}`);
    }
    try {
      const st = fs.fstatSync(fd);
      if (st.isDirectory()) throw new DiskImageError(`${path}: is a directory`);
      return new HostFile(path, fd, readOnly);
    } catch (e) {
      fs.closeSync(fd);
      throw e instanceof DiskImageError ? e : new DiskImageError(`${path}: ${why(e)}`);
    }
  }

  /** Creates a new file; refuses an existing one. */
  static create(path: string): HostFile {
    let fd: number;
    try {
      fd = fs.openSync(path, "wx+");
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new DiskImageError(`${path}: ${err.code === "EEXIST" ? "already exists" : why(e)}`);
    }
    return new HostFile(path, fd, false);
  }

  stat(): fs.Stats {
    try {
      return fs.fstatSync(this.fd);
    } catch (e) {
      throw new DiskImageError(`${this.path}: ${why(e)}`);
    }
  }

  /** Reads up to into.length bytes at `pos`; returns how many (fewer only at end of file). */
  pread(into: Uint8Array, pos: number): number {
    let done = 0;
    try {
      while (done < into.length) {
        const n = fs.readSync(this.fd, into, done, into.length - done, pos + done);
        if (n === 0) break;
        done += n;
      }
    } catch (e) {
      throw new DiskImageError(`${this.path}: read at offset ${pos + done}: ${why(e)}`);
    }
    return done;
  }

  /** Reads into.length bytes at `pos`, zero-filling whatever lies beyond the end of the file. */
  readZeroPadded(into: Uint8Array, pos: number): void {
    const n = pos >= this.size ? 0 : this.pread(into, pos);
    if (n < into.length) into.fill(0, n);
  }

  /** Reads exactly into.length bytes at `pos`; `what` names the structure in the error. */
  readExact(into: Uint8Array, pos: number, what: string): void {
    if (this.pread(into, pos) !== into.length) {
      throw new DiskImageError(`${this.path}: ${what} at offset 0x${pos.toString(16)} is beyond the end of the file`);
    }
  }

  pwrite(data: Uint8Array, pos: number): void {
    if (this.readOnly) throw new DiskImageError(`${this.path}: opened read-only`);
    let done = 0;
    try {
      while (done < data.length) done += fs.writeSync(this.fd, data, done, data.length - done, pos + done);
    } catch (e) {
      throw new DiskImageError(`${this.path}: write at offset ${pos + done}: ${why(e)}`);
    } finally {
      if (pos + done > this.size) this.size = pos + done;
    }
  }

  truncate(length: number): void {
    try {
      fs.ftruncateSync(this.fd, length);
    } catch (e) {
      throw new DiskImageError(`${this.path}: truncate: ${why(e)}`);
    }
    this.size = length;
  }

  sync(): void {
    if (this.readOnly) return;
    try {
      fs.fdatasyncSync(this.fd);
    } catch (e) {
      throw new DiskImageError(`${this.path}: fsync: ${why(e)}`);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      fs.closeSync(this.fd);
    } catch {
      // nothing useful to do: the data was flushed or the caller did not ask for it
    }
  }
}
