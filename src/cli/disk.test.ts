// `tsvisor disk create|info|check` as a user runs them: spawned, exit
// statuses, one `tsvisor: ...` line for every error.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { tempDir } from "../backends/disk/testing.js";
import { openDisk } from "../backends/disk/disk.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const bin = join(root, "bin", "tsvisor.js");
const tmp = tempDir("tsvisor-cli-disk-");
after(() => tmp.remove());

function tsvisor(...args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", timeout: 60_000, cwd: tmp.dir });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
function failsWith(r: ReturnType<typeof tsvisor>, status: number, pattern: RegExp) {
  assert.equal(r.status, status, r.stderr + r.stdout);
  const lines = r.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /^tsvisor: /);
  assert.match(lines[0], pattern);
}

test("disk create, info and check on a new image", () => {
  let r = tsvisor("disk", "create", "--size", "64M", "a.qcow2");
  assert.equal(r.status, 0, r.stderr);
  r = tsvisor("disk", "info", "a.qcow2");
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^file format: qcow2$/m);
  assert.match(r.stdout, /^virtual size: 64 MiB \(67108864 bytes\)$/m);
  assert.match(r.stdout, /^cluster size: 65536$/m);
  assert.match(r.stdout, /^allocated in this image: 0 bytes/m);
  r = tsvisor("disk", "check", "a.qcow2");
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /No errors were found on the image/);
  r = tsvisor("disk", "create", "--size", "1G", "--cluster-size", "4k", "b.qcow2");
  assert.equal(r.status, 0, r.stderr);
  assert.match(tsvisor("disk", "info", "b.qcow2").stdout, /^cluster size: 4096$/m);
});

test("disk create --backing: the size comes from the base, info shows the chain", () => {
  writeFileSync(join(tmp.dir, "base.img"), new Uint8Array(3 << 20).fill(7));
  let r = tsvisor("disk", "create", "--backing", "base.img", "mid.qcow2");
  assert.equal(r.status, 0, r.stderr);
  r = tsvisor("disk", "create", "--backing", "mid.qcow2", "top.qcow2");
  assert.equal(r.status, 0, r.stderr);
  r = tsvisor("disk", "info", "top.qcow2");
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^virtual size: 3 MiB \(3145728 bytes\)$/m);
  assert.match(r.stdout, /^backing file: mid\.qcow2 \(actual path: .*mid\.qcow2\)$/m);
  assert.match(r.stdout, /^backing file format: qcow2$/m);
  assert.match(r.stdout, /^backing chain:\n  top\.qcow2 \(qcow2, 3 MiB\)\n  -> .*mid\.qcow2 \(qcow2, 3 MiB\)\n  -> .*base\.img \(raw, 3 MiB\)$/m);
  const d = openDisk(join(tmp.dir, "top.qcow2"), { readOnly: true });
  const b = new Uint8Array(4);
  d.read(1 << 20, b);
  d.close();
  assert.deepEqual([...b], [7, 7, 7, 7]);
  // A relative backing name is found from the new image's directory.
  mkdirSync(join(tmp.dir, "sub"));
  failsWith(tsvisor("disk", "create", "--backing", "base.img", "sub/over.qcow2"), 1, /no such file .*from the new image's directory/);
  assert.equal(tsvisor("disk", "create", "--backing", "../base.img", "sub/over.qcow2").status, 0);
});

test("disk check: leaked clusters exit 3, corruption exits 2, raw images have nothing to check", () => {
  assert.equal(tsvisor("disk", "create", "--size", "1M", "--cluster-size", "4096", "c.qcow2").status, 0);
  const p = join(tmp.dir, "c.qcow2");
  const d = openDisk(p);
  d.write(0, new Uint8Array(8192).fill(1));
  d.write(8192, new Uint8Array(4096).fill(2));
  d.discard(0, 4096);
  d.close();
  const buf = readFileSync(p);
  // Cluster 2 is the refcount block (16-bit entries); cluster 5 was freed by the discard.
  buf.writeUInt16BE(1, 2 * 4096 + 2 * 5);
  writeFileSync(p, buf);
  let r = tsvisor("disk", "check", "c.qcow2");
  assert.equal(r.status, 3, r.stdout + r.stderr);
  assert.match(r.stdout, /1 leaked clusters were found/);
  buf.writeUInt16BE(0, 2 * 4096 + 2 * 6); // a cluster in use: refcount 0
  writeFileSync(p, buf);
  r = tsvisor("disk", "check", "c.qcow2");
  assert.equal(r.status, 2, r.stdout + r.stderr);
  assert.match(r.stdout, /errors were found on the image/);
  writeFileSync(join(tmp.dir, "plain.img"), new Uint8Array(4096));
  r = tsvisor("disk", "check", "plain.img");
  assert.equal(r.status, 0);
  assert.match(r.stdout, /raw image/);
});

test("disk errors: one line, non-zero status", () => {
  assert.equal(tsvisor("disk", "create", "--size", "1M", "exists.qcow2").status, 0);
  failsWith(tsvisor("disk", "create", "--size", "1M", "exists.qcow2"), 1, /exists\.qcow2: already exists/);
  failsWith(tsvisor("disk", "create", "x.qcow2"), 2, /--size is required/);
  failsWith(tsvisor("disk", "create", "--size", "lots", "x.qcow2"), 2, /--size: invalid size 'lots'/);
  failsWith(tsvisor("disk", "create", "--size", "1000", "x.qcow2"), 1, /multiple of 512/);
  failsWith(tsvisor("disk", "create", "--size", "1M", "--cluster-size", "3000", "x.qcow2"), 1, /cluster size 3000 is invalid/);
  failsWith(tsvisor("disk", "create", "--size", "1M", "--bogus", "x.qcow2"), 2, /disk create: Unknown option '--bogus'/);
  failsWith(tsvisor("disk", "create", "--size", "1M", "--backing", "nothere.qcow2", "x.qcow2"), 1, /nothere\.qcow2: no such file/);
  failsWith(tsvisor("disk", "info", "nothere.qcow2"), 1, /nothere\.qcow2: no such file/);
  failsWith(tsvisor("disk", "info"), 2, /expected one FILE/);
  failsWith(tsvisor("disk"), 2, /expected a subcommand/);
  failsWith(tsvisor("disk", "resize"), 2, /unknown subcommand 'resize'/);
  writeFileSync(join(tmp.dir, "junk.qcow2"), Buffer.concat([Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 9]), Buffer.alloc(100)]));
  failsWith(tsvisor("disk", "info", "junk.qcow2"), 1, /unsupported qcow2 version 9/);
  failsWith(tsvisor("disk", "check", "junk.qcow2"), 1, /check could not be completed: .*version 9/);
});
