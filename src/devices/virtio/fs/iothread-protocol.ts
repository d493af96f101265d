// What a virtio-fs device's main-thread side (iothread.ts) and its I/O
// thread (worker.ts) share, after blk-iothread-protocol.ts: control words in
// a SharedArrayBuffer for what happens often (a kick, an interrupt, the stop
// handshake), counters in another, messages on a MessagePort for what
// happens seldom (the queues going live, a device reset, a broken ring).
// The thread serves both queues: hiprio (0) and the request queue (1).

import type { MessagePort } from "node:worker_threads";
import type { PageStoreHandle } from "../../../memory/manager/page-store.js";
import type { FramePoolHandle } from "../../../memory/frame-pool.js";
import type { P2mHandle } from "../../../memory/p2m.js";
import type { IrqfdRoute } from "../../../host/irqfd.js";
import type { QueueConfig, QueueIndices } from "../queue.js";

/** The device's queues: hiprio, then one request queue (device.ts REQUEST_QUEUES). */
export const FS_QUEUES = 2;
/** The queue vCPUs' workers kick straight (vmm/queue-doorbell.ts DirectKick): the request queue. */
export const DIRECT_QUEUE = 1;

/** Control words (Int32Array indices). */
export const C_SEQ = 0;      // bumped and notified with every event for the I/O thread
export const C_KICK = 1;     // main thread or a vCPU's worker: a queue was notified
export const C_STOP = 2;     // main thread: stop after the request in hand (a quiesce is coming)
export const C_ACK = 3;      // I/O thread: quiesces done so far (notified)
export const C_IRQ = 4;      // I/O thread: the driver wants the used-buffer interrupt
export const C_IRQ_SEQ = 5;  // I/O thread: bumped and notified with C_IRQ, and when the thread ends
export const C_ALIVE = 6;    // I/O thread: 1 while its loop runs
export const C_ARMED = 7;    // 1 while the thread serves the queues: DIRECT_QUEUE's kicks go straight to it
export const C_KICKS = 8;    // kicks of DIRECT_QUEUE that went straight, for its notification count
/** Per queue, written by the thread before it counts C_ACK up for a quiesce
 *  that dropped the queues: Q_STATE 1 and the queue's indices (the main
 *  thread's VirtQueue goes on from them), or Q_STATE 0 (it served none). */
const QUEUE_WORDS_AT = 9;
export const Q_STATE = 0;
export const Q_LAST_AVAIL = 1;
export const Q_USED_IDX = 2;
export const Q_SIGNALLED_USED = 3;
export const Q_PENDING_USED = 4;
const QUEUE_WORDS = 5;
export const CONTROL_WORDS = QUEUE_WORDS_AT + FS_QUEUES * QUEUE_WORDS;

/** Index of queue `q`'s word `field` (Q_*). */
export function queueWord(q: number, field: number): number {
  return QUEUE_WORDS_AT + q * QUEUE_WORDS + field;
}

/** Counters (Float64Array indices) the thread publishes after each batch:
 *  each queue's since it went live, then the FUSE server's since the device
 *  opened, then requests by opcode (index 0: opcodes the server does not know). */
export const QUEUE_STAT_KEYS = ["requests", "bytesRead", "bytesWritten", "badChains", "interrupts"] as const;
export const SERVER_STAT_KEYS = ["requests", "errors", "dropped", "internalErrors", "nodes", "handles"] as const;
export const SERVER_STATS_AT = FS_QUEUES * QUEUE_STAT_KEYS.length;
export const OPS_AT = SERVER_STATS_AT + SERVER_STAT_KEYS.length;
export const OP_SLOTS = 64;
export const STAT_WORDS = OPS_AT + OP_SLOTS;

export interface FsThreadData {
  control: SharedArrayBuffer;
  stats: SharedArrayBuffer;
  port: MessagePort;
  hostDir: string;
  readOnly: boolean;
  /** The process's umask (a worker cannot read it). */
  umask: number;
}

export type ToFsThread =
  /** The queues are live: serve them in this RAM (`pool` when it is not the one attached before), each from its indices (undefined: not live). */
  | { kind: "activate"; pool?: FramePoolHandle; p2m: P2mHandle; codePageMap: number; pages?: PageStoreHandle;
      queues: ({ config: QueueConfig; indices: QueueIndices } | undefined)[];
      /** How the thread raises the used-buffer interrupt itself; absent: C_IRQ asks the main thread. */
      irqfd?: IrqfdRoute }
  /** Leave guest memory alone (C_STOP is set): drop the queues, count C_ACK up. */
  | { kind: "quiesce" }
  /** Device reset: the guest's nodes and open handles go (after a quiesce). */
  | { kind: "reset" }
  /** Close every host fd, then end. */
  | { kind: "close" };

export type FromFsThread =
  /** The driver broke the rings (or the device failed) while the thread
   *  served its `activation`th queues: the transport sets DEVICE_NEEDS_RESET. */
  | { kind: "needs-reset"; why: string; activation: number }
  | { kind: "closed" };
