// Snapshot restore as untrusted input, for every in-thread virtio device: a
// saved state with one value replaced by garbage is either refused with
// SnapshotError or restored into a device that then works or, at worst,
// sets DEVICE_NEEDS_RESET; nothing else is ever thrown.
import { test } from "node:test";
import assert from "node:assert/strict";
import { TestDriver, TEST_RAM } from "./test-driver.js";
import { VirtioRng } from "./rng.js";
import { VirtioConsole } from "./console.js";
import { VirtioNet, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MAC } from "./net.js";
import { VirtioBalloon, type BalloonMemory } from "./balloon.js";
import { VirtioVsock } from "./vsock/device.js";
import { FakeVsockBackend } from "./vsock/testing.js";
import { VirtioFs } from "./fs/device.js";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VIRTIO_F_VERSION_1, type VirtioDevice } from "./virtio.js";
import { SnapshotError, StateReader } from "../../snapshot/state.js";
import type { NetBackend, NetStats } from "../../backends/net/net-backend.js";

class NullBackend implements NetBackend {
  readonly description = "null";
  onFrame: NetBackend["onFrame"];
  readonly stats: NetStats = { txFrames: 0, txBytes: 0, rxFrames: 0, rxBytes: 0, txDropped: 0, rxDropped: 0 };
  send(): void {}
  setRxPaused(): void {}
  close(): void {}
}

const shareDir = mkdtempSync(join(tmpdir(), "tsvisor-fs-fuzz-"));

const balloonMemory = (): BalloonMemory => ({
  ramBytes: 4 << 20,
  isRam: (gpa, len) => len >= 0 && gpa >= TEST_RAM && gpa + BigInt(len) <= TEST_RAM + (4n << 20n),
  discard: async () => {},
  reclaim: () => {},
});

const devices: [string, () => VirtioDevice, bigint][] = [
  ["rng0", () => new VirtioRng(), VIRTIO_F_VERSION_1],
  ["console0", () => new VirtioConsole({ name: "console0", output() {} }), VIRTIO_F_VERSION_1],
  ["net0", () => new VirtioNet(new NullBackend(), { name: "net0", mac: new Uint8Array(6) }), VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_MAC],
  ["balloon0", () => new VirtioBalloon(balloonMemory(), { statsIntervalMs: 0 }), VIRTIO_F_VERSION_1 | 2n],
  ["vsock0", () => new VirtioVsock({ guestCid: 3, backend: new FakeVsockBackend() }), VIRTIO_F_VERSION_1],
  // The FUSE server on this thread (a worker's device is restored the same way, its thread told the session).
  ["fs0", () => new VirtioFs({ tag: "fs0", name: "fs0", hostDir: shareDir, thread: "main" }), VIRTIO_F_VERSION_1],
];

const GARBAGE: unknown[] = [null, true, -1, 0, 1, 3, 15, 16, 65535, 65536, 2 ** 32, 2 ** 53, 1.5, NaN, "", "0x0", "0xffffffffffffffff", "AAAA", [], [0], [0, 0], [-1], {}, { a: 1 }];

/** Deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Every [container, key] of a JSON value. */
function slots(v: unknown, out: [Record<string, unknown> | unknown[], string | number][] = []): typeof out {
  if (Array.isArray(v)) v.forEach((e, i) => (out.push([v, i]), slots(e, out)));
  else if (v && typeof v === "object") for (const [k, e] of Object.entries(v)) (out.push([v as Record<string, unknown>, k]), slots(e, out));
  return out;
}

for (const [name, make, features] of devices) {
  test(`snapshot fuzz: ${name} restores tampered state only as SnapshotError or a working device`, async () => {
    const d = new TestDriver(make());
    d.start(features, 16);
    // Mid-state: a few requests done, buffers posted.
    for (let i = 0; i < d.device.queueMaxSizes.length; i++) {
      d.add(i, [{ writeLen: 64 }]);
      d.add(i, [{ data: new Uint8Array(16) }]);
    }
    const state = await d.snapshot();
    const random = rng(name.length * 7919);
    let refused = 0;
    for (let n = 0; n < 400; n++) {
      const bad = structuredClone(state);
      const all = slots(bad);
      const [where, key] = all[Math.floor(random() * all.length)];
      const g = GARBAGE[Math.floor(random() * GARBAGE.length)];
      if (Array.isArray(where)) where[key as number] = g;
      else if (random() < 0.1) delete where[key];
      else where[key] = g;
      const d2 = TestDriver.restored(make(), d);
      try {
        d2.transport.restoreState(new StateReader(bad, name));
      } catch (e) {
        if (!(e instanceof SnapshotError)) throw new Error(`${JSON.stringify(bad)}: ${(e as Error).stack}`);
        refused++;
        continue;
      }
      d2.transport.resumeIo();
      for (let i = 0; i < d.device.queueMaxSizes.length; i++) {
        if (d2.queueLayout(i)) d2.add(i, [{ writeLen: 64 }]);
        d2.kick(i);
      }
      d2.transport.poll();
      await new Promise((r) => setImmediate(r));
    }
    assert.ok(refused > 100, `${refused} refused`);
  });
}
