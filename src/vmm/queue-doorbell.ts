// Virtio queue notifications that do not wait for the device, as KVM's
// ioeventfd: a vCPU's write of queue index q to a virtio-mmio transport's
// QueueNotify register (virtio 1.2, 4.2.2) is an MMIO exit like any other,
// but the pCPU worker answers it itself: it sets bit q in the transport's
// word of the VM's doorbell area, rings the host doorbell and resumes the
// guest at once. The main thread takes the bits (atomic exchange) and hands
// each notification to the transport as the exit would have. The guest has
// published its descriptors before the write (the driver's barrier, 2.7.13),
// and the worker's atomic OR orders them for the main thread's read.
//
// Only what is certainly a notification takes this path: a 32-bit write to
// offset 0x50 of a populated slot, of a queue index below 32. Anything else
// (another width, a larger index a hostile guest may write) is an ordinary
// exit and the transport judges it.

import { VIRT_VIRTIO_BASE, VIRT_VIRTIO_STRIDE } from "../arch/riscv/layout.js";

/** QueueNotify's offset in a virtio-mmio register block (4.2.2). */
export const QUEUE_NOTIFY_OFFSET = 0x50;
const MAX_QUEUES = 32;

/** Where a VM's doorbell words are: one Int32 per virtio slot, at host address `words`. */
export interface DoorbellArea {
  words: number;
  slots: number;
}

/** Worker side: if the MMIO write is a queue notification, record it; true when it was. */
export function ringQueueDoorbell(area: DoorbellArea | undefined, mem: Int32Array, gpa: bigint, size: number, value: bigint): boolean {
  if (!area || size !== 4 || value >= BigInt(MAX_QUEUES)) return false;
  const off = gpa - VIRT_VIRTIO_BASE;
  if (off < 0n || off % VIRT_VIRTIO_STRIDE !== BigInt(QUEUE_NOTIFY_OFFSET)) return false;
  const slot = Number(off / VIRT_VIRTIO_STRIDE);
  if (slot >= area.slots) return false;
  Atomics.or(mem, (area.words >>> 2) + slot, 1 << Number(value));
  return true;
}

/** Main-thread side: the queues notified in `slot` since the last call, as indices. */
export function takeQueueDoorbells(area: DoorbellArea, mem: Int32Array, slot: number): number[] {
  const bits = Atomics.exchange(mem, (area.words >>> 2) + slot, 0);
  const queues: number[] = [];
  for (let q = 0; bits >>> q !== 0 && q < MAX_QUEUES; q++) if (bits & (1 << q)) queues.push(q);
  return queues;
}
