// The device side of a split virtqueue (virtio 1.2, 2.7 "Split Virtqueues").
//
// Layout in guest memory, all little-endian:
//   descriptor table  16 bytes per entry: addr u64, len u32, flags u16, next u16
//   available ring    flags u16, idx u16, ring[size] u16, used_event u16 (EVENT_IDX)
//   used ring         flags u16, idx u16, ring[size] {id u32, len u32}, avail_event u16 (EVENT_IDX)
//
// The guest is hostile by assumption. Everything read from the rings is checked
// before use, and two kinds of failure are told apart:
// - ChainError: one descriptor chain is malformed (a loop, longer than the queue,
//   outside guest RAM, a nested indirect table, a readable buffer after a
//   writable one). That request fails: its head goes back in the used ring with
//   length 0 (or the device reports an error status), and the queue goes on.
// - QueueBroken: the ring itself cannot be trusted (a head index out of range,
//   an available index that moved more than the queue size, ring memory outside
//   RAM). The transport sets DEVICE_NEEDS_RESET (2.1.2) and the queue stops
//   until the driver resets the device.
// Guest memory is touched only through the bounds-checked GuestMemory accessor.

import type { GuestMemory } from "../../memory/guest-memory.js";
import { GuestMemoryError } from "../../memory/guest-memory.js";
import { SnapshotError, type Plain, type StateReader } from "../../snapshot/state.js";

/** Descriptor flags (2.7.5). */
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
/** Available ring flag: the driver does not want interrupts (2.7.7). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;

export const DESC_SIZE = 16;
/** Spec limit on the total length of a chain's buffers (2.7.5: "2^32 bytes long in total"). */
const MAX_CHAIN_BYTES = 2 ** 32;
/**
 * Descriptors in one chain at most, an indirect table's included. 2.7.5.3.1 has
 * a driver keep a chain within the queue size, but Linux builds indirect tables
 * of up to seg_max + 2 entries whatever the queue size, and QEMU refuses more
 * than 1024 buffers (its VIRTQUEUE_MAX_SIZE): no driver that works there needs
 * more. Without a bound one notify could make the device walk 256 tables of
 * 65536 descriptors, seconds of host time, on every kick.
 */
export const MAX_CHAIN_DESCRIPTORS = 1024;

export class ChainError extends Error {}
export class QueueBroken extends Error {}

/** One guest buffer of a chain. */
export interface Segment {
  addr: bigint;
  len: number;
}

/** Where a queue lives, as the driver configured it through the transport. */
export interface QueueConfig {
  size: number;
  descAddr: bigint;
  availAddr: bigint;
  usedAddr: bigint;
  /** VIRTIO_F_EVENT_IDX negotiated. */
  eventIdx: boolean;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  indirect: boolean;
}

/** A queue's free-running device-side counters: what a snapshot keeps of a live queue (its rings are in guest RAM). */
export interface QueueIndices {
  lastAvail: number;
  usedIdx: number;
  signalledUsed: number;
  pendingUsed: boolean;
}

export class QueueStats {
  notifications = 0;
  requests = 0;
  bytesRead = 0;
  bytesWritten = 0;
  badChains = 0;
  interrupts = 0;
}

/** Bytes of a ring area: what the transport checks lies in RAM before the queue goes live. */
export function ringAreaSizes(size: number): { desc: number; avail: number; used: number } {
  return { desc: DESC_SIZE * size, avail: 6 + 2 * size, used: 6 + 8 * size };
}

/** A request: the device-readable buffers, then the device-writable ones (2.7.4.2). */
export class DescriptorChain {
  readonly readableLength: number;
  readonly writableLength: number;

  constructor(
    readonly head: number,
    readonly readable: Segment[],
    readonly writable: Segment[],
    private readonly mem: GuestMemory,
    private readonly stats: QueueStats,
  ) {
    this.readableLength = readable.reduce((n, s) => n + s.len, 0);
    this.writableLength = writable.reduce((n, s) => n + s.len, 0);
  }

  /** `len` bytes of the readable part from `offset`. */
  read(offset: number, len: number): Uint8Array {
    if (offset < 0 || len < 0 || offset + len > this.readableLength) {
      throw new ChainError(`read of ${len} bytes at ${offset} beyond the ${this.readableLength} readable bytes`);
    }
    const out = new Uint8Array(len);
    let done = 0;
    forEachPiece(this.readable, offset, len, (addr, n) => {
      out.set(this.guestAccess(() => this.mem.read(addr, n)), done);
      done += n;
    });
    this.stats.bytesRead += len;
    return out;
  }

  /** Copy `data` into the writable part at `offset`. */
  write(offset: number, data: Uint8Array): void {
    if (offset < 0 || offset + data.length > this.writableLength) {
      throw new ChainError(`write of ${data.length} bytes at ${offset} beyond the ${this.writableLength} writable bytes`);
    }
    let done = 0;
    forEachPiece(this.writable, offset, data.length, (addr, n) => {
      this.guestAccess(() => this.mem.write(addr, data.subarray(done, done + n)));
      done += n;
    });
    this.stats.bytesWritten += data.length;
  }

  /**
   * The buffers were in RAM when the chain was parsed; should guest memory
   * refuse one now all the same (RAM taken away under the request), that fails
   * this request like any malformed chain, never more: a ChainError is the only
   * failure of a chain's read() and write().
   */
  private guestAccess<T>(access: () => T): T {
    try {
      return access();
    } catch (e) {
      if (e instanceof GuestMemoryError) throw new ChainError(`request ${this.head}: ${e.message}`);
      throw e;
    }
  }

  /** The pieces of guest memory behind [offset, offset + len) of the readable or writable part. */
  pieces(part: "readable" | "writable", offset: number, len: number): Segment[] {
    const segs = part === "readable" ? this.readable : this.writable;
    const total = part === "readable" ? this.readableLength : this.writableLength;
    if (offset < 0 || len < 0 || offset + len > total) throw new ChainError(`range ${offset}+${len} beyond the ${total} ${part} bytes`);
    const out: Segment[] = [];
    forEachPiece(segs, offset, len, (addr, n) => out.push({ addr, len: n }));
    return out;
  }
}

function forEachPiece(segs: Segment[], offset: number, len: number, visit: (addr: bigint, n: number) => void): void {
  let skip = offset;
  let left = len;
  for (const s of segs) {
    if (left === 0) break;
    if (skip >= s.len) {
      skip -= s.len;
      continue;
    }
    const n = Math.min(s.len - skip, left);
    visit(s.addr + BigInt(skip), n);
    skip = 0;
    left -= n;
  }
}

export class VirtQueue {
  /** Free-running 16-bit counters (2.7.6, 2.7.8). */
  private lastAvail = 0;
  private usedIdx = 0;
  /** Used index when the driver was last interrupted (EVENT_IDX suppression, 2.7.10). */
  private signalledUsed = 0;
  private pendingUsed = false;

  constructor(
    readonly index: number,
    private readonly cfg: QueueConfig,
    private readonly mem: GuestMemory,
    /** Raise the used-buffer interrupt. */
    private readonly interrupt: () => void,
    /** Counters, kept by the transport across resets. */
    readonly stats = new QueueStats(),
  ) {}

  get size(): number {
    return this.cfg.size;
  }

  /** The device-side counters (another thread's queue starts from them, a snapshot saves them). */
  get indices(): QueueIndices {
    return { lastAvail: this.lastAvail, usedIdx: this.usedIdx, signalledUsed: this.signalledUsed, pendingUsed: this.pendingUsed };
  }

  /**
   * Requests taken from the ring and not given back yet (popped, not pushed):
   * what a device holds (net's receive buffers, balloon's stats buffer) or
   * has in hand.
   */
  get inFlight(): number {
    return (this.lastAvail - this.usedIdx) & 0xffff;
  }

  /** Plain state: the indices (the rings themselves are guest RAM, saved with it). */
  saveState(): Plain {
    return { ...this.indices };
  }

  /**
   * Indices read back from a snapshot (untrusted): each a 16-bit counter, and
   * no more requests in flight than the queue has entries. Throws SnapshotError.
   */
  static readIndices(r: StateReader, size: number): QueueIndices {
    const ix: QueueIndices = {
      lastAvail: r.int("lastAvail", 0, 0xffff),
      usedIdx: r.int("usedIdx", 0, 0xffff),
      signalledUsed: r.int("signalledUsed", 0, 0xffff),
      pendingUsed: r.bool("pendingUsed"),
    };
    const inFlight = (ix.lastAvail - ix.usedIdx) & 0xffff;
    r.check(inFlight <= size, `lastAvail ${ix.lastAvail} is ${inFlight} requests ahead of usedIdx ${ix.usedIdx}, more than the queue size ${size}`);
    return ix;
  }

  /** Start from these indices (a restored queue, or the one another thread served): checked by readIndices or our own. */
  setIndices(ix: QueueIndices): void {
    const ok = (n: number) => Number.isInteger(n) && n >= 0 && n <= 0xffff;
    if (!ok(ix.lastAvail) || !ok(ix.usedIdx) || !ok(ix.signalledUsed) || ((ix.lastAvail - ix.usedIdx) & 0xffff) > this.cfg.size) {
      throw new RangeError(`queue ${this.index}: bad indices ${JSON.stringify(ix)}`);
    }
    this.lastAvail = ix.lastAvail;
    this.usedIdx = ix.usedIdx;
    this.signalledUsed = ix.signalledUsed;
    this.pendingUsed = ix.pendingUsed;
  }

  /**
   * The chain at `head` parsed again from the descriptor table: a request a
   * device had taken and not completed when its state was saved (the driver
   * may not touch its descriptors until it is used, 2.7.13). Throws
   * QueueBroken for a head out of range and ChainError for a malformed chain,
   * as pop() would meet them.
   */
  chainAt(head: number): DescriptorChain {
    if (!Number.isInteger(head) || head < 0 || head >= this.cfg.size) {
      throw new QueueBroken(`queue ${this.index}: head index ${head} out of range (size ${this.cfg.size})`);
    }
    return this.parseChain(head);
  }

  /** Where the queue lives and what was negotiated for it (another thread builds its own VirtQueue from this). */
  get config(): Readonly<QueueConfig> {
    return this.cfg;
  }

  /**
   * The next available request, or undefined when the driver has made none.
   * Malformed chains are completed with length 0 and skipped (counted in
   * stats.badChains). Throws QueueBroken when the ring itself is unusable.
   */
  pop(): DescriptorChain | undefined {
    for (;;) {
      const availIdx = this.ringRead16(this.cfg.availAddr + 2n);
      const waiting = (availIdx - this.lastAvail) & 0xffff;
      if (waiting > this.cfg.size) {
        throw new QueueBroken(`queue ${this.index}: available index moved by ${waiting}, more than the queue size ${this.cfg.size}`);
      }
      // Ask to be notified of the next buffer after those seen now (2.7.10).
      if (this.cfg.eventIdx) this.setAvailEvent(availIdx);
      if (waiting === 0) return undefined;
      const head = this.ringRead16(this.cfg.availAddr + 4n + 2n * BigInt(this.lastAvail % this.cfg.size));
      if (head >= this.cfg.size) throw new QueueBroken(`queue ${this.index}: head index ${head} out of range (size ${this.cfg.size})`);
      this.lastAvail = (this.lastAvail + 1) & 0xffff;
      try {
        const chain = this.parseChain(head);
        this.stats.requests++;
        return chain;
      } catch (e) {
        if (!(e instanceof ChainError)) throw e;
        this.stats.badChains++;
        this.push(head, 0);
      }
    }
  }

  /** Give a request back to the driver with `written` bytes written into its writable buffers. */
  push(head: number | DescriptorChain, written: number): void {
    const id = typeof head === "number" ? head : head.head;
    const slot = this.cfg.usedAddr + 4n + 8n * BigInt(this.usedIdx % this.cfg.size);
    const entry = new Uint8Array(8);
    const dv = new DataView(entry.buffer);
    dv.setUint32(0, id, true);
    dv.setUint32(4, written >>> 0, true);
    this.ringWrite(slot, entry);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.ringWrite16(this.cfg.usedAddr + 2n, this.usedIdx);
    this.pendingUsed = true;
  }

  /**
   * After a batch of push()es: interrupt the driver unless it asked not to be
   * (VIRTQ_AVAIL_F_NO_INTERRUPT, or with EVENT_IDX its used_event, 2.7.10).
   */
  notifyDriver(): void {
    if (!this.pendingUsed) return;
    this.pendingUsed = false;
    let wanted: boolean;
    if (this.cfg.eventIdx) {
      const usedEvent = this.ringRead16(this.cfg.availAddr + 4n + 2n * BigInt(this.cfg.size));
      // vring_need_event: did used idx step past used_event since the last interrupt?
      wanted = ((this.usedIdx - usedEvent - 1) & 0xffff) < ((this.usedIdx - this.signalledUsed) & 0xffff);
    } else {
      wanted = (this.ringRead16(this.cfg.availAddr) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    }
    this.signalledUsed = this.usedIdx;
    if (wanted) {
      this.stats.interrupts++;
      this.interrupt();
    }
  }

  /** Are requests waiting (without taking one)? */
  hasAvailable(): boolean {
    return ((this.ringRead16(this.cfg.availAddr + 2n) - this.lastAvail) & 0xffff) !== 0;
  }

  /** The driver's available index (free-running): it moves each time the driver makes a buffer available. */
  availIndex(): number {
    return this.ringRead16(this.cfg.availAddr + 2n);
  }

  /** Walk a chain from `head`, following NEXT and at most one indirect table (2.7.5.3). */
  private parseChain(head: number): DescriptorChain {
    const readable: Segment[] = [];
    const writable: Segment[] = [];
    let table = this.cfg.descAddr;
    let tableSize = this.cfg.size;
    let index = head;
    let indirect = false;
    let sawWritable = false;
    let bytes = 0;
    // A chain has at most queue-size descriptors (2.7.5.2), an indirect table
    // at most its own length (and MAX_CHAIN_DESCRIPTORS): more means a loop.
    let budget = this.cfg.size;
    for (;;) {
      if (budget-- === 0) throw new ChainError(`chain from head ${head} is longer than the queue or loops`);
      const d = this.readDescriptor(table, index);
      if (d.flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.cfg.indirect) throw new ChainError("indirect descriptor without VIRTIO_F_INDIRECT_DESC");
        if (indirect) throw new ChainError("indirect table inside an indirect table");
        if (d.flags & VIRTQ_DESC_F_NEXT) throw new ChainError("indirect descriptor with NEXT set");
        if (d.len === 0 || d.len % DESC_SIZE !== 0) throw new ChainError(`indirect table length ${d.len} is not a multiple of ${DESC_SIZE}`);
        if (!this.mem.isRam(d.addr, d.len)) throw new ChainError(`indirect table at 0x${d.addr.toString(16)} is outside guest RAM`);
        indirect = true;
        table = d.addr;
        tableSize = d.len / DESC_SIZE;
        budget = Math.min(tableSize, MAX_CHAIN_DESCRIPTORS);
        index = 0;
        continue;
      }
      // 2.7.4.2: every device-writable descriptor comes after the device-readable
      // ones. An empty descriptor is still one of them: a readable one after a
      // writable one breaks the order (and a device that skipped it would take
      // the buffers around it for a well-formed request).
      if (d.flags & VIRTQ_DESC_F_WRITE) sawWritable = true;
      else if (sawWritable) throw new ChainError("device-readable descriptor after a device-writable one");
      if (d.len > 0) {
        if (!this.mem.isRam(d.addr, d.len)) throw new ChainError(`buffer 0x${d.addr.toString(16)}+${d.len} is outside guest RAM`);
        bytes += d.len;
        if (bytes > MAX_CHAIN_BYTES) throw new ChainError("chain longer than 2^32 bytes");
        (d.flags & VIRTQ_DESC_F_WRITE ? writable : readable).push({ addr: d.addr, len: d.len });
      }
      if (!(d.flags & VIRTQ_DESC_F_NEXT)) break;
      if (d.next >= tableSize) throw new ChainError(`next index ${d.next} out of range (table of ${tableSize})`);
      index = d.next;
    }
    return new DescriptorChain(head, readable, writable, this.mem, this.stats);
  }

  private readDescriptor(table: bigint, index: number): { addr: bigint; len: number; flags: number; next: number } {
    let raw: Uint8Array;
    try {
      raw = this.mem.read(table + BigInt(index * DESC_SIZE), DESC_SIZE);
    } catch (e) {
      if (e instanceof GuestMemoryError) throw new ChainError(`descriptor ${index} is outside guest RAM`);
      throw e;
    }
    const dv = new DataView(raw.buffer);
    return { addr: dv.getBigUint64(0, true), len: dv.getUint32(8, true), flags: dv.getUint16(12, true), next: dv.getUint16(14, true) };
  }

  private setAvailEvent(value: number): void {
    this.ringWrite16(this.cfg.usedAddr + 4n + 8n * BigInt(this.cfg.size), value);
  }

  // The ring areas were checked to lie in RAM when the queue went live; a
  // failure here still must not escape as anything but QueueBroken.
  private ringRead16(gpa: bigint): number {
    try {
      return this.mem.readU16(gpa);
    } catch (e) {
      throw this.broken(e);
    }
  }

  private ringWrite16(gpa: bigint, v: number): void {
    try {
      this.mem.writeU16(gpa, v);
    } catch (e) {
      throw this.broken(e);
    }
  }

  private ringWrite(gpa: bigint, data: Uint8Array): void {
    try {
      this.mem.write(gpa, data);
    } catch (e) {
      throw this.broken(e);
    }
  }

  private broken(e: unknown): unknown {
    return e instanceof GuestMemoryError ? new QueueBroken(`queue ${this.index}: ring outside guest RAM`) : e;
  }
}

// ---- restoring a device's hold on its queues (snapshots) ---------------------------

/** Restore check for a device that holds no request once paused: nothing in flight on `q`. */
export function checkNoneInFlight(r: StateReader, q: VirtQueue | undefined): void {
  if (q && q.inFlight !== 0) {
    throw new SnapshotError(`${r.path}: queue ${q.index} has ${q.inFlight} requests in flight, and this device holds none once paused`);
  }
}

/**
 * The chains a device held on `q` (saved as their heads under `key`), parsed
 * again: distinct heads below the queue size, exactly as many as the queue
 * has in flight, each a well-formed chain. Throws SnapshotError naming the field.
 */
export function readHeldChains(r: StateReader, key: string, q: VirtQueue): DescriptorChain[] {
  const heads = r.ints(key, q.size, 0, q.size - 1);
  const field = `${r.path}.${key}`;
  if (new Set(heads).size !== heads.length) throw new SnapshotError(`${field}: a head is held twice`);
  if (heads.length !== q.inFlight) {
    throw new SnapshotError(`${field}: ${heads.length} requests held, but queue ${q.index} has ${q.inFlight} in flight`);
  }
  return heads.map((head, i) => {
    try {
      return q.chainAt(head);
    } catch (e) {
      if (e instanceof ChainError || e instanceof QueueBroken) throw new SnapshotError(`${field}[${i}]: ${e.message}`);
      throw e;
    }
  });
}
