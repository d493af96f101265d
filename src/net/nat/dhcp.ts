// The user-mode network's DHCP server (RFC 2131, options from RFC 2132): it
// gives each guest card its address, the route and the DNS server, as QEMU's
// slirp does with 10.0.2.15, gateway 10.0.2.2 and DNS 10.0.2.3.
//
// Addresses are leased per client hardware address (chaddr), which must equal
// the frame's Ethernet source: a guest cannot take leases for other cards.
// An offer holds its address only briefly; a lease is taken by REQUEST. The
// table is bounded by the pool, so a flood of DISCOVERs or of REQUESTs from
// made-up addresses cannot grow memory: once the pool is full, new clients go
// unanswered (counted) until leases expire or are released.

import { macKey, macString, readU32, writeU32 } from "../packet.js";

/** Message types (RFC 2132 9.6). */
const DHCPDISCOVER = 1;
const DHCPOFFER = 2;
const DHCPREQUEST = 3;
const DHCPDECLINE = 4;
const DHCPACK = 5;
const DHCPNAK = 6;
const DHCPRELEASE = 7;
const DHCPINFORM = 8;

/** Option codes (RFC 2132). */
const OPT_PAD = 0;
const OPT_SUBNET_MASK = 1;
const OPT_ROUTER = 3;
const OPT_DNS = 6;
const OPT_DOMAIN_NAME = 15;
const OPT_BROADCAST = 28;
const OPT_REQUESTED_IP = 50;
const OPT_LEASE_TIME = 51;
const OPT_MESSAGE_TYPE = 53;
const OPT_SERVER_ID = 54;
const OPT_END = 255;

/** The fixed BOOTP part (RFC 2131 2, figure 1) up to the magic cookie, then the cookie. */
const FIXED_LEN = 236;
const MAGIC_COOKIE = 0x63825363;
const BOOTREQUEST = 1;
const BOOTREPLY = 2;
/** The broadcast bit of `flags` (RFC 2131 4.1): the client cannot receive unicast yet. */
const FLAG_BROADCAST = 0x8000;

/** How long an OFFER keeps its address for the client that was offered it. */
const OFFER_HOLD_MS = 30_000;

export interface DhcpConfig {
  /** The server's address (the gateway), network mask, router and DNS server. */
  server: number;
  netmask: number;
  router: number;
  dns: number;
  /** The first address handed out and how many there are. */
  poolStart: number;
  poolSize: number;
  leaseSeconds: number;
  domain?: string;
}

export interface DhcpReply {
  /** The reply's UDP payload. */
  payload: Uint8Array;
  /** Send to the broadcast address (the client asked for it, or has no address yet). */
  broadcast: boolean;
  /** The address the reply is for (the client's new address, or its current one). */
  yiaddr: number;
}

export interface DhcpStats {
  discovers: number;
  offers: number;
  requests: number;
  acks: number;
  naks: number;
  releases: number;
  /** Messages not answered: malformed, chaddr not the frame's source, pool exhausted. */
  malformed: number;
  spoofed: number;
  poolExhausted: number;
}

interface Lease {
  mac: Uint8Array;
  ip: number;
  /** Offered but not yet requested: freed at this time. Bound: expires at this time. */
  expires: number;
  bound: boolean;
}

export class DhcpServer {
  readonly stats: DhcpStats = { discovers: 0, offers: 0, requests: 0, acks: 0, naks: 0, releases: 0, malformed: 0, spoofed: 0, poolExhausted: 0 };
  private readonly byMac = new Map<number, Lease>();
  private readonly byIp = new Map<number, Lease>();

  constructor(
    private readonly config: DhcpConfig,
    /** Called when a lease is bound (ACK) or ends: the switch lets the card use only this address. */
    private readonly onLease: (mac: Uint8Array, ip: number | undefined) => void = () => {},
    private readonly now: () => number = Date.now,
  ) {}

  /** The bound leases, for `vm info` and the tests. */
  leases(): { mac: string; ip: number; expiresInS: number }[] {
    const t = this.now();
    return [...this.byMac.values()].filter((l) => l.bound && l.expires > t)
      .map((l) => ({ mac: macString(l.mac), ip: l.ip, expiresInS: Math.round((l.expires - t) / 1000) }));
  }

  /** The address leased to `mac`, if any. */
  addressOf(mac: Uint8Array): number | undefined {
    const l = this.byMac.get(macKey(mac));
    return l && l.bound && l.expires > this.now() ? l.ip : undefined;
  }

  /**
   * A BOOTREQUEST from a client whose frame came from `srcMac`; the reply to
   * send, or undefined when none is due (malformed, spoofed, pool exhausted,
   * or a message that takes no reply).
   */
  handle(srcMac: Uint8Array, p: Uint8Array): DhcpReply | undefined {
    if (p.length < FIXED_LEN + 4 || p[0] !== BOOTREQUEST || p[1] !== 1 || p[2] !== 6 || readU32(p, FIXED_LEN) !== MAGIC_COOKIE) {
      this.stats.malformed++;
      return undefined;
    }
    const chaddr = p.subarray(28, 34);
    if (macKey(chaddr) !== macKey(srcMac)) {
      this.stats.spoofed++;
      return undefined;
    }
    const options = parseOptions(p.subarray(FIXED_LEN + 4));
    const type = options?.get(OPT_MESSAGE_TYPE)?.[0];
    if (!options || type === undefined) {
      this.stats.malformed++;
      return undefined;
    }
    this.expire();
    const broadcast = ((p[10] << 8) | p[11]) & FLAG_BROADCAST ? true : false;
    const requested = optionAddress(options.get(OPT_REQUESTED_IP));
    const ciaddr = readU32(p, 12);
    switch (type) {
      case DHCPDISCOVER: {
        this.stats.discovers++;
        const lease = this.offer(srcMac, requested);
        if (!lease) return undefined;
        this.stats.offers++;
        return this.reply(p, DHCPOFFER, lease.ip, broadcast);
      }
      case DHCPREQUEST: {
        this.stats.requests++;
        // RFC 2131 4.3.2: in SELECTING the client names the server; a REQUEST for another server's offer is not ours.
        const serverId = optionAddress(options.get(OPT_SERVER_ID));
        if (serverId !== undefined && serverId !== this.config.server) {
          this.release(srcMac);
          return undefined;
        }
        const want = requested ?? ciaddr;
        const lease = this.byMac.get(macKey(srcMac));
        if (want === 0 || !this.inPool(want) || (lease ? lease.ip !== want : this.byIp.has(want))) {
          // INIT-REBOOT or RENEWING with an address we cannot give: NAK, the client starts over.
          this.stats.naks++;
          return this.reply(p, DHCPNAK, 0, true);
        }
        const bound = lease ?? this.take(srcMac, want);
        if (!bound) return undefined;
        bound.bound = true;
        bound.expires = this.now() + this.config.leaseSeconds * 1000;
        this.stats.acks++;
        this.onLease(bound.mac, bound.ip);
        return this.reply(p, DHCPACK, bound.ip, broadcast);
      }
      case DHCPDECLINE:
      case DHCPRELEASE:
        this.stats.releases++;
        this.release(srcMac);
        return undefined;
      case DHCPINFORM:
        // RFC 2131 3.4: the client has an address; send the parameters only, no lease.
        this.stats.acks++;
        return this.reply(p, DHCPACK, 0, false, ciaddr);
      default:
        this.stats.malformed++;
        return undefined;
    }
  }

  private inPool(ip: number): boolean {
    return ip >= this.config.poolStart && ip < this.config.poolStart + this.config.poolSize;
  }

  /** The client's lease or held offer, else a free address (the requested one when free). */
  private offer(mac: Uint8Array, requested: number | undefined): Lease | undefined {
    const existing = this.byMac.get(macKey(mac));
    if (existing) {
      if (!existing.bound) existing.expires = this.now() + OFFER_HOLD_MS;
      return existing;
    }
    let ip = requested !== undefined && this.inPool(requested) && !this.byIp.has(requested) ? requested : undefined;
    for (let i = 0; ip === undefined && i < this.config.poolSize; i++) {
      const candidate = this.config.poolStart + i;
      if (!this.byIp.has(candidate)) ip = candidate;
    }
    if (ip === undefined) {
      this.stats.poolExhausted++;
      return undefined;
    }
    return this.take(mac, ip, this.now() + OFFER_HOLD_MS);
  }

  private take(mac: Uint8Array, ip: number, expires = this.now()): Lease | undefined {
    if (this.byIp.has(ip)) return undefined;
    const lease: Lease = { mac: Uint8Array.from(mac), ip, expires, bound: false };
    this.byMac.set(macKey(mac), lease);
    this.byIp.set(ip, lease);
    return lease;
  }

  private release(mac: Uint8Array): void {
    const lease = this.byMac.get(macKey(mac));
    if (!lease) return;
    this.byMac.delete(macKey(mac));
    this.byIp.delete(lease.ip);
    if (lease.bound) this.onLease(lease.mac, undefined);
  }

  private expire(): void {
    const t = this.now();
    for (const lease of this.byMac.values()) if (lease.expires <= t) this.release(lease.mac);
  }

  /** A BOOTREPLY to `request` (RFC 2131 4.3.1 table 3 for the fields). */
  private reply(request: Uint8Array, type: number, yiaddr: number, broadcast: boolean, ciaddr = 0): DhcpReply {
    const c = this.config;
    const opts: number[] = [OPT_MESSAGE_TYPE, 1, type, OPT_SERVER_ID, 4, ...u32(c.server)];
    if (type !== DHCPNAK) {
      if (type !== DHCPACK || yiaddr !== 0) opts.push(OPT_LEASE_TIME, 4, ...u32(c.leaseSeconds));
      opts.push(OPT_SUBNET_MASK, 4, ...u32(c.netmask), OPT_ROUTER, 4, ...u32(c.router), OPT_DNS, 4, ...u32(c.dns));
      opts.push(OPT_BROADCAST, 4, ...u32((c.server & c.netmask) | (~c.netmask >>> 0)));
      if (c.domain) {
        const d = Buffer.from(c.domain.slice(0, 255));
        opts.push(OPT_DOMAIN_NAME, d.length, ...d);
      }
    }
    opts.push(OPT_END);
    const p = new Uint8Array(FIXED_LEN + 4 + opts.length);
    p[0] = BOOTREPLY;
    p[1] = 1;
    p[2] = 6;
    p.set(request.subarray(4, 8), 4); // xid
    p.set(request.subarray(10, 12), 10); // flags
    writeU32(p, 12, ciaddr);
    writeU32(p, 16, yiaddr);
    writeU32(p, 20, c.server); // siaddr
    p.set(request.subarray(24, 44), 24); // giaddr, chaddr
    writeU32(p, FIXED_LEN, MAGIC_COOKIE);
    p.set(opts, FIXED_LEN + 4);
    return { payload: p, broadcast, yiaddr: yiaddr || ciaddr };
  }
}

function u32(v: number): number[] {
  return [v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
}

/** Options (RFC 2132 2): code, length, value; pad and end. Undefined when an option runs past the end. */
function parseOptions(p: Uint8Array): Map<number, Uint8Array> | undefined {
  const options = new Map<number, Uint8Array>();
  let i = 0;
  while (i < p.length) {
    const code = p[i++];
    if (code === OPT_PAD) continue;
    if (code === OPT_END) return options;
    if (i >= p.length) return undefined;
    const len = p[i++];
    if (i + len > p.length) return undefined;
    if (!options.has(code)) options.set(code, p.subarray(i, i + len));
    i += len;
  }
  return options; // no END option: tolerated, as most servers do
}

function optionAddress(v: Uint8Array | undefined): number | undefined {
  return v && v.length === 4 ? readU32(v, 0) : undefined;
}
