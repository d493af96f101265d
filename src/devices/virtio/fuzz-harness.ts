// Pieces of the virtio fuzz test (fuzz.test.ts) that know nothing of its
// devices or its steps: seeded randomness, guest memory that records what the
// device touches, host memory with canaries around the VM's RAM, a reference
// parser of descriptor chains written from the spec, and host-side doubles
// (a disk that records accesses outside the rules, an in-memory disk, a fake
// network backend).

import { FramePool, FRAME_SIZE } from "../../memory/frame-pool.js";
import { P2m } from "../../memory/p2m.js";
import { GuestMemory } from "../../memory/guest-memory.js";
import { DESC_SIZE, MAX_CHAIN_DESCRIPTORS, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from "./queue.js";
import { DiskImageError, type DiskImage } from "../../backends/disk/disk.js";
import { rng } from "../../backends/disk/testing.js";
import type { NetBackend, NetStats } from "../../backends/net/net-backend.js";

// --- randomness -------------------------------------------------------------

export class Rand {
  private readonly r: ReturnType<typeof rng>;
  constructor(seed: number) {
    this.r = rng(seed);
  }
  int(n: number): number {
    return this.r.int(n);
  }
  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.r.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.r.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.r.int(items.length)];
  }
  u32(): number {
    return (this.r.next() * 2 ** 32) >>> 0;
  }
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
  bytes(n: number): Uint8Array {
    return this.r.bytes(n);
  }
  /** Weighted choice among [weight, value] pairs. */
  weighted<T>(choices: [number, T][]): T {
    let x = this.r.next() * choices.reduce((n, [w]) => n + w, 0);
    for (const [w, v] of choices) {
      if ((x -= w) < 0) return v;
    }
    return choices[choices.length - 1][1];
  }
}

// --- memory: the device's view is watched, the host frames around it are canaries ---

export interface Range {
  start: bigint;
  end: bigint;
}

/** Guest memory as the fuzzed device sees it: every access is recorded (and refused outside RAM, as always). */
export class WatchedMemory extends GuestMemory {
  /** Accesses the device attempted outside guest RAM (GuestMemory refuses them; the device should not even try). */
  readonly outside: string[] = [];
  /** Writes since the last step began. */
  writes: Range[] = [];

  override read(gpa: bigint, len: number): Uint8Array {
    this.note("read", gpa, len);
    return super.read(gpa, len);
  }

  override write(gpa: bigint, data: Uint8Array): void {
    if (this.note("write", gpa, data.length)) this.writes.push({ start: gpa, end: gpa + BigInt(data.length) });
    super.write(gpa, data);
  }

  override zero(gpa: bigint, len: number): void {
    if (this.note("zero", gpa, len)) this.writes.push({ start: gpa, end: gpa + BigInt(len) });
    super.zero(gpa, len);
  }

  private note(op: string, gpa: bigint, len: number): boolean {
    if (Number.isSafeInteger(len) && len >= 0 && this.isRam(gpa, len)) return true;
    this.outside.push(`${op} of ${len} bytes at 0x${gpa.toString(16)}`);
    return false;
  }
}

/**
 * One frame pool holding the fuzzed VM's RAM and, interleaved with it, another
 * VM's RAM full of a pattern: memory the fuzzed device must never touch. The
 * VM's frames are all allocated up front, so the pool does not change under
 * the test except in those frames.
 */
export class HostMemory {
  readonly pool = new FramePool(1 << 16);
  readonly vm: P2m;
  readonly neighbour: P2m;
  /** The device's view (watched) and the drivers' view of the same RAM. */
  readonly deviceView: WatchedMemory;
  readonly driverView: GuestMemory;
  private readonly snapshot: Uint8Array;
  /** The neighbour's frames, and all host byte ranges outside the VM's RAM frames. */
  private readonly neighbourFrames: number[] = [];
  private readonly foreign: [number, number][] = [];

  constructor(ramBase: bigint, ramBytes: number, neighbourFrames: number) {
    this.vm = new P2m(this.pool, ramBase, ramBytes);
    this.neighbour = new P2m(this.pool, ramBase, neighbourFrames * FRAME_SIZE);
    this.deviceView = new WatchedMemory(this.vm);
    this.driverView = new GuestMemory(this.vm);
    // A neighbour frame every 7 of ours: most of the VM's frames have another VM's memory next to them.
    let n = 0;
    for (let i = 0; i < this.vm.count; i++) {
      if (i % 7 === 0 && n < this.neighbour.count) this.neighbour.populate(n++);
      this.vm.populate(i);
    }
    while (n < this.neighbour.count) this.neighbour.populate(n++);
    const bytes = this.pool.bytes;
    for (let k = 0; k < this.neighbour.count; k++) {
      const f = this.neighbour.frameAt(k)!;
      this.neighbourFrames.push(f);
      for (let b = 0; b < FRAME_SIZE; b++) bytes[f + b] = (0xa5 ^ k ^ b) & 0xff;
    }
    const ours = new Set<number>();
    for (let i = 0; i < this.vm.count; i++) ours.add(this.vm.frameAt(i)!);
    const total = this.pool.committedBytes;
    let start = -1;
    for (let at = 0; at <= total; at += FRAME_SIZE) {
      const foreign = at < total && !ours.has(at);
      if (foreign && start < 0) start = at;
      if (!foreign && start >= 0) {
        this.foreign.push([start, at]);
        start = -1;
      }
    }
    this.snapshot = this.pool.bytes.slice();
  }

  /** The frames next to the VM's (cheap: every step). */
  neighbourIntact(): boolean {
    return this.neighbourFrames.every((f) => same(this.pool.bytes, this.snapshot, f, f + FRAME_SIZE));
  }

  /** All host memory but the VM's RAM frames (every few steps). */
  foreignIntact(): string | undefined {
    if (this.pool.committedBytes !== this.snapshot.length) return "the frame pool grew";
    for (const [s, e] of this.foreign) {
      if (!same(this.pool.bytes, this.snapshot, s, e)) return `host bytes [0x${s.toString(16)}, 0x${e.toString(16)}) changed`;
    }
    return undefined;
  }
}

function same(a: Uint8Array, b: Uint8Array, start: number, end: number): boolean {
  return Buffer.from(a.buffer, a.byteOffset + start, end - start).equals(Buffer.from(b.buffer, b.byteOffset + start, end - start));
}

export function overlaps(a: Range, b: Range): boolean {
  return a.start < b.end && b.start < a.end;
}

// --- a reference parser of descriptor chains (virtio 1.2, 2.7.5) ---

export interface Segment {
  addr: bigint;
  len: number;
}

export type ChainModel = { ok: true; readable: Segment[]; writable: Segment[]; writableLength: number; readableLength: number } | { ok: false; why: string };

/** Is [addr, addr + len) inside `ram`? */
export function within(ram: Range, addr: bigint, len: number): boolean {
  return addr >= ram.start && addr + BigInt(len) <= ram.end;
}

/**
 * What the spec says of the chain at `head` of the descriptor table at `desc`:
 * well-formed (and its buffers) or not. Written from the spec, not from
 * queue.ts, so that the two disagreeing shows.
 */
export function modelChain(mem: GuestMemory, ram: Range, desc: bigint, size: number, head: number, indirectNegotiated: boolean): ChainModel {
  const readable: Segment[] = [];
  const writable: Segment[] = [];
  let table = desc;
  let tableSize = size;
  let index = head;
  let budget = size;
  let inIndirect = false;
  let sawWritable = false;
  let bytes = 0;
  for (;;) {
    if (budget-- === 0) return { ok: false, why: "longer than its table or the descriptor bound (a loop)" };
    const at = table + BigInt(index * DESC_SIZE);
    const addr = mem.readU64(at);
    const len = mem.readU32(at + 8n);
    const flags = mem.readU16(at + 12n);
    const next = mem.readU16(at + 14n);
    if (flags & VIRTQ_DESC_F_INDIRECT) {
      // 2.7.5.3: negotiated, one level, not chained on, whole descriptors, in RAM.
      if (!indirectNegotiated || inIndirect || flags & VIRTQ_DESC_F_NEXT) return { ok: false, why: "indirect misuse" };
      if (len === 0 || len % DESC_SIZE !== 0 || !within(ram, addr, len)) return { ok: false, why: "bad indirect table" };
      table = addr;
      tableSize = len / DESC_SIZE;
      budget = Math.min(tableSize, MAX_CHAIN_DESCRIPTORS);
      index = 0;
      inIndirect = true;
      continue;
    }
    // 2.7.4.2: device-writable elements come after all device-readable ones (zero-length ones too).
    if (flags & VIRTQ_DESC_F_WRITE) sawWritable = true;
    else if (sawWritable) return { ok: false, why: "readable after writable" };
    if (len > 0) {
      if (!within(ram, addr, len)) return { ok: false, why: "buffer outside RAM" };
      bytes += len;
      if (bytes > 2 ** 32) return { ok: false, why: "more than 2^32 bytes" };
      (flags & VIRTQ_DESC_F_WRITE ? writable : readable).push({ addr, len });
    }
    if (!(flags & VIRTQ_DESC_F_NEXT)) break;
    if (next >= tableSize) return { ok: false, why: "next out of range" };
    index = next;
  }
  const sum = (segs: Segment[]) => segs.reduce((n, s) => n + s.len, 0);
  return { ok: true, readable, writable, readableLength: sum(readable), writableLength: sum(writable) };
}

/** Buffers as text, for traces. */
export function formatSegments(segs: Segment[]): string {
  return segs.map((x) => `0x${x.addr.toString(16)}+${x.len}`).join(",") || "-";
}

/** A descriptor table as text, for traces. */
export function describeDescriptors(mem: GuestMemory, table: bigint, count: number): string[] {
  return Array.from({ length: count }, (_, i) => {
    const at = table + BigInt(i * DESC_SIZE);
    return `[${i}] 0x${mem.readU64(at).toString(16)} len ${mem.readU32(at + 8n)} flags ${mem.readU16(at + 12n)} next ${mem.readU16(at + 14n)}`;
  });
}

/** The guest address of byte `offset` of a chain's writable part. */
export function writableByte(model: { writable: Segment[] }, offset: number): bigint {
  for (const s of model.writable) {
    if (offset < s.len) return s.addr + BigInt(offset);
    offset -= s.len;
  }
  throw new Error("offset beyond the writable part");
}

// --- host-side doubles -------------------------------------------------------

/** A disk that records every access the device makes outside the rules, then passes it on. */
export class CheckedDisk implements DiskImage {
  readonly violations: string[] = [];
  mutations = 0;
  constructor(private readonly inner: DiskImage) {}
  get path() { return this.inner.path; }
  get format() { return this.inner.format; }
  get virtualSize() { return this.inner.virtualSize; }
  get readOnly() { return this.inner.readOnly; }
  read(offset: number, into: Uint8Array): void {
    this.checkRange("read", offset, into.length);
    this.inner.read(offset, into);
  }
  write(offset: number, data: Uint8Array): void {
    this.mutating("write", offset, data.length);
    this.inner.write(offset, data);
  }
  flush(): void {
    this.inner.flush();
  }
  discard(offset: number, length: number): void {
    this.mutating("discard", offset, length);
    this.inner.discard(offset, length);
  }
  writeZeroes(offset: number, length: number, mayUnmap: boolean): void {
    this.mutating("write-zeroes", offset, length);
    this.inner.writeZeroes(offset, length, mayUnmap);
  }
  close(): void {
    this.inner.close();
  }
  /** What the harness reads to check the device (not counted). */
  peek(offset: number, length: number): Uint8Array {
    const b = new Uint8Array(length);
    this.inner.read(offset, b);
    return b;
  }
  private mutating(op: string, offset: number, length: number): void {
    this.mutations++;
    if (this.readOnly) this.violations.push(`${op} at ${offset}+${length} on a read-only disk`);
    this.checkRange(op, offset, length);
  }
  private checkRange(op: string, offset: number, length: number): void {
    const ok = Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0 && offset + length <= this.virtualSize;
    if (!ok) this.violations.push(`${op} at ${offset}+${length} outside the ${this.virtualSize}-byte disk`);
  }
}

/** A disk of plain bytes in memory. */
export class MemoryDisk implements DiskImage {
  readonly format = "raw" as const;
  readonly readOnly = false;
  readonly path = "memory.img";
  readonly bytes: Uint8Array;
  constructor(readonly virtualSize: number) {
    this.bytes = new Uint8Array(virtualSize);
  }
  read(offset: number, into: Uint8Array): void {
    this.range(offset, into.length);
    into.set(this.bytes.subarray(offset, offset + into.length));
  }
  write(offset: number, data: Uint8Array): void {
    this.range(offset, data.length);
    this.bytes.set(data, offset);
  }
  flush(): void {}
  discard(offset: number, length: number): void {
    this.writeZeroes(offset, length);
  }
  writeZeroes(offset: number, length: number): void {
    this.range(offset, length);
    this.bytes.fill(0, offset, offset + length);
  }
  close(): void {}
  private range(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.virtualSize) throw new DiskImageError(`${this.path}: ${offset}+${length} out of range`);
  }
}

/** A network backend that keeps what the guest sends; the test calls onFrame to deliver. */
export class FakeNetBackend implements NetBackend {
  readonly description = "fake:fuzz";
  sent: Uint8Array[] = [];
  onFrame: ((frame: Uint8Array) => void) | undefined;
  readonly stats: NetStats = { txFrames: 0, txBytes: 0, rxFrames: 0, rxBytes: 0, txDropped: 0, rxDropped: 0 };
  send(frame: Uint8Array): void {
    this.sent.push(Uint8Array.from(frame));
  }
  setRxPaused(): void {}
  close(): void {}
}
