// Reading and writing the headers the virtual network looks at: Ethernet II
// with an optional 802.1Q tag, ARP (RFC 826), IPv4 (RFC 791), UDP (RFC 768)
// and the Internet checksum (RFC 1071). Everything here works on bytes from a
// guest, so every parser checks lengths and returns undefined for what it
// cannot read instead of throwing; the caller counts the drop.
//
// IPv4 addresses are unsigned 32-bit numbers (10.0.2.15 = 0x0a00020f), MAC
// addresses 6-byte arrays.

export const ETH_HLEN = 14;
export const VLAN_TAG_LEN = 4;
export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const ETHERTYPE_VLAN = 0x8100;
export const ETHERTYPE_IPV6 = 0x86dd;

export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;

export const BROADCAST_MAC = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

// --- MAC addresses ---

/** Group addresses (broadcast included) have the I/G bit, bit 0 of the first byte, set. */
export function isMulticastMac(mac: Uint8Array, offset = 0): boolean {
  return (mac[offset] & 1) === 1;
}

export function macEquals(a: Uint8Array, aOffset: number, b: Uint8Array, bOffset = 0): boolean {
  for (let i = 0; i < 6; i++) if (a[aOffset + i] !== b[bOffset + i]) return false;
  return true;
}

/** A MAC address as a number (48 bits fit a double exactly): a cheap Map key. */
export function macKey(bytes: Uint8Array, offset = 0): number {
  return (bytes[offset] * 2 ** 40) + (bytes[offset + 1] * 2 ** 32) +
    ((bytes[offset + 2] << 24) >>> 0) + (bytes[offset + 3] << 16) + (bytes[offset + 4] << 8) + bytes[offset + 5];
}

export function macString(mac: Uint8Array, offset = 0): string {
  return Array.from(mac.subarray(offset, offset + 6), (b) => b.toString(16).padStart(2, "0")).join(":");
}

// --- Ethernet ---

export interface EthernetHeader {
  /** Offset of the destination and source addresses in the frame (always 0 and 6). */
  readonly dst: Uint8Array;
  readonly src: Uint8Array;
  /** The EtherType after any 802.1Q tag. */
  readonly type: number;
  /** The VLAN ID of an 802.1Q tag (1..4094), or undefined for an untagged frame. */
  readonly vlan: number | undefined;
  /** Where the payload starts (14, or 18 behind a tag). */
  readonly payloadOffset: number;
}

/** Parses an Ethernet II header; undefined for runts and truncated tags. */
export function parseEthernet(frame: Uint8Array): EthernetHeader | undefined {
  if (frame.length < ETH_HLEN) return undefined;
  let type = (frame[12] << 8) | frame[13];
  let vlan: number | undefined;
  let payloadOffset = ETH_HLEN;
  if (type === ETHERTYPE_VLAN) {
    if (frame.length < ETH_HLEN + VLAN_TAG_LEN) return undefined;
    vlan = ((frame[14] << 8) | frame[15]) & 0x0fff;
    type = (frame[16] << 8) | frame[17];
    payloadOffset += VLAN_TAG_LEN;
  }
  return { dst: frame.subarray(0, 6), src: frame.subarray(6, 12), type, vlan, payloadOffset };
}

/** An untagged Ethernet II frame around `payload`. */
export function buildEthernet(dst: Uint8Array, src: Uint8Array, type: number, payload: Uint8Array): Uint8Array {
  const frame = new Uint8Array(ETH_HLEN + payload.length);
  frame.set(dst.subarray(0, 6), 0);
  frame.set(src.subarray(0, 6), 6);
  frame[12] = type >> 8;
  frame[13] = type & 0xff;
  frame.set(payload, ETH_HLEN);
  return frame;
}

/** The frame with an 802.1Q tag for `vlan` inserted after the source address (priority 0). */
export function addVlanTag(frame: Uint8Array, vlan: number): Uint8Array {
  const out = new Uint8Array(frame.length + VLAN_TAG_LEN);
  out.set(frame.subarray(0, 12), 0);
  out[12] = ETHERTYPE_VLAN >> 8;
  out[13] = ETHERTYPE_VLAN & 0xff;
  out[14] = (vlan >> 8) & 0x0f;
  out[15] = vlan & 0xff;
  out.set(frame.subarray(12), 16);
  return out;
}

/** The frame without its 802.1Q tag (the caller checked there is one). */
export function removeVlanTag(frame: Uint8Array): Uint8Array {
  const out = new Uint8Array(frame.length - VLAN_TAG_LEN);
  out.set(frame.subarray(0, 12), 0);
  out.set(frame.subarray(16), 12);
  return out;
}

// --- ARP (RFC 826, for IPv4 over Ethernet) ---

export const ARP_LEN = 28;
export const ARP_REQUEST = 1;
export const ARP_REPLY = 2;

export interface ArpPacket {
  op: number;
  senderMac: Uint8Array;
  senderIp: number;
  targetMac: Uint8Array;
  targetIp: number;
}

/** Parses an ARP packet for IPv4 over Ethernet; undefined for anything else. */
export function parseArp(p: Uint8Array): ArpPacket | undefined {
  if (p.length < ARP_LEN) return undefined;
  // htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4
  if (p[0] !== 0 || p[1] !== 1 || p[2] !== 0x08 || p[3] !== 0x00 || p[4] !== 6 || p[5] !== 4) return undefined;
  return {
    op: (p[6] << 8) | p[7],
    senderMac: p.slice(8, 14),
    senderIp: readU32(p, 14),
    targetMac: p.slice(18, 24),
    targetIp: readU32(p, 24),
  };
}

export function buildArp(a: ArpPacket): Uint8Array {
  const p = new Uint8Array(ARP_LEN);
  p.set([0, 1, 0x08, 0x00, 6, 4, a.op >> 8, a.op & 0xff]);
  p.set(a.senderMac.subarray(0, 6), 8);
  writeU32(p, 14, a.senderIp);
  p.set(a.targetMac.subarray(0, 6), 18);
  writeU32(p, 24, a.targetIp);
  return p;
}

// --- IPv4 (RFC 791) ---

export interface Ipv4Header {
  /** Header length in bytes (20..60). */
  headerLength: number;
  /** Total length from the header: header plus payload. */
  totalLength: number;
  id: number;
  /** Don't Fragment. */
  df: boolean;
  /** More Fragments, or a non-zero fragment offset: a fragment. */
  fragment: boolean;
  ttl: number;
  protocol: number;
  src: number;
  dst: number;
  /** The payload (a view into the packet, trailing Ethernet padding cut off). */
  payload: Uint8Array;
}

export type Ipv4Error = "truncated" | "version" | "header-length" | "total-length" | "checksum";

/**
 * Parses and checks an IPv4 header: version 4, a header length of at least 20
 * bytes, a total length that fits the bytes received (Ethernet may pad a
 * short packet: the padding is cut off), and a valid header checksum.
 */
export function parseIpv4(p: Uint8Array): Ipv4Header | Ipv4Error {
  if (p.length < 20) return "truncated";
  if (p[0] >> 4 !== 4) return "version";
  const headerLength = (p[0] & 0x0f) * 4;
  if (headerLength < 20 || headerLength > p.length) return "header-length";
  const totalLength = (p[2] << 8) | p[3];
  if (totalLength < headerLength || totalLength > p.length) return "total-length";
  if (internetChecksum(p.subarray(0, headerLength)) !== 0) return "checksum";
  const flagsFrag = (p[6] << 8) | p[7];
  return {
    headerLength,
    totalLength,
    id: (p[4] << 8) | p[5],
    df: (flagsFrag & 0x4000) !== 0,
    fragment: (flagsFrag & 0x2000) !== 0 || (flagsFrag & 0x1fff) !== 0,
    ttl: p[8],
    protocol: p[9],
    src: readU32(p, 12),
    dst: readU32(p, 16),
    payload: p.subarray(headerLength, totalLength),
  };
}

let nextIpId = 1;

/** An IPv4 packet (20-byte header, DF set, TTL 64) around `payload`, checksum filled in. */
export function buildIpv4(src: number, dst: number, protocol: number, payload: Uint8Array, ttl = 64): Uint8Array {
  const p = new Uint8Array(20 + payload.length);
  const total = p.length;
  p[0] = 0x45;
  p[2] = total >> 8;
  p[3] = total & 0xff;
  const id = nextIpId;
  nextIpId = (nextIpId + 1) & 0xffff;
  p[4] = id >> 8;
  p[5] = id & 0xff;
  p[6] = 0x40; // DF: the virtual network never fragments
  p[8] = ttl;
  p[9] = protocol;
  writeU32(p, 12, src);
  writeU32(p, 16, dst);
  const sum = internetChecksum(p.subarray(0, 20));
  p[10] = sum >> 8;
  p[11] = sum & 0xff;
  p.set(payload, 20);
  return p;
}

// --- the Internet checksum (RFC 1071) ---

/** The ones' complement sum of `data` as 16-bit big-endian words, folded, not complemented. */
export function onesSum(data: Uint8Array, initial = 0): number {
  let sum = initial;
  const n = data.length & ~1;
  for (let i = 0; i < n; i += 2) sum += (data[i] << 8) | data[i + 1];
  if (data.length & 1) sum += data[data.length - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** The Internet checksum of `data`: 0 when a packet with its checksum field filled in is intact. */
export function internetChecksum(data: Uint8Array, initial = 0): number {
  return ~onesSum(data, initial) & 0xffff;
}

/** The sum of the IPv4 pseudo-header TCP and UDP checksums cover (RFC 793 3.1, RFC 768). */
export function pseudoHeaderSum(src: number, dst: number, protocol: number, length: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + protocol + length;
}

/**
 * The sum of the IPv6 pseudo-header TCP and UDP checksums cover (RFC 8200
 * 8.1): source and destination address (`p` from `offset`: the 32 bytes at
 * offset 8 of an IPv6 header), the upper-layer length as 32 bits, the next header.
 */
export function pseudoHeaderSumIpv6(p: Uint8Array, offset: number, protocol: number, length: number): number {
  return onesSum(p.subarray(offset, offset + 32)) + (length >>> 16) + (length & 0xffff) + protocol;
}

/** The TCP or UDP checksum of `segment` (its checksum field included in the sum). */
export function transportChecksum(src: number, dst: number, protocol: number, segment: Uint8Array): number {
  return internetChecksum(segment, pseudoHeaderSum(src, dst, protocol, segment.length));
}

// --- UDP (RFC 768) ---

export interface UdpDatagram {
  srcPort: number;
  dstPort: number;
  payload: Uint8Array;
}

/** Parses a UDP datagram of an IPv4 packet; checks length and (when not zero) the checksum. */
export function parseUdp(src: number, dst: number, p: Uint8Array): UdpDatagram | "truncated" | "length" | "checksum" {
  if (p.length < 8) return "truncated";
  const length = (p[4] << 8) | p[5];
  if (length < 8 || length > p.length) return "length";
  const checksum = (p[6] << 8) | p[7];
  if (checksum !== 0 && transportChecksum(src, dst, IPPROTO_UDP, p.subarray(0, length)) !== 0) return "checksum";
  return { srcPort: (p[0] << 8) | p[1], dstPort: (p[2] << 8) | p[3], payload: p.subarray(8, length) };
}

/** A UDP datagram with its checksum. */
export function buildUdp(src: number, dst: number, srcPort: number, dstPort: number, payload: Uint8Array): Uint8Array {
  const p = new Uint8Array(8 + payload.length);
  p[0] = srcPort >> 8;
  p[1] = srcPort & 0xff;
  p[2] = dstPort >> 8;
  p[3] = dstPort & 0xff;
  p[4] = p.length >> 8;
  p[5] = p.length & 0xff;
  p.set(payload, 8);
  const sum = transportChecksum(src, dst, IPPROTO_UDP, p) || 0xffff; // 0 means "no checksum" in UDP
  p[6] = sum >> 8;
  p[7] = sum & 0xff;
  return p;
}

// --- addresses and byte order ---

export function readU32(p: Uint8Array, offset: number): number {
  return ((p[offset] << 24) | (p[offset + 1] << 16) | (p[offset + 2] << 8) | p[offset + 3]) >>> 0;
}

export function writeU32(p: Uint8Array, offset: number, v: number): void {
  p[offset] = v >>> 24;
  p[offset + 1] = (v >>> 16) & 0xff;
  p[offset + 2] = (v >>> 8) & 0xff;
  p[offset + 3] = v & 0xff;
}

/** "10.0.2.15" -> 0x0a00020f; undefined when not a dotted quad. */
export function parseIpv4Address(text: string): number | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (!m) return undefined;
  const parts = m.slice(1).map(Number);
  if (parts.some((n) => n > 255)) return undefined;
  return ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0;
}

export function ipv4String(ip: number): string {
  return `${ip >>> 24}.${(ip >>> 16) & 0xff}.${(ip >>> 8) & 0xff}.${ip & 0xff}`;
}
