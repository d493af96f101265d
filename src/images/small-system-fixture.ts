// A small system disk for tests of the system-disk paths (`run --image`,
// `vm create --image`) without the 11-minute Debian system build (that one
// is in the opt-in e2e suite: debian-system.e2e.test.ts). An ext4 file
// system holding Debian's static busybox (from the pulled initramfs) and a
// marker file, planted in a cache of the test's own where `image pull
// debian` would have put the real one; the kernel and initramfs are the
// pulled ones. Not used by tsvisor itself.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { defaultCacheDir } from "./image-cache.js";
import { debianImageDir } from "./debian.js";
import { SYSTEM_DISK_BYTES, SYSTEM_DISK_FILE, SYSTEM_MANIFEST_FILE, debianSystemDir, systemRecipe, type SystemManifest } from "./debian-system.js";
import { rawToQcow2 } from "./qcow2-convert.js";

/** What /etc/marker on the small system disk says. */
export const SMALL_SYSTEM_MARKER = "tiny system disk\n";

/**
 * Makes the disk in `work` (a directory of the test's) and returns the
 * cache to run tsvisor with (TSVISOR_CACHE). The kernel image must be
 * pulled already (test-tsvisor.ts pullImage).
 */
export function plantSmallSystem(work: string): string {
  const cache = join(work, "cache");
  // The pulled kernel and initramfs, seen from the test's cache.
  mkdirSync(join(cache, "images"), { recursive: true });
  const pulled = debianImageDir(defaultCacheDir());
  symlinkSync(pulled, debianImageDir(cache));
  // The tree: busybox from the initramfs, the applets the tests use, a marker.
  const tree = join(work, "tree");
  for (const d of ["bin", "etc", "root", "proc", "sys", "dev", "run", "tmp"]) mkdirSync(join(tree, d), { recursive: true });
  const cpio = spawnSync("sh", ["-c", `cd ${tree} && cpio -id --quiet bin/busybox < ${join(pulled, "initramfs.cpio")}`], { encoding: "utf8" });
  assert.equal(cpio.status, 0, `cpio: ${cpio.stderr}`);
  for (const applet of ["sh", "cat", "echo", "test", "true"]) symlinkSync("busybox", join(tree, "bin", applet));
  writeFileSync(join(tree, "etc", "marker"), SMALL_SYSTEM_MARKER);
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
  return cache;
}
