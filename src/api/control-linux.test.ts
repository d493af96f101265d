// The host daemon with real Debian guests (the others use a bare kernel):
// issue 12's "done when" scenario, and SIGTERM with running VMs leaving
// their qcow2 disks clean. Both guests boot at once in one host.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, existsSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bin, pullImage, tsvisor, type Run } from "../cli/test-tsvisor.js";
import { TestHost } from "./test-host.js";

const skip = spawnSync("qemu-img", ["--version"]).status === 0 ? false : "needs qemu-img (npm test installs qemu-utils)";
const dir = mkdtempSync(join(tmpdir(), "tsvisor-control-linux-"));
after(() => rmSync(dir, { recursive: true, force: true }));
before(() => {
  if (!skip) pullImage();
});

/** `tsvisor ARGS` with this environment (no --host: the default socket). */
function client(env: NodeJS.ProcessEnv, ...args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [bin, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    c.stdout.on("data", (d: Buffer) => (stdout += d));
    c.stderr.on("data", (d: Buffer) => (stderr += d));
    c.on("error", reject);
    c.on("close", (status) => resolve({ status, stdout, stderr }));
  });
}

test("done when: `tsvisor host &`, `vm create a --start -- uname -m`, `vm wait a` exits 0 and `vm logs a` says riscv64; SIGTERM leaves a qcow2 disk clean", { skip, timeout: 300_000 }, async () => {
  // The default socket: $XDG_RUNTIME_DIR/tsvisor/host.sock, found by host and clients alike.
  const env = { ...process.env, XDG_RUNTIME_DIR: join(dir, "run"), TSVISOR_HOST: "" };
  const socket = join(dir, "run", "tsvisor", "host.sock");
  const host = await TestHost.start(dir, [], { env, socket });
  let exited = false;
  try {
    assert.ok(existsSync(socket), host.stderr);
    const disk = join(dir, "d.qcow2");
    const made = await tsvisor(["disk", "create", "--size", "64M", disk]);
    assert.equal(made.status, 0, made.stderr);
    // A guest that writes its disk and then runs on, until the host stops it.
    const d = await client(env, "vm", "create", "d", "--disk", disk, "--mem", "256M", "--start", "--",
      "sh", "-c", "dd if=/dev/urandom of=/dev/vda bs=64k count=64 conv=fsync 2>/dev/null && echo written && sleep 600");
    assert.equal(d.status, 0, d.stderr);

    const a = await client(env, "vm", "create", "a", "--start", "--", "uname", "-m");
    assert.equal(a.status, 0, a.stderr);
    const w = await client(env, "vm", "wait", "a");
    assert.equal(w.status, 0, `${w.stderr}\n${host.stderr}`);
    const logs = await client(env, "vm", "logs", "a");
    assert.equal(logs.status, 0, logs.stderr);
    assert.match(logs.stdout, /^riscv64\r?$/m);
    const info = JSON.parse((await client(env, "vm", "info", "a", "--json")).stdout);
    assert.equal(info.state, "stopped");
    assert.deepEqual(info.lastRun, { end: { kind: "poweroff" }, exitStatus: 0 });

    for (let i = 0; ; i++) {
      if ((await client(env, "vm", "logs", "d")).stdout.includes("written")) break;
      assert.ok(i < 600, `d never wrote its disk:\n${host.stderr}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(JSON.parse((await client(env, "vm", "info", "d", "--json")).stdout).state, "running");
    // Issue 14: Linux's virtio_balloon driver reports the guest's memory
    // statistics, and inflates to the target `vm set --balloon` gives.
    let stats;
    for (let i = 0; ; i++) {
      stats = JSON.parse((await client(env, "vm", "info", "d", "--json")).stdout).stats;
      if (stats.balloon?.guest?.updatedAt !== undefined) break;
      assert.ok(i < 100, `no balloon statistics from the guest: ${JSON.stringify(stats.balloon)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(stats.balloon.guest.freeBytes > 0 && stats.balloon.guest.totalBytes <= 256 << 20, JSON.stringify(stats.balloon.guest));
    assert.ok(stats.balloon.guest.ageSeconds >= 0);
    const set = await client(env, "vm", "set", "d", "--balloon", "64M");
    assert.equal(set.status, 0, set.stderr);
    for (let i = 0; ; i++) {
      stats = JSON.parse((await client(env, "vm", "info", "d", "--json")).stdout).stats;
      if (stats.balloon.actualPages === (64 << 20) / 4096 && stats.memory.pages.ballooned > 0) break;
      assert.ok(i < 150, `the balloon did not inflate: ${JSON.stringify(stats.balloon)} ${JSON.stringify(stats.memory)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const human = (await client(env, "vm", "info", "d")).stdout;
    assert.match(human, /^balloon: +target 64\.0M, actual 64\.0M/m);
    assert.match(human, /^guest: +free [\d.]+M, available [\d.]+M, total [\d.]+M, caches [\d.]+M.* \([\d.]+ s ago\)/m);
    const metrics = await host.api("GET", "/metrics");
    assert.match(metrics.text, /^tsvisor_balloon_actual_bytes\{vm="d"\} 67108864$/m);
    assert.match(metrics.text, /^tsvisor_guest_memory_bytes\{vm="d",kind="free"\} \d+$/m);
    assert.ok(statSync(disk).size > 4 << 20, "the guest's writes reached the image");
    assert.equal(await host.stop("SIGTERM"), 0, host.stderr);
    exited = true;
    assert.match(host.stderr, /vm d stopped: the host stopped \(SIGTERM\)/);
    assert.ok(!existsSync(socket), "the socket is gone");
    const check = spawnSync("qemu-img", ["check", disk], { encoding: "utf8" });
    assert.equal(check.status, 0, `qemu-img check: ${check.stdout}${check.stderr}`);
  } finally {
    if (!exited) await host.stop("SIGKILL");
  }
});
