// The host daemon's VM table over one engine Host: create, look up, delete,
// persist (state directory), restore at start, stop everything at the end.
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { createHash } from "node:crypto";
import { join } from "node:path";
import type { Host } from "../host/host.js";
import { parseDiskSpec, parseVsockSpec, MAX_VSOCK_PATH } from "../cli/vm-devices.js";
import { createQcow2 } from "../backends/disk/qcow2/create.js";
import { VERSION } from "../cli/version.js";
import { ApiError } from "./errors.js";
import { checkName, parseDefinition, parsePatch, type HostLimits, type VmDefinition } from "./definition.js";
import { prepareRootDisk, removeRootDisk, rootDiskPath, rootDiskSpec } from "./root-disk.js";
import { ManagedVm, type SnapshotView, type SnapshotProgress, type MigrationStatus } from "./managed-vm.js";
import { readSnapshotMeta, type SnapshotMeta } from "../snapshot/snapshot.js";
import { SnapshotError } from "../snapshot/state.js";
import { StateStore } from "./store.js";
import { cloneNets, type MacChange } from "./clone-macs.js";
import type { MigrationListener, IncomingMigration } from "../snapshot/migration/receiver.js";
import type { MigrationResult } from "../snapshot/migration/sender.js";

/** What POST /v1/vms/{name}/migrate answers. */
export interface MigrateView extends MigrationResult {
  name: string;
}

export interface VmView {
  name: string;
  state: string;
  cpus: number;
  memBytes: number;
  cpuPercent: number;
  uptimeSeconds: number;
  config: VmDefinition;
  lastRun?: { end: unknown; exitStatus: number };
  /** Its vsock device: the Unix socket host programs connect to, and the guest's CID. */
  vsock?: { path: string; cid: number };
  /** While a snapshot of it is being written: how far. */
  snapshot?: SnapshotProgress;
}

export class Daemon {
  private readonly vms = new Map<string, ManagedVm>();
  /** The last migration of each VM that left this host by one, until a VM of its name is defined here again. */
  private readonly departed = new Map<string, MigrationStatus>();
  readonly limits: HostLimits;
  private migrationListener: { listener: MigrationListener; address: string } | undefined;

  constructor(readonly engine: Host, private readonly store: StateStore, readonly log: (line: string) => void) {
    const info = engine.info();
    this.limits = { pcpus: info.pcpus, poolBytes: info.pool.limitBytes };
  }

  /** Definitions from the state directory, stopped, or started when autostart. */
  restore(): void {
    for (const { file, data } of this.store.load()) {
      try {
        if (data instanceof Error) throw data;
        const def = parseDefinition(data, this.limits);
        if (this.vms.has(def.name)) throw new Error(`a second definition of '${def.name}'`);
        this.vms.set(def.name, this.newVm(def, true));
        this.log(`vm ${def.name} restored from ${file}`);
      } catch (e) {
        this.log(`skipping ${file}: ${(e as Error).message}`);
      }
    }
    for (const vm of this.vms.values()) {
      if (vm.def.autostart) vm.start().catch(() => {}); // the failure is logged
    }
  }

  private newVm(def: VmDefinition, restored = false): ManagedVm {
    this.departed.delete(def.name);
    return new ManagedVm(def, this.engine, this.log, restored, () => this.vsockSpec(def, true), (event) => this.prepareDisks(def, event));
  }

  /** The root disk of a VM with a system image that this host makes for it (root-disk.ts). */
  private rootDisk(def: VmDefinition): string | undefined {
    return def.image === undefined ? undefined : rootDiskPath(this.store.stateDir, def.name, def.image);
  }

  /** Before a cold start: its root disk made (or checked), if it has a system image. */
  private async prepareDisks(def: VmDefinition, event: (line: string) => void): Promise<void> {
    const path = this.rootDisk(def);
    if (path !== undefined) await prepareRootDisk(def, path, event);
  }

  /**
   * The vsock device a VM gets: its definition's, none for "none", else one
   * of the host's own at <state dir>/vsock/<name>.sock (CID 3), so that
   * `tsvisor vm exec` reaches every VM's guest agent without the user
   * planning for it. A name that would make the path too long for a Unix
   * socket gets a hash of it instead.
   */
  private vsockSpec(def: VmDefinition, opening = false): string | undefined {
    if (def.vsock === "none") return undefined;
    if (def.vsock !== undefined) return def.vsock;
    const dir = join(this.store.stateDir, "vsock");
    if (opening) mkdirSync(dir, { recursive: true, mode: 0o700 });
    let path = join(dir, `${def.name}.sock`);
    if (Buffer.byteLength(path) > MAX_VSOCK_PATH) path = join(dir, `${createHash("sha256").update(def.name).digest("hex").slice(0, 16)}.sock`);
    return path;
  }

  hostInfo() {
    const info = this.engine.info();
    return {
      version: VERSION,
      pcpus: info.pcpus,
      vms: this.vms.size,
      pool: { limitBytes: info.pool.limitBytes, committedBytes: info.pool.committedBytes, usedBytes: info.pool.framesInUse * 4096 },
      memory: this.engine.memory.stats(),
      snapshotSharing: this.engine.snapshotSharing.stats(),
      ...(this.migrationListener ? { migrationListen: this.migrationListener.address } : {}),
    };
  }

  /**
   * `tsvisor host --migration-listen`: take VMs live-migrated here. The
   * source's definition is checked as a create request's (a name in use
   * refuses the migration), its devices are opened from it (disks by the
   * same paths: storage both hosts see), and the arriving VM is registered
   * under its name at once (the name is taken) and persisted once it runs.
   * A migration that fails here leaves nothing behind. Resolves with the
   * address it listens on.
   */
  async listenForMigrations(at: { host: string; port: number }, token: string, tls = false): Promise<string> {
    const arriving = new Map<IncomingMigration, ManagedVm>();
    /** Images made here for disks copied along: removed when the migration fails. */
    const copies = new Map<IncomingMigration, string[]>();
    const listener = await this.engine.listenForMigrations({
      host: at.host, port: at.port, token, tls,
      config: async (incoming) => {
        const def = this.arrivingDefinition(incoming);
        if (this.vms.has(def.name)) throw new Error(`a VM named '${def.name}' exists on this host already`);
        if (incoming.disks) {
          const made: string[] = [];
          copies.set(incoming, made);
          def.disks = this.diskCopies(def, incoming.disks, made);
        }
        const vm = this.newVm(def);
        this.vms.set(def.name, vm);
        arriving.set(incoming, vm);
        return vm.openForMigration(incoming.from, incoming.disks !== undefined);
      },
      onVm: (engineVm) => {
        for (const [incoming, vm] of arriving) {
          if (vm.name !== engineVm.name) continue;
          arriving.delete(incoming);
          copies.delete(incoming);
          vm.adoptMigrated(engineVm);
          this.store.save(vm.def);
          this.log(`vm ${vm.name} defined: migrated here from ${incoming.from}`);
          return;
        }
      },
      onError: (line, incoming) => {
        this.log(line);
        const made = incoming && copies.get(incoming);
        if (incoming) copies.delete(incoming);
        const vm = incoming && arriving.get(incoming);
        if (!vm) {
          for (const f of made ?? []) rmSync(f, { force: true });
          return;
        }
        arriving.delete(incoming);
        this.vms.delete(vm.name);
        void vm.abandonMigration().finally(() => {
          for (const f of made ?? []) rmSync(f, { force: true });
        });
      },
    });
    const host = at.host.includes(":") ? `[${at.host}]` : at.host;
    const address = `${host}:${listener.port}`;
    this.migrationListener = { listener, address };
    return address;
  }

  /**
   * Disks copied along (`vm migrate --copy-disks`): a new, empty qcow2 image
   * per disk in `<state dir>/disks/`, the size the source announced, which
   * the migration fills; the disk specs name them instead of the source's
   * paths (read-only and cache mode kept). Each image made goes into `made`.
   */
  private diskCopies(def: VmDefinition, announced: { bytes: number }[], made: string[]): string[] {
    if (announced.length !== def.disks.length) throw new Error(`${announced.length} disks are copied along, its definition has ${def.disks.length}`);
    const dir = join(this.store.stateDir, "disks");
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\..*$/, "");
    return def.disks.map((spec, i) => {
      const d = parseDiskSpec(spec);
      const path = join(dir, `${def.name}-disk${i}-${stamp}.qcow2`);
      if (existsSync(path)) throw new Error(`${path} exists already`);
      createQcow2(path, { size: announced[i].bytes });
      made.push(path);
      return `${path},format=qcow2${d.readOnly ? ",readonly" : ""}${d.cache ? `,cache=${d.cache}` : ""}`;
    });
  }

  /** The incoming VM's definition (the source daemon's), checked as a client's and against the VM's shape. */
  private arrivingDefinition(incoming: IncomingMigration): VmDefinition {
    const v = incoming.vm;
    const stored = incoming.definition;
    let def: VmDefinition;
    try {
      // From the engine API (no daemon at the source): one from its shape, without devices (no vsock either).
      def = parseDefinition(stored ?? { name: v.name, cpus: v.cpus, memBytes: v.memBytes, append: v.cmdline, console: v.console, vsock: "none" }, this.limits);
    } catch (e) {
      throw new Error(`its VM definition: ${(e as Error).message}`);
    }
    if (def.cpus !== v.cpus || def.memBytes !== v.memBytes || def.console !== v.console) {
      throw new Error(`its VM definition (${def.cpus} vCPUs, ${def.memBytes} bytes, ${def.console}) does not fit the VM sent (${v.cpus} vCPUs, ${v.memBytes} bytes, ${v.console})`);
    }
    return def;
  }

  /**
   * POST /v1/vms/{name}/migrate: `{ to: "HOST:PORT", token, postcopy?, maxDowntimeMs?, maxBandwidthMiBps?, copyDisks?, tls? }`.
   * Once it runs on the target, the VM is stopped here, its devices closed,
   * and it is removed from this host (its definition too: the target has it).
   */
  async migrate(vm: ManagedVm, body: unknown): Promise<MigrateView> {
    if (typeof body !== "object" || body === null || Array.isArray(body)) throw new ApiError(400, "the body must be a JSON object");
    const b = body as Record<string, unknown>;
    const known = ["to", "token", "postcopy", "maxDowntimeMs", "maxBandwidthMiBps", "copyDisks", "tls"];
    for (const key of Object.keys(b)) if (!known.includes(key)) throw new ApiError(400, `unknown field '${key}' (known: ${known.join(", ")})`);
    if (typeof b.to !== "string") throw new ApiError(400, "to: the target's migration listener, HOST:PORT, is required");
    const m = /^(?:\[([^\]]+)\]|([^:\[\]]+)):(\d{1,5})$/.exec(b.to);
    if (!m || Number(m[3]) < 1 || Number(m[3]) > 65535) throw new ApiError(400, `to: expected HOST:PORT, got '${b.to}'`);
    if (typeof b.token !== "string" || b.token.length < 8) throw new ApiError(400, "token: the target's migration token (at least 8 characters) is required");
    if (b.postcopy !== undefined && typeof b.postcopy !== "boolean" && b.postcopy !== "auto") throw new ApiError(400, `postcopy: expected true, false or "auto"`);
    const maxDowntimeMs = b.maxDowntimeMs;
    if (maxDowntimeMs !== undefined && (typeof maxDowntimeMs !== "number" || !Number.isInteger(maxDowntimeMs) || maxDowntimeMs < 1 || maxDowntimeMs > 600_000)) {
      throw new ApiError(400, "maxDowntimeMs: expected an integer 1..600000");
    }
    const maxBandwidthMiBps = b.maxBandwidthMiBps;
    if (maxBandwidthMiBps !== undefined && (typeof maxBandwidthMiBps !== "number" || !Number.isInteger(maxBandwidthMiBps) || maxBandwidthMiBps < 1 || maxBandwidthMiBps > 1 << 20)) {
      throw new ApiError(400, "maxBandwidthMiBps: expected an integer 1..1048576 (MiB/s)");
    }
    if (b.copyDisks !== undefined && typeof b.copyDisks !== "boolean") throw new ApiError(400, "copyDisks: expected true or false");
    if (b.tls !== undefined && typeof b.tls !== "boolean") throw new ApiError(400, "tls: expected true or false");
    const result = await vm.migrate({ host: m[1] ?? m[2], port: Number(m[3]), token: b.token, tls: b.tls === true }, {
      postcopy: b.postcopy as boolean | "auto" | undefined, maxDowntimeMs: maxDowntimeMs as number | undefined, copyDisks: b.copyDisks === true,
      ...(maxBandwidthMiBps !== undefined ? { bandwidthBytesPerSec: (maxBandwidthMiBps as number) * (1 << 20) } : {}),
    });
    if (this.vms.get(vm.name) === vm && vm.state === "stopped") {
      // GET /v1/vms/{name}/migration still answers for it.
      this.departed.set(vm.name, vm.migration!);
      if (this.departed.size > 256) this.departed.delete(this.departed.keys().next().value!);
      this.store.remove(vm.name);
      this.vms.delete(vm.name);
    }
    this.log(`vm ${vm.name} migrated to ${result.target} (${result.rounds} rounds, ${result.sentBytes} bytes, downtime ${result.downtimeMs.toFixed(0)} ms): removed from this host`);
    return { name: vm.name, ...result };
  }

  /**
   * GET /v1/vms/{name}/migration: the VM's current or last migration from
   * this host, also once it has left (until a VM of its name is defined here
   * again); 404 when there is none.
   */
  migrationStatus(name: string): MigrationStatus {
    checkName(name);
    const vm = this.vms.get(name);
    const status = vm ? vm.migration : this.departed.get(name);
    if (status) return status;
    if (!vm) throw new ApiError(404, `no VM named '${name}'`);
    throw new ApiError(404, `VM '${name}' has not been migrated from this host`);
  }

  list(): ManagedVm[] {
    return [...this.vms.values()];
  }

  get(name: string): ManagedVm {
    checkName(name);
    const vm = this.vms.get(name);
    if (!vm) throw new ApiError(404, `no VM named '${name}'`);
    return vm;
  }

  create(body: unknown): ManagedVm {
    const name = typeof body === "object" && body !== null && !Array.isArray(body) ? (body as { name?: unknown }).name : undefined;
    if (typeof name === "string" && this.vms.has(name)) throw new ApiError(409, `a VM named '${name}' exists already`);
    let def = parseDefinition(body, this.limits);
    if (this.vms.has(def.name)) throw new ApiError(409, `a VM named '${def.name}' exists already`);
    // A system image: its own root disk first, /dev/vda (made at its first start); checked again with it (the disks' count).
    const root = this.rootDisk(def);
    if (root !== undefined) def = parseDefinition({ ...(body as object), disks: [rootDiskSpec(root), ...def.disks] }, this.limits);
    const vm = this.newVm(def);
    this.store.save(def);
    this.vms.set(def.name, vm);
    this.log(`vm ${def.name} defined`);
    return vm;
  }

  /** POST /v1/vms/{name}/snapshot: `{ path, diff?, live?, stayPaused?, disks?: "overlay" }`. */
  async snapshot(vm: ManagedVm, body: unknown): Promise<SnapshotView> {
    const b = fields(body, { path: "string", diff: "boolean", live: "boolean", stayPaused: "boolean", disks: "string" });
    if (b.diff && b.live) throw new ApiError(400, "diff and live: a live snapshot is a full one");
    const path = absolutePath(b.path);
    if (b.disks !== undefined && b.disks !== "overlay") throw new ApiError(400, `disks: expected "overlay", got '${b.disks as string}'`);
    const before = JSON.stringify(vm.def.disks);
    try {
      return await vm.snapshot(path, { diff: b.diff as boolean | undefined, live: b.live as boolean | undefined, stayPaused: b.stayPaused as boolean | undefined, disks: b.disks as "overlay" | undefined });
    } finally {
      // Disks switched to overlays (also when a later one failed): the definition names them now.
      if (JSON.stringify(vm.def.disks) !== before) this.store.save(vm.def);
    }
  }

  /**
   * POST /v1/restore: `{ path, name?, paused?, keepMacs? }`. The VM is
   * defined by the definition stored in the snapshot (checked as a create
   * request's: the file is not trusted), under `name` when given, and
   * registered and persisted as a created VM is, running or paused. A
   * snapshot taken through the engine API has none: then one from its shape,
   * without disks or network cards. Under another name than the snapshot's
   * VM it is a clone, whose network cards get new MAC addresses
   * (clone-macs.ts) unless `keepMacs`.
   */
  async restoreSnapshot(body: unknown): Promise<ManagedVm> {
    const b = fields(body, { path: "string", name: "string", paused: "boolean", keepMacs: "boolean" });
    const path = absolutePath(b.path);
    const newName = b.name === undefined ? undefined : checkName(b.name);
    let meta: SnapshotMeta;
    try {
      meta = readSnapshotMeta(path);
    } catch (e) {
      if (e instanceof SnapshotError) throw new ApiError(422, e.message);
      throw e;
    }
    let def = this.definitionOf(meta, path, newName);
    if (this.vms.has(def.name)) throw new ApiError(409, `a VM named '${def.name}' exists already`);
    const isClone = newName !== undefined && newName !== this.definitionOf(meta, path, undefined).name;
    let macs: MacChange[] = [];
    if (isClone && b.keepMacs !== true) {
      const clone = cloneNets(def.nets, def.name);
      def = { ...def, nets: clone.nets };
      macs = clone.changes;
    }
    const vm = this.newVm(def);
    // Its name is taken while its devices open; given back if the restore fails.
    this.vms.set(def.name, vm);
    try {
      await vm.restoreFrom(path, b.paused === true, macs);
    } catch (e) {
      this.vms.delete(def.name);
      throw e;
    }
    this.store.save(def);
    this.log(`vm ${def.name} defined from the snapshot ${path}`);
    return vm;
  }

  /** The snapshot's VM definition, checked as a client's; 422 when it is not one or does not fit the snapshot. */
  private definitionOf(meta: SnapshotMeta, path: string, name: string | undefined): VmDefinition {
    const stored = meta.definition;
    const v = meta.vm;
    let def: VmDefinition;
    try {
      if (stored === undefined) {
        // An engine VM has none of the daemon's devices: no vsock either.
        def = parseDefinition({ name: name ?? v.name, cpus: v.cpus, memBytes: v.memBytes, append: v.cmdline, console: v.console, vsock: "none" }, this.limits);
      } else {
        if (typeof stored !== "object" || stored === null || Array.isArray(stored)) throw new ApiError(422, "not an object");
        def = parseDefinition(name === undefined ? stored : { ...stored, name }, this.limits);
      }
    } catch (e) {
      // A name given was checked already: what is wrong is in the file.
      if (e instanceof ApiError) throw new ApiError(422, `${path}: its VM definition: ${e.message}`);
      throw e;
    }
    if (def.cpus !== v.cpus || def.memBytes !== v.memBytes || def.console !== v.console) {
      throw new ApiError(422, `${path}: its VM definition (${def.cpus} vCPUs, ${def.memBytes} bytes, ${def.console}) does not fit the snapshot's VM (${v.cpus} vCPUs, ${v.memBytes} bytes, ${v.console})`);
    }
    return def;
  }

  update(vm: ManagedVm, body: unknown): void {
    vm.update(parsePatch(body, this.limits));
    this.store.save(vm.def);
  }

  remove(vm: ManagedVm): void {
    if (vm.state !== "created" && vm.state !== "stopped") throw new ApiError(409, `VM '${vm.name}' is ${vm.state}: stop it before removing it`);
    this.store.remove(vm.name);
    this.vms.delete(vm.name);
    const root = this.rootDisk(vm.def);
    if (root !== undefined) removeRootDisk(vm.def, root);
    this.log(`vm ${vm.name} removed`);
  }

  view(vm: ManagedVm): VmView {
    const s = vm.stats();
    const out: VmView = {
      name: vm.name, state: vm.state, cpus: vm.def.cpus, memBytes: vm.def.memBytes,
      cpuPercent: s.cpuPercent, uptimeSeconds: s.uptimeSeconds, config: vm.def,
    };
    if (vm.lastOutcome) out.lastRun = vm.lastOutcome;
    const snapshot = vm.snapshotProgress;
    if (snapshot) out.snapshot = snapshot;
    const vsock = this.vsockSpec(vm.def);
    if (vsock !== undefined) out.vsock = parseVsockSpec(vsock);
    return out;
  }

  /** Stop every VM (their disks flushed and closed). */
  async stopAll(reason: string): Promise<void> {
    await Promise.all(this.list().map((vm) => vm.stop(reason)));
  }
}

/** A request body of only these fields, each of its type (400 otherwise); `path` required. */
function fields(body: unknown, known: Record<string, "string" | "boolean">): Record<string, unknown> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new ApiError(400, "the body must be a JSON object");
  const obj = body as Record<string, unknown>;
  for (const [key, value] of Object.entries(obj)) {
    const kind = known[key];
    if (!kind) throw new ApiError(400, `unknown field '${key}' (known: ${Object.keys(known).join(", ")})`);
    if (typeof value !== kind) throw new ApiError(400, `field '${key}': expected ${kind === "string" ? "a string" : "a boolean"}`);
  }
  if (obj.path === undefined) throw new ApiError(400, "path: the snapshot file is required");
  return obj;
}

function absolutePath(path: unknown): string {
  const p = path as string;
  if (!p.startsWith("/")) throw new ApiError(400, `path: expected an absolute path, got '${p}'`);
  return p;
}
