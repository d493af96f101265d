// virtio-balloon with Debian's own driver (virtio_balloon, loaded by init
// from the device's modalias): the host takes memory back from a running
// guest and gives it back, the guest's statistics arrive, and memory a guest
// process frees returns to the host's pool by itself (free page reporting).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Host } from "../../host/host.js";
import { defineGuest, type Guest } from "../../host/testing/guests.js";

const MiB = 1 << 20;
/** The guest writes 80 MiB of random bytes into a tmpfs file (1 MiB of them,
 *  80 times: the guest's own random generator is slow interpreted) and deletes
 *  it: its pages are then free in the guest and still backed by host frames. */
const FILL_AND_FREE = "head -c 1048576 /dev/urandom > /tmp/a; for i in $(seq 80); do cat /tmp/a; done > /tmp/x; echo filled; rm /tmp/x /tmp/a; echo freed; while :; do sleep 1; done";

async function until(what: string, ok: () => boolean, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const pages = (g: Guest) => g.vm.stats().memory!.pages;

test("the balloon inflates to take frames back from a running guest and deflates to give them back; the guest's statistics arrive", { timeout: 240_000 }, async () => {
  const host = await Host.create({ pcpus: 2, overcommit: { sharing: false } });
  try {
    const g = defineGuest(host, "squeezed", ["sh", "-c", FILL_AND_FREE], { memBytes: 256 * MiB, balloon: { reporting: false, statsIntervalMs: 500 } });
    g.vm.start();
    await g.waitFor(/freed/, 120_000);
    await until("the driver's first statistics", () => g.vm.balloonStats()?.guest.totalBytes !== undefined);
    const guest = g.vm.balloonStats()!.guest;
    assert.ok(guest.totalBytes! > 150 * MiB && guest.totalBytes! <= 256 * MiB, `MemTotal ${guest.totalBytes}`);
    assert.ok(guest.freeBytes! > 64 * MiB, `MemFree ${guest.freeBytes}`);

    const before = g.vm.stats().residentBytes;
    g.vm.setBalloon(128 * MiB);
    await until("the balloon to reach 128 MiB", () => g.vm.balloonStats()!.actualPages === 32768);
    assert.equal(pages(g).ballooned, 32768);
    const after = g.vm.stats().residentBytes;
    // Of the guest's ~150 MiB free, 80 were just touched: the balloon's 128 take most of them.
    assert.ok(before - after >= 40 * MiB, `host frames dropped from ${before / MiB} to ${after / MiB} MiB`);
    assert.equal(host.memory.stats().balloon.inflated, 32768);

    g.vm.setBalloon(0);
    await until("the balloon to empty", () => g.vm.balloonStats()!.actualPages === 0);
    assert.equal(pages(g).ballooned, 0);
    await until("the guest to see its memory again", () => (g.vm.balloonStats()!.guest.freeBytes ?? 0) > guest.freeBytes! - 16 * MiB);
    assert.throws(() => g.vm.setBalloon(512 * MiB), /outside 0\.\.268435456/);
  } finally {
    await host.close();
  }
});

test("memory a guest process frees comes back to the host's pool by itself (free page reporting)", { timeout: 240_000 }, async () => {
  const host = await Host.create({ pcpus: 2, overcommit: { sharing: false } });
  try {
    const g = defineGuest(host, "reporter", ["sh", "-c", FILL_AND_FREE], { memBytes: 256 * MiB });
    g.vm.start();
    // The guest reports free 2 MiB blocks a couple of seconds after they
    // settle, so some go while it fills: the peak is what it held at most.
    let peak = 0;
    await until("the guest to free its file", () => {
      peak = Math.max(peak, g.vm.stats().residentBytes);
      return g.output().includes("freed");
    }, 120_000);
    // Not all 80 MiB: only whole free 2 MiB blocks are reported.
    await until("40 MiB of touched pages reported", () => peak - g.vm.stats().residentBytes >= 40 * MiB);
    assert.ok(pages(g).reported >= 10240, `reported ${pages(g).reported} pages`);
    assert.ok(host.memory.stats().balloon.reported >= 16384);
  } finally {
    await host.close();
  }
});
