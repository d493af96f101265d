// Ethernet frames over a byte stream: each frame is preceded by its length as
// a 4-byte big-endian number. This is the framing of QEMU's `-netdev stream`
// (and `-netdev socket`), which the Unix socket backend speaks to its peer,
// and the one tap-relay.c speaks on its stdin/stdout.
//
// FrameReader cuts frames out of the incoming chunks and checks each length
// when its header arrives, before buffering the body: a length of 0 or above
// MAX_FRAME_BYTES is a protocol error, so a hostile peer cannot make us
// allocate more than one frame. FramedConnection puts a reader on a readable
// stream and a bounded write queue on a writable one (the same socket, or a
// child's stdout and stdin).

import type { Readable, Writable } from "node:stream";
import { MAX_FRAME_BYTES, MAX_QUEUED_BYTES } from "./net-backend.js";

const HEADER_BYTES = 4;

export class FramingError extends Error {}

export class FrameReader {
  private chunks: Buffer[] = [];
  /** Index of the first chunk not consumed yet. */
  private head = 0;
  private buffered = 0;
  /** Body length announced by the header just consumed, or -1 while waiting for a header. */
  private bodyLength = -1;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /** The next whole frame, undefined until one is complete; throws FramingError on a bad length. */
  next(): Buffer | undefined {
    if (this.bodyLength < 0) {
      if (this.buffered < HEADER_BYTES) return undefined;
      const length = this.take(HEADER_BYTES).readUInt32BE(0);
      if (length === 0 || length > MAX_FRAME_BYTES) {
        throw new FramingError(`bad frame length ${length} (expected 1..${MAX_FRAME_BYTES})`);
      }
      this.bodyLength = length;
    }
    if (this.buffered < this.bodyLength) return undefined;
    const frame = this.take(this.bodyLength);
    this.bodyLength = -1;
    return frame;
  }

  /** Removes n buffered bytes (n <= buffered): a view when they lie in one chunk, else a copy. */
  private take(n: number): Buffer {
    this.buffered -= n;
    const first = this.chunks[this.head];
    if (first.length >= n) {
      this.consume(first, n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    for (let filled = 0; filled < n; ) {
      const c = this.chunks[this.head];
      const k = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, k);
      filled += k;
      this.consume(c, k);
    }
    return out;
  }

  /** Drops the first k bytes of the head chunk c. Consumed chunks are skipped, not shifted out one by one (tiny chunks would make that quadratic). */
  private consume(c: Buffer, k: number): void {
    if (k < c.length) {
      this.chunks[this.head] = c.subarray(k);
      return;
    }
    this.head++;
    if (this.head === this.chunks.length) {
      this.chunks = [];
      this.head = 0;
    } else if (this.head >= 1024) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
  }
}

/** Header and frame in one new buffer (the caller's frame may be reused once we return). */
export function encodeFrame(frame: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + frame.length);
  out.writeUInt32BE(frame.length, 0);
  out.set(frame, HEADER_BYTES);
  return out;
}

export interface FramedConnectionHandlers {
  onFrame(frame: Buffer): void;
  /** Called once when the connection ends; `problem` is set for a protocol error (the peer was cut off). */
  onClose(problem: string | undefined): void;
}

export class FramedConnection {
  private readonly reader = new FrameReader();
  private paused = false;
  private done = false;

  constructor(
    private readonly readable: Readable,
    private readonly writable: Writable,
    private readonly handlers: FramedConnectionHandlers,
  ) {
    readable.on("data", (chunk: Buffer) => {
      this.reader.push(chunk);
      this.drain();
    });
    // The end of the stream, an I/O error (the peer vanished) or a write to a
    // closed peer all mean the same thing: the connection is gone.
    readable.on("end", () => this.finish(undefined));
    readable.on("close", () => this.finish(undefined));
    readable.on("error", () => this.finish(undefined));
    writable.on("error", () => this.finish(undefined));
    readable.resume();
  }

  /** Queues one frame; false (nothing queued) when closed or when the queue is over its bound. */
  write(frame: Uint8Array): boolean {
    if (this.done || this.writable.writableLength + HEADER_BYTES + frame.length > MAX_QUEUED_BYTES) return false;
    this.writable.write(encodeFrame(frame));
    return true;
  }

  /** While paused, no frame is delivered and the stream is not read (the peer's writes back up). */
  setPaused(paused: boolean): void {
    this.paused = paused;
    if (paused) {
      this.readable.pause();
      return;
    }
    this.drain();
    if (!this.paused && !this.done) this.readable.resume();
  }

  destroy(): void {
    this.finish(undefined);
  }

  private drain(): void {
    try {
      while (!this.paused && !this.done) {
        const frame = this.reader.next();
        if (!frame) break;
        this.handlers.onFrame(frame);
      }
    } catch (e) {
      if (!(e instanceof FramingError)) throw e;
      this.finish(e.message);
    }
    if (this.paused) this.readable.pause();
  }

  private finish(problem: string | undefined): void {
    if (this.done) return;
    this.done = true;
    this.readable.destroy();
    this.writable.destroy();
    this.handlers.onClose(problem);
  }
}
