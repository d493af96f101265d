// A backend whose frames travel over a length-prefixed byte stream (framing.ts):
// the Unix socket backends and the tap backend (its relay's stdin/stdout).
// It holds at most one connection at a time; without one, sent frames are
// dropped and counted. Subclasses decide where connections come from and what
// happens when one ends (wait for a new peer, reconnect, report a dead relay).

import type { Readable, Writable } from "node:stream";
import { NetBackendBase } from "./backend-base.js";
import { FramedConnection } from "./framing.js";

export abstract class StreamBackend extends NetBackendBase {
  private connection: FramedConnection | undefined;

  protected get connected(): boolean {
    return this.connection !== undefined;
  }

  /** Makes this stream the current connection (the previous one must have ended). */
  protected attach(readable: Readable, writable: Writable): void {
    const connection = new FramedConnection(readable, writable, {
      onFrame: (frame) => this.deliver(frame),
      onClose: (problem) => {
        if (this.connection === connection) this.connection = undefined;
        if (problem) this.warn(`peer cut off: ${problem}`);
        if (!this.closed) this.detached();
      },
    });
    this.connection = connection;
    if (this.rxPaused) connection.setPaused(true);
  }

  /** Ends the current connection, if any (its onClose runs; detached() only while open). */
  protected dropConnection(): void {
    this.connection?.destroy();
  }

  /** Called when the current connection ended while the backend is open. */
  protected detached(): void {}

  protected override transmit(frame: Uint8Array): boolean {
    return this.connection?.write(frame) ?? false;
  }

  protected override rxPauseChanged(paused: boolean): void {
    this.connection?.setPaused(paused);
  }
}
