// Disks on I/O threads in a host (devices/virtio/blk-iothread.ts): the main
// thread serves every VM's exits, so it must never wait for a disk. A guest
// writing and flushing 64 MiB must not stall it (its event loop keeps
// ticking, and it makes no disk call at all meanwhile), the data the guest
// flushed is in the file, and a VM stopped in the middle of its I/O hands
// the device back in a state another VM can use.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { Host, type Vm } from "./host.js";
import { IoThreadBlk } from "../devices/virtio/blk-iothread.js";
import { pullDebianImage } from "../images/debian.js";
import { parseKernelImage } from "../arch/riscv/boot-image.js";
import { withCommand, DEFAULT_CMDLINE } from "../cli/run-linux.js";

const image = await pullDebianImage({ progress: () => {} });
const kernel = parseKernelImage(new Uint8Array(fs.readFileSync(image.kernelPath)));
const baseInitrd = new Uint8Array(fs.readFileSync(image.initrdPath));
const MiB = 1 << 20;

function define(host: Host, name: string, script: string, blk?: IoThreadBlk): { vm: Vm; output: () => string; seen: (s: string) => Promise<void> } {
  const chunks: Buffer[] = [];
  const waiters: { s: string; resolve: () => void }[] = [];
  const vm = host.createVm({
    name, kernel, cpus: 1, memBytes: 128 << 20, cmdline: DEFAULT_CMDLINE,
    initrd: withCommand(baseInitrd, ["sh", "-c", script], undefined),
    virtio: blk ? [blk] : [],
    consoleOut: (b) => {
      chunks.push(Buffer.from(b));
      const text = Buffer.concat(chunks).toString();
      for (const w of waiters.splice(0)) (text.includes(w.s) ? w.resolve() : waiters.push(w));
    },
  });
  const output = () => Buffer.concat(chunks).toString();
  const seen = (s: string) => output().includes(s) ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ s, resolve }));
  return { vm, output, seen };
}

/** Count the main thread's synchronous calls on file descriptors open on `path` (workers have their own fs module). */
function watchDiskCalls(path: string): { calls: () => number; restore: () => void } {
  let calls = 0;
  const names = ["readSync", "writeSync", "fsyncSync", "fdatasyncSync"] as const;
  const saved = names.map((n) => fs[n]);
  const isDisk = (fd: unknown) => {
    try {
      return typeof fd === "number" && fs.readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false;
    }
  };
  names.forEach((n, i) => {
    const orig = saved[i] as (...a: unknown[]) => unknown;
    (fs as unknown as Record<string, unknown>)[n] = (...args: unknown[]) => {
      if (isDisk(args[0])) calls++;
      return orig(...args);
    };
  });
  syncBuiltinESMExports();
  return {
    calls: () => calls,
    restore: () => {
      names.forEach((n, i) => ((fs as unknown as Record<string, unknown>)[n] = saved[i]));
      syncBuiltinESMExports();
    },
  };
}

function fdsOn(path: string): number {
  return fs.readdirSync("/proc/self/fd").filter((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false;
    }
  }).length;
}

test("a guest writing and flushing 64 MiB leaves the main thread out of its disk calls and its neighbour running; what it flushed is in the file", { timeout: 600_000 }, async (t) => {
  const dir = fs.mkdtempSync(join(tmpdir(), "tsvisor-iothread-"));
  const path = fs.realpathSync(dir) + "/disk.raw";
  fs.writeFileSync(path, Buffer.alloc(72 * MiB, 0x5a));
  const blk = await IoThreadBlk.open({ path, format: "raw" }, { name: "blk0", serial: "iothread" });
  const host = await Host.create({ pcpus: 2 });
  const watch = watchDiskCalls(path);
  let maxGap = 0;
  let measuring = false;
  let last = performance.now();
  const ticker = setInterval(() => {
    const now = performance.now();
    if (measuring) maxGap = Math.max(maxGap, now - last);
    last = now;
  }, 10);
  try {
    const io = define(host, "io", [
      "head -c 1048576 /dev/urandom > /tmp/r",
      "echo io-start",
      "dd if=/dev/zero of=/dev/vda bs=1M count=64 oflag=direct conv=fsync 2>/dev/null",
      "dd if=/tmp/r of=/dev/vda bs=1M seek=64 oflag=direct conv=fsync 2>/dev/null",
      "echo io-end",
      "echo sum=$(md5sum < /tmp/r | cut -c1-32)",
    ].join("; "), blk);
    const other = define(host, "other", "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo tick-$i; done; echo other-done");
    io.vm.start();
    other.vm.start();
    await io.seen("io-start");
    const callsBefore = watch.calls();
    last = performance.now();
    measuring = true;
    await io.seen("io-end");
    measuring = false;
    const mainThreadCalls = watch.calls() - callsBefore;
    t.diagnostic(`longest event loop gap during the guest's I/O: ${maxGap.toFixed(0)} ms; main-thread disk calls: ${mainThreadCalls}`);
    const [ioEnd, otherEnd] = await Promise.all([io.vm.waitForEnd(), other.vm.waitForEnd()]);
    assert.equal(ioEnd.kind, "poweroff", io.output());
    assert.equal(otherEnd.kind, "poweroff", other.output());
    assert.match(other.output(), /other-done/);
    assert.equal(mainThreadCalls, 0, "the main thread touched the disk while the guest wrote to it");
    // The event loop's longest gap is reported above, not asserted: it is a
    // timing (it reached 200 ms on a machine running ten test files at
    // once); that the main thread made no disk call is what the design
    // promises, and is asserted.
    // What the guest wrote and flushed is in the file.
    const sum = /sum=([0-9a-f]{32})/.exec(io.output())?.[1];
    const file = fs.readFileSync(path);
    assert.equal(createHash("md5").update(file.subarray(64 * MiB, 65 * MiB)).digest("hex"), sum);
    assert.ok(file.subarray(0, 64 * MiB).every((b) => b === 0), "the zeros the guest wrote are not all in the file");
    assert.ok(file.subarray(65 * MiB).every((b) => b === 0x5a));
    assert.match(blk.statsLines()[0], /65 MiB, [1-9]\d* flushes/);
    assert.equal(host.pool.framesOwnedBy(io.vm.owner), 0);
  } finally {
    clearInterval(ticker);
    watch.restore();
    await host.close();
    await blk.close();
    assert.equal(fdsOn(path), 0, "the disk file is still open after close");
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a VM stopped in the middle of its disk I/O gives its frames back; the quiesced disk serves the next VM", { timeout: 600_000 }, async () => {
  const dir = fs.mkdtempSync(join(tmpdir(), "tsvisor-iothread-"));
  const path = join(dir, "disk.raw");
  fs.writeFileSync(path, Buffer.alloc(16 * MiB));
  const blk = await IoThreadBlk.open({ path, format: "raw" }, { name: "blk0", serial: "iothread" });
  const host = await Host.create({ pcpus: 2 });
  try {
    const writer = define(host, "writer", "echo writing; while true; do dd if=/dev/urandom of=/dev/vda bs=1M count=16 oflag=direct conv=fsync 2>/dev/null; done", blk);
    writer.vm.start();
    await writer.seen("writing");
    await new Promise((r) => setTimeout(r, 500));
    await writer.vm.stop();
    assert.equal(host.pool.framesOwnedBy(writer.vm.owner), 0);
    await writer.vm.destroy();
    const reader = define(host, "reader", "echo sum=$(dd if=/dev/vda bs=1M count=16 2>/dev/null | md5sum | cut -c1-32)", blk);
    reader.vm.start();
    assert.equal((await reader.vm.waitForEnd()).kind, "poweroff", reader.output());
    const sum = /sum=([0-9a-f]{32})/.exec(reader.output())?.[1];
    assert.equal(sum, createHash("md5").update(fs.readFileSync(path)).digest("hex"));
  } finally {
    await host.close();
    await blk.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
