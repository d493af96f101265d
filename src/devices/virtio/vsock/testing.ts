// Test doubles for virtio-vsock: an in-memory host side (FakeVsockBackend)
// and a guest driver model on the TestDriver's rings (VsockGuest) that sends
// packets on tx and keeps rx and event buffers posted.

import { TestDriver, testGuestMemory, type Buffer } from "../test-driver.js";
import { VIRTIO_F_VERSION_1 } from "../virtio.js";
import type { HostStream, HostStreamSink } from "./connection.js";
import { VirtioVsock, type VsockBackend, type VsockHost } from "./device.js";
import { encodeHeader, parseHeader, VSOCK_HDR_SIZE, VSOCK_TYPE_STREAM, type VsockHeader } from "./packet.js";

export const RX = 0;
export const TX = 1;
export const EVENT = 2;

/** One host end in memory: what the guest wrote, and whether it is paused, ended, destroyed. */
export class FakeHostStream implements HostStream {
  written: Uint8Array[] = [];
  /** Flush callbacks not yet run (a host peer that does not read keeps them here). */
  unflushed: (() => void)[] = [];
  autoFlush = true;
  paused = false;
  ended = false;
  destroyed = false;
  sink: HostStreamSink | undefined;

  write(data: Uint8Array, flushed: () => void): void {
    this.written.push(Uint8Array.from(data));
    if (this.autoFlush) flushed();
    else this.unflushed.push(flushed);
  }
  end(): void {
    this.ended = true;
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
  }
  destroy(): void {
    this.destroyed = true;
  }
  flushAll(): void {
    for (const f of this.unflushed.splice(0)) f();
  }
  get bytes(): Uint8Array {
    return concat(this.written);
  }
  get unflushedCount(): number {
    return this.unflushed.length;
  }
}

export class FakeVsockBackend implements VsockBackend {
  host: VsockHost | undefined;
  /** Host ports something listens on; the streams opened to them. */
  listening = new Set<number>();
  opened: { port: number; stream: FakeHostStream }[] = [];
  closed = false;

  async connect(port: number, sink: HostStreamSink): Promise<HostStream | undefined> {
    if (!this.listening.has(port)) return undefined;
    const stream = new FakeHostStream();
    stream.sink = sink;
    this.opened.push({ port, stream });
    return stream;
  }
  start(host: VsockHost): void {
    this.host = host;
  }
  close(): void {
    this.closed = true;
  }
  /** A host program connects to guest port `port`. */
  connectToGuest(port: number): { stream: FakeHostStream; sink: HostStreamSink; result: Promise<number | undefined> } {
    const stream = new FakeHostStream();
    let resolve!: (p: number | undefined) => void;
    const result = new Promise<number | undefined>((r) => (resolve = r));
    const sink = this.host!.connectToGuest(port, stream, resolve);
    stream.sink = sink;
    return { stream, sink, result };
  }
}

export interface RxPacket {
  hdr: VsockHeader;
  payload: Uint8Array;
}

export const GUEST_CID = 3;

/** A guest vsock driver on a TestDriver: rx buffers of `rxBufSize` bytes kept posted. */
export class VsockGuest {
  readonly d: TestDriver;
  private posted = 0;
  events: number[] = [];

  constructor(
    readonly dev: VirtioVsock,
    readonly opts: { queueSize?: number; rxBufSize?: number; rxBuffers?: number; mem?: number } = {},
  ) {
    this.d = new TestDriver(dev, testGuestMemory(opts.mem ?? 16 << 20), { heapEnd: 0x8000_0000n + BigInt((opts.mem ?? 16 << 20) - (1 << 20)) });
    this.d.start(VIRTIO_F_VERSION_1, opts.queueSize ?? 64);
    this.postRx(opts.rxBuffers ?? 32);
    this.d.add(EVENT, [{ writeLen: 4 }]);
    this.d.kick(EVENT);
  }

  postRx(n: number): void {
    for (let i = 0; i < n; i++) {
      this.d.add(RX, [{ writeLen: this.opts.rxBufSize ?? 4096 + VSOCK_HDR_SIZE }]);
      this.posted++;
    }
    this.d.kick(RX);
  }

  /** One rx buffer of `len` bytes (the fuzz test's odd sizes), when the ring has room. */
  postRxBuffer(len: number | Buffer[]): void {
    if (this.posted >= (this.opts.queueSize ?? 64)) return;
    this.d.add(RX, typeof len === "number" ? [{ writeLen: len }] : len);
    this.posted++;
    this.d.kick(RX);
  }

  /** Send one packet on tx. */
  send(h: Partial<VsockHeader>, payload: Uint8Array = new Uint8Array(0)): void {
    const hdr = encodeHeader({
      srcCid: BigInt(GUEST_CID), dstCid: 2n, srcPort: 0, dstPort: 0, len: payload.length, type: VSOCK_TYPE_STREAM,
      op: 0, flags: 0, bufAlloc: 256 << 10, fwdCnt: 0, ...h,
    });
    this.d.add(TX, payload.length ? [{ data: hdr }, { data: payload }] : [{ data: hdr }]);
    this.d.kick(TX);
    this.d.used(TX);
  }

  /** Packets the device put in rx buffers since the last call; as many buffers are posted again. */
  receive(): RxPacket[] {
    this.dev.poll();
    const out: RxPacket[] = [];
    for (const u of this.d.used(RX)) {
      this.posted--;
      if (u.len < VSOCK_HDR_SIZE) continue;
      const raw = this.d.mem.read(this.d.bufferAddr(RX, u.id, 0), u.len);
      const hdr = parseHeader(raw);
      out.push({ hdr, payload: raw.slice(VSOCK_HDR_SIZE, VSOCK_HDR_SIZE + hdr.len) });
    }
    const want = this.opts.rxBuffers ?? 32;
    if (this.posted < want) this.postRx(want - this.posted);
    for (const u of this.d.used(EVENT)) {
      this.events.push(this.d.mem.readU32(this.d.bufferAddr(EVENT, u.id, 0)));
      this.d.add(EVENT, [{ writeLen: 4 }]);
      this.d.kick(EVENT);
    }
    return out;
  }
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function newVsock(backend = new FakeVsockBackend()): { dev: VirtioVsock; backend: FakeVsockBackend } {
  return { dev: new VirtioVsock({ guestCid: GUEST_CID, backend }), backend };
}
