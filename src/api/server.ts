// `tsvisor host`: the daemon. One engine Host, the VM table (daemon.ts), and
// the HTTP/1.1 JSON API (routes.ts) on a Unix socket that only its owner may
// use (mode 0600). Logs one line per event on stderr; SIGTERM or SIGINT
// stops every VM (disks flushed and closed), removes the socket, exits 0.
import { createServer, STATUS_CODES, type IncomingMessage, type ServerResponse, type Server } from "node:http";
import { connect, type AddressInfo } from "node:net";
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import { Host, HostError } from "../host/host.js";
import type { OvercommitOptions } from "../memory/manager/memory-manager.js";
import { SwapError } from "../memory/store/errors.js";
import { ApiError } from "./errors.js";
import { Daemon } from "./daemon.js";
import { StateStore } from "./store.js";
import { authorized, loadOrCreateToken, tokenFile } from "./auth.js";
import { match, CONSOLE_PROTOCOL, type Reply } from "./routes.js";
import { connectAgent, splice, EXEC_PROTOCOL } from "./exec-proxy.js";
import type { Duplex } from "node:stream";

/** Request bodies larger than this get 413: a VM definition is a few hundred bytes. */
export const MAX_BODY = 64 << 10;

export class DaemonError extends Error {}

/** The client went away before its request was whole: nothing to answer. */
class ClientGone extends Error {}

export interface DaemonOptions {
  socket: string;
  stateDir: string;
  pcpus?: number;
  memLimitBytes?: number;
  /** The memory manager's mechanisms (--swap, --compress, --no-sharing, --sharing-rate, --no-reclaim). */
  overcommit?: OvercommitOptions;
  /** Also serve the API on this TCP address, behind a bearer token. */
  listen?: { host: string; port: number };
  /** Take live-migrated VMs on this TCP address (sources must know the token). */
  migrationListen?: { host: string; port: number; token: string; tls?: boolean };
}

export function logLine(line: string): void {
  process.stderr.write(`${new Date().toISOString()} ${line}\n`);
}

/** Is a server answering on this socket? */
function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/** Refuses a socket in use; removes a stale one. */
async function claimSocket(path: string): Promise<void> {
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === "EEXIST" || code === "ENOTDIR" ? "a file that is not a directory is in the way" : code === "EACCES" ? "permission denied" : (e as Error).message;
    throw new DaemonError(`cannot make the socket's directory ${dirname(path)}: ${why}`);
  }
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new DaemonError(`${path} exists and is not a socket`);
  if (await socketAnswers(path)) throw new DaemonError(`a host is already running on ${path}`);
  unlinkSync(path);
  logLine(`removed the stale socket ${path}`);
}

/** Runs the daemon until SIGTERM or SIGINT; resolves with the exit status. */
export async function runDaemon(opts: DaemonOptions): Promise<number> {
  await claimSocket(opts.socket);
  let engine: Host;
  try {
    // The swap file lives in the state directory, which may not exist yet.
    if (opts.overcommit?.swap) mkdirSync(dirname(opts.overcommit.swap.path), { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new DaemonError(`state directory ${dirname(opts.overcommit!.swap!.path)}: ${(e as Error).message}`);
  }
  try {
    engine = await Host.create({ pcpus: opts.pcpus, memLimitBytes: opts.memLimitBytes, overcommit: opts.overcommit });
  } catch (e) {
    if (e instanceof HostError || e instanceof SwapError || e instanceof RangeError) throw new DaemonError(e.message);
    throw e;
  }
  let store: StateStore;
  try {
    store = new StateStore(opts.stateDir);
  } catch (e) {
    await engine.close();
    throw new DaemonError(`state directory ${opts.stateDir}: ${(e as Error).message}`);
  }
  const daemon = new Daemon(engine, store, logLine);
  const server = createServer((req, res) => void serve(daemon, req, res));
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => upgrade(daemon, req, socket, head));
  server.headersTimeout = 10_000;
  server.requestTimeout = 0; // wait and logs -f are long-lived
  let tcp: Server | undefined;
  if (opts.listen) {
    try {
      tcp = await listenTcp(daemon, opts.listen, loadOrCreateToken(opts.stateDir));
    } catch (e) {
      await engine.close();
      throw new DaemonError(`cannot listen on ${opts.listen.host}:${opts.listen.port}: ${(e as Error).message}`);
    }
    const at = tcp.address() as AddressInfo;
    const host = at.family === "IPv6" ? `[${at.address}]` : at.address;
    logLine(`also listening on http://${host}:${at.port}, bearer token in ${tokenFile(opts.stateDir)}`);
  }
  if (opts.migrationListen) {
    const ml = opts.migrationListen;
    try {
      const address = await daemon.listenForMigrations(ml, ml.token, ml.tls === true);
      logLine(`taking migrated VMs on ${address}${ml.tls ? " (TLS)" : ""}`);
    } catch (e) {
      tcp?.close();
      await engine.close();
      throw new DaemonError(`cannot listen for migrations on ${ml.host}:${ml.port}: ${(e as Error).message}`);
    }
  }
  try {
    await listen(server, opts.socket);
  } catch (e) {
    tcp?.close();
    await engine.close();
    throw new DaemonError(`cannot listen on ${opts.socket}: ${(e as Error).message}`);
  }
  const ino = lstatSync(opts.socket).ino;
  const mem = engine.memory.stats();
  const memory = [
    mem.compressed ? `compressed pool ${mem.compressed.capacityBytes >> 20} MiB` : "no compression",
    mem.swap ? `swap ${Math.floor(mem.swap.capacityBytes / (1 << 20))} MiB` : "no swap",
    mem.sharing ? "page sharing" : "no page sharing",
    mem.reclaim.enabled ? "reclaim" : "no reclaim",
  ].join(", ");
  // Without a listener, SIGTERM's default action ends the process at once: a
  // client that stops the host as soon as it reads the line below would kill
  // it before its cleanup (socket file, VMs) is in place.
  const stopSignal = new Promise<NodeJS.Signals>((resolve) => {
    process.once("SIGTERM", resolve);
    process.once("SIGINT", resolve);
  });
  logLine(`host listening on ${opts.socket} (${daemon.limits.pcpus} pCPUs, pool ${daemon.limits.poolBytes >> 20} MiB, ${memory}, state in ${opts.stateDir})`);
  daemon.restore();

  const signal = await stopSignal;
  logLine(`${signal}: stopping every VM`);
  server.close();
  tcp?.close();
  await daemon.stopAll(`the host stopped (${signal})`);
  await engine.close();
  server.closeAllConnections();
  tcp?.closeAllConnections();
  try {
    if (lstatSync(opts.socket).ino === ino) unlinkSync(opts.socket);
  } catch {
    // gone already
  }
  logLine("host stopped");
  return 0;
}

/** The API on a TCP port: every request must carry the bearer token (401 otherwise). */
function listenTcp(daemon: Daemon, at: { host: string; port: number }, token: string): Promise<Server> {
  const tcp = createServer((req, res) => {
    if (authorized(req, token)) return void serve(daemon, req, res);
    req.resume();
    res.setHeader("www-authenticate", 'Bearer realm="tsvisor"');
    sendJson(res, 401, { error: "this port needs 'Authorization: Bearer <token>' (the token is in the host's state directory, api-token)" });
    logLine(`audit peer=${req.socket.remoteAddress ?? "?"} ${req.method} ${req.url} status=401 (no or wrong token)`);
  });
  tcp.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    if (authorized(req, token)) return upgrade(daemon, req, socket, head);
    const text = JSON.stringify({ error: "this port needs 'Authorization: Bearer <token>'" }) + "\n";
    socket.end(`HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`);
  });
  tcp.headersTimeout = 10_000;
  tcp.requestTimeout = 0;
  return new Promise((resolve, reject) => {
    tcp.once("error", reject);
    tcp.listen(at.port, at.host, () => {
      tcp.off("error", reject);
      resolve(tcp);
    });
  });
}

/** Listens with a umask that makes the socket 0600 from its first moment. */
function listen(server: Server, path: string): Promise<void> {
  const old = process.umask(0o177);
  return new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => {
      server.off("error", reject);
      resolve();
    });
  }).finally(() => {
    process.umask(old);
    chmodSync(path, 0o600);
  });
}

/** GET /v1/vms/{name}/console with Upgrade: tsvisor-console: the socket becomes
 *  the console's byte stream (?write=false: a viewer that never types). */
function upgrade(daemon: Daemon, req: IncomingMessage, socket: Duplex, head: Buffer): void {
  const url = new URL(req.url ?? "/", "http://host");
  let vmName = "-";
  const refuse = (status: number, message: string) => {
    const text = JSON.stringify({ error: message }) + "\n";
    socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`);
  };
  socket.on("error", () => socket.destroy());
  try {
    const { route, params } = match(req.method ?? "GET", url.pathname);
    if (route.path === "/v1/vms/{name}/exec") return void execUpgrade(daemon, params.name, req, socket, head, refuse);
    if (route.path !== "/v1/vms/{name}/console") throw new ApiError(400, `${url.pathname} takes no upgrade`);
    if ((req.headers.upgrade ?? "").toLowerCase() !== CONSOLE_PROTOCOL) throw new ApiError(400, `the console speaks '${CONSOLE_PROTOCOL}', not '${req.headers.upgrade}'`);
    vmName = params.name;
    const vm = daemon.get(params.name);
    const write = url.searchParams.get("write");
    if (write !== null && write !== "true" && write !== "false") throw new ApiError(400, `write: expected true or false, got '${write}'`);
    if (head.length > 0) socket.unshift(head); // bytes the client sent right after its request
    // Attached and answered in one go: no console output can come between.
    const writes = vm.attachConsole(socket, write !== "false");
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: ${CONSOLE_PROTOCOL}\r\nconnection: Upgrade\r\ntsvisor-console-mode: ${writes ? "read-write" : "read-only"}\r\n\r\n`);
    logLine(`audit peer=owner(uid ${process.getuid?.() ?? "?"}, pid unknown) GET /v1/vms/{name}/console vm=${vmName} status=101 (${writes ? "writer" : "viewer"})`);
    socket.on("close", () => logLine(`vm ${vmName}: console ${writes ? "writer" : "viewer"} left`));
  } catch (e) {
    const status = e instanceof ApiError ? e.status : 500;
    refuse(status, e instanceof Error ? e.message : String(e));
    logLine(`audit peer=owner(uid ${process.getuid?.() ?? "?"}, pid unknown) GET ${url.pathname} (upgrade) vm=${vmName} status=${status}`);
  }
}

/** POST /v1/vms/{name}/exec with Upgrade: tsvisor-exec: the socket becomes a
 *  session with the guest agent (exec-proxy.ts), once the agent accepted. */
async function execUpgrade(daemon: Daemon, name: string, req: IncomingMessage, socket: Duplex, head: Buffer, refuse: (status: number, message: string) => void): Promise<void> {
  const audit = (status: number) => logLine(`audit peer=owner(uid ${process.getuid?.() ?? "?"}, pid unknown) POST /v1/vms/{name}/exec vm=${name} status=${status}`);
  try {
    if ((req.headers.upgrade ?? "").toLowerCase() !== EXEC_PROTOCOL) throw new ApiError(400, `exec speaks '${EXEC_PROTOCOL}', not '${req.headers.upgrade}'`);
    const vm = daemon.get(name);
    const path = vm.vsockPath;
    if (vm.state === "paused") throw new ApiError(409, `VM '${name}' is paused: resume it to exec`);
    if (path === undefined) {
      throw new ApiError(409, vm.state === "running" ? `VM '${name}' has no vsock device (its definition says vsock: none)` : `VM '${name}' is ${vm.state}: exec needs it running`);
    }
    socket.pause();
    const agent = await connectAgent(path, name);
    if (socket.destroyed) return void agent.destroy();
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: ${EXEC_PROTOCOL}\r\nconnection: Upgrade\r\n\r\n`);
    if (head.length > 0) agent.write(head); // frames the client sent right after its request
    splice(socket, agent);
    socket.resume();
    agent.resume();
    audit(101);
  } catch (e) {
    const status = e instanceof ApiError ? e.status : 500;
    refuse(status, e instanceof Error ? e.message : String(e));
    audit(status);
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body) + "\n";
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

/** The request body as JSON (undefined when empty); 413 past MAX_BODY, 400 when not JSON. */
function readJson(req: IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers["content-length"] ?? 0);
    if (declared > MAX_BODY) return reject(new ApiError(413, `the body is larger than ${MAX_BODY >> 10} KiB`));
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new ApiError(413, `the body is larger than ${MAX_BODY >> 10} KiB`));
        req.pause();
        return;
      }
      chunks.push(c);
    });
    req.on("error", () => reject(new ClientGone()));
    req.on("aborted", () => reject(new ClientGone()));
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      if (text.trim() === "") return resolve(undefined);
      try {
        resolve(JSON.parse(text));
      } catch (e) {
        reject(new ApiError(400, `malformed JSON: ${(e as Error).message}`));
      }
    });
  });
}

async function serve(daemon: Daemon, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const method = req.method ?? "GET";
  const url = new URL(req.url ?? "/", "http://host");
  let routePath = url.pathname;
  let vmName = "-";
  let audited = method !== "GET" && method !== "HEAD";
  res.once("close", () => {
    // Node gives no SO_PEERCRED for Unix sockets; the socket's mode 0600
    // limits peers to the host's own user (and root).
    if (audited) {
      logLine(`audit peer=owner(uid ${process.getuid?.() ?? "?"}, pid unknown) ${method} ${routePath} vm=${vmName.length > 64 ? `${vmName.slice(0, 64)}...` : vmName} status=${res.statusCode}${res.writableFinished ? "" : " (client gone)"}`);
    }
  });
  try {
    const { route, params } = match(method, url.pathname);
    routePath = route.path;
    audited = route.mutating;
    if (params.name !== undefined) vmName = params.name;
    const body = route.mutating ? await readJson(req) : undefined;
    if (route.method === "POST" && (route.path === "/v1/vms" || route.path === "/v1/restore") && typeof body === "object" && body && "name" in body) {
      vmName = String((body as { name: unknown }).name);
    }
    const reply: Reply = await route.handler({ daemon, params, query: url.searchParams, body, req, res });
    if (reply !== "streamed") sendJson(res, reply.status, reply.body);
  } catch (e) {
    if (e instanceof ClientGone) {
      res.destroy();
      return;
    }
    if (e instanceof ApiError) {
      if (e.status === 413) res.setHeader("connection", "close");
      sendJson(res, e.status, { error: e.message });
    } else {
      const msg = e instanceof Error ? e.message : String(e);
      daemon.log(`internal error on ${method} ${url.pathname}: ${msg}`);
      sendJson(res, 500, { error: `internal error: ${msg}` });
    }
  }
}
