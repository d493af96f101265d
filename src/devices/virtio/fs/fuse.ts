// The FUSE wire protocol as virtio-fs carries it (Linux include/uapi/linux/fuse.h,
// protocol 7.x; virtio 1.2, 5.11.6 "Device Operation"): opcodes, flags, the
// errno numbers the guest understands, and readers/writers for the request
// and reply structures. All little-endian (virtio-fs is little-endian on every
// architecture); every u64 is read as a bigint and checked before use.
//
// Request (device-readable): fuse_in_header (40 bytes), then the opcode's
// arguments. Reply (device-writable): fuse_out_header (16 bytes: len, error,
// unique), then the opcode's output. A failed request has error = -errno and
// no output.

/** Protocol version spoken (fuse.h FUSE_KERNEL_VERSION / MINOR). */
export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 38;
export const FUSE_ROOT_ID = 1;

export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;

export enum Op {
  LOOKUP = 1, FORGET = 2, GETATTR = 3, SETATTR = 4, READLINK = 5, SYMLINK = 6,
  MKNOD = 8, MKDIR = 9, UNLINK = 10, RMDIR = 11, RENAME = 12, LINK = 13,
  OPEN = 14, READ = 15, WRITE = 16, STATFS = 17, RELEASE = 18, FSYNC = 20,
  SETXATTR = 21, GETXATTR = 22, LISTXATTR = 23, REMOVEXATTR = 24, FLUSH = 25,
  INIT = 26, OPENDIR = 27, READDIR = 28, RELEASEDIR = 29, FSYNCDIR = 30,
  GETLK = 31, SETLK = 32, SETLKW = 33, ACCESS = 34, CREATE = 35, INTERRUPT = 36,
  BMAP = 37, DESTROY = 38, IOCTL = 39, POLL = 40, NOTIFY_REPLY = 41,
  BATCH_FORGET = 42, FALLOCATE = 43, READDIRPLUS = 44, RENAME2 = 45, LSEEK = 46,
  COPY_FILE_RANGE = 47, SETUPMAPPING = 48, REMOVEMAPPING = 49, SYNCFS = 50, TMPFILE = 51,
}

/** fuse_setattr_in.valid bits. */
export const FATTR_MODE = 1 << 0;
export const FATTR_UID = 1 << 1;
export const FATTR_GID = 1 << 2;
export const FATTR_SIZE = 1 << 3;
export const FATTR_ATIME = 1 << 4;
export const FATTR_MTIME = 1 << 5;
export const FATTR_FH = 1 << 6;
export const FATTR_ATIME_NOW = 1 << 7;
export const FATTR_MTIME_NOW = 1 << 8;

/** fuse_init flags the device may grant (the rest it never sets). */
export const FUSE_ASYNC_READ = 1 << 0;
export const FUSE_ATOMIC_O_TRUNC = 1 << 3;
export const FUSE_BIG_WRITES = 1 << 5;
export const FUSE_AUTO_INVAL_DATA = 1 << 12;
export const FUSE_DO_READDIRPLUS = 1 << 13;
export const FUSE_READDIRPLUS_AUTO = 1 << 14;
export const FUSE_PARALLEL_DIROPS = 1 << 18;
export const FUSE_MAX_PAGES = 1 << 22;

export const FUSE_FSYNC_FDATASYNC = 1;

/**
 * Errno numbers as the guest (Linux asm-generic/errno-base.h and errno.h,
 * which riscv uses) defines them: replies carry these, whatever the host's
 * own numbering.
 */
export const Errno = {
  EPERM: 1, ENOENT: 2, EIO: 5, ENXIO: 6, E2BIG: 7, EBADF: 9, EAGAIN: 11, ENOMEM: 12,
  EACCES: 13, EBUSY: 16, EEXIST: 17, EXDEV: 18, ENODEV: 19, ENOTDIR: 20, EISDIR: 21,
  EINVAL: 22, ENFILE: 23, EMFILE: 24, ETXTBSY: 26, EFBIG: 27, ENOSPC: 28, ESPIPE: 29,
  EROFS: 30, EMLINK: 31, ERANGE: 34, ENAMETOOLONG: 36, ENOSYS: 38, ENOTEMPTY: 39,
  ELOOP: 40, ENODATA: 61, EOVERFLOW: 75, EOPNOTSUPP: 95, ESTALE: 116, EDQUOT: 122,
} as const;

/** A failed request: the reply's error is -errno. */
export class FuseError extends Error {
  constructor(readonly errno: number, message = `errno ${errno}`) {
    super(message);
  }
}

/** A host call's error (Node's e.code) as the guest's errno; anything unknown is EIO. */
export function hostErrno(e: unknown): number {
  if (e instanceof FuseError) return e.errno;
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code && Object.hasOwn(Errno, code)) return Errno[code as keyof typeof Errno];
  if (code === "ENOTSUP") return Errno.EOPNOTSUPP;
  if (code === "EWOULDBLOCK") return Errno.EAGAIN;
  return Errno.EIO;
}

export interface InHeader {
  len: number;
  opcode: number;
  unique: bigint;
  nodeid: bigint;
  uid: number;
  gid: number;
  pid: number;
}

/** A bounds-checked cursor over a request's bytes: reading past the end is EINVAL, never a throw of another kind. */
export class ArgReader {
  private readonly dv: DataView;
  pos = 0;

  constructor(readonly bytes: Uint8Array) {
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get left(): number {
    return this.bytes.length - this.pos;
  }

  private need(n: number): number {
    if (this.pos + n > this.bytes.length) throw new FuseError(Errno.EINVAL, `request too short: ${n} bytes wanted at ${this.pos} of ${this.bytes.length}`);
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u16(): number {
    return this.dv.getUint16(this.need(2), true);
  }

  u32(): number {
    return this.dv.getUint32(this.need(4), true);
  }

  u64(): bigint {
    return this.dv.getBigUint64(this.need(8), true);
  }

  skip(n: number): void {
    this.need(n);
  }

  bytesOf(n: number): Uint8Array {
    const at = this.need(n);
    return this.bytes.subarray(at, at + n);
  }

  /** A NUL-terminated string (a name or a symlink target); without its NUL the request is malformed. */
  cstring(): string {
    const end = this.bytes.indexOf(0, this.pos);
    if (end < 0) throw new FuseError(Errno.EINVAL, "string without its NUL");
    const s = Buffer.from(this.bytes.subarray(this.pos, end)).toString("latin1");
    this.pos = end + 1;
    return s;
  }
}

export function readInHeader(r: ArgReader): InHeader {
  const h = { len: r.u32(), opcode: r.u32(), unique: r.u64(), nodeid: r.u64(), uid: r.u32(), gid: r.u32(), pid: r.u32() };
  r.u16(); // total_extlen: extensions are never asked for (no FUSE_SECURITY_CTX)
  r.u16();
  return h;
}

/** A growable little-endian writer for a reply's output. */
export class OutWriter {
  private buf: Uint8Array;
  private dv: DataView;
  len = 0;

  constructor(initial = 128) {
    this.buf = new Uint8Array(initial);
    this.dv = new DataView(this.buf.buffer);
  }

  private room(n: number): number {
    if (this.len + n > this.buf.length) {
      const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
      next.set(this.buf.subarray(0, this.len));
      this.buf = next;
      this.dv = new DataView(next.buffer);
    }
    const at = this.len;
    this.len += n;
    return at;
  }

  u16(v: number): this {
    const at = this.room(2); // before this.dv is read: room() may replace it
    this.dv.setUint16(at, v, true);
    return this;
  }

  u32(v: number): this {
    const at = this.room(4); // before this.dv is read: room() may replace it
    this.dv.setUint32(at, v >>> 0, true);
    return this;
  }

  i32(v: number): this {
    const at = this.room(4); // before this.dv is read: room() may replace it
    this.dv.setInt32(at, v, true);
    return this;
  }

  u64(v: bigint | number): this {
    const at = this.room(8); // before this.dv is read: room() may replace it
    this.dv.setBigUint64(at, BigInt.asUintN(64, BigInt(v)), true);
    return this;
  }

  bytes(b: Uint8Array): this {
    const at = this.room(b.length);
    this.buf.set(b, at);
    return this;
  }

  zeros(n: number): this {
    const at = this.room(n);
    this.buf.fill(0, at, this.len);
    return this;
  }

  /** Pad to a multiple of 8 (FUSE_DIRENT_ALIGN). */
  align8(): this {
    return this.zeros((8 - (this.len % 8)) % 8);
  }

  get bytesWritten(): Uint8Array {
    return this.buf.subarray(0, this.len);
  }
}

/** What fuse_attr needs of a host stat (bigint: inode numbers and nanoseconds are 64-bit). */
export interface Attr {
  ino: bigint;
  size: bigint;
  blocks: bigint;
  atimeNs: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  blksize: number;
}

const NS = 1_000_000_000n;

/** struct fuse_attr (88 bytes). */
export function writeAttr(w: OutWriter, a: Attr): void {
  w.u64(a.ino).u64(a.size).u64(a.blocks);
  w.u64(a.atimeNs / NS).u64(a.mtimeNs / NS).u64(a.ctimeNs / NS);
  w.u32(Number(a.atimeNs % NS)).u32(Number(a.mtimeNs % NS)).u32(Number(a.ctimeNs % NS));
  w.u32(a.mode).u32(a.nlink).u32(a.uid).u32(a.gid).u32(a.rdev).u32(a.blksize).u32(0);
}

/** struct fuse_entry_out (128 bytes): node id 0 says "no entry, cache the absence" when attr is undefined. */
export function writeEntry(w: OutWriter, nodeid: number, attr: Attr | undefined, validSec: number): void {
  w.u64(nodeid).u64(0).u64(validSec).u64(validSec).u32(0).u32(0);
  if (attr) writeAttr(w, attr);
  else w.zeros(88);
}

/**
 * A host device number (glibc's dev_t encoding: major in bits 8-19 and
 * 32-43, minor in bits 0-7 and 20-31) as the 32-bit new_encode_dev() form
 * fuse_attr.rdev carries.
 */
export function encodeRdev(dev: number | bigint): number {
  const d = BigInt(dev);
  const major = Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn));
  const minor = Number((d & 0xffn) | ((d >> 12n) & ~0xffn));
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}
