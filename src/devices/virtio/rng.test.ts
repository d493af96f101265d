import { test } from "node:test";
import assert from "node:assert/strict";
import { TestDriver, TEST_RAM } from "./test-driver.js";
import { VirtioRng } from "./rng.js";
import { STATUS_DEVICE_NEEDS_RESET } from "./virtio.js";
import { FramePool } from "../../memory/frame-pool.js";
import { P2m } from "../../memory/p2m.js";
import { GuestMemory, GuestMemoryError } from "../../memory/guest-memory.js";

test("virtio-rng fills each writable buffer with fresh random bytes", () => {
  const d = new TestDriver(new VirtioRng());
  d.start();
  const a = d.add(0, [{ writeLen: 64 }]);
  const b = d.add(0, [{ writeLen: 32 }, { writeLen: 32 }]);
  d.kick(0);
  assert.deepEqual(d.used(0), [{ id: a, len: 64 }, { id: b, len: 64 }]);
  const x = d.mem.read(d.bufferAddr(0, a, 0), 64);
  const y = d.mem.read(d.bufferAddr(0, b, 0), 32);
  assert.notDeepEqual(x, new Uint8Array(64));
  assert.notDeepEqual(x.subarray(0, 32), y);
});

test("virtio-rng never writes into device-readable buffers", () => {
  const d = new TestDriver(new VirtioRng());
  d.start();
  const head = d.add(0, [{ data: new Uint8Array(16) }]);
  d.kick(0);
  assert.deepEqual(d.used(0), [{ id: head, len: 0 }]);
  assert.deepEqual(d.mem.read(d.bufferAddr(0, head, 0), 16), new Uint8Array(16));
});

test("virtio-rng: a buffer guest memory refuses gets length 0, and the next request is served", () => {
  // Guest memory that refuses writes into one page (as RAM taken away under a request would).
  const p2m = new P2m(new FramePool(1 << 16), TEST_RAM, 4 << 20);
  const gone = TEST_RAM + 0x10_0000n; // where the driver puts the first buffer
  class RefusingMemory extends GuestMemory {
    override write(gpa: bigint, data: Uint8Array): void {
      if (gpa < gone + 0x1000n && gpa + BigInt(data.length) > gone) throw new GuestMemoryError(gpa, data.length);
      super.write(gpa, data);
    }
  }
  const d = new TestDriver(new VirtioRng(), new GuestMemory(p2m), { deviceMem: new RefusingMemory(p2m) });
  d.start();
  const a = d.add(0, [{ writeLen: 32 }]);
  assert.equal(d.bufferAddr(0, a, 0), gone);
  const b = d.add(0, [{ writeLen: 0x1000 }, { writeLen: 32 }]);
  d.kick(0);
  assert.deepEqual(d.used(0), [{ id: a, len: 0 }, { id: b, len: 0 }]);
  const c = d.add(0, [{ writeLen: 32 }]);
  d.kick(0);
  assert.deepEqual(d.used(0), [{ id: c, len: 32 }]);
  assert.equal(d.status & STATUS_DEVICE_NEEDS_RESET, 0);
});

test("virtio-rng snapshot: a restored device goes on from the saved indices", async () => {
  const d = new TestDriver(new VirtioRng());
  d.start();
  const a = d.add(0, [{ writeLen: 16 }]);
  d.kick(0);
  assert.deepEqual(d.used(0), [{ id: a, len: 16 }]);
  // Made available, not yet kicked when the VM pauses: the restored device serves it.
  const b = d.add(0, [{ writeLen: 8 }]);
  const d2 = await d.snapshotInto(new VirtioRng());
  assert.deepEqual(d2.used(0), [{ id: b, len: 8 }]);
  const c = d2.add(0, [{ writeLen: 4 }]);
  d2.kick(0);
  assert.deepEqual(d2.used(0), [{ id: c, len: 4 }]);
  assert.equal(d2.mem.readU16(d2.queueLayout(0).used + 2n), 3);
  assert.deepEqual(d2.warnings, []);
});
