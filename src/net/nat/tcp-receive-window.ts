// The window one connection offers the guest (RFC 9293 3.8.6.2.2, RFC 7323):
// what its host socket can still take, within the receive budget all
// connections share, scaled, never moved left, and moved right only by a
// worthwhile step (receiver silly-window-syndrome avoidance).
//
// Every window offered is a promise: the guest may send that much, and it
// ends up in the host socket's buffer. So a connection counts, against the
// budget, its open offer (right edge minus RCV.NXT) plus what its socket
// still buffers, and tells the budget whenever that changes.

import { seqAdd, seqDiff, seqGt, seqLe } from "./tcp-segment.js";

export interface ReceiveBudget {
  /** Guest bytes one host socket may buffer: the largest window. */
  readonly rcvBuf: number;
  readonly mss: number;
  /** Guest bytes all connections together may have offered or buffered. */
  readonly rcvBudget: number;
  readonly maxConnections: number;
  rcvCommitted(): number;
  rcvCommit(delta: number): void;
}

export class ReceiveWindow {
  /** The right edge last advertised (RCV.NXT + RCV.WND when it was sent). */
  edge = 0;
  /** Our window-scale shift (RFC 7323 2.3): the smallest that lets rcvBuf fit the 16-bit field; 0 when the guest does not scale. */
  scale = 0;
  /** What this connection counts against the budget now. */
  private committed = 0;

  /** `waitForRoom` asks the owner to call back when the budget has room again. */
  constructor(private readonly b: ReceiveBudget, private readonly waitForRoom: () => void) {
    while (b.rcvBuf >> this.scale > 0xffff && this.scale < 14) this.scale++;
  }

  /** RCV.WND as last advertised. */
  size(rcvNxt: number): number {
    return Math.max(0, seqDiff(this.edge, rcvNxt));
  }

  /** The window of our SYN or SYN-ACK: never scaled (RFC 7323 2.2), within the budget too. */
  synWindow(rcvNxt: number): number {
    const full = Math.min(this.b.rcvBuf, 0xffff);
    const window = Math.min(full, Math.max(this.b.mss, this.fairShare(), this.budgetLeft(0)));
    if (window < full) this.waitForRoom();
    this.edge = seqAdd(rcvNxt, window);
    return window;
  }

  /**
   * The right edge we could offer now, with `buffered` guest bytes still in
   * the host socket: rcvBuf less those, within the budget, but each
   * connection keeps its fair share (rcvBudget / maxConnections), or idle
   * connections holding old offers would starve a busy one (so all together
   * stay below 2 x rcvBudget).
   */
  offer(rcvNxt: number, buffered: number): number {
    let room = Math.max(0, this.b.rcvBuf - buffered);
    const budgetLeft = this.budgetLeft(buffered);
    if (budgetLeft < room) {
      room = Math.min(room, Math.max(0, budgetLeft, this.fairShare() - buffered));
      this.waitForRoom();
    }
    const edge = seqAdd(rcvNxt, room);
    if (seqLe(edge, this.edge)) return this.edge;
    if (seqDiff(edge, this.edge) < Math.min(this.b.rcvBuf / 2, this.b.mss)) return this.edge;
    return edge;
  }

  /** Whether the window would grow enough now to be worth a window update. */
  wouldOpen(rcvNxt: number, buffered: number): boolean {
    return seqGt(this.offer(rcvNxt, buffered), this.edge);
  }

  /** The window field of an outgoing segment; the advertised edge moves with it. */
  advertise(rcvNxt: number, buffered: number): number {
    const field = Math.min(0xffff, Math.max(0, seqDiff(this.offer(rcvNxt, buffered), rcvNxt)) >>> this.scale);
    const advertised = seqAdd(rcvNxt, field << this.scale);
    if (seqGt(advertised, this.edge)) this.edge = advertised;
    return field;
  }

  /** Tells the budget what this connection holds or promised now (0 once it is closed). */
  commit(rcvNxt: number, buffered: number, closed = false): void {
    const now = closed ? 0 : this.size(rcvNxt) + buffered;
    if (now === this.committed) return;
    const delta = now - this.committed;
    this.committed = now;
    this.b.rcvCommit(delta);
  }

  private budgetLeft(buffered: number): number {
    return this.b.rcvBudget - (this.b.rcvCommitted() - this.committed) - buffered;
  }

  private fairShare(): number {
    return Math.floor(this.b.rcvBudget / this.b.maxConnections);
  }
}
