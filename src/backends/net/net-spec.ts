// The `--net` option: the text after `--net` -> NetSpec, refusing anything
// unclear with one line that names the offending key or value.
//
//   user[,hostfwd=tcp:HOSTPORT:GUESTPORT]...      user-mode NAT (QEMU's -netdev user); also
//        [,net=10.0.2.0/24][,host=10.0.2.2][,dns=10.0.2.3][,dhcpstart=10.0.2.15]
//   switch=NAME[,vlan=ID][,bw=RATE][,pps=RATE]    a port on the host's virtual switch NAME, with
//                                                 rate limits in bytes/s (K, M, G: 1024s) and frames/s
//        [,nat[,hostfwd=...]]                     ... whose NAT uplink is created with it
//        [,vxlan=VNI,remote=IP[:PORT]...[,local=IP[:PORT]]]  ... and its VXLAN uplink
//   tap=NAME                                      a Linux tap device
//   socket=listen:PATH | socket=connect:PATH      a Unix stream socket (QEMU's -netdev stream framing)
//   socket=udp:HOST:PORT,peer=HOST:PORT           one frame per UDP datagram (QEMU's -netdev dgram)
//   ...,mac=52:54:00:12:34:56                     the guest's MAC address
//
// Options are separated by commas; a comma inside a value (a path) is written
// twice, as in QEMU. IPv6 addresses go in brackets: udp:[::1]:5001.
// (Only functions here: net-backend.ts re-exports them.)

import { NetBackendError, type HostPort, type NetBackendSpec, type NetSpec, type VxlanSpec } from "./net-backend.js";
import { defaultUserNetConfig, type HostForward, type UserNetConfig } from "../../net/nat/user-net.js";
import { parseIpv4Address } from "../../net/packet.js";

const KEYS = ["user", "switch", "tap", "socket", "mac", "peer", "vlan", "nat", "hostfwd", "net", "host", "dns", "dhcpstart", "vxlan", "remote", "local", "bw", "pps"];
/** Keys that take no value. */
const FLAGS = ["user", "nat"];
/** Keys that may be given more than once. */
const REPEATABLE = ["hostfwd", "remote"];
const BACKEND_HINT = "user, switch=NAME, tap=NAME, socket=listen:PATH, socket=connect:PATH or socket=udp:HOST:PORT,peer=HOST:PORT";
/** sockaddr_un.sun_path holds 108 bytes on Linux, the last one a NUL. */
const MAX_UNIX_PATH_BYTES = 107;
/** IFNAMSIZ is 16, including the NUL. */
const MAX_IFNAME = 15;
/** RFC 7348 5: the IANA-assigned VXLAN port. */
export const VXLAN_PORT = 4789;

function fail(message: string): never {
  throw new NetBackendError(`--net: ${message}`);
}

/** Splits at single commas; ",," stands for a comma inside a value. */
function splitOptions(text: string): string[] {
  const items: string[] = [];
  let cur = "";
  for (let i = 0; i < text.length; i++) {
    if (text[i] !== ",") cur += text[i];
    else if (text[i + 1] === ",") { cur += ","; i++; }
    else { items.push(cur); cur = ""; }
  }
  items.push(cur);
  return items;
}

export function parseNetSpec(text: string): NetSpec {
  const values = new Map<string, string>();
  const lists = new Map<string, string[]>();
  for (const item of splitOptions(text.trim())) {
    if (item === "") fail(text.trim() === "" ? `needs a backend: ${BACKEND_HINT}` : "empty option between commas");
    const eq = item.indexOf("=");
    const key = eq < 0 ? item : item.slice(0, eq);
    const value = eq < 0 ? "" : item.slice(eq + 1);
    if (!KEYS.includes(key)) fail(`unknown option '${key}' (known: ${KEYS.join(", ")})`);
    if (FLAGS.includes(key)) {
      if (eq >= 0 && value !== "on") fail(`'${key}' takes no value`);
    } else if (value === "") fail(`'${key}' needs a value (${key}=...)`);
    if (REPEATABLE.includes(key)) {
      lists.set(key, [...(lists.get(key) ?? []), value]);
      continue;
    }
    if (values.has(key)) fail(`'${key}' is given twice`);
    values.set(key, value);
  }
  const chosen = ["user", "switch", "tap", "socket"].filter((k) => values.has(k));
  if (chosen.length > 1) fail(`choose one backend: ${chosen.map((k) => (FLAGS.includes(k) ? k : `${k}=...`)).join(" or ")}`);
  const only = (keys: string[], where: string) => {
    for (const k of keys) if (values.has(k) || lists.has(k)) fail(`'${k}' is only for ${where}`);
  };
  let backend: NetBackendSpec;
  switch (chosen[0]) {
    case "user":
      only(["peer", "vlan", "nat", "vxlan", "remote", "local", "bw", "pps"], "other backends");
      backend = { kind: "user", config: parseUserNet(values, lists.get("hostfwd") ?? []) };
      break;
    case "switch": {
      only(["peer"], "socket=udp:...");
      const nat = values.has("nat");
      if (!nat) only(["hostfwd", "net", "host", "dns", "dhcpstart"], "user or switch=NAME,nat");
      backend = {
        kind: "switch",
        name: parseSwitchName(values.get("switch")!),
        vlan: values.has("vlan") ? parseVlan(values.get("vlan")!) : undefined,
        nat: nat ? parseUserNet(values, lists.get("hostfwd") ?? []) : undefined,
        vxlan: parseVxlan(values, lists.get("remote") ?? []),
        bandwidth: values.has("bw") ? parseRate(values.get("bw")!, "bw", true) : undefined,
        packetRate: values.has("pps") ? parseRate(values.get("pps")!, "pps", false) : undefined,
      };
      break;
    }
    case "tap":
    case "socket":
      only(["hostfwd", "net", "host", "dns", "dhcpstart", "vlan", "nat", "vxlan", "remote", "local", "bw", "pps"], "user or switch=NAME");
      backend = chosen[0] === "tap" ? { kind: "tap", ifname: parseIfname(values.get("tap")!) } : parseSocket(values.get("socket")!, values.get("peer"));
      if (values.has("peer") && backend.kind !== "udp") fail("'peer' is only for socket=udp:...");
      break;
    default:
      fail(`needs a backend: ${BACKEND_HINT}`);
  }
  const mac = values.get("mac");
  return mac === undefined ? { backend } : { backend, mac: parseMac(mac) };
}

/** A rate per second: a number with an optional K, M or G (powers of 1024) for bytes, a plain number for frames. */
function parseRate(text: string, key: string, withUnits: boolean): number {
  const m = (withUnits ? /^(\d+)([KMG]?)$/i : /^(\d+)()$/).exec(text);
  const value = m ? Number(m[1]) * 1024 ** " KMG".indexOf((m[2] || " ").toUpperCase()) : NaN;
  if (!(value >= 1 && value <= 2 ** 40)) fail(`${key}=${text}: expected a rate per second${withUnits ? " like 10M (bytes)" : " like 1000 (frames)"}`);
  return value;
}

/** A switch name: what a user types to join VMs, kept short and printable (it names metrics too). */
function parseSwitchName(name: string): string {
  if (!/^[A-Za-z0-9_.-]{1,32}$/.test(name)) fail(`switch name '${name}' must be 1-32 letters, digits, '_', '.' or '-'`);
  return name;
}

/** IEEE 802.1Q: VLAN IDs 0 and 4095 are reserved; 1..4094 name a VLAN. */
function parseVlan(text: string): number {
  const id = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(id >= 1 && id <= 4094)) fail(`vlan=${text}: a VLAN ID is 1..4094`);
  return id;
}

function parseVxlan(values: Map<string, string>, remotes: string[]): VxlanSpec | undefined {
  const vniText = values.get("vxlan");
  if (vniText === undefined) {
    if (remotes.length > 0 || values.has("local")) fail("'remote' and 'local' need vxlan=VNI");
    return undefined;
  }
  const vni = /^\d+$/.test(vniText) ? Number(vniText) : NaN;
  // RFC 7348 5: the VNI is a 24-bit field.
  if (!(vni >= 0 && vni < 1 << 24)) fail(`vxlan=${vniText}: a VNI is 0..16777215`);
  if (remotes.length === 0) fail("vxlan=VNI needs remote=IP[:PORT] (the other end of the tunnel)");
  const withPort = (text: string, key: string) => parseHostPort(/^\[.*\]:\d+$|^[^:]+:\d+$/.test(text) ? text : text.includes(":") ? `[${text}]:${VXLAN_PORT}` : `${text}:${VXLAN_PORT}`, key);
  const local = values.get("local");
  return { vni, remotes: remotes.map((r) => withPort(r, "remote")), local: local === undefined ? undefined : withPort(local, "local") };
}

/** The user-mode network's addresses (QEMU's option names) and its port forwards. */
function parseUserNet(values: Map<string, string>, forwards: string[]): UserNetConfig {
  const config = defaultUserNetConfig();
  const net = values.get("net");
  if (net !== undefined) {
    const m = /^([\d.]+)\/(\d+)$/.exec(net);
    const addr = m ? parseIpv4Address(m[1]) : undefined;
    const prefix = m ? Number(m[2]) : NaN;
    if (addr === undefined || !(prefix >= 8 && prefix <= 29)) fail(`net=${net}: expected ADDRESS/PREFIX with a prefix of 8..29, like 10.0.2.0/24`);
    const mask = (~0 << (32 - prefix)) >>> 0;
    config.network = (addr & mask) >>> 0;
    config.prefixLength = prefix;
    // As QEMU: the host, DNS and first DHCP address keep their offsets (.2, .3, .15) in the new network.
    config.gateway = (config.network | 2) >>> 0;
    config.dns = (config.network | 3) >>> 0;
    config.dhcpStart = (config.network | Math.min(15, (~mask >>> 0) - 1)) >>> 0;
  }
  const mask = (~0 << (32 - config.prefixLength)) >>> 0;
  const inNet = (key: string): number | undefined => {
    const text = values.get(key);
    if (text === undefined) return undefined;
    const ip = parseIpv4Address(text);
    if (ip === undefined) fail(`${key}=${text}: expected an IPv4 address`);
    if (((ip & mask) >>> 0) !== config.network) fail(`${key}=${text} is not inside the network`);
    return ip;
  };
  config.gateway = inNet("host") ?? config.gateway;
  config.dns = inNet("dns") ?? config.dns;
  config.dhcpStart = inNet("dhcpstart") ?? config.dhcpStart;
  if (config.gateway === config.dns) fail("host= and dns= must differ");
  config.hostForwards = forwards.map((f) => parseHostForward(f, config.network, mask));
  return config;
}

/**
 * `tcp:HOSTPORT:GUESTPORT`, or QEMU's `tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`.
 * The host side listens on 127.0.0.1 unless an address is given.
 */
export function parseHostForward(text: string, network?: number, mask?: number): HostForward {
  const m = /^(tcp|udp):(?:([\d.]*):)?(\d+)(?:-([\d.]*):(\d+)|:(\d+))$/.exec(text);
  if (!m) fail(`hostfwd=${text}: expected tcp:HOSTPORT:GUESTPORT or tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`);
  if (m[1] !== "tcp") fail(`hostfwd=${text}: only tcp forwards are supported`);
  const port = (p: string, what: string, min: number) => {
    const n = Number(p);
    if (!(n >= min && n <= 65535)) fail(`hostfwd=${text}: ${what} port ${p} is not in ${min}..65535`);
    return n;
  };
  const hostAddress = m[2] ? m[2] : "127.0.0.1";
  if (parseIpv4Address(hostAddress) === undefined) fail(`hostfwd=${text}: '${hostAddress}' is not an IPv4 address`);
  let guestAddress: number | undefined;
  if (m[4]) {
    guestAddress = parseIpv4Address(m[4]);
    if (guestAddress === undefined) fail(`hostfwd=${text}: '${m[4]}' is not an IPv4 address`);
    if (network !== undefined && mask !== undefined && ((guestAddress & mask) >>> 0) !== network) fail(`hostfwd=${text}: the guest address is not inside the network`);
  }
  return { protocol: "tcp", hostAddress, hostPort: port(m[3], "host", 0), guestAddress, guestPort: port(m[5] ?? m[6], "guest", 1) };
}

/** Linux's dev_valid_name: 1..15 bytes, not "." or "..", no '/', ':' or white space. */
function parseIfname(name: string): string {
  if (Buffer.byteLength(name) > MAX_IFNAME) fail(`tap name '${name}' is longer than ${MAX_IFNAME} bytes`);
  if (name === "." || name === ".." || /[/:\s]/.test(name)) fail(`'${name}' is not a valid interface name`);
  return name;
}

function parseSocket(value: string, peer: string | undefined): NetBackendSpec {
  const colon = value.indexOf(":");
  const mode = colon < 0 ? value : value.slice(0, colon);
  const rest = colon < 0 ? "" : value.slice(colon + 1);
  if (mode === "listen" || mode === "connect") {
    if (rest === "") fail(`socket=${mode}: needs a path (socket=${mode}:PATH)`);
    if (Buffer.byteLength(rest) > MAX_UNIX_PATH_BYTES) fail(`socket path '${rest}' is longer than ${MAX_UNIX_PATH_BYTES} bytes`);
    return { kind: "unix", mode, path: rest };
  }
  if (mode === "udp") {
    if (peer === undefined) fail("socket=udp:... needs peer=HOST:PORT");
    return { kind: "udp", local: parseHostPort(rest, "socket=udp"), peer: parseHostPort(peer, "peer") };
  }
  fail(`socket=${value}: expected listen:PATH, connect:PATH or udp:HOST:PORT`);
}

/** HOST:PORT or [IPV6]:PORT; the port 1..65535. */
function parseHostPort(text: string, key: string): HostPort {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:[\]]+):(\d+)$/.exec(text);
  if (!m) fail(`'${key}' expects HOST:PORT (IPv6 in brackets: [::1]:5001), not '${text}'`);
  const port = Number(m[2]);
  if (port < 1 || port > 65535) fail(`'${key}': port ${m[2]} is not in 1..65535`);
  return { host: m[1], port };
}

/** "52:54:00:12:34:56" -> 6 bytes; refuses multicast (broadcast included) and all-zero addresses. */
export function parseMac(text: string): Uint8Array {
  if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(text)) fail(`'mac' expects six hex bytes like 52:54:00:12:34:56, not '${text}'`);
  const mac = Uint8Array.from(text.split(":"), (h) => parseInt(h, 16));
  if (mac[0] & 1) fail(`mac ${text} is a multicast address (the first byte must be even)`);
  if (mac.every((b) => b === 0)) fail("mac 00:00:00:00:00:00 is not a valid address");
  return mac;
}

export function formatMac(mac: Uint8Array): string {
  return Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join(":");
}
