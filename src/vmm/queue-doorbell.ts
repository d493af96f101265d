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
import { REG } from "../devices/virtio/mmio-registers.js";

/** QueueNotify's offset in a virtio-mmio register block (4.2.2). */
export const QUEUE_NOTIFY_OFFSET = REG.QueueNotify;
const MAX_QUEUES = 32;

/** Where a VM's doorbell words are: one Int32 per virtio slot, at host address `words`. */
export interface DoorbellArea {
  words: number;
  slots: number;
  /** By slot: a queue whose notifications go straight to the thread serving it. */
  direct?: (DirectKick | undefined)[];
}

/**
 * A queue served on a thread of its own (a disk's I/O thread): while that
 * thread holds the queue, the worker kicks it itself and the main thread
 * never hears of the notification, as KVM's ioeventfd signals an eventfd
 * that QEMU's iothread polls. The words are Int32 indices in `control`.
 */
export interface DirectKick {
  queue: number;
  control: SharedArrayBuffer;
  /** 1 while the thread serves the queue; 0: the notification goes to the main thread. */
  armed: number;
  /** Set to 1 with a kick (the thread takes it with an exchange). */
  kick: number;
  /** Kicks so far, for the transport's notification count. */
  count: number;
  /** The word the thread sleeps on: bumped and notified. */
  seq: number;
}

/** What ringQueueDoorbell did with an MMIO write. */
export enum Doorbell {
  /** Not certainly a queue notification: an ordinary MMIO exit. */
  None,
  /** Recorded in the doorbell words: ring the host's doorbell for the main thread. */
  Recorded,
  /** Kicked the thread serving the queue: nothing for the main thread. */
  Direct,
}

/** Worker side: if the MMIO write is a queue notification, record it or kick its thread. */
export function ringQueueDoorbell(area: DoorbellArea | undefined, mem: Int32Array, gpa: bigint, size: number, value: bigint): Doorbell {
  if (!area || size !== 4 || value >= BigInt(MAX_QUEUES)) return Doorbell.None;
  const off = gpa - VIRT_VIRTIO_BASE;
  if (off < 0n || off % VIRT_VIRTIO_STRIDE !== BigInt(QUEUE_NOTIFY_OFFSET)) return Doorbell.None;
  const slot = Number(off / VIRT_VIRTIO_STRIDE);
  if (slot >= area.slots) return Doorbell.None;
  const direct = area.direct?.[slot];
  if (direct && direct.queue === Number(value) && kickDirect(direct)) return Doorbell.Direct;
  Atomics.or(mem, (area.words >>> 2) + slot, 1 << Number(value));
  return Doorbell.Recorded;
}

/** Kick the queue's thread if it serves the queue now. A kick that races
 *  with the main thread disarming it is harmless: the thread serves the
 *  ring from its indices whenever it gets the queue again. */
function kickDirect(d: DirectKick): boolean {
  const ctl = new Int32Array(d.control);
  if (Atomics.load(ctl, d.armed) !== 1) return false;
  Atomics.add(ctl, d.count, 1);
  Atomics.store(ctl, d.kick, 1);
  Atomics.add(ctl, d.seq, 1);
  Atomics.notify(ctl, d.seq);
  return true;
}

/** Main-thread side: the queues notified in `slot` since the last call, as indices. */
export function takeQueueDoorbells(area: DoorbellArea, mem: Int32Array, slot: number): number[] {
  const bits = Atomics.exchange(mem, (area.words >>> 2) + slot, 0);
  const queues: number[] = [];
  for (let q = 0; bits >>> q !== 0 && q < MAX_QUEUES; q++) if (bits & (1 << q)) queues.push(q);
  return queues;
}
