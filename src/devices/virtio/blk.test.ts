import { test } from "node:test";
import assert from "node:assert/strict";
import { TestDriver, testGuestMemory, type Buffer } from "./test-driver.js";
import {
  VirtioBlk, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP,
  SEG_MAX, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG, BOUNCE_BYTES,
} from "./blk.js";
import { VIRTIO_F_VERSION_1, VIRTIO_F_INDIRECT_DESC, VIRTIO_ID_BLOCK } from "./virtio.js";
import { DiskImageError, type DiskImage } from "../../backends/disk/disk.js";

/** A DiskImage in memory that records what it was asked and can be told to fail. */
class MemDisk implements DiskImage {
  readonly bytes: Uint8Array;
  readonly format = "qcow2" as const;
  flushes = 0;
  closed = false;
  /** Throw DiskImageError on the next call of these names. */
  failNext = new Set<string>();
  calls: string[] = [];
  largestRead = 0;
  largestWrite = 0;

  constructor(readonly virtualSize: number, readonly readOnly = false, readonly path = "/images/disk.qcow2") {
    this.bytes = new Uint8Array(virtualSize);
  }

  private enter(op: string, offset: number, length: number, writing: boolean): void {
    this.calls.push(`${op} ${offset} ${length}`);
    if (this.failNext.delete(op)) throw new DiskImageError(`${this.path}: injected ${op} failure`);
    if (writing && this.readOnly) throw new DiskImageError(`${this.path}: read-only`);
    if (offset < 0 || length < 0 || offset + length > this.virtualSize) throw new DiskImageError(`${this.path}: ${op} out of range`);
  }

  read(offset: number, into: Uint8Array): void {
    this.enter("read", offset, into.length, false);
    this.largestRead = Math.max(this.largestRead, into.length);
    into.set(this.bytes.subarray(offset, offset + into.length));
  }
  write(offset: number, data: Uint8Array): void {
    this.enter("write", offset, data.length, true);
    this.largestWrite = Math.max(this.largestWrite, data.length);
    this.bytes.set(data, offset);
  }
  flush(): void {
    this.enter("flush", 0, 0, false);
    this.flushes++;
  }
  discard(offset: number, length: number): void {
    this.enter("discard", offset, length, true);
    this.bytes.fill(0, offset, offset + length);
  }
  writeZeroes(offset: number, length: number, mayUnmap: boolean): void {
    this.enter(mayUnmap ? "writeZeroes(unmap)" : "writeZeroes", offset, length, true);
    this.bytes.fill(0, offset, offset + length);
  }
  close(): void {
    this.closed = true;
  }
}

const DISK_BYTES = 1 << 20; // 2048 sectors
const SECTORS = DISK_BYTES / 512;
const Q = 0;

function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

function header(type: number, sector: bigint | number = 0): Uint8Array {
  const h = new Uint8Array(16);
  const dv = new DataView(h.buffer);
  dv.setUint32(0, type, true);
  dv.setBigUint64(8, BigInt.asUintN(64, BigInt(sector)), true);
  return h;
}

function segments(...segs: [sector: bigint | number, sectors: number, flags?: number][]): Uint8Array {
  const b = new Uint8Array(16 * segs.length);
  const dv = new DataView(b.buffer);
  segs.forEach(([sector, n, flags = 0], i) => {
    dv.setBigUint64(16 * i, BigInt.asUintN(64, BigInt(sector)), true);
    dv.setUint32(16 * i + 8, n, true);
    dv.setUint32(16 * i + 12, flags, true);
  });
  return b;
}

interface Setup {
  d: TestDriver;
  blk: VirtioBlk;
  disk: MemDisk;
}

/** A driver that accepts every feature the device offers (or `features`). */
function setup(opts: { disk?: MemDisk; features?: bigint; memBytes?: number } = {}): Setup {
  const disk = opts.disk ?? new MemDisk(DISK_BYTES);
  const blk = new VirtioBlk(disk, { name: "blk0", serial: "tsvisor-disk0" });
  const d = new TestDriver(blk, testGuestMemory(opts.memBytes ?? 4 << 20));
  d.start(opts.features ?? d.deviceFeatures(), 64);
  return { d, blk, disk };
}

/** Submit one chain, kick, and return its used entry and its status byte (the last byte of the last buffer). */
function submit(s: Setup, buffers: Buffer[], opts: { indirect?: boolean } = {}): { head: number; len: number; status: number } {
  const head = s.d.add(Q, buffers, opts);
  s.d.kick(Q);
  const used = s.d.used(Q);
  assert.equal(used.length, 1);
  assert.equal(used[0].id, head);
  const last = buffers.length - 1;
  const lastLen = buffers[last].data?.length ?? buffers[last].writeLen ?? 0;
  const status = s.d.mem.read(s.d.bufferAddr(Q, head, last) + BigInt(lastLen - 1), 1)[0];
  return { head, len: used[0].len, status };
}

/** The bytes the device wrote into buffer `n` of the chain at `head`. */
function bufferBytes(s: Setup, head: number, n: number, len: number): Uint8Array {
  return s.d.mem.read(s.d.bufferAddr(Q, head, n), len);
}

function writeSectors(s: Setup, sector: number, data: Uint8Array): void {
  const r = submit(s, [{ data: header(VIRTIO_BLK_T_OUT, sector) }, { data }, { writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 1]);
}

function readSectors(s: Setup, sector: number, len: number): Uint8Array {
  const r = submit(s, [{ data: header(VIRTIO_BLK_T_IN, sector) }, { writeLen: len }, { writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, len + 1]);
  return bufferBytes(s, r.head, 1, len);
}

test("virtio-blk: device id, offered features and the configuration space, byte-exact", () => {
  const disk = new MemDisk(DISK_BYTES + 300); // a partial last sector is not part of the capacity
  const blk = new VirtioBlk(disk, { name: "blk0", serial: "x" });
  const d = new TestDriver(blk);
  assert.equal(d.reg(0x008), VIRTIO_ID_BLOCK);
  d.setReg(0x030, 0);
  assert.equal(d.reg(0x034), 256);
  d.setReg(0x030, 1);
  assert.equal(d.reg(0x034), 0, "one request queue, no multiqueue");
  const f = d.deviceFeatures();
  const want = VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
  assert.equal(f & 0xffff_ffffn & ~(1n << 28n) & ~(1n << 29n), want);
  assert.equal(f & VIRTIO_BLK_F_RO, 0n);

  const cfg = (off: number, size: number) => Number(d.transport.read(0x100 + off, size));
  assert.equal(cfg(0x00, 4), SECTORS);
  assert.equal(cfg(0x04, 4), 0);
  assert.equal(cfg(0x08, 4), 0, "size_max (not offered)");
  assert.equal(cfg(0x0c, 4), SEG_MAX);
  assert.equal(SEG_MAX, 254);
  assert.equal(cfg(0x10, 4), 0, "geometry (not offered)");
  assert.equal(cfg(0x14, 4), 512);
  assert.equal(cfg(0x18, 4) + cfg(0x1c, 4) + cfg(0x20, 4), 0, "topology, writeback, num_queues");
  assert.equal(cfg(0x24, 4), MAX_DISCARD_SECTORS);
  assert.equal(cfg(0x28, 4), MAX_DISCARD_SEG);
  assert.equal(cfg(0x2c, 4), 1);
  assert.equal(cfg(0x30, 4), MAX_WRITE_ZEROES_SECTORS);
  assert.equal(cfg(0x34, 4), MAX_WRITE_ZEROES_SEG);
  assert.equal(cfg(0x38, 1), 1, "write_zeroes_may_unmap");
  assert.equal(cfg(0x38, 4), 1, "unused1 is zero");
  // Narrow and unaligned reads see the same little-endian bytes.
  assert.equal(cfg(0x00, 1), SECTORS & 0xff);
  assert.equal(cfg(0x01, 1), SECTORS >> 8);
  assert.equal(cfg(0x00, 2), SECTORS);
  assert.equal(cfg(0x0c, 1), 254);
  assert.equal(cfg(0x15, 2), 2);
  assert.equal(cfg(0x26, 2), MAX_DISCARD_SECTORS >>> 16);
  // Beyond the fields: zero, and a read straddling the end too.
  assert.equal(cfg(0x3a, 4), 0);
  assert.equal(cfg(0x3c, 4), 0);
  assert.equal(cfg(0x200, 4), 0);
  assert.equal(cfg(0xefc, 4), 0);
  // A large capacity fills the high word.
  const huge: DiskImage = {
    path: "huge.raw", format: "raw", virtualSize: 2 ** 41 + 3 * 512, readOnly: false,
    read() {}, write() {}, flush() {}, discard() {}, writeZeroes() {}, close() {},
  };
  const hb = new VirtioBlk(huge, { name: "h", serial: "" });
  assert.equal(hb.readConfig(0, 4), 3);
  assert.equal(hb.readConfig(4, 4), 1);
  assert.equal(hb.readConfig(2, 4), 0x1_0000, "a read across the two words");
});

test("virtio-blk: writes read back through the queue, multi-segment and indirect, len = data + status", () => {
  const s = setup();
  const a = pattern(4096, 1);
  writeSectors(s, 10, a);
  assert.deepEqual(s.disk.bytes.subarray(10 * 512, 10 * 512 + 4096), a);
  assert.deepEqual(readSectors(s, 10, 4096), a);

  // Data split at odd places over several descriptors, both ways.
  const b = pattern(3 * 512, 2);
  let r = submit(s, [{ data: header(VIRTIO_BLK_T_OUT, 100).subarray(0, 5) }, { data: header(VIRTIO_BLK_T_OUT, 100).subarray(5) },
    { data: b.subarray(0, 100) }, { data: b.subarray(100, 1000) }, { data: b.subarray(1000) }, { writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 1]);
  assert.deepEqual(s.disk.bytes.subarray(100 * 512, 103 * 512), b);
  r = submit(s, [{ data: header(VIRTIO_BLK_T_IN, 100) }, { writeLen: 7 }, { writeLen: 1017 }, { writeLen: 512 }, { writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 1537]);
  const back = new Uint8Array([...bufferBytes(s, r.head, 1, 7), ...bufferBytes(s, r.head, 2, 1017), ...bufferBytes(s, r.head, 3, 512)]);
  assert.deepEqual(back, b);

  // The status byte sharing a buffer with the data.
  r = submit(s, [{ data: header(VIRTIO_BLK_T_IN, 100) }, { writeLen: 513 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 513]);
  assert.deepEqual(bufferBytes(s, r.head, 1, 512), b.subarray(0, 512));

  // Through an indirect table.
  const c = pattern(1024, 3);
  r = submit(s, [{ data: header(VIRTIO_BLK_T_OUT, SECTORS - 2) }, { data: c.subarray(0, 512) }, { data: c.subarray(512) }, { writeLen: 1 }], { indirect: true });
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 1]);
  r = submit(s, [{ data: header(VIRTIO_BLK_T_IN, SECTORS - 2) }, { writeLen: 1024 }, { writeLen: 1 }], { indirect: true });
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 1025]);
  assert.deepEqual(bufferBytes(s, r.head, 1, 1024), c);
  assert.equal(s.blk.stats.errors, 0);
});

test("virtio-blk: large requests move through a bounded bounce buffer", () => {
  const disk = new MemDisk(8 << 20);
  const s = setup({ disk, memBytes: 16 << 20 });
  const len = 2 * BOUNCE_BYTES + 3 * 512;
  const data = pattern(len, 9);
  writeSectors(s, 7, data);
  assert.deepEqual(readSectors(s, 7, len), data);
  assert.ok(disk.largestRead <= BOUNCE_BYTES && disk.largestWrite <= BOUNCE_BYTES, `${disk.largestRead} ${disk.largestWrite}`);
  assert.equal(s.blk.stats.bytesRead, len);
});

test("virtio-blk: every available request is done on one notify, with one interrupt", () => {
  const s = setup();
  const heads = [
    s.d.add(Q, [{ data: header(VIRTIO_BLK_T_OUT, 0) }, { data: pattern(512, 4) }, { writeLen: 1 }]),
    s.d.add(Q, [{ data: header(VIRTIO_BLK_T_FLUSH) }, { writeLen: 1 }]),
    s.d.add(Q, [{ data: header(VIRTIO_BLK_T_IN, 0) }, { writeLen: 512 }, { writeLen: 1 }]),
  ];
  const before = s.d.transport.queueStats[Q].interrupts;
  s.d.kick(Q);
  assert.deepEqual(s.d.used(Q), [{ id: heads[0], len: 1 }, { id: heads[1], len: 1 }, { id: heads[2], len: 513 }]);
  assert.equal(s.d.transport.queueStats[Q].interrupts - before, 1);
  assert.deepEqual(bufferBytes(s, heads[2], 1, 512), pattern(512, 4));
});

test("virtio-blk: flush reaches the disk; without F_FLUSH negotiated every write is flushed", () => {
  let s = setup();
  let r = submit(s, [{ data: header(VIRTIO_BLK_T_FLUSH) }, { writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 1]);
  assert.equal(s.disk.flushes, 1);
  writeSectors(s, 0, pattern(512, 1));
  assert.equal(s.disk.flushes, 1, "writeback: writes wait for a flush");

  s = setup({ features: VIRTIO_F_VERSION_1 });
  writeSectors(s, 0, pattern(512, 1));
  assert.equal(s.disk.flushes, 1, "F_FLUSH offered but not negotiated: writes are stable on completion (5.2.6.2)");
  r = submit(s, [{ data: header(VIRTIO_BLK_T_FLUSH) }, { writeLen: 1 }]);
  assert.equal(r.status, VIRTIO_BLK_S_OK);
});

test("virtio-blk: GET_ID answers the serial, zero padded to 20 bytes", () => {
  const s = setup();
  let r = submit(s, [{ data: header(VIRTIO_BLK_T_GET_ID) }, { writeLen: 20 }, { writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 21]);
  const want = new Uint8Array(20);
  want.set(new TextEncoder().encode("tsvisor-disk0"));
  assert.deepEqual(bufferBytes(s, r.head, 1, 20), want);
  // A shorter buffer gets what fits.
  r = submit(s, [{ data: header(VIRTIO_BLK_T_GET_ID) }, { writeLen: 8 }, { writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 9]);
  assert.deepEqual(bufferBytes(s, r.head, 1, 8), want.subarray(0, 8));
  assert.throws(() => new VirtioBlk(new MemDisk(512), { name: "b", serial: "x".repeat(21) }), RangeError);
});

test("virtio-blk: discard and write-zeroes, one or several segments; reads return zeros after", () => {
  const s = setup();
  writeSectors(s, 0, pattern(16 * 512, 5));
  let r = submit(s, [{ data: header(VIRTIO_BLK_T_DISCARD) }, { data: segments([2, 3]) }, { writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 1]);
  r = submit(s, [{ data: header(VIRTIO_BLK_T_WRITE_ZEROES) }, { data: segments([8, 1], [10, 2, 1]) }, { writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 1]);
  assert.deepEqual(s.disk.calls.slice(-3), ["discard 1024 1536", "writeZeroes 4096 512", "writeZeroes(unmap) 5120 1024"]);
  const all = readSectors(s, 0, 16 * 512);
  const want = pattern(16 * 512, 5);
  want.fill(0, 2 * 512, 5 * 512);
  want.fill(0, 8 * 512, 9 * 512);
  want.fill(0, 10 * 512, 12 * 512);
  assert.deepEqual(all, want);
  assert.equal(s.blk.stats.discards, 1);
  assert.equal(s.blk.stats.writeZeroes, 1);
});

test("virtio-blk: discard and write-zeroes refusals (flags, segment counts, ranges, features)", () => {
  const s = setup();
  const calls = () => s.disk.calls.length;
  const n0 = calls();
  const dz = (type: number, segs: Uint8Array) => submit(s, [{ data: header(type) }, { data: segs }, { writeLen: 1 }]).status;
  assert.equal(dz(VIRTIO_BLK_T_DISCARD, segments([0, 1, 1])), VIRTIO_BLK_S_UNSUPP, "unmap on a discard");
  assert.equal(dz(VIRTIO_BLK_T_DISCARD, segments([0, 1, 2])), VIRTIO_BLK_S_UNSUPP, "unknown flag");
  assert.equal(dz(VIRTIO_BLK_T_WRITE_ZEROES, segments([0, 1, 0x8000_0001])), VIRTIO_BLK_S_UNSUPP, "unknown flag");
  // The flags of every segment are checked before any segment is done.
  assert.equal(dz(VIRTIO_BLK_T_WRITE_ZEROES, segments([0, 1], [1, 1, 4])), VIRTIO_BLK_S_UNSUPP);
  const many = Array.from({ length: MAX_DISCARD_SEG + 1 }, (_, i) => [i, 1] as [number, number]);
  assert.equal(dz(VIRTIO_BLK_T_DISCARD, segments(...many)), VIRTIO_BLK_S_UNSUPP, "too many segments");
  assert.equal(dz(VIRTIO_BLK_T_WRITE_ZEROES, segments(...many)), VIRTIO_BLK_S_UNSUPP, "too many segments");
  assert.equal(dz(VIRTIO_BLK_T_DISCARD, segments([SECTORS - 1, 2])), VIRTIO_BLK_S_IOERR, "beyond the disk");
  assert.equal(dz(VIRTIO_BLK_T_WRITE_ZEROES, segments([0, 1], [2n ** 64n - 1n, 1])), VIRTIO_BLK_S_IOERR, "u64 sector");
  assert.equal(dz(VIRTIO_BLK_T_DISCARD, segments([0, MAX_DISCARD_SECTORS + 1])), VIRTIO_BLK_S_IOERR, "beyond max_discard_sectors");
  assert.equal(dz(VIRTIO_BLK_T_DISCARD, new Uint8Array(24)), VIRTIO_BLK_S_IOERR, "not whole segments");
  assert.equal(calls(), n0, "nothing reached the disk");
  // Exactly max segments is fine.
  assert.equal(dz(VIRTIO_BLK_T_DISCARD, segments(...many.slice(1))), VIRTIO_BLK_S_OK);
  assert.equal(calls(), n0 + MAX_DISCARD_SEG);

  // A driver that did not negotiate the features gets UNSUPP.
  const t = setup({ features: VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH });
  const r = submit(t, [{ data: header(VIRTIO_BLK_T_DISCARD) }, { data: segments([0, 1]) }, { writeLen: 1 }]);
  assert.equal(r.status, VIRTIO_BLK_S_UNSUPP);
});

test("virtio-blk: a read-only disk offers F_RO, not discard/write-zeroes, and refuses writes with IOERR", () => {
  const disk = new MemDisk(DISK_BYTES, true);
  disk.bytes.set(pattern(512, 6), 512);
  const s = setup({ disk });
  const f = s.d.deviceFeatures();
  assert.equal(f & VIRTIO_BLK_F_RO, VIRTIO_BLK_F_RO);
  assert.equal(f & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES), 0n);
  assert.equal(s.d.transport.read(0x100 + 0x24, 4), 0n, "no discard limits");
  const n0 = disk.calls.length;
  let r = submit(s, [{ data: header(VIRTIO_BLK_T_OUT, 1) }, { data: pattern(512, 7) }, { writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_IOERR, 1]);
  r = submit(s, [{ data: header(VIRTIO_BLK_T_DISCARD) }, { data: segments([1, 1]) }, { writeLen: 1 }]);
  assert.equal(r.status, VIRTIO_BLK_S_IOERR);
  r = submit(s, [{ data: header(VIRTIO_BLK_T_WRITE_ZEROES) }, { data: segments([1, 1]) }, { writeLen: 1 }]);
  assert.equal(r.status, VIRTIO_BLK_S_IOERR);
  assert.equal(disk.calls.length, n0, "the disk was not asked to write");
  assert.deepEqual(readSectors(s, 1, 512), pattern(512, 6));
  r = submit(s, [{ data: header(VIRTIO_BLK_T_FLUSH) }, { writeLen: 1 }]);
  assert.equal(r.status, VIRTIO_BLK_S_OK);
  assert.equal(s.blk.stats.errors, 3);
});

test("virtio-blk: sector ranges beyond the capacity, overflowing u64 sectors and partial sectors are IOERR", () => {
  const s = setup();
  const st = (type: number, sector: bigint | number, bufs: Buffer[]) => submit(s, [{ data: header(type, sector) }, ...bufs, { writeLen: 1 }]);
  const n0 = s.disk.calls.length;
  for (const sector of [SECTORS, SECTORS - 1, 2 ** 53, 2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n, 2n ** 64n - 2n]) {
    let r = st(VIRTIO_BLK_T_IN, sector, [{ writeLen: 1024 }]);
    assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_IOERR, 1], `read at ${sector}`);
    r = st(VIRTIO_BLK_T_OUT, sector, [{ data: new Uint8Array(1024) }]);
    assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_IOERR, 1], `write at ${sector}`);
  }
  let r = st(VIRTIO_BLK_T_IN, 0, [{ writeLen: 700 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_IOERR, 1]);
  r = st(VIRTIO_BLK_T_OUT, 0, [{ data: new Uint8Array(100) }]);
  assert.equal(r.status, VIRTIO_BLK_S_IOERR);
  assert.equal(s.disk.calls.length, n0);
  // The last sector itself is fine, and so is an empty request at the end.
  r = st(VIRTIO_BLK_T_IN, SECTORS - 1, [{ writeLen: 512 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 513]);
  r = st(VIRTIO_BLK_T_IN, SECTORS, []);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 1]);
});

test("virtio-blk: an unknown request type is UNSUPP", () => {
  const s = setup();
  for (const type of [2, 5, 7, 14, 0x8000_0000, 0xffff_ffff]) {
    const r = submit(s, [{ data: header(type) }, { writeLen: 1 }]);
    assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_UNSUPP, 1], `type ${type}`);
  }
});

test("virtio-blk: hostile request shapes fail alone, nothing is written into readable buffers", () => {
  const s = setup();
  const sentinel = (n: number) => new Uint8Array(n).fill(0xa5);

  // A header shorter than 16 bytes.
  let r = submit(s, [{ data: header(VIRTIO_BLK_T_IN).subarray(0, 12) }, { writeLen: 512 }, { writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_IOERR, 1]);
  r = submit(s, [{ writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_IOERR, 1], "no readable part at all");

  // No writable byte for the status: given back with length 0.
  let head = s.d.add(Q, [{ data: header(VIRTIO_BLK_T_FLUSH) }]);
  s.d.kick(Q);
  assert.deepEqual(s.d.used(Q), [{ id: head, len: 0 }]);
  // The status in a read-only descriptor.
  head = s.d.add(Q, [{ data: header(VIRTIO_BLK_T_IN) }, { data: sentinel(1) }]);
  s.d.kick(Q);
  assert.deepEqual(s.d.used(Q), [{ id: head, len: 0 }]);
  assert.deepEqual(bufferBytes(s, head, 1, 1), sentinel(1));
  head = s.d.add(Q, [{ data: header(VIRTIO_BLK_T_IN) }, { data: sentinel(512) }, { data: sentinel(1) }]);
  s.d.kick(Q);
  assert.deepEqual(s.d.used(Q), [{ id: head, len: 0 }]);
  assert.deepEqual(bufferBytes(s, head, 1, 512), sentinel(512));

  // A read whose data area is device-readable: IOERR, the buffer untouched.
  r = submit(s, [{ data: header(VIRTIO_BLK_T_IN) }, { data: sentinel(512) }, { writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_IOERR, 1]);
  assert.deepEqual(bufferBytes(s, r.head, 1, 512), sentinel(512));
  // A write whose data area is device-writable: IOERR, the disk untouched, the buffer too.
  const n0 = s.disk.calls.length;
  r = submit(s, [{ data: header(VIRTIO_BLK_T_OUT) }, { writeLen: 512 }, { writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_IOERR, 1]);
  assert.deepEqual(bufferBytes(s, r.head, 1, 512), new Uint8Array(512));
  // A discard with writable data.
  r = submit(s, [{ data: header(VIRTIO_BLK_T_DISCARD) }, { data: segments([0, 1]) }, { writeLen: 16 }, { writeLen: 1 }]);
  assert.equal(r.status, VIRTIO_BLK_S_IOERR);
  assert.equal(s.disk.calls.length, n0);

  // A readable buffer after a writable one is a malformed chain: length 0, no status.
  head = s.d.add(Q, [{ data: header(VIRTIO_BLK_T_IN) }, { writeLen: 512 }, { data: sentinel(1) }]);
  s.d.kick(Q);
  assert.deepEqual(s.d.used(Q), [{ id: head, len: 0 }]);

  // A chain pointing outside guest RAM: length 0, the queue goes on.
  head = s.d.add(Q, [{ data: header(VIRTIO_BLK_T_IN) }, { writeLen: 512 }, { writeLen: 1 }]);
  const layout = s.d.queueLayout(Q);
  s.d.writeDesc(layout.desc, (head + 1) % layout.size, 0x10n, 512, 2 | 1, (head + 2) % layout.size);
  s.d.kick(Q);
  assert.deepEqual(s.d.used(Q), [{ id: head, len: 0 }]);

  // After all that, the device works and is not in need of a reset.
  writeSectors(s, 3, pattern(512, 8));
  assert.deepEqual(readSectors(s, 3, 512), pattern(512, 8));
  assert.equal(s.d.status & 64, 0);
  assert.deepEqual(s.d.warnings, []);
});

test("virtio-blk: a DiskImageError fails that request with IOERR and the next one works", () => {
  const s = setup();
  writeSectors(s, 0, pattern(1024, 1));
  for (const op of ["read", "write", "flush", "discard", "writeZeroes"]) {
    s.disk.failNext.add(op);
    const bufs: Buffer[] =
      op === "read" ? [{ data: header(VIRTIO_BLK_T_IN) }, { writeLen: 1024 }, { writeLen: 1 }] :
      op === "write" ? [{ data: header(VIRTIO_BLK_T_OUT) }, { data: pattern(1024, 2) }, { writeLen: 1 }] :
      op === "flush" ? [{ data: header(VIRTIO_BLK_T_FLUSH) }, { writeLen: 1 }] :
      [{ data: header(op === "discard" ? VIRTIO_BLK_T_DISCARD : VIRTIO_BLK_T_WRITE_ZEROES) }, { data: segments([0, 2]) }, { writeLen: 1 }];
    const r = submit(s, bufs);
    assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_IOERR, 1], op);
    assert.match(s.blk.lastError ?? "", /injected/);
    assert.deepEqual(readSectors(s, 0, 1024), pattern(1024, 1), `after a failed ${op}`);
  }
  assert.equal(s.blk.stats.errors, 5);
});

test("virtio-blk: a read failing part way reports the bytes that reached the guest", () => {
  const disk = new MemDisk(4 << 20);
  const s = setup({ disk, memBytes: 8 << 20 });
  // Fail the second chunk.
  const orig = disk.read.bind(disk);
  let n = 0;
  disk.read = (offset, into) => {
    if (n++ === 1) throw new DiskImageError("second chunk");
    orig(offset, into);
  };
  const r = submit(s, [{ data: header(VIRTIO_BLK_T_IN) }, { writeLen: 2 * BOUNCE_BYTES }, { writeLen: 1 }]);
  assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_IOERR, BOUNCE_BYTES + 1]);
});

test("virtio-blk: statistics line, reset and close", () => {
  const s = setup();
  writeSectors(s, 0, new Uint8Array(2048));
  readSectors(s, 0, 1024);
  readSectors(s, 0, 512);
  submit(s, [{ data: header(VIRTIO_BLK_T_FLUSH) }, { writeLen: 1 }]);
  submit(s, [{ data: header(VIRTIO_BLK_T_DISCARD) }, { data: segments([0, 1]) }, { writeLen: 1 }]);
  submit(s, [{ data: header(99) }, { writeLen: 1 }]);
  assert.deepEqual(s.blk.statsLines(), [
    "blk0 (disk.qcow2, qcow2): 2 reads 1.5 KiB, 1 writes 2 KiB, 1 flushes, 1 discards, 0 write-zeroes, 1 errors",
  ]);
  // A reset and a new bring-up: the device works again.
  s.d.start(s.d.deviceFeatures() & ~VIRTIO_F_INDIRECT_DESC, 16);
  writeSectors(s, 5, pattern(512, 3));
  assert.deepEqual(readSectors(s, 5, 512), pattern(512, 3));
  s.blk.close();
  assert.ok(s.disk.closed);
});

test("virtio-blk: the request queue is the one live when notified (set up after DRIVER_OK, or again with another size)", () => {
  const disk = new MemDisk(DISK_BYTES);
  const blk = new VirtioBlk(disk, { name: "blk0", serial: "x" });
  const s: Setup = { d: new TestDriver(blk), blk, disk };
  assert.ok(s.d.negotiate(VIRTIO_F_VERSION_1));
  s.d.driverOk(); // before any queue: late, but the request queue must not stay dead
  s.d.setupQueue(Q, 8);
  writeSectors(s, 3, pattern(512, 1));
  assert.deepEqual(readSectors(s, 3, 512), pattern(512, 1));
  // Stopped, then set up again smaller: served with the new size, from index 0.
  s.d.setReg(0x30, Q);
  s.d.setReg(0x44, 0);
  s.d.setupQueue(Q, 4);
  for (let i = 0; i < 5; i++) assert.deepEqual(readSectors(s, 3, 512), pattern(512, 1));
  assert.equal(s.d.status & 0x40, 0, "no DEVICE_NEEDS_RESET");
});

import { SnapshotError, StateReader } from "../../snapshot/state.js";

test("virtio-blk snapshot: a request submitted before the snapshot completes after restore, and the indices go on", async () => {
  const s = setup();
  writeSectors(s, 0, pattern(1024, 1));
  // Made available (the kick is lost with the old VM): the restored device serves it on resume.
  const w = s.d.add(Q, [{ data: header(VIRTIO_BLK_T_OUT, 4) }, { data: pattern(512, 2) }, { writeLen: 1 }]);
  const state = (await s.d.snapshot()) as { [k: string]: any };
  assert.deepEqual(state.queues[0].indices, { lastAvail: 1, usedIdx: 1, signalledUsed: 1, pendingUsed: false });
  const blk2 = new VirtioBlk(s.disk, { name: "blk0", serial: "tsvisor-disk0" });
  const d2 = TestDriver.restored(blk2, s.d);
  d2.transport.restoreState(new StateReader(state, "blk0"));
  assert.deepEqual(d2.used(Q), [], "nothing happens before resumeIo");
  d2.transport.resumeIo();
  assert.deepEqual(d2.used(Q), [{ id: w, len: 1 }]);
  const s2 = { d: d2, blk: blk2, disk: s.disk };
  assert.deepEqual(readSectors(s2, 0, 1024), pattern(1024, 1));
  assert.deepEqual(readSectors(s2, 4, 512), pattern(512, 2));
  assert.equal(d2.mem.readU16(d2.queueLayout(Q).used + 2n), 4);
  assert.deepEqual(d2.warnings, []);
});

test("virtio-blk snapshot: a request in flight in the state is refused (blk holds none once paused)", async () => {
  const s = setup();
  writeSectors(s, 0, pattern(512, 1));
  const state = (await s.d.snapshot()) as { [k: string]: any };
  state.queues[0].indices.lastAvail = 3;
  const d2 = TestDriver.restored(new VirtioBlk(s.disk, { name: "blk0", serial: "x" }), s.d);
  assert.throws(() => d2.transport.restoreState(new StateReader(state, "blk0")),
    (e: unknown) => e instanceof SnapshotError && /blk0\.device: queue 0 has 2 requests in flight/.test(e.message));
  state.queues[0].indices.lastAvail = 1;
  state.queues[0].num = 512;
  assert.throws(() => d2.transport.restoreState(new StateReader(state, "blk0")), /blk0\.queues\[0\]: ready with size 512 \(a power of 2 up to 256\)/);
});
