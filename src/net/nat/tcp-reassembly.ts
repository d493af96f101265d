// Guest data that arrived after a hole, kept until the hole is filled. Without
// it every loss would cost the guest a whole window of retransmissions (it
// learns of one hole per round trip); with it one retransmission fills the
// hole, and the SACK blocks (RFC 2018) built from it tell a guest that offered
// SACK which segments it need not resend.
//
// The segments kept lie inside the window we offered (the connection trims
// them first), so their bytes are bounded by rcvBuf; their count is bounded
// too, for a guest that sends tiny segments.

import { seqAdd, seqDiff, seqGt, seqLe, seqLt } from "./tcp-segment.js";

/** Segments kept at most; more are dropped (the guest retransmits them). */
export const MAX_KEPT_SEGMENTS = 256;

interface Kept {
  seq: number;
  data: Uint8Array;
  fin: boolean;
}

export class ReassemblyQueue {
  /** Sorted by sequence number. */
  private kept: Kept[] = [];
  /** Where the latest kept segment starts: its block is reported first (RFC 2018 4). */
  private latest = 0;

  get length(): number {
    return this.kept.length;
  }

  /** Keeps a copy of `data` (at `seq`, after rcvNxt); false when it was dropped because too many are kept. */
  keep(seq: number, data: Uint8Array, fin: boolean): boolean {
    let i = this.kept.length;
    while (i > 0 && seqGt(this.kept[i - 1].seq, seq)) i--;
    if (i > 0 && this.kept[i - 1].seq === seq && this.kept[i - 1].data.length >= data.length) return true; // a duplicate
    if (this.kept.length >= MAX_KEPT_SEGMENTS) return false;
    this.kept.splice(i, 0, { seq, data: data.slice(), fin });
    this.latest = seq;
    return true;
  }

  /**
   * Hands the kept data that now continues the stream at `rcvNxt` to
   * `deliver` (which returns the new rcvNxt, or undefined to stop). Returns
   * whether a delivered segment carried the FIN.
   */
  drain(rcvNxt: number, deliver: (data: Uint8Array) => number | undefined): boolean {
    while (this.kept.length > 0 && seqLe(this.kept[0].seq, rcvNxt)) {
      const next = this.kept.shift()!;
      const skip = seqDiff(rcvNxt, next.seq);
      if (skip > next.data.length) continue; // wholly old
      const rest = next.data.subarray(skip);
      if (rest.length > 0) {
        const after = deliver(rest);
        if (after === undefined) return false;
        rcvNxt = after;
      }
      if (next.fin) {
        this.kept = []; // nothing follows a FIN
        return true;
      }
    }
    return false;
  }

  /** RFC 2018 3-4: up to 4 [left, right) blocks, the one holding the latest arrival first. */
  sackBlocks(): [number, number][] {
    const blocks: [number, number][] = [];
    for (const k of this.kept) {
      const end = seqAdd(k.seq, k.data.length);
      const last = blocks[blocks.length - 1];
      if (last && seqLe(k.seq, last[1])) {
        if (seqGt(end, last[1])) last[1] = end;
      } else if (k.data.length > 0) {
        blocks.push([k.seq, end]);
      }
    }
    const i = blocks.findIndex(([l, r]) => seqLe(l, this.latest) && seqLt(this.latest, r));
    if (i > 0) blocks.unshift(...blocks.splice(i, 1));
    return blocks.slice(0, 4);
  }

  clear(): void {
    this.kept = [];
  }
}
