// Congestion control of one connection as a sender towards the guest: slow
// start and congestion avoidance (RFC 5681 3.1), fast retransmit after three
// duplicate ACKs with NewReno fast recovery (RFC 5681 3.2, RFC 6582), and
// limited transmit (RFC 3042). The link to a guest on the same host rarely
// drops, but a guest's receive ring can overflow, and a sender that answers a
// loss with a full window again only makes it overflow again.
//
// The connection tells this object what happened (new data acknowledged, a
// duplicate ACK, a timeout) and does what it answers (resend the first
// unacknowledged segment, send what the window allows).

import { seqGe } from "./tcp-segment.js";

/** RFC 6928: an initial congestion window of 10 segments. */
const INITIAL_WINDOW_SEGMENTS = 10;

export class NewReno {
  cwnd: number;
  private ssthresh = 0x7fffffff;
  private dupAcks = 0;
  private inRecovery = false;
  /** RFC 6582: the highest sequence number sent when recovery began. */
  private recover = 0;

  /** `maxCwnd` keeps cwnd meaningful on a link that never drops (it only grows otherwise). */
  constructor(private mss: number, private readonly maxCwnd: number) {
    this.cwnd = INITIAL_WINDOW_SEGMENTS * mss;
  }

  /** The segment size is known once the SYNs are exchanged. */
  setMss(mss: number): void {
    this.mss = mss;
    this.cwnd = INITIAL_WINDOW_SEGMENTS * mss;
  }

  /** How many bytes may be in flight now: cwnd, plus a segment for each of the first two duplicate ACKs (RFC 3042). */
  sendWindow(): number {
    const limitedTransmit = !this.inRecovery && this.dupAcks < 3 ? this.dupAcks * this.mss : 0;
    return this.cwnd + limitedTransmit;
  }

  /**
   * `acked` new bytes were acknowledged up to `ack`, `flight` bytes are still
   * outstanding. True when the first unacknowledged segment must be resent
   * now (a partial acknowledgement during recovery: the next hole is lost too).
   */
  newAck(ack: number, acked: number, flight: number): boolean {
    const mss = this.mss;
    this.dupAcks = 0;
    let resend = false;
    if (this.inRecovery) {
      if (seqGe(ack, this.recover)) {
        // RFC 6582 3.2 step 3: a full acknowledgement ends recovery.
        this.inRecovery = false;
        this.cwnd = Math.min(this.ssthresh, Math.max(flight, mss) + mss);
      } else {
        resend = true;
        this.cwnd = Math.max(mss, this.cwnd - acked + mss);
      }
    } else if (this.cwnd < this.ssthresh) {
      this.cwnd += Math.min(acked, mss); // slow start
    } else {
      this.cwnd += Math.max(1, Math.floor((mss * mss) / this.cwnd)); // congestion avoidance
    }
    this.cwnd = Math.min(this.cwnd, this.maxCwnd);
    return resend;
  }

  /**
   * A duplicate ACK with `flight` bytes outstanding and `sndMax` the highest
   * sent: "retransmit" on the third (fast retransmit: resend the first
   * unacknowledged segment), else "send" when the window grew.
   */
  duplicateAck(flight: number, sndMax: number): "retransmit" | "send" | "nothing" {
    this.dupAcks++;
    const mss = this.mss;
    if (this.dupAcks === 3 && !this.inRecovery) {
      this.ssthresh = Math.max(Math.floor(flight / 2), 2 * mss);
      this.recover = sndMax;
      this.inRecovery = true;
      this.cwnd = this.ssthresh + 3 * mss;
      return "retransmit";
    }
    if (this.dupAcks > 3 && this.inRecovery) {
      this.cwnd += mss; // each duplicate ACK means a segment left the network
      return "send";
    }
    // Limited transmit: new data on the first two, so that a small window
    // still yields the three duplicates fast retransmit needs.
    return this.dupAcks < 3 && !this.inRecovery ? "send" : "nothing";
  }

  /** RFC 5681 3.1: after a retransmission timeout, one segment at a time again. */
  timeout(flight: number): void {
    this.ssthresh = Math.max(Math.floor(flight / 2), 2 * this.mss);
    this.cwnd = this.mss;
    this.inRecovery = false;
    this.dupAcks = 0;
  }
}
