// Reading and writing TCP segments (RFC 9293 3.1) and the sequence-number
// arithmetic of RFC 9293 3.4. The segments come from a guest, so the parser
// checks every length before it reads and returns an error name instead of
// throwing; the caller counts the drop.

import { IPPROTO_TCP, readU32, transportChecksum, writeU32 } from "../packet.js";

export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_PSH = 0x08;
export const TCP_ACK = 0x10;
export const TCP_URG = 0x20;

export const TCP_HEADER_LEN = 20;

/** RFC 7323 2.3: a shift count above 14 is taken as 14 (a window up to 2^30). */
export const MAX_WINDOW_SCALE = 14;

/** RFC 9293 3.7.1: without an MSS option the sender must assume 536 bytes. */
export const DEFAULT_MSS = 536;

export interface TcpSegment {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  /** The window field as sent (not yet scaled: RFC 7323 2.2 scales it only outside SYNs). */
  window: number;
  /** Options that matter to us; only read from SYN segments by the connection. */
  mss: number | undefined;
  windowScale: number | undefined;
  /** SACK-permitted (RFC 2018 2): the peer understands SACK blocks in our ACKs. */
  sackPermitted: boolean;
  /** SACK blocks (RFC 2018 3): [left, right) of data the peer holds after a hole; empty when none. */
  sackBlocks: [number, number][];
  /** The data (a view into the packet). */
  payload: Uint8Array;
}

export type TcpParseError = "truncated" | "data-offset" | "checksum" | "options";

/**
 * Parses a TCP segment of an IPv4 packet from `src` to `dst` (the IP payload),
 * checking the header length and the checksum over the pseudo-header
 * (RFC 9293 3.1).
 */
export function parseTcp(src: number, dst: number, p: Uint8Array): TcpSegment | TcpParseError {
  if (p.length < TCP_HEADER_LEN) return "truncated";
  const dataOffset = (p[12] >> 4) * 4;
  if (dataOffset < TCP_HEADER_LEN || dataOffset > p.length) return "data-offset";
  if (transportChecksum(src, dst, IPPROTO_TCP, p) !== 0) return "checksum";
  let mss: number | undefined;
  let windowScale: number | undefined;
  let sackPermitted = false;
  const sackBlocks: [number, number][] = [];
  // RFC 9293 3.2: options are kind (1 byte) [length (1 byte, counting kind and
  // length) data]; kinds 0 (end) and 1 (no-op) are a single byte.
  for (let i = TCP_HEADER_LEN; i < dataOffset; ) {
    const kind = p[i];
    if (kind === 0) break;
    if (kind === 1) {
      i++;
      continue;
    }
    if (i + 1 >= dataOffset) return "options";
    const length = p[i + 1];
    if (length < 2 || i + length > dataOffset) return "options";
    if (kind === 2 && length === 4) mss = (p[i + 2] << 8) | p[i + 3];
    else if (kind === 3 && length === 3) windowScale = Math.min(p[i + 2], MAX_WINDOW_SCALE);
    else if (kind === 4 && length === 2) sackPermitted = true;
    else if (kind === 5 && length >= 10 && (length - 2) % 8 === 0) {
      for (let b = i + 2; b < i + length; b += 8) sackBlocks.push([readU32(p, b), readU32(p, b + 4)]);
    }
    i += length;
  }
  return {
    srcPort: (p[0] << 8) | p[1],
    dstPort: (p[2] << 8) | p[3],
    seq: readU32(p, 4),
    ack: readU32(p, 8),
    flags: p[13],
    window: (p[14] << 8) | p[15],
    mss,
    windowScale,
    sackPermitted,
    sackBlocks,
    payload: p.subarray(dataOffset),
  };
}

export interface TcpHeaderFields {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  /** SYN segments only: our MSS option. */
  mss?: number;
  /** SYN segments only: our window-scale option (RFC 7323 2.2). */
  windowScale?: number;
  /** SYN segments only: SACK-permitted (RFC 2018 2). */
  sackPermitted?: boolean;
  /** SACK blocks (RFC 2018 3): [left edge, right edge) of data received after a hole; at most 4. */
  sackBlocks?: readonly (readonly [number, number])[];
}

/** A TCP segment from `src` to `dst` with its checksum filled in. */
export function buildTcp(src: number, dst: number, h: TcpHeaderFields, payload?: Uint8Array): Uint8Array {
  let optionsLength = 0;
  if (h.mss !== undefined) optionsLength += 4;
  if (h.windowScale !== undefined) optionsLength += 4; // NOP + 3 bytes, keeps 4-byte alignment
  if (h.sackPermitted) optionsLength += 4; // NOP NOP + 2 bytes
  const sackBlocks = h.sackBlocks?.slice(0, 4) ?? [];
  if (sackBlocks.length > 0) optionsLength += 4 + 8 * sackBlocks.length; // NOP NOP kind length + 8 per block
  const headerLength = TCP_HEADER_LEN + optionsLength;
  const p = new Uint8Array(headerLength + (payload?.length ?? 0));
  p[0] = h.srcPort >> 8;
  p[1] = h.srcPort & 0xff;
  p[2] = h.dstPort >> 8;
  p[3] = h.dstPort & 0xff;
  writeU32(p, 4, h.seq >>> 0);
  writeU32(p, 8, h.ack >>> 0);
  p[12] = (headerLength / 4) << 4;
  p[13] = h.flags;
  p[14] = (h.window >> 8) & 0xff;
  p[15] = h.window & 0xff;
  let i = TCP_HEADER_LEN;
  if (h.mss !== undefined) {
    p.set([2, 4, (h.mss >> 8) & 0xff, h.mss & 0xff], i);
    i += 4;
  }
  if (h.windowScale !== undefined) {
    p.set([1, 3, 3, h.windowScale], i);
    i += 4;
  }
  if (h.sackPermitted) {
    p.set([1, 1, 4, 2], i);
    i += 4;
  }
  if (sackBlocks.length > 0) {
    p.set([1, 1, 5, 2 + 8 * sackBlocks.length], i);
    i += 4;
    for (const [left, right] of sackBlocks) {
      writeU32(p, i, left >>> 0);
      writeU32(p, i + 4, right >>> 0);
      i += 8;
    }
  }
  if (payload) p.set(payload, headerLength);
  const sum = transportChecksum(src, dst, IPPROTO_TCP, p);
  p[16] = sum >> 8;
  p[17] = sum & 0xff;
  return p;
}

// --- sequence numbers (RFC 9293 3.4): 32-bit, compared modulo 2^32 ---

/** a + n modulo 2^32. */
export const seqAdd = (a: number, n: number): number => (a + n) >>> 0;
/** The signed distance b - a, for points less than 2^31 apart. */
export const seqDiff = (b: number, a: number): number => (b - a) | 0;
export const seqLt = (a: number, b: number): boolean => seqDiff(b, a) > 0;
export const seqLe = (a: number, b: number): boolean => seqDiff(b, a) >= 0;
export const seqGt = (a: number, b: number): boolean => seqDiff(b, a) < 0;
export const seqGe = (a: number, b: number): boolean => seqDiff(b, a) <= 0;

/** The sequence space a segment occupies: its data, plus one each for SYN and FIN (RFC 9293 3.4). */
export function segmentLength(s: TcpSegment): number {
  return s.payload.length + (s.flags & TCP_SYN ? 1 : 0) + (s.flags & TCP_FIN ? 1 : 0);
}
