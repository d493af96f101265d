// One vsock stream connection between a guest port and a host port, and its
// credit-based flow control (virtio 1.2, 5.10.6.3 "Buffer Space Management"):
//
// - Guest -> host. We advertise buf_alloc = CONN_BUF_ALLOC and fwd_cnt = the
//   guest bytes the host end has taken (written out to the Unix socket). The
//   guest may have at most buf_alloc - (rx_cnt - fwd_cnt) bytes with us; a
//   guest that sends more breaks the protocol and its connection is reset. So
//   what a connection holds for a host peer that never reads is bounded by
//   CONN_BUF_ALLOC. As fwd_cnt advances we send CREDIT_UPDATE.
// - Host -> guest. We never send the guest more than its
//   peer_buf_alloc - (tx_cnt - peer_fwd_cnt). Host input waits here up to
//   HOST_INPUT_HIGH bytes; beyond that the host socket is paused, and resumed
//   once the guest has taken it below HOST_INPUT_LOW.
//
// The state machine (ours, not the guest's socket's):
//   host-initiated:  connecting (REQUEST queued/sent) -> RESPONSE -> established
//   guest-initiated: opening (the host end is being opened) -> RESPONSE sent -> established
//   established -> draining (both sides done, host writes still flushing) -> gone
//   any -> RST -> gone
// Counters are JS numbers (exact well past 2^32); header fields are taken mod 2^32.

import { VSOCK_SHUTDOWN_BOTH } from "./packet.js";

/** Receive buffer we advertise per connection (Linux's default is 256 KiB too). */
export const CONN_BUF_ALLOC = 256 << 10;
/** Host input kept per connection before the host socket is paused. */
export const HOST_INPUT_HIGH = 128 << 10;
export const HOST_INPUT_LOW = 32 << 10;

/** The host end of one connection (a Unix socket, unix-backend.ts). */
export interface HostStream {
  /** Guest bytes for the host; `flushed` runs once the host end took them (they then count in fwd_cnt). */
  write(data: Uint8Array, flushed: () => void): void;
  /** The guest will send no more (after what was written). */
  end(): void;
  /** Stop and restart reading host input. */
  pause(): void;
  resume(): void;
  /** Drop the host end now. */
  destroy(): void;
}

/** What the host end reports to the device about one connection. */
export interface HostStreamSink {
  data(bytes: Uint8Array): void;
  /** The host will send no more (a half close). */
  end(): void;
  /** The host end is gone. */
  closed(): void;
}

export type ConnState = "connecting" | "opening" | "established" | "draining";

export class Connection {
  state: ConnState;
  stream: HostStream | undefined;

  // guest -> host
  /** Guest payload bytes received. */
  rxCnt = 0;
  /** Of those, bytes the host end took (our fwd_cnt). */
  fwdCnt = 0;
  /** fwd_cnt the guest was last told. */
  fwdCntSent = 0;

  // host -> guest
  peerBufAlloc = 0;
  peerFwdCnt = 0;
  /** Payload bytes sent to the guest (tx_cnt). */
  txCnt = 0;
  private input: Uint8Array[] = [];
  private inputOffset = 0;
  inputBytes = 0;
  hostPaused = false;

  // control packets owed to the guest
  needRequest = false;
  needResponse = false;
  needCreditUpdate = false;
  /** Shutdown flags to send once the host input is delivered (0: none). */
  shutdownToSend = 0;
  shutdownSent = 0;
  needRst = false;

  /** SHUTDOWN flags the guest sent. */
  guestShutdown = 0;
  hostEnded = false;
  hostClosed = false;
  /** Timer that resets a connection that does not finish closing. */
  timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    /** Host side port (the guest sees it as the peer port). */
    readonly hostPort: number,
    readonly guestPort: number,
    state: ConnState,
  ) {
    this.state = state;
  }

  get key(): string {
    return connKey(this.hostPort, this.guestPort);
  }

  /** Bytes the guest may still send us. */
  get creditForGuest(): number {
    return CONN_BUF_ALLOC - (this.rxCnt - this.fwdCnt);
  }

  /** Bytes we may still send the guest. Its fwd_cnt is untrusted: a value ahead of what we sent gives no credit. */
  get peerCredit(): number {
    const inFlight = (this.txCnt - this.peerFwdCnt) % 2 ** 32;
    const unacked = (inFlight + 2 ** 32) % 2 ** 32;
    if (unacked > this.txCnt || unacked > this.peerBufAlloc) return 0;
    return this.peerBufAlloc - unacked;
  }

  updatePeerCredit(bufAlloc: number, fwdCnt: number): void {
    this.peerBufAlloc = bufAlloc >>> 0;
    this.peerFwdCnt = fwdCnt >>> 0;
  }

  /** Host input waiting for the guest. */
  pushInput(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.input.push(bytes);
    this.inputBytes += bytes.length;
    if (this.inputBytes >= HOST_INPUT_HIGH && !this.hostPaused && this.stream) {
      this.hostPaused = true;
      this.stream.pause();
    }
  }

  /** Take up to `n` bytes of host input. */
  takeInput(n: number): Uint8Array {
    n = Math.min(n, this.inputBytes);
    const out = new Uint8Array(n);
    let done = 0;
    while (done < n) {
      const first = this.input[0];
      const k = Math.min(first.length - this.inputOffset, n - done);
      out.set(first.subarray(this.inputOffset, this.inputOffset + k), done);
      done += k;
      this.inputOffset += k;
      if (this.inputOffset === first.length) {
        this.input.shift();
        this.inputOffset = 0;
      }
    }
    this.inputBytes -= n;
    if (this.hostPaused && this.inputBytes <= HOST_INPUT_LOW && this.stream) {
      this.hostPaused = false;
      this.stream.resume();
    }
    return out;
  }

  dropInput(): void {
    this.input = [];
    this.inputOffset = 0;
    this.inputBytes = 0;
  }

  /** Has this connection a packet for the guest now? */
  hasPacket(): boolean {
    if (this.needRst || this.needRequest || this.needResponse) return true;
    if (this.state !== "established") return false;
    if (this.inputBytes > 0 && this.peerCredit > 0 && !(this.guestShutdown & 1)) return true;
    if (this.shutdownToSend & ~this.shutdownSent && (this.inputBytes === 0 || this.guestShutdown & 1)) return true;
    return this.needCreditUpdate;
  }

  /** Both directions are done: the guest sent SHUTDOWN with both flags, or we did. */
  get bothShut(): boolean {
    return this.guestShutdown === VSOCK_SHUTDOWN_BOTH;
  }
}

export function connKey(hostPort: number, guestPort: number): string {
  return `${hostPort}:${guestPort}`;
}
