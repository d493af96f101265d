// Pulls the real image from deb.debian.org (about 115 MB) into the default
// cache, where later runs and the boot tests find it. The broken-cache case
// works on a copy in a temporary cache so that the default image is never
// broken under a boot test running at the same time.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, truncateSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { pullDebianImage, type PulledImage } from "./debian.js";
import { ImageError } from "./errors.js";

const UNREACHABLE = "http://127.0.0.1:9/debian"; // the discard port: connection refused

function cpioList(path: string): string[] {
  return execFileSync("cpio", ["-it", "--quiet"], { input: readFileSync(path), maxBuffer: 1 << 24, encoding: "utf8" }).trim().split("\n");
}

function cpioRead(path: string, member: string): string {
  return execFileSync("cpio", ["-i", "--quiet", "--to-stdout", member], { input: readFileSync(path), maxBuffer: 1 << 24, encoding: "utf8" });
}

let pulled: PulledImage;

test("pull: Debian's kernel and an initramfs with busybox, init and ext4 with its dependencies", { timeout: 600_000 }, async () => {
  const lines: string[] = [];
  pulled = await pullDebianImage({ progress: (l) => lines.push(l) });
  assert.match(pulled.kernelVersion, /^\d+\.\d+\.\d+.*-riscv64$/);
  if (!pulled.fromCache) assert.ok(lines.some((l) => /^tsvisor image: downloading linux-image-\S+-riscv64 \S+ \(\d+ MB\)$/.test(l)), lines.join("\n"));

  const kernel = readFileSync(pulled.kernelPath);
  assert.equal(kernel.subarray(0x30, 0x38).toString("latin1"), "RISCV\0\0\0", "RISC-V Image magic");
  assert.equal(kernel.subarray(0x38, 0x3c).toString("latin1"), "RSC\x05", "RISC-V Image magic2");

  const files = cpioList(pulled.initrdPath);
  const lib = `lib/modules/${pulled.kernelVersion}`;
  for (const f of ["init", "bin/busybox", "dev/console", `${lib}/kernel/fs/ext4/ext4.ko`, `${lib}/kernel/fs/jbd2/jbd2.ko`,
    `${lib}/kernel/drivers/virtio/virtio_mmio.ko`, `${lib}/modules.dep`, `${lib}/modules.alias`, `${lib}/modules.builtin`, `${lib}/modules.order`]) {
    assert.ok(files.includes(f), `${f} in the initramfs`);
  }
  const dep = cpioRead(pulled.initrdPath, `${lib}/modules.dep`);
  const ext4 = dep.split("\n").find((l) => l.startsWith("kernel/fs/ext4/ext4.ko:"));
  assert.ok(ext4, "ext4 in modules.dep");
  for (const d of ["kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko"]) assert.ok(ext4.split(" ").includes(d), `ext4 needs ${d}: ${ext4}`);
  const alias = cpioRead(pulled.initrdPath, `${lib}/modules.alias`);
  assert.match(alias, /^alias fs-ext4 ext4$/m);
  assert.match(alias, /^alias virtio:d00000002v\* virtio_blk$/m);
  assert.match(alias, /^alias crypto-crc32c crc32c_generic$/m, "ext4's soft dependency is there for request_module");
  assert.deepEqual(pulled.manifest.modules.filter((m) => m.endsWith("/ext4.ko")), ["kernel/fs/ext4/ext4.ko"]);
});

test("a second pull uses the cache: no network, well under a second", async () => {
  const t0 = Date.now();
  const again = await pullDebianImage({ mirror: UNREACHABLE, progress: () => assert.fail("no progress expected") });
  assert.equal(again.fromCache, true);
  assert.equal(again.kernelPath, pulled.kernelPath);
  assert.equal(again.kernelVersion, pulled.kernelVersion);
  assert.ok(Date.now() - t0 < 2000, `${Date.now() - t0} ms`);
});

test("a broken cache (truncated initramfs) is noticed and rebuilt", { timeout: 600_000 }, async () => {
  const cacheDir = mkdtempSync(join(tmpdir(), "tsvisor-cache-"));
  try {
    const imageDir = join(cacheDir, "images", "debian-trixie-riscv64");
    cpSync(dirname(pulled.kernelPath), imageDir, { recursive: true });
    truncateSync(join(imageDir, "initramfs.cpio"), 1000);
    const lines: string[] = [];
    const rebuilt = await pullDebianImage({ cacheDir, progress: (l) => lines.push(l) });
    assert.equal(rebuilt.fromCache, false);
    assert.match(lines[0], /cached image in .* is broken \(initramfs\.cpio does not match its SHA256 in manifest\.json\); rebuilding/);
    if (JSON.stringify([rebuilt.manifest.kernel, rebuilt.manifest.busybox]) === JSON.stringify([pulled.manifest.kernel, pulled.manifest.busybox])) {
      // Same packages (the archive did not move on since the default cache was filled): same bytes.
      assert.deepEqual(rebuilt.manifest.files, pulled.manifest.files, "reproducible");
    }
    assert.deepEqual(readdirSync(cacheDir), ["images"], "no build directory left");
    assert.equal((await pullDebianImage({ cacheDir, mirror: UNREACHABLE })).fromCache, true);
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test("no network: says apt-get update failed and leaves nothing behind", { timeout: 120_000 }, async () => {
  const cacheDir = mkdtempSync(join(tmpdir(), "tsvisor-cache-"));
  try {
    await assert.rejects(pullDebianImage({ cacheDir, mirror: UNREACHABLE, progress: () => {} }), (e: unknown) => {
      assert.ok(e instanceof ImageError, String(e));
      assert.match(e.message, /^apt-get update failed: .*127\.0\.0\.1:9/);
      assert.ok(!e.message.includes("\n"));
      return true;
    });
    assert.deepEqual(readdirSync(cacheDir), []);
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});
