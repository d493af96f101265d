// Checksum and TCP segmentation offload for virtio-net (virtio 1.2, 5.1.6
// "Device Operation"): the struct virtio_net_hdr in front of every frame, the
// partial checksum a driver leaves for the device to finish
// (VIRTIO_NET_HDR_F_NEEDS_CSUM, 5.1.6.2), and the cutting of a TCP
// super-frame into MSS-sized segments (gso_type TCPV4/TCPV6, 5.1.6.2 point
// 3), in both directions: a guest's super-frames for a backend that takes
// ordinary frames (prepareTx), and a backend's super-frames for a guest whose
// driver did not accept them (prepareRx).
//
// Everything here works on bytes a guest (or a peer behind a backend) wrote:
// no function throws on them. A header or frame that does not add up gives
// an OffloadError, which the device counts before it drops the frame.
//
// Segmentation does what a NIC's TSO engine (and Linux's tcp_gso_segment)
// does: every segment gets the super-frame's Ethernet, IP (IPv4 options
// included) and TCP headers (TCP options included); IPv4 total length, an
// identification one higher per segment and the header checksum; IPv6
// payload length; the TCP sequence number advanced by the payload before it;
// FIN and PSH only on the last segment, CWR only on the first; and each
// segment's TCP checksum computed in full. IPv6 extension headers and IP
// fragments are not segmented (refused).

import {
  parseEthernet, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPPROTO_TCP, IPPROTO_UDP, internetChecksum,
  pseudoHeaderSum, pseudoHeaderSumIpv6, readU32, writeU32,
} from "../../net/packet.js";
import {
  GSO_NONE, GSO_TCPV4, GSO_TCPV6, MAX_FRAME_BYTES, MAX_GSO_FRAME_BYTES, type FrameMeta, type GuestOffloads,
  type Offloads,
} from "../../backends/net/net-backend.js";

/** struct virtio_net_hdr flags (5.1.6). */
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;

/** gso_type values (5.1.6); ECN is a bit on top of a TCP type. */
export const VIRTIO_NET_HDR_GSO_NONE = GSO_NONE;
export const VIRTIO_NET_HDR_GSO_TCPV4 = GSO_TCPV4;
export const VIRTIO_NET_HDR_GSO_UDP = 3;
export const VIRTIO_NET_HDR_GSO_TCPV6 = GSO_TCPV6;
export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

/** struct virtio_net_hdr with num_buffers (VERSION_1: always 12 bytes). */
export const VIRTIO_NET_HDR_SIZE = 12;

/** The smallest frame: an Ethernet header (destination, source, type). */
export const MIN_FRAME_BYTES = 14;

/**
 * The most segments one super-frame may become. Linux never sends an MSS
 * below 48 bytes (TCP_MIN_SND_MSS), which cuts 64 KiB into 1366 segments;
 * beyond this bound a tiny gso_size would make one descriptor chain cost the
 * host thousands of frames.
 */
export const MAX_GSO_SEGMENTS = 2048;

/** TCP header flag bits (byte 13). */
const TCP_FIN = 0x01;
const TCP_PSH = 0x08;
const TCP_CWR = 0x80;
/** The checksum field's offset in the TCP header: csum_offset of a TCP partial checksum. */
export const TCP_CSUM_OFFSET = 16;

export interface NetHdr {
  flags: number;
  gsoType: number;
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
}

/** Reads struct virtio_net_hdr (little-endian fields) from the first 10 bytes of `b` (num_buffers is not read). */
export function parseNetHdr(b: Uint8Array): NetHdr {
  const u16 = (at: number) => (b[at] ?? 0) | ((b[at + 1] ?? 0) << 8);
  return { flags: b[0] ?? 0, gsoType: b[1] ?? 0, hdrLen: u16(2), gsoSize: u16(4), csumStart: u16(6), csumOffset: u16(8) };
}

/** A 12-byte struct virtio_net_hdr with num_buffers 0 (the device sets it when it delivers). */
export function buildNetHdr(h: Partial<NetHdr>): Uint8Array {
  const b = new Uint8Array(VIRTIO_NET_HDR_SIZE);
  const u16 = (at: number, v: number) => {
    b[at] = v & 0xff;
    b[at + 1] = (v >> 8) & 0xff;
  };
  b[0] = h.flags ?? 0;
  b[1] = h.gsoType ?? 0;
  u16(2, h.hdrLen ?? 0);
  u16(4, h.gsoSize ?? 0);
  u16(6, h.csumStart ?? 0);
  u16(8, h.csumOffset ?? 0);
  return b;
}

/** Why a frame could not be offloaded (the device counts it and drops the frame). */
export type OffloadError =
  | "frame-length" // runt, or longer than the largest (super-)frame
  | "csum-range" // csum_start + csum_offset + 2 beyond the frame
  | "gso-type" // a segmentation type not offered or not negotiated (UDP, USO, ...)
  | "gso-size" // gso_size 0
  | "hdr-len" // hdr_len beyond the frame
  | "too-many-segments" // gso_size so small the frame would become more than MAX_GSO_SEGMENTS
  | "segment-too-large" // gso_size so large a segment would exceed the largest frame
  | "not-ip" // the EtherType does not match the gso_type (IPv4 for TCPV4, IPv6 for TCPV6)
  | "ip-header" // wrong IP version, IPv4 header length below 20
  | "ip-length" // IP total/payload length beyond the frame or below its headers
  | "fragment" // an IPv4 fragment
  | "not-tcp" // not TCP (for IPv6: an extension header in front of it)
  | "tcp-header"; // TCP header truncated or its data offset below 5 or beyond the packet

// --- checksums ---

/**
 * Finishes a partial checksum in place (VIRTIO_NET_HDR_F_NEEDS_CSUM): the
 * ones' complement sum from csumStart to the end of the frame, the field at
 * csumStart + csumOffset (which holds the pseudo-header sum) included,
 * complemented and stored there. A result of 0 is stored as 0xffff, the same
 * number in ones' complement, since 0 means "no checksum" to UDP.
 */
export function completeChecksum(frame: Uint8Array, csumStart: number, csumOffset: number): OffloadError | undefined {
  const at = csumStart + csumOffset;
  if (at + 2 > frame.length) return "csum-range";
  const c = internetChecksum(frame.subarray(csumStart)) || 0xffff;
  frame[at] = c >> 8;
  frame[at + 1] = c & 0xff;
  return undefined;
}

function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/**
 * Whether the frame is TCP or UDP over IPv4 or IPv6 (no extension headers,
 * not a fragment) with a transport checksum that verifies: what a NIC's
 * receive checksum offload checks before it says DATA_VALID. A UDP datagram
 * without a checksum, one whose length is not the IP payload's, and
 * anything else are false (the guest checks those itself).
 */
export function transportChecksumValid(frame: Uint8Array): boolean {
  const eth = parseEthernet(frame);
  if (!eth) return false;
  const l3 = eth.payloadOffset;
  let l4: number;
  let end: number;
  let protocol: number;
  let pseudo: number;
  if (eth.type === ETHERTYPE_IPV4) {
    if (frame.length < l3 + 20 || frame[l3] >> 4 !== 4) return false;
    const ihl = (frame[l3] & 0x0f) * 4;
    const total = (frame[l3 + 2] << 8) | frame[l3 + 3];
    if (ihl < 20 || total < ihl || l3 + total > frame.length) return false;
    if ((frame[l3 + 6] & 0x3f) !== 0 || frame[l3 + 7] !== 0) return false;
    protocol = frame[l3 + 9];
    l4 = l3 + ihl;
    end = l3 + total;
    pseudo = pseudoHeaderSum(readU32(frame, l3 + 12), readU32(frame, l3 + 16), protocol, end - l4);
  } else if (eth.type === ETHERTYPE_IPV6) {
    if (frame.length < l3 + 40 || frame[l3] >> 4 !== 6) return false;
    protocol = frame[l3 + 6];
    l4 = l3 + 40;
    end = l4 + ((frame[l3 + 4] << 8) | frame[l3 + 5]);
    if (end > frame.length) return false;
    pseudo = pseudoHeaderSumIpv6(frame, l3 + 8, protocol, end - l4);
  } else {
    return false;
  }
  if (protocol === IPPROTO_TCP) {
    if (end - l4 < 20) return false;
  } else if (protocol === IPPROTO_UDP) {
    if (end - l4 < 8 || ((frame[l4 + 4] << 8) | frame[l4 + 5]) !== end - l4) return false;
    if (frame[l4 + 6] === 0 && frame[l4 + 7] === 0) return false;
  } else {
    return false;
  }
  return internetChecksum(frame.subarray(l4, end), pseudo) === 0;
}

// --- TCP frames ---

/** Where the headers of a TCP/IP frame are. */
export interface TcpFrame {
  ipv6: boolean;
  /** Offset of the IP header (14, or 18 behind an 802.1Q tag). */
  l3: number;
  /** Offset of the TCP header. */
  l4: number;
  /** Offset of the TCP payload: every header, the bytes copied into each segment. */
  hdrLen: number;
  /** End of the IP packet (what follows is Ethernet padding). */
  end: number;
}

/**
 * Finds and checks the headers of a TCP over IPv4 (gsoType TCPV4) or IPv6
 * (TCPV6) frame: the EtherType matches, the IP header is whole with a length
 * that fits the frame, not a fragment, TCP directly behind it, and the TCP
 * header (options included) inside the packet.
 */
export function parseTcpFrame(frame: Uint8Array, gsoType: number): TcpFrame | OffloadError {
  if (gsoType !== GSO_TCPV4 && gsoType !== GSO_TCPV6) return "gso-type";
  const eth = parseEthernet(frame);
  if (!eth) return "frame-length";
  const ipv6 = gsoType === GSO_TCPV6;
  const l3 = eth.payloadOffset;
  let l4: number;
  let end: number;
  if (!ipv6) {
    if (eth.type !== ETHERTYPE_IPV4) return "not-ip";
    if (frame.length < l3 + 20) return "ip-length";
    const ihl = (frame[l3] & 0x0f) * 4;
    if (frame[l3] >> 4 !== 4 || ihl < 20) return "ip-header";
    const total = (frame[l3 + 2] << 8) | frame[l3 + 3];
    if (total < ihl || l3 + total > frame.length) return "ip-length";
    if ((frame[l3 + 6] & 0x3f) !== 0 || frame[l3 + 7] !== 0) return "fragment"; // MF, or an offset
    if (frame[l3 + 9] !== IPPROTO_TCP) return "not-tcp";
    l4 = l3 + ihl;
    end = l3 + total;
  } else {
    if (eth.type !== ETHERTYPE_IPV6) return "not-ip";
    if (frame.length < l3 + 40) return "ip-length";
    if (frame[l3] >> 4 !== 6) return "ip-header";
    const payload = (frame[l3 + 4] << 8) | frame[l3 + 5];
    if (l3 + 40 + payload > frame.length) return "ip-length";
    if (frame[l3 + 6] !== IPPROTO_TCP) return "not-tcp";
    l4 = l3 + 40;
    end = l3 + 40 + payload;
  }
  if (l4 + 20 > end) return "tcp-header";
  const tcpLen = (frame[l4 + 12] >> 4) * 4;
  if (tcpLen < 20 || l4 + tcpLen > end) return "tcp-header";
  return { ipv6, l3, l4, hdrLen: l4 + tcpLen, end };
}

/** How many segments of `gsoSize` payload bytes frame `t` becomes, or why it cannot be cut so. */
function segmentCount(t: TcpFrame, gsoSize: number): number | OffloadError {
  if (gsoSize < 1) return "gso-size";
  const payload = t.end - t.hdrLen;
  const count = Math.max(1, Math.ceil(payload / gsoSize));
  if (count > MAX_GSO_SEGMENTS) return "too-many-segments";
  if (t.hdrLen + Math.min(gsoSize, payload) > MAX_FRAME_BYTES) return "segment-too-large";
  return count;
}

/** The TCP pseudo-header sum of `frame` for a TCP length of `tcpLength`, folded to 16 bits. */
function tcpPseudoSum(frame: Uint8Array, t: TcpFrame, tcpLength: number): number {
  return fold(t.ipv6
    ? pseudoHeaderSumIpv6(frame, t.l3 + 8, IPPROTO_TCP, tcpLength)
    : pseudoHeaderSum(readU32(frame, t.l3 + 12), readU32(frame, t.l3 + 16), IPPROTO_TCP, tcpLength));
}

/**
 * Cuts a TCP super-frame into segments of at most `gsoSize` payload bytes,
 * each a complete frame with correct lengths and checksums (see the top of
 * this file). The frame is not changed. A frame whose payload fits one
 * segment comes back as one segment, its checksums made.
 */
export function segmentTcp(frame: Uint8Array, gsoType: number, gsoSize: number): Uint8Array[] | OffloadError {
  const t = parseTcpFrame(frame, gsoType);
  if (typeof t === "string") return t;
  const count = segmentCount(t, gsoSize);
  if (typeof count === "string") return count;
  const { l3, l4, hdrLen, ipv6 } = t;
  const seq = readU32(frame, l4 + 4);
  const flags = frame[l4 + 13];
  const id = ipv6 ? 0 : (frame[l3 + 4] << 8) | frame[l3 + 5];
  const out: Uint8Array[] = [];
  for (let i = 0, off = hdrLen; i < count; i++) {
    const n = Math.min(gsoSize, t.end - off);
    const seg = new Uint8Array(hdrLen + n);
    seg.set(frame.subarray(0, hdrLen), 0);
    seg.set(frame.subarray(off, off + n), hdrLen);
    if (!ipv6) {
      const total = seg.length - l3;
      seg[l3 + 2] = total >> 8;
      seg[l3 + 3] = total & 0xff;
      const segId = (id + i) & 0xffff;
      seg[l3 + 4] = segId >> 8;
      seg[l3 + 5] = segId & 0xff;
      seg[l3 + 10] = seg[l3 + 11] = 0;
      const sum = internetChecksum(seg.subarray(l3, l4));
      seg[l3 + 10] = sum >> 8;
      seg[l3 + 11] = sum & 0xff;
    } else {
      const len = seg.length - l3 - 40;
      seg[l3 + 4] = len >> 8;
      seg[l3 + 5] = len & 0xff;
    }
    writeU32(seg, l4 + 4, (seq + (off - hdrLen)) >>> 0);
    let f = flags;
    if (i < count - 1) f &= ~(TCP_FIN | TCP_PSH);
    if (i > 0) f &= ~TCP_CWR;
    seg[l4 + 13] = f;
    seg[l4 + 16] = seg[l4 + 17] = 0;
    const sum = internetChecksum(seg.subarray(l4), tcpPseudoSum(seg, t, seg.length - l4));
    seg[l4 + 16] = sum >> 8;
    seg[l4 + 17] = sum & 0xff;
    out.push(seg);
    off += n;
  }
  return out;
}

// --- transmit: guest -> backend ---

/** The transmit offloads the driver accepted (VIRTIO_NET_F_CSUM, HOST_TSO4, HOST_TSO6). */
export type HostOffloads = Offloads;

/**
 * What the backend is given for one frame the guest transmitted behind
 * header `h`: the frame itself (its partial checksum finished when
 * NEEDS_CSUM is set), its segments (gso_type TCPV4/TCPV6), or why none.
 * `frame` is the device's own copy and may be changed in place.
 *
 * Without any transmit offload negotiated the header is ignored, as the
 * device always did (a driver then sets it to zeros, 5.1.6.2.1). With one,
 * flag bits other than NEEDS_CSUM are ignored (5.1.6.2.2), hdr_len is only
 * checked to lie inside the frame (the headers are read from the frame
 * itself: the spec says not to rely on hdr_len), and a gso_type the driver
 * did not negotiate is refused. The GSO ECN bit is accepted either way:
 * segmenting clears CWR after the first segment, which is what it asks for.
 */
export function prepareTx(h: NetHdr, frame: Uint8Array, negotiated: HostOffloads): Uint8Array[] | OffloadError {
  if (frame.length < MIN_FRAME_BYTES) return "frame-length";
  const any = negotiated.csum || negotiated.tso4 || negotiated.tso6;
  const gsoType = any ? h.gsoType & ~VIRTIO_NET_HDR_GSO_ECN : GSO_NONE;
  if (gsoType !== GSO_NONE) {
    if (!(gsoType === GSO_TCPV4 && negotiated.tso4) && !(gsoType === GSO_TCPV6 && negotiated.tso6)) return "gso-type";
    if (frame.length > MAX_GSO_FRAME_BYTES) return "frame-length";
    if (h.hdrLen > frame.length) return "hdr-len";
    return segmentTcp(frame, gsoType, h.gsoSize);
  }
  if (frame.length > MAX_FRAME_BYTES) return "frame-length";
  if (any && h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
    const err = completeChecksum(frame, h.csumStart, h.csumOffset);
    if (err) return err;
  }
  return [frame];
}

/**
 * For a backend that takes some offloads whole (NetBackend.txOffloads): the
 * FrameMeta to send one transmitted frame with, unchanged; undefined when
 * the backend does not take what the frame asks for (prepareTx then
 * segments it or finishes its checksum, or says what is wrong with it), or
 * why the frame is refused. A super-frame is checked as thoroughly as
 * segmenting it would (headers, gso_size, segment count and size), so a
 * backend is never handed one that could not be cut; its meta says where its
 * TCP checksum is (the field holds the guest's pseudo-header sum).
 */
export function prepareTxWhole(h: NetHdr, frame: Uint8Array, negotiated: HostOffloads, backend: Offloads): FrameMeta | OffloadError | undefined {
  if (!(negotiated.csum || negotiated.tso4 || negotiated.tso6) || frame.length < MIN_FRAME_BYTES) return undefined;
  const gsoType = h.gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
  if (gsoType !== GSO_NONE) {
    const takes = gsoType === GSO_TCPV4 ? negotiated.tso4 && backend.tso4 : gsoType === GSO_TCPV6 && negotiated.tso6 && backend.tso6;
    if (!takes) return undefined;
    if (frame.length > MAX_GSO_FRAME_BYTES) return "frame-length";
    if (h.hdrLen > frame.length) return "hdr-len";
    const t = parseTcpFrame(frame, gsoType);
    if (typeof t === "string") return t;
    const count = segmentCount(t, h.gsoSize);
    if (typeof count === "string") return count;
    return { gsoType, gsoSize: h.gsoSize, needsCsum: true, csumStart: t.l4, csumOffset: TCP_CSUM_OFFSET };
  }
  if (!(h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) || !backend.csum) return undefined;
  if (frame.length > MAX_FRAME_BYTES) return "frame-length";
  if (h.csumStart + h.csumOffset + 2 > frame.length) return "csum-range";
  return { needsCsum: true, csumStart: h.csumStart, csumOffset: h.csumOffset };
}

// --- receive: backend -> guest ---

/** A frame on its way into the guest, with its header (num_buffers is set at delivery). */
export interface RxFrame {
  frame: Uint8Array;
  /** 12 bytes; undefined for an all-zero header (no offload). */
  hdr: Uint8Array | undefined;
  /** A super-frame the guest takes whole: its type and MSS, to cut it after all if it fits no buffer. */
  gsoType?: number;
  gsoSize?: number;
}

/**
 * Turns a frame from the backend and its FrameMeta into what the guest
 * receives, given the offloads its driver accepted (5.1.6.4):
 * - a super-frame goes whole when the driver accepted GUEST_CSUM and the TSO
 *   of its IP version, with NEEDS_CSUM, gso_type, gso_size, hdr_len = its
 *   headers, and the TCP checksum field set to the pseudo-header sum (for the
 *   whole TCP length) as 5.1.6.4.1 asks; one with CWR set is segmented, as
 *   GUEST_ECN is not offered. Otherwise it is segmented here, each segment
 *   fully checksummed (DATA_VALID with GUEST_CSUM: the device made them);
 * - a partial checksum goes as is (NEEDS_CSUM) with GUEST_CSUM, and is
 *   finished here without;
 * - dataValid becomes DATA_VALID with GUEST_CSUM (flags stay zero without, 5.1.6.4.1);
 * - any other TCP or UDP frame gets DATA_VALID with GUEST_CSUM when its
 *   checksum verifies here (transportChecksumValid; 5.1.6.4.1: the device
 *   MUST have validated it), so the guest's kernel does not sum every byte
 *   again in interpreted code; a bad checksum is left for the guest to see.
 * Frame lengths are checked here, so the device needs only the outer bound.
 */
export function prepareRx(frame: Uint8Array, meta: FrameMeta | undefined, guest: GuestOffloads): RxFrame[] | OffloadError {
  const gsoType = meta?.gsoType ?? GSO_NONE;
  if (frame.length < MIN_FRAME_BYTES) return "frame-length";
  if (!meta) {
    if (frame.length > MAX_FRAME_BYTES) return "frame-length";
    return [{ frame, hdr: validated(frame, guest) }];
  }
  if (gsoType !== GSO_NONE) {
    if (frame.length > MAX_GSO_FRAME_BYTES) return "frame-length";
    const gsoSize = meta.gsoSize ?? 0;
    const t = parseTcpFrame(frame, gsoType);
    if (typeof t === "string") return t;
    if (gsoSize < 1) return "gso-size";
    const whole = guest.csum && (gsoType === GSO_TCPV4 ? guest.tso4 : guest.tso6) && (frame[t.l4 + 13] & TCP_CWR) === 0;
    if (whole && Math.ceil((t.end - t.hdrLen) / gsoSize) <= MAX_GSO_SEGMENTS) {
      const copy = frame.slice(0, t.end);
      const sum = tcpPseudoSum(copy, t, t.end - t.l4);
      copy[t.l4 + TCP_CSUM_OFFSET] = sum >> 8;
      copy[t.l4 + TCP_CSUM_OFFSET + 1] = sum & 0xff;
      const hdr = buildNetHdr({
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType, hdrLen: t.hdrLen, gsoSize,
        csumStart: t.l4, csumOffset: TCP_CSUM_OFFSET,
      });
      return [{ frame: copy, hdr, gsoType, gsoSize }];
    }
    return segmentsForGuest(frame, gsoType, gsoSize, guest);
  }
  if (frame.length > MAX_FRAME_BYTES) return "frame-length";
  if (meta.needsCsum) {
    const start = meta.csumStart ?? 0;
    const offset = meta.csumOffset ?? 0;
    if (start + offset + 2 > frame.length) return "csum-range";
    if (guest.csum) {
      return [{ frame, hdr: buildNetHdr({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: start, csumOffset: offset }) }];
    }
    const copy = frame.slice();
    completeChecksum(copy, start, offset);
    return [{ frame: copy, hdr: undefined }];
  }
  if (meta.dataValid && guest.csum) return [{ frame, hdr: buildNetHdr({ flags: VIRTIO_NET_HDR_F_DATA_VALID }) }];
  return [{ frame, hdr: validated(frame, guest) }];
}

/** A DATA_VALID header for a frame whose checksum the device verified, for a driver that reads flags. */
function validated(frame: Uint8Array, guest: GuestOffloads): Uint8Array | undefined {
  return guest.csum && transportChecksumValid(frame) ? buildNetHdr({ flags: VIRTIO_NET_HDR_F_DATA_VALID }) : undefined;
}

/** A super-frame cut here for the guest: ordinary frames, DATA_VALID when the driver reads flags. */
export function segmentsForGuest(frame: Uint8Array, gsoType: number, gsoSize: number, guest: GuestOffloads): RxFrame[] | OffloadError {
  const segs = segmentTcp(frame, gsoType, gsoSize);
  if (typeof segs === "string") return segs;
  return segs.map((seg) => ({ frame: seg, hdr: guest.csum ? buildNetHdr({ flags: VIRTIO_NET_HDR_F_DATA_VALID }) : undefined }));
}
