// A daemon VM whose Debian guest has its share mounted and holds files of it
// (a process with its working directory there and a file open): snapshot,
// a clone restored from it, and migration to another host. The guest's
// nodes and handles are found again by their names on restore
// (devices/virtio/fs/saved-table.ts); a held file deleted on the host
// refuses the snapshot with 409 and one line, and the VM goes on.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { noGuestAgent, pullImage, tsvisor, BOOT_TIMEOUT_MS, type Run } from "../cli/test-tsvisor.js";
import { TestHost } from "./test-host.js";

const skip = noGuestAgent;
const dir = mkdtempSync(join(tmpdir(), "tsvisor-shares-linux-"));
after(() => rmSync(dir, { recursive: true, force: true }));
before(() => {
  if (!skip) pullImage();
});
const TOKEN = "shares-linux-secret";

test("a mounted share with files the guest holds: snapshot, a clone, migration; a held file deleted on the host refuses the snapshot", { skip, timeout: BOOT_TIMEOUT_MS + 180_000 }, async () => {
  const shared = join(dir, "shared");
  mkdirSync(join(shared, "sub"), { recursive: true });
  writeFileSync(join(shared, "sub", "held.txt"), "first line\nsecond line\n");
  writeFileSync(join(shared, "doomed.txt"), "soon gone\n");
  const host = await TestHost.start(join(dir, "src"));
  const target = await TestHost.start(join(dir, "dst"), ["--pcpus", "1", "--mem", "1G", "--migration-listen", "127.0.0.1:0", "--migration-token", TOKEN]);
  const exec = (on: TestHost, vm: string, script: string): Promise<Run> => tsvisor(["vm", "exec", vm, "--host", on.socket, "--", "sh", "-c", script]);
  const ok = async (on: TestHost, vm: string, script: string): Promise<string> => {
    const r = await exec(on, vm, script);
    assert.equal(r.status, 0, `${script}: ${r.stderr}\n${on.stderr}`);
    return r.stdout;
  };
  try {
    const created = await host.vm("create", "a", "--mem", "256M", "--net", "none", "--share", `${shared}:/mnt/s`, "--start");
    assert.equal(created.status, 0, created.stderr);
    for (let i = 0; (await exec(host, "a", "true")).status !== 0; i++) {
      assert.ok(i < 150, `no agent:\n${host.stderr}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
    // A process that lives in the share and keeps a file of it open, and another file looked up.
    await ok(host, "a", "cd /mnt/s/sub && setsid sh -c 'exec 3< held.txt; read -r l <&3; echo $$ > /tmp/holder; sleep 100000' </dev/null >/dev/null 2>&1 & sleep 1; cat /mnt/s/doomed.txt");
    const holds = await ok(host, "a", "ls -l /proc/$(cat /tmp/holder)/fd/3 /proc/$(cat /tmp/holder)/cwd");
    assert.match(holds, /fd\/3 -> \/mnt\/s\/sub\/held\.txt$/m);
    assert.match(holds, /cwd -> \/mnt\/s\/sub$/m);

    // A held file deleted on the host: refused, one line, and the VM goes on.
    rmSync(join(shared, "doomed.txt"));
    const refused = await host.api("POST", "/v1/vms/a/snapshot", { path: join(dir, "refused.snap") });
    assert.equal(refused.status, 409, refused.text);
    assert.match(refused.json.error, /virtio-fs share0 \(.*shared\): 1 files the guest holds are no longer where it found them \(deleted, or moved on the host; 'doomed\.txt' among them\)/);
    assert.ok(!existsSync(join(dir, "refused.snap")));
    assert.equal((await host.api("GET", "/v1/vms/a")).json.state, "running");
    // The guest lets go of it (its dentry is dropped with the caches), and the snapshot goes through.
    await ok(host, "a", "ls /mnt/s/doomed.txt 2>/dev/null; sync; echo 2 > /proc/sys/vm/drop_caches");

    const snap = await host.api("POST", "/v1/vms/a/snapshot", { path: join(dir, "a.snap") });
    assert.equal(snap.status, 200, snap.text);

    // Migrated: the holder still has its file and its directory there, and the share works both ways.
    const to = /taking migrated VMs on (127\.0\.0\.1:\d+)/.exec(target.stderr)?.[1];
    assert.ok(to, target.stderr);
    const mig = await host.api("POST", "/v1/vms/a/migrate", { to, token: TOKEN });
    assert.equal(mig.status, 200, mig.text);
    assert.match(await ok(target, "a", "ls -l /proc/$(cat /tmp/holder)/fd/3; cat /proc/$(cat /tmp/holder)/fd/3; echo migrated > /mnt/s/from-target.txt"), /held\.txt[\s\S]*first line\nsecond line/);
    assert.equal(readFileSync(join(shared, "from-target.txt"), "utf8"), "migrated\n");

    // A clone from the snapshot, on the first host: the same, on its own.
    const clone = await host.api("POST", "/v1/restore", { path: join(dir, "a.snap"), name: "c" });
    assert.equal(clone.status, 201, clone.text);
    assert.match(await ok(host, "c", "cd /proc/$(cat /tmp/holder)/cwd && cat held.txt && ls /mnt/s && echo cloned > /mnt/s/from-clone.txt"), /first line\nsecond line\n[\s\S]*from-target\.txt/);
    assert.equal(readFileSync(join(shared, "from-clone.txt"), "utf8"), "cloned\n");
  } finally {
    await host.stop();
    await target.stop();
  }
});
