// virtio-console (virtio 1.2, 5.3 "Console Device"): a single-port console,
// the guest's /dev/hvc0. Queue 0 (receiveq) carries host input to the guest,
// queue 1 (transmitq) carries guest output to the host. No
// VIRTIO_CONSOLE_F_MULTIPORT, so there is no control queue; no
// VIRTIO_CONSOLE_F_EMERG_WRITE.
//
// Configuration space (5.3.4): cols u16 at 0, rows u16 at 2 (valid with
// VIRTIO_CONSOLE_F_SIZE, offered only when the host gave a size),
// max_nr_ports u32 at 4 (MULTIPORT only), emerg_wr u32 at 8 (EMERG_WRITE only).
//
// Host input (keyboard or pipe) waits in a bounded backlog until the driver
// has receive buffers: it goes out on poll() and when the driver adds buffers.
// It survives a device reset (the next driver reads it), as a terminal's
// typed-ahead input would.

import type { VirtioDevice, VirtioContext } from "./virtio.js";
import { VIRTIO_ID_CONSOLE } from "./virtio.js";
import { ChainError, checkNoneInFlight, type VirtQueue } from "./queue.js";
import { bytes, type Plain, type StateReader } from "../../snapshot/state.js";
import { GuestMemoryError } from "../../memory/guest-memory.js";
import { formatBytes } from "./format-bytes.js";

/** Feature bits (5.3.3). */
export const VIRTIO_CONSOLE_F_SIZE = 1n << 0n;

const RX_QUEUE = 0;
const TX_QUEUE = 1;
const QUEUE_SIZE = 64;

/** Host input kept for the guest at most; beyond it input is dropped (and counted). */
export const CONSOLE_INPUT_LIMIT = 1 << 20;
/** Output taken from one transmit buffer at most, so a hostile chain (up to 4 GiB) cannot stall the host. */
export const CONSOLE_OUTPUT_CHAIN_LIMIT = 1 << 20;
/** Input chunks up to this size are merged with the next input. */
const SMALL_CHUNK = 4096;
/** Read guest output in pieces of this size. */
const OUTPUT_PIECE = 64 << 10;

export interface VirtioConsoleOptions {
  /** "console0" */
  name: string;
  /** Guest output, in order. */
  output(bytes: Uint8Array): void;
  /** The host terminal's size; when given, VIRTIO_CONSOLE_F_SIZE is offered. */
  size?: { cols: number; rows: number };
}

export class ConsoleStats {
  /** Bytes the guest wrote (delivered to output()). */
  bytesOut = 0;
  /** Host input bytes delivered into guest buffers. */
  bytesIn = 0;
  /** Host input bytes dropped because the backlog was full. */
  inputDropped = 0;
  /** Guest output bytes beyond CONSOLE_OUTPUT_CHAIN_LIMIT in one buffer, or unreadable. */
  outputDropped = 0;
}

export class VirtioConsole implements VirtioDevice {
  readonly deviceId = VIRTIO_ID_CONSOLE;
  readonly name: string;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE];
  readonly features: bigint;
  readonly stats = new ConsoleStats();

  private readonly output: (bytes: Uint8Array) => void;
  private cols: number;
  private rows: number;
  private ctx: VirtioContext | undefined;
  private queues: readonly (VirtQueue | undefined)[] | undefined;
  /** Host input not yet delivered: chunks, the first one read from `inputOffset`. */
  private input_: Uint8Array[] = [];
  private inputOffset = 0;
  private inputBytes = 0;

  constructor(opts: VirtioConsoleOptions) {
    this.name = opts.name;
    this.output = opts.output;
    this.features = opts.size ? VIRTIO_CONSOLE_F_SIZE : 0n;
    this.cols = clampU16(opts.size?.cols ?? 0);
    this.rows = clampU16(opts.size?.rows ?? 0);
  }

  /** Host input bytes waiting for the guest (for host-side flow control). */
  get inputBacklog(): number {
    return this.inputBytes;
  }

  /** Host keyboard or pipe input for the guest. */
  input(bytes: Uint8Array): void {
    const room = CONSOLE_INPUT_LIMIT - this.inputBytes;
    const take = Math.min(room, bytes.length);
    this.stats.inputDropped += bytes.length - take;
    if (take === 0) return;
    // Keystrokes come a byte or a few at a time: gather them in small chunks.
    const last = this.input_.at(-1);
    if (last && last.length + take <= SMALL_CHUNK) {
      const merged = new Uint8Array(last.length + take);
      merged.set(last);
      merged.set(bytes.subarray(0, take), last.length);
      this.input_[this.input_.length - 1] = merged;
    } else {
      this.input_.push(bytes.slice(0, take));
    }
    this.inputBytes += take;
    this.ctx?.requestPoll();
  }

  /** The host terminal changed size (only with VIRTIO_CONSOLE_F_SIZE offered). */
  resize(cols: number, rows: number): void {
    if (!(this.features & VIRTIO_CONSOLE_F_SIZE)) return;
    cols = clampU16(cols);
    rows = clampU16(rows);
    if (cols === this.cols && rows === this.rows) return;
    this.cols = cols;
    this.rows = rows;
    this.ctx?.configChanged();
  }

  readConfig(offset: number, size: number): number {
    const b = new Uint8Array(12);
    const dv = new DataView(b.buffer);
    dv.setUint16(0, this.cols, true);
    dv.setUint16(2, this.rows, true);
    // max_nr_ports (4) and emerg_wr (8) stay 0: neither feature is offered.
    let v = 0;
    for (let i = 0; i < size; i++) v |= (offset + i < b.length ? b[offset + i] : 0) << (8 * i);
    return v >>> 0;
  }

  writeConfig(): void {}

  activate(ctx: VirtioContext, queues: readonly (VirtQueue | undefined)[]): void {
    this.ctx = ctx;
    this.queues = queues;
    // Input typed before the driver was ready: deliver once buffers are there.
    if (this.inputBytes > 0) ctx.requestPoll();
  }

  reset(): void {
    this.ctx = undefined;
    this.queues = undefined;
  }

  /**
   * Snapshot: the host input not yet delivered (at most CONSOLE_INPUT_LIMIT
   * bytes) and the terminal size the guest was told. No request is ever held
   * (both queues are served within a notify or poll); the counters are not
   * saved (a restored VM counts from zero).
   */
  saveState(): Plain {
    return { input: bytes(this.peekInput(this.inputBytes)), cols: this.cols, rows: this.rows };
  }

  restoreState(r: StateReader): void {
    const input = r.bytes("input", CONSOLE_INPUT_LIMIT);
    const cols = r.int("cols", 0, 0xffff);
    const rows = r.int("rows", 0, 0xffff);
    checkNoneInFlight(r, this.queues?.[RX_QUEUE]);
    checkNoneInFlight(r, this.queues?.[TX_QUEUE]);
    // The saved input goes first; anything typed since this device was built follows it, within the bound.
    const later = this.peekInput(this.inputBytes).slice();
    this.input_ = [];
    this.inputOffset = 0;
    this.inputBytes = 0;
    if (input.length > 0) this.input(input);
    if (later.length > 0) this.input(later);
    // The terminal now may differ from the one the guest was told of: tell it.
    if (this.features & VIRTIO_CONSOLE_F_SIZE && (cols !== this.cols || rows !== this.rows)) this.ctx?.configChanged();
  }

  notify(index: number): void {
    if (index === TX_QUEUE) this.transmit();
    else if (index === RX_QUEUE) this.deliver();
  }

  poll(): void {
    this.deliver();
  }

  /** Guest -> host: every readable byte of every chain, in order. */
  private transmit(): void {
    const q = this.queues?.[TX_QUEUE];
    if (!q) return;
    for (let chain = q.pop(); chain; chain = q.pop()) {
      const len = Math.min(chain.readableLength, CONSOLE_OUTPUT_CHAIN_LIMIT);
      this.stats.outputDropped += chain.readableLength - len;
      for (let at = 0; at < len; ) {
        const n = Math.min(OUTPUT_PIECE, len - at);
        let bytes: Uint8Array;
        try {
          bytes = chain.read(at, n);
        } catch (e) {
          if (!(e instanceof ChainError || e instanceof GuestMemoryError)) throw e;
          this.stats.outputDropped += len - at;
          break;
        }
        this.stats.bytesOut += n;
        this.output(bytes);
        at += n;
      }
      q.push(chain, 0);
    }
    q.notifyDriver();
  }

  /** Host -> guest: fill receive buffers from the backlog while both last. */
  private deliver(): void {
    const q = this.queues?.[RX_QUEUE];
    if (!q) return;
    try {
      while (this.inputBytes > 0) {
        const chain = q.pop();
        if (!chain) break;
        const n = Math.min(chain.writableLength, this.inputBytes);
        const bytes = this.peekInput(n);
        try {
          if (n > 0) chain.write(0, bytes);
        } catch (e) {
          if (!(e instanceof ChainError || e instanceof GuestMemoryError)) throw e;
          q.push(chain, 0); // the input stays for the next buffer
          continue;
        }
        this.consumeInput(n);
        this.stats.bytesIn += n;
        q.push(chain, n);
      }
    } finally {
      q.notifyDriver();
    }
  }

  /** The first `n` backlog bytes, without taking them. */
  private peekInput(n: number): Uint8Array {
    const first = this.input_[0];
    if (first && first.length - this.inputOffset >= n) return first.subarray(this.inputOffset, this.inputOffset + n);
    const out = new Uint8Array(n);
    let done = 0;
    let off = this.inputOffset;
    for (const chunk of this.input_) {
      if (done === n) break;
      const k = Math.min(chunk.length - off, n - done);
      out.set(chunk.subarray(off, off + k), done);
      done += k;
      off = 0;
    }
    return out;
  }

  private consumeInput(n: number): void {
    this.inputBytes -= n;
    while (n > 0) {
      const first = this.input_[0];
      const left = first.length - this.inputOffset;
      if (n < left) {
        this.inputOffset += n;
        return;
      }
      n -= left;
      this.input_.shift();
      this.inputOffset = 0;
    }
  }

  statsLines(): string[] {
    const s = this.stats;
    const dropped = s.inputDropped + s.outputDropped;
    return [
      `${this.name}: out ${formatBytes(s.bytesOut)}, in ${formatBytes(s.bytesIn)}, ` +
        `${formatBytes(this.inputBytes)} waiting, ${dropped} bytes dropped`,
    ];
  }
}

function clampU16(n: number): number {
  return Number.isFinite(n) ? Math.max(0, Math.min(0xffff, Math.trunc(n))) : 0;
}
