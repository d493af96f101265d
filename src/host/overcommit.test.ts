// Memory overcommit end to end (issue 14): guests whose RAM adds up to well
// over the host's pool write known patterns over it, the memory manager
// shares, drops, compresses and swaps their pages under pressure, and every
// page reads back as written; a guest that writes into a page it shared with
// another gets its own copy and the other still reads the old bytes. The
// guests are bare S-mode programs (testing/bare/patterns.c), so nothing but
// the host stands between them and their memory.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Host, type Vm } from "./host.js";
import { buildBareKernel, bareProgram, haveBareCompiler } from "./testing/bare-kernel.js";
import type { OvercommitOptions } from "../memory/manager/memory-manager.js";

const noCompiler = !haveBareCompiler() && "riscv64-unknown-elf-gcc not installed (npm test installs gcc-riscv64-unknown-elf)";
/** patterns.c's RAM. */
const GUEST_RAM = 64 << 20;

interface PatternGuest {
  vm: Vm;
  output(): string;
}

function startPatterns(host: Host, name: string, cpus: number, shareGroup?: string): PatternGuest {
  let text = "";
  const vm = host.createVm({
    name, kernel: buildBareKernel(bareProgram("patterns")), cmdline: "", cpus, memBytes: GUEST_RAM, shareGroup,
    consoleOut: (b) => { text += Buffer.from(b).toString(); },
    warn: () => {},
  });
  vm.start();
  return { vm, output: () => text };
}

async function withHost(poolMiB: number, opts: OvercommitOptions, body: (host: Host, dir: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-overcommit-"));
  const host = await Host.create({ pcpus: 2, memLimitBytes: poolMiB << 20, overcommit: { swap: { path: join(dir, "swap"), bytes: 256 << 20 }, compressBytes: 8 << 20, ...opts } });
  try {
    await body(host, dir);
  } finally {
    await host.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

test("two SMP guests with 128 MiB between them run in a 48 MiB pool: every page reads back as written", { skip: noCompiler, timeout: 180_000 }, async () => {
  await withHost(48, {}, async (host) => {
    const guests = [startPatterns(host, "a", 2, "pair"), startPatterns(host, "b", 2, "pair")];
    const seen = { shared: 0, compressed: 0, swapped: 0, zero: 0 };
    const watch = setInterval(() => {
      for (const g of guests) {
        const pages = g.vm.stats().memory?.pages;
        if (!pages) continue;
        for (const k of Object.keys(seen) as (keyof typeof seen)[]) seen[k] = Math.max(seen[k], pages[k]);
      }
    }, 50);
    const ends = await Promise.all(guests.map((g) => g.vm.waitForEnd()));
    clearInterval(watch);
    for (const [i, g] of guests.entries()) {
      assert.deepEqual(ends[i], { kind: "poweroff" }, g.output());
      assert.match(g.output(), /done errors=0\n/, `${g.vm.name} read back what it wrote`);
    }
    const s = host.memory.stats();
    // Every mechanism had its turn (what each page kind is for: patterns.c).
    assert.ok(s.reclaim.compressed > 0 && s.reclaim.swapped > 0 && s.reclaim.zero + s.sharing!.zeroPagesDropped > 0, JSON.stringify(s.reclaim));
    assert.ok(seen.shared > 0 && seen.compressed > 0 && seen.swapped > 0, JSON.stringify(seen));
    assert.equal(s.frames.inUse < (48 << 20) / 4096, true);
  });
});

test("a page two VMs share: the one that writes gets its own copy, the other still reads the old bytes", { skip: noCompiler, timeout: 120_000 }, async () => {
  // A pool large enough that nothing is reclaimed: only sharing acts.
  await withHost(512, { reclaim: false, sharing: { pagesPerPass: 1 << 16, intervalMs: 20 } }, async (host) => {
    const guests = [startPatterns(host, "left", 1, "twins"), startPatterns(host, "right", 1, "twins")];
    // Wait until both wrote and the scanner merged their identical pages.
    const deadline = Date.now() + 60_000;
    while (!(guests.every((g) => g.output().includes("written")) && host.memory.stats().frames.shared > 0)) {
      assert.ok(Date.now() < deadline, "the pages were never shared");
      await new Promise((r) => setTimeout(r, 20));
    }
    const sharedBefore = guests.map((g) => g.vm.stats().memory!.pages.shared);
    assert.ok(sharedBefore.every((n) => n > 0), `both map shared frames: ${sharedBefore}`);
    const ends = await Promise.all(guests.map((g) => g.vm.waitForEnd()));
    for (const [i, g] of guests.entries()) {
      assert.deepEqual(ends[i], { kind: "poweroff" });
      // Each wrote its page number into every eighth page it shared, then
      // checked all of its pages: its own writes, and the other's never.
      assert.match(g.output(), /done errors=0\n/, g.output());
    }
  });
});

test("with the pool and the swap file full a guest waits, paused with a message, and finishes once memory is free", { skip: noCompiler, timeout: 180_000 }, async () => {
  // No sharing, compression or swap to speak of: the pool cannot hold both guests' pages.
  await withHost(72, { sharing: false, compressBytes: 0, swap: undefined }, async (host) => {
    const guests = [startPatterns(host, "first", 1), startPatterns(host, "second", 1)];
    const deadline = Date.now() + 60_000;
    let waiting: PatternGuest | undefined;
    while (!waiting) {
      assert.ok(Date.now() < deadline, "no guest ran out of memory");
      waiting = guests.find((g) => g.vm.stats().pausedFor !== undefined);
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(waiting.vm.state, "paused");
    assert.match(waiting.vm.stats().pausedFor!, /out of host memory/);
    assert.ok(host.memory.stats().waiting.includes(waiting.vm.name));
    // The other one (waiting too, or not) gives its memory back by going away.
    const other = guests.find((g) => g !== waiting)!;
    await other.vm.destroy();
    assert.deepEqual(await waiting.vm.waitForEnd(), { kind: "poweroff" });
    assert.match(waiting.output(), /done errors=0\n/);
  });
});
