// --image and --disk-name without a build: names checked, overlays made and thrown away or kept.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { openDisk } from "../backends/disk/disk.js";
import { createQcow2 } from "../backends/disk/qcow2/create.js";
import { OverlayError, checkDiskName, checkImageName, keptDiskPath, makeOverlay } from "./system-image.js";
import { bin } from "./test-tsvisor.js";
import { UsageError } from "./size.js";

function tsvisor(...args: string[]) {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-img-"));
  try {
    // An empty cache: nothing may be pulled or built before the arguments are refused.
    return spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", env: { ...process.env, TSVISOR_CACHE: dir }, timeout: 60_000 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function oneUsageLine(r: ReturnType<typeof tsvisor>, pattern: RegExp) {
  assert.equal(r.status, 2, r.stderr);
  const lines = r.stderr.split("\n").filter((l) => l !== "");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /^tsvisor: /);
  assert.match(lines[0], pattern);
}

test("image names: debian, and a one-line usage error (exit 2) for others", () => {
  assert.equal(checkImageName("debian", "--image"), "debian");
  assert.throws(() => checkImageName("ubuntu", "--image"), (e) => e instanceof UsageError && /unknown image 'ubuntu' \(known: debian\)/.test(e.message));
  oneUsageLine(tsvisor("run", "--image", "ubuntu", "--", "true"), /--image: unknown image 'ubuntu'/);
  oneUsageLine(tsvisor("run", "--image", "", "--", "true"), /unknown image ''/);
  oneUsageLine(tsvisor("image", "pull", "fedora"), /image pull: unknown image 'fedora'/);
  oneUsageLine(tsvisor("image", "pull", "debian", "extra"), /unexpected argument 'extra'/);
  oneUsageLine(tsvisor("run", "--disk-name", "keep", "--", "true"), /--disk-name applies to --image only/);
  oneUsageLine(tsvisor("run", "--image", "debian", "--disk-name", "../x", "--", "true"), /not a disk name/);
  oneUsageLine(tsvisor("run", "--image", "debian", "--kernel", "/x", "--", "true"), /no --kernel or --initrd/);
  oneUsageLine(tsvisor("run", "--bare", "x.elf", "--image", "debian"), /--image applies to Linux guests/);
});

test("disk names are file names", () => {
  for (const ok of ["work", "a.b_c-1", "X"]) assert.equal(checkDiskName(ok), ok);
  for (const bad of ["", "../up", "a/b", ".hidden", "-dash", "x".repeat(65)]) assert.throws(() => checkDiskName(bad), UsageError, bad);
  assert.equal(keptDiskPath("/c", "work"), "/c/disks/work.qcow2");
});

test("an overlay reads the base, takes the writes, leaves the base alone, is made new again and thrown away", () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-ovl-"));
  try {
    const base = join(dir, "base.qcow2");
    createQcow2(base, { size: 4 << 20 });
    const b = openDisk(base);
    b.write(0, new Uint8Array(512).fill(0xaa));
    b.close();

    const o = makeOverlay(base, 4 << 20);
    assert.equal(o.reused, false);
    const d = openDisk(o.path);
    const buf = new Uint8Array(512);
    d.read(0, buf);
    assert.ok(buf.every((x) => x === 0xaa), "the overlay reads the base");
    d.write(0, new Uint8Array(512).fill(0x55));
    d.close();
    const again = openDisk(base, { readOnly: true });
    again.read(0, buf);
    again.close();
    assert.ok(buf.every((x) => x === 0xaa), "the base is unchanged");
    // Renewed (a fast start's cold boot after a failed restore): the base again, without the run's writes.
    o.renew();
    const renewed = openDisk(o.path);
    renewed.read(0, buf);
    renewed.close();
    assert.ok(buf.every((x) => x === 0xaa), "a renewed overlay reads the base");
    o.dispose();
    assert.equal(existsSync(o.path), false);
    assert.equal(existsSync(dirname(o.path)), false);

    // Kept: made once, then the same file (with what was written) again.
    const kept = join(dir, "disks", "work.qcow2");
    rmSync(dirname(kept), { recursive: true, force: true });
    assert.throws(() => makeOverlay(base, 4 << 20, kept)); // its directory is the caller's to make
    const k1 = makeOverlay(base, 4 << 20, join(dir, "work.qcow2"));
    assert.equal(k1.reused, false);
    const kd = openDisk(k1.path);
    kd.write(512, new Uint8Array(512).fill(0x11));
    kd.close();
    k1.dispose();
    assert.ok(existsSync(k1.path), "a kept overlay survives dispose");
    const k2 = makeOverlay(base, 4 << 20, join(dir, "work.qcow2"));
    assert.equal(k2.reused, true);
    assert.throws(() => makeOverlay(base, 4 << 20, join(dir, "work.qcow2"), "another build"), (e) => e instanceof OverlayError && /another build of the image/.test(e.message));
    const kd2 = openDisk(k2.path, { readOnly: true });
    kd2.read(512, buf);
    kd2.close();
    assert.ok(buf.every((x) => x === 0x11));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
