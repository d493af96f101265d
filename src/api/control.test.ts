// The host daemon driven as users drive it: `tsvisor host` spawned, `tsvisor
// vm` commands and raw HTTP requests on its socket. The guests are the tiny
// bare S-mode kernel halt.c (says "halted", then sleeps in WFI), so these
// tests cost little CPU; control-linux.test.ts boots Debian.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync, existsSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { root, tsvisor, oneErrorLine } from "../cli/test-tsvisor.js";
import { buildBareKernel, bareProgram, haveBareCompiler } from "../host/testing/bare-kernel.js";
import { TestHost, rawApi } from "./test-host.js";

const skip = haveBareCompiler() ? false : "needs riscv64-unknown-elf-gcc (npm test installs it)";
const base = mkdtempSync(join(tmpdir(), "tsvisor-control-"));
after(() => rmSync(base, { recursive: true, force: true }));
const halt = join(root, "build", "bare", "halt.Image");
let dirs = 0;
const newDir = () => mkdtempSync(join(base, `h${dirs++}-`));
const bareVm = (name: string, ...extra: string[]) => ["create", name, "--kernel", halt, "--append", "", "--mem", "64M", ...extra];

before(() => {
  if (!skip) buildBareKernel(bareProgram("halt"));
});

test("the socket: mode 0600, a second host refuses, a stale socket is replaced, clients without a host get one line", { skip }, async () => {
  const dir = newDir();
  const host = await TestHost.start(dir);
  try {
    assert.equal(statSync(host.socket).mode & 0o777, 0o600);
    const second = await tsvisor(["host", "--socket", host.socket, "--state-dir", join(dir, "state2"), "--pcpus", "1"]);
    assert.equal(second.status, 1);
    oneErrorLine(second, /a host is already running on .*host\.sock/);
    writeFileSync(join(dir, "file"), "");
    const blocked = await tsvisor(["host", "--socket", join(dir, "file", "h.sock"), "--state-dir", join(dir, "state3")]);
    assert.equal(blocked.status, 1);
    oneErrorLine(blocked, /cannot make the socket's directory .*file: a file that is not a directory is in the way/);
  } finally {
    // Killed without its cleanup: the socket file stays, stale.
    host.proc.kill("SIGKILL");
    await host.exited;
  }
  assert.ok(existsSync(host.socket));
  const none = await tsvisor(["vm", "ls", "--host", host.socket]);
  assert.equal(none.status, 1);
  oneErrorLine(none, /no host is running on .*host\.sock/);
  const again = await TestHost.start(dir);
  try {
    assert.match(again.stderr, /removed the stale socket/);
    assert.equal((await again.vm("ls")).status, 0);
  } finally {
    assert.equal(await again.stop(), 0);
  }
  assert.ok(!existsSync(again.socket), "the socket is removed at exit");
  // TSVISOR_HOST is the client's default.
  const viaEnv = await new Promise<number | null>((resolve) => {
    import("node:child_process").then(({ spawn }) => {
      const c = spawn(process.execPath, [join(root, "bin", "tsvisor.js"), "vm", "ls"], { env: { ...process.env, TSVISOR_HOST: join(dir, "nothing.sock") }, stdio: ["ignore", "ignore", "pipe"] });
      let err = "";
      c.stderr.on("data", (d: Buffer) => (err += d));
      c.on("close", (code) => {
        assert.match(err, /no host is running on .*nothing\.sock/);
        resolve(code);
      });
    });
  });
  assert.equal(viaEnv, 1);
});

test("the lifecycle of several VMs through `tsvisor vm`", { skip }, async () => {
  const host = await TestHost.start(newDir());
  try {
    for (const [name, extra] of [["a", ["--start", "--weight", "512", "--pin", "0"]], ["b", ["--start", "--cpus", "2"]], ["c", []]] as const) {
      const r = await host.vm(...bareVm(name, ...extra));
      assert.equal(r.status, 0, r.stderr);
    }
    await host.waitFor(/vm b running/);
    // Both say their line once running.
    for (let i = 0; i < 200 && !(await host.vm("logs", "b")).stdout.includes("halted"); i++) await new Promise((r) => setTimeout(r, 25));
    assert.equal((await host.vm("logs", "a")).stdout, "halted\n");
    const ls = await host.vm("ls");
    assert.equal(ls.status, 0, ls.stderr);
    const rows = ls.stdout.trim().split("\n").map((l) => l.split(/\s+/));
    assert.deepEqual(rows[0], ["NAME", "STATE", "VCPUS", "MEMORY", "CPU", "%", "UPTIME"]);
    assert.deepEqual(rows.slice(1).map((r) => r.slice(0, 4)), [["a", "running", "1", "64M"], ["b", "running", "2", "64M"], ["c", "created", "1", "64M"]]);

    assert.equal((await host.vm("pause", "a")).status, 0);
    assert.equal((await host.vm("set", "a", "--weight", "100", "--cap", "50", "--pin", "0")).status, 0);
    const info = JSON.parse((await host.vm("info", "a", "--json")).stdout);
    assert.equal(info.state, "paused");
    assert.deepEqual([info.config.weight, info.config.capPct, info.config.affinity], [100, 50, [0]]);
    assert.equal(info.stats.vcpus.length, 1);
    assert.ok(info.stats.vcpus[0].runSeconds > 0 && info.stats.exits.mmio > 0, JSON.stringify(info.stats));
    assert.equal((await host.vm("resume", "a")).status, 0);
    const human = await host.vm("info", "a");
    assert.match(human.stdout, /^state: +running/m);
    assert.match(human.stdout, /^vCPU 0: .* ran [\d.]+ s, waited [\d.]+ s runnable/m);
    assert.match(human.stdout, /^exits: .*mmio \d+/m);

    // wait returns when the VM stops: a stop is not a clean end (status 1, as run).
    const waiting = host.vm("wait", "a");
    await new Promise((r) => setTimeout(r, 200));
    assert.equal((await host.vm("stop", "a")).status, 0);
    const w = await waiting;
    assert.equal(w.status, 1);
    oneErrorLine(w, /VM 'a': stopped through the API/);
    assert.equal((await host.vm("stop", "a")).status, 0, "stopping a stopped VM does nothing");

    // Started again, it boots again; its log keeps both runs.
    assert.equal((await host.vm("start", "a")).status, 0);
    await host.waitFor(/vm a running[^]*vm a running/);
    assert.equal((await host.vm("stop", "a")).status, 0);

    oneErrorLine(await host.vm("rm", "b"), /VM 'b' is running: stop it before removing it/);
    for (const name of ["a", "c"]) assert.equal((await host.vm("rm", name)).status, 0);
    oneErrorLine(await host.vm("info", "a"), /no VM named 'a'/);
    assert.deepEqual((await host.api("GET", "/v1/vms")).json.vms.map((v: { name: string }) => v.name), ["b"]);
    assert.match(host.stderr, /audit .* POST \/v1\/vms\/\{name\}\/pause vm=a status=200/);
  } finally {
    assert.equal(await host.stop(), 0);
  }
  assert.match(host.stderr, /vm b stopped: the host stopped \(SIGTERM\)/);
});

test("stop during boot, and logs -f ends with the run", { skip }, async () => {
  const host = await TestHost.start(newDir());
  try {
    assert.equal((await host.vm(...bareVm("x"))).status, 0);
    // The stop arrives while the start is still in its first steps.
    const [start, stop] = await Promise.all([host.api("POST", "/v1/vms/x/start"), host.api("POST", "/v1/vms/x/stop")]);
    assert.equal(stop.status, 200, stop.text);
    assert.ok(start.status === 200, start.text);
    const wait = await host.api("GET", "/v1/vms/x/wait");
    assert.equal(wait.status, 200);
    assert.equal(wait.json.end.kind, "stopped");
    assert.equal(wait.json.exitStatus, 1);
    assert.equal((await host.api("GET", "/v1/vms/x")).json.state, "stopped");

    assert.equal((await host.api("POST", "/v1/vms/x/start")).status, 200);
    const follow = host.vm("logs", "x", "-f");
    await host.waitFor(/vm x running/);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal((await host.api("POST", "/v1/vms/x/stop")).status, 200);
    const f = await follow;
    assert.equal(f.status, 0);
    assert.match(f.stdout, /halted/);
  } finally {
    assert.equal(await host.stop(), 0);
  }
});

test("definitions persist: a restarted host brings them back, stopped or (autostart) running", { skip }, async () => {
  const dir = newDir();
  const first = await TestHost.start(dir);
  try {
    assert.equal((await first.vm(...bareVm("keep", "--cpus", "2", "--weight", "300"))).status, 0);
    assert.equal((await first.vm(...bareVm("auto", "--autostart", "--start"))).status, 0);
    assert.equal((await first.vm(...bareVm("gone"))).status, 0);
    assert.equal((await first.vm("rm", "gone")).status, 0);
    assert.equal((await first.api("PATCH", "/v1/vms/keep", { capPct: 40 })).status, 200);
  } finally {
    assert.equal(await first.stop(), 0);
  }
  // A broken file is skipped with a line, not fatal.
  writeFileSync(join(dir, "state", "vms", "bad.json"), "{ not json");
  const saved = JSON.parse(readFileSync(join(dir, "state", "vms", "keep.json"), "utf8"));
  assert.equal(saved.capPct, 40);
  const second = await TestHost.start(dir);
  try {
    await second.waitFor(/vm auto running/);
    assert.match(second.stderr, /skipping .*bad\.json/);
    const vms = (await second.api("GET", "/v1/vms")).json.vms;
    assert.deepEqual(vms.map((v: { name: string; state: string }) => [v.name, v.state]), [["auto", "running"], ["keep", "stopped"]]);
    const keep = vms[1].config;
    assert.deepEqual([keep.cpus, keep.weight, keep.capPct, keep.kernel], [2, 300, 40, halt]);
  } finally {
    assert.equal(await second.stop(), 0);
  }
});

test("bad input: 400, 404, 405, 409 and 413 with one JSON error each; the host goes on", { skip }, async () => {
  const host = await TestHost.start(newDir());
  try {
    const vm = { name: "ok", kernel: halt, append: "", memBytes: 64 << 20 };
    assert.equal((await host.api("POST", "/v1/vms", vm)).status, 201);
    const cases: [string, string, unknown, number, RegExp][] = [
      ["POST", "/v1/vms", "{ nope", 400, /malformed JSON/],
      ["POST", "/v1/vms", "[1]", 400, /must be a JSON object/],
      ["POST", "/v1/vms", { ...vm, name: "n", colour: "red" }, 400, /unknown field 'colour'/],
      ["POST", "/v1/vms", { ...vm, name: "n", cpus: "2" }, 400, /field 'cpus': expected an integer/],
      ["POST", "/v1/vms", { ...vm, name: "n", cpus: 99 }, 400, /cpus: expected 1\.\.8/],
      ["POST", "/v1/vms", { ...vm, name: "" }, 400, /name: must not be empty/],
      ["POST", "/v1/vms", { ...vm, name: "x".repeat(64) }, 400, /at most 63 characters/],
      ["POST", "/v1/vms", { ...vm, name: "a/b" }, 400, /must not contain '\/'/],
      ["POST", "/v1/vms", { ...vm, name: "n", kernel: "rel/Image" }, 400, /absolute path/],
      ["POST", "/v1/vms", { ...vm, name: "n", disks: ["/x,format=vhd"] }, 400, /format=vhd/],
      ["POST", "/v1/vms", { ...vm, name: "n", memBytes: 128 * 2 ** 30 }, 400, /too large for this host/],
      ["POST", "/v1/vms", { ...vm, name: "n", affinity: [5] }, 400, /pCPU 5 does not exist/],
      ["POST", "/v1/vms", vm, 409, /exists already/],
      ["GET", `/v1/vms/${"y".repeat(70)}`, undefined, 400, /at most 63/],
      ["GET", "/v1/vms/nobody", undefined, 404, /no VM named 'nobody'/],
      ["POST", "/v1/vms/nobody/start", undefined, 404, /no VM named/],
      ["GET", "/v1/nothing", undefined, 404, /no such API path/],
      ["PUT", "/v1/vms/ok", undefined, 405, /PUT is not allowed/],
      ["POST", "/v1/vms/ok/pause", undefined, 409, /is created: only a running VM can be paused/],
      ["POST", "/v1/vms/ok/resume", undefined, 409, /not paused/],
      ["GET", "/v1/vms/ok/wait", undefined, 409, /no run to wait for/],
      ["POST", "/v1/vms/ok/start", { now: true }, 400, /unknown field 'now'/],
      ["PATCH", "/v1/vms/ok", { cpus: 2 }, 400, /unknown field 'cpus'/],
      ["PATCH", "/v1/vms/ok", { weight: 0 }, 400, /weight: expected 1\.\.65535/],
      ["GET", "/v1/vms/ok/logs?follow=maybe", undefined, 400, /follow: expected true or false/],
      ["POST", "/v1/vms", JSON.stringify({ ...vm, name: "big", append: "x".repeat(70_000) }), 413, /larger than 64 KiB/],
    ];
    for (const [method, path, body, status, re] of cases) {
      const r = await host.api(method, path, body);
      assert.equal(r.status, status, `${method} ${path}: ${r.text}`);
      assert.deepEqual(Object.keys(r.json), ["error"], r.text);
      assert.match(r.json.error, re);
    }
    // A start that fails (a kernel that is not one) is a 409 that says why; the VM stays as it was.
    const notKernel = join(base, "not-a-kernel");
    writeFileSync(notKernel, "hello");
    assert.equal((await host.api("POST", "/v1/vms", { ...vm, name: "bad", kernel: notKernel })).status, 201);
    const failed = await host.api("POST", "/v1/vms/bad/start");
    assert.equal(failed.status, 409);
    assert.match(failed.json.error, /cannot start VM 'bad': kernel .*not-a-kernel/);
    assert.equal((await host.api("GET", "/v1/vms/bad")).json.state, "created");
    // CLI usage errors are one line, status 2.
    const usage = await host.vm("create", "z", "--weight", "0");
    assert.equal(usage.status, 2);
    oneErrorLine(usage, /--weight: expected 1\.\.65535/);
    oneErrorLine(await host.vm("frobnicate"), /vm: unknown subcommand 'frobnicate'/);
    // Still serving.
    assert.equal((await host.api("GET", "/v1/host")).status, 200);
  } finally {
    assert.equal(await host.stop(), 0);
  }
});

test("--listen HOST:PORT serves the API on TCP only with the bearer token, kept 0600 in the state directory", { skip }, async () => {
  const dir = newDir();
  const host = await TestHost.start(dir, ["--pcpus", "1", "--mem", "1G", "--listen", "127.0.0.1:0"]);
  try {
    const m = /also listening on (http:\/\/127\.0\.0\.1:\d+), bearer token in (\S+)/.exec(host.stderr);
    assert.ok(m, host.stderr);
    const [, url, file] = m;
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const token = readFileSync(file, "utf8").trim();
    const get = (auth?: string) => fetch(`${url}/v1/host`, { headers: auth ? { authorization: auth } : {} });
    assert.equal((await get()).status, 401);
    assert.equal((await get("Bearer nope")).status, 401);
    const ok = await get(`Bearer ${token}`);
    assert.equal(ok.status, 200);
    assert.equal(((await ok.json()) as { pcpus: number }).pcpus, 1);
    // The Unix socket needs no token (its mode guards it).
    assert.equal((await host.api("GET", "/v1/host")).status, 200);
    // tsvisor vm with --host http://... and $TSVISOR_TOKEN.
    const { spawnSync } = await import("node:child_process");
    const bin = join(root, "bin", "tsvisor.js");
    const withToken = spawnSync(process.execPath, [bin, "vm", "ls", "--host", url], { encoding: "utf8", env: { ...process.env, TSVISOR_TOKEN: token } });
    assert.equal(withToken.status, 0, withToken.stderr);
    assert.match(withToken.stdout, /^NAME/);
    const without = spawnSync(process.execPath, [bin, "vm", "ls", "--host", url], { encoding: "utf8", env: { ...process.env, TSVISOR_TOKEN: "" } });
    assert.equal(without.status, 1);
    oneErrorLine(without, /needs 'Authorization: Bearer <token>'/);
  } finally {
    assert.equal(await host.stop(), 0);
  }
  // A restarted host keeps the same token.
  const again = await TestHost.start(dir, ["--pcpus", "1", "--mem", "1G", "--listen", "127.0.0.1:0"]);
  try {
    assert.match(again.stderr, /bearer token in/);
  } finally {
    assert.equal(await again.stop(), 0);
  }
  oneErrorLine(await tsvisor(["host", "--listen", "nowhere", "--socket", join(dir, "x.sock")]), /--listen: expected HOST:PORT/);
});
