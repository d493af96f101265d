// qcow2 images written and read by tsvisor alone: random workloads compared
// with an in-memory model across cluster sizes and refcount widths, backing
// chains (the base never changes), refcount table growth, and the header
// checks that refuse what tsvisor does not implement.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync, openSync, writeSync, closeSync } from "node:fs";
import { openDisk, DiskImageError, Qcow2Image } from "../disk.js";
import { createQcow2 } from "./create.js";
import { checkQcow2 } from "./check.js";
import { rng, tempDir, Model, randomOps, assertSame } from "../testing.js";

const tmp = tempDir("tsvisor-qcow2-");
after(() => tmp.remove());
let n = 0;
const name = (s: string) => tmp.path(`${n++}-${s}`);

function assertClean(path: string) {
  const r = checkQcow2(path);
  assert.equal(r.corruptions, 0, r.messages.join("\n"));
  assert.equal(r.leaks, 0, r.messages.join("\n"));
}

function patch(path: string, at: number, bytes: number[]) {
  const fd = openSync(path, "r+");
  writeSync(fd, Uint8Array.from(bytes), 0, bytes.length, at);
  closeSync(fd);
}
const be64 = (x: bigint) => Array.from({ length: 8 }, (_, i) => Number((x >> BigInt(56 - 8 * i)) & 0xffn));
const be32 = (x: number) => [x >>> 24, (x >>> 16) & 255, (x >>> 8) & 255, x & 255];

for (const [clusterSize, refcountOrder, size] of [
  [512, 4, 1 << 20],
  [4096, 0, 4 << 20],
  [4096, 6, 4 << 20],
  [65536, 4, 16 << 20],
  [65536, 3, (16 << 20) + 512], // a size that is not a whole number of clusters
  [2 << 20, 5, 24 << 20],
]) {
  test(`random writes, write-zeroes and discards: ${clusterSize}-byte clusters, refcount_order ${refcountOrder}`, () => {
    const p = name("img.qcow2");
    createQcow2(p, { size, clusterSize, refcountOrder });
    const r = rng(clusterSize + refcountOrder);
    const model = new Model(size);
    const d = openDisk(p);
    assert.equal(d.format, "qcow2");
    assert.equal(d.virtualSize, size);
    randomOps(d, model, r, { ops: 150, maxLength: Math.max(3 * clusterSize, 128 << 10) });
    assertSame(d, model);
    d.close();
    assertClean(p);
    const again = openDisk(p, { readOnly: true });
    assertSame(again, model);
    again.close();
  });
}

test("a write spanning many clusters grows the refcount table (512-byte clusters)", () => {
  const p = name("grow.qcow2");
  const size = 48 << 20;
  createQcow2(p, { size, clusterSize: 512 });
  const d = openDisk(p);
  const model = new Model(size);
  const r = rng(7);
  // One refcount table cluster covers 64 blocks x 256 clusters = 8 MiB of file.
  for (let off = 0; off < 24 << 20; off += 256 << 10) {
    const data = r.bytes(256 << 10);
    d.write(off, data);
    model.write(off, data);
  }
  randomOps(d, model, r, { ops: 40, maxLength: 64 << 10 });
  assertSame(d, model);
  d.close();
  const raw = readFileSync(p);
  assert.ok(raw.readUInt32BE(56) > 1, "refcount table grew");
  assertClean(p);
});

test("overlays: copy-on-write from raw and qcow2 backing files, the bases never change", () => {
  const size = 8 << 20;
  const r = rng(11);
  const basePath = name("base.raw");
  const baseBytes = r.bytes(size);
  writeFileSync(basePath, baseBytes);
  const mid = name("mid.qcow2");
  createQcow2(mid, { size, clusterSize: 4096, backingFile: basePath.split("/").pop(), backingFormat: "raw" });
  const model = new Model(size, baseBytes);
  let d = openDisk(mid);
  randomOps(d, model, r, { ops: 60, maxLength: 20000 });
  assertSame(d, model);
  d.close();
  assertClean(mid);
  const midSnapshot = readFileSync(mid);

  // Top over mid, without a backing format (probed), larger than its backing.
  const top = name("top.qcow2");
  createQcow2(top, { size: size + (1 << 20), clusterSize: 65536, backingFile: mid.split("/").pop() });
  const topModel = new Model(size + (1 << 20), model.bytes);
  d = openDisk(top);
  assert.ok(d instanceof Qcow2Image && d.backing instanceof Qcow2Image && d.backing.backing?.format === "raw");
  assertSame(d, topModel);
  randomOps(d, topModel, r, { ops: 80, maxLength: 150000 });
  assertSame(d, topModel);
  d.close();
  assertClean(top);
  assert.deepEqual(readFileSync(basePath), Buffer.from(baseBytes), "base unchanged");
  assert.deepEqual(readFileSync(mid), midSnapshot, "middle image unchanged");
});

test("a loop in the backing chain is an error", () => {
  const a = name("a.qcow2");
  const b = name("b.qcow2");
  createQcow2(a, { size: 1 << 20, backingFile: b.split("/").pop(), backingFormat: "qcow2" });
  createQcow2(b, { size: 1 << 20, backingFile: a.split("/").pop(), backingFormat: "qcow2" });
  assert.throws(() => openDisk(a), (e: Error) => e instanceof DiskImageError && /backing chain loops/.test(e.message));
  const self = name("self.qcow2");
  createQcow2(self, { size: 1 << 20, backingFile: self.split("/").pop() });
  assert.throws(() => openDisk(self), /loops/);
  const missing = name("missing.qcow2");
  createQcow2(missing, { size: 1 << 20, backingFile: "nowhere.qcow2" });
  assert.throws(() => openDisk(missing), /backing file: .*nowhere\.qcow2: no such file/);
});

test("read-only images refuse writes; requests outside the disk are errors", () => {
  const p = name("ro.qcow2");
  createQcow2(p, { size: 1 << 20 });
  const d = openDisk(p, { readOnly: true });
  assert.equal(d.readOnly, true);
  assert.throws(() => d.write(0, new Uint8Array(1)), /read-only/);
  assert.throws(() => d.discard(0, 512), /read-only/);
  assert.throws(() => d.read(1 << 20, new Uint8Array(1)), /outside the disk/);
  assert.throws(() => d.read(-1, new Uint8Array(1)), DiskImageError);
  d.close();
  const w = openDisk(p, { cache: "writethrough" });
  assert.throws(() => w.write((1 << 20) - 1, new Uint8Array(2)), /outside the disk/);
  w.write(0, new Uint8Array([1, 2, 3]));
  w.flush();
  w.close();
  assertClean(p);
});

test("write-zeroes without unmap keeps clusters allocated, with unmap frees them; discard over a backing file reads zeros (v3)", () => {
  const size = 1 << 20;
  const base = name("zbase.raw");
  writeFileSync(base, new Uint8Array(size).fill(0x5a));
  const p = name("z.qcow2");
  createQcow2(p, { size, clusterSize: 4096, backingFile: base.split("/").pop(), backingFormat: "raw" });
  const d = openDisk(p) as Qcow2Image;
  d.write(0, new Uint8Array(64 << 10).fill(1));
  assert.equal(d.allocatedBytes(), 64 << 10);
  d.writeZeroes(0, 32 << 10, false);
  assert.equal(d.allocatedBytes(), 32 << 10, "zero clusters with their allocation kept are not counted as data");
  d.writeZeroes(32 << 10, 32 << 10, true);
  d.discard(512 << 10, 256 << 10);
  const got = new Uint8Array(size);
  d.read(0, got);
  const want = new Uint8Array(size).fill(0x5a);
  want.fill(0, 0, 64 << 10);
  want.fill(0, 512 << 10, 768 << 10);
  assert.deepEqual(got, want);
  d.close();
  assertClean(p);
});

test("header checks refuse what tsvisor does not implement, with a clear message", () => {
  const cases: [string, (p: string) => void, RegExp][] = [
    ["dirty bit", (p) => patch(p, 72, be64(1n)), /dirty bit/],
    ["corrupt bit", (p) => patch(p, 72, be64(2n)), /marked corrupt/],
    ["external data file", (p) => patch(p, 72, be64(4n)), /external data file/],
    ["zstd", (p) => { patch(p, 72, be64(8n)); patch(p, 104, [1]); }, /zstd/],
    ["extended L2", (p) => patch(p, 72, be64(16n)), /extended L2/],
    ["unknown incompatible bit", (p) => patch(p, 72, be64(1n << 40n)), /unknown incompatible features: bit 40/],
    ["encryption", (p) => patch(p, 32, be32(2)), /encrypted/],
    ["version 4", (p) => patch(p, 4, be32(4)), /version 4/],
    ["cluster_bits 22", (p) => patch(p, 20, be32(22)), /cluster_bits 22/],
    ["absurd L1 size", (p) => patch(p, 36, be32(0x7fff_ffff)), /L1 table .* larger than the 32 MiB limit/],
    ["L1 outside the file", (p) => patch(p, 40, be64(1n << 40n)), /L1 table .* outside the file/],
    ["absurd refcount table", (p) => patch(p, 56, be32(0xffff_ffff)), /refcount table .* 8 MiB limit/],
    ["refcount_order 7", (p) => patch(p, 96, be32(7)), /refcount_order 7/],
    ["not qcow2", (p) => patch(p, 0, [0, 0, 0, 0]), /bad magic/],
  ];
  for (const [what, mutate, message] of cases) {
    const p = name("hdr.qcow2");
    createQcow2(p, { size: 1 << 20 });
    mutate(p);
    assert.throws(() => openDisk(p, { format: "qcow2" }), (e: Error) => e instanceof DiskImageError && message.test(e.message), what);
  }
});

test("the feature name table names unknown incompatible features", () => {
  const p = name("names.qcow2");
  createQcow2(p, { size: 1 << 20 });
  const raw = readFileSync(p);
  // Rename the table entry for incompatible bit 4 to bit 9, then set bit 9.
  const at = raw.indexOf(Buffer.from("extended L2 entries"));
  assert.ok(at > 0);
  patch(p, at - 1, [9]);
  patch(p, 72, be64(1n << 9n));
  assert.throws(() => openDisk(p), /unknown incompatible features: extended L2 entries/);
});

test("images with internal snapshots open read-only only; autoclear bits are cleared on a writable open", () => {
  const p = name("snap.qcow2");
  createQcow2(p, { size: 1 << 20 });
  patch(p, 88, be64(1n));
  openDisk(p).close();
  assert.equal(readFileSync(p).readBigUInt64BE(88), 0n);
  const q = name("snaps.qcow2");
  createQcow2(q, { size: 1 << 20 });
  patch(q, 60, be32(1));
  patch(q, 64, be64(65536n)); // points at the refcount table: in the file, aligned
  assert.throws(() => openDisk(q), /internal snapshot/);
});
