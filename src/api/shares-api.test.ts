// A VM with a shared folder (virtio-fs) through the host daemon: it starts
// with its share, and snapshot and migration are refused with 409 and one
// line before anything pauses (devices/virtio/fs/device.ts says why).
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { root } from "../cli/test-tsvisor.js";
import { buildBareKernel, bareProgram, haveBareCompiler } from "../host/testing/bare-kernel.js";
import { TestHost } from "./test-host.js";

const skip = haveBareCompiler() ? false : "needs riscv64-unknown-elf-gcc (npm test installs it)";
const base = mkdtempSync(join(tmpdir(), "tsvisor-shareapi-"));
after(() => rmSync(base, { recursive: true, force: true }));
const patterns = join(root, "build", "bare", "patterns.Image");

before(() => {
  if (!skip) buildBareKernel(bareProgram("patterns"));
});

test("a VM with a share: it runs; snapshot and migrate are 409 with one line, and it keeps running", { skip, timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(base, "a-"));
  const shared = join(dir, "shared");
  mkdirSync(shared);
  const host = await TestHost.start(dir);
  try {
    const created = await host.api("POST", "/v1/vms", { name: "s", kernel: patterns, append: "", memBytes: 64 << 20, cpus: 1, nets: [], shares: [`${shared}:/mnt/s`] });
    assert.equal(created.status, 201, created.text);
    assert.equal((await host.api("POST", "/v1/vms/s/start")).status, 200);
    const snap = await host.api("POST", "/v1/vms/s/snapshot", { path: join(dir, "s.snap") });
    assert.equal(snap.status, 409, snap.text);
    assert.match(snap.json.error, /^VM 's' has a shared folder \(.*shared\): it cannot be snapshotted/);
    const mig = await host.api("POST", "/v1/vms/s/migrate", { to: "127.0.0.1:1", token: "x".repeat(32) });
    assert.equal(mig.status, 409, mig.text);
    assert.match(mig.json.error, /it cannot be migrated/);
    const info = await host.api("GET", "/v1/vms/s");
    assert.equal(info.json.state, "running");
    assert.deepEqual(info.json.config.shares, [`${shared}:/mnt/s`]);
  } finally {
    await host.stop();
  }
});
