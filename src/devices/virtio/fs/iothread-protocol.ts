// What a virtio-fs device's main-thread side (iothread.ts) and its I/O
// thread (worker.ts) share beyond the control words every I/O thread has
// (../iothread-link.ts): counters in a SharedArrayBuffer, and the messages.
// The thread serves both queues: hiprio (0) and the request queue (1).

import type { MessagePort } from "node:worker_threads";
import type { QueueConfig, QueueIndices } from "../queue.js";
import type { NeedsReset, ThreadRam } from "../iothread-link.js";
import type { FuseSession } from "./server.js";
import type { ReopenedTable, SavedTable } from "./saved-table.js";

/** The device's queues: hiprio, then one request queue (device.ts REQUEST_QUEUES). */
export const FS_QUEUES = 2;
/** The queue vCPUs' workers kick straight (vmm/queue-doorbell.ts DirectKick): the request queue. */
export const DIRECT_QUEUE = 1;

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
  /** The queues are live: serve them in this RAM, each from its indices (undefined: not live). */
  | { kind: "activate"; ram: ThreadRam; queues: ({ config: QueueConfig; indices: QueueIndices } | undefined)[] }
  /** Leave guest memory alone (C_STOP is set): drop the queues, count C_ACK up. */
  | { kind: "quiesce" }
  /** Device reset: the guest's nodes and open handles go (after a quiesce). */
  | { kind: "reset" }
  /** A restored device: the session INIT agreed before the snapshot (none: INIT comes again), and the tables opened again by the main thread (their fds are the process's). */
  | { kind: "session"; init: FuseSession | undefined; table?: ReopenedTable }
  /** Paused for a snapshot: send the session and the tables (answered with "table"). */
  | { kind: "export" }
  /** Close every host fd, then end. */
  | { kind: "close" };

export type FromFsThread =
  /** The driver broke the rings (or the device failed): the transport sets DEVICE_NEEDS_RESET. */
  | NeedsReset
  | { kind: "closed" }
  /** The answer to "export": the session INIT agreed (none before INIT) and HostFs.exportTable(). */
  | { kind: "table"; init: FuseSession | undefined; table: SavedTable; lost: string[] };
