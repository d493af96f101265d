import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VirtioFs, VIRTIO_ID_FS } from "./device.js";
import { FuseClient, cstr, concat, parseEntry, parseAttrOut } from "./test-client.js";
import { Errno, Op, OutWriter, FATTR_MODE, FATTR_SIZE, FATTR_ATIME, FATTR_MTIME, FATTR_MTIME_NOW, FATTR_UID, FATTR_GID } from "./fuse.js";
import { MAX_WRITE } from "./server.js";
import { VIRTIO_F_EVENT_IDX } from "../virtio.js";
import { TestDriver, testSharedGuestMemory } from "../test-driver.js";
import { StateReader } from "../../../snapshot/state.js";

function share(files: Record<string, string> = {}): string {
  const dir = fs.mkdtempSync(join(tmpdir(), "tsvisor-fs-"));
  for (const [p, content] of Object.entries(files)) {
    fs.mkdirSync(join(dir, p, ".."), { recursive: true });
    fs.writeFileSync(join(dir, p), content);
  }
  return dir;
}

function client(dir: string, readOnly = false): FuseClient {
  const c = new FuseClient(new VirtioFs({ tag: "share0", hostDir: dir, readOnly, thread: "main" }));
  const r = c.init();
  assert.equal(r.error, 0);
  return c;
}

function setattr(valid: number, a: { fh?: bigint; size?: number; atime?: number; mtime?: number; mode?: number; uid?: number; gid?: number }): Uint8Array {
  return new OutWriter().u32(valid).u32(0).u64(a.fh ?? 0).u64(a.size ?? 0).u64(0).u64(a.atime ?? 0).u64(a.mtime ?? 0).u64(0)
    .u32(0).u32(0).u32(0).u32(a.mode ?? 0).u32(0).u32(a.uid ?? 0).u32(a.gid ?? 0).u32(0).bytesWritten;
}

test("virtio-fs config space: device 26, tag and one request queue", () => {
  const d = new VirtioFs({ tag: "share0", hostDir: share(), thread: "main" });
  assert.equal(d.deviceId, VIRTIO_ID_FS);
  const tag = Buffer.alloc(36);
  for (let i = 0; i < 36; i++) tag[i] = d.readConfig(i, 1);
  assert.equal(tag.toString("latin1").replace(/\0+$/, ""), "share0");
  assert.equal(d.readConfig(36, 4), 1);
  assert.equal(d.queueMaxSizes.length, 2);
  assert.throws(() => new VirtioFs({ tag: "x".repeat(37), hostDir: share(), thread: "main" }));
});

test("virtio-fs INIT negotiates 7.x with a bounded max_write; requests before INIT fail", () => {
  const c = new FuseClient(new VirtioFs({ tag: "t", hostDir: share(), thread: "main" }));
  assert.equal(c.call(Op.GETATTR, 1, new Uint8Array(16)).error, -Errno.EIO);
  const r = c.init();
  assert.equal(r.error, 0);
  const dv = new DataView(r.body.buffer, r.body.byteOffset);
  assert.equal(dv.getUint32(0, true), 7);
  assert.equal(dv.getUint32(4, true), 38);
  assert.equal(dv.getUint32(20, true), MAX_WRITE);
  assert.equal(r.body.length, 64);
  // A newer major: the device answers with its own major only.
  const r2 = c.call(Op.INIT, 0, new OutWriter().u32(8).u32(0).u32(0).u32(0).zeros(48).bytesWritten);
  assert.equal(r2.error, 0);
  assert.equal(r2.body.length, 8);
});

test("virtio-fs LOOKUP, GETATTR, OPEN, READ, RELEASE, FLUSH, FSYNC of a host file", () => {
  const dir = share({ "a/hello.txt": "hello from the host\n" });
  const c = client(dir);
  const a = c.entry(1, "a");
  assert.equal(a.mode & 0o170000, 0o040000);
  const f = c.entry(a.nodeid, "hello.txt");
  assert.equal(f.size, 20n);
  const neg = c.lookup(a.nodeid, "missing");
  assert.equal(neg.error, 0);
  assert.equal(parseEntry(neg.body).nodeid, 0n, "a negative entry");
  assert.equal(new DataView(neg.body.buffer, neg.body.byteOffset).getBigUint64(16, true), 1n, "cached for a second");
  // The same inode, the same node id.
  assert.equal(c.entry(a.nodeid, "hello.txt").nodeid, f.nodeid);
  const g = c.call(Op.GETATTR, f.nodeid, new Uint8Array(16));
  assert.equal(g.error, 0);
  assert.equal(parseAttrOut(g.body).size, 20n);
  const fh = c.fh(c.open(f.nodeid, 0));
  const r = c.read(f.nodeid, fh, 6, 100);
  assert.equal(Buffer.from(r.body).toString(), "from the host\n");
  assert.equal(c.call(Op.FLUSH, f.nodeid, new OutWriter().u64(fh).u32(0).u32(0).u64(0).bytesWritten).error, 0);
  assert.equal(c.call(Op.FSYNC, f.nodeid, new OutWriter().u64(fh).u32(1).u32(0).bytesWritten).error, 0);
  assert.equal(c.release(f.nodeid, fh).error, 0);
  assert.equal(c.read(f.nodeid, fh, 0, 10).error, -Errno.EBADF);
  assert.equal(c.call(Op.ACCESS, f.nodeid, new OutWriter().u32(4).u32(0).bytesWritten).error, 0);
  assert.equal(c.call(Op.ACCESS, f.nodeid, new OutWriter().u32(1).u32(0).bytesWritten).error, -Errno.EACCES);
  assert.equal(c.call(Op.ACCESS, f.nodeid, new OutWriter().u32(2).u32(0).bytesWritten, 4096, { uid: 1000, gid: 1000 }).error, -Errno.EACCES);
});

test("virtio-fs CREATE, WRITE, SETATTR (size, mode, owner, times incl. NOW), the host sees it all", () => {
  const dir = share();
  const c = client(dir);
  const cr = c.create(1, "new.txt", 0o600);
  assert.equal(cr.error, 0);
  const e = parseEntry(cr.body);
  const fh = new DataView(cr.body.buffer, cr.body.byteOffset).getBigUint64(128, true);
  assert.equal(c.write(e.nodeid, fh, 0, Buffer.from("written by the guest")).error, 0);
  assert.equal(fs.readFileSync(join(dir, "new.txt"), "utf8"), "written by the guest");
  assert.equal(fs.statSync(join(dir, "new.txt")).mode & 0o777, 0o600);
  let r = c.call(Op.SETATTR, e.nodeid, setattr(FATTR_SIZE, { size: 7 }));
  assert.equal(r.error, 0);
  assert.equal(parseAttrOut(r.body).size, 7n);
  r = c.call(Op.SETATTR, e.nodeid, setattr(FATTR_MODE, { mode: 0o751 }));
  assert.equal(parseAttrOut(r.body).mode & 0o7777, 0o751);
  r = c.call(Op.SETATTR, e.nodeid, setattr(FATTR_ATIME | FATTR_MTIME, { atime: 1_000_000, mtime: 2_000_000 }));
  assert.equal(r.error, 0);
  assert.equal(fs.statSync(join(dir, "new.txt")).mtimeMs, 2_000_000_000);
  assert.equal(fs.statSync(join(dir, "new.txt")).atimeMs, 1_000_000_000);
  r = c.call(Op.SETATTR, e.nodeid, setattr(FATTR_MTIME | FATTR_MTIME_NOW, {}));
  assert.ok(Math.abs(fs.statSync(join(dir, "new.txt")).mtimeMs - Date.now()) < 10_000);
  assert.equal(fs.statSync(join(dir, "new.txt")).atimeMs, 1_000_000_000);
  if (process.getuid?.() === 0) {
    r = c.call(Op.SETATTR, e.nodeid, setattr(FATTR_UID | FATTR_GID, { uid: 1234, gid: 5678 }));
    assert.equal(r.error, 0);
    assert.equal(parseAttrOut(r.body).uid, 1234);
    assert.equal(fs.statSync(join(dir, "new.txt")).gid, 5678);
  }
  // The same through the handle (FATTR_FH, ftruncate).
  r = c.call(Op.SETATTR, e.nodeid, setattr(FATTR_SIZE | 64, { size: 3, fh }));
  assert.equal(fs.readFileSync(join(dir, "new.txt"), "utf8"), "wri");
  // CREATE of an existing name with O_EXCL.
  assert.equal(c.create(1, "new.txt", 0o644, 2 | 0o200).error, -Errno.EEXIST);
  // WRITE larger than max_write: refused.
  assert.equal(c.write(e.nodeid, fh, 0, new Uint8Array(MAX_WRITE + 1)).error, -Errno.EINVAL);
  assert.equal(c.release(e.nodeid, fh).error, 0);
});

test("virtio-fs MKDIR, MKNOD (file, fifo), SYMLINK, READLINK, LINK, RENAME, RENAME2, UNLINK, RMDIR", () => {
  const dir = share({ "f": "data" });
  const c = client(dir);
  const d = parseEntry(c.mkdir(1, "sub", 0o750).body);
  assert.ok(fs.statSync(join(dir, "sub")).isDirectory());
  assert.equal(fs.statSync(join(dir, "sub")).mode & 0o777, 0o750);
  assert.equal(c.mkdir(1, "sub").error, -Errno.EEXIST);
  const mk = (name: string, mode: number) => c.call(Op.MKNOD, d.nodeid, concat(new OutWriter().u32(mode).u32(0).u32(0).u32(0).bytesWritten, cstr(name)));
  assert.equal(mk("plain", 0o100644).error, 0);
  assert.ok(fs.statSync(join(dir, "sub/plain")).isFile());
  assert.equal(mk("pipe", 0o010644).error, 0);
  assert.ok(fs.lstatSync(join(dir, "sub/pipe")).isFIFO());
  assert.equal(fs.lstatSync(join(dir, "sub/pipe")).mode & 0o777, 0o644);
  assert.equal(mk("pipe", 0o010644).error, -Errno.EEXIST);
  assert.deepEqual(fs.readdirSync(join(dir, "sub")).sort(), ["pipe", "plain"]);
  assert.equal(mk("dev", 0o020644).error, -Errno.EPERM);
  const s = c.symlink(d.nodeid, "link", "../f");
  assert.equal(s.error, 0);
  assert.equal(fs.readlinkSync(join(dir, "sub/link")), "../f");
  const rl = c.call(Op.READLINK, parseEntry(s.body).nodeid);
  assert.equal(Buffer.from(rl.body).toString(), "../f");
  const f = c.entry(1, "f");
  const l = c.call(Op.LINK, d.nodeid, concat(new OutWriter().u64(f.nodeid).bytesWritten, cstr("hard")));
  assert.equal(l.error, 0);
  assert.equal(parseEntry(l.body).nodeid, f.nodeid);
  assert.equal(parseEntry(l.body).nlink, 2);
  assert.equal(fs.readFileSync(join(dir, "sub/hard"), "utf8"), "data");
  assert.equal(c.call(Op.RENAME, d.nodeid, concat(new OutWriter().u64(1).bytesWritten, cstr("hard"), cstr("moved"))).error, 0);
  assert.equal(fs.readFileSync(join(dir, "moved"), "utf8"), "data");
  assert.equal(c.call(Op.RENAME2, 1, concat(new OutWriter().u64(d.nodeid).u32(0).u32(0).bytesWritten, cstr("moved"), cstr("back"))).error, 0);
  assert.ok(fs.existsSync(join(dir, "sub/back")));
  assert.equal(c.call(Op.RENAME2, d.nodeid, concat(new OutWriter().u64(1).u32(1).u32(0).bytesWritten, cstr("back"), cstr("x"))).error, -Errno.EINVAL);
  // A renamed symlink still reads (its name was followed).
  assert.equal(c.call(Op.RENAME, d.nodeid, concat(new OutWriter().u64(1).bytesWritten, cstr("link"), cstr("link2"))).error, 0);
  assert.equal(Buffer.from(c.call(Op.READLINK, parseEntry(s.body).nodeid).body).toString(), "../f");
  assert.equal(c.call(Op.RMDIR, 1, cstr("sub")).error, -Errno.ENOTEMPTY);
  for (const n of ["plain", "pipe", "back"]) assert.equal(c.call(Op.UNLINK, d.nodeid, cstr(n)).error, 0);
  assert.equal(c.call(Op.UNLINK, 1, cstr("link2")).error, 0);
  assert.equal(c.call(Op.RMDIR, 1, cstr("sub")).error, 0);
  assert.ok(!fs.existsSync(join(dir, "sub")));
  assert.equal(c.call(Op.UNLINK, 1, cstr("nothing")).error, -Errno.ENOENT);
});

test("virtio-fs OPENDIR, READDIR, READDIRPLUS (lookups counted), FSYNCDIR, RELEASEDIR, FORGET, BATCH_FORGET", () => {
  const files: Record<string, string> = {};
  for (let i = 0; i < 200; i++) files[`file-with-a-long-name-${i}`] = String(i);
  const dir = share(files);
  fs.mkdirSync(join(dir, "d"));
  const c = client(dir);
  const names = c.list(1).map((e) => e.name).sort();
  assert.equal(names.length, 203);
  assert.ok(names.includes(".") && names.includes("..") && names.includes("d"));
  const plus = c.list(1, true);
  assert.equal(plus.length, 203);
  for (const e of plus) assert.equal(e.nodeid === 0n, e.name === "." || e.name === "..");
  assert.equal(plus.find((e) => e.name === "d")?.type, 4);
  const dev = c.device.server.fs;
  assert.equal(dev.nodeCount, 202);
  const fh = c.fh(c.call(Op.OPENDIR, 1, new Uint8Array(8)));
  assert.equal(c.call(Op.FSYNCDIR, 1, new OutWriter().u64(fh).u32(0).u32(0).bytesWritten).error, 0);
  assert.equal(c.release(1n, fh, true).error, 0);
  assert.equal(c.release(1n, fh, true).error, -Errno.EBADF);
  // FORGET gives the lookups back; BATCH_FORGET many at once; the node ids are then unknown.
  const one = plus.find((e) => e.name === "d")!;
  c.forget(one.nodeid, 1);
  assert.equal(c.call(Op.GETATTR, one.nodeid, new Uint8Array(16)).error, -Errno.EBADF);
  const rest = plus.filter((e) => e.nodeid !== 0n && e !== one);
  const batch = new OutWriter().u32(rest.length).u32(0);
  for (const e of rest) batch.u64(e.nodeid).u64(1);
  assert.equal(c.call(Op.BATCH_FORGET, 0, batch.bytesWritten, 0, { queue: 0 }).len, 0);
  assert.equal(dev.nodeCount, 1);
});

test("virtio-fs STATFS, LSEEK, FALLOCATE, DESTROY; xattrs and unknown opcodes are ENOSYS", () => {
  const dir = share({ f: "0123456789" });
  const c = client(dir);
  const st = c.call(Op.STATFS, 1);
  assert.equal(st.error, 0);
  assert.equal(st.body.length, 80);
  assert.ok(new DataView(st.body.buffer, st.body.byteOffset).getBigUint64(0, true) > 0n);
  const f = c.entry(1, "f");
  const fh = c.fh(c.open(f.nodeid, 2));
  const seek = (off: number, whence: number) => c.call(Op.LSEEK, f.nodeid, new OutWriter().u64(fh).u64(off).u32(whence).u32(0).bytesWritten);
  assert.equal(new DataView(seek(3, 3).body.buffer, seek(3, 3).body.byteOffset).getBigUint64(0, true), 3n);
  const hole = seek(3, 4);
  assert.equal(new DataView(hole.body.buffer, hole.body.byteOffset).getBigUint64(0, true), 10n);
  assert.equal(seek(10, 3).error, -Errno.ENXIO);
  const falloc = (off: number, len: number, mode: number) => c.call(Op.FALLOCATE, f.nodeid, new OutWriter().u64(fh).u64(off).u64(len).u32(mode).u32(0).bytesWritten);
  assert.equal(falloc(0, 100, 0).error, 0);
  assert.equal(fs.statSync(join(dir, "f")).size, 100);
  assert.equal(falloc(0, 1000, 1).error, 0);
  assert.equal(fs.statSync(join(dir, "f")).size, 100);
  assert.equal(falloc(0, 10, 3).error, -Errno.EOPNOTSUPP);
  for (const op of [Op.SETXATTR, Op.GETXATTR, Op.LISTXATTR, Op.REMOVEXATTR, Op.GETLK, Op.IOCTL, Op.SETUPMAPPING, 9999, 0]) {
    assert.equal(c.call(op, f.nodeid, new Uint8Array(64)).error, -Errno.ENOSYS, `opcode ${op}`);
  }
  assert.equal(c.call(Op.DESTROY, 0).error, 0);
  assert.equal(c.device.server.fs.nodeCount, 1);
  assert.equal(c.call(Op.GETATTR, 1, new Uint8Array(16)).error, -Errno.EIO);
});

test("virtio-fs read-only share: every write-type op is EROFS, reads work", () => {
  const dir = share({ f: "ro data", "d/g": "x" });
  const c = client(dir, true);
  const f = c.entry(1, "f");
  const d = c.entry(1, "d");
  assert.equal(c.create(1, "new").error, -Errno.EROFS);
  assert.equal(c.mkdir(1, "new").error, -Errno.EROFS);
  assert.equal(c.symlink(1, "new", "f").error, -Errno.EROFS);
  assert.equal(c.call(Op.MKNOD, 1, concat(new OutWriter().u32(0o100644).u32(0).u32(0).u32(0).bytesWritten, cstr("n"))).error, -Errno.EROFS);
  assert.equal(c.call(Op.UNLINK, 1, cstr("f")).error, -Errno.EROFS);
  assert.equal(c.call(Op.RMDIR, 1, cstr("d")).error, -Errno.EROFS);
  assert.equal(c.call(Op.RENAME, 1, concat(new OutWriter().u64(1).bytesWritten, cstr("f"), cstr("g"))).error, -Errno.EROFS);
  assert.equal(c.call(Op.RENAME2, 1, concat(new OutWriter().u64(1).u32(0).u32(0).bytesWritten, cstr("f"), cstr("g"))).error, -Errno.EROFS);
  assert.equal(c.call(Op.LINK, d.nodeid, concat(new OutWriter().u64(f.nodeid).bytesWritten, cstr("h"))).error, -Errno.EROFS);
  assert.equal(c.call(Op.SETATTR, f.nodeid, setattr(FATTR_MODE, { mode: 0o777 })).error, -Errno.EROFS);
  assert.equal(c.open(f.nodeid, 1).error, -Errno.EROFS);
  assert.equal(c.open(f.nodeid, 0o1000).error, -Errno.EROFS);
  const fh = c.fh(c.open(f.nodeid, 0));
  assert.equal(c.write(f.nodeid, fh, 0, Buffer.from("x")).error, -Errno.EROFS);
  assert.equal(c.call(Op.FALLOCATE, f.nodeid, new OutWriter().u64(fh).u64(0).u64(10).u32(0).u32(0).bytesWritten).error, -Errno.EROFS);
  assert.equal(c.call(Op.ACCESS, f.nodeid, new OutWriter().u32(2).u32(0).bytesWritten).error, -Errno.EROFS);
  assert.equal(Buffer.from(c.read(f.nodeid, fh, 0, 100).body).toString(), "ro data");
  assert.equal(fs.readFileSync(join(dir, "f"), "utf8"), "ro data");
  assert.deepEqual(fs.readdirSync(dir).sort(), ["d", "f"]);
});

test("virtio-fs snapshot: the session and what the guest holds go along, found again by name on restore; moved or deleted files refuse it; tampered tables are refused", async () => {
  const dir = share({ f: "the content", "d/g": "deeper" });
  const c = new FuseClient(new VirtioFs({ tag: "share0", hostDir: dir, thread: "main" }));
  // Not mounted yet (what a fast-start snapshot holds): no session, no nodes.
  const bare = await c.driver.snapshot() as { device: { initialized: boolean; nodes: unknown[] } };
  assert.deepEqual([bare.device.initialized, bare.device.nodes.length], [false, 0]);
  c.driver.transport.resumeIo();
  assert.equal(c.init().error, 0);

  // The guest holds a file (open), a directory, a file in it, and the root open as a directory.
  const f = c.entry(1, "f");
  const fh = c.fh(c.open(f.nodeid, 0));
  const d = c.entry(1, "d");
  const g = c.entry(d.nodeid, "g");
  const rootDir = c.fh(c.call(Op.OPENDIR, 1, new OutWriter().u32(0).u32(0).bytesWritten));
  const state = await c.driver.snapshot() as { device: { nodes: unknown[]; handles: unknown[] } };
  assert.deepEqual([state.device.nodes.length, state.device.handles.length], [3, 2]);

  // Restored (here as a second device on the same folder): the same node ids and handles work, without a new INIT.
  const again = new VirtioFs({ tag: "share0", hostDir: dir, thread: "main" });
  const restored = new FuseClient(again, await c.driver.snapshotInto(again));
  assert.equal(Buffer.from(restored.read(f.nodeid, fh, 4, 7).body).toString(), "content");
  assert.equal(parseAttrOut(restored.call(Op.GETATTR, g.nodeid, new Uint8Array(16)).body).size, 6n);
  assert.equal(restored.entry(d.nodeid, "g").nodeid, g.nodeid, "a lookup finds the node it had");
  assert.equal(restored.release(f.nodeid, fh).error, 0);
  assert.equal(restored.release(1n, rootDir, true).error, 0);
  assert.equal(restored.device.stats.handles, 0);
  restored.forget(g.nodeid, 2);
  assert.equal(restored.device.stats.nodes, 3, "the root, f and d");

  // Restored onto a folder without those files: refused, naming one.
  const empty = TestDriver.restored(new VirtioFs({ tag: "share0", hostDir: share(), thread: "main" }), c.driver);
  assert.throws(() => empty.transport.restoreState(new StateReader(state, "share0")), /virtio-fs share0: .*\/f, which the guest holds, cannot be opened again \(ENOENT\)/);

  // Tampered: a minor we never agree to, flags we never offer, a name that is a path, a parent that is a file, a handle on a directory as a file, a directory its own parent.
  for (const [change, message] of [
    [(x: any) => (x.minor = 99), /share0\.device\.minor: expected an integer 0\.\.38/],
    [(x: any) => (x.flags = 0x8000_0000), /flags 0x80000000 has bits this server never agrees to/],
    [(x: any) => (x.nodes[0].name = "../../etc"), /nodes\[0\]: name .* is no single component/],
    [(x: any) => (x.nodes[2].parent = Number(f.nodeid)), /its parent .* is no directory node/],
    [(x: any) => (x.handles.find((h: any) => h.dir).dir = false), /is no regular file node/],
    [(x: any) => (x.nodes[1].parent = x.nodes[1].id), /node \d+'s parent \d+ is not in the table \(or the parents form a loop\)/],
  ] as const) {
    const bad = JSON.parse(JSON.stringify(state));
    change(bad.device);
    const t = TestDriver.restored(new VirtioFs({ tag: "share0", hostDir: dir, thread: "main" }), c.driver);
    assert.throws(() => t.transport.restoreState(new StateReader(bad, "share0")), message);
  }

  // A file the guest holds, deleted on the host: the snapshot is refused, and the device goes on.
  fs.rmSync(join(dir, "f"));
  await assert.rejects(restored.driver.snapshot(), /virtio-fs share0 \(.*\): 1 files the guest holds are no longer where it found them \(deleted, or moved on the host; 'f' among them\)/);
  restored.driver.transport.resumeIo();
  assert.equal(restored.call(Op.GETATTR, d.nodeid, new Uint8Array(16)).error, 0);
});

/** A device on its I/O thread, started by a driver on shared RAM without EVENT_IDX (this driver keeps no used_event: every completion interrupts). */
function threadDevice(hostDir: string) {
  const dev = new VirtioFs({ tag: "w", hostDir });
  const { mem, shared } = testSharedGuestMemory(8 << 20);
  const d = new TestDriver(dev, mem, { shared });
  d.start(d.deviceFeatures() & ~VIRTIO_F_EVENT_IDX, 64);
  return { dev, d, shared };
}

/** A FUSE request on `queue` of the driver, with room for its reply: its head. */
function addRequest(d: TestDriver, opcode: number, nodeid: number | bigint, args: Uint8Array, unique: number, queue = 1): number {
  return d.add(queue, [{ data: concat(new OutWriter().u32(40 + args.length).u32(opcode).u64(unique).u64(BigInt(nodeid)).u32(0).u32(0).u32(1).u32(0).bytesWritten, args) }, { writeLen: 4096 }]);
}

test("virtio-fs snapshot on its I/O thread: the thread sends its tables at the pause, and a restored thread serves the same nodes and handles without INIT", async () => {
  const dir = share({ f: "from the thread" });
  const { dev, d, shared } = threadDevice(dir);
  /** One request, answered: its error and reply body (nothing for hiprio's FORGET). */
  const call = async (driver: TestDriver, opcode: number, nodeid: number | bigint, args: Uint8Array, queue = 1) => {
    const head = addRequest(driver, opcode, nodeid, args, 1, queue);
    driver.kick(queue);
    for (let i = 0; i < 1000; i++) {
      const done = driver.used(queue).find((u) => u.id === head);
      if (done && queue === 0) return { error: 0, body: new Uint8Array(0) };
      if (done) {
        const out = driver.mem.read(driver.bufferAddr(queue, head, 1), done.len);
        return { error: new DataView(out.buffer).getInt32(4, true), body: out.subarray(16) };
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    throw new Error("no reply");
  };
  assert.equal((await call(d, Op.INIT, 0, new OutWriter().u32(7).u32(38).u32(0).u32(0).zeros(48).bytesWritten)).error, 0);
  const f = parseEntry((await call(d, Op.LOOKUP, 1, cstr("f"))).body).nodeid;
  const opened = await call(d, Op.OPEN, f, new OutWriter().u32(0).u32(0).bytesWritten);
  const fh = new DataView(opened.body.buffer, opened.body.byteOffset).getBigUint64(0, true);

  const other = new VirtioFs({ tag: "w", hostDir: dir });
  const r = await d.snapshotInto(other, { shared });
  try {
    const read = await call(r, Op.READ, f, new OutWriter().u64(fh).u64(5).u32(100).u32(0).u64(0).u32(0).u32(0).bytesWritten);
    assert.equal(read.error, 0, "served with the session of before: no EIO for a request before INIT");
    assert.equal(Buffer.from(read.body).toString(), "the thread");
    await call(r, Op.FORGET, f, new OutWriter().u64(1).bytesWritten, 0);
    for (let i = 0; i < 500 && other.stats.requests < 2; i++) await new Promise((res) => setTimeout(res, 2));
    assert.deepEqual([other.stats.nodes, other.stats.handles], [1, 1], "f forgotten, its handle still open");
    // A handle whose node the guest forgot (no kernel does that) cannot be found again by name: a snapshot is refused.
    await assert.rejects(r.snapshot(), /1 files the guest holds are no longer where it found them/);
  } finally {
    await dev.close();
    await other.close();
  }
});

test("virtio-fs on its I/O thread: the thread serves the rings itself, in order, across a pause, a stopped queue, a reset and close", async () => {
  const { dev, d } = threadDevice(share({ f: "from the I/O thread" }));
  const req = (opcode: number, nodeid: number, args: Uint8Array, unique: number, queue = 1) => addRequest(d, opcode, nodeid, args, unique, queue);
  // Completions come from the thread alone: the main thread only waits (no poll()).
  const settle = async (n: number, queue = 1) => {
    const got: { id: number; len: number }[] = [];
    for (let i = 0; i < 1000 && got.length < n; i++) {
      await new Promise((r) => setTimeout(r, 2));
      got.push(...d.used(queue));
    }
    return got;
  };
  const init = req(Op.INIT, 0, new OutWriter().u32(7).u32(38).u32(0).u32(0).zeros(48).bytesWritten, 1);
  const look = req(Op.LOOKUP, 1, cstr("f"), 2);
  const miss = req(Op.LOOKUP, 1, cstr("missing"), 3);
  d.kick(1);
  const used = await settle(3);
  assert.deepEqual(used.map((u) => u.id), [init, look, miss]);
  // The interrupt follows the used entries (relayed by the main thread here: this driver has no irqfd route).
  for (let i = 0; i < 500 && !d.irq; i++) await new Promise((r) => setTimeout(r, 2));
  assert.ok(d.irq, "the used-buffer interrupt is raised");
  d.ackInterrupts();
  const reply = d.mem.read(d.bufferAddr(1, look, 1), used[1].len);
  assert.equal(new DataView(reply.buffer).getInt32(4, true), 0);
  assert.equal(parseEntry(reply.subarray(16)).size, 19n);
  assert.equal(parseEntry(d.mem.read(d.bufferAddr(1, miss, 1), 16 + 128).subarray(16)).nodeid, 0n);
  // The thread publishes its counts after the batch it completes (the counts by opcode last).
  for (let i = 0; i < 500 && (dev.stats.byOp.LOOKUP ?? 0) < 2; i++) await new Promise((r) => setTimeout(r, 2));
  assert.equal(dev.stats.requests, 3);
  assert.equal(dev.stats.byOp.LOOKUP, 2);
  assert.equal(dev.stats.nodes, 2, "the root and f");
  dev.syncStats();
  assert.equal(d.transport.queueStats[1].requests, 3, "the transport's counts follow the thread's");

  // Paused, the thread takes nothing; resumed, it goes on from where it was.
  await d.transport.pauseIo();
  const getattr = req(Op.GETATTR, 1, new Uint8Array(16), 4);
  d.kick(1);
  await new Promise((r) => setTimeout(r, 30));
  assert.deepEqual(d.used(1), [], "nothing served while paused");
  d.transport.resumeIo();
  assert.deepEqual((await settle(1)).map((u) => u.id), [getattr]);

  // A resume while the pause still waits for the thread: every request is answered once, in order.
  const paused = d.transport.pauseIo();
  d.transport.resumeIo();
  await paused;
  const first = req(Op.GETATTR, 1, new Uint8Array(16), 40);
  const second = req(Op.LOOKUP, 1, cstr("f"), 41);
  d.kick(1);
  assert.deepEqual((await settle(2)).map((u) => u.id), [first, second]);
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(d.used(1), [], "no request answered twice");

  // hiprio stops: the request queue is still served.
  const forget = req(Op.FORGET, 2, new OutWriter().u64(1).bytesWritten, 5, 0);
  d.kick(0);
  assert.deepEqual((await settle(1, 0)).map((u) => u.id), [forget]);
  await new Promise((r) => setTimeout(r, 10));
  d.setReg(0x30, 0); // QueueSel
  d.setReg(0x44, 0); // QueueReady: the driver stops hiprio (4.2.2.2)
  const again = req(Op.LOOKUP, 1, cstr("f"), 6);
  d.kick(1);
  assert.deepEqual((await settle(1)).map((u) => u.id), [again]);

  // A reset returns with the thread off the rings; the guest's nodes go.
  req(Op.GETATTR, 1, new Uint8Array(16), 7);
  d.kick(1);
  d.setReg(0x70, 0);
  await dev.quiesce();
  assert.deepEqual(d.warnings, []);
  await dev.close();
});

test("virtio-fs on its I/O thread: a broken ring sets DEVICE_NEEDS_RESET; close lets go of every host fd", async () => {
  const dir = share({ f: "x" });
  const dev = new VirtioFs({ tag: "w", hostDir: dir, name: "fs0" });
  const { STATUS_DEVICE_NEEDS_RESET } = await import("../virtio.js");
  const { mem, shared } = testSharedGuestMemory(8 << 20);
  const d = new TestDriver(dev, mem, { shared });
  d.start(d.deviceFeatures() & ~VIRTIO_F_EVENT_IDX, 64);
  const fdsOnShare = () => fs.readdirSync("/proc/self/fd").filter((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(dir);
    } catch {
      return false;
    }
  }).length;
  // The thread opens the share's root when it starts.
  for (let i = 0; i < 500 && fdsOnShare() === 0; i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(fdsOnShare() > 0, "the thread holds the share's root open");
  // The available index jumps by more than the queue size (queue.ts: QueueBroken).
  d.mem.writeU16(d.queueLayout(1).avail + 2n, 1000);
  d.kick(1);
  for (let i = 0; i < 500 && (d.status & STATUS_DEVICE_NEEDS_RESET) === 0; i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(d.status & STATUS_DEVICE_NEEDS_RESET);
  assert.match(d.warnings.join("\n"), /fs0: .*available index moved by 1000/);
  await dev.close();
  assert.equal(fdsOnShare(), 0);
});

test("virtio-fs names are bytes: UTF-8 and other non-ASCII names go through unchanged both ways", () => {
  const dir = share();
  fs.writeFileSync(join(dir, "host-\u00e9t\u00e9.txt"), "x");
  fs.writeFileSync(Buffer.from([...Buffer.from(dir + "/raw-"), 0xff, 0xfe]), "y");
  const c = client(dir);
  const utf8 = (s: string) => Buffer.from(s, "utf8").toString("latin1");
  assert.equal(c.create(1, utf8("guest-\u65e5\u672c")).error, 0);
  assert.ok(fs.existsSync(join(dir, "guest-\u65e5\u672c")));
  const names = c.list(1).map((e) => e.name);
  assert.ok(names.includes(utf8("host-\u00e9t\u00e9.txt")), names.join(" "));
  assert.ok(names.includes("raw-\u00ff\u00fe"));
  assert.equal(c.entry(1, "raw-\u00ff\u00fe").size, 1n);
  assert.equal(c.entry(1, utf8("host-\u00e9t\u00e9.txt")).size, 1n);
});

test("virtio-fs bad input: huge READ sizes clamped, reply buffers too small, lengths that lie, no header", () => {
  const dir = share();
  fs.writeFileSync(join(dir, "big"), Buffer.alloc(300_000, 7));
  const c = client(dir);
  const f = c.entry(1, "big");
  const fh = c.fh(c.open(f.nodeid, 0));
  assert.equal(c.read(f.nodeid, fh, 0, 0xffff_ffff, 1 << 20).body.length, MAX_WRITE);
  assert.equal(c.read(f.nodeid, fh, 0, 0xffff_ffff, 100).body.length, 84);
  assert.equal(c.read(f.nodeid, fh, 2 ** 52, 4096).body.length, 0);
  // A fixed-size reply that does not fit: EINVAL in a header-only reply, nothing done.
  const small = c.call(Op.LOOKUP, 1, cstr("big"), 16 + 127);
  assert.equal(small.error, -Errno.EINVAL);
  assert.equal(small.len, 16);
  assert.equal(c.device.server.fs.nodeCount, 2);
  // No room for even a header: the chain comes back with nothing written.
  assert.equal(c.call(Op.GETATTR, 1, new Uint8Array(16), 15).len, 0);
  // A header whose length lies (beyond what came, or below its own size).
  assert.equal(c.call(Op.GETATTR, 1, new Uint8Array(16), 4096, { len: 1000 }).error, -Errno.EINVAL);
  assert.equal(c.call(Op.GETATTR, 1, new Uint8Array(16), 4096, { len: 8 }).error, -Errno.EINVAL);
  // Arguments cut short: EINVAL, never a throw.
  assert.equal(c.call(Op.READ, f.nodeid, new Uint8Array(5)).error, -Errno.EINVAL);
  assert.equal(c.call(Op.LOOKUP, 1, Buffer.from("no-nul")).error, -Errno.EINVAL);
  // Fewer bytes than a header: dropped.
  assert.equal(c.raw(1, new Uint8Array(20), 64).len, 0);
  assert.equal(c.device.server.stats.internalErrors, 0);
});
