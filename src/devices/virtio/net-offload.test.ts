import { test } from "node:test";
import assert from "node:assert/strict";
import {
  completeChecksum, segmentTcp, prepareTx, prepareTxWhole, prepareRx, transportChecksumValid, parseNetHdr, buildNetHdr, parseTcpFrame,
  VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
  VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_HDR_GSO_ECN, MAX_GSO_SEGMENTS,
  type NetHdr,
} from "./net-offload.js";
import { MAX_FRAME_BYTES } from "../../backends/net/net-backend.js";
import {
  tcpFrame, payload, offsets, transportChecksumOk, ipv4HeaderOk, refSum, pseudoHeader, rng, TCP, SRC4, DST4,
} from "./net-test-frames.js";

const ALL = { csum: true, tso4: true, tso6: true };
const NONE = { csum: false, tso4: false, tso6: false };

function hdr(h: Partial<NetHdr>): NetHdr {
  return { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0, ...h };
}

const u16 = (f: Uint8Array, at: number) => (f[at] << 8) | f[at + 1];
const u32 = (f: Uint8Array, at: number) => ((f[at] << 24) | (f[at + 1] << 16) | (f[at + 2] << 8) | f[at + 3]) >>> 0;

/** A UDP/IPv4 frame whose checksum field holds the pseudo-header sum (as a driver leaves it with NEEDS_CSUM). */
function partialUdp(data: Uint8Array): Uint8Array {
  const udpLen = 8 + data.length;
  const ip = [0x45, 0, (20 + udpLen) >> 8, (20 + udpLen) & 0xff, 0, 1, 0x40, 0, 64, 17, 0, 0, ...SRC4, ...DST4];
  const s = ~refSum(ip) & 0xffff;
  ip[10] = s >> 8;
  ip[11] = s & 0xff;
  const f = new Uint8Array(14 + 20 + udpLen);
  f.set([0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 0x08, 0x00], 0);
  f.set(ip, 14);
  f.set([0x30, 0x39, 0x00, 0x35, udpLen >> 8, udpLen & 0xff], 34);
  f.set(data, 42);
  const p = refSum(pseudoHeader(false, SRC4, DST4, 17, udpLen));
  f[40] = p >> 8;
  f[41] = p & 0xff;
  return f;
}

/** Checks the segments of `sup` against it: headers, lengths, ids, sequence numbers, flags, checksums, payload. */
function checkSegments(sup: Uint8Array, segs: Uint8Array[], mss: number): void {
  const o = offsets(sup);
  const data = sup.subarray(o.hdrLen, o.end);
  assert.equal(segs.length, Math.max(1, Math.ceil(data.length / mss)));
  const flags = sup[o.l4 + 13];
  let at = 0;
  for (const [i, seg] of segs.entries()) {
    const s = offsets(seg);
    assert.equal(s.hdrLen, o.hdrLen, "same headers");
    assert.equal(s.end, seg.length, "no padding");
    const n = seg.length - s.hdrLen;
    assert.equal(n, Math.min(mss, data.length - at));
    assert.deepEqual(seg.subarray(s.hdrLen), data.subarray(at, at + n), `segment ${i} payload`);
    // Everything but lengths, id, checksums, sequence number and flags is the super-frame's.
    const a = Uint8Array.from(seg.subarray(0, s.hdrLen));
    const b = Uint8Array.from(sup.subarray(0, o.hdrLen));
    for (const x of [a, b]) {
      if (o.ipv6) x.fill(0, o.l3 + 4, o.l3 + 6);
      else x.fill(0, o.l3 + 2, o.l3 + 6), x.fill(0, o.l3 + 10, o.l3 + 12);
      x.fill(0, o.l4 + 4, o.l4 + 8);
      x.fill(0, o.l4 + 13, o.l4 + 14);
      x.fill(0, o.l4 + 16, o.l4 + 18);
    }
    assert.deepEqual(a, b, `segment ${i} headers`);
    if (!o.ipv6) {
      assert.equal(u16(seg, o.l3 + 2), seg.length - o.l3, "IPv4 total length");
      assert.equal(u16(seg, o.l3 + 4), (u16(sup, o.l3 + 4) + i) & 0xffff, "IPv4 id increments");
      assert.ok(ipv4HeaderOk(seg), `segment ${i} IPv4 header checksum`);
    } else {
      assert.equal(u16(seg, o.l3 + 4), seg.length - o.l3 - 40, "IPv6 payload length");
    }
    assert.equal(u32(seg, o.l4 + 4), (u32(sup, o.l4 + 4) + at) >>> 0, "sequence number");
    const last = i === segs.length - 1;
    let want = flags;
    if (!last) want &= ~(TCP.FIN | TCP.PSH);
    if (i > 0) want &= ~TCP.CWR;
    assert.equal(seg[o.l4 + 13], want, `segment ${i} flags`);
    assert.ok(transportChecksumOk(seg), `segment ${i} TCP checksum`);
    assert.ok(seg.length <= MAX_FRAME_BYTES);
    at += n;
  }
  assert.equal(at, data.length);
}

test("net-offload: the virtio_net_hdr is little-endian and round-trips", () => {
  const h = { flags: 1, gsoType: 4, hdrLen: 0x1234, gsoSize: 1440, csumStart: 54, csumOffset: 16 };
  const b = buildNetHdr(h);
  assert.equal(b.length, 12);
  assert.deepEqual([...b], [1, 4, 0x34, 0x12, 0xa0, 0x05, 54, 0, 16, 0, 0, 0]);
  assert.deepEqual(parseNetHdr(b), h);
  assert.deepEqual(parseNetHdr(new Uint8Array(3)), hdr({}), "short input reads as zeros, never throws");
});

test("net-offload: a partial checksum is finished at csum_start + csum_offset (UDP and TCP, checked independently)", () => {
  for (const n of [0, 1, 17, 1000, 1001]) {
    const f = partialUdp(payload(n, n));
    assert.equal(completeChecksum(f, 34, 6), undefined);
    assert.ok(transportChecksumOk(f, 17), `UDP with ${n} bytes`);
    const t = tcpFrame({ payload: payload(n, n + 1), partial: true });
    assert.equal(completeChecksum(t, 34, 16), undefined);
    assert.ok(transportChecksumOk(t), `TCP with ${n} bytes`);
    const t6 = tcpFrame({ ipv6: true, payload: payload(n, n + 2), partial: true });
    assert.equal(completeChecksum(t6, 54, 16), undefined);
    assert.ok(transportChecksumOk(t6), `TCP/IPv6 with ${n} bytes`);
  }
  // A result of 0 goes out as 0xffff (0 means "no checksum" to UDP). Find a datagram whose sum is 0.
  let found = false;
  for (let v = 0; v < 0x10000 && !found; v++) {
    const f = partialUdp(Uint8Array.of(v >> 8, v & 0xff));
    const copy = f.slice();
    completeChecksum(copy, 34, 6);
    if (u16(copy, 40) === 0xffff) {
      found = true;
      assert.ok(transportChecksumOk(copy, 17));
    }
    assert.notEqual(u16(copy, 40), 0);
  }
  assert.ok(found);
});

test("net-offload: csum_start and csum_offset must put the field inside the frame", () => {
  const f = partialUdp(payload(10));
  const before = f.slice();
  assert.equal(completeChecksum(f, f.length, 0), "csum-range");
  assert.equal(completeChecksum(f, 34, f.length), "csum-range");
  assert.equal(completeChecksum(f, f.length - 1, 0), "csum-range", "a field needs 2 bytes");
  assert.equal(completeChecksum(f, 0xffff, 0xffff), "csum-range");
  assert.deepEqual(f, before, "nothing written when refused");
  assert.equal(completeChecksum(f, f.length - 2, 0), undefined, "the last two bytes are fine");
  assert.equal(prepareTx(hdr({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 60, csumOffset: 0 }), partialUdp(payload(10)), ALL), "csum-range");
});

test("net-offload: TSO over IPv4 cuts a 64 KiB super-frame into MSS-sized segments (46 of 1448 bytes)", () => {
  const data = payload(65535 - 20 - 32 - 8, 3); // the largest IPv4 packet with TCP timestamps
  const sup = tcpFrame({
    payload: data, flags: TCP.ACK | TCP.PSH | TCP.FIN | TCP.CWR, seq: 0xffff_f000, ipId: 0xfffe, partial: true,
    tcpOptions: [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2], // NOP NOP timestamps
  });
  assert.equal(sup.length - 14, 65535 - 8);
  const segs = segmentTcp(sup, VIRTIO_NET_HDR_GSO_TCPV4, 1448);
  assert.ok(Array.isArray(segs));
  assert.equal(segs.length, 46);
  checkSegments(sup, segs, 1448);
  // the sequence number wraps, so does the id
  assert.equal(u32(segs[3], 38), (0xffff_f000 + 3 * 1448) >>> 0);
  assert.equal(u16(segs[2], 18), 0);
  // through prepareTx, the way the device calls it
  const out = prepareTx(hdr({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448, hdrLen: 66, csumStart: 34, csumOffset: 16 }), sup, ALL);
  assert.deepEqual(out, segs);
});

test("net-offload: TSO over IPv4 copies IP options into every segment; an 802.1Q tag too", () => {
  const sup = tcpFrame({ payload: payload(5000, 4), ipOptions: [0x94, 4, 0, 0, 1, 1, 1, 0] /* router alert, NOPs, EOL */ });
  const segs = segmentTcp(sup, VIRTIO_NET_HDR_GSO_TCPV4, 1000);
  assert.ok(Array.isArray(segs));
  checkSegments(sup, segs, 1000);
  assert.equal(segs[1][14] & 15, 7, "IHL 7 in every segment");
  const tagged = tcpFrame({ payload: payload(3000, 5), vlan: 42 });
  const t = segmentTcp(tagged, VIRTIO_NET_HDR_GSO_TCPV4, 1460);
  assert.ok(Array.isArray(t));
  checkSegments(tagged, t, 1460);
  assert.equal(t[2][15], 42);
});

test("net-offload: TSO over IPv6: payload lengths and checksums with the IPv6 pseudo-header", () => {
  for (const [n, mss] of [[60000, 1428], [1428 * 3, 1428], [100, 1428], [0, 1428], [7, 2]] as const) {
    const sup = tcpFrame({ ipv6: true, payload: payload(n, n), flags: TCP.ACK | TCP.FIN | TCP.CWR, partial: true });
    const segs = segmentTcp(sup, VIRTIO_NET_HDR_GSO_TCPV6, mss);
    assert.ok(Array.isArray(segs), String(segs));
    checkSegments(sup, segs, mss);
  }
  // the ECN bit beside the type is accepted: CWR only on the first segment is what it asks for
  const sup = tcpFrame({ ipv6: true, payload: payload(4000), flags: TCP.ACK | TCP.CWR | TCP.ECE });
  const out = prepareTx(hdr({ gsoType: VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN, gsoSize: 1000, flags: 1 }), sup, ALL);
  assert.ok(Array.isArray(out));
  checkSegments(sup, out, 1000);
  assert.equal(out[0][54 + 13] & TCP.CWR, TCP.CWR);
  assert.equal(out[1][54 + 13] & TCP.CWR, 0);
  assert.equal(out[1][54 + 13] & TCP.ECE, TCP.ECE);
});

test("net-offload: trailing Ethernet padding after the IP packet is not part of any segment", () => {
  const sup = tcpFrame({ payload: payload(3000) });
  const padded = new Uint8Array(sup.length + 9);
  padded.set(sup);
  const segs = segmentTcp(padded, VIRTIO_NET_HDR_GSO_TCPV4, 1460);
  assert.ok(Array.isArray(segs));
  checkSegments(sup, segs, 1460);
});

test("net-offload: hostile transmit headers are refused with a reason, never thrown", () => {
  const sup = tcpFrame({ payload: payload(3000) });
  const sup6 = tcpFrame({ ipv6: true, payload: payload(3000) });
  const tso = (h: Partial<NetHdr>, f = sup, n = ALL) => prepareTx(hdr({ flags: 1, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1000, ...h }), f.slice(), n);
  assert.equal(tso({ hdrLen: sup.length + 1 }), "hdr-len");
  assert.ok(Array.isArray(tso({ hdrLen: sup.length })), "hdr_len is only a hint: anything inside the frame will do");
  assert.ok(Array.isArray(tso({ hdrLen: 0 })));
  assert.equal(tso({ gsoSize: 0 }), "gso-size");
  assert.equal(tso({ gsoSize: 1 }), "too-many-segments", "3000 one-byte segments");
  assert.equal(segmentTcp(tcpFrame({ payload: payload(MAX_GSO_SEGMENTS) }), VIRTIO_NET_HDR_GSO_TCPV4, 1).length, MAX_GSO_SEGMENTS);
  const one = tso({ gsoSize: 0xffff });
  assert.ok(Array.isArray(one) && one.length === 1, "a huge gso_size: one segment, checksums made");
  assert.ok(transportChecksumOk(one[0]));
  // a segment larger than any frame: the largest IPv6 packet behind a VLAN tag, in one piece
  const huge = tcpFrame({ ipv6: true, vlan: 1, payload: payload(65535 - 20) });
  assert.equal(tso({ gsoType: VIRTIO_NET_HDR_GSO_TCPV6, gsoSize: 0xffff }, huge), "segment-too-large");
  assert.ok(Array.isArray(tso({ gsoType: VIRTIO_NET_HDR_GSO_TCPV6, gsoSize: 1440 }, huge)));
  assert.equal(tso({ gsoType: VIRTIO_NET_HDR_GSO_UDP }), "gso-type", "UFO is not offered");
  assert.equal(tso({ gsoType: VIRTIO_NET_HDR_GSO_UDP_L4 }), "gso-type", "USO is not offered");
  assert.equal(tso({ gsoType: 2 }), "gso-type");
  assert.equal(tso({ gsoType: 0x7f }), "gso-type");
  assert.equal(tso({}, sup, { csum: true, tso4: false, tso6: true }), "gso-type", "TSO4 not negotiated");
  assert.equal(tso({ gsoType: VIRTIO_NET_HDR_GSO_TCPV6 }, sup6, { csum: true, tso4: true, tso6: false }), "gso-type");
  assert.equal(tso({}, sup6), "not-ip", "TCPV4 on an IPv6 frame");
  assert.equal(tso({ gsoType: VIRTIO_NET_HDR_GSO_TCPV6 }, sup), "not-ip");
  assert.equal(tso({}, tcpFrame({ payload: payload(3000), protocol: 17 })), "not-tcp");
  assert.equal(tso({}, tcpFrame({ payload: payload(3000), fragWord: 0x2000 })), "fragment", "MF");
  assert.equal(tso({}, tcpFrame({ payload: payload(3000), fragWord: 0x0010 })), "fragment", "an offset");
  // IPv6 with an extension header (hop-by-hop) in front of TCP
  const ext = sup6.slice();
  ext[14 + 6] = 0;
  assert.equal(tso({ gsoType: VIRTIO_NET_HDR_GSO_TCPV6 }, ext), "not-tcp");
  // truncated headers, at every length up to the payload
  for (let n = 0; n < 66; n++) {
    const r = tso({}, sup.subarray(0, n));
    assert.equal(typeof r, "string", `${n} bytes`);
  }
  for (let n = 0; n < 74; n++) assert.equal(typeof tso({ gsoType: VIRTIO_NET_HDR_GSO_TCPV6 }, sup6.subarray(0, n)), "string");
  const bad = (patch: (f: Uint8Array) => void, f = sup) => {
    const c = f.slice();
    patch(c);
    return tso({ gsoType: f === sup6 ? VIRTIO_NET_HDR_GSO_TCPV6 : VIRTIO_NET_HDR_GSO_TCPV4 }, c);
  };
  assert.equal(bad((f) => (f[14] = 0x44)), "ip-header", "IHL 4");
  assert.equal(bad((f) => (f[14] = 0x65)), "ip-header", "version 6 in an IPv4 frame");
  // IHL 15 makes the first 40 TCP bytes "options": nonsense, but a frame whose lengths add up; no reason to refuse
  assert.equal(typeof bad((f) => (f[14] = 0x4f)), "object");
  assert.equal(bad((f) => (f[16] = 0xff)), "ip-length", "total length beyond the frame");
  assert.equal(bad((f) => (f[16] = 0, f[17] = 19)), "ip-length", "total length below the header");
  assert.equal(bad((f) => (f[16] = 0, f[17] = 30)), "tcp-header", "total length cuts the TCP header");
  assert.equal(bad((f) => (f[46] = 0x40)), "tcp-header", "data offset 4");
  assert.equal(bad((f) => (f[18] = 0xff), sup6), "ip-length", "IPv6 payload length beyond the frame");
  assert.equal(bad((f) => (f[14] = 0x40), sup6), "ip-header");
  // not negotiated at all: the header is ignored, the frame goes as it is (as before offloads existed)
  const plain = prepareTx(hdr({ flags: 0xff, gsoType: 0xee, hdrLen: 0xffff, gsoSize: 0, csumStart: 0xffff, csumOffset: 0xffff }), sup.slice(), NONE);
  assert.deepEqual(plain, [sup]);
  assert.equal(prepareTx(hdr({}), new Uint8Array(13), ALL), "frame-length");
  assert.equal(prepareTx(hdr({}), new Uint8Array(MAX_FRAME_BYTES + 1), ALL), "frame-length");
});

test("net-offload: seeded fuzz: mutated headers and frames give segments or a reason, and segments are always valid", () => {
  const next = rng(13);
  const bases = [
    tcpFrame({ payload: payload(4000) }),
    tcpFrame({ ipv6: true, payload: payload(4000) }),
    tcpFrame({ payload: payload(2000), vlan: 7, ipOptions: [1, 1, 1, 1] }),
  ];
  let ok = 0;
  for (let i = 0; i < 3000; i++) {
    const f = bases[next() % bases.length].slice();
    const flips = 1 + (next() % 4);
    for (let k = 0; k < flips; k++) f[next() % 80] = next() & 0xff;
    const cut = next() % 4 === 0 ? f.subarray(0, next() % f.length) : f;
    const h = hdr({
      flags: next() & 3, gsoType: [1, 4, 0, 3, 5, 0x81, next() & 0xff][next() % 7], gsoSize: [1448, 0, 1, 0xffff, next() & 0xffff][next() % 5],
      hdrLen: next() % 5000, csumStart: next() % 200, csumOffset: next() % 40,
    });
    // A backend that takes super-frames whole is only ever given one that could be cut.
    const whole = prepareTxWhole(h, cut, ALL, ALL);
    if (whole !== undefined && typeof whole !== "string" && whole.gsoType) {
      assert.ok(Array.isArray(segmentTcp(cut, whole.gsoType, whole.gsoSize!)), `iteration ${i}`);
    }
    const out = prepareTx(h, cut.slice(), ALL);
    if (typeof out === "string") continue;
    ok++;
    if (h.gsoType & 0x7f) for (const s of out) assert.ok(transportChecksumOk(s), `iteration ${i}`);
    const meta = { gsoType: h.gsoType & 0x7f, gsoSize: h.gsoSize, needsCsum: (h.flags & 1) === 1, csumStart: h.csumStart, csumOffset: h.csumOffset };
    for (const guest of [ALL, NONE]) {
      const rx = prepareRx(cut, meta, guest);
      assert.ok(typeof rx === "string" || Array.isArray(rx));
    }
  }
  assert.ok(ok > 100, `${ok} accepted`);
});

test("net-offload receive: a super-frame goes whole to a guest that accepted GUEST_TSO, with NEEDS_CSUM and the pseudo-header sum", () => {
  const sup = tcpFrame({ payload: payload(30000), seq: 77 });
  const out = prepareRx(sup, { gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448 }, ALL);
  assert.ok(Array.isArray(out) && out.length === 1);
  const [e] = out;
  assert.deepEqual(parseNetHdr(e.hdr!), { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: 1, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16 });
  assert.equal(e.gsoType, 1);
  assert.equal(sup[50] === e.frame[50] && sup[51] === e.frame[51], false, "the field now holds the pseudo-header sum");
  assert.equal(u16(e.frame, 50), refSum(pseudoHeader(false, SRC4, DST4, 6, 30020)));
  // finishing it as the driver would gives a valid checksum again
  const done = e.frame.slice();
  completeChecksum(done, 34, 16);
  assert.ok(transportChecksumOk(done));
  assert.ok(transportChecksumOk(sup), "the backend's frame is not changed");
  // the same for IPv6
  const sup6 = tcpFrame({ ipv6: true, payload: payload(20000) });
  const out6 = prepareRx(sup6, { gsoType: VIRTIO_NET_HDR_GSO_TCPV6, gsoSize: 1428 }, ALL);
  assert.ok(Array.isArray(out6) && out6.length === 1);
  assert.deepEqual(parseNetHdr(out6[0].hdr!), { flags: 1, gsoType: 4, hdrLen: 74, gsoSize: 1428, csumStart: 54, csumOffset: 16 });
});

test("net-offload receive: a super-frame is segmented for a guest without GUEST_TSO, or when CWR is set (no GUEST_ECN)", () => {
  const sup = tcpFrame({ payload: payload(10000) });
  for (const [guest, flags] of [[NONE, undefined], [{ csum: true, tso4: false, tso6: true }, VIRTIO_NET_HDR_F_DATA_VALID], [{ csum: false, tso4: true, tso6: true }, undefined]] as const) {
    const out = prepareRx(sup, { gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448 }, guest);
    assert.ok(Array.isArray(out));
    checkSegments(sup, out.map((e) => e.frame), 1448);
    for (const e of out) {
      assert.equal(e.gsoType, undefined);
      assert.equal(e.hdr === undefined ? undefined : e.hdr[0], flags);
    }
  }
  const cwr = tcpFrame({ payload: payload(10000), flags: TCP.ACK | TCP.CWR });
  const out = prepareRx(cwr, { gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448 }, ALL);
  assert.ok(Array.isArray(out) && out.length === 7);
  // bad meta: refused
  assert.equal(prepareRx(sup, { gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 0 }, ALL), "gso-size");
  assert.equal(prepareRx(sup, { gsoType: VIRTIO_NET_HDR_GSO_UDP, gsoSize: 1000 }, ALL), "gso-type");
  assert.equal(prepareRx(sup, { gsoType: VIRTIO_NET_HDR_GSO_TCPV6, gsoSize: 1000 }, ALL), "not-ip");
  assert.equal(prepareRx(sup.subarray(0, 40), { gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1000 }, ALL), "ip-length");
  assert.equal(parseTcpFrame(sup, 0), "gso-type");
});

test("net-offload receive: partial checksums pass to a GUEST_CSUM driver and are finished for one without; DATA_VALID", () => {
  const f = partialUdp(payload(300));
  const meta = { needsCsum: true, csumStart: 34, csumOffset: 6 };
  const pass = prepareRx(f, meta, ALL);
  assert.ok(Array.isArray(pass) && pass.length === 1);
  assert.equal(pass[0].frame, f);
  assert.deepEqual(parseNetHdr(pass[0].hdr!), hdr({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 34, csumOffset: 6 }));
  const done = prepareRx(f, meta, NONE);
  assert.ok(Array.isArray(done) && done.length === 1);
  assert.equal(done[0].hdr, undefined, "flags stay zero without GUEST_CSUM");
  assert.ok(transportChecksumOk(done[0].frame, 17));
  assert.ok(!transportChecksumOk(f, 17), "the backend's frame is not changed");
  assert.equal(prepareRx(f, { needsCsum: true, csumStart: f.length - 1, csumOffset: 0 }, ALL), "csum-range");
  assert.equal(prepareRx(f, { needsCsum: true, csumStart: 34, csumOffset: 0xffff }, NONE), "csum-range");
  const valid = prepareRx(f, { dataValid: true }, ALL);
  assert.ok(Array.isArray(valid));
  assert.equal(valid[0].hdr![0], VIRTIO_NET_HDR_F_DATA_VALID);
  const noValid = prepareRx(f, { dataValid: true }, NONE);
  assert.ok(Array.isArray(noValid));
  assert.equal(noValid[0].hdr, undefined);
  const plain = prepareRx(f, undefined, ALL);
  assert.ok(Array.isArray(plain));
  assert.deepEqual(plain, [{ frame: f, hdr: undefined }]);
  assert.equal(prepareRx(new Uint8Array(MAX_FRAME_BYTES + 1), undefined, ALL), "frame-length");
  assert.equal(prepareRx(new Uint8Array(10), {}, ALL), "frame-length");
});

test("net-offload: prepareTxWhole passes what a backend takes, checked as segmenting would, and leaves the rest to prepareTx", () => {
  const sup = tcpFrame({ payload: payload(3000), partial: true });
  const sup6 = tcpFrame({ ipv6: true, payload: payload(3000), partial: true });
  const tso4 = hdr({ flags: 1, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448, hdrLen: 54, csumStart: 34, csumOffset: 16 });
  assert.deepEqual(prepareTxWhole(tso4, sup, ALL, ALL), { gsoType: 1, gsoSize: 1448, needsCsum: true, csumStart: 34, csumOffset: 16 });
  assert.deepEqual(prepareTxWhole({ ...tso4, gsoType: 4 | VIRTIO_NET_HDR_GSO_ECN }, sup6, ALL, ALL), { gsoType: 4, gsoSize: 1448, needsCsum: true, csumStart: 54, csumOffset: 16 });
  assert.equal(prepareTxWhole(tso4, sup, ALL, { csum: true, tso4: false, tso6: true }), undefined, "the backend does not take TSO4");
  assert.equal(prepareTxWhole(tso4, sup, { csum: true, tso4: false, tso6: false }, ALL), undefined, "not negotiated: prepareTx refuses it");
  assert.equal(prepareTxWhole(tso4, sup, NONE, ALL), undefined);
  assert.equal(prepareTxWhole({ ...tso4, gsoSize: 0 }, sup, ALL, ALL), "gso-size");
  assert.equal(prepareTxWhole({ ...tso4, gsoSize: 1 }, sup, ALL, ALL), "too-many-segments");
  assert.equal(prepareTxWhole({ ...tso4, hdrLen: sup.length + 1 }, sup, ALL, ALL), "hdr-len");
  assert.equal(prepareTxWhole(tso4, sup.subarray(0, 60), ALL, ALL), "ip-length", "truncated");
  assert.equal(prepareTxWhole(tso4, sup6, ALL, ALL), "not-ip");
  assert.equal(prepareTxWhole({ ...tso4, gsoType: VIRTIO_NET_HDR_GSO_UDP }, sup, ALL, ALL), undefined, "left to prepareTx, which refuses it");
  const csum = hdr({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 34, csumOffset: 16 });
  assert.deepEqual(prepareTxWhole(csum, sup, ALL, ALL), { needsCsum: true, csumStart: 34, csumOffset: 16 });
  assert.equal(prepareTxWhole(csum, sup, ALL, { csum: false, tso4: true, tso6: true }), undefined);
  assert.equal(prepareTxWhole({ ...csum, csumStart: sup.length - 1 }, sup, ALL, ALL), "csum-range");
  assert.equal(prepareTxWhole(hdr({}), sup, ALL, ALL), undefined, "nothing to offload: an ordinary frame");
});

test("net-offload receive: the device verifies TCP/UDP checksums of plain frames and says DATA_VALID to a GUEST_CSUM driver", () => {
  const finished = (f: Uint8Array, start: number, off: number) => (completeChecksum(f, start, off), f);
  const good = [
    tcpFrame({ payload: payload(1400) }),
    tcpFrame({ ipv6: true, payload: payload(1000) }),
    tcpFrame({ vlan: 5, payload: payload(33), ipOptions: [1, 1, 1, 0] }),
    tcpFrame({ payload: new Uint8Array(0) }),
    finished(partialUdp(payload(99)), 34, 6),
  ];
  for (const [i, f] of good.entries()) {
    assert.ok(transportChecksumValid(f), `good frame ${i}`);
    const out = prepareRx(f, undefined, ALL);
    assert.ok(Array.isArray(out));
    assert.equal(out[0].hdr?.[0], VIRTIO_NET_HDR_F_DATA_VALID, `good frame ${i}`);
    assert.equal(out[0].frame, f, "not copied");
    const plain = prepareRx(f, undefined, NONE);
    assert.ok(Array.isArray(plain));
    assert.equal(plain[0].hdr, undefined, "flags stay zero without GUEST_CSUM");
  }
  const corrupt = (f: Uint8Array, at: number) => ((f = f.slice()), (f[at] ^= 0x40), f);
  const padded = new Uint8Array(good[0].length + 6);
  padded.set(good[0]);
  assert.ok(transportChecksumValid(padded), "Ethernet padding after the packet is not summed");
  const noUdpSum = finished(partialUdp(payload(10)), 34, 6);
  noUdpSum[40] = noUdpSum[41] = 0;
  const bad = [
    corrupt(good[0], 100), // payload
    corrupt(good[1], 30), // IPv6 source address
    corrupt(good[4], 50),
    noUdpSum, // UDP without a checksum: left to the guest
    tcpFrame({ payload: payload(100), fragWord: 0x2000 }), // a fragment
    tcpFrame({ payload: payload(100), protocol: 1 }),
    good[0].subarray(0, 100), // truncated
    new Uint8Array(60), // not IP
    good[0].subarray(0, 10),
  ];
  for (const [i, f] of bad.entries()) {
    assert.equal(transportChecksumValid(f), false, `bad frame ${i}`);
    const out = prepareRx(f, undefined, ALL);
    assert.ok(Array.isArray(out) ? out[0].hdr === undefined : out === "frame-length", `bad frame ${i}: no DATA_VALID`);
  }
});
