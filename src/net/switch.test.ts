// The virtual switch as its users see it: ports that record what the switch
// delivers to them, a hand-driven clock, and frames built with packet.ts.

import { test } from "node:test";
import assert from "node:assert/strict";
import { VirtualSwitch, type PortOptions, type SwitchOptions, type SwitchPort } from "./switch.js";
import {
  ARP_REQUEST, BROADCAST_MAC, ETHERTYPE_ARP, ETHERTYPE_IPV4, IPPROTO_UDP,
  addVlanTag, buildArp, buildEthernet, buildIpv4, buildUdp, macString, parseIpv4Address,
} from "./packet.js";
import { GSO_TCPV4, MAX_FRAME_BYTES, type FrameMeta } from "../backends/net/net-backend.js";
import { tcpFrame, payload, transportChecksumOk, ipv4HeaderOk } from "../devices/virtio/net-test-frames.js";

/** 52:54:00:00:<hi>:<lo>, a locally administered unicast MAC. */
function mac(n: number): Uint8Array {
  return new Uint8Array([0x52, 0x54, 0x00, 0x00, (n >> 8) & 0xff, n & 0xff]);
}

const EXPERIMENTAL = 0x88b5; // IEEE 802 local experimental EtherType

function frame(dst: Uint8Array, src: Uint8Array, payloadBytes = 46, type = EXPERIMENTAL): Uint8Array {
  return buildEthernet(dst, src, type, new Uint8Array(payloadBytes));
}

const ip = (text: string): number => parseIpv4Address(text)!;

function arpFrame(senderMac: Uint8Array, senderIp: string, targetIp: string): Uint8Array {
  const arp = buildArp({ op: ARP_REQUEST, senderMac, senderIp: ip(senderIp), targetMac: new Uint8Array(6), targetIp: ip(targetIp) });
  return buildEthernet(BROADCAST_MAC, senderMac, ETHERTYPE_ARP, arp);
}

function udpFrame(src: Uint8Array, fromIp: string, toIp: string, fromPort: number, toPort: number): Uint8Array {
  const udp = buildUdp(ip(fromIp), ip(toIp), fromPort, toPort, new Uint8Array(10));
  return buildEthernet(BROADCAST_MAC, src, ETHERTYPE_IPV4, buildIpv4(ip(fromIp), ip(toIp), IPPROTO_UDP, udp));
}

/** A switch on a clock the test moves, and ports that keep what they receive. */
class Bench {
  time = 0;
  readonly sw: VirtualSwitch;
  readonly received = new Map<SwitchPort, Uint8Array[]>();

  constructor(opts: SwitchOptions = {}) {
    this.sw = new VirtualSwitch("test", { now: () => this.time, ...opts });
  }

  port(name: string, opts: Omit<PortOptions, "name" | "deliver"> = {}): SwitchPort {
    const frames: Uint8Array[] = [];
    const port = this.sw.attach({ name, ...opts, deliver: (f) => void frames.push(f) });
    this.received.set(port, frames);
    return port;
  }

  /** Frames each port received since the last call, by port name (ports with none left out). */
  take(): Record<string, number> {
    const counts: Record<string, number> = {};
    for (const [port, frames] of this.received) {
      if (frames.length) counts[port.name] = frames.length;
      frames.length = 0;
    }
    return counts;
  }
}

test("switch: floods broadcast and unknown unicast, learns, then forwards unicast to one port", () => {
  const b = new Bench();
  const a = b.port("a");
  const c = b.port("c");
  b.port("d");
  assert.ok(a.input(frame(BROADCAST_MAC, mac(1))));
  assert.deepEqual(b.take(), { c: 1, d: 1 }, "flooded, never back to the sender");
  c.input(frame(mac(1), mac(3)));
  assert.deepEqual(b.take(), { a: 1 }, "mac 1 was learned on a");
  a.input(frame(mac(3), mac(1)));
  assert.deepEqual(b.take(), { c: 1 });
  a.input(frame(mac(99), mac(1)));
  assert.deepEqual(b.take(), { c: 1, d: 1 }, "unknown unicast is flooded");
  a.input(frame(new Uint8Array([0x01, 0x00, 0x5e, 0, 0, 1]), mac(1)));
  assert.deepEqual(b.take(), { c: 1, d: 1 }, "multicast is flooded");
  assert.deepEqual(
    b.sw.macTable.map((e) => [e.mac, e.port, e.static]),
    [[macString(mac(1)), "a", false], [macString(mac(3)), "c", false]],
  );
});

test("switch: a frame to a MAC learned on its own ingress port is dropped, not reflected", () => {
  const b = new Bench();
  const uplink = b.port("uplink"); // two stations behind one trusted port
  b.port("vm");
  uplink.input(frame(BROADCAST_MAC, mac(1)));
  uplink.input(frame(BROADCAST_MAC, mac(2)));
  b.take();
  assert.ok(uplink.input(frame(mac(2), mac(1))));
  assert.deepEqual(b.take(), {});
  assert.equal(uplink.counters.drops["own-port"], 1);
});

test("switch: entries age out after 300 s of silence; a station that moves is followed", () => {
  const b = new Bench();
  assert.equal(b.sw.agingMs, 300_000);
  const a = b.port("a");
  const c = b.port("c");
  b.port("d");
  a.input(frame(BROADCAST_MAC, mac(1)));
  b.time += 299_000;
  c.input(frame(mac(1), mac(3)));
  assert.deepEqual(b.take(), { c: 1, d: 1, a: 1 }, "still known at 299 s");
  b.time += 1000;
  c.input(frame(mac(1), mac(3)));
  assert.deepEqual(b.take(), { a: 1, d: 1 }, "forgotten at 300 s: flooded");
  assert.deepEqual(b.sw.macTable.map((e) => e.mac), [macString(mac(3))]);
  b.time += 10;
  assert.equal(b.sw.macTable[0].ageMs, 10);

  c.input(frame(BROADCAST_MAC, mac(7)));
  a.input(frame(BROADCAST_MAC, mac(7))); // mac 7 now sends from a
  b.take();
  b.port("e").input(frame(mac(7), mac(8)));
  assert.deepEqual(b.take(), { a: 1 });
});

test("switch: a flood of source MACs from one port stays within its share and evicts nobody else", () => {
  const b = new Bench({ macTableCapacity: 64, maxMacsPerPort: 16 });
  const flooder = b.port("flooder");
  const quiet = b.port("quiet");
  b.port("vm", { mac: mac(500) });
  quiet.input(frame(BROADCAST_MAC, mac(1)));
  quiet.input(frame(BROADCAST_MAC, mac(2)));
  for (let i = 0; i < 20_000; i++) {
    const src = new Uint8Array([0x02, (i >> 24) & 0xff, (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff, 0x77]);
    flooder.input(frame(BROADCAST_MAC, src));
    if (i % 1000 === 0) b.time += 1000;
  }
  assert.ok(b.sw.learnedMacs <= 18, `${b.sw.learnedMacs} learned`);
  b.take();
  flooder.input(frame(mac(1), mac(900)));
  flooder.input(frame(mac(500), mac(901)));
  assert.deepEqual(b.take(), { quiet: 1, vm: 1 }, "the quiet port's stations and the VM's MAC are still known");
  const table = b.sw.macTable;
  assert.equal(table.filter((e) => e.port === "flooder").length, 16);
  assert.deepEqual(table.filter((e) => e.port !== "flooder").map((e) => e.port).sort(), ["quiet", "quiet", "vm"]);

  // Several flooding ports together fill the table: the biggest holders give up entries, the quiet port keeps its own.
  const flooders = Array.from({ length: 6 }, (_, i) => b.port(`flooder${i}`));
  for (let i = 0; i < 10_000; i++) {
    const src = new Uint8Array([0x02, 0x10, (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff, i % 6]);
    flooders[i % 6].input(frame(BROADCAST_MAC, src));
  }
  assert.ok(b.sw.learnedMacs <= 64);
  assert.equal(b.sw.macTable.filter((e) => e.port === "quiet").length, 2);
});

test("switch: VLANs are separate segments; no frame of VLAN 10 reaches VLAN 20 or untagged ports", () => {
  const b = new Bench();
  const ports = [
    b.port("v10a", { vlan: 10, mac: mac(1) }), b.port("v10b", { vlan: 10, mac: mac(2) }),
    b.port("v20a", { vlan: 20, mac: mac(3) }), b.port("v20b", { vlan: 20, mac: mac(4) }),
    b.port("plain-a", { mac: mac(5) }), b.port("plain-b", { mac: mac(6) }),
    b.port("uplink10", { vlan: 10 }), b.port("uplink"),
  ];
  const destinations = [BROADCAST_MAC, new Uint8Array([0x33, 0x33, 0, 0, 0, 1]), mac(99), ...[1, 2, 3, 4, 5, 6].map(mac)];
  for (let round = 0; round < 2; round++) {
    for (const from of ports) {
      const src = from.mac ?? mac(from.vlan === 10 ? 7 : 8);
      for (const dst of destinations) {
        from.input(frame(dst, src));
        for (const [to, got] of b.received) {
          if (got.length) assert.equal(to.vlan, from.vlan, `${from.name} -> ${macString(dst)} reached ${to.name}`);
          got.length = 0;
        }
      }
    }
  }
  // The same MAC in two VLANs is two stations.
  const a = b.port("same-10", { vlan: 10 });
  const c = b.port("same-20", { vlan: 20 });
  a.input(frame(BROADCAST_MAC, mac(42)));
  c.input(frame(BROADCAST_MAC, mac(42)));
  assert.deepEqual(b.sw.macTable.filter((e) => e.mac === macString(mac(42))).map((e) => [e.port, e.vlan]).sort(), [["same-10", 10], ["same-20", 20]]);
  assert.throws(() => b.port("bad", { vlan: 4095 }), /VLAN ID 4095 is not in 1\.\.4094/);
});

test("switch: tagged frames are refused on every port, so a guest cannot hop VLANs", () => {
  const b = new Bench();
  const v10 = b.port("v10", { vlan: 10, mac: mac(1) });
  const plain = b.port("plain", { mac: mac(2) });
  const uplink = b.port("uplink");
  b.port("v20", { vlan: 20 });
  b.port("other10", { vlan: 10 });
  assert.equal(v10.input(addVlanTag(frame(BROADCAST_MAC, mac(1)), 20)), false);
  assert.equal(plain.input(addVlanTag(frame(BROADCAST_MAC, mac(2)), 20)), false);
  assert.equal(uplink.input(addVlanTag(addVlanTag(frame(BROADCAST_MAC, mac(3)), 20), 10)), false);
  const qinq = frame(BROADCAST_MAC, mac(3));
  qinq.set([0x88, 0xa8], 12);
  assert.equal(uplink.input(qinq), false);
  assert.deepEqual(b.take(), {});
  assert.equal(v10.counters.drops["vlan-tag"] + plain.counters.drops["vlan-tag"] + uplink.counters.drops["vlan-tag"], 4);
});

test("switch: a VM's port sends only from its MAC; after allowIp, ARP and IPv4 only from its address", () => {
  const b = new Bench();
  const vm = b.port("vm", { mac: mac(1) });
  b.port("nat");
  assert.equal(vm.input(frame(BROADCAST_MAC, mac(2))), false);
  assert.equal(vm.counters.drops["spoofed-mac"], 1);
  // ARP's sender hardware address is checked too (no poisoning others' caches).
  const lying = arpFrame(mac(2), "10.0.2.15", "10.0.2.2");
  lying.set(mac(1), 6);
  assert.equal(vm.input(lying), false);
  assert.equal(vm.counters.drops["spoofed-mac"], 2);
  assert.ok(vm.input(arpFrame(mac(1), "10.0.2.77", "10.0.2.2")), "no address given yet: any");

  vm.allowIp("10.0.2.15");
  assert.equal(vm.allowedIp, ip("10.0.2.15"));
  assert.equal(vm.input(arpFrame(mac(1), "10.0.2.77", "10.0.2.2")), false);
  assert.ok(vm.input(arpFrame(mac(1), "10.0.2.15", "10.0.2.2")));
  assert.ok(vm.input(arpFrame(mac(1), "0.0.0.0", "10.0.2.15")), "an ARP probe (RFC 5227)");
  assert.equal(vm.input(udpFrame(mac(1), "10.0.2.16", "10.0.2.2", 1000, 53)), false);
  assert.ok(vm.input(udpFrame(mac(1), "10.0.2.15", "10.0.2.2", 1000, 53)));
  assert.ok(vm.input(udpFrame(mac(1), "0.0.0.0", "255.255.255.255", 68, 67)), "DHCP from 0.0.0.0");
  assert.equal(vm.input(udpFrame(mac(1), "0.0.0.0", "255.255.255.255", 1000, 67)), false, "only DHCP");
  assert.equal(vm.counters.drops["spoofed-ip"], 3);
  assert.equal(vm.input(buildEthernet(BROADCAST_MAC, mac(1), ETHERTYPE_IPV4, new Uint8Array(10))), false);
  assert.equal(vm.input(buildEthernet(BROADCAST_MAC, mac(1), ETHERTYPE_ARP, new Uint8Array(27))), false);
  assert.equal(vm.counters.drops.malformed, 2);
  vm.allowIp(undefined);
  assert.ok(vm.input(udpFrame(mac(1), "10.0.2.16", "10.0.2.2", 1000, 53)));
  assert.throws(() => vm.allowIp("10.0.2"), /not an IPv4 address/);
  assert.throws(() => b.sw.ports[1].allowIp("10.0.2.2"), /uplink/);
});

test("switch: a VM's MAC is bound to its port: nobody else can take its traffic, nor attach with it", () => {
  const b = new Bench();
  b.port("vm", { mac: mac(1) });
  const uplink = b.port("uplink");
  const other = b.port("other");
  uplink.input(frame(BROADCAST_MAC, mac(1))); // a station elsewhere claims the VM's MAC
  b.take();
  other.input(frame(mac(1), mac(3)));
  assert.deepEqual(b.take(), { vm: 1 });
  assert.throws(() => b.port("twin", { mac: mac(1) }), /already port vm's/);
  assert.throws(() => b.port("vm"), /already has a port named vm/);
  assert.throws(() => b.port("multicast", { mac: new Uint8Array([1, 0, 0, 0, 0, 1]) }), /unicast/);
});

test("switch: per-port token buckets police both directions", () => {
  const b = new Bench();
  const limited = b.port("limited", { rateLimit: { ingress: { ops: { size: 5, refillTimeMs: 1000 } } } });
  const slowReader = b.port("slow", { rateLimit: { egress: { bandwidth: { size: 1000, refillTimeMs: 1000 } } } });
  for (let i = 0; i < 10; i++) limited.input(frame(BROADCAST_MAC, mac(1), 186)); // 200-byte frames
  assert.equal(limited.counters.inFrames, 5);
  assert.equal(limited.counters.drops["rate-limit-in"], 5);
  assert.deepEqual(b.take(), { slow: 5 }, "1000 bytes: five 200-byte frames");
  b.time += 1000;
  for (let i = 0; i < 10; i++) limited.input(frame(BROADCAST_MAC, mac(1), 386)); // 400 bytes
  assert.equal(limited.counters.inFrames, 10, "five more ops after the refill");
  assert.deepEqual(b.take(), { slow: 2 }, "1000 bytes: two 400-byte frames");
  assert.equal(slowReader.counters.drops["rate-limit-out"], 3);
  assert.equal(slowReader.counters.outBytes, 1800);
});

test("switch: counters count frames and bytes both ways, and drops by reason", () => {
  const b = new Bench();
  const a = b.port("a", { mac: mac(1) });
  const c = b.port("c", { mac: mac(2) });
  a.input(frame(BROADCAST_MAC, mac(1), 100));
  c.input(frame(mac(1), mac(2), 50));
  a.input(frame(BROADCAST_MAC, mac(9)));
  assert.deepEqual({ ...a.counters, drops: undefined }, { inFrames: 1, inBytes: 114, outFrames: 1, outBytes: 64, drops: undefined });
  assert.equal(c.counters.outBytes, 114);
  assert.equal(a.counters.drops["spoofed-mac"], 1);
  assert.equal(a.describeCounters(), "a: in 1 frames 114 bytes, out 1 frames 64 bytes, dropped spoofed-mac=1");
  assert.doesNotThrow(() => JSON.stringify(b.sw.ports.map((p) => [p.name, p.counters])));
});

test("switch: runt, oversized, bad source and reserved link-local frames are dropped and counted", () => {
  const b = new Bench();
  const a = b.port("a");
  const busy = b.sw.attach({ name: "busy", deliver: () => false });
  for (const bad of [new Uint8Array(0), new Uint8Array(13)]) assert.equal(a.input(bad), false);
  assert.equal(a.input(frame(BROADCAST_MAC, mac(1), MAX_FRAME_BYTES)), false);
  assert.equal(a.input(frame(BROADCAST_MAC, BROADCAST_MAC)), false);
  assert.equal(a.input(frame(BROADCAST_MAC, new Uint8Array(6))), false);
  const pause = frame(new Uint8Array([0x01, 0x80, 0xc2, 0, 0, 0x01]), mac(1), 46, 0x8808);
  assert.equal(a.input(pause), false);
  const d = a.counters.drops;
  assert.deepEqual([d.runt, d.oversized, d["invalid-source"], d["link-local"]], [2, 1, 2, 1]);
  assert.ok(a.input(frame(BROADCAST_MAC, mac(1), 0)), "a 14-byte frame is short but readable");
  assert.equal(busy.counters.drops["port-busy"], 1);
});

test("switch: a detached port's entries go with it", () => {
  const b = new Bench();
  const a = b.port("a", { mac: mac(1) });
  const up = b.port("up");
  up.input(frame(BROADCAST_MAC, mac(2)));
  a.detach();
  a.detach();
  assert.equal(a.input(frame(BROADCAST_MAC, mac(1))), false);
  assert.deepEqual(b.sw.macTable.map((e) => e.port), ["up"]);
  up.detach();
  assert.deepEqual(b.sw.macTable, []);
  assert.equal(b.sw.ports.length, 0);
  b.port("a", { mac: mac(1) }); // the name and the MAC are free again
});

/** mulberry32: a small seeded PRNG, so a failing fuzz run can be repeated. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test("switch: seeded fuzz: random frames never throw, never cross VLANs, never grow the table past its bounds", () => {
  const seed = 13;
  const random = prng(seed);
  const int = (n: number): number => Math.floor(random() * n);
  const b = new Bench({ macTableCapacity: 128, maxMacsPerPort: 32, agingMs: 5000 });
  const ports = [
    b.port("vm1", { mac: mac(1) }), b.port("vm2", { mac: mac(2), vlan: 10 }), b.port("vm3", { mac: mac(3), vlan: 10 }),
    b.port("vm4", { mac: mac(4), vlan: 20 }), b.port("uplink"), b.port("uplink10", { vlan: 10 }),
    b.port("limited", { rateLimit: { ingress: { bandwidth: { size: 5000, refillTimeMs: 100 } } } }),
  ];
  ports[0].allowIp("10.0.2.15");
  const types = [0x0800, 0x0806, 0x8100, 0x88a8, 0x86dd, 0x88b5, int(0x10000)];
  const pool = [...[1, 2, 3, 4, 5, 6].map(mac), BROADCAST_MAC, new Uint8Array([0x01, 0x80, 0xc2, 0, 0, 0])];
  const someMac = (): Uint8Array => (random() < 0.5 ? pool[int(pool.length)] : Uint8Array.from({ length: 6 }, () => int(256)));
  for (let i = 0; i < 30_000; i++) {
    const length = random() < 0.05 ? int(20) : random() < 0.01 ? MAX_FRAME_BYTES + int(3) - 1 : 14 + int(120);
    const f = Uint8Array.from({ length: Math.min(length, 200) }, () => int(256));
    const bytes = length > 200 ? new Uint8Array(length) : f;
    if (length > 200) bytes.set(f);
    if (bytes.length >= 14) {
      bytes.set(someMac(), 0);
      const from = ports[int(ports.length)];
      bytes.set(from.mac && random() < 0.7 ? from.mac : someMac(), 6);
      const type = types[int(types.length)];
      bytes[12] = type >> 8;
      bytes[13] = type & 0xff;
      if (type === 0x0806 && bytes.length >= 42) bytes.set(buildArp({ op: 1, senderMac: bytes.subarray(6, 12), senderIp: random() < 0.5 ? ip("10.0.2.15") : int(2 ** 32), targetMac: new Uint8Array(6), targetIp: 0 }), 14);
      if (type === 0x0800 && bytes.length >= 34) bytes[14] = 0x45;
    }
    const from = ports[int(ports.length)];
    assert.doesNotThrow(() => from.input(bytes), `seed ${seed}, frame ${i}`);
    for (const [to, got] of b.received) {
      if (got.length) assert.equal(to.vlan, from.vlan, `seed ${seed}, frame ${i}: ${from.name} reached ${to.name}`);
      for (const g of got) assert.ok(g.length >= 14 && g.length <= MAX_FRAME_BYTES && !(g[12] === 0x81 && g[13] === 0));
      got.length = 0;
    }
    assert.ok(b.sw.learnedMacs <= 128);
    if (random() < 0.01) b.time += int(3000);
  }
  for (const p of ports) assert.ok(b.sw.macTable.filter((e) => e.port === p.name && !e.static).length <= 32);
  assert.ok(ports[0].counters.drops["spoofed-ip"] > 0 && ports[6].counters.drops["rate-limit-in"] > 0);
});

test("switch backend: two virtio-net cards on a named switch exchange frames; refusals are counted on both sides", async () => {
  const { getOrCreateSwitch, openSwitchPort, releaseSwitch, switches } = await import("./switch-backend.js");
  const { NetBackendError } = await import("../backends/net/net-backend.js");
  const sw = getOrCreateSwitch(`test-${process.pid}`, { agingMs: 1000 });
  assert.equal(getOrCreateSwitch(sw.name), sw, "created on first use, then shared");
  assert.equal(switches.get(sw.name), sw);
  const vm1 = openSwitchPort(sw, { name: "vm1", mac: mac(1) });
  const vm2 = openSwitchPort(sw, { name: "vm2", mac: mac(2), vlan: undefined });
  assert.equal(vm1.description, `switch:${sw.name}:vm1`);
  const at2: Uint8Array[] = [];
  vm2.onFrame = (f) => void at2.push(f);
  const sent = frame(mac(2), mac(1), 100);
  vm1.send(sent);
  sent.fill(0); // the switch copied it
  assert.deepEqual(at2.map((f) => f.length), [114]);
  assert.equal(at2[0][11], 1);
  vm1.send(frame(mac(2), mac(3))); // not vm1's MAC
  assert.deepEqual([vm1.stats.txFrames, vm1.stats.txDropped, vm1.port.counters.drops["spoofed-mac"]], [1, 1, 1]);
  vm2.setRxPaused(true);
  vm1.send(frame(mac(2), mac(1)));
  assert.deepEqual([at2.length, vm2.stats.rxDropped, vm2.port.counters.drops["port-busy"]], [1, 1, 1]);
  vm2.setRxPaused(false);
  vm1.send(frame(BROADCAST_MAC, mac(1)));
  assert.equal(at2.length, 2);
  assert.equal(vm2.stats.rxFrames, 2);
  assert.throws(() => openSwitchPort(sw, { name: "vm1", mac: mac(9) }), (e: Error) => e instanceof NetBackendError && /vm1: switch .* already has a port named vm1$/.test(e.message));
  assert.throws(() => openSwitchPort(sw, { name: "vm3", mac: mac(2) }), /MAC 52:54:00:00:00:02 is already port vm2's/);
  assert.equal(releaseSwitch(sw.name), false, "ports remain");
  vm1.close();
  vm2.close();
  vm2.close();
  assert.equal(sw.ports.length, 0);
  assert.ok(releaseSwitch(sw.name));
  assert.equal(switches.get(sw.name), undefined);
});

test("switch: a frame given as a Node Buffer is copied, not viewed (Buffer.slice would share memory)", () => {
  const b = new Bench();
  const a = b.port("a");
  const received: Uint8Array[] = [];
  b.sw.attach({ name: "keeper", deliver: (f) => void received.push(f) });
  const buffer = Buffer.from(frame(BROADCAST_MAC, mac(1)));
  a.input(buffer);
  buffer.fill(0);
  assert.equal(received[0][0], 0xff);
});

test("super-frames cross whole between cards that take them; a port without offloads gets them cut, with checksums made", () => {
  const sw = new VirtualSwitch("gso");
  const all = { csum: true, tso4: true, tso6: true };
  const toB: [Uint8Array, FrameMeta | undefined][] = [];
  const toUplink: Uint8Array[] = [];
  const a = sw.attach({ name: "a", mac: mac(1), offloads: all, deliver: () => {} });
  sw.attach({ name: "b", mac: mac(2), offloads: all, deliver: (f, m) => void toB.push([f, m]) });
  const uplink = sw.attach({ name: "uplink", deliver: (f, m) => void toUplink.push(m ? new Uint8Array(0) : f) });
  // 20,000 bytes of TCP as the guest hands them to its card: one frame, the checksum left partial.
  const sup = tcpFrame({ payload: payload(20_000, 3), partial: true });
  const meta: FrameMeta = { gsoType: GSO_TCPV4, gsoSize: 1448, needsCsum: true, csumStart: 34, csumOffset: 16 };
  assert.equal(a.input(sup, meta), true); // to b, a card: whole
  assert.equal(toB.length, 1);
  assert.deepEqual(toB[0][1], meta);
  assert.equal(toB[0][0].length, sup.length);
  assert.equal(toUplink.length, 0);
  const unknown = Uint8Array.from(sup);
  unknown.set(mac(9), 0); // a destination nobody has: flooded, whole to b, cut for the uplink
  assert.equal(a.input(unknown, meta), true);
  assert.equal(toB.length, 2);
  assert.equal(toUplink.length, Math.ceil(20_000 / 1448));
  for (const f of toUplink) assert.ok(f.length <= 14 + 20 + 20 + 1448 && transportChecksumOk(f) && ipv4HeaderOk(f));
  assert.equal(uplink.counters.outFrames, toUplink.length);
  // A port may not send what it does not say it takes.
  assert.equal(uplink.input(sup, meta), false);
  assert.equal(uplink.counters.drops.malformed, 1);
});
