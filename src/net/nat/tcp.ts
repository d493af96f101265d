// The TCP part of the user-mode NAT (as QEMU's slirp and passt do it): the
// guest's TCP connections to any address end here and continue as host
// sockets, and host port forwards open connections into the guest. The rest
// of the NAT (Ethernet, ARP, DHCP, IPv4) hands us the IP payloads of TCP
// packets and wraps what we emit.
//
// No maintained TCP/IP stack for Node fits. Looked at: tcpip.js (gVisor's
// netstack compiled to WebAssembly: a Go runtime in every VMM process, and a
// socket API for its own addresses rather than a way to terminate connections
// to any address) and picotcp.js (PicoTCP in WebAssembly, unmaintained since
// 2019). So this is a TCP endpoint of its own, in files of one concern each:
//   tcp-segment.ts         segments and sequence-number arithmetic
//   tcp-connection.ts      one connection's state machine (RFC 9293)
//   tcp-reassembly.ts      guest data after a hole, and our SACK blocks (RFC 2018)
//   tcp-receive-window.ts  the window we offer, within the shared budget
//   tcp-rtt.ts             the retransmission timeout (RFC 6298)
//   tcp-congestion.ts      slow start, fast retransmit, NewReno (RFC 5681, 6582)
//   byte-queue.ts          host bytes kept until the guest acknowledges them
//   tcp-types.ts           what they share
//   tcp.ts (this)          the table of connections, its limits and its timer
//
// Using it: the NAT's IPv4 layer calls input() with the payload of every TCP
// packet from the guest (reassembled if fragmented, its checksum completed if
// the guest offloaded it: input() verifies it), and sends what emit() gives
// it. connect() opens host sockets for the guest's SYNs (net.connect with
// allowHalfOpen: true); a host port forward's server (allowHalfOpen: true)
// hands each accepted socket to openToGuest(), with freePort() choosing the
// source port the guest sees. Segments larger than the MSS from the guest
// (TSO) are accepted; `mss` may be raised when the guest takes large segments.
//
// Memory is bounded: at most maxConnections connections, each holding at most
// sndBuf bytes on their way to the guest (the host socket is paused beyond),
// all of them together at most sndBudget (then every socket that reads is
// paused); and each letting the guest send at most rcvBuf bytes the host
// socket has not taken (the advertised window, which also bounds the data
// kept after holes), all of them together about rcvBudget (windows offered
// plus bytes in host socket buffers; at most twice that, as each connection
// keeps a fair share). So the total is at most about
// sndBudget + 2 x rcvBudget + maxConnections x (one socket read).
//
// Timeouts, and what others do:
//  - a host connect that takes longer than 30 s: RST (Linux itself gives up
//    after about 127 s, but the guest's own SYN retries stop earlier to matter);
//  - a handshake (SYN-RECEIVED, SYN-SENT) not completed in 15 s: given up
//    (Linux conntrack keeps SYN_RECV 60 s, slirp its TCPTV_KEEP_INIT 75 s; a
//    NAT owes a half-open flood less);
//  - ESTABLISHED with no segment for 2 hours: RST both ways (slirp never
//    expires them unless its keepalives are on, Linux conntrack after 5
//    days; 2 hours is Linux's keepalive time, so a guest that keeps a
//    connection with keepalives keeps it);
//  - half-closed with no segment for 2 minutes (conntrack's FIN_WAIT is 120 s);
//  - TIME-WAIT lingers 2 s to re-acknowledge a retransmitted FIN (the guest's
//    own TIME-WAIT guards its port; we hold no port).

import { randomInt } from "node:crypto";
import { ipv4String } from "../packet.js";
import { TcpConnection } from "./tcp-connection.js";
import {
  connectionKey, type ConnectionOwner, type HostSocket, type TcpConnectionSummary, type TcpCounters, type TcpTimeouts,
} from "./tcp-types.js";
import { buildTcp, parseTcp, segmentLength, TCP_ACK, TCP_RST, TCP_SYN, type TcpParseError, type TcpSegment } from "./tcp-segment.js";

export type { HostSocket, TcpConnectionSummary, TcpState, TcpTimeouts } from "./tcp-types.js";

export interface TcpNatOptions {
  /**
   * Sends one TCP segment (header and payload, checksum filled in) from `src`
   * to `dst` in an IPv4 packet towards the guest. With `gsoSize` it is a
   * super-segment (only after setSuperSegments(true)): the guest's card takes
   * it whole as if it had been received in segments of gsoSize bytes.
   */
  emit(src: number, dst: number, segment: Uint8Array, gsoSize?: number): void;
  /**
   * The guest's SYN to dst:dstPort: open the host side and return its socket,
   * connecting (a net.Socket, created with allowHalfOpen: true so half-closes
   * pass through), or undefined to refuse (the guest gets RST). A throw counts
   * as a refusal.
   */
  connect(dst: number, dstPort: number, guest: number, guestPort: number): HostSocket | undefined;
  /** A SYN beyond this many connections gets RST (counted). Default 4096. */
  maxConnections?: number;
  /** Our MSS towards the guest. Default 1460 (a 1500-byte MTU). */
  mss?: number;
  /** Guest -> host bytes the host socket may buffer: our largest receive window. Default 256 KiB. */
  rcvBuf?: number;
  /** Host -> guest bytes kept until acknowledged before the host socket is paused. Default 256 KiB. */
  sndBuf?: number;
  /** Host -> guest bytes all connections together keep before host sockets are paused. Default 64 MiB. */
  sndBudget?: number;
  /** Guest -> host bytes all connections together may have in host socket buffers or offered windows (each keeps rcvBudget / maxConnections at least). Default 64 MiB. */
  rcvBudget?: number;
  timeouts?: Partial<TcpTimeouts>;
  /** The clock (ms); default Date.now. */
  now?: () => number;
  /**
   * Our initial sequence numbers; default unpredictable (RFC 9293 3.4.1, RFC
   * 6528: random, as nothing here needs them to grow with time). Tests choose
   * them to make the sequence space wrap around.
   */
  initialSequence?: () => number;
}

export interface TcpNatStats extends TcpCounters {
  /** Connections in the table now. */
  connectionsOpen: number;
  /** Connections ever created (both directions). */
  connectionsTotal: number;
  /** Guest SYNs refused: connect() said no, or the host connect failed. Port forwards the guest refused, too. */
  refused: number;
  /** Guest SYNs refused because the table was full. */
  refusedTableFull: number;
  segmentsIn: number;
  /** Host bytes held for the guest, all connections together. */
  queuedToGuest: number;
  /** Guest bytes in host socket buffers or offered in windows, all connections together (against rcvBudget). */
  committedFromGuest: number;
  /** Segments for no connection that were not a SYN (answered with RST unless they were one). */
  noConnection: number;
  /** Malformed segments dropped, by reason. */
  bad: Record<TcpParseError | "port", number>;
}

const DEFAULT_TIMEOUTS: TcpTimeouts = {
  connectMs: 30_000,
  handshakeMs: 15_000,
  idleMs: 2 * 3600_000,
  halfClosedIdleMs: 120_000,
  lingerMs: 2_000,
  minRtoMs: 200,
  maxRtoMs: 60_000,
  maxRetransmits: 10,
};

/** How often the timers are looked at: the RTO's granularity. */
const TICK_MS = 25;

export class TcpNat {
  private readonly table = new Map<string, TcpConnection>();
  private readonly maxConnections: number;
  private readonly owner: ConnectionOwner;
  private readonly counters: TcpCounters = {
    resetsToGuest: 0, resetsFromGuest: 0, retransmits: 0, fastRetransmits: 0, timeouts: 0,
    segmentsOut: 0, bytesFromGuest: 0, bytesToGuest: 0, outOfOrderKept: 0, outOfOrderDropped: 0, windowProbes: 0,
  };
  private readonly extra = {
    connectionsTotal: 0, refused: 0, refusedTableFull: 0, segmentsIn: 0, noConnection: 0,
    bad: { truncated: 0, "data-offset": 0, checksum: 0, options: 0, port: 0 } as Record<TcpParseError | "port", number>,
  };
  private readonly acksDue = new Set<TcpConnection>();
  /** Host bytes held for the guest by all connections, against sndBudget. */
  private queuedToGuest = 0;
  private readonly sndBudget: number;
  private readonly waitingForBudget = new Set<TcpConnection>();
  /** Guest bytes held in host sockets or offered in windows, all connections together, against rcvBudget. */
  private rcvCommitted = 0;
  private readonly rcvBudget: number;
  private readonly waitingForRcvRoom = new Set<TcpConnection>();
  private ackFlush: NodeJS.Immediate | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private closed = false;
  private superSegments = false;

  constructor(private readonly o: TcpNatOptions) {
    this.maxConnections = o.maxConnections ?? 4096;
    const mss = o.mss ?? 1460;
    if (!(mss >= 64 && mss <= 65495)) throw new RangeError(`mss ${mss} is not in 64..65495`);
    const now = o.now ?? Date.now;
    this.sndBudget = o.sndBudget ?? 64 << 20;
    this.rcvBudget = o.rcvBudget ?? 64 << 20;
    const nat = this;
    this.owner = {
      mss,
      rcvBuf: o.rcvBuf ?? 256 * 1024,
      sndBuf: o.sndBuf ?? 256 * 1024,
      timeouts: { ...DEFAULT_TIMEOUTS, ...o.timeouts },
      counters: this.counters,
      now,
      initialSequence: o.initialSequence ?? (() => randomInt(0, 2 ** 32)),
      emit: (src, dst, segment, gsoSize) => o.emit(src, dst, segment, gsoSize),
      get superSegments() {
        return nat.superSegments;
      },
      scheduleAck: (c) => nat.scheduleAck(c),
      removed: (c) => nat.removed(c),
      refused: () => void nat.extra.refused++,
      queued: (delta) => nat.queued(delta),
      overBudget: () => nat.queuedToGuest >= nat.sndBudget,
      waitForBudget: (c) => void nat.waitingForBudget.add(c),
      rcvBudget: this.rcvBudget,
      maxConnections: this.maxConnections,
      rcvCommitted: () => nat.rcvCommitted,
      rcvCommit: (delta) => nat.rcvCommit(delta),
      waitForRcvRoom: (c) => void nat.waitingForRcvRoom.add(c),
    };
  }

  get stats(): TcpNatStats {
    return { connectionsOpen: this.table.size, queuedToGuest: this.queuedToGuest, committedFromGuest: this.rcvCommitted, ...this.counters, ...this.extra, bad: { ...this.extra.bad } };
  }

  connections(): TcpConnectionSummary[] {
    return [...this.table.values()].map((c) => c.summary());
  }

  /** A TCP segment from the guest: `segment` is the IP payload of a packet from `src` to `dst`. */
  input(src: number, dst: number, segment: Uint8Array): void {
    if (this.closed) return;
    this.extra.segmentsIn++;
    const seg = parseTcp(src, dst, segment);
    if (typeof seg === "string") {
      this.extra.bad[seg]++;
      return;
    }
    if (seg.srcPort === 0 || seg.dstPort === 0) {
      this.extra.bad.port++;
      return;
    }
    const key = connectionKey(src, seg.srcPort, dst, seg.dstPort);
    const existing = this.table.get(key);
    if (existing && !(existing.state === "TIME-WAIT" && isOpeningSyn(seg))) {
      existing.input(seg);
      return;
    }
    // A new SYN on a pair in TIME-WAIT reopens it (RFC 9293 3.10.7.4 allows
    // it; the guest reused its port): the old one is gone.
    existing?.close();
    if (isOpeningSyn(seg)) this.openFromGuest(src, dst, seg);
    else this.answerStray(src, dst, seg);
  }

  /** A host port forward: the host accepted `socket`; open a connection to guest:guestPort appearing to come from from:fromPort. */
  openToGuest(guest: number, guestPort: number, from: number, fromPort: number, socket: HostSocket): void {
    const key = connectionKey(guest, guestPort, from, fromPort);
    if (this.closed || this.table.has(key) || this.table.size >= this.maxConnections || guestPort === 0 || fromPort === 0) {
      this.extra.refusedTableFull += this.table.size >= this.maxConnections ? 1 : 0;
      this.extra.refused++;
      socket.destroy();
      return;
    }
    this.add(TcpConnection.toGuest(this.owner, guest, guestPort, from, fromPort, socket));
  }

  /** A host port for a forward from `from`: one no connection to guest:guestPort uses now (1024..65535), or undefined. */
  freePort(guest: number, guestPort: number, from: number): number | undefined {
    const start = 1024 + Math.floor(Math.random() * 64512);
    for (let i = 0; i < 64512; i++) {
      const port = 1024 + ((start - 1024 + i) % 64512);
      if (!this.table.has(connectionKey(guest, guestPort, from, port))) return port;
    }
    return undefined;
  }

  /** Resets every connection towards the guest, destroys the host sockets, stops the timers. */
  /**
   * Whether the guest's card takes super-segments (virtio-net GUEST_TSO4 and
   * GUEST_CSUM): then up to SUPER_SEGMENT_BYTES of host data go out as one,
   * which the guest's stack takes as one GRO'd packet, instead of 45 frames.
   */
  setSuperSegments(on: boolean): void {
    this.superSegments = on;
  }

  close(): void {
    if (this.closed) return;
    for (const c of [...this.table.values()]) c.close();
    this.closed = true;
    this.table.clear();
    if (this.ackFlush) clearImmediate(this.ackFlush);
    if (this.ticker) clearInterval(this.ticker);
    this.ackFlush = this.ticker = undefined;
  }

  private openFromGuest(guest: number, dst: number, syn: TcpSegment): void {
    if (this.table.size >= this.maxConnections) {
      this.extra.refusedTableFull++;
      return this.replyReset(guest, dst, syn);
    }
    let socket: HostSocket | undefined;
    try {
      socket = this.o.connect(dst, syn.dstPort, guest, syn.srcPort);
    } catch {
      socket = undefined;
    }
    if (!socket) {
      this.extra.refused++;
      return this.replyReset(guest, dst, syn);
    }
    this.add(TcpConnection.fromGuestSyn(this.owner, guest, dst, syn, socket));
  }

  /** RFC 9293 3.10.7.1: a segment for no connection gets a RST, unless it is one. */
  private answerStray(guest: number, dst: number, seg: TcpSegment): void {
    this.extra.noConnection++;
    if (seg.flags & TCP_RST) return;
    this.replyReset(guest, dst, seg);
  }

  private replyReset(guest: number, dst: number, seg: TcpSegment): void {
    this.counters.resetsToGuest++;
    this.counters.segmentsOut++;
    const h = seg.flags & TCP_ACK
      ? { seq: seg.ack, ack: 0, flags: TCP_RST }
      : { seq: 0, ack: (seg.seq + segmentLength(seg)) >>> 0, flags: TCP_RST | TCP_ACK };
    this.o.emit(dst, guest, buildTcp(dst, guest, { srcPort: seg.dstPort, dstPort: seg.srcPort, window: 0, ...h }));
  }

  private add(c: TcpConnection): void {
    if (c.state === "CLOSED") return; // failed at once (removed() ran already)
    this.table.set(c.key, c);
    this.extra.connectionsTotal++;
    if (!this.ticker) {
      this.ticker = setInterval(() => this.tick(), TICK_MS);
      this.ticker.unref(); // the host sockets keep the process alive, not our timer
    }
  }

  private removed(c: TcpConnection): void {
    if (this.table.get(c.key) === c) this.table.delete(c.key);
    this.acksDue.delete(c);
    this.waitingForBudget.delete(c);
    this.waitingForRcvRoom.delete(c);
    if (this.table.size === 0 && this.ticker) {
      clearInterval(this.ticker);
      this.ticker = undefined;
    }
  }

  private queued(delta: number): void {
    this.queuedToGuest += delta;
    // Resume the sockets paused for the budget once a quarter of it is free,
    // so they do not flap on every acknowledgement.
    if (this.waitingForBudget.size > 0 && this.queuedToGuest < this.sndBudget * 0.75) {
      const waiting = [...this.waitingForBudget];
      this.waitingForBudget.clear();
      for (const c of waiting) c.resumeReading();
    }
  }

  private rcvCommit(delta: number): void {
    this.rcvCommitted += delta;
    // Wake the connections whose windows the budget held small, once a quarter of it is free.
    if (delta < 0 && this.waitingForRcvRoom.size > 0 && this.rcvCommitted < this.rcvBudget * 0.75) {
      const waiting = [...this.waitingForRcvRoom];
      this.waitingForRcvRoom.clear();
      setImmediate(() => {
        for (const c of waiting) c.windowMayOpen();
      });
    }
  }

  private scheduleAck(c: TcpConnection): void {
    if (!c.markAckPending()) return;
    this.acksDue.add(c);
    this.ackFlush ??= setImmediate(() => {
      this.ackFlush = undefined;
      const due = [...this.acksDue];
      this.acksDue.clear();
      for (const d of due) d.flushAck();
    });
  }

  private tick(): void {
    const now = this.owner.now();
    for (const c of [...this.table.values()]) c.tick(now);
  }

  /** For messages: "10.0.2.15:40000 > 10.0.2.2:80". */
  static describe(s: TcpConnectionSummary): string {
    return `${ipv4String(s.guest)}:${s.guestPort} ${s.direction === "outbound" ? ">" : "<"} ${ipv4String(s.remote)}:${s.remotePort}`;
  }
}

/** A SYN that opens a connection: no ACK or RST with it. */
function isOpeningSyn(seg: TcpSegment): boolean {
  return (seg.flags & (TCP_SYN | TCP_ACK | TCP_RST)) === TCP_SYN;
}
