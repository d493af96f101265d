// Live migration between two host daemons: `tsvisor host --migration-listen`
// on the target, POST /v1/vms/{name}/migrate and `tsvisor vm migrate` at the
// source. The guest is the bare patterns.c (see snapshot-api.test.ts): it
// writes known patterns over its RAM, says "written", waits about 3 s, reads
// every page back and says "done errors=N"; migrated after "written", it
// finishes on the target with errors=0 only if its RAM arrived whole.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { root, oneErrorLine, tsvisor } from "../cli/test-tsvisor.js";
import { buildBareKernel, bareProgram, haveBareCompiler } from "../host/testing/bare-kernel.js";
import { TestHost } from "./test-host.js";

const skip = haveBareCompiler() ? false : "needs riscv64-unknown-elf-gcc (npm test installs it)";
const base = mkdtempSync(join(tmpdir(), "tsvisor-migapi-"));
after(() => rmSync(base, { recursive: true, force: true }));
const patterns = join(root, "build", "bare", "patterns.Image");
const dirty = join(root, "build", "bare", "dirty.Image");
const TOKEN = "migration-secret";

before(() => {
  if (!skip) {
    buildBareKernel(bareProgram("patterns"));
    buildBareKernel(bareProgram("dirty"));
  }
});

async function until(what: string, ok: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

test("host --migration-listen needs a token; --migration-tls needs --migration-listen", async () => {
  const dir = mkdtempSync(join(base, "t-"));
  delete process.env.TSVISOR_MIGRATION_TOKEN;
  const host = await tsvisor(["host", "--socket", join(dir, "host.sock"), "--state-dir", join(dir, "state"), "--migration-listen", "127.0.0.1:0"]);
  assert.equal(host.status, 2, host.stderr);
  oneErrorLine(host, /--migration-listen needs a token: --migration-token TOKEN or \$TSVISOR_MIGRATION_TOKEN/);
  const cli = await tsvisor(["vm", "migrate", "p", "--to", "127.0.0.1:1", "--host", join(dir, "none.sock")]);
  assert.notEqual(cli.status, 0);
  oneErrorLine(cli, /token/);  const tls = await tsvisor(["host", "--socket", join(dir, "host.sock"), "--state-dir", join(dir, "state"), "--migration-tls"]);
  assert.equal(tls.status, 2, tls.stderr);
  oneErrorLine(tls, /--migration-tls goes with --migration-listen HOST:PORT/);
});

test("a VM migrated through the API and the CLI finishes on the target with every page intact, and is gone from the source", { skip, timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(base, "a-"));
  const disk = join(dir, "disk.img");
  writeFileSync(disk, Buffer.alloc(1 << 20));
  const source = await TestHost.start(join(dir, "src"));
  const target = await TestHost.start(join(dir, "dst"), ["--pcpus", "1", "--mem", "1G", "--migration-listen", "127.0.0.1:0", "--migration-token", TOKEN]);
  try {
    const m = /taking migrated VMs on (127\.0\.0\.1:\d+)/.exec(target.stderr);
    assert.ok(m, target.stderr);
    const to = m[1];
    assert.equal((await target.api("GET", "/v1/host")).json.migrationListen, to);
    assert.equal((await source.api("GET", "/v1/host")).json.migrationListen, undefined);

    const def = { name: "p", kernel: patterns, append: "", memBytes: 64 << 20, cpus: 1, disks: [disk], nets: ["user"] };
    assert.equal((await source.api("POST", "/v1/vms", def)).status, 201);
    // Not running: nothing to migrate. A bad body: 400.
    const early = await source.api("POST", "/v1/vms/p/migrate", { to, token: TOKEN });
    assert.equal(early.status, 409, early.text);
    assert.equal((await source.api("POST", "/v1/vms/p/migrate", { to: "nowhere", token: TOKEN })).status, 400);
    assert.equal((await source.api("POST", "/v1/vms/p/migrate", { to, token: TOKEN, postcopy: "sometimes" })).status, 400);
    assert.equal((await source.api("POST", "/v1/vms/p/migrate", { to, token: TOKEN, extra: 1 })).status, 400);
    const slow = await source.api("POST", "/v1/vms/p/migrate", { to, token: TOKEN, maxBandwidthMiBps: 0 });
    assert.equal(slow.status, 400, slow.text);
    assert.match(slow.json.error, /^maxBandwidthMiBps: expected an integer 1\.\.1048576/);

    // Never migrated (the refusals above, 409 and 400, started none): 404, saying so; no such VM: 404.
    const never = await source.api("GET", "/v1/vms/p/migration");
    assert.equal(never.status, 404, never.text);
    assert.match(never.json.error, /^VM 'p' has not been migrated from this host$/);
    assert.match((await source.api("GET", "/v1/vms/nobody/migration")).json.error, /no VM named 'nobody'/);

    assert.equal((await source.api("POST", "/v1/vms/p/start")).status, 200);
    await until("'written'", async () => (await source.api("GET", "/v1/vms/p/logs")).text.includes("written"));

    // Through the CLI (the token from the environment).
    process.env.TSVISOR_MIGRATION_TOKEN = TOKEN;
    const r = await tsvisor(["vm", "migrate", "p", "--to", to, "--max-downtime", "500", "--host", source.socket]);
    delete process.env.TSVISOR_MIGRATION_TOKEN;
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^VM p migrated to ${to.replace(/\./g, "\\.")}: \\d+ rounds, [\\d.]+ MiB sent, downtime \\d+ ms, [\\d.]+ s\\n$`));
    assert.equal((await source.api("GET", "/v1/vms/p")).status, 404);
    assert.equal((await source.api("GET", "/v1/vms")).json.vms.length, 0);
    // Gone, but its migration still answers: completed, as the CLI said.
    const done = await source.api("GET", "/v1/vms/p/migration");
    assert.equal(done.status, 200, done.text);
    assert.equal(done.json.state, "completed", done.text);
    assert.equal(done.json.target, to);
    assert.ok(done.json.result.rounds >= 1 && done.json.result.sentBytes > 0, done.text);
    assert.equal(`${done.json.result.rounds} rounds, ${(done.json.result.sentBytes / (1 << 20)).toFixed(1)} MiB sent`, /(\d+ rounds, [\d.]+ MiB sent)/.exec(r.stdout)?.[1]);
    assert.equal(done.json.error, undefined);
    assert.ok(done.json.progress.sentBytes > 0 && Date.parse(done.json.startedAt) <= Date.now(), done.text);

    // On the target: defined from the source's definition, running, and it finishes intact.
    const there = await target.api("GET", "/v1/vms/p");
    assert.equal(there.status, 200, there.text);
    assert.ok(["running", "stopping", "stopped"].includes(there.json.state), there.text);
    assert.deepEqual(there.json.config.disks, [disk]);
    assert.match(there.json.config.nets[0], /^user,mac=/);
    const end = await target.api("GET", "/v1/vms/p/wait");
    assert.equal(end.status, 200, end.text);
    assert.equal(end.json.exitStatus, 0, end.text);
    assert.match((await target.api("GET", "/v1/vms/p/logs")).text, /done errors=0/);
    await target.waitFor(/vm p defined: migrated here from/);
    await source.waitFor(/vm p: migration round 0/);

    // Refusals, on a guest that runs long enough for them (the dirty one: 30 s;
    // the patterns guest checks its RAM 3 s after "written", on a busy machine
    // before the migrations above and these would be done).
    const rDef = { ...def, name: "r", kernel: dirty, cpus: 2, disks: [] };
    assert.equal((await source.api("POST", "/v1/vms", rDef)).status, 201);
    assert.equal((await source.api("POST", "/v1/vms/r/start")).status, 200);
    // A wrong token: refused, the VM runs on at the source, nothing is left at the target.
    const wrong = await source.api("POST", "/v1/vms/r/migrate", { to, token: "not-the-token" });
    assert.equal(wrong.status, 502, wrong.text);
    assert.match(wrong.json.error, /authentication failed|token/);
    assert.equal((await source.api("GET", "/v1/vms/r")).json.state, "running");
    assert.equal((await target.api("GET", "/v1/vms/r")).status, 404);
    const failed = await source.api("GET", "/v1/vms/r/migration");
    assert.equal(failed.status, 200, failed.text);
    assert.equal(failed.json.state, "failed", failed.text);
    assert.equal(failed.json.target, to);
    assert.equal(failed.json.error, wrong.json.error);
    assert.equal(failed.json.result, undefined);

    // A name in use at the target: refused with that reason, the VM runs on.
    assert.equal((await target.api("POST", "/v1/vms", rDef)).status, 201);
    const clash = await source.api("POST", "/v1/vms/r/migrate", { to, token: TOKEN });
    assert.equal(clash.status, 502, clash.text);
    assert.match(clash.json.error, /a VM named 'r' exists on this host already/);
    assert.equal((await source.api("GET", "/v1/vms/r")).json.state, "running");
    assert.equal((await target.api("DELETE", "/v1/vms/r")).status, 200);

    const clashed = await source.api("GET", "/v1/vms/r/migration");
    assert.equal(clashed.json.state, "failed", clashed.text);
    assert.equal(clashed.json.error, clash.json.error, "the last migration's");
    assert.equal((await source.api("POST", "/v1/vms/r/stop")).status, 200);
    assert.equal((await source.api("DELETE", "/v1/vms/r")).status, 200);

    // Post-copy through the API: it runs on the target at once, its last pages follow.
    assert.equal((await source.api("POST", "/v1/vms", { ...def, name: "q", disks: [] })).status, 201);
    assert.equal((await source.api("POST", "/v1/vms/q/start")).status, 200);
    await until("'written'", async () => (await source.api("GET", "/v1/vms/q/logs")).text.includes("written"));
    const pc = await source.api("POST", "/v1/vms/q/migrate", { to, token: TOKEN, postcopy: true });
    assert.equal(pc.status, 200, pc.text);
    assert.equal(pc.json.name, "q");
    assert.ok(pc.json.postcopy, pc.text);
    assert.equal((await source.api("GET", "/v1/vms/q")).status, 404);
    const qEnd = await target.api("GET", "/v1/vms/q/wait");
    assert.equal(qEnd.json.exitStatus, 0, qEnd.text);
    assert.match((await target.api("GET", "/v1/vms/q/logs")).text, /done errors=0/);
  } finally {
    assert.equal(await source.stop(), 0);
    assert.equal(await target.stop(), 0);
  }
});

test("vm migrate --max-bandwidth paces a guest that keeps writing its RAM, and shows each round on stderr, a line a round without a terminal", { skip, timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(base, "d-"));
  const source = await TestHost.start(join(dir, "src"));
  const target = await TestHost.start(join(dir, "dst"), ["--migration-listen", "127.0.0.1:0", "--migration-token", TOKEN]);
  try {
    const to = /taking migrated VMs on (127\.0\.0\.1:\d+)/.exec(target.stderr)![1];
    assert.equal((await source.api("POST", "/v1/vms", { name: "d", kernel: dirty, append: "", memBytes: 64 << 20, cpus: 2, nets: [] })).status, 201);
    assert.equal((await source.api("POST", "/v1/vms/d/start")).status, 200);
    await until("'written'", async () => (await source.api("GET", "/v1/vms/d/logs")).text.includes("written"));
    // A downtime of 1 ms: rounds (and auto-converge) until the 30th; at 24 MiB/s
    // its round 0 alone (the guest's 64 MiB written) takes seconds, long enough to be seen.
    const r = await tsvisor(["vm", "migrate", "d", "--to", to, "--token", TOKEN, "--max-downtime", "1", "--max-bandwidth", "24", "--host", source.socket]);
    console.log(r.stderr + r.stdout);
    assert.equal(r.status, 0, r.stderr);
    const done = /^VM d migrated to \S+: \d+ rounds, ([\d.]+) MiB sent, downtime \d+ ms, ([\d.]+) s\n$/.exec(r.stdout);
    assert.ok(done, r.stdout);
    // Paced: no faster than asked, over the whole migration (a small burst allowed).
    assert.ok(Number(done[1]) / Number(done[2]) <= 24 * 1.1, r.stdout);
    const lines = r.stderr.split("\n").filter((l) => l !== "");
    assert.ok(lines.length >= 1, `no progress on stderr (stdout: ${r.stdout})`);
    const rounds: number[] = [];
    for (const l of lines) {
      const m = /^migrating d: round (\d+), [\d.]+ MiB sent, \d+ pages dirty \([\d.]+ MiB\/s\), link ([\d.]+) MiB\/s, expected downtime \d+ ms, throttle \d+%(; sending|; final phase, paused)?$/.exec(l);
      assert.ok(m, `not a progress line: '${l}'`);
      assert.ok(Number(m[2]) <= 24, `the link shown beyond the limit: '${l}'`);
      if (!m[3]) rounds.push(Number(m[1]));
    }
    // Round 0 is shown while it is being sent.
    assert.match(lines[0], /^migrating d: round 0, .*; sending$/);
    // No terminal: a line per round (no carriage returns), never the same round twice, in order.
    assert.doesNotMatch(r.stderr, /\r|\x1b/);
    for (let i = 1; i < rounds.length; i++) assert.ok(rounds[i] > rounds[i - 1], r.stderr);
    const status = await source.api("GET", "/v1/vms/d/migration");
    assert.equal(status.json.state, "completed", status.text);
    assert.ok(status.json.result.rounds >= 2, status.text);
    assert.equal((await target.api("POST", "/v1/vms/d/stop")).status, 200);
  } finally {
    assert.equal(await source.stop(), 0);
    assert.equal(await target.stop(), 0);
  }
});
