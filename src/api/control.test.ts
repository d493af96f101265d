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
import { TestHost } from "./test-host.js";

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

test("a host stopped the moment it says it listens still stops cleanly: status 0, socket removed", { skip }, async () => {
  // The listening line is the readiness signal scripts wait for; a SIGTERM
  // right after it used to find no handler yet and kill the process outright.
  const { spawn } = await import("node:child_process");
  for (let i = 0; i < 8; i++) {
    const dir = newDir();
    const socket = join(dir, "host.sock");
    const proc = spawn(process.execPath, [join(root, "bin", "tsvisor.js"), "host", "--socket", socket, "--state-dir", join(dir, "state"), "--pcpus", "1"], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    let sent = false;
    proc.stderr.on("data", (d: Buffer) => {
      stderr += d;
      if (!sent && /host listening/.test(stderr)) proc.kill("SIGTERM"), (sent = true);
    });
    const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => proc.on("close", (c, s) => resolve([c, s])));
    assert.deepEqual([code, signal], [0, null], stderr);
    assert.match(stderr, /SIGTERM: stopping every VM/);
    assert.ok(!existsSync(socket));
  }
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
      ["POST", "/v1/vms", { ...vm, name: "n", memBytes: 200 * 2 ** 30 }, 400, /too large for this host \(at most 65536 MiB with a 1024 MiB pool\)/],
      ["POST", "/v1/vms", { ...vm, name: "n", shareGroup: "a:b" }, 400, /shareGroup 'a:b'/],
      ["POST", "/v1/vms", { ...vm, name: "n", balloon: "no" }, 400, /field 'balloon': expected a boolean/],
      ["PATCH", "/v1/vms/ok", { balloonBytes: -1 }, 400, /balloonBytes: expected 0 or more/],
      ["PATCH", "/v1/vms/ok", { balloonBytes: 1 << 20 }, 409, /VM 'ok' is created: its balloon exists only while it runs/],
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

test("memory: host flags, VMs larger than the pool, share groups, the balloon through vm set, memory in stats, vm info and host info", { skip }, async () => {
  const dir = newDir();
  const host = await TestHost.start(dir, ["--pcpus", "1", "--mem", "64M", "--swap", "32M", "--compress", "8M", "--sharing-rate", "512/50"]);
  try {
    assert.match(host.stderr, /pool 64 MiB, compressed pool 8 MiB, swap 32 MiB, page sharing, reclaim/);
    // More RAM than the pool: the memory manager makes room.
    assert.equal((await host.vm(...bareVm("big", "--mem", "128M", "--share-group", "g1", "--start"))).status, 0);
    assert.equal((await host.vm(...bareVm("nob", "--no-balloon", "--share-group", "g1", "--start"))).status, 0);
    assert.equal((await host.vm(...bareVm("off"))).status, 0);
    await host.waitFor(/vm nob running/);
    const def = (await host.api("GET", "/v1/vms/big")).json.config;
    assert.deepEqual([def.memBytes, def.shareGroup, def.balloon], [128 << 20, "g1", true]);
    assert.equal((await host.api("GET", "/v1/vms/nob")).json.config.balloon, false);

    // The balloon: refused on a stopped VM and on one without a balloon, one line each.
    oneErrorLine(await host.vm("set", "off", "--balloon", "16M"), /VM 'off' is created: its balloon exists only while it runs/);
    oneErrorLine(await host.vm("set", "nob", "--balloon", "16M"), /VM 'nob' has no balloon/);
    oneErrorLine(await host.vm("set", "big", "--balloon", "1G"), /balloonBytes: .* is more than the VM's memory/);
    const set = await host.vm("set", "big", "--balloon", "16M");
    assert.equal(set.status, 0, set.stderr);
    assert.equal((await host.vm("set", "big", "--balloon", "0")).status, 0);
    assert.equal((await host.vm("set", "big", "--balloon", "16M")).status, 0);

    const stats = (await host.api("GET", "/v1/vms/big/stats")).json;
    const pages = stats.memory.pages;
    for (const state of ["private", "shared", "untouched", "zero", "ballooned", "reported", "compressed", "swapped", "busy"]) assert.equal(typeof pages[state], "number", state);
    const total = Object.values(pages as Record<string, number>).reduce((a, b) => a + b, 0);
    assert.equal(total, (128 << 20) / 4096, "every guest page is in one state");
    for (const k of ["cowBreaks", "decompressions", "swapIns", "storeReads"]) assert.equal(typeof stats.memory[k], "number", k);
    assert.equal(stats.balloon.targetPages, (16 << 20) / 4096);
    assert.equal(stats.balloon.actualPages, 0, "the bare guest runs no balloon driver");
    assert.deepEqual(stats.balloon.guest, {});
    assert.equal(stats.pausedFor, undefined);
    const nob = (await host.api("GET", "/v1/vms/nob/stats")).json;
    assert.ok(nob.memory && nob.balloon === undefined, JSON.stringify(nob));
    assert.equal((await host.api("GET", "/v1/vms/off/stats")).json.memory, undefined);

    const info = await host.vm("info", "big");
    assert.equal(info.status, 0, info.stderr);
    assert.match(info.stdout, /^pages: +private [\d.]+M, shared [\d.]+M, zero [\d.]+M, ballooned [\d.]+M, reported [\d.]+M, compressed [\d.]+M, swapped [\d.]+M, untouched [\d.]+M/m);
    assert.match(info.stdout, /copy-on-write breaks \d+; brought back: decompressions \d+, swap-ins \d+/);
    assert.match(info.stdout, /^balloon: +target 16\.0M, actual 0\.0M, held 0\.0M; pages inflated 0, deflated 0, reported 0; refused none/m);
    assert.match(info.stdout, /^guest: +no memory statistics from the guest's balloon driver yet/m);
    assert.match((await host.vm("info", "nob")).stdout, /^balloon: +none \(created with --no-balloon\)/m);

    const h = (await host.api("GET", "/v1/host")).json;
    assert.equal(h.memory.poolBytes, 64 << 20);
    assert.equal(h.memory.guestRamBytes, (128 + 64) << 20);
    assert.equal(h.memory.overcommit, 3);
    assert.equal(h.memory.swap.capacityBytes, 32 << 20);
    assert.equal(h.memory.swap.path, join(dir, "state", "swap"));
    assert.equal(h.memory.compressed.capacityBytes, 8 << 20);
    assert.equal(h.memory.sharing.enabled, true);
    assert.equal(h.memory.reclaim.enabled, true);
    assert.ok(h.memory.processResidentBytes > 0);
    assert.deepEqual(h.memory.waiting, []);
    const hi = await tsvisor(["host", "info", "--host", host.socket]);
    assert.equal(hi.status, 0, hi.stderr);
    for (const re of [/^pool: +64M: free [\d.]+M, in use [\d.]+M, shared [\d.]+M/m, /^overcommit: 3\.00 \(guest RAM 192M over the pool\)/m,
      /^compressed: [\d.]+M used of 8M/m, /^swap: +[\d.]+M used of 32M \(.*state\/swap\)/m, /^sharing: +on: \d+ shared frames/m,
      /^reclaim: +on, watermarks low [\d.]+M high [\d.]+M/m, /^resident: +\d+M/m]) {
      assert.match(hi.stdout, re);
    }
    assert.equal(JSON.parse((await tsvisor(["host", "info", "--json", "--host", host.socket])).stdout).memory.poolBytes, 64 << 20);
  } finally {
    assert.equal(await host.stop(), 0);
  }
  assert.ok(!existsSync(join(dir, "state", "swap")), "the swap file is removed when the host stops");

  // Everything off.
  const bare = await TestHost.start(newDir(), ["--pcpus", "1", "--mem", "32M", "--compress", "0", "--no-sharing", "--no-reclaim"]);
  try {
    const m = (await bare.api("GET", "/v1/host")).json.memory;
    assert.deepEqual([m.compressed, m.swap, m.sharing, m.reclaim.enabled], [undefined, undefined, undefined, false]);
    const hi = await tsvisor(["host", "info", "--host", bare.socket]);
    assert.match(hi.stdout, /^compressed: off$/m);
    assert.match(hi.stdout, /^swap: +none$/m);
    assert.match(hi.stdout, /^sharing: +off$/m);
    assert.match(hi.stdout, /^reclaim: +off/m);
    // With nothing to make room, a guest that fills more than the pool waits paused, and says why.
    buildBareKernel(bareProgram("patterns"));
    const patterns = join(root, "build", "bare", "patterns.Image");
    assert.equal((await bare.vm("create", "p", "--kernel", patterns, "--append", "", "--mem", "64M", "--start")).status, 0);
    await bare.waitFor(/vm p: VM 'p' paused: .*out of host memory/);
    const st = (await bare.api("GET", "/v1/vms/p/stats")).json;
    assert.match(st.pausedFor, /out of host memory/);
    assert.deepEqual((await bare.api("GET", "/v1/host")).json.memory.waiting, ["p"]);
    assert.match((await bare.vm("info", "p")).stdout, /^paused: +by the host, waiting for memory: .*out of host memory/m);
    assert.match((await tsvisor(["host", "info", "--host", bare.socket])).stdout, /^VMs: +1, waiting for memory: p$/m);
    assert.match((await bare.api("GET", "/metrics")).text, /^tsvisor_host_vms_waiting_for_memory 1$/m);
    assert.equal((await bare.vm("stop", "p")).status, 0, "a VM waiting for memory can be stopped");
    assert.deepEqual((await bare.api("GET", "/v1/host")).json.memory.waiting, []);
  } finally {
    assert.equal(await bare.stop(), 0);
  }
});
