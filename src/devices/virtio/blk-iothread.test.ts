// virtio-blk on an I/O thread, driven by the test driver (no guest): the
// same device as blk.ts seen from the driver, requests served off the main
// thread, interrupts raised on it, and the stop handshake that reset, a
// stopped queue and close rely on.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TestDriver, testSharedGuestMemory } from "./test-driver.js";
import { IoThreadBlk } from "./blk-iothread.js";
import { VirtioBlk, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_S_OK } from "./blk.js";
import { STATUS_DEVICE_NEEDS_RESET, VIRTIO_F_EVENT_IDX } from "./virtio.js";
import { openDisk, DiskImageError } from "../../backends/disk/disk.js";
import { createQcow2 } from "../../backends/disk/qcow2/create.js";

const Q = 0;
const DISK_BYTES = 1 << 20;

function header(type: number, sector = 0): Uint8Array {
  const h = new Uint8Array(16);
  const dv = new DataView(h.buffer);
  dv.setUint32(0, type, true);
  dv.setBigUint64(8, BigInt(sector), true);
  return h;
}

function pattern(len: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: len }, (_, i) => (i * 13 + seed) & 0xff);
}

async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** File descriptors of this process open on `path`. */
function fdsOn(path: string): number {
  return readdirSync("/proc/self/fd").filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false;
    }
  }).length;
}

function withDir(run: (dir: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), "tsvisor-iothread-"));
    try {
      await run(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

async function started(path: string): Promise<{ blk: IoThreadBlk; d: TestDriver }> {
  const blk = await IoThreadBlk.open({ path, format: "raw" }, { name: "blk0", serial: "iothread" });
  const { mem, shared } = testSharedGuestMemory();
  const d = new TestDriver(blk, mem, { shared });
  // Without EVENT_IDX (this driver keeps no used_event) every completion interrupts.
  d.start(d.deviceFeatures() & ~VIRTIO_F_EVENT_IDX, 64);
  return { blk, d };
}

/** Submit a chain, kick, wait for its completion (and the interrupt); its used length and status. */
async function submit(d: TestDriver, buffers: { data?: Uint8Array; writeLen?: number }[]): Promise<{ head: number; len: number; status: number }> {
  const head = d.add(Q, buffers);
  d.kick(Q);
  await until("the used-buffer interrupt", () => d.irq);
  d.ackInterrupts();
  const used = d.used(Q);
  assert.equal(used.length, 1);
  assert.equal(used[0].id, head);
  const last = buffers.length - 1;
  const lastLen = buffers[last].data?.length ?? buffers[last].writeLen ?? 0;
  return { head, len: used[0].len, status: d.mem.read(d.bufferAddr(Q, head, last) + BigInt(lastLen - 1), 1)[0] };
}

test("virtio-blk on an I/O thread: the same features and configuration space as blk.ts, byte for byte", withDir(async (dir) => {
  const path = join(dir, "d.raw");
  writeFileSync(path, new Uint8Array(DISK_BYTES));
  const plain = new VirtioBlk(openDisk(path, { format: "raw" }), { name: "blk0", serial: "iothread" });
  const blk = await IoThreadBlk.open({ path, format: "raw" }, { name: "blk0", serial: "iothread" });
  try {
    assert.equal(blk.features, plain.features);
    assert.deepEqual(blk.queueMaxSizes, plain.queueMaxSizes);
    for (let off = 0; off < 0x48; off++) for (const size of [1, 2, 4]) assert.equal(blk.readConfig(off, size), plain.readConfig(off, size), `config ${off}/${size}`);
  } finally {
    plain.close();
    await blk.close();
  }
  const ro = await IoThreadBlk.open({ path, readOnly: true }, { name: "blk1", serial: "" });
  assert.equal(ro.readConfig(0, 4), DISK_BYTES / 512);
  assert.match(ro.statsLines()[0], /^blk1 \(d\.raw, raw, read-only\)/);
  await ro.close();
}));

test("virtio-blk on an I/O thread: writes, reads and flushes complete with an interrupt; the file has the data; counts reach --stats", withDir(async (dir) => {
  const path = join(dir, "d.raw");
  writeFileSync(path, new Uint8Array(DISK_BYTES));
  const { blk, d } = await started(path);
  try {
    const data = pattern(8192, 3);
    const w = await submit(d, [{ data: header(VIRTIO_BLK_T_OUT, 16) }, { data }, { writeLen: 1 }]);
    assert.deepEqual([w.status, w.len], [VIRTIO_BLK_S_OK, 1]);
    const f = await submit(d, [{ data: header(VIRTIO_BLK_T_FLUSH) }, { writeLen: 1 }]);
    assert.equal(f.status, VIRTIO_BLK_S_OK);
    assert.deepEqual(new Uint8Array(readFileSync(path)).subarray(16 * 512, 16 * 512 + 8192), data);
    const r = await submit(d, [{ data: header(VIRTIO_BLK_T_IN, 16) }, { writeLen: 8192 }, { writeLen: 1 }]);
    assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 8193]);
    assert.deepEqual(d.mem.read(d.bufferAddr(Q, r.head, 1), 8192), data);
    blk.syncStats();
    const q = d.transport.queueStats[Q];
    assert.deepEqual([q.notifications, q.requests, q.interrupts, q.bytesRead, q.bytesWritten], [3, 3, 3, 16 + 8192 + 16 + 16, 1 + 1 + 8193]);
    assert.match(blk.statsLines()[0], /^blk0 \(d\.raw, raw\): 1 reads 8 KiB, 1 writes 8 KiB, 1 flushes, 0 discards, 0 write-zeroes, 0 errors$/);
  } finally {
    await blk.close();
  }
}));

test("virtio-blk on an I/O thread: after reset returns the thread leaves guest memory alone; the device works again after", withDir(async (dir) => {
  const path = join(dir, "d.raw");
  writeFileSync(path, new Uint8Array(DISK_BYTES));
  const { blk, d } = await started(path);
  try {
    // Many requests at once, reset right after the kick.
    for (let i = 0; i < 32; i++) d.add(Q, [{ data: header(VIRTIO_BLK_T_OUT, i * 8) }, { data: pattern(4096, i) }, { writeLen: 1 }]);
    d.kick(Q);
    d.setReg(0x70, 0);
    const used = d.queueLayout(Q).used;
    const before = d.mem.read(used, 4 + 8 * 64);
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(d.mem.read(used, 4 + 8 * 64), before, "the used ring changed after reset returned");
    assert.equal(d.irq, false);
    // Up again, on fresh rings.
    d.start(d.deviceFeatures() & ~VIRTIO_F_EVENT_IDX, 64);
    const w = await submit(d, [{ data: header(VIRTIO_BLK_T_OUT, 0) }, { data: pattern(512, 9) }, { writeLen: 1 }]);
    assert.equal(w.status, VIRTIO_BLK_S_OK);
    // A queue the driver stops (QueueReady = 0) is let go of as well.
    d.setReg(0x30, Q);
    d.setReg(0x44, 0);
    assert.equal(d.reg(0x44), 0);
  } finally {
    await blk.close();
  }
}));

test("virtio-blk on an I/O thread: a broken ring sets DEVICE_NEEDS_RESET on the main thread", withDir(async (dir) => {
  const path = join(dir, "d.raw");
  writeFileSync(path, new Uint8Array(DISK_BYTES));
  const { blk, d } = await started(path);
  try {
    // The available index jumps by more than the queue size (queue.ts: QueueBroken).
    d.mem.writeU16(d.queueLayout(Q).avail + 2n, 1000);
    d.kick(Q);
    await until("DEVICE_NEEDS_RESET", () => (d.status & STATUS_DEVICE_NEEDS_RESET) !== 0);
    assert.match(d.warnings.join("\n"), /blk0: .*available index moved by 1000/);
  } finally {
    await blk.close();
  }
}));

test("virtio-blk on an I/O thread: open errors are the disk's own; close closes the file once no request is in flight", withDir(async (dir) => {
  const missing = join(dir, "missing.raw");
  await assert.rejects(IoThreadBlk.open({ path: missing }, { name: "blk0", serial: "" }), (e: unknown) => {
    assert.ok(e instanceof DiskImageError);
    assert.throws(() => openDisk(missing), { message: (e as Error).message });
    return true;
  });
  const path = join(dir, "d.raw");
  writeFileSync(path, new Uint8Array(DISK_BYTES));
  const { blk, d } = await started(path);
  assert.equal(fdsOn(path), 1);
  for (let i = 0; i < 16; i++) d.add(Q, [{ data: header(VIRTIO_BLK_T_OUT, i * 8) }, { data: pattern(4096, i) }, { writeLen: 1 }]);
  d.kick(Q);
  await blk.quiesce();
  await blk.close();
  await blk.close();
  assert.equal(fdsOn(path), 0);
  // What was done before the stop is in the file, whole requests only.
  const done = d.used(Q).length;
  const file = new Uint8Array(readFileSync(path));
  for (let i = 0; i < done; i++) assert.deepEqual(file.subarray(i * 4096, (i + 1) * 4096), pattern(4096, i));
}));

import { StateReader, SnapshotError } from "../../snapshot/state.js";

test("virtio-blk on an I/O thread: pauseIo brings the thread's indices back; a restored device's thread goes on from them", withDir(async (dir) => {
  const path = join(dir, "d.raw");
  writeFileSync(path, new Uint8Array(DISK_BYTES));
  const blk = await IoThreadBlk.open({ path, format: "raw" }, { name: "blk0", serial: "iothread" });
  const { mem, shared } = testSharedGuestMemory();
  const d = new TestDriver(blk, mem, { shared });
  d.start(d.deviceFeatures() & ~VIRTIO_F_EVENT_IDX, 64);
  let blk2: IoThreadBlk | undefined;
  try {
    const w = await submit(d, [{ data: header(VIRTIO_BLK_T_OUT, 0) }, { data: pattern(512, 1) }, { writeLen: 1 }]);
    assert.equal(w.status, VIRTIO_BLK_S_OK);
    // Many requests, the pause right after the kick: the thread finishes the one in hand, the rest wait in the ring.
    const n = 16;
    for (let i = 1; i <= n; i++) d.add(Q, [{ data: header(VIRTIO_BLK_T_OUT, i * 8) }, { data: pattern(4096, i) }, { writeLen: 1 }]);
    d.kick(Q);
    await d.transport.pauseIo();
    const usedRing = d.queueLayout(Q).used;
    const before = d.mem.read(usedRing, 4 + 8 * 64);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(d.mem.read(usedRing, 4 + 8 * 64), before, "the thread touched the rings while paused");
    const state = JSON.parse(JSON.stringify(d.transport.saveState()));
    const usedIdx = d.mem.readU16(usedRing + 2n);
    assert.equal(state.queues[0].indices.usedIdx, usedIdx, "the saved used index is the thread's");
    assert.equal(state.queues[0].indices.lastAvail, usedIdx, "no request in flight once paused");
    assert.equal(state.interruptStatus & 1, usedIdx > 1 ? 1 : 0, "completions during the pause raised the interrupt");
    await blk.close();

    // A new machine: the disk reopened, the state applied, the thread started from the saved indices.
    blk2 = await IoThreadBlk.open({ path, format: "raw" }, { name: "blk0", serial: "iothread" });
    const d2 = TestDriver.restored(blk2, d, { shared });
    d2.transport.restoreState(new StateReader(state, "blk0"));
    d2.transport.resumeIo();
    await until("the requests left in the ring", () => d2.mem.readU16(usedRing + 2n) === n + 1);
    assert.equal(d2.used(Q).length, n, "every request after the first completed");
    const file = new Uint8Array(readFileSync(path));
    for (let i = 1; i <= n; i++) assert.deepEqual(file.subarray(i * 4096, (i + 1) * 4096), pattern(4096, i), `request ${i}`);
    d2.ackInterrupts();
    const r = await submit(d2, [{ data: header(VIRTIO_BLK_T_IN, 8) }, { writeLen: 4096 }, { writeLen: 1 }]);
    assert.deepEqual([r.status, r.len], [VIRTIO_BLK_S_OK, 4097]);
    assert.deepEqual(d2.mem.read(d2.bufferAddr(Q, r.head, 1), 4096), pattern(4096, 1));
    assert.equal(d2.mem.readU16(usedRing + 2n), n + 2);
    // Pause and resume in place: the thread goes on where it was.
    await d2.transport.pauseIo();
    d2.transport.resumeIo();
    const f = await submit(d2, [{ data: header(VIRTIO_BLK_T_FLUSH) }, { writeLen: 1 }]);
    assert.equal(f.status, VIRTIO_BLK_S_OK);
    assert.deepEqual(d2.warnings, []);

    // Tampered: requests in flight that an I/O thread device never holds once paused.
    const bad = structuredClone(state);
    bad.queues[0].indices.lastAvail = (bad.queues[0].indices.usedIdx + 2) & 0xffff;
    const d3 = TestDriver.restored(blk2, d, { shared });
    assert.throws(() => d3.transport.restoreState(new StateReader(bad, "blk0")),
      (e: unknown) => e instanceof SnapshotError && /blk0\.device: queue 0 has 2 requests in flight/.test(e.message));
  } finally {
    await blk.close();
    await blk2?.close();
  }
}));

test("virtio-blk on an I/O thread: reopen() between pauseIo and resumeIo moves the guest onto a qcow2 overlay; the old image stays as it was; a wrong-size image is refused and the old one served again", withDir(async (dir) => {
  const path = join(dir, "d.raw");
  writeFileSync(path, new Uint8Array(DISK_BYTES));
  const { blk, d } = await started(path);
  const overlay = join(dir, "d.raw.1.qcow2");
  try {
    const a = pattern(4096, 1);
    assert.equal((await submit(d, [{ data: header(VIRTIO_BLK_T_OUT, 16) }, { data: a }, { writeLen: 1 }])).status, VIRTIO_BLK_S_OK);
    await blk.pauseIo();
    // Of another size: refused, the old image is served again.
    const small = join(dir, "small.raw");
    writeFileSync(small, new Uint8Array(DISK_BYTES / 2));
    await assert.rejects(blk.reopen({ path: small, format: "raw" }), (e: Error) => e instanceof DiskImageError && /cannot replace/.test(e.message));
    assert.equal(blk.image.path, path);
    createQcow2(overlay, { size: DISK_BYTES, backingFile: path, backingFormat: "raw" });
    await blk.reopen({ path: overlay, format: "qcow2" });
    assert.deepEqual([blk.image.path, blk.image.format], [overlay, "qcow2"]);
    blk.resumeIo();
    // The guest reads what it wrote before (through the backing file) and writes into the overlay.
    const r = await submit(d, [{ data: header(VIRTIO_BLK_T_IN, 16) }, { writeLen: 4096 }, { writeLen: 1 }]);
    assert.equal(r.status, VIRTIO_BLK_S_OK);
    assert.deepEqual(d.mem.read(d.bufferAddr(Q, r.head, 1), 4096), a);
    const b = pattern(4096, 2);
    assert.equal((await submit(d, [{ data: header(VIRTIO_BLK_T_OUT, 16) }, { data: b }, { writeLen: 1 }])).status, VIRTIO_BLK_S_OK);
  } finally {
    await blk.close();
  }
  assert.deepEqual(new Uint8Array(readFileSync(path)).subarray(16 * 512, 16 * 512 + 4096), pattern(4096, 1), "the frozen image is unchanged");
  const o = openDisk(overlay, {});
  const got = new Uint8Array(4096);
  o.read(16 * 512, got);
  o.close();
  assert.deepEqual(got, pattern(4096, 2));
}));
