// The types the NAT's TCP files share: the host socket a connection drives,
// the RFC 9293 states, the timeouts and counters, what a connection needs from
// the NAT that owns it, and the summary `TcpNat.connections()` lists.

import type { Duplex } from "node:stream";
import type { TcpConnection } from "./tcp-connection.js";

/** What the host side of a connection must be: a net.Socket or anything shaped like one. */
export type HostSocket = Duplex & {
  /** True while a net.Socket is still connecting; it then emits "connect". */
  readonly connecting?: boolean;
  /** net.Socket: close with a TCP RST towards the host peer. */
  resetAndDestroy?(): unknown;
};

export type TcpState =
  /** The guest's SYN arrived; the host socket is still connecting (not answered yet). */
  | "HOST-CONNECTING"
  | "SYN-SENT" | "SYN-RECEIVED" | "ESTABLISHED" | "FIN-WAIT-1" | "FIN-WAIT-2"
  | "CLOSE-WAIT" | "CLOSING" | "LAST-ACK" | "TIME-WAIT" | "CLOSED";

export interface TcpTimeouts {
  /** How long the host socket may take to connect before the guest gets RST. */
  connectMs: number;
  /** SYN-SENT and SYN-RECEIVED: a handshake not completed in this time is given up. */
  handshakeMs: number;
  /** ESTABLISHED without a segment either way. */
  idleMs: number;
  /** Half-closed (one FIN exchanged) without a segment either way. */
  halfClosedIdleMs: number;
  /** TIME-WAIT: how long we linger to re-acknowledge a retransmitted FIN. */
  lingerMs: number;
  /** RFC 6298 2.4 allows a lower bound below 1 s; Linux uses 200 ms (TCP_RTO_MIN). */
  minRtoMs: number;
  /** RFC 6298 2.5: an upper bound of at least 60 s. */
  maxRtoMs: number;
  /** Retransmissions of one segment before the connection is reset. */
  maxRetransmits: number;
}

/** What the connections count, all of them together (TcpNat.stats adds the table's own). */
export interface TcpCounters {
  resetsToGuest: number;
  resetsFromGuest: number;
  retransmits: number;
  fastRetransmits: number;
  /** Connections ended by a timeout (connect, handshake, idle, retransmissions). */
  timeouts: number;
  segmentsOut: number;
  bytesFromGuest: number;
  bytesToGuest: number;
  /** Guest segments kept after a hole until it was filled. */
  outOfOrderKept: number;
  /** Guest segments after a hole dropped because too many were kept. */
  outOfOrderDropped: number;
  /** Zero-window probes sent to the guest (RFC 9293 3.8.6.1). */
  windowProbes: number;
}

/** What a connection needs from the NAT that owns it. */
export interface ConnectionOwner {
  readonly mss: number;
  readonly rcvBuf: number;
  readonly sndBuf: number;
  readonly timeouts: TcpTimeouts;
  readonly counters: TcpCounters;
  now(): number;
  /** Our initial sequence number for a new connection. */
  initialSequence(): number;
  /** `gsoSize`: the segment is a super-segment the guest's card takes whole (GUEST_TSO), to be cut at this size. */
  emit(src: number, dst: number, segment: Uint8Array, gsoSize?: number): void;
  /** The guest's card takes TCP super-segments (virtio-net GUEST_TSO4): send up to SUPER_SEGMENT_BYTES at once. */
  readonly superSegments: boolean;
  /** Asks for sendAck() to run once at the end of this event-loop turn (several segments, one ACK). */
  scheduleAck(c: TcpConnection): void;
  /** The connection is over: forget it. */
  removed(c: TcpConnection): void;
  /** A host connect failed or was refused (counted). */
  refused(): void;
  /** Host bytes queued towards the guest changed by `delta` (all connections together have a budget). */
  queued(delta: number): void;
  /** All connections together hold their budget of host bytes: read no more. */
  overBudget(): boolean;
  /** Call resumeReading() on `c` when the budget has room again. */
  waitForBudget(c: TcpConnection): void;
  /** Guest -> host bytes all connections together may hold in host sockets or offer in windows. */
  readonly rcvBudget: number;
  readonly maxConnections: number;
  /** What all connections hold or offered against rcvBudget now. */
  rcvCommitted(): number;
  /** A connection's share of rcvBudget changed by `delta`. */
  rcvCommit(delta: number): void;
  /** Call windowMayOpen() on `c` when rcvBudget has room again. */
  waitForRcvRoom(c: TcpConnection): void;
}

export interface TcpConnectionSummary {
  guest: number;
  guestPort: number;
  remote: number;
  remotePort: number;
  /** "outbound": the guest connected out; "inbound": a host port forward. */
  direction: "outbound" | "inbound";
  state: TcpState;
  bytesFromGuest: number;
  bytesToGuest: number;
  /** Host bytes waiting for the guest's acknowledgement (sent or not). */
  queuedToGuest: number;
  sndWnd: number;
  rcvWnd: number;
  cwnd: number;
  sndWindowScale: number;
  rcvWindowScale: number;
  srttMs: number | undefined;
  rtoMs: number;
  retransmits: number;
}

/** The table key of a connection: both ends. */
export function connectionKey(guest: number, guestPort: number, remote: number, remotePort: number): string {
  return `${guest}:${guestPort}>${remote}:${remotePort}`;
}
