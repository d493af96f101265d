// A VM with a shared folder (virtio-fs) through the host daemon: it starts
// with its share, is snapshotted, restored as a clone and migrated to
// another host with it. The guest is the bare patterns.c, which never
// mounts the share (what the guest holds of it goes along too: fs.test.ts at
// the FUSE level, shares-linux.test.ts with Debian's driver); it finishes
// with errors=0 only if its RAM came back whole.
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
const TOKEN = "share-migration-secret";

before(() => {
  if (!skip) buildBareKernel(bareProgram("patterns"));
});

async function until(what: string, ok: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (await ok()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

test("a VM with a share: snapshot (also live), a clone restored with the share, and migration to another host", { skip, timeout: 90_000 }, async () => {
  const dir = mkdtempSync(join(base, "a-"));
  const shared = join(dir, "shared");
  mkdirSync(shared);
  const host = await TestHost.start(join(dir, "src"));
  const target = await TestHost.start(join(dir, "dst"), ["--pcpus", "1", "--mem", "1G", "--migration-listen", "127.0.0.1:0", "--migration-token", TOKEN]);
  try {
    const created = await host.api("POST", "/v1/vms", { name: "s", kernel: patterns, append: "", memBytes: 64 << 20, cpus: 1, nets: [], shares: [`${shared}:/mnt/s`] });
    assert.equal(created.status, 201, created.text);
    assert.equal((await host.api("POST", "/v1/vms/s/start")).status, 200);
    await until("'written'", async () => (await host.api("GET", "/v1/vms/s/logs")).text.includes("written"));

    const snap = await host.api("POST", "/v1/vms/s/snapshot", { path: join(dir, "s.snap") });
    assert.equal(snap.status, 200, snap.text);
    const live = await host.api("POST", "/v1/vms/s/snapshot", { path: join(dir, "live.snap"), live: true });
    assert.equal(live.status, 200, live.text);
    // It runs on (about 3 s until it reads its RAM back): migrated meanwhile.
    const to = /taking migrated VMs on (127\.0\.0\.1:\d+)/.exec(target.stderr)?.[1];
    assert.ok(to, target.stderr);
    const mig = await host.api("POST", "/v1/vms/s/migrate", { to, token: TOKEN });
    assert.equal(mig.status, 200, mig.text);
    assert.deepEqual((await target.api("GET", "/v1/vms/s")).json.config.shares, [`${shared}:/mnt/s`]);
    const end = await target.api("GET", "/v1/vms/s/wait");
    assert.equal(end.json.exitStatus, 0, end.text);
    assert.match((await target.api("GET", "/v1/vms/s/logs")).text, /done errors=0/);

    // The snapshot, restored as a clone (the original has moved on, to the other host).
    const clone = await host.api("POST", "/v1/restore", { path: join(dir, "s.snap"), name: "c" });
    assert.equal(clone.status, 201, clone.text);
    assert.deepEqual((await host.api("GET", "/v1/vms/c")).json.config.shares, [`${shared}:/mnt/s`]);
    const cloneEnd = await host.api("GET", "/v1/vms/c/wait");
    assert.equal(cloneEnd.json.exitStatus, 0, cloneEnd.text);
    assert.match((await host.api("GET", "/v1/vms/c/logs")).text, /done errors=0/);
  } finally {
    await host.stop();
    await target.stop();
  }
});
