import { test } from "node:test";
import assert from "node:assert/strict";
import { TestDriver, TEST_RAM } from "./test-driver.js";
import {
  VirtioBalloon, BalloonError, type BalloonMemory, type VirtioBalloonOptions,
  VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_PAGE_REPORTING,
  VIRTIO_BALLOON_F_MUST_TELL_HOST, VIRTIO_BALLOON_F_FREE_PAGE_HINT, VIRTIO_BALLOON_F_PAGE_POISON,
} from "./balloon.js";
import { STATUS_DEVICE_NEEDS_RESET, VIRTIO_F_VERSION_1 } from "./virtio.js";

const RAM_BYTES = 4 << 20; // the test driver's guest memory
const BASE_PFN = Number(TEST_RAM >> 12n);
/** Pages the test driver leaves alone (its rings and buffers are in the first 2 MiB). */
const FREE_PFN = BASE_PFN + 0x200;
const INFLATEQ = 0;
const DEFLATEQ = 1;
const STATSQ = 2;
const ALL = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_DEFLATE_ON_OOM | VIRTIO_BALLOON_F_PAGE_REPORTING;

type Call = { op: "discard"; pfns: number[]; reason: string } | { op: "reclaim"; pfns: number[] };

/** The host's memory manager, recording what the device asks of it. RAM is `ramBytes` at TEST_RAM. */
class FakeMemory implements BalloonMemory {
  calls: Call[] = [];
  /** When set, discards wait for release() instead of resolving at once. */
  manual = false;
  fail = false;
  private waiting: (() => void)[] = [];

  constructor(readonly ramBytes = RAM_BYTES) {}

  isRam(gpa: bigint, len: number): boolean {
    return len >= 0 && gpa >= TEST_RAM && gpa + BigInt(len) <= TEST_RAM + BigInt(this.ramBytes);
  }

  discard(gpas: bigint[], reason: "balloon" | "reported"): Promise<void> {
    for (const g of gpas) assert.equal(g % 4096n, 0n, "discard of an unaligned address");
    assert.equal(new Set(gpas).size, gpas.length, "discard of a page twice");
    this.calls.push({ op: "discard", pfns: gpas.map(toPfn), reason });
    if (this.fail) return Promise.reject(new Error("host out of luck"));
    if (!this.manual) return Promise.resolve();
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  reclaim(gpas: bigint[]): void {
    this.calls.push({ op: "reclaim", pfns: gpas.map(toPfn) });
  }

  /** Let the oldest waiting discard finish. */
  release(): void {
    this.waiting.shift()?.();
  }

  take(): Call[] {
    const c = this.calls;
    this.calls = [];
    return c;
  }
}

function toPfn(gpa: bigint): number {
  return Number(gpa >> 12n);
}

function pfnBuffer(pfns: number[]): Uint8Array {
  const b = new Uint8Array(4 * pfns.length);
  const dv = new DataView(b.buffer);
  pfns.forEach((p, i) => dv.setUint32(4 * i, p >>> 0, true));
  return b;
}

function statsBuffer(entries: [number, bigint][], extra = 0): Uint8Array {
  const b = new Uint8Array(10 * entries.length + extra);
  const dv = new DataView(b.buffer);
  entries.forEach(([tag, val], i) => {
    dv.setUint16(10 * i, tag, true);
    dv.setBigUint64(10 * i + 2, val, true);
  });
  return b;
}

function range(from: number, n: number): number[] {
  return Array.from({ length: n }, (_, i) => from + i);
}

/** Let the discards' promises and what follows them run. */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function setup(opts: VirtioBalloonOptions = {}, features = ALL, mem = new FakeMemory()) {
  let clock = 1_000_000;
  const dev = new VirtioBalloon(mem, { now: () => clock, ...opts });
  const d = new TestDriver(dev);
  d.start(features);
  return { dev, d, mem, tick: (ms: number) => (clock += ms) };
}

function config(d: TestDriver, offset: number): number {
  return Number(d.transport.read(0x100 + offset, 4));
}

test("virtio-balloon offers STATS_VQ, DEFLATE_ON_OOM and PAGE_REPORTING, never MUST_TELL_HOST, FREE_PAGE_HINT or PAGE_POISON", () => {
  const d = new TestDriver(new VirtioBalloon(new FakeMemory()));
  assert.equal(d.reg(0x008), 5);
  const f = d.deviceFeatures();
  for (const bit of [VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_PAGE_REPORTING]) assert.ok(f & bit);
  for (const bit of [VIRTIO_BALLOON_F_MUST_TELL_HOST, VIRTIO_BALLOON_F_FREE_PAGE_HINT, VIRTIO_BALLOON_F_PAGE_POISON]) assert.equal(f & bit, 0n);
  const plain = new TestDriver(new VirtioBalloon(new FakeMemory(), { deflateOnOom: false, reporting: false })).deviceFeatures();
  assert.equal(plain & (VIRTIO_BALLOON_F_DEFLATE_ON_OOM | VIRTIO_BALLOON_F_PAGE_REPORTING), 0n);
  assert.ok(plain & VIRTIO_BALLOON_F_STATS_VQ);
  assert.equal(d.device.queueMaxSizes.length, 4);
});

test("virtio-balloon: setTarget sets num_pages in 4 KiB pages, tells a running driver, and refuses targets outside RAM", () => {
  const mem = new FakeMemory();
  const dev = new VirtioBalloon(mem);
  const d = new TestDriver(dev);
  dev.setTarget(1 << 20); // before the driver: read at probe
  assert.equal(config(d, 0), 256);
  assert.equal(dev.target, 1 << 20);
  d.start(ALL);
  d.ackInterrupts();
  dev.setTarget(5000); // rounds to one page
  assert.equal(config(d, 0), 1);
  assert.equal(d.ackInterrupts() & 2, 2, "config change interrupt");
  dev.setTarget(RAM_BYTES);
  assert.equal(config(d, 0), RAM_BYTES / 4096);
  for (const bad of [-1, RAM_BYTES + 1, NaN, Infinity]) {
    assert.throws(() => dev.setTarget(bad), (e: unknown) => e instanceof BalloonError && !e.message.includes("\n"));
  }
  assert.equal(dev.target, RAM_BYTES, "a refused target changes nothing");
  // free_page_hint_cmd_id and poison_val read 0; num_pages is not the driver's to write.
  assert.equal(config(d, 8), 0);
  assert.equal(config(d, 12), 0);
  d.transport.write(0x100, 4, 7n);
  assert.equal(config(d, 0), RAM_BYTES / 4096);
});

test("virtio-balloon inflates to the target: discards the pages, completes the buffers after, and reads back actual", async () => {
  const { dev, d, mem } = setup();
  dev.setTarget(64 * 4096);
  const a = d.add(INFLATEQ, [{ data: pfnBuffer(range(FREE_PFN, 32)) }]);
  const b = d.add(INFLATEQ, [{ data: pfnBuffer(range(FREE_PFN + 32, 32)) }]);
  d.kick(INFLATEQ);
  assert.deepEqual(d.used(INFLATEQ), [], "nothing completes before the host has the pages");
  await settle();
  assert.deepEqual(d.used(INFLATEQ), [{ id: a, len: 0 }, { id: b, len: 0 }]);
  assert.deepEqual(mem.take(), [
    { op: "discard", pfns: range(FREE_PFN, 32), reason: "balloon" },
    { op: "discard", pfns: range(FREE_PFN + 32, 32), reason: "balloon" },
  ]);
  d.transport.write(0x104, 4, 64n); // the driver's actual
  assert.equal(config(d, 4), 64);
  const s = dev.stats();
  assert.equal(s.targetPages, 64);
  assert.equal(s.actualPages, 64);
  assert.equal(s.balloonedPages, 64);
  assert.equal(s.inflatedTotal, 64);
  // A partial write of actual changes only its bytes.
  d.transport.write(0x105, 1, 1n);
  assert.equal(config(d, 4), 64 + 256);
});

test("virtio-balloon deflate gives ballooned pages back through reclaim, and refuses pages not in the balloon", async () => {
  const { dev, d, mem } = setup();
  d.add(INFLATEQ, [{ data: pfnBuffer(range(FREE_PFN, 8)) }]);
  d.kick(INFLATEQ);
  await settle();
  mem.take();
  const h = d.add(DEFLATEQ, [{ data: pfnBuffer([FREE_PFN + 1, FREE_PFN + 2, FREE_PFN + 100, FREE_PFN + 1]) }]);
  d.kick(DEFLATEQ);
  assert.deepEqual(d.used(DEFLATEQ), [{ id: h, len: 0 }]);
  assert.deepEqual(mem.take(), [{ op: "reclaim", pfns: [FREE_PFN + 1, FREE_PFN + 2] }]);
  const s = dev.stats();
  assert.equal(s.balloonedPages, 6);
  assert.equal(s.deflatedTotal, 2);
  assert.equal(s.refused.notBallooned, 1);
  assert.equal(s.refused.duplicate, 1);
  // Deflated pages can be inflated again.
  d.add(INFLATEQ, [{ data: pfnBuffer([FREE_PFN + 1]) }]);
  d.kick(INFLATEQ);
  await settle();
  assert.deepEqual(mem.take(), [{ op: "discard", pfns: [FREE_PFN + 1], reason: "balloon" }]);
});

test("virtio-balloon does one request at a time, in order: a deflate waits for the inflate before it", async () => {
  const { d, mem } = setup();
  mem.manual = true;
  const a = d.add(INFLATEQ, [{ data: pfnBuffer([FREE_PFN, FREE_PFN + 1]) }]);
  const b = d.add(INFLATEQ, [{ data: pfnBuffer([FREE_PFN + 2]) }]);
  d.kick(INFLATEQ);
  const c = d.add(DEFLATEQ, [{ data: pfnBuffer([FREE_PFN]) }]);
  d.kick(DEFLATEQ);
  d.kick(INFLATEQ); // more notifications meanwhile change nothing
  await settle();
  assert.deepEqual(mem.take(), [{ op: "discard", pfns: [FREE_PFN, FREE_PFN + 1], reason: "balloon" }]);
  assert.deepEqual(d.used(INFLATEQ), []);
  assert.deepEqual(d.used(DEFLATEQ), []);
  mem.release();
  await settle();
  assert.deepEqual(d.used(INFLATEQ), [{ id: a, len: 0 }]);
  // Round robin: the deflate comes after the first inflate; it is synchronous, then the second inflate starts.
  assert.deepEqual(d.used(DEFLATEQ), [{ id: c, len: 0 }]);
  assert.deepEqual(mem.take(), [{ op: "reclaim", pfns: [FREE_PFN] }, { op: "discard", pfns: [FREE_PFN + 2], reason: "balloon" }]);
  mem.release();
  await settle();
  assert.deepEqual(d.used(INFLATEQ), [{ id: b, len: 0 }]);
});

test("virtio-balloon: hostile inflate buffers are counted and skipped, never thrown", async () => {
  const { dev, d, mem } = setup();
  const pfns = [0, 0xffff_ffff, BASE_PFN - 1, BASE_PFN + RAM_BYTES / 4096, FREE_PFN, FREE_PFN, FREE_PFN + 1];
  const h = d.add(INFLATEQ, [{ data: pfnBuffer(pfns) }]);
  d.kick(INFLATEQ);
  await settle();
  assert.deepEqual(d.used(INFLATEQ), [{ id: h, len: 0 }]);
  assert.deepEqual(mem.take(), [{ op: "discard", pfns: [FREE_PFN, FREE_PFN + 1], reason: "balloon" }]);
  // Already ballooned, and malformed buffers: odd length, device-writable, too long.
  const again = d.add(INFLATEQ, [{ data: pfnBuffer([FREE_PFN]) }]);
  const odd = d.add(INFLATEQ, [{ data: new Uint8Array(6) }]);
  const writable = d.add(INFLATEQ, [{ data: pfnBuffer([FREE_PFN + 5]) }, { writeLen: 4 }]);
  const huge = d.add(INFLATEQ, [{ data: new Uint8Array(4 * 16385) }]);
  const empty = d.add(INFLATEQ, [{ data: new Uint8Array(0) }]);
  d.kick(INFLATEQ);
  await settle();
  assert.deepEqual(d.used(INFLATEQ).map((u) => u.id), [again, odd, writable, huge, empty]);
  assert.deepEqual(mem.take(), []);
  const r = dev.stats().refused;
  assert.equal(r.outsideRam, 4);
  assert.equal(r.duplicate, 1);
  assert.equal(r.alreadyBallooned, 1);
  assert.equal(r.malformed, 3);
  assert.equal(d.status & STATUS_DEVICE_NEEDS_RESET, 0);
});

test("virtio-balloon: inflating more than guest RAM stops at guest RAM", async () => {
  const mem = new FakeMemory(1 << 20); // the memory manager's RAM: 256 pages
  const { dev, d } = setup({}, ALL, mem);
  dev.setTarget(1 << 20);
  for (let i = 0; i < 5; i++) d.add(INFLATEQ, [{ data: pfnBuffer(range(BASE_PFN + 100 * i, 100)) }]);
  d.add(INFLATEQ, [{ data: pfnBuffer(range(BASE_PFN, 256)) }]); // all again
  d.kick(INFLATEQ);
  await settle();
  assert.equal(d.used(INFLATEQ).length, 6);
  const s = dev.stats();
  assert.equal(s.balloonedPages, 256);
  assert.equal(s.refused.outsideRam, 500 - 256);
  assert.equal(s.refused.alreadyBallooned, 256);
  assert.throws(() => dev.setTarget((1 << 20) + 4096), BalloonError);
});

test("virtio-balloon holds the stats buffer and asks for fresh figures every statsIntervalMs", () => {
  const { dev, d, tick } = setup({ statsIntervalMs: 1000 });
  assert.deepEqual(dev.guestStats(), {});
  const first = d.add(STATSQ, [{ data: statsBuffer([[4, 1000n * 4096n], [5, 4n << 30n], [6, 3n << 30n], [0, 0n], [2, 7n], [3, 99n], [7, 1n << 20n]]) }]);
  d.kick(STATSQ);
  assert.deepEqual(d.used(STATSQ), [], "held");
  const g = dev.guestStats();
  assert.equal(g.freeBytes, 1000 * 4096);
  assert.equal(g.totalBytes, 4 * 2 ** 30);
  assert.equal(g.availableBytes, 3 * 2 ** 30);
  assert.equal(g.swapIn, 0);
  assert.equal(g.swapOut, undefined);
  assert.equal(g.majorFaults, 7);
  assert.equal(g.minorFaults, 99);
  assert.equal(g.cachesBytes, 1 << 20);
  assert.equal(g.updatedAt, 1_000_000);
  tick(500);
  d.device.poll!();
  assert.deepEqual(d.used(STATSQ), []);
  tick(500);
  d.transport.poll();
  assert.deepEqual(d.used(STATSQ), [{ id: first, len: 0 }], "given back to ask for fresh figures");
  // The driver refills it.
  tick(10);
  d.add(STATSQ, [{ data: statsBuffer([[4, 5n]]) }]);
  d.kick(STATSQ);
  assert.equal(dev.guestStats().freeBytes, 5);
  assert.equal(dev.guestStats().totalBytes, undefined, "only what the last report said");
  assert.equal(dev.guestStats().updatedAt, 1_001_010);
  assert.deepEqual(d.used(STATSQ), []);
  tick(989);
  d.transport.poll();
  assert.deepEqual(d.used(STATSQ), [], "a second from the last request, not from the answer");
  tick(1);
  d.transport.poll();
  assert.equal(d.used(STATSQ).length, 1);
  assert.equal(dev.stats().guest.freeBytes, 5);
  assert.ok(dev.statsLines().length === 2);
});

test("virtio-balloon finds a stats buffer the driver kicked before DRIVER_OK (Linux's init_vqs does)", () => {
  const dev = new VirtioBalloon(new FakeMemory(), { now: () => 5 });
  const d = new TestDriver(dev);
  assert.ok(d.negotiate(ALL));
  for (let i = 0; i < dev.queueMaxSizes.length; i++) d.setupQueue(i, 16);
  d.add(STATSQ, [{ data: statsBuffer([[4, 4096n]]) }]);
  d.kick(STATSQ); // dropped by the transport: not DRIVER_OK yet
  assert.deepEqual(dev.guestStats(), {});
  d.driverOk();
  assert.deepEqual(dev.guestStats(), { freeBytes: 4096, updatedAt: 5 });
  assert.deepEqual(d.used(STATSQ), [], "held, to ask for fresh figures later");
});

test("virtio-balloon with statsIntervalMs 0 keeps the first stats buffer", () => {
  const { dev, d, tick } = setup({ statsIntervalMs: 0 });
  d.add(STATSQ, [{ data: statsBuffer([[5, 123n]]) }]);
  d.kick(STATSQ);
  tick(1e9);
  d.transport.poll();
  assert.deepEqual(d.used(STATSQ), []);
  assert.equal(dev.guestStats().totalBytes, 123);
});

test("virtio-balloon: garbage statistics are ignored and counted, never trusted", () => {
  const { dev, d } = setup({ statsIntervalMs: 1000 });
  // Unknown tag, Linux 6.12's OOM kill count (known, not kept), and a trailing partial entry.
  d.add(STATSQ, [{ data: statsBuffer([[999, 1n], [10, 3n], [4, 8192n]], 3) }]);
  d.kick(STATSQ);
  assert.equal(dev.guestStats().freeBytes, 8192);
  assert.equal(dev.stats().refused.statsIgnored, 2);
  // A second buffer while one is held: the first goes back.
  const huge = new Uint8Array(64 * 1024);
  huge.fill(0xff);
  const h = d.add(STATSQ, [{ data: huge }]);
  d.kick(STATSQ);
  assert.equal(d.used(STATSQ).length, 1);
  assert.equal(dev.guestStats().freeBytes, undefined);
  assert.ok(dev.stats().refused.statsIgnored > 2);
  // Device-writable buffers have no place here.
  const w = d.add(STATSQ, [{ writeLen: 10 }]);
  d.kick(STATSQ);
  assert.deepEqual(d.used(STATSQ), [{ id: h, len: 0 }, { id: w, len: 0 }]);
  assert.equal(dev.stats().refused.malformed, 1);
  assert.equal(d.status & STATUS_DEVICE_NEEDS_RESET, 0);
});

test("virtio-balloon: free page reports discard the ranges without ballooning them", async () => {
  const { dev, d, mem } = setup();
  const REPORTQ = 3; // with STATS_VQ
  const at = (pfn: number) => BigInt(pfn) << 12n;
  const h = d.addSegments(REPORTQ, [
    { addr: at(FREE_PFN), len: 2 * 4096, writable: true }, // Linux adds them device-writable
    { addr: at(FREE_PFN + 16), len: 4096, writable: true },
  ]);
  d.kick(REPORTQ);
  assert.deepEqual(d.used(REPORTQ), []);
  await settle();
  assert.deepEqual(d.used(REPORTQ), [{ id: h, len: 0 }]);
  assert.deepEqual(mem.take(), [{ op: "discard", pfns: [FREE_PFN, FREE_PFN + 1, FREE_PFN + 16], reason: "reported" }]);
  const s = dev.stats();
  assert.equal(s.reportedTotal, 3);
  assert.equal(s.balloonedPages, 0);
  // The guest reports the same pages again later: that is fine, they were never ballooned.
  d.addSegments(REPORTQ, [{ addr: at(FREE_PFN), len: 4096 }]);
  d.kick(REPORTQ);
  await settle();
  assert.deepEqual(mem.take(), [{ op: "discard", pfns: [FREE_PFN], reason: "reported" }]);
});

test("virtio-balloon: misaligned, overlapping and foreign report ranges are refused and counted", async () => {
  const mem = new FakeMemory(3 << 20); // the last MiB of the driver's memory is not guest RAM to the host
  const { dev, d } = setup({}, ALL, mem);
  const REPORTQ = 3;
  const at = (pfn: number) => BigInt(pfn) << 12n;
  d.add(INFLATEQ, [{ data: pfnBuffer([FREE_PFN + 40]) }]);
  d.kick(INFLATEQ);
  await settle();
  mem.take();
  const h = d.addSegments(REPORTQ, [
    { addr: at(FREE_PFN) + 512n, len: 4096, writable: true }, // misaligned address
    { addr: at(FREE_PFN), len: 4095, writable: true }, // length not whole pages
    { addr: at(FREE_PFN + 32), len: 2 * 4096, writable: true },
    { addr: at(FREE_PFN + 33), len: 4096, writable: true }, // overlaps the one before
    { addr: at(FREE_PFN + 40), len: 4096, writable: true }, // in the balloon
    { addr: TEST_RAM + (3n << 20n), len: 4096, writable: true }, // outside the host's RAM
  ]);
  d.kick(REPORTQ);
  await settle();
  assert.deepEqual(d.used(REPORTQ), [{ id: h, len: 0 }]);
  assert.deepEqual(mem.take(), [{ op: "discard", pfns: [FREE_PFN + 32, FREE_PFN + 33], reason: "reported" }]);
  const r = dev.stats().refused;
  assert.equal(r.badRange, 2);
  assert.equal(r.duplicate, 1);
  assert.equal(r.alreadyBallooned, 1);
  assert.equal(r.outsideRam, 1);
  assert.equal(d.status & STATUS_DEVICE_NEEDS_RESET, 0);
});

test("virtio-balloon maps queue indexes from the features: reporting_vq is 2 without STATS_VQ", async () => {
  const mem = new FakeMemory();
  const dev = new VirtioBalloon(mem);
  const d = new TestDriver(dev);
  // As Linux over virtio-mmio: only the queues it uses, numbered without gaps.
  assert.ok(d.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_PAGE_REPORTING));
  for (const i of [0, 1, 2]) d.setupQueue(i, 16);
  d.driverOk();
  const h = d.addSegments(2, [{ addr: BigInt(FREE_PFN) << 12n, len: 4096, writable: true }]);
  d.kick(2);
  await settle();
  assert.deepEqual(d.used(2), [{ id: h, len: 0 }]);
  assert.deepEqual(mem.take(), [{ op: "discard", pfns: [FREE_PFN], reason: "reported" }]);
  assert.deepEqual(dev.guestStats(), {});

  // With both: statsq 2, reporting_vq 3.
  d.negotiate(ALL);
  for (const i of [0, 1, 2, 3]) d.setupQueue(i, 16);
  d.driverOk();
  d.add(2, [{ data: statsBuffer([[5, 42n]]) }]);
  d.kick(2);
  assert.equal(dev.guestStats().totalBytes, 42);
  assert.deepEqual(d.used(2), []);
  d.addSegments(3, [{ addr: BigInt(FREE_PFN + 1) << 12n, len: 4096, writable: true }]);
  d.kick(3);
  await settle();
  assert.equal(d.used(3).length, 1);
  assert.deepEqual(mem.take(), [{ op: "discard", pfns: [FREE_PFN + 1], reason: "reported" }]);

  // Neither: a queue 2 the driver set up anyway is nobody's.
  d.negotiate(VIRTIO_F_VERSION_1);
  for (const i of [0, 1, 2]) d.setupQueue(i, 16);
  d.driverOk();
  d.add(2, [{ data: statsBuffer([[5, 1n]]) }]);
  d.kick(2);
  await settle();
  assert.deepEqual(d.used(2), []);
  assert.equal(dev.guestStats().totalBytes, 42);
});

test("virtio-balloon: a device reset gives every ballooned page back, an inflate under way once its discard ends", async () => {
  const { dev, d, mem } = setup();
  d.add(INFLATEQ, [{ data: pfnBuffer(range(FREE_PFN, 4)) }]);
  d.kick(INFLATEQ);
  await settle();
  mem.manual = true;
  d.add(INFLATEQ, [{ data: pfnBuffer([FREE_PFN + 10]) }]);
  d.kick(INFLATEQ);
  await settle();
  mem.take();
  d.setReg(0x70, 0); // reset
  assert.deepEqual(mem.take(), [{ op: "reclaim", pfns: range(FREE_PFN, 4) }]);
  // The driver comes back and inflates the page whose discard is still under way: it waits.
  d.start(ALL);
  const h = d.add(INFLATEQ, [{ data: pfnBuffer([FREE_PFN + 10]) }]);
  d.kick(INFLATEQ);
  await settle();
  assert.deepEqual(mem.take(), []);
  mem.release();
  await settle();
  assert.deepEqual(mem.take(), [{ op: "reclaim", pfns: [FREE_PFN + 10] }, { op: "discard", pfns: [FREE_PFN + 10], reason: "balloon" }]);
  mem.release();
  await settle();
  assert.deepEqual(d.used(INFLATEQ), [{ id: h, len: 0 }], "only the new driver's request is completed");
  assert.equal(dev.stats().balloonedPages, 1);
  assert.equal(config(d, 4), 0, "actual starts again at 0");
});

test("virtio-balloon: a failed discard is counted and the buffer still completed", async () => {
  const { dev, d, mem } = setup();
  mem.fail = true;
  const h = d.add(INFLATEQ, [{ data: pfnBuffer([FREE_PFN]) }]);
  d.kick(INFLATEQ);
  await settle();
  assert.deepEqual(d.used(INFLATEQ), [{ id: h, len: 0 }]);
  assert.equal(dev.stats().discardErrors, 1);
  assert.equal(dev.stats().balloonedPages, 1, "the guest gave it up all the same");
  assert.ok(dev.statsLines()[0].includes("1 discard errors"));
});

test("virtio-balloon: a queue stopped while its discard was under way is not touched again", async () => {
  const { d, mem } = setup();
  mem.manual = true;
  d.add(INFLATEQ, [{ data: pfnBuffer([FREE_PFN]) }]);
  d.kick(INFLATEQ);
  await settle();
  const usedIdx = d.mem.readU16(d.queueLayout(INFLATEQ).used + 2n);
  d.setReg(0x30, INFLATEQ);
  d.setReg(0x44, 0); // QueueReady = 0
  mem.release();
  await settle();
  assert.equal(d.mem.readU16(d.queueLayout(INFLATEQ).used + 2n), usedIdx);
  assert.equal(d.status & STATUS_DEVICE_NEEDS_RESET, 0);
});

test("virtio-balloon: a used ring broken under a discard sets DEVICE_NEEDS_RESET instead of throwing", async () => {
  const { d, mem } = setup();
  mem.manual = true;
  d.add(INFLATEQ, [{ data: pfnBuffer([FREE_PFN]) }]);
  d.kick(INFLATEQ);
  await settle();
  // The driver moves its available index by more than the queue size before the device pushes and pops again.
  d.add(INFLATEQ, [{ data: pfnBuffer([FREE_PFN + 1]) }]);
  d.mem.writeU16(d.queueLayout(INFLATEQ).avail + 2n, 0x8000);
  mem.release();
  await settle();
  assert.ok(d.status & STATUS_DEVICE_NEEDS_RESET);
  assert.ok(d.warnings.some((w) => w.includes("needs a reset")));
});

import { SnapshotError, StateReader } from "../../snapshot/state.js";

test("virtio-balloon snapshot: pauseIo lets the discard under way finish; target, balloon and held stats buffer come back", async () => {
  const { dev, d, mem, tick } = setup({ statsIntervalMs: 1000 });
  const stats = d.add(STATSQ, [{ data: statsBuffer([[4, 4096n]]) }]);
  d.kick(STATSQ);
  dev.setTarget(8 * 4096);
  const a = d.add(INFLATEQ, [{ data: pfnBuffer(range(FREE_PFN, 4)) }]);
  d.kick(INFLATEQ);
  await settle();
  assert.deepEqual(d.used(INFLATEQ), [{ id: a, len: 0 }]);
  mem.manual = true;
  const b = d.add(INFLATEQ, [{ data: pfnBuffer([FREE_PFN + 10]) }]);
  d.kick(INFLATEQ);
  const c = d.add(DEFLATEQ, [{ data: pfnBuffer([FREE_PFN]) }]);
  d.kick(DEFLATEQ);
  d.transport.write(0x104, 4, 4n); // the driver says what it holds (actual)
  const pausing = d.transport.pauseIo();
  mem.release();
  await pausing;
  await settle();
  assert.deepEqual(d.used(INFLATEQ), [{ id: b, len: 0 }], "the request in hand completed");
  assert.deepEqual(d.used(DEFLATEQ), [], "no new request taken while paused");
  tick(5000);
  d.transport.poll();
  assert.deepEqual(d.used(STATSQ), [], "the stats buffer is not given back while paused");
  const state = JSON.parse(JSON.stringify(d.transport.saveState()));
  assert.deepEqual(state.device.ballooned, [FREE_PFN, 4, FREE_PFN + 10, 1]);
  assert.deepEqual(state.device.statsHeld, [stats]);
  assert.equal(state.device.numPages, 8);
  assert.equal(state.device.actual, 4);
  assert.equal(state.device.guest.freeBytes, 4096);

  const mem2 = new FakeMemory();
  let clock = 5_000_000;
  const dev2 = new VirtioBalloon(mem2, { statsIntervalMs: 1000, now: () => clock });
  const d2 = TestDriver.restored(dev2, d);
  d2.transport.restoreState(new StateReader(state, "balloon0"));
  assert.deepEqual(mem2.take(), [], "the memory manager's own state comes with guest memory, not from the balloon");
  d2.transport.resumeIo();
  assert.deepEqual(d2.used(DEFLATEQ), [{ id: c, len: 0 }], "the deflate made available before the snapshot is done");
  assert.deepEqual(mem2.take(), [{ op: "reclaim", pfns: [FREE_PFN] }]);
  assert.equal(dev2.target, 8 * 4096);
  assert.equal(Number(d2.transport.read(0x104, 4)), 4);
  assert.equal(dev2.stats().balloonedPages, 4);
  assert.equal(dev2.guestStats().freeBytes, 4096);
  d2.transport.poll();
  assert.deepEqual(d2.used(STATSQ), [], "fresh figures are asked for an interval after the restore");
  clock += 1000;
  d2.transport.poll();
  assert.deepEqual(d2.used(STATSQ), [{ id: stats, len: 0 }], "the held stats buffer is given back by head");
  // A reset gives back what the restored balloon holds.
  d2.setReg(0x70, 0);
  assert.deepEqual(mem2.take(), [{ op: "reclaim", pfns: [FREE_PFN + 1, FREE_PFN + 2, FREE_PFN + 3, FREE_PFN + 10] }]);
  assert.deepEqual(d2.warnings, []);
});

test("virtio-balloon snapshot: tampered state is refused", async () => {
  const { dev, d } = setup({ statsIntervalMs: 1000 });
  d.add(STATSQ, [{ data: statsBuffer([[4, 4096n]]) }]);
  d.kick(STATSQ);
  d.add(INFLATEQ, [{ data: pfnBuffer(range(FREE_PFN, 2)) }]);
  d.kick(INFLATEQ);
  await settle();
  assert.equal(dev.stats().balloonedPages, 2);
  const state = (await d.snapshot()) as { [k: string]: any };
  const ramPages = RAM_BYTES / 4096;
  const cases: [(s: any) => void, RegExp][] = [
    [(s) => (s.device.ballooned = [1, 1]), /balloon0\.device\.ballooned\[0\]: pages 0x1\+1 are not guest RAM/],
    [(s) => (s.device.ballooned = [FREE_PFN, 2, FREE_PFN + 1, 1]), /balloon0\.device\.ballooned\[2\]: ranges must be non-empty and in increasing order/],
    [(s) => (s.device.ballooned = [FREE_PFN, 0]), /ranges must be non-empty/],
    [(s) => (s.device.ballooned = [FREE_PFN]), /balloon0\.device\.ballooned: expected \[first PFN, count\] pairs/],
    [(s) => (s.device.ballooned = [BASE_PFN, ramPages + 1]), /balloon0\.device\.ballooned: more pages than guest RAM has/],
    [(s) => (s.device.ballooned = [-1, 1]), /balloon0\.device\.ballooned\[0\]: expected an integer 0\.\./],
    [(s) => (s.device.numPages = ramPages + 1), /balloon0\.device\.numPages: expected an integer 0\.\.1024/],
    [(s) => (s.device.statsHeld = [128]), /balloon0\.device\.statsHeld\[0\]: expected an integer 0\.\.15/],
    [(s) => (s.device.statsHeld = []), /balloon0\.device\.statsHeld: 0 requests held, but queue 2 has 1 in flight/],
    [(s) => (s.device.statsHeld = [0, 1]), /balloon0\.device\.statsHeld: 2 requests held, but queue 2 has 1/],
    [(s) => (s.device.guest = { freeBytes: "lots" }), /balloon0\.device\.guest\.freeBytes: expected a number >= 0/],
    [(s) => (s.queues[0].indices.lastAvail = 2), /balloon0\.device: queue 0 has 1 requests in flight/],
    [(s) => delete s.device.actual, /balloon0\.device\.actual: missing/],
  ];
  for (const [tamper, message] of cases) {
    const bad = structuredClone(state);
    tamper(bad);
    const mem2 = new FakeMemory();
    const d2 = TestDriver.restored(new VirtioBalloon(mem2), d);
    assert.throws(() => d2.transport.restoreState(new StateReader(bad, "balloon0")), (e: unknown) => e instanceof SnapshotError && message.test(e.message), message.source);
    assert.deepEqual(mem2.take(), [], "nothing half-restored to give back");
  }
});
