// Queue doorbells: which MMIO writes a worker may answer itself (a queue
// notification), and what the main thread then takes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ringQueueDoorbell, takeQueueDoorbells, QUEUE_NOTIFY_OFFSET } from "./queue-doorbell.js";
import { virtioSlotBase } from "../arch/riscv/layout.js";

const mem = new Int32Array(new SharedArrayBuffer(64));
const area = { words: 16, slots: 3 }; // words at byte 16: slots 0..2
const notify = (slot: number) => virtioSlotBase(slot) + BigInt(QUEUE_NOTIFY_OFFSET);

test("a 32-bit QueueNotify write to a populated slot rings; the main thread takes each queue once", () => {
  assert.equal(ringQueueDoorbell(area, mem, notify(1), 4, 0n), true);
  assert.equal(ringQueueDoorbell(area, mem, notify(1), 4, 2n), true);
  assert.equal(ringQueueDoorbell(area, mem, notify(1), 4, 2n), true); // coalesces, as an eventfd does
  assert.deepEqual(takeQueueDoorbells(area, mem, 1), [0, 2]);
  assert.deepEqual(takeQueueDoorbells(area, mem, 1), []);
  assert.deepEqual(takeQueueDoorbells(area, mem, 0), []);
});

test("anything else stays an ordinary exit for the transport to judge", () => {
  assert.equal(ringQueueDoorbell(undefined, mem, notify(0), 4, 0n), false); // no host: no doorbells
  assert.equal(ringQueueDoorbell(area, mem, notify(0), 2, 0n), false); // not 32 bits
  assert.equal(ringQueueDoorbell(area, mem, notify(0), 4, 32n), false); // index beyond the bitmask
  assert.equal(ringQueueDoorbell(area, mem, notify(0), 4, 0xffff_ffffn), false);
  assert.equal(ringQueueDoorbell(area, mem, notify(3), 4, 0n), false); // an empty slot
  assert.equal(ringQueueDoorbell(area, mem, notify(0) + 4n, 4, 0n), false); // InterruptStatus's neighbour
  assert.equal(ringQueueDoorbell(area, mem, virtioSlotBase(0) - 0x1000n + 0x50n, 4, 0n), false); // below the window
  for (let s = 0; s < 3; s++) assert.deepEqual(takeQueueDoorbells(area, mem, s), []);
});

test("doorbell words above 2 GiB of host memory (a big host's pool) are found", () => {
  // Untouched pages of a shared buffer cost no host memory.
  const big = new Int32Array(new SharedArrayBuffer(2 ** 31 + 4096));
  const high = { words: 2 ** 31 + 64, slots: 1 };
  assert.equal(ringQueueDoorbell(high, big, notify(0), 4, 1n), true);
  assert.deepEqual(takeQueueDoorbells(high, big, 0), [1]);
});
