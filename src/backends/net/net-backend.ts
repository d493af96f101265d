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

/**
 * Segmentation types of a super-frame, as virtio_net_hdr's gso_type (virtio
 * 1.2, 5.1.6): a TCP segment larger than the link's MTU that is to be cut
 * into gsoSize-byte segments before it goes on a wire.
 */
export const GSO_NONE = 0;
export const GSO_TCPV4 = 1;
export const GSO_TCPV6 = 4;

/**
 * What a backend knows about a host -> guest frame beyond its bytes (a tap
 * with a vnet header, a peer that forwards a guest's super-frames whole, a
 * user-mode TCP stack that builds them). All of it is optional: a frame
 * without meta is an ordinary, fully checksummed frame. The device turns it
 * into whatever the guest's driver accepted (GuestOffloads); a frame whose
 * meta does not fit the frame is dropped and counted.
 */
export interface FrameMeta {
  /** GSO_NONE (the default), GSO_TCPV4 or GSO_TCPV6: a TCP super-frame. */
  gsoType?: number;
  /** With a gsoType: the payload bytes of each segment (the MSS), at least 1. */
  gsoSize?: number;
  /**
   * The transport checksum is partial: the field at csumStart + csumOffset
   * holds the pseudo-header sum, and the ones' complement sum from csumStart
   * to the end of the frame completes it (as VIRTIO_NET_HDR_F_NEEDS_CSUM).
   * A super-frame's checksums are made by the device anyway.
   */
  needsCsum?: boolean;
  csumStart?: number;
  csumOffset?: number;
  /** The checksums are known good (VIRTIO_NET_HDR_F_DATA_VALID): the guest need not check them. */
  dataValid?: boolean;
}

/**
 * Which offloads one side takes: the guest's driver on receive (GUEST_CSUM,
 * GUEST_TSO4, GUEST_TSO6: setGuestOffloads), a backend on transmit
 * (txOffloads). Without them the device does the work in software.
 */
export interface Offloads {
  /** Partial checksums (FrameMeta.needsCsum) and DATA_VALID. */
  csum: boolean;
  /** TCP over IPv4 super-frames. */
  tso4: boolean;
  /** TCP over IPv6 super-frames. */
  tso6: boolean;
}

/** What the guest's driver accepted on receive (VIRTIO_NET_F_GUEST_CSUM, GUEST_TSO4, GUEST_TSO6). */
export type GuestOffloads = Offloads;

export interface NetBackend {
  /** For stats and messages: "tap:tap0", "socket:udp:127.0.0.1:5001->127.0.0.1:5002", ... */
  readonly description: string;
  /**
   * Guest -> host: one whole Ethernet frame (no virtio header), without FCS.
   * Never blocks; may drop (counted) when the host side is congested or not
   * connected. The backend copies the frame: the caller may reuse it at once.
   * `meta` comes only with what txOffloads says the backend takes: a TCP
   * super-frame (its headers checked by the device) or a partial checksum.
   */
  send(frame: Uint8Array, meta?: FrameMeta): void;
  /**
   * What the backend takes whole on transmit (a switch port to another VM,
   * a tap with a vnet header); read for every frame, so it may change.
   * Absent (every backend today): the device segments super-frames and
   * finishes checksums before send(), and never passes meta.
   */
  readonly txOffloads?: Offloads;
  /**
   * Host -> guest: called from the Node event loop with one whole Ethernet
   * frame each time. Set once by the device. The frame stays valid after the
   * call (the backend does not reuse its memory). `meta`, when given, says
   * the frame is a super-frame or carries a partial checksum (FrameMeta);
   * a backend that never passes it delivers ordinary frames, as before.
   */
  onFrame: ((frame: Uint8Array, meta?: FrameMeta) => void) | undefined;
  /**
   * Told by the device which receive offloads the guest accepted, when the
   * driver starts (DRIVER_OK) and again, all false, when it is reset. A
   * backend may then hand super-frames or partial checksums the guest takes
   * whole, and avoid work for one that does not; the device converts
   * whatever it gets either way. Optional: backends without meta ignore it.
   */
  setGuestOffloads?(offloads: GuestOffloads): void;
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

/**
 * The largest super-frame (FrameMeta.gsoType, or a guest's GSO transmit):
 * an IPv6 header (40 bytes) and the largest payload it can say (65535 bytes)
 * behind an Ethernet header with one VLAN tag (the virtio spec, 5.1.6.3, counts
 * 14 + 40 + 65535 = 65589 bytes without the tag).
 */
export const MAX_GSO_FRAME_BYTES = 18 + 40 + 65535;

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
