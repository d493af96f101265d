// Fuzzing the virtio devices' queue processing with a hostile driver (issue 4,
// "Robustness"). Each device (virtio-blk over a raw file, writable and
// read-only; virtio-net over a fake backend; virtio-console; virtio-rng) is
// driven through the real virtio-mmio transport by a TestDriver, and for a
// bounded number of steps the driver writes random and mutated rings: chains
// that loop or are longer than the queue, buffers outside RAM or wrapping past
// 2^64, zero-length and huge buffers, nested and badly sized indirect tables,
// head indexes out of range, available index jumps past the queue size,
// readable buffers after writable ones, valid requests with hostile headers,
// random register writes (resets and QueueReady included), feature bits never
// offered, notifications on queues that are not ready, host input at any time.
//
// After every step:
// - no exception escapes the transport (MMIO read/write, poll), and it still answers;
// - the device touched guest memory only inside guest RAM, only where the
//   driver let it write (device-writable buffers of well-formed chains and the
//   used rings: 2.7.5.1 "A device MUST NOT write to a device-readable buffer"),
//   never the bystander device's memory, and the host frames around the VM's
//   RAM (another VM's frames, the pool's own memory) are byte for byte unchanged;
// - each used ring moves forward by at most what was made available, in order
//   for the queues the device answers at once, with length 0 for malformed
//   chains (2.7.8), and the device either completed every available request or
//   set DEVICE_NEEDS_RESET (2.1.2) -- and it sets that only when the ring itself
//   was broken, never for one malformed chain (which fails alone);
// - a disk is never read or written outside its size, a read-only disk never modified.
// A second device (a virtio-blk) on the same guest memory keeps working
// throughout, and after the run a reset device answers fresh requests correctly.
//
// Seeded and bounded: a failure names its device, seed, iteration and step,
// and reruns identically. TSVISOR_FUZZ_SEED / TSVISOR_FUZZ_ITERATIONS explore
// further (the suite uses the defaults).

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import type { GuestMemory } from "../../memory/guest-memory.js";
import { TestDriver, TEST_RAM, type Buffer as DriverBuffer } from "./test-driver.js";
import { DESC_SIZE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, ringAreaSizes } from "./queue.js";
import {
  type VirtioDevice,
  STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_DEVICE_NEEDS_RESET,
  VIRTIO_F_VERSION_1, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX,
} from "./virtio.js";
import {
  VirtioBlk, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP,
} from "./blk.js";
import { VirtioNet, VIRTIO_NET_HDR_SIZE } from "./net.js";
import { VirtioConsole } from "./console.js";
import { VirtioRng } from "./rng.js";
import { openDisk } from "../../backends/disk/disk.js";
import { tempDir } from "../../backends/disk/testing.js";
import {
  Rand, HostMemory, CheckedDisk, MemoryDisk, FakeNetBackend, modelChain, writableByte, formatSegments, describeDescriptors, overlaps, within,
  type ChainModel, type Range, type Segment,
} from "./fuzz-harness.js";

const SEED = Number(process.env.TSVISOR_FUZZ_SEED ?? 0x7151_0004);
/** Steps per device. */
const ITERATIONS = Number(process.env.TSVISOR_FUZZ_ITERATIONS ?? 1000);
/** TSVISOR_FUZZ_TRACE=1 prints what each step does (to follow a failure). */
const TRACE = process.env.TSVISOR_FUZZ_TRACE === "1";

// The fuzzed VM's guest memory, 4 MiB at TEST_RAM:
//   +0x000000  the fuzzed device's rings (TestDriver: queue i at +i * 0x10000)
//   +0x020000  indirect tables, 64 KiB per queue (never a data buffer, so data
//              the device writes can never turn into descriptors)
//   +0x040000  the bystander device's rings and buffers (no fuzzed descriptor points here)
//   +0x0c0000  buffers of well-formed requests (TestDriver's heap)
//   +0x1c0000  buffers of hostile chains, up to the end of RAM
const RAM_BYTES = 4 << 20;
const RAM_END = TEST_RAM + BigInt(RAM_BYTES);
const RINGS = TEST_RAM;
const QUEUE_STRIDE = 0x1_0000n;
const TABLES = TEST_RAM + 0x2_0000n;
const TABLE_BYTES = 0x1_0000;
const BYSTANDER = TEST_RAM + 0x4_0000n;
const BYSTANDER_END = TEST_RAM + 0xc_0000n;
const VALID_HEAP = BYSTANDER_END;
const HOSTILE = TEST_RAM + 0x1c_0000n;
/** Another VM's RAM on the same frame pool, interleaved with ours, filled with a pattern. */
const NEIGHBOUR_FRAMES = 160;
const RAM: Range = { start: TEST_RAM, end: RAM_END };
const inRam = (addr: bigint, len: number) => within(RAM, addr, len);

const MMIO_MAGIC = 0x7472_6976;
const REG_STATUS = 0x70;
const REG_QUEUE_SEL = 0x30;
const REG_QUEUE_READY = 0x44;
const REG_NOTIFY = 0x50;
const REG_INTERRUPT_STATUS = 0x60;

const tmp = tempDir("tsvisor-virtio-fuzz-");
after(() => tmp.remove());

// --- the devices under test ---------------------------------------------------

/** A well-formed request and how to check its completion (used entry, guest buffers, host side). */
interface ValidRequest {
  buffers: DriverBuffer[];
  verify?(used: { id: number; len: number }, head: number, driver: TestDriver, check: Checker): void;
}

type Checker = (ok: unknown, message: string) => void;

interface StepContext {
  /** Disk sectors taken by well-formed requests in this step (they must not overlap: their results are checked after the batch). */
  sectors: Set<number>;
}

interface Target {
  label: string;
  device: VirtioDevice;
  /** Queues where a notify completes every available request before it returns (the others hold buffers for host input). */
  syncQueues: readonly number[];
  /** Device feature bits the driver may accept (VERSION_1 always, INDIRECT_DESC and EVENT_IDX at random). */
  optionalFeatures: bigint;
  validRequest(q: number, r: Rand, features: bigint, ctx: StepContext): ValidRequest | undefined;
  /** Hostile contents for a well-formed request's first buffer (blk: header fields). */
  mutateHeader?(addr: bigint, len: number, r: Rand, mem: GuestMemory): void;
  /** What a completed well-formed chain of a sync queue must look like (used length, status byte). */
  expectGood?(model: Extract<ChainModel, { ok: true }>, used: { id: number; len: number }, mem: GuestMemory, check: Checker, trustStatus: (addr: bigint) => boolean): void;
  hostInput?(r: Rand): void;
  /** Device-specific invariants after every step. */
  invariants?(check: Checker): void;
  /** After the run: a freshly started device must do this right. */
  roundTrip(driver: TestDriver, check: Checker, poll: () => void): void;
  finish?(check: Checker): void;
}

const DISK_BYTES = 400 * 512;
const SERIAL = "fuzz-disk";

function blkTarget(readOnly: boolean, r: Rand): Target {
  const path = tmp.path(readOnly ? "readonly.raw" : "writable.raw");
  const initial = r.bytes(DISK_BYTES);
  writeFileSync(path, initial);
  const initialHash = createHash("sha256").update(initial).digest("hex");
  const disk = new CheckedDisk(openDisk(path, { format: "raw", readOnly, cache: "unsafe" }));
  const blk = new VirtioBlk(disk, { name: "blk0", serial: SERIAL });
  const sectors = DISK_BYTES / 512;

  const header = (type: number, sector: bigint | number) => {
    const h = new Uint8Array(16);
    const dv = new DataView(h.buffer);
    dv.setUint32(0, type, true);
    dv.setBigUint64(8, BigInt.asUintN(64, BigInt(sector)), true);
    return h;
  };
  const status = (driver: TestDriver, head: number, n: number) => driver.mem.read(driver.bufferAddr(0, head, n), 1)[0];
  /** `count` sectors no other well-formed request of this step uses, or undefined. */
  const takeSectors = (ctx: StepContext, count: number): number | undefined => {
    for (let tries = 0; tries < 8; tries++) {
      const s = r.int(sectors - count + 1);
      const range = Array.from({ length: count }, (_, i) => s + i);
      if (range.some((x) => ctx.sectors.has(x))) continue;
      range.forEach((x) => ctx.sectors.add(x));
      return s;
    }
    return undefined;
  };

  return {
    label: readOnly ? "virtio-blk (read-only raw disk)" : "virtio-blk (raw disk)",
    device: blk,
    syncQueues: [0],
    optionalFeatures: blk.features,
    validRequest(_q, r, features, ctx) {
      const kinds = ["read", "read", "write", "write", "flush", "getid"];
      if (features & VIRTIO_BLK_F_DISCARD) kinds.push("discard");
      if (features & VIRTIO_BLK_F_WRITE_ZEROES) kinds.push("write-zeroes");
      const kind = r.pick(kinds);
      const count = r.range(1, 8);
      switch (kind) {
        case "read": {
          const s = takeSectors(ctx, count);
          if (s === undefined) return undefined;
          const len = count * 512;
          const split = r.chance(0.3) ? 512 * r.range(1, count) : len;
          const data: DriverBuffer[] = split < len ? [{ writeLen: split }, { writeLen: len - split }] : [{ writeLen: len }];
          return {
            buffers: [{ data: header(VIRTIO_BLK_T_IN, s) }, ...data, { writeLen: 1 }],
            verify(used, head, driver, check) {
              check(used.len === len + 1, `read: used length ${used.len}, expected ${len + 1}`);
              check(status(driver, head, data.length + 1) === VIRTIO_BLK_S_OK, "read: status not OK");
              const got = data.map((_, i) => driver.mem.read(driver.bufferAddr(0, head, 1 + i), data[i].writeLen!));
              check(Buffer.concat(got).equals(disk.peek(s * 512, len)), `read of sectors ${s}+${count}: data differs from the disk`);
            },
          };
        }
        case "write": {
          const s = takeSectors(ctx, count);
          if (s === undefined) return undefined;
          const data = r.bytes(count * 512);
          return {
            buffers: [{ data: header(VIRTIO_BLK_T_OUT, s) }, { data }, { writeLen: 1 }],
            verify(used, head, driver, check) {
              check(used.len === 1, `write: used length ${used.len}, expected 1`);
              const st = status(driver, head, 2);
              if (readOnly) {
                check(st === VIRTIO_BLK_S_IOERR, `write to a read-only disk: status ${st}, expected IOERR`);
              } else {
                check(st === VIRTIO_BLK_S_OK, `write: status ${st}`);
                check(Buffer.from(disk.peek(s * 512, data.length)).equals(data), `write of sectors ${s}+${count} did not reach the disk`);
              }
            },
          };
        }
        case "flush":
          return {
            buffers: [{ data: header(VIRTIO_BLK_T_FLUSH, 0) }, { writeLen: 1 }],
            verify(used, head, driver, check) {
              check(used.len === 1 && status(driver, head, 1) === VIRTIO_BLK_S_OK, "flush failed");
            },
          };
        case "getid":
          return {
            buffers: [{ data: header(VIRTIO_BLK_T_GET_ID, 0) }, { writeLen: 20 }, { writeLen: 1 }],
            verify(used, head, driver, check) {
              const id = driver.mem.read(driver.bufferAddr(0, head, 1), 20);
              const want = new Uint8Array(20);
              want.set(new TextEncoder().encode(SERIAL));
              check(used.len === 21 && status(driver, head, 2) === VIRTIO_BLK_S_OK && Buffer.from(id).equals(want), "GET_ID answered wrong");
            },
          };
        default: {
          const type = kind === "discard" ? VIRTIO_BLK_T_DISCARD : VIRTIO_BLK_T_WRITE_ZEROES;
          const n = r.range(1, 3);
          const segs: [number, number][] = [];
          for (let i = 0; i < n; i++) {
            const c = r.range(1, 4);
            const s = takeSectors(ctx, c);
            if (s !== undefined) segs.push([s, c]);
          }
          if (segs.length === 0) return undefined;
          const body = new Uint8Array(16 * segs.length);
          const dv = new DataView(body.buffer);
          segs.forEach(([s, c], i) => {
            dv.setBigUint64(16 * i, BigInt(s), true);
            dv.setUint32(16 * i + 8, c, true);
            dv.setUint32(16 * i + 12, type === VIRTIO_BLK_T_WRITE_ZEROES && r.chance(0.5) ? 1 : 0, true);
          });
          return {
            buffers: [{ data: header(type, 0) }, { data: body }, { writeLen: 1 }],
            verify(used, head, driver, check) {
              check(used.len === 1 && status(driver, head, 2) === VIRTIO_BLK_S_OK, `${kind} failed`);
              for (const [s, c] of segs) check(disk.peek(s * 512, c * 512).every((b) => b === 0), `${kind} of sectors ${s}+${c} left data`);
            },
          };
        }
      }
    },
    mutateHeader(addr, len, r, mem) {
      // A hostile header: any type, sectors at and past the end, up to 2^64 - 1.
      if (len < 16) return;
      const h = mem.read(addr, 16);
      const dv = new DataView(h.buffer);
      if (r.chance(0.5)) dv.setUint32(0, r.pick([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES, 2, 5, r.u32()]), true);
      if (r.chance(0.7)) {
        const sector = r.pick([BigInt(sectors - 1), BigInt(sectors), BigInt(sectors + 1), BigInt(sectors - r.range(1, 8)), 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n, r.u64()]);
        dv.setBigUint64(8, sector, true);
      }
      if (r.chance(0.2)) dv.setUint32(4, r.u32(), true);
      mem.write(addr, h);
      // Discard / write-zeroes segments after the header, when the buffer holds them.
      for (let off = 16; off + 16 <= len && r.chance(0.5); off += 16) {
        const seg = new Uint8Array(16);
        const sv = new DataView(seg.buffer);
        sv.setBigUint64(0, r.pick([0n, BigInt(sectors - 1), BigInt(sectors), 2n ** 64n - 1n, r.u64()]), true);
        sv.setUint32(8, r.pick([0, 1, 0x3f_ffff, 0x40_0000, 0xffff_ffff, r.u32()]), true);
        sv.setUint32(12, r.pick([0, 1, 2, r.u32()]), true);
        mem.write(addr + BigInt(off), seg);
      }
    },
    expectGood(model, used, mem, check, trustStatus) {
      if (model.writableLength === 0) {
        check(used.len === 0, `a request without a writable byte completed with length ${used.len}`);
        return;
      }
      check(used.len >= 1 && used.len <= model.writableLength, `used length ${used.len} for ${model.writableLength} writable bytes`);
      const at = writableByte(model, model.writableLength - 1);
      if (trustStatus(at)) {
        const st = mem.read(at, 1)[0];
        check(st === VIRTIO_BLK_S_OK || st === VIRTIO_BLK_S_IOERR || st === VIRTIO_BLK_S_UNSUPP, `status byte ${st} (5.2.6: OK, IOERR or UNSUPP)`);
      }
    },
    invariants(check) {
      check(disk.violations.length === 0, `disk access outside the rules: ${disk.violations.join("; ")}`);
      if (readOnly) check(disk.mutations === 0, "a read-only disk was asked to change");
    },
    roundTrip(driver, check) {
      const s = r.int(sectors - 2);
      const data = r.bytes(1024);
      const w = driver.add(0, [{ data: header(VIRTIO_BLK_T_OUT, s) }, { data }, { writeLen: 1 }]);
      const rd = driver.add(0, [{ data: header(VIRTIO_BLK_T_IN, s) }, { writeLen: 1024 }, { writeLen: 1 }]);
      driver.kick(0);
      const used = driver.used(0);
      check(used.length === 2 && used[0].id === w && used[1].id === rd, `round trip: used ${JSON.stringify(used)}`);
      check(status(driver, w, 2) === (readOnly ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK), "round trip: write status");
      check(status(driver, rd, 2) === VIRTIO_BLK_S_OK, "round trip: read status");
      const back = driver.mem.read(driver.bufferAddr(0, rd, 1), 1024);
      check(Buffer.from(back).equals(disk.peek(s * 512, 1024)), "round trip: read data differs from the disk");
      if (!readOnly) check(Buffer.from(back).equals(data), "round trip: read did not return what was written");
    },
    finish(check) {
      disk.close();
      check(statSync(path).size === DISK_BYTES, `the disk file is ${statSync(path).size} bytes, not ${DISK_BYTES}`);
      if (readOnly) check(createHash("sha256").update(readFileSync(path)).digest("hex") === initialHash, "the read-only disk file changed");
    },
  };
}

function netTarget(r: Rand): Target {
  const be = new FakeNetBackend();
  const net = new VirtioNet(be, { name: "net0", mac: Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56) });
  const RX = 0;
  const TX = 1;
  const frame = (len: number) => {
    const f = r.bytes(len);
    if (len >= 14) f[12] = 0x08; // an Ethertype, so the frame looks the part
    return f;
  };
  const sentSince = (from: number, f: Uint8Array) => be.sent.slice(from).some((s) => Buffer.from(s).equals(f));
  return {
    label: "virtio-net",
    device: net,
    syncQueues: [TX],
    optionalFeatures: net.features,
    validRequest(q, r) {
      if (q === RX) return { buffers: [{ writeLen: r.pick([VIRTIO_NET_HDR_SIZE + 1514, VIRTIO_NET_HDR_SIZE + r.range(0, 200), 2048]) }] };
      const f = frame(r.range(14, 1514));
      const hdr = new Uint8Array(VIRTIO_NET_HDR_SIZE);
      const from = be.sent.length;
      const whole = new Uint8Array(hdr.length + f.length);
      whole.set(f, hdr.length);
      return {
        buffers: r.chance(0.5) ? [{ data: hdr }, { data: f }] : [{ data: whole }],
        verify(used, _head, _driver, check) {
          check(used.len === 0, `transmit: used length ${used.len}`);
          check(sentSince(from, f), "transmit: the frame did not reach the backend");
        },
      };
    },
    expectGood(_model, used, _mem, check) {
      check(used.len === 0, `transmit buffers are read, not written: used length ${used.len}`);
    },
    hostInput(r) {
      for (let n = r.range(1, 6); n > 0; n--) {
        const len = r.weighted<number>([[6, r.range(14, 1514)], [1, r.range(0, 13)], [1, r.range(1515, 65553)], [1, 65554 + r.int(1000)]]);
        be.onFrame?.(frame(len));
      }
    },
    roundTrip(driver, check, poll) {
      const f = frame(200);
      const hdr = new Uint8Array(VIRTIO_NET_HDR_SIZE);
      const from = be.sent.length;
      driver.add(TX, [{ data: hdr }, { data: f }]);
      driver.kick(TX);
      check(sentSince(from, f), "round trip: transmit");
      const rx = driver.add(RX, [{ writeLen: 2048 }]);
      driver.kick(RX);
      const g = frame(300);
      be.onFrame?.(g);
      poll();
      const used = driver.used(RX);
      check(used.length === 1 && used[0].id === rx && used[0].len === VIRTIO_NET_HDR_SIZE + 300, `round trip: receive ${JSON.stringify(used)}`);
      const got = driver.mem.read(driver.bufferAddr(RX, rx, 0) + BigInt(VIRTIO_NET_HDR_SIZE), 300);
      check(Buffer.from(got).equals(g), "round trip: received frame differs");
    },
  };
}

function consoleTarget(r: Rand): Target {
  const out: Uint8Array[] = [];
  const con = new VirtioConsole({ name: "console0", output: (b) => out.push(Uint8Array.from(b)), size: { cols: 80, rows: 25 } });
  const RX = 0;
  const TX = 1;
  const printed = (from: number) => Buffer.concat(out.slice(from));
  return {
    label: "virtio-console",
    device: con,
    syncQueues: [TX],
    optionalFeatures: con.features,
    validRequest(q, r) {
      if (q === RX) return { buffers: [{ writeLen: r.range(1, 512) }] };
      const text = r.bytes(r.range(1, 300));
      const from = out.length;
      return {
        buffers: [{ data: text }],
        verify(used, _head, _driver, check) {
          check(used.len === 0, `console output: used length ${used.len}`);
          check(printed(from).includes(Buffer.from(text)), "console output did not arrive");
        },
      };
    },
    expectGood(_model, used, _mem, check) {
      check(used.len === 0, `output buffers are read, not written: used length ${used.len}`);
    },
    hostInput(r) {
      con.input(r.bytes(r.range(1, 3000)));
    },
    roundTrip(driver, check, poll) {
      const from = out.length;
      driver.add(TX, [{ data: new TextEncoder().encode("still here\n") }]);
      driver.kick(TX);
      check(printed(from).toString() === "still here\n", "round trip: output");
      // Drain what host input is still waiting, then a fresh line must arrive whole.
      for (let i = 0; i < 64 && con.inputBacklog > 0; i++) {
        driver.add(RX, [{ writeLen: 65536 }]);
        driver.kick(RX);
      }
      driver.used(RX);
      con.input(new TextEncoder().encode("ok\n"));
      const head = driver.add(RX, [{ writeLen: 64 }]);
      driver.kick(RX);
      poll();
      const used = driver.used(RX);
      check(used.length === 1 && used[0].id === head && used[0].len === 3, `round trip: input ${JSON.stringify(used)}`);
      check(new TextDecoder().decode(driver.mem.read(driver.bufferAddr(RX, head, 0), 3)) === "ok\n", "round trip: input bytes");
    },
  };
}

function rngTarget(): Target {
  const dev = new VirtioRng();
  return {
    label: "virtio-rng",
    device: dev,
    syncQueues: [0],
    optionalFeatures: 0n,
    validRequest(_q, r) {
      const n = r.range(1, 4096);
      const split = r.chance(0.3) ? r.range(1, n) : n;
      const buffers: DriverBuffer[] = split < n ? [{ writeLen: split }, { writeLen: n - split }] : [{ writeLen: n }];
      return {
        buffers,
        verify(used, _head, _driver, check) {
          check(used.len === n, `entropy request of ${n} bytes answered with ${used.len}`);
        },
      };
    },
    expectGood(model, used, _mem, check) {
      const want = Math.min(model.writableLength, 64 * 1024);
      check(used.len === want, `entropy: used length ${used.len}, expected ${want}`);
    },
    roundTrip(driver, check) {
      const head = driver.add(0, [{ writeLen: 64 }]);
      driver.kick(0);
      const used = driver.used(0);
      check(used.length === 1 && used[0].id === head && used[0].len === 64, `round trip: ${JSON.stringify(used)}`);
      check(driver.mem.read(driver.bufferAddr(0, head, 0), 64).some((b) => b !== 0), "round trip: no random bytes");
    },
  };
}

// --- the bystander: a second device on the same guest memory --------------------

class Bystander {
  private readonly disk = new MemoryDisk(64 * 1024);
  readonly driver: TestDriver;
  private round = 0;

  constructor(mem: GuestMemory) {
    const blk = new VirtioBlk(this.disk, { name: "blk1", serial: "bystander" });
    this.driver = new TestDriver(blk, mem, { rings: BYSTANDER, heap: BYSTANDER + 0x2_0000n, heapEnd: BYSTANDER_END });
    this.driver.start(VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_BLK_F_FLUSH, 8);
  }

  /** Write a sector and read it back through the queue. */
  works(check: Checker): void {
    const d = this.driver;
    const sector = this.round++ % 128;
    const data = new Uint8Array(512).fill(this.round & 0xff);
    const hdr = (type: number) => {
      const h = new Uint8Array(16);
      new DataView(h.buffer).setUint32(0, type, true);
      new DataView(h.buffer).setBigUint64(8, BigInt(sector), true);
      return h;
    };
    const w = d.add(0, [{ data: hdr(VIRTIO_BLK_T_OUT) }, { data }, { writeLen: 1 }]);
    const rd = d.add(0, [{ data: hdr(VIRTIO_BLK_T_IN) }, { writeLen: 512 }, { writeLen: 1 }], { indirect: true });
    d.kick(0);
    const used = d.used(0);
    check(used.length === 2 && used[0].id === w && used[1].id === rd && used[1].len === 513, `bystander: used ${JSON.stringify(used)}`);
    check(d.mem.read(d.bufferAddr(0, rd, 2), 1)[0] === VIRTIO_BLK_S_OK, "bystander: read status");
    check(Buffer.from(d.mem.read(d.bufferAddr(0, rd, 1), 512)).equals(data), "bystander: data");
    check((d.status & STATUS_DEVICE_NEEDS_RESET) === 0, "bystander needs a reset");
  }
}

// --- the hostile driver -----------------------------------------------------------

/** What the harness knows of one live queue since it set it up. */
interface QueueTrack {
  size: number;
  desc: bigint;
  avail: bigint;
  used: bigint;
  /** Entries made available and seen used since setup (unwrapped counts). */
  published: number;
  completed: number;
  usedIdx: number;
  /** Queues the device answers at once: requests made available, oldest first, not yet seen used. */
  pending: Pending[];
  /** The available index moved past the queue size: the next notify must break the queue. */
  availJumped: boolean;
  /** A broken entry (head out of range, index jump) waits in the ring: the device may find it any time. */
  poisoned: boolean;
  /** Next free byte of this queue's indirect table area. */
  tableCursor: number;
}

interface Pending {
  head: number;
  /** What the device will find there, worked out when it is notified (it parses the chain then). */
  model?: ChainModel;
  verify?: ValidRequest["verify"];
}

type StepName = "valid" | "mixed" | "mutated" | "hostile" | "ring" | "mmio" | "requeue" | "input" | "notify" | "restart" | "late-queue" | "late-driver-ok";

/** What a run reached: the test asserts it reached enough of it to mean something. */
class Coverage {
  stepsLive = 0;
  verified = 0;
  malformedFailed = 0;
  hostileServed = 0;
  needsReset = 0;
  deviceWrites = 0;
  restarts = 0;
  toString(): string {
    return `${this.stepsLive} steps with the device running, ${this.verified} well-formed requests checked, ` +
      `${this.malformedFailed} malformed chains failed alone, ${this.hostileServed} other chains served, ` +
      `${this.needsReset} times DEVICE_NEEDS_RESET, ${this.restarts} restarts, ${this.deviceWrites} device writes checked`;
  }
}

class Fuzzer {
  readonly host = new HostMemory(TEST_RAM, RAM_BYTES, NEIGHBOUR_FRAMES);
  readonly coverage = new Coverage();
  readonly driver: TestDriver;
  readonly bystander: Bystander;
  private features = 0n;
  private tracks: (QueueTrack | undefined)[] = [];
  /** The harness lost track of the device's queue state (random register writes): until the next restart only the unconditional checks apply. */
  private tainted = false;
  /** Where the device may write in this epoch: writable buffers of well-formed chains made available. */
  private allowed: Range[] = [];
  /**
   * Every device-writable buffer the driver described in this epoch, well-formed
   * chain or not. A receive queue parses its chains when host input comes, long
   * after the driver may have reused their descriptors, so for devices with one
   * the write check falls back to this.
   */
  private described: Range[] = [];
  private readonly hasReceiveQueue: boolean;
  // Per step:
  private ctx = "";
  private mayBreak = false;
  private statusWritten = false;
  private kickedLive = new Set<number>();
  private stepSectors = new Set<number>();
  private stepSlots = 0;
  /** Writable bytes of the well-formed chains notified in this step (to tell whether a status byte is still the device's). */
  private stepWritable: Range[] = [];

  constructor(readonly target: Target, readonly testName: string, readonly seed: number, private readonly r: Rand) {
    this.driver = new TestDriver(target.device, this.host.driverView, {
      deviceMem: this.host.deviceView,
      rings: RINGS,
      heap: VALID_HEAP,
      heapEnd: HOSTILE,
    });
    this.bystander = new Bystander(this.host.driverView);
    this.hasReceiveQueue = target.device.queueMaxSizes.some((_, q) => !target.syncQueues.includes(q));
  }

  private get mem(): GuestMemory {
    return this.host.driverView;
  }

  private get queueCount(): number {
    return this.target.device.queueMaxSizes.length;
  }

  private get indirect(): boolean {
    return (this.features & VIRTIO_F_INDIRECT_DESC) !== 0n;
  }

  readonly check: Checker = (ok, message) => {
    if (!ok) assert.fail(`${this.ctx}: ${message}`);
  };

  run(iterations: number): void {
    const where = `${this.target.label}, seed 0x${this.seed.toString(16)}`;
    const rerun = `(rerun: TSVISOR_FUZZ_SEED=0x${SEED.toString(16)} TSVISOR_FUZZ_ITERATIONS=${ITERATIONS} [TSVISOR_FUZZ_TRACE=1] ` +
      `node --test --test-name-pattern='${this.testName}' dist/src/devices/virtio/fuzz.test.js)`;
    this.ctx = `${where}, bring-up ${rerun}`;
    this.guard(() => this.restart());
    for (let i = 0; i < iterations; i++) {
      const step: StepName =
        (!this.live() || this.tainted) && this.r.chance(0.4) ? "restart" :
        this.r.weighted<StepName>([
          [14, "valid"], [8, "mixed"], [18, "mutated"], [16, "hostile"], [6, "ring"], [7, "mmio"], [3, "requeue"],
          [this.target.hostInput ? 8 : 0, "input"], [4, "notify"], [3, "restart"], [2, "late-queue"], [2, "late-driver-ok"],
        ]);
      this.ctx = `${where}, iteration ${i}, step ${step} ${rerun}`;
      this.trace(`--- ${i} ${step}`);
      this.guard(() => this.step(step, i));
    }
    this.ctx = `${where}, after ${iterations} steps ${rerun}`;
    this.guard(() => {
      // A reset, a standard bring-up, and every queue works again.
      this.driver.setReg(REG_STATUS, 0);
      this.check(this.driver.status === 0, "status after a reset");
      this.driver.start(VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | this.target.optionalFeatures, 16);
      const s = this.driver.status;
      this.check((s & STATUS_DEVICE_NEEDS_RESET) === 0 && (s & STATUS_DRIVER_OK) !== 0, `the device does not come up again (status 0x${s.toString(16)})`);
      this.target.roundTrip(this.driver, this.check, () => this.driver.transport.poll());
      this.bystander.works(this.check);
      this.check(this.host.neighbourIntact(), "another VM's frames changed");
      const why = this.host.foreignIntact();
      this.check(why === undefined, `host memory outside guest RAM changed: ${why}`);
      this.check(this.host.deviceView.outside.length === 0, `accesses outside guest RAM: ${this.host.deviceView.outside.slice(0, 5).join("; ")}`);
      this.target.finish?.(this.check);
    });
  }

  /** Run harness code; an exception from the device (through the transport) is a failure with the context. */
  private guard(work: () => void): void {
    try {
      work();
    } catch (e) {
      if (e instanceof assert.AssertionError) throw e;
      assert.fail(`${this.ctx}: an exception escaped the transport: ${e instanceof Error ? e.stack : String(e)}`);
    }
  }

  private trace(message: string): void {
    if (TRACE) process.stderr.write(`${message}\n`);
  }

  private live(): boolean {
    const s = this.driver.status;
    return (s & STATUS_DRIVER_OK) !== 0 && (s & STATUS_DEVICE_NEEDS_RESET) === 0;
  }

  private isSync(q: number): boolean {
    return this.target.syncQueues.includes(q);
  }

  // --- one step and the checks after it ---

  private step(name: StepName, iteration: number): void {
    const statusBefore = this.driver.status;
    const wasLive = this.live();
    if (wasLive) this.coverage.stepsLive++;
    if (name === "restart") this.coverage.restarts++;
    const taintedBefore = this.tainted;
    const dv = this.host.deviceView;
    dv.writes = [];
    this.mayBreak = false;
    this.statusWritten = false;
    this.kickedLive.clear();
    this.stepSectors = new Set();
    this.stepSlots = 0;
    this.stepWritable = [];

    switch (name) {
      case "valid": this.stepValid(); break;
      case "mixed": this.stepMixed(); break;
      case "mutated": this.stepMutated(); break;
      case "hostile": this.stepHostile(); break;
      case "ring": this.stepRing(); break;
      case "mmio": this.stepMmio(); break;
      case "requeue": this.stepRequeue(); break;
      case "input": this.stepInput(); break;
      case "notify": this.stepNotify(); break;
      case "restart": this.restart(); break;
      case "late-queue": this.stepLateQueue(); break;
      case "late-driver-ok": this.stepLateDriverOk(); break;
    }

    const status = this.driver.status;
    this.check(Number(this.driver.transport.read(0, 4)) === MMIO_MAGIC, "the transport stopped answering");
    // Memory: only guest RAM, never the bystander's part, only where the driver allowed.
    this.check(dv.outside.length === 0, `the device tried to access memory outside guest RAM: ${dv.outside.slice(0, 5).join("; ")}`);
    this.coverage.deviceWrites += dv.writes.length;
    for (const w of dv.writes) {
      this.check(!overlaps(w, { start: BYSTANDER, end: BYSTANDER_END }), `the device wrote into the bystander's memory at 0x${w.start.toString(16)}`);
    }
    if ((!wasLive && !this.statusWritten) || name === "restart") this.check(dv.writes.length === 0, "a device that is not running wrote guest memory");
    if (!taintedBefore && !this.tainted) {
      const used = this.usedAreas();
      const inside = (w: Range, set: Range[]) => set.some((a) => w.start >= a.start && w.end <= a.end);
      for (const w of dv.writes) {
        const ok = inside(w, used) || inside(w, this.allowed) || (this.hasReceiveQueue && inside(w, this.described));
        this.check(ok, `the device wrote [0x${w.start.toString(16)}, 0x${w.end.toString(16)}), which is neither a device-writable buffer of a well-formed chain nor a used ring (2.7.5.1)`);
      }
    }
    this.check(this.host.neighbourIntact(), "another VM's frames next to guest RAM changed");
    if (iteration % 32 === 0) {
      const why = this.host.foreignIntact();
      this.check(why === undefined, `host memory outside guest RAM changed: ${why}`);
    }
    // DEVICE_NEEDS_RESET: only for a broken ring, and announced (2.1.2, 4.2.2: configuration change interrupt).
    if (status & STATUS_DEVICE_NEEDS_RESET && !(statusBefore & STATUS_DEVICE_NEEDS_RESET)) {
      this.coverage.needsReset++;
      const poisoned = this.tracks.some((t) => t?.poisoned);
      this.check(this.mayBreak || poisoned || this.tainted, `DEVICE_NEEDS_RESET though the rings were sound (a malformed chain fails alone): ${this.driver.warnings.at(-1)}`);
      if (status & STATUS_DRIVER_OK && name !== "mmio") {
        this.check((this.driver.reg(REG_INTERRUPT_STATUS) & 2) !== 0, "DEVICE_NEEDS_RESET without a configuration change interrupt");
      }
    }
    if (!this.tainted) this.checkQueues(status);
    this.target.invariants?.(this.check);
    if (iteration % 50 === 49) this.bystander.works(this.check);
  }

  /** The used rings the device may write (at their largest, avail_event included). */
  private usedAreas(): Range[] {
    return this.target.device.queueMaxSizes.map((max, q) => {
      const start = RINGS + BigInt(q) * QUEUE_STRIDE + 0x8000n;
      return { start, end: start + BigInt(ringAreaSizes(max).used + 2) };
    });
  }

  private checkQueues(status: number): void {
    const broken = (status & STATUS_DEVICE_NEEDS_RESET) !== 0;
    this.tracks.forEach((t, q) => {
      if (!t) return;
      const idx = this.mem.readU16(t.used + 2n);
      const n = (idx - t.usedIdx) & 0xffff;
      this.check(t.completed + n <= t.published, `queue ${q}: used idx moved by ${n} with ${t.published - t.completed} requests available (2.7.8)`);
      const entries: { id: number; len: number }[] = [];
      for (let k = 0; k < n; k++) {
        const slot = t.used + 4n + 8n * BigInt((t.usedIdx + k) % t.size);
        entries.push({ id: this.mem.readU32(slot), len: this.mem.readU32(slot + 4n) });
      }
      t.usedIdx = idx;
      t.completed += n;
      for (const e of entries) {
        this.check(e.id < t.size, `queue ${q}: used id ${e.id} is no head of a queue of ${t.size}`);
        if (!this.isSync(q)) continue;
        const p = t.pending.shift();
        this.check(p !== undefined, `queue ${q}: a used entry for a request never made available`);
        this.check(p!.head < t.size, `queue ${q}: head ${p!.head}, out of range, was completed`);
        this.check(e.id === p!.head, `queue ${q}: used id ${e.id}, expected ${p!.head} (this device completes in order)`);
        const model = p!.model ?? this.model(q, p!.head);
        if (!model.ok) {
          this.check(e.len === 0, `queue ${q}: a malformed chain (${model.why}) completed with length ${e.len}`);
          this.coverage.malformedFailed++;
          continue;
        }
        this.check(e.len <= model.writableLength, `queue ${q}: used length ${e.len} beyond the ${model.writableLength} writable bytes`);
        const onlyThis = (addr: bigint) => this.stepWritable.filter((w) => addr >= w.start && addr < w.end).length === 1;
        this.target.expectGood?.(model, e, this.mem, this.check, onlyThis);
        if (p!.verify) {
          p!.verify(e, p!.head, this.driver, this.check);
          this.coverage.verified++;
        } else {
          this.coverage.hostileServed++;
        }
      }
      if (this.isSync(q) && this.kickedLive.has(q) && !broken) {
        // Every available request is done, or the device says it needs a reset (2.1.2).
        this.check(!t.availJumped, `queue ${q}: the available index jumped past the queue size and the device went on`);
        this.check(t.pending.length === 0, `queue ${q}: ${t.pending.length} requests neither completed nor DEVICE_NEEDS_RESET set`);
      }
    });
  }

  private model(q: number, head: number): ChainModel {
    const t = this.tracks[q]!;
    return modelChain(this.mem, RAM, t.desc, t.size, head, this.indirect);
  }

  // --- bring-up ---

  /** A reset and a fresh bring-up: sometimes refused features first, sometimes a queue left out, sometimes no DRIVER_OK. */
  private restart(): void {
    const d = this.driver;
    this.mmioWrite(REG_STATUS, 4, 0);
    // 4.2.2.1: a reset clears QueueReady of every queue.
    for (let q = 0; q < this.queueCount; q++) {
      d.setReg(REG_QUEUE_SEL, q);
      this.check(d.reg(REG_QUEUE_READY) === 0, `queue ${q} still ready after a reset`);
    }
    this.check(d.status === 0, "status after a reset");
    this.tracks = [];
    this.allowed = [];
    this.described = [];
    this.tainted = false;
    // A new driver starts from fresh memory for its rings and tables: nothing
    // the last one described is left for a descriptor to reach.
    this.mem.zero(RINGS, Number(BYSTANDER - RINGS));
    const offered = d.deviceFeatures();
    if (this.r.chance(0.2)) {
      // Bits never offered, or no VERSION_1: FEATURES_OK must not stick (2.2.1, 4.2.2.2).
      const unoffered = [...Array(64).keys()].map((b) => 1n << BigInt(b)).filter((b) => !(offered & b));
      const bad = this.r.chance(0.5) ? VIRTIO_F_VERSION_1 | this.r.pick(unoffered) : offered & ~VIRTIO_F_VERSION_1;
      this.check(!d.negotiate(bad), `features 0x${bad.toString(16)} accepted, not offered or without VERSION_1`);
      this.mmioWrite(REG_STATUS, 4, 0);
    }
    let features = VIRTIO_F_VERSION_1;
    for (const bit of [VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX]) if (this.r.chance(0.6)) features |= bit;
    for (let b = 0n; b < 64n; b++) if (this.target.optionalFeatures & (1n << b) && this.r.chance(0.7)) features |= 1n << b;
    this.check(d.negotiate(features), `features 0x${features.toString(16)} refused`);
    this.features = features;
    for (let q = 0; q < this.queueCount; q++) {
      if (this.r.chance(0.08)) continue; // left out: notifications on it must do nothing
      this.setupQueue(q);
    }
    if (this.r.chance(0.95)) this.mmioWrite(REG_STATUS, 4, d.status | STATUS_DRIVER_OK);
  }

  private setupQueue(q: number): void {
    const max = this.target.device.queueMaxSizes[q];
    const size = Math.min(max, this.r.weighted<number>([[2, 1], [3, 2], [4, 4], [6, 8], [6, 16], [2, 2 ** this.r.int(9)]]));
    this.driver.setupQueue(q, size);
    const l = this.driver.queueLayout(q);
    this.tracks[q] = { size, desc: l.desc, avail: l.avail, used: l.used, published: 0, completed: 0, usedIdx: 0, pending: [], availJumped: false, poisoned: false, tableCursor: 0 };
  }

  // --- register access, recorded ---

  private mmioWrite(offset: number, size: number, value: number | bigint): void {
    const v = BigInt(value) & (size === 8 ? 0xffff_ffff_ffff_ffffn : 0xffff_ffffn);
    this.trace(`  write 0x${offset.toString(16)}/${size} = 0x${v.toString(16)}`);
    if (offset === REG_STATUS) this.statusWritten = true;
    if (offset === REG_NOTIFY && size === 4) {
      const q = Number(v & 0xffffn);
      const t = this.tracks[q];
      if (t && this.isSync(q)) {
        // The device parses the chains now: so does the harness.
        for (const p of t.pending) {
          if (p.head >= t.size) continue;
          p.model = this.model(q, p.head);
          if (p.model.ok) for (const s of p.model.writable) this.allow(s, true);
          if (TRACE) this.trace(`  head ${p.head}: ${p.model.ok ? `R ${formatSegments(p.model.readable)} W ${formatSegments(p.model.writable)}` : p.model.why}`);
          if (TRACE && !p.model.ok) describeDescriptors(this.mem, t.desc, t.size).forEach((line) => this.trace(`    ${line}`));
        }
      }
      if (t && this.live()) this.kickedLive.add(q);
    }
    this.driver.transport.write(offset, size, v);
  }

  private kick(q: number): void {
    this.mmioWrite(REG_NOTIFY, 4, q);
  }

  private allow(s: Segment, stepChain: boolean): void {
    const range = { start: s.addr, end: s.addr + BigInt(s.len) };
    this.allowed.push(range);
    this.described.push(range);
    if (stepChain) this.stepWritable.push(range);
  }

  // --- requests ---

  private syncQueue(): number | undefined {
    const qs = this.target.syncQueues.filter((q) => this.tracks[q]);
    return qs.length ? this.r.pick(qs) : undefined;
  }

  private anyQueue(): number | undefined {
    const qs = this.tracks.map((t, q) => (t ? q : -1)).filter((q) => q >= 0);
    return qs.length ? this.r.pick(qs) : undefined;
  }

  /** Ring entries and descriptor slots left for this step: outstanding requests keep theirs. */
  private room(q: number): number {
    const t = this.tracks[q]!;
    return t.size - (t.published - t.completed) - this.stepSlots;
  }

  /** Add a well-formed request (descriptors and avail entry); `mutate` then changes it. */
  private addValid(q: number, mutate = false): boolean {
    const t = this.tracks[q]!;
    const req = this.target.validRequest(q, this.r, this.features, { sectors: this.stepSectors });
    if (!req) return false;
    const indirect = this.indirect && (req.buffers.length > t.size || this.r.chance(0.3));
    const slots = indirect ? 1 : req.buffers.length;
    if (slots > this.room(q) || this.room(q) < 1) return false;
    this.stepSlots += slots;
    const head = this.driver.add(q, req.buffers, { indirect });
    const model = this.model(q, head);
    if (model.ok) for (const s of model.writable) (this.isSync(q) ? this.described.push({ start: s.addr, end: s.addr + BigInt(s.len) }) : this.allow(s, false));
    if (mutate) this.mutate(q, head, req);
    this.record(q, head, mutate ? undefined : req.verify);
    return true;
  }

  /** The driver made `head` available (already in the ring). */
  private record(q: number, head: number, verify?: ValidRequest["verify"]): void {
    const t = this.tracks[q]!;
    this.trace(`  queue ${q} (size ${t.size}): head ${head} available${verify ? " (checked)" : ""}`);
    t.published++;
    if (head >= t.size) t.poisoned = true; // 2.7.6: a ring entry names a head of the descriptor table
    if (this.isSync(q)) t.pending.push({ head, verify });
  }

  private stepValid(): void {
    const q = this.r.chance(0.75) ? this.syncQueue() ?? this.anyQueue() : this.anyQueue();
    if (q === undefined) return;
    for (let n = this.r.range(1, 4); n > 0; n--) this.addValid(q);
    this.kick(q);
  }

  /** A well-formed request, a malformed chain, a well-formed request: the outer two must complete as if alone. */
  private stepMixed(): void {
    const q = this.syncQueue();
    if (q === undefined || !this.addValid(q)) return;
    if (this.room(q) >= 1) this.addHostile(q, true);
    this.addValid(q);
    this.kick(q);
  }

  private stepMutated(): void {
    const q = this.r.chance(0.8) ? this.syncQueue() ?? this.anyQueue() : this.anyQueue();
    if (q === undefined) return;
    for (let n = this.r.range(1, 3); n > 0; n--) this.addValid(q, true);
    this.kick(q);
  }

  private stepHostile(): void {
    const q = this.anyQueue();
    if (q === undefined) return;
    for (let n = this.r.range(1, 3); n > 0 && this.room(q) >= 1; n--) this.addHostile(q, false);
    this.kick(q);
    if (this.r.chance(0.3)) this.driver.transport.poll();
  }

  /** Change a well-formed request: its header, or one of its descriptors. */
  private mutate(q: number, head: number, req: ValidRequest): void {
    const t = this.tracks[q]!;
    const first = req.buffers[0];
    if (this.target.mutateHeader && first.data && this.r.chance(0.5)) {
      this.target.mutateHeader(this.driver.bufferAddr(q, head, 0), first.data.length, this.r, this.mem);
      if (this.r.chance(0.6)) return;
    }
    let table = t.desc;
    let index = head;
    if (this.mem.readU16(t.desc + BigInt(head * DESC_SIZE) + 12n) & VIRTQ_DESC_F_INDIRECT) {
      if (this.r.chance(0.3)) return this.mutateDescriptor(q, t.desc, head, true);
      table = this.mem.readU64(t.desc + BigInt(head * DESC_SIZE));
      index = 0;
    }
    for (let k = this.r.int(req.buffers.length); k > 0; k--) index = this.mem.readU16(table + BigInt(index * DESC_SIZE) + 14n);
    this.mutateDescriptor(q, table, index, false);
  }

  private mutateDescriptor(q: number, table: bigint, i: number, isTableRef: boolean): void {
    const at = table + BigInt(i * DESC_SIZE);
    let addr = this.mem.readU64(at);
    let len = this.mem.readU32(at + 8n);
    let flags = this.mem.readU16(at + 12n);
    let next = this.mem.readU16(at + 14n);
    switch (this.r.int(6)) {
      case 0: len = this.hostileLen(); break;
      case 1: addr = this.hostileAddr(len); break;
      case 2: flags ^= this.r.pick([VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT, 1 << this.r.int(16)]); break;
      case 3: next = this.r.pick([i, 0, this.r.int(this.tracks[q]!.size + 2), this.r.u32() & 0xffff]); flags |= VIRTQ_DESC_F_NEXT; break;
      case 4: len = this.r.pick([len - 1, len + 1, len - 512, len + 512, isTableRef ? len + 8 : 0]) >>> 0; break;
      default: addr += BigInt(this.r.range(-64, 64)); break;
    }
    this.putDesc(table, i, addr, len, flags, next);
  }

  /**
   * Write a descriptor. Hostile buffers stay out of the rings, the tables, the
   * bystander's memory and the well-formed requests' buffers (so their results
   * can be checked); indirect tables stay in the rings' and tables' memory,
   * where the device never writes (so what it parses is what the harness
   * parsed), out of the used rings and out of the bystander's memory.
   */
  private putDesc(table: bigint, i: number, addr: bigint, len: number, flags: number, next: number): void {
    len >>>= 0;
    if (flags & VIRTQ_DESC_F_INDIRECT) {
      const r = { start: addr, end: addr + BigInt(len) };
      const safe = r.start >= TEST_RAM && r.end <= BYSTANDER && !this.usedAreas().some((u) => overlaps(u, r));
      if (inRam(addr, len) && !safe) addr = TABLES + BigInt(len) <= BYSTANDER ? TABLES : RAM_END - 8n;
    } else if (inRam(addr, len) && addr < HOSTILE) {
      addr = HOSTILE + (addr % 0x1000n);
    }
    if (flags & VIRTQ_DESC_F_WRITE && !(flags & VIRTQ_DESC_F_INDIRECT) && inRam(addr, len) && len > 0) {
      this.described.push({ start: addr, end: addr + BigInt(len) });
    }
    this.driver.writeDesc(table, i, addr, len, flags, next);
  }

  /** A hostile buffer address for `len` bytes: mostly in RAM, often not. */
  private hostileAddr(len: number): bigint {
    const room = Number(RAM_END - HOSTILE);
    return this.r.weighted<() => bigint>([
      [10, () => HOSTILE + BigInt(this.r.int(Math.max(1, room - Math.min(len, room))))],
      [1, () => 0n],
      [1, () => 0x1000_0000n], // the UART: MMIO space
      [1, () => 0x0c00_0000n], // the PLIC
      [1, () => TEST_RAM - 8n], // straddles the start of RAM
      [2, () => RAM_END - BigInt(len) + BigInt(this.r.range(1, 16))], // straddles the end of RAM
      [1, () => RAM_END - BigInt(len)], // ends exactly at the end of RAM
      [1, () => RAM_END],
      [2, () => 2n ** 64n - BigInt(this.r.range(1, Math.max(1, len)))], // wraps past 2^64
      [1, () => this.r.u64()],
    ])();
  }

  private hostileLen(): number {
    return this.r.weighted<() => number>([
      [3, () => 0],
      [3, () => this.r.range(1, 64)],
      [4, () => this.r.range(16, 4096)],
      [2, () => 512 * this.r.range(1, 16) + this.r.pick([0, 0, 1, -1])],
      [1, () => this.r.range(4096, 1 << 20)],
      [1, () => Number(RAM_END - HOSTILE)], // all of the hostile buffer area
      [1, () => 0x7fff_ffff],
      [1, () => 0x8000_0000],
      [1, () => 0xffff_fff0],
      [1, () => 0xffff_ffff],
      [1, () => this.r.u32()],
    ])();
  }

  /** Room for an indirect table in this queue's table area. */
  private tableArea(q: number, bytes: number): bigint {
    const t = this.tracks[q]!;
    if (t.tableCursor + bytes > TABLE_BYTES) t.tableCursor = 0;
    const at = TABLES + BigInt(q) * BigInt(TABLE_BYTES) + BigInt(t.tableCursor);
    t.tableCursor += (bytes + 15) & ~15;
    return at;
  }

  /** `n` descriptor slots of the queue's table, rotating as the driver's own allocation does. */
  private slots(q: number, n: number): number[] {
    const l = this.driver.queueLayout(q);
    const out: number[] = [];
    for (let k = 0; k < n; k++) {
      out.push(l.nextDesc);
      l.nextDesc = (l.nextDesc + 1) % l.size;
    }
    this.stepSlots += n;
    return out;
  }

  /** Write one hostile chain and make it available. `malformedOnly`: only kinds the spec calls malformed. */
  private addHostile(q: number, malformedOnly: boolean): void {
    const t = this.tracks[q]!;
    const kind = this.r.pick(malformedOnly
      ? ["loop", "outside", "order", "nested-indirect", "bad-table", "next-out-of-range"]
      : ["loop", "whole-table", "outside", "order", "zero-length", "nested-indirect", "bad-table", "indirect", "long-indirect", "direct-then-indirect", "next-out-of-range", "random", "random"]);
    const room = Math.max(1, this.room(q));
    type D = { addr: bigint; len: number; flags: number; next?: number };
    const buf = (write: boolean): D => {
      const len = this.r.chance(0.7) ? this.r.range(1, 2048) : this.hostileLen();
      const addr = this.r.chance(0.8) ? HOSTILE + BigInt(this.r.int(Number(RAM_END - HOSTILE) - 4096)) : this.hostileAddr(len);
      return { addr, len, flags: write ? VIRTQ_DESC_F_WRITE : 0 };
    };
    /** Readable buffers, then writable ones. */
    const plain = (n: number) => {
      const k = this.r.int(n + 1);
      return Array.from({ length: n }, (_, i) => buf(i >= k));
    };
    /** Lay `descs` out as a chain in the queue's table (new slots) or in an indirect table; returns the head. */
    const chain = (descs: D[], inTable?: bigint): number => {
      const ids = inTable !== undefined ? descs.map((_, i) => i) : this.slots(q, descs.length);
      descs.forEach((d, i) => {
        const last = i === descs.length - 1;
        const hasNext = d.next !== undefined || !last;
        const next = d.next !== undefined ? ids[d.next] ?? d.next : last ? 0 : ids[i + 1];
        this.putDesc(inTable ?? t.desc, ids[i], d.addr, d.len, hasNext ? d.flags | VIRTQ_DESC_F_NEXT : d.flags & ~VIRTQ_DESC_F_NEXT, next);
      });
      return ids[0];
    };
    this.trace(`  hostile chain: ${kind}`);
    let head: number;
    switch (kind) {
      case "loop": {
        const descs = plain(Math.min(room, this.r.range(1, 6)));
        descs[descs.length - 1].next = this.r.int(descs.length); // back into the chain
        head = chain(descs);
        break;
      }
      case "whole-table": {
        // Every descriptor of the table chained: the queue size exactly (legal, 2.7.5), or round and on (a loop).
        for (let i = 0; i < t.size; i++) {
          this.putDesc(t.desc, i, HOSTILE + BigInt(i * 64), this.r.range(0, 64), VIRTQ_DESC_F_NEXT | (i > t.size / 2 ? VIRTQ_DESC_F_WRITE : 0), (i + 1) % t.size);
        }
        if (this.r.chance(0.5)) this.putDesc(t.desc, t.size - 1, HOSTILE, 8, VIRTQ_DESC_F_WRITE, 0);
        this.stepSlots = t.size;
        head = 0;
        break;
      }
      case "outside": {
        const descs = plain(Math.min(room, this.r.range(1, 4)));
        const victim = descs[this.r.int(descs.length)];
        victim.len = this.r.chance(0.5) ? this.r.range(1, 4096) : this.hostileLen() || 1;
        victim.addr = this.r.weighted<bigint>([
          [1, 0x1000_0000n], [1, TEST_RAM - 16n], [2, RAM_END - BigInt(this.r.range(0, victim.len - 1))],
          [2, 2n ** 64n - BigInt(this.r.range(1, victim.len))], [1, RAM_END + this.r.u64() % (1n << 40n)],
        ]);
        head = chain(descs);
        break;
      }
      case "order": {
        // A readable buffer after a writable one (2.7.4.2), the writable one perhaps empty.
        const n = Math.min(room, this.r.range(2, 5));
        const descs = Array.from({ length: Math.max(n, 1) }, () => buf(true));
        if (n >= 2) descs[this.r.range(1, n - 1)].flags = 0;
        if (this.r.chance(0.5)) descs[0].len = 0;
        head = chain(descs);
        break;
      }
      case "zero-length": {
        const descs = plain(Math.min(room, this.r.range(1, 4))).map((d) => (this.r.chance(0.6) ? { ...d, len: 0, addr: this.r.chance(0.5) ? d.addr : this.r.u64() } : d));
        head = chain(descs);
        break;
      }
      case "bad-table": {
        // 2.7.5.3: a table of whole descriptors, in RAM, not chained on.
        const len = this.r.pick([0, 8, 17, 24, DESC_SIZE * 3 + 1, 0xffff_fff0, 0x1_0000 * DESC_SIZE]);
        const addr = this.r.pick([this.tableArea(q, 64), RAM_END - 8n, 0x1000_0000n, 2n ** 64n - 16n]);
        head = chain([{ addr, len, flags: VIRTQ_DESC_F_INDIRECT | (this.r.chance(0.3) ? VIRTQ_DESC_F_NEXT : 0), next: this.r.chance(0.3) ? 0 : undefined }]);
        break;
      }
      case "next-out-of-range": {
        const descs = plain(Math.min(room, this.r.range(1, 3)));
        descs[descs.length - 1].next = t.size + this.r.int(0x1_0000 - t.size);
        head = chain(descs);
        break;
      }
      case "indirect":
      case "long-indirect":
      case "nested-indirect":
      case "direct-then-indirect": {
        // Longer than the queue is what Linux does for large requests; nested tables are forbidden (2.7.5.3.1).
        const n = kind === "long-indirect" ? this.r.range(t.size + 1, Math.min(2048, t.size * 4 + 8)) : this.r.range(1, 8);
        const table = this.tableArea(q, n * DESC_SIZE);
        const inner: D[] = kind === "long-indirect"
          ? Array.from({ length: n }, (_, i) => ({ addr: HOSTILE + BigInt(this.r.int(0x1000)), len: this.r.range(0, 16), flags: i >= n - 2 ? VIRTQ_DESC_F_WRITE : 0 }))
          : plain(n);
        if (kind === "nested-indirect") inner[this.r.int(n)] = { addr: this.tableArea(q, 32), len: 32, flags: VIRTQ_DESC_F_INDIRECT };
        if (kind === "long-indirect" && this.r.chance(0.3)) inner[n - 1].next = this.r.int(n); // a loop inside the table
        chain(inner, table);
        const ref: D = { addr: table, len: n * DESC_SIZE, flags: VIRTQ_DESC_F_INDIRECT | (this.r.chance(0.2) ? VIRTQ_DESC_F_WRITE : 0) };
        head = kind === "direct-then-indirect" && room >= 2 ? chain([buf(false), ref]) : chain([ref]);
        break;
      }
      default: {
        // Anything at all in every field.
        const ids = this.slots(q, Math.min(room, this.r.range(1, 4)));
        for (const i of ids) {
          const len = this.hostileLen();
          const addr = this.r.chance(0.5) ? this.hostileAddr(len) : HOSTILE + BigInt(this.r.int(0x10000));
          this.putDesc(t.desc, i, addr, len, this.r.u32() & (this.r.chance(0.7) ? 7 : 0xffff), this.r.chance(0.7) ? this.r.pick(ids) : this.r.u32() & 0xffff);
        }
        head = ids[0];
      }
    }
    this.driver.publish(q, head);
    this.record(q, head);
  }

  // --- ring abuse ---

  private stepRing(): void {
    const q = this.anyQueue();
    if (q === undefined) return;
    const t = this.tracks[q]!;
    const l = this.driver.queueLayout(q);
    switch (this.r.int(4)) {
      case 0: {
        // A head index out of range.
        if (this.room(q) < 1) return;
        const head = this.r.pick([t.size, t.size + 1, 0xffff, this.r.range(t.size, 0xffff)]);
        this.stepSlots++;
        this.driver.publish(q, head);
        this.record(q, head);
        break;
      }
      case 1: {
        // The available index jumps by more than the queue size: nothing it says can be trusted.
        const jump = this.r.range(t.size + 1, 0xffff);
        l.availIdx = (l.availIdx + jump) & 0xffff;
        this.mem.writeU16(t.avail + 2n, l.availIdx);
        t.poisoned = true;
        t.published += jump;
        t.pending = [];
        // A receive queue reads its ring only when it has something to deliver: it may find out later.
        t.availJumped = this.isSync(q);
        break;
      }
      case 2: {
        // The index moves over ring slots not filled in this round: whatever heads they hold.
        for (let n = Math.min(this.room(q), this.r.range(1, t.size)); n > 0; n--) {
          const head = this.mem.readU16(t.avail + 4n + 2n * BigInt(l.availIdx % t.size));
          this.stepSlots++;
          l.availIdx = (l.availIdx + 1) & 0xffff;
          this.mem.writeU16(t.avail + 2n, l.availIdx);
          this.record(q, head);
        }
        break;
      }
      default: {
        // Garbage in the flags and used_event, which only steer interrupts (2.7.7, 2.7.10).
        this.mem.writeU16(t.avail, this.r.u32() & 0xffff);
        this.mem.writeU16(t.avail + 4n + 2n * BigInt(t.size), this.r.u32() & 0xffff);
        this.addValid(q);
      }
    }
    this.kick(q);
  }

  // --- registers ---

  private stepMmio(): void {
    const regs = [0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050, 0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0ac, 0x0b0, 0x0fc, 0x100, 0x104, 0x108];
    const addressRegs = new Set([0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4]);
    const structural = new Set([0x020, 0x024, 0x038, 0x044, 0x070, ...addressRegs]);
    for (let n = this.r.range(1, 8); n > 0; n--) {
      const offset = this.r.chance(0.85) ? this.r.pick(regs) : this.r.int(0x200);
      const size = this.r.chance(0.85) ? 4 : this.r.pick([1, 2, 8]);
      if (this.r.chance(0.3)) {
        this.driver.transport.read(offset, size);
        continue;
      }
      let value: bigint;
      if (addressRegs.has(offset)) {
        // Ring addresses: in RAM (anywhere but the bystander's part), outside it, misaligned.
        const addr = this.r.pick([RINGS, TABLES, HOSTILE + BigInt(this.r.int(0x1000)), RAM_END - 8n, 0x1000_0000n, 2n ** 64n - 0x1000n, VALID_HEAP + 2n]);
        value = offset & 4 ? addr >> 32n : addr & 0xffff_ffffn;
      } else if (offset === REG_STATUS) {
        value = BigInt(this.r.pick([0, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FEATURES_OK, STATUS_DRIVER_OK, STATUS_DEVICE_NEEDS_RESET, 0x80, 0xff, this.r.int(256)]));
      } else {
        value = BigInt(this.r.pick([0, 1, 2, 3, 7, 8, 16, 0x100, 0xffff, 0xffff_ffff, this.r.u32()]));
      }
      if (structural.has(offset) && size === 4) this.tainted = true;
      this.mayBreak = true;
      this.mmioWrite(offset, size, value);
    }
    if (this.r.chance(0.5)) this.driver.transport.poll();
  }

  // --- a queue stopped, and perhaps started again, without a reset ---

  private stepRequeue(): void {
    const q = this.anyQueue();
    if (q === undefined || this.tainted) return;
    const t = this.tracks[q]!;
    // 4.2.2.2: the driver stops using a queue with QueueReady = 0; the device must leave it alone from then on.
    this.driver.setReg(REG_QUEUE_SEL, q);
    this.mmioWrite(REG_QUEUE_READY, 4, 0);
    this.check(this.driver.reg(REG_QUEUE_READY) === 0, `queue ${q} reads ready after QueueReady = 0`);
    const usedBefore = this.mem.read(t.used, ringAreaSizes(t.size).used);
    this.addValid(q);
    this.kick(q);
    this.target.hostInput?.(this.r);
    this.driver.transport.poll();
    this.check(Buffer.from(this.mem.read(t.used, ringAreaSizes(t.size).used)).equals(usedBefore), `the device wrote the used ring of queue ${q} after QueueReady = 0`);
    this.kickedLive.delete(q);
    this.tracks[q] = undefined;
    if (this.r.chance(0.8)) {
      // Ready again: a new queue, its indexes from 0.
      this.setupQueue(q);
      if (this.live()) {
        this.addValid(q);
        this.kick(q);
      }
    }
  }

  private stepInput(): void {
    this.target.hostInput!(this.r);
    const q = this.anyQueue();
    if (q !== undefined && !this.isSync(q) && this.r.chance(0.5)) {
      for (let n = this.r.range(1, 4); n > 0; n--) this.addValid(q);
      this.kick(q);
    }
    this.driver.transport.poll();
  }

  private stepNotify(): void {
    for (let n = this.r.range(1, 4); n > 0; n--) this.kick(this.r.pick([0, 1, 2, this.queueCount, 0xffff, this.r.int(0x10000)]));
    this.driver.transport.poll();
  }

  /** A queue left out of the bring-up, set up after DRIVER_OK (not what 3.1.1 prescribes, but it must not stall). */
  private stepLateQueue(): void {
    if (this.tainted) return;
    const q = [...Array(this.queueCount).keys()].find((i) => !this.tracks[i]);
    if (q === undefined) return;
    this.setupQueue(q);
    if (this.live()) {
      this.addValid(q);
      this.kick(q);
    }
  }

  private stepLateDriverOk(): void {
    const s = this.driver.status;
    if (this.tainted || s & STATUS_DRIVER_OK || s & STATUS_DEVICE_NEEDS_RESET || !(s & STATUS_FEATURES_OK)) return;
    this.mmioWrite(REG_STATUS, 4, s | STATUS_DRIVER_OK);
    // Requests made available before are done on the next notify; their buffers may have been reused since.
    for (const q of this.target.syncQueues) {
      const t = this.tracks[q];
      if (!t) continue;
      for (const p of t.pending) p.verify = undefined;
      this.kick(q);
    }
  }
}

// --- the tests -----------------------------------------------------------------------

const targets: [string, (r: Rand) => Target][] = [
  ["virtio-blk", (r) => blkTarget(false, r)],
  ["virtio-blk read-only", (r) => blkTarget(true, r)],
  ["virtio-net", (r) => netTarget(r)],
  ["virtio-console", (r) => consoleTarget(r)],
  ["virtio-rng", () => rngTarget()],
];

targets.forEach(([name, make], i) => {
  const testName = `fuzz: ${name} survives hostile rings and registers`;
  test(`${testName} (seeded, ${ITERATIONS} steps)`, (t) => {
    const seed = (SEED + i * 0x9e37_79b9) >>> 0;
    const r = new Rand(seed);
    const fuzzer = new Fuzzer(make(r), testName, seed, r);
    fuzzer.run(ITERATIONS);
    const c = fuzzer.coverage;
    t.diagnostic(`${name}: ${c}`);
    // A run where the device was broken most of the time, or where nothing
    // reached its request paths, would pass without having tested anything.
    const enough = Math.floor(ITERATIONS / 20);
    for (const [what, n] of [["steps with the device running", c.stepsLive / 4], ["well-formed requests checked", c.verified], ["malformed chains", c.malformedFailed], ["other hostile chains served", c.hostileServed], ["resets asked for", c.needsReset * 4]] as const) {
      assert.ok(n >= enough, `${name}, seed 0x${seed.toString(16)}: too few ${what} (${c})`);
    }
  });
});
