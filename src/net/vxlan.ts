// A VXLAN uplink (RFC 7348): stretches one segment of a virtual switch to
// other hosts (tsvisor or Linux `vxlan` devices) over UDP. This host is a
// VTEP (section 4): it wraps each frame the switch gives it in an 8-byte VXLAN
// header and a UDP datagram to the remote VTEP that has the destination
// MAC, and unwraps the datagrams the remotes send into frames for the switch.
//
// - Unicast to a MAC learned from the tunnel goes to the remote it came
//   from; broadcast, multicast and unknown unicast go to every remote (head-end
//   replication: unicast copies instead of an IP multicast group, section 4.2,
//   as Linux does with a list of remotes).
// - Learning is "inner source MAC -> outer source IP" (section 4.1), bounded
//   and aged like the switch's own table.
// - The uplink is a trusted port of the switch (it forwards the remote side's
//   frames, so it has no MAC of its own to enforce); with `vlan` it is an
//   access port of that VLAN and the tunnel carries that VLAN untagged.
// - Datagrams from an address that is not a configured remote, too short,
//   without the I flag, or with another VNI are dropped and counted: nobody
//   on the network can inject frames by knowing the port.

import { createSocket, type RemoteInfo, type Socket } from "node:dgram";
import { lookup } from "node:dns/promises";
import {
  MAX_QUEUED_BYTES, NetBackendError, defaultWarn, formatHostPort, type HostPort, type WarnFn,
} from "../backends/net/net-backend.js";
import { ETH_HLEN, isMulticastMac, macKey, macString } from "./packet.js";
import { monotonicClock, type Clock } from "./rate-limiter.js";
import type { SwitchPort, VirtualSwitch } from "./switch.js";

/** The IANA-assigned VXLAN port (RFC 7348 section 5, "Destination Port"). */
export const VXLAN_PORT = 4789;
/** The VXLAN header: flags (8 bits), reserved (24), VNI (24), reserved (8); section 5. */
export const VXLAN_HLEN = 8;
/** The I flag: the VNI is valid. It MUST be set; the other flag bits are reserved (section 5). */
const VXLAN_FLAG_VNI = 0x08;
/** The largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP). */
const MAX_DATAGRAM_BYTES = 65507;

export const VXLAN_DROP_REASONS = [
  /** From an address that is not one of the remotes. */
  "unknown-peer",
  /** Shorter than a VXLAN header and an Ethernet header. */
  "too-short",
  /** The I flag is clear. */
  "bad-flags",
  /** Another VXLAN segment's traffic. */
  "wrong-vni",
  /** The switch refused the inner frame (its port counters say why). */
  "refused-by-switch",
  /** A frame too large for one datagram (VXLAN does not fragment, section 4.3). */
  "too-big",
  /** The socket's send queue is full. */
  "congested",
] as const;
export type VxlanDropReason = (typeof VXLAN_DROP_REASONS)[number];

export interface VxlanCounters {
  /** Datagrams received and handed to the switch, and the frames' bytes. */
  inFrames: number;
  inBytes: number;
  /** Datagrams sent (a flooded frame counts once per remote), and the frames' bytes. */
  outDatagrams: number;
  outBytes: number;
  drops: Record<VxlanDropReason, number>;
}

export interface VxlanUplinkOptions {
  /** The VXLAN Network Identifier, 24 bits (0..16777215). */
  vni: number;
  /** The address and UDP port to bind (the port remotes send to; 4789 by convention). */
  local: HostPort;
  /** The remote VTEPs: their address and the UDP port they listen on. */
  remotes: HostPort[];
  /** The switch VLAN the tunnel carries; absent: the untagged segment. */
  vlan?: number;
  /** The uplink's port name on the switch; default `vxlan<VNI>`. */
  name?: string;
  /** Remote MACs remembered at most. Default 4096. */
  maxLearnedMacs?: number;
  /** Milliseconds a learned remote MAC is kept without traffic. Default: the switch's aging time. */
  agingMs?: number;
  now?: Clock;
  warn?: WarnFn;
}

/** One learned remote station, for `vm info`. */
export interface VxlanLearnedMac {
  mac: string;
  remote: string;
  ageMs: number;
}

interface Remote {
  readonly address: string;
  readonly port: number;
  readonly label: string;
}

interface Learned {
  readonly mac: Uint8Array;
  remote: Remote;
  lastSeen: number;
}

export class VxlanUplink {
  readonly port: SwitchPort;
  readonly counters: VxlanCounters = {
    inFrames: 0, inBytes: 0, outDatagrams: 0, outBytes: 0,
    drops: Object.fromEntries(VXLAN_DROP_REASONS.map((r) => [r, 0])) as Record<VxlanDropReason, number>,
  };
  /** Remote MACs, least recently seen first. */
  private readonly learned = new Map<number, Learned>();
  private readonly header: Buffer;
  private readonly maxLearned: number;
  private readonly agingMs: number;
  private readonly now: Clock;
  private closed = false;
  private warnedSendError = false;

  /** @internal Made by openVxlanUplink. */
  constructor(
    sw: VirtualSwitch,
    readonly vni: number,
    private readonly socket: Socket,
    private readonly remotes: readonly Remote[],
    opts: VxlanUplinkOptions,
    private readonly warn: WarnFn,
  ) {
    this.maxLearned = opts.maxLearnedMacs ?? 4096;
    this.agingMs = opts.agingMs ?? sw.agingMs;
    this.now = opts.now ?? monotonicClock;
    this.header = Buffer.alloc(VXLAN_HLEN);
    this.header[0] = VXLAN_FLAG_VNI;
    this.header.writeUIntBE(vni, 4, 3);
    this.port = sw.attach({ name: opts.name ?? `vxlan${vni}`, vlan: opts.vlan, deliver: (frame) => this.toRemotes(frame) });
    socket.on("message", (msg, from) => this.fromRemote(msg, from));
    socket.on("error", (e) => this.warn(`${this.description}: socket error: ${e.message}`));
  }

  get description(): string {
    return `vxlan:${this.vni}@${formatHostPort(this.localAddress)}`;
  }

  /** Where the socket is bound (the real port when 0 was asked for). */
  get localAddress(): HostPort {
    const a = this.socket.address();
    return { host: a.address, port: a.port };
  }

  /** The remote MACs learned from the tunnel, for `vm info`. */
  get learnedMacs(): VxlanLearnedMac[] {
    const now = this.now();
    return [...this.learned.values()]
      .filter((e) => now - e.lastSeen < this.agingMs)
      .map((e) => ({ mac: macString(e.mac), remote: e.remote.label, ageMs: now - e.lastSeen }));
  }

  /** Releases the socket and leaves the switch. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.port.detach();
    this.socket.close();
  }

  // --- remote -> switch ---

  private fromRemote(msg: Buffer, from: RemoteInfo): void {
    if (this.closed) return;
    // A VTEP picks its source port per flow (section 5, "Source Port"), so the
    // address is what identifies a remote; the port only tells apart remotes
    // sharing an address (tsvisor sends from the port it listens on).
    const remote = this.remotes.find((r) => r.address === from.address && r.port === from.port) ??
      this.remotes.find((r) => r.address === from.address);
    const refused = !remote ? "unknown-peer"
      : msg.length < VXLAN_HLEN + ETH_HLEN ? "too-short"
      : (msg[0] & VXLAN_FLAG_VNI) === 0 ? "bad-flags" // the reserved bits are ignored on receipt (section 5)
      : msg.readUIntBE(4, 3) !== this.vni ? "wrong-vni"
      : undefined;
    if (refused || !remote) {
      this.counters.drops[refused ?? "unknown-peer"]++;
      return;
    }
    const frame = msg.subarray(VXLAN_HLEN);
    if (!this.port.input(frame)) {
      this.counters.drops["refused-by-switch"]++;
      return;
    }
    this.counters.inFrames++;
    this.counters.inBytes += frame.length;
    this.learn(frame, remote); // after the switch accepted it: its source MAC is a valid unicast one
  }

  private learn(frame: Uint8Array, remote: Remote): void {
    const key = macKey(frame, 6);
    const existing = this.learned.get(key);
    if (existing) this.learned.delete(key); // re-inserted last: the map stays ordered by last seen
    else if (this.learned.size >= this.maxLearned) this.learned.delete(this.learned.keys().next().value as number);
    this.learned.set(key, { mac: existing?.mac ?? Uint8Array.from(frame.subarray(6, 12)), remote, lastSeen: this.now() });
  }

  // --- switch -> remote ---

  private toRemotes(frame: Uint8Array): boolean {
    if (this.closed) return false;
    if (VXLAN_HLEN + frame.length > MAX_DATAGRAM_BYTES) {
      this.counters.drops["too-big"]++;
      return false;
    }
    const owner = isMulticastMac(frame, 0) ? undefined : this.ownerOf(macKey(frame, 0));
    const targets = owner ? [owner] : this.remotes;
    const datagram = Buffer.concat([this.header, frame]);
    let sent = false;
    for (const remote of targets) {
      if (this.socket.getSendQueueSize() + datagram.length > MAX_QUEUED_BYTES) {
        this.counters.drops.congested++;
        continue;
      }
      this.socket.send(datagram, remote.port, remote.address, (e) => {
        if (!e || this.warnedSendError || this.closed) return;
        this.warnedSendError = true; // once: the remote's network may come back
        this.warn(`${this.description}: cannot send to ${remote.label}: ${e.message}`);
      });
      this.counters.outDatagrams++;
      this.counters.outBytes += frame.length;
      sent = true;
    }
    return sent;
  }

  private ownerOf(key: number): Remote | undefined {
    const entry = this.learned.get(key);
    if (!entry) return undefined;
    if (this.now() - entry.lastSeen >= this.agingMs) {
      this.learned.delete(key);
      return undefined;
    }
    return entry.remote;
  }
}

async function resolve(what: string, host: string, family?: 4 | 6): Promise<{ address: string; family: 4 | 6 }> {
  try {
    const r = await lookup(host, family ? { family } : {});
    return { address: r.address, family: r.family === 6 ? 6 : 4 };
  } catch (e) {
    const hint = family ? ` as an IPv${family} address, like the local address` : "";
    throw new Error(`cannot resolve ${what} ${host}${hint} (${(e as NodeJS.ErrnoException).code})`);
  }
}

/**
 * Binds the UDP socket and attaches the uplink to `sw`. Failures (a bad VNI
 * or address, a port in use, a port name taken) are a NetBackendError with
 * one line.
 */
export async function openVxlanUplink(sw: VirtualSwitch, opts: VxlanUplinkOptions): Promise<VxlanUplink> {
  const where = `vxlan ${opts.vni} on switch ${sw.name}`;
  if (!(Number.isInteger(opts.vni) && opts.vni >= 0 && opts.vni <= 0xffffff)) {
    throw new NetBackendError(`${where}: the VNI must be a whole number from 0 to 16777215`);
  }
  if (opts.remotes.length === 0) throw new NetBackendError(`${where}: no remote given`);
  if (opts.maxLearnedMacs !== undefined && !(Number.isInteger(opts.maxLearnedMacs) && opts.maxLearnedMacs >= 1)) {
    throw new NetBackendError(`${where}: the learned MAC limit must be a whole number >= 1`);
  }
  if (opts.agingMs !== undefined && !(opts.agingMs > 0)) throw new NetBackendError(`${where}: the aging time must be > 0`);
  for (const a of [opts.local, ...opts.remotes]) {
    if (!(Number.isInteger(a.port) && a.port >= 0 && a.port <= 65535)) throw new NetBackendError(`${where}: bad UDP port in ${formatHostPort(a)}`);
  }
  let local: { address: string; family: 4 | 6 };
  const remotes: Remote[] = [];
  try {
    local = await resolve("the local address", opts.local.host);
    for (const r of opts.remotes) {
      const { address } = await resolve("the remote", r.host, local.family);
      remotes.push({ address, port: r.port, label: formatHostPort({ host: address, port: r.port }) });
    }
  } catch (e) {
    throw new NetBackendError(`${where}: ${(e as Error).message}`);
  }
  const socket = createSocket({ type: local.family === 6 ? "udp6" : "udp4" });
  await new Promise<void>((ok, fail) => {
    socket.once("error", (e) => {
      socket.close();
      fail(new NetBackendError(`${where}: cannot bind ${formatHostPort(opts.local)}: ${e.message}`));
    });
    socket.bind(opts.local.port, local.address, () => ok());
  });
  socket.removeAllListeners("error");
  try {
    return new VxlanUplink(sw, opts.vni, socket, remotes, opts, opts.warn ?? defaultWarn);
  } catch (e) {
    socket.close();
    throw new NetBackendError(`${where}: ${(e as Error).message}`);
  }
}
