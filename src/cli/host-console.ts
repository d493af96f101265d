// The host side of the guest's serial console: stdin to the guest, guest
// output to stdout.
//
// Interactive (stdin is a terminal, no command): the terminal goes to raw mode,
// so every key (Ctrl-C included) reaches the guest; Ctrl-A is the escape key as
// in QEMU's -nographic: Ctrl-A X quits, Ctrl-A Ctrl-A sends one Ctrl-A, Ctrl-A H
// shows help. The terminal mode is restored on every way out (normal end,
// error, signal), by a process 'exit' hook.
//
// Otherwise stdin is forwarded as it is (a pipe, a file, a terminal in cooked
// mode), and its end becomes end-of-file in the guest: Ctrl-D, which the guest
// tty (canonical mode) turns into a zero-length read. A line left unfinished at
// the end needs a second Ctrl-D, as when typing.

import { writeAllSync } from "./console-output.js";

const CTRL_A = 0x01;
const CTRL_D = 0x04;
/** Host input held for the guest before stdin is paused (flow control). */
const BACKLOG_LIMIT = 64 << 10;

export interface ConsoleSink {
  consoleInput(bytes: Uint8Array): void;
  readonly consoleBacklog: number;
}

export interface HostConsoleEvents {
  /** Ctrl-A X. */
  quit(): void;
  /** New input was queued: the machine should stop sleeping. */
  inputReady(): void;
}

export class HostConsole {
  private sink: ConsoleSink | undefined;
  private escape = false;
  private lastByte = 0x0a;
  private rawMode = false;
  private paused = false;
  private flowTimer: NodeJS.Timeout | undefined;
  private pendingOut: Uint8Array[] = [];
  private flushScheduled = false;
  private readonly onData = (chunk: Buffer) => this.input(new Uint8Array(chunk));
  private readonly onEnd = () => {
    // Ctrl-D ends a pending partial line first, then reads as end-of-file.
    const eof = this.lastByte === 0x0a ? [CTRL_D] : [CTRL_D, CTRL_D];
    this.deliver(Uint8Array.from(eof));
  };

  private readonly interactive: boolean;
  private readonly forwardStdin: boolean;

  /** `forwardStdin` false: stdin is not read at all (it was given to the guest another way). */
  constructor(mode: { interactive: boolean; forwardStdin: boolean }, private readonly events: HostConsoleEvents) {
    this.interactive = mode.interactive;
    this.forwardStdin = mode.forwardStdin;
  }

  /** Start forwarding stdin to `sink` (a new machine after a reboot, too). */
  attach(sink: ConsoleSink): void {
    this.sink = sink;
    if (this.flowTimer || !this.forwardStdin) return;
    const stdin = process.stdin;
    if (this.interactive && stdin.isTTY) {
      stdin.setRawMode(true);
      this.rawMode = true;
      process.on("exit", () => this.restoreTerminal());
    }
    stdin.on("data", this.onData);
    stdin.on("end", this.onEnd);
    stdin.on("error", () => this.onEnd());
    // Resume a paused stdin once the guest has read most of the backlog.
    this.flowTimer = setInterval(() => {
      if (this.paused && (this.sink?.consoleBacklog ?? 0) < BACKLOG_LIMIT / 2) {
        this.paused = false;
        stdin.resume();
      }
    }, 50);
    this.flowTimer.unref();
  }

  /** Stop reading stdin and give the terminal back as it was. */
  detach(): void {
    this.flush();
    if (!this.flowTimer) return;
    clearInterval(this.flowTimer);
    process.stdin.off("data", this.onData);
    process.stdin.off("end", this.onEnd);
    process.stdin.pause();
    this.restoreTerminal();
  }

  restoreTerminal(): void {
    if (this.rawMode && process.stdin.isTTY) process.stdin.setRawMode(false);
    this.rawMode = false;
  }

  /** Guest console output. Buffered and written when the run loop yields, so a
   *  byte-at-a-time UART does not cost a system call per byte. */
  output(bytes: Uint8Array): void {
    this.pendingOut.push(bytes);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  flush(): void {
    this.flushScheduled = false;
    if (this.pendingOut.length === 0) return;
    const all = Buffer.concat(this.pendingOut);
    this.pendingOut = [];
    writeAllSync(1, all);
  }

  private input(bytes: Uint8Array): void {
    if (!this.rawMode) return this.deliver(bytes);
    const out: number[] = [];
    for (const b of bytes) {
      if (this.escape) {
        this.escape = false;
        const c = String.fromCharCode(b).toLowerCase();
        if (c === "x") {
          this.deliver(Uint8Array.from(out));
          this.events.quit();
          return;
        }
        if (c === "h") {
          this.output(new TextEncoder().encode("\r\nC-a x    exit tsvisor\r\nC-a C-a  send C-a\r\nC-a h    this help\r\n"));
          continue;
        }
        if (b !== CTRL_A) out.push(CTRL_A);
        out.push(b);
      } else if (b === CTRL_A) {
        this.escape = true;
      } else {
        out.push(b);
      }
    }
    this.deliver(Uint8Array.from(out));
  }

  private deliver(bytes: Uint8Array): void {
    if (bytes.length === 0 || !this.sink) return;
    this.lastByte = bytes[bytes.length - 1];
    this.sink.consoleInput(bytes);
    this.events.inputReady();
    if (this.sink.consoleBacklog > BACKLOG_LIMIT && !this.paused) {
      this.paused = true;
      process.stdin.pause();
    }
  }
}
