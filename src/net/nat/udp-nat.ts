// UDP from the guest, carried on host sockets: one host socket per guest
// address and port (a "flow"), as QEMU's slirp and Linux's conntrack NAT keep
// one mapping per source. Replies come back only from the addresses the guest
// has sent to (an address-restricted cone: another host cannot reach the guest
// by guessing the port), and a flow idle for FLOW_IDLE_MS is closed, as
// conntrack's UDP timeout does. The number of flows is bounded; at the bound
// the least recently used flow is closed to make room.

import type { Socket } from "node:dgram";
import { nodeDgram } from "../../lazy-builtins.js";
import { ipv4String } from "../packet.js";

/** Linux conntrack keeps an answered UDP flow for 120 s (nf_conntrack_udp_timeout_stream). */
const FLOW_IDLE_MS = 120_000;
export const MAX_UDP_FLOWS = 1024;
/** The peers one flow may talk to, and the bytes it may have queued towards the host. */
const MAX_PEERS_PER_FLOW = 64;
const MAX_QUEUED_BYTES = 256 * 1024;

export interface UdpNatStats {
  flows: number;
  flowsOpened: number;
  flowsEvicted: number;
  datagramsOut: number;
  datagramsIn: number;
  /** Datagrams from a host the guest never sent to: dropped. */
  unsolicited: number;
  dropped: number;
}

interface Flow {
  socket: Socket;
  guestIp: number;
  guestPort: number;
  /** "host:port" of every peer the guest sent to (as seen on the host: mapped). */
  peers: Set<string>;
  lastUsed: number;
}

export interface UdpNatOptions {
  /** A datagram for the guest, from `src:srcPort` (guest-side addresses). */
  deliver(src: number, srcPort: number, dst: number, dstPort: number, payload: Uint8Array): void;
  /** The host address a guest-side destination stands for (10.0.2.2 -> 127.0.0.1), or undefined to drop. */
  toHost(dst: number): string | undefined;
  /** The guest-side address a host address appears as (127.0.0.1 -> 10.0.2.2). */
  toGuest(host: string): number | undefined;
  now?: () => number;
}

export class UdpNat {
  readonly stats: UdpNatStats = { flows: 0, flowsOpened: 0, flowsEvicted: 0, datagramsOut: 0, datagramsIn: 0, unsolicited: 0, dropped: 0 };
  /** Map iteration order is insertion order; a used flow is re-inserted, so the first is the least recently used. */
  private readonly flows = new Map<string, Flow>();
  private readonly sweeper: NodeJS.Timeout;
  private readonly now: () => number;

  constructor(private readonly o: UdpNatOptions) {
    this.now = o.now ?? Date.now;
    this.sweeper = setInterval(() => this.sweep(), 10_000);
    this.sweeper.unref();
  }

  /** A datagram the guest sent from guestIp:guestPort to dst:dstPort. */
  send(guestIp: number, guestPort: number, dst: number, dstPort: number, payload: Uint8Array): void {
    const host = this.o.toHost(dst);
    if (host === undefined || dstPort === 0) {
      this.stats.dropped++;
      return;
    }
    const flow = this.flow(guestIp, guestPort);
    if (flow.socket.getSendQueueSize() + payload.length > MAX_QUEUED_BYTES) {
      this.stats.dropped++;
      return;
    }
    const peer = `${host}:${dstPort}`;
    if (!flow.peers.has(peer)) {
      if (flow.peers.size >= MAX_PEERS_PER_FLOW) flow.peers.delete(flow.peers.values().next().value!);
      flow.peers.add(peer);
    }
    this.stats.datagramsOut++;
    flow.socket.send(payload, dstPort, host, () => {});
  }

  close(): void {
    clearInterval(this.sweeper);
    for (const f of this.flows.values()) f.socket.close();
    this.flows.clear();
    this.stats.flows = 0;
  }

  private flow(guestIp: number, guestPort: number): Flow {
    const key = `${guestIp}:${guestPort}`;
    let flow = this.flows.get(key);
    if (flow) {
      this.flows.delete(key);
      this.flows.set(key, flow);
      flow.lastUsed = this.now();
      return flow;
    }
    if (this.flows.size >= MAX_UDP_FLOWS) {
      const [oldestKey, oldest] = this.flows.entries().next().value!;
      this.closeFlow(oldestKey, oldest);
      this.stats.flowsEvicted++;
    }
    const socket = nodeDgram().createSocket("udp4");
    flow = { socket, guestIp, guestPort, peers: new Set(), lastUsed: this.now() };
    const f = flow;
    socket.on("error", () => {}); // ICMP errors surface here (ECONNREFUSED); the guest's datagram is lost, as on a network
    socket.on("message", (msg, from) => {
      if (!f.peers.has(`${from.address}:${from.port}`)) {
        this.stats.unsolicited++;
        return;
      }
      const src = this.o.toGuest(from.address);
      if (src === undefined) return;
      f.lastUsed = this.now();
      this.stats.datagramsIn++;
      this.o.deliver(src, from.port, f.guestIp, f.guestPort, msg);
    });
    socket.bind(0);
    socket.unref();
    this.flows.set(key, flow);
    this.stats.flows = this.flows.size;
    this.stats.flowsOpened++;
    return flow;
  }

  private closeFlow(key: string, flow: Flow): void {
    flow.socket.close();
    this.flows.delete(key);
    this.stats.flows = this.flows.size;
  }

  private sweep(): void {
    const t = this.now();
    for (const [key, flow] of this.flows) if (t - flow.lastUsed > FLOW_IDLE_MS) this.closeFlow(key, flow);
  }

  /** For introspection: "10.0.2.15:5353 -> host port 40001". */
  describe(): string[] {
    return [...this.flows.values()].map((f) => `${ipv4String(f.guestIp)}:${f.guestPort} (${f.peers.size} peers)`);
  }
}
