// The host side of virtio-vsock over Unix sockets, Firecracker's convention
// (its docs/vsock.md):
//
// - Host-initiated: the VM listens on the Unix socket PATH. A host program
//   connects there and writes `CONNECT <port>\n`; the device opens a
//   connection to guest port <port> and, once the guest accepts, answers
//   `OK <host port>\n` (the host-side port the guest sees). Then the Unix
//   connection carries the stream both ways. On refusal (an RST), or no
//   answer within 2 s, the Unix connection is closed.
// - Guest-initiated: a guest connecting to CID 2 (the host) port P reaches
//   whatever listens on the Unix socket `PATH_P`; if nothing does, the
//   guest gets an RST (ECONNRESET on its connect()).
//
// A CONNECT line longer than MAX_LINE, or not of that form, closes the Unix
// connection. Bytes the host program sends after the line, before the guest
// accepts, are kept and sent once it has.

import net from "node:net";
import { lstatSync, unlinkSync } from "node:fs";
import type { HostStream, HostStreamSink } from "./connection.js";
import type { VsockBackend, VsockHost } from "./device.js";
import { VsockBackendError } from "./errors.js";

export { VsockBackendError };

const MAX_LINE = 32;

/** A Node socket as a HostStream: guest bytes written out with their flush callback, host input to `sink`. */
function streamOf(sock: net.Socket): HostStream {
  return {
    write: (data, flushed) => {
      if (sock.destroyed) return;
      sock.write(data, (err) => {
        if (!err) flushed();
      });
    },
    end: () => {
      if (!sock.destroyed) sock.end();
    },
    pause: () => sock.pause(),
    resume: () => sock.resume(),
    destroy: () => sock.destroy(),
  };
}

function wire(sock: net.Socket, sink: HostStreamSink): void {
  sock.on("data", (b: Buffer) => sink.data(new Uint8Array(b.buffer, b.byteOffset, b.length)));
  sock.on("end", () => sink.end());
  sock.on("close", () => sink.closed());
  sock.on("error", () => {}); // "close" follows
}

export class UnixVsockBackend implements VsockBackend {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();

  private constructor(readonly path: string) {}

  /** Listen on `path` (a stale socket file left there is replaced; any other file is an error). */
  static async open(path: string): Promise<UnixVsockBackend> {
    const b = new UnixVsockBackend(path);
    await b.listen();
    return b;
  }

  private async listen(): Promise<void> {
    let st;
    try {
      st = lstatSync(this.path);
    } catch {
      st = undefined;
    }
    if (st) {
      if (!st.isSocket()) throw new VsockBackendError(`--vsock: ${this.path} exists and is not a socket`);
      if (await isListening(this.path)) throw new VsockBackendError(`--vsock: ${this.path} is in use (another VM listens there)`);
      unlinkSync(this.path);
    }
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
    await new Promise<void>((resolve, reject) => {
      server.once("error", (e) => reject(new VsockBackendError(`--vsock: cannot listen on ${this.path}: ${(e as Error).message}`)));
      server.listen(this.path, () => resolve());
    });
    server.on("error", () => {});
    this.server = server;
  }

  start(host: VsockHost): void {
    this.server?.on("connection", (sock) => this.accept(host, sock));
  }

  /** A host program connected to PATH: read its CONNECT line, then hand the stream to the device. */
  private accept(host: VsockHost, sock: net.Socket): void {
    this.track(sock);
    sock.on("error", () => {});
    let line = Buffer.alloc(0);
    const onData = (b: Buffer) => {
      line = Buffer.concat([line, b]);
      const nl = line.indexOf(0x0a);
      if (nl < 0) {
        if (line.length > MAX_LINE) sock.destroy();
        return;
      }
      sock.off("data", onData);
      sock.pause();
      const m = /^CONNECT (\d{1,10})$/.exec(line.subarray(0, nl).toString("latin1").replace(/\r$/, ""));
      const port = m ? Number(m[1]) : -1;
      if (!m || port > 0xffff_ffff) {
        sock.destroy();
        return;
      }
      const rest = line.subarray(nl + 1);
      const stream = streamOf(sock);
      const sink = host.connectToGuest(port, stream, (hostPort) => {
        if (hostPort === undefined) sock.destroy();
        else if (!sock.destroyed) sock.write(`OK ${hostPort}\n`);
      });
      if (rest.length) sink.data(new Uint8Array(rest));
      wire(sock, sink);
      if (!sock.destroyed) sock.resume();
    };
    sock.on("data", onData);
    sock.resume();
  }

  connect(port: number, sink: HostStreamSink): Promise<HostStream | undefined> {
    const path = `${this.path}_${port}`;
    return new Promise((resolve) => {
      const sock = net.createConnection({ path, allowHalfOpen: true });
      const fail = () => resolve(undefined);
      sock.once("error", fail);
      sock.once("connect", () => {
        sock.off("error", fail);
        this.track(sock);
        wire(sock, sink);
        resolve(streamOf(sock));
      });
    });
  }

  private track(sock: net.Socket): void {
    this.sockets.add(sock);
    sock.on("close", () => this.sockets.delete(sock));
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    try {
      if (lstatSync(this.path).isSocket()) unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}

/** Does something accept connections on the Unix socket `path`? */
function isListening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection({ path });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}
