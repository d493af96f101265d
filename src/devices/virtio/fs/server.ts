// The FUSE server behind a virtio-fs device: one request's bytes in, one
// reply's bytes out (or none: FORGET and BATCH_FORGET have no reply).
// Every opcode Linux's virtiofs driver needs for a working mount is served
// through HostFs (host-fs.ts, the path-safe host side); xattrs, locks, ioctl,
// DAX mappings and any unknown opcode are ENOSYS, which the guest's kernel
// remembers and stops asking.
//
// Hostile input: every length is checked against the bytes that came (a
// header whose len lies is EINVAL), READ and WRITE sizes are clamped to
// max_read/max_write, a reply that would not fit the guest's buffer is
// EINVAL before anything is done, and no failure is ever a throw out of
// handle(): a host error is its errno, anything else EIO.

import {
  ArgReader, Errno, FuseError, OutWriter, Op, hostErrno, readInHeader, writeAttr, writeEntry,
  FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION, IN_HEADER_SIZE, OUT_HEADER_SIZE,
  FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE, FATTR_ATIME, FATTR_MTIME, FATTR_FH, FATTR_ATIME_NOW, FATTR_MTIME_NOW,
  FUSE_ASYNC_READ, FUSE_ATOMIC_O_TRUNC, FUSE_BIG_WRITES, FUSE_AUTO_INVAL_DATA, FUSE_DO_READDIRPLUS, FUSE_READDIRPLUS_AUTO, FUSE_PARALLEL_DIROPS, FUSE_MAX_PAGES,
  FUSE_FSYNC_FDATASYNC, type InHeader, type Attr,
} from "./fuse.js";
import { HostFs, checkName, toAttr, S_IFDIR, S_IFREG, type Node } from "./host-fs.js";
import * as fs from "node:fs";

/** Largest WRITE (and READ) payload: 32 pages, what the driver fits in a 128-entry queue with room to spare. */
export const MAX_WRITE = 128 * 1024;
/** Largest request read from the guest: a WRITE's payload and its headers. Anything longer is EINVAL unread. */
export const MAX_REQUEST = MAX_WRITE + 4096;
/** Seconds the guest may cache names and attributes (virtiofsd's cache=auto uses 1). */
const VALID_SECONDS = 1;
// FUSE_AUTO_INVAL_DATA: the share is the host's folder, changed behind the
// guest's back; with it the driver drops a file's cached pages when a GETATTR
// (every VALID_SECONDS at most) shows another mtime or size, so a file held
// open in the guest reads what the host wrote (fuse.h; libfuse asks for it by default).
export const INIT_FLAGS = FUSE_ASYNC_READ | FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES | FUSE_AUTO_INVAL_DATA | FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES;

const ENTRY_OUT = 128;
const ATTR_OUT = 104;
const OPEN_OUT = 16;
const STATFS_OUT = 80;

/** Fixed reply sizes: the guest's buffer must hold them before the request runs. */
const OUT_SIZE: Partial<Record<Op, number>> = {
  [Op.LOOKUP]: ENTRY_OUT, [Op.GETATTR]: ATTR_OUT, [Op.SETATTR]: ATTR_OUT, [Op.SYMLINK]: ENTRY_OUT, [Op.MKNOD]: ENTRY_OUT,
  [Op.MKDIR]: ENTRY_OUT, [Op.LINK]: ENTRY_OUT, [Op.OPEN]: OPEN_OUT, [Op.OPENDIR]: OPEN_OUT, [Op.CREATE]: ENTRY_OUT + OPEN_OUT,
  [Op.STATFS]: STATFS_OUT, [Op.WRITE]: 8, [Op.LSEEK]: 8, [Op.INIT]: 8,
};

/** The ops that change the share: EROFS on a read-only one (OPEN for writing checks itself). */
const WRITE_OPS = new Set<number>([Op.SETATTR, Op.SYMLINK, Op.MKNOD, Op.MKDIR, Op.UNLINK, Op.RMDIR, Op.RENAME, Op.RENAME2, Op.LINK, Op.WRITE, Op.CREATE, Op.FALLOCATE]);

export interface ServerStats {
  requests: number;
  errors: number;
  /** Requests too broken to answer (no header): dropped. */
  dropped: number;
  /** Failures that were not a host errno: a bug or a surprise, answered EIO. */
  internalErrors: number;
  /** Requests by opcode name (unknown ones as "other"). */
  byOp: Record<string, number>;
}

/** What INIT agreed: all the session state a server holds beyond its node and handle tables. */
export interface FuseSession {
  minor: number;
  maxReadahead: number;
  flags: number;
}

export class FuseServer {
  readonly fs: HostFs;
  /** The negotiated INIT (what a snapshot keeps, device.ts), undefined before INIT. */
  init?: FuseSession;
  readonly stats: ServerStats = { requests: 0, errors: 0, dropped: 0, internalErrors: 0, byOp: {} };
  private readonly umask: number;
  /** The last failure that was not a host errno (for --stats and tests). */
  lastInternalError?: string;

  /** `umask`: the process's (a worker cannot read it: the main thread passes it on). */
  constructor(hostDir: string, readOnly: boolean, umask = processUmask()) {
    this.fs = new HostFs(hostDir, readOnly);
    this.umask = umask;
  }

  /** Device reset: the guest's nodes and handles are gone, INIT comes again. */
  reset(): void {
    this.fs.clear();
    this.init = undefined;
  }

  close(): void {
    this.fs.close();
  }

  /**
   * One request (the chain's readable bytes, at most MAX_REQUEST of them)
   * and room for `outRoom` reply bytes: the reply, or undefined for none.
   */
  handle(req: Uint8Array, outRoom: number): Uint8Array | undefined {
    this.stats.requests++;
    if (req.length < IN_HEADER_SIZE) {
      this.stats.dropped++;
      return undefined;
    }
    const r = new ArgReader(req);
    const h = readInHeader(r);
    const opName = Op[h.opcode] ?? "other";
    this.stats.byOp[opName] = (this.stats.byOp[opName] ?? 0) + 1;
    if (h.opcode === Op.FORGET || h.opcode === Op.BATCH_FORGET) {
      try {
        this.forget(h, new ArgReader(req.subarray(IN_HEADER_SIZE, Math.min(Math.max(h.len, IN_HEADER_SIZE), req.length))));
      } catch {
        // no reply to give, whatever was wrong with it
      }
      return undefined;
    }
    if (outRoom < OUT_HEADER_SIZE) {
      this.stats.dropped++;
      return undefined;
    }
    const out = new OutWriter();
    let errno = 0;
    try {
      if (h.len < IN_HEADER_SIZE || h.len > req.length) throw new FuseError(Errno.EINVAL, `header says ${h.len} bytes, ${req.length} came`);
      const need = OUT_SIZE[h.opcode as Op];
      if (need !== undefined && OUT_HEADER_SIZE + need > outRoom) throw new FuseError(Errno.EINVAL, "reply buffer too small");
      if (h.opcode !== Op.INIT && !this.init) throw new FuseError(Errno.EIO, "request before INIT");
      if (WRITE_OPS.has(h.opcode)) this.fs.writable();
      this.dispatch(h, new ArgReader(req.subarray(IN_HEADER_SIZE, h.len)), out, outRoom - OUT_HEADER_SIZE);
    } catch (e) {
      errno = hostErrno(e);
      if (!(e instanceof FuseError) && !(e as NodeJS.ErrnoException)?.code) {
        this.stats.internalErrors++;
        this.lastInternalError = String((e as Error)?.stack ?? e).split("\n").slice(0, 3).join(" | ");
      }
    }
    const body = errno ? new Uint8Array(0) : out.bytesWritten;
    if (errno) this.stats.errors++;
    if (OUT_HEADER_SIZE + body.length > outRoom) {
      // A variable-sized reply that does not fit (its op bounds itself, so only a bug gets here).
      return header(-Errno.EINVAL, h.unique, 0);
    }
    const reply = new Uint8Array(OUT_HEADER_SIZE + body.length);
    reply.set(header(-errno, h.unique, body.length));
    reply.set(body, OUT_HEADER_SIZE);
    return reply;
  }

  private forget(h: InHeader, r: ArgReader): void {
    if (h.opcode === Op.FORGET) {
      this.fs.forget(h.nodeid, r.u64());
      return;
    }
    const count = r.u32();
    r.u32();
    for (let i = 0; i < count && r.left >= 16; i++) this.fs.forget(r.u64(), r.u64());
  }

  private entry(out: OutWriter, e: { node: Node; attr: Attr }): void {
    writeEntry(out, e.node.id, e.attr, VALID_SECONDS);
  }

  /** mkdir/create/mknod made it with the host's umask applied on top of the guest's: set what the guest asked. */
  private fixMode(e: { node: Node; attr: Attr }, mode: number): void {
    if ((mode & 0o7777 & this.umask) === 0) return;
    e.attr = this.fs.setattr(e.node, { mode: mode & 0o7777 });
  }

  private dispatch(h: InHeader, r: ArgReader, out: OutWriter, room: number): void {
    const f = this.fs;
    switch (h.opcode) {
      case Op.INIT: return this.doInit(r, out);
      case Op.DESTROY:
        this.reset();
        return;
      case Op.LOOKUP: {
        const parent = f.dir(h.nodeid);
        const name = checkName(r.cstring());
        let e: { node: Node; attr: Attr };
        try {
          e = f.lookup(parent, name);
        } catch (err) {
          // A name that is not there: node id 0 with a timeout, which the
          // driver keeps as a negative dentry (no LOOKUP again for it meanwhile).
          if (hostErrno(err) !== Errno.ENOENT) throw err;
          return writeEntry(out, 0, undefined, VALID_SECONDS);
        }
        return this.entry(out, e);
      }
      case Op.GETATTR: {
        const node = f.node(h.nodeid);
        out.u64(VALID_SECONDS).u32(0).u32(0);
        return writeAttr(out, f.getattr(node));
      }
      case Op.SETATTR: {
        const node = f.node(h.nodeid);
        const valid = r.u32();
        r.u32();
        const fh = r.u64(), size = r.u64();
        r.u64();
        const atime = r.u64(), mtime = r.u64();
        r.u64();
        const atimensec = r.u32(), mtimensec = r.u32();
        r.u32();
        const mode = r.u32();
        r.u32();
        const uid = r.u32(), gid = r.u32();
        const fd = valid & FATTR_FH && valid & FATTR_SIZE ? f.handle(fh, false).fd : undefined;
        const time = (set: number, now: number, sec: bigint, nsec: number): number | "now" | undefined =>
          valid & now ? "now" : valid & set ? Number(BigInt.asIntN(64, sec)) + Math.min(nsec, 999_999_999) / 1e9 : undefined;
        const attr = f.setattr(node, {
          mode: valid & FATTR_MODE ? mode : undefined,
          uid: valid & FATTR_UID ? uid : undefined,
          gid: valid & FATTR_GID ? gid : undefined,
          size: valid & FATTR_SIZE ? size : undefined,
          fd,
          atime: time(FATTR_ATIME, FATTR_ATIME_NOW, atime, atimensec),
          mtime: time(FATTR_MTIME, FATTR_MTIME_NOW, mtime, mtimensec),
        });
        out.u64(VALID_SECONDS).u32(0).u32(0);
        return writeAttr(out, attr);
      }
      case Op.READLINK: {
        const target = f.readlink(f.node(h.nodeid));
        if (target.length > room) throw new FuseError(Errno.ENAMETOOLONG);
        out.bytes(target);
        return;
      }
      case Op.SYMLINK: {
        const parent = f.dir(h.nodeid);
        const name = checkName(r.cstring());
        const target = r.cstring();
        return this.entry(out, f.symlink(parent, name, target));
      }
      case Op.MKNOD: {
        const parent = f.dir(h.nodeid);
        const mode = r.u32();
        r.u32();
        r.u32();
        r.u32();
        const e = f.mknod(parent, checkName(r.cstring()), mode);
        this.fixMode(e, mode);
        return this.entry(out, e);
      }
      case Op.MKDIR: {
        const parent = f.dir(h.nodeid);
        const mode = r.u32();
        r.u32();
        const e = f.mkdir(parent, checkName(r.cstring()), mode);
        this.fixMode(e, mode);
        return this.entry(out, e);
      }
      case Op.UNLINK: return f.unlink(f.dir(h.nodeid), checkName(r.cstring()));
      case Op.RMDIR: return f.rmdir(f.dir(h.nodeid), checkName(r.cstring()));
      case Op.RENAME:
      case Op.RENAME2: {
        const parent = f.dir(h.nodeid);
        const newDir = f.dir(r.u64());
        if (h.opcode === Op.RENAME2) {
          const flags = r.u32();
          r.u32();
          // RENAME_NOREPLACE, EXCHANGE and WHITEOUT need renameat2(), which Node does not have.
          if (flags !== 0) throw new FuseError(Errno.EINVAL);
        }
        const name = checkName(r.cstring());
        const newName = checkName(r.cstring());
        return f.rename(parent, name, newDir, newName);
      }
      case Op.LINK: {
        const newParent = f.dir(h.nodeid);
        const node = f.node(r.u64());
        return this.entry(out, f.link(node, newParent, checkName(r.cstring())));
      }
      case Op.OPEN: {
        const node = f.node(h.nodeid);
        const flags = r.u32();
        out.u64(f.open(node, flags)).u32(0).u32(0);
        return;
      }
      case Op.CREATE: {
        const parent = f.dir(h.nodeid);
        const flags = r.u32(), mode = r.u32();
        r.u32();
        r.u32();
        const c = f.create(parent, checkName(r.cstring()), flags, mode);
        this.fixMode(c, mode);
        this.entry(out, c);
        out.u64(c.fh).u32(0).u32(0);
        return;
      }
      case Op.READ: {
        const fh = r.u64(), offset = r.u64(), size = r.u32();
        const hd = f.handle(fh, false);
        out.bytes(f.read(hd, offset, Math.min(size, MAX_WRITE, room)));
        return;
      }
      case Op.WRITE: {
        const fh = r.u64(), offset = r.u64(), size = r.u32();
        r.u32();
        r.u64();
        r.u32();
        r.u32();
        if (size > MAX_WRITE) throw new FuseError(Errno.EINVAL, "write beyond max_write");
        const data = r.bytesOf(size);
        out.u32(f.write(f.handle(fh, false), offset, data)).u32(0);
        return;
      }
      case Op.STATFS: {
        const s = f.statfs(f.node(h.nodeid));
        out.u64(s.blocks).u64(s.bfree).u64(s.bavail).u64(s.files).u64(s.ffree);
        out.u32(s.bsize).u32(255).u32(s.bsize).u32(0).zeros(24);
        return;
      }
      case Op.RELEASE:
      case Op.RELEASEDIR:
        return f.release(r.u64(), h.opcode === Op.RELEASEDIR);
      case Op.FLUSH:
        f.handle(r.u64(), false);
        return;
      case Op.FSYNC:
      case Op.FSYNCDIR: {
        const fh = r.u64(), flags = r.u32();
        return f.fsync(f.handle(fh, h.opcode === Op.FSYNCDIR), (flags & FUSE_FSYNC_FDATASYNC) !== 0);
      }
      case Op.OPENDIR: {
        out.u64(f.opendir(f.node(h.nodeid))).u32(0).u32(0);
        return;
      }
      case Op.READDIR:
      case Op.READDIRPLUS: {
        const fh = r.u64(), offset = r.u64(), size = r.u32();
        return this.readdir(f.handle(fh, true), offset, Math.min(size, room, MAX_WRITE), h.opcode === Op.READDIRPLUS, out);
      }
      case Op.ACCESS: return this.access(f.node(h.nodeid), r.u32(), h);
      case Op.LSEEK: {
        const fh = r.u64(), offset = r.u64(), whence = r.u32();
        out.u64(this.lseek(f.handle(fh, false), offset, whence));
        return;
      }
      case Op.FALLOCATE: {
        const fh = r.u64(), offset = r.u64(), length = r.u64(), mode = r.u32();
        return this.fallocate(f.handle(fh, false), offset, length, mode);
      }
      default:
        throw new FuseError(Errno.ENOSYS);
    }
  }

  private doInit(r: ArgReader, out: OutWriter): void {
    const major = r.u32(), minor = r.u32(), maxReadahead = r.u32(), flags = r.u32();
    if (major < FUSE_KERNEL_VERSION) throw new FuseError(Errno.EINVAL, `FUSE ${major}.${minor} too old`);
    if (major > FUSE_KERNEL_VERSION) {
      // The driver asks again with our major (fuse.h: "reply with the major version it supports").
      out.u32(FUSE_KERNEL_VERSION).u32(FUSE_KERNEL_MINOR_VERSION);
      return;
    }
    const agreed = Math.min(minor, FUSE_KERNEL_MINOR_VERSION);
    this.init = { minor: agreed, maxReadahead, flags: flags & INIT_FLAGS };
    out.u32(FUSE_KERNEL_VERSION).u32(agreed).u32(maxReadahead).u32(this.init.flags);
    out.u16(64).u16(48).u32(MAX_WRITE);
    if (agreed >= 23) out.u32(1).u16(MAX_WRITE / 4096).u16(0).u32(0).zeros(28);
  }

  private readdir(h: { node: Node; entries?: { name: string; type: number }[]; fd: number }, offset: bigint, size: number, plus: boolean, out: OutWriter): void {
    const entries = h.entries ?? [];
    const start = offset > BigInt(entries.length) ? entries.length : Number(offset);
    for (let i = start; i < entries.length; i++) {
      const { name, type } = entries[i];
      const nameBytes = Buffer.from(name, "latin1");
      const rec = ((plus ? ENTRY_OUT : 0) + 24 + nameBytes.length + 7) & ~7;
      if (out.len + rec > size) break;
      let ino: bigint;
      let dtype = type;
      if (name === "." || name === "..") {
        ino = name === "." ? this.fs.getattr(h.node).ino : 1n;
        if (plus) writeEntry(out, 0, undefined, 0); // no node: the driver takes no lookup of "." and ".."
      } else if (plus) {
        let e: { node: Node; attr: Attr };
        try {
          e = this.fs.lookup(h.node, name);
        } catch {
          continue; // gone since OPENDIR, or a name the guest may not see: leave it out
        }
        this.entry(out, e);
        ino = e.attr.ino;
        dtype = (e.attr.mode >> 12) & 0xf;
      } else {
        const st = fs.lstatSync(Buffer.from(`/proc/self/fd/${h.node.fd}/${name}`, "latin1"), { bigint: true, throwIfNoEntry: false });
        if (!st) continue;
        ino = st.ino;
      }
      out.u64(ino).u64(i + 1).u32(nameBytes.length).u32(dtype).bytes(nameBytes).align8();
    }
  }

  /** ACCESS: the mode bits against the caller's uid and gid (root passes but needs an x bit to execute). */
  private access(node: Node, mask: number, h: InHeader): void {
    const a = this.fs.getattr(node);
    if (mask & 2 && this.fs.readOnly) throw new FuseError(Errno.EROFS);
    if (mask === 0) return;
    if (h.uid === 0) {
      if (mask & 1 && (a.mode & S_IFDIR) !== S_IFDIR && (a.mode & 0o111) === 0) throw new FuseError(Errno.EACCES);
      return;
    }
    const bits = h.uid === a.uid ? (a.mode >> 6) & 7 : h.gid === a.gid ? (a.mode >> 3) & 7 : a.mode & 7;
    if ((mask & 7 & ~bits) !== 0) throw new FuseError(Errno.EACCES);
  }

  /** LSEEK (the driver sends SEEK_DATA and SEEK_HOLE only): the whole file counts as data, its end as the hole. */
  private lseek(h: { fd: number }, offset: bigint, whence: number): bigint {
    const size = fs.fstatSync(h.fd, { bigint: true }).size;
    switch (whence) {
      case 0: return offset;
      case 2: return size + BigInt.asIntN(64, offset);
      case 3: if (offset >= size) throw new FuseError(Errno.ENXIO); return offset;
      case 4: if (offset >= size) throw new FuseError(Errno.ENXIO); return size;
      default: throw new FuseError(Errno.EINVAL);
    }
  }

  /**
   * FALLOCATE without fallocate() (Node has none): mode 0 extends the file
   * (the space is not reserved), KEEP_SIZE alone does nothing, the rest
   * (punching holes, zeroing ranges) is EOPNOTSUPP.
   */
  private fallocate(h: { fd: number; node: Node }, offset: bigint, length: bigint, mode: number): void {
    if (h.node.type !== S_IFREG) throw new FuseError(Errno.ENODEV);
    const end = offset + length;
    if (length === 0n || end > BigInt(Number.MAX_SAFE_INTEGER)) throw new FuseError(length === 0n ? Errno.EINVAL : Errno.EFBIG);
    if (mode === 1) return;
    if (mode !== 0) throw new FuseError(Errno.EOPNOTSUPP);
    const st = toAttr(fs.fstatSync(h.fd, { bigint: true }));
    if (end > st.size) fs.ftruncateSync(h.fd, Number(end));
  }
}

/** The process's umask (process.umask() without an argument is deprecated: set and set back). */
export function processUmask(): number {
  const u = process.umask(0);
  process.umask(u);
  return u;
}

function header(error: number, unique: bigint, bodyLen: number): Uint8Array {
  const b = new Uint8Array(OUT_HEADER_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, OUT_HEADER_SIZE + bodyLen, true);
  dv.setInt32(4, error, true);
  dv.setBigUint64(8, unique, true);
  return b;
}
