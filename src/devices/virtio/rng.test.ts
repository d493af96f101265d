import { test } from "node:test";
import assert from "node:assert/strict";
import { TestDriver } from "./test-driver.js";
import { VirtioRng } from "./rng.js";

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
