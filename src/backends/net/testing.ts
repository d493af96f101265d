// Helpers for the network backend tests (their time limits only bound a
// failure, generously, for a loaded CI machine): a sink that collects what a backend
// receives and lets a test await the next frame, a condition poller,
// recognisable test frames and free UDP ports.

import { createSocket } from "node:dgram";
import type { AddressInfo } from "node:net";
import type { NetBackend } from "./net-backend.js";

export class FrameSink {
  readonly frames: Uint8Array[] = [];
  private waiters: (() => void)[] = [];

  constructor(backend: NetBackend) {
    backend.onFrame = (frame) => {
      this.frames.push(frame);
      for (const w of this.waiters.splice(0)) w();
    };
  }

  /** Resolves with the first received frame (consumed) matching `match`, or rejects after timeoutMs. */
  async next(match: (f: Uint8Array) => boolean = () => true, timeoutMs = 10_000): Promise<Uint8Array> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.frames.findIndex(match);
      if (i >= 0) return this.frames.splice(i, 1)[0];
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no matching frame within ${timeoutMs} ms (${this.frames.length} others received)`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => (clearTimeout(t), resolve()));
      });
    }
  }
}

/** Polls `cond` every 10 ms until it holds; rejects after timeoutMs. */
export async function waitFor(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A `length`-byte frame (at least 18) from 52:54:00:00:00:<from> to broadcast, its payload tagged with `tag`. */
export function testFrame(from: number, tag: number, length = 64): Uint8Array {
  const f = new Uint8Array(length);
  f.fill(0xff, 0, 6);
  f.set([0x52, 0x54, 0x00, 0x00, 0x00, from], 6);
  f.set([0x88, 0xb5], 12); // local experimental EtherType
  new DataView(f.buffer).setUint32(14, tag);
  for (let i = 18; i < length; i++) f[i] = (i * 7 + tag) & 0xff;
  return f;
}

export function frameTag(f: Uint8Array): number {
  return new DataView(f.buffer, f.byteOffset, f.byteLength).getUint32(14);
}

export const sameBytes = (a: Uint8Array, b: Uint8Array): boolean =>
  a.length === b.length && a.every((x, i) => x === b[i]);

/** `n` UDP ports on 127.0.0.1 that were free a moment ago (bound, read, released). */
export async function freeUdpPorts(n: number): Promise<number[]> {
  const sockets = Array.from({ length: n }, () => createSocket("udp4"));
  await Promise.all(sockets.map((s) => new Promise((r) => s.bind(0, "127.0.0.1", () => r(undefined)))));
  const ports = sockets.map((s) => (s.address() as AddressInfo).port);
  await Promise.all(sockets.map((s) => new Promise((r) => s.close(() => r(undefined)))));
  return ports;
}
