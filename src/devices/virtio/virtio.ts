// What every virtio device shares, whatever its transport (virtio 1.2, chapter 2
// "Basic Facilities of a Virtio Device" and chapter 6 "Reserved Feature Bits"),
// and the interface between the virtio-mmio transport (mmio.ts) and a device
// model (blk/, net/, console/, rng/).
//
// A device model sees its queues (queue.ts) and guest memory through the
// bounds-checked accessor, never raw host memory.

import type { IrqfdRoute } from "../../host/irqfd.js";
import type { DirectKick } from "../../vmm/queue-doorbell.js";
import type { GuestMemory, SharedGuestMemory } from "../../memory/guest-memory.js";
import type { VirtQueue } from "./queue.js";
import type { Plain, StateReader } from "../../snapshot/state.js";

/** Device IDs (virtio 1.2, 5 "Device Types"). */
export const VIRTIO_ID_NET = 1;
export const VIRTIO_ID_BLOCK = 2;
export const VIRTIO_ID_CONSOLE = 3;
export const VIRTIO_ID_RNG = 4;
export const VIRTIO_ID_BALLOON = 5;

/** Device status bits (2.1). */
export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_DEVICE_NEEDS_RESET = 64;
export const STATUS_FAILED = 128;

/** Transport-independent feature bits (6). */
export const VIRTIO_F_INDIRECT_DESC = 1n << 28n;
export const VIRTIO_F_EVENT_IDX = 1n << 29n;
export const VIRTIO_F_VERSION_1 = 1n << 32n;

/** What a device model offers the transport. */
export interface VirtioDevice {
  /** Device type (VIRTIO_ID_*). */
  readonly deviceId: number;
  /** Short name for statistics and messages ("blk0", "net0"). */
  readonly name: string;
  /** The largest size of each of its queues (QueueNumMax); its length is the number of queues. */
  readonly queueMaxSizes: readonly number[];
  /** Device-specific feature bits it offers (the transport adds VERSION_1, INDIRECT_DESC, EVENT_IDX). */
  readonly features: bigint;
  /** Device configuration space, read byte-exactly at `offset` (little-endian fields, 4.2.2.2). */
  readConfig(offset: number, size: number): number;
  /** A driver write into the configuration space (most devices ignore them). */
  writeConfig(offset: number, size: number, value: number): void;
  /**
   * DRIVER_OK: the driver is ready; `features` is the negotiated set. `queues`
   * is the transport's live array of the device's queues, by index: a device
   * looks a queue up there each time it uses it, because the driver may stop a
   * queue (its entry becomes undefined) or make one ready later (a new entry).
   */
  activate(ctx: VirtioContext, queues: readonly (VirtQueue | undefined)[], features: bigint): void;
  /** The driver made buffers available in queue `index` (a QueueNotify). */
  notify(index: number): void;
  /** A queue served on the device's own thread, which vCPUs' workers kick
   *  directly while it is armed (vmm/queue-doorbell.ts DirectKick). */
  readonly directKick?: DirectKick;
  /** Device reset (status 0): drop all in-flight state; activate() follows again. */
  reset(): void;
  /** Host-side work that arrived asynchronously (network input): process it now. */
  poll?(): void;
  /** The driver stopped queue `index` (QueueReady = 0, 4.2.2.2): from the
   *  return on, the device must not touch its rings (a device whose queues
   *  another thread serves stops that thread's work on it first). */
  queueStopped?(index: number): void;
  /** The VM's RAM is about to be given back: stop touching guest memory
   *  (an I/O thread finishes the request in flight). reset() follows before
   *  the device is used again. */
  quiesce?(): Promise<void>;
  /** The VM was restored or migrated here: tell the network (virtio-net sends a RARP for its MAC). */
  announce?(): void;
  /** Release host resources (files, sockets) when the device is done with. */
  close?(): void | Promise<void>;
  /** Bring the transport's queue counts up to date (a device whose queues
   *  another thread serves keeps them there); called before they are read. */
  syncStats?(): void;
  /** Per-device lines for `--stats` beyond the per-queue counts. */
  statsLines?(): string[];

  // ---- snapshots (src/snapshot/state.ts): the transport drives these ----

  /**
   * The VM is pausing for a snapshot: finish or park the requests in flight
   * and take no new ones until resumeIo(). Once it resolves no thread of the
   * device touches guest memory (the snapshot copies RAM now) and saveState()
   * sees the true ring indices. Host input (network frames, console bytes)
   * may still arrive; it waits. Also called, without waiting, on a freshly
   * built device before a restore activates it: nothing is in flight there,
   * and it must start no I/O until resumeIo().
   */
  pauseIo?(): Promise<void>;
  /** Go on after pauseIo() (or after a restore). */
  resumeIo?(): void;
  /**
   * The device's own state beyond the transport's (which saves status,
   * features and every queue's registers and indices): requests it holds, as
   * head indices per queue, and state the driver or host set. Never the
   * backend (disk, network), which the caller reopens from the VM's
   * definition. Called after pauseIo().
   */
  saveState?(): Plain;
  /**
   * Apply saved state (untrusted: every value checked, SnapshotError naming
   * the field otherwise) to a freshly built device. The transport calls it
   * after it rebuilt the queues with their indices and, when the driver was
   * running (DRIVER_OK without DEVICE_NEEDS_RESET), activate()d the device;
   * otherwise the device is not active and held requests mean nothing (a
   * reset comes before it is used). Held requests are taken again with
   * VirtQueue.chainAt().
   */
  restoreState?(r: StateReader): void;
}

/** What the transport gives an active device. */
export interface VirtioContext {
  readonly mem: GuestMemory;
  /** Tell the driver the configuration space changed (4.2.2: InterruptStatus bit 1). */
  configChanged(): void;
  /** Ask the machine to call poll() soon, waking an idle VM (asynchronous host input). */
  requestPoll(): void;
  /** Raise the used-buffer interrupt for queue `index`: for a device whose
   *  queues another thread serves (its own VirtQueue decided the driver wants it). */
  usedBuffer(index: number): void;
  /** The driver broke the device's rings (seen on another thread): set
   *  DEVICE_NEEDS_RESET and tell the driver (2.1.2). */
  needsReset(why: string): void;
  /** The VM's RAM as plain data another thread can attach (undefined when
   *  the machine cannot share it). */
  readonly shared?: SharedGuestMemory;
  /** How another thread raises the used-buffer interrupt itself, as KVM's
   *  irqfd (host/irqfd.ts); undefined when it cannot: usedBuffer() then. */
  irqfd?(): IrqfdRoute | undefined;
}
