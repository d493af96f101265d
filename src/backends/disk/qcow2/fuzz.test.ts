// Fuzzing the qcow2 parser, mapping and allocator with hostile images: valid
// images written by tsvisor (zero clusters, a compressed cluster, an overlay)
// get their header, L1/L2 entries, refcount table and blocks mutated, then are
// opened, read, written, discarded, closed and checked. Each step must either
// work or throw DiskImageError: never another exception, never hang (the test
// has a timeout), and never hold much memory. Seeded and bounded: a failure
// names its seed and iteration, and reruns identically.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync, copyFileSync, truncateSync } from "node:fs";
import { deflateRawSync } from "node:zlib";
import { openDisk, DiskImageError } from "../disk.js";
import { createQcow2 } from "./create.js";
import { checkQcow2 } from "./check.js";
import { rng, tempDir } from "../testing.js";

// TSVISOR_FUZZ_SEED / TSVISOR_FUZZ_ITERATIONS explore further (the suite uses the defaults).
const ITERATIONS = Number(process.env.TSVISOR_FUZZ_ITERATIONS ?? 320);
const SEED = Number(process.env.TSVISOR_FUZZ_SEED ?? 0x9c0f2);
const MEMORY_BOUND = 256 << 20;

const tmp = tempDir("tsvisor-fuzz-");
after(() => tmp.remove());

interface Base {
  name: string;
  bytes: Buffer;
  /** Byte ranges worth mutating: [start, end). */
  regions: [string, number, number][];
  clusterSize: number;
}

/** Where the metadata of a (valid) image lies. */
function regionsOf(buf: Buffer): [string, number, number][] {
  const cs = 2 ** buf.readUInt32BE(20);
  const l1Offset = Number(buf.readBigUInt64BE(40));
  const l1Size = buf.readUInt32BE(36);
  const rtOffset = Number(buf.readBigUInt64BE(48));
  const rtClusters = buf.readUInt32BE(56);
  const regions: [string, number, number][] = [
    ["header", 0, 112],
    ["extensions", 112, Math.min(cs, 1024)],
    ["L1", l1Offset, l1Offset + 8 * l1Size],
    ["refcount table", rtOffset, rtOffset + 16],
  ];
  for (let i = 0; i < l1Size; i++) {
    const l2 = Number(buf.readBigUInt64BE(l1Offset + 8 * i) & 0xff_ffff_ffff_fe00n);
    if (l2) regions.push(["L2", l2, l2 + cs]);
  }
  for (let t = 0; t < rtClusters * cs / 8; t++) {
    const b = Number(buf.readBigUInt64BE(rtOffset + 8 * t));
    if (b) regions.push(["refcount block", b, b + Math.min(cs, 512)]);
  }
  return regions;
}

/** A cluster turned into a compressed one in place: the deflate stream replaces
 *  the data of an allocated cluster and its L2 entry becomes a compressed
 *  descriptor (refcount 1 stays right: one compressed cluster in that host cluster). */
function compressCluster(path: string, guestOffset: number, content: Uint8Array): void {
  const buf = readFileSync(path);
  const cs = 2 ** buf.readUInt32BE(20);
  const bits = buf.readUInt32BE(20);
  const l1 = Number(buf.readBigUInt64BE(40));
  const ci = guestOffset / cs;
  const l2 = Number(buf.readBigUInt64BE(l1 + 8 * Math.floor(ci / (cs / 8))) & 0xff_ffff_ffff_fe00n);
  const at = l2 + 8 * (ci % (cs / 8));
  const host = Number(buf.readBigUInt64BE(at) & 0xff_ffff_ffff_fe00n);
  const z = deflateRawSync(content);
  assert.ok(z.length <= cs);
  z.copy(buf, host);
  const x = 62 - (bits - 8);
  const sectors = Math.ceil(z.length / 512) - 1;
  buf.writeBigUInt64BE((1n << 62n) | (BigInt(sectors) << BigInt(x)) | BigInt(host), at);
  writeFileSync(path, buf);
}

function makeBases(): Base[] {
  const r = rng(SEED);
  const a = tmp.path("a.qcow2");
  createQcow2(a, { size: 6 << 20, clusterSize: 4096 });
  let d = openDisk(a);
  d.write(0, r.bytes(20000));
  d.write(2 << 20, r.bytes(9000));
  d.write(5 << 20, new Uint8Array(4096).fill(0x41));
  d.writeZeroes(4096, 8192, false);
  d.writeZeroes(2 << 20, 4096, true);
  d.close();
  compressCluster(a, 5 << 20, new Uint8Array(4096).fill(0x41));
  const b = tmp.path("b.qcow2");
  createQcow2(b, { size: 1 << 20, clusterSize: 512, refcountOrder: 2 });
  d = openDisk(b);
  for (let i = 0; i < 20; i++) d.write(r.int((1 << 20) - 2048) & ~511, r.bytes(1500).subarray(0, 512 + r.int(988)));
  d.close();
  const c = tmp.path("c.qcow2");
  createQcow2(c, { size: 6 << 20, clusterSize: 65536, backingFile: "a.qcow2", backingFormat: "qcow2" });
  d = openDisk(c);
  d.write(10000, r.bytes(70000));
  d.writeZeroes(1 << 20, 65536, true);
  d.close();
  return [a, b, c].map((p) => {
    const bytes = readFileSync(p);
    return { name: p, bytes, regions: regionsOf(bytes), clusterSize: 2 ** bytes.readUInt32BE(20) };
  });
}

test("fuzz: mutated headers, L1/L2 entries and refcounts fail with DiskImageError or work", { timeout: 120_000 }, () => {
  const bases = makeBases();
  for (const b of bases) {
    // The bases themselves are sound.
    const res = checkQcow2(b.name);
    assert.equal(res.corruptions + res.leaks, 0, `${b.name}: ${res.messages.join("\n")}`);
  }
  const r = rng(SEED);
  let maxBuffers = 0;
  const outcomes = { opened: 0, refused: 0, ioErrors: 0 };
  for (let it = 0; it < ITERATIONS; it++) {
    const base = bases[it % bases.length];
    const buf = Buffer.from(base.bytes);
    const cs = base.clusterSize;
    const log: string[] = [];
    const mutations = 1 + r.int(3);
    for (let m = 0; m < mutations; m++) {
      const [what, start, end] = base.regions[r.int(base.regions.length)];
      const kind = r.int(4);
      if (kind === 0) {
        const at = start + r.int(end - start);
        buf[at] ^= 1 << r.int(8);
        log.push(`${what}: flip bit at ${at}`);
      } else if (kind === 1) {
        const at = start + r.int(end - start);
        buf[at] = r.int(256);
        log.push(`${what}: byte at ${at}`);
      } else if (kind === 2) {
        const at = start + 8 * r.int(Math.max(1, Math.floor((end - start) / 8)));
        const interesting = [
          0n, 1n, 0x8000_0000_0000_0000n, 0x4000_0000_0000_0000n | BigInt(r.int(buf.length)), BigInt(buf.length),
          BigInt(buf.length - cs), (1n << 56n) - 512n, 0xffff_ffff_ffff_ffffn, BigInt(cs * r.int(Math.ceil(buf.length / cs))),
          0x8000_0000_0000_0000n | BigInt(cs * r.int(Math.ceil(buf.length / cs))), BigInt(cs * r.int(64)) | 1n,
        ];
        const v = interesting[r.int(interesting.length)];
        if (at + 8 <= buf.length) buf.writeBigUInt64BE(v, at);
        log.push(`${what}: u64 0x${v.toString(16)} at ${at}`);
      } else {
        const fields = [4, 16, 20, 32, 36, 56, 60, 96, 100];
        const at = fields[r.int(fields.length)];
        const values = [0, 1, 2, 3, 7, 9, 12, 16, 21, 64, 104, 112, 0x7fff_ffff, 0xffff_ffff, r.int(1 << 20)];
        const v = values[r.int(values.length)];
        buf.writeUInt32BE(v >>> 0, at);
        log.push(`header: u32 ${v} at ${at}`);
      }
    }
    const path = tmp.path(`it${it % 8}.qcow2`);
    writeFileSync(path, buf);
    if (r.int(16) === 0) {
      const len = r.int(buf.length);
      truncateSync(path, len);
      log.push(`truncated to ${len}`);
    }
    if (base.name.endsWith("c.qcow2")) copyFileSync(bases[0].name, tmp.path("a.qcow2")); // an intact backing file
    const where = () => `seed ${SEED}, iteration ${it}, base ${base.name}: ${log.join("; ")}`;
    const expectOnly = (step: string, f: () => void): boolean => {
      try {
        f();
        return true;
      } catch (e) {
        if (!(e instanceof DiskImageError)) assert.fail(`${step} threw ${(e as Error)?.stack ?? e} (${where()})`);
        assert.ok(!e.message.includes("\n"), `one-line message: ${e.message}`);
        return false;
      }
    };
    let disk: ReturnType<typeof openDisk> | undefined;
    if (!expectOnly("open", () => (disk = openDisk(path, { format: "qcow2" })))) {
      outcomes.refused++;
      expectOnly("read-only open", () => openDisk(path, { format: "qcow2", readOnly: true }).close());
    } else {
      outcomes.opened++;
      const d = disk!;
      const size = d.virtualSize;
      const span = (max: number) => {
        const len = Math.min(size, 1 + r.int(max));
        return [r.int(size - len + 1), len];
      };
      let ok = true;
      for (let op = 0; op < 8; op++) {
        const [off, len] = span(3 * cs + 100);
        const choice = r.int(5);
        ok = expectOnly(`operation ${op}`, () => {
          if (choice <= 1) d.read(off, new Uint8Array(len));
          else if (choice === 2) d.write(off, r.bytes(len));
          else if (choice === 3) d.discard(off, len);
          else d.writeZeroes(off, len, r.int(2) === 0);
        }) && ok;
      }
      if (!ok) outcomes.ioErrors++;
      expectOnly("close", () => d.close());
    }
    expectOnly("check", () => checkQcow2(path));
    maxBuffers = Math.max(maxBuffers, process.memoryUsage().arrayBuffers);
  }
  if (process.env.TSVISOR_FUZZ_VERBOSE) console.log(JSON.stringify({ ...outcomes, maxBuffers }));
  assert.ok(maxBuffers < MEMORY_BOUND, `array buffers reached ${maxBuffers} bytes`);
  // The mutations must reach past the header checks often enough to test the rest.
  assert.ok(outcomes.opened > ITERATIONS / 4, JSON.stringify(outcomes));
  assert.ok(outcomes.refused > ITERATIONS / 10, JSON.stringify(outcomes));
});
