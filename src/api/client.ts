// The API's client side: one request to the host daemon over its socket.
import { request, type IncomingMessage } from "node:http";
import { hostTarget } from "./auth.js";

export class HostUnreachable extends Error {}
/** The host answered with an error: its message, and the status. */
export class ApiFailure extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

export interface ClientResponse {
  status: number;
  json: unknown;
}

/** Sends a request; resolves with the raw response (for streams). */
export function rawRequest(socket: string, method: string, path: string, body?: unknown): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const text = body === undefined ? undefined : JSON.stringify(body);
    const target = hostTarget(socket);
    const req = request({
      ...target, method, path,
      headers: { ...target.headers, ...(text === undefined ? {} : { "content-type": "application/json", "content-length": String(Buffer.byteLength(text)) }) },
    }, resolve);
    req.on("error", (e: NodeJS.ErrnoException) => reject(unreachable(socket, e)));
    req.end(text);
  });
}

/** Why the host at `socket` could not be reached, in one line. */
export function unreachable(socket: string, e: NodeJS.ErrnoException): HostUnreachable {
  if (e.code === "ENOENT" || e.code === "ECONNREFUSED") return new HostUnreachable(`no host is running on ${socket} (start one with \`tsvisor host\`)`);
  if (e.code === "EACCES") return new HostUnreachable(`${socket}: permission denied (the host's socket is its owner's only)`);
  return new HostUnreachable(`${socket}: ${e.message}`);
}

/** A response with an error status as ApiFailure: the host's JSON `error`, else the status. */
export async function failureOf(res: IncomingMessage): Promise<ApiFailure> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  let msg = `status ${res.statusCode}`;
  try {
    msg = JSON.parse(Buffer.concat(chunks).toString()).error ?? msg;
  } catch {
    // keep the status
  }
  return new ApiFailure(res.statusCode ?? 0, msg);
}

/** A JSON request; an error status becomes ApiFailure with the host's message. */
export async function call(socket: string, method: string, path: string, body?: unknown): Promise<unknown> {
  const res = await rawRequest(socket, method, path, body);
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString("utf8");
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new ApiFailure(res.statusCode ?? 0, `the host sent a reply that is not JSON (status ${res.statusCode})`);
  }
  if ((res.statusCode ?? 500) >= 400) {
    const msg = typeof json === "object" && json && "error" in json ? String((json as { error: unknown }).error) : `status ${res.statusCode}`;
    throw new ApiFailure(res.statusCode ?? 0, msg);
  }
  return json;
}
