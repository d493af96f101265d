// A writer for cpio "newc" archives, the format the Linux kernel unpacks as an
// initramfs (Documentation/driver-api/early-userspace/buffer-format.rst; the
// kernel's reader is init/initramfs.c, its own writer usr/gen_init_cpio.c).
//
// Each entry is a 110-byte ASCII header, the path, the data:
//   "070701" then 13 fields of 8 hex digits: ino, mode, uid, gid, nlink, mtime,
//   filesize, devmajor, devminor, rdevmajor, rdevminor, namesize (with the
//   NUL), check (0 for newc);
//   the path and a NUL, padded with NULs so the data starts 4-byte aligned;
//   the data (a symlink's data is its target), padded to 4 bytes.
// The archive ends with an entry named "TRAILER!!!".
//
// Output is reproducible: mtime 0, uid/gid 0 (root), inode numbers in
// insertion order. Paths are relative ("bin/busybox"), as gen_init_cpio and
// `find . | cpio -o` write them; parents are added before their children
// because the kernel creates entries in archive order.

import { ImageError } from "./errors.js";

const MAGIC = "070701";
const HEADER_SIZE = 110;
const TRAILER = "TRAILER!!!";

// File type bits of st_mode (POSIX <sys/stat.h>).
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFIFO = 0o010000;

// Fields are 8 hex digits: sizes and numbers must fit in 32 bits.
const MAX_U32 = 0xffff_ffff;

interface Entry {
  path: string;
  mode: number; // type | permissions
  data: Uint8Array;
  rdevMajor: number;
  rdevMinor: number;
}

const encoder = new TextEncoder();

export class CpioArchive {
  private readonly entries: Entry[] = [];
  private readonly byPath = new Map<string, Entry>();

  /** A directory. Naming an existing directory again sets its permissions. */
  directory(path: string, perm = 0o755): this {
    const p = checkPath(path);
    const existing = this.byPath.get(p);
    if (existing && (existing.mode & 0o170000) === S_IFDIR) {
      existing.mode = S_IFDIR | checkPerm(perm, p);
      return this;
    }
    return this.add(p, S_IFDIR | checkPerm(perm, p), new Uint8Array(0));
  }

  /** A regular file with these contents. */
  file(path: string, data: Uint8Array | string, perm = 0o644): this {
    const p = checkPath(path);
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    return this.add(p, S_IFREG | checkPerm(perm, p), bytes);
  }

  /** A symbolic link; the target is stored verbatim (relative or absolute). */
  symlink(path: string, target: string): this {
    const p = checkPath(path);
    if (target === "" || target.includes("\0")) throw new ImageError(`cpio: symlink ${p} needs a target without NUL bytes`);
    return this.add(p, S_IFLNK | 0o777, encoder.encode(target));
  }

  /** A character device node (e.g. dev/console is 5,1 per Documentation/admin-guide/devices.txt). */
  charDevice(path: string, major: number, minor: number, perm = 0o600): this {
    const p = checkPath(path);
    for (const [what, n] of [["major", major], ["minor", minor]] as const) {
      if (!Number.isInteger(n) || n < 0 || n > MAX_U32) throw new ImageError(`cpio: device ${p}: ${what} number ${n} is not a 32-bit unsigned integer`);
    }
    return this.add(p, S_IFCHR | checkPerm(perm, p), new Uint8Array(0), major, minor);
  }

  /** A named pipe (FIFO): the kernel's unpacker makes it with mknod. */
  fifo(path: string, perm = 0o600): this {
    const p = checkPath(path);
    return this.add(p, S_IFIFO | checkPerm(perm, p), new Uint8Array(0));
  }

  /** Paths in archive order (parents first). */
  paths(): string[] {
    return this.entries.map((e) => e.path);
  }

  /** The archive: every entry then the trailer; the length is a multiple of 4. */
  toBytes(): Uint8Array {
    const chunks: Uint8Array[] = [];
    let ino = 1;
    for (const e of this.entries) {
      const isDir = (e.mode & 0o170000) === S_IFDIR;
      // nlink 2 for directories ("." and the parent's entry), 1 otherwise: the
      // kernel treats a non-directory with nlink >= 2 as a hard link candidate.
      chunks.push(...encodeEntry(e.path, { ino: ino++, mode: e.mode, nlink: isDir ? 2 : 1, rdevMajor: e.rdevMajor, rdevMinor: e.rdevMinor }, e.data));
    }
    chunks.push(...encodeEntry(TRAILER, { ino: 0, mode: 0, nlink: 1, rdevMajor: 0, rdevMinor: 0 }, new Uint8Array(0)));
    return concatBytes(chunks);
  }

  private add(path: string, mode: number, data: Uint8Array, rdevMajor = 0, rdevMinor = 0): this {
    if (this.byPath.has(path)) throw new ImageError(`cpio: ${path} is already in the archive`);
    if (data.length > MAX_U32) throw new ImageError(`cpio: ${path} is ${data.length} bytes; newc sizes are 32-bit`);
    this.addParents(path);
    const entry = { path, mode, data, rdevMajor, rdevMinor };
    this.entries.push(entry);
    this.byPath.set(path, entry);
    return this;
  }

  private addParents(path: string): void {
    const parts = path.split("/");
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join("/");
      const existing = this.byPath.get(dir);
      if (existing) {
        if ((existing.mode & 0o170000) !== S_IFDIR) throw new ImageError(`cpio: ${dir} is not a directory, so it cannot hold ${path}`);
        continue;
      }
      const entry = { path: dir, mode: S_IFDIR | 0o755, data: new Uint8Array(0), rdevMajor: 0, rdevMinor: 0 };
      this.entries.push(entry);
      this.byPath.set(dir, entry);
    }
  }
}

/**
 * Archives one after another, each starting 4-byte aligned: the kernel
 * unpacks every archive it finds in the initrd, skipping NUL padding between
 * them (init/initramfs.c, unpack_to_rootfs), so a later archive adds files
 * and can replace earlier ones. tsvisor appends a small command archive.
 */
export function concatCpio(...archives: Uint8Array[]): Uint8Array {
  const chunks: Uint8Array[] = [];
  for (const a of archives) {
    chunks.push(a);
    const pad = padLength(a.length);
    if (pad) chunks.push(new Uint8Array(pad));
  }
  return concatBytes(chunks);
}

interface HeaderFields {
  ino: number;
  mode: number;
  nlink: number;
  rdevMajor: number;
  rdevMinor: number;
}

function encodeEntry(path: string, h: HeaderFields, data: Uint8Array): Uint8Array[] {
  const name = encoder.encode(path);
  const namesize = name.length + 1;
  const fields = [h.ino, h.mode, 0 /* uid */, 0 /* gid */, h.nlink, 0 /* mtime */, data.length,
    0 /* devmajor */, 0 /* devminor */, h.rdevMajor, h.rdevMinor, namesize, 0 /* check */];
  const header = MAGIC + fields.map(hex8).join("");
  const head = new Uint8Array(HEADER_SIZE + namesize + padLength(HEADER_SIZE + namesize));
  head.set(encoder.encode(header), 0);
  head.set(name, HEADER_SIZE); // the NUL and the padding are the array's zeros
  const out: Uint8Array[] = [head];
  if (data.length) {
    out.push(data);
    const pad = padLength(data.length);
    if (pad) out.push(new Uint8Array(pad));
  }
  return out;
}

function hex8(n: number): string {
  return n.toString(16).toUpperCase().padStart(8, "0");
}

function padLength(n: number): number {
  return (4 - (n % 4)) % 4;
}

function checkPath(path: string): string {
  if (typeof path !== "string" || path === "") throw new ImageError("cpio: empty path");
  if (path.startsWith("/")) throw new ImageError(`cpio: path ${JSON.stringify(path)} must be relative (no leading "/")`);
  if (path.includes("\0")) throw new ImageError(`cpio: path ${JSON.stringify(path)} contains a NUL byte`);
  const p = path.endsWith("/") ? path.slice(0, -1) : path;
  for (const part of p.split("/")) {
    if (part === "" || part === "." || part === "..") throw new ImageError(`cpio: path ${JSON.stringify(path)} has an empty, "." or ".." component`);
  }
  if (p === TRAILER) throw new ImageError(`cpio: ${TRAILER} is reserved for the end of the archive`);
  return p;
}

function checkPerm(perm: number, path: string): number {
  if (!Number.isInteger(perm) || perm < 0 || perm > 0o7777) throw new ImageError(`cpio: ${path}: mode 0o${Number(perm).toString(8)} is not a permission mode (0..0o7777)`);
  return perm;
}

function concatBytes(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
