// `tsvisor run --image debian -- CMD` on a small system disk made here, so
// the default suite covers the system-disk paths (init's root mount and
// chroot, the overlays, fast start) without the 11-minute Debian system
// build (that one is in the opt-in e2e suite: images/debian-system.e2e.test.ts).
// The disk is an ext4 file system holding Debian's static busybox and a
// marker file, planted in a cache of its own where `image pull debian` would
// have put the real one; the kernel and initramfs are the pulled ones.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ok, pullImage, tsvisor as runTsvisor, BOOT_TIMEOUT_MS, type Run } from "./test-tsvisor.js";
import { defaultCacheDir } from "../images/image-cache.js";
import { debianImageDir } from "../images/debian.js";
import { SYSTEM_DISK_BYTES, SYSTEM_DISK_FILE, SYSTEM_MANIFEST_FILE, debianSystemDir, systemRecipe, type SystemManifest } from "../images/debian-system.js";
import { rawToQcow2 } from "../images/qcow2-convert.js";

const work = mkdtempSync(join(tmpdir(), "tsvisor-run-image-"));
const cache = join(work, "cache");
after(() => rmSync(work, { recursive: true, force: true }));

before(() => {
  pullImage();
  // The pulled kernel and initramfs, seen from the test's cache.
  mkdirSync(join(cache, "images"), { recursive: true });
  const pulled = debianImageDir(defaultCacheDir());
  symlinkSync(pulled, debianImageDir(cache));
  // The tree: busybox from the initramfs, the applets the tests use, a marker.
  const tree = join(work, "tree");
  for (const d of ["bin", "etc", "root", "proc", "sys", "dev", "run", "tmp"]) mkdirSync(join(tree, d), { recursive: true });
  const cpio = spawnSync("sh", ["-c", `cd ${join(work, "tree")} && cpio -id --quiet bin/busybox < ${join(pulled, "initramfs.cpio")}`], { encoding: "utf8" });
  assert.equal(cpio.status, 0, `cpio: ${cpio.stderr}`);
  for (const applet of ["sh", "cat", "echo", "test", "true"]) symlinkSync("busybox", join(tree, "bin", applet));
  writeFileSync(join(tree, "etc", "marker"), "tiny system disk\n");
  writeFileSync(join(tree, "etc", "hostname"), "tiny\n");
  // Made as image pull debian makes the real one: mke2fs -d, then qcow2.
  const raw = join(work, "root.raw");
  const mk = spawnSync("mke2fs", ["-q", "-F", "-t", "ext4", "-d", tree, raw, "32M"], { encoding: "utf8" });
  assert.equal(mk.status, 0, `mke2fs: ${mk.stderr}`);
  const dir = debianSystemDir(cache);
  mkdirSync(dir, { recursive: true });
  rawToQcow2(raw, join(dir, SYSTEM_DISK_FILE));
  const manifest: SystemManifest = {
    format: 1, recipe: systemRecipe(), source: { mirror: "test", suite: "trixie", arch: "riscv64" }, kernelVersion: "test", packages: [],
    disk: { file: SYSTEM_DISK_FILE, virtualSize: statSync(raw).size, fileBytes: statSync(join(dir, SYSTEM_DISK_FILE)).size },
    built: new Date().toISOString(), buildSeconds: 0,
  };
  assert.ok(manifest.disk.virtualSize < SYSTEM_DISK_BYTES);
  writeFileSync(join(dir, SYSTEM_MANIFEST_FILE), JSON.stringify(manifest));
});

/** tsvisor with the test's cache. */
const tsvisor = (args: string[]): Promise<Run> => runTsvisor(args, "", { TSVISOR_CACHE: cache });

const RUN = ["run", "--image", "debian", "--mem", "192M", "--stats"];

test("run --image: the command runs chrooted in the system disk; the first run makes the fast-start snapshot, later ones restore it on a new overlay each; --no-snapshot and --disk-name boot cold", { timeout: BOOT_TIMEOUT_MS }, async () => {
  const first = await tsvisor([...RUN, "--", "sh", "-c", "cat /etc/marker; echo one > /root/written; exit 3"]);
  assert.equal(first.status, 3, first.stderr);
  assert.equal(first.stdout, "tiny system disk\n");
  assert.match(first.stderr, /fast start: booted; snapshot .* written/);

  const second = await tsvisor([...RUN, "--", "sh", "-c", "cat /etc/marker; test -e /root/written && echo left-behind; echo two > /root/written; cat /root/written"]);
  assert.equal(ok(second), "tiny system disk\ntwo\n", "the restored run writes to a disk of its own, without the first run's file");
  assert.match(second.stderr, /fast start: restored /);

  const cold = await tsvisor([...RUN, "--no-snapshot", "--", "cat", "/etc/marker"]);
  assert.equal(ok(cold), "tiny system disk\n");
  assert.doesNotMatch(cold.stderr, /fast start/);

  // A kept disk changes from run to run: it never restores a snapshot.
  const a = await tsvisor([...RUN, "--disk-name", "kept", "--", "sh", "-c", "echo kept > /root/kept"]);
  ok(a);
  const b = await tsvisor([...RUN, "--disk-name", "kept", "--", "cat", "/root/kept"]);
  assert.equal(ok(b), "kept\n");
  for (const r of [a, b]) assert.doesNotMatch(r.stderr, /fast start/);
  assert.match(readFileSync(join(cache, "disks", "kept.qcow2.base"), "utf8"), new RegExp(systemRecipe()));
});
