// What a virtio-blk device's main-thread side (blk-iothread.ts) and its I/O
// thread (blk-iothread-worker.ts) share: control words in a SharedArrayBuffer
// for what happens often (a queue kick, an interrupt, the stop handshake),
// messages on a MessagePort for what happens seldom (a queue going live, the
// disk's description, a broken ring, closing).

import type { PageStoreHandle } from "../../memory/manager/page-store.js";
import type { CacheMode } from "../../backends/disk/types.js";
import type { FramePoolHandle } from "../../memory/frame-pool.js";
import type { P2mHandle } from "../../memory/p2m.js";
import type { QueueConfig, QueueIndices } from "./queue.js";
import type { MessagePort } from "node:worker_threads";
import type { IrqfdRoute } from "../../host/irqfd.js";

/** Control words (Int32Array indices). */
export const C_SEQ = 0;      // main thread: bumped and notified with every event for the I/O thread
export const C_KICK = 1;     // main thread or a vCPU's worker: a QueueNotify for the request queue is waiting
export const C_STOP = 2;     // main thread: stop after the request in hand (a quiesce is coming)
export const C_ACK = 3;      // I/O thread: quiesces done so far (notified)
export const C_IRQ = 4;      // I/O thread: the driver wants the used-buffer interrupt
export const C_IRQ_SEQ = 5;  // I/O thread: bumped and notified with C_IRQ, and when the thread ends
export const C_ALIVE = 6;    // I/O thread: 1 while its loop runs
/** I/O thread, written before it counts C_ACK up for a quiesce that dropped a
 *  queue: that queue's indices (so the main thread's VirtQueue, which a
 *  snapshot saves, is up to date), C_IDX_STATE 1 (2: the rings had broken). */
export const C_IDX_STATE = 7;
export const C_LAST_AVAIL = 8;
export const C_USED_IDX = 9;
export const C_SIGNALLED_USED = 10;
export const C_PENDING_USED = 11;
/** 1 while the thread serves the request queue: vCPUs' workers kick it
 *  straight through C_KICK (vmm/queue-doorbell.ts DirectKick), counting in C_KICKS. */
export const C_ARMED = 12;
export const C_KICKS = 13;
export const CONTROL_WORDS = 14;

/** Counters (Float64Array indices) the I/O thread publishes after each batch:
 *  the request queue's since it went live, then the device's since it opened. */
export const QUEUE_STAT_KEYS = ["requests", "bytesRead", "bytesWritten", "badChains", "interrupts"] as const;
export const BLK_STAT_KEYS = ["reads", "bytesRead", "writes", "bytesWritten", "flushes", "discards", "writeZeroes", "getIds", "errors"] as const;
export const BLK_STATS_AT = QUEUE_STAT_KEYS.length;
export const STAT_WORDS = QUEUE_STAT_KEYS.length + BLK_STAT_KEYS.length;

export interface IoThreadDiskSpec {
  path: string;
  format?: "raw" | "qcow2";
  readOnly?: boolean;
  cache?: CacheMode;
  /** The target of a migration with its disks copied: the image is opened
   *  writable so "disk-write" can fill it, the guest sees it as readOnly says. */
  importCopy?: boolean;
}

export interface IoThreadData {
  control: SharedArrayBuffer;
  stats: SharedArrayBuffer;
  port: MessagePort;
  disk: IoThreadDiskSpec;
  name: string;
  serial: string;
}

export type ToIoThread =
  /** The request queue is live: serve it in this RAM (`pool` when it is not the one attached before), from these indices. */
  | { kind: "activate"; pool?: FramePoolHandle; p2m: P2mHandle; codePageMap: number; pages?: PageStoreHandle; features: bigint; queue: QueueConfig; indices: QueueIndices;
      /** How the thread raises the used-buffer interrupt itself; absent: C_IRQ asks the main thread. */
      irqfd?: IrqfdRoute }
  /** Leave guest memory alone (C_STOP is set): drop the queue, count C_ACK up. */
  | { kind: "quiesce" }
  /** Between queues only: close the disk (flushed) and serve `disk` instead (of the same size);
   *  if it does not open, the old one is opened again. */
  | { kind: "reopen"; disk: IoThreadDiskSpec }
  /** Record the chunks (2^chunkShift bytes) the guest changes from now on, in `bitmap`; null: stop. */
  | { kind: "track-writes"; bitmap: SharedArrayBuffer | null; chunkShift: number }
  /** Migration with disks copied (either side, between requests): read the disk, answered by "disk-done" with the bytes. */
  | { kind: "disk-read"; id: number; offset: number; length: number }
  /** The copy at the target, no queue served: write `data`, or `zeroes` bytes of zeros. */
  | { kind: "disk-write"; id: number; offset: number; data?: Uint8Array; zeroes?: number }
  /** Close the disk and end. */
  | { kind: "close" };

export type FromIoThread =
  | { kind: "ready"; features: bigint; config: Uint8Array; disk: { path: string; format: "raw" | "qcow2"; readOnly: boolean } }
  | { kind: "open-failed"; message: string; diskError: boolean }
  /** The driver broke the rings (or the device failed) while the thread served
   *  its `activation`th queue: the transport sets DEVICE_NEEDS_RESET. */
  | { kind: "needs-reset"; why: string; activation: number }
  | { kind: "closed"; error?: string }
  /** A "disk-read" (with its bytes) or "disk-write" done, or why not. */
  | { kind: "disk-done"; id: number; data?: Uint8Array; error?: string }
  /** After "reopen": the disk served now, and why the new one was not taken, if it was not. */
  | { kind: "reopened"; disk: { path: string; format: "raw" | "qcow2"; readOnly: boolean }; error?: string };
