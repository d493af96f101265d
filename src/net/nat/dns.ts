// The user-mode network's DNS server at 10.0.2.3: names are answered from the
// host's own resolver, so the guest sees what a program on the host sees.
//
// A and AAAA questions go through getaddrinfo (node:dns lookup), which
// honours /etc/hosts and the host's nsswitch configuration; other types are
// forwarded as they are to the first name server the host uses. A host
// loopback answer (127.0.0.1, a name in /etc/hosts such as localhost) is
// rewritten to the gateway, which the NAT maps to the host's loopback, so the
// guest reaches the host and not itself.
//
// Messages (RFC 1035 4.1): a 12-byte header, then questions. Only queries
// with exactly one question are answered; others get FORMERR. The number of
// lookups in flight is bounded: beyond it queries are dropped (the guest's
// resolver retries), so a flood cannot queue unbounded work.

import type { Socket } from "node:dgram";
import { nodeDgram, nodeDns } from "../../lazy-builtins.js";
import { parseIpv4Address } from "../packet.js";

const TYPE_A = 1;
const TYPE_AAAA = 28;
const CLASS_IN = 1;

const RCODE_FORMERR = 1;
const RCODE_SERVFAIL = 2;
const RCODE_NXDOMAIN = 3;
const RCODE_NOTIMP = 4;

/** Answers are short-lived: the host's view may change. */
const ANSWER_TTL_S = 60;
const MAX_IN_FLIGHT = 64;
const FORWARD_TIMEOUT_MS = 5_000;

export interface DnsStats {
  queries: number;
  answered: number;
  nxdomain: number;
  failed: number;
  forwarded: number;
  malformed: number;
  dropped: number;
}

interface Question {
  name: string;
  type: number;
  cls: number;
  /** Where the question section ends in the query. */
  end: number;
}

export class DnsProxy {
  readonly stats: DnsStats = { queries: 0, answered: 0, nxdomain: 0, failed: 0, forwarded: 0, malformed: 0, dropped: 0 };
  private inFlight = 0;
  private forwarder: Socket | undefined;
  private readonly pendingForwards = new Map<number, { reply: (p: Uint8Array) => void; timer: NodeJS.Timeout; id: number }>();
  private nextForwardId = 1;
  private closed = false;

  constructor(
    /** The address a host-loopback answer is rewritten to (the gateway). */
    private readonly hostAlias: number,
  ) {}

  /** A query from the guest; `reply` gets the answer's UDP payload (maybe later, maybe never). */
  query(q: Uint8Array, reply: (answer: Uint8Array) => void): void {
    this.stats.queries++;
    if (q.length < 12 || q[2] & 0x80) {
      this.stats.malformed++; // too short for a header, or a response
      return;
    }
    if (this.inFlight >= MAX_IN_FLIGHT) {
      this.stats.dropped++;
      return;
    }
    const opcode = (q[2] >> 3) & 0x0f;
    const qdcount = (q[4] << 8) | q[5];
    const question = qdcount === 1 ? parseQuestion(q, 12) : undefined;
    if (opcode !== 0 || !question) {
      this.stats.malformed++;
      reply(response(q, question, opcode !== 0 ? RCODE_NOTIMP : RCODE_FORMERR, []));
      return;
    }
    this.inFlight++;
    const done = (answer: Uint8Array) => {
      this.inFlight--;
      if (!this.closed) reply(answer);
    };
    if (question.cls === CLASS_IN && (question.type === TYPE_A || question.type === TYPE_AAAA)) this.resolve(q, question, done);
    else this.forward(q, question, done);
  }

  close(): void {
    this.closed = true;
    for (const p of this.pendingForwards.values()) clearTimeout(p.timer);
    this.pendingForwards.clear();
    this.forwarder?.close();
    this.forwarder = undefined;
  }

  private resolve(q: Uint8Array, question: Question, done: (a: Uint8Array) => void): void {
    const family = question.type === TYPE_A ? 4 : 6;
    nodeDns().promises.lookup(question.name, { all: true, family }).then(
      (addresses) => {
        const records = addresses.map((a) => this.rdata(a.address, family)).filter((r): r is Uint8Array => r !== undefined);
        this.stats.answered++;
        done(response(q, question, 0, records));
      },
      (e: NodeJS.ErrnoException) => {
        // ENOTFOUND: the name does not exist; ENODATA: it exists without this type (an empty answer).
        if (e.code === "ENOTFOUND") this.stats.nxdomain++;
        else if (e.code !== "ENODATA") this.stats.failed++;
        const rcode = e.code === "ENOTFOUND" ? RCODE_NXDOMAIN : e.code === "ENODATA" ? 0 : RCODE_SERVFAIL;
        done(response(q, question, rcode, []));
      },
    );
  }

  private rdata(address: string, family: 4 | 6): Uint8Array | undefined {
    if (family === 4) {
      let ip = parseIpv4Address(address);
      if (ip === undefined) return undefined;
      if (ip >>> 24 === 127) ip = this.hostAlias;
      return Uint8Array.of(ip >>> 24, (ip >>> 16) & 0xff, (ip >>> 8) & 0xff, ip & 0xff);
    }
    if (address === "::1") return undefined; // the guest's own loopback is not the host's: leave it out
    return ipv6Bytes(address);
  }

  /** Sends the query as it is to the host's first name server, under a fresh ID. */
  private forward(q: Uint8Array, question: Question, done: (a: Uint8Array) => void): void {
    const server = nodeDns().getServers().find((s) => parseIpv4Address(s) !== undefined);
    if (!server) {
      this.stats.failed++;
      done(response(q, question, RCODE_NOTIMP, []));
      return;
    }
    if (!this.forwarder) {
      this.forwarder = nodeDgram().createSocket("udp4");
      this.forwarder.on("error", () => {});
      this.forwarder.on("message", (m) => this.forwardReply(m));
    }
    const id = this.nextForwardId;
    this.nextForwardId = (this.nextForwardId % 0xffff) + 1;
    const out = Buffer.from(q);
    out[0] = id >> 8;
    out[1] = id & 0xff;
    const timer = setTimeout(() => {
      this.pendingForwards.delete(id);
      this.stats.failed++;
      done(response(q, question, RCODE_SERVFAIL, []));
    }, FORWARD_TIMEOUT_MS);
    this.pendingForwards.set(id, { reply: done, timer, id: (q[0] << 8) | q[1] });
    this.stats.forwarded++;
    this.forwarder.send(out, 53, server);
  }

  private forwardReply(m: Buffer): void {
    if (m.length < 12) return;
    const pending = this.pendingForwards.get((m[0] << 8) | m[1]);
    if (!pending) return;
    this.pendingForwards.delete((m[0] << 8) | m[1]);
    clearTimeout(pending.timer);
    const answer = Uint8Array.from(m);
    answer[0] = pending.id >> 8;
    answer[1] = pending.id & 0xff;
    pending.reply(answer);
  }
}

/** The question at `offset` (RFC 1035 4.1.2); names in a question carry no compression pointers. */
function parseQuestion(q: Uint8Array, offset: number): Question | undefined {
  const labels: string[] = [];
  let i = offset;
  let nameLength = 0;
  for (;;) {
    if (i >= q.length) return undefined;
    const len = q[i++];
    if (len === 0) break;
    if (len > 63 || i + len > q.length) return undefined; // a pointer (0xc0) or an overlong label
    nameLength += len + 1;
    if (nameLength > 255) return undefined;
    const label = Buffer.from(q.subarray(i, i + len)).toString("latin1");
    if (!/^[A-Za-z0-9_-]+$/.test(label)) return undefined;
    labels.push(label);
    i += len;
  }
  if (i + 4 > q.length || labels.length === 0) return undefined;
  return { name: labels.join("."), type: (q[i] << 8) | q[i + 1], cls: (q[i + 2] << 8) | q[i + 3], end: i + 4 };
}

/** A response to `q`: its header with QR, RA and `rcode`, its question, and one answer per record. */
function response(q: Uint8Array, question: Question | undefined, rcode: number, records: Uint8Array[]): Uint8Array {
  const questionBytes = question ? q.subarray(12, question.end) : new Uint8Array(0);
  const answers = records.map((rdata) => {
    const rr = new Uint8Array(12 + rdata.length);
    rr.set([0xc0, 12, question!.type >> 8, question!.type & 0xff, 0, CLASS_IN]); // name: a pointer to the question's
    rr.set([ANSWER_TTL_S >>> 24, (ANSWER_TTL_S >>> 16) & 0xff, (ANSWER_TTL_S >>> 8) & 0xff, ANSWER_TTL_S & 0xff], 6);
    rr[10] = rdata.length >> 8;
    rr[11] = rdata.length & 0xff;
    rr.set(rdata, 12);
    return rr;
  });
  const size = 12 + questionBytes.length + answers.reduce((n, a) => n + a.length, 0);
  const r = new Uint8Array(size);
  r[0] = q[0];
  r[1] = q[1];
  r[2] = 0x80 | (q[2] & 0x79); // QR, the opcode and RD as asked; AA and TC clear
  r[3] = 0x80 | rcode; // RA
  r[5] = question ? 1 : 0;
  r[6] = answers.length >> 8;
  r[7] = answers.length & 0xff;
  r.set(questionBytes, 12);
  let at = 12 + questionBytes.length;
  for (const a of answers) {
    r.set(a, at);
    at += a.length;
  }
  return r;
}

function ipv6Bytes(address: string): Uint8Array | undefined {
  const halves = address.split("::");
  if (halves.length > 2 || address.includes(".")) return undefined;
  const head = halves[0] ? halves[0].split(":") : [];
  const tail = halves.length === 2 && halves[1] ? halves[1].split(":") : [];
  const groups = halves.length === 2 ? [...head, ...Array(8 - head.length - tail.length).fill("0"), ...tail] : head;
  if (groups.length !== 8 || groups.some((g) => !/^[0-9a-fA-F]{1,4}$/.test(g))) return undefined;
  const b = new Uint8Array(16);
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    b[2 * i] = v >> 8;
    b[2 * i + 1] = v & 0xff;
  });
  return b;
}
