import { test } from "node:test";
import assert from "node:assert/strict";
import { TestDriver, TEST_RAM } from "./test-driver.js";
import type { VirtioDevice, VirtioContext } from "./virtio.js";
import { STATUS_DEVICE_NEEDS_RESET, VIRTIO_F_VERSION_1, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX } from "./virtio.js";
import {
  VirtQueue, DescriptorChain, ChainError, QueueStats, MAX_CHAIN_DESCRIPTORS, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT,
} from "./queue.js";
import { GuestMemoryError } from "../../memory/guest-memory.js";

/** A device that records each request and answers with its readable bytes reversed. */
class EchoDevice implements VirtioDevice {
  readonly deviceId = 0x7f;
  readonly name = "echo";
  readonly queueMaxSizes = [16];
  readonly features = 0n;
  seen: DescriptorChain[] = [];
  private q: VirtQueue | undefined;
  readConfig() { return 0; }
  writeConfig() {}
  activate(_c: VirtioContext, queues: readonly (VirtQueue | undefined)[]) { this.q = queues[0]; }
  reset() { this.q = undefined; }
  notify() {
    const q = this.q!;
    for (let c = q.pop(); c; c = q.pop()) {
      this.seen.push(c);
      const data = c.read(0, c.readableLength).reverse();
      const n = Math.min(data.length, c.writableLength);
      c.write(0, data.subarray(0, n));
      q.push(c, n);
    }
    q.notifyDriver();
  }
}

const ALL = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC;

function started(features = ALL) {
  const dev = new EchoDevice();
  const d = new TestDriver(dev);
  d.start(features);
  return { dev, d };
}

test("a chain of readable then writable buffers reaches the device whole, across buffers", () => {
  const { d } = started();
  const head = d.add(0, [{ data: Uint8Array.of(1, 2, 3) }, { data: Uint8Array.of(4, 5) }, { writeLen: 2 }, { writeLen: 3 }]);
  d.kick(0);
  assert.deepEqual(d.used(0), [{ id: head, len: 5 }]);
  assert.deepEqual(d.mem.read(d.bufferAddr(0, head, 2), 2), Uint8Array.of(5, 4));
  assert.deepEqual(d.mem.read(d.bufferAddr(0, head, 3), 3), Uint8Array.of(3, 2, 1));
});

test("indirect descriptors work when negotiated and fail the request when not", () => {
  const { d } = started();
  const head = d.add(0, [{ data: Uint8Array.of(9, 8) }, { writeLen: 2 }], { indirect: true });
  d.kick(0);
  assert.deepEqual(d.used(0), [{ id: head, len: 2 }]);
  assert.deepEqual(d.mem.read(d.bufferAddr(0, head, 1), 2), Uint8Array.of(8, 9));

  const plain = started(VIRTIO_F_VERSION_1);
  const h2 = plain.d.add(0, [{ data: Uint8Array.of(1) }, { writeLen: 1 }], { indirect: true });
  plain.d.kick(0);
  assert.deepEqual(plain.d.used(0), [{ id: h2, len: 0 }]);
  assert.equal(plain.dev.seen.length, 0);
  assert.equal(plain.d.transport.queueStats[0].badChains, 1);
});

/** Write descriptors by hand and publish `head`. */
function raw(d: TestDriver, descs: [number, bigint, number, number, number][], head: number) {
  const q = d.queueLayout(0);
  for (const [i, addr, len, flags, next] of descs) d.writeDesc(q.desc, i, addr, len, flags, next);
  d.publish(0, head);
  d.kick(0);
}

test("malformed chains fail alone: loops, buffers outside RAM, readable after writable, nested indirect", () => {
  const { d, dev } = started();
  const buf = TEST_RAM + 0x20_0000n;
  raw(d, [[0, buf, 8, VIRTQ_DESC_F_NEXT, 1], [1, buf, 8, VIRTQ_DESC_F_NEXT, 0]], 0); // 0 -> 1 -> 0 ...
  raw(d, [[2, 0x1000_0000n, 8, 0, 0]], 2); // the UART, not RAM
  raw(d, [[3, 0xffff_ffff_ffff_fff0n, 0x100, 0, 0]], 3); // wraps around
  raw(d, [[4, buf, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 5], [5, buf, 8, 0, 0]], 4);
  const inner = TEST_RAM + 0x30_0000n;
  d.writeDesc(inner, 0, inner, 16, VIRTQ_DESC_F_INDIRECT, 0);
  raw(d, [[6, inner, 16, VIRTQ_DESC_F_INDIRECT, 0]], 6);
  raw(d, [[7, buf, 8, VIRTQ_DESC_F_NEXT, 200]], 7); // next out of range
  assert.deepEqual(d.used(0), [0, 2, 3, 4, 6, 7].map((id) => ({ id, len: 0 })));
  assert.equal(dev.seen.length, 0);
  assert.equal(d.status & STATUS_DEVICE_NEEDS_RESET, 0, "the queue itself is fine");

  const good = d.add(0, [{ data: Uint8Array.of(1) }, { writeLen: 1 }]);
  d.kick(0);
  assert.deepEqual(d.used(0), [{ id: good, len: 1 }], "later requests still work");
});

test("a head index out of range, or an available index jumping past the queue size, needs a reset", () => {
  const a = started();
  a.d.publish(0, 999);
  a.d.kick(0);
  assert.ok(a.d.status & STATUS_DEVICE_NEEDS_RESET);
  assert.equal(a.d.ackInterrupts() & 2, 2, "configuration change interrupt tells the driver");

  const b = started();
  b.d.mem.writeU16(b.d.queueLayout(0).avail + 2n, 1000);
  b.d.kick(0);
  assert.ok(b.d.status & STATUS_DEVICE_NEEDS_RESET);
  b.d.add(0, [{ writeLen: 1 }]);
  b.d.kick(0);
  assert.equal(b.dev.seen.length, 0, "a device that needs a reset does nothing until then");
});

test("NO_INTERRUPT suppresses the interrupt without EVENT_IDX", () => {
  const { d } = started();
  d.mem.writeU16(d.queueLayout(0).avail, 1);
  d.add(0, [{ data: Uint8Array.of(1) }]);
  d.kick(0);
  assert.equal(d.used(0).length, 1);
  assert.equal(d.irq, false);
});

test("with EVENT_IDX the device interrupts only when used_event is passed, and asks for the next kick", () => {
  const { d } = started(ALL | VIRTIO_F_EVENT_IDX);
  const q = d.queueLayout(0);
  const usedEvent = q.avail + 4n + 2n * BigInt(q.size);
  const availEvent = q.used + 4n + 8n * BigInt(q.size);
  d.mem.writeU16(usedEvent, 1); // interrupt me when the 2nd buffer is used
  d.add(0, [{ data: Uint8Array.of(1) }]);
  d.kick(0);
  assert.equal(d.irq, false);
  assert.equal(d.mem.readU16(availEvent), 1, "notify when avail idx passes 1");
  d.add(0, [{ data: Uint8Array.of(1) }]);
  d.kick(0);
  assert.equal(d.irq, true);
  assert.equal(d.used(0).length, 2);
});

test("a readable descriptor after a writable one is malformed even when one of them is empty (2.7.4.2)", () => {
  const { d, dev } = started();
  const buf = TEST_RAM + 0x20_0000n;
  // [R 4] -> [W 1] -> [R 0]: skipping the empty one would take this for a well-formed request.
  raw(d, [[0, buf, 4, VIRTQ_DESC_F_NEXT, 1], [1, buf + 16n, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2], [2, 0n, 0, 0, 0]], 0);
  // [W 0] -> [R 4]
  raw(d, [[3, buf, 0, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 4], [4, buf, 4, 0, 0]], 3);
  assert.deepEqual(d.used(0), [{ id: 0, len: 0 }, { id: 3, len: 0 }]);
  assert.equal(dev.seen.length, 0);
  // Empty descriptors in their place are fine: [R 2] -> [W 0] -> [W 2].
  raw(d, [[5, buf, 2, VIRTQ_DESC_F_NEXT, 6], [6, 0n, 0, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 7], [7, buf + 32n, 2, VIRTQ_DESC_F_WRITE, 0]], 5);
  assert.deepEqual(d.used(0), [{ id: 5, len: 2 }]);
  assert.equal(d.status & STATUS_DEVICE_NEEDS_RESET, 0);
});

test("an indirect table may be longer than the queue, up to MAX_CHAIN_DESCRIPTORS descriptors", () => {
  const { d, dev } = started();
  const buf = TEST_RAM + 0x20_0000n;
  const table = TEST_RAM + 0x30_0000n;
  const chainOf = (n: number) => {
    // n - 1 empty readable descriptors, then one writable byte.
    for (let i = 0; i < n; i++) d.writeDesc(table, i, i < n - 1 ? 0n : buf, i < n - 1 ? 0 : 1, i < n - 1 ? VIRTQ_DESC_F_NEXT : VIRTQ_DESC_F_WRITE, i + 1);
  };
  chainOf(300); // longer than the queue of 16, as Linux makes them for large requests
  raw(d, [[0, table, 300 * 16, VIRTQ_DESC_F_INDIRECT, 0]], 0);
  assert.deepEqual(d.used(0), [{ id: 0, len: 0 }]);
  assert.equal(dev.seen.length, 1, "served");
  chainOf(MAX_CHAIN_DESCRIPTORS + 1); // bounded work per request: refused
  raw(d, [[1, table, (MAX_CHAIN_DESCRIPTORS + 1) * 16, VIRTQ_DESC_F_INDIRECT, 0]], 1);
  assert.deepEqual(d.used(0), [{ id: 1, len: 0 }]);
  assert.equal(dev.seen.length, 1, "not served");
  assert.equal(d.transport.queueStats[0].badChains, 1);
});

test("a chain's read() and write() fail with ChainError, never GuestMemoryError, when guest memory refuses a buffer", () => {
  const { d } = started();
  // Buffers the parser accepted, then no longer RAM (as if taken away under the request).
  const gone = [{ addr: 0x1000n, len: 8 }];
  const chain = new DescriptorChain(3, gone, gone, d.mem, new QueueStats());
  assert.throws(() => chain.read(0, 8), (e) => e instanceof ChainError && !(e instanceof GuestMemoryError));
  assert.throws(() => chain.write(0, new Uint8Array(8)), (e) => e instanceof ChainError && !(e instanceof GuestMemoryError));
});
