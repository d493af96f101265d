import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readlinkSync, lstatSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CpioArchive, concatCpio } from "./cpio.js";
import { ImageError } from "./errors.js";

function withTempDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-cpio-"));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Extracts with the host's GNU cpio (Debian package cpio); returns its listing (stderr). */
function extract(archive: Uint8Array, dir: string): string {
  return execFileSync("cpio", ["-idmv", "--quiet"], { cwd: dir, input: archive, stdio: ["pipe", "pipe", "pipe"], encoding: "latin1" }) + "";
}

function rejects(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ImageError, `expected ImageError, got ${String(e)}`);
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes("\n"));
    return true;
  });
}

const payload = new Uint8Array(1000).map((_, i) => (i * 7) & 0xff);

test("host cpio extracts files, modes, directories and symlinks as written", () => {
  const a = new CpioArchive();
  a.directory("dev", 0o755);
  a.file("init", "#!/bin/sh\necho hi\n", 0o755);
  a.file("usr/share/data.bin", payload, 0o640); // parents usr, usr/share added
  a.file("odd", new Uint8Array([1, 2, 3]), 0o600); // data needs padding
  a.file("empty", new Uint8Array(0));
  a.symlink("bin/sh", "busybox");
  a.symlink("lib64", "/usr/lib");
  a.directory("usr", 0o700); // an existing (automatic) directory gets new permissions
  const bytes = a.toBytes();
  assert.equal(bytes.length % 4, 0);
  assert.deepEqual(a.paths(), ["dev", "init", "usr", "usr/share", "usr/share/data.bin", "odd", "empty", "bin", "bin/sh", "lib64"]);

  withTempDir((dir) => {
    extract(bytes, dir);
    assert.equal(readFileSync(join(dir, "init"), "utf8"), "#!/bin/sh\necho hi\n");
    assert.deepEqual(new Uint8Array(readFileSync(join(dir, "usr/share/data.bin"))), payload);
    assert.deepEqual([...readFileSync(join(dir, "odd"))], [1, 2, 3]);
    assert.equal(readFileSync(join(dir, "empty")).length, 0);
    const mode = (p: string) => lstatSync(join(dir, p)).mode & 0o7777;
    assert.equal(mode("init"), 0o755);
    assert.equal(mode("usr/share/data.bin"), 0o640);
    assert.equal(mode("odd"), 0o600);
    assert.equal(mode("usr"), 0o700);
    assert.ok(lstatSync(join(dir, "usr/share")).isDirectory());
    assert.ok(lstatSync(join(dir, "bin/sh")).isSymbolicLink());
    assert.equal(readlinkSync(join(dir, "bin/sh")), "busybox");
    assert.equal(readlinkSync(join(dir, "lib64")), "/usr/lib");
    assert.equal(lstatSync(join(dir, "init")).mtimeMs, 0);
  });
});

test("cpio -itv lists a character device with its numbers; uid, gid and mtime are 0", () => {
  const a = new CpioArchive().charDevice("dev/console", 5, 1, 0o600);
  const listing = execFileSync("cpio", ["-itv", "--quiet", "--numeric-uid-gid"], { input: a.toBytes(), encoding: "utf8" });
  const lines = listing.trim().split("\n");
  assert.equal(lines.length, 2);
  assert.match(lines[0], /^drwxr-xr-x\s+2\s+0\s+0\s+0\s+Jan\s+1\s+1970\s+dev$/);
  assert.match(lines[1], /^crw-------\s+1\s+0\s+0\s+5,\s+1\s+Jan\s+1\s+1970\s+dev\/console$/);
});

test("cpio -itv lists a named pipe (FIFO) as one", () => {
  const a = new CpioArchive().fifo("tsvisor/status");
  const lines = execFileSync("cpio", ["-itv", "--quiet", "--numeric-uid-gid"], { input: a.toBytes(), encoding: "utf8" }).trim().split("\n");
  assert.equal(lines.length, 2);
  assert.match(lines[1], /^prw-------\s+1\s+0\s+0\s+0\s+Jan\s+1\s+1970\s+tsvisor\/status$/);
});

test("output is reproducible and inode numbers are unique", () => {
  const build = () => new CpioArchive().file("a/b", "x").file("a/c", "y").symlink("d", "a").toBytes();
  const one = build();
  assert.deepEqual(one, build());
  const text = new TextDecoder("latin1").decode(one);
  const inodes = [...text.matchAll(/070701([0-9A-F]{8})/g)].map((m) => parseInt(m[1], 16));
  assert.deepEqual(inodes, [1, 2, 3, 4, 0]); // a, a/b, a/c, d, then the trailer
});

test("concatenated archives: the second starts aligned and extracts on its own", () => {
  const first = new CpioArchive().file("init", "one", 0o755).file("x", "odd").toBytes();
  const second = new CpioArchive().file("tsvisor/argv", "set -- 'a'\n").toBytes();
  const both = concatCpio(first, second);
  assert.equal(both.length, first.length + second.length);
  withTempDir((dir) => {
    // GNU cpio stops at the first trailer; the kernel goes on to the next
    // archive at the next 4-byte boundary, which is what we do here.
    extract(both, dir);
    extract(both.subarray(first.length), dir);
    assert.equal(readFileSync(join(dir, "init"), "utf8"), "one");
    assert.equal(readFileSync(join(dir, "tsvisor/argv"), "utf8"), "set -- 'a'\n");
  });
  // An unaligned part is padded so the next header starts on a 4-byte boundary.
  const padded = concatCpio(new Uint8Array(3), second);
  assert.equal(padded.length, 4 + second.length);
  assert.deepEqual(padded.subarray(4), second);
});

test("bad input is refused with one clear line", () => {
  const a = new CpioArchive().file("etc/passwd", "");
  rejects(() => a.file("/abs", ""), /must be relative/);
  rejects(() => a.file("", ""), /empty path/);
  rejects(() => a.file("a/../b", ""), /"\." or "\.\."/);
  rejects(() => a.file("a//b", ""), /empty/);
  rejects(() => a.file("a\0b", ""), /NUL/);
  rejects(() => a.file("etc/passwd", ""), /already in the archive/);
  rejects(() => a.file("etc/passwd/x", ""), /is not a directory/);
  rejects(() => a.directory("etc/passwd"), /already in the archive/);
  rejects(() => a.file("f", "", 0o10000), /not a permission mode/);
  rejects(() => a.charDevice("c", -1, 0), /major number -1/);
  rejects(() => a.symlink("l", ""), /needs a target/);
  rejects(() => a.file("TRAILER!!!", ""), /reserved/);
});
