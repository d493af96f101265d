// The host side of a virtual network card: the interface between the
// virtio-net device model and whatever carries its Ethernet frames on the host
// (a tap device, a Unix stream socket, a UDP socket), the `--net` option that
// chooses one, and openNetBackend, which opens it.
//
// The device sees frames only: whole Ethernet frames without virtio header and
// without FCS, one per call, in both directions. A backend never blocks the
// VM: sending drops (and counts) what the host side cannot take, and received
// frames arrive from the Node event loop.
//
// This module imports no backend statically (they are loaded when opened), so
// the backends can import the error and the types from here without a cycle.

import type { UserNetConfig } from "../../net/nat/user-net.js";

/** A user-facing failure: the message is one line, printed as is. */
export class NetBackendError extends Error {
  constructor(message: string) {
    super(message.replace(/\s*\n\s*/g, " ").trim());
    this.name = "NetBackendError";
  }
}

/** Counters of one backend, as the device and `--stats` see them. */
export interface NetStats {
  txFrames: number;
  txBytes: number;
  rxFrames: number;
  rxBytes: number;
  /** Guest -> host frames dropped: not connected, host side congested, or invalid length. */
  txDropped: number;
  /** Host -> guest frames dropped by the backend (a datagram backend while receiving is paused). */
  rxDropped: number;
}

export interface NetBackend {
  /** For stats and messages: "tap:tap0", "socket:udp:127.0.0.1:5001->127.0.0.1:5002", ... */
  readonly description: string;
  /**
   * Guest -> host: one whole Ethernet frame (no virtio header), without FCS.
   * Never blocks; may drop (counted) when the host side is congested or not
   * connected. The backend copies the frame: the caller may reuse it at once.
   */
  send(frame: Uint8Array): void;
  /**
   * Host -> guest: called from the Node event loop with one whole Ethernet
   * frame each time. Set once by the device. The frame stays valid after the
   * call (the backend does not reuse its memory).
   */
  onFrame: ((frame: Uint8Array) => void) | undefined;
  /**
   * Flow control for host -> guest: while paused, onFrame is not called. The
   * device pauses when the guest has no receive buffers left and resumes when
   * it adds some. Stream backends (tap, unix sockets) then stop reading, so
   * frames wait on the host side (and the peer slows down); the UDP backend
   * drops them (counted in rxDropped), as a full network would.
   */
  setRxPaused(paused: boolean): void;
  readonly stats: NetStats;
  /** The network behind this backend answers DHCP (the user-mode NAT, a switch with a NAT uplink). */
  readonly providesDhcp?: boolean;
  /** Releases the host resources (socket, relay process, socket file). Idempotent. */
  close(): void;
}

export interface HostPort {
  /** Name or address as written, without brackets for IPv6. */
  host: string;
  port: number;
}

export type NetBackendSpec =
  | { kind: "user"; config: UserNetConfig }
  | {
      kind: "switch"; name: string; vlan: number | undefined; nat: UserNetConfig | undefined; vxlan: VxlanSpec | undefined;
      /** Per-port limits in each direction: bytes and frames per second. */
      bandwidth: number | undefined; packetRate: number | undefined;
    }
  | { kind: "tap"; ifname: string }
  | { kind: "unix"; mode: "listen" | "connect"; path: string }
  | { kind: "udp"; local: HostPort; peer: HostPort };

/** A switch's VXLAN uplink (RFC 7348): its VNI, the tunnel's other ends, the local UDP address. */
export interface VxlanSpec {
  vni: number;
  remotes: HostPort[];
  local: HostPort | undefined;
}

export interface NetSpec {
  backend: NetBackendSpec;
  /** The guest's MAC address (6 bytes, unicast, not zero); the device picks one when absent. */
  mac?: Uint8Array;
}

/**
 * The largest frame either direction accepts: the largest IP packet (65535
 * bytes) behind an Ethernet header with one VLAN tag (18 bytes). A stream
 * peer announcing a longer frame is cut off, so it cannot make tsvisor buffer
 * unbounded memory.
 */
export const MAX_FRAME_BYTES = 65535 + 18;

/** Bytes a backend may have queued towards the host before it drops frames. */
export const MAX_QUEUED_BYTES = 1 << 20;

/** Where warnings of a running backend go: one line each, no newline. */
export type WarnFn = (line: string) => void;

export interface OpenOptions {
  /** Receives the backend's warnings (peer cut off, relay died, ...); default: stderr. */
  warn?: WarnFn;
  /** How long `socket=connect:` keeps retrying while nobody listens (default 30 s). */
  connectRetryMs?: number;
  /** The card's port name on a switch (unique there), e.g. "web/net0". */
  portName?: string;
}

export const defaultWarn: WarnFn = (line) => {
  process.stderr.write(`tsvisor: ${line}\n`);
};

export function formatHostPort(a: HostPort): string {
  return a.host.includes(":") ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** The description a backend opened from `spec` carries. */
export function describeNetSpec(spec: NetSpec): string {
  const b = spec.backend;
  switch (b.kind) {
    case "user":
      return "user";
    case "switch":
      return `switch:${b.name}${b.vlan === undefined ? "" : `,vlan=${b.vlan}`}`;
    case "tap":
      return `tap:${b.ifname}`;
    case "unix":
      return `socket:${b.mode}:${b.path}`;
    case "udp":
      return `socket:udp:${formatHostPort(b.local)}->${formatHostPort(b.peer)}`;
  }
}

/** Opens the backend `spec` names; a failure is a NetBackendError with one clear line. */
export async function openNetBackend(spec: NetSpec, opts: OpenOptions = {}): Promise<NetBackend> {
  const b = spec.backend;
  const description = describeNetSpec(spec);
  const o = { warn: opts.warn ?? defaultWarn, connectRetryMs: opts.connectRetryMs ?? 30_000, portName: opts.portName };
  switch (b.kind) {
    case "user":
      return (await import("../../net/nat/user-backend.js")).openUserNetBackend(description, b.config, o);
    case "switch":
      return (await import("../../net/switch-attach.js")).openSwitchBackend(description, b, spec.mac, o);
    case "tap":
      return (await import("./tap.js")).openTap(description, b.ifname, o);
    case "unix":
      return b.mode === "listen"
        ? (await import("./unix-socket.js")).listenUnix(description, b.path, o)
        : (await import("./unix-socket.js")).connectUnix(description, b.path, o);
    case "udp":
      return (await import("./udp.js")).openUdp(description, b.local, b.peer, o);
  }
}

export { parseNetSpec, parseMac, formatMac } from "./net-spec.js";
