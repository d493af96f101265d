// A VM can be destroyed at any moment: mid-boot, in a loop of disk writes
// and flushes, in a loop of console output (an MMIO exit per byte). After
// each, as its user sees it: the VM is gone from the host, every frame it
// held is back in the pool (and its data gone from host memory), its run
// ended "stopped", it prints nothing more, and the host runs a new VM to a
// correct end. Data the guest flushed to its
// disk before is in the image file, and the disk (its device and open file,
// which the caller owns) serves the next VM.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Host, type Vm } from "./host.js";
import { defineGuest, within, type Guest } from "./testing/guests.js";
import { openDisk } from "../backends/disk/disk.js";
import { VirtioBlk } from "../devices/virtio/blk.js";

/** One guest boot on a 2-core machine shared with other work: 5 to 40 s. */
const BOOT_MS = 180_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 20 ms; rejects after `ms`. */
async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Destroy a running VM and check what its user sees afterwards. */
async function destroyAndCheck(host: Host, guest: Guest): Promise<void> {
  const { vm } = guest;
  assert.equal(vm.state, "running");
  const owner = vm.owner;
  const ended = vm.waitForEnd();
  await vm.destroy();
  assert.equal(vm.state, "destroyed");
  assert.equal(host.vm(vm.name), undefined, "the host still knows the VM by name");
  assert.ok(!host.vms.includes(vm), "the host still lists the VM");
  assert.equal(host.pool.framesOwnedBy(owner), 0, "frames of the destroyed VM are not back in the pool");
  assert.deepEqual(await ended, { kind: "stopped", reason: "destroyed" });
  const printed = guest.output().length;
  await sleep(300);
  assert.equal(guest.output().length, printed, "the destroyed VM printed after destroy() resolved");
}

/** Start `guest` and wait for its end, which must be a power-off. */
async function runToEnd(guest: Guest): Promise<void> {
  guest.vm.start();
  const end = await within(guest.vm.waitForEnd(), BOOT_MS, () => `${guest.vm.name} did not end; output:\n${guest.output().slice(-2000)}`);
  assert.deepEqual(end, { kind: "poweroff" }, `${guest.vm.name}'s end; output:\n${guest.output().slice(-2000)}`);
}

function exits(vm: Vm, reason: "mmio" | "sbi"): number {
  return vm.stats().vcpus.reduce((n, c) => n + c.exits[reason], 0);
}

test("destroyed mid-boot: gone, frames back, its run ends 'stopped', waitForEnd() answers after destroy; the name serves a new VM", { timeout: 300_000 }, async () => {
  const host = await Host.create({ pcpus: 2 });
  try {
    const doomed = defineGuest(host, "doomed", ["echo", "from-the-first"]);
    doomed.vm.start();
    await sleep(200);
    assert.ok(host.pool.framesOwnedBy(doomed.vm.owner) > 0, "the booting VM holds frames");
    await destroyAndCheck(host, doomed);
    // Asked after the fact, too: the last run's end, not a promise that never settles.
    assert.deepEqual(await within(doomed.vm.waitForEnd(), 1000, () => "waitForEnd() on a destroyed VM never settled"), { kind: "stopped", reason: "destroyed" });
    assert.doesNotMatch(doomed.output(), /from-the-first/);

    const again = defineGuest(host, "doomed", ["echo", "from-the-second"]);
    await runToEnd(again);
    assert.match(again.output(), /from-the-second/);
    assert.equal(host.info().vms, 1);
  } finally {
    await host.close();
  }
});

test("destroyed before it ever started: whoever waits for its end learns it, then and later", async () => {
  const host = await Host.create({ pcpus: 1 });
  try {
    const { vm } = defineGuest(host, "never", ["true"]);
    const ended = vm.waitForEnd();
    await vm.destroy();
    const answer = (p: Promise<unknown>) => within(p, 1000, () => "waitForEnd() never settled");
    assert.deepEqual(await answer(ended), { kind: "stopped", reason: "destroyed" });
    assert.deepEqual(await answer(vm.waitForEnd()), { kind: "stopped", reason: "destroyed" });
    assert.equal(host.vm("never"), undefined);
  } finally {
    await host.close();
  }
});

test("destroyed in a loop of disk writes and flushes: what it flushed before is in the file, and the disk serves a new VM that reads it back", { timeout: 300_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-destroy-"));
  const path = join(dir, "disk.raw");
  writeFileSync(path, Buffer.alloc(4 << 20));
  // 64 KiB of a known pattern at the start of the disk, flushed; then random
  // 16 KiB writes behind it, each flushed, until the VM is destroyed.
  const pattern = Buffer.from("tsvisor-flushed\n".repeat(4096));
  const patternMd5 = createHash("md5").update(pattern).digest("hex");
  const blk = new VirtioBlk(openDisk(path, { format: "raw" }), { name: "blk0", serial: "destroy-test" });
  const host = await Host.create({ pcpus: 2 });
  try {
    const writer = defineGuest(host, "writer", ["sh", "-c", [
      "yes tsvisor-flushed | head -c 65536 > /tmp/pattern",
      "dd if=/tmp/pattern of=/dev/vda bs=4096 conv=fsync 2>/dev/null && echo flushed",
      "i=0; while :; do dd if=/dev/urandom of=/dev/vda bs=4096 seek=$((16 + i % 240)) count=4 conv=fsync 2>/dev/null; i=$((i + 1)); done",
    ].join("; ")], { virtio: [blk] });
    writer.vm.start();
    await writer.waitFor(/flushed/, BOOT_MS);
    // Destroy it while the loop's writes and flushes come in.
    const w0 = blk.stats.writes, f0 = blk.stats.flushes;
    await until(() => blk.stats.writes >= w0 + 8 && blk.stats.flushes >= f0 + 2, 60_000, "the guest's write loop");
    await destroyAndCheck(host, writer);

    const onDisk = readFileSync(path).subarray(0, pattern.length);
    assert.ok(onDisk.equals(pattern), `the flushed pattern is not in the file: ${JSON.stringify(onDisk.subarray(0, 64).toString("latin1"))}...`);

    // The same device and open file, in a new VM.
    const reader = defineGuest(host, "reader", ["sh", "-c", "echo md5=$(dd if=/dev/vda bs=4096 count=16 2>/dev/null | md5sum)"], { virtio: [blk] });
    await runToEnd(reader);
    assert.match(reader.output(), new RegExp(`md5=${patternMd5}`), "the new VM reads the pattern back");
  } finally {
    await host.close();
    blk.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("destroyed in a loop of console output (an MMIO exit per byte): gone, frames back and wiped, silent after; the host runs a new VM", { timeout: 300_000 }, async () => {
  const host = await Host.create({ pcpus: 2 });
  try {
    // 1 MiB of the guest's own data in its RAM (tmpfs): the repeated line is nowhere else.
    const flood = defineGuest(host, "flood", ["sh", "-c", "yes rosivst | head -c 1048576 > /tmp/fill; echo flooding; while :; do echo x; done"]);
    const secret = Buffer.from("rosivst\n".repeat(8));
    const inPool = () => Buffer.from(host.pool.memory.buffer).indexOf(secret) >= 0;
    flood.vm.start();
    await flood.waitFor(/flooding/, BOOT_MS);
    assert.ok(inPool(), "the guest's data is not in the pool while it runs (the search below would prove nothing)");
    // Well into the loop: kilobytes printed and MMIO exits coming.
    const printed = flood.output().length, mmio = exits(flood.vm, "mmio");
    await until(() => flood.output().length >= printed + 4096 && exits(flood.vm, "mmio") >= mmio + 4096, 60_000, "the guest's output loop");
    assert.match(flood.output(), /x\r?\nx\r?\nx\r?\n/);
    await destroyAndCheck(host, flood);
    assert.ok(!inPool(), "the destroyed VM's data is still in host memory");

    const after = defineGuest(host, "after", ["echo", "after-the-flood"]);
    await runToEnd(after);
    assert.match(after.output(), /after-the-flood/);
  } finally {
    await host.close();
  }
});
