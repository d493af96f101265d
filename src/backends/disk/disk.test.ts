// openDisk (format probing, raw images) and parseSize.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync, statSync, mkdirSync } from "node:fs";
import { openDisk, parseSize, probeFormat, DiskImageError, RawImage, Qcow2Image } from "./disk.js";
import { createQcow2 } from "./qcow2/create.js";
import { rng, tempDir, Model, randomOps, assertSame } from "./testing.js";

const tmp = tempDir("tsvisor-disk-");
after(() => tmp.remove());

test("parseSize: binary units, fractions that make whole bytes, garbage refused", () => {
  assert.equal(parseSize("4096"), 4096);
  assert.equal(parseSize("512M"), 512 << 20);
  assert.equal(parseSize("10G"), 10 * 2 ** 30);
  assert.equal(parseSize("1.5G"), 1.5 * 2 ** 30);
  assert.equal(parseSize("64k"), 65536);
  assert.equal(parseSize("64KiB"), 65536);
  assert.equal(parseSize("2T"), 2 * 2 ** 40);
  assert.equal(parseSize(" 1 G "), 2 ** 30);
  for (const bad of ["", "G", "ten", "1.5", "-1G", "1X", "0x100", "1e3", "99999999999E"]) {
    assert.throws(() => parseSize(bad), DiskImageError, bad);
  }
});

test("probing: qcow2 by its magic, anything else is raw", () => {
  const q = tmp.path("p.qcow2");
  createQcow2(q, { size: 1 << 20 });
  assert.equal(probeFormat(q), "qcow2");
  const r = tmp.path("p.img");
  writeFileSync(r, new Uint8Array(4096).fill(1));
  assert.equal(probeFormat(r), "raw");
  const empty = tmp.path("empty.img");
  writeFileSync(empty, "");
  assert.equal(probeFormat(empty), "raw");
  assert.ok(openDisk(q, { readOnly: true }) instanceof Qcow2Image);
  assert.ok(openDisk(r, { readOnly: true }) instanceof RawImage);
  // A qcow2 image opened as raw is just bytes.
  const asRaw = openDisk(q, { format: "raw", readOnly: true });
  assert.equal(asRaw.virtualSize, statSync(q).size);
  asRaw.close();
});

test("raw images: reads, writes, write-zeroes, discard and flush against a model", () => {
  const p = tmp.path("r.img");
  const size = 4 << 20;
  const r = rng(3);
  const initial = r.bytes(size);
  writeFileSync(p, initial);
  const model = new Model(size, initial);
  const d = openDisk(p, { cache: "writethrough" });
  assert.equal(d.format, "raw");
  assert.equal(d.virtualSize, size);
  randomOps(d, model, r, { ops: 100, maxLength: 100000, zeroChance: 0.3 });
  d.discard(size - 100000, 100000); // reaching the end: a hole
  model.zero(size - 100000, 100000);
  d.flush();
  assertSame(d, model);
  d.close();
  assert.deepEqual(new Uint8Array(readFileSync(p)), model.bytes);
  assert.equal(statSync(p).size, size);
});

test("raw images: read-only, range checks, missing files and directories", () => {
  const p = tmp.path("ro.img");
  writeFileSync(p, new Uint8Array(8192));
  const d = openDisk(p, { readOnly: true });
  assert.throws(() => d.write(0, new Uint8Array(1)), /read-only/);
  assert.throws(() => d.writeZeroes(0, 1, true), /read-only/);
  assert.throws(() => d.read(8000, new Uint8Array(200)), /outside the disk/);
  assert.throws(() => d.read(0.5, new Uint8Array(1)), DiskImageError);
  d.close();
  assert.throws(() => openDisk(tmp.path("nope.img")), /nope\.img: no such file/);
  const dir = tmp.path("dir");
  mkdirSync(dir);
  assert.throws(() => openDisk(dir, { format: "raw" }), /is a directory/);
});

test("a probed raw disk refuses a guest write that would make it look like qcow2", () => {
  const p = tmp.path("guard.img");
  writeFileSync(p, new Uint8Array(4096));
  const magic = Uint8Array.from([0x51, 0x46, 0x49, 0xfb]);
  const probed = openDisk(p);
  assert.throws(() => probed.write(0, magic), /qcow2 header .* probed/);
  // Byte by byte is no way around it.
  probed.write(0, magic.subarray(0, 3));
  assert.throws(() => probed.write(3, magic.subarray(3)), /qcow2 header/);
  probed.write(512, magic); // elsewhere it is ordinary data
  probed.close();
  assert.equal(probeFormat(p), "raw");
  const explicit = openDisk(p, { format: "raw" });
  explicit.write(0, magic);
  explicit.close();
  assert.equal(probeFormat(p), "qcow2");
});
