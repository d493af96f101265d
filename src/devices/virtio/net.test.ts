import { test } from "node:test";
import assert from "node:assert/strict";
import { TestDriver } from "./test-driver.js";
import { formatBytes } from "./format-bytes.js";
import {
  VirtioNet, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_SIZE,
  RX_BACKLOG_FRAMES, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
} from "./net.js";
import { VIRTIO_NET_HDR_F_DATA_VALID } from "./net-offload.js";
import { VIRTIO_F_VERSION_1, VIRTIO_F_INDIRECT_DESC } from "./virtio.js";
import type { FrameMeta, GuestOffloads, NetBackend, NetStats } from "../../backends/net/net-backend.js";
import { tcpFrame, payload, transportChecksumOk, ipv4HeaderOk, refSum, TCP } from "./net-test-frames.js";

class FakeBackend implements NetBackend {
  readonly description = "fake:test";
  sent: Uint8Array[] = [];
  onFrame: ((frame: Uint8Array, meta?: FrameMeta) => void) | undefined;
  paused: boolean[] = [];
  offloads: GuestOffloads[] = [];
  closed = false;
  readonly stats: NetStats = { txFrames: 0, txBytes: 0, rxFrames: 0, rxBytes: 0, txDropped: 0, rxDropped: 0 };
  send(frame: Uint8Array): void {
    this.sent.push(Uint8Array.from(frame));
    this.stats.txFrames++;
    this.stats.txBytes += frame.length;
  }
  setRxPaused(paused: boolean): void {
    this.paused.push(paused);
  }
  setGuestOffloads(o: GuestOffloads): void {
    this.offloads.push(o);
  }
  close(): void {
    this.closed = true;
  }
  /** The host sends the guest a frame. */
  deliver(frame: Uint8Array, meta?: FrameMeta): void {
    this.onFrame?.(frame, meta);
  }
}

const MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
const BASE = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS;
const RX = 0;
const TX = 1;

function setup(features = BASE, size = 16): { d: TestDriver; net: VirtioNet; be: FakeBackend } {
  const be = new FakeBackend();
  const net = new VirtioNet(be, { name: "net0", mac: MAC });
  const d = new TestDriver(net);
  d.start(features, size);
  return { d, net, be };
}

/** A frame of `len` bytes with a recognisable pattern. */
function frame(len: number, seed = 0): Uint8Array {
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = (i * 7 + seed * 13 + 1) & 0xff;
  return f;
}

function readHeader(d: TestDriver, head: number): Uint8Array {
  return d.mem.read(d.bufferAddr(RX, head, 0), VIRTIO_NET_HDR_SIZE);
}

function numBuffers(hdr: Uint8Array): number {
  return hdr[10] | (hdr[11] << 8);
}

test("virtio-net config space: MAC, link up, one queue pair; features: checksum and TSO offloads, no ECN/UFO", () => {
  const be = new FakeBackend();
  const d = new TestDriver(new VirtioNet(be, { name: "net0", mac: MAC }));
  assert.equal(d.reg(0x008), 1, "network device");
  const mac = [0, 1, 2, 3, 4, 5].map((i) => Number(d.transport.read(0x100 + i, 1)));
  assert.deepEqual(mac, [...MAC]);
  assert.equal(Number(d.transport.read(0x106, 2)), 1, "VIRTIO_NET_S_LINK_UP");
  assert.equal(Number(d.transport.read(0x108, 2)), 1, "max_virtqueue_pairs");
  assert.equal(Number(d.transport.read(0x100, 4)), 0x12005452);
  const f = d.deviceFeatures();
  // MAC, MRG_RXBUF, STATUS, CSUM (0), GUEST_CSUM (1), GUEST_TSO4/6 (7, 8), HOST_TSO4/6 (11, 12) and
  // nothing else of the device's own bits: no ECN, UFO, MTU or control queue
  // (device-specific bits are 0 to 23 and 50 and up: 6 "Reserved Feature Bits")
  assert.equal(f & 0xff_ffffn, VIRTIO_NET_F_MAC | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_STATUS | 0b1_1001_1000_0011n);
  assert.equal(f >> 50n, 0n, "no high device bits (RSS, SPEED_DUPLEX, ...)");
  // offloads: false offers none of them
  const plain = new TestDriver(new VirtioNet(new FakeBackend(), { name: "net1", mac: MAC, offloads: false }));
  assert.equal(plain.deviceFeatures() & 0xff_ffffn, VIRTIO_NET_F_MAC | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_STATUS);
  assert.equal(d.reg(0x034), 256);
  assert.throws(() => new VirtioNet(be, { name: "net1", mac: new Uint8Array(5) }));
});

test("virtio-net link down/up changes the status field and raises a config interrupt", () => {
  const { d, net } = setup();
  d.ackInterrupts();
  net.setLink(false);
  assert.equal(Number(d.transport.read(0x106, 2)), 0);
  assert.equal(d.ackInterrupts() & 2, 2);
  net.setLink(true);
  assert.equal(Number(d.transport.read(0x106, 2)), 1);
});

test("virtio-net announce(): after a restore or migration the card sends a RARP broadcast from its MAC, as QEMU's announce-self", () => {
  const { net, be } = setup();
  net.announce(1);
  assert.equal(be.sent.length, 1);
  const f = be.sent[0];
  assert.deepEqual([...f.subarray(0, 6)], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  assert.deepEqual([...f.subarray(6, 12)], [...MAC]);
  assert.equal((f[12] << 8) | f[13], 0x8035, "EtherType RARP");
  assert.equal((f[20] << 8) | f[21], 3, "reverse request");
  assert.deepEqual([...f.subarray(22, 28)], [...MAC], "sender hardware address");
  assert.equal(net.stats.announcements, 1);
  // Before the driver is up (or after a reset) there is no one to announce.
  const idle = new VirtioNet(new FakeBackend(), { name: "net1", mac: MAC });
  idle.announce(1);
  assert.equal(idle.stats.announcements, 0);
});

test("virtio-net holdTraffic: a clone's card carries nothing and announces nothing until its guest has taken the new address", () => {
  const { d, net, be } = setup();
  net.holdTraffic(true);
  d.add(TX, [{ data: new Uint8Array(VIRTIO_NET_HDR_SIZE) }, { data: frame(60, 1) }]);
  d.kick(TX);
  assert.equal(be.sent.length, 0, "nothing from the guest reaches the backend");
  assert.equal(net.stats.txHeld, 1);
  assert.equal(d.used(TX).length, 1, "the guest still gets its buffer back");
  const rx = d.add(RX, [{ writeLen: VIRTIO_NET_HDR_SIZE + 1514 }]);
  be.deliver(frame(80, 2));
  d.transport.poll();
  assert.deepEqual(d.used(RX), [], "nothing from the network reaches the guest");
  net.announce(1);
  assert.equal(net.stats.announcements, 0, "no announcement of the old address");

  net.holdTraffic(false);
  net.announce(1);
  assert.deepEqual([...be.sent[0].subarray(6, 12)], [...MAC]);
  be.deliver(frame(80, 3));
  d.transport.poll();
  assert.deepEqual(d.used(RX), [{ id: rx, len: VIRTIO_NET_HDR_SIZE + 80 }]);
});

test("virtio-net transmit strips the header and hands the exact frame to the backend", () => {
  const { d, net, be } = setup(BASE | VIRTIO_F_INDIRECT_DESC);
  const f1 = frame(60, 1);
  const f2 = frame(1514, 2);
  const hdr = new Uint8Array(VIRTIO_NET_HDR_SIZE).fill(0xee); // ignored apart from its length
  const a = d.add(TX, [{ data: hdr }, { data: f1 }]);
  const both = new Uint8Array(VIRTIO_NET_HDR_SIZE + f2.length);
  both.set(f2, VIRTIO_NET_HDR_SIZE);
  const b = d.add(TX, [{ data: both }]);
  // split in an odd place, through an indirect table
  const f3 = frame(100, 3);
  const c = d.add(TX, [{ data: hdr.subarray(0, 5) }, { data: Uint8Array.from([...hdr.subarray(5), ...f3.subarray(0, 33)]) }, { data: f3.subarray(33) }], { indirect: true });
  d.kick(TX);
  assert.deepEqual(be.sent, [f1, f2, f3]);
  assert.deepEqual(d.used(TX), [{ id: a, len: 0 }, { id: b, len: 0 }, { id: c, len: 0 }]);
  assert.ok(d.irq);
  assert.equal(net.stats.txFrames, 3);
  assert.equal(net.stats.txBytes, 60 + 1514 + 100);
});

test("virtio-net: a runt or giant transmit frame fails alone", () => {
  const { d, net, be } = setup();
  const hdr = new Uint8Array(VIRTIO_NET_HDR_SIZE);
  const good1 = frame(64, 1);
  const good2 = frame(65535 + 18, 2); // the largest frame there is
  d.add(TX, [{ data: hdr }, { data: good1 }]);
  d.add(TX, [{ data: hdr }, { data: frame(13) }]); // runt
  d.add(TX, [{ data: hdr.subarray(0, 6) }]); // not even a header
  d.add(TX, [{ data: hdr }, { data: frame(65535 + 19) }]); // giant
  d.add(TX, [{ data: hdr }, { writeLen: 100 }]); // nothing to send
  d.add(TX, [{ data: hdr }, { data: good2 }]);
  d.kick(TX);
  assert.equal(be.sent.length, 2);
  assert.deepEqual(be.sent[0], good1);
  assert.deepEqual(be.sent[1], good2);
  const used = d.used(TX);
  assert.equal(used.length, 6);
  assert.ok(used.every((u) => u.len === 0));
  assert.equal(net.stats.txErrors, 4);
});

test("virtio-net receive without MRG_RXBUF: header + frame, in order, num_buffers 1", () => {
  const { d, net, be } = setup();
  const heads = [0, 1, 2, 3].map(() => d.add(RX, [{ writeLen: VIRTIO_NET_HDR_SIZE + 1514 }]));
  d.kick(RX);
  assert.deepEqual(d.used(RX), [], "no frames yet");
  const frames = [frame(60, 1), frame(1514, 2), frame(342, 3)];
  for (const f of frames) be.deliver(f);
  assert.ok(d.polls >= 1, "the device asked for a poll");
  assert.deepEqual(d.used(RX), [], "nothing happens before the poll");
  d.ackInterrupts();
  d.transport.poll();
  const used = d.used(RX);
  assert.deepEqual(used, frames.map((f, i) => ({ id: heads[i], len: VIRTIO_NET_HDR_SIZE + f.length })));
  for (const [i, f] of frames.entries()) {
    const hdr = readHeader(d, heads[i]);
    assert.equal(numBuffers(hdr), 1);
    assert.deepEqual(hdr.subarray(0, 10), new Uint8Array(10));
    assert.deepEqual(d.mem.read(d.bufferAddr(RX, heads[i], 0) + BigInt(VIRTIO_NET_HDR_SIZE), f.length), f);
  }
  assert.ok(d.irq);
  assert.equal(net.stats.rxFrames, 3);
  assert.equal(net.stats.rxBytes, 60 + 1514 + 342);
});

test("virtio-net receive: header and frame may span descriptors of one chain", () => {
  const { d, be } = setup();
  const head = d.add(RX, [{ writeLen: 4 }, { writeLen: 30 }, { writeLen: 2000 }]);
  const f = frame(100, 9);
  be.deliver(f);
  d.transport.poll();
  assert.deepEqual(d.used(RX), [{ id: head, len: VIRTIO_NET_HDR_SIZE + 100 }]);
  const got = new Uint8Array([...d.mem.read(d.bufferAddr(RX, head, 0), 4), ...d.mem.read(d.bufferAddr(RX, head, 1), 30), ...d.mem.read(d.bufferAddr(RX, head, 2), 78)]);
  assert.equal(numBuffers(got), 1);
  assert.deepEqual(got.subarray(VIRTIO_NET_HDR_SIZE), f);
});

test("virtio-net receive: frames wait for buffers and go when the driver adds some", () => {
  const { d, net, be } = setup();
  be.deliver(frame(80, 1));
  be.deliver(frame(90, 2));
  d.transport.poll();
  assert.equal(net.rxBacklog, 2);
  const a = d.add(RX, [{ writeLen: 1526 }]);
  d.kick(RX);
  assert.deepEqual(d.used(RX), [{ id: a, len: 92 }]);
  const b = d.add(RX, [{ writeLen: 1526 }]);
  const c = d.add(RX, [{ writeLen: 1526 }]);
  d.kick(RX);
  assert.deepEqual(d.used(RX), [{ id: b, len: 102 }]);
  assert.equal(net.rxBacklog, 0);
  be.deliver(frame(70, 3));
  d.transport.poll();
  assert.deepEqual(d.used(RX), [{ id: c, len: 82 }]);
  assert.deepEqual(d.mem.read(d.bufferAddr(RX, c, 0) + 12n, 70), frame(70, 3));
});

test("virtio-net receive without MRG_RXBUF: a frame too big for the buffer is dropped, the buffer serves the next", () => {
  const { d, net, be } = setup();
  const head = d.add(RX, [{ writeLen: 112 }]);
  be.deliver(frame(200, 1));
  be.deliver(frame(100, 2));
  d.transport.poll();
  assert.deepEqual(d.used(RX), [{ id: head, len: 112 }]);
  assert.deepEqual(d.mem.read(d.bufferAddr(RX, head, 0) + 12n, 100), frame(100, 2));
  assert.equal(net.stats.rxDropped, 1);
  assert.equal(net.rxBacklog, 0);
});

test("virtio-net receive with MRG_RXBUF: a 3000-byte frame over 1 KiB buffers sets num_buffers", () => {
  const { d, net, be } = setup(BASE | VIRTIO_NET_F_MRG_RXBUF);
  const heads = [0, 1, 2, 3, 4].map(() => d.add(RX, [{ writeLen: 1024 }]));
  d.kick(RX);
  const big = frame(3000, 5);
  const small = frame(60, 6);
  be.deliver(big);
  be.deliver(small);
  d.transport.poll();
  const used = d.used(RX);
  assert.deepEqual(used, [
    { id: heads[0], len: 1024 },
    { id: heads[1], len: 1024 },
    { id: heads[2], len: 3012 - 2048 },
    { id: heads[3], len: 72 },
  ]);
  const hdr = readHeader(d, heads[0]);
  assert.equal(numBuffers(hdr), 3);
  assert.deepEqual(hdr.subarray(0, 10), new Uint8Array(10));
  const got = new Uint8Array(3000);
  got.set(d.mem.read(d.bufferAddr(RX, heads[0], 0) + 12n, 1012), 0);
  got.set(d.mem.read(d.bufferAddr(RX, heads[1], 0), 1024), 1012);
  got.set(d.mem.read(d.bufferAddr(RX, heads[2], 0), 964), 2036);
  assert.deepEqual(got, big);
  assert.equal(numBuffers(readHeader(d, heads[3])), 1);
  assert.deepEqual(d.mem.read(d.bufferAddr(RX, heads[3], 0) + 12n, 60), small);
  assert.equal(net.stats.rxFrames, 2);
});

test("virtio-net receive with MRG_RXBUF: a frame waits until enough buffers are there, never split across the wait", () => {
  const { d, net, be } = setup(BASE | VIRTIO_NET_F_MRG_RXBUF);
  const a = d.add(RX, [{ writeLen: 1024 }]);
  const b = d.add(RX, [{ writeLen: 1024 }]);
  d.kick(RX);
  be.deliver(frame(3000, 1));
  d.transport.poll();
  assert.deepEqual(d.used(RX), [], "two buffers are not enough");
  assert.equal(net.rxBacklog, 1);
  const c = d.add(RX, [{ writeLen: 2048 }]);
  d.kick(RX);
  assert.deepEqual(d.used(RX), [{ id: a, len: 1024 }, { id: b, len: 1024 }, { id: c, len: 964 }]);
  assert.equal(numBuffers(readHeader(d, a)), 3);
});

test("virtio-net receive with MRG_RXBUF: a frame larger than the whole ring is dropped, the buffers stay usable", () => {
  const { d, net, be } = setup(BASE | VIRTIO_NET_F_MRG_RXBUF, 4);
  const heads = [0, 1, 2, 3].map(() => d.add(RX, [{ writeLen: 256 }]));
  d.kick(RX);
  be.deliver(frame(2000, 1));
  be.deliver(frame(300, 2));
  d.transport.poll();
  assert.equal(net.stats.rxDropped, 1);
  assert.deepEqual(d.used(RX), [{ id: heads[0], len: 256 }, { id: heads[1], len: 56 }]);
  assert.equal(numBuffers(readHeader(d, heads[0])), 2);
});

test("virtio-net never writes a frame into device-readable buffers", () => {
  const { d, net, be } = setup(BASE | VIRTIO_NET_F_MRG_RXBUF);
  const bad = d.add(RX, [{ data: new Uint8Array(2000) }]);
  const mixed = d.add(RX, [{ data: new Uint8Array(16) }, { writeLen: 2000 }]);
  const good = d.add(RX, [{ writeLen: 2000 }]);
  be.deliver(frame(500, 1));
  d.transport.poll();
  assert.deepEqual(d.used(RX), [{ id: bad, len: 0 }, { id: mixed, len: 0 }, { id: good, len: 512 }]);
  assert.deepEqual(d.mem.read(d.bufferAddr(RX, bad, 0), 2000), new Uint8Array(2000));
  assert.deepEqual(d.mem.read(d.bufferAddr(RX, mixed, 0), 16), new Uint8Array(16));
  assert.equal(net.stats.rxErrors, 2);
});

test("virtio-net receive backlog is bounded: beyond it frames are dropped and counted, and the backend is paused", () => {
  const { d, net, be } = setup();
  for (let i = 0; i < RX_BACKLOG_FRAMES + 44; i++) be.deliver(frame(60, i));
  assert.equal(net.rxBacklog, RX_BACKLOG_FRAMES);
  assert.equal(net.stats.rxDropped, 44);
  assert.deepEqual(be.paused, [true]);
  // a megabyte of large frames fills the byte bound first
  const { net: net2, be: be2 } = setup();
  for (let i = 0; i < 100; i++) be2.deliver(frame(65535 + 18, i));
  assert.equal(net2.rxBacklog, 15);
  assert.equal(net2.stats.rxDropped, 85);
  // buffers drain the backlog, and the backend is resumed
  for (let i = 0; i < 16; i++) d.add(RX, [{ writeLen: 1526 }]);
  d.kick(RX);
  assert.equal(d.used(RX).length, 16);
  for (let round = 0; round < 15; round++) {
    for (let i = 0; i < 16; i++) d.add(RX, [{ writeLen: 1526 }]);
    d.kick(RX);
    d.used(RX);
  }
  assert.equal(net.rxBacklog, 0);
  assert.deepEqual(be.paused, [true, false]);
});

test("virtio-net drops frames before DRIVER_OK and after a reset", () => {
  const be = new FakeBackend();
  const net = new VirtioNet(be, { name: "net0", mac: MAC });
  const d = new TestDriver(net);
  be.deliver(frame(60));
  d.negotiate(BASE);
  be.deliver(frame(60));
  assert.equal(net.stats.rxDropped, 2);
  assert.equal(net.rxBacklog, 0);
  assert.equal(d.polls, 0);
  d.setupQueue(0, 16);
  d.setupQueue(1, 16);
  d.driverOk();
  be.deliver(frame(60, 1));
  assert.equal(net.rxBacklog, 1);
  d.setReg(0x70, 0); // reset: the waiting frame goes too
  assert.equal(net.rxBacklog, 0);
  be.deliver(frame(60, 2));
  assert.equal(net.rxBacklog, 0);
  assert.equal(net.stats.rxDropped, 4);
  // and after the next start frames flow again
  d.start(BASE);
  const head = d.add(RX, [{ writeLen: 1526 }]);
  be.deliver(frame(60, 3));
  d.transport.poll();
  assert.deepEqual(d.used(RX), [{ id: head, len: 72 }]);
});

test("virtio-net statsLines and close", () => {
  const { d, net, be } = setup();
  d.add(TX, [{ data: new Uint8Array(12) }, { data: frame(1000) }]);
  d.kick(TX);
  d.add(RX, [{ writeLen: 1526 }]);
  be.deliver(frame(500));
  d.transport.poll();
  assert.deepEqual(net.statsLines(), ["net0 (fake:test): rx 1 frames 500 B, tx 1 frames 1000 B, 0 dropped, 0 errors"]);
  assert.equal(formatBytes(30 * 1024 + 100), "30 KiB");
  assert.equal(formatBytes(1536 * 1024), "1.5 MiB");
  net.close();
  assert.ok(be.closed);
  assert.equal(be.onFrame, undefined);
});

test("virtio-net: receive buffers held from a queue the driver stopped are not given back in the new one (4.2.2.2)", () => {
  const { d, be } = setup(BASE | VIRTIO_NET_F_MRG_RXBUF);
  // Two buffers too small for the frame together: the device holds them and waits for more.
  d.add(RX, [{ writeLen: 100 }]);
  d.add(RX, [{ writeLen: 100 }]);
  d.kick(RX);
  be.deliver(frame(1000, 1));
  d.transport.poll();
  assert.deepEqual(d.used(RX), []);
  // The driver stops the queue and sets it up again: a new queue, whose heads start at 0 again.
  d.setReg(0x30, RX);
  d.setReg(0x44, 0);
  d.setupQueue(RX, 16);
  const head = d.add(RX, [{ writeLen: 2048 }]);
  d.kick(RX);
  d.transport.poll();
  assert.deepEqual(d.used(RX), [{ id: head, len: VIRTIO_NET_HDR_SIZE + 1000 }], "only the new queue's buffer, the frame whole in it");
  assert.deepEqual(d.mem.read(d.bufferAddr(RX, head, 0) + BigInt(VIRTIO_NET_HDR_SIZE), 1000), frame(1000, 1));
});

// --- offloads (net-offload.ts does the bytes; these drive them through the queues) ---

const HOST_TSO = BASE | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6;
const GUEST_TSO = BASE | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6;

/** A 12-byte virtio_net_hdr as a driver writes it. */
function netHdr(h: { flags?: number; gsoType?: number; hdrLen?: number; gsoSize?: number; csumStart?: number; csumOffset?: number }): Uint8Array {
  const b = new Uint8Array(VIRTIO_NET_HDR_SIZE);
  const dv = new DataView(b.buffer);
  b[0] = h.flags ?? 0;
  b[1] = h.gsoType ?? 0;
  dv.setUint16(2, h.hdrLen ?? 0, true);
  dv.setUint16(4, h.gsoSize ?? 0, true);
  dv.setUint16(6, h.csumStart ?? 0, true);
  dv.setUint16(8, h.csumOffset ?? 0, true);
  return b;
}

test("virtio-net TSO: a 64 KiB super-frame in one chain reaches the backend as MSS-sized segments with valid checksums", () => {
  const { d, net, be } = setup(HOST_TSO | VIRTIO_F_INDIRECT_DESC);
  const data = payload(64000, 9);
  const sup = tcpFrame({ payload: data, partial: true, flags: TCP.ACK | TCP.PSH, seq: 123456 });
  const h = netHdr({ flags: 1, gsoType: 1, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16 });
  // header in its own descriptor, the frame over three more, as Linux's skb fragments
  const head = d.add(TX, [{ data: h }, { data: sup.subarray(0, 54) }, { data: sup.subarray(54, 30000) }, { data: sup.subarray(30000) }], { indirect: true });
  d.kick(TX);
  assert.deepEqual(d.used(TX), [{ id: head, len: 0 }]);
  assert.equal(be.sent.length, 45, "one chain, 45 frames");
  let got = 0;
  for (const [i, f] of be.sent.entries()) {
    assert.ok(f.length <= 14 + 1500, `segment ${i}: ${f.length} bytes`);
    assert.ok(transportChecksumOk(f), `segment ${i} TCP checksum`);
    assert.ok(ipv4HeaderOk(f), `segment ${i} IP checksum`);
    assert.equal(new DataView(f.buffer, f.byteOffset).getUint32(38), 123456 + got);
    assert.deepEqual(f.subarray(54), data.subarray(got, got + f.length - 54));
    got += f.length - 54;
  }
  assert.equal(got, data.length);
  assert.equal(net.stats.txFrames, 45);
  assert.equal(net.stats.txSegmented, 1);
  assert.equal(net.stats.txErrors, 0);
  assert.match(net.statsLines()[0], /tx 45 frames .*; super-frames: tx 1 segmented, 0 whole, rx 0 whole, 0 segmented$/);
  // the same over IPv6
  const sup6 = tcpFrame({ ipv6: true, payload: payload(10000, 2), partial: true });
  d.add(TX, [{ data: netHdr({ flags: 1, gsoType: 4, hdrLen: 74, gsoSize: 1428, csumStart: 54, csumOffset: 16 }) }, { data: sup6 }]);
  d.kick(TX);
  assert.equal(be.sent.length, 45 + 8);
  assert.ok(be.sent.slice(45).every((f) => transportChecksumOk(f)));
});

test("virtio-net CSUM: the device finishes a partial checksum; without CSUM negotiated the header is ignored", () => {
  const { d, net, be } = setup(BASE | VIRTIO_NET_F_CSUM);
  const f = tcpFrame({ payload: payload(700), partial: true });
  d.add(TX, [{ data: netHdr({ flags: 1, csumStart: 34, csumOffset: 16 }) }, { data: f }]);
  d.add(TX, [{ data: netHdr({}) }, { data: f }]); // no NEEDS_CSUM: sent as is
  d.kick(TX);
  assert.equal(be.sent.length, 2);
  assert.ok(transportChecksumOk(be.sent[0]));
  assert.deepEqual(be.sent[1], f);
  assert.equal(net.stats.txSegmented, 0);
  // not negotiated: flags are not looked at (a driver sets them to zero, 5.1.6.2.1)
  const plain = setup(BASE);
  plain.d.add(TX, [{ data: netHdr({ flags: 1, gsoType: 1, gsoSize: 1, csumStart: 34, csumOffset: 16 }) }, { data: f }]);
  plain.d.kick(TX);
  assert.deepEqual(plain.be.sent, [f]);
});

test("virtio-net TSO: hostile headers fail their request alone and are counted", () => {
  const { d, net, be } = setup(BASE | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4);
  const sup = tcpFrame({ payload: payload(5000), partial: true });
  const sup6 = tcpFrame({ ipv6: true, payload: payload(5000), partial: true });
  const good = netHdr({ flags: 1, gsoType: 1, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16 });
  const bad = [
    [netHdr({ flags: 1, gsoType: 1, hdrLen: sup.length + 1, gsoSize: 1448 }), sup], // hdr_len beyond the frame
    [netHdr({ flags: 1, gsoType: 1, gsoSize: 0 }), sup], // gso_size 0
    [netHdr({ flags: 1, gsoType: 1, gsoSize: 1 }), sup], // 5000 segments
    [netHdr({ flags: 1, gsoType: 3, gsoSize: 1448 }), sup], // UFO
    [netHdr({ flags: 1, gsoType: 4, gsoSize: 1428 }), sup6], // TSO6 not negotiated
    [netHdr({ flags: 1, csumStart: sup.length - 1, csumOffset: 0 }), sup], // checksum field beyond the frame
    [netHdr({ flags: 1, gsoType: 1, gsoSize: 1448 }), sup.subarray(0, 40)], // truncated IP header
    [netHdr({ flags: 1, gsoType: 1, gsoSize: 1448 }), tcpFrame({ payload: payload(5000), protocol: 17 })], // not TCP
  ] as const;
  d.add(TX, [{ data: good }, { data: sup }]);
  for (const [h, f] of bad) d.add(TX, [{ data: h }, { data: f }]);
  d.add(TX, [{ data: good }, { data: sup }]);
  d.kick(TX);
  assert.equal(d.used(TX).length, bad.length + 2, "every request completes");
  assert.equal(net.stats.txErrors, bad.length);
  assert.equal(be.sent.length, 8, "the two good super-frames, 4 segments each");
  assert.ok(be.sent.every((f) => transportChecksumOk(f)));
});

test("virtio-net GUEST_TSO: a backend super-frame reaches a GUEST_TSO driver whole, with the offload header", () => {
  const { d, net, be } = setup(GUEST_TSO | VIRTIO_NET_F_MRG_RXBUF);
  assert.deepEqual(be.offloads, [{ csum: true, tso4: true, tso6: true }], "the backend hears what the driver accepted");
  const heads = Array.from({ length: 12 }, () => d.add(RX, [{ writeLen: 4096 }]));
  d.kick(RX);
  const sup = tcpFrame({ payload: payload(40000, 4) });
  be.deliver(sup, { gsoType: 1, gsoSize: 1448 });
  d.transport.poll();
  const used = d.used(RX);
  assert.equal(used.length, 10, "40054 bytes over 4 KiB buffers");
  const hdr = readHeader(d, heads[0]);
  assert.deepEqual([...hdr.subarray(0, 10)], [1, 1, 54, 0, 1448 & 0xff, 1448 >> 8, 34, 0, 16, 0], "NEEDS_CSUM, TCPV4, hdr_len, gso_size, csum_start/offset");
  assert.equal(numBuffers(hdr), 10);
  const got = new Uint8Array(sup.length);
  let at = 0;
  for (const [i, u] of used.entries()) {
    const skip = i === 0 ? VIRTIO_NET_HDR_SIZE : 0;
    got.set(d.mem.read(d.bufferAddr(RX, u.id, 0) + BigInt(skip), u.len - skip), at);
    at += u.len - skip;
  }
  assert.equal(at, sup.length);
  // the TCP checksum field holds the pseudo-header sum; finishing it gives the original checksum
  assert.deepEqual(got.subarray(0, 50), sup.subarray(0, 50));
  assert.deepEqual(got.subarray(52), sup.subarray(52));
  assert.equal(net.stats.rxFrames, 1);
  assert.equal(net.stats.rxSuperFrames, 1);
  // reset: the backend is told the guest takes nothing now
  d.setReg(0x70, 0);
  assert.deepEqual(be.offloads.at(-1), { csum: false, tso4: false, tso6: false });
});

test("virtio-net GUEST_TSO: a driver without it gets the super-frame's segments, DATA_VALID with GUEST_CSUM", () => {
  for (const [features, flags] of [[BASE | VIRTIO_NET_F_MRG_RXBUF, 0], [BASE | VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_HDR_F_DATA_VALID]] as const) {
    const { d, net, be } = setup(features, 64);
    assert.deepEqual(be.offloads, [{ csum: flags !== 0, tso4: false, tso6: false }]);
    for (let i = 0; i < 20; i++) d.add(RX, [{ writeLen: 1526 }]);
    d.kick(RX);
    const sup = tcpFrame({ payload: payload(20000, 6) });
    be.deliver(sup, { gsoType: 1, gsoSize: 1448 });
    d.transport.poll();
    const used = d.used(RX);
    assert.equal(used.length, 14);
    for (const u of used) {
      const hdr = readHeader(d, u.id);
      assert.equal(hdr[0], flags);
      assert.equal(hdr[1], 0, "no gso_type");
      assert.equal(numBuffers(hdr), 1);
      const f = d.mem.read(d.bufferAddr(RX, u.id, 0) + 12n, u.len - 12);
      assert.ok(transportChecksumOk(f));
      assert.ok(ipv4HeaderOk(f));
    }
    assert.equal(net.stats.rxFrames, 14);
    assert.equal(net.stats.rxSegmented, 1);
  }
});

test("virtio-net GUEST_TSO without MRG_RXBUF: a super-frame goes into a 64 KiB buffer, and is cut when the buffer is smaller", () => {
  const { d, net, be } = setup(GUEST_TSO, 64);
  const big = d.add(RX, [{ writeLen: 65562 }]);
  d.kick(RX);
  const sup = tcpFrame({ payload: payload(30000, 8) });
  be.deliver(sup, { gsoType: 1, gsoSize: 1448 });
  d.transport.poll();
  assert.deepEqual(d.used(RX), [{ id: big, len: VIRTIO_NET_HDR_SIZE + sup.length }]);
  assert.equal(readHeader(d, big)[1], 1, "gso_type TCPV4");
  // a driver that posts MTU-sized buffers anyway (5.1.6.3.1 is a SHOULD): segments rather than a drop
  for (let i = 0; i < 30; i++) d.add(RX, [{ writeLen: 1526 }]);
  d.kick(RX);
  be.deliver(sup, { gsoType: 1, gsoSize: 1448 });
  d.transport.poll();
  const used = d.used(RX);
  assert.equal(used.length, 21);
  for (const u of used) {
    assert.equal(readHeader(d, u.id)[0], VIRTIO_NET_HDR_F_DATA_VALID);
    assert.ok(transportChecksumOk(d.mem.read(d.bufferAddr(RX, u.id, 0) + 12n, u.len - 12)));
  }
  assert.equal(net.stats.rxDropped, 0);
  assert.equal(net.stats.rxSuperFrames, 1);
  assert.equal(net.stats.rxSegmented, 1);
});

test("virtio-net receive: backend partial checksums and DATA_VALID follow GUEST_CSUM; bad metadata is dropped and counted", () => {
  const { d, net, be } = setup(GUEST_TSO);
  const heads = Array.from({ length: 4 }, () => d.add(RX, [{ writeLen: 1526 }]));
  const f = tcpFrame({ payload: payload(500), partial: true });
  be.deliver(f, { needsCsum: true, csumStart: 34, csumOffset: 16 });
  be.deliver(tcpFrame({ payload: payload(500) }), { dataValid: true });
  be.deliver(f, { needsCsum: true, csumStart: 34, csumOffset: 0xfff0 }); // beyond the frame
  be.deliver(f, { gsoType: 3, gsoSize: 100 }); // UFO
  be.deliver(f, { gsoType: 1, gsoSize: 0 });
  be.deliver(f.subarray(0, 30), { gsoType: 1, gsoSize: 100 }); // truncated
  d.transport.poll();
  assert.equal(d.used(RX).length, 2);
  assert.deepEqual([...readHeader(d, heads[0]).subarray(0, 10)], [1, 0, 0, 0, 0, 0, 34, 0, 16, 0]);
  assert.equal(readHeader(d, heads[1])[0], VIRTIO_NET_HDR_F_DATA_VALID);
  assert.equal(net.stats.rxDropped, 4);
  // without GUEST_CSUM the device finishes the checksum itself, flags stay zero
  const plain = setup(BASE);
  const h = plain.d.add(RX, [{ writeLen: 1526 }]);
  plain.be.deliver(f, { needsCsum: true, csumStart: 34, csumOffset: 16 });
  plain.d.transport.poll();
  assert.deepEqual(readHeader(plain.d, h).subarray(0, 10), new Uint8Array(10));
  assert.ok(transportChecksumOk(plain.d.mem.read(plain.d.bufferAddr(RX, h, 0) + 12n, f.length)));
  assert.ok(!transportChecksumOk(f), "the backend's frame is not changed");
});

/** One end of an in-process cable that carries super-frames and partial checksums whole, as a switch port could. */
class CableEnd implements NetBackend {
  readonly description = "cable";
  peer: CableEnd | undefined;
  onFrame: ((frame: Uint8Array, meta?: FrameMeta) => void) | undefined;
  readonly stats: NetStats = { txFrames: 0, txBytes: 0, rxFrames: 0, rxBytes: 0, txDropped: 0, rxDropped: 0 };
  metas: (FrameMeta | undefined)[] = [];
  constructor(public txOffloads: GuestOffloads = { csum: true, tso4: true, tso6: true }) {}
  send(frame: Uint8Array, meta?: FrameMeta): void {
    this.metas.push(meta);
    this.peer?.onFrame?.(Uint8Array.from(frame), meta && { ...meta });
  }
  setRxPaused(): void {}
  close(): void {}
}

function cable(aFeatures: bigint, bFeatures: bigint): { a: TestDriver; b: TestDriver; netA: VirtioNet; netB: VirtioNet; endA: CableEnd } {
  const endA = new CableEnd();
  const endB = new CableEnd();
  endA.peer = endB;
  endB.peer = endA;
  const netA = new VirtioNet(endA, { name: "net0", mac: MAC });
  const netB = new VirtioNet(endB, { name: "net1", mac: MAC });
  const a = new TestDriver(netA);
  const b = new TestDriver(netB);
  a.start(aFeatures, 64);
  b.start(bFeatures, 64);
  return { a, b, netA, netB, endA };
}

test("virtio-net end to end: a 64 KiB send is one descriptor chain on both sides when the backend carries super-frames", () => {
  const { a, b, netA, netB, endA } = cable(HOST_TSO, GUEST_TSO | VIRTIO_NET_F_MRG_RXBUF);
  const heads = Array.from({ length: 20 }, () => b.add(RX, [{ writeLen: 4096 }]));
  b.kick(RX);
  const data = payload(64000, 3);
  const sup = tcpFrame({ payload: data, partial: true, seq: 99 });
  a.add(TX, [{ data: netHdr({ flags: 1, gsoType: 1, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16 }) }, { data: sup }]);
  a.kick(TX);
  assert.deepEqual(endA.metas, [{ gsoType: 1, gsoSize: 1448, needsCsum: true, csumStart: 34, csumOffset: 16 }]);
  assert.equal(netA.stats.txFrames, 1);
  assert.equal(netA.stats.txSuperFrames, 1);
  b.transport.poll();
  const used = b.used(RX);
  assert.equal(used.length, 16, "64054 bytes and the header over 4 KiB buffers");
  const hdr = readHeader(b, heads[0]);
  assert.deepEqual([...hdr.subarray(0, 10)], [1, 1, 54, 0, 1448 & 0xff, 1448 >> 8, 34, 0, 16, 0]);
  assert.equal(numBuffers(hdr), 16);
  assert.equal(netB.stats.rxFrames, 1);
  assert.equal(netB.stats.rxSuperFrames, 1);
  // the receiving driver finishes the checksum: the result is the frame with a valid TCP checksum
  const got = new Uint8Array(sup.length);
  let at = 0;
  for (const [i, u] of used.entries()) {
    const skip = i === 0 ? VIRTIO_NET_HDR_SIZE : 0;
    got.set(b.mem.read(b.bufferAddr(RX, u.id, 0) + BigInt(skip), u.len - skip), at);
    at += u.len - skip;
  }
  const c = ~refSum(got, 34) & 0xffff;
  got[50] = c >> 8;
  got[51] = c & 0xff;
  assert.ok(transportChecksumOk(got));
  assert.deepEqual(got.subarray(54), data);
  // a partial checksum goes whole as well, and a receiver without GUEST_CSUM gets it finished
  const other = cable(HOST_TSO, BASE);
  other.b.add(RX, [{ writeLen: 1526 }]);
  const small = tcpFrame({ payload: payload(900), partial: true });
  other.a.add(TX, [{ data: netHdr({ flags: 1, csumStart: 34, csumOffset: 16 }) }, { data: small }]);
  other.a.kick(TX);
  assert.deepEqual(other.endA.metas, [{ needsCsum: true, csumStart: 34, csumOffset: 16 }]);
  other.b.transport.poll();
  const [u] = other.b.used(RX);
  assert.deepEqual(readHeader(other.b, u.id).subarray(0, 10), new Uint8Array(10));
  assert.ok(transportChecksumOk(other.b.mem.read(other.b.bufferAddr(RX, u.id, 0) + 12n, small.length)));
});

test("virtio-net end to end: a backend that does not take TSO6 gets segments; hostile super-frames never reach it", () => {
  const { a, netA, endA } = cable(HOST_TSO, GUEST_TSO);
  endA.txOffloads = { csum: true, tso4: true, tso6: false };
  const sup6 = tcpFrame({ ipv6: true, payload: payload(5000), partial: true });
  a.add(TX, [{ data: netHdr({ flags: 1, gsoType: 4, gsoSize: 1428, csumStart: 54, csumOffset: 16 }) }, { data: sup6 }]);
  const sup = tcpFrame({ payload: payload(5000), partial: true });
  for (const h of [
    netHdr({ flags: 1, gsoType: 1, gsoSize: 0 }),
    netHdr({ flags: 1, gsoType: 1, gsoSize: 1 }),
    netHdr({ flags: 1, gsoType: 1, gsoSize: 1448, hdrLen: 9999 }),
    netHdr({ flags: 1, gsoType: 3, gsoSize: 1448 }),
    netHdr({ flags: 1, csumStart: 5040, csumOffset: 16 }), // the field would end 4 bytes past the frame
  ]) a.add(TX, [{ data: h }, { data: sup }]);
  a.add(TX, [{ data: netHdr({ flags: 1, gsoType: 1, gsoSize: 1448 }) }, { data: sup.subarray(0, 50) }]);
  a.kick(TX);
  assert.equal(endA.metas.length, 4, "the IPv6 super-frame as 4 segments");
  assert.ok(endA.metas.every((m) => m === undefined));
  assert.equal(netA.stats.txSegmented, 1);
  assert.equal(netA.stats.txErrors, 6);
});

test("virtio-net GUEST_TSO with MRG_RXBUF: a super-frame larger than the whole ring's buffers is cut, not dropped", () => {
  const { d, net, be } = setup(GUEST_TSO | VIRTIO_NET_F_MRG_RXBUF, 16);
  for (let i = 0; i < 16; i++) d.add(RX, [{ writeLen: 1526 }]);
  d.kick(RX);
  const sup = tcpFrame({ payload: payload(40000, 2) });
  be.deliver(sup, { gsoType: 1, gsoSize: 1448 });
  d.transport.poll();
  const check = (used: { id: number; len: number }[]) => {
    for (const u of used) {
      const hdr = readHeader(d, u.id);
      assert.equal(hdr[0], VIRTIO_NET_HDR_F_DATA_VALID);
      assert.equal(numBuffers(hdr), 1);
      assert.ok(transportChecksumOk(d.mem.read(d.bufferAddr(RX, u.id, 0) + 12n, u.len - 12)));
    }
  };
  const first = d.used(RX);
  assert.equal(first.length, 16, "16 of its 28 segments, one buffer each");
  check(first); // before the driver reuses the descriptors
  for (let i = 0; i < 16; i++) d.add(RX, [{ writeLen: 1526 }]);
  d.kick(RX);
  const rest = d.used(RX);
  assert.equal(rest.length, 12);
  check(rest);
  assert.equal(net.stats.rxDropped, 0);
  assert.equal(net.stats.rxSegmented, 1);
  assert.equal(net.stats.rxSuperFrames, 0);
  assert.equal(net.rxBacklog, 0);
});

import { SnapshotError, StateReader } from "../../snapshot/state.js";

test("virtio-net snapshot: held receive buffers are taken again by head, the backlog is dropped, traffic goes on", async () => {
  const { d, net, be } = setup(BASE | VIRTIO_NET_F_MRG_RXBUF);
  const t = d.add(TX, [{ data: new Uint8Array(VIRTIO_NET_HDR_SIZE) }, { data: frame(60, 2) }]);
  d.kick(TX);
  assert.deepEqual(d.used(TX), [{ id: t, len: 0 }]);
  const a = d.add(RX, [{ writeLen: 1024 }]);
  const b = d.add(RX, [{ writeLen: 1024 }]);
  d.kick(RX);
  be.deliver(frame(3000, 1));
  d.transport.poll();
  assert.deepEqual(d.used(RX), [], "two buffers held, the frame waits");
  assert.equal(net.rxBacklog, 1);
  const state = (await d.snapshot()) as { [k: string]: any };
  assert.deepEqual(state.device.rxHeld, [a, b]);
  be.deliver(frame(100, 9));
  d.transport.poll();
  assert.deepEqual(d.used(RX), [], "nothing is delivered while paused");

  const be2 = new FakeBackend();
  const net2 = new VirtioNet(be2, { name: "net0", mac: MAC });
  const d2 = TestDriver.restored(net2, d);
  d2.transport.restoreState(new StateReader(state, "net0"));
  d2.transport.resumeIo();
  assert.equal(net2.rxBacklog, 0, "the frame waiting at the snapshot was dropped");
  assert.deepEqual(be2.offloads.at(-1), { csum: false, tso4: false, tso6: false }, "the reopened backend hears the guest's offloads");
  be2.deliver(frame(3000, 3));
  d2.transport.poll();
  assert.deepEqual(d2.used(RX), [], "still two buffers held");
  const c = d2.add(RX, [{ writeLen: 2048 }]);
  d2.kick(RX);
  assert.deepEqual(d2.used(RX), [{ id: a, len: 1024 }, { id: b, len: 1024 }, { id: c, len: 964 }]);
  assert.equal(numBuffers(readHeader(d2, a)), 3);
  assert.deepEqual(d2.mem.read(d2.bufferAddr(RX, a, 0) + BigInt(VIRTIO_NET_HDR_SIZE), 16), frame(3000, 3).subarray(0, 16));
  const t2 = d2.add(TX, [{ data: new Uint8Array(VIRTIO_NET_HDR_SIZE) }, { data: frame(60, 4) }]);
  d2.kick(TX);
  assert.deepEqual(d2.used(TX), [{ id: t2, len: 0 }]);
  assert.deepEqual(be2.sent, [frame(60, 4)]);
  assert.deepEqual(d2.warnings, []);
});

test("virtio-net snapshot: without MRG_RXBUF posted buffers are used after restore", async () => {
  const { d } = setup(BASE);
  const a = d.add(RX, [{ writeLen: 2048 }]);
  d.kick(RX);
  const be2 = new FakeBackend();
  const d2 = await d.snapshotInto(new VirtioNet(be2, { name: "net0", mac: MAC }));
  be2.deliver(frame(200, 5));
  d2.transport.poll();
  assert.deepEqual(d2.used(RX), [{ id: a, len: VIRTIO_NET_HDR_SIZE + 200 }]);
});

test("virtio-net snapshot: tampered held heads are refused", async () => {
  const { d, be } = setup(BASE | VIRTIO_NET_F_MRG_RXBUF);
  d.add(RX, [{ writeLen: 1024 }]);
  d.add(RX, [{ writeLen: 1024 }]);
  d.kick(RX);
  be.deliver(frame(3000, 1));
  d.transport.poll();
  const state = (await d.snapshot()) as { [k: string]: any };
  const cases: [(s: any) => void, RegExp][] = [
    [(s) => (s.device.rxHeld = [0, 16]), /net0\.device\.rxHeld\[1\]: expected an integer 0\.\.15, got 16/],
    [(s) => (s.device.rxHeld = [0, 0]), /net0\.device\.rxHeld: a head is held twice/],
    [(s) => (s.device.rxHeld = [0]), /net0\.device\.rxHeld: 1 requests held, but queue 0 has 2 in flight/],
    [(s) => (s.queues[0].indices.lastAvail = 3), /net0\.device\.rxHeld: 2 requests held, but queue 0 has 3 in flight/],
    [(s) => (s.device.rxHeld = [0, 2]), /net0\.device\.rxHeld\[1\]: head 2 is not a receive buffer/],
    [(s) => (s.device.rxHeld = "0,1"), /net0\.device\.rxHeld: expected an array/],
    [(s) => (s.device.linkUp = "up"), /net0\.device\.linkUp: expected true or false/],
    [(s) => (s.driverFeatures = "0x100000000000000"), /net0\.driverFeatures: bits 0x100000000000000 were never offered/],
  ];
  // Descriptor 2 of the receive table: a device-readable buffer, never a held receive buffer.
  d.writeDesc(d.queueLayout(RX).desc, 2, d.queueLayout(RX).desc, 16, 0, 0);
  for (const [tamper, message] of cases) {
    const bad = structuredClone(state);
    tamper(bad);
    const d2 = TestDriver.restored(new VirtioNet(new FakeBackend(), { name: "net0", mac: MAC }), d);
    assert.throws(() => d2.transport.restoreState(new StateReader(bad, "net0")), (e: unknown) => e instanceof SnapshotError && message.test(e.message));
    assert.equal(d2.status, 0);
  }
});
