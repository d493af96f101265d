// The live migration wire format (one TCP connection per migration), as
// Cloud Hypervisor frames its migration messages. Every message:
//
//   offset 0   u16  command       (Cmd below)
//   offset 2   u16  reserved      0 (refused otherwise)
//   offset 4   u32  flags         0 (refused otherwise; room for later use)
//   offset 8   u64  length        payload bytes that follow
//   all little-endian, then `length` bytes of payload.
//
// Payloads: UTF-8 JSON for the control messages, binary for Memory:
//
//   Memory     u32 count, then count entries: u32 word = page index (bits
//              0..30, in the RAM window) | ZERO_PAGE (bit 31); an entry
//              without ZERO_PAGE is followed by the page's 4096 bytes, one
//              with it carries none (the page reads as zero). A Memory
//              message of 0 pages ends a round: the target answers Ack once
//              it has written every page before it (the source measures the
//              link end to end, and starts the pause with nothing queued)
//
//   Disk       a copied disk's bytes (Vm.migrate's disks, disk-copy.ts):
//              u32 disk (its index in Config's disks), u32 flags (bit 0:
//              zeroes, no data follows), u64 offset, u64 length, both
//              multiples of 512, then the data. Sent before each round's
//              pages and in the pause; the round's Ack covers them.
//
// The conversation (T = target, the listener; S = source):
//
//   T->S Hello   {version, nonce}            a random 32-byte nonce (base64)
//   S->T Hello   {version, nonce, mac}       mac = HMAC-SHA256(token, "tsvisor-migration source" || T's nonce)
//   T->S Ack     {mac}                       mac = HMAC-SHA256(token, "tsvisor-migration target" || S's nonce):
//                                            the target proves it knows the token too (guest memory goes to no one else)
//   S->T Config  {vm: {name, cpus, memBytes, cmdline, console}, postcopy, definition?, disks?: [{bytes}]}
//   T->S Ack     {}                          the VM is created (its name was free, it fits)
//   S->T Memory* (pre-copy rounds; a page sent again overwrites), each round
//        ended by an empty Memory, T->S Ack {}
//   S->T State   machine state (VirtMachine.saveState())
//   S->T Complete {run}                       nothing more comes; run: the VM was running at the source
//   T->S Ready   {}                          restored, paused, waiting for Go
//   S->T Go      {}
//   T->S Resumed {}                          it runs (or stays paused when run was false)
//   either way, any time before Go: Abandon {reason}, then the connection closes.
//
// Post-copy (Vm.migrate's postcopy): after round 0 the source pauses and sends
//   S->T State, Pending (bitmap: u32 words, page i = bit i & 31 of word i >> 5,
//        the pages the target does not have right yet), Complete {run, postcopy: true}
//   T->S Ready   {postcopy: {port, key}}     the target's migration thread listens there
//   S connects a second connection to that port: S->T Hello {key}, T->S Ack {}
//   S->T Go, T->S Resumed (main connection, which then closes)
//   on the second connection: S->T Memory* (every pending page, those asked
//   for first), T->S Fetch* (pages a thread waits for), S->T an empty Memory
//   when all are sent, T->S Ack {} once every page is mapped.
//
// The peer is untrusted: every length, count and index is checked, JSON
// fields through StateReader; a message out of place is refused.
//
// With `tls` (both sides must say so, as QEMU's tls-creds) every connection
// is TLS 1.2 with a pre-shared key (RFC 5489 ECDHE-PSK, ChaCha20-Poly1305):
// the main connection's key is derived from the token, the post-copy
// connection's is the one-time key of Ready. Memory is then encrypted, and a
// peer without the token fails the handshake before it sends anything.

import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect, createServer as tlsCreateServer, type TLSSocket } from "node:tls";
import { createServer as netCreateServer, type Server } from "node:net";
import { FRAME_SIZE } from "../../memory/frame-pool.js";
import type { P2m } from "../../memory/p2m.js";
import { isPresent } from "../../memory/p2m-entry.js";
import { StateReader, type Plain } from "../state.js";
import { isAllZero } from "../../memory/zero.js";

export const MIGRATION_VERSION = 1;
export const HEADER_BYTES = 16;

export const enum Cmd {
  Hello = 1,
  Config = 2,
  Memory = 3,
  State = 4,
  Complete = 5,
  Ack = 6,
  Ready = 7,
  Go = 8,
  Resumed = 9,
  Abandon = 10,
  /** Post-copy: the pages still at the source (a bitmap, S->T). */
  Pending = 11,
  /** Post-copy: pages a thread of the target waits for (u32 count, u32 indices; T->S). */
  Fetch = 12,
  /** A copied disk's bytes (S->T). */
  Disk = 13,
}

export const CMD_NAMES: Record<number, string> = {
  [Cmd.Hello]: "Hello", [Cmd.Config]: "Config", [Cmd.Memory]: "Memory", [Cmd.State]: "State", [Cmd.Complete]: "Complete",
  [Cmd.Ack]: "Ack", [Cmd.Ready]: "Ready", [Cmd.Go]: "Go", [Cmd.Resumed]: "Resumed", [Cmd.Abandon]: "Abandon",
  [Cmd.Pending]: "Pending", [Cmd.Fetch]: "Fetch", [Cmd.Disk]: "Disk",
};

/** Data bytes in one Disk message at most. */
export const MAX_DISK_RUN = 4 << 20;
export const DISK_HEADER_BYTES = 24;

/** Pages in one Memory message at most (1 MiB of page bytes). */
export const MAX_RUN_PAGES = 256;
export const ZERO_PAGE = 0x8000_0000;
const ENTRY_BYTES = 4 + FRAME_SIZE;

/** The largest payload each command may have. */
const MAX_PAYLOAD: Record<number, number> = {
  [Cmd.Hello]: 4096, [Cmd.Config]: 1 << 20, [Cmd.Memory]: 4 + MAX_RUN_PAGES * ENTRY_BYTES, [Cmd.State]: 64 << 20,
  [Cmd.Complete]: 4096, [Cmd.Ack]: 4096, [Cmd.Ready]: 4096, [Cmd.Go]: 4096, [Cmd.Resumed]: 4096, [Cmd.Abandon]: 4096,
  // 64 GiB of RAM at most: 2^24 pages, a bit each.
  [Cmd.Pending]: 1 << 21, [Cmd.Fetch]: 4 + 4 * 1024, [Cmd.Disk]: DISK_HEADER_BYTES + MAX_DISK_RUN,
};

/** A migration failed: one line saying why. */
export class MigrationError extends Error {
  override readonly name = "MigrationError";
}

export interface Message {
  cmd: Cmd;
  payload: Buffer;
}

export function header(cmd: Cmd, length: number): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  h.writeUInt16LE(cmd, 0);
  h.writeBigUInt64LE(BigInt(length), 8);
  return h;
}

/** Messages off a socket, each checked against its command's limits. */
export class MessageReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private queue: Message[] = [];
  private waiter: { resolve(m: Message): void; reject(e: Error): void } | undefined;
  private failure: Error | undefined;
  private need: { cmd: Cmd; length: number } | undefined;
  /** Bytes received so far (headers and payloads). */
  received = 0;

  constructor(private readonly socket: Socket, private readonly peer: string) {
    socket.on("data", (d: Buffer) => this.onData(d));
    socket.on("close", () => this.fail(new MigrationError(`${peer} closed the connection`)));
    socket.on("error", (e) => this.fail(new MigrationError(`connection to ${peer}: ${e.message}`)));
  }

  /** The next message (rejects with the connection's end or a malformed message). */
  next(timeoutMs = 60_000, waitingFor = "a message"): Promise<Message> {
    const m = this.queue.shift();
    if (m) {
      if (this.queue.length < 2) this.socket.resume();
      return Promise.resolve(m);
    }
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new MigrationError(`${this.peer} sent nothing for ${Math.round(timeoutMs / 1000)} s while waiting for ${waitingFor}`));
      }, timeoutMs);
      this.waiter = {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.socket.resume();
    });
  }

  /** A message already received, without waiting (undefined: none yet). */
  poll(): Message | undefined {
    if (this.failure && this.queue.length === 0) throw this.failure;
    const m = this.queue.shift();
    if (m && this.queue.length < 2) this.socket.resume();
    return m;
  }

  fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(e);
  }

  private onData(d: Buffer): void {
    if (this.failure) return;
    this.received += d.length;
    this.chunks.push(d);
    this.buffered += d.length;
    try {
      for (;;) {
        if (!this.need) {
          if (this.buffered < HEADER_BYTES) break;
          const h = this.take(HEADER_BYTES);
          const cmd = h.readUInt16LE(0) as Cmd;
          const max = MAX_PAYLOAD[cmd];
          if (max === undefined) throw new MigrationError(`${this.peer} sent an unknown command ${cmd}`);
          if (h.readUInt16LE(2) !== 0 || h.readUInt32LE(4) !== 0) throw new MigrationError(`${this.peer} sent a ${CMD_NAMES[cmd]} header with reserved bits set`);
          const length = h.readBigUInt64LE(8);
          if (length > BigInt(max)) throw new MigrationError(`${this.peer} sent a ${CMD_NAMES[cmd]} of ${length} bytes (at most ${max})`);
          this.need = { cmd, length: Number(length) };
        }
        if (this.buffered < this.need.length) break;
        const payload = this.take(this.need.length);
        const m = { cmd: this.need.cmd, payload };
        this.need = undefined;
        const w = this.waiter;
        this.waiter = undefined;
        if (w) w.resolve(m);
        else this.queue.push(m);
      }
    } catch (e) {
      this.fail(e as Error);
      this.socket.destroy();
      return;
    }
    // Backpressure: the consumer is behind, let TCP hold the sender.
    if (this.queue.length >= 2) this.socket.pause();
  }

  /** The first `n` buffered bytes (one copy at most). */
  private take(n: number): Buffer {
    this.buffered -= n;
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0];
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - at);
      c.copy(out, at, 0, k);
      at += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }
}


/** Messages onto a socket; `send` resolves once the bytes are with the OS
 *  (so the time a run of sends takes is the link's). */
export class MessageWriter {
  /** Bytes written so far (headers and payloads). */
  sent = 0;
  private failure: Error | undefined;

  constructor(private readonly socket: Socket, private readonly peer: string) {
    socket.on("error", (e) => {
      this.failure ??= new MigrationError(`connection to ${peer}: ${e.message}`);
    });
    socket.on("close", () => {
      this.failure ??= new MigrationError(`${peer} closed the connection`);
    });
  }

  send(cmd: Cmd, payload: Uint8Array = new Uint8Array(0)): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    this.sent += HEADER_BYTES + payload.length;
    return new Promise((resolve, reject) => {
      this.socket.cork();
      this.socket.write(header(cmd, payload.length));
      this.socket.write(payload, (e) => (e ? reject(this.failure ?? new MigrationError(`connection to ${this.peer}: ${e.message}`)) : resolve()));
      this.socket.uncork();
    });
  }

  json(cmd: Cmd, value: Plain): Promise<void> {
    return this.send(cmd, Buffer.from(JSON.stringify(value)));
  }

  /** Say why and close (best effort: the peer may be gone). */
  abandon(reason: string): void {
    if (this.failure || this.socket.destroyed) return;
    this.failure = new MigrationError("abandoned");
    const p = Buffer.from(JSON.stringify({ reason: reason.slice(0, 1000) }));
    this.socket.write(Buffer.concat([header(Cmd.Abandon, p.length), p]));
    this.socket.end();
    this.socket.pause(); // read nothing more; the peer reads the reason, then the close
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }
}

/** A control message's JSON, checked to be an object (fields: StateReader). */
export function readJson(m: Message, what: string): StateReader {
  return new StateReader(parseJson(m, what), CMD_NAMES[m.cmd]);
}

/** A control message's JSON object, unchecked but for being an object. */
export function parseJson(m: Message, what: string): Record<string, Plain> {
  let v: unknown;
  try {
    v = m.payload.length === 0 ? {} : JSON.parse(m.payload.toString("utf8"));
  } catch {
    throw new MigrationError(`${what}: the ${CMD_NAMES[m.cmd]} message is not valid JSON`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new MigrationError(`${what}: the ${CMD_NAMES[m.cmd]} message is not a JSON object`);
  return v as Record<string, Plain>;
}

/** The message must be `cmd`; an Abandon becomes the peer's reason. */
export function expect(m: Message, cmd: Cmd, peerName: string): Message {
  if (m.cmd === cmd) return m;
  if (m.cmd === Cmd.Abandon) {
    let reason = "no reason given";
    try {
      reason = readJson(m, peerName).str("reason", 1000);
    } catch {
      // a malformed Abandon still ends it
    }
    throw new MigrationError(`${peerName} abandoned the migration: ${reason.replace(/\s+/g, " ")}`);
  }
  throw new MigrationError(`${peerName} sent ${CMD_NAMES[m.cmd]} where ${CMD_NAMES[cmd]} belongs`);
}

// ---- authentication ------------------------------------------------------------------------

export const NONCE_BYTES = 32;

export function newNonce(): Buffer {
  return randomBytes(NONCE_BYTES);
}

export function mac(token: string | Uint8Array, role: "source" | "target", nonce: Uint8Array): Buffer {
  return createHmac("sha256", token).update(`tsvisor-migration ${role}`).update(nonce).digest();
}

/** Constant time: never ===. */
export function macMatches(token: string | Uint8Array, role: "source" | "target", nonce: Uint8Array, given: Uint8Array): boolean {
  const want = mac(token, role, nonce);
  return given.length === want.length && timingSafeEqual(want, given);
}

export function checkToken(token: unknown): void {
  if (!(typeof token === "string" || token instanceof Uint8Array) || token.length < 8) throw new MigrationError("a migration token of at least 8 characters (or bytes) is needed");
}

// ---- connections: plain TCP or TLS with a pre-shared key --------------------------------------

const TLS_CIPHERS = "ECDHE-PSK-CHACHA20-POLY1305";
const PSK_IDENTITY = "tsvisor-migration";
/** Node offers PSK cipher suites in TLS 1.2 (its TLS 1.3 PSK is for session resumption). */
const TLS_VERSION = "TLSv1.2" as const;

/** The main connection's pre-shared key: the token stretched to 32 bytes, bound to this use. */
export function tlsKey(token: string | Uint8Array): Buffer {
  return createHmac("sha256", token).update("tsvisor-migration tls psk").digest();
}

/**
 * A listener: plain TCP, or TLS with `psk`. `onConnection` gets each
 * connection once it is usable (TLS: after the handshake); a TLS handshake
 * that fails (a wrong key, a plain peer) goes to `onRefused` with one line.
 */
export function createMigrationServer(psk: Buffer | undefined, onConnection: (s: Socket) => void, onRefused: (from: string, why: string) => void): Server {
  if (!psk) return netCreateServer(onConnection);
  const server = tlsCreateServer({
    ciphers: TLS_CIPHERS, minVersion: TLS_VERSION, maxVersion: TLS_VERSION, handshakeTimeout: 10_000,
    pskCallback: (_socket, identity) => (identity === PSK_IDENTITY ? psk : null),
  }, onConnection);
  server.on("tlsClientError", (e, s: TLSSocket) => {
    onRefused(`${s.remoteAddress}:${s.remotePort}`, tlsFailure(e));
    s.destroy();
  });
  return server;
}

/** Connect, over TLS with `psk` when given; rejects with one line (a TLS handshake refused: authentication failed). */
export function connectMigration(host: string, port: number, psk: Buffer | undefined, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s: Socket = psk
      ? tlsConnect({
        host, port, ciphers: TLS_CIPHERS, minVersion: TLS_VERSION, maxVersion: TLS_VERSION,
        pskCallback: () => ({ psk, identity: PSK_IDENTITY }),
        // The key authenticates the peer: there is no certificate to check.
        checkServerIdentity: () => undefined,
      })
      : netConnect({ host, port });
    s.setNoDelay(true);
    let tcpUp = false;
    const timer = setTimeout(() => {
      s.destroy();
      reject(new MigrationError(`no connection within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    s.once("connect", () => {
      tcpUp = true;
      if (psk) return;
      clearTimeout(timer);
      resolve(s);
    });
    s.once("secureConnect", () => {
      clearTimeout(timer);
      resolve(s);
    });
    s.once("error", (e) => {
      clearTimeout(timer);
      reject(new MigrationError(psk && tcpUp ? tlsFailure(e) : e.message));
    });
    // A TLS peer that closes during the handshake (it did not take our key) gives no error.
    s.once("close", () => {
      clearTimeout(timer);
      reject(new MigrationError(psk && tcpUp ? "authentication failed: the TLS handshake was refused (a wrong token, or a listener without --migration-tls)" : "the connection closed"));
    });
  });
}

function tlsFailure(e: Error): string {
  const code = (e as { code?: string }).code ?? "";
  if (/DECRYPT|BAD_RECORD_MAC|PSK|HANDSHAKE_FAILURE/i.test(code + e.message)) return "authentication failed: the TLS handshake failed: wrong token";
  if (/timeout/i.test(code + e.message)) return "authentication failed: no TLS handshake within 10 s (a source without --tls?)";
  if (/WRONG_VERSION|UNKNOWN_PROTOCOL|HTTP_REQUEST|RECORD_LAYER|PACKET_LENGTH/i.test(code + e.message)) return "authentication failed: the peer does not speak TLS (use --tls on both sides, or neither)";
  return `the TLS handshake failed: ${e.message.replace(/\s+/g, " ")}`;
}

// ---- pages ---------------------------------------------------------------------------------

/**
 * A Memory payload of pages `indices[from..]` (at most MAX_RUN_PAGES) read
 * from `p2m`; all-zero pages are sent as markers, or skipped when
 * `skipZero` (round 0: the target's RAM reads as zero). Returns the payload
 * and how many indices it consumed.
 */
export function encodePages(p2m: P2m, indices: ArrayLike<number>, from: number, skipZero: boolean, buf: Buffer): { payload: Buffer; used: number; pages: number; zero: number } {
  let at = 4;
  let n = 0;
  let zero = 0;
  let k = from;
  while (k < indices.length && n < MAX_RUN_PAGES) {
    const index = indices[k++];
    p2m.readInto(index, 0, FRAME_SIZE, buf, at + 4);
    if (isAllZero(buf.subarray(at + 4, at + 4 + FRAME_SIZE))) {
      if (skipZero) continue;
      buf.writeUInt32LE((index | ZERO_PAGE) >>> 0, at);
      at += 4;
      zero++;
    } else {
      buf.writeUInt32LE(index, at);
      at += ENTRY_BYTES;
    }
    n++;
  }
  buf.writeUInt32LE(n, 0);
  return { payload: buf.subarray(0, at), used: k - from, pages: n, zero };
}

export function pageBuffer(): Buffer {
  return Buffer.alloc(4 + MAX_RUN_PAGES * ENTRY_BYTES);
}

/** Write a Memory payload into `p2m` (RAM not yet running): each page
 *  overwrites what an earlier round sent. Untrusted: all checked first. */
export function applyPages(p2m: P2m, payload: Buffer): number {
  if (payload.length < 4) throw new MigrationError("a Memory message without its page count");
  const count = payload.readUInt32LE(0);
  if (count > MAX_RUN_PAGES) throw new MigrationError(`a Memory message of ${count} pages (at most ${MAX_RUN_PAGES})`);
  // Check the whole run before touching RAM.
  let at = 4;
  for (let n = 0; n < count; n++) {
    if (at + 4 > payload.length) throw new MigrationError(`a Memory message cut short at page ${n} of ${count}`);
    const word = payload.readUInt32LE(at);
    const index = word & ~ZERO_PAGE;
    if (index >= p2m.count) throw new MigrationError(`a Memory message names page ${index}, the VM has ${p2m.count}`);
    at += word & ZERO_PAGE ? 4 : ENTRY_BYTES;
    if (at > payload.length) throw new MigrationError(`a Memory message cut short in page ${index}`);
  }
  if (at !== payload.length) throw new MigrationError(`a Memory message with ${payload.length - at} bytes after its ${count} pages`);
  at = 4;
  for (let n = 0; n < count; n++) {
    const word = payload.readUInt32LE(at);
    const index = (word & ~ZERO_PAGE) >>> 0;
    if (word & ZERO_PAGE) {
      at += 4;
      if (!isPresent(p2m.entry(index))) continue; // never written here: reads as zero already
      const frame = p2m.writableFrame(index);
      p2m.pool.bytes.fill(0, frame, frame + FRAME_SIZE);
    } else {
      const frame = p2m.writableFrame(index); // may grow the pool: its bytes after
      p2m.pool.bytes.set(payload.subarray(at + 4, at + ENTRY_BYTES), frame);
      at += ENTRY_BYTES;
    }
  }
  return count;
}


/** A Pending payload: the bitmap of `pages` pages, checked. */
export function readBitmap(payload: Buffer, pages: number): Uint32Array {
  const words = Math.ceil(pages / 32);
  if (payload.length !== words * 4) throw new MigrationError(`a Pending bitmap of ${payload.length} bytes for ${pages} pages`);
  const bits = new Uint32Array(words);
  for (let i = 0; i < words; i++) bits[i] = payload.readUInt32LE(i * 4);
  const tail = pages % 32;
  if (tail && bits[words - 1] >>> tail) throw new MigrationError("a Pending bitmap names pages past the VM's RAM");
  return bits;
}

export function writeBitmap(indices: number[], pages: number): Buffer {
  const b = Buffer.alloc(Math.ceil(pages / 32) * 4);
  for (const i of indices) b.writeUInt32LE((b.readUInt32LE((i >>> 5) * 4) | (1 << (i & 31))) >>> 0, (i >>> 5) * 4);
  return b;
}

/** Post-copy: write a Memory payload's pages into the entries still Remote
 *  (a page sent twice, requested and pushed, lands once). Returns the pages mapped. */
export function fillRemotePages(p2m: P2m, payload: Buffer): { count: number; mapped: number } {
  if (payload.length < 4) throw new MigrationError("a Memory message without its page count");
  const count = payload.readUInt32LE(0);
  if (count > MAX_RUN_PAGES) throw new MigrationError(`a Memory message of ${count} pages (at most ${MAX_RUN_PAGES})`);
  let at = 4;
  let mapped = 0;
  for (let n = 0; n < count; n++) {
    if (at + 4 > payload.length) throw new MigrationError(`a Memory message cut short at page ${n} of ${count}`);
    const word = payload.readUInt32LE(at);
    const index = (word & ~ZERO_PAGE) >>> 0;
    if (index >= p2m.count) throw new MigrationError(`a Memory message names page ${index}, the VM has ${p2m.count}`);
    const zero = (word & ZERO_PAGE) !== 0;
    if (!zero && at + ENTRY_BYTES > payload.length) throw new MigrationError(`a Memory message cut short in page ${index}`);
    if (p2m.fillRemote(index, zero ? undefined : payload.subarray(at + 4, at + ENTRY_BYTES))) mapped++;
    at += zero ? 4 : ENTRY_BYTES;
  }
  if (at !== payload.length) throw new MigrationError(`a Memory message with ${payload.length - at} bytes after its ${count} pages`);
  return { count, mapped };
}
