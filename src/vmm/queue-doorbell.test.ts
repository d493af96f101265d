// Queue doorbells: which MMIO writes a worker may answer itself (a queue
// notification), and what the main thread then takes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ringQueueDoorbell, takeQueueDoorbells, QUEUE_NOTIFY_OFFSET, Doorbell, type DirectKick } from "./queue-doorbell.js";
import { virtioSlotBase } from "../arch/riscv/layout.js";

const mem = new Int32Array(new SharedArrayBuffer(64));
const area = { words: 16, slots: 3 }; // words at byte 16: slots 0..2
const notify = (slot: number) => virtioSlotBase(slot) + BigInt(QUEUE_NOTIFY_OFFSET);

test("a 32-bit QueueNotify write to a populated slot rings; the main thread takes each queue once", () => {
  assert.equal(ringQueueDoorbell(area, mem, notify(1), 4, 0n), Doorbell.Recorded);
  assert.equal(ringQueueDoorbell(area, mem, notify(1), 4, 2n), Doorbell.Recorded);
  assert.equal(ringQueueDoorbell(area, mem, notify(1), 4, 2n), Doorbell.Recorded); // coalesces, as an eventfd does
  assert.deepEqual(takeQueueDoorbells(area, mem, 1), [0, 2]);
  assert.deepEqual(takeQueueDoorbells(area, mem, 1), []);
  assert.deepEqual(takeQueueDoorbells(area, mem, 0), []);
});

test("anything else stays an ordinary exit for the transport to judge", () => {
  assert.equal(ringQueueDoorbell(undefined, mem, notify(0), 4, 0n), Doorbell.None); // no host: no doorbells
  assert.equal(ringQueueDoorbell(area, mem, notify(0), 2, 0n), Doorbell.None); // not 32 bits
  assert.equal(ringQueueDoorbell(area, mem, notify(0), 4, 32n), Doorbell.None); // index beyond the bitmask
  assert.equal(ringQueueDoorbell(area, mem, notify(0), 4, 0xffff_ffffn), Doorbell.None);
  assert.equal(ringQueueDoorbell(area, mem, notify(3), 4, 0n), Doorbell.None); // an empty slot
  assert.equal(ringQueueDoorbell(area, mem, notify(0) + 4n, 4, 0n), Doorbell.None); // InterruptStatus's neighbour
  assert.equal(ringQueueDoorbell(area, mem, virtioSlotBase(0) - 0x1000n + 0x50n, 4, 0n), Doorbell.None); // below the window
  for (let s = 0; s < 3; s++) assert.deepEqual(takeQueueDoorbells(area, mem, s), []);
});

test("doorbell words above 2 GiB of host memory (a big host's pool) are found", () => {
  // Untouched pages of a shared buffer cost no host memory.
  const big = new Int32Array(new SharedArrayBuffer(2 ** 31 + 4096));
  const high = { words: 2 ** 31 + 64, slots: 1 };
  assert.equal(ringQueueDoorbell(high, big, notify(0), 4, 1n), Doorbell.Recorded);
  assert.deepEqual(takeQueueDoorbells(high, big, 0), [1]);
});

test("a queue its own thread serves is kicked there while armed, and the main thread hears of nothing", () => {
  const control = new SharedArrayBuffer(16);
  const ctl = new Int32Array(control);
  const kick: DirectKick = { queue: 0, control, armed: 0, kick: 1, count: 2, seq: 3 };
  const withThread = { words: 16, slots: 3, direct: [undefined, kick, undefined] };
  // Not armed (the thread holds no queue): an ordinary doorbell for the main thread.
  assert.equal(ringQueueDoorbell(withThread, mem, notify(1), 4, 0n), Doorbell.Recorded);
  assert.deepEqual(takeQueueDoorbells(withThread, mem, 1), [0]);
  Atomics.store(ctl, kick.armed, 1);
  assert.equal(ringQueueDoorbell(withThread, mem, notify(1), 4, 0n), Doorbell.Direct);
  assert.equal(ringQueueDoorbell(withThread, mem, notify(1), 4, 0n), Doorbell.Direct);
  assert.deepEqual([ctl[kick.kick], ctl[kick.count], ctl[kick.seq]], [1, 2, 2]);
  assert.deepEqual(takeQueueDoorbells(withThread, mem, 1), []);
  // Another queue of the same device, and another slot, are not the thread's.
  assert.equal(ringQueueDoorbell(withThread, mem, notify(1), 4, 1n), Doorbell.Recorded);
  assert.equal(ringQueueDoorbell(withThread, mem, notify(2), 4, 0n), Doorbell.Recorded);
  assert.deepEqual(takeQueueDoorbells(withThread, mem, 1), [1]);
  assert.deepEqual(takeQueueDoorbells(withThread, mem, 2), [0]);
});
