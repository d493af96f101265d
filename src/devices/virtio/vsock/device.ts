// virtio-vsock (virtio 1.2, 5.10 "Socket Device"): stream sockets between
// the guest (AF_VSOCK, CID guest_cid) and host programs, here through Unix
// sockets as Firecracker does it (unix-backend.ts). Three queues: rx (0,
// device -> driver packets), tx (1, driver -> device packets), event (2).
// Configuration space: guest_cid u64 at 0. Only stream sockets
// (VIRTIO_VSOCK_F_STREAM); VIRTIO_VSOCK_F_SEQPACKET is not offered.
//
// Everything from the guest is checked: a tx chain shorter than a header, a
// header announcing more payload than the chain has or than
// VSOCK_MAX_PAYLOAD, a source CID not the guest's, a destination not the
// host, a type other than stream: dropped, with an RST where a connection
// could be named. A packet for no connection gets an RST; a guest that sends
// past its credit loses the connection. Nothing a guest sends throws.
//
// Bounded memory: at most MAX_CONNECTIONS connections, each holding at most
// CONN_BUF_ALLOC guest bytes and about HOST_INPUT_HIGH + 64 KiB host bytes
// (connection.ts); RSTs for unknown connections wait in a list of at most
// MAX_PENDING_RSTS, and while it is full the device stops taking tx packets
// (the guest's own queue then holds them), as Firecracker does.
//
// rx and event buffers are never held: the device pops one only when it has
// a packet or an event to put in it, so a snapshot finds none in flight.

import type { VirtioDevice, VirtioContext } from "../virtio.js";
import { ChainError, checkNoneInFlight, type DescriptorChain, type VirtQueue } from "../queue.js";
import { GuestMemoryError } from "../../../memory/guest-memory.js";
import type { Plain, StateReader } from "../../../snapshot/state.js";
import { formatBytes } from "../format-bytes.js";
import {
  VSOCK_HDR_SIZE, VSOCK_HOST_CID, VSOCK_MAX_PAYLOAD, VSOCK_TYPE_STREAM, VIRTIO_VSOCK_F_STREAM,
  VSOCK_OP_REQUEST, VSOCK_OP_RESPONSE, VSOCK_OP_RST, VSOCK_OP_SHUTDOWN, VSOCK_OP_RW, VSOCK_OP_CREDIT_UPDATE,
  VSOCK_OP_CREDIT_REQUEST, VSOCK_SHUTDOWN_BOTH, VSOCK_SHUTDOWN_RCV, VSOCK_SHUTDOWN_SEND, VSOCK_EVENT_TRANSPORT_RESET,
  VSOCK_EVENT_SIZE, VSOCK_MIN_GUEST_CID, VSOCK_MAX_GUEST_CID, encodeHeader, parseHeader, type VsockHeader,
} from "./packet.js";
import { Connection, CONN_BUF_ALLOC, connKey, type HostStream, type HostStreamSink } from "./connection.js";

export const VIRTIO_ID_VSOCK = 19;

const RX_QUEUE = 0;
const TX_QUEUE = 1;
const EVENT_QUEUE = 2;
const QUEUE_SIZE = 256;

/** Connections at most (guest- and host-initiated together): a guest opening more gets RSTs. */
export const MAX_CONNECTIONS = 256;
/** RSTs owed for packets that named no connection, waiting for rx buffers. */
export const MAX_PENDING_RSTS = 256;
/** Packets taken from the tx queue in one notify before host work gets a turn. */
const TX_BATCH = 1024;
/** How long a host-initiated connection waits for the guest's RESPONSE (Firecracker: 2 s). */
export const CONNECT_TIMEOUT_MS = 2000;
/** How long a closing connection waits for the guest's RST or for the host end to flush. */
export const CLOSE_TIMEOUT_MS = 10_000;
/** How long host-initiated connections wait at most for the driver to handle a TRANSPORT_RESET. */
const RESET_HANDLED_TIMEOUT_MS = 1000;
/** First host-side port of host-initiated connections (Firecracker starts at 2^30 too). */
const FIRST_LOCAL_PORT = 1 << 30;

/** The host side: where guest connections go and where host connections come from (unix-backend.ts). */
export interface VsockBackend {
  /** The guest connects to host port `port`: open the host end (its input goes to `sink`); undefined when refused. */
  connect(port: number, sink: HostStreamSink): Promise<HostStream | undefined>;
  /** Start taking host-initiated connections for `host`. */
  start(host: VsockHost): void;
  close(): void | Promise<void>;
}

/** What the backend asks of the device. */
export interface VsockHost {
  /**
   * A host program asks for guest port `port`; `result` gets the host-side
   * port once the guest accepts, or undefined when it refuses (or there is no
   * driver, or no room). The returned sink takes the host end's input.
   */
  connectToGuest(port: number, stream: HostStream, result: (hostPort: number | undefined) => void): HostStreamSink;
}

export class VsockStats {
  connectionsOpened = 0;
  bytesToHost = 0;
  bytesToGuest = 0;
  /** Guest packets dropped as malformed (short, bad length, wrong CIDs, unknown type). */
  badPackets = 0;
  rstsSent = 0;
  /** RSTs not sent because the list of pending ones was full. */
  rstsDropped = 0;
}

export interface VirtioVsockOptions {
  name?: string;
  guestCid: number;
  backend: VsockBackend;
}

type Pending = { conn: Connection; result: (hostPort: number | undefined) => void };

export class VirtioVsock implements VirtioDevice {
  readonly deviceId = VIRTIO_ID_VSOCK;
  readonly name: string;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE];
  readonly features = VIRTIO_VSOCK_F_STREAM;
  readonly guestCid: number;
  readonly stats = new VsockStats();

  private readonly backend: VsockBackend;
  private ctx: VirtioContext | undefined;
  private queues: readonly (VirtQueue | undefined)[] | undefined;
  private readonly conns = new Map<string, Connection>();
  /** Host-initiated connections waiting for the guest's RESPONSE, by key. */
  private readonly pendingAccept = new Map<string, Pending>();
  private readonly pendingRsts: VsockHeader[] = [];
  private nextLocalPort = FIRST_LOCAL_PORT;
  private transportResetOwed = false;
  /**
   * The TRANSPORT_RESET is in the event queue but the driver has not handled
   * it yet (Linux handles events in a work item, then makes the buffer
   * available again). Until then a connection the host opens would be one of
   * those the reset closes, so host-initiated REQUESTs wait; `resetAvail` is
   * the event queue's available index when the reset went out.
   */
  private resetUnhandled = false;
  private resetAvail = 0;
  private paused = false;

  constructor(opts: VirtioVsockOptions) {
    const cid = BigInt(opts.guestCid);
    if (!Number.isInteger(opts.guestCid) || cid < VSOCK_MIN_GUEST_CID || cid > VSOCK_MAX_GUEST_CID) {
      throw new RangeError(`vsock guest CID ${opts.guestCid}: expected ${VSOCK_MIN_GUEST_CID}..${VSOCK_MAX_GUEST_CID}`);
    }
    this.name = opts.name ?? "vsock0";
    this.guestCid = opts.guestCid;
    this.backend = opts.backend;
    this.backend.start(this);
  }

  /** Connections open now (for tests and stats). */
  get connectionCount(): number {
    return this.conns.size;
  }

  /** Bytes held for all connections (host input waiting for the guest). */
  get heldBytes(): number {
    let n = 0;
    for (const c of this.conns.values()) n += c.inputBytes + (c.rxCnt - c.fwdCnt);
    return n + this.pendingRsts.length * VSOCK_HDR_SIZE;
  }

  readConfig(offset: number, size: number): number {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(this.guestCid), true);
    let v = 0;
    for (let i = 0; i < size; i++) v |= (offset + i >= 0 && offset + i < b.length ? b[offset + i] : 0) << (8 * i);
    return v >>> 0;
  }

  writeConfig(): void {}

  activate(ctx: VirtioContext, queues: readonly (VirtQueue | undefined)[]): void {
    this.ctx = ctx;
    this.queues = queues;
  }

  reset(): void {
    this.dropAll();
    this.ctx = undefined;
    this.queues = undefined;
    this.transportResetOwed = false;
    this.resetUnhandled = false;
  }

  async close(): Promise<void> {
    this.dropAll();
    this.ctx = undefined;
    this.queues = undefined;
    await this.backend.close();
  }

  async pauseIo(): Promise<void> {
    this.paused = true;
  }

  resumeIo(): void {
    this.paused = false;
  }

  /**
   * Snapshot: the guest CID only. Connections are not saved: their host ends
   * (Unix sockets) cannot be carried into another process. As Firecracker
   * does, a restored device drops them all and sends the driver
   * VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue, so the guest
   * resets its sockets (and listeners stay); host programs connect again.
   */
  saveState(): Plain {
    return { guestCid: this.guestCid };
  }

  restoreState(r: StateReader): void {
    const cid = r.int("guestCid", Number(VSOCK_MIN_GUEST_CID), Number(VSOCK_MAX_GUEST_CID));
    r.check(cid === this.guestCid, `the snapshot's guest CID is ${cid}, this VM's ${this.guestCid}`);
    for (const i of [RX_QUEUE, TX_QUEUE, EVENT_QUEUE]) checkNoneInFlight(r, this.queues?.[i]);
    this.dropAll();
    this.transportResetOwed = true;
    this.ctx?.requestPoll();
  }

  notify(index: number): void {
    if (this.paused) return;
    if (index === TX_QUEUE) this.processTx();
    this.deliver();
  }

  poll(): void {
    if (this.paused) return;
    this.processTx();
    this.deliver();
  }

  // ---- host side ----------------------------------------------------------------

  connectToGuest(port: number, stream: HostStream, result: (hostPort: number | undefined) => void): HostStreamSink {
    const port32 = port >>> 0;
    if (!this.queues || this.conns.size >= MAX_CONNECTIONS || port32 !== port) {
      queueMicrotask(() => result(undefined));
      return { data() {}, end() {}, closed() {} };
    }
    let hostPort = this.nextLocalPort;
    while (this.conns.has(connKey(hostPort, port32))) hostPort = hostPort >= 0xffff_fffe ? FIRST_LOCAL_PORT : hostPort + 1;
    this.nextLocalPort = hostPort >= 0xffff_fffe ? FIRST_LOCAL_PORT : hostPort + 1;
    const conn = new Connection(hostPort, port32, "connecting");
    conn.stream = stream;
    conn.needRequest = true;
    this.conns.set(conn.key, conn);
    this.pendingAccept.set(conn.key, { conn, result });
    this.stats.connectionsOpened++;
    conn.timer = setTimeout(() => {
      if (this.conns.get(conn.key) === conn && conn.state === "connecting") this.resetConn(conn);
    }, CONNECT_TIMEOUT_MS);
    conn.timer.unref?.();
    this.ctx?.requestPoll();
    return this.sinkFor(conn);
  }

  private sinkFor(conn: Connection): HostStreamSink {
    const live = () => this.conns.get(conn.key) === conn;
    return {
      data: (bytes) => {
        if (!live() || conn.guestShutdown & VSOCK_SHUTDOWN_RCV) return;
        conn.pushInput(bytes);
        this.ctx?.requestPoll();
      },
      end: () => {
        if (!live()) return;
        conn.hostEnded = true;
        conn.shutdownToSend |= VSOCK_SHUTDOWN_SEND;
        this.ctx?.requestPoll();
      },
      closed: () => {
        conn.hostClosed = true;
        if (!live()) return;
        if (conn.state !== "established") return this.resetConn(conn);
        conn.stream = undefined;
        // Nothing more can reach the host: the guest's data would go nowhere.
        conn.shutdownToSend |= VSOCK_SHUTDOWN_BOTH;
        this.armCloseTimer(conn);
        this.ctx?.requestPoll();
      },
    };
  }

  // ---- guest -> host ------------------------------------------------------------

  private processTx(): void {
    const q = this.queues?.[TX_QUEUE];
    if (!q) return;
    try {
      for (let n = 0; this.pendingRsts.length < MAX_PENDING_RSTS; n++) {
        if (n === TX_BATCH) {
          // The rest on the next poll: the driver need not kick again for what it already made available.
          this.ctx?.requestPoll();
          break;
        }
        const chain = q.pop();
        if (!chain) break;
        this.handleTx(chain);
        q.push(chain, 0);
      }
    } finally {
      q.notifyDriver();
    }
  }

  private handleTx(chain: DescriptorChain): void {
    let h: VsockHeader;
    let payload: Uint8Array | undefined;
    try {
      if (chain.readableLength < VSOCK_HDR_SIZE) {
        this.stats.badPackets++;
        return;
      }
      h = parseHeader(chain.read(0, VSOCK_HDR_SIZE));
      if (h.len > VSOCK_MAX_PAYLOAD || h.len > chain.readableLength - VSOCK_HDR_SIZE) {
        this.stats.badPackets++;
        this.refuse(h);
        return;
      }
      if (h.op === VSOCK_OP_RW && h.len > 0) payload = chain.read(VSOCK_HDR_SIZE, h.len);
    } catch (e) {
      if (!(e instanceof ChainError || e instanceof GuestMemoryError)) throw e;
      this.stats.badPackets++;
      return;
    }
    if (h.srcCid !== BigInt(this.guestCid) || h.dstCid !== VSOCK_HOST_CID) {
      // Not from this guest or not to the host: no connection of ours to reset.
      this.stats.badPackets++;
      return;
    }
    if (h.type !== VSOCK_TYPE_STREAM) {
      this.stats.badPackets++;
      this.refuse(h);
      return;
    }
    this.handlePacket(h, payload);
  }

  private handlePacket(h: VsockHeader, payload: Uint8Array | undefined): void {
    const conn = this.conns.get(connKey(h.dstPort, h.srcPort));
    if (h.op === VSOCK_OP_RST) {
      if (conn) this.dropConn(conn, "guest RST");
      return;
    }
    if (h.op === VSOCK_OP_REQUEST) {
      if (conn || this.conns.size >= MAX_CONNECTIONS) {
        if (conn) this.resetConn(conn);
        else this.refuse(h);
        return;
      }
      this.openToHost(h);
      return;
    }
    if (!conn || conn.state === "draining") {
      this.refuse(h);
      return;
    }
    conn.updatePeerCredit(h.bufAlloc, h.fwdCnt);
    switch (h.op) {
      case VSOCK_OP_RESPONSE: {
        const p = this.pendingAccept.get(conn.key);
        if (conn.state !== "connecting" || !p || conn.needRequest) return this.resetConn(conn);
        this.pendingAccept.delete(conn.key);
        clearTimeout(conn.timer);
        conn.state = "established";
        p.result(conn.hostPort);
        return;
      }
      case VSOCK_OP_RW: {
        const n = payload?.length ?? 0;
        if (conn.state !== "established" || conn.guestShutdown & VSOCK_SHUTDOWN_SEND || n > conn.creditForGuest) {
          return this.resetConn(conn);
        }
        if (n === 0) return;
        conn.rxCnt += n;
        this.stats.bytesToHost += n;
        if (!conn.stream) {
          // The host end is gone: the bytes are dropped but count as taken, so the guest is not stalled.
          conn.fwdCnt += n;
          return;
        }
        conn.stream.write(payload!, () => this.flushed(conn, n));
        return;
      }
      case VSOCK_OP_CREDIT_UPDATE:
        return; // the credit was taken above; deliver() sends what it now allows
      case VSOCK_OP_CREDIT_REQUEST:
        conn.needCreditUpdate = true;
        return;
      case VSOCK_OP_SHUTDOWN: {
        if (conn.state !== "established") return this.resetConn(conn);
        const flags = h.flags & VSOCK_SHUTDOWN_BOTH;
        const newly = flags & ~conn.guestShutdown;
        conn.guestShutdown |= flags;
        if (newly & VSOCK_SHUTDOWN_RCV) conn.dropInput();
        if (newly & VSOCK_SHUTDOWN_SEND) conn.stream?.end();
        if (conn.guestShutdown === VSOCK_SHUTDOWN_BOTH) this.finishClose(conn);
        return;
      }
      default:
        // INVALID or an op this device does not know: the connection is reset.
        this.stats.badPackets++;
        return this.resetConn(conn);
    }
  }

  /** A guest REQUEST to host port h.dstPort: open the host end; RESPONSE when it is there, RST when refused. */
  private openToHost(h: VsockHeader): void {
    const conn = new Connection(h.dstPort, h.srcPort, "opening");
    conn.updatePeerCredit(h.bufAlloc, h.fwdCnt);
    this.conns.set(conn.key, conn);
    this.stats.connectionsOpened++;
    const sink = this.sinkFor(conn);
    this.backend.connect(h.dstPort, sink).then(
      (stream) => this.opened(conn, stream),
      () => this.opened(conn, undefined),
    );
  }

  private opened(conn: Connection, stream: HostStream | undefined): void {
    if (this.conns.get(conn.key) !== conn || conn.state !== "opening") {
      stream?.destroy();
      return;
    }
    if (!stream || conn.hostClosed) {
      stream?.destroy();
      return this.resetConn(conn);
    }
    conn.stream = stream;
    if (conn.hostPaused) stream.pause();
    conn.state = "established";
    conn.needResponse = true;
    this.ctx?.requestPoll();
  }

  /** The host end took `n` guest bytes: they count in fwd_cnt, and the guest hears of it when it matters. */
  private flushed(conn: Connection, n: number): void {
    if (this.conns.get(conn.key) !== conn) return;
    conn.fwdCnt += n;
    if (conn.state === "draining") {
      if (conn.fwdCnt === conn.rxCnt) this.dropConn(conn, "drained");
      return;
    }
    // A quarter of the window freed, or everything taken: tell the guest.
    const unsent = conn.fwdCnt - conn.fwdCntSent;
    if (unsent >= CONN_BUF_ALLOC / 4 || (conn.fwdCnt === conn.rxCnt && unsent > 0)) {
      conn.needCreditUpdate = true;
      this.ctx?.requestPoll();
    }
  }

  /**
   * The guest shut down both ways: it waits for our RST (Linux's close()).
   * What it sent still goes out to the host end; the connection is gone
   * once it has, or after CLOSE_TIMEOUT_MS.
   */
  private finishClose(conn: Connection): void {
    conn.dropInput();
    conn.needRst = true;
    this.ctx?.requestPoll();
  }

  private armCloseTimer(conn: Connection): void {
    if (conn.timer) clearTimeout(conn.timer);
    conn.timer = setTimeout(() => {
      if (this.conns.get(conn.key) === conn) this.resetConn(conn);
    }, CLOSE_TIMEOUT_MS);
    conn.timer.unref?.();
  }

  /** Reset a connection: the guest gets an RST, the host end is dropped. */
  private resetConn(conn: Connection): void {
    if (this.conns.get(conn.key) !== conn) return;
    conn.dropInput();
    conn.needRequest = conn.needResponse = conn.needCreditUpdate = false;
    conn.shutdownToSend = 0;
    conn.needRst = true;
    conn.stream?.destroy();
    conn.stream = undefined;
    const p = this.pendingAccept.get(conn.key);
    if (p) {
      this.pendingAccept.delete(conn.key);
      p.result(undefined);
    }
    this.ctx?.requestPoll();
  }

  /** Forget a connection (the guest already knows it is gone). */
  private dropConn(conn: Connection, _why: string): void {
    if (this.conns.get(conn.key) !== conn) return;
    this.conns.delete(conn.key);
    clearTimeout(conn.timer);
    conn.dropInput();
    const p = this.pendingAccept.get(conn.key);
    if (p) {
      this.pendingAccept.delete(conn.key);
      p.result(undefined);
    }
    conn.stream?.destroy();
    conn.stream = undefined;
  }

  private dropAll(): void {
    for (const c of [...this.conns.values()]) this.dropConn(c, "reset");
    this.pendingRsts.length = 0;
  }

  /** An RST for a guest packet that names no connection of ours (never for an RST). */
  private refuse(h: VsockHeader): void {
    if (h.op === VSOCK_OP_RST) return;
    if (this.pendingRsts.length >= MAX_PENDING_RSTS) {
      this.stats.rstsDropped++;
      return;
    }
    this.pendingRsts.push(this.header(h.dstPort, h.srcPort, VSOCK_OP_RST, 0, 0, 0));
    this.ctx?.requestPoll();
  }

  // ---- host -> guest ------------------------------------------------------------

  private header(hostPort: number, guestPort: number, op: number, len: number, flags: number, fwdCnt: number): VsockHeader {
    return {
      srcCid: VSOCK_HOST_CID, dstCid: BigInt(this.guestCid), srcPort: hostPort, dstPort: guestPort,
      len, type: VSOCK_TYPE_STREAM, op, flags, bufAlloc: CONN_BUF_ALLOC, fwdCnt: fwdCnt % 2 ** 32,
    };
  }

  /** Fill rx buffers with what is owed: RSTs, then each connection's packets, then the event. */
  private deliver(): void {
    this.deliverEvent();
    const q = this.queues?.[RX_QUEUE];
    if (!q) return;
    try {
      while (this.pendingRsts.length > 0) {
        if (!this.put(q, this.pendingRsts[0])) return;
        this.pendingRsts.shift();
        this.stats.rstsSent++;
      }
      let progress = true;
      // Round robin: one packet per connection per turn, so one busy connection does not starve the others.
      while (progress) {
        progress = false;
        for (const conn of this.conns.values()) {
          if (!conn.hasPacket() || (conn.needRequest && this.holdRequests())) continue;
          if (!q.hasAvailable()) return;
          if (this.sendOne(q, conn)) progress = true;
        }
      }
    } finally {
      q.notifyDriver();
      // tx may have stopped while RSTs were waiting for rx buffers.
      if (this.pendingRsts.length < MAX_PENDING_RSTS && this.queues?.[TX_QUEUE]?.hasAvailable()) this.processTx();
    }
  }

  /** The next packet of `conn` into one rx buffer. */
  private sendOne(q: VirtQueue, conn: Connection): boolean {
    if (conn.needRst) {
      if (!this.put(q, this.header(conn.hostPort, conn.guestPort, VSOCK_OP_RST, 0, 0, conn.fwdCnt))) return false;
      conn.needRst = false;
      this.stats.rstsSent++;
      // After the guest's own full shutdown, what it sent may still be flushing to the host end.
      if (conn.guestShutdown === VSOCK_SHUTDOWN_BOTH && conn.stream && conn.fwdCnt < conn.rxCnt) {
        conn.state = "draining";
        this.armCloseTimer(conn);
      } else {
        this.dropConn(conn, "RST sent");
      }
      return true;
    }
    if (conn.needRequest) {
      if (!this.put(q, this.header(conn.hostPort, conn.guestPort, VSOCK_OP_REQUEST, 0, 0, conn.fwdCnt))) return false;
      conn.needRequest = false;
      conn.fwdCntSent = conn.fwdCnt;
      return true;
    }
    if (conn.needResponse) {
      if (!this.put(q, this.header(conn.hostPort, conn.guestPort, VSOCK_OP_RESPONSE, 0, 0, conn.fwdCnt))) return false;
      conn.needResponse = false;
      conn.fwdCntSent = conn.fwdCnt;
      return true;
    }
    if (conn.inputBytes > 0 && conn.peerCredit > 0 && !(conn.guestShutdown & VSOCK_SHUTDOWN_RCV)) {
      const chain = q.pop();
      if (!chain) return false;
      const room = chain.writableLength - VSOCK_HDR_SIZE;
      if (room <= 0) {
        q.push(chain, 0); // a buffer too small for a header: given back unused
        return true;
      }
      const n = Math.min(room, conn.peerCredit, conn.inputBytes, VSOCK_MAX_PAYLOAD);
      const data = conn.takeInput(n);
      const hdr = encodeHeader(this.header(conn.hostPort, conn.guestPort, VSOCK_OP_RW, n, 0, conn.fwdCnt));
      const pkt = new Uint8Array(VSOCK_HDR_SIZE + n);
      pkt.set(hdr);
      pkt.set(data, VSOCK_HDR_SIZE);
      if (!this.write(q, chain, pkt)) {
        // The guest's buffer failed: those bytes are lost with it, so the stream cannot go on.
        this.resetConn(conn);
        return true;
      }
      conn.txCnt += n;
      conn.fwdCntSent = conn.fwdCnt;
      conn.needCreditUpdate = false;
      this.stats.bytesToGuest += n;
      return true;
    }
    const shut = conn.shutdownToSend & ~conn.shutdownSent;
    if (shut && (conn.inputBytes === 0 || conn.guestShutdown & VSOCK_SHUTDOWN_RCV)) {
      if (!this.put(q, this.header(conn.hostPort, conn.guestPort, VSOCK_OP_SHUTDOWN, 0, conn.shutdownToSend, conn.fwdCnt))) return false;
      conn.shutdownSent |= shut;
      conn.fwdCntSent = conn.fwdCnt;
      if (conn.shutdownSent === VSOCK_SHUTDOWN_BOTH) this.armCloseTimer(conn);
      return true;
    }
    if (conn.needCreditUpdate) {
      if (!this.put(q, this.header(conn.hostPort, conn.guestPort, VSOCK_OP_CREDIT_UPDATE, 0, 0, conn.fwdCnt))) return false;
      conn.needCreditUpdate = false;
      conn.fwdCntSent = conn.fwdCnt;
      return true;
    }
    return false;
  }

  /** A header-only packet into the next rx buffer; false when there is none. */
  private put(q: VirtQueue, h: VsockHeader): boolean {
    for (;;) {
      const chain = q.pop();
      if (!chain) return false;
      if (chain.writableLength < VSOCK_HDR_SIZE) {
        q.push(chain, 0);
        continue;
      }
      if (this.write(q, chain, encodeHeader(h))) return true;
    }
  }

  private write(q: VirtQueue, chain: DescriptorChain, pkt: Uint8Array): boolean {
    try {
      chain.write(0, pkt);
    } catch (e) {
      if (!(e instanceof ChainError)) throw e;
      q.push(chain, 0);
      return false;
    }
    q.push(chain, pkt.length);
    return true;
  }

  /** Host-initiated REQUESTs wait while the guest has a transport reset to handle (resetUnhandled). */
  private holdRequests(): boolean {
    if (this.resetUnhandled) {
      try {
        if (this.queues?.[EVENT_QUEUE]?.availIndex() !== this.resetAvail) this.resetUnhandled = false;
      } catch {
        this.resetUnhandled = false; // a ring outside RAM: nothing to wait for
      }
    }
    return this.transportResetOwed || this.resetUnhandled;
  }

  private deliverEvent(): void {
    if (!this.transportResetOwed) return;
    const q = this.queues?.[EVENT_QUEUE];
    if (!q) return;
    try {
      for (;;) {
        const chain = q.pop();
        if (!chain) return;
        const ev = new Uint8Array(VSOCK_EVENT_SIZE);
        new DataView(ev.buffer).setUint32(0, VSOCK_EVENT_TRANSPORT_RESET, true);
        if (chain.writableLength >= VSOCK_EVENT_SIZE && this.write(q, chain, ev)) {
          this.transportResetOwed = false;
          this.resetUnhandled = true;
          this.resetAvail = q.availIndex();
          // A driver that never gives the buffer back must not hold host connections for ever.
          setTimeout(() => {
            if (!this.resetUnhandled) return;
            this.resetUnhandled = false;
            this.ctx?.requestPoll();
          }, RESET_HANDLED_TIMEOUT_MS).unref?.();
          return;
        }
        if (chain.writableLength < VSOCK_EVENT_SIZE) q.push(chain, 0);
      }
    } finally {
      q.notifyDriver();
    }
  }

  statsLines(): string[] {
    const s = this.stats;
    return [
      `${this.name}: cid ${this.guestCid}, ${this.conns.size} connections (${s.connectionsOpened} opened), ` +
        `to host ${formatBytes(s.bytesToHost)}, to guest ${formatBytes(s.bytesToGuest)}, ${s.rstsSent} RSTs, ${s.badPackets} bad packets`,
    ];
  }
}
