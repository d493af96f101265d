// VXLAN uplinks: three tsvisor switches joined over loopback (127.0.0.1, .2,
// .3 are three VTEPs), then interoperability with Linux's own vxlan device in
// a network namespace the test creates and removes (root only; skipped with a
// message elsewhere). All traffic stays on loopback or inside that namespace's
// veth pair.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createSocket } from "node:dgram";
import type { AddressInfo } from "node:net";
import { VirtualSwitch, type SwitchPort } from "./switch.js";
import { openVxlanUplink, VXLAN_HLEN, type VxlanUplink } from "./vxlan.js";
import { NetBackendError } from "../backends/net/net-backend.js";
import {
  ARP_REPLY, ARP_REQUEST, BROADCAST_MAC, ETH_HLEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, IPPROTO_ICMP, IPPROTO_UDP,
  buildArp, buildEthernet, buildIpv4, buildUdp, internetChecksum, ipv4String, macString, parseArp,
  parseEthernet, parseIpv4, parseIpv4Address,
} from "./packet.js";
import { waitFor } from "../backends/net/testing.js";
import { commandWorks, openVxlanLab } from "./testing/vxlan-lab.js";

function mac(n: number): Uint8Array {
  return new Uint8Array([0x52, 0x54, 0x00, 0x00, 0x00, n]);
}

function frame(dst: Uint8Array, src: Uint8Array, tag: number): Uint8Array {
  const payload = new Uint8Array(46);
  payload[0] = tag;
  return buildEthernet(dst, src, 0x88b5, payload);
}

/** A UDP port that was free on `host` a moment ago. */
async function freeUdpPort(host: string): Promise<number> {
  const s = createSocket("udp4");
  await new Promise<void>((ok) => s.bind(0, host, ok));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((ok) => s.close(() => ok()));
  return port;
}

/** A switch with one VM-like port that records what reaches it. */
function hostWithVm(name: string, vmMac: Uint8Array): { sw: VirtualSwitch; vm: SwitchPort; got: Uint8Array[] } {
  const sw = new VirtualSwitch(name);
  const got: Uint8Array[] = [];
  const vm = sw.attach({ name: "vm", mac: vmMac, deliver: (f) => void got.push(f) });
  return { sw, vm, got };
}

async function sendDatagram(from: string, to: { host: string; port: number }, bytes: Uint8Array): Promise<void> {
  const s = createSocket("udp4");
  await new Promise<void>((ok) => s.bind(0, from, ok));
  await new Promise((ok) => s.send(bytes, to.port, to.host, ok));
  s.close();
}

function vxlanDatagram(vni: number, inner: Uint8Array, flags = 0x08): Uint8Array {
  const d = new Uint8Array(VXLAN_HLEN + inner.length);
  d[0] = flags;
  d[4] = (vni >> 16) & 0xff;
  d[5] = (vni >> 8) & 0xff;
  d[6] = vni & 0xff;
  d.set(inner, VXLAN_HLEN);
  return d;
}

test("vxlan: three hosts on one VNI: flooding by head-end replication, then unicast to the remote that has the MAC", async () => {
  const addrs = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
  const ports = await Promise.all(addrs.map(freeUdpPort));
  const hosts = addrs.map((_, i) => hostWithVm(`h${i}`, mac(i + 1)));
  const uplinks: VxlanUplink[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      const remotes = addrs.map((host, j) => ({ host, port: ports[j] })).filter((_, j) => j !== i);
      uplinks.push(await openVxlanUplink(hosts[i].sw, { vni: 5001, local: { host: addrs[i], port: ports[i] }, remotes }));
    }
    assert.equal(uplinks[0].description, `vxlan:5001@127.0.0.1:${ports[0]}`);
    hosts[0].vm.input(frame(BROADCAST_MAC, mac(1), 1));
    await waitFor("the broadcast on both remotes", () => hosts[1].got.length === 1 && hosts[2].got.length === 1);
    assert.equal(uplinks[0].counters.outDatagrams, 2, "one copy per remote");

    hosts[2].vm.input(frame(mac(1), mac(3), 2)); // host 2 learned mac 1 from the broadcast: unicast to host 0
    await waitFor("the reply on host 0", () => hosts[0].got.length === 1);
    assert.equal(uplinks[2].counters.outDatagrams, 1);
    assert.deepEqual(uplinks[0].learnedMacs.map((e) => [e.mac, e.remote]), [[macString(mac(3)), `127.0.0.3:${ports[2]}`]]);
    assert.deepEqual(hosts[0].sw.macTable.find((e) => e.mac === macString(mac(3)))?.port, "vxlan5001");

    hosts[0].vm.input(frame(mac(3), mac(1), 3));
    await waitFor("the unicast on host 2", () => hosts[2].got.length === 2);
    assert.equal(uplinks[0].counters.outDatagrams, 3, "not flooded: one datagram");
    assert.equal(hosts[1].got.length, 1);
  } finally {
    for (const u of uplinks) u.close();
  }
});

test("vxlan: wrong VNI, clear I flag, short datagrams and strangers are dropped and counted", async () => {
  const [port, peerPort] = [await freeUdpPort("127.0.0.1"), await freeUdpPort("127.0.0.2")];
  const { sw, got } = hostWithVm("drops", mac(1));
  const uplink = await openVxlanUplink(sw, { vni: 77, local: { host: "127.0.0.1", port }, remotes: [{ host: "127.0.0.2", port: peerPort }] });
  try {
    const to = { host: "127.0.0.1", port };
    const inner = frame(BROADCAST_MAC, mac(9), 1);
    await sendDatagram("127.0.0.2", to, vxlanDatagram(78, inner));
    await sendDatagram("127.0.0.2", to, vxlanDatagram(77, inner, 0x00));
    await sendDatagram("127.0.0.2", to, vxlanDatagram(77, inner).subarray(0, VXLAN_HLEN + 13));
    await sendDatagram("127.0.0.9", to, vxlanDatagram(77, inner));
    await sendDatagram("127.0.0.2", to, vxlanDatagram(77, frame(BROADCAST_MAC, BROADCAST_MAC, 2)));
    await sendDatagram("127.0.0.2", to, vxlanDatagram(77, inner, 0x88)); // reserved flag bits are ignored (RFC 7348 section 5)
    await waitFor("the one good frame", () => got.length === 1);
    await waitFor("all drops counted", () => Object.values(uplink.counters.drops).reduce((a, b) => a + b) === 5);
    const d = uplink.counters.drops;
    assert.deepEqual([d["wrong-vni"], d["bad-flags"], d["too-short"], d["unknown-peer"], d["refused-by-switch"]], [1, 1, 1, 1, 1]);
    assert.equal(uplink.port.counters.drops["invalid-source"], 1);
    assert.equal(got[0][ETH_HLEN], 1);
    assert.deepEqual(uplink.learnedMacs.map((e) => e.mac), [macString(mac(9))]);
  } finally {
    uplink.close();
    uplink.close();
  }
  assert.equal(sw.ports.length, 1, "the uplink left the switch");
});

test("vxlan: remote MACs are learned within a bound and forgotten after the aging time", async () => {
  const [port, peerPort, silentPort] = [await freeUdpPort("127.0.0.1"), await freeUdpPort("127.0.0.2"), await freeUdpPort("127.0.0.3")];
  let time = 0;
  const { sw, vm } = hostWithVm("aging", mac(1));
  const uplink = await openVxlanUplink(sw, {
    vni: 9, local: { host: "127.0.0.1", port }, maxLearnedMacs: 4, agingMs: 1000, now: () => time, warn: () => {},
    remotes: [{ host: "127.0.0.2", port: peerPort }, { host: "127.0.0.3", port: silentPort }],
  });
  try {
    for (let i = 10; i < 20; i++) await sendDatagram("127.0.0.2", { host: "127.0.0.1", port }, vxlanDatagram(9, frame(BROADCAST_MAC, mac(i), i)));
    await waitFor("ten frames in", () => uplink.counters.inFrames === 10);
    assert.deepEqual(uplink.learnedMacs.map((e) => e.mac), [16, 17, 18, 19].map((i) => macString(mac(i))), "the four most recent");
    vm.input(frame(mac(19), mac(1), 1));
    assert.equal(uplink.counters.outDatagrams, 1, "to the remote that has mac 19");
    time += 1000;
    assert.deepEqual(uplink.learnedMacs, []);
    // The switch (on its own clock) still sends mac 19's frames to the uplink; the uplink no longer knows which remote has it.
    vm.input(frame(mac(19), mac(1), 2));
    assert.equal(uplink.counters.outDatagrams, 3, "forgotten: to every remote");
  } finally {
    uplink.close();
  }
});

test("vxlan: opening errors are one line", async () => {
  const port = await freeUdpPort("127.0.0.1");
  const sw = new VirtualSwitch("errors");
  const first = await openVxlanUplink(sw, { vni: 1, local: { host: "127.0.0.1", port }, remotes: [{ host: "127.0.0.2", port }] });
  try {
    await assert.rejects(
      openVxlanUplink(sw, { vni: 2, local: { host: "127.0.0.1", port }, remotes: [{ host: "127.0.0.2", port }] }),
      (e: Error) => e instanceof NetBackendError && /^vxlan 2 on switch errors: cannot bind 127\.0\.0\.1:\d+: .*EADDRINUSE/.test(e.message),
    );
    await assert.rejects(openVxlanUplink(sw, { vni: 1 << 24, local: { host: "127.0.0.1", port: 0 }, remotes: [{ host: "127.0.0.2", port }] }), /VNI must be/);
    await assert.rejects(openVxlanUplink(sw, { vni: 3, local: { host: "127.0.0.1", port: 0 }, remotes: [] }), /no remote/);
    await assert.rejects(openVxlanUplink(sw, { vni: 3, local: { host: "127.0.0.1", port: 0 }, remotes: [{ host: "127.0.0.2", port }], maxLearnedMacs: NaN }), /learned MAC limit/);
    await assert.rejects(
      openVxlanUplink(sw, { vni: 1, local: { host: "127.0.0.1", port: 0 }, remotes: [{ host: "127.0.0.2", port }] }),
      /already has a port named vxlan1/,
    );
    assert.equal(sw.ports.length, 1);
  } finally {
    first.close();
  }
});

// --- interoperability with Linux's vxlan device ---

/**
 * A station on the switch at `ip`: answers ARP for its address (RFC 826),
 * ICMP echo (RFC 792) and UDP echo on port 7 (RFC 862), and remembers what it saw.
 */
class Responder {
  readonly port: SwitchPort;
  echoRequests = 0;
  udpEchoes = 0;

  constructor(sw: VirtualSwitch, readonly mac: Uint8Array, readonly ip: number) {
    this.port = sw.attach({ name: "responder", mac, deliver: (f) => queueMicrotask(() => this.answer(f)) });
  }

  private answer(frame: Uint8Array): void {
    const eth = parseEthernet(frame);
    if (!eth) return;
    const payload = frame.subarray(eth.payloadOffset);
    if (eth.type === ETHERTYPE_ARP) {
      const arp = parseArp(payload);
      if (!arp || arp.op !== ARP_REQUEST || arp.targetIp !== this.ip) return;
      const reply = buildArp({ op: ARP_REPLY, senderMac: this.mac, senderIp: this.ip, targetMac: arp.senderMac, targetIp: arp.senderIp });
      this.port.input(buildEthernet(arp.senderMac, this.mac, ETHERTYPE_ARP, reply));
      return;
    }
    if (eth.type !== ETHERTYPE_IPV4) return;
    const ip = parseIpv4(payload);
    if (typeof ip === "string" || ip.dst !== this.ip) return;
    let reply: Uint8Array | undefined;
    if (ip.protocol === IPPROTO_ICMP && ip.payload.length >= 8 && ip.payload[0] === 8) {
      this.echoRequests++;
      const icmp = Uint8Array.from(ip.payload);
      icmp[0] = 0; // echo reply
      icmp[2] = icmp[3] = 0;
      const sum = internetChecksum(icmp);
      icmp[2] = sum >> 8;
      icmp[3] = sum & 0xff;
      reply = buildIpv4(this.ip, ip.src, IPPROTO_ICMP, icmp);
    } else if (ip.protocol === IPPROTO_UDP && ip.payload.length >= 8) {
      // The ports are read directly: the sender may have left the UDP checksum
      // to an offload that never ran (veth), which is not this test's subject.
      const srcPort = (ip.payload[0] << 8) | ip.payload[1];
      const dstPort = (ip.payload[2] << 8) | ip.payload[3];
      const length = (ip.payload[4] << 8) | ip.payload[5];
      if (dstPort !== 7 || length < 8 || length > ip.payload.length) return;
      this.udpEchoes++;
      reply = buildIpv4(this.ip, ip.src, IPPROTO_UDP, buildUdp(this.ip, ip.src, 7, srcPort, ip.payload.subarray(8, length)));
    }
    if (reply) this.port.input(buildEthernet(eth.src, this.mac, ETHERTYPE_IPV4, reply));
  }
}

test("vxlan: a Linux vxlan device in a network namespace pings (when ping is installed) and exchanges UDP with a station on the switch", { timeout: 60_000 }, async (t) => {
  const lab = await openVxlanLab(t, 1);
  if (!lab) return;
  const { rootAddr, nsAddr, port, vni, linuxMac, inNs } = lab;
  const [overlayLinux, overlayResponder] = [lab.linuxOverlay, lab.tsvisorOverlay];
  let uplink: VxlanUplink | undefined;
  try {
    const sw = new VirtualSwitch(`interop-${lab.ns}`);
    uplink = await openVxlanUplink(sw, { vni, local: { host: rootAddr, port }, remotes: [{ host: nsAddr, port }] });
    const responderMac = new Uint8Array([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    const responder = new Responder(sw, responderMac, parseIpv4Address(overlayResponder)!);

    if (await commandWorks("sh", ["-c", "command -v ping"])) {
      const { stdout } = await inNs("ping", "-c", "2", "-W", "2", overlayResponder);
      assert.match(stdout, /2 received/);
      assert.ok(responder.echoRequests >= 2);
    } else {
      t.diagnostic("ping is not installed: the UDP echo below is the round trip checked");
    }
    // A UDP round trip from a socket in the namespace (node itself, so no other tool is needed).
    const client = `const s = require("node:dgram").createSocket("udp4");
      s.on("message", (m) => { console.log(String(m)); process.exit(0); });
      s.bind(0, "${overlayLinux}", () => { const hi = () => s.send("hello over vxlan", 7, "${overlayResponder}"); hi(); setInterval(hi, 500); });
      setTimeout(() => process.exit(1), 5000);`;
    const { stdout: echoed } = await inNs(process.execPath, "-e", client);
    assert.equal(echoed.trim(), "hello over vxlan");
    assert.ok(responder.udpEchoes >= 1);

    const neigh = (await inNs("ip", "neigh", "show", overlayResponder, "dev", "vx0")).stdout;
    assert.match(neigh, new RegExp(`lladdr ${macString(responderMac)} (REACHABLE|STALE|DELAY|PROBE)`), neigh);
    assert.deepEqual(uplink.learnedMacs.map((e) => [e.mac, e.remote]), [[linuxMac, `${nsAddr}:${port}`]]);
    assert.equal(sw.macTable.find((e) => e.mac === linuxMac)?.port, `vxlan${vni}`, "the Linux device's MAC was learned from the tunnel");

    // From the namespace's address (a known remote), but for another VNI.
    const wrong = Buffer.from(vxlanDatagram(vni + 1, buildEthernet(BROADCAST_MAC, new Uint8Array([2, 0, 0, 0, 0, 9]), 0x88b5, new Uint8Array(46))));
    const sender = `const s = require("node:dgram").createSocket("udp4");
      s.bind(0, "${nsAddr}", () => s.send(Buffer.from("${wrong.toString("hex")}", "hex"), ${port}, "${rootAddr}", () => s.close()));`;
    await inNs(process.execPath, "-e", sender);
    await waitFor("the wrong VNI counted", () => uplink!.counters.drops["wrong-vni"] === 1);
    assert.equal(responder.port.counters.drops["spoofed-mac"] + responder.port.counters.drops["spoofed-ip"], 0);
    t.diagnostic(`${uplink.port.describeCounters()}; ${responder.port.describeCounters()}; linux ${ipv4String(parseIpv4Address(overlayLinux)!)} = ${linuxMac}`);
  } finally {
    uplink?.close();
    await lab.close();
  }
});
