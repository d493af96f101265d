import { test } from "node:test";
import assert from "node:assert/strict";
import { setImmediate as tick } from "node:timers/promises";
import { StateReader } from "../../../snapshot/state.js";
import { TestDriver } from "../test-driver.js";
import { CONN_BUF_ALLOC, HOST_INPUT_HIGH } from "./connection.js";
import { VirtioVsock, VIRTIO_ID_VSOCK } from "./device.js";
import {
  VSOCK_OP_CREDIT_REQUEST, VSOCK_OP_CREDIT_UPDATE, VSOCK_OP_REQUEST, VSOCK_OP_RESPONSE, VSOCK_OP_RST, VSOCK_OP_RW,
  VSOCK_OP_SHUTDOWN, VSOCK_SHUTDOWN_BOTH, VSOCK_SHUTDOWN_SEND, VIRTIO_VSOCK_F_STREAM, VSOCK_TYPE_SEQPACKET,
} from "./packet.js";
import { FakeVsockBackend, VsockGuest, GUEST_CID, concat, newVsock, type RxPacket } from "./testing.js";

const bytes = (n: number, seed = 1) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed * 7 + (i >> 8)) & 0xff);
const ops = (ps: RxPacket[]) => ps.map((p) => p.hdr.op);

/** A guest-initiated connection from guest port 1000 to host port 52, established. */
async function connected(opts: { guestBufAlloc?: number } = {}) {
  const { dev, backend } = newVsock();
  backend.listening.add(52);
  const g = new VsockGuest(dev);
  g.send({ op: VSOCK_OP_REQUEST, srcPort: 1000, dstPort: 52, bufAlloc: opts.guestBufAlloc ?? 256 << 10 });
  await tick();
  const r = g.receive();
  assert.deepEqual(ops(r), [VSOCK_OP_RESPONSE]);
  assert.equal(r[0].hdr.srcPort, 52);
  assert.equal(r[0].hdr.dstPort, 1000);
  assert.equal(r[0].hdr.dstCid, BigInt(GUEST_CID));
  assert.equal(r[0].hdr.srcCid, 2n);
  assert.equal(r[0].hdr.bufAlloc, CONN_BUF_ALLOC);
  const stream = backend.opened[0].stream;
  return { dev, backend, g, stream };
}

test("virtio-vsock identifies itself: device 19, guest_cid in config, stream feature", () => {
  const dev = new VirtioVsock({ guestCid: 0x1234_5678, backend: new FakeVsockBackend() });
  const d = new TestDriver(dev);
  assert.equal(d.reg(0x008), VIRTIO_ID_VSOCK);
  assert.equal(d.deviceFeatures() & 0xffn, VIRTIO_VSOCK_F_STREAM);
  assert.equal(Number(d.transport.read(0x100, 4)), 0x1234_5678);
  assert.equal(Number(d.transport.read(0x104, 4)), 0);
  assert.throws(() => new VirtioVsock({ guestCid: 2, backend: new FakeVsockBackend() }), /CID 2/);
});

test("guest -> host: REQUEST, RESPONSE, data both ways byte-exact, credit updates", async () => {
  const { g, stream } = await connected();
  const out = bytes(10000);
  g.send({ op: VSOCK_OP_RW, srcPort: 1000, dstPort: 52 }, out.subarray(0, 4000));
  g.send({ op: VSOCK_OP_RW, srcPort: 1000, dstPort: 52 }, out.subarray(4000));
  assert.deepEqual(stream.bytes, out);
  // Everything flushed at once: the guest hears of its credit back.
  const cu = g.receive();
  assert.ok(cu.some((p) => p.hdr.op === VSOCK_OP_CREDIT_UPDATE && p.hdr.fwdCnt === 10000), JSON.stringify(ops(cu)));
  const back = bytes(9000, 2);
  stream.sink!.data(back);
  const r = g.receive();
  assert.ok(r.every((p) => p.hdr.op === VSOCK_OP_RW && p.hdr.srcPort === 52 && p.hdr.dstPort === 1000));
  assert.deepEqual(concat(r.map((p) => p.payload)), back);
  assert.ok(r.every((p) => p.payload.length <= 4096));
});

test("guest to a host port nobody listens on: RST", async () => {
  const { dev } = newVsock();
  const g = new VsockGuest(dev);
  g.send({ op: VSOCK_OP_REQUEST, srcPort: 1000, dstPort: 99 });
  await tick();
  assert.deepEqual(ops(g.receive()), [VSOCK_OP_RST]);
  assert.equal(dev.connectionCount, 0);
});

test("host -> guest never goes past the guest's credit; CREDIT_UPDATE lets more through", async () => {
  const { g, stream } = await connected({ guestBufAlloc: 1000 });
  stream.sink!.data(bytes(5000));
  let r = g.receive();
  assert.equal(concat(r.map((p) => p.payload)).length, 1000);
  assert.deepEqual(g.receive(), []);
  g.send({ op: VSOCK_OP_CREDIT_UPDATE, srcPort: 1000, dstPort: 52, bufAlloc: 1000, fwdCnt: 1000 });
  r = g.receive();
  assert.equal(concat(r.map((p) => p.payload)).length, 1000);
  // A lying fwd_cnt (ahead of what was sent) gives no credit.
  g.send({ op: VSOCK_OP_CREDIT_UPDATE, srcPort: 1000, dstPort: 52, bufAlloc: 1000, fwdCnt: 900000 });
  assert.deepEqual(g.receive(), []);
});

test("a host that floods is paused while the guest does not consume, resumed when it does", async () => {
  const { g, stream } = await connected({ guestBufAlloc: 4096 });
  for (let i = 0; i < 64 && !stream.paused; i++) stream.sink!.data(bytes(16 << 10, i));
  assert.ok(stream.paused, "host socket paused");
  g.receive();
  assert.ok(stream.paused);
  for (let fwd = 4096; stream.paused && fwd < 8 << 20; fwd += 4096) {
    g.send({ op: VSOCK_OP_CREDIT_UPDATE, srcPort: 1000, dstPort: 52, bufAlloc: 4096, fwdCnt: fwd });
    g.receive();
  }
  assert.ok(!stream.paused, "resumed");
});

test("a host peer that never reads: the guest is held to its credit; past it, RST", async () => {
  const { dev, g, stream } = await connected();
  stream.autoFlush = false;
  const chunk = bytes(64 << 10);
  for (let sent = 0; sent < CONN_BUF_ALLOC; sent += chunk.length) g.send({ op: VSOCK_OP_RW, srcPort: 1000, dstPort: 52 }, chunk);
  assert.deepEqual(ops(g.receive()), [], "no credit back");
  assert.ok(dev.heldBytes <= CONN_BUF_ALLOC + HOST_INPUT_HIGH);
  g.send({ op: VSOCK_OP_RW, srcPort: 1000, dstPort: 52 }, bytes(1));
  assert.deepEqual(ops(g.receive()), [VSOCK_OP_RST]);
  assert.ok(stream.destroyed);
  assert.equal(dev.connectionCount, 0);
});

test("CREDIT_REQUEST is answered with CREDIT_UPDATE", async () => {
  const { g } = await connected();
  g.send({ op: VSOCK_OP_CREDIT_REQUEST, srcPort: 1000, dstPort: 52 });
  const r = g.receive();
  assert.deepEqual(ops(r), [VSOCK_OP_CREDIT_UPDATE]);
  assert.equal(r[0].hdr.bufAlloc, CONN_BUF_ALLOC);
});

test("guest close: SHUTDOWN both ways -> host end ended, RST back, connection gone", async () => {
  const { dev, g, stream } = await connected();
  g.send({ op: VSOCK_OP_RW, srcPort: 1000, dstPort: 52 }, bytes(100));
  g.send({ op: VSOCK_OP_SHUTDOWN, srcPort: 1000, dstPort: 52, flags: VSOCK_SHUTDOWN_BOTH });
  assert.ok(stream.ended);
  assert.ok(g.receive().some((p) => p.hdr.op === VSOCK_OP_RST));
  assert.equal(dev.connectionCount, 0);
  assert.equal(stream.bytes.length, 100);
});

test("host half close: SHUTDOWN(SEND) after the data; then the guest's RST ends it", async () => {
  const { dev, g, stream } = await connected();
  stream.sink!.data(bytes(500));
  stream.sink!.end();
  const r = g.receive();
  assert.deepEqual(ops(r), [VSOCK_OP_RW, VSOCK_OP_SHUTDOWN]);
  assert.equal(r[1].hdr.flags, VSOCK_SHUTDOWN_SEND);
  // The guest may still send after the host's half close.
  g.send({ op: VSOCK_OP_RW, srcPort: 1000, dstPort: 52 }, bytes(10));
  assert.equal(stream.bytes.length, 10);
  g.send({ op: VSOCK_OP_RST, srcPort: 1000, dstPort: 52 });
  assert.equal(dev.connectionCount, 0);
  assert.ok(stream.destroyed);
});

test("host -> guest: REQUEST to the guest port, RESPONSE gives the host its port, data flows", async () => {
  const { dev, backend } = newVsock();
  const g = new VsockGuest(dev);
  const c = backend.connectToGuest(52);
  c.sink.data(bytes(300)); // sent before the guest accepted: kept
  const r = g.receive();
  assert.deepEqual(ops(r), [VSOCK_OP_REQUEST]);
  assert.equal(r[0].hdr.dstPort, 52);
  const hostPort = r[0].hdr.srcPort;
  assert.ok(hostPort >= 1 << 30);
  g.send({ op: VSOCK_OP_RESPONSE, srcPort: 52, dstPort: hostPort });
  assert.equal(await c.result, hostPort);
  const d = g.receive();
  assert.deepEqual(concat(d.map((p) => p.payload)), bytes(300));
  g.send({ op: VSOCK_OP_RW, srcPort: 52, dstPort: hostPort }, bytes(20, 3));
  assert.deepEqual(c.stream.bytes, bytes(20, 3));
});

test("host -> guest refused (RST) closes the host end; no driver: refused at once", async () => {
  const { dev, backend } = newVsock();
  const early = backend.connectToGuest(52);
  assert.equal(await early.result, undefined);
  const g = new VsockGuest(dev);
  const c = backend.connectToGuest(7);
  const hostPort = g.receive()[0].hdr.srcPort;
  g.send({ op: VSOCK_OP_RST, srcPort: 7, dstPort: hostPort });
  assert.equal(await c.result, undefined);
  assert.equal(dev.connectionCount, 0);
});

test("malformed packets: short, bad length, wrong CIDs, seqpacket, unknown op, no connection", () => {
  const { dev } = newVsock();
  const g = new VsockGuest(dev);
  g.d.add(1, [{ data: bytes(20) }]); // shorter than a header
  g.d.kick(1);
  g.send({ op: VSOCK_OP_RW, srcPort: 1, dstPort: 2, len: 100 }); // says 100, carries 0
  g.send({ op: VSOCK_OP_RW, srcPort: 1, dstPort: 2, len: 0xffff_ffff });
  g.send({ op: VSOCK_OP_REQUEST, srcPort: 1, dstPort: 2, srcCid: 9n });
  g.send({ op: VSOCK_OP_REQUEST, srcPort: 1, dstPort: 2, dstCid: 5n });
  g.send({ op: VSOCK_OP_REQUEST, srcPort: 1, dstPort: 2, type: VSOCK_TYPE_SEQPACKET });
  g.send({ op: 99, srcPort: 1, dstPort: 2 });
  g.send({ op: VSOCK_OP_RW, srcPort: 1, dstPort: 2 }, bytes(10));
  g.send({ op: VSOCK_OP_RST, srcPort: 1, dstPort: 2 }); // never answered
  const r = g.receive();
  assert.ok(r.every((p) => p.hdr.op === VSOCK_OP_RST));
  assert.equal(r.length, 5);
  assert.equal(dev.stats.badPackets, 6);
  assert.equal(dev.connectionCount, 0);
  assert.deepEqual(g.d.warnings, []);
});

test("snapshot: connections dropped, TRANSPORT_RESET sent on the event queue after restore; host connections wait until the driver handled it", async () => {
  const { g, backend, stream } = await connected();
  const state = await g.d.snapshot();
  const backend2 = new FakeVsockBackend();
  const dev2 = new VirtioVsock({ guestCid: GUEST_CID, backend: backend2 });
  const d2 = TestDriver.restored(dev2, g.d);
  d2.transport.restoreState(new StateReader(state, "vsock0"));
  d2.transport.resumeIo();
  dev2.poll();
  const ev = d2.used(2);
  assert.equal(ev.length, 1);
  assert.equal(d2.mem.readU32(d2.bufferAddr(2, ev[0].id, 0)), 0);
  assert.equal(dev2.connectionCount, 0);
  assert.ok(!stream.destroyed && backend.opened.length === 1, "the source's connections are its own");
  // Linux handles the event later, in a work item, closing the connections
  // it has then: a REQUEST sent before that would be one of them.
  d2.used(0);
  const c = backend2.connectToGuest(52);
  dev2.poll();
  assert.equal(d2.used(0).length, 0, "no REQUEST before the driver gave the event buffer back");
  d2.add(2, [{ writeLen: 4 }]);
  d2.kick(2);
  assert.equal(d2.used(0).length, 1, "the REQUEST once it did");
  assert.equal(dev2.connectionCount, 1);
  void c.result;
  // A CID that differs is refused.
  const dev3 = new VirtioVsock({ guestCid: 4, backend: new FakeVsockBackend() });
  const d3 = TestDriver.restored(dev3, g.d);
  assert.throws(() => d3.transport.restoreState(new StateReader(state, "vsock0")), /guest CID/);
});

test("too many connections: RST beyond MAX_CONNECTIONS; reset drops all", async () => {
  const { dev, backend } = newVsock();
  backend.listening.add(52);
  const g = new VsockGuest(dev, { rxBuffers: 60 });
  for (let i = 0; i < 300; i++) {
    g.send({ op: VSOCK_OP_REQUEST, srcPort: 2000 + i, dstPort: 52 });
    if (i % 50 === 49) {
      await tick();
      g.receive();
    }
  }
  await tick();
  g.receive();
  assert.equal(dev.connectionCount, 256);
  g.d.setReg(0x70, 0);
  assert.equal(dev.connectionCount, 0);
  assert.ok(backend.opened.every((o) => o.stream.destroyed));
});
