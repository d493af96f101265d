import { test } from "node:test";
import assert from "node:assert/strict";
import { TestDriver } from "./test-driver.js";
import { VirtioRng } from "./rng.js";
import { VirtioConsole } from "./console.js";
import type { VirtQueue } from "./queue.js";
import type { VirtioContext } from "./virtio.js";
import {
  STATUS_FEATURES_OK, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK,
  VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC,
} from "./virtio.js";

test("the register block identifies a modern virtio-mmio device", () => {
  const d = new TestDriver(new VirtioRng());
  assert.equal(d.reg(0x000), 0x74726976); // "virt"
  assert.equal(d.reg(0x004), 2);
  assert.equal(d.reg(0x008), 4); // entropy source
  assert.equal(d.deviceFeatures(), VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX);
  d.setReg(0x30, 0);
  assert.equal(d.reg(0x034), 64);
  d.setReg(0x30, 1);
  assert.equal(d.reg(0x034), 0, "no second queue");
});

test("feature negotiation: VERSION_1 is required and bits never offered are refused", () => {
  const d = new TestDriver(new VirtioRng());
  assert.equal(d.negotiate(0n), false, "a legacy driver does not get FEATURES_OK");
  assert.equal(d.negotiate(VIRTIO_F_VERSION_1 | (1n << 5n)), false, "bit 5 was not offered");
  assert.equal(d.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX), true);
  assert.ok(d.status & STATUS_FEATURES_OK);
});

test("DRIVER_OK without FEATURES_OK sets DEVICE_NEEDS_RESET", () => {
  const d = new TestDriver(new VirtioRng());
  d.negotiate(0n);
  d.driverOk();
  assert.ok(d.status & STATUS_DEVICE_NEEDS_RESET);
});

test("a queue with a size that is not a power of two, or rings outside RAM, does not go live", () => {
  const d = new TestDriver(new VirtioRng());
  d.negotiate();
  d.setReg(0x30, 0);
  d.setReg(0x38, 3);
  d.setReg(0x44, 1);
  assert.equal(d.reg(0x44), 0);
  assert.ok(d.status & STATUS_DEVICE_NEEDS_RESET);
  assert.match(d.warnings[0], /size 3/);

  const e = new TestDriver(new VirtioRng());
  e.negotiate();
  e.setReg(0x30, 0);
  e.setReg(0x38, 8);
  e.setReg(0x80, 0x1000_1000); // the MMIO window, not RAM
  e.setReg(0x44, 1);
  assert.equal(e.reg(0x44), 0);
  assert.match(e.warnings[0], /outside guest RAM/);
});

test("notifications before DRIVER_OK or on a queue that is not ready are ignored", () => {
  const d = new TestDriver(new VirtioRng());
  d.negotiate();
  d.setupQueue(0, 8);
  d.add(0, [{ writeLen: 16 }]);
  d.kick(0);
  assert.deepEqual(d.used(0), [], "not DRIVER_OK yet");
  d.kick(7);
  assert.equal(d.transport.notifiesIgnored, 2);
  d.driverOk();
  d.kick(0);
  assert.deepEqual(d.used(0).map((u) => u.len), [16]);
});

test("a reset at any time returns the device to its initial state, and it works again after", () => {
  const d = new TestDriver(new VirtioRng());
  d.start();
  d.add(0, [{ writeLen: 8 }]);
  d.setReg(0x70, 0);
  assert.equal(d.status, 0);
  d.setReg(0x30, 0);
  assert.equal(d.reg(0x44), 0, "queues are not ready after a reset");
  d.kick(0);
  assert.deepEqual(d.used(0), []);
  d.start();
  d.add(0, [{ writeLen: 8 }]);
  d.kick(0);
  assert.equal(d.used(0).length, 1);
  assert.ok(d.status & STATUS_DRIVER_OK);
});

test("the interrupt line follows InterruptStatus until acknowledged", () => {
  const d = new TestDriver(new VirtioRng());
  d.start();
  d.add(0, [{ writeLen: 4 }]);
  d.kick(0);
  assert.equal(d.irq, true);
  assert.equal(d.ackInterrupts(), 1, "used buffer notification");
  assert.equal(d.irq, false);
});

test("registers take 32-bit accesses only; other widths read 0 and writes are dropped", () => {
  const d = new TestDriver(new VirtioRng());
  assert.equal(d.transport.read(0, 1), 0n);
  d.transport.write(0x70, 1, 1n);
  assert.equal(d.status, 0);
});

test("after QueueReady = 0 the device leaves that queue alone, even when polled (4.2.2.2)", () => {
  const out: Uint8Array[] = [];
  const d = new TestDriver(new VirtioConsole({ name: "console0", output: (b) => out.push(b) }));
  d.start();
  d.add(0, [{ writeLen: 16 }]); // a receive buffer
  d.kick(0);
  d.setReg(0x30, 0);
  d.setReg(0x44, 0);
  assert.equal(d.reg(0x44), 0);
  (d.device as VirtioConsole).input(new TextEncoder().encode("x"));
  d.transport.poll();
  d.kick(0);
  assert.deepEqual(d.used(0), [], "nothing delivered into a stopped queue");
  // Set up again, it is a new queue, and the input waited for it.
  d.setupQueue(0, 8);
  const head = d.add(0, [{ writeLen: 16 }]);
  d.kick(0);
  assert.deepEqual(d.used(0), [{ id: head, len: 1 }]);
  assert.equal(d.status & STATUS_DEVICE_NEEDS_RESET, 0);
});

test("a queue stopped and set up again with another size is served as set up, not as before", () => {
  const d = new TestDriver(new VirtioRng());
  d.start(VIRTIO_F_VERSION_1, 8);
  for (let i = 0; i < 3; i++) d.add(0, [{ writeLen: 4 }]);
  d.kick(0);
  assert.equal(d.used(0).length, 3);
  d.setReg(0x30, 0);
  d.setReg(0x44, 0);
  d.setupQueue(0, 4);
  for (let round = 0; round < 3; round++) {
    const heads = [0, 1, 2].map(() => d.add(0, [{ writeLen: 4 }]));
    d.kick(0);
    assert.deepEqual(d.used(0), heads.map((id) => ({ id, len: 4 })), `round ${round}`);
  }
  assert.equal(d.status & STATUS_DEVICE_NEEDS_RESET, 0);
});

test("a malformed chain a device model lets through sets DEVICE_NEEDS_RESET instead of escaping the transport", () => {
  class CarelessDevice extends VirtioRng {
    private q: readonly (VirtQueue | undefined)[] = [];
    override activate(_ctx: VirtioContext, queues: readonly (VirtQueue | undefined)[]): void {
      this.q = queues;
    }
    override notify(): void {
      const chain = this.q[0]!.pop()!;
      chain.read(0, chain.readableLength + 1); // beyond the request: ChainError, not caught here
    }
  }
  const d = new TestDriver(new CarelessDevice());
  d.start();
  d.add(0, [{ data: Uint8Array.of(1) }]);
  assert.doesNotThrow(() => d.kick(0));
  assert.ok(d.status & STATUS_DEVICE_NEEDS_RESET);
  assert.match(d.warnings.at(-1)!, /not handled by the device/);
  d.start();
  assert.equal(d.status & STATUS_DEVICE_NEEDS_RESET, 0, "a reset clears it");
});

// ---- snapshots ----------------------------------------------------------------------

import { SnapshotError, StateReader } from "../../snapshot/state.js";

type Json = { [k: string]: any };

/** A running rng, one request done, one made available; its saved state. */
async function savedRng(): Promise<{ d: TestDriver; state: Json }> {
  const d = new TestDriver(new VirtioRng());
  d.start();
  d.add(0, [{ writeLen: 8 }]);
  d.kick(0);
  d.used(0);
  d.add(0, [{ writeLen: 8 }]);
  return { d, state: (await d.snapshot()) as Json };
}

function restoreInto(from: TestDriver, state: unknown): TestDriver {
  const d = TestDriver.restored(new VirtioRng(), from);
  d.transport.restoreState(new StateReader(state, "rng0"));
  return d;
}

test("snapshot: the transport's registers and interrupt state come back", async () => {
  const { d, state } = await savedRng();
  assert.equal(d.irq, true, "the completion raised the interrupt, not acknowledged");
  const d2 = restoreInto(d, state);
  assert.equal(d2.irq, true, "the line is raised again to match InterruptStatus");
  assert.equal(d2.status, d.status);
  assert.equal(d2.reg(0x60), 1);
  for (const reg of [0x38, 0x44]) assert.equal(d2.reg(reg), d.reg(reg));
  d2.ackInterrupts();
  assert.equal(d2.irq, false);
  d2.transport.resumeIo();
  assert.equal(d2.used(0).length, 1, "the request made available before the snapshot is served on resume");
  assert.deepEqual(d2.transport.saveState(), d2.transport.saveState());
});

test("snapshot: a device mid-negotiation, and one that needs a reset, restore as such", async () => {
  const d = new TestDriver(new VirtioRng());
  d.negotiate();
  const mid = restoreInto(d, await d.snapshot());
  assert.equal(mid.status, d.status);
  mid.transport.resumeIo();
  mid.setupQueue(0, 8);
  mid.driverOk();
  const a = mid.add(0, [{ writeLen: 4 }]);
  mid.kick(0);
  assert.deepEqual(mid.used(0), [{ id: a, len: 4 }]);

  const broken = new TestDriver(new VirtioRng());
  broken.start();
  broken.publish(0, 99); // a head out of range: DEVICE_NEEDS_RESET
  broken.kick(0);
  assert.ok(broken.status & STATUS_DEVICE_NEEDS_RESET);
  const r = restoreInto(broken, await broken.snapshot());
  r.transport.resumeIo();
  assert.ok(r.status & STATUS_DEVICE_NEEDS_RESET);
  r.kick(0);
  assert.equal(r.transport.notifiesIgnored, 1);
  // The driver resets it and starts again.
  r.start();
  const b = r.add(0, [{ writeLen: 4 }]);
  r.kick(0);
  assert.deepEqual(r.used(0), [{ id: b, len: 4 }]);
});

test("snapshot: notifies and polls wait while paused, and resumeIo serves them", async () => {
  const d = new TestDriver(new VirtioRng());
  d.start();
  await d.transport.pauseIo();
  const a = d.add(0, [{ writeLen: 4 }]);
  d.kick(0);
  assert.deepEqual(d.used(0), []);
  d.transport.resumeIo();
  assert.deepEqual(d.used(0), [{ id: a, len: 4 }]);
});

test("snapshot: tampered transport state is refused with SnapshotError naming the field", async () => {
  const { d, state } = await savedRng();
  const cases: [string, (s: Json) => void, RegExp][] = [
    ["wrong device", (s) => (s.deviceId = 2), /rng0\.deviceId: .*type 2/],
    ["queue size not a power of 2", (s) => (s.queues[0].num = 12), /rng0\.queues\[0\]: ready with size 12/],
    ["queue larger than the maximum", (s) => (s.queues[0].num = 128), /rng0\.queues\[0\]: ready with size 128/],
    ["ring outside RAM", (s) => (s.queues[0].desc = "0x1000"), /rng0\.queues\[0\]: ready with ring outside guest RAM/],
    ["misaligned ring", (s) => (s.queues[0].device = "0x80008002"), /rng0\.queues\[0\]: ready with misaligned ring/],
    ["lastAvail beyond the queue", (s) => (s.queues[0].indices.lastAvail = 40), /rng0\.queues\[0\]\.indices: lastAvail 40 .* more than the queue size/],
    ["index beyond 16 bits", (s) => (s.queues[0].indices.usedIdx = 70000), /rng0\.queues\[0\]\.indices\.usedIdx: expected an integer 0\.\.65535/],
    ["unknown feature bits", (s) => (s.driverFeatures = "0x100000020"), /rng0\.driverFeatures: bits 0x20 were never offered/],
    ["no VERSION_1", (s) => (s.driverFeatures = "0x0"), /rng0\.driverFeatures: FEATURES_OK without VIRTIO_F_VERSION_1/],
    ["status bits no device sets", (s) => (s.status |= 0x10), /rng0\.status: 0x1f has bits/],
    ["DRIVER_OK without FEATURES_OK", (s) => (s.status = 7), /rng0\.status: DRIVER_OK without FEATURES_OK/],
    ["interrupt bits", (s) => (s.interruptStatus = 4), /rng0\.interruptStatus: expected an integer 0\.\.3/],
    ["a queue too many", (s) => s.queues.push(s.queues[0]), /rng0\.queues: 2 entries, at most 1/],
    ["a queue too few", (s) => (s.queues = []), /rng0\.queues: 0 queues, this device has 1/],
    ["garbage status", (s) => (s.status = "DRIVER_OK"), /rng0\.status: expected an integer/],
    ["garbage queues", (s) => (s.queues = { 0: 1 }), /rng0\.queues: expected an array/],
    ["garbage ready", (s) => (s.queues[0].ready = 1), /rng0\.queues\[0\]\.ready: expected true or false/],
    ["garbage address", (s) => (s.queues[0].driver = 12), /rng0\.queues\[0\]\.driver: expected a 64-bit hex value/],
    ["missing indices", (s) => delete s.queues[0].indices, /rng0\.queues\[0\]\.indices: missing/],
    ["garbage device state", (s) => (s.device = [1]), /rng0\.device: expected an object/],
    ["not an object", (s) => (s.queues[0] = null), /rng0\.queues\[0\]: expected an object/],
  ];
  for (const [what, tamper, message] of cases) {
    const bad = structuredClone(state);
    tamper(bad);
    const d2 = TestDriver.restored(new VirtioRng(), d);
    assert.throws(() => d2.transport.restoreState(new StateReader(bad, "rng0")),
      (e: unknown) => e instanceof SnapshotError && message.test(e.message), what);
    assert.equal(d2.status, 0, `${what}: nothing restored`);
  }
  assert.throws(() => restoreInto(d, "garbage"), SnapshotError);
  assert.throws(() => restoreInto(d, null), SnapshotError);
});

test("snapshot: a device in flight count that does not match is refused", async () => {
  const { d, state } = await savedRng();
  const bad = structuredClone(state);
  bad.queues[0].indices.lastAvail += 1; // one request taken, but rng holds none
  assert.throws(() => restoreInto(d, bad), /rng0\.device: queue 0 has 1 requests in flight/);
});
