// A virtual L2 switch inside the host: a learning bridge (IEEE 802.1Q clause
// 8.7 "learning process", 8.8 "filtering database") whose ports are VMs'
// network cards and trusted uplinks (the NAT, VXLAN tunnels).
//
// - Learning: the source MAC of every accepted frame is remembered against
//   its ingress port, per VLAN, and forgotten after the aging time (300 s by
//   default, as Linux bridges and 802.1Q 8.8.3's recommended default).
// - Forwarding: unicast to a learned MAC goes to that port alone; broadcast,
//   multicast and unknown unicast are flooded to every other port of the VLAN;
//   nothing goes back out of its ingress port.
// - VLANs: every port is an access port (802.1Q 6.9: the switch tags and
//   untags at the port), so frames on the switch are untagged and belong to
//   the VLAN of their ingress port. Ports without a VLAN form one more segment
//   of their own. There are no trunk ports, so a frame arriving with a tag is
//   refused on every port: a guest cannot hop VLANs by tagging (or double
//   tagging) its frames.
// - Anti-spoofing, as clouds bind a VM's port: a port with a MAC belongs to a
//   VM and may only send frames (and ARP) from that MAC; once the NAT's DHCP
//   gave it an address (allowIp), its ARP and IPv4 must carry that address.
//   A port without a MAC is a trusted uplink that forwards others' frames.
// - Everything that arrives from a port is untrusted bytes: refused frames are
//   counted by reason on the port, never thrown.
//
// The switch keeps no timers: aging is done lazily on the injectable clock, so
// an idle switch costs nothing and tests drive time by hand.

import { GSO_TCPV4, GSO_TCPV6, MAX_FRAME_BYTES, MAX_GSO_FRAME_BYTES, type FrameMeta, type Offloads } from "../backends/net/net-backend.js";
// The same cutting and checksum completion the card does for a guest without offloads.
import { completeChecksum, segmentTcp } from "../devices/virtio/net-offload.js";
import {
  ETH_HLEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_VLAN, IPPROTO_UDP,
  ipv4String, isMulticastMac, macKey, macString, parseArp, parseIpv4Address, readU32,
} from "./packet.js";
import { RateLimiter, monotonicClock, type Clock, type RateLimiterConfig } from "./rate-limiter.js";

/** 802.1ad S-tag and the pre-standard QinQ tag: tagged frames too, refused like 802.1Q ones. */
const ETHERTYPE_QINQ = 0x88a8;
const ETHERTYPE_QINQ_OLD = 0x9100;

const DHCP_CLIENT_PORT = 68;
const DHCP_SERVER_PORT = 67;

/** Why the switch refused a frame; the keys of PortCounters.drops. */
export const DROP_REASONS = [
  /** Shorter than an Ethernet header. */
  "runt",
  /** Longer than MAX_FRAME_BYTES. */
  "oversized",
  /** Carries an 802.1Q / 802.1ad tag: the switch has only access ports. */
  "vlan-tag",
  /** Group or all-zero source MAC: no station sends from those (802.3 3.2.3). */
  "invalid-source",
  /** A VM's port sending (or ARPing) from another MAC. */
  "spoofed-mac",
  /** A VM's port sending ARP or IPv4 from an address it was not given. */
  "spoofed-ip",
  /** An ARP or IPv4 header too short or malformed to check its source. */
  "malformed",
  /** To an IEEE reserved link-local group (01:80:c2:00:00:0x): bridges never forward those (802.1Q 8.6.3). */
  "link-local",
  /** Over the port's ingress rate limit (port -> switch). */
  "rate-limit-in",
  /** Over the port's egress rate limit (switch -> port). */
  "rate-limit-out",
  /** Unicast to a MAC learned on the ingress port itself: its owner already saw it. */
  "own-port",
  /** The port's receiver could not take the frame (a guest with no receive buffers). */
  "port-busy",
] as const;
export type DropReason = (typeof DROP_REASONS)[number];

/** One port's counters: plain numbers, ready for `--stats`, `vm info` and metrics. */
export interface PortCounters {
  /** Frames (and their bytes) the switch accepted from the port. */
  inFrames: number;
  inBytes: number;
  /** Frames (and their bytes) the switch handed to the port. */
  outFrames: number;
  outBytes: number;
  drops: Record<DropReason, number>;
}

export interface PortRateLimits {
  /** Port -> switch: for a VM's card, what the guest transmits. */
  ingress?: RateLimiterConfig;
  /** Switch -> port: for a VM's card, what the guest receives. */
  egress?: RateLimiterConfig;
}

export interface PortOptions {
  /** Unique on the switch; shown in stats and `vm info`. */
  name: string;
  /**
   * The MAC of the VM's card behind this port: sets anti-spoofing on, and
   * the MAC is bound to the port as a static entry (it never ages and never
   * moves, so no other port can take a VM's traffic by sending from its MAC).
   * Absent for trusted uplinks.
   */
  mac?: Uint8Array;
  /** 802.1Q VLAN ID 1..4094 of an access port; absent: the untagged segment. */
  vlan?: number;
  rateLimit?: PortRateLimits;
  /**
   * What the port takes whole (a VM's card takes super-frames and partial
   * checksums, FrameMeta): a frame that arrives with such metadata reaches
   * ports that take it as it is, and others as ordinary frames, cut and
   * checksummed once per frame. Absent: ordinary frames only.
   */
  offloads?: Offloads;
  /**
   * Switch -> port: one frame, valid after the call but shared with the other
   * ports a flood reaches, so it must not be modified. Returning false says
   * the receiver could not take it (counted as "port-busy"). `meta` comes
   * only to a port whose `offloads` take it.
   */
  deliver(frame: Uint8Array, meta?: FrameMeta): boolean | void;
}

export interface SwitchOptions {
  /** Learned MACs the whole switch holds (static VM MACs not included). Default 8192. */
  macTableCapacity?: number;
  /** Learned MACs one port may hold. Default: a quarter of the capacity. */
  maxMacsPerPort?: number;
  /** Milliseconds after which an unrefreshed entry is forgotten. Default 300 s. */
  agingMs?: number;
  /** Milliseconds, monotonic; tests pass a hand-driven one. */
  now?: Clock;
}

/** One row of the MAC table, for `vm info`. */
export interface MacTableEntry {
  mac: string;
  port: string;
  vlan: number | undefined;
  /** Milliseconds since the MAC last sent a frame (0 for static entries). */
  ageMs: number;
  /** A VM's own MAC, bound to its port. */
  static: boolean;
}

interface Entry {
  readonly mac: Uint8Array;
  readonly key: number;
  port: SwitchPort;
  lastSeen: number;
  readonly isStatic: boolean;
}

/** The segment a VLAN ID names: the untagged ports are segment 0. */
const segmentOf = (vlan: number | undefined): number => vlan ?? 0;

export class SwitchPort {
  readonly name: string;
  readonly mac: Uint8Array | undefined;
  readonly vlan: number | undefined;
  readonly counters: PortCounters = {
    inFrames: 0, inBytes: 0, outFrames: 0, outBytes: 0,
    drops: Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReason, number>,
  };
  /** @internal Learned entries of this port, oldest (least recently seen) first. */
  readonly learned = new Set<Entry>();
  /** @internal */
  readonly ingressLimiter: RateLimiter | undefined;
  /** @internal */
  readonly egressLimiter: RateLimiter | undefined;
  /** @internal */
  readonly deliverFn: (frame: Uint8Array, meta?: FrameMeta) => boolean | void;
  readonly offloads: Offloads | undefined;
  private allowed: number | undefined;
  private detached = false;

  /** @internal Created by VirtualSwitch.attach. */
  constructor(private readonly owner: VirtualSwitch, opts: PortOptions, now: Clock) {
    this.name = opts.name;
    this.mac = opts.mac && Uint8Array.from(opts.mac.subarray(0, 6));
    this.vlan = opts.vlan;
    this.deliverFn = opts.deliver;
    this.offloads = opts.offloads;
    this.ingressLimiter = opts.rateLimit?.ingress && new RateLimiter(opts.rateLimit.ingress, now);
    this.egressLimiter = opts.rateLimit?.egress && new RateLimiter(opts.rateLimit.egress, now);
  }

  get switch(): VirtualSwitch {
    return this.owner;
  }

  get attached(): boolean {
    return !this.detached;
  }

  /** The IPv4 address the port may send from (a number), once the NAT's DHCP gave it one. */
  get allowedIp(): number | undefined {
    return this.allowed;
  }

  set allowedIp(ip: number | undefined) {
    this.allowIp(ip);
  }

  /**
   * From now on the port's ARP must carry `ip` as sender address and its IPv4
   * packets `ip` as source. DHCP from 0.0.0.0 stays allowed: a client that
   * restarts asks again from there (RFC 2131 4.4, INIT and INIT-REBOOT).
   * undefined lifts the restriction. Only for a VM's port (one with a MAC).
   */
  allowIp(ip: number | string | undefined): void {
    if (ip === undefined) {
      this.allowed = undefined;
      return;
    }
    const value = typeof ip === "string" ? parseIpv4Address(ip) : ip;
    if (value === undefined || !Number.isInteger(value) || value < 0 || value > 0xffffffff) {
      throw new RangeError(`switch port ${this.name}: not an IPv4 address: ${ip}`);
    }
    if (!this.mac) throw new Error(`switch port ${this.name}: an uplink (a port without a MAC) has no address to enforce`);
    this.allowed = value >>> 0;
  }

  /**
   * Port -> switch: one Ethernet frame (copied). False when the switch
   * refused it (counted). `meta` only from a port whose `offloads` say it
   * sends such frames (a VM's card, which checked the super-frame's headers).
   */
  input(frame: Uint8Array, meta?: FrameMeta): boolean {
    if (this.detached) return false;
    if (meta && !takes(this.offloads, meta)) {
      this.counters.drops.malformed++;
      return false;
    }
    return this.owner.receive(this, frame, meta);
  }

  /** Leaves the switch; its MAC entries go with it. Idempotent. */
  detach(): void {
    if (this.detached) return;
    this.detached = true;
    this.owner.remove(this);
  }

  /** A one-line summary of the counters that are not zero, for logs. */
  describeCounters(): string {
    const c = this.counters;
    const drops = Object.entries(c.drops).filter(([, n]) => n > 0).map(([r, n]) => `${r}=${n}`);
    const ip = this.allowed === undefined ? "" : ` ip=${ipv4String(this.allowed)}`;
    return `${this.name}${ip}: in ${c.inFrames} frames ${c.inBytes} bytes, out ${c.outFrames} frames ${c.outBytes} bytes` +
      (drops.length ? `, dropped ${drops.join(" ")}` : "");
  }
}

export class VirtualSwitch {
  readonly macTableCapacity: number;
  readonly maxMacsPerPort: number;
  readonly agingMs: number;
  private readonly now: Clock;
  private readonly portList: SwitchPort[] = [];
  /** Ports by segment, for flooding. */
  private readonly segments = new Map<number, SwitchPort[]>();
  /** The filtering database: segment -> MAC key -> entry (learned and static). */
  private readonly table = new Map<number, Map<number, Entry>>();
  private learnedCount = 0;
  private lastSweep: number;

  constructor(readonly name: string, opts: SwitchOptions = {}) {
    this.macTableCapacity = opts.macTableCapacity ?? 8192;
    this.maxMacsPerPort = opts.maxMacsPerPort ?? Math.max(1, Math.floor(this.macTableCapacity / 4));
    this.agingMs = opts.agingMs ?? 300_000;
    this.now = opts.now ?? monotonicClock;
    if (!(Number.isInteger(this.macTableCapacity) && this.macTableCapacity >= 1)) {
      throw new RangeError(`switch ${name}: the MAC table capacity must be a whole number >= 1`);
    }
    if (!(Number.isInteger(this.maxMacsPerPort) && this.maxMacsPerPort >= 1 && this.maxMacsPerPort <= this.macTableCapacity)) {
      throw new RangeError(`switch ${name}: MACs per port must be a whole number from 1 to the table capacity`);
    }
    if (!(this.agingMs > 0)) throw new RangeError(`switch ${name}: the aging time must be > 0`);
    this.lastSweep = this.now();
  }

  get ports(): readonly SwitchPort[] {
    return this.portList;
  }

  /** Plugs a port in. Throws (one line) for a duplicate name, a bad MAC or VLAN, or a MAC already bound here. */
  attach(opts: PortOptions): SwitchPort {
    const where = `switch ${this.name}`;
    if (!opts.name) throw new Error(`${where}: a port needs a name`);
    if (this.portList.some((p) => p.name === opts.name)) throw new Error(`${where} already has a port named ${opts.name}`);
    if (opts.vlan !== undefined && !(Number.isInteger(opts.vlan) && opts.vlan >= 1 && opts.vlan <= 4094)) {
      throw new RangeError(`${where}: VLAN ID ${opts.vlan} is not in 1..4094`); // 0 and 4095 are reserved (802.1Q 9.6)
    }
    const segment = segmentOf(opts.vlan);
    if (opts.mac) {
      if (opts.mac.length !== 6 || isMulticastMac(opts.mac) || opts.mac.every((b) => b === 0)) {
        throw new RangeError(`${where}: port ${opts.name} needs a unicast, non-zero 6-byte MAC`);
      }
      const holder = this.table.get(segment)?.get(macKey(opts.mac));
      if (holder?.isStatic) throw new Error(`${where}: MAC ${macString(opts.mac)} is already port ${holder.port.name}'s`);
    }
    const port = new SwitchPort(this, opts, this.now);
    this.portList.push(port);
    let members = this.segments.get(segment);
    if (!members) this.segments.set(segment, (members = []));
    members.push(port);
    if (port.mac) {
      const existing = this.lookupEntry(segment, macKey(port.mac));
      if (existing) this.forget(existing); // learned elsewhere before the VM's port existed: the binding wins
      this.tableOf(segment).set(macKey(port.mac), {
        mac: port.mac, key: macKey(port.mac), port, lastSeen: this.now(), isStatic: true,
      });
    }
    return port;
  }

  /** The MAC table, static entries first, for `vm info`. */
  get macTable(): MacTableEntry[] {
    this.sweepExpired(true);
    const now = this.now();
    const rows: MacTableEntry[] = [];
    for (const [segment, entries] of this.table) {
      for (const e of entries.values()) {
        rows.push({
          mac: macString(e.mac), port: e.port.name, vlan: segment === 0 ? undefined : segment,
          ageMs: e.isStatic ? 0 : now - e.lastSeen, static: e.isStatic,
        });
      }
    }
    return rows.sort((a, b) => Number(b.static) - Number(a.static) || a.port.localeCompare(b.port) || a.mac.localeCompare(b.mac));
  }

  /** Learned (not static) entries in the table now. */
  get learnedMacs(): number {
    return this.learnedCount;
  }

  // --- the path of a frame ---

  /** @internal SwitchPort.input: checks, learns, forwards. */
  receive(port: SwitchPort, frame: Uint8Array, meta?: FrameMeta): boolean {
    const refused = this.checkIngress(port, frame, meta);
    if (refused) {
      port.counters.drops[refused]++;
      return false;
    }
    // Copy once: the sender may reuse its buffer, and the receivers may keep
    // theirs. (Not frame.slice(): on a Node Buffer that is a view, not a copy.)
    const copy = new Uint8Array(frame);
    port.counters.inFrames++;
    port.counters.inBytes += copy.length;
    const segment = segmentOf(port.vlan);
    this.learn(port, segment, copy);
    const out = new Outgoing(copy, meta);
    if (isMulticastMac(copy, 0)) {
      this.flood(port, segment, out);
      return true;
    }
    const target = this.lookupEntry(segment, macKey(copy, 0));
    if (!target) this.flood(port, segment, out);
    else if (target.port === port) port.counters.drops["own-port"]++;
    else this.send(target.port, out);
    return true;
  }

  /** Every reason to refuse a frame from `port`, cheapest first; undefined to accept it. */
  private checkIngress(port: SwitchPort, frame: Uint8Array, meta: FrameMeta | undefined): DropReason | undefined {
    // A frame without FCS may be shorter than Ethernet's 60-byte minimum (virtio
    // does not pad; Linux sends 42-byte ARP), so "runt" is only what has no header.
    if (frame.length < ETH_HLEN) return "runt";
    if (frame.length > (meta?.gsoType ? MAX_GSO_FRAME_BYTES : MAX_FRAME_BYTES)) return "oversized";
    // Policed before any other look at the frame, as OVS polices all that arrives at an interface.
    if (port.ingressLimiter && !port.ingressLimiter.allow(frame.length)) return "rate-limit-in";
    const type = (frame[12] << 8) | frame[13];
    if (type === ETHERTYPE_VLAN || type === ETHERTYPE_QINQ || type === ETHERTYPE_QINQ_OLD) return "vlan-tag";
    if (isMulticastMac(frame, 6) || macKey(frame, 6) === 0) return "invalid-source";
    if (port.mac) {
      const refused = this.checkSource(port, port.mac, frame, type);
      if (refused) return refused;
    }
    if (frame[0] === 0x01 && frame[1] === 0x80 && frame[2] === 0xc2 && frame[3] === 0 && frame[4] === 0 && (frame[5] & 0xf0) === 0) {
      return "link-local";
    }
    return undefined;
  }

  /** Anti-spoofing for a VM's port: its MAC, and once it has an address, its ARP and IPv4 sources. */
  private checkSource(port: SwitchPort, mac: Uint8Array, frame: Uint8Array, type: number): DropReason | undefined {
    if (macKey(frame, 6) !== macKey(mac)) return "spoofed-mac";
    const ip = port.allowedIp;
    if (type === ETHERTYPE_ARP) {
      const arp = parseArp(frame.subarray(ETH_HLEN));
      if (!arp) return "malformed";
      if (macKey(arp.senderMac) !== macKey(mac)) return "spoofed-mac";
      // Sender 0.0.0.0 is an ARP probe (RFC 5227 2.1.1), sent before an address is in use.
      if (ip !== undefined && arp.senderIp !== ip && arp.senderIp !== 0) return "spoofed-ip";
      return undefined;
    }
    if (type === ETHERTYPE_IPV4 && ip !== undefined) {
      const p = frame.subarray(ETH_HLEN);
      if (p.length < 20 || p[0] >> 4 !== 4) return "malformed";
      const src = readU32(p, 12);
      if (src === ip) return undefined;
      return src === 0 && isDhcpFromClient(p) ? undefined : "spoofed-ip";
    }
    // IPv6 and other protocols are not filtered by address: the NAT hands out only IPv4 ones.
    return undefined;
  }

  private flood(ingress: SwitchPort, segment: number, out: Outgoing): void {
    const members = this.segments.get(segment);
    if (!members) return;
    // A copy of the list: a receiver may detach a port (or itself) while we deliver.
    for (const p of members.slice()) if (p !== ingress && p.attached) this.send(p, out);
  }

  private send(port: SwitchPort, out: Outgoing): void {
    if (port.egressLimiter && !port.egressLimiter.allow(out.frame.length)) {
      port.counters.drops["rate-limit-out"]++;
      return;
    }
    const whole = !out.meta || takes(port.offloads, out.meta);
    const frames = whole ? [out.frame] : out.plain();
    if (!frames) {
      port.counters.drops.malformed++;
      return;
    }
    for (const frame of frames) {
      if (port.deliverFn(frame, whole ? out.meta : undefined) === false) {
        port.counters.drops["port-busy"]++;
        continue;
      }
      port.counters.outFrames++;
      port.counters.outBytes += frame.length;
    }
  }

  // --- the filtering database ---

  /*
   * Bounds, so a port sending from ever new source MACs can neither grow the
   * table without limit nor push other ports' stations out:
   * 1. A port holds at most maxMacsPerPort learned entries; learning one more
   *    forgets that port's own least recently seen entry.
   * 2. The whole table holds at most macTableCapacity learned entries; when it
   *    is full, the least recently seen entry of the port holding the most
   *    entries goes (the learning port's own when it ties for the most). A
   *    single flooding port therefore only ever recycles its own entries, and
   *    a port with few stations keeps them while others flood.
   * Static entries (VMs' own MACs) are outside both bounds: one per port.
   */
  private learn(port: SwitchPort, segment: number, frame: Uint8Array): void {
    const key = macKey(frame, 6);
    const now = this.now();
    const entry = this.lookupEntry(segment, key);
    if (entry) {
      if (entry.isStatic) return; // a VM's MAC stays on its port (see PortOptions.mac)
      if (entry.port !== port) {
        // The station moved (802.1Q 8.7: the entry is updated to the new port).
        entry.port.learned.delete(entry);
        entry.port = port;
      } else if (entry.lastSeen === now) {
        return;
      } else {
        port.learned.delete(entry); // re-inserted below: the port's set stays ordered by last seen
      }
      entry.lastSeen = now;
      port.learned.add(entry);
      return;
    }
    this.sweepExpired(false);
    if (port.learned.size >= this.maxMacsPerPort) this.forget(oldest(port.learned));
    else if (this.learnedCount >= this.macTableCapacity) this.forget(oldest(this.largestHolder(port).learned));
    const added: Entry = { mac: frame.slice(6, 12), key, port, lastSeen: now, isStatic: false };
    this.tableOf(segment).set(key, added);
    port.learned.add(added);
    this.learnedCount++;
  }

  /** The port with the most learned entries; `preferred` when it ties for the most. */
  private largestHolder(preferred: SwitchPort): SwitchPort {
    let largest = preferred;
    for (const p of this.portList) if (p.learned.size > largest.learned.size) largest = p;
    return largest;
  }

  /** The live entry for a MAC: an expired one is forgotten and not returned. */
  private lookupEntry(segment: number, key: number): Entry | undefined {
    const entry = this.table.get(segment)?.get(key);
    if (entry && !entry.isStatic && this.now() - entry.lastSeen >= this.agingMs) {
      this.forget(entry);
      return undefined;
    }
    return entry;
  }

  /**
   * Forgets expired entries. Each port's set is ordered by last seen, so the
   * walk stops at a port's first fresh entry; unless `always`, it runs at most
   * once per second of switch time.
   */
  private sweepExpired(always: boolean): void {
    const now = this.now();
    if (!always && now - this.lastSweep < Math.min(1000, this.agingMs)) return;
    this.lastSweep = now;
    for (const p of this.portList) {
      for (const e of p.learned) {
        if (now - e.lastSeen < this.agingMs) break;
        this.forget(e);
      }
    }
  }

  private forget(entry: Entry | undefined): void {
    if (!entry) return;
    const segment = segmentOf(entry.port.vlan);
    const entries = this.table.get(segment);
    if (entries?.get(entry.key) !== entry) return;
    entries.delete(entry.key);
    if (entries.size === 0) this.table.delete(segment);
    if (!entry.isStatic) {
      entry.port.learned.delete(entry);
      this.learnedCount--;
    }
  }

  private tableOf(segment: number): Map<number, Entry> {
    let entries = this.table.get(segment);
    if (!entries) this.table.set(segment, (entries = new Map()));
    return entries;
  }

  /** @internal SwitchPort.detach. */
  remove(port: SwitchPort): void {
    const i = this.portList.indexOf(port);
    if (i >= 0) this.portList.splice(i, 1);
    const segment = segmentOf(port.vlan);
    const members = this.segments.get(segment);
    if (members) {
      members.splice(members.indexOf(port), 1);
      if (members.length === 0) this.segments.delete(segment);
    }
    for (const e of [...port.learned]) this.forget(e);
    if (port.mac) {
      const own = this.table.get(segment)?.get(macKey(port.mac));
      if (own?.port === port) this.forget(own);
    }
  }
}

/** Whether a port with `offloads` takes a frame with `meta` as it is. */
function takes(offloads: Offloads | undefined, meta: FrameMeta): boolean {
  if (!offloads) return false;
  if (meta.gsoType === GSO_TCPV4) return offloads.tso4 && offloads.csum;
  if (meta.gsoType === GSO_TCPV6) return offloads.tso6 && offloads.csum;
  if (meta.gsoType) return false;
  return !meta.needsCsum || offloads.csum;
}

/**
 * A frame on its way out of the switch, with what it carries beyond its bytes;
 * its ordinary form (segments with complete checksums) is made at most once,
 * for the first port that needs it.
 */
class Outgoing {
  private segments: Uint8Array[] | undefined | null;
  constructor(readonly frame: Uint8Array, readonly meta: FrameMeta | undefined) {}

  /** The frame as ordinary frames; undefined when it cannot be cut (counted by the caller). */
  plain(): Uint8Array[] | undefined {
    if (this.segments === undefined) this.segments = ordinaryFrames(this.frame, this.meta!) ?? null;
    return this.segments ?? undefined;
  }
}

/** A super-frame cut, or a partial checksum completed (on a copy): what a port without offloads takes. */
function ordinaryFrames(frame: Uint8Array, meta: FrameMeta): Uint8Array[] | undefined {
  if (meta.gsoType) {
    const segments = segmentTcp(frame, meta.gsoType, meta.gsoSize ?? 0);
    return typeof segments === "string" ? undefined : segments;
  }
  if (!meta.needsCsum) return [frame];
  const copy = Uint8Array.from(frame);
  return completeChecksum(copy, meta.csumStart ?? 0, meta.csumOffset ?? 0) === undefined ? [copy] : undefined;
}

function oldest(entries: Set<Entry>): Entry {
  return entries.values().next().value as Entry;
}

/** A DHCP client message (UDP 68 -> 67), the one IPv4 packet allowed from 0.0.0.0 (RFC 2131 4.1). */
function isDhcpFromClient(ip: Uint8Array): boolean {
  const headerLength = (ip[0] & 0x0f) * 4;
  if (ip[9] !== IPPROTO_UDP || headerLength < 20 || ip.length < headerLength + 8) return false;
  const srcPort = (ip[headerLength] << 8) | ip[headerLength + 1];
  const dstPort = (ip[headerLength + 2] << 8) | ip[headerLength + 3];
  return srcPort === DHCP_CLIENT_PORT && dstPort === DHCP_SERVER_PORT;
}
