// `--net socket=listen:PATH` and `--net socket=connect:PATH`: Ethernet frames
// over a Unix stream socket with QEMU's `-netdev stream` framing, so two
// tsvisor VMs on one host (or tsvisor and QEMU) share a cable without any
// privilege.
//
// listen: binds PATH (replacing a stale socket file nobody listens on, never
//   a live one or another kind of file) and serves one peer at a time; when
//   the peer goes, the next one to connect takes its place. The socket file is
//   removed on close.
// connect: connects to PATH, retrying for a while (connectRetryMs) while the
//   file does not exist yet or nobody listens on it, and again the same way
//   whenever the peer goes away; after that it gives up with one warning.

import { connect as netConnect, createServer, type Server, type Socket } from "node:net";
import { lstat, unlink } from "node:fs/promises";
import { statSync, unlinkSync } from "node:fs";
import { NetBackendError, type NetBackend, type WarnFn } from "./net-backend.js";
import { StreamBackend } from "./stream-backend.js";

interface Options {
  warn: WarnFn;
  connectRetryMs: number;
}

/** Errors meaning "nobody listens there yet": worth retrying. */
const RETRYABLE = new Set(["ENOENT", "ECONNREFUSED", "EAGAIN"]);
const FIRST_RETRY_MS = 50;
const MAX_RETRY_MS = 1000;

/** True when PATH exists and is something else than a socket (connecting to it says ECONNREFUSED). */
function notASocket(path: string): boolean {
  try {
    return !statSync(path).isSocket();
  } catch {
    return false;
  }
}

/** Connects once; resolves with the connected socket or rejects with the error. */
function tryConnect(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(path);
    socket.once("connect", () => {
      socket.off("error", reject);
      resolve(socket);
    });
    socket.once("error", reject);
  });
}

/** Removes PATH if it is a socket nobody listens on; refuses a live socket or any other file. */
async function removeStaleSocket(description: string, path: string): Promise<void> {
  const st = await lstat(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code === "ENOENT") return undefined;
    throw new NetBackendError(`${description}: ${e.message}`);
  });
  if (!st) return;
  if (!st.isSocket()) throw new NetBackendError(`${description}: ${path} exists and is not a socket (remove it or choose another path)`);
  const live = await tryConnect(path).then(
    (s) => (s.destroy(), true),
    () => false,
  );
  if (live) throw new NetBackendError(`${description}: another program is listening on ${path}`);
  await unlink(path).catch(() => {});
}

class UnixListenBackend extends StreamBackend {
  constructor(description: string, private readonly path: string, private readonly server: Server, warn: WarnFn) {
    super(description, warn);
    server.on("connection", (socket) => {
      if (this.connected || this.closed) {
        socket.destroy(); // one peer at a time
        return;
      }
      this.attach(socket, socket);
    });
    server.on("error", (e) => this.warn(`listening socket failed: ${e.message}`));
  }

  protected override shutdown(): void {
    this.server.close();
    this.dropConnection();
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}

export async function listenUnix(description: string, path: string, opts: Options): Promise<NetBackend> {
  await removeStaleSocket(description, path);
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) => reject(new NetBackendError(`${description}: cannot listen: ${e.message}`)));
    server.listen(path, () => resolve());
  });
  server.removeAllListeners("error");
  return new UnixListenBackend(description, path, server, opts.warn);
}

class UnixConnectBackend extends StreamBackend {
  private retryTimer: NodeJS.Timeout | undefined;
  private connectedAt = 0;

  constructor(description: string, private readonly path: string, private readonly opts: Options) {
    super(description, opts.warn);
  }

  /**
   * Connects after `delayMs`, and retries in the background (with growing
   * pauses) while nobody listens, until the retry window closes. Returns
   * after the first attempt; throws when `strict` and that attempt failed
   * with an error retrying cannot fix (a permission, not a socket, ...).
   */
  async connect(strict: boolean, delayMs = 0): Promise<void> {
    const deadline = Date.now() + delayMs + this.opts.connectRetryMs;
    let delay = FIRST_RETRY_MS;
    const attempt = async (first: boolean): Promise<void> => {
      this.retryTimer = undefined;
      let socket: Socket;
      try {
        socket = await tryConnect(this.path);
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        if (this.closed) return;
        if (!RETRYABLE.has(e.code ?? "") || notASocket(this.path)) {
          const reason = notASocket(this.path) ? `${this.path} is not a socket` : e.message;
          if (strict && first) throw new NetBackendError(`${this.description}: cannot connect: ${reason}`);
          this.warn(`cannot connect: ${reason}; frames are dropped from now on`);
        } else if (Date.now() >= deadline) {
          this.warn(`nobody listens after ${this.opts.connectRetryMs / 1000} s (${e.code}); giving up, frames are dropped from now on`);
        } else {
          this.retryTimer = setTimeout(() => void attempt(false), delay);
          delay = Math.min(delay * 2, MAX_RETRY_MS);
        }
        return;
      }
      if (this.closed) return void socket.destroy();
      this.connectedAt = Date.now();
      this.attach(socket, socket);
    };
    if (delayMs > 0) this.retryTimer = setTimeout(() => void attempt(false), delayMs);
    else await attempt(true);
  }

  /** The peer went away: reconnect, after a pause if it hung up at once (a listener that is busy with another peer). */
  protected override detached(): void {
    const lasted = Date.now() - this.connectedAt;
    void this.connect(false, lasted < MAX_RETRY_MS ? MAX_RETRY_MS : 0);
  }

  protected override shutdown(): void {
    clearTimeout(this.retryTimer);
    this.dropConnection();
  }
}

export async function connectUnix(description: string, path: string, opts: Options): Promise<NetBackend> {
  const backend = new UnixConnectBackend(description, path, opts);
  await backend.connect(true);
  return backend;
}
