// A virtio driver for tests: it drives a device through the virtio-mmio
// registers and lays out split virtqueues in guest memory as a guest's driver
// would (virtio 1.2, 3.1 "Device Initialization", 2.7 "Split Virtqueues"), so
// device models are tested without a guest (like rust-vmm's MockSplitQueue).
// Being test code it may also break the rules on purpose: the fuzz tests write
// hostile rings with the raw helpers.

import { FramePool, FRAME_SIZE } from "../../memory/frame-pool.js";
import { P2m } from "../../memory/p2m.js";
import { GuestMemory, type SharedGuestMemory } from "../../memory/guest-memory.js";
import { VirtioMmio } from "./mmio.js";
import type { VirtioDevice } from "./virtio.js";
import { STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1 } from "./virtio.js";
import { StateReader, type Plain } from "../../snapshot/state.js";
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT, DESC_SIZE, ringAreaSizes } from "./queue.js";

export const TEST_RAM = 0x8000_0000n;

/** Guest RAM of `bytes` for device tests. */
export function testGuestMemory(bytes = 4 << 20): GuestMemory {
  return testSharedGuestMemory(bytes).mem;
}

/** Guest RAM, and the same as another thread attaches it. */
export function testSharedGuestMemory(bytes = 4 << 20): { mem: GuestMemory; shared: SharedGuestMemory } {
  const pool = new FramePool(1 << 16);
  const p2m = new P2m(pool, TEST_RAM, Math.ceil(bytes / FRAME_SIZE) * FRAME_SIZE);
  return { mem: new GuestMemory(p2m), shared: { pool: pool.handle(), p2m: p2m.handle(), codePageMap: 0 } };
}

export interface Buffer {
  /** Bytes the device reads, or, for a writable buffer, its length. */
  data?: Uint8Array;
  writeLen?: number;
}

/** Where a test driver keeps its rings and buffers, so several drivers can share one guest memory. */
export interface TestDriverLayout {
  /** Queue i lives at rings + i * 0x10000 (descriptors, then available ring at +0x4000, used ring at +0x8000). */
  rings?: bigint;
  /** Buffers are allocated from heap upwards... */
  heap?: bigint;
  /** ...and start again at `heap` when they would pass heapEnd (a long-running test reuses the space). */
  heapEnd?: bigint;
  /** The memory the transport and device use, when a test watches their accesses apart from the driver's own. */
  deviceMem?: GuestMemory;
  /** The same memory for a device that serves its queues on another thread (blk-iothread.ts). */
  shared?: SharedGuestMemory;
}

/** Where a test driver puts one queue and its buffers. */
interface DriverQueue {
  size: number;
  desc: bigint;
  avail: bigint;
  used: bigint;
  availIdx: number;
  usedSeen: number;
  nextDesc: number;
}

export class TestDriver {
  readonly transport: VirtioMmio;
  irq = false;
  warnings: string[] = [];
  polls = 0;
  private queues: DriverQueue[] = [];
  /** Bump allocator for buffers, above the rings. */
  private heap: bigint;
  private readonly heapStart: bigint;
  private readonly heapEnd: bigint | undefined;
  private readonly rings: bigint;

  constructor(readonly device: VirtioDevice, readonly mem: GuestMemory = testGuestMemory(), layout: TestDriverLayout = {}) {
    this.transport = new VirtioMmio(device, {
      mem: layout.deviceMem ?? mem,
      shared: layout.shared,
      setIrq: (high) => (this.irq = high()),
      requestPoll: () => this.polls++,
      warn: (m) => this.warnings.push(m),
    });
    this.rings = layout.rings ?? TEST_RAM;
    this.heapStart = this.heap = layout.heap ?? TEST_RAM + 0x10_0000n;
    this.heapEnd = layout.heapEnd;
  }

  /**
   * A driver for `device`, a new device restored from a snapshot: a new
   * transport on the same guest memory, this driver's view of the rings and
   * its heap carried over (as a guest's driver goes on after a restore).
   */
  static restored(device: VirtioDevice, from: TestDriver, layout: Pick<TestDriverLayout, "deviceMem" | "shared"> = {}): TestDriver {
    const d = new TestDriver(device, from.mem, { ...layout, rings: from.rings, heap: from.heapStart, heapEnd: from.heapEnd });
    d.queues = from.queues.map((q) => ({ ...q }));
    d.heap = from.heap;
    return d;
  }

  /** pauseIo, saveState, and the state through JSON as a snapshot file would carry it. */
  async snapshot(): Promise<Plain> {
    await this.transport.pauseIo();
    return JSON.parse(JSON.stringify(this.transport.saveState())) as Plain;
  }

  /** Snapshot this driver's device, restore it into `device` (same configuration) and resume: the new driver. */
  async snapshotInto(device: VirtioDevice, layout: Pick<TestDriverLayout, "deviceMem" | "shared"> = {}): Promise<TestDriver> {
    const state = await this.snapshot();
    const d = TestDriver.restored(device, this, layout);
    d.transport.restoreState(new StateReader(state, device.name));
    d.transport.resumeIo();
    return d;
  }

  reg(offset: number): number {
    return Number(this.transport.read(offset, 4));
  }

  setReg(offset: number, value: number): void {
    this.transport.write(offset, 4, BigInt(value >>> 0));
  }

  get status(): number {
    return this.reg(0x70);
  }

  deviceFeatures(): bigint {
    this.setReg(0x14, 0);
    const lo = BigInt(this.reg(0x10));
    this.setReg(0x14, 1);
    return lo | (BigInt(this.reg(0x10)) << 32n);
  }

  /** 3.1.1 up to FEATURES_OK; returns whether the device accepted `features`. */
  negotiate(features: bigint = VIRTIO_F_VERSION_1): boolean {
    this.setReg(0x70, 0);
    this.setReg(0x70, STATUS_ACKNOWLEDGE);
    this.setReg(0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    this.setReg(0x24, 0);
    this.setReg(0x20, Number(features & 0xffff_ffffn));
    this.setReg(0x24, 1);
    this.setReg(0x20, Number(features >> 32n));
    this.setReg(0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    return (this.status & STATUS_FEATURES_OK) !== 0;
  }

  /** Place queue `index` with `size` entries in guest memory and make it live. */
  setupQueue(index: number, size: number): void {
    const base = this.rings + BigInt(index) * 0x1_0000n;
    const q: DriverQueue = { size, desc: base, avail: base + 0x4000n, used: base + 0x8000n, availIdx: 0, usedSeen: 0, nextDesc: 0 };
    this.queues[index] = q;
    // Fresh rings start zeroed, as a driver allocates them (2.7.6, 2.7.8: both indexes start at 0),
    // so a queue set up again after a reset does not show the device the old indexes.
    const area = ringAreaSizes(Math.min(size, 1024));
    this.mem.zero(q.desc, area.desc);
    this.mem.zero(q.avail, area.avail + 2);
    this.mem.zero(q.used, area.used + 2);
    this.setReg(0x30, index);
    this.setReg(0x38, size);
    for (const [reg, addr] of [[0x80, q.desc], [0x90, q.avail], [0xa0, q.used]] as const) {
      this.setReg(reg, Number(addr & 0xffff_ffffn));
      this.setReg(reg + 4, Number(addr >> 32n));
    }
    this.setReg(0x44, 1);
  }

  driverOk(): void {
    this.setReg(0x70, this.status | STATUS_DRIVER_OK);
  }

  /** The usual bring-up: negotiate, queues of `size`, DRIVER_OK. */
  start(features?: bigint, size = 16): void {
    if (!this.negotiate(features)) throw new Error("device refused the features");
    for (let i = 0; i < this.device.queueMaxSizes.length; i++) this.setupQueue(i, Math.min(size, this.device.queueMaxSizes[i]));
    this.driverOk();
  }

  alloc(len: number): bigint {
    if (this.heapEnd !== undefined && this.heap + BigInt(len) > this.heapEnd) this.heap = this.heapStart;
    const at = this.heap;
    this.heap += BigInt((len + 15) & ~15);
    return at;
  }

  /** Put a chain of buffers in queue `index` (readable first, then writable); returns its head. */
  add(index: number, buffers: Buffer[], opts: { indirect?: boolean } = {}): number {
    const q = this.queues[index];
    const descs = buffers.map((b) => {
      const len = b.data ? b.data.length : b.writeLen ?? 0;
      const addr = this.alloc(len);
      if (b.data) this.mem.write(addr, b.data);
      return { addr, len, flags: b.data ? 0 : VIRTQ_DESC_F_WRITE };
    });
    let head: number;
    if (opts.indirect) {
      const table = this.alloc(DESC_SIZE * descs.length);
      descs.forEach((d, i) => this.writeDesc(table, i, d.addr, d.len, d.flags | (i < descs.length - 1 ? VIRTQ_DESC_F_NEXT : 0), i + 1));
      head = this.takeDesc(q);
      this.writeDesc(q.desc, head, table, DESC_SIZE * descs.length, VIRTQ_DESC_F_INDIRECT, 0);
    } else {
      const ids = descs.map(() => this.takeDesc(q));
      descs.forEach((d, i) => this.writeDesc(q.desc, ids[i], d.addr, d.len, d.flags | (i < descs.length - 1 ? VIRTQ_DESC_F_NEXT : 0), ids[i + 1] ?? 0));
      head = ids[0];
    }
    this.publish(index, head);
    return head;
  }

  /** Put a chain of descriptors pointing at the given guest addresses (nothing
   *  is allocated or written: a balloon's free page report names guest pages). */
  addSegments(index: number, segments: { addr: bigint; len: number; writable?: boolean }[]): number {
    const q = this.queues[index];
    const ids = segments.map(() => this.takeDesc(q));
    segments.forEach((s, i) =>
      this.writeDesc(q.desc, ids[i], s.addr, s.len, (s.writable ? VIRTQ_DESC_F_WRITE : 0) | (i < segments.length - 1 ? VIRTQ_DESC_F_NEXT : 0), ids[i + 1] ?? 0));
    this.publish(index, ids[0]);
    return ids[0];
  }

  /** Make `head` available (raw: the fuzz tests pass any value). */
  publish(index: number, head: number): void {
    const q = this.queues[index];
    this.mem.writeU16(q.avail + 4n + 2n * BigInt(q.availIdx % q.size), head);
    q.availIdx = (q.availIdx + 1) & 0xffff;
    this.mem.writeU16(q.avail + 2n, q.availIdx);
  }

  writeDesc(table: bigint, i: number, addr: bigint, len: number, flags: number, next: number): void {
    const b = new Uint8Array(DESC_SIZE);
    const dv = new DataView(b.buffer);
    dv.setBigUint64(0, BigInt.asUintN(64, addr), true);
    dv.setUint32(8, len >>> 0, true);
    dv.setUint16(12, flags & 0xffff, true);
    dv.setUint16(14, next & 0xffff, true);
    this.mem.write(table + BigInt(i * DESC_SIZE), b);
  }

  queueLayout(index: number): DriverQueue {
    return this.queues[index];
  }

  kick(index: number): void {
    this.setReg(0x50, index);
  }

  /** Completed requests since the last call: head and bytes written. */
  used(index: number): { id: number; len: number }[] {
    const q = this.queues[index];
    const idx = this.mem.readU16(q.used + 2n);
    const out: { id: number; len: number }[] = [];
    while (q.usedSeen !== idx) {
      const slot = q.used + 4n + 8n * BigInt(q.usedSeen % q.size);
      out.push({ id: this.mem.readU32(slot), len: this.mem.readU32(slot + 4n) });
      q.usedSeen = (q.usedSeen + 1) & 0xffff;
    }
    return out;
  }

  /** Acknowledge all interrupts, as a driver's handler does. */
  ackInterrupts(): number {
    const status = this.reg(0x60);
    this.setReg(0x64, status);
    return status;
  }

  /** The address of the `n`th buffer of the chain last added at `head` (read back what the device wrote). */
  bufferAddr(index: number, head: number, n: number): bigint {
    const q = this.queues[index];
    let table = q.desc;
    let i = head;
    let flags = this.mem.readU16(table + BigInt(i * DESC_SIZE) + 12n);
    if (flags & VIRTQ_DESC_F_INDIRECT) {
      table = this.mem.readU64(table + BigInt(i * DESC_SIZE));
      i = 0;
      flags = this.mem.readU16(table + 12n);
    }
    for (let k = 0; k < n; k++) i = this.mem.readU16(table + BigInt(i * DESC_SIZE) + 14n);
    return this.mem.readU64(table + BigInt(i * DESC_SIZE));
  }

  private takeDesc(q: DriverQueue): number {
    const id = q.nextDesc;
    q.nextDesc = (q.nextDesc + 1) % q.size;
    return id;
  }
}
