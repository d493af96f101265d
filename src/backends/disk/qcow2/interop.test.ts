// qcow2 interoperability with QEMU's tools (Debian's qemu-utils): images that
// qemu-img and qemu-io make (v2 and v3, cluster sizes, refcount widths,
// compressed, backing chains) read back in tsvisor as `qemu-img convert -O raw`
// says, and stay correct when tsvisor writes into them; images tsvisor makes
// and writes pass `qemu-img check` and convert to exactly what tsvisor reads.
// Skipped, saying why, when qemu-img is not installed.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { basename } from "node:path";
import { openDisk, type DiskImage } from "../disk.js";
import { createQcow2 } from "./create.js";
import { checkQcow2 } from "./check.js";
import { rng, tempDir, Model, randomOps, assertSame, haveQemuImg, haveQemuIo, run, NO_QEMU } from "../testing.js";

const skip = haveQemuImg() ? false : NO_QEMU;
const skipIo = skip || (haveQemuIo() ? false : "qemu-io is not installed");
const tmp = tempDir("tsvisor-interop-");
after(() => tmp.remove());
let n = 0;
const name = (s: string) => tmp.path(`${n++}-${s}`);

/** What qemu-img says the guest sees. */
function qemuRaw(img: string): Uint8Array {
  const out = name("converted.raw");
  run("qemu-img", ["convert", "-O", "raw", img, out]);
  return new Uint8Array(readFileSync(out));
}

/** qemu-img check must find neither corruption nor leaks (status 0); so must tsvisor's checker. */
function bothChecksClean(img: string) {
  run("qemu-img", ["check", img]);
  const r = checkQcow2(img);
  assert.equal(r.corruptions + r.leaks, 0, r.messages.join("\n"));
}

function readAll(d: DiskImage): Uint8Array {
  const b = new Uint8Array(d.virtualSize);
  d.read(0, b);
  return b;
}

const SIZE = 8 << 20;

for (const compat of ["1.1", "0.10"]) {
  for (const clusterSize of [512, 4096, 65536]) {
    test(`qemu-img/qemu-io image, compat=${compat}, ${clusterSize}-byte clusters: read, written by tsvisor, checked`, { skip: skipIo }, () => {
      const img = name("q.qcow2");
      run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `compat=${compat},cluster_size=${clusterSize}`, img, String(SIZE)]);
      run("qemu-io", [
        "-c", "write -P 0xab 0 64k",
        "-c", "write -P 0x12 1000448 100000",
        "-c", "write -P 0x34 3M 1M",
        "-c", "write -z 3200k 256k",
        "-c", "discard 3600k 128k",
        img,
      ]);
      const d = openDisk(img);
      const model = new Model(SIZE, qemuRaw(img));
      assertSame(d, model);
      randomOps(d, model, rng(clusterSize), { ops: 60, maxLength: 3 * clusterSize + 1000, noDiscard: compat === "0.10" });
      d.close();
      bothChecksClean(img);
      assert.deepEqual(qemuRaw(img), model.bytes);
    });
  }
}

for (const bits of [1, 8, 64]) {
  test(`qemu-img image with refcount_bits=${bits}: tsvisor writes it, qemu-img checks it`, { skip }, () => {
    const img = name("rc.qcow2");
    run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `refcount_bits=${bits},cluster_size=4096`, img, String(SIZE)]);
    const d = openDisk(img);
    const model = new Model(SIZE);
    randomOps(d, model, rng(bits), { ops: 80, maxLength: 40000 });
    d.close();
    bothChecksClean(img);
    assert.deepEqual(qemuRaw(img), model.bytes);
  });
}

test("qemu-img convert of random data (v3, v2, compressed) reads back identically; tsvisor rewrites compressed clusters", { skip }, () => {
  const r = rng(99);
  const src = name("src.raw");
  // Compressible and incompressible stretches, and holes.
  const data = new Uint8Array(SIZE);
  for (let off = 0; off < SIZE; off += 256 << 10) {
    const kind = r.int(3);
    if (kind === 0) data.set(r.bytes(256 << 10), off);
    else if (kind === 1) data.fill(r.int(256), off, off + (256 << 10));
  }
  writeFileSync(src, data);
  for (const opts of [["-o", "compat=1.1"], ["-o", "compat=0.10"], ["-c"], ["-c", "-o", "compat=0.10,cluster_size=4096"]]) {
    const img = name("conv.qcow2");
    run("qemu-img", ["convert", "-O", "qcow2", ...opts, src, img]);
    if (opts.includes("-c")) assert.ok(checkQcow2(img).compressedClusters > 0);
    const d = openDisk(img);
    assert.deepEqual(readAll(d), data, opts.join(" "));
    const model = new Model(SIZE, data);
    randomOps(d, model, rng(opts.length), { ops: 60, maxLength: 100000, noDiscard: opts.join().includes("0.10") });
    d.close();
    bothChecksClean(img);
    assert.deepEqual(qemuRaw(img), model.bytes, opts.join(" "));
  }
});

test("a qemu-img backing chain (raw <- qcow2 <- qcow2) reads as qemu-img sees it; tsvisor's writes leave the bases alone", { skip: skipIo }, () => {
  const r = rng(5);
  const base = name("base.raw");
  writeFileSync(base, r.bytes(SIZE));
  const mid = name("mid.qcow2");
  const top = name("top.qcow2");
  run("qemu-img", ["create", "-q", "-f", "qcow2", "-b", basename(base), "-F", "raw", mid]);
  run("qemu-io", ["-c", "write -P 0x77 100k 300k", "-c", "write -z 1M 64k", mid]);
  run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", basename(mid), "-F", "qcow2", top, String(SIZE + (1 << 20))]);
  run("qemu-io", ["-c", "write -P 0x99 200k 8k", top]);
  const baseBefore = readFileSync(base);
  const midBefore = readFileSync(mid);
  const d = openDisk(top);
  const model = new Model(d.virtualSize, qemuRaw(top));
  assertSame(d, model);
  randomOps(d, model, r, { ops: 80, maxLength: 50000 });
  d.close();
  bothChecksClean(top);
  assert.deepEqual(qemuRaw(top), model.bytes);
  assert.deepEqual(readFileSync(base), baseBefore);
  assert.deepEqual(readFileSync(mid), midBefore);
});

for (const clusterSize of [512, 65536, 2 << 20]) {
  test(`tsvisor-made image, ${clusterSize}-byte clusters, and an overlay on it: qemu-img check and convert agree`, { skip }, () => {
    const r = rng(clusterSize + 1);
    const size = clusterSize === 512 ? 4 << 20 : 32 << 20;
    const img = name("t.qcow2");
    createQcow2(img, { size, clusterSize });
    let d = openDisk(img);
    const model = new Model(size);
    randomOps(d, model, r, { ops: 100, maxLength: Math.max(200000, 2 * clusterSize), zeroChance: 0.25 });
    d.close();
    bothChecksClean(img);
    assert.deepEqual(qemuRaw(img), model.bytes);
    const info = JSON.parse(run("qemu-img", ["info", "--output=json", img]));
    assert.equal(info["virtual-size"], size);
    assert.equal(info["cluster-size"], clusterSize);

    const overlay = name("o.qcow2");
    createQcow2(overlay, { size, clusterSize: 65536, backingFile: basename(img), backingFormat: "qcow2" });
    const before = readFileSync(img);
    d = openDisk(overlay);
    randomOps(d, model, r, { ops: 100, maxLength: 150000, zeroChance: 0.25 });
    d.close();
    bothChecksClean(overlay);
    assert.deepEqual(qemuRaw(overlay), model.bytes);
    assert.deepEqual(readFileSync(img), before);
  });
}

test("tsvisor's checker agrees with qemu-img check on leaks and corruption", { skip }, () => {
  const img = name("bad.qcow2");
  createQcow2(img, { size: 1 << 20, clusterSize: 4096 });
  const d = openDisk(img);
  d.write(0, new Uint8Array(16384).fill(3));
  d.discard(0, 4096); // frees the first data cluster, cluster 5 of the file
  d.close();
  const buf = readFileSync(img);
  // The refcount block is cluster 2 (16-bit entries). Leak: raise the freed cluster's count.
  assert.equal(buf.readUInt16BE(2 * 4096 + 2 * 5), 0);
  buf.writeUInt16BE(1, 2 * 4096 + 2 * 5);
  writeFileSync(img, buf);
  const leak = checkQcow2(img);
  assert.equal(leak.corruptions, 0);
  assert.equal(leak.leaks, 1);
  let q = spawnQemuCheck(img);
  assert.equal(q, 3);
  // Corruption: drop a data cluster's refcount to zero.
  const l1 = Number(buf.readBigUInt64BE(40));
  const l2 = Number(buf.readBigUInt64BE(l1) & 0xff_ffff_ffff_fe00n);
  const data = Number(buf.readBigUInt64BE(l2 + 8) & 0xff_ffff_ffff_fe00n);
  buf.writeUInt16BE(0, 2 * 4096 + 2 * (data / 4096));
  writeFileSync(img, buf);
  const bad = checkQcow2(img);
  assert.ok(bad.corruptions >= 1);
  q = spawnQemuCheck(img);
  assert.equal(q, 2);
});

function spawnQemuCheck(img: string): number | null {
  try {
    run("qemu-img", ["check", img]);
    return 0;
  } catch (e) {
    return Number(/status (\d+)/.exec((e as Error).message)?.[1]);
  }
}

test("internal snapshots and persistent bitmaps: tsvisor reads the active layer, counts their clusters, and writes only without snapshots", { skip: skipIo }, () => {
  const img = name("snap.qcow2");
  run("qemu-img", ["create", "-q", "-f", "qcow2", img, "4M"]);
  run("qemu-io", ["-c", "write -P 0x11 0 1M", img]);
  run("qemu-img", ["snapshot", "-c", "one", img]);
  run("qemu-io", ["-c", "write -P 0x22 512k 1M", img]);
  run("qemu-img", ["bitmap", "--add", img, "dirty0"]);
  run("qemu-io", ["-c", "write -P 0x33 2M 64k", img]);
  const r = checkQcow2(img);
  assert.equal(r.corruptions + r.leaks, 0, r.messages.join("\n"));
  const d = openDisk(img, { readOnly: true });
  assert.deepEqual(readAll(d), qemuRaw(img));
  d.close();
  assert.throws(() => openDisk(img), /internal snapshot/);

  // Without snapshots tsvisor writes, clearing the bitmaps' autoclear bit as
  // the spec asks: the bitmaps become inconsistent and their clusters leak
  // (qemu-img says the same), nothing is corrupt.
  const bm = name("bitmap.qcow2");
  run("qemu-img", ["create", "-q", "-f", "qcow2", bm, "4M"]);
  run("qemu-img", ["bitmap", "--add", bm, "dirty0"]);
  run("qemu-io", ["-c", "write -P 0x44 1M 64k", bm]);
  assert.equal(checkQcow2(bm).leaks, 0);
  const w = openDisk(bm);
  w.write(0, new Uint8Array(70000).fill(5));
  w.close();
  const after = checkQcow2(bm);
  assert.equal(after.corruptions, 0);
  assert.ok(spawnQemuCheck(bm) === 0 || spawnQemuCheck(bm) === 3);
  const want = new Uint8Array(4 << 20);
  want.fill(5, 0, 70000);
  want.fill(0x44, 1 << 20, (1 << 20) + 65536);
  assert.deepEqual(qemuRaw(bm), want);
});
