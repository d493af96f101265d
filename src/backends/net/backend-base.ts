// What every network backend shares: the counters, the checks on a frame the
// guest sends, the receive pause flag, warnings prefixed with the backend's
// description, and close-once. A backend supplies transmit() (take a frame or
// say it cannot) and shutdown() (release its host resources), and hands
// received frames to deliver().

import { MAX_FRAME_BYTES, type FrameMeta, type NetBackend, type NetStats, type WarnFn } from "./net-backend.js";

export abstract class NetBackendBase implements NetBackend {
  onFrame: ((frame: Uint8Array, meta?: FrameMeta) => void) | undefined = undefined;
  readonly stats: NetStats = { txFrames: 0, txBytes: 0, rxFrames: 0, rxBytes: 0, txDropped: 0, rxDropped: 0 };
  protected rxPaused = false;
  protected closed = false;

  constructor(readonly description: string, private readonly warnFn: WarnFn) {}

  send(frame: Uint8Array): void {
    if (this.closed || frame.length === 0 || frame.length > MAX_FRAME_BYTES || !this.transmit(frame)) {
      this.stats.txDropped++;
      return;
    }
    this.stats.txFrames++;
    this.stats.txBytes += frame.length;
  }

  setRxPaused(paused: boolean): void {
    if (paused === this.rxPaused) return;
    this.rxPaused = paused;
    if (!this.closed) this.rxPauseChanged(paused);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.shutdown();
  }

  /** Hands one received frame to the device (or counts it dropped when nobody listens). */
  protected deliver(frame: Uint8Array, meta?: FrameMeta): void {
    if (this.closed) return;
    if (!this.onFrame) {
      this.stats.rxDropped++;
      return;
    }
    this.stats.rxFrames++;
    this.stats.rxBytes += frame.length;
    this.onFrame(frame, meta);
  }

  protected warn(message: string): void {
    this.warnFn(`${this.description}: ${message}`);
  }

  /** Queues a copy of `frame` towards the host; false when it cannot (the frame is dropped). */
  protected abstract transmit(frame: Uint8Array): boolean;
  /** Releases the host resources; called once, by close(). */
  protected abstract shutdown(): void;
  /** Called when the pause state changes while open. */
  protected rxPauseChanged(_paused: boolean): void {}
}
