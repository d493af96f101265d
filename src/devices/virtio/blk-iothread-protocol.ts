// What a virtio-blk device's main-thread side (blk-iothread.ts) and its I/O
// thread (blk-iothread-worker.ts) share beyond the control words every I/O
// thread has (iothread-link.ts): counters, and the messages for what
// happens seldom (a queue going live, the disk's description, a broken
// ring, closing).

import type { CacheMode } from "../../backends/disk/types.js";
import type { QueueConfig, QueueIndices } from "./queue.js";
import type { MessagePort } from "node:worker_threads";
import type { NeedsReset, ThreadRam } from "./iothread-link.js";

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
  /** The request queue is live: serve it in this RAM, from these indices. */
  | { kind: "activate"; ram: ThreadRam; features: bigint; queue: QueueConfig; indices: QueueIndices }
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
  /** The driver broke the rings (or the device failed): the transport sets DEVICE_NEEDS_RESET. */
  | NeedsReset
  | { kind: "closed"; error?: string }
  /** A "disk-read" (with its bytes) or "disk-write" done, or why not. */
  | { kind: "disk-done"; id: number; data?: Uint8Array; error?: string }
  /** After "reopen": the disk served now, and why the new one was not taken, if it was not. */
  | { kind: "reopened"; disk: { path: string; format: "raw" | "qcow2"; readOnly: boolean }; error?: string };
