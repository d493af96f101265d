// virtio-net, the network card (virtio 1.2, 5.1 "Network Device"): one
// receive queue (host -> guest) and one transmit queue (guest -> host), no
// control queue, no multiqueue. Frames go to and come from a NetBackend (tap,
// Unix or UDP socket: src/backends/net/).
//
// Every frame on either queue is preceded by a 12-byte struct virtio_net_hdr
// (5.1.6): with VERSION_1 it always includes num_buffers, merged buffers or not.
//
//   offset 0 flags u8   1 gso_type u8   2 hdr_len u16   4 gso_size u16
//          6 csum_start u16   8 csum_offset u16   10 num_buffers u16
//
// Offloads (5.1.3 feature bits, 5.1.6.2 transmission, 5.1.6.4 reception; the
// checksum and segmentation code is net-offload.ts). All are offered unless
// the options say `offloads: false`; each is used only if the driver accepts it.
// - VIRTIO_NET_F_CSUM (0): the driver may leave a transport checksum partial
//   (flags NEEDS_CSUM, the pseudo-header sum in the field); the device
//   finishes it (the sum from csum_start to the end of the frame, stored at
//   csum_start + csum_offset) before the backend sees the frame. A range
//   beyond the frame is a transmit error.
// - VIRTIO_NET_F_HOST_TSO4 (11), HOST_TSO6 (12): the driver may hand one TCP
//   super-frame of up to 64 KiB (gso_type TCPV4/TCPV6, gso_size = MSS) in one
//   descriptor chain instead of ~45 frames; the device cuts it into
//   MSS-sized segments with their own IP lengths, IPv4 ids and header
//   checksums, TCP sequence numbers, flags and checksums, and gives the
//   backend each one. hdr_len is not relied on (5.1.6.2.2), only checked to
//   lie in the frame. HOST_ECN (13) and UFO/USO are not offered: a UDP
//   gso_type, or a TCP one not negotiated, is a transmit error.
//   A backend that takes super-frames or partial checksums itself
//   (NetBackend.txOffloads: a switch port to another VM) gets them whole,
//   send(frame, meta), after the same checks, so a 64 KiB send can stay one
//   descriptor chain from one guest to the other.
// - VIRTIO_NET_F_GUEST_CSUM (1): frames from the backend may reach the guest
//   with a partial checksum (NEEDS_CSUM) or DATA_VALID (checksum known good)
//   when the backend's FrameMeta says so; any other TCP or UDP frame gets
//   DATA_VALID when the device verified its checksum (receive checksum
//   offload, as a NIC's), so the guest's kernel does not sum it again.
//   Without GUEST_CSUM the device finishes a partial checksum itself and
//   the flags stay zero (5.1.6.4.1).
// - VIRTIO_NET_F_GUEST_TSO4 (7), GUEST_TSO6 (8) (each needs GUEST_CSUM,
//   5.1.3.1): a backend's super-frame reaches the guest whole, with
//   NEEDS_CSUM, gso_type, gso_size and hdr_len (5.1.6.4.1). Without them, or
//   with CWR set (GUEST_ECN is not offered), the device segments it first.
//   The backend learns what the driver accepted (setGuestOffloads), so it
//   need not build super-frames for a guest that cannot take them.
// Without MRG_RXBUF a driver that accepts GUEST_TSO is to post buffers of
// at least 65562 bytes (5.1.6.3.1 in 1.2; later drafts say 65601, the
// largest IPv6 packet and the header), but only as a SHOULD: the device does
// not count on it, and cuts a super-frame that fits no buffer it is given
// (with MRG_RXBUF: not even all the ring's buffers) into segments rather
// than drop it.
//
// Receive: frames from the backend wait in a bounded backlog (a NIC's receive
// FIFO: beyond it frames are dropped and counted) until the machine calls
// poll() or the driver adds buffers (notify of queue 0). With
// VIRTIO_NET_F_MRG_RXBUF a frame is spread over as many buffers as it needs and
// num_buffers says how many (5.1.6.4); the buffers are taken from the ring only
// once enough of them are there, so a frame is never split across a wait.
// Without it a frame goes into one buffer or is dropped.
//
// Configuration space (5.1.4): mac[6] at 0, status u16 at 6, max_virtqueue_pairs u16 at 8.

import type { VirtioDevice, VirtioContext } from "./virtio.js";
import { VIRTIO_ID_NET } from "./virtio.js";
import { ChainError, checkNoneInFlight, readHeldChains, type DescriptorChain, type VirtQueue } from "./queue.js";
import { SnapshotError, type Plain, type StateReader } from "../../snapshot/state.js";
import { GuestMemoryError } from "../../memory/guest-memory.js";
import { MAX_GSO_FRAME_BYTES, type FrameMeta, type GuestOffloads, type NetBackend } from "../../backends/net/net-backend.js";
import { formatBytes } from "./format-bytes.js";
import {
  MIN_FRAME_BYTES, VIRTIO_NET_HDR_SIZE, parseNetHdr, prepareRx, prepareTx, prepareTxWhole, segmentsForGuest,
  type HostOffloads, type RxFrame,
} from "./net-offload.js";

/** Feature bits (5.1.3). */
export const VIRTIO_NET_F_CSUM = 1n << 0n;
export const VIRTIO_NET_F_GUEST_CSUM = 1n << 1n;
export const VIRTIO_NET_F_MAC = 1n << 5n;
export const VIRTIO_NET_F_GUEST_TSO4 = 1n << 7n;
export const VIRTIO_NET_F_GUEST_TSO6 = 1n << 8n;
export const VIRTIO_NET_F_HOST_TSO4 = 1n << 11n;
export const VIRTIO_NET_F_HOST_TSO6 = 1n << 12n;
export const VIRTIO_NET_F_MRG_RXBUF = 1n << 15n;
export const VIRTIO_NET_F_STATUS = 1n << 16n;

/** Config status bits (5.1.4). */
export const VIRTIO_NET_S_LINK_UP = 1;

/** The offloads offered unless `offloads: false` (see the top of this file). */
export const VIRTIO_NET_OFFLOAD_FEATURES = VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM |
  VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6 | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6;

/** struct virtio_net_hdr with num_buffers (5.1.6). */
export { VIRTIO_NET_HDR_SIZE };
const NUM_BUFFERS_OFFSET = 10;

const NO_OFFLOADS: GuestOffloads & HostOffloads = { csum: false, tso4: false, tso6: false };

const RX_QUEUE = 0;
const TX_QUEUE = 1;
const QUEUE_SIZE = 256;

/** Receive backlog bound, in frames and bytes: beyond it frames are dropped. */
export const RX_BACKLOG_FRAMES = 256;
export const RX_BACKLOG_BYTES = 1 << 20;

export interface VirtioNetOptions {
  /** "net0", "net1", ... */
  name: string;
  /** The guest's MAC address, 6 bytes. */
  mac: Uint8Array;
  /** Offer checksum and segmentation offload (default true); false offers none of them. */
  offloads?: boolean;
}

/** Device-side counters (the backend keeps its own). */
export class NetDeviceStats {
  /** Frames and bytes (without header) delivered into guest receive buffers. */
  rxFrames = 0;
  rxBytes = 0;
  /** Frames and bytes (without header) the guest transmitted and the backend was given. */
  txFrames = 0;
  txBytes = 0;
  /** Host -> guest frames dropped: device not running, traffic held, backlog full, no buffer large enough. */
  rxDropped = 0;
  /** Malformed receive buffers (device-readable, too small for the header) given back empty. */
  rxErrors = 0;
  /** Transmit requests refused: runt or giant frames, unreadable chains, bad offload headers. */
  txErrors = 0;
  /** Guest super-frames (TSO) the device cut into segments; each segment counts in txFrames. */
  txSegmented = 0;
  /** RARP frames sent for the guest after a restore or a migration (announce()). */
  announcements = 0;
  /** Guest frames dropped while the card held its traffic (holdTraffic: a clone waiting for its new MAC). */
  txHeld = 0;
  /** Guest super-frames handed whole to a backend that takes them (txOffloads; each one txFrame). */
  txSuperFrames = 0;
  /** Backend super-frames delivered whole to a guest that accepted GUEST_TSO (each one rxFrame). */
  rxSuperFrames = 0;
  /** Backend super-frames cut into segments for the guest (each segment one rxFrame). */
  rxSegmented = 0;
}

export class VirtioNet implements VirtioDevice {
  readonly deviceId = VIRTIO_ID_NET;
  readonly name: string;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE];
  readonly features: bigint;
  readonly stats = new NetDeviceStats();

  private readonly mac: Uint8Array;
  private linkUp = true;
  /** holdTraffic(true) to holdTraffic(false): nothing goes out or comes in. */
  private trafficHeld = false;
  private ctx: VirtioContext | undefined;
  /** The transport's live queue array (a queue made ready late shows up in it, a stopped one goes). */
  private queues: readonly (VirtQueue | undefined)[] | undefined;
  private mergeable = false;
  /** The offloads the driver accepted, each way. */
  private hostOffloads: HostOffloads = NO_OFFLOADS;
  private guestOffloads: GuestOffloads = NO_OFFLOADS;
  /** Frames from the host waiting for receive buffers, oldest first, with their headers. */
  private backlog: RxFrame[] = [];
  private backlogHead = 0;
  private backlogBytes = 0;
  /** Receive buffers taken from the ring but not filled yet (waiting for enough of them). */
  private held: DescriptorChain[] = [];
  /** The queue the held buffers came from. */
  private heldFrom: VirtQueue | undefined;
  private rxPaused = false;
  private closed = false;
  /** pauseIo() to resumeIo(): the rings are left alone (frames from the backend wait in the backlog). */
  private ioPaused = false;

  constructor(
    private readonly backend: NetBackend,
    opts: VirtioNetOptions,
  ) {
    if (opts.mac.length !== 6) throw new Error(`${opts.name}: a MAC address has 6 bytes, not ${opts.mac.length}`);
    this.name = opts.name;
    this.mac = Uint8Array.from(opts.mac);
    this.features = VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MRG_RXBUF |
      (opts.offloads === false ? 0n : VIRTIO_NET_OFFLOAD_FEATURES);
    backend.onFrame = (frame, meta) => this.receive(frame, meta);
  }

  get description(): string {
    return this.backend.description;
  }

  /** Frames waiting in the receive backlog. */
  get rxBacklog(): number {
    return this.backlog.length - this.backlogHead;
  }

  // --- configuration space ---

  private configBytes(): Uint8Array {
    const b = new Uint8Array(10);
    b.set(this.mac, 0);
    const dv = new DataView(b.buffer);
    dv.setUint16(6, this.linkUp ? VIRTIO_NET_S_LINK_UP : 0, true);
    dv.setUint16(8, 1, true); // max_virtqueue_pairs (meaningful with MQ only; 1 is the truth)
    return b;
  }

  readConfig(offset: number, size: number): number {
    const b = this.configBytes();
    let v = 0;
    for (let i = 0; i < size; i++) v |= (offset + i < b.length ? b[offset + i] : 0) << (8 * i);
    return v >>> 0;
  }

  /** The configuration space is read-only with VERSION_1 (the MAC too: 5.1.4.2). */
  writeConfig(): void {}

  /**
   * While held, the card is a cable pulled out without the guest being told:
   * frames the guest sends are dropped (counted in txHeld), frames from the
   * backend are not delivered, and announce() sends nothing. A clone's cards
   * have new addresses, which its guest's driver does not know of (it read
   * `mac` at probe: the spec has no way for a device to change it, 5.1.4.2),
   * so they are held from its restore until its guest uses them
   * (api/clone-macs.ts): its original's address never comes out of its port.
   */
  holdTraffic(held: boolean): void {
    this.trafficHeld = held;
  }

  /** Carrier on or off, as a cable would (the driver hears of it through a config-change interrupt). */
  setLink(up: boolean): void {
    if (up === this.linkUp) return;
    this.linkUp = up;
    this.ctx?.configChanged();
  }

  /**
   * Tell the network this card is here now (after a restore or a migration
   * moved it): a RARP broadcast from its MAC, as QEMU's announce-self sends
   * for a guest without VIRTIO_NET_F_GUEST_ANNOUNCE, so switches learn the
   * port it sits behind at once. `times` frames, 50 ms apart (QEMU's default
   * is 5 rounds, 50 ms then growing); none while the driver is not up.
   */
  announce(times = 3): void {
    if (!this.ctx || this.closed || this.trafficHeld) return;
    const frame = new Uint8Array(60); // the 42 bytes padded to the Ethernet minimum
    frame.fill(0xff, 0, 6); // to everyone
    frame.set(this.mac, 6);
    const dv = new DataView(frame.buffer);
    dv.setUint16(12, 0x8035); // RARP (RFC 903)
    dv.setUint16(14, 1); // hardware type Ethernet
    dv.setUint16(16, 0x0800); // protocol IPv4
    frame[18] = 6;
    frame[19] = 4;
    dv.setUint16(20, 3); // reverse request
    frame.set(this.mac, 22); // sender hardware address
    frame.set(this.mac, 32); // target hardware address (the IP fields stay 0)
    const send = (left: number) => {
      if (!this.ctx || this.closed || this.trafficHeld || left === 0) return;
      this.backend.send(frame.slice());
      this.stats.announcements++;
      if (left > 1) setTimeout(() => send(left - 1), 50).unref();
    };
    send(times);
  }

  // --- lifecycle ---

  activate(ctx: VirtioContext, queues: readonly (VirtQueue | undefined)[], features: bigint): void {
    this.ctx = ctx;
    this.queues = queues;
    this.mergeable = (features & VIRTIO_NET_F_MRG_RXBUF) !== 0n;
    const has = (bit: bigint) => (features & bit) !== 0n;
    this.hostOffloads = { csum: has(VIRTIO_NET_F_CSUM), tso4: has(VIRTIO_NET_F_HOST_TSO4), tso6: has(VIRTIO_NET_F_HOST_TSO6) };
    // GUEST_TSO4/6 require GUEST_CSUM (5.1.3.1): a driver that broke the rule gets no super-frames.
    const csum = has(VIRTIO_NET_F_GUEST_CSUM);
    this.guestOffloads = { csum, tso4: csum && has(VIRTIO_NET_F_GUEST_TSO4), tso6: csum && has(VIRTIO_NET_F_GUEST_TSO6) };
    this.backend.setGuestOffloads?.({ ...this.guestOffloads });
  }

  reset(): void {
    const wasActive = this.ctx !== undefined;
    this.ctx = undefined;
    this.queues = undefined;
    this.mergeable = false;
    this.hostOffloads = this.guestOffloads = NO_OFFLOADS;
    if (wasActive && !this.closed) this.backend.setGuestOffloads?.({ ...NO_OFFLOADS });
    this.dropBacklog();
    this.held = [];
    this.heldFrom = undefined;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.reset();
    this.backend.onFrame = undefined;
    this.backend.close();
  }

  // --- snapshots ---

  /** Nothing is in hand between notifies: pausing only stops delivery, and frames from the backend wait. */
  async pauseIo(): Promise<void> {
    this.ioPaused = true;
  }

  resumeIo(): void {
    this.ioPaused = false;
    if (this.rxBacklog > 0) this.ctx?.requestPoll();
  }

  /**
   * The receive buffers held (taken from the ring, waiting for enough of them
   * for a frame) as their heads, and the link state the guest was told.
   * Not saved:
   * - the receive backlog: frames from the host not yet in guest buffers are
   *   dropped at a snapshot, packet loss the guest's TCP recovers from (as
   *   QEMU, which keeps no such queue across migration either);
   * - mergeable buffers and the offloads: they follow from the negotiated
   *   features, which the transport restores and hands to activate() again
   *   (which tells the reopened backend the guest's offloads);
   * - the counters (a restored VM counts from zero); the backend, reopened by the caller.
   */
  saveState(): Plain {
    const q = this.queues?.[RX_QUEUE];
    return { linkUp: this.linkUp, rxHeld: q && this.heldFrom === q ? this.held.map((c) => c.head) : [] };
  }

  restoreState(r: StateReader): void {
    const linkUp = r.bool("linkUp");
    const rx = this.queues?.[RX_QUEUE];
    let held: DescriptorChain[] = [];
    if (rx) {
      held = readHeldChains(r, "rxHeld", rx);
      held.forEach((c, i) => {
        // Only such chains are ever held (takeRxChain).
        if (c.readableLength !== 0 || c.writableLength < VIRTIO_NET_HDR_SIZE) {
          throw new SnapshotError(`${r.path}.rxHeld[${i}]: head ${c.head} is not a receive buffer (${c.readableLength} readable, ${c.writableLength} writable bytes)`);
        }
      });
    } else {
      r.ints("rxHeld", QUEUE_SIZE, 0, QUEUE_SIZE - 1); // not running: nothing to hold, but the field must make sense
    }
    checkNoneInFlight(r, this.queues?.[TX_QUEUE]);
    // The guest was told this link state already: no config interrupt.
    this.linkUp = linkUp;
    this.held = held;
    this.heldFrom = rx;
  }

  notify(index: number): void {
    if (this.ioPaused) return;
    if (index === TX_QUEUE) this.transmit();
    else if (index === RX_QUEUE) this.deliver();
  }

  poll(): void {
    this.deliver();
  }

  // --- transmit: guest -> host ---

  private transmit(): void {
    const q = this.queues?.[TX_QUEUE];
    if (!q) return;
    for (let chain = q.pop(); chain; chain = q.pop()) {
      const len = chain.readableLength - VIRTIO_NET_HDR_SIZE;
      if (len < MIN_FRAME_BYTES || len > MAX_GSO_FRAME_BYTES) {
        this.stats.txErrors++;
      } else {
        let bytes: Uint8Array | undefined;
        try {
          bytes = chain.read(0, VIRTIO_NET_HDR_SIZE + len);
        } catch (e) {
          if (!(e instanceof ChainError || e instanceof GuestMemoryError)) throw e;
          this.stats.txErrors++;
        }
        if (bytes) this.sendFrame(bytes);
      }
      q.push(chain, 0);
    }
    q.notifyDriver();
  }

  /** One transmit request (header and frame, read from the chain): its frame or segments to the backend. */
  private sendFrame(bytes: Uint8Array): void {
    if (this.trafficHeld) {
      this.stats.txHeld++;
      return;
    }
    const frame = bytes.subarray(VIRTIO_NET_HDR_SIZE);
    const h = parseNetHdr(bytes);
    const takes = this.backend.txOffloads;
    if (takes) {
      // A backend that takes super-frames or partial checksums gets them whole.
      const meta = prepareTxWhole(h, frame, this.hostOffloads, takes);
      if (typeof meta === "string") {
        this.stats.txErrors++;
        return;
      }
      if (meta) {
        if (meta.gsoType) this.stats.txSuperFrames++;
        this.stats.txFrames++;
        this.stats.txBytes += frame.length;
        this.backend.send(frame, meta);
        return;
      }
    }
    const out = prepareTx(h, frame, this.hostOffloads);
    if (typeof out === "string") {
      this.stats.txErrors++;
      return;
    }
    if (out.length > 1 || out[0] !== frame) this.stats.txSegmented++;
    for (const f of out) {
      this.stats.txFrames++;
      this.stats.txBytes += f.length;
      this.backend.send(f);
    }
  }

  // --- receive: host -> guest ---

  /**
   * From the backend (the event loop): turn the frame into what the guest
   * accepts (net-offload.ts prepareRx), queue it and have the machine poll.
   */
  private receive(frame: Uint8Array, meta?: FrameMeta): void {
    if (!this.ctx || this.closed || this.trafficHeld) {
      this.stats.rxDropped++; // the driver is not running (nobody listens), or the card holds its traffic
      return;
    }
    if (frame.length < MIN_FRAME_BYTES || frame.length > MAX_GSO_FRAME_BYTES) {
      this.stats.rxDropped++;
      return;
    }
    const entries = prepareRx(frame, meta, this.guestOffloads);
    if (typeof entries === "string") {
      this.stats.rxDropped++;
      return;
    }
    if (meta?.gsoType && entries[0].gsoType === undefined) this.stats.rxSegmented++;
    for (const e of entries) {
      if (this.rxBacklog >= RX_BACKLOG_FRAMES || this.backlogBytes + e.frame.length > RX_BACKLOG_BYTES) {
        this.stats.rxDropped++;
        continue;
      }
      this.backlog.push(e);
      this.backlogBytes += e.frame.length;
    }
    this.updateFlowControl();
    this.ctx.requestPoll();
  }

  /** Move backlog frames into receive buffers while there are buffers for them. */
  private deliver(): void {
    const q = this.queues?.[RX_QUEUE];
    if (!q || this.ioPaused) return;
    if (this.heldFrom !== q) {
      // Buffers held from a queue the driver stopped since (QueueReady = 0,
      // perhaps then set up again: another queue) are not ours to fill or to
      // give back any more (4.2.2.2); their heads mean nothing in this one.
      this.held = [];
      this.heldFrom = q;
    }
    try {
      while (this.rxBacklog > 0) {
        const entry = this.backlog[this.backlogHead];
        const done = this.mergeable ? this.deliverMerged(q, entry) : this.deliverSingle(q, entry);
        if (done === "wait") break; // wait for more buffers
        if (done === "done") this.shiftBacklog();
        // "again": the entry was replaced by its segments; go on with the first
      }
    } finally {
      // pop() gives bad chains back by itself: interrupt for those too.
      q.notifyDriver();
      this.updateFlowControl();
    }
  }

  /**
   * Without MRG_RXBUF: header and frame in one buffer. Returns "wait" when
   * there is no buffer (the frame waits), "done" when the frame is done with
   * (delivered, or dropped because the buffer is too small), "again" when a
   * super-frame too big for the buffer was replaced by its segments.
   */
  private deliverSingle(q: VirtQueue, entry: RxFrame): "done" | "wait" | "again" {
    const { frame } = entry;
    const chain = this.nextRxChain(q);
    if (!chain) return "wait";
    if (chain.writableLength < VIRTIO_NET_HDR_SIZE + frame.length) {
      // Too small for this frame; it may fit the next one.
      this.held.unshift(chain);
      return this.splitOrDrop(entry);
    }
    const hdr = entry.hdr ?? new Uint8Array(VIRTIO_NET_HDR_SIZE);
    hdr[NUM_BUFFERS_OFFSET] = 1; // 5.1.6.4: 1 when MRG_RXBUF is not negotiated
    hdr[NUM_BUFFERS_OFFSET + 1] = 0;
    if (!this.fill(q, chain, [hdr, frame])) return "done";
    this.stats.rxFrames++;
    this.stats.rxBytes += frame.length;
    if (entry.gsoType !== undefined) this.stats.rxSuperFrames++;
    return "done";
  }

  /**
   * A frame that fits no buffer the driver gives: a super-frame is replaced
   * by its segments at the head of the backlog ("again"; 5.1.6.3.1 asks a
   * driver that accepts GUEST_TSO without MRG_RXBUF for 64 KiB buffers, but
   * only as a SHOULD), anything else is dropped ("done").
   */
  private splitOrDrop(entry: RxFrame): "done" | "again" {
    if (entry.gsoType !== undefined) {
      const segs = segmentsForGuest(entry.frame, entry.gsoType, entry.gsoSize ?? 0, this.guestOffloads);
      if (typeof segs !== "string") {
        this.stats.rxSegmented++;
        this.backlog.splice(this.backlogHead, 1, ...segs);
        this.backlogBytes += segs.reduce((n, s) => n + s.frame.length, 0) - entry.frame.length;
        return "again";
      }
    }
    this.stats.rxDropped++;
    return "done";
  }

  /** With MRG_RXBUF: take buffers until the header and frame fit, then fill them in order. */
  private deliverMerged(q: VirtQueue, entry: RxFrame): "done" | "wait" | "again" {
    const { frame } = entry;
    const need = VIRTIO_NET_HDR_SIZE + frame.length;
    let have = 0;
    let n = 0;
    while (have < need) {
      if (n === this.held.length) {
        const chain = this.takeRxChain(q);
        if (!chain) {
          // All the ring's descriptors are ours and still too few: the frame
          // can never fit. Drop it (or cut it, a super-frame) and keep the
          // buffers for the next ones.
          if (this.held.length >= q.size) return this.splitOrDrop(entry);
          return "wait";
        }
        this.held.push(chain);
      }
      have += this.held[n].writableLength;
      n++;
    }
    if (n > 0xffff) return this.splitOrDrop(entry);
    const chains = this.held.splice(0, n);
    const hdr = entry.hdr ?? new Uint8Array(VIRTIO_NET_HDR_SIZE);
    hdr[NUM_BUFFERS_OFFSET] = n & 0xff;
    hdr[NUM_BUFFERS_OFFSET + 1] = n >> 8;
    // Fill every buffer first, then give them back together (consecutive in the used ring).
    const lens: number[] = [];
    let at = 0;
    try {
      for (const [i, chain] of chains.entries()) {
        const room = chain.writableLength;
        let off = 0;
        if (i === 0) {
          chain.write(0, hdr);
          off = VIRTIO_NET_HDR_SIZE;
        }
        const take = Math.min(room - off, frame.length - at);
        if (take > 0) chain.write(off, frame.subarray(at, at + take));
        at += take;
        lens.push(off + take);
      }
    } catch (e) {
      if (!(e instanceof ChainError || e instanceof GuestMemoryError)) throw e;
      this.stats.rxErrors++;
      for (const chain of chains) q.push(chain, 0);
      return "done";
    }
    chains.forEach((chain, i) => q.push(chain, lens[i]));
    this.stats.rxFrames++;
    this.stats.rxBytes += frame.length;
    if (entry.gsoType !== undefined) this.stats.rxSuperFrames++;
    return "done";
  }

  /** The oldest held buffer, or a new one from the ring. */
  private nextRxChain(q: VirtQueue): DescriptorChain | undefined {
    return this.held.shift() ?? this.takeRxChain(q);
  }

  /**
   * A usable receive buffer from the ring: one that is device-writable only
   * and holds at least the header. Others are given back empty and counted
   * (a frame is never written into device-readable memory).
   */
  private takeRxChain(q: VirtQueue): DescriptorChain | undefined {
    for (let chain = q.pop(); chain; chain = q.pop()) {
      if (chain.readableLength === 0 && chain.writableLength >= VIRTIO_NET_HDR_SIZE) return chain;
      this.stats.rxErrors++;
      q.push(chain, 0);
    }
    return undefined;
  }

  /** Write `parts` one after the other into `chain` and give it back; false if the chain failed. */
  private fill(q: VirtQueue, chain: DescriptorChain, parts: Uint8Array[]): boolean {
    let off = 0;
    try {
      for (const p of parts) {
        chain.write(off, p);
        off += p.length;
      }
    } catch (e) {
      if (!(e instanceof ChainError || e instanceof GuestMemoryError)) throw e;
      this.stats.rxErrors++;
      q.push(chain, 0);
      return false;
    }
    q.push(chain, off);
    return true;
  }

  private shiftBacklog(): void {
    const entry = this.backlog[this.backlogHead];
    this.backlog[this.backlogHead] = undefined as unknown as RxFrame;
    this.backlogHead++;
    this.backlogBytes -= entry.frame.length;
    if (this.backlogHead === this.backlog.length) {
      this.backlog = [];
      this.backlogHead = 0;
    } else if (this.backlogHead >= 64 && this.backlogHead * 2 >= this.backlog.length) {
      this.backlog = this.backlog.slice(this.backlogHead);
      this.backlogHead = 0;
    }
  }

  private dropBacklog(): void {
    this.stats.rxDropped += this.rxBacklog;
    this.backlog = [];
    this.backlogHead = 0;
    this.backlogBytes = 0;
    this.updateFlowControl();
  }

  /**
   * Ask the backend to hold frames back while the backlog is half full (a
   * stream backend then leaves them on the host side, so they are not lost)
   * and to go on once it is down to a quarter.
   */
  private updateFlowControl(): void {
    const frames = this.rxBacklog;
    const bytes = this.backlogBytes;
    if (!this.rxPaused && (frames >= RX_BACKLOG_FRAMES / 2 || bytes >= RX_BACKLOG_BYTES / 2)) {
      this.rxPaused = true;
      this.backend.setRxPaused(true);
    } else if (this.rxPaused && frames <= RX_BACKLOG_FRAMES / 4 && bytes <= RX_BACKLOG_BYTES / 4) {
      this.rxPaused = false;
      if (!this.closed) this.backend.setRxPaused(false);
    }
  }

  // --- statistics ---

  statsLines(): string[] {
    const s = this.stats;
    const b = this.backend.stats;
    const dropped = s.rxDropped + b.txDropped + b.rxDropped;
    const errors = s.rxErrors + s.txErrors;
    // The offload counters only once there is something to count (a guest without offloads sees the old line).
    const offload = s.txSegmented + s.txSuperFrames + s.rxSuperFrames + s.rxSegmented === 0 ? "" :
      `; super-frames: tx ${s.txSegmented} segmented, ${s.txSuperFrames} whole, rx ${s.rxSuperFrames} whole, ${s.rxSegmented} segmented`;
    return [
      `${this.name} (${this.backend.description}): rx ${s.rxFrames} frames ${formatBytes(s.rxBytes)}, ` +
        `tx ${s.txFrames} frames ${formatBytes(s.txBytes)}, ${dropped} dropped, ${errors} errors${offload}`,
    ];
  }
}
