// Path-safe access to the shared host directory, and the node and handle
// tables a FUSE server keeps for the guest.
//
// The safety model (as virtiofsd's, which does it with openat() and O_PATH):
// - Every node the guest knows holds a host fd opened O_PATH|O_NOFOLLOW on
//   the very inode it names. The root node is the shared directory.
// - A new node is found by one component under its parent's fd:
//   `/proc/self/fd/<parentfd>/<name>`. The kernel follows the magic link
//   /proc/self/fd/N to the inode the fd holds (whatever path it has now),
//   then resolves `name` in it, never following a symlink there (O_NOFOLLOW
//   and lstat/readlink/unlink/rename/mkdir, which never follow the last
//   component). So a path never leaves the tree through "..", a "/" or a
//   host symlink: `name` is refused when empty, ".", "..", or holding "/"
//   or NUL; and a symlink node is a leaf (using it as a directory is
//   ENOTDIR, opening it is ELOOP).
// - A directory renamed or swapped for a symlink on the host after a
//   lookup: the fd still names the original directory inode, wherever it is
//   now (or a removed directory, where everything is ENOENT).
// - Node ids the guest sends are looked up in the table: one never handed
//   out, or forgotten, is EBADF (the host fd never is a number the guest
//   chose). Handles the same.
// - Operations that need the node's name in its parent (readlink, times and
//   owner of a symlink, link) use the name the node was last found under,
//   and check the inode found there is still the node's (ESTALE otherwise).
//
// Every call here is synchronous: the FUSE server runs on the main thread
// (a first step; see the README's limitations).

import * as fs from "node:fs";
import { spawnSync } from "node:child_process";
import { Errno, FuseError, encodeRdev, type Attr } from "./fuse.js";
import type { ExportedTable, ReopenedTable, SavedTable } from "./saved-table.js";

/** Linux's O_PATH (fs.constants lacks it): an fd that names an inode without opening it for I/O. */
export const O_PATH = 0o10000000;
const { O_NOFOLLOW, O_DIRECTORY, O_RDONLY, O_WRONLY, O_RDWR, O_APPEND, O_TRUNC, O_CREAT, O_EXCL, O_NONBLOCK, O_NOCTTY } = fs.constants;

const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;
export const S_IFDIR = 0o040000;
export const S_IFLNK = 0o120000;
export const S_IFIFO = 0o010000;

/** Longest name a component may have (Linux NAME_MAX). */
export const NAME_MAX = 255;

export interface Node {
  readonly id: number;
  readonly fd: number;
  /** dev:ino, to give the same inode the same node id (the guest's VFS expects that of hard links). */
  readonly key: string;
  readonly type: number;
  /** Lookups the guest holds (FORGET gives them back; at 0 the node goes). */
  nlookup: number;
  /** Where it was last found: for the calls that need a name (readlink, link, symlink times). */
  parentId: number;
  name: string;
}

export interface Handle {
  readonly fd: number;
  readonly node: Node;
  readonly dir: boolean;
  /** The host open flags, as a restored snapshot opens the node again (no O_CREAT, O_EXCL or O_TRUNC). */
  readonly flags: number;
  /** A directory's entries, read at OPENDIR (offsets are indices into it). */
  entries?: { name: string; type: number }[];
}

/** The guest's open flags (Linux asm-generic fcntl.h, what riscv uses), which may differ from the host's. */
const G = { WRONLY: 1, RDWR: 2, ACCMODE: 3, CREAT: 0o100, EXCL: 0o200, TRUNC: 0o1000, APPEND: 0o2000 } as const;

/**
 * Most nodes and handles the guest may hold at once: each is a host fd, and
 * the process's fds are shared with every other device and VM, so one share
 * takes at most a half (nodes) and an eighth (handles) of its soft
 * RLIMIT_NOFILE, and never more than 65,536 / 16,384. A guest past them
 * gets ENFILE (virtiofsd instead raises the limit to a million).
 */
const FD_LIMIT = openFileLimit();
export const MAX_NODES = Math.max(64, Math.min(1 << 16, Math.floor(FD_LIMIT / 2)));
export const MAX_HANDLES = Math.max(32, Math.min(1 << 14, Math.floor(FD_LIMIT / 8)));

/** The soft limit on open files (/proc/self/limits), 1024 when it cannot be read. */
function openFileLimit(): number {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(fs.readFileSync("/proc/self/limits", "utf8"));
    return m ? (m[1] === "unlimited" ? 1 << 20 : Number(m[1])) : 1024;
  } catch {
    return 1024;
  }
}

export class HostFs {
  private readonly nodes = new Map<number, Node>();
  private readonly byKey = new Map<string, Node>();
  private readonly handles = new Map<number, Handle>();
  private nextNode = 2;
  private nextHandle = 1;
  readonly root: Node;

  constructor(readonly hostDir: string, readonly readOnly: boolean) {
    // The shared directory itself is what the host user named (a symlink there is theirs to follow).
    const fd = fs.openSync(hostDir, O_PATH | O_DIRECTORY);
    const st = fs.fstatSync(fd, { bigint: true });
    this.root = { id: 1, fd, key: `${st.dev}:${st.ino}`, type: S_IFDIR, nlookup: 1, parentId: 1, name: "" };
    this.nodes.set(1, this.root);
    this.byKey.set(this.root.key, this.root);
  }

  get nodeCount(): number {
    return this.nodes.size;
  }

  get handleCount(): number {
    return this.handles.size;
  }

  /** A node id from the guest: one this table handed out and the guest has not forgotten. */
  node(id: bigint): Node {
    const n = id <= BigInt(Number.MAX_SAFE_INTEGER) ? this.nodes.get(Number(id)) : undefined;
    if (!n) throw new FuseError(Errno.EBADF, `node ${id} unknown`);
    return n;
  }

  dir(id: bigint): Node {
    const n = this.node(id);
    if (n.type !== S_IFDIR) throw new FuseError(Errno.ENOTDIR);
    return n;
  }

  handle(fh: bigint, dir: boolean): Handle {
    const h = fh <= BigInt(Number.MAX_SAFE_INTEGER) ? this.handles.get(Number(fh)) : undefined;
    if (!h || h.dir !== dir) throw new FuseError(Errno.EBADF, `handle ${fh} unknown`);
    return h;
  }

  writable(): void {
    if (this.readOnly) throw new FuseError(Errno.EROFS);
  }

  // ---- lookups ----

  /** The node of `name` under `parent` (one more lookup the guest holds), and its attributes. */
  lookup(parent: Node, name: string): { node: Node; attr: Attr } {
    const path = childPath(parent, name);
    const fd = fs.openSync(path, O_PATH | O_NOFOLLOW);
    let st: fs.BigIntStats;
    try {
      st = fs.fstatSync(fd, { bigint: true });
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    const key = `${st.dev}:${st.ino}`;
    const known = this.byKey.get(key);
    if (known) {
      fs.closeSync(fd);
      known.nlookup++;
      known.parentId = parent.id;
      known.name = name;
      return { node: known, attr: toAttr(st) };
    }
    if (this.nodes.size >= MAX_NODES) {
      fs.closeSync(fd);
      throw new FuseError(Errno.ENFILE, "node table full");
    }
    const node: Node = { id: this.nextNode++, fd, key, type: Number(st.mode) & S_IFMT, nlookup: 1, parentId: parent.id, name };
    this.nodes.set(node.id, node);
    this.byKey.set(key, node);
    return { node, attr: toAttr(st) };
  }

  /** FORGET: the guest gives back `n` lookups of node `id` (unknown ids are ignored: FORGET has no reply). */
  forget(id: bigint, n: bigint): void {
    if (id === 1n || id > BigInt(Number.MAX_SAFE_INTEGER)) return;
    const node = this.nodes.get(Number(id));
    if (!node) return;
    node.nlookup = n >= BigInt(node.nlookup) ? 0 : node.nlookup - Number(n);
    if (node.nlookup > 0) return;
    this.nodes.delete(node.id);
    this.byKey.delete(node.key);
    closeQuietly(node.fd);
  }

  getattr(node: Node): Attr {
    return toAttr(fs.fstatSync(node.fd, { bigint: true }));
  }

  /** The host path of the node's own inode, through its fd (never for a symlink, which it would not name safely). */
  private selfPath(node: Node): string {
    if (node.type === S_IFLNK) throw new FuseError(Errno.ELOOP);
    return `/proc/self/fd/${node.fd}`;
  }

  /** The node's name in its parent, checked to still be this node's inode. */
  private namedPath(node: Node): Buffer {
    const parent = this.nodes.get(node.parentId);
    if (!parent || node === this.root) throw new FuseError(Errno.ESTALE);
    const path = childPath(parent, node.name);
    const st = fs.lstatSync(path, { bigint: true, throwIfNoEntry: false });
    if (!st || `${st.dev}:${st.ino}` !== node.key) throw new FuseError(Errno.ESTALE, "node moved on the host");
    return path;
  }

  readlink(node: Node): Uint8Array {
    if (node.type !== S_IFLNK) throw new FuseError(Errno.EINVAL);
    return fs.readlinkSync(this.namedPath(node), { encoding: "buffer" });
  }

  setattr(node: Node, a: { mode?: number; uid?: number; gid?: number; size?: bigint; fd?: number; atime?: number | "now"; mtime?: number | "now" }): Attr {
    this.writable();
    const link = node.type === S_IFLNK;
    if (a.mode !== undefined) {
      if (link) throw new FuseError(Errno.EOPNOTSUPP);
      fs.chmodSync(this.selfPath(node), a.mode & 0o7777);
    }
    if (a.uid !== undefined || a.gid !== undefined) {
      if (link) fs.lchownSync(this.namedPath(node), a.uid ?? -1, a.gid ?? -1);
      else fs.chownSync(this.selfPath(node), a.uid ?? -1, a.gid ?? -1);
    }
    if (a.size !== undefined) {
      if (node.type === S_IFDIR) throw new FuseError(Errno.EISDIR);
      if (node.type !== S_IFREG) throw new FuseError(Errno.EINVAL);
      if (a.size > BigInt(Number.MAX_SAFE_INTEGER)) throw new FuseError(Errno.EFBIG);
      if (a.fd !== undefined) fs.ftruncateSync(a.fd, Number(a.size));
      else fs.truncateSync(this.selfPath(node), Number(a.size));
    }
    if (a.atime !== undefined || a.mtime !== undefined) {
      // Node has no UTIME_OMIT: a time not set keeps the value it has now.
      const now = Date.now() / 1000;
      const st = fs.fstatSync(node.fd, { bigint: true });
      const at = a.atime === "now" ? now : a.atime ?? Number(st.atimeNs) / 1e9;
      const mt = a.mtime === "now" ? now : a.mtime ?? Number(st.mtimeNs) / 1e9;
      if (link) fs.lutimesSync(this.namedPath(node), at, mt);
      else fs.utimesSync(this.selfPath(node), at, mt);
    }
    return this.getattr(node);
  }

  // ---- creating and removing names (all under a parent's fd) ----

  mkdir(parent: Node, name: string, mode: number): { node: Node; attr: Attr } {
    this.writable();
    fs.mkdirSync(childPath(parent, name), { mode: mode & 0o7777 });
    return this.lookup(parent, name);
  }

  symlink(parent: Node, name: string, target: string): { node: Node; attr: Attr } {
    this.writable();
    if (target.length === 0 || target.length > 4095) throw new FuseError(target.length ? Errno.ENAMETOOLONG : Errno.ENOENT);
    // The target is only a string kept in the link: the host never follows it.
    fs.symlinkSync(Buffer.from(target, "latin1"), childPath(parent, name));
    return this.lookup(parent, name);
  }

  mknod(parent: Node, name: string, mode: number): { node: Node; attr: Attr } {
    this.writable();
    const type = mode & S_IFMT;
    const path = childPath(parent, name);
    if (type === S_IFREG || type === 0) {
      fs.closeSync(fs.openSync(path, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_NONBLOCK, mode & 0o7777));
    } else if (type === S_IFIFO) {
      mkfifoAt(parent, name, mode & 0o7777);
    } else {
      // Device nodes and sockets on a host folder: refused, as an unprivileged virtiofsd would be.
      throw new FuseError(Errno.EPERM);
    }
    return this.lookup(parent, name);
  }

  unlink(parent: Node, name: string): void {
    this.writable();
    fs.unlinkSync(childPath(parent, name));
  }

  rmdir(parent: Node, name: string): void {
    this.writable();
    fs.rmdirSync(childPath(parent, name));
  }

  rename(parent: Node, name: string, newParent: Node, newName: string): void {
    this.writable();
    const from = childPath(parent, name);
    const st = fs.lstatSync(from, { bigint: true });
    fs.renameSync(from, childPath(newParent, newName));
    const moved = this.byKey.get(`${st.dev}:${st.ino}`);
    if (moved) {
      moved.parentId = newParent.id;
      moved.name = newName;
    }
  }

  link(node: Node, newParent: Node, newName: string): { node: Node; attr: Attr } {
    this.writable();
    if (node.type === S_IFDIR) throw new FuseError(Errno.EPERM);
    // link(2) does not follow the source's last component: a symlink node is linked as the link itself.
    fs.linkSync(this.namedPath(node), childPath(newParent, newName));
    return this.lookup(newParent, newName);
  }

  // ---- open files and directories ----

  private addHandle(h: Handle): number {
    if (this.handles.size >= MAX_HANDLES) {
      closeQuietly(h.fd);
      throw new FuseError(Errno.ENFILE, "handle table full");
    }
    const id = this.nextHandle++;
    this.handles.set(id, h);
    return id;
  }

  /** OPEN: the node's inode reopened for I/O (regular files only: the guest's kernel runs fifos and devices itself). */
  open(node: Node, guestFlags: number): number {
    if (node.type === S_IFDIR) throw new FuseError(Errno.EISDIR);
    if (node.type !== S_IFREG) throw new FuseError(node.type === S_IFLNK ? Errno.ELOOP : Errno.ENXIO);
    const flags = hostOpenFlags(guestFlags);
    if (this.readOnly && ((guestFlags & G.ACCMODE) !== 0 || guestFlags & G.TRUNC)) throw new FuseError(Errno.EROFS);
    return this.addHandle({ fd: fs.openSync(this.selfPath(node), flags), node, dir: false, flags: flags & ~O_TRUNC });
  }

  /** CREATE: a new regular file `name` under `parent`, opened. */
  create(parent: Node, name: string, guestFlags: number, mode: number): { node: Node; attr: Attr; fh: number } {
    this.writable();
    const flags = hostOpenFlags(guestFlags) | O_CREAT | O_NOFOLLOW | (guestFlags & G.EXCL ? O_EXCL : 0);
    const fd = fs.openSync(childPath(parent, name), flags, mode & 0o7777);
    let entry: { node: Node; attr: Attr };
    try {
      entry = this.lookup(parent, name);
    } catch (e) {
      closeQuietly(fd);
      throw e;
    }
    const fh = this.addHandle({ fd, node: entry.node, dir: false, flags: hostOpenFlags(guestFlags) & ~O_TRUNC });
    return { ...entry, fh };
  }

  opendir(node: Node): number {
    if (node.type !== S_IFDIR) throw new FuseError(Errno.ENOTDIR);
    const fd = fs.openSync(this.selfPath(node), DIR_HANDLE_FLAGS);
    let entries: { name: string; type: number }[];
    try {
      entries = dirEntries(node.fd);
    } catch (e) {
      closeQuietly(fd);
      throw e;
    }
    return this.addHandle({ fd, node, dir: true, flags: DIR_HANDLE_FLAGS, entries });
  }

  release(fh: bigint, dir: boolean): void {
    const h = this.handle(fh, dir);
    this.handles.delete(Number(fh));
    closeQuietly(h.fd);
  }

  read(h: Handle, offset: bigint, size: number): Uint8Array {
    if (offset > BigInt(Number.MAX_SAFE_INTEGER)) return new Uint8Array(0);
    const buf = Buffer.allocUnsafe(size);
    let got = 0;
    while (got < size) {
      const n = fs.readSync(h.fd, buf, got, size - got, Number(offset) + got);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got);
  }

  write(h: Handle, offset: bigint, data: Uint8Array): number {
    this.writable();
    if (offset + BigInt(data.length) > BigInt(Number.MAX_SAFE_INTEGER)) throw new FuseError(Errno.EFBIG);
    let done = 0;
    while (done < data.length) done += fs.writeSync(h.fd, data, done, data.length - done, Number(offset) + done);
    return done;
  }

  fsync(h: Handle, dataOnly: boolean): void {
    if (dataOnly) fs.fdatasyncSync(h.fd);
    else fs.fsyncSync(h.fd);
  }

  statfs(node: Node): fs.StatsFs {
    return fs.statfsSync(node.type === S_IFLNK ? `/proc/self/fd/${this.root.fd}` : this.selfPath(node));
  }

  // ---- snapshots (saved-table.ts) ----

  /**
   * The tables as a snapshot keeps them: each node by the name it was last
   * found under in its parent, each handle by its node and open flags. `lost`
   * names the nodes that are no longer found by that name (deleted, or moved
   * on the host): a restore could not open them again.
   */
  exportTable(): ExportedTable {
    const nodes: SavedTable["nodes"] = [];
    const lost: string[] = [];
    for (const n of this.nodes.values()) {
      if (n === this.root) continue;
      nodes.push({ id: n.id, parent: n.parentId, name: n.name, type: n.type, nlookup: n.nlookup });
      const parent = this.nodes.get(n.parentId);
      const st = parent?.type === S_IFDIR ? fs.lstatSync(pathUnder(parent.fd, n.name), { bigint: true, throwIfNoEntry: false }) : undefined;
      if (!st || `${st.dev}:${st.ino}` !== n.key) lost.push(n.name);
    }
    const handles = [...this.handles].map(([id, h]) => {
      // An open file whose node the guest forgot has no name left to find it by.
      if (this.nodes.get(h.node.id) !== h.node) lost.push(`an open file once named '${h.node.name}'`);
      return { id, node: h.node.id, dir: h.dir, flags: h.flags };
    });
    return { table: { nodes, handles, nextNode: this.nextNode, nextHandle: this.nextHandle }, lost };
  }

  /** Install tables a restore opened again (saved-table.ts reopenTable), in place of the guest's (none: a fresh device). */
  adopt(t: ReopenedTable): void {
    this.clear();
    for (const n of t.nodes) {
      const node: Node = { id: n.id, fd: n.fd, key: n.key, type: n.type, nlookup: n.nlookup, parentId: n.parent, name: n.name };
      this.nodes.set(node.id, node);
      this.byKey.set(node.key, node);
    }
    for (const h of t.handles) {
      const node = this.nodes.get(h.node)!;
      this.handles.set(h.id, { fd: h.fd, node, dir: h.dir, flags: h.flags, ...(h.dir ? { entries: h.entries } : {}) });
    }
    this.nextNode = t.nextNode;
    this.nextHandle = t.nextHandle;
  }

  /** Close every host fd (device reset or close): the guest's nodes and handles are gone. */
  clear(): void {
    for (const h of this.handles.values()) closeQuietly(h.fd);
    this.handles.clear();
    for (const n of this.nodes.values()) if (n !== this.root) closeQuietly(n.fd);
    this.nodes.clear();
    this.byKey.clear();
    this.root.nlookup = 1;
    this.nodes.set(1, this.root);
    this.byKey.set(this.root.key, this.root);
  }

  close(): void {
    this.clear();
    closeQuietly(this.root.fd);
  }
}

/** A name the guest sent, refused unless it is one plain component. */
export function checkName(name: string): string {
  if (name.length === 0 || name === "." || name === ".." || name.includes("/") || name.includes("\0")) throw new FuseError(Errno.EINVAL, `bad name ${JSON.stringify(name)}`);
  if (Buffer.byteLength(name, "latin1") > NAME_MAX) throw new FuseError(Errno.ENAMETOOLONG);
  return name;
}

function childPath(parent: Node, name: string): Buffer {
  if (parent.type !== S_IFDIR) throw new FuseError(Errno.ENOTDIR);
  return pathUnder(parent.fd, name);
}

/** `name` (one component) in the directory `dirFd` names. */
export function pathUnder(dirFd: number, name: string): Buffer {
  checkName(name);
  // Names are raw bytes (latin1 keeps each byte as one char); the path goes to the kernel as those bytes.
  return Buffer.from(`/proc/self/fd/${dirFd}/${name}`, "latin1");
}

/** The guest's open flags as the host's: access mode, append and truncate; the rest (O_DIRECT, O_SYNC...) are dropped. */
function hostOpenFlags(g: number): number {
  const acc = g & G.ACCMODE;
  let f = acc === G.WRONLY ? O_WRONLY : acc === G.RDWR ? O_RDWR : O_RDONLY;
  if (g & G.APPEND) f |= O_APPEND;
  if (g & G.TRUNC) f |= O_TRUNC;
  // Never wait on the host side, never take a controlling terminal.
  return f | O_NONBLOCK | O_NOCTTY;
}

export const DIR_HANDLE_FLAGS = O_RDONLY | O_DIRECTORY;

/** A directory's entries as OPENDIR gives them (offsets are indices into it): ".", "..", then the names. */
export function dirEntries(dirFd: number): { name: string; type: number }[] {
  const entries = fs.readdirSync(`/proc/self/fd/${dirFd}`, { withFileTypes: true, encoding: "latin1" as BufferEncoding })
    .map((d) => ({ name: d.name, type: direntType(d) }));
  entries.unshift({ name: ".", type: 4 }, { name: "..", type: 4 });
  return entries;
}

function direntType(d: fs.Dirent): number {
  if (d.isDirectory()) return 4;
  if (d.isFile()) return 8;
  if (d.isSymbolicLink()) return 10;
  if (d.isFIFO()) return 1;
  if (d.isCharacterDevice()) return 2;
  if (d.isBlockDevice()) return 6;
  if (d.isSocket()) return 12;
  return 0;
}

export function toAttr(st: fs.BigIntStats): Attr {
  return {
    ino: st.ino, size: st.size, blocks: st.blocks, atimeNs: st.atimeNs, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs,
    mode: Number(st.mode), nlink: Number(st.nlink), uid: Number(st.uid), gid: Number(st.gid), rdev: encodeRdev(st.rdev), blksize: Number(st.blksize),
  };
}

export function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // already closed: nothing to give back
  }
}

/**
 * Node has no mknod(): mkfifo(1) makes the fifo, given the parent's fd as
 * its fd 3 so the path resolves under the same inode as ours would. It gets
 * an ASCII name of ours (argv is re-encoded as UTF-8, a name is raw bytes);
 * link() then gives it the guest's name (EEXIST if taken, never replacing).
 */
function mkfifoAt(parent: Node, name: string, mode: number): void {
  const tmp = `.tsvisor-fifo-${process.pid}-${Math.random().toString(36).slice(2)}`;
  const r = spawnSync("mkfifo", ["-m", (mode & 0o777).toString(8), "--", `/proc/self/fd/3/${tmp}`], {
    stdio: ["ignore", "ignore", "pipe", parent.fd], timeout: 5000,
  });
  if (r.status !== 0) {
    const msg = String(r.stderr ?? "");
    throw new FuseError(/denied/i.test(msg) ? Errno.EACCES : /space/i.test(msg) ? Errno.ENOSPC : Errno.EIO, msg.trim());
  }
  const tmpPath = childPath(parent, tmp);
  try {
    fs.linkSync(tmpPath, childPath(parent, name));
  } finally {
    fs.rmSync(tmpPath, { force: true });
  }
}
