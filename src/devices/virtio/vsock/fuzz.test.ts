// Seeded fuzz of virtio-vsock: a hostile guest sends random, half-valid and
// malformed packets (bad lengths, unknown ops and types, wrong CIDs, floods
// of REQUESTs and RWs past credit, chains that split headers oddly), posts
// odd rx buffers, while the host side connects, floods, stalls and closes.
// Nothing may throw, the device never asks for a reset, and what it holds
// stays within its bounds.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Rand } from "../fuzz-harness.js";
import { CONN_BUF_ALLOC, HOST_INPUT_HIGH } from "./connection.js";
import { MAX_CONNECTIONS, MAX_PENDING_RSTS } from "./device.js";
import { encodeHeader, VSOCK_HDR_SIZE, VSOCK_MAX_PAYLOAD } from "./packet.js";
import { STATUS_DEVICE_NEEDS_RESET } from "../virtio.js";
import { VsockGuest, newVsock, GUEST_CID, TX, type FakeHostStream } from "./testing.js";

const SEEDS = [1, 2, 3, 4, 5, 6, 7, 8];
const STEPS = 1500;

for (const seed of SEEDS) {
  test(`virtio-vsock fuzz, seed ${seed}: no throw, no reset, bounded memory`, async () => {
    const r = new Rand(seed);
    const { dev, backend } = newVsock();
    for (const p of [52, 53, 1024]) backend.listening.add(p);
    const g = new VsockGuest(dev, { rxBuffers: 24, rxBufSize: r.pick([60, 4140, 65580]) });
    const hostStreams: FakeHostStream[] = [];
    const ports = [52, 53, 1024, 7, 0, 0xffff_ffff];
    const guestPorts = [1000, 1001, 1002, 2000];
    const hostPortsSeen = new Set<number>();
    let maxHeld = 0;
    for (let step = 0; step < STEPS; step++) {
      const what = r.weighted<string>([
        [40, "valid"], [10, "garbage"], [8, "badlen"], [6, "rxjunk"], [8, "hostdata"], [3, "hostend"], [3, "hostclose"],
        [4, "hostconnect"], [4, "flush"], [2, "stall"], [15, "receive"], [2, "tick"],
      ]);
      switch (what) {
        case "valid": {
          const hostPort = r.chance(0.3) && hostPortsSeen.size ? r.pick([...hostPortsSeen]) : r.pick(ports);
          const len = r.chance(0.3) ? 0 : r.pick([1, 100, 4096, 65536, 70000]);
          const payload = r.bytes(Math.min(len, 70000));
          g.send({
            op: r.weighted([[15, 1], [5, 2], [40, 5], [15, 6], [5, 7], [4, 4], [3, 3], [3, r.range(0, 9)]]), srcPort: r.pick(guestPorts), dstPort: hostPort, flags: r.int(4),
            bufAlloc: r.pick([0, 1, 4096, 256 << 10, 0xffff_ffff]), fwdCnt: r.u32(), type: r.chance(0.97) ? 1 : r.int(4),
            srcCid: r.chance(0.95) ? BigInt(GUEST_CID) : r.u64(), dstCid: r.chance(0.95) ? 2n : r.u64(),
          }, payload);
          break;
        }
        case "garbage": {
          const n = r.pick([0, 1, 43, 44, 45, 200]);
          g.d.add(TX, r.chance(0.5) ? [{ data: r.bytes(n) }] : [{ data: r.bytes(n) }, { writeLen: 16 }]);
          g.d.kick(TX);
          g.d.used(TX);
          break;
        }
        case "badlen": {
          const hdr = encodeHeader({
            srcCid: BigInt(GUEST_CID), dstCid: 2n, srcPort: r.pick(guestPorts), dstPort: r.pick(ports), len: r.pick([1, 100, VSOCK_MAX_PAYLOAD + 1, 0xffff_ffff]),
            type: 1, op: 5, flags: 0, bufAlloc: 4096, fwdCnt: 0,
          });
          // The header split across descriptors, and less payload than it says.
          const cut = r.range(1, VSOCK_HDR_SIZE - 1);
          g.d.add(TX, [{ data: hdr.subarray(0, cut) }, { data: hdr.subarray(cut) }, { data: r.bytes(r.int(50)) }]);
          g.d.kick(TX);
          g.d.used(TX);
          break;
        }
        case "rxjunk":
          g.postRxBuffer(r.pick([0, 1, 43, 44, 45]));
          break;
        case "hostdata": {
          const s = r.chance(0.5) && backend.opened.length ? r.pick(backend.opened).stream : hostStreams.length ? r.pick(hostStreams) : undefined;
          s?.sink?.data(r.bytes(r.pick([1, 1000, 65536, 200000])));
          break;
        }
        case "hostend": {
          const s = backend.opened.length ? r.pick(backend.opened).stream : undefined;
          s?.sink?.end();
          break;
        }
        case "hostclose": {
          const s = backend.opened.length ? r.pick(backend.opened).stream : undefined;
          s?.sink?.closed();
          break;
        }
        case "hostconnect": {
          const c = backend.connectToGuest(r.pick(guestPorts));
          hostStreams.push(c.stream);
          break;
        }
        case "flush":
          for (const o of backend.opened) o.stream.flushAll();
          break;
        case "stall": {
          const s = backend.opened.length ? r.pick(backend.opened).stream : undefined;
          if (s) s.autoFlush = !s.autoFlush;
          break;
        }
        case "receive":
          for (const p of g.receive()) if (p.hdr.op === 1) hostPortsSeen.add(p.hdr.srcPort);
          break;
        case "tick":
          await new Promise((res) => setImmediate(res));
          break;
      }
      maxHeld = Math.max(maxHeld, dev.heldBytes);
      assert.ok(dev.connectionCount <= MAX_CONNECTIONS);
      assert.equal(g.d.status & STATUS_DEVICE_NEEDS_RESET, 0, `step ${step}: ${g.d.warnings.join("; ")}`);
    }
    const bound = MAX_CONNECTIONS * (CONN_BUF_ALLOC + HOST_INPUT_HIGH + 200000) + MAX_PENDING_RSTS * VSOCK_HDR_SIZE;
    assert.ok(maxHeld <= bound, `held ${maxHeld}`);
    // Every connection's held bytes stay within its own bound too.
    for (const o of backend.opened) assert.ok(o.stream.unflushedCount <= CONN_BUF_ALLOC);
    assert.deepEqual(g.d.warnings, []);
    // The walk reached the interesting states: connections made, data both ways, RSTs.
    assert.ok(dev.stats.connectionsOpened > 0 && dev.stats.bytesToHost + dev.stats.bytesToGuest > 0 && dev.stats.rstsSent > 0, JSON.stringify(dev.stats));
    totals.toHost += dev.stats.bytesToHost;
    totals.toGuest += dev.stats.bytesToGuest;
    await dev.close();
  });
}

const totals = { toHost: 0, toGuest: 0 };
test("virtio-vsock fuzz: the seeds together moved data both ways", () => {
  assert.ok(totals.toHost > 0 && totals.toGuest > 0, JSON.stringify(totals));
});

test("virtio-vsock: hostile chains (outside RAM, loops, wrong directions) fail alone; the device goes on", async () => {
  const { dev, backend } = newVsock();
  backend.listening.add(52);
  const g = new VsockGuest(dev, { rxBuffers: 8 });
  const r = new Rand(99);
  const tx = g.d.queueLayout(TX);
  const hdr = encodeHeader({ srcCid: BigInt(GUEST_CID), dstCid: 2n, srcPort: 7, dstPort: 99, len: 0, type: 1, op: 5, flags: 0, bufAlloc: 4096, fwdCnt: 0 });
  for (let n = 0; n < 300; n++) {
    if (r.chance(0.5)) {
      // tx: the device takes each chain at the kick, so raw descriptors are safe to reuse.
      const i = r.int(tx.size);
      const inRam = g.d.alloc(64);
      g.d.mem.write(inRam, hdr);
      const kind = r.int(5);
      if (kind === 0) g.d.writeDesc(tx.desc, i, 0x1_0000_0000n + BigInt(r.int(1 << 20)), 64, 0, 0); // outside RAM
      else if (kind === 1) g.d.writeDesc(tx.desc, i, inRam, 64, 1, i); // a loop
      else if (kind === 2) g.d.writeDesc(tx.desc, i, inRam, 64, 2, 0); // device-writable only
      else if (kind === 3) g.d.writeDesc(tx.desc, i, inRam, 0, 0, 0); // empty
      else g.d.writeDesc(tx.desc, i, inRam, 0xffff_ffff, 0, 0); // 4 GiB
      g.d.publish(TX, i);
      g.d.kick(TX);
      g.d.used(TX);
    } else {
      // rx: a buffer the device cannot write a packet into, then a packet owed (an RST).
      g.postRxBuffer(r.chance(0.5) ? [{ data: new Uint8Array(64) }] : r.int(44));
      g.send({ op: 5, srcPort: 7, dstPort: 99 }, new Uint8Array(1));
      g.receive();
    }
    assert.equal(g.d.status & STATUS_DEVICE_NEEDS_RESET, 0, `step ${n}: ${g.d.warnings.join("; ")}`);
  }
  // Still serving: a connection request answered.
  g.send({ op: 1, srcPort: 4242, dstPort: 52 });
  await new Promise((res) => setImmediate(res));
  const ps = [...g.receive(), ...g.receive()];
  assert.ok(ps.some((p) => p.hdr.op === 2 && p.hdr.dstPort === 4242), JSON.stringify(ps.map((p) => p.hdr.op)));
  assert.ok(dev.stats.badPackets > 50);
  await dev.close();
});
