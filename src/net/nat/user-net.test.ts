// The user-mode network at the frame level, with the test playing the guest's
// card: ARP for the gateway, ping, DHCP, UDP to a server on the host's
// loopback (as 10.0.2.2), a port forward whose port is taken, and a seeded
// fuzz of random frames. Linux's own stack talks to it in
// src/net/nat/user-net-guest.test.ts.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createSocket } from "node:dgram";
import { createServer, type AddressInfo } from "node:net";
import {
  ARP_REPLY, ARP_REQUEST, BROADCAST_MAC, ETHERTYPE_ARP, ETHERTYPE_IPV4, IPPROTO_ICMP, IPPROTO_UDP,
  buildArp, buildEthernet, buildIpv4, buildUdp, internetChecksum, ipv4String, parseArp, parseEthernet, parseIpv4, parseUdp,
} from "../packet.js";
import { UserNet, UserNetError, defaultUserNetConfig } from "./user-net.js";

const GUEST_MAC = Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56);
const GUEST_IP = 0x0a00020f;
const GATEWAY = 0x0a000202;

/** The guest's side of the wire: what it sends, and the frames the NAT sends back. */
class Wire {
  readonly received: Uint8Array[] = [];
  private waiters: (() => void)[] = [];
  constructor(readonly net: UserNet) {
    net.onFrame = (f) => {
      this.received.push(f);
      for (const w of this.waiters.splice(0)) w();
    };
  }
  send(frame: Uint8Array): void {
    this.net.input(frame);
  }
  sendIp(dst: number, protocol: number, payload: Uint8Array, dstMac = this.net.mac): void {
    this.send(buildEthernet(dstMac, GUEST_MAC, ETHERTYPE_IPV4, buildIpv4(GUEST_IP, dst, protocol, payload)));
  }
  async next<T>(pick: (f: Uint8Array) => T | undefined, timeoutMs = 5000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const [i, f] of this.received.entries()) {
        const v = pick(f);
        if (v !== undefined) {
          this.received.splice(i, 1);
          return v;
        }
      }
      if (Date.now() > deadline) throw new Error("no matching frame");
      await new Promise<void>((r) => {
        const t = setTimeout(r, deadline - Date.now());
        this.waiters.push(() => (clearTimeout(t), r()));
      });
    }
  }
}

function ipOf(f: Uint8Array) {
  const eth = parseEthernet(f);
  if (!eth || eth.type !== ETHERTYPE_IPV4) return undefined;
  const ip = parseIpv4(f.subarray(eth.payloadOffset));
  return typeof ip === "string" ? undefined : ip;
}

test("user net: answers ARP for the gateway and DNS addresses, and ping to them", async () => {
  const net = await UserNet.open(defaultUserNetConfig());
  try {
    const wire = new Wire(net);
    for (const target of [0x0a000202, 0x0a000203]) {
      wire.send(buildEthernet(BROADCAST_MAC, GUEST_MAC, ETHERTYPE_ARP,
        buildArp({ op: ARP_REQUEST, senderMac: GUEST_MAC, senderIp: GUEST_IP, targetMac: new Uint8Array(6), targetIp: target })));
      const reply = await wire.next((f) => (parseEthernet(f)?.type === ETHERTYPE_ARP ? parseArp(f.subarray(14)) : undefined));
      assert.equal(reply.op, ARP_REPLY);
      assert.equal(ipv4String(reply.senderIp), ipv4String(target));
      assert.deepEqual(reply.senderMac, net.mac);
    }
    const echo = Uint8Array.from([8, 0, 0, 0, 0x12, 0x34, 0, 1, ...Buffer.from("tsvisor ping")]);
    const sum = internetChecksum(echo);
    echo[2] = sum >> 8;
    echo[3] = sum & 0xff;
    wire.sendIp(GATEWAY, IPPROTO_ICMP, echo);
    const reply = await wire.next((f) => { const ip = ipOf(f); return ip?.protocol === IPPROTO_ICMP ? ip : undefined; });
    assert.equal(reply.payload[0], 0, "echo reply");
    assert.equal(Buffer.from(reply.payload.subarray(8)).toString(), "tsvisor ping");
    assert.equal(internetChecksum(reply.payload), 0);
    // Anyone else is not pinged from here: counted.
    wire.sendIp(0x01020304, IPPROTO_ICMP, echo);
    assert.equal(net.stats.drops["icmp-not-forwarded"], 1);
  } finally {
    net.close();
  }
});

test("user net: UDP to 10.0.2.2 reaches a server on the host's loopback, and its answer comes back", async () => {
  const server = createSocket("udp4");
  await new Promise<void>((r) => server.bind(0, "127.0.0.1", r));
  server.on("message", (m, from) => server.send(Buffer.concat([Buffer.from("echo:"), m]), from.port, from.address));
  const port = (server.address() as AddressInfo).port;
  const net = await UserNet.open(defaultUserNetConfig());
  try {
    const wire = new Wire(net);
    wire.sendIp(GATEWAY, IPPROTO_UDP, buildUdp(GUEST_IP, GATEWAY, 40000, port, Buffer.from("hello")));
    const answer = await wire.next((f) => {
      const ip = ipOf(f);
      if (ip?.protocol !== IPPROTO_UDP) return undefined;
      const udp = parseUdp(ip.src, ip.dst, ip.payload);
      return typeof udp === "string" ? undefined : { ip, udp };
    });
    assert.equal(ipv4String(answer.ip.src), "10.0.2.2");
    assert.equal(answer.udp.srcPort, port);
    assert.equal(answer.udp.dstPort, 40000);
    assert.equal(Buffer.from(answer.udp.payload).toString(), "echo:hello");
  } finally {
    net.close();
    server.close();
  }
});

test("user net: a port forward to a port in use is refused with one line", async () => {
  const taken = createServer();
  await new Promise<void>((r) => taken.listen(0, "127.0.0.1", r));
  const port = (taken.address() as AddressInfo).port;
  const config = defaultUserNetConfig();
  config.hostForwards = [{ protocol: "tcp", hostAddress: "127.0.0.1", hostPort: port, guestAddress: undefined, guestPort: 80 }];
  try {
    await assert.rejects(UserNet.open(config), (e: unknown) => e instanceof UserNetError && /port is in use/.test(e.message) && !e.message.includes("\n"));
  } finally {
    taken.close();
  }
});

test("user net: destinations that lead nowhere are dropped, not sent to the host", async () => {
  const net = await UserNet.open(defaultUserNetConfig());
  try {
    const wire = new Wire(net);
    const udp = (dst: number) => wire.sendIp(dst, IPPROTO_UDP, buildUdp(GUEST_IP, dst, 1000, 9, new Uint8Array(4)));
    udp(0x7f000001); // the guest's own loopback
    udp(0x0a000210); // another address in the virtual subnet
    udp(0xe0000001); // multicast
    assert.equal(net.udp.stats.flowsOpened, 0);
    assert.equal(net.udp.stats.dropped, 3);
  } finally {
    net.close();
  }
});

test("user net: seeded random and truncated frames are dropped and counted, never thrown", async () => {
  const net = await UserNet.open(defaultUserNetConfig());
  try {
    let seed = 0x5eed;
    const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 16) / 65536;
    const valid = buildEthernet(net.mac, GUEST_MAC, ETHERTYPE_IPV4, buildIpv4(GUEST_IP, GATEWAY, IPPROTO_UDP, buildUdp(GUEST_IP, GATEWAY, 68, 67, new Uint8Array(300))));
    for (let i = 0; i < 20_000; i++) {
      let frame: Uint8Array;
      if (i % 2 === 0) {
        frame = Uint8Array.from({ length: Math.floor(rand() * 200) }, () => Math.floor(rand() * 256));
        if (frame.length >= 14 && rand() < 0.5) frame.set(net.mac, 0);
        if (frame.length >= 14 && rand() < 0.7) frame.set(rand() < 0.5 ? [8, 0] : [8, 6], 12);
      } else {
        // A valid frame with a few bytes flipped or cut short.
        frame = valid.slice(0, Math.floor(rand() * valid.length) + 1);
        for (let k = 0; k < 3; k++) frame[Math.floor(rand() * frame.length)] = Math.floor(rand() * 256);
      }
      net.input(frame);
    }
    const dropped = Object.values(net.stats.drops).reduce((a, b) => a + (b ?? 0), 0);
    assert.ok(dropped > 10_000, `most random frames are dropped and counted (${dropped})`);
    assert.equal(net.udp.stats.flows <= 1024, true);
  } finally {
    net.close();
  }
});
