// Snapshots of running VMs, end to end: a bare SMP guest (host/testing/bare/
// patterns.c) writes known patterns over its RAM, waits, then reads every
// page back and counts errors. Snapshots taken while it writes and while it
// waits are restored, on another host and as several clones, and the
// restored guests finish with no errors: harts, clocks, interrupt
// controllers, the UART and every page came back. Broken snapshots are
// refused with one line naming what is wrong.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, readFileSync, writeFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Host, type Vm } from "../host/host.js";
import { buildBareKernel, bareProgram, haveBareCompiler } from "../host/testing/bare-kernel.js";
import { SnapshotFile } from "./format.js";
import { SnapshotError } from "./state.js";
import { readSnapshotMeta, type LiveRound } from "./snapshot.js";
import { rewriteSnapshot } from "./testing/rewrite.js";

const noCompiler = !haveBareCompiler() && "riscv64-unknown-elf-gcc not installed (npm test installs gcc-riscv64-unknown-elf)";
const GUEST_RAM = 64 << 20;

interface Guest {
  vm: Vm;
  output(): string;
}

function console_(): { out: (b: Uint8Array) => void; text: () => string } {
  let text = "";
  return { out: (b) => { text += Buffer.from(b).toString(); }, text: () => text };
}

function startPatterns(host: Host, name: string): Guest {
  const c = console_();
  const vm = host.createVm({ name, kernel: buildBareKernel(bareProgram("patterns")), cmdline: "", cpus: 2, memBytes: GUEST_RAM, consoleOut: c.out, warn: () => {} });
  vm.start();
  return { vm, output: c.text };
}

/** A snapshot of the patterns guest once it has written its RAM (dir/base.snap); the guest is gone after. */
async function patternsSnapshot(host: Host, dir: string): Promise<{ path: string; taken: Awaited<ReturnType<Vm["snapshot"]>> }> {
  const g = startPatterns(host, "base");
  await until("'written'", () => g.output().includes("written"));
  const path = join(dir, "base.snap");
  const taken = await g.vm.snapshot(path);
  await g.vm.destroy();
  return { path, taken };
}

function restore(host: Host, path: string, name: string, paused = false): Guest {
  const c = console_();
  const vm = host.restoreVm(path, { name, consoleOut: c.out, warn: () => {}, paused });
  return { vm, output: c.text };
}

async function until(what: string, ok: () => boolean, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function finishes(g: Guest): Promise<void> {
  const end = await g.vm.waitForEnd();
  assert.deepEqual(end, { kind: "poweroff" }, g.output());
  assert.match(g.output(), /done errors=0\n/, `${g.vm.name} read back every page`);
}

async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-snapshot-"));
  try {
    await body(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("a snapshot taken while the guest writes its RAM, and one while it waits, both restore on another host and finish with every page intact", { skip: noCompiler, timeout: 180_000 }, async () => {
  await withDir(async (dir) => {
    const source = await Host.create({ pcpus: 2 });
    const mid = join(dir, "mid.snap");
    const waiting = join(dir, "waiting.snap");
    try {
      const g = startPatterns(source, "src");
      // Mid-write: the harts are somewhere in their loops.
      await until("the guest to run", () => g.vm.stats().vcpus.some((v) => v.instructions > 2_000_000));
      const a = await g.vm.snapshot(mid);
      assert.equal(a.memory.pages, GUEST_RAM / 4096);
      assert.equal(g.vm.state, "running", "the VM runs on after a snapshot");
      await until("'written'", () => g.output().includes("written"));
      await g.vm.snapshot(waiting, { stayPaused: true });
      assert.equal(g.vm.state, "paused");
      g.vm.resume();
      await finishes(g);
    } finally {
      await source.close();
    }
    const target = await Host.create({ pcpus: 2 });
    try {
      const [r1, r2] = [restore(target, mid, "from-mid"), restore(target, waiting, "from-waiting")];
      await Promise.all([finishes(r1), finishes(r2)]);
      // The restored guests went on where they were: one still had to print "written", the other not.
      assert.match(r1.output(), /^written\n/);
      assert.doesNotMatch(r2.output(), /written/);
    } finally {
      await target.close();
    }
  });
});

test("a live snapshot (--live) is written while the guest runs on, rewriting 8 MiB; paused only for the last pages, it restores on another host and finishes with every generation right", { skip: noCompiler, timeout: 180_000 }, async () => {
  await withDir(async (dir) => {
    const source = await Host.create({ pcpus: 2 });
    const path = join(dir, "live.snap");
    try {
      const c = console_();
      const vm = source.createVm({ name: "busy", kernel: buildBareKernel(bareProgram("dirty")), cmdline: "", cpus: 2, memBytes: GUEST_RAM, consoleOut: c.out, warn: () => {} });
      vm.start();
      await until("'written'", () => c.text().includes("written"));
      const before = vm.stats().vcpus.reduce((n, v) => n + v.instructions, 0);
      const rounds: LiveRound[] = [];
      const w = await vm.snapshot(path, { live: true, progress: (_done, _total, round) => void (round && rounds.push(round)) });
      // Its progress went on after the first pass: the rounds of pages written again, in order, the paused one last.
      assert.ok(rounds.length > 0 && rounds[0].round === 1, JSON.stringify(rounds.slice(0, 3)));
      for (let k = 1; k < rounds.length; k++) {
        const [before, now] = [rounds[k - 1], rounds[k]];
        const ok = now.round === before.round ? now.paused === before.paused : now.round === before.round + 1 && !before.paused;
        assert.ok(ok, JSON.stringify([before, now]));
      }
      for (const r of rounds) assert.ok(r.donePages < r.pages, JSON.stringify(r));
      console.log(`live snapshot of a guest rewriting 8 MiB: ${(w.bytes / 2 ** 20).toFixed(1)} MiB, ${w.rewrittenPages} pages written again, paused ${w.pausedMs?.toFixed(1)} ms, throttle ${w.maxThrottlePct} %`);
      assert.equal(vm.scheduling.capPct, 0, "the throttle ended with the snapshot");
      assert.ok((w.rewrittenPages ?? 0) > 0, "the guest wrote pages while its RAM was being written");
      assert.ok(vm.stats().vcpus.reduce((n, v) => n + v.instructions, 0) > before, "it ran during the snapshot");
      assert.equal(vm.state, "running");
      await assert.rejects(vm.snapshot(join(dir, "x.snap"), { live: true, diff: true }), /no --diff with --live/);
      await finishes({ vm, output: c.text });
    } finally {
      await source.close();
    }
    const target = await Host.create({ pcpus: 2 });
    try {
      const r = restore(target, path, "restored");
      await finishes(r);
      assert.doesNotMatch(r.output(), /written/, "it went on from the pause, after 'written'");
    } finally {
      await target.close();
    }
  });
});

test("clones: three VMs restored from one snapshot run independently, sharing the pages they read; restore is lazy; a paused restore waits for resume", { skip: noCompiler, timeout: 180_000 }, async () => {
  await withDir(async (dir) => {
    const host = await Host.create({ pcpus: 2 });
    try {
      const { path, taken } = await patternsSnapshot(host, dir);
      const framesBefore = host.info().pool.framesInUse;
      const clones = [restore(host, path, "c1"), restore(host, path, "c2"), restore(host, path, "c3", true)];
      // Nothing of the RAM was read yet: the pages wait in the file.
      const paused = clones[2].vm;
      assert.equal(paused.state, "paused");
      const pages = paused.stats().memory!.pages;
      assert.ok(pages.snapshot > 10_000 && pages.private < 64, JSON.stringify(pages));
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(clones[2].output(), "", "a paused restore runs nothing");
      paused.resume();
      // Each guest reads every page back, then writes into some of them (a
      // private copy each) and reads them again: c3 checks after the others
      // wrote, so a write that reached the shared frame would be an error there.
      await Promise.all(clones.map(finishes));
      assert.throws(() => restore(host, path, "c1"), /exists already/);
      // The pages were read from the file once and mapped by all three.
      const sharing = host.snapshotSharing.stats();
      assert.ok(sharing.filled > taken.memory.stored / 2 && sharing.filled <= taken.memory.stored, JSON.stringify({ sharing, memory: taken.memory }));
      assert.ok(sharing.mapped > 2.5 * sharing.filled, JSON.stringify(sharing));
      // With the last of them gone the table let go of its frames.
      assert.deepEqual([sharing.tables, sharing.frames], [0, 0]);
      for (const c of clones) await c.vm.destroy();
      assert.ok(host.info().pool.framesInUse <= framesBefore + 16, `${host.info().pool.framesInUse} frames in use, ${framesBefore} before the clones`);
    } finally {
      await host.close();
    }
  });
});

test("a restore's working set: the pages a run read are recorded at its end, read ahead in the background in the next run, which finishes intact; a corrupted page still stops the guest", { skip: noCompiler, timeout: 180_000 }, async () => {
  await withDir(async (dir) => {
    const host = await Host.create({ pcpus: 1 });
    try {
      const { path, taken } = await patternsSnapshot(host, dir);
      let recorded: Uint32Array | undefined;
      const first = host.restoreVm(path, { name: "first", consoleOut: () => {}, warn: () => {}, workingSet: { record: (pages) => { recorded = pages; } } });
      await first.waitForEnd();
      assert.ok(recorded, "the working set was recorded at the end");
      // The guest reads every page it wrote: about all that were stored.
      assert.ok(recorded.length > taken.memory.stored / 2 && recorded.length <= taken.memory.stored, `${recorded.length} pages of ${taken.memory.stored}`);
      await first.destroy();

      const half = recorded.subarray(0, recorded.length >> 1);
      const c = console_();
      const next = host.restoreVm(path, { name: "next", consoleOut: c.out, warn: () => {}, paused: true, workingSet: { pages: [...half, 1e9, -1] } });
      // They are read in the background, also before the guest runs: into frames of their own.
      await until("the read-ahead", () => next.stats().memory!.pages.private >= half.length);
      const pages = next.stats().memory!.pages;
      assert.ok(pages.private < half.length + 64, JSON.stringify({ pages, readAhead: half.length }));
      next.resume();
      await finishes({ vm: next, output: c.text });
      await next.destroy();

      // A page that does not check out ends the read-ahead; the guest stops with the reason when it reads that page.
      const bad = host.restoreVm(withCorruptPage(path, dir), { name: "bad", consoleOut: () => {}, warn: () => {}, workingSet: { pages: recorded } });
      await stopsOnCorruptPage(bad);
    } finally {
      await host.close();
    }
  });
});

test("the shared pages only the clones' table holds go back under memory pressure; a clone then reads them from the file again", { skip: noCompiler, timeout: 180_000 }, async () => {
  await withDir(async (dir) => {
    const host = await Host.create({ pcpus: 2 });
    try {
      const { path } = await patternsSnapshot(host, dir);
      // The waiting clone keeps the table; the other reads every page into it and ends.
      const waiting = restore(host, path, "waiting", true);
      const reader = restore(host, path, "reader");
      await finishes(reader);
      await reader.vm.destroy();
      const before = host.snapshotSharing.stats();
      assert.ok(before.tables === 1 && before.frames > 10_000, JSON.stringify(before));
      const freeBefore = host.memory.stats().frames.free;
      await host.memory.reclaimNow(freeBefore + before.frames);
      const after = host.snapshotSharing.stats();
      assert.equal(after.frames, 0, JSON.stringify(after));
      assert.equal(after.dropped, before.frames);
      assert.ok(host.memory.stats().frames.free >= freeBefore + before.frames, "the frames went back to the pool");
      waiting.vm.resume();
      await finishes(waiting);
      assert.ok(host.snapshotSharing.stats().filled >= 2 * before.filled - 100, "read from the file again");
    } finally {
      await host.close();
    }
  });
});

test("a store that breaks a restored page's sharing reaches the other hart, which had the shared frame in its TLB", { skip: noCompiler, timeout: 60_000 }, async () => {
  await withDir(async (dir) => {
    const host = await Host.create({ pcpus: 2 });
    try {
      const c = console_();
      const vm = host.createVm({ name: "flag", kernel: buildBareKernel(bareProgram("cowflag")), cmdline: "", cpus: 2, memBytes: GUEST_RAM, consoleOut: c.out, warn: () => {} });
      vm.start();
      await until("'ready'", () => c.text().includes("ready"));
      const path = join(dir, "flag.snap");
      await vm.snapshot(path, { stayPaused: true });
      await vm.destroy();
      const r = restore(host, path, "reader");
      await until("'seen'", () => r.output().includes("seen"), 20_000);
      const memory = r.vm.stats().memory!;
      assert.ok(memory.cowBreaks >= 1 && memory.tlbShootdowns >= 1, JSON.stringify(memory));
    } finally {
      await host.close();
    }
  });
});

test("a hart snapshotted between LR.D and SC.D restores with its reservation, and its SC.D succeeds as it does without the snapshot", { skip: noCompiler, timeout: 60_000 }, async () => {
  await withDir(async (dir) => {
    const host = await Host.create({ pcpus: 2 });
    try {
      const kernel = buildBareKernel(bareProgram("lrsc"));
      const run = (name: string) => {
        const c = console_();
        const vm = host.createVm({ name, kernel, cmdline: "", cpus: 1, memBytes: GUEST_RAM, consoleOut: c.out, warn: () => {} });
        vm.start();
        return { vm, output: c.text };
      };
      const plain = run("plain");
      assert.deepEqual(await plain.vm.waitForEnd(), { kind: "poweroff" });
      assert.match(plain.output(), /sc=0 word=42\n/, `the SC.D succeeds on a hart never stopped: ${plain.output()}`);

      const held = run("held");
      // The whole line: a snapshot between its letters and its newline would leave the newline to the restored guest.
      await until("'reserved'", () => held.output().includes("reserved\n"));
      const path = join(dir, "lrsc.snap");
      await held.vm.snapshot(path, { stayPaused: true });
      assert.doesNotMatch(held.output(), /sc=/, "the guest's hold ended before the snapshot");
      await held.vm.destroy();
      const r = restore(host, path, "restored");
      assert.deepEqual(await r.vm.waitForEnd(), { kind: "poweroff" }, r.output());
      assert.match(r.output(), /^sc=0 word=42\n/, r.output());
    } finally {
      await host.close();
    }
  });
});

test("a diff snapshot after a full one holds only what changed after the full one, not what the log held before it", { skip: noCompiler, timeout: 180_000 }, async () => {
  await withDir(async (dir) => {
    const host = await Host.create({ pcpus: 2 });
    try {
      const g = startPatterns(host, "f");
      // The first snapshot starts the dirty log; the guest then writes its RAM.
      await g.vm.snapshot(join(dir, "early.snap"));
      await until("'written'", () => g.output().includes("written"));
      const full = await g.vm.snapshot(join(dir, "full.snap"), { stayPaused: true });
      assert.ok(full.memory.stored > 10_000, JSON.stringify(full.memory));
      // Paused since: nothing changed, whatever the guest wrote before the full snapshot.
      const diff = await g.vm.snapshot(join(dir, "diff.snap"), { diff: true, stayPaused: true });
      assert.equal(diff.memory.stored, 0, JSON.stringify(diff.memory));
      g.vm.resume();
      await finishes(g);
    } finally {
      await host.close();
    }
  });
});

test("a diff snapshot holds only the pages written since the one before, and restores through it", { skip: noCompiler, timeout: 180_000 }, async () => {
  await withDir(async (dir) => {
    const host = await Host.create({ pcpus: 2 });
    try {
      const g = startPatterns(host, "d");
      await until("'written'", () => g.output().includes("written"));
      const full = await g.vm.snapshot(join(dir, "full.snap"));
      await new Promise((r) => setTimeout(r, 100));
      const diff = await g.vm.snapshot(join(dir, "diff.snap"), { diff: true });
      // While the guest only waits (and spins on the clock), few pages change.
      assert.ok(diff.memory.inParent > full.memory.stored - 100, JSON.stringify(diff.memory));
      assert.ok(statSync(join(dir, "diff.snap")).size < statSync(join(dir, "full.snap")).size / 10);
      assert.equal(readSnapshotMeta(join(dir, "diff.snap")).parent?.id, full.id);
      await g.vm.destroy();
      // A restored VM's first diff snapshot is against the snapshot it came from.
      const r = restore(host, join(dir, "diff.snap"), "from-diff");
      const second = await r.vm.snapshot(join(dir, "diff2.snap"), { diff: true });
      assert.equal(readSnapshotMeta(join(dir, "diff2.snap")).parent?.id, diff.id);
      assert.ok(second.memory.stored < 1000, JSON.stringify(second.memory));
      await finishes(r);
      await finishes(restore(host, join(dir, "diff2.snap"), "from-diff2"));
      // A parent replaced since is found out.
      await finishes(startAndSnapshot(host, join(dir, "full.snap")));
      assert.throws(() => restore(host, join(dir, "diff.snap"), "orphan"), /not the parent this diff snapshot was taken against/);
      assert.ok(host.vm("orphan") === undefined, "no VM left behind");
    } finally {
      await host.close();
    }
  });

  function startAndSnapshot(host: Host, path: string): Guest {
    const g = startPatterns(host, "other");
    void until("'written'", () => g.output().includes("written")).then(() => g.vm.snapshot(path));
    return g;
  }
});

test("broken snapshots are refused with one line naming the problem, and nothing is left running", { skip: noCompiler, timeout: 120_000 }, async () => {
  await withDir(async (dir) => {
    const host = await Host.create({ pcpus: 1 });
    try {
      const g = startPatterns(host, "t");
      await until("'written'", () => g.output().includes("written"));
      const good = join(dir, "good.snap");
      await g.vm.snapshot(good);
      await g.vm.destroy();
      const framesBefore = host.info().pool.framesInUse;
      const bytes = readFileSync(good);
      const cases: [string, (p: string) => Promise<void> | void, RegExp][] = [
        ["not a snapshot", (p) => writeFileSync(p, "hello"), /too short|not a tsvisor snapshot/],
        ["truncated", (p) => writeFileSync(p, bytes.subarray(0, bytes.length >> 1)), /outside the file|truncated/],
        ["a flipped bit in the machine state", (p) => {
          const b = Buffer.from(bytes);
          const m = new SnapshotFile_(good).section("machine");
          b[m.offset + 20] ^= 1;
          writeFileSync(p, b);
        }, /section 'machine' checksum mismatch/],
        ["another format version", (p) => {
          const b = Buffer.from(bytes);
          b.writeUInt32LE(99, 8);
          writeFileSync(p, b);
        }, /format version 99|header checksum/],
        ["another tsvisor version", (p) => rewriteSnapshot(good, p, (_m, meta) => { meta.tsvisor = "9.9.9"; }), /written by tsvisor 9\.9\.9/],
        ["an illegal privilege level", (p) => rewriteSnapshot(good, p, (m) => {
          const block = Buffer.from(m.harts[0].block.arch, "base64");
          block.writeBigUInt64LE(2n, 520);
          m.harts[0].block.arch = block.toString("base64");
        }), /privilege level 2/],
        ["another machine shape", (p) => rewriteSnapshot(good, p, (m) => { m.config.harts = 3; }), /3 harts/],
        ["a PLIC value of the wrong type", (p) => rewriteSnapshot(good, p, (m) => { m.plic = "garbage"; }), /machine\.plic/],
        ["a page map naming a slot past the pages", (p) => {
          const b = Buffer.from(bytes);
          const pm = new SnapshotFile_(good).section("pagemap");
          b.writeUInt32LE(0x7fffffff, pm.offset + 8 + 4 * 2000);
          writeFileSync(p, b);
        }, /checksum mismatch/],
      ];
      for (const [what, make, message] of cases) {
        const p = join(dir, `bad-${what.replace(/\W+/g, "-")}.snap`);
        await make(p);
        assert.throws(() => host.restoreVm(p, { name: "bad", consoleOut: () => {} }), (e: Error) => {
          assert.ok(e instanceof SnapshotError || e.name === "HostError", `${what}: ${e.stack}`);
          assert.match(e.message, message, what);
          assert.ok(!e.message.includes("\n"), `${what}: one line`);
          return true;
        });
        assert.ok(host.vm("bad") === undefined, `${what}: no VM left behind`);
      }
      assert.equal(host.info().pool.framesInUse, framesBefore, "every frame of the refused restores went back");
      // A corrupted page is found when the guest touches it: the VM stops with the reason, the host goes on.
      await stopsOnCorruptPage(restore(host, withCorruptPage(good, dir), "victim").vm);
    } finally {
      await host.close();
    }
  });
});

/** A copy of snapshot `path` in `dir` with a byte of its 101st stored page flipped. */
function withCorruptPage(path: string, dir: string): string {
  const b = Buffer.from(readFileSync(path));
  b[new SnapshotFile_(path).section("pages").offset + 4096 * 100 + 7] ^= 0xff;
  const corrupt = join(dir, "corrupt-page.snap");
  writeFileSync(corrupt, b);
  return corrupt;
}

/** The guest stops with the reason once it reads the page that does not check out; the host goes on. */
async function stopsOnCorruptPage(vm: Vm): Promise<void> {
  const end = await vm.waitForEnd();
  assert.equal(end.kind, "error");
  assert.match((end as { message: string }).message, /guest page \d+ is corrupted/);
}

/** The section table of a snapshot file, for the tests' byte surgery. */
class SnapshotFile_ {
  private readonly f: SnapshotFile;
  constructor(path: string) {
    this.f = SnapshotFile.open(path);
  }
  section(tag: string) {
    const s = this.f.section(tag);
    this.f.close();
    return s;
  }
}
