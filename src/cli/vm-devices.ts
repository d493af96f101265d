// The virtio devices a `tsvisor run` asks for: `--disk` and `--net` specs
// parsed, their host resources opened (image files, sockets, tap), and the
// device models built on them. They are opened once and outlive guest reboots;
// close() releases them when tsvisor ends.

import { createHash } from "node:crypto";
import { existsSync, rmSync, statSync } from "node:fs";
import { resolve } from "node:path";
import type { VirtioFs } from "../devices/virtio/fs/device.js";
import { DiskImageError, type CacheMode } from "../backends/disk/types.js";
import { openNetBackend, parseNetSpec, NetBackendError, type NetBackend, type NetSpec, type NetStats } from "../backends/net/net-backend.js";
import type { PortCounters, SwitchPort } from "../net/switch.js";
import type { UserNet, UserNetStats } from "../net/nat/user-net.js";
import { ipv4String } from "../net/packet.js";
import type { IoThreadBlk } from "../devices/virtio/blk-iothread.js";
import { VirtioNet } from "../devices/virtio/net.js";
import type { VirtioDevice } from "../devices/virtio/virtio.js";
import type { VirtioVsock } from "../devices/virtio/vsock/device.js";
import { VsockBackendError } from "../devices/virtio/vsock/errors.js";
import { UsageError } from "./size.js";

export interface DiskSpec {
  path: string;
  format?: "raw" | "qcow2";
  readOnly: boolean;
  cache?: CacheMode;
}

const CACHE_MODES: readonly CacheMode[] = ["writeback", "writethrough", "unsafe"];

/** `PATH[,format=raw|qcow2][,readonly][,cache=writeback|writethrough|unsafe]`, as QEMU's -drive spells them. */
export function parseDiskSpec(spec: string): DiskSpec {
  const [path, ...opts] = spec.split(",");
  if (!path) throw new UsageError(`--disk: expected PATH[,format=raw|qcow2][,readonly][,cache=MODE], got '${spec}'`);
  const out: DiskSpec = { path, readOnly: false };
  for (const opt of opts) {
    const [key, value] = opt.split("=", 2);
    if (key === "readonly" && (value === undefined || value === "on")) out.readOnly = true;
    else if (key === "format" && (value === "raw" || value === "qcow2")) out.format = value;
    else if (key === "cache" && CACHE_MODES.includes(value as CacheMode)) out.cache = value as CacheMode;
    else if (key === "format" || key === "cache") throw new UsageError(`--disk: ${key}=${value ?? ""} is not one of ${key === "format" ? "raw, qcow2" : CACHE_MODES.join(", ")}`);
    else throw new UsageError(`--disk: unknown option '${opt}' (format=, readonly, cache=)`);
  }
  return out;
}

/** A shared folder that cannot be opened (permissions, a directory gone since the check): one line. */
export class ShareError extends Error {}

export interface ShareSpec {
  hostDir: string;
  guestDir: string;
  readOnly: boolean;
  /** The virtio-fs tag the guest mounts: share0, share1, ... by position. */
  tag: string;
}

/**
 * `HOSTDIR:GUESTDIR[,ro]`: HOSTDIR must be a directory; GUESTDIR an absolute
 * guest path without the characters init's tsvisor.share= list uses as
 * separators (comma, colon, whitespace).
 */
export function parseShareSpec(spec: string, index: number): ShareSpec {
  let body = spec;
  let readOnly = false;
  if (body.endsWith(",ro")) {
    readOnly = true;
    body = body.slice(0, -3);
  } else if (body.endsWith(",rw")) {
    body = body.slice(0, -3);
  }
  const colon = body.lastIndexOf(":");
  const hostDir = body.slice(0, colon);
  const guestDir = body.slice(colon + 1);
  if (colon <= 0 || !guestDir) throw new UsageError(`--share: expected HOSTDIR:GUESTDIR[,ro], got '${spec}'`);
  if (!guestDir.startsWith("/") || /[\s,:'"\\$`]/.test(guestDir)) throw new UsageError(`--share ${spec}: GUESTDIR must be an absolute path without spaces, commas, colons, quotes, $ or backslashes`);
  const st = statSync(hostDir, { throwIfNoEntry: false });
  if (!st) throw new UsageError(`--share ${spec}: ${hostDir} does not exist`);
  if (!st.isDirectory()) throw new UsageError(`--share ${spec}: ${hostDir} is not a directory`);
  return { hostDir: resolve(hostDir), guestDir, readOnly, tag: `share${index}` };
}

/** init's tsvisor.share= value (images/init.ts): TAG:GUESTDIR,... */
export function shareCmdline(shares: ShareSpec[]): string {
  return shares.map((s) => `${s.tag}:${s.guestDir}`).join(",");
}

export interface VsockSpec {
  /** The Unix socket host programs connect to (PATH), and the prefix of those guests connect to (PATH_PORT). */
  path: string;
  /** The guest's CID (3 or more; default 3). */
  cid: number;
}

export const DEFAULT_GUEST_CID = 3;
/** Linux keeps a Unix socket path in 108 bytes, its NUL included; PATH_4294967295 must fit. */
export const MAX_VSOCK_PATH = 107 - "_4294967295".length;

/** `PATH[,cid=N]`, as Firecracker's vsock device: uds_path and guest_cid. */
export function parseVsockSpec(spec: string): VsockSpec {
  const [path, ...opts] = spec.split(",");
  if (!path) throw new UsageError(`--vsock: expected PATH[,cid=N], got '${spec}'`);
  if (Buffer.byteLength(path) > MAX_VSOCK_PATH) throw new UsageError(`--vsock: the path ${path} is longer than ${MAX_VSOCK_PATH} bytes (a Unix socket path, with _PORT added, must fit in 107)`);
  const out: VsockSpec = { path, cid: DEFAULT_GUEST_CID };
  for (const opt of opts) {
    const [key, value] = opt.split("=", 2);
    if (key === "cid") {
      if (value === undefined || !/^\d{1,10}$/.test(value) || Number(value) < 3 || Number(value) > 0xffff_fffe) {
        throw new UsageError(`--vsock: cid=${value ?? ""}: expected 3..4294967294 (0-2 are reserved: hypervisor, local, host)`);
      }
      out.cid = Number(value);
    } else throw new UsageError(`--vsock: unknown option '${opt}' (cid=)`);
  }
  return out;
}

/**
 * A stable, locally administered MAC per network spec (QEMU's 52:54:00
 * prefix), so a VM keeps its address across runs. A host daemon seeds it
 * with the VM's name, so two VMs with the same spec on one switch differ.
 */
export function defaultMac(spec: string, index: number): Uint8Array {
  const h = createHash("sha256").update(`${index}:${spec}`).digest();
  return Uint8Array.of(0x52, 0x54, 0x00, h[0], h[1], h[2]);
}

/** parseNetSpec with its errors (which already start with "--net:") as usage errors. */
function parseNetOption(spec: string): NetSpec {
  try {
    return parseNetSpec(spec);
  } catch (e) {
    if (e instanceof NetBackendError) throw new UsageError(e.message);
    throw e;
  }
}

/** Checks the spelling of every --disk and --net before anything slow (an image pull) runs. */
export function checkDeviceSpecs(diskSpecs: string[], netSpecs: string[], shareSpecs: string[] = [], vsockSpec?: string): void {
  diskSpecs.forEach(parseDiskSpec);
  netSpecs.forEach(parseNetOption);
  shareSpecs.forEach(parseShareSpec);
  if (vsockSpec !== undefined) parseVsockSpec(vsockSpec);
}

/**
 * The cards `tsvisor run` gives a guest: `--net` as given; none with
 * `--net none`; else one on the user-mode network, as QEMU does. Each
 * `-p HOSTPORT:GUESTPORT` becomes a hostfwd of the first card with a NAT.
 */
export function resolveNetSpecs(nets: string[] | undefined, publish: string[] = []): string[] {
  if (nets?.includes("none")) {
    if (nets.length > 1) throw new UsageError("--net none leaves the guest without a network: it cannot go with other --net options");
    if (publish.length > 0) throw new UsageError("-p needs a network: drop --net none");
    return [];
  }
  const specs = nets && nets.length > 0 ? [...nets] : ["user"];
  if (publish.length === 0) return specs;
  const natIndex = specs.findIndex((s) => {
    const b = parseNetOption(s).backend;
    return b.kind === "user" || (b.kind === "switch" && b.nat !== undefined);
  });
  if (natIndex < 0) throw new UsageError("-p forwards a host port through the user-mode network: add --net user (or switch=NAME,nat)");
  for (const p of publish) {
    const m = /^(?:([\d.]+):)?(\d+):(\d+)$/.exec(p);
    if (!m) throw new UsageError(`-p ${p}: expected HOSTPORT:GUESTPORT or HOSTADDR:HOSTPORT:GUESTPORT`);
    specs[natIndex] += `,hostfwd=tcp:${m[1] ?? ""}:${m[2]}-:${m[3]}`;
  }
  parseNetOption(specs[natIndex]);
  return specs;
}

export interface NetCardInfo extends NetStats {
  name: string;
  backend: string;
  port?: { name: string; allowedIp?: string } & PortCounters;
  nat?: UserNetStats & { tcp: unknown; udpFlows: number; dhcpLeases: string[] };
}

/** A disk frozen by VmDevices.freezeDisks: the image a snapshot names, and the overlay the VM goes on with. */
export interface FrozenDisk {
  /** Its place among the --disk specs. */
  index: number;
  frozen: string;
  overlay: string;
  /** The spec of the overlay (the frozen spec's cache mode kept). */
  spec: string;
}

export class VmDevices {
  private constructor(readonly devices: VirtioDevice[], readonly nets: NetBackend[] = [], private readonly disks: { blk: IoThreadBlk; spec: DiskSpec }[] = [],
    readonly vsock?: VirtioVsock, readonly vsockPath?: string) {}

  /**
   * While the devices are paused (a snapshot): each writable disk's image D
   * is closed, flushed, and left as it is; a new qcow2 overlay
   * `D.<tag>.qcow2` backed by D takes the guest's writes from now on. Each
   * one switched is told to `switched` at once (a later failure leaves it
   * switched). Throws one line when an overlay exists already or does not open.
   */
  async freezeDisks(tag: string, switched: (d: FrozenDisk) => void): Promise<FrozenDisk[]> {
    const out: FrozenDisk[] = [];
    for (const [index, { blk, spec }] of this.disks.entries()) {
      if (blk.image.readOnly) continue;
      const frozen = blk.image.path;
      const overlay = `${frozen}.${tag}.qcow2`;
      if (existsSync(overlay)) throw new DiskImageError(`${overlay} exists already: not freezing ${frozen} under it`);
      const size = (blk.readConfig(0, 4) + blk.readConfig(4, 4) * 2 ** 32) * 512;
      const { createQcow2 } = await import("../backends/disk/qcow2/create.js");
      createQcow2(overlay, { size, backingFile: frozen, backingFormat: blk.image.format });
      try {
        await blk.reopen({ path: overlay, format: "qcow2", readOnly: false, cache: spec.cache });
      } catch (e) {
        rmSync(overlay, { force: true });
        throw e;
      }
      const d = { index, frozen, overlay, spec: `${overlay},format=qcow2${spec.cache ? `,cache=${spec.cache}` : ""}` };
      switched(d);
      out.push(d);
    }
    return out;
  }

  /**
   * Live migration over storage both hosts share: each writable disk is
   * closed (flushed: a qcow2 image writes back the clusters it held in
   * reserve and the refcounts it had yet to drop) and opened again, so what
   * this process holds of its metadata is what the file says. The source
   * does it in the pause, before the target runs; the target after that,
   * before its guest touches the disk. Devices paused or not yet driven.
   */
  async reopenDisks(): Promise<void> {
    for (const { blk, spec } of this.disks) {
      if (blk.image.readOnly) continue;
      const { path, format } = blk.image;
      await blk.reopen({ path, format, readOnly: false, cache: spec.cache });
    }
  }

  /** Live migration with the disks copied along: each disk's device, which reads (source) or fills (target) it. */
  diskCopies(): IoThreadBlk[] {
    return this.disks.map((d) => d.blk);
  }

  /**
   * Per card: its backend, counters, and for a switch port the port's own
   * counters and drops by reason (what anti-spoofing and rate limits refused).
   */
  netInfo(): NetCardInfo[] {
    return this.nets.map((n, i) => {
      const port = (n as { port?: SwitchPort }).port;
      const nat = (n as { net?: UserNet }).net;
      return {
        name: `eth${i}`,
        backend: n.description,
        ...n.stats,
        port: port && { name: port.name, allowedIp: port.allowedIp === undefined ? undefined : ipv4String(port.allowedIp), ...port.counters },
        nat: nat && { ...nat.stats, tcp: nat.tcp.stats, udpFlows: nat.udp.stats.flows, dhcpLeases: nat.dhcp.leases().map((l) => `${l.mac}=${ipv4String(l.ip)}`) },
      };
    });
  }

  /** `--stats` lines for the cards' host side. */
  netStatsLines(): string[] {
    const lines: string[] = [];
    for (const n of this.nets) {
      const port = (n as { port?: SwitchPort }).port;
      if (port) lines.push(`  ${n.description}: ${port.describeCounters()}`);
      const nat = (n as { net?: UserNet }).net;
      if (nat) {
        const drops = Object.entries(nat.stats.drops).map(([r, k]) => `${r}=${k}`).join(" ");
        lines.push(`  ${n.description}: NAT in ${nat.stats.framesIn} frames, out ${nat.stats.framesOut} frames, ` +
          `${nat.tcp.stats.connectionsTotal ?? 0} TCP connections, ${nat.udp.stats.flowsOpened} UDP flows${drops ? `, dropped ${drops}` : ""}`);
      }
    }
    return lines.length ? ["network:", ...lines] : [];
  }

  /** The guest interfaces (eth0, ...) whose network answers DHCP: init brings them up (images/init.ts). */
  dhcpInterfaces(): string[] {
    return this.nets.flatMap((n, i) => (n.providesDhcp ? [`eth${i}`] : []));
  }

  /** Open every disk (each on its I/O thread, devices/virtio/blk-iothread.ts) and
   *  network backend; on any failure, close what was opened and throw one line. */
  static async open(diskSpecs: string[], netSpecs: string[], warn?: (line: string) => void, macSeed?: string, opts: { importCopies?: boolean; shares?: string[]; vsock?: string } = {}): Promise<VmDevices> {
    const disks: { blk: IoThreadBlk; spec: DiskSpec }[] = [];
    const nets: NetBackend[] = [];
    const devices: VirtioDevice[] = [];
    const shares: VirtioFs[] = [];
    try {
      const parsedDisks = diskSpecs.map(parseDiskSpec);
      const parsedNets = netSpecs.map(parseNetOption);
      // Each kind's code loads when a VM has one (a fast start's `run` needs neither disks, shares nor vsock).
      const { IoThreadBlk } = parsedDisks.length > 0 ? await import("../devices/virtio/blk-iothread.js") : { IoThreadBlk: undefined };
      for (const [i, d] of parsedDisks.entries()) {
        const disk = await IoThreadBlk!.open({ path: d.path, format: d.format, readOnly: d.readOnly, cache: d.cache, importCopy: opts.importCopies }, { name: `blk${i}`, serial: `tsvisor-disk${i}` });
        disks.push({ blk: disk, spec: d });
        devices.push(disk);
      }
      for (const [i, parsed] of parsedNets.entries()) {
        // The backend knows the card's address too: a switch port lets it send from no other.
        const spec = { ...parsed, mac: parsed.mac ?? defaultMac(`${macSeed ?? ""}${netSpecs[i]}`, i) };
        const backend = await openNetBackend(spec, { warn, portName: `${macSeed ?? "vm"}/net${i}` });
        nets.push(backend);
        devices.push(new VirtioNet(backend, { name: `net${i}`, mac: spec.mac }));
      }
      const { VirtioFs } = opts.shares?.length ? await import("../devices/virtio/fs/device.js") : { VirtioFs: undefined };
      for (const [i, spec] of (opts.shares ?? []).entries()) {
        const s = parseShareSpec(spec, i);
        try {
          const fs = new VirtioFs!({ tag: s.tag, hostDir: s.hostDir, readOnly: s.readOnly, name: `fs${i}` });
          shares.push(fs);
          devices.push(fs);
        } catch (e) {
          throw new ShareError(`--share ${spec}: cannot open ${s.hostDir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
        }
      }
      // The vsock device goes after the disks and cards, so theirs keep their slots.
      let vsock: VirtioVsock | undefined;
      let vsockPath: string | undefined;
      if (opts.vsock !== undefined) {
        const spec = parseVsockSpec(opts.vsock);
        const [{ VirtioVsock }, { UnixVsockBackend }] = await Promise.all([import("../devices/virtio/vsock/device.js"), import("../devices/virtio/vsock/unix-backend.js")]);
        vsock = new VirtioVsock({ name: "vsock0", guestCid: spec.cid, backend: await UnixVsockBackend.open(spec.path) });
        vsockPath = spec.path;
        devices.push(vsock);
      }
      return new VmDevices(devices, nets, disks, vsock, vsockPath);
    } catch (e) {
      for (const d of shares) d.close();
      await Promise.allSettled(disks.map((d) => d.blk.close()));
      for (const n of nets) n.close();
      throw e;
    }
  }

  /** Flushes and closes the disks (a qcow2 image writes its refcounts back), closes the sockets and taps. */
  async close(): Promise<void> {
    const errors: unknown[] = [];
    for (const d of this.devices) {
      try {
        await d.close?.();
      } catch (e) {
        errors.push(e);
      }
    }
    if (errors.length) throw errors[0];
  }
}

export function isDeviceError(e: unknown): e is Error {
  return e instanceof DiskImageError || e instanceof NetBackendError || e instanceof ShareError || e instanceof VsockBackendError;
}
