// A hostile driver against virtio-balloon, seeded and bounded. fuzz.test.ts
// cannot take the balloon: its steps never yield, and inflates and reports
// complete only after the host's asynchronous discard. So this run awaits
// between steps and checks, after each, what matters for a balloon:
// - no exception escapes the transport, and nothing is left unhandled;
// - the device writes guest memory only in its used rings (it has nothing to
//   write into buffers), never outside guest RAM, never another VM's frames;
// - the memory manager is asked only sensible things: discards of distinct,
//   aligned RAM pages, never a ballooned page twice and never a reported one
//   that is ballooned, reclaims only of ballooned pages;
// - the balloon never holds more than guest RAM, and a reset gives all of it back.
// TSVISOR_FUZZ_SEED / TSVISOR_FUZZ_ITERATIONS explore further.

import { test } from "node:test";
import assert from "node:assert/strict";
import { TestDriver, TEST_RAM } from "./test-driver.js";
import { VirtioBalloon, type BalloonMemory, VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_PAGE_REPORTING } from "./balloon.js";
import { VIRTIO_F_VERSION_1, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX, STATUS_DRIVER_OK, STATUS_DEVICE_NEEDS_RESET } from "./virtio.js";
import { Rand, HostMemory, type Range } from "./fuzz-harness.js";

const SEED = Number(process.env.TSVISOR_FUZZ_SEED ?? 0xba11_0005);
const ITERATIONS = Number(process.env.TSVISOR_FUZZ_ITERATIONS ?? 1000);
const RAM_BYTES = 4 << 20;
const RAM_PAGES = RAM_BYTES / 4096;
const BASE_PFN = Number(TEST_RAM >> 12n);

/** The memory manager as a strict referee: every call is checked against the state of each page. */
class RefereeMemory implements BalloonMemory {
  readonly ramBytes = RAM_BYTES;
  readonly ballooned = new Set<number>();
  problems: string[] = [];
  discards = 0;
  reclaims = 0;
  private waiting: { resolve: () => void; reject: (e: Error) => void }[] = [];

  isRam(gpa: bigint, len: number): boolean {
    return len >= 0 && gpa >= TEST_RAM && gpa + BigInt(len) <= TEST_RAM + BigInt(RAM_BYTES);
  }

  discard(gpas: bigint[], reason: "balloon" | "reported"): Promise<void> {
    this.discards++;
    if (gpas.length === 0) this.problems.push("empty discard");
    const seen = new Set<bigint>();
    for (const g of gpas) {
      if (g % 4096n !== 0n || !this.isRam(g, 4096)) this.problems.push(`discard of 0x${g.toString(16)}: not an aligned RAM page`);
      if (seen.has(g)) this.problems.push(`discard names 0x${g.toString(16)} twice`);
      seen.add(g);
      const pfn = Number(g >> 12n);
      if (this.ballooned.has(pfn)) this.problems.push(`${reason} discard of page 0x${pfn.toString(16)}, which is in the balloon`);
      if (reason === "balloon") this.ballooned.add(pfn);
    }
    if (this.ballooned.size > RAM_PAGES) this.problems.push(`balloon of ${this.ballooned.size} pages`);
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  reclaim(gpas: bigint[]): void {
    this.reclaims++;
    for (const g of gpas) {
      const pfn = Number(g >> 12n);
      if (!this.ballooned.delete(pfn)) this.problems.push(`reclaim of page 0x${pfn.toString(16)}, which is not in the balloon`);
    }
  }

  /** Finish the oldest discard (now and then it fails). */
  finish(r: Rand): void {
    const w = this.waiting.shift();
    if (!w) return;
    if (r.chance(0.05)) w.reject(new Error("host trouble"));
    else w.resolve();
  }

  get pending(): number {
    return this.waiting.length;
  }
}

function pfnBytes(pfns: number[]): Uint8Array {
  const b = new Uint8Array(4 * pfns.length);
  const dv = new DataView(b.buffer);
  pfns.forEach((p, i) => dv.setUint32(4 * i, p >>> 0, true));
  return b;
}

function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

test(`fuzz: virtio-balloon survives a hostile driver (seeded, ${ITERATIONS} steps)`, async () => {
  const r = new Rand(SEED);
  const where = (i: number) => `seed 0x${SEED.toString(16)}, iteration ${i}`;
  const host = new HostMemory(TEST_RAM, RAM_BYTES, 32);
  const mem = new RefereeMemory();
  let clock = 0;
  const dev = new VirtioBalloon(mem, { statsIntervalMs: 100, now: () => clock });
  const d = new TestDriver(dev, host.driverView, { deviceMem: host.deviceView });
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown) => unhandled.push(e);
  process.on("unhandledRejection", onUnhandled);
  let live = 0;
  let writesChecked = 0;
  let resets = 0;
  let features = 0n;

  const restart = () => {
    features = VIRTIO_F_VERSION_1;
    for (const f of [VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_PAGE_REPORTING, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX]) {
      if (r.chance(0.6)) features |= f;
    }
    d.start(features, r.pick([2, 4, 16]));
  };
  /** Where the device may write: the used rings (with avail_event). */
  const usedRings = (): Range[] =>
    [0, 1, 2, 3].map((i) => {
      const q = d.queueLayout(i);
      return q ? { start: q.used, end: q.used + BigInt(6 + 8 * q.size) } : { start: 0n, end: 0n };
    });
  const pagePfn = () => r.weighted<() => number>([
    [6, () => BASE_PFN + 0x200 + r.int(RAM_PAGES - 0x200)], // a page the driver does not use
    [2, () => BASE_PFN + r.int(RAM_PAGES)], // any page of RAM, rings included
    [1, () => r.u32()],
    [1, () => r.pick([0, BASE_PFN - 1, BASE_PFN + RAM_PAGES, 0xffff_ffff])],
  ])();

  try {
    restart();
    for (let i = 0; i < ITERATIONS; i++) {
      const at = where(i);
      host.deviceView.writes = [];
      const status = d.status;
      if (!(status & STATUS_DRIVER_OK) || status & STATUS_DEVICE_NEEDS_RESET || r.chance(0.02)) {
        resets++;
        restart();
      } else live++;
      const rings = usedRings();
      const kind = r.weighted<string>([[5, "pfns"], [2, "stats"], [3, "report"], [1, "junk-head"], [2, "poll"], [1, "target"]]);
      // Mostly the queue meant for the request (Linux's numbering: without gaps), sometimes any.
      const statsq = features & VIRTIO_BALLOON_F_STATS_VQ ? 2 : -1;
      const reportq = features & VIRTIO_BALLOON_F_PAGE_REPORTING ? (statsq === 2 ? 3 : 2) : -1;
      const meant = kind === "pfns" ? r.int(2) : kind === "stats" ? statsq : kind === "report" ? reportq : -1;
      const q = meant >= 0 && r.chance(0.7) ? meant : r.int(4);
      try {
        switch (kind) {
          case "pfns": {
            const pfns: number[] = [];
            for (let n = r.range(0, 40); n > 0; n--) pfns.push(pfns.length > 0 && r.chance(0.1) ? r.pick(pfns) : pagePfn());
            let data = pfnBytes(pfns);
            if (r.chance(0.1)) data = data.subarray(0, Math.max(0, data.length - r.range(1, 3)));
            d.add(q, r.chance(0.1) ? [{ data }, { writeLen: r.range(1, 64) }] : [{ data }], { indirect: (features & VIRTIO_F_INDIRECT_DESC) !== 0n && r.chance(0.3) });
            break;
          }
          case "stats":
            d.add(q, [{ data: r.chance(0.5) ? r.bytes(r.range(0, 200)) : r.bytes(10 * r.range(0, 20)) }]);
            break;
          case "report": {
            const segs = [];
            for (let n = r.range(1, 6); n > 0; n--) {
              const pfn = BASE_PFN + 0x200 + r.int(RAM_PAGES - 0x200);
              segs.push({
                addr: (BigInt(pfn) << 12n) + (r.chance(0.1) ? BigInt(r.range(1, 4095)) : 0n),
                len: r.chance(0.1) ? r.range(1, 20000) : 4096 * r.range(1, 8),
                writable: r.chance(0.7),
              });
            }
            d.addSegments(q, segs);
            break;
          }
          case "junk-head":
            d.publish(q, r.int(0x1_0000));
            break;
          case "poll":
            clock += r.range(0, 300);
            d.transport.poll();
            break;
          case "target":
            dev.setTarget(4096 * r.int(RAM_PAGES + 1));
            break;
        }
        if (kind !== "poll" && kind !== "target") d.kick(r.chance(0.9) ? q : r.int(6));
        while (mem.pending > 0 && r.chance(0.6)) mem.finish(r);
        await settle();
      } catch (e) {
        assert.fail(`${at}: ${kind} on queue ${q}: an exception escaped: ${e instanceof Error ? e.stack : String(e)}`);
      }
      assert.equal(host.deviceView.outside.length, 0, `${at}: access outside guest RAM: ${host.deviceView.outside.slice(0, 3).join("; ")}`);
      const allowed = [...rings, ...usedRings()];
      writesChecked += host.deviceView.writes.length;
      for (const w of host.deviceView.writes) {
        assert.ok(allowed.some((a) => w.start >= a.start && w.end <= a.end), `${at}: ${kind}: the device wrote [0x${w.start.toString(16)}, 0x${w.end.toString(16)}), not a used ring`);
      }
      assert.deepEqual(mem.problems, [], `${at}: ${kind}`);
      assert.ok(dev.stats().balloonedPages <= RAM_PAGES, `${at}: balloon larger than RAM`);
      assert.deepEqual(unhandled, [], `${at}: unhandled rejection`);
    }
    // Everything finishes, a reset gives the whole balloon back, and the host's frames around the VM are untouched.
    while (mem.pending > 0) {
      mem.finish(r);
      await settle();
    }
    d.setReg(0x70, 0);
    while (mem.pending > 0) {
      mem.finish(r);
      await settle();
    }
    assert.equal(mem.ballooned.size, 0, "pages left in the balloon after a reset");
    assert.equal(dev.stats().balloonedPages, 0);
    assert.deepEqual(mem.problems, []);
    assert.ok(host.neighbourIntact(), "another VM's frames changed");
    assert.equal(host.foreignIntact(), undefined);
    // A fresh driver is served.
    d.start(VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_PAGE_REPORTING);
    const h = d.add(0, [{ data: pfnBytes([BASE_PFN + 0x300]) }]);
    d.kick(0);
    await settle();
    mem.finish(new Rand(1));
    await settle();
    assert.deepEqual(d.used(0), [{ id: h, len: 0 }]);
    assert.ok(mem.ballooned.has(BASE_PFN + 0x300));
    // The run reached the device's paths.
    const s = dev.stats();
    const enough = ITERATIONS / 50;
    for (const [what, n] of [["live steps", live / 10], ["device writes checked", writesChecked / 10], ["inflated pages", s.inflatedTotal / 10], ["deflated pages", s.deflatedTotal], ["reported pages", s.reportedTotal / 10], ["discards", mem.discards], ["resets", resets], ["refusals", Object.values(s.refused).reduce((a, b) => a + b, 0) / 10]] as const) {
      assert.ok(n >= enough, `too few ${what}: ${JSON.stringify(s)}`);
    }
  } finally {
    process.off("unhandledRejection", onUnhandled);
  }
});
