// The retransmission timeout of one connection (RFC 6298): a smoothed round
// trip time and its variation from measured samples, Karn's rule for which
// segments may be measured, and the exponential backoff after a timeout.

import { seqLt } from "./tcp-segment.js";

/** RFC 6298 2.1: the RTO before any round trip has been measured. */
export const INITIAL_RTO_MS = 1000;

export class RttEstimator {
  /** The current retransmission timeout (ms), backed off after timeouts. */
  rto = INITIAL_RTO_MS;
  srtt: number | undefined;
  private rttvar = 0;
  /** The sequence number whose acknowledgement ends the measurement; undefined when none runs. */
  private timedSeq: number | undefined;
  private timedSince = 0;

  constructor(private readonly minRtoMs: number, private readonly maxRtoMs: number) {}

  get timing(): boolean {
    return this.timedSeq !== undefined;
  }

  /** Times the round trip of a segment sent for the first time, ending before `endSeq` (one at a time). */
  start(endSeq: number, now: number): void {
    if (this.timedSeq !== undefined) return;
    this.timedSeq = endSeq;
    this.timedSince = now;
  }

  /** Karn's algorithm (RFC 6298 3): a retransmission makes the running measurement ambiguous. */
  cancel(): void {
    this.timedSeq = undefined;
  }

  /** An acknowledgement up to `ack` arrived: a sample if it covers the timed segment. */
  acknowledged(ack: number, now: number): void {
    if (this.timedSeq === undefined || seqLt(ack, this.timedSeq)) return;
    const r = Math.max(1, now - this.timedSince);
    this.timedSeq = undefined;
    // RFC 6298 2.2 and 2.3 (alpha 1/8, beta 1/4, K 4, clock granularity 1 ms).
    if (this.srtt === undefined) {
      this.srtt = r;
      this.rttvar = r / 2;
    } else {
      this.rttvar = 0.75 * this.rttvar + 0.25 * Math.abs(this.srtt - r);
      this.srtt = 0.875 * this.srtt + 0.125 * r;
    }
    // RFC 6298 2.4 asks for at least 1 s; Linux uses 200 ms (TCP_RTO_MIN), the
    // default here, because guests on the same host answer in microseconds.
    this.rto = Math.min(this.maxRtoMs, Math.max(this.minRtoMs, this.srtt + Math.max(1, 4 * this.rttvar)));
  }

  /** RFC 6298 5.5: double the RTO after a timeout (up to the maximum). */
  backOff(): void {
    this.rto = Math.min(this.rto * 2, this.maxRtoMs);
    this.timedSeq = undefined;
  }
}
