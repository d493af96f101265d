// `--net switch=NAME[,vlan=][,nat][,vxlan=VNI,remote=...]`: a card's port on
// a switch of this process, and the switch's uplinks, which the first card
// that names them creates and the last card to leave closes:
//
//   VM card ─┐
//   VM card ─┼─ VirtualSwitch ─┬─ NAT uplink (a UserNet: DHCP, DNS, TCP/UDP to the host)
//   VM card ─┘                 └─ VXLAN uplink (UDP tunnel to other hosts, RFC 7348)
//
// Uplinks are per VLAN, as an access port is: a NAT on VLAN 10 serves only
// that VLAN's cards. A second card may name the same uplink again (the same
// settings) or leave it out; naming it with other settings is refused, since
// two VMs must not silently disagree about their network.
//
// The NAT's DHCP server tells the switch which address it gave which card,
// and from then on that card's port accepts ARP and IPv4 only from that
// address (anti-spoofing, src/net/switch.ts).

import { NetBackendError, type FrameMeta, type NetBackend, type NetBackendSpec, type NetStats, type Offloads, type OpenOptions } from "../backends/net/net-backend.js";
import { macKey } from "./packet.js";
import { getOrCreateSwitch, openSwitchPort, releaseSwitch } from "./switch-backend.js";
import type { SwitchPort, VirtualSwitch } from "./switch.js";
import type { RateLimiterConfig } from "./rate-limiter.js";
import { UserNet, UserNetError } from "./nat/user-net.js";
import { openVxlanUplink, VXLAN_PORT, type VxlanUplink } from "./vxlan.js";

type SwitchSpec = Extract<NetBackendSpec, { kind: "switch" }>;

interface Uplinks {
  /** By VLAN (undefined: the untagged segment): the NAT, with the settings it was made with. */
  nats: Map<number | undefined, { net: UserNet; port: SwitchPort; settings: string }>;
  vxlans: Map<number | undefined, { uplink: VxlanUplink; settings: string }>;
  /** Cards plugged in; the uplinks close with the last. */
  cards: number;
}

const uplinksBySwitch = new Map<string, Uplinks>();

/** A card on a switch: the switch port's backend, and the switch's uplinks kept alive while it lives. */
class SwitchCard implements NetBackend {
  private closed = false;
  constructor(private readonly inner: NetBackend & { readonly port: SwitchPort }, private readonly release: () => void, readonly providesDhcp: boolean) {}
  get description(): string { return this.inner.description; }
  get stats(): NetStats { return this.inner.stats; }
  get onFrame() { return this.inner.onFrame; }
  set onFrame(f: ((frame: Uint8Array, meta?: FrameMeta) => void) | undefined) { this.inner.onFrame = f; }
  get port(): SwitchPort { return this.inner.port; }
  get txOffloads(): Offloads | undefined { return this.inner.txOffloads; }
  send(frame: Uint8Array, meta?: FrameMeta): void { this.inner.send(frame, meta); }
  setRxPaused(paused: boolean): void { this.inner.setRxPaused(paused); }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.inner.close();
    this.release();
  }
}

export async function openSwitchBackend(description: string, spec: SwitchSpec, mac: Uint8Array | undefined, opts: Required<Pick<OpenOptions, "warn">> & OpenOptions): Promise<NetBackend> {
  if (!mac) throw new NetBackendError(`${description}: a card on a switch needs its MAC address`);
  const sw = getOrCreateSwitch(spec.name);
  let uplinks = uplinksBySwitch.get(spec.name);
  if (!uplinks) uplinksBySwitch.set(spec.name, (uplinks = { nats: new Map(), vxlans: new Map(), cards: 0 }));
  uplinks.cards++;
  const release = () => {
    const u = uplinks!;
    if (--u.cards > 0) return;
    for (const n of u.nats.values()) (n.port.detach(), n.net.close());
    for (const v of u.vxlans.values()) v.uplink.close();
    uplinksBySwitch.delete(spec.name);
    releaseSwitch(spec.name);
  };
  try {
    if (spec.nat) await attachNat(sw, uplinks, spec);
    if (spec.vxlan) await attachVxlan(sw, uplinks, spec, opts);
    const limits = rateLimits(spec);
    const inner = openSwitchPort(sw, {
      name: opts.portName ?? `port${sw.ports.length}`, mac, vlan: spec.vlan, warn: opts.warn,
      rateLimit: limits && { ingress: limits, egress: limits },
    });
    const nat = uplinks.nats.get(spec.vlan);
    // A card that joins after the NAT gave it an address (a restarted VM keeps its MAC) is held to it at once.
    const leased = nat?.net.dhcp.addressOf(mac);
    if (leased !== undefined) inner.port.allowIp(leased);
    return new SwitchCard(inner, release, nat !== undefined);
  } catch (e) {
    release();
    if (e instanceof UserNetError) throw new NetBackendError(`${description}: ${e.message}`);
    throw e;
  }
}

async function attachNat(sw: VirtualSwitch, uplinks: Uplinks, spec: SwitchSpec): Promise<void> {
  const settings = JSON.stringify(spec.nat);
  const existing = uplinks.nats.get(spec.vlan);
  if (existing) {
    if (existing.settings !== settings) throw new NetBackendError(`switch ${sw.name}: its NAT already runs with other settings (give the same nat options, or none, to the other cards)`);
    return;
  }
  const net = await UserNet.open(spec.nat!);
  const port = sw.attach({ name: spec.vlan === undefined ? "nat" : `nat.vlan${spec.vlan}`, vlan: spec.vlan, deliver: (frame) => net.input(frame) });
  net.onFrame = (frame) => port.input(frame);
  net.onLease = (mac, ip) => {
    const card = sw.ports.find((p) => p.mac !== undefined && macKey(p.mac) === macKey(mac));
    card?.allowIp(ip);
  };
  uplinks.nats.set(spec.vlan, { net, port, settings });
}

async function attachVxlan(sw: VirtualSwitch, uplinks: Uplinks, spec: SwitchSpec, opts: OpenOptions & { warn: (l: string) => void }): Promise<void> {
  const v = spec.vxlan!;
  const settings = JSON.stringify(v);
  const existing = uplinks.vxlans.get(spec.vlan);
  if (existing) {
    if (existing.settings !== settings) throw new NetBackendError(`switch ${sw.name}: its VXLAN uplink already runs with other settings`);
    return;
  }
  const uplink = await openVxlanUplink(sw, {
    vni: v.vni, remotes: v.remotes, vlan: spec.vlan, warn: opts.warn,
    local: v.local ?? { host: v.remotes[0].host.includes(":") ? "::" : "0.0.0.0", port: VXLAN_PORT },
    name: spec.vlan === undefined ? `vxlan${v.vni}` : `vxlan${v.vni}.vlan${spec.vlan}`,
  });
  uplinks.vxlans.set(spec.vlan, { uplink, settings });
}

/** `bw=` and `pps=` as token buckets of one second each (Firecracker's size per refill_time). */
function rateLimits(spec: SwitchSpec): RateLimiterConfig | undefined {
  if (spec.bandwidth === undefined && spec.packetRate === undefined) return undefined;
  return {
    bandwidth: spec.bandwidth === undefined ? undefined : { size: spec.bandwidth, refillTimeMs: 1000 },
    ops: spec.packetRate === undefined ? undefined : { size: spec.packetRate, refillTimeMs: 1000 },
  };
}

/** The NAT and VXLAN uplinks of the switch `name`, for `vm info` and the metrics. */
export function switchUplinks(name: string): { nats: UserNet[]; vxlans: VxlanUplink[] } {
  const u = uplinksBySwitch.get(name);
  return { nats: [...(u?.nats.values() ?? [])].map((n) => n.net), vxlans: [...(u?.vxlans.values() ?? [])].map((v) => v.uplink) };
}
