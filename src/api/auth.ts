// The bearer token of `tsvisor host --listen HOST:PORT`: the Unix socket is
// protected by its mode (0600), a TCP port by this token. It is generated
// once (32 random bytes, base64url) and kept in <state-dir>/api-token, mode
// 0600; clients send `Authorization: Bearer <token>` (tsvisor vm: from
// $TSVISOR_TOKEN).
import { randomBytes, timingSafeEqual } from "node:crypto";
import { openSync, writeSync, closeSync, readFileSync, chmodSync } from "node:fs";
import { join } from "node:path";
import type { IncomingMessage } from "node:http";

export function tokenFile(stateDir: string): string {
  return join(stateDir, "api-token");
}

/** The stored token, or a new one stored 0600. */
export function loadOrCreateToken(stateDir: string): string {
  const file = tokenFile(stateDir);
  try {
    const fd = openSync(file, "wx", 0o600);
    const token = randomBytes(32).toString("base64url");
    try {
      writeSync(fd, token + "\n");
    } finally {
      closeSync(fd);
    }
    return token;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
  }
  chmodSync(file, 0o600);
  const token = readFileSync(file, "utf8").trim();
  if (token.length < 32) throw new Error(`${file}: the token is too short (remove the file for a new one)`);
  return token;
}

/** Does the request carry the token? (compared in constant time) */
export function authorized(req: IncomingMessage, token: string): boolean {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? "");
  if (!m) return false;
  const given = Buffer.from(m[1]);
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}

/** Request options that reach a host: a Unix socket path, or http://HOST:PORT with the token from $TSVISOR_TOKEN. */
export function hostTarget(host: string): { socketPath?: string; host?: string; port?: number; headers: Record<string, string> } {
  if (!host.startsWith("http://")) return { socketPath: host, headers: {} };
  const url = new URL(host);
  const token = process.env.TSVISOR_TOKEN;
  return { host: url.hostname, port: Number(url.port || 80), headers: token ? { authorization: `Bearer ${token}` } : {} };
}
