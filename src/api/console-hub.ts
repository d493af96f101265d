// A running VM's console as the daemon shares it: any number of viewers get
// the output; one of them, the writer, types into the guest. A viewer that
// does not read is dropped once a MiB waits for it: the VM never waits for a
// viewer. The run's end closes every viewer.
import type { Duplex } from "node:stream";

/** Output a viewer may fall behind by before it is dropped. */
const VIEWER_LIMIT = 1 << 20;
/** Input waiting for the guest before the writer's socket is paused. */
const INPUT_BACKLOG_LIMIT = 64 << 10;

export interface ConsoleTarget {
  /** Bytes for the guest console; returns the input backlog the guest has not read yet. */
  input(bytes: Uint8Array): number;
  backlog(): number;
}

export class ConsoleHub {
  private readonly viewers = new Set<Duplex>();
  private writer: Duplex | undefined;

  get viewerCount(): number {
    return this.viewers.size;
  }

  /** Adds a viewer; it is the writer when it asks and nobody else is. Returns whether it writes. */
  attach(socket: Duplex, wantWrite: boolean, target: ConsoleTarget): boolean {
    this.viewers.add(socket);
    const writes = wantWrite && this.writer === undefined;
    const drop = () => {
      this.viewers.delete(socket);
      if (this.writer === socket) this.writer = undefined;
    };
    socket.on("close", drop);
    socket.on("error", drop);
    // The client ended its side (it detached): end ours, which closes the stream.
    socket.on("end", () => socket.end());
    if (writes) {
      this.writer = socket;
      let timer: NodeJS.Timeout | undefined;
      socket.on("data", (chunk: Buffer) => {
        if (target.input(new Uint8Array(chunk)) > INPUT_BACKLOG_LIMIT && !timer) {
          socket.pause();
          timer = setInterval(() => {
            if (target.backlog() < INPUT_BACKLOG_LIMIT / 2 || socket.destroyed) {
              clearInterval(timer);
              timer = undefined;
              socket.resume();
            }
          }, 20);
        }
      });
      socket.on("close", () => timer && clearInterval(timer));
    } else {
      socket.on("data", () => {}); // a viewer's keys go nowhere
    }
    return writes;
  }

  output(bytes: Uint8Array): void {
    for (const v of this.viewers) {
      if (v.writableLength > VIEWER_LIMIT) {
        this.viewers.delete(v);
        if (this.writer === v) this.writer = undefined;
        v.destroy();
        continue;
      }
      v.write(bytes);
    }
  }

  /** The run ended: every viewer's stream ends. */
  closeAll(): void {
    for (const v of this.viewers) v.end();
    this.viewers.clear();
    this.writer = undefined;
  }
}
