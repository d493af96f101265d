// User-mode networking (`--net user`), as QEMU's `-netdev user` (slirp) and
// passt: the guest gets a network that needs no privileges on the host. The
// hypervisor plays every other machine on the guest's Ethernet: the gateway
// (10.0.2.2, which also stands for the host's loopback), the DHCP server, the
// DNS server (10.0.2.3), and every remote host, whose TCP connections and UDP
// datagrams it carries on ordinary host sockets.
//
//   guest frame -> input() -> ARP: answered for the gateway and DNS addresses
//                          -> IPv4 -> UDP 67: DhcpServer    UDP 53 to DNS: DnsProxy
//                                  -> UDP: UdpNat (host dgram sockets)
//                                  -> TCP: TcpNat (host net sockets; port forwards in)
//                                  -> ICMP echo to the gateway/DNS: answered here
//   onFrame(frame) <- IPv4 packets towards the guest, its MAC from ARP or DHCP
//
// Destinations map to host addresses as in slirp: the gateway is the host's
// 127.0.0.1; other addresses in the virtual subnet and loopback, multicast and
// broadcast destinations go nowhere; everything else is that address on the
// host's network. Every frame comes from a guest and is checked before use;
// what cannot be handled is dropped and counted in `stats.drops`.

import type { Server, Socket } from "node:net";
import { nodeNet } from "../../lazy-builtins.js";
import {
  ARP_REPLY, ARP_REQUEST, BROADCAST_MAC, ETHERTYPE_ARP, ETHERTYPE_IPV4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
  buildArp, buildEthernet, buildIpv4, buildUdp, internetChecksum, ipv4String, isMulticastMac, macKey,
  parseArp, parseEthernet, parseIpv4, parseIpv4Address, parseUdp,
} from "../packet.js";
import { DhcpServer } from "./dhcp.js";
import { DnsProxy } from "./dns.js";
import { UdpNat } from "./udp-nat.js";
import { TcpNat } from "./tcp.js";

export interface HostForward {
  protocol: "tcp";
  /** The host address to listen on (default 127.0.0.1: see the README on why not every interface). */
  hostAddress: string;
  hostPort: number;
  /** The guest address to connect to (default: the first DHCP address). */
  guestAddress: number | undefined;
  guestPort: number;
}

export interface UserNetConfig {
  /** The virtual network, as an address and prefix length (default 10.0.2.0/24). */
  network: number;
  prefixLength: number;
  /** The gateway and host alias (default .2), the DNS server (default .3), the first DHCP address (default .15). */
  gateway: number;
  dns: number;
  dhcpStart: number;
  hostForwards: HostForward[];
  /** The MTU the guest's interface has (the NAT sends no larger IP packet). */
  mtu: number;
}

export function defaultUserNetConfig(): UserNetConfig {
  return {
    network: 0x0a000200,
    prefixLength: 24,
    gateway: 0x0a000202,
    dns: 0x0a000203,
    dhcpStart: 0x0a00020f,
    hostForwards: [],
    mtu: 1500,
  };
}

/** The gateway's MAC address, QEMU's convention: 52:55 followed by the gateway's IPv4 address. */
function gatewayMac(gateway: number): Uint8Array {
  return Uint8Array.of(0x52, 0x55, gateway >>> 24, (gateway >>> 16) & 0xff, (gateway >>> 8) & 0xff, gateway & 0xff);
}

const MAX_NEIGHBOURS = 1024;
/** Packets waiting for a neighbour's ARP reply, per address and in total. */
const MAX_PENDING_PER_NEIGHBOUR = 16;
const DHCP_LEASE_S = 86_400;

export type UserNetDrop =
  | "runt" | "vlan-tagged" | "not-for-us" | "ethertype" | "arp-malformed" | "ip-malformed" | "ip-fragment"
  | "udp-malformed" | "icmp-malformed" | "icmp-not-forwarded" | "no-route" | "protocol"
  | "neighbour-unknown";

export interface UserNetStats {
  framesIn: number;
  bytesIn: number;
  framesOut: number;
  bytesOut: number;
  arpReplies: number;
  icmpEchoReplies: number;
  drops: Partial<Record<UserNetDrop, number>>;
}

export class UserNetError extends Error {}

export class UserNet {
  /**
   * Frames towards the guest (or the switch the NAT is an uplink of). With
   * `gsoSize` the frame is a TCP super-frame, sent only after
   * tcp.setSuperSegments(true): the guest's card cuts it, or takes it whole.
   */
  onFrame: ((frame: Uint8Array, gsoSize?: number) => void) | undefined;
  /** Called when DHCP binds an address to a card or the lease ends (for the switch's anti-spoofing). */
  onLease: ((mac: Uint8Array, ip: number | undefined) => void) | undefined;
  readonly stats: UserNetStats = { framesIn: 0, bytesIn: 0, framesOut: 0, bytesOut: 0, arpReplies: 0, icmpEchoReplies: 0, drops: {} };
  readonly mac: Uint8Array;
  readonly dhcp: DhcpServer;
  readonly dns: DnsProxy;
  readonly udp: UdpNat;
  readonly tcp: TcpNat;

  private readonly netmask: number;
  /** IPv4 address -> MAC, learned from ARP, DHCP and the guests' own packets. */
  private readonly neighbours = new Map<number, Uint8Array>();
  private readonly pending = new Map<number, Uint8Array[]>();
  private readonly servers: Server[] = [];
  private closed = false;

  private constructor(readonly config: UserNetConfig) {
    this.netmask = config.prefixLength === 0 ? 0 : (~0 << (32 - config.prefixLength)) >>> 0;
    this.mac = gatewayMac(config.gateway);
    const poolEnd = ((config.network | ~this.netmask) >>> 0) - 1; // the last address before broadcast
    this.dhcp = new DhcpServer(
      {
        server: config.gateway, netmask: this.netmask, router: config.gateway, dns: config.dns,
        poolStart: config.dhcpStart, poolSize: Math.max(0, poolEnd - config.dhcpStart + 1), leaseSeconds: DHCP_LEASE_S,
      },
      (mac, ip) => {
        if (ip !== undefined) this.learn(ip, mac);
        this.onLease?.(mac, ip);
      },
    );
    this.dns = new DnsProxy(config.gateway);
    this.udp = new UdpNat({
      deliver: (src, srcPort, dst, dstPort, payload) => this.sendIp(src, dst, IPPROTO_UDP, buildUdp(src, dst, srcPort, dstPort, payload)),
      toHost: (dst) => this.toHost(dst),
      toGuest: (host) => this.toGuest(host),
    });
    this.tcp = new TcpNat({
      emit: (src, dst, segment, gsoSize) => this.sendIp(src, dst, IPPROTO_TCP, segment, gsoSize),
      connect: (dst, dstPort) => {
        const host = this.toHost(dst);
        if (host === undefined) return undefined;
        // Half-open: the guest's FIN ends only our writing side (RFC 9293 3.6).
        const socket: Socket = new (nodeNet().Socket)({ allowHalfOpen: true });
        socket.connect({ host, port: dstPort });
        return socket;
      },
      mss: config.mtu - 40,
    });
  }

  /** Opens the network: binds the port forwards' host sockets (a port in use is a UserNetError). */
  static async open(config: UserNetConfig): Promise<UserNet> {
    const net = new UserNet(config);
    try {
      for (const fwd of config.hostForwards) await net.listen(fwd);
    } catch (e) {
      net.close();
      throw e;
    }
    return net;
  }

  /** The host port a forward listens on (its configured one, or the one the host chose for port 0). */
  forwardPorts(): number[] {
    return this.servers.map((s) => {
      const a = s.address();
      return typeof a === "object" && a ? a.port : 0;
    });
  }

  /** One Ethernet frame from the guest side. */
  input(frame: Uint8Array): void {
    if (this.closed) return;
    this.stats.framesIn++;
    this.stats.bytesIn += frame.length;
    const eth = parseEthernet(frame);
    if (!eth) return this.drop("runt");
    if (eth.vlan !== undefined) return this.drop("vlan-tagged");
    if (!isMulticastMac(eth.dst) && macKey(eth.dst) !== macKey(this.mac)) return this.drop("not-for-us");
    const payload = frame.subarray(eth.payloadOffset);
    if (eth.type === ETHERTYPE_ARP) this.handleArp(eth.src, payload);
    else if (eth.type === ETHERTYPE_IPV4) this.handleIpv4(eth.src, payload);
    else this.drop("ethertype");
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.servers) s.close();
    this.tcp.close();
    this.udp.close();
    this.dns.close();
    this.pending.clear();
  }

  // --- ARP ---

  private handleArp(srcMac: Uint8Array, p: Uint8Array): void {
    const arp = parseArp(p);
    if (!arp || macKey(arp.senderMac) !== macKey(srcMac)) return this.drop("arp-malformed");
    if (this.inSubnet(arp.senderIp) && !this.isOurs(arp.senderIp)) this.learn(arp.senderIp, arp.senderMac);
    if (arp.op === ARP_REQUEST && this.isOurs(arp.targetIp)) {
      this.stats.arpReplies++;
      const reply = buildArp({ op: ARP_REPLY, senderMac: this.mac, senderIp: arp.targetIp, targetMac: arp.senderMac, targetIp: arp.senderIp });
      this.output(buildEthernet(arp.senderMac, this.mac, ETHERTYPE_ARP, reply));
    }
  }

  // --- IPv4 ---

  private handleIpv4(srcMac: Uint8Array, p: Uint8Array): void {
    const ip = parseIpv4(p);
    if (typeof ip === "string") return this.drop("ip-malformed");
    // The NAT never reassembles: the guest sets DF on TCP, and its UDP rarely exceeds the MTU.
    if (ip.fragment) return this.drop("ip-fragment");
    if (this.inSubnet(ip.src) && !this.isOurs(ip.src)) this.learn(ip.src, srcMac);
    switch (ip.protocol) {
      case IPPROTO_UDP:
        return this.handleUdp(srcMac, ip.src, ip.dst, ip.payload);
      case IPPROTO_TCP:
        if (this.toHost(ip.dst) === undefined) return this.drop("no-route");
        return this.tcp.input(ip.src, ip.dst, ip.payload);
      case IPPROTO_ICMP:
        return this.handleIcmp(ip.src, ip.dst, ip.payload);
      default:
        return this.drop("protocol");
    }
  }

  private handleUdp(srcMac: Uint8Array, src: number, dst: number, p: Uint8Array): void {
    const udp = parseUdp(src, dst, p);
    if (typeof udp === "string") return this.drop("udp-malformed");
    if (udp.dstPort === 67 && udp.srcPort === 68) {
      const reply = this.dhcp.handle(srcMac, udp.payload);
      if (!reply) return;
      const dstIp = reply.broadcast || reply.yiaddr === 0 ? 0xffffffff : reply.yiaddr;
      const segment = buildUdp(this.config.gateway, dstIp, 67, 68, reply.payload);
      const packet = buildIpv4(this.config.gateway, dstIp, IPPROTO_UDP, segment);
      this.output(buildEthernet(reply.broadcast ? BROADCAST_MAC : srcMac, this.mac, ETHERTYPE_IPV4, packet));
      return;
    }
    if (dst === this.config.dns && udp.dstPort === 53) {
      this.dns.query(udp.payload, (answer) => this.sendIp(dst, src, IPPROTO_UDP, buildUdp(dst, src, 53, udp.srcPort, answer)));
      return;
    }
    this.udp.send(src, udp.srcPort, dst, udp.dstPort, udp.payload);
  }

  /** Echo requests to the gateway and the DNS address are answered here (RFC 792); nothing else is forwarded. */
  private handleIcmp(src: number, dst: number, p: Uint8Array): void {
    if (p.length < 8 || internetChecksum(p) !== 0) return this.drop("icmp-malformed");
    if (p[0] !== 8) return; // only echo requests take an answer; errors from the guest end here
    if (!this.isOurs(dst)) return this.drop("icmp-not-forwarded");
    const reply = Uint8Array.from(p);
    reply[0] = 0; // echo reply, same identifier, sequence and data
    reply[2] = reply[3] = 0;
    const sum = internetChecksum(reply);
    reply[2] = sum >> 8;
    reply[3] = sum & 0xff;
    this.stats.icmpEchoReplies++;
    this.sendIp(dst, src, IPPROTO_ICMP, reply);
  }

  // --- towards the guest ---

  /** An IPv4 packet to `dst` on the virtual network, to its MAC (asking for it by ARP first if unknown). */
  private sendIp(src: number, dst: number, protocol: number, payload: Uint8Array, gsoSize?: number): void {
    if (this.closed) return;
    if (20 + payload.length > this.config.mtu && protocol !== IPPROTO_TCP) {
      for (const fragment of fragmentIpv4(src, dst, protocol, payload, this.config.mtu)) this.sendPacket(dst, fragment);
      return;
    }
    this.sendPacket(dst, buildIpv4(src, dst, protocol, payload), gsoSize);
  }

  private sendPacket(dst: number, packet: Uint8Array, gsoSize?: number): void {
    const mac = this.neighbours.get(dst);
    if (mac) {
      this.output(buildEthernet(mac, this.mac, ETHERTYPE_IPV4, packet), gsoSize);
      return;
    }
    // A super-segment never waits for ARP: the guest it goes to has talked to us.
    if (gsoSize !== undefined) return this.drop("neighbour-unknown");
    let queue = this.pending.get(dst);
    if (!queue) {
      if (this.pending.size >= MAX_NEIGHBOURS) return this.drop("neighbour-unknown");
      this.pending.set(dst, (queue = []));
    }
    if (queue.length >= MAX_PENDING_PER_NEIGHBOUR) return this.drop("neighbour-unknown");
    queue.push(packet);
    const request = buildArp({ op: ARP_REQUEST, senderMac: this.mac, senderIp: this.config.gateway, targetMac: new Uint8Array(6), targetIp: dst });
    this.output(buildEthernet(BROADCAST_MAC, this.mac, ETHERTYPE_ARP, request));
  }

  private learn(ip: number, mac: Uint8Array): void {
    if (isMulticastMac(mac)) return;
    const known = this.neighbours.get(ip);
    if (!known || macKey(known) !== macKey(mac)) {
      if (!known && this.neighbours.size >= MAX_NEIGHBOURS) this.neighbours.delete(this.neighbours.keys().next().value!);
      this.neighbours.set(ip, Uint8Array.from(mac));
    }
    const queued = this.pending.get(ip);
    if (queued) {
      this.pending.delete(ip);
      for (const packet of queued) this.output(buildEthernet(mac, this.mac, ETHERTYPE_IPV4, packet));
    }
  }

  private output(frame: Uint8Array, gsoSize?: number): void {
    this.stats.framesOut++;
    this.stats.bytesOut += frame.length;
    this.onFrame?.(frame, gsoSize);
  }

  // --- addresses ---

  private inSubnet(ip: number): boolean {
    return ((ip & this.netmask) >>> 0) === this.config.network;
  }

  /** The addresses the NAT itself answers for. */
  private isOurs(ip: number): boolean {
    return ip === this.config.gateway || ip === this.config.dns;
  }

  /** The host address a guest-side destination stands for, or undefined when it goes nowhere. */
  private toHost(dst: number): string | undefined {
    if (dst === this.config.gateway) return "127.0.0.1";
    if (this.inSubnet(dst)) return undefined;
    const first = dst >>> 24;
    if (first === 0 || first === 127 || first >= 224) return undefined; // "this network", loopback, multicast, reserved, broadcast
    return ipv4String(dst);
  }

  private toGuest(host: string): number | undefined {
    const ip = parseIpv4Address(host.startsWith("::ffff:") ? host.slice(7) : host);
    if (ip === undefined) return undefined;
    return ip >>> 24 === 127 ? this.config.gateway : ip;
  }

  private drop(reason: UserNetDrop): void {
    this.stats.drops[reason] = (this.stats.drops[reason] ?? 0) + 1;
  }

  // --- port forwards into the guest ---

  private async listen(fwd: HostForward): Promise<void> {
    const server = nodeNet().createServer({ allowHalfOpen: true }, (socket) => {
      const guest = fwd.guestAddress ?? this.dhcpAddressForForward();
      // The connection appears to come from the gateway, on a port of its own, as in slirp.
      const port = this.tcp.freePort(guest, fwd.guestPort, this.config.gateway);
      if (port === undefined) socket.destroy();
      else this.tcp.openToGuest(guest, fwd.guestPort, this.config.gateway, port, socket);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", (e: NodeJS.ErrnoException) => {
        const why = e.code === "EADDRINUSE" ? "the port is in use" : e.code === "EACCES" ? "permission denied" : e.message;
        reject(new UserNetError(`hostfwd=tcp:${fwd.hostAddress}:${fwd.hostPort}-:${fwd.guestPort}: cannot listen on ${fwd.hostAddress}:${fwd.hostPort}: ${why}`));
      });
      server.listen(fwd.hostPort, fwd.hostAddress, () => resolve());
    });
    server.on("error", () => {});
    this.servers.push(server);
  }

  /** Where a forward without a guest address goes: the address DHCP gave, else the first of the pool. */
  private dhcpAddressForForward(): number {
    const leases = this.dhcp.leases();
    return leases.length > 0 ? leases[0].ip : this.config.dhcpStart;
  }
}

/** `payload` as IPv4 fragments of at most `mtu` bytes each (RFC 791 3.2, "fragmentation"). */
function fragmentIpv4(src: number, dst: number, protocol: number, payload: Uint8Array, mtu: number): Uint8Array[] {
  const step = (mtu - 20) & ~7; // fragment offsets count 8-byte units
  const template = buildIpv4(src, dst, protocol, new Uint8Array(0));
  const out: Uint8Array[] = [];
  for (let offset = 0; offset < payload.length; offset += step) {
    const part = payload.subarray(offset, Math.min(payload.length, offset + step));
    const p = new Uint8Array(20 + part.length);
    p.set(template.subarray(0, 20));
    p[2] = p.length >> 8;
    p[3] = p.length & 0xff;
    const more = offset + step < payload.length ? 0x2000 : 0;
    const flags = more | (offset >> 3); // DF clear: this packet is fragmented
    p[6] = flags >> 8;
    p[7] = flags & 0xff;
    p[10] = p[11] = 0;
    const sum = internetChecksum(p.subarray(0, 20));
    p[10] = sum >> 8;
    p[11] = sum & 0xff;
    p.set(part, 20);
    out.push(p);
  }
  return out;
}
