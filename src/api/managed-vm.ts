// A VM as the host daemon keeps it: its definition, the console output of
// its runs, and while it runs an engine VM (host/vm.ts) with its devices.
// Each start reads the kernel and initrd and opens the disks and network
// cards; each end (the guest's or a stop) destroys the engine VM and closes
// the devices, so a stopped VM's qcow2 disks are flushed and clean.
import { parseKernelImage } from "../arch/riscv/boot-image.js";
import { HostError, type Host, type Vm, type RunEnd } from "../host/host.js";
import { SnapshotError, SnapshotRefused, type Plain } from "../snapshot/state.js";
import type { LiveRound } from "../snapshot/snapshot.js";
import type { VmMemoryStats } from "../memory/manager/memory-manager.js";
import type { BalloonStats, BalloonGuestStats } from "../devices/virtio/balloon.js";
import { pullDebianImage } from "../images/debian.js";
import { DEFAULT_CMDLINE, readInput } from "../cli/run-linux.js";
import { commandArchive } from "../images/command-archive.js";
import { VmDevices, defaultMac, parseShareSpec, shareCmdline, type NetCardInfo } from "../cli/vm-devices.js";
import { formatMac } from "../backends/net/net-spec.js";
import { ApiError } from "./errors.js";
import { LogRing } from "./log-ring.js";
import { ConsoleHub } from "./console-hub.js";
import type { Duplex } from "node:stream";
import { rmSync } from "node:fs";
import type { VmDefinition, VmPatch } from "./definition.js";
import type { MigrateTarget, MigrationResult, MigrationProgress } from "../snapshot/migration/sender.js";
import type { IncomingVmConfig } from "../snapshot/migration/receiver.js";
import { MigrationError } from "../snapshot/migration/stream.js";
import { VirtioNet } from "../devices/virtio/net.js";
import { MAC_CHANGE_TIMEOUT_MS, macChangeScript, type MacChange } from "./clone-macs.js";
import { runInGuest } from "./guest-command.js";

export type ManagedState = "created" | "starting" | "running" | "paused" | "stopping" | "stopped";

/** How a run ended, and the status `vm wait` exits with (as `run -- CMD`). */
export interface RunOutcome {
  end: RunEnd;
  exitStatus: number;
}

export interface VcpuView {
  index: number;
  state: string;
  runSeconds: number;
  waitSeconds: number;
  instructions: number;
  exits: Record<string, number>;
}

export interface StatsView {
  state: ManagedState;
  uptimeSeconds: number;
  cpuPercent: number;
  residentBytes: number;
  instructions: number;
  vcpus: VcpuView[];
  exits: Record<string, number>;
  /** Per network card: backend, frames and bytes, and on a switch the port's counters and drops by reason. */
  nets: NetCardInfo[];
  /** While it runs: guest pages by state and the memory manager's counts. */
  memory?: VmMemoryStats;
  /** While it runs with a balloon: its figures and the guest's own statistics. */
  balloon?: BalloonView;
  /** Why the host paused it (it waits for host memory), while it does. */
  pausedFor?: string;
}

/** The balloon's figures; the guest's statistics with their age. */
export interface BalloonView extends Omit<BalloonStats, "guest"> {
  guest: BalloonGuestStats & { ageSeconds?: number };
}

/** What POST /v1/vms/{name}/snapshot answers. */
export interface SnapshotView {
  name: string;
  path: string;
  id: string;
  bytes: number;
  pages: { total: number; stored: number; zero: number; inParent: number };
  seconds: number;
  /** A live snapshot: how long the VM was paused (ms). */
  pausedMs?: number;
  /** A live snapshot: how far auto-converge slowed the vCPUs to bound the pause (percent). */
  throttlePct?: number;
  /** With `disks: "overlay"`: each writable disk the snapshot names, and the overlay the VM goes on with. */
  overlays?: { disk: string; overlay: string }[];
}

/** A snapshot being written: its RAM's pages gone through so far (written, or found zero or in the parent). */
export interface SnapshotProgress {
  path: string;
  donePages: number;
  totalPages: number;
  /** A live snapshot once its first pass is done: the round of pages written again. */
  liveRound?: LiveRound;
}

/** GET /v1/vms/{name}/migration: this VM's current or last migration from this host (as QEMU's query-migrate). */
export interface MigrationStatus {
  name: string;
  state: "active" | "completed" | "failed";
  /** Where to, HOST:PORT. */
  target: string;
  /** When it started (ISO 8601). */
  startedAt: string;
  /** While active: "precopy" (rounds while it runs), "final" (paused, the last pages and state going over),
   *  "postcopy" (it runs on the target, its last pages follow). */
  phase?: "precopy" | "final" | "postcopy";
  /** The latest round's figures (none before round 0 is sent). */
  progress?: MigrationProgress;
  /** Completed: how it went. */
  result?: { rounds: number; sentBytes: number; downtimeMs: number; totalMs: number };
  /** Failed: why, in one line. */
  error?: string;
}

export function exitStatusOf(end: RunEnd): number {
  if (end.kind === "poweroff") return 0;
  if (end.kind === "exit-status") return Math.min(end.code, 255);
  return 1;
}

export function describeEnd(end: RunEnd): string {
  switch (end.kind) {
    case "poweroff": return "powered off";
    case "exit-status": return `the guest command exited with status ${end.code}`;
    case "reboot": return "rebooted";
    case "panic": return `guest kernel panic: ${end.message}`;
    case "error": return `error: ${end.message}`;
    case "stopped": return end.reason;
  }
}

export class ManagedVm {
  private _state: ManagedState = "created";
  readonly log = new LogRing();
  readonly console = new ConsoleHub();
  private vm: Vm | undefined;
  private devices: VmDevices | undefined;
  private outcome: RunOutcome | undefined;
  private waiters: ((o: RunOutcome) => void)[] = [];
  private startedAt = 0;
  private stopReason: string | undefined;
  private runDone: Promise<void> | undefined;
  private lastStats: StatsView | undefined;
  private _migration: MigrationStatus | undefined;
  private _snapshot: SnapshotProgress | undefined;
  /** A clone restored paused: the addresses its guest is to take when it first runs (clone-macs.ts). */
  private pendingMacs: MacChange[] | undefined;

  /** `restored`: brought back from the state directory, so "stopped" rather than "created". */
  /** `vsock`: the `--vsock` spec its devices open with (the daemon's choice, Daemon.vsockSpec), or none. */
  /** `prepareDisks`: before a cold boot opens them (a system image's root disk made: root-disk.ts). */
  constructor(public def: VmDefinition, private readonly engine: Host, private readonly event: (line: string) => void, restored = false,
    private readonly vsock: () => string | undefined = () => def.vsock === "none" ? undefined : def.vsock,
    private readonly prepareDisks: (event: (line: string) => void) => Promise<void> = async () => {}) {
    if (restored) this._state = "stopped";
  }

  /** The Unix socket of its vsock device while it runs (what `vm exec` connects through), else undefined. */
  get vsockPath(): string | undefined {
    return this.devices?.vsock && this.devices.vsockPath;
  }

  get name(): string {
    return this.def.name;
  }

  get state(): ManagedState {
    return this._state;
  }

  /** The snapshot being written, how far (GET /v1/vms/{name}: `vm snapshot` shows it); undefined when none is. */
  get snapshotProgress(): SnapshotProgress | undefined {
    return this._snapshot && { ...this._snapshot };
  }

  /** Its current or last migration from this host; undefined when it never migrated. */
  get migration(): MigrationStatus | undefined {
    return this._migration && { ...this._migration };
  }

  get lastOutcome(): RunOutcome | undefined {
    return this.outcome;
  }

  // ---- lifecycle --------------------------------------------------------------------------

  /** Boot; resolves once it runs. Already starting, running or paused: nothing to do. */
  async start(): Promise<void> {
    const before = this._state;
    if (before === "starting" || before === "running" || before === "paused") return;
    if (before === "stopping") throw new ApiError(409, `VM '${this.name}' is stopping: start it once it has stopped`);
    this._state = "starting";
    this.pendingMacs = undefined; // a paused clone's that never ran: a cold boot reads the definition's

    this.stopReason = undefined;
    this.outcome = undefined;
    this.event(`vm ${this.name} starting`);
    let devices: VmDevices | undefined;
    try {
      const boot = await this.bootFiles();
      const { kernel, initrd } = boot;
      await this.prepareDisks((line) => this.event(`vm ${this.name}: ${line}`));
      devices = await VmDevices.open(this.def.disks, this.def.nets, (line) => this.event(`vm ${this.name}: ${line}`), this.name, { shares: this.def.shares, vsock: this.vsock() });
      const dhcp = devices.dhcpInterfaces();
      let cmdline = dhcp.length > 0 && this.def.append === undefined ? `${boot.cmdline} tsvisor.dhcp=${dhcp.join(",")}` : boot.cmdline;
      if (this.def.shares.length > 0) cmdline += ` tsvisor.share=${shareCmdline(this.def.shares.map(parseShareSpec))}`;
      if (this.stopReason !== undefined) {
        await devices.close();
        this.finish({ kind: "stopped", reason: this.stopReason });
        return;
      }
      const vm = this.engine.createVm({
        name: this.name, kernel, initrd, cmdline, cpus: this.def.cpus, memBytes: this.def.memBytes,
        virtio: devices.devices, console: this.def.console,
        consoleOut: (b) => {
          this.log.append(b);
          this.console.output(b);
        },
        warn: (m) => this.event(`vm ${this.name}: ${m}`),
        weight: this.def.weight, capPct: this.def.capPct, affinity: this.def.affinity,
        shareGroup: this.def.shareGroup, balloon: this.def.balloon,
      });
      try {
        vm.start();
      } catch (e) {
        await vm.destroy();
        throw e;
      }
      this.vm = vm;
      this.devices = devices;
      this.startedAt = Date.now();
      this._state = "running";
      this.event(`vm ${this.name} running`);
      this.runDone = this.watch(vm);
    } catch (e) {
      if (devices && !this.vm) await devices.close().catch(() => {});
      this._state = before;
      const msg = e instanceof Error ? e.message : String(e);
      this.event(`vm ${this.name} failed to start: ${msg}`);
      throw new ApiError(409, `cannot start VM '${this.name}': ${msg}`);
    }
  }

  /**
   * Bring the VM back from a snapshot file instead of booting it (POST
   * /v1/restore): its devices opened from the definition as start() opens
   * them, in the same slots, and the engine VM restored running (or paused).
   * A file that is no usable snapshot, or whose devices differ from the
   * definition's, is refused with 422 and nothing is left open.
   * `macs`: a clone's cards, whose definition has new addresses (clone-macs.ts):
   * they hold their traffic until the guest has taken them, which it does
   * through its agent as soon as it runs (here, or at the first resume); a
   * guest that cannot stops the VM, refused with 409.
   */
  async restoreFrom(path: string, paused: boolean, macs: MacChange[] = []): Promise<void> {
    if (this._state !== "created" && this._state !== "stopped") throw new ApiError(409, `VM '${this.name}' is ${this._state}: restore into a stopped VM`);
    const before = this._state;
    this._state = "starting";
    this.pendingMacs = undefined;
    this.stopReason = undefined;
    this.outcome = undefined;
    this.event(`vm ${this.name} restoring from ${path}`);
    let devices: VmDevices | undefined;
    try {
      // With a kernel of its own (no image pull needed), a guest that reboots
      // boots that kernel cold, as a started VM does; without, a reboot ends the run.
      const d = this.def;
      const ownKernel = d.kernel !== undefined && !(d.initrd === undefined && d.command !== undefined);
      const boot = ownKernel ? await this.bootFiles().catch((e: Error) => {
        this.event(`vm ${this.name}: ${e.message}: a reboot will end its run`);
        return undefined;
      }) : undefined;
      devices = await VmDevices.open(d.disks, d.nets, (line) => this.event(`vm ${this.name}: ${line}`), this.name, { shares: d.shares, vsock: this.vsock() });
      if (macs.length > 0) {
        for (const dev of devices.devices) if (dev instanceof VirtioNet) dev.holdTraffic(true);
        this.pendingMacs = macs;
      }
      const vm = this.engine.restoreVm(path, {
        name: this.name, kernel: boot?.kernel, initrd: boot?.initrd, paused,
        virtio: devices.devices,
        consoleOut: (b) => {
          this.log.append(b);
          this.console.output(b);
        },
        warn: (m) => this.event(`vm ${this.name}: ${m}`),
        weight: d.weight, capPct: d.capPct, affinity: d.affinity, shareGroup: d.shareGroup, balloon: d.balloon,
      });
      this.vm = vm;
      this.devices = devices;
      this.startedAt = Date.now();
      this._state = paused ? "paused" : "running";
      this.event(`vm ${this.name} restored from ${path} (${this._state})`);
      this.runDone = this.watch(vm);
      // Stopped while its devices opened: the stop waits for this run's end.
      if (this.stopReason !== undefined) {
        this._state = "stopping";
        void vm.stop(this.stopReason);
      }
    } catch (e) {
      this.pendingMacs = undefined;
      if (devices && !this.vm) await devices.close().catch(() => {});
      this._state = before;
      const msg = e instanceof Error ? e.message : String(e);
      this.event(`vm ${this.name} failed to restore: ${msg}`);
      if (e instanceof SnapshotError) throw new ApiError(422, msg);
      throw new ApiError(409, `cannot restore VM '${this.name}': ${msg}`);
    }
    if (!paused) {
      const failed = await this.takeNewMacs();
      if (failed) throw new ApiError(409, `cannot restore VM '${this.name}' as a clone: ${failed} (restore it with --keep-macs to keep the snapshot's addresses)`);
    }
  }

  /**
   * A clone's guest takes its new MAC addresses (restoreFrom), then its cards
   * carry traffic and announce them. When it cannot, the VM is stopped (it
   * would hold its traffic forever) and the reason returned.
   */
  private async takeNewMacs(): Promise<string | undefined> {
    const macs = this.pendingMacs;
    const vsock = this.vsockPath;
    if (!macs || !this.devices || this._state !== "running") return undefined;
    this.pendingMacs = undefined;
    let why: string | undefined;
    if (vsock === undefined) {
      why = "it has no vsock device, so no guest agent to give it its new MAC addresses";
    } else {
      const t0 = Date.now();
      try {
        const r = await runInGuest(vsock, this.name, ["sh", "-c", macChangeScript(macs)], MAC_CHANGE_TIMEOUT_MS);
        if (r.status !== 0) why = `its guest did not take its new MAC addresses: ${(r.stderr.trim() || `exit status ${r.status}`).split("\n")[0]}`;
      } catch (e) {
        why = `its guest did not take its new MAC addresses: ${(e as Error).message}`;
      }
      if (why === undefined) this.event(`vm ${this.name}: its guest took its new MAC addresses (${macs.map((m) => `${m.from} -> ${m.to}`).join(", ")}) in ${Date.now() - t0} ms`);
    }
    if (why !== undefined) {
      this.event(`vm ${this.name}: ${why}: stopping it`);
      await this.stop(why);
      return why;
    }
    for (const dev of this.devices?.devices ?? []) {
      if (dev instanceof VirtioNet) {
        dev.holdTraffic(false);
        dev.announce();
      }
    }
    return undefined;
  }

  /**
   * Write a snapshot of the running (or paused) VM to `path` with its
   * definition in it; it runs on afterwards unless `stayPaused`.
   * `disks: "overlay"`: before it goes on, each writable disk image the
   * snapshot names is frozen and the VM continues on a new qcow2 overlay of
   * it (VmDevices.freezeDisks), which its definition names from then on; so
   * the images stay as the snapshot needs them. If that fails, the snapshot
   * is deleted (its disks would not stay as it needs them) and 409 says why.
   */
  async snapshot(path: string, opts: { diff?: boolean; live?: boolean; stayPaused?: boolean; disks?: "overlay" }): Promise<SnapshotView> {
    const vm = this.vm;
    if (!vm || (this._state !== "running" && this._state !== "paused")) {
      throw new ApiError(409, `VM '${this.name}' is ${this._state}: only a running or paused VM can be snapshotted`);
    }
    const t0 = performance.now();
    const wasRunning = this._state === "running";
    let written;
    const devices = this.devices;
    const overlays: { disk: string; overlay: string }[] = [];
    // The definition as it is now: the images the snapshot's devices read.
    const definition = JSON.parse(JSON.stringify({ ...this.def, nets: pinnedMacs(this.def.nets, this.name) })) as Plain;
    let overlayFailed: Error | undefined;
    const whilePaused = opts.disks === "overlay" && devices ? async (w: { id: string }) => {
      try {
        await devices.freezeDisks(w.id.slice(0, 8), (d) => {
          this.def.disks[d.index] = d.spec;
          overlays.push({ disk: d.frozen, overlay: d.overlay });
          this.event(`vm ${this.name}: disk ${d.frozen} frozen; the VM goes on with ${d.overlay}`);
        });
      } catch (e) {
        overlayFailed = e as Error;
        throw e;
      }
    } : undefined;
    const progress: SnapshotProgress = { path, donePages: 0, totalPages: this.def.memBytes / 4096 };
    this._snapshot = progress;
    try {
      written = await vm.snapshot(path, {
        diff: opts.diff, live: opts.live, stayPaused: opts.stayPaused, definition, whilePaused,
        progress: (done, total, round) => {
          progress.donePages = done;
          progress.totalPages = total;
          progress.liveRound = round && { ...round };
        },
      });
    } catch (e) {
      if (overlayFailed) {
        rmSync(path, { force: true });
        throw new ApiError(409, `freezing the disks of VM '${this.name}' failed, so the snapshot was deleted: ${overlayFailed.message}`);
      }
      if (e instanceof HostError || e instanceof SnapshotRefused) throw new ApiError(409, e.message);
      if (e instanceof SnapshotError) throw new ApiError(422, e.message);
      throw e;
    } finally {
      this._snapshot = undefined;
    }
    if (wasRunning && opts.stayPaused && this._state === "running" && vm.state === "paused") {
      this._state = "paused";
      this.event(`vm ${this.name} paused`);
    }
    const seconds = (performance.now() - t0) / 1000;
    const m = written.memory;
    this.event(`vm ${this.name}: snapshot written to ${written.path} (${m.stored} pages stored, ${seconds.toFixed(2)} s)`);
    return {
      name: this.name, path: written.path, id: written.id, bytes: written.bytes, pages: { total: m.pages, stored: m.stored, zero: m.zero, inParent: m.inParent }, seconds,
      ...(written.pausedMs !== undefined ? { pausedMs: written.pausedMs } : {}),
      ...(written.maxThrottlePct !== undefined ? { throttlePct: written.maxThrottlePct } : {}),
      ...(opts.disks === "overlay" ? { overlays } : {}),
    };
  }

  /**
   * Live-migrate the running (or paused) VM to another host's migration
   * listener, with its definition (MACs pinned) for that host's daemon.
   * Resolves once it runs there and this run has ended (its devices closed).
   * 409 when it is not running; 502 when the migration failed (it runs on
   * here, or stays paused when the engine could not tell: the message says).
   */
  async migrate(to: MigrateTarget, opts: { postcopy?: boolean | "auto"; maxDowntimeMs?: number; bandwidthBytesPerSec?: number; copyDisks?: boolean }): Promise<MigrationResult> {
    const vm = this.vm;
    if (!vm || (this._state !== "running" && this._state !== "paused")) {
      throw new ApiError(409, `VM '${this.name}' is ${this._state}: only a running or paused VM can be migrated`);
    }
    // Its status stays that of the migration under way.
    if (this._migration?.state === "active") throw new ApiError(409, `VM '${this.name}' is being migrated already`);
    const target = `${to.host.includes(":") ? `[${to.host}]` : to.host}:${to.port}`;
    const definition = JSON.parse(JSON.stringify({ ...this.def, nets: pinnedMacs(this.def.nets, this.name) })) as Plain;
    this.event(`vm ${this.name}: migrating to ${target}`);
    const status: MigrationStatus = { name: this.name, state: "active", target, startedAt: new Date().toISOString(), phase: "precopy" };
    this._migration = status;
    let result: MigrationResult;
    try {
      const { copyDisks, ...engineOpts } = opts;
      result = await vm.migrate(to, {
        ...engineOpts, definition,
        ...(copyDisks ? { disks: this.devices?.diskCopies() ?? [] } : { releaseStorage: async () => this.devices?.reopenDisks() }),
        progress: (p) => {
          status.progress = { ...p };
          // The log has a line a round, at its end; the status shows the pace inside one too.
          if (p.inRound) return;
          this.event(`vm ${this.name}: migration round ${p.round}: ${(p.sentBytes / (1 << 20)).toFixed(1)} MiB sent, ${p.dirtyPages} pages dirty, expected downtime ${Math.round(p.expectedDowntimeMs)} ms${p.throttlePct ? `, throttled ${p.throttlePct}%` : ""}`);
        },
        phase: (phase) => {
          status.phase = phase;
        },
      });
    } catch (e) {
      const msg = (e as Error).message.replace(/\s+/g, " ");
      status.state = "failed";
      status.error = msg;
      delete status.phase;
      this.event(`vm ${this.name}: ${msg}`);
      // Left paused when the target may run it (no Resumed heard): say so in its state.
      if (this._state === "running" && vm.state === "paused") this._state = "paused";
      if (e instanceof HostError) throw new ApiError(409, msg);
      if (e instanceof MigrationError) throw new ApiError(502, msg);
      throw e;
    }
    status.state = "completed";
    delete status.phase;
    status.result = { rounds: result.rounds, sentBytes: result.sentBytes, downtimeMs: result.downtimeMs, totalMs: result.totalMs };
    // The engine stopped it ("migrated to ..."): wait until its devices are closed.
    await this.runDone;
    return result;
  }

  /**
   * The target side of a live migration: this (created) VM's devices opened
   * from its definition as start() opens them, and the engine config the
   * migration listener creates the arriving VM with. Then adoptMigrated()
   * once it runs here, or abandonMigration() when it does not come.
   */
  async openForMigration(from: string, copyDisks = false): Promise<IncomingVmConfig> {
    if (this._state !== "created" && this._state !== "stopped") throw new ApiError(409, `VM '${this.name}' is ${this._state}`);
    this._state = "starting";
    this.stopReason = undefined;
    this.outcome = undefined;
    this.event(`vm ${this.name} arriving from ${from}`);
    const d = this.def;
    try {
      this.devices = await VmDevices.open(d.disks, d.nets, (line) => this.event(`vm ${this.name}: ${line}`), this.name, { importCopies: copyDisks, shares: d.shares, vsock: this.vsock() });
    } catch (e) {
      this._state = "created";
      throw e;
    }
    return {
      name: this.name, virtio: this.devices.devices,
      ...(copyDisks ? { diskSinks: this.devices.diskCopies() } : { acquireStorage: async () => this.devices?.reopenDisks() }),
      consoleOut: (b) => {
        this.log.append(b);
        this.console.output(b);
      },
      warn: (m) => this.event(`vm ${this.name}: ${m}`),
      weight: d.weight, capPct: d.capPct, affinity: d.affinity, shareGroup: d.shareGroup, balloon: d.balloon,
    };
  }

  /** The migrated VM runs here now. */
  adoptMigrated(vm: Vm): void {
    this.vm = vm;
    this.startedAt = Date.now();
    this._state = vm.state === "paused" ? "paused" : "running";
    this.event(`vm ${this.name} migrated here (${this._state})`);
    this.runDone = this.watch(vm);
    // Stopped while it arrived: the stop waits for this run's end.
    if (this.stopReason !== undefined) {
      this._state = "stopping";
      void vm.stop(this.stopReason);
    }
  }

  /** The migration failed before the VM ran here: its devices closed again. */
  async abandonMigration(): Promise<void> {
    const devices = this.devices;
    this.devices = undefined;
    await devices?.close().catch(() => {});
    // A stop that waited for the arrival hears it ended.
    this.finish({ kind: "stopped", reason: "its migration here failed" });
  }

  /** The kernel, initrd (with the guest command) and command line of a boot. */
  private async bootFiles() {
    const d = this.def;
    // A kernel of one's own without an initrd boots without one, unless a
    // guest command needs tsvisor's init: then the Debian image's initrd.
    const needPull = d.kernel === undefined || (d.initrd === undefined && d.command !== undefined);
    const pulled = needPull ? await pullDebianImage({ progress: (line) => this.event(`vm ${this.name}: ${line}`) }) : undefined;
    const kernelPath = d.kernel ?? pulled!.kernelPath;
    const initrdPath = d.initrd ?? pulled?.initrdPath;
    let kernel;
    try {
      kernel = parseKernelImage(readInput(kernelPath, "kernel"));
    } catch (e) {
      throw new Error(`${(e as Error).message.startsWith("kernel ") ? "" : `kernel ${kernelPath}: `}${(e as Error).message}`);
    }
    const initrd = initrdPath !== undefined ? readInput(initrdPath, "initrd", d.command ? commandArchive(d.command, undefined) : undefined) : undefined;
    let cmdline = d.append ?? DEFAULT_CMDLINE;
    if (d.console === "hvc0") cmdline += " tsvisor.console=hvc0";
    // Its root disk is the first (root-disk.ts): init mounts it, chroots the command there or boots its systemd.
    if (d.image !== undefined) cmdline += " tsvisor.root=/dev/vda";
    return { kernel, initrd, cmdline };
  }

  /** Waits for the run's end; a guest without a command that reboots boots again. */
  private async watch(vm: Vm): Promise<void> {
    let end: RunEnd;
    for (;;) {
      end = await vm.waitForEnd();
      if (end.kind !== "reboot" || this.def.command !== undefined || this.stopReason !== undefined) break;
      // Restored from a snapshot without a kernel to boot: the reboot ends the run.
      if (!vm.config.kernel) break;
      this.event(`vm ${this.name} rebooting`);
      vm.start();
    }
    this._state = "stopping";
    this.lastStats = this.statsOf(vm);
    await vm.destroy();
    this.vm = undefined;
    try {
      await this.devices?.close();
    } catch (e) {
      this.event(`vm ${this.name}: closing its devices failed: ${(e as Error).message}`);
    }
    this.devices = undefined;
    this.finish(end);
  }

  private finish(end: RunEnd): void {
    this._state = "stopped";
    this.outcome = { end, exitStatus: exitStatusOf(end) };
    this.runDone = undefined;
    this.log.endFollowers();
    this.console.closeAll();
    this.event(`vm ${this.name} stopped: ${describeEnd(end)}`);
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w(this.outcome);
  }

  /** Power off now (virsh destroy); resolves when it has stopped and its disks are closed. */
  async stop(reason = "stopped by the host"): Promise<void> {
    const s = this._state;
    if (s === "created" || s === "stopped") return;
    if (this.stopReason === undefined) this.stopReason = reason;
    if (s === "starting") {
      await this.waitForEnd();
      return;
    }
    const done = this.runDone;
    if (this.vm && s !== "stopping") {
      this._state = "stopping";
      await this.vm.stop(reason);
    }
    await done;
  }

  async pause(): Promise<void> {
    if (this._state === "paused") return;
    if (this._state !== "running" || !this.vm) throw new ApiError(409, `VM '${this.name}' is ${this._state}: only a running VM can be paused`);
    await this.vm.pause();
    this._state = "paused";
    this.event(`vm ${this.name} paused`);
  }

  resume(): void {
    if (this._state === "running") return;
    if (this._state !== "paused" || !this.vm) throw new ApiError(409, `VM '${this.name}' is ${this._state}, not paused: start it instead`);
    this.vm.resume();
    this._state = "running";
    this.event(`vm ${this.name} resumed`);
    // A clone restored paused takes its new addresses now; a failure stops it (and says why in its log).
    if (this.pendingMacs) void this.takeNewMacs();
  }

  /** Resolves with how the current (or last) run ended. */
  waitForEnd(): Promise<RunOutcome> {
    if (this._state === "stopped" && this.outcome) return Promise.resolve(this.outcome);
    if (this._state === "created" || this._state === "stopped") {
      return Promise.reject(new ApiError(409, `VM '${this.name}' is ${this._state} and has no run to wait for: start it first`));
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Scheduling (at once, also while running), autostart, and the balloon
   *  (running VMs only: checked first, so a refused balloon changes nothing). */
  update(patch: VmPatch): void {
    if (patch.balloonBytes !== undefined) this.setBalloon(patch.balloonBytes);
    if (patch.weight !== undefined) {
      this.def.weight = patch.weight;
      this.vm?.setWeight(patch.weight);
    }
    if (patch.capPct !== undefined) {
      this.def.capPct = patch.capPct;
      this.vm?.setCap(patch.capPct);
    }
    if (patch.affinity !== undefined) {
      this.def.affinity = patch.affinity;
      this.vm?.setAffinity(patch.affinity);
    }
    if (patch.autostart !== undefined) this.def.autostart = patch.autostart;
  }

  private setBalloon(bytes: number): void {
    if (!this.vm || (this._state !== "running" && this._state !== "paused")) {
      throw new ApiError(409, `VM '${this.name}' is ${this._state}: its balloon exists only while it runs`);
    }
    if (!this.def.balloon) throw new ApiError(409, `VM '${this.name}' has no balloon (it was created with balloon false)`);
    if (bytes > this.def.memBytes) {
      throw new ApiError(400, `balloonBytes: ${bytes} is more than the VM's memory (${this.def.memBytes} bytes)`);
    }
    try {
      this.vm.setBalloon(bytes);
    } catch (e) {
      if (e instanceof HostError) throw new ApiError(409, e.message);
      throw e;
    }
    this.event(`vm ${this.name}: balloon target ${Math.round(bytes / (1 << 20))} MiB`);
  }

  /** A console viewer (the writer when `wantWrite` and none is); 409 unless running or paused. */
  attachConsole(socket: Duplex, wantWrite: boolean): boolean {
    if (this._state !== "running" && this._state !== "paused") {
      throw new ApiError(409, `VM '${this.name}' is ${this._state}: its console exists only while it runs`);
    }
    return this.console.attach(socket, wantWrite, {
      input: (bytes) => {
        const machine = this.vm?.vmm;
        if (!machine) return 0;
        machine.consoleInput(bytes);
        setImmediate(() => this.vm?.vmm?.afterExit());
        return machine.consoleBacklog;
      },
      backlog: () => this.vm?.vmm?.consoleBacklog ?? 0,
    });
  }

  // ---- statistics ---------------------------------------------------------------------------

  /** Per-queue virtio counts of the running machine (none when not running). */
  virtioQueueCounts() {
    return this.vm?.vmm?.virtioQueueCounts() ?? [];
  }

  stats(): StatsView {
    if (this.vm && (this._state === "running" || this._state === "paused")) return this.statsOf(this.vm);
    const zero = { uptimeSeconds: 0, cpuPercent: 0, residentBytes: 0 };
    if (this.lastStats) {
      // The last run's counts; its memory is gone.
      const { memory: _m, balloon: _b, pausedFor: _p, ...last } = this.lastStats;
      return { ...last, ...zero, state: this._state };
    }
    return { state: this._state, ...zero, instructions: 0, vcpus: [], exits: {}, nets: [] };
  }

  private statsOf(vm: Vm): StatsView {
    const s = vm.stats();
    const exits = vm.exitStats();
    const uptimeSeconds = (Date.now() - this.startedAt) / 1000;
    const runSeconds = s.vcpus.reduce((sum, c) => sum + c.runNs, 0) / 1e9;
    return {
      state: this._state,
      uptimeSeconds,
      cpuPercent: uptimeSeconds > 0 ? Math.round((1000 * runSeconds) / uptimeSeconds) / 10 : 0,
      residentBytes: s.residentBytes,
      instructions: Number(exits.instructions),
      vcpus: s.vcpus.map((c, index) => ({
        index, state: c.state, runSeconds: c.runNs / 1e9, waitSeconds: c.waitNs / 1e9, instructions: c.instructions,
        exits: Object.fromEntries(Object.entries(c.exits).filter(([, n]) => n > 0)),
      })),
      exits: Object.fromEntries(exits.byReason),
      nets: this.devices?.netInfo() ?? [],
      memory: s.memory,
      balloon: balloonView(vm.balloonStats()),
      pausedFor: s.pausedFor,
    };
  }
}

function balloonView(b: BalloonStats | undefined): BalloonView | undefined {
  if (!b) return undefined;
  const at = b.guest.updatedAt;
  return { ...b, guest: { ...b.guest, ...(at !== undefined ? { ageSeconds: Math.max(0, (Date.now() - at) / 1000) } : {}) } };
}

/**
 * Net specs with each card's MAC address written out: the guest's driver read
 * the address at boot, so a VM restored under another name (whose default
 * addresses derive from its name) must keep the snapshot's.
 */
function pinnedMacs(nets: string[], name: string): string[] {
  return nets.map((spec, i) => {
    if (/(^|,)mac=/.test(spec)) return spec;
    return `${spec},mac=${formatMac(defaultMac(`${name}${spec}`, i))}`;
  });
}
