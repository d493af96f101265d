// A hostile guest at the FUSE level trying to reach outside the shared
// directory: every classic escape is refused, and nothing outside changes.

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VirtioFs } from "./device.js";
import { FuseClient, cstr, concat, parseEntry, missing } from "./test-client.js";
import { Errno, Op, OutWriter } from "./fuse.js";

/** outside/secret (not shared) next to outside/share (shared), with symlinks out of the share. */
function world(): { outside: string; dir: string; c: FuseClient } {
  const outside = fs.mkdtempSync(join(tmpdir(), "tsvisor-fs-escape-"));
  fs.writeFileSync(join(outside, "secret"), "not for the guest");
  fs.mkdirSync(join(outside, "secretdir"));
  fs.writeFileSync(join(outside, "secretdir/inner"), "nor this");
  const dir = join(outside, "share");
  fs.mkdirSync(join(dir, "sub"), { recursive: true });
  fs.writeFileSync(join(dir, "sub/ok"), "fine");
  fs.symlinkSync("/etc", join(dir, "abs"));
  fs.symlinkSync("../secretdir", join(dir, "rel"));
  fs.symlinkSync("../secret", join(dir, "relfile"));
  fs.symlinkSync(join(outside, "secret"), join(dir, "absfile"));
  const c = new FuseClient(new VirtioFs({ tag: "t", hostDir: dir, thread: "main" }));
  assert.equal(c.init().error, 0);
  return { outside, dir, c };
}

test("escape: '..', '.', '' and names with '/' or NUL are refused at the root and below", () => {
  const { c } = world();
  for (const name of ["..", ".", "", "../secret", "sub/../../secret", "/etc/passwd", "sub/ok"]) {
    const r = c.lookup(1, name);
    assert.ok(r.error === -Errno.EINVAL || r.error === -Errno.ENOENT, `${JSON.stringify(name)}: ${r.error}`);
    assert.notEqual(r.error, 0);
  }
  const sub = c.entry(1, "sub");
  assert.equal(c.lookup(sub.nodeid, "..").error, -Errno.EINVAL);
  // A NUL inside the name: the name ends there as the wire says, "sub" is looked up, nothing more.
  const r = c.call(Op.LOOKUP, 1, concat(Buffer.from("sub"), Uint8Array.of(0), Buffer.from("/../../secret"), Uint8Array.of(0)));
  assert.equal(parseEntry(r.body).nodeid, sub.nodeid);
  // Every name-taking op refuses the same names.
  assert.equal(c.create(1, "../evil").error, -Errno.EINVAL);
  assert.equal(c.mkdir(1, "..").error, -Errno.EINVAL);
  assert.equal(c.symlink(1, "a/b", "x").error, -Errno.EINVAL);
  assert.equal(c.call(Op.UNLINK, 1, cstr("../secret")).error, -Errno.EINVAL);
  assert.equal(c.call(Op.RMDIR, 1, cstr("..")).error, -Errno.EINVAL);
  assert.equal(c.call(Op.RENAME, 1, concat(new OutWriter().u64(1).bytesWritten, cstr("sub"), cstr("../moved"))).error, -Errno.EINVAL);
  assert.equal(c.lookup(1, "x".repeat(256)).error, -Errno.ENAMETOOLONG);
});

test("escape: symlinks pointing out (absolute, relative) are leaves: not directories, not openable, read as text", () => {
  const { c, outside } = world();
  for (const name of ["abs", "rel", "relfile", "absfile"]) {
    const e = c.entry(1, name);
    assert.equal(e.mode & 0o170000, 0o120000, `${name} is the link itself`);
    // Used as a directory.
    assert.equal(c.lookup(e.nodeid, "passwd").error, -Errno.ENOTDIR);
    assert.equal(c.lookup(e.nodeid, "inner").error, -Errno.ENOTDIR);
    assert.equal(c.create(e.nodeid, "planted").error, -Errno.ENOTDIR);
    assert.equal(c.mkdir(e.nodeid, "planted").error, -Errno.ENOTDIR);
    assert.equal(c.call(Op.OPENDIR, e.nodeid, new Uint8Array(8)).error, -Errno.ENOTDIR);
    // Opened as a file.
    assert.equal(c.open(e.nodeid, 0).error, -Errno.ELOOP);
    assert.equal(c.open(e.nodeid, 2).error, -Errno.ELOOP);
    // Its attributes are the link's, not the target's.
    const g = c.call(Op.GETATTR, e.nodeid, new Uint8Array(16));
    assert.equal(new DataView(g.body.buffer, g.body.byteOffset).getUint32(16 + 60, true) & 0o170000, 0o120000);
    // SETATTR on it never reaches the target.
    assert.equal(c.call(Op.SETATTR, e.nodeid, new OutWriter().u32(1).zeros(84).bytesWritten).error, -Errno.EOPNOTSUPP);
    assert.equal(c.call(Op.SETATTR, e.nodeid, new OutWriter().u32(8).zeros(4).u64(0).u64(0).zeros(64).bytesWritten).error, -Errno.EINVAL);
  }
  assert.equal(Buffer.from(c.call(Op.READLINK, c.entry(1, "rel").nodeid).body).toString(), "../secretdir");
  assert.equal(fs.readFileSync(join(outside, "secret"), "utf8"), "not for the guest");
  assert.deepEqual(fs.readdirSync(join(outside, "secretdir")), ["inner"]);
});

test("escape: LINK can only name nodes handed out inside the share; unknown or forgotten node ids are EBADF", () => {
  const { c, outside } = world();
  const sub = c.entry(1, "sub");
  // Node ids never handed out: small ones (a guess at the next id), huge ones, and 0.
  for (const id of [0n, 2n ** 53n + 1n, 2n ** 64n - 1n, 99n, 3n]) {
    assert.equal(c.call(Op.LINK, sub.nodeid, concat(new OutWriter().u64(id).bytesWritten, cstr("stolen"))).error, -Errno.EBADF, `id ${id}`);
    assert.equal(c.call(Op.GETATTR, id, new Uint8Array(16)).error, -Errno.EBADF);
    assert.equal(c.lookup(id, "secret").error, -Errno.EBADF);
    assert.equal(c.open(id, 0).error, -Errno.EBADF);
  }
  // A link of a symlink pointing out makes another symlink, never a hard link to the target.
  const abs = c.entry(1, "absfile");
  const l = c.call(Op.LINK, sub.nodeid, concat(new OutWriter().u64(abs.nodeid).bytesWritten, cstr("hard")));
  assert.equal(l.error, 0);
  assert.ok(fs.lstatSync(join(outside, "share/sub/hard")).isSymbolicLink());
  assert.equal(fs.statSync(join(outside, "secret")).nlink, 1);
  // A forgotten node is unknown.
  const ok = c.entry(sub.nodeid, "ok");
  c.forget(ok.nodeid, 1);
  assert.equal(c.call(Op.GETATTR, ok.nodeid, new Uint8Array(16)).error, -Errno.EBADF);
  assert.equal(c.call(Op.LINK, 1, concat(new OutWriter().u64(ok.nodeid).bytesWritten, cstr("again"))).error, -Errno.EBADF);
  // Handles the same: one never given is EBADF.
  assert.equal(c.read(sub.nodeid, 12345n, 0, 10).error, -Errno.EBADF);
});

test("escape: a directory swapped for a symlink on the host after LOOKUP: the held fd keeps the original, never follows", () => {
  const { c, dir, outside } = world();
  const sub = c.entry(1, "sub");
  // The host (or a racing process) moves sub away and puts a symlink to the secret directory in its place.
  fs.renameSync(join(dir, "sub"), join(dir, "sub-moved"));
  fs.symlinkSync(join(outside, "secretdir"), join(dir, "sub"));
  // The node is still the original directory: its file is found, the secret one is not.
  assert.ok(missing(c.lookup(sub.nodeid, "inner")));
  const ok = c.entry(sub.nodeid, "ok");
  const fh = c.fh(c.open(ok.nodeid, 0));
  assert.equal(Buffer.from(c.read(ok.nodeid, fh, 0, 100).body).toString(), "fine");
  assert.equal(c.create(sub.nodeid, "made").error, 0);
  assert.ok(fs.existsSync(join(dir, "sub-moved/made")));
  assert.deepEqual(fs.readdirSync(join(outside, "secretdir")), ["inner"]);
  assert.deepEqual(c.list(sub.nodeid).map((e) => e.name).sort(), [".", "..", "made", "ok"]);
  // Removed altogether: ENOENT, still nothing followed.
  fs.rmSync(join(dir, "sub-moved"), { recursive: true });
  assert.ok(missing(c.lookup(sub.nodeid, "ok")));
  assert.equal(c.create(sub.nodeid, "again").error, -Errno.ENOENT);
  assert.deepEqual(fs.readdirSync(join(outside, "secretdir")), ["inner"]);
  // A fresh lookup of the name finds the symlink, a leaf.
  const now = c.entry(1, "sub");
  assert.equal(now.mode & 0o170000, 0o120000);
  assert.equal(c.lookup(now.nodeid, "inner").error, -Errno.ENOTDIR);
});

test("escape: a file swapped for a symlink after LOOKUP: OPEN reopens the held inode, not the link's target", () => {
  const { c, dir, outside } = world();
  const ok = c.entry(c.entry(1, "sub").nodeid, "ok");
  fs.renameSync(join(dir, "sub/ok"), join(dir, "sub/ok-moved"));
  fs.symlinkSync(join(outside, "secret"), join(dir, "sub/ok"));
  const fh = c.fh(c.open(ok.nodeid, 2));
  assert.equal(Buffer.from(c.read(ok.nodeid, fh, 0, 100).body).toString(), "fine");
  assert.equal(c.write(ok.nodeid, fh, 0, Buffer.from("FINE")).error, 0);
  assert.equal(fs.readFileSync(join(outside, "secret"), "utf8"), "not for the guest");
  assert.equal(fs.readFileSync(join(dir, "sub/ok-moved"), "utf8"), "FINE");
  // What needs the node's name (LINK) sees the name no longer holds it: ESTALE, not the symlink.
  assert.equal(c.call(Op.LINK, 1, concat(new OutWriter().u64(ok.nodeid).bytesWritten, cstr("copy"))).error, -Errno.ESTALE);
});
