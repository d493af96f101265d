// `tsvisor vm create NAME --image debian`: a daemon VM whose root disk is an
// overlay of its own on the system image (root-disk.ts), here the small
// system disk of images/small-system-fixture.ts in a cache of the test's.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pullImage, BOOT_TIMEOUT_MS } from "../cli/test-tsvisor.js";
import { SMALL_SYSTEM_MARKER, plantSmallSystem } from "../images/small-system-fixture.js";
import { TestHost } from "./test-host.js";

const work = mkdtempSync(join(tmpdir(), "tsvisor-image-vm-"));
let cache = "";
after(() => rmSync(work, { recursive: true, force: true }));
before(() => {
  pullImage();
  cache = plantSmallSystem(work);
});

test("vm create --image debian: the command runs chrooted in the VM's own root disk, which keeps what it wrote from run to run and goes with vm rm", { timeout: 3 * BOOT_TIMEOUT_MS }, async () => {
  const host = await TestHost.start(join(work, "host"), undefined, { env: { ...process.env, TSVISOR_CACHE: cache } });
  try {
    // Refused: an image tsvisor does not build, an image with a kernel of one's own.
    const unknown = await host.api("POST", "/v1/vms", { name: "x", image: "fedora" });
    assert.equal(unknown.status, 400);
    assert.match(unknown.json.error, /^image: unknown image 'fedora' \(known: debian\)$/);
    assert.equal((await host.api("POST", "/v1/vms", { name: "x", image: "debian", kernel: "/boot/Image" })).status, 400);
    const badFlag = await host.vm("create", "x", "--image", "fedora");
    assert.equal(badFlag.status, 2);
    assert.match(badFlag.stderr, /unknown image 'fedora'/);

    const script = "cat /etc/marker; echo run >> /root/runs; cat /root/runs";
    const made = await host.vm("create", "t", "--image", "debian", "--mem", "192M", "--net", "none", "--", "sh", "-c", script);
    assert.equal(made.status, 0, made.stderr);
    const root = join(work, "host", "state", "disks", "t-debian.qcow2");
    const info = await host.api("GET", "/v1/vms/t");
    assert.equal(info.json.config.image, "debian");
    assert.deepEqual(info.json.config.disks, [`${root},format=qcow2`], "its root disk first");
    assert.ok(!existsSync(root), "made at the first start, not before");

    for (const runs of ["run\n", "run\nrun\n"]) {
      assert.equal((await host.api("POST", "/v1/vms/t/start")).status, 200);
      const end = await host.api("GET", "/v1/vms/t/wait");
      const logs = (await host.api("GET", "/v1/vms/t/logs")).text;
      assert.equal(end.json.exitStatus, 0, logs);
      // The console log holds every run's output; the last run saw both its own line and the first run's.
      assert.ok(logs.includes(`${SMALL_SYSTEM_MARKER}${runs}`), logs);
    }
    assert.ok(existsSync(root));
    await host.waitFor(/vm t: made its root disk .*t-debian\.qcow2 on the debian system image/);

    const rm = await host.vm("rm", "t");
    assert.equal(rm.status, 0, rm.stderr);
    assert.ok(!existsSync(root), "vm rm removed the root disk it made");
    assert.ok(!existsSync(`${root}.base`));
  } finally {
    assert.equal(await host.stop(), 0);
  }
});
