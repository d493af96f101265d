// The memory manager without guests: p2ms filled from the host side stand in
// for VMs (a VM whose vCPUs are always off their pCPUs), so each mechanism
// can be watched page by page: sharing, zero pages, compression and swap,
// balloon discards, and what happens when there is no room anywhere.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomFillSync } from "node:crypto";
import { FramePool, FRAME_SIZE, FIRST_VM_OWNER } from "../frame-pool.js";
import { P2m, P2mCounter } from "../p2m.js";
import { GuestMemory } from "../guest-memory.js";
import { Absent } from "../p2m-entry.js";
import { MemoryManager, type MemoryVm, type OvercommitOptions } from "./memory-manager.js";

const RAM = 0x8000_0000n;
const PAGE = BigInt(FRAME_SIZE);

interface FakeVm extends MemoryVm {
  mem: GuestMemory;
}

let nextOwner = FIRST_VM_OWNER + 100;

function setup(poolMiB: number, opts: OvercommitOptions) {
  const pool = new FramePool({ reservedBytes: 1 << 16, limitBytes: poolMiB << 20 });
  const mm = new MemoryManager(pool, { reclaim: true, ...opts }, () => nextOwner++);
  let owner = FIRST_VM_OWNER;
  const vm = (name: string, pages: number, shareGroup = `vm:${name}`): FakeVm => {
    const p2m = new P2m(pool, RAM, pages * FRAME_SIZE, { owner: owner++ });
    const v: FakeVm = {
      name, p2m, shareGroup, mem: new GuestMemory(p2m),
      holdVcpus: async () => true, releaseVcpus: () => {}, flushTlbs: () => {}, balloon: () => undefined,
    };
    mm.add(v);
    return v;
  };
  return { pool, mm, vm };
}

const pageOf = (fill: (b: Uint8Array) => void) => {
  const b = new Uint8Array(FRAME_SIZE);
  fill(b);
  return b;
};

test("identical pages of two VMs in one share group end up in one read-only frame; a write gives the writer its own copy", async () => {
  const { pool, mm, vm } = setup(64, { sharing: { pagesPerPass: 1 << 16, intervalMs: 1 << 30 } });
  const a = vm("a", 64, "g");
  const b = vm("b", 64, "g");
  const same = pageOf((p) => p.fill(0x5a));
  for (let i = 0; i < 64; i++) {
    a.mem.write(RAM + BigInt(i) * PAGE, same);
    b.mem.write(RAM + BigInt(i) * PAGE, same);
  }
  const before = pool.framesInUse;
  await mm.shareNow(); // first look: every hash is new (volatile)
  await mm.shareNow(); // second: stable pages merge
  await mm.shareNow();
  assert.equal(a.p2m.census().shared + b.p2m.census().shared, 128, "every page maps the shared frame");
  assert.ok(before - pool.framesInUse >= 126, `frames freed: ${before - pool.framesInUse}`);
  assert.equal(mm.stats().frames.shared, 1);

  const mine = pageOf((p) => p.fill(0x77));
  a.mem.write(RAM + 5n * PAGE, mine);
  assert.deepEqual(a.mem.read(RAM + 5n * PAGE, FRAME_SIZE), mine, "the writer reads its write");
  assert.deepEqual(b.mem.read(RAM + 5n * PAGE, FRAME_SIZE), same, "the other still reads the old bytes");
  assert.deepEqual(a.mem.read(RAM + 6n * PAGE, FRAME_SIZE), same);
  assert.equal(a.p2m.counter(P2mCounter.CowBreaks), 1);
  mm.close();
});

test("VMs in different share groups never share, however alike their pages", async () => {
  const { mm, vm } = setup(64, { sharing: { pagesPerPass: 1 << 16, intervalMs: 1 << 30 } });
  const a = vm("a", 8);
  const b = vm("b", 8);
  const same = pageOf((p) => p.fill(3));
  a.mem.write(RAM, same);
  b.mem.write(RAM, same);
  for (let i = 0; i < 3; i++) await mm.shareNow();
  assert.equal(a.p2m.census().shared + b.p2m.census().shared, 0);
  mm.close();
});

test("a page found all zero needs no frame; it still reads as zero and takes writes", async () => {
  const { mm, vm } = setup(64, { sharing: { pagesPerPass: 1 << 16, intervalMs: 1 << 30 } });
  const a = vm("a", 16);
  a.mem.write(RAM + 3n * PAGE, new Uint8Array(FRAME_SIZE)); // touched, but zero
  a.mem.write(RAM + 4n * PAGE, Uint8Array.of(1));
  await mm.shareNow();
  await mm.shareNow();
  assert.equal(a.p2m.census().zero, 1);
  assert.equal(a.p2m.populated, 1);
  assert.deepEqual(a.mem.read(RAM + 3n * PAGE, 16), new Uint8Array(16));
  a.mem.write(RAM + 3n * PAGE + 8n, Uint8Array.of(9));
  assert.equal(a.mem.read(RAM + 3n * PAGE + 8n, 1)[0], 9);
  mm.close();
});

test("under pressure cold pages are compressed or swapped; host reads leave them there, faults bring them back intact", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-mm-"));
  try {
    const { mm, vm } = setup(16, { sharing: false, compressBytes: 1 << 20, swap: { path: join(dir, "swap"), bytes: 8 << 20 } });
    const a = vm("a", 1024);
    const pages: Uint8Array[] = [];
    for (let i = 0; i < 1024; i++) {
      const p = i % 2 === 0 ? pageOf((b) => b.fill(i & 0xff, 0, 64)) : pageOf((b) => randomFillSync(b));
      pages.push(p);
      a.mem.write(RAM + BigInt(i) * PAGE, p);
    }
    // Twice round the clock: the first sweep clears the accessed bits, the second takes the pages.
    const taken = await mm.reclaimNow(mm.freeFrames + 800);
    assert.ok(taken >= 800, `reclaimed ${taken}`);
    const census = a.p2m.census();
    assert.ok(census.compressed > 0 && census.swapped > 0, JSON.stringify(census));
    const populated = a.p2m.populated;
    for (let i = 0; i < 1024; i++) assert.deepEqual(a.mem.read(RAM + BigInt(i) * PAGE, FRAME_SIZE), pages[i], `page ${i}`);
    assert.equal(a.p2m.populated, populated, "reading did not bring pages back");
    assert.ok(a.p2m.counter(P2mCounter.StoreReads) > 0);
    for (let i = 0; i < 1024; i++) a.p2m.resolveFault(RAM + BigInt(i) * PAGE, true);
    assert.equal(a.p2m.populated, 1024);
    for (let i = 0; i < 1024; i++) assert.deepEqual(a.mem.read(RAM + BigInt(i) * PAGE, FRAME_SIZE), pages[i], `page ${i} after the fault`);
    assert.equal(mm.stats().compressed!.pages, 0, "a page brought back leaves the store");
    mm.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("with nowhere to put pages nothing is taken, and a failing swap file keeps them where they are", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tsvisor-mm-"));
  try {
    symlinkSync("/dev/full", join(dir, "swap"));
    const { mm, vm } = setup(16, { sharing: false, compressBytes: 0, swap: { path: join(dir, "swap"), bytes: 8 << 20 } });
    const a = vm("a", 256);
    const pages = Array.from({ length: 256 }, () => pageOf((b) => randomFillSync(b)));
    pages.forEach((p, i) => a.mem.write(RAM + BigInt(i) * PAGE, p));
    assert.equal(await mm.reclaimNow(mm.freeFrames + 200), 0);
    assert.equal(a.p2m.populated, 256);
    assert.match(mm.stats().reclaim.lastError ?? "", /ENOSPC/);
    pages.forEach((p, i) => assert.deepEqual(a.mem.read(RAM + BigInt(i) * PAGE, FRAME_SIZE), p));
    mm.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("balloon and reported pages give their frames and store slots back; touched again they are zero", async () => {
  const { pool, mm, vm } = setup(64, { sharing: false, compressBytes: 1 << 20 });
  const a = vm("a", 64);
  for (let i = 0; i < 64; i++) a.mem.write(RAM + BigInt(i) * PAGE, pageOf((b) => b.fill(i + 1, 0, 32)));
  const before = pool.framesInUse;
  await mm.discard(a, [0, 1, 2, 3], Absent.Ballooned);
  await mm.discard(a, [10, 11], Absent.Reported);
  assert.equal(before - pool.framesInUse, 6);
  assert.equal(a.p2m.census().ballooned, 4);
  assert.equal(a.p2m.census().reported, 2);
  assert.deepEqual(a.mem.read(RAM + PAGE, 32), new Uint8Array(32), "a ballooned page reads as zero");
  mm.undiscard(a, [0, 1]);
  assert.equal(a.p2m.census().ballooned, 2);
  assert.equal(a.p2m.census().untouched, 2);
  assert.equal(mm.stats().balloon.inflated, 4);
  assert.equal(mm.stats().balloon.reported, 2);
  mm.close();
});
