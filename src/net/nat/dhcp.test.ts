import { test } from "node:test";
import assert from "node:assert/strict";
import { DhcpServer, type DhcpConfig } from "./dhcp.js";
import { ipv4String, readU32, writeU32 } from "../packet.js";

const config: DhcpConfig = {
  server: 0x0a000202, netmask: 0xffffff00, router: 0x0a000202, dns: 0x0a000203,
  poolStart: 0x0a00020f, poolSize: 4, leaseSeconds: 3600,
};

/** A client message as udhcpc sends it (RFC 2131 figure 1, options RFC 2132). */
function clientMessage(mac: Uint8Array, type: number, opts: { requested?: number; server?: number; ciaddr?: number; xid?: number } = {}): Uint8Array {
  const options = [53, 1, type];
  if (opts.requested !== undefined) options.push(50, 4, ...bytes(opts.requested));
  if (opts.server !== undefined) options.push(54, 4, ...bytes(opts.server));
  options.push(255);
  const p = new Uint8Array(240 + options.length);
  p.set([1, 1, 6, 0]);
  writeU32(p, 4, opts.xid ?? 0x1234abcd);
  writeU32(p, 12, opts.ciaddr ?? 0);
  p.set(mac, 28);
  writeU32(p, 236, 0x63825363);
  p.set(options, 240);
  return p;
}

function bytes(v: number): number[] {
  return [v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
}

/** The options of a reply as a map. */
function replyOptions(p: Uint8Array): Map<number, Uint8Array> {
  const m = new Map<number, Uint8Array>();
  for (let i = 240; i < p.length && p[i] !== 255;) {
    m.set(p[i], p.subarray(i + 2, i + 2 + p[i + 1]));
    i += 2 + p[i + 1];
  }
  return m;
}

const macA = Uint8Array.of(0x52, 0x54, 0, 0, 0, 0xa);
const macB = Uint8Array.of(0x52, 0x54, 0, 0, 0, 0xb);

test("DHCP: DISCOVER -> OFFER, REQUEST -> ACK with mask, router, DNS and lease", () => {
  const leases: string[] = [];
  const dhcp = new DhcpServer(config, (mac, ip) => leases.push(`${mac[5]}=${ip === undefined ? "-" : ipv4String(ip)}`));
  const offer = dhcp.handle(macA, clientMessage(macA, 1))!;
  assert.equal(ipv4String(offer.yiaddr), "10.0.2.15");
  assert.equal(replyOptions(offer.payload).get(53)![0], 2);
  assert.equal(readU32(offer.payload, 4), 0x1234abcd, "the reply carries the client's xid");
  const ack = dhcp.handle(macA, clientMessage(macA, 3, { requested: offer.yiaddr, server: config.server }))!;
  const o = replyOptions(ack.payload);
  assert.equal(o.get(53)![0], 5);
  assert.equal(ipv4String(readU32(o.get(1)!, 0)), "255.255.255.0");
  assert.equal(ipv4String(readU32(o.get(3)!, 0)), "10.0.2.2");
  assert.equal(ipv4String(readU32(o.get(6)!, 0)), "10.0.2.3");
  assert.equal(readU32(o.get(51)!, 0), 3600);
  assert.deepEqual(leases, ["10=10.0.2.15"]);
  assert.equal(dhcp.addressOf(macA), 0x0a00020f);
  // A second card gets the next address; the first keeps its own on renewal.
  assert.equal(ipv4String(dhcp.handle(macB, clientMessage(macB, 1))!.yiaddr), "10.0.2.16");
  assert.equal(ipv4String(dhcp.handle(macA, clientMessage(macA, 1))!.yiaddr), "10.0.2.15");
});

test("DHCP: a REQUEST for an address that is not the client's gets a NAK; RELEASE frees the lease", () => {
  const dhcp = new DhcpServer(config);
  dhcp.handle(macA, clientMessage(macA, 3, { requested: 0x0a00020f }));
  const nak = dhcp.handle(macB, clientMessage(macB, 3, { requested: 0x0a00020f }))!;
  assert.equal(replyOptions(nak.payload).get(53)![0], 6);
  const outside = dhcp.handle(macB, clientMessage(macB, 3, { requested: 0x0a000263 }))!;
  assert.equal(replyOptions(outside.payload).get(53)![0], 6, "outside the pool");
  dhcp.handle(macA, clientMessage(macA, 7, { ciaddr: 0x0a00020f }));
  assert.equal(dhcp.addressOf(macA), undefined);
  assert.equal(replyOptions(dhcp.handle(macB, clientMessage(macB, 3, { requested: 0x0a00020f }))!.payload).get(53)![0], 5);
});

test("DHCP: spoofed chaddr, malformed messages and a pool flood are refused and counted, memory bounded", () => {
  let t = 0;
  const dhcp = new DhcpServer(config, () => {}, () => t);
  assert.equal(dhcp.handle(macB, clientMessage(macA, 1)), undefined);
  assert.equal(dhcp.stats.spoofed, 1);
  for (const bad of [new Uint8Array(10), clientMessage(macA, 1).subarray(0, 241), Uint8Array.from([...clientMessage(macA, 1).subarray(0, 240), 53, 9])]) {
    assert.equal(dhcp.handle(macA, bad), undefined);
  }
  assert.equal(dhcp.stats.malformed, 3);
  // 100 made-up cards: the pool (4) is all there is; the rest go unanswered.
  for (let i = 0; i < 100; i++) {
    const mac = Uint8Array.of(0x52, 0x54, 1, 0, 0, i);
    dhcp.handle(mac, clientMessage(mac, 3, { requested: 0x0a00020f + (i % 4) }));
  }
  assert.equal(dhcp.leases().length, 4);
  assert.equal(dhcp.stats.naks, 96, "the 96 cards that came after the pool was gone were told no");
  // Offers that are never taken lapse.
  const fresh = new DhcpServer(config, () => {}, () => t);
  for (let i = 0; i < 4; i++) fresh.handle(Uint8Array.of(2, 0, 0, 0, 0, i), clientMessage(Uint8Array.of(2, 0, 0, 0, 0, i), 1));
  assert.equal(fresh.handle(macA, clientMessage(macA, 1)), undefined, "all four addresses are held by offers");
  t += 60_000;
  assert.ok(fresh.handle(macA, clientMessage(macA, 1)), "held offers lapse after 30 s");
});
