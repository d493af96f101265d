// One TCP connection of the user-mode NAT: the guest's end of it is a real TCP
// peer (Linux in the guest), our end is this object, and behind it a host
// socket carries the bytes on. We are a full TCP endpoint towards the guest
// (RFC 9293), with window scaling (RFC 7323), retransmission timers (RFC 6298),
// congestion control with fast retransmit and NewReno recovery (RFC 5681,
// RFC 6582), and flow control that pushes back to the host socket both ways:
//
//   guest -> host: accepted data is written to the socket; the window we
//     advertise is what is left of `rcvBuf` after the socket's write buffer,
//     so a slow host peer closes the guest's window.
//   host -> guest: socket data waits in `sendQueue` until the guest acknowledges
//     it; the socket is paused while the queue holds `sndBuf` bytes or more.
//
// Names follow RFC 9293 3.3.1 (sndUna, sndNxt, rcvNxt, ...). Everything a
// segment says is checked before it is used: the guest is not trusted.

import { ByteQueue } from "./byte-queue.js";
import {
  buildTcp, DEFAULT_MSS, seqAdd, seqDiff, seqGt, seqLe, seqLt, segmentLength,
  TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, type TcpHeaderFields, type TcpSegment,
} from "./tcp-segment.js";
import { ReassemblyQueue } from "./tcp-reassembly.js";
import { RttEstimator } from "./tcp-rtt.js";
import { NewReno } from "./tcp-congestion.js";
import { ReceiveWindow } from "./tcp-receive-window.js";
import { connectionKey, type ConnectionOwner, type HostSocket, type TcpConnectionSummary, type TcpState } from "./tcp-types.js";

/**
 * The most host data in one super-segment: what fits an IPv4 packet (65535
 * bytes) behind a 20-byte IP header and a TCP header with options (60 bytes).
 */
export const SUPER_SEGMENT_BYTES = 65535 - 20 - 60;

export class TcpConnection {
  state: TcpState;
  readonly key: string;

  // Send sequence space (RFC 9293 3.3.1). `sndMax` is the highest sequence
  // number sent so far: after a timeout sndNxt goes back to sndUna (go-back-N)
  // while ACKs up to sndMax stay valid.
  private iss: number;
  private sndUna: number;
  private sndNxt: number;
  private sndMax: number;
  private sndWnd = 0;
  private sndWl1 = 0;
  private sndWl2 = 0;
  /** The largest window the guest ever offered (sender SWS avoidance, RFC 9293 3.8.6.2.1). */
  private maxSndWnd = 0;
  /** The guest's window-scale shift (RFC 7323), 0 unless both SYNs carried the option. */
  private sndWindowScale = 0;
  /** The guest's SYN carried the window-scale option: our SYN-ACK carries ours. */
  private guestScales = false;
  /** RFC 2018: the guest offered SACK, so our ACKs tell it which data after a hole we hold. */
  private sackPermitted = false;
  /** The highest right edge of the guest's SACK blocks (a new one marks a duplicate ACK). */
  private highSacked = 0;
  /** Our segment size: min(the guest's MSS option, ours). */
  private sndMss: number;
  /** Host data from sndUna on (the SYN and FIN are not in it). */
  private readonly sendQueue = new ByteQueue();
  /** The host ended its side: a FIN follows the queued data. */
  private hostEnded = false;
  /** The guest acknowledged our FIN: nothing more to send. */
  private ourFinAcked = false;

  // Receive sequence space.
  private irs = 0;
  private rcvNxt = 0;
  /** The right edge of the window we last advertised: never moved left (RFC 9293 3.8.6.2.2). */
  private readonly window: ReceiveWindow;
  private guestFinReceived = false;
  /** Guest segments that arrived after a hole, by sequence number. */
  private readonly reassembly = new ReassemblyQueue();

  // Congestion control (RFC 5681) and NewReno recovery (RFC 6582).
  private readonly congestion: NewReno;

  // Retransmission timer (RFC 6298).
  private readonly rtt: RttEstimator;
  private retransmitAt = 0;
  private retransmitCount = 0;
  private persistAt = 0;
  private persistBackoff = 0;
  /** State deadline: connecting, handshake, TIME-WAIT. */
  private deadline = 0;
  private lastActivity: number;

  private socketPaused = false;
  private ackPending = false;
  /** Data segments received since our last ACK (RFC 9293 3.8.6.3: ACK at least every second full-sized one). */
  private unackedSegments = 0;
  private bytesFromGuest = 0;
  private bytesToGuest = 0;
  private retransmits = 0;

  private constructor(
    private readonly owner: ConnectionOwner,
    readonly guest: number,
    readonly guestPort: number,
    readonly remote: number,
    readonly remotePort: number,
    readonly direction: "outbound" | "inbound",
    private readonly socket: HostSocket,
    state: TcpState,
  ) {
    this.key = connectionKey(guest, guestPort, remote, remotePort);
    this.state = state;
    this.iss = owner.initialSequence() >>> 0;
    this.sndUna = this.sndNxt = this.sndMax = this.highSacked = this.iss;
    this.sndMss = Math.min(DEFAULT_MSS, owner.mss);
    this.congestion = new NewReno(this.sndMss, owner.sndBuf * 2);
    this.lastActivity = owner.now();
    this.rtt = new RttEstimator(owner.timeouts.minRtoMs, owner.timeouts.maxRtoMs);
    this.window = new ReceiveWindow(owner, () => owner.waitForRcvRoom(this));
  }

  /** The guest's SYN to remote:remotePort; `socket` is connecting to it. */
  static fromGuestSyn(owner: ConnectionOwner, guest: number, remote: number, syn: TcpSegment, socket: HostSocket): TcpConnection {
    const c = new TcpConnection(owner, guest, syn.srcPort, remote, syn.dstPort, "outbound", socket, "HOST-CONNECTING");
    c.irs = syn.seq;
    c.rcvNxt = seqAdd(syn.seq, 1);
    c.takeSynOptions(syn);
    c.deadline = owner.now() + owner.timeouts.connectMs;
    c.attachSocket();
    if (socket.connecting === false || socket.connecting === undefined) c.hostConnected();
    else socket.once("connect", () => c.hostConnected());
    return c;
  }

  /** A host port forward: `socket` is connected; we open the connection to the guest with a SYN. */
  static toGuest(owner: ConnectionOwner, guest: number, guestPort: number, from: number, fromPort: number, socket: HostSocket): TcpConnection {
    const c = new TcpConnection(owner, guest, guestPort, from, fromPort, "inbound", socket, "SYN-SENT");
    c.deadline = owner.now() + owner.timeouts.handshakeMs;
    c.attachSocket();
    c.sendSyn();
    return c;
  }

  // --- the host socket ---

  private attachSocket(): void {
    const s = this.socket;
    s.on("data", (chunk: Buffer | string) => this.hostData(typeof chunk === "string" ? Buffer.from(chunk) : chunk));
    s.on("end", () => this.hostEnd());
    s.on("error", (e: Error) => this.hostFailed(e));
    s.on("close", () => this.hostClosed());
    s.on("drain", () => this.hostDrained());
  }

  private hostConnected(): void {
    if (this.state !== "HOST-CONNECTING") return;
    this.state = "SYN-RECEIVED";
    this.deadline = this.owner.now() + this.owner.timeouts.handshakeMs;
    this.sendSyn();
  }

  private hostData(chunk: Uint8Array): void {
    if (this.state === "CLOSED") return;
    this.sendQueue.push(chunk);
    this.owner.queued(chunk.length);
    // Backpressure towards the host peer: stop reading while the guest has not
    // taken sndBuf bytes, or all connections together hold their budget;
    // resumed as the guest acknowledges.
    if (!this.socketPaused && (this.sendQueue.length >= this.owner.sndBuf || this.owner.overBudget())) {
      this.socketPaused = true;
      this.socket.pause();
      if (this.owner.overBudget()) this.owner.waitForBudget(this);
    }
    this.output();
  }

  /** Reads from the host socket again once the guest took enough of what we hold. */
  resumeReading(): void {
    if (!this.socketPaused || this.state === "CLOSED") return;
    if (this.sendQueue.length >= this.owner.sndBuf / 2) return;
    if (this.owner.overBudget()) return this.owner.waitForBudget(this);
    this.socketPaused = false;
    this.socket.resume();
  }

  private hostEnd(): void {
    if (this.state === "CLOSED" || this.hostEnded) return;
    this.hostEnded = true;
    this.output();
  }

  private hostFailed(_e: Error): void {
    if (this.state === "CLOSED") return;
    // ECONNREFUSED, unreachable, ...: the guest's connect() fails with a reset.
    if (this.state === "HOST-CONNECTING") this.refuseConnect();
    else this.abort();
  }

  private hostClosed(): void {
    if (this.state === "CLOSED") return;
    // A clean close comes after the host's "end": its FIN is ours to send on
    // after the queued data (a socket without allowHalfOpen closes at once).
    // A close without "end" is an abort: tell the guest.
    if (this.hostEnded) return;
    if (this.state === "HOST-CONNECTING") this.refuseConnect();
    else this.abort();
  }

  /** The host side never connected: the guest's SYN is answered with a reset. */
  private refuseConnect(): void {
    this.owner.refused();
    this.refuseSyn();
    this.finish();
  }

  private hostDrained(): void {
    if (this.state === "CLOSED" || this.state === "HOST-CONNECTING") return;
    // The socket took what was written: the window can open again. Tell the
    // guest at once, or it waits for its persist timer.
    this.recommit();
    if (this.window.wouldOpen(this.rcvNxt, this.hostBuffered())) this.sendAck();
  }

  // --- segments from the guest (RFC 9293 3.10.7) ---

  input(seg: TcpSegment): void {
    if (this.state === "CLOSED") return;
    this.lastActivity = this.owner.now();
    switch (this.state) {
      case "HOST-CONNECTING":
        // Not answered yet: the guest's retransmitted SYN waits with the first,
        // and a RST from it withdraws the connection.
        if (seg.flags & TCP_RST && seg.seq === this.rcvNxt) {
          this.owner.counters.resetsFromGuest++;
          this.destroyHost(true);
          this.finish();
        }
        return;
      case "SYN-SENT":
        return this.inputSynSent(seg);
      default:
        return this.inputSynchronized(seg);
    }
  }

  /** RFC 9293 3.10.7.3: our SYN is out (a port forward); expect the guest's SYN-ACK. */
  private inputSynSent(seg: TcpSegment): void {
    const hasAck = (seg.flags & TCP_ACK) !== 0;
    if (hasAck && seg.ack !== this.sndMax) {
      if (!(seg.flags & TCP_RST)) this.sendReset(seg.ack, 0, false);
      return;
    }
    if (seg.flags & TCP_RST) {
      // The guest port is closed: refuse the host's connection the same way.
      if (hasAck) {
        this.owner.counters.resetsFromGuest++;
        this.owner.refused();
        this.destroyHost(true);
        this.finish();
      }
      return;
    }
    // A SYN without ACK would be a simultaneous open, which a NAT never sees.
    if (!(seg.flags & TCP_SYN) || !hasAck) return;
    this.irs = seg.seq;
    this.rcvNxt = seqAdd(seg.seq, 1);
    this.takeSynOptions(seg);
    this.sndUna = seg.ack;
    this.retransmitCount = 0;
    this.retransmitAt = 0;
    this.rtt.acknowledged(seg.ack, this.owner.now());
    // RFC 7323 2.2: the window of a SYN segment is never scaled.
    this.sndWnd = this.maxSndWnd = seg.window;
    this.sndWl1 = seg.seq;
    this.sndWl2 = seg.ack;
    this.state = "ESTABLISHED";
    this.deadline = 0;
    this.window.edge = this.rcvNxt;
    this.sendAck();
    this.output();
  }

  /** RFC 9293 3.10.7.4: every state after the handshake began. */
  private inputSynchronized(seg: TcpSegment): void {
    const counters = this.owner.counters;
    const segLen = segmentLength(seg);
    const rcvWnd = this.window.size(this.rcvNxt);

    // A retransmitted SYN: the guest did not get our SYN-ACK.
    if (this.state === "SYN-RECEIVED" && seg.flags & TCP_SYN && !(seg.flags & TCP_ACK) && seg.seq === this.irs) {
      this.sendSyn();
      return;
    }

    // First: is the segment in the window?
    let acceptable: boolean;
    if (segLen === 0) acceptable = rcvWnd === 0 ? seg.seq === this.rcvNxt : this.inWindow(seg.seq, rcvWnd);
    else acceptable = rcvWnd > 0 && (this.inWindow(seg.seq, rcvWnd) || this.inWindow(seqAdd(seg.seq, segLen - 1), rcvWnd));
    // With a zero window, ACKs and RSTs must still get through.
    const ackOnly = !acceptable && rcvWnd === 0 && seg.seq === this.rcvNxt;
    if (!acceptable && !ackOnly) {
      if (!(seg.flags & TCP_RST)) this.sendAck();
      return;
    }

    // Second: RST. RFC 5961 3.2: only an exact sequence number resets; one
    // elsewhere in the window gets a challenge ACK (blind reset attacks).
    if (seg.flags & TCP_RST) {
      if (seg.seq !== this.rcvNxt) {
        this.sendAck();
        return;
      }
      counters.resetsFromGuest++;
      this.destroyHost(true);
      this.finish();
      return;
    }

    // Fourth: a SYN in a synchronized state. RFC 5961 4.2: challenge ACK.
    if (seg.flags & TCP_SYN) {
      this.sendAck();
      return;
    }

    // Fifth: the ACK field.
    if (!(seg.flags & TCP_ACK)) return;
    if (this.state === "SYN-RECEIVED") {
      if (!(seqLt(this.sndUna, seg.ack) && seqLe(seg.ack, this.sndMax))) {
        this.sendReset(seg.ack, 0, false);
        return;
      }
      // Our SYN is acknowledged: it occupied one sequence number but no queue byte.
      this.state = "ESTABLISHED";
      this.deadline = 0;
      this.sndUna = seqAdd(this.iss, 1);
      this.retransmitAt = 0;
      this.retransmitCount = 0;
      this.rtt.acknowledged(this.sndUna, this.owner.now());
      this.sndWl1 = seqAdd(seg.seq, -1); // so this segment's window is taken
    }
    if (seqGt(seg.ack, this.sndMax)) {
      // Acknowledges something never sent.
      this.sendAck();
      return;
    }
    this.ackReceived(seg, segLen);
    if (this.isClosed()) return;
    if (ackOnly) {
      this.sendAck();
      return;
    }

    // Seventh: the data, up to the window's edge. Data after a hole is kept
    // (bounded by the window we offered) so that one retransmission fills the
    // hole: without SACK the guest learns of one loss per round trip only.
    let data = seg.payload;
    let seq = seg.seq;
    let fin = (seg.flags & TCP_FIN) !== 0;
    if (seqLt(seq, this.rcvNxt)) {
      const old = seqDiff(this.rcvNxt, seq);
      data = data.subarray(Math.min(old, data.length));
      seq = this.rcvNxt;
    }
    const room = Math.max(0, seqDiff(this.window.edge, seq));
    if (data.length > room) {
      data = data.subarray(0, room);
      fin = false; // the FIN lies beyond what we take
    }
    if (this.guestFinReceived) data = data.subarray(0, 0); // nothing after a FIN
    if (seq !== this.rcvNxt) {
      if (data.length > 0 || fin) {
        if (this.reassembly.keep(seq, data, fin)) this.owner.counters.outOfOrderKept++;
        else this.owner.counters.outOfOrderDropped++;
        this.sendAck(); // a duplicate ACK: the guest's fast retransmit starts on three
      }
      return;
    }
    if (data.length > 0) {
      if (!this.deliver(data)) return;
      // Segments kept after the hole may continue the stream now.
      fin = this.reassembly.drain(this.rcvNxt, (more) => (this.deliver(more) ? this.rcvNxt : undefined)) || fin;
      if (this.isClosed()) return;
      this.unackedSegments++;
      if (this.unackedSegments >= 2 || this.reassembly.length > 0) this.sendAck();
      else this.owner.scheduleAck(this);
    }

    // Eighth: the FIN, once everything before it arrived.
    if (fin && !this.guestFinReceived) {
      this.guestFinReceived = true;
      this.rcvNxt = seqAdd(this.rcvNxt, 1);
      if (!this.socket.destroyed) this.socket.end(); // half-close: the host peer reads EOF, may still send
      switch (this.state as TcpState) {
        case "ESTABLISHED":
          this.state = "CLOSE-WAIT";
          break;
        case "FIN-WAIT-1":
          this.state = "CLOSING";
          break;
        case "FIN-WAIT-2":
          this.enterTimeWait();
          break;
      }
      this.sendAck();
    } else if (fin && this.state === "TIME-WAIT") {
      this.sendAck(); // the guest missed our ACK of its FIN
    }
  }

  /** Passes in-order guest data to the host socket; false when the connection ended instead. */
  private deliver(data: Uint8Array): boolean {
    if (!this.socket.writable) {
      // The host closed both ways; like a closed socket, answer data with a reset.
      this.abort();
      return false;
    }
    this.rcvNxt = seqAdd(this.rcvNxt, data.length);
    this.bytesFromGuest += data.length;
    this.owner.counters.bytesFromGuest += data.length;
    // Copied: the frame's memory is not ours to keep.
    this.socket.write(Buffer.from(data));
    this.recommit();
    return true;
  }

  /** (A method, so TypeScript does not narrow `state` across calls that change it.) */
  private isClosed(): boolean {
    return this.state === "CLOSED";
  }

  private inWindow(seq: number, rcvWnd: number): boolean {
    return seqLe(this.rcvNxt, seq) && seqLt(seq, seqAdd(this.rcvNxt, rcvWnd));
  }

  /** RFC 9293 3.10.7.4 "fifth, check the ACK field", RFC 5681 and RFC 6582. */
  private ackReceived(seg: TcpSegment, segLen: number): void {
    const ack = seg.ack;
    const scaledWindow = seg.window << this.sndWindowScale;
    const flight = seqDiff(this.sndMax, this.sndUna);
    if (seqLt(ack, this.sndUna)) return; // an old duplicate: ignored
    if (ack === this.sndUna) {
      // RFC 5681 2: a duplicate ACK carries no data, no SYN/FIN, does not move
      // the window, and comes while data is outstanding. Linux grows its
      // window while it holds data after a hole, so with SACK an ACK that
      // reports newly held data counts as duplicate too (as RFC 6675 2 counts it).
      const duplicate = flight > 0 && segLen === 0 && (scaledWindow === this.sndWnd || this.newSackInfo(seg));
      this.updateWindow(seg.seq, ack, scaledWindow);
      const action = duplicate ? this.congestion.duplicateAck(flight, this.sndMax) : "send";
      if (action === "retransmit") {
        this.owner.counters.fastRetransmits++;
        this.retransmitFirst();
      } else if (action === "send") {
        this.output();
      }
      return;
    }

    // New data acknowledged (and perhaps our FIN, one sequence number after the data).
    const acked = seqDiff(ack, this.sndUna);
    const finAcked = this.hostEnded && seqGt(this.sndMax, this.finSeq()) && ack === seqAdd(this.finSeq(), 1);
    this.owner.queued(-this.sendQueue.consume(acked));
    this.sndUna = ack;
    if (seqLt(this.sndNxt, ack)) this.sndNxt = ack; // acked what go-back-N was about to resend
    this.rtt.acknowledged(ack, this.owner.now());
    this.retransmitCount = 0;
    if (this.congestion.newAck(ack, acked, seqDiff(this.sndMax, this.sndUna))) this.retransmitFirst();
    // RFC 6298 5.2 and 5.3: stop the timer when nothing is outstanding, else restart it.
    this.retransmitAt = seqDiff(this.sndMax, this.sndUna) > 0 ? this.owner.now() + this.rtt.rto : 0;
    this.updateWindow(seg.seq, ack, scaledWindow);

    this.resumeReading();

    if (finAcked) {
      this.ourFinAcked = true;
      switch (this.state) {
        case "FIN-WAIT-1":
          this.state = "FIN-WAIT-2";
          break;
        case "CLOSING":
          this.enterTimeWait();
          break;
        case "LAST-ACK":
          this.finish();
          return;
      }
    }
    this.output();
  }

  /** Whether a SACK block reports data beyond all reported before (and beyond sndUna: not a D-SACK). */
  private newSackInfo(seg: TcpSegment): boolean {
    let news = false;
    // Sequence numbers compare only within 2^31 of each other: keep highSacked near sndUna.
    if (seqLt(this.highSacked, this.sndUna)) this.highSacked = this.sndUna;
    for (const [left, right] of seg.sackBlocks) {
      if (seqLe(right, this.sndUna) || seqGt(right, this.sndMax) || !seqLt(left, right)) continue;
      if (seqGt(right, this.highSacked)) {
        this.highSacked = right;
        news = true;
      }
    }
    return news;
  }

  /** RFC 9293 3.10.7.4: update the send window from a segment that is not older than the last update. */
  private updateWindow(seq: number, ack: number, window: number): void {
    if (seqLt(this.sndWl1, seq) || (this.sndWl1 === seq && seqLe(this.sndWl2, ack))) {
      this.sndWnd = window;
      this.sndWl1 = seq;
      this.sndWl2 = ack;
      if (window > this.maxSndWnd) this.maxSndWnd = window;
      if (window > 0) {
        this.persistAt = 0;
        this.persistBackoff = 0;
      }
    }
  }

  private takeSynOptions(syn: TcpSegment): void {
    if (syn.mss !== undefined && syn.mss > 0) this.sndMss = Math.max(64, Math.min(syn.mss, this.owner.mss));
    this.congestion.setMss(this.sndMss);
    // RFC 7323 2.2: scaling is used only when both SYNs carry the option. The
    // guest's SYN carried it: we answer with ours (SYN-ACK), or, for a port
    // forward, our SYN carried it already.
    this.guestScales = syn.windowScale !== undefined;
    if (syn.windowScale !== undefined) this.sndWindowScale = syn.windowScale;
    else this.window.scale = 0;
    // RFC 2018 2: we send SACK blocks only to a peer that said it reads them
    // (we ignore the blocks it sends us: RFC 2018 allows it, the data stays
    // queued until cumulatively acknowledged anyway).
    this.sackPermitted = syn.sackPermitted;
  }

  // --- sending to the guest ---

  /** The sequence number of our FIN: after all queued host data. */
  private finSeq(): number {
    return seqAdd(this.sndUna, this.sendQueue.length);
  }

  /** Sends what the windows allow: new data, then our FIN once the host ended. */
  private output(): void {
    switch (this.state) {
      case "ESTABLISHED": case "CLOSE-WAIT": case "FIN-WAIT-1": case "CLOSING": case "LAST-ACK":
        break;
      default:
        return;
    }
    for (;;) {
      const offset = seqDiff(this.sndNxt, this.sndUna);
      const unsent = this.sendQueue.length - offset;
      const flight = seqDiff(this.sndNxt, this.sndUna);
      const usable = Math.min(this.sndWnd, this.congestion.sendWindow()) - flight;
      if (unsent > 0) {
        // A card that takes super-segments gets whole MSS multiples in one (the guest sees them as GRO does).
        const most = this.owner.superSegments ? Math.max(this.sndMss, SUPER_SEGMENT_BYTES - (SUPER_SEGMENT_BYTES % this.sndMss)) : this.sndMss;
        let len = Math.min(unsent, most, usable);
        if (len > this.sndMss && len < unsent) len -= len % this.sndMss;
        // RFC 9293 3.8.6.2.1 sender SWS avoidance: a full segment, all that is
        // left, half the largest window seen, or anything when nothing is in flight.
        if (len <= 0 || !(len >= this.sndMss || len === unsent || len >= this.maxSndWnd / 2 || flight === 0)) break;
        this.transmit(this.sndNxt, len);
        continue;
      }
      if (unsent === 0 && this.hostEnded && !this.ourFinAcked && this.sndNxt === this.finSeq()) {
        this.transmit(this.sndNxt, 0); // the FIN alone
        continue;
      }
      break;
    }
    // RFC 9293 3.8.6.1: data waits behind a zero window: probe it.
    const waiting = this.sendQueue.length - seqDiff(this.sndNxt, this.sndUna) > 0;
    if (waiting && this.sndWnd === 0 && this.retransmitAt === 0 && this.persistAt === 0) {
      this.persistAt = this.owner.now() + this.rtt.rto;
    }
  }

  /**
   * Sends `len` bytes of host data from `seq` (plus our FIN when they end the
   * queue and the host ended), and moves sndNxt/sndMax past what was new.
   */
  private transmit(seq: number, len: number): void {
    const offset = seqDiff(seq, this.sndUna);
    const payload = len > 0 ? this.sendQueue.slice(offset, len) : undefined;
    const end = seqAdd(seq, len);
    let flags = TCP_ACK;
    if (len > 0 && offset + len === this.sendQueue.length) flags |= TCP_PSH;
    const fin = this.hostEnded && !this.ourFinAcked && offset + len === this.sendQueue.length;
    if (fin) flags |= TCP_FIN;
    const next = seqAdd(end, fin ? 1 : 0);
    const isNew = seqGt(next, this.sndMax);
    if (!isNew) {
      this.retransmits++;
      this.owner.counters.retransmits++;
    }
    this.emit(seq, flags, payload);
    if (len > 0) {
      this.bytesToGuest += isNew ? Math.max(0, seqDiff(end, this.sndMax)) : 0;
      this.owner.counters.bytesToGuest += len;
    }
    if (seqGt(next, this.sndNxt)) this.sndNxt = next;
    if (isNew) {
      this.sndMax = next;
      // Karn: time only segments sent for the first time, one at a time.
      if (this.retransmitCount === 0) this.rtt.start(next, this.owner.now());
    }
    if (fin && this.state === "ESTABLISHED") this.state = "FIN-WAIT-1";
    else if (fin && this.state === "CLOSE-WAIT") this.state = "LAST-ACK";
    if (this.retransmitAt === 0) this.retransmitAt = this.owner.now() + this.rtt.rto;
  }

  /** Resends the first unacknowledged segment (fast retransmit, partial ACKs). */
  private retransmitFirst(): void {
    const len = Math.min(this.sndMss, this.sendQueue.length);
    this.transmit(this.sndUna, len);
    this.rtt.cancel();
  }

  /** SYN (port forward) or SYN-ACK (the guest's connection), with our MSS and window scale. */
  private sendSyn(): void {
    const synAck = this.state === "SYN-RECEIVED";
    // The window-scale option only when the guest offered it (SYN-ACK, RFC 7323
    // 1.3) or to offer it (our SYN).
    const offerScale = !synAck || this.guestScales;
    const window = this.window.synWindow(this.rcvNxt);
    this.emitRaw({
      seq: this.iss,
      ack: synAck ? this.rcvNxt : 0,
      flags: TCP_SYN | (synAck ? TCP_ACK : 0),
      window,
      mss: this.owner.mss,
      windowScale: offerScale ? this.window.scale : undefined,
      sackPermitted: !synAck || this.sackPermitted,
    });
    this.recommit();
    this.sndNxt = this.sndMax = seqAdd(this.iss, 1);
    if (this.retransmitAt === 0) this.retransmitAt = this.owner.now() + this.rtt.rto;
    if (this.retransmitCount === 0) this.rtt.start(this.sndMax, this.owner.now());
  }

  sendAck(): void {
    if (this.state === "CLOSED" || this.state === "HOST-CONNECTING" || this.state === "SYN-SENT") return;
    this.emit(this.sndNxt, TCP_ACK);
  }

  /** Emits a segment from our side carrying the current ACK and window. */
  private emit(seq: number, flags: number, payload?: Uint8Array): void {
    const window = this.window.advertise(this.rcvNxt, this.hostBuffered());
    this.ackPending = false;
    this.unackedSegments = 0;
    const sackBlocks = this.sackPermitted && this.reassembly.length > 0 ? this.reassembly.sackBlocks() : undefined;
    this.emitRaw({ seq, ack: this.rcvNxt, flags, window, sackBlocks }, payload);
    this.recommit();
  }

  private emitRaw(h: Omit<TcpHeaderFields, "srcPort" | "dstPort">, payload?: Uint8Array): void {
    this.owner.counters.segmentsOut++;
    const segment = buildTcp(this.remote, this.guest, { srcPort: this.remotePort, dstPort: this.guestPort, ...h }, payload);
    this.owner.emit(this.remote, this.guest, segment, payload && payload.length > this.sndMss ? this.sndMss : undefined);
  }

  /** Guest bytes the host socket has not taken yet. */
  private hostBuffered(): number {
    return this.guestFinReceived || this.socket.destroyed ? 0 : this.socket.writableLength;
  }

  /** Tells the receive budget what this connection holds or promised towards the host. */
  private recommit(): void {
    this.window.commit(this.rcvNxt, this.hostBuffered(), this.state === "CLOSED");
  }

  /** The receive budget has room again: offer the guest a larger window if that is now worth it. */
  windowMayOpen(): void {
    if (this.state === "CLOSED" || this.state === "HOST-CONNECTING" || this.state === "SYN-SENT") return;
    if (this.window.wouldOpen(this.rcvNxt, this.hostBuffered())) this.sendAck();
  }

  /** A reset towards the guest; `withAck` for a reply to a segment without ACK (RFC 9293 3.10.7.1). */
  private sendReset(seq: number, ack: number, withAck: boolean): void {
    this.owner.counters.resetsToGuest++;
    this.emitRaw({ seq, ack, flags: TCP_RST | (withAck ? TCP_ACK : 0), window: 0 });
  }

  /** The host refused or failed before we answered the guest's SYN. */
  private refuseSyn(): void {
    this.sendReset(0, this.rcvNxt, true);
  }

  /** Host side failed after the handshake began: reset the guest and drop everything. */
  private abort(): void {
    if (this.state !== "SYN-SENT") this.sendReset(this.sndNxt, this.rcvNxt, true);
    this.destroyHost(false);
    this.finish();
  }

  private destroyHost(reset: boolean): void {
    const s = this.socket;
    if (s.destroyed) return;
    if (reset && typeof s.resetAndDestroy === "function") {
      try {
        s.resetAndDestroy();
        return;
      } catch {
        // not connected yet: a plain destroy below
      }
    }
    s.destroy();
  }

  private enterTimeWait(): void {
    this.state = "TIME-WAIT";
    this.retransmitAt = 0;
    this.persistAt = 0;
    this.deadline = this.owner.now() + this.owner.timeouts.lingerMs;
  }

  /** The connection is over: release the socket and leave the table. */
  private finish(): void {
    if (this.state === "CLOSED") return;
    this.state = "CLOSED";
    this.retransmitAt = this.persistAt = this.deadline = 0;
    this.owner.queued(-this.sendQueue.length);
    this.sendQueue.clear();
    this.reassembly.clear();
    if (!this.socket.destroyed) this.socket.destroy();
    this.recommit();
    this.owner.removed(this);
  }

  /** The NAT shuts down: RST the guest, drop the host socket. */
  close(): void {
    if (this.state === "CLOSED") return;
    if (this.state === "HOST-CONNECTING") this.refuseSyn();
    else if (this.state !== "TIME-WAIT") this.sendReset(this.sndNxt, this.rcvNxt, true);
    this.destroyHost(true);
    this.finish();
  }

  flushAck(): void {
    if (this.ackPending) this.sendAck();
  }

  markAckPending(): boolean {
    const was = this.ackPending;
    this.ackPending = true;
    return !was;
  }

  // --- timers (driven by the NAT's tick) ---

  tick(now: number): void {
    if (this.state === "CLOSED") return;
    const t = this.owner.timeouts;
    if (this.deadline !== 0 && now >= this.deadline) {
      if (this.state === "TIME-WAIT") return this.finish();
      this.owner.counters.timeouts++;
      if (this.state === "HOST-CONNECTING") {
        this.owner.refused();
        this.refuseSyn();
        this.destroyHost(false);
        return this.finish();
      }
      return this.timedOut();
    }
    if (this.retransmitAt !== 0 && now >= this.retransmitAt) this.retransmitTimeout(now);
    if (this.isClosed()) return;
    if (this.persistAt !== 0 && now >= this.persistAt) this.probeWindow(now);
    const idleLimit = this.state === "ESTABLISHED" ? t.idleMs : t.halfClosedIdleMs;
    if (now - this.lastActivity > idleLimit && this.deadline === 0) {
      this.owner.counters.timeouts++;
      this.timedOut();
    }
  }

  private timedOut(): void {
    if (this.state === "SYN-SENT") {
      this.destroyHost(true);
      this.finish();
    } else {
      this.abort();
    }
  }

  /** RFC 6298 5.4-5.7: resend the earliest unacknowledged segment, back off, and shrink cwnd (RFC 5681 3.1). */
  private retransmitTimeout(now: number): void {
    this.retransmitCount++;
    if (this.retransmitCount > this.owner.timeouts.maxRetransmits) {
      this.owner.counters.timeouts++;
      return this.timedOut();
    }
    this.rtt.backOff();
    this.retransmitAt = now + this.rtt.rto;
    if (this.state === "SYN-SENT" || this.state === "SYN-RECEIVED") {
      this.retransmits++;
      this.owner.counters.retransmits++;
      this.sendSyn();
      return;
    }
    const flight = seqDiff(this.sndMax, this.sndUna);
    if (flight <= 0) {
      this.retransmitAt = 0;
      return;
    }
    this.congestion.timeout(flight);
    // Go back N: everything after sndUna is sent again as the window allows.
    this.sndNxt = this.sndUna;
    this.transmit(this.sndUna, Math.min(this.sndMss, this.sendQueue.length));
  }

  /** RFC 9293 3.8.6.1: a zero-window probe, an old sequence number that makes the guest answer with its window. */
  private probeWindow(now: number): void {
    this.owner.counters.windowProbes++;
    this.persistBackoff = Math.min(this.persistBackoff + 1, 10);
    this.persistAt = now + Math.min(this.rtt.rto * 2 ** this.persistBackoff, this.owner.timeouts.maxRtoMs);
    this.emit(seqAdd(this.sndUna, -1), TCP_ACK);
  }

  summary(): TcpConnectionSummary {
    return {
      guest: this.guest,
      guestPort: this.guestPort,
      remote: this.remote,
      remotePort: this.remotePort,
      direction: this.direction,
      state: this.state,
      bytesFromGuest: this.bytesFromGuest,
      bytesToGuest: this.bytesToGuest,
      queuedToGuest: this.sendQueue.length,
      sndWnd: this.sndWnd,
      rcvWnd: this.window.size(this.rcvNxt),
      cwnd: this.congestion.cwnd,
      sndWindowScale: this.sndWindowScale,
      rcvWindowScale: this.window.scale,
      srttMs: this.rtt.srtt,
      rtoMs: this.rtt.rto,
      retransmits: this.retransmits,
    };
  }
}
