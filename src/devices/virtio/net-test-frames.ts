// Crafted TCP/IP frames for the offload tests, and checksums computed
// independently of src/net/packet.ts (byte by byte, from the RFCs), so a
// test never checks the code under test against itself.

export interface TcpFrameSpec {
  ipv6?: boolean;
  vlan?: number;
  /** IPv4 options (a multiple of 4 bytes). */
  ipOptions?: number[];
  /** TCP options (a multiple of 4 bytes). */
  tcpOptions?: number[];
  payload: Uint8Array;
  seq?: number;
  ack?: number;
  /** TCP flags byte (default ACK | PSH). */
  flags?: number;
  ipId?: number;
  /** Fill the TCP checksum with the pseudo-header sum (a partial checksum) instead of the full one. */
  partial?: boolean;
  /** IPv4 flags+fragment offset word (default DF). */
  fragWord?: number;
  protocol?: number;
}

export const TCP = { FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10, URG: 0x20, ECE: 0x40, CWR: 0x80 };

export const SRC4 = [10, 0, 2, 15];
export const DST4 = [10, 0, 2, 2];
export const SRC6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x15];
export const DST6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02];

/** Ones' complement sum of 16-bit big-endian words, folded (reference implementation). */
export function refSum(bytes: ArrayLike<number>, start = 0, end = bytes.length): number {
  let s = 0;
  for (let i = start; i < end; i++) s += (i - start) % 2 === 0 ? bytes[i] * 256 : bytes[i];
  while (s > 0xffff) s = (s % 0x10000) + Math.floor(s / 0x10000);
  return s;
}

/** The pseudo-header bytes TCP/UDP checksums cover (RFC 793 / RFC 8200 8.1). */
export function pseudoHeader(ipv6: boolean, src: ArrayLike<number>, dst: ArrayLike<number>, proto: number, len: number): number[] {
  return ipv6
    ? [...Array.from(src), ...Array.from(dst), (len >>> 24) & 0xff, (len >>> 16) & 0xff, (len >>> 8) & 0xff, len & 0xff, 0, 0, 0, proto]
    : [...Array.from(src), ...Array.from(dst), 0, proto, (len >> 8) & 0xff, len & 0xff];
}

/** Where the headers of a frame made by tcpFrame are. */
export function offsets(f: Uint8Array): { l3: number; ipv6: boolean; l4: number; hdrLen: number; end: number } {
  const vlan = f[12] === 0x81 && f[13] === 0x00;
  const l3 = vlan ? 18 : 14;
  const type = (f[l3 - 2] << 8) | f[l3 - 1];
  const ipv6 = type === 0x86dd;
  const l4 = ipv6 ? l3 + 40 : l3 + (f[l3] & 15) * 4;
  const end = ipv6 ? l3 + 40 + ((f[l3 + 4] << 8) | f[l3 + 5]) : l3 + ((f[l3 + 2] << 8) | f[l3 + 3]);
  return { l3, ipv6, l4, hdrLen: l4 + (f[l4 + 12] >> 4) * 4, end };
}

/** True when the frame's transport (TCP or UDP) checksum verifies. */
export function transportChecksumOk(f: Uint8Array, proto = 6): boolean {
  const { l3, ipv6, l4, end } = offsets(f);
  const src = ipv6 ? f.subarray(l3 + 8, l3 + 24) : f.subarray(l3 + 12, l3 + 16);
  const dst = ipv6 ? f.subarray(l3 + 24, l3 + 40) : f.subarray(l3 + 16, l3 + 20);
  const bytes = [...pseudoHeader(ipv6, src, dst, proto, end - l4), ...f.subarray(l4, end)];
  return refSum(bytes) === 0xffff;
}

/** True when the IPv4 header checksum verifies. */
export function ipv4HeaderOk(f: Uint8Array): boolean {
  const { l3, l4 } = offsets(f);
  return refSum(f, l3, l4) === 0xffff;
}

/** An Ethernet frame with a TCP segment over IPv4 or IPv6, lengths and checksums filled in. */
export function tcpFrame(spec: TcpFrameSpec): Uint8Array {
  const ipv6 = spec.ipv6 ?? false;
  const ipOpts = spec.ipOptions ?? [];
  const tcpOpts = spec.tcpOptions ?? [];
  const eth = [0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1];
  if (spec.vlan !== undefined) eth.push(0x81, 0x00, (spec.vlan >> 8) & 0x0f, spec.vlan & 0xff);
  eth.push(...(ipv6 ? [0x86, 0xdd] : [0x08, 0x00]));
  const tcpLen = 20 + tcpOpts.length;
  const seq = spec.seq ?? 1000;
  const ack = spec.ack ?? 5000;
  const tcp = [
    0x9c, 0x40, 0x13, 0x88, // ports 40000 -> 5000
    (seq >>> 24) & 0xff, (seq >>> 16) & 0xff, (seq >>> 8) & 0xff, seq & 0xff,
    (ack >>> 24) & 0xff, (ack >>> 16) & 0xff, (ack >>> 8) & 0xff, ack & 0xff,
    (tcpLen / 4) << 4, spec.flags ?? (TCP.ACK | TCP.PSH), 0xfa, 0xf0, // window
    0, 0, 0, 0, // checksum, urgent pointer
    ...tcpOpts,
  ];
  const segLen = tcpLen + spec.payload.length;
  const proto = spec.protocol ?? 6;
  let ip: number[];
  if (ipv6) {
    ip = [0x60, 0, 0, 0, (segLen >> 8) & 0xff, segLen & 0xff, proto, 64, ...SRC6, ...DST6];
  } else {
    const ihl = 20 + ipOpts.length;
    const total = ihl + segLen;
    const id = spec.ipId ?? 0x1234;
    const frag = spec.fragWord ?? 0x4000;
    ip = [0x40 | (ihl / 4), 0, (total >> 8) & 0xff, total & 0xff, (id >> 8) & 0xff, id & 0xff,
      (frag >> 8) & 0xff, frag & 0xff, 64, proto, 0, 0, ...SRC4, ...DST4, ...ipOpts];
    const sum = ~refSum(ip) & 0xffff;
    ip[10] = sum >> 8;
    ip[11] = sum & 0xff;
  }
  const f = new Uint8Array(eth.length + ip.length + segLen);
  f.set(eth, 0);
  f.set(ip, eth.length);
  f.set(tcp, eth.length + ip.length);
  f.set(spec.payload, eth.length + ip.length + tcpLen);
  const l4 = eth.length + ip.length;
  const pseudo = pseudoHeader(ipv6, ipv6 ? SRC6 : SRC4, ipv6 ? DST6 : DST4, proto, segLen);
  const csum = spec.partial ? refSum(pseudo) : ~refSum([...pseudo, ...f.subarray(l4)]) & 0xffff;
  f[l4 + 16] = csum >> 8;
  f[l4 + 17] = csum & 0xff;
  return f;
}

/** `n` recognisable payload bytes. */
export function payload(n: number, seed = 1): Uint8Array {
  const p = new Uint8Array(n);
  for (let i = 0; i < n; i++) p[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return p;
}

/** A small deterministic generator for the fuzz loops (xorshift32). */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}
