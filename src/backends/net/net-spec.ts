// The `--net` option: the text after `--net` -> NetSpec, refusing anything
// unclear with one line that names the offending key or value.
//
//   tap=NAME                                      a Linux tap device
//   socket=listen:PATH | socket=connect:PATH      a Unix stream socket (QEMU's -netdev stream framing)
//   socket=udp:HOST:PORT,peer=HOST:PORT           one frame per UDP datagram (QEMU's -netdev dgram)
//   ...,mac=52:54:00:12:34:56                     the guest's MAC address
//
// Options are separated by commas; a comma inside a value (a path) is written
// twice, as in QEMU. IPv6 addresses go in brackets: udp:[::1]:5001.
// (Only functions here: net-backend.ts re-exports them.)

import { NetBackendError, type HostPort, type NetBackendSpec, type NetSpec } from "./net-backend.js";

const KEYS = ["tap", "socket", "mac", "peer"];
const BACKEND_HINT = "tap=NAME, socket=listen:PATH, socket=connect:PATH or socket=udp:HOST:PORT,peer=HOST:PORT";
/** sockaddr_un.sun_path holds 108 bytes on Linux, the last one a NUL. */
const MAX_UNIX_PATH_BYTES = 107;
/** IFNAMSIZ is 16, including the NUL. */
const MAX_IFNAME = 15;

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
  for (const item of splitOptions(text.trim())) {
    if (item === "") fail(text.trim() === "" ? `needs a backend: ${BACKEND_HINT}` : "empty option between commas");
    const eq = item.indexOf("=");
    const key = eq < 0 ? item : item.slice(0, eq);
    const value = eq < 0 ? "" : item.slice(eq + 1);
    if (!KEYS.includes(key)) fail(`unknown option '${key}' (known: ${KEYS.join(", ")})`);
    if (value === "") fail(`'${key}' needs a value (${key}=...)`);
    if (values.has(key)) fail(`'${key}' is given twice`);
    values.set(key, value);
  }
  const tap = values.get("tap");
  const socket = values.get("socket");
  const peer = values.get("peer");
  if (tap !== undefined && socket !== undefined) fail("choose one backend: tap=... or socket=...");
  let backend: NetBackendSpec;
  if (tap !== undefined) backend = { kind: "tap", ifname: parseIfname(tap) };
  else if (socket !== undefined) backend = parseSocket(socket, peer);
  else fail(`needs a backend: ${BACKEND_HINT}`);
  if (peer !== undefined && backend.kind !== "udp") fail("'peer' is only for socket=udp:...");
  const mac = values.get("mac");
  return mac === undefined ? { backend } : { backend, mac: parseMac(mac) };
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
