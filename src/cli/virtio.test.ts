// virtio devices seen from inside the stock Debian guest, as a user uses
// them: `tsvisor run --disk ... --net ... --console hvc0`. Each boot costs
// seconds (and ext4's module several more), so each guest does a lot.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { tsvisor, oneErrorLine, pullImage, bin, ok, reported, type Run } from "./test-tsvisor.js";

before(pullImage);

const sha256 = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");
const hasQemuImg = spawnSync("qemu-img", ["--version"]).status === 0;



function checkImage(path: string): void {
  ok(spawnSync(process.execPath, [bin, "disk", "check", path], { encoding: "utf8" }) as Run, `tsvisor disk check ${path}`);
  if (hasQemuImg) {
    const q = spawnSync("qemu-img", ["check", path], { encoding: "utf8" });
    assert.equal(q.status, 0, `qemu-img check ${path}: ${q.stdout}${q.stderr}`);
  }
}

test("ext4 on a raw disk and on a qcow2 overlay survives a power cycle; the base stays untouched; hwrng gives random bytes", { timeout: 900_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-virtio-"));
  try {
    const raw = join(dir, "data.raw");
    const base = join(dir, "base.qcow2");
    const overlay = join(dir, "overlay.qcow2");
    const ro = join(dir, "readonly.raw");
    writeFileSync(raw, Buffer.alloc(0));
    spawnSync("truncate", ["-s", "64M", raw]);
    writeFileSync(ro, Buffer.alloc(1 << 20, 0x5a));
    ok(spawnSync(process.execPath, [bin, "disk", "create", "--size", "64M", base], { encoding: "utf8" }) as Run, "disk create");

    // First boot: a filesystem on each disk, files with known contents.
    const make = (dev: string, mnt: string) => [
      `mke2fs -q ${dev} >/dev/null 2>&1 || echo mke2fs-failed=${dev}`,
      `mkdir -p ${mnt} && mount -t ext4 ${dev} ${mnt}`,
      `seq 1 20000 > ${mnt}/numbers`,
      `dd if=/dev/urandom of=${mnt}/random bs=4k count=64 2>/dev/null`,
      `mkdir ${mnt}/dir && echo hello > ${mnt}/dir/greeting`,
    ];
    const first = reported(ok(await tsvisor(["run", "--disk", raw, "--disk", `${base},format=qcow2`, "--", "sh", "-c", [
      ...make("/dev/vda", "/mnt/a"),
      ...make("/dev/vdb", "/mnt/b"),
      "sync",
      "echo raw-sum=$(cd /mnt/a && cat numbers random dir/greeting | md5sum | cut -d' ' -f1)",
      "echo base-sum=$(cd /mnt/b && cat numbers random dir/greeting | md5sum | cut -d' ' -f1)",
      "umount /mnt/a && umount /mnt/b && echo unmounted=yes",
      // The virtio-rng device behind the kernel's hw_random core.
      "echo rng=$(cat /sys/class/misc/hw_random/rng_current)",
      "echo rng-bytes=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c)",
      "echo rng-a=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | md5sum | cut -c1-32)",
      "echo rng-b=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | md5sum | cut -c1-32)",
    ].join("; ")]), "first boot"));
    assert.equal(first.unmounted, "yes", JSON.stringify(first));
    assert.equal(first["mke2fs-failed"], undefined);
    assert.match(first["raw-sum"], /^[0-9a-f]{32}$/);
    assert.match(first.rng, /^virtio_rng/);
    assert.equal(first["rng-bytes"], "64");
    assert.notEqual(first["rng-a"], first["rng-b"], "two reads of /dev/hwrng differ");
    checkImage(base);

    // The base becomes the backing file of an overlay; from now on only the overlay is written.
    ok(spawnSync(process.execPath, [bin, "disk", "create", "--backing", base, overlay], { encoding: "utf8" }) as Run, "overlay create");
    const baseBefore = sha256(base);

    // Second boot: the raw disk's files read back; the overlay shows the base's
    // files, takes new ones; a read-only disk refuses writes.
    const second = reported(ok(await tsvisor(["run", "--disk", raw, "--disk", overlay, "--disk", `${ro},readonly`, "--", "sh", "-c", [
      "mkdir -p /mnt/a /mnt/b && mount -t ext4 /dev/vda /mnt/a && mount -t ext4 /dev/vdb /mnt/b",
      "echo raw-sum=$(cd /mnt/a && cat numbers random dir/greeting | md5sum | cut -d' ' -f1)",
      "echo base-sum=$(cd /mnt/b && cat numbers random dir/greeting | md5sum | cut -d' ' -f1)",
      "dd if=/dev/urandom of=/mnt/b/new bs=4k count=32 2>/dev/null && rm /mnt/b/numbers",
      "sync",
      "echo new-sum=$(md5sum < /mnt/b/new | cut -d' ' -f1)",
      "umount /mnt/a && umount /mnt/b && echo unmounted=yes",
      "echo ro=$(cat /sys/block/vdc/ro)",
      "echo x | dd of=/dev/vdc 2>/dev/null && echo ro-write=accepted || echo ro-write=refused",
    ].join("; ")]), "second boot"));
    assert.equal(second["raw-sum"], first["raw-sum"], "the raw disk's files after a power cycle");
    assert.equal(second["base-sum"], first["base-sum"], "the overlay shows the base's files");
    assert.equal(second.unmounted, "yes");
    assert.equal(second.ro, "1");
    assert.equal(second["ro-write"], "refused");
    assert.deepEqual(readFileSync(ro), Buffer.alloc(1 << 20, 0x5a), "the read-only disk is unchanged");
    assert.equal(sha256(base), baseBefore, "the base is never written through an overlay");
    checkImage(overlay);

    // Third boot: the overlay's own writes persisted.
    const third = reported(ok(await tsvisor(["run", "--disk", overlay, "--", "sh", "-c", [
      "mount -t ext4 /dev/vda /mnt",
      "echo new-sum=$(md5sum < /mnt/new | cut -d' ' -f1)",
      "test -e /mnt/numbers && echo numbers=present || echo numbers=deleted",
      "echo greeting=$(cat /mnt/dir/greeting)",
    ].join("; ")]), "third boot"));
    assert.equal(third["new-sum"], second["new-sum"]);
    assert.equal(third.numbers, "deleted");
    assert.equal(third.greeting, "hello");
    assert.equal(sha256(base), baseBefore);
    checkImage(overlay);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("mount without -t finds the filesystem, as on any Linux: ext4 made on the host, vfat in the guest", { timeout: 600_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-mount-"));
  try {
    const files = join(dir, "files");
    const ext4 = join(dir, "ext4.raw");
    const vfat = join(dir, "vfat.raw");
    mkdirSync(files);
    writeFileSync(join(files, "greeting"), "hello from the host\n");
    const mkfs = spawnSync("mke2fs", ["-q", "-t", "ext4", "-d", files, ext4, "16M"], { encoding: "utf8" });
    assert.equal(mkfs.status, 0, `mke2fs: ${mkfs.stderr}`);
    writeFileSync(vfat, Buffer.alloc(0));
    spawnSync("truncate", ["-s", "16M", vfat]);
    const r = reported(ok(await tsvisor(["run", "--disk", ext4, "--disk", vfat, "--", "sh", "-c", [
      "mkdir -p /mnt/a /mnt/b",
      "mount /dev/vda /mnt/a && echo ext4-type=$(grep ' /mnt/a ' /proc/mounts | cut -d' ' -f3)",
      "echo ext4-file=$(cat /mnt/a/greeting)",
      "mkdosfs /dev/vdb >/dev/null 2>&1 || echo mkdosfs-failed=yes",
      // ext4, first in /etc/filesystems, is tried and refuses the disk.
      "mount /dev/vdb /mnt/b && echo vfat-type=$(grep ' /mnt/b ' /proc/mounts | cut -d' ' -f3)",
      "echo written > /mnt/b/new && umount /mnt/b && mount /dev/vdb /mnt/b && echo vfat-new=$(cat /mnt/b/new)",
      "umount /mnt/a && umount /mnt/b && echo unmounted=yes",
    ].join("; ")]), "mount without -t"));
    assert.equal(r["ext4-type"], "ext4", JSON.stringify(r));
    assert.equal(r["ext4-file"], "hello from the host");
    assert.equal(r["mkdosfs-failed"], undefined);
    assert.equal(r["vfat-type"], "vfat", JSON.stringify(r));
    assert.equal(r["vfat-new"], "written");
    assert.equal(r.unmounted, "yes");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("two VMs on one socket network: ping, and a TCP transfer whose checksum the receiver computes", { timeout: 600_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-net-"));
  try {
    const sock = join(dir, "lan.sock");
    const up = (ip: string) => `ifconfig eth0 ${ip} netmask 255.255.255.0 up`;
    // The receiver's md5sum gets the connection as stdin and answers over it
    // (busybox nc -e); it serves one connection, then its VM powers off.
    const receiver = tsvisor(["run", "--net", `socket=listen:${sock}`, "--console", "hvc0", "--stats", "--timeout", "400", "--", "sh", "-c", [
      up("10.0.2.1"),
      "echo mac=$(cat /sys/class/net/eth0/address)",
      "nc -l -p 5000 -e md5sum",
      "echo served=yes",
    ].join("; ")]);
    const sender = tsvisor(["run", "--net", `socket=connect:${sock}`, "--stats", "--timeout", "400", "--", "sh", "-c", [
      up("10.0.2.2"),
      "echo mac=$(cat /sys/class/net/eth0/address)",
      // The receiver boots at the same time; wait until it answers.
      "n=0; until ping -c 1 -W 1 10.0.2.1 >/dev/null 2>&1 || [ $n -ge 60 ]; do n=$((n + 1)); done",
      "ping -c 3 10.0.2.1 | grep -o '[0-9]* packets received'",
      "dd if=/dev/urandom of=/tmp/data bs=1k count=1024 2>/dev/null",
      "echo sent-sum=$(md5sum < /tmp/data | cut -d' ' -f1)",
      "n=0; until nc 10.0.2.1 5000 < /tmp/data > /tmp/answer 2>/dev/null && [ -s /tmp/answer ] || [ $n -ge 30 ]; do sleep 1; n=$((n + 1)); done",
      "echo received-sum=$(cut -d' ' -f1 /tmp/answer)",
    ].join("; ")]);
    const [rx, tx] = await Promise.all([receiver, sender]);
    const txOut = reported(ok(tx, "sender"));
    const rxOut = reported(ok(rx, "receiver"));
    // A busy host may delay a reply past ping's wait; one in three may go.
    assert.match(tx.stdout, /^[23] packets received$/m, `sender stats:\n${tx.stderr}\nreceiver stats:\n${rx.stderr}`);
    assert.match(txOut["sent-sum"], /^[0-9a-f]{32}$/);
    assert.equal(txOut["received-sum"], txOut["sent-sum"], "1 MiB over TCP arrived intact");
    assert.equal(rxOut.served, "yes");
    // Default MACs: QEMU's locally administered prefix, different per VM.
    assert.match(rxOut.mac, /^52:54:00(:[0-9a-f]{2}){3}$/);
    assert.notEqual(rxOut.mac, txOut.mac);
    // The receiver's command ran on hvc0: its output went through virtio-console's queue.
    assert.match(rx.stderr, /^ {2}console0 q1 +\d+ notifies, [1-9]\d* requests/m, rx.stderr);
    assert.match(rx.stderr, /^ {2}net0 q0 +\d+ notifies, [1-9]\d* requests/m);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("bad --disk, --net and --console values and broken images give one line and a non-zero status", () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-virtio-bad-"));
  try {
    const run = (...args: string[]) => spawnSync(process.execPath, [bin, "run", ...args, "--", "true"], { encoding: "utf8", timeout: 60_000 }) as Run;
    const junk = join(dir, "junk.qcow2");
    writeFileSync(junk, Buffer.concat([Buffer.from("QFI\xfb", "latin1"), Buffer.alloc(4092, 0xee)]));

    const usage: [string[], RegExp][] = [
      [["--disk", "x.img,format=vmdk"], /--disk: format=vmdk is not one of raw, qcow2/],
      [["--disk", "x.img,bogus"], /--disk: unknown option 'bogus'/],
      [["--net", "bogus"], /--net: /],
      [["--net", "socket=listen:/tmp/x.sock,mac=zz"], /--net: .*mac/i],
      [["--console", "ttyS1"], /--console: expected ttyS0 or hvc0/],
    ];
    for (const [args, pattern] of usage) {
      const r = run(...args);
      assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
      oneErrorLine(r, pattern);
    }
    const missing = run("--disk", join(dir, "nope.img"));
    assert.equal(missing.status, 1);
    oneErrorLine(missing, /nope\.img: no such file/);
    const broken = run("--disk", junk);
    assert.equal(broken.status, 1);
    oneErrorLine(broken, /junk\.qcow2: .*qcow2/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a disk stays attached across a guest reboot: data written before `reboot` reads back after it", { timeout: 600_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-reboot-"));
  try {
    const disk = join(dir, "disk.qcow2");
    ok(spawnSync(process.execPath, [bin, "disk", "create", "--size", "16M", disk], { encoding: "utf8" }) as Run, "disk create");
    // The interactive shell, typed into through a pipe: each boot's commands
    // are sent once that boot's shell has printed its banner.
    const child = spawn(process.execPath, [bin, "run", "--disk", disk, "--timeout", "400"], { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    let banners = 0;
    const sessions = [
      // Straight onto the block device: no filesystem module to load.
      "seq 1 5000 > /tmp/d; dd if=/tmp/d of=/dev/vda bs=4k conv=fsync 2>/dev/null; echo before=$(md5sum < /tmp/d | cut -c1-32); reboot\n",
      "echo after=$(dd if=/dev/vda bs=4k count=$(( $(seq 1 5000 | wc -c) / 4096 + 1 )) 2>/dev/null | head -c $(seq 1 5000 | wc -c) | md5sum | cut -c1-32); poweroff\n",
    ];
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      const seen = out.split("tsvisor: busybox shell on").length - 1;
      while (banners < seen) child.stdin.write(sessions[banners++] ?? "");
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const status = await new Promise<number | null>((resolve) => child.on("close", resolve));
    const before = /^before=([0-9a-f]{32})/m.exec(out)?.[1];
    const after = /^after=([0-9a-f]{32})/m.exec(out)?.[1];
    assert.equal(status, 0, `status ${status}\n${out}\n${stderr}`);
    assert.match(stderr, /guest rebooted/);
    assert.ok(before, out);
    assert.equal(after, before, "what was written before the reboot");
    checkImage(disk);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
