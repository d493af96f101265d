// Live migration with the disks copied along (`vm migrate --copy-disks`),
// between two host daemons that share no storage: a Debian guest keeps
// writing checksummed chunks to its qcow2 disk while it moves, then reads
// every chunk back on the target and compares; a read-only disk arrives
// with its bytes. The copies live in the target's state directory, and the
// target's definition names them.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pullImage, tsvisor } from "../cli/test-tsvisor.js";
import { openDisk } from "../backends/disk/disk.js";
import { TestHost } from "./test-host.js";

const skip = spawnSync("qemu-img", ["--version"]).status === 0 ? false : "needs qemu-img (npm test installs qemu-utils)";
const base = mkdtempSync(join(tmpdir(), "tsvisor-migdisks-"));
after(() => rmSync(base, { recursive: true, force: true }));
before(() => {
  if (!skip) pullImage();
});
const TOKEN = "migration-secret";
const CHUNKS = 48;

// Chunk i: 128 KiB of random bytes, kept in the guest's RAM and written at
// STRIDE * 64 KiB * i on /dev/vda; after the last, every chunk is read back.
const guest = (stride: number) => [
  "i=0",
  `while [ $i -lt ${CHUNKS} ]; do`,
  "  dd if=/dev/urandom of=/tmp/c$i bs=64k count=2 2>/dev/null",
  `  dd if=/tmp/c$i of=/dev/vda bs=64k seek=$((i*${stride})) conv=fsync 2>/dev/null`,
  "  echo chunk $i",
  "  i=$((i+1))",
  "done",
  "bad=0; i=0",
  `while [ $i -lt ${CHUNKS} ]; do`,
  `  dd if=/dev/vda of=/tmp/back bs=64k skip=$((i*${stride})) count=2 2>/dev/null`,
  "  cmp -s /tmp/back /tmp/c$i || bad=$((bad+1))",
  "  i=$((i+1))",
  "done",
  "echo disk errors=$bad",
  "sha256sum /dev/vdb",
].join("\n");

async function until(what: string, ok: () => Promise<boolean>, ms = 240_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("a Debian guest writing its disk is migrated with --copy-disks and finds every chunk on the target; a read-only disk arrives whole", { skip, timeout: 600_000 }, async () => {
  const dir = mkdtempSync(join(base, "a-"));
  const disk = join(dir, "data.qcow2");
  assert.equal((await tsvisor(["disk", "create", "--size", "32M", disk])).status, 0);
  // A read-only raw disk with content the guest hashes on the target.
  const ro = join(dir, "ro.raw");
  const roBytes = Buffer.alloc(3 << 20);
  for (let i = 0; i < roBytes.length; i += 4) roBytes.writeUInt32LE((i * 2654435761) >>> 0, i);
  roBytes.fill(0, 1 << 20, 2 << 20); // a run of zeros in the middle: not sent, still zeros there
  writeFileSync(ro, roBytes);
  const roSha = createHash("sha256").update(roBytes).digest("hex");

  const source = await TestHost.start(join(dir, "src"));
  const target = await TestHost.start(join(dir, "dst"), ["--pcpus", "1", "--mem", "1G", "--migration-listen", "127.0.0.1:0", "--migration-token", TOKEN]);
  try {
    const m = /taking migrated VMs on (127\.0\.0\.1:\d+)/.exec(target.stderr);
    assert.ok(m, target.stderr);
    const to = m[1];
    const made = await source.vm("create", "d", "--disk", disk, "--disk", `${ro},format=raw,readonly`, "--mem", "128M", "--net", "none", "--start", "--", "sh", "-c", guest(2));
    assert.equal(made.status, 0, made.stderr);
    await until("the guest to write a few chunks", async () => /chunk 3\b/.test((await source.api("GET", "/v1/vms/d/logs")).text));

    // Paced (--max-bandwidth): the disks' messages as well as the pages.
    const r = await source.vm("migrate", "d", "--to", to, "--token", TOKEN, "--copy-disks", "--max-bandwidth", "64");
    assert.equal(r.status, 0, `${r.stderr}\n${source.stderr}\n${target.stderr}`);
    console.log(r.stderr + r.stdout);
    const sent = /^VM d migrated to .*: \d+ rounds, ([\d.]+) MiB sent \(disks: ([\d.]+) MiB\), downtime \d+ ms, ([\d.]+) s\n$/.exec(r.stdout);
    assert.ok(sent, r.stdout);
    assert.ok(Number(sent[1]) / Number(sent[3]) <= 64 * 1.1, r.stdout);
    // Progress lines (when the migration lasted long enough to be polled) count the disk's changes too.
    for (const line of r.stderr.split("\n").filter((l) => l.startsWith("migrating d:"))) assert.match(line, /MiB of disk changed/);
    const logAtMove = (await target.api("GET", "/v1/vms/d/logs")).text;
    assert.ok(!logAtMove.includes("disk errors="), "the guest was still writing when it moved");

    // The target names its own copies, in its state directory, read-only kept.
    const there = await target.api("GET", "/v1/vms/d");
    assert.equal(there.status, 200, there.text);
    const disks: string[] = there.json.config.disks;
    assert.equal(disks.length, 2);
    assert.match(disks[0], new RegExp(`^${join(dir, "dst", "state", "disks")}/d-disk0-\\w+\\.qcow2,format=qcow2$`));
    assert.match(disks[1], /\/d-disk1-\w+\.qcow2,format=qcow2,readonly$/);
    assert.equal(readdirSync(join(dir, "dst", "state", "disks")).length, 2);

    const end = await target.api("GET", "/v1/vms/d/wait");
    assert.equal(end.status, 200, end.text);
    const logs = (await target.api("GET", "/v1/vms/d/logs")).text;
    assert.equal(end.json.exitStatus, 0, logs);
    assert.match(logs, new RegExp(`chunk ${CHUNKS - 1}\\b`));
    // Its console here starts after the move: the last chunks were written on the target.
    assert.doesNotMatch(logs, /chunk 0\b/);
    assert.match(logs, /disk errors=0/);
    assert.match(logs, new RegExp(`^${roSha}\\s+/dev/vdb`, "m"));

    // The copy holds what the guest wrote last (read here through the image itself).
    const copy = openDisk(disks[0].split(",")[0], { readOnly: true });
    try {
      assert.equal(copy.virtualSize, 32 << 20);
      const tail = new Uint8Array(128 << 10);
      copy.read((CHUNKS - 1) * (128 << 10), tail);
      assert.ok(tail.some((b) => b !== 0), "the last chunk is in the copy");
    } finally {
      copy.close();
    }
  } finally {
    assert.equal(await source.stop(), 0);
    assert.equal(await target.stop(), 0);
  }
});

test("a Debian guest writing a qcow2 disk on storage both hosts share moves without --copy-disks: every chunk is there and the image checks clean", { skip, timeout: 600_000 }, async () => {
  // The target opens the image when the migration starts; the source goes
  // on writing it until the pause. Each chunk goes to a region of its own
  // L2 table (512 MiB apart), so the source adds L1 entries meanwhile: a
  // target that kept the L1 table it read at the start would read zeros
  // for those chunks. The source writes back what its qcow2 held in reserve
  // in the pause, the target reads the metadata afresh before its guest runs.
  const dir = mkdtempSync(join(base, "b-"));
  const disk = join(dir, "shared.qcow2");
  assert.equal((await tsvisor(["disk", "create", "--size", "25G", disk])).status, 0);
  const empty = join(dir, "empty.raw");
  writeFileSync(empty, Buffer.alloc(1 << 20));
  // Over TLS too (`--migration-tls` there, `--tls` here).
  const source = await TestHost.start(join(dir, "src"));
  const target = await TestHost.start(join(dir, "dst"), ["--pcpus", "1", "--mem", "1G", "--migration-listen", "127.0.0.1:0", "--migration-token", TOKEN, "--migration-tls"]);
  try {
    const to = /taking migrated VMs on (127\.0\.0\.1:\d+) \(TLS\)/.exec(target.stderr)![1];
    const made = await source.vm("create", "s", "--disk", disk, "--disk", `${empty},format=raw,readonly`, "--mem", "128M", "--net", "none", "--start", "--", "sh", "-c", guest(8192));
    assert.equal(made.status, 0, made.stderr);
    await until("the guest to write a few chunks", async () => /chunk 3\b/.test((await source.api("GET", "/v1/vms/s/logs")).text));
    const r = await source.vm("migrate", "s", "--to", to, "--token", TOKEN, "--tls");
    assert.equal(r.status, 0, `${r.stderr}\n${source.stderr}\n${target.stderr}`);
    assert.doesNotMatch(r.stdout, /disks:/);
    assert.equal((await target.api("GET", "/v1/vms/s")).json.config.disks[0], disk);
    const end = await target.api("GET", "/v1/vms/s/wait");
    const logs = (await target.api("GET", "/v1/vms/s/logs")).text;
    assert.equal(end.json.exitStatus, 0, logs);
    assert.doesNotMatch(logs, /chunk 0\b/);
    assert.match(logs, /disk errors=0/);
  } finally {
    assert.equal(await source.stop(), 0);
    assert.equal(await target.stop(), 0);
  }
  const check = spawnSync("qemu-img", ["check", disk], { encoding: "utf8" });
  assert.equal(check.status, 0, `${check.stdout}${check.stderr}`);
});
