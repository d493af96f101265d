// The NAT's TCP against Linux's own TCP stack. A tap device, moved into a
// network namespace this test creates, plays the guest: 10.0.2.15/24 with a
// default route via 10.0.2.2. A small glue here answers ARP for 10.0.2.2 and
// wraps and unwraps IPv4 and Ethernet around TcpNat; its `connect` maps
// 10.0.2.2 to 127.0.0.1 and refuses every other address, so test traffic
// stays on loopback and inside the namespace. Python scripts run in the
// namespace (`ip netns exec`) as the guest's programs.
//
// Needs root, `ip netns`, python3 and build/tap-relay (skipped otherwise).
// Tests without the tap come first: hand-made segments and stand-in host
// sockets (malformed input, refusals, timeouts, both closing orders, the
// memory budget, a seeded fuzz).

import { after, before, describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes, randomInt } from "node:crypto";
import { existsSync } from "node:fs";
import * as net from "node:net";
import { Duplex } from "node:stream";
import type { AddressInfo } from "node:net";
import { openNetBackend } from "../../backends/net/net-backend.js";
import type { NetBackend } from "../../backends/net/net-backend.js";
import { tapRelayPath } from "../../backends/net/tap.js";
import {
  ARP_REPLY, ARP_REQUEST, buildArp, buildEthernet, buildIpv4, ETHERTYPE_ARP, ETHERTYPE_IPV4, IPPROTO_TCP,
  parseArp, parseEthernet, parseIpv4, parseIpv4Address, transportChecksum,
} from "../packet.js";
import { TcpNat, type TcpNatOptions } from "./tcp.js";
import { buildTcp, parseTcp, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN } from "./tcp-segment.js";

const GATEWAY = parseIpv4Address("10.0.2.2")!;
const GUEST = parseIpv4Address("10.0.2.15")!;
const GATEWAY_MAC = new Uint8Array([0x52, 0x55, 0x0a, 0x00, 0x02, 0x02]);

// --- without a tap: hand-made segments ---

function natWithCapture(opts: Partial<TcpNatOptions> = {}) {
  const out: Uint8Array[] = [];
  const nat = new TcpNat({ emit: (_s, _d, seg) => out.push(seg), connect: () => undefined, ...opts });
  return { nat, out };
}

test("tcp: malformed segments are dropped and counted, never thrown", () => {
  const { nat, out } = natWithCapture();
  const good = buildTcp(GUEST, GATEWAY, { srcPort: 40000, dstPort: 80, seq: 1, ack: 0, flags: TCP_SYN, window: 1000 });
  nat.input(GUEST, GATEWAY, good.subarray(0, 19));
  const badOffset = good.slice();
  badOffset[12] = 0x40; // 16 bytes: shorter than the header
  nat.input(GUEST, GATEWAY, badOffset);
  const tooLong = good.slice();
  tooLong[12] = 0xf0; // 60 bytes: beyond the segment
  nat.input(GUEST, GATEWAY, tooLong);
  const badSum = good.slice();
  badSum[16] ^= 0xff;
  nat.input(GUEST, GATEWAY, badSum);
  // An option whose length runs past the header (checksum fixed up so it gets that far).
  const badOption = new Uint8Array(24);
  badOption.set(good.subarray(0, 20));
  badOption[12] = 0x60;
  badOption.set([3, 9, 0, 0], 20);
  badOption[16] = badOption[17] = 0;
  const sum = transportChecksum(GUEST, GATEWAY, IPPROTO_TCP, badOption);
  badOption[16] = sum >> 8;
  badOption[17] = sum & 0xff;
  nat.input(GUEST, GATEWAY, badOption);
  const random = prng(1);
  for (let i = 0; i < 200; i++) nat.input(GUEST, GATEWAY, Uint8Array.from({ length: i }, () => Math.floor(random() * 256)));
  const s = nat.stats;
  assert.ok(s.bad.truncated >= 1 && s.bad["data-offset"] >= 2 && s.bad.checksum >= 1 && s.bad.options === 1, JSON.stringify(s.bad));
  assert.equal(s.bad.truncated + s.bad["data-offset"] + s.bad.checksum + s.bad.options + s.bad.port, s.segmentsIn, "every one was dropped");
  assert.equal(out.length, 0, "and none answered");
  nat.close();
});

test("tcp: a refused SYN is answered with RST|ACK acknowledging it; a stray ACK with RST at its ack", () => {
  const { nat, out } = natWithCapture();
  nat.input(GUEST, GATEWAY, buildTcp(GUEST, GATEWAY, { srcPort: 40000, dstPort: 80, seq: 0xfffffffe, ack: 0, flags: TCP_SYN, window: 1000, mss: 1460 }));
  assert.equal(out.length, 1);
  const rst = parseTcp(GATEWAY, GUEST, out[0]);
  assert.ok(typeof rst !== "string", "our RST has a valid checksum");
  assert.equal(rst.flags, TCP_RST | TCP_ACK);
  assert.equal(rst.ack, 0xffffffff, "acknowledges the SYN, modulo 2^32");
  assert.equal([rst.srcPort, rst.dstPort].join(), "80,40000");
  nat.input(GUEST, GATEWAY, buildTcp(GUEST, GATEWAY, { srcPort: 40001, dstPort: 80, seq: 5, ack: 1234, flags: TCP_ACK, window: 1000 }));
  const stray = parseTcp(GATEWAY, GUEST, out[1]);
  assert.ok(typeof stray !== "string");
  assert.equal(stray.flags, TCP_RST);
  assert.equal(stray.seq, 1234);
  nat.input(GUEST, GATEWAY, buildTcp(GUEST, GATEWAY, { srcPort: 40001, dstPort: 80, seq: 5, ack: 0, flags: TCP_RST, window: 0 }));
  assert.equal(out.length, 2, "a RST is never answered");
  assert.equal(nat.stats.refused, 1);
  assert.equal(nat.stats.noConnection, 2);
  nat.close();
});

test("tcp: a SYN beyond maxConnections gets RST and is counted", () => {
  const sockets: net.Socket[] = [];
  const { nat, out } = natWithCapture({
    maxConnections: 2,
    connect: () => {
      // A socket that never finishes connecting: the SYN stays unanswered.
      const s = Object.defineProperty(new net.Socket(), "connecting", { value: true });
      sockets.push(s);
      return s;
    },
  });
  for (let port = 40000; port < 40003; port++) {
    nat.input(GUEST, GATEWAY, buildTcp(GUEST, GATEWAY, { srcPort: port, dstPort: 80, seq: 1, ack: 0, flags: TCP_SYN, window: 1000 }));
  }
  assert.equal(nat.stats.connectionsOpen, 2);
  assert.equal(nat.stats.refusedTableFull, 1);
  assert.equal(out.length, 1);
  const rst = parseTcp(GATEWAY, GUEST, out[0]);
  assert.ok(typeof rst !== "string" && rst.flags === (TCP_RST | TCP_ACK) && rst.dstPort === 40002);
  nat.close();
  assert.equal(out.length, 3, "close() resets the two waiting guests");
  assert.equal(nat.stats.connectionsOpen, 0);
  assert.ok(sockets.every((s) => s.destroyed), "close() destroyed the host sockets");
});

/** A host socket stand-in: what the NAT writes is collected, `push` plays the host peer sending. */
function fakeSocket(connecting = false) {
  const written: Buffer[] = [];
  const s = new Duplex({
    read() {},
    write(chunk: Buffer, _e, cb) {
      written.push(chunk);
      cb();
    },
  });
  Object.defineProperty(s, "connecting", { value: connecting });
  return Object.assign(s, { written });
}

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The guest's side of a handshake with `nat`, by hand; returns the segments and our ISS. */
function handshake(nat: TcpNat, out: Uint8Array[], guestPort: number) {
  const from = (h: { seq: number; ack: number; flags: number; window?: number }, payload?: Uint8Array) =>
    nat.input(GUEST, GATEWAY, buildTcp(GUEST, GATEWAY, { srcPort: guestPort, dstPort: 80, window: 65535, ...h }, payload));
  from({ seq: 1000, ack: 0, flags: TCP_SYN });
  const synAck = parseTcp(GATEWAY, GUEST, out[out.length - 1]);
  assert.ok(typeof synAck !== "string" && synAck.flags === (TCP_SYN | TCP_ACK) && synAck.ack === 1001);
  from({ seq: 1001, ack: (synAck.seq + 1) >>> 0, flags: TCP_ACK });
  return { from, iss: synAck.seq };
}

const lastSegment = (out: Uint8Array[]) => {
  const s = parseTcp(GATEWAY, GUEST, out[out.length - 1]);
  assert.ok(typeof s !== "string");
  return s;
};

test("tcp: a host connect that never completes: the guest gets RST after connectMs", async () => {
  const socket = fakeSocket(true);
  const { nat, out } = natWithCapture({ connect: () => socket, timeouts: { connectMs: 100 } });
  nat.input(GUEST, GATEWAY, buildTcp(GUEST, GATEWAY, { srcPort: 40000, dstPort: 80, seq: 7, ack: 0, flags: TCP_SYN, window: 1000 }));
  assert.equal(out.length, 0, "no answer while the host connects");
  await wait(250);
  assert.equal(lastSegment(out).flags, TCP_RST | TCP_ACK);
  assert.equal(lastSegment(out).ack, 8);
  assert.ok(socket.destroyed);
  assert.equal(nat.stats.timeouts, 1);
  assert.equal(nat.stats.connectionsOpen, 0);
});

test("tcp: a handshake the guest never completes is given up after handshakeMs", async () => {
  const socket = fakeSocket();
  const { nat, out } = natWithCapture({ connect: () => socket, timeouts: { handshakeMs: 150 } });
  nat.input(GUEST, GATEWAY, buildTcp(GUEST, GATEWAY, { srcPort: 40000, dstPort: 80, seq: 7, ack: 0, flags: TCP_SYN, window: 1000 }));
  assert.equal(lastSegment(out).flags, TCP_SYN | TCP_ACK);
  await wait(300);
  assert.equal(lastSegment(out).flags & TCP_RST, TCP_RST);
  assert.ok(socket.destroyed);
  assert.equal(nat.stats.connectionsOpen, 0);
});

test("tcp: unacknowledged data is retransmitted with backoff, then the connection is reset", async () => {
  const socket = fakeSocket();
  const { nat, out } = natWithCapture({ connect: () => socket, timeouts: { minRtoMs: 20, maxRetransmits: 3 } });
  handshake(nat, out, 40000);
  socket.push(Buffer.from("hello"));
  await wait(20);
  const first = lastSegment(out);
  assert.equal(Buffer.from(first.payload).toString(), "hello");
  await wait(600); // 20 + 40 + 80 + 160 ms of backoff, then give up
  const s = nat.stats;
  assert.equal(s.retransmits, 3);
  assert.equal(lastSegment(out).flags & TCP_RST, TCP_RST);
  assert.ok(socket.destroyed);
  assert.equal(s.connectionsOpen, 0);
});

test("tcp: an idle connection is reset after idleMs; the guest's data reached the host before", async () => {
  const socket = fakeSocket();
  const { nat, out } = natWithCapture({ connect: () => socket, timeouts: { idleMs: 150 } });
  const { from, iss } = handshake(nat, out, 40000);
  from({ seq: 1001, ack: (iss + 1) >>> 0, flags: TCP_ACK }, new TextEncoder().encode("GET /"));
  await wait(10);
  assert.equal(Buffer.concat(socket.written).toString(), "GET /");
  assert.equal(lastSegment(out).ack, 1006, "the data is acknowledged");
  assert.equal(nat.connections()[0].state, "ESTABLISHED");
  await wait(300);
  assert.equal(lastSegment(out).flags & TCP_RST, TCP_RST);
  assert.ok(socket.destroyed);
  assert.equal(nat.stats.timeouts, 1);
});

test("tcp: closing both ways by hand: CLOSE-WAIT, LAST-ACK, gone; FIN-WAIT-1, FIN-WAIT-2, TIME-WAIT, reopened by a new SYN", async () => {
  const sockets = [fakeSocket(), fakeSocket(), fakeSocket()];
  let n = 0;
  const { nat, out } = natWithCapture({ connect: () => sockets[n++] });
  const state = () => nat.connections()[0]?.state;

  // The guest closes first.
  const a = handshake(nat, out, 40000);
  a.from({ seq: 1001, ack: (a.iss + 1) >>> 0, flags: TCP_ACK | TCP_FIN });
  assert.equal(state(), "CLOSE-WAIT");
  assert.ok(sockets[0].writableEnded, "the guest's FIN ended the host socket's writing side");
  assert.equal(lastSegment(out).ack, 1002);
  sockets[0].push(null); // the host ends too
  await wait(10);
  const fin = lastSegment(out);
  assert.equal(fin.flags & TCP_FIN, TCP_FIN);
  assert.equal(state(), "LAST-ACK");
  a.from({ seq: 1002, ack: (fin.seq + 1) >>> 0, flags: TCP_ACK });
  assert.equal(nat.stats.connectionsOpen, 0);

  // The host closes first, after some data.
  const b = handshake(nat, out, 40001);
  sockets[1].push(Buffer.from("bye"));
  sockets[1].push(null);
  await wait(10);
  const fromUs = out.map((raw) => parseTcp(GATEWAY, GUEST, raw)).filter((x) => typeof x !== "string" && x.dstPort === 40001);
  assert.ok(fromUs.some((x) => typeof x !== "string" && Buffer.from(x.payload).toString() === "bye"));
  const ourFin = lastSegment(out);
  assert.equal(ourFin.flags & TCP_FIN, TCP_FIN, "the FIN follows the data");
  assert.equal((ourFin.seq + ourFin.payload.length) >>> 0, (b.iss + 4) >>> 0, "the FIN's sequence number is after the 3 bytes");
  assert.equal(state(), "FIN-WAIT-1");
  b.from({ seq: 1001, ack: (b.iss + 5) >>> 0, flags: TCP_ACK });
  assert.equal(state(), "FIN-WAIT-2");
  b.from({ seq: 1001, ack: (b.iss + 5) >>> 0, flags: TCP_ACK }, new TextEncoder().encode("more"));
  assert.equal(Buffer.concat(sockets[1].written).toString(), "more", "the guest still sends after the host's FIN");
  b.from({ seq: 1005, ack: (b.iss + 5) >>> 0, flags: TCP_ACK | TCP_FIN });
  assert.equal(state(), "TIME-WAIT");
  // The guest reuses its port at once: the SYN replaces the lingering connection.
  nat.input(GUEST, GATEWAY, buildTcp(GUEST, GATEWAY, { srcPort: 40001, dstPort: 80, seq: 9000, ack: 0, flags: TCP_SYN, window: 1000 }));
  assert.equal(lastSegment(out).flags, TCP_SYN | TCP_ACK);
  assert.equal(lastSegment(out).ack, 9001);
  assert.equal(state(), "SYN-RECEIVED");
  nat.close();
});

test("tcp: host sockets pause when all connections together hold sndBudget bytes, and resume", async () => {
  const sockets = [fakeSocket(), fakeSocket()];
  let n = 0;
  const { nat, out } = natWithCapture({ connect: () => sockets[n++], sndBudget: 100_000 });
  const a = handshake(nat, out, 40000);
  handshake(nat, out, 40001);
  sockets[0].push(Buffer.alloc(60_000, 1));
  sockets[1].push(Buffer.alloc(60_000, 2));
  await wait(10);
  assert.equal(nat.stats.queuedToGuest, 120_000);
  assert.ok(sockets[0].isPaused() || sockets[1].isPaused(), "the socket that crossed the budget was paused");
  assert.ok(sockets[1].isPaused());
  // The guest acknowledges all that connection A sends, until A holds nothing: the budget has room again.
  for (let i = 0; i < 20 && nat.stats.queuedToGuest > 60_000; i++) {
    let end = 0;
    for (const raw of out) {
      const seg = parseTcp(GATEWAY, GUEST, raw);
      if (typeof seg !== "string" && seg.dstPort === 40000) end = Math.max(end, seg.seq + seg.payload.length - a.iss);
    }
    a.from({ seq: 1001, ack: (a.iss + end) >>> 0, flags: TCP_ACK });
  }
  assert.equal(nat.stats.queuedToGuest, 60_000);
  assert.ok(!sockets[1].isPaused(), "resumed");
  nat.close();
});

/** A small seeded PRNG (mulberry32), so a failing fuzz run can be repeated. */
function prng(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

test("tcp: all connections together offer the guest at most rcvBudget; a window held small opens when room comes back", async () => {
  const sockets = [fakeSocket(), fakeSocket()];
  let n = 0;
  const { nat, out } = natWithCapture({ connect: () => sockets[n++], rcvBuf: 65535, rcvBudget: 100_000 });
  const a = handshake(nat, out, 40000);
  assert.equal(nat.stats.committedFromGuest, 65535);
  handshake(nat, out, 40001);
  const synAckB = out.map((raw) => parseTcp(GATEWAY, GUEST, raw)).find((x) => typeof x !== "string" && x.dstPort === 40001 && x.flags & TCP_SYN);
  assert.ok(synAckB && typeof synAckB !== "string");
  assert.equal(synAckB.window, 100_000 - 65535, "B is offered what A left of the budget");
  assert.ok(nat.stats.committedFromGuest <= 100_000);
  // A goes away: B's window opens without the guest asking.
  a.from({ seq: 1001, ack: 0, flags: TCP_RST });
  assert.equal(nat.stats.connectionsOpen, 1);
  await wait(10);
  const update = lastSegment(out);
  assert.equal(update.dstPort, 40001);
  assert.equal(update.window, 65535);
  nat.close();
  assert.equal(nat.stats.committedFromGuest, 0, "closing released every promise");
});

test("tcp: with the receive budget taken, a new connection still gets its fair share (rcvBudget / maxConnections)", () => {
  const sockets = [fakeSocket(), fakeSocket()];
  let n = 0;
  const { nat, out } = natWithCapture({ connect: () => sockets[n++], rcvBuf: 65535, rcvBudget: 20_000, maxConnections: 2 });
  handshake(nat, out, 40000);
  assert.equal(lastSegment(out).window, 20_000, "A takes the whole budget");
  handshake(nat, out, 40001);
  assert.equal(lastSegment(out).window, 10_000, "B still gets its share");
  nat.close();
});

test("tcp: seeded fuzz: hostile segments on open connections are handled, never thrown; memory stays bounded", () => {
  const random = prng(13);
  const int = (n: number) => Math.floor(random() * n);
  for (let round = 0; round < 20; round++) {
    const socket = fakeSocket();
    const { nat, out } = natWithCapture({ connect: () => socket, rcvBuf: 65536 });
    const { from, iss } = handshake(nat, out, 40000 + round);
    socket.push(Buffer.alloc(100_000, 7)); // something to send, retransmit, acknowledge
    for (let i = 0; i < 1500; i++) {
      const near = (base: number, spread: number) => (base + int(2 * spread) - spread) >>> 0;
      const flags = int(64);
      const seq = random() < 0.8 ? near(1001 + i * 100, 70_000) : int(2 ** 32);
      const ack = random() < 0.8 ? near(iss + 1 + i * 50, 70_000) : int(2 ** 32);
      const payload = new Uint8Array(random() < 0.5 ? 0 : int(1500));
      const seg = buildTcp(GUEST, GATEWAY, {
        srcPort: 40000 + round, dstPort: 80, seq, ack, flags, window: int(65536),
        mss: random() < 0.1 ? int(65536) : undefined, windowScale: random() < 0.1 ? int(256) : undefined,
        sackBlocks: random() < 0.3 ? [[near(iss, 100_000), near(iss, 100_000)]] : undefined,
      }, payload);
      if (random() < 0.1) {
        // Garbage options (checksum fixed up, so they reach the option parser).
        const off = 20 + int(Math.max(1, (seg[12] >> 4) * 4 - 20));
        if (off < seg.length) seg[off] = int(256);
        seg[16] = seg[17] = 0;
        const sum = transportChecksum(GUEST, GATEWAY, IPPROTO_TCP, seg);
        seg[16] = sum >> 8;
        seg[17] = sum & 0xff;
      }
      nat.input(GUEST, GATEWAY, seg);
      if (i % 500 === 0) from({ seq: 1001, ack: (iss + 1) >>> 0, flags: TCP_ACK });
    }
    const c = nat.connections()[0];
    if (c) {
      assert.ok(c.queuedToGuest <= 256 * 1024);
      assert.ok(c.rcvWnd <= 65536 + 1460);
    }
    const written = socket.written.reduce((n, b) => n + b.length, 0);
    assert.ok(written <= 1500 * 1500, "never more written than sent");
    assert.ok(out.every((seg) => transportChecksum(GATEWAY, GUEST, IPPROTO_TCP, seg) === 0), "everything we sent is well-formed");
    nat.close();
  }
});

// --- against Linux in a namespace ---

function skipReason(): string | undefined {
  if (process.platform !== "linux") return "needs Linux (tap, network namespaces)";
  if (process.getuid?.() !== 0) return "needs root to create a tap and a network namespace";
  if (!existsSync("/dev/net/tun")) return "no /dev/net/tun";
  if (!existsSync(tapRelayPath())) return "build/tap-relay was not built (no C compiler)";
  if (spawnSync("ip", ["netns", "list"]).status !== 0) return "no `ip netns` (iproute2)";
  if (spawnSync("python3", ["-c", "pass"]).status !== 0) return "no python3";
  return undefined;
}

const NS = `tsvtcp${process.pid}`;
const IFNAME = `tsvtcp${process.pid % 1_000_000}`;
const ip = (...args: string[]) => execFileSync("ip", args, { stdio: ["ignore", "pipe", "pipe"] }).toString();

/** Payload length of a TCP segment (header length from its data offset). */
const payloadLength = (seg: Uint8Array) => seg.length - (seg[12] >> 4) * 4;

/** The glue a real NAT's Ethernet/IPv4 layer is: ARP for the gateway, IPv4 and Ethernet around TCP. */
class Glue {
  readonly nat: TcpNat;
  /** Return true to lose a segment on its way to the guest / from the guest. */
  dropToGuest: ((seg: Uint8Array) => boolean) | undefined;
  dropFromGuest: ((seg: Uint8Array) => boolean) | undefined;
  dropped = 0;
  /** Our initial sequence number for the next connections (random when undefined). */
  iss: number | undefined;

  constructor(private readonly tap: NetBackend, private readonly guestMac: Uint8Array) {
    this.nat = new TcpNat({
      initialSequence: () => this.iss ?? randomInt(0, 2 ** 32),
      emit: (src, dst, seg) => {
        if (this.dropToGuest?.(seg)) {
          this.dropped++;
          return;
        }
        tap.send(buildEthernet(this.guestMac, GATEWAY_MAC, ETHERTYPE_IPV4, buildIpv4(src, dst, IPPROTO_TCP, seg)));
      },
      connect: (dst, dstPort) => {
        // Only the gateway, and it means this host's loopback: nothing leaves the machine.
        if (dst !== GATEWAY) return undefined;
        return net.connect({ host: "127.0.0.1", port: dstPort, allowHalfOpen: true });
      },
    });
    tap.onFrame = (frame) => this.frame(frame);
  }

  private frame(frame: Uint8Array): void {
    const eth = parseEthernet(frame);
    if (!eth) return;
    const payload = frame.subarray(eth.payloadOffset);
    if (eth.type === ETHERTYPE_ARP) {
      const arp = parseArp(payload);
      if (arp?.op !== ARP_REQUEST || arp.targetIp !== GATEWAY) return;
      const reply = buildArp({ op: ARP_REPLY, senderMac: GATEWAY_MAC, senderIp: GATEWAY, targetMac: arp.senderMac, targetIp: arp.senderIp });
      this.tap.send(buildEthernet(arp.senderMac, GATEWAY_MAC, ETHERTYPE_ARP, reply));
      return;
    }
    if (eth.type !== ETHERTYPE_IPV4) return;
    const packet = parseIpv4(payload);
    if (typeof packet === "string" || packet.protocol !== IPPROTO_TCP || packet.fragment) return;
    if (this.dropFromGuest?.(packet.payload)) {
      this.dropped++;
      return;
    }
    this.nat.input(packet.src, packet.dst, packet.payload);
  }
}

/** Runs a Python script in the namespace: the guest's program. */
function guest(script: string, timeoutMs = 30_000, onOutput?: (stdoutSoFar: string) => void): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn("ip", ["netns", "exec", NS, "python3", "-c", script], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.setEncoding("utf8").on("data", (s: string) => {
      stdout += s;
      onOutput?.(stdout);
    });
    p.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
    const timer = setTimeout(() => {
      p.kill("SIGKILL");
      reject(new Error(`guest script timed out after ${timeoutMs} ms; stdout: ${stdout} stderr: ${stderr}`));
    }, timeoutMs);
    p.on("error", reject);
    p.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A TCP server on 127.0.0.1 (half-open allowed) and its port. */
async function hostServer(onConnection: (s: net.Socket) => void): Promise<{ server: net.Server; port: number }> {
  const server = net.createServer({ allowHalfOpen: true }, onConnection);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { server, port: (server.address() as AddressInfo).port };
}

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** Collects a socket's bytes until it ends. */
function readAll(s: net.Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    s.on("data", (c: Buffer) => chunks.push(c));
    s.on("end", () => resolve(Buffer.concat(chunks)));
    s.on("error", reject);
  });
}

/** Samples the NAT's connections every 5 ms: the largest windows seen both ways, the most queued towards the guest. */
function monitor(nat: TcpNat) {
  const seen = { maxSndWnd: 0, maxRcvWnd: 0, minRcvWnd: Infinity, maxQueued: 0, sndWindowScale: 0, rcvWindowScale: 0 };
  const timer = setInterval(() => {
    for (const c of nat.connections()) {
      if (c.state !== "ESTABLISHED" && c.state !== "CLOSE-WAIT") continue;
      seen.maxSndWnd = Math.max(seen.maxSndWnd, c.sndWnd);
      seen.maxRcvWnd = Math.max(seen.maxRcvWnd, c.rcvWnd);
      seen.minRcvWnd = Math.min(seen.minRcvWnd, c.rcvWnd);
      seen.maxQueued = Math.max(seen.maxQueued, c.queuedToGuest);
      seen.sndWindowScale = Math.max(seen.sndWindowScale, c.sndWindowScale);
      seen.rcvWindowScale = Math.max(seen.rcvWindowScale, c.rcvWindowScale);
    }
  }, 5);
  return { seen, stop: () => clearInterval(timer) };
}

const PY_PRELUDE = `
import socket, hashlib, sys, os, threading, time, struct
def connect(port):
    s = socket.create_connection(("10.0.2.2", port), timeout=20)
    return s
def recv_all(s):
    h = hashlib.sha256(); n = 0
    while True:
        b = s.recv(1 << 16)
        if not b: break
        h.update(b); n += len(b)
    return n, h.hexdigest()
def pattern(n, seed):
    import random
    r = random.Random(seed)
    return r.randbytes(n)
`;

describe("tcp against Linux's stack (tap in a network namespace)", { skip: skipReason() }, () => {
  let tap: NetBackend;
  let glue: Glue;

  before(async () => {
    spawnSync("ip", ["netns", "del", NS], { stdio: "ignore" });
    tap = await openNetBackend({ backend: { kind: "tap", ifname: IFNAME } });
    ip("netns", "add", NS);
    // The relay's file descriptor stays attached to the tap in its new namespace.
    ip("link", "set", IFNAME, "netns", NS);
    ip("-n", NS, "link", "set", "lo", "up");
    ip("-n", NS, "addr", "add", "10.0.2.15/24", "dev", IFNAME);
    ip("-n", NS, "link", "set", IFNAME, "up");
    ip("-n", NS, "route", "add", "default", "via", "10.0.2.2");
    const link = JSON.parse(ip("-n", NS, "-j", "link", "show", "dev", IFNAME)) as { address: string }[];
    const mac = new Uint8Array(link[0].address.split(":").map((h) => parseInt(h, 16)));
    glue = new Glue(tap, mac);
  });

  after(() => {
    glue?.nat.close();
    tap?.close();
    spawnSync("ip", ["netns", "del", NS], { stdio: "ignore" });
  });

  /** Our sequence numbers wrap around 2^32 early in a transfer. */
  const NEAR_WRAP = 2 ** 32 - 100_000;

  test("a guest downloads 8 MiB from a host server (our sequence numbers wrap); both ends scale their windows", async () => {
    glue.iss = NEAR_WRAP;
    const body = randomBytes(8 << 20);
    const { server, port } = await hostServer((s) => s.end(body));
    const m = monitor(glue.nat);
    try {
      const r = await guest(`${PY_PRELUDE}
s = connect(${port})
n, h = recv_all(s)
print(n, h)`);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), `${body.length} ${sha256(body)}`);
    } finally {
      glue.iss = undefined;
      m.stop();
      server.close();
    }
    assert.ok(m.seen.sndWindowScale > 0 && m.seen.rcvWindowScale > 0, JSON.stringify(m.seen));
    assert.ok(m.seen.maxSndWnd > 65535, `the guest offered a window beyond 64 KiB: ${JSON.stringify(m.seen)}`);
  });

  test("a guest uploads 8 MiB to a host server that stalls: the window closes and reopens, the bytes arrive intact", async () => {
    let received: Promise<Buffer> | undefined;
    const { server, port } = await hostServer((s) => {
      received = readAll(s);
      // A host peer that does not read for a while: the guest must be held back by our window.
      s.pause();
      setTimeout(() => s.resume(), 800);
      s.on("end", () => s.end("done"));
    });
    const m = monitor(glue.nat);
    try {
      const r = await guest(`${PY_PRELUDE}
data = pattern(8 << 20, 1)
s = connect(${port})
s.sendall(data)
s.shutdown(socket.SHUT_WR)
n, h = recv_all(s)
print(hashlib.sha256(data).hexdigest(), n)`);
      assert.equal(r.code, 0, r.stderr);
      const got = await received!;
      assert.equal(got.length, 8 << 20);
      assert.equal(r.stdout.trim(), `${sha256(got)} 4`);
    } finally {
      m.stop();
      server.close();
    }
    assert.ok(m.seen.maxRcvWnd > 65535, `we offered a window beyond 64 KiB: ${JSON.stringify(m.seen)}`);
    assert.ok(m.seen.minRcvWnd < 16384, `the window closed while the host did not read: ${JSON.stringify(m.seen)}`);
  });

  test("a slow guest reader: the host socket is paused, the queue stays bounded", async () => {
    const body = randomBytes(4 << 20);
    const { server, port } = await hostServer((s) => s.end(body));
    const m = monitor(glue.nat);
    const probesBefore = glue.nat.stats.windowProbes;
    try {
      const r = await guest(`${PY_PRELUDE}
s = connect(${port})
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
time.sleep(0.7)
n, h = recv_all(s)
print(n, h)`);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), `${body.length} ${sha256(body)}`);
    } finally {
      m.stop();
      server.close();
    }
    assert.ok(m.seen.maxQueued <= 256 * 1024 + 65536, `queued towards the guest: ${m.seen.maxQueued}`);
    assert.ok(glue.nat.stats.windowProbes > probesBefore, "the guest's zero window was probed");
  });

  test("64 parallel connections each echo 64 KiB, the guest half-closing after sending", async () => {
    const { server, port } = await hostServer((s) => s.pipe(s));
    const before = glue.nat.stats.connectionsTotal;
    try {
      const r = await guest(`${PY_PRELUDE}
results = []
def one(i):
    data = pattern(65536, i)
    s = connect(${port})
    t = threading.Thread(target=s.sendall, args=(data,)); t.start()
    got = bytearray()
    sent_fin = False
    while True:
        if not t.is_alive() and not sent_fin:
            s.shutdown(socket.SHUT_WR); sent_fin = True
        s.settimeout(0.05 if not sent_fin else 20)
        try:
            b = s.recv(1 << 16)
        except socket.timeout:
            continue
        if not b: break
        got += b
    t.join()
    results.append(bytes(got) == data)
threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
for t in threads: t.start()
for t in threads: t.join()
print(sum(results), len(results))`);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), "64 64");
    } finally {
      server.close();
    }
    assert.ok(glue.nat.stats.connectionsTotal - before >= 64);
  });

  test("half-close from the guest: it sends, shuts down writing, then receives 2 MiB", async () => {
    const reply = randomBytes(2 << 20);
    let request: Buffer | undefined;
    const { server, port } = await hostServer((s) => {
      readAll(s).then((b) => {
        request = b;
        s.end(reply);
      });
    });
    try {
      const r = await guest(`${PY_PRELUDE}
s = connect(${port})
s.sendall(b"q" * 100000)
s.shutdown(socket.SHUT_WR)
n, h = recv_all(s)
print(n, h)`);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), `${reply.length} ${sha256(reply)}`);
      assert.equal(request?.length, 100000);
    } finally {
      server.close();
    }
  });

  test("half-close from the host: it ends at once, the guest still sends 1 MiB", async () => {
    let received: Promise<Buffer> | undefined;
    const { server, port } = await hostServer((s) => {
      received = readAll(s);
      s.end("bye");
    });
    try {
      const r = await guest(`${PY_PRELUDE}
s = connect(${port})
n, h = recv_all(s)
data = pattern(1 << 20, 7)
s.sendall(data)
s.close()
print(n, hashlib.sha256(data).hexdigest())`);
      assert.equal(r.code, 0, r.stderr);
      const got = await received!;
      assert.equal(r.stdout.trim(), `3 ${sha256(got)}`);
      assert.equal(got.length, 1 << 20);
    } finally {
      server.close();
    }
  });

  test("a RST from the guest resets the host socket", async () => {
    let hostError: Promise<string> | undefined;
    const { server, port } = await hostServer((s) => {
      hostError = new Promise((resolve) => {
        s.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
        s.on("end", () => resolve("end"));
        s.resume();
      });
    });
    const resetsBefore = glue.nat.stats.resetsFromGuest;
    try {
      const r = await guest(`${PY_PRELUDE}
s = connect(${port})
s.sendall(b"x")
time.sleep(0.2)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
print("closed")`);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(await hostError, "ECONNRESET");
    } finally {
      server.close();
    }
    assert.ok(glue.nat.stats.resetsFromGuest > resetsBefore);
  });

  test("a RST from the host resets the guest's socket", async () => {
    const { server, port } = await hostServer((s) => s.once("data", () => s.resetAndDestroy()));
    try {
      const r = await guest(`${PY_PRELUDE}
s = connect(${port})
s.sendall(b"x")
try:
    while s.recv(100): pass
    print("eof")
except ConnectionResetError:
    print("reset")`);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), "reset");
    } finally {
      server.close();
    }
  });

  test("a connection to a closed host port: the guest's connect() gets ECONNREFUSED", async () => {
    const { server, port } = await hostServer(() => {});
    await new Promise((r) => server.close(r)); // the port is closed now
    const refusedBefore = glue.nat.stats.refused;
    const r = await guest(`${PY_PRELUDE}
try:
    connect(${port})
    print("connected")
except ConnectionRefusedError:
    print("refused")`);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), "refused");
    assert.equal(glue.nat.stats.refused, refusedBefore + 1);
  });

  /**
   * 1 MiB one way with every `dataEvery`th data segment of that direction and
   * every `ackEvery`th pure ACK back lost (retransmissions are counted too, so
   * they are lost as well now and then). `upload` picks guest -> host.
   */
  async function lossyTransfer(t: TestContext, upload: boolean, dataEvery: number, ackEvery: number): Promise<void> {
    const size = 1 << 20;
    const body = randomBytes(size);
    let received: Promise<Buffer> | undefined;
    const { server, port } = await hostServer((s) => {
      received = readAll(s);
      if (upload) s.end();
      else s.end(body);
    });
    let data = 0;
    let acks = 0;
    const lose = (seg: Uint8Array) => (payloadLength(seg) > 0 ? ++data % dataEvery === 0 : ++acks % ackEvery === 0);
    // Data one way, its ACKs the other way.
    glue.dropToGuest = (seg) => (payloadLength(seg) > 0) !== upload && lose(seg);
    glue.dropFromGuest = (seg) => (payloadLength(seg) > 0) === upload && lose(seg);
    const droppedBefore = glue.dropped;
    glue.iss = NEAR_WRAP;
    const before = glue.nat.stats;
    const started = Date.now();
    try {
      const r = await guest(`${PY_PRELUDE}
s = connect(${port})
s.settimeout(None)
data = pattern(${size}, 3) if ${upload ? "True" : "False"} else b""
s.sendall(data)
s.shutdown(socket.SHUT_WR)
n, h = recv_all(s)
print(n, h, hashlib.sha256(data).hexdigest())`, 40_000);
      assert.equal(r.code, 0, r.stderr);
      const got = await received!;
      if (upload) assert.equal(got.length, size);
      assert.equal(r.stdout.trim(), upload ? `0 ${sha256(new Uint8Array())} ${sha256(got)}` : `${body.length} ${sha256(body)} ${sha256(new Uint8Array())}`);
    } finally {
      glue.dropToGuest = glue.dropFromGuest = undefined;
      glue.iss = undefined;
      server.close();
    }
    const after = glue.nat.stats;
    const lost = glue.dropped - droppedBefore;
    t.diagnostic(`${upload ? "upload" : "download"}: ${lost} segments lost, ${Date.now() - started} ms; ` +
      `we retransmitted ${after.retransmits - before.retransmits} (${after.fastRetransmits - before.fastRetransmits} fast), ` +
      `kept ${after.outOfOrderKept - before.outOfOrderKept} after holes`);
    assert.ok(lost > 100, `lost ${lost}`);
    if (!upload) {
      assert.ok(after.retransmits > before.retransmits, "we retransmitted");
      assert.ok(after.fastRetransmits > before.fastRetransmits, "some of it on duplicate ACKs");
    } else {
      assert.ok(after.outOfOrderKept > before.outOfOrderKept, "segments after a hole were kept until the guest filled it");
    }
  }

  // Towards the guest we are the sender: our RTO, fast retransmit and NewReno are tested.
  test("lost segments towards the guest (every 7th data segment, every 5th ACK back) are retransmitted", (t) => lossyTransfer(t, false, 7, 5));
  // From the guest Linux is the sender (without SACK, which we do not offer):
  // our out-of-order queue and duplicate ACKs are tested; a lower rate keeps it short.
  test("lost segments from the guest (every 13th data segment, every 7th of our ACKs) are recovered", (t) => lossyTransfer(t, true, 13, 7));

  test("a host port forward reaches a server in the guest; a forward to a closed guest port is reset", async () => {
    let markListening: () => void = () => {};
    const listening = new Promise<void>((r) => (markListening = r));
    const listener = guest(`
import socket
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8080)); srv.listen(1)
print("listening", flush=True)
c, addr = srv.accept()
print(addr[0], flush=True)
while True:
    b = c.recv(65536)
    if not b: break
    c.sendall(b)
c.close()`, 30_000, (so) => so.includes("listening") && markListening());
    const forward = net.createServer({ allowHalfOpen: true }, (s) => {
      const guestPort = s.localPort === forwardPort ? 8080 : 8081;
      glue.nat.openToGuest(GUEST, guestPort, GATEWAY, glue.nat.freePort(GUEST, guestPort, GATEWAY)!, s);
    });
    await new Promise<void>((r) => forward.listen(0, "127.0.0.1", r));
    const forwardPort = (forward.address() as AddressInfo).port;
    const closedForward = net.createServer({ allowHalfOpen: true }, (s) => {
      glue.nat.openToGuest(GUEST, 8081, GATEWAY, glue.nat.freePort(GUEST, 8081, GATEWAY)!, s);
    });
    await new Promise<void>((r) => closedForward.listen(0, "127.0.0.1", r));
    try {
      await listening;
      const data = randomBytes(1 << 20);
      const client = net.connect({ host: "127.0.0.1", port: forwardPort, allowHalfOpen: true });
      const echoed = readAll(client);
      client.end(data);
      const got = await echoed;
      assert.equal(got.length, data.length);
      assert.ok(got.equals(data), "the echo is intact");
      const r = await listener;
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim().split("\n").pop(), "10.0.2.2", "the guest sees the gateway as the peer");

      const closedPort = (closedForward.address() as AddressInfo).port;
      const refused = await new Promise<string>((resolve) => {
        const c = net.connect({ host: "127.0.0.1", port: closedPort });
        c.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
        c.on("close", () => resolve("closed"));
        c.resume();
      });
      assert.match(refused, /ECONNRESET|closed/);
    } finally {
      forward.close();
      closedForward.close();
    }
  });

  test("all connections are gone at the end; nothing was malformed", async () => {
    // Connections in TIME-WAIT linger 2 s.
    const deadline = Date.now() + 5000;
    while (glue.nat.stats.connectionsOpen > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(glue.nat.connections().map((c) => `${TcpNat.describe(c)} ${c.state}`), []);
    const s = glue.nat.stats;
    assert.deepEqual(s.bad, { truncated: 0, "data-offset": 0, checksum: 0, options: 0, port: 0 });
    assert.equal(s.queuedToGuest, 0, "the send budget's account balances");
    assert.equal(s.committedFromGuest, 0, "the receive budget's account balances");
  });
});
