// Snapshots through the host daemon: POST /v1/vms/{name}/snapshot and POST
// /v1/restore, and `tsvisor vm snapshot` / `vm restore`. The guest is the bare
// patterns.c (host/testing/bare/): it writes known patterns over its RAM,
// says "written", waits about 3 s, reads every page back and says "done
// errors=N" before powering off, so a VM restored from a snapshot taken
// after "written" finishes with errors=0 only if its RAM came back whole.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { root, oneErrorLine, tsvisor } from "../cli/test-tsvisor.js";
import { buildBareKernel, bareProgram, haveBareCompiler } from "../host/testing/bare-kernel.js";
import { TestHost } from "./test-host.js";
import { Host } from "../host/host.js";
import { readSnapshotMeta } from "../snapshot/snapshot.js";

const skip = haveBareCompiler() ? false : "needs riscv64-unknown-elf-gcc (npm test installs it)";
const base = mkdtempSync(join(tmpdir(), "tsvisor-snapapi-"));
after(() => rmSync(base, { recursive: true, force: true }));
const patterns = join(root, "build", "bare", "patterns.Image");

before(() => {
  if (!skip) buildBareKernel(bareProgram("patterns"));
});

async function logsOf(host: TestHost, name: string): Promise<string> {
  return (await host.api("GET", `/v1/vms/${name}/logs`)).text;
}

async function until(what: string, ok: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

test("a VM snapshotted through the API and the CLI comes back under other names and finishes with every page intact", { skip, timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(base, "a-"));
  const disk = join(dir, "disk.img");
  writeFileSync(disk, Buffer.alloc(1 << 20));
  const host = await TestHost.start(dir);
  try {
    const created = await host.api("POST", "/v1/vms", { name: "p", kernel: patterns, append: "", memBytes: 64 << 20, cpus: 1, disks: [disk], nets: ["user"] });
    assert.equal(created.status, 201, created.text);
    // Not running yet: nothing to snapshot.
    const early = await host.api("POST", "/v1/vms/p/snapshot", { path: join(dir, "early.snap") });
    assert.equal(early.status, 409, early.text);
    assert.match(early.json.error, /VM 'p' is created: only a running or paused VM can be snapshotted/);
    assert.equal((await host.api("POST", "/v1/vms/p/start")).status, 200);
    await until("'written'", async () => (await logsOf(host, "p")).includes("written"));

    // Through the API: stays paused afterwards. While it is written, the VM's view says how far it got (what vm snapshot shows).
    const full = join(dir, "full.snap");
    const seen: { path: string; donePages: number; totalPages: number }[] = [];
    let pending = true;
    const watching = (async () => {
      while (pending) {
        const p = (await host.api("GET", "/v1/vms/p")).json.snapshot;
        if (p) seen.push(p);
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    const r = await host.api("POST", "/v1/vms/p/snapshot", { path: full, stayPaused: true });
    pending = false;
    await watching;
    assert.equal(r.status, 200, r.text);
    assert.ok(seen.length > 0, "the view showed the snapshot being written");
    for (const p of seen) assert.ok(p.path === full && p.totalPages === (64 << 20) / 4096 && p.donePages <= p.totalPages, JSON.stringify(p));
    assert.equal((await host.api("GET", "/v1/vms/p")).json.snapshot, undefined, "and nothing once it is done");
    assert.equal(r.json.name, "p");
    assert.equal(r.json.path, full);
    assert.equal(r.json.pages.total, (64 << 20) / 4096);
    assert.ok(r.json.pages.stored > 1000 && r.json.bytes > r.json.pages.stored * 4096, r.text);
    assert.equal(r.json.pages.inParent, 0);
    // The card's MAC is written out: a restore under another name keeps the address the guest knows.
    assert.match(String((readSnapshotMeta(full).definition as { nets: string[] }).nets[0]), /^user,mac=([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    assert.equal((await host.api("GET", "/v1/vms/p")).json.state, "paused");

    // Through the CLI: a diff against it, the disk frozen and the VM going on with an overlay.
    const cli = await host.vm("snapshot", "p", join(dir, "diff.snap"), "--diff", "--disks", "overlay");
    assert.equal(cli.status, 0, cli.stderr);
    const m = /^snapshot of p written to .*diff\.snap: 64\.0 MiB RAM, [\d.]+ MiB stored \(\d+ pages\), [\d.]+ s; (\S+) frozen, the VM goes on with (\S+)\n$/.exec(cli.stdout);
    assert.ok(m, cli.stdout);
    assert.equal(m[1], disk);
    assert.match(m[2], /disk\.img\.[0-9a-f]{8}\.qcow2$/);
    const overlay = readFileSync(m[2]);
    assert.equal(overlay.subarray(0, 4).toString("latin1"), "QFI\xfb");
    assert.ok(overlay.includes(Buffer.from(disk)), "the overlay is backed by the frozen image");
    const after = (await host.api("GET", "/v1/vms/p")).json;
    assert.equal(after.state, "paused", "a paused VM stays paused");
    assert.deepEqual(after.config.disks, [`${m[2]},format=qcow2`], "its definition names the overlay");
    assert.deepEqual(JSON.parse(readFileSync(join(dir, "state", "vms", "p.json"), "utf8")).disks, [`${m[2]},format=qcow2`]);
    // --disks takes only overlay.
    const badDisks = await host.api("POST", "/v1/vms/p/snapshot", { path: full, disks: "copy" });
    assert.equal(badDisks.status, 400, badDisks.text);
    oneErrorLine(await host.vm("snapshot", "p", "x.snap", "--disks", "copy"), /--disks: expected overlay/);

    // Bad requests: one line each.
    for (const [body, re] of [
      [{ path: "rel.snap" }, /path: expected an absolute path/],
      [{ path: full, fast: true }, /unknown field 'fast'/],
      [{}, /path: the snapshot file is required/],
      [{ path: full, diff: "yes" }, /field 'diff': expected a boolean/],
    ] as const) {
      const bad = await host.api("POST", "/v1/vms/p/snapshot", body);
      assert.equal(bad.status, 400, bad.text);
      assert.match(bad.json.error, re);
    }

    assert.equal((await host.api("POST", "/v1/vms/p/stop")).status, 200);
    const stopped = await host.api("POST", "/v1/vms/p/snapshot", { path: join(dir, "late.snap") });
    assert.equal(stopped.status, 409, stopped.text);
    oneErrorLine(await host.vm("snapshot", "p", join(dir, "late.snap")), /VM 'p' is stopped: only a running or paused VM can be snapshotted/);
    assert.equal((await host.api("DELETE", "/v1/vms/p")).status, 200);

    // Under another name it is a clone, whose card gets a new MAC address
    // through the guest's agent: this bare guest has none, so the restore is
    // refused, stopped at once, and the name stays free.
    const clone = await host.api("POST", "/v1/restore", { path: full, name: "q" });
    assert.equal(clone.status, 409, clone.text);
    assert.match(clone.json.error, /^cannot restore VM 'q' as a clone: its guest did not take its new MAC addresses: .*guest agent does not answer.* \(restore it with --keep-macs to keep the snapshot's addresses\)$/);
    assert.equal((await host.api("GET", "/v1/vms/q")).status, 404);

    // Restored through the API under another name, keeping the card's address: its definition (disk included) from the snapshot.
    const q = await host.api("POST", "/v1/restore", { path: full, name: "q", keepMacs: true });
    assert.equal(q.status, 201, q.text);
    assert.equal(q.json.state, "running");
    assert.deepEqual([q.json.config.disks, q.json.config.kernel, q.json.memBytes], [[disk], patterns, 64 << 20]);
    assert.deepEqual(q.json.config.nets, (readSnapshotMeta(full).definition as { nets: string[] }).nets, "the snapshot's card, its address written out");
    // The host says what its restored VMs share (tsvisor host info: "clones:").
    const sharing = (await host.api("GET", "/v1/host")).json.snapshotSharing;
    assert.equal(sharing.tables, 1, JSON.stringify(sharing));
    const info = await tsvisor(["host", "info", "--host", host.socket]);
    assert.match(info.stdout, /^clones: +1 snapshot with restored VMs, [\d.]+M of pages they share \(\d+ frames\); \d+ pages read from snapshots, mapped \d+ times, 0 dropped under pressure$/m);
    assert.equal(JSON.parse(readFileSync(join(dir, "state", "vms", "q.json"), "utf8")).disks[0], disk, "persisted as a created VM is");
    // The name is taken now.
    const clash = await host.api("POST", "/v1/restore", { path: full, name: "q", keepMacs: true });
    assert.equal(clash.status, 409, clash.text);
    assert.match(clash.json.error, /a VM named 'q' exists already/);

    // The diff, through the CLI, paused until resumed.
    const cr = await host.vm("restore", join(dir, "diff.snap"), "--name", "r", "--paused", "--keep-macs");
    assert.equal(cr.status, 0, cr.stderr);
    assert.match(cr.stdout, /^VM r restored from .*diff\.snap \(paused\)\n$/);
    assert.deepEqual((await host.api("GET", "/v1/vms/r")).json.config.disks, [disk], "the snapshot names the frozen image");
    assert.equal((await host.api("POST", "/v1/vms/r/resume")).status, 200);

    for (const name of ["q", "r"]) {
      const w = await host.api("GET", `/v1/vms/${name}/wait`);
      assert.equal(w.status, 200, w.text);
      assert.equal(w.json.exitStatus, 0, `${name}: ${JSON.stringify(w.json)}`);
      assert.match(await logsOf(host, name), /done errors=0\n/);
    }
  } finally {
    assert.equal(await host.stop(), 0, host.stderr);
  }
});

test("vm snapshot --live writes a running VM's RAM while it runs; the copy restores and finishes intact", { skip, timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(base, "l-"));
  const host = await TestHost.start(dir);
  try {
    assert.equal((await host.api("POST", "/v1/vms", { name: "w", kernel: patterns, append: "", memBytes: 64 << 20, cpus: 1, nets: [] })).status, 201);
    assert.equal((await host.api("POST", "/v1/vms/w/start")).status, 200);
    const path = join(dir, "live.snap");
    const r = await host.vm("snapshot", "w", path, "--live");
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^snapshot of w written to .*live\.snap: 64\.0 MiB RAM, [\d.]+ MiB stored \(\d+ pages\), [\d.]+ s, paused \d+ ms\n$/);
    assert.equal((await host.api("GET", "/v1/vms/w")).json.state, "running");
    oneErrorLine(await host.vm("snapshot", "w", path, "--live", "--diff"), /--diff or --live, not both/);
    const both = await host.api("POST", "/v1/vms/w/snapshot", { path, live: true, diff: true });
    assert.equal(both.status, 400, both.text);
    assert.equal((await host.api("POST", "/v1/restore", { path, name: "w2" })).status, 201);
    for (const name of ["w", "w2"]) {
      const end = await host.api("GET", `/v1/vms/${name}/wait`);
      assert.equal(end.json.exitStatus, 0, `${name}: ${end.text}`);
      assert.match(await logsOf(host, name), /done errors=0\n/);
    }
  } finally {
    assert.equal(await host.stop(), 0, host.stderr);
  }
});

test("restore refuses what is no usable snapshot with one line; the CLI's usage errors exit 2", { skip, timeout: 30_000 }, async () => {
  const dir = mkdtempSync(join(base, "b-"));
  const host = await TestHost.start(dir);
  try {
    const junk = join(dir, "junk.snap");
    writeFileSync(junk, Buffer.alloc(4096, 7));
    for (const path of [junk, join(dir, "missing.snap")]) {
      const r = await host.api("POST", "/v1/restore", { path });
      assert.equal(r.status, 422, r.text);
      assert.ok(!r.json.error.includes("\n"), r.json.error);
      const c = await host.vm("restore", path);
      assert.equal(c.status, 1);
      oneErrorLine(c, path === junk ? /junk\.snap is not a usable snapshot/ : /cannot open snapshot .*missing\.snap: no such file/);
    }
    const bad = await host.api("POST", "/v1/restore", { path: junk, name: "-x" });
    assert.equal(bad.status, 400, bad.text);
    assert.deepEqual((await host.api("GET", "/v1/vms")).json.vms, [], "nothing is left behind");
    for (const args of [["snapshot", "p"], ["snapshot", "p", "f", "g"], ["snapshot", "p", "f", "--fast"], ["restore"], ["restore", "a", "b"], ["restore", "f", "--name"]]) {
      const r = await host.vm(...args);
      assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
      oneErrorLine(r, new RegExp(`vm ${args[0]}`));
    }
  } finally {
    assert.equal(await host.stop(), 0, host.stderr);
  }
});

test("a snapshot taken through the engine API (no definition in it) restores with one from its shape: no disks, no network cards", { skip, timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(base, "c-"));
  const path = join(dir, "engine.snap");
  const engine = await Host.create({ pcpus: 1, memLimitBytes: 256 << 20 });
  try {
    let out = "";
    const vm = engine.createVm({ name: "e", kernel: buildBareKernel(bareProgram("patterns")), cmdline: "", cpus: 1, memBytes: 64 << 20, consoleOut: (b) => (out += Buffer.from(b).toString()), warn: () => {} });
    vm.start();
    await until("'written'", async () => out.includes("written"));
    await vm.snapshot(path, { stayPaused: true });
  } finally {
    await engine.close();
  }
  const host = await TestHost.start(dir);
  try {
    const r = await host.api("POST", "/v1/restore", { path });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.name, "e");
    assert.deepEqual([r.json.config.disks, r.json.config.nets, r.json.config.kernel, r.json.config.append, r.json.memBytes], [[], [], undefined, "", 64 << 20]);
    const w = await host.api("GET", "/v1/vms/e/wait");
    assert.equal(w.json.exitStatus, 0, w.text);
    assert.match(await logsOf(host, "e"), /done errors=0\n/);
  } finally {
    assert.equal(await host.stop(), 0, host.stderr);
  }
});
