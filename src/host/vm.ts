// A VM in a host: its configuration, its lifecycle and its machine while it
// runs. The machine (vmm/virt-machine.ts: RAM, devices, SBI) is built at
// each start and released at each stop; the VM keeps its name, config and
// scheduling parameters across them.
//
// Lifecycle: created -> running <-> paused -> stopped -> (start) running ...,
// and destroyed at the end. Every request has an answer in every state:
// pausing a paused VM does nothing, starting a stopped VM boots it again,
// destroying a running VM stops it first; what cannot be done (resuming a
// stopped VM, anything on a destroyed one) throws HostError with the reason.

import { VirtMachine, type VmEnd, type ExitAnswer } from "../vmm/virt-machine.js";
import type { KernelImage } from "../arch/riscv/boot-image.js";
import type { VirtioDevice } from "../devices/virtio/virtio.js";
import type { JitOptions, JitStats } from "../jit/jit.js";
import { ExitStats } from "../vcpu/exit-stats.js";
import { VIRT_MAX_HARTS } from "../arch/riscv/layout.js";
import { FRAME_SIZE, OutOfHostMemory } from "../memory/frame-pool.js";
import { VmRunState, VcpuState, DEFAULT_WEIGHT, MAX_WEIGHT, EXIT_NAMES, type VcpuAccounting } from "./scheduler.js";
import { answerExit, isPosted, Mailbox } from "./exit-mailbox.js";
import { monoNs } from "./pcpu-protocol.js";
import type { Host } from "./host.js";
import type { MemoryVm, VmMemoryStats } from "../memory/manager/memory-manager.js";
import { Absent } from "../memory/p2m-entry.js";
import { BalloonError, type BalloonStats } from "../devices/virtio/balloon.js";
import { readAhead } from "../snapshot/memory.js";
import { writeSnapshot, type LiveCopy, type OpenedSnapshot, type WrittenSnapshot, type SnapshotMeta, type WriteSnapshotOptions } from "../snapshot/snapshot.js";
import { SnapshotError, type Plain } from "../snapshot/state.js";
import { DirtyLog } from "../memory/dirty-log.js";
import type { P2m } from "../memory/p2m.js";
import type { PageStoreHandle } from "../memory/manager/page-store.js";
import type { StateReader } from "../snapshot/state.js";
import type { RemotePages } from "../snapshot/migration/remote-pages.js";
import type { MigrateTarget, MigrateOptions, MigrationResult, MigrationSource } from "../snapshot/migration/sender.js";
import { throttledCap } from "../snapshot/throttle.js";

export class HostError extends Error {
  override readonly name = "HostError";
}

export interface VmConfig {
  name?: string;
  /** What start() boots; a VM restored from a snapshot (Host.restoreVm) may have none. */
  kernel?: KernelImage;
  initrd?: Uint8Array;
  cmdline: string;
  cpus: number;
  memBytes: number;
  /** Binary translation (default on with default options; false: interpreter only). */
  jit?: JitOptions | false;
  /** virtio devices backed by host resources (disks, network cards), in slot
   *  order. The caller owns them: they outlive a stop and a start, and are
   *  handed back quiesced (no I/O thread touching guest memory) when the VM
   *  stops or is destroyed; the caller closes them. Disks in a host belong on
   *  an I/O thread (devices/virtio/blk-iothread.ts), so no disk wait stalls
   *  the main thread and with it every VM's exits. */
  virtio?: VirtioDevice[];
  console?: "ttyS0" | "hvc0";
  consoleSize?: { cols: number; rows: number };
  /** Guest console output. */
  consoleOut(bytes: Uint8Array): void;
  /** A line worth showing on the host (a guest driver error). */
  warn?(message: string): void;
  /** Scheduling: weight 1..65535 (default 256), cap in percent of one pCPU
   *  (0 = none, 150 = one and a half pCPUs), the pCPUs its vCPUs may run on. */
  weight?: number;
  capPct?: number;
  affinity?: number[];
  /** Page sharing: the VM shares identical pages with the VMs of this group
   *  (default: its own name, so only within itself; see memory/manager/page-sharing.ts
   *  for why sharing across VMs is a choice). */
  shareGroup?: string;
  /** A virtio-balloon (default on): the host can take memory back from the
   *  guest (setBalloon, and under pressure), read its memory statistics every
   *  statsIntervalMs, and the guest reports pages it frees. */
  balloon?: boolean | { statsIntervalMs?: number; reporting?: boolean };
}

const CONFIG_KEYS = new Set(["name", "kernel", "initrd", "cmdline", "cpus", "memBytes", "jit", "virtio", "console", "consoleSize", "consoleOut", "warn", "weight", "capPct", "affinity", "shareGroup", "balloon"]);

/**
 * A restored VM's working set (Host.restoreVm): the pages of the snapshot
 * read before the guest runs (those a run from it touched before), and a
 * callback told at the VM's end which pages this run read from the file.
 */
export interface WorkingSet {
  pages?: ArrayLike<number>;
  record?: (pages: Uint32Array) => void;
}

export type VmState = "created" | "running" | "paused" | "stopped" | "destroyed";

/** How a run of the VM ended: the guest's way, or the host's (stop, destroy, a host failure). */
export type RunEnd = VmEnd | { kind: "stopped"; reason: string };

export interface VcpuStats extends Omit<VcpuAccounting, "state"> {
  state: "stopped" | "runnable" | "running" | "blocked";
}

export interface VmStats {
  state: VmState;
  vcpus: VcpuStats[];
  /** Guest RAM frames backed by host memory, in bytes. */
  residentBytes: number;
  uptimeMs: number;
  /** Guest pages by state, and the memory manager's counts (while it runs). */
  memory?: VmMemoryStats;
  /** Why the host paused it (it waits for host memory), if it did. */
  pausedFor?: string;
}


/** The largest VM: 64 GiB of guest RAM. */
const MAX_VM_MEM_BYTES = 64 * 2 ** 30;

/** Bytes of guest image copied per event-loop turn at start (a few ms each). */
const LOAD_STEP_BYTES = 2 << 20;

/** The longest a read-ahead keeps the main thread (and the exits it serves) at a time. */
const READ_AHEAD_SLICE_MS = 1;

export class Vm {
  private _state: VmState = "created";
  private machine: VirtMachine | undefined;
  /** Scheduler slots: of the VM, and of each hart by index. */
  private schedVm = -1;
  private slots: number[] = [];
  private weight: number;
  private capPct: number;
  private affinity: bigint;
  private endResolvers: ((end: RunEnd) => void)[] = [];
  private lastEnd: RunEnd | undefined;
  private stopping: Promise<void> | undefined;
  private startedAt = 0;
  /** Exits waiting for remote harts to act on a request (SBI remote fences). */
  private fenceWaits: { v: number; harts: number[]; request: number }[] = [];
  private fenceTimer: NodeJS.Immediate | undefined;
  private lastStats: { exits: ExitStats; jit: JitStats | undefined; vcpus: VcpuStats[] } | undefined;
  /** The VM as the host's memory manager sees it, while it runs. */
  private managed: MemoryVm | undefined;
  /** The memory manager holds the vCPUs off their pCPUs (holdVcpus), this many times. */
  private holds = 0;
  private holdWaiters: (() => void)[] = [];
  private pausedFor: string | undefined;
  /** Times a fault found no memory this run, and when that was last said. */
  private memoryWaits = 0;
  private lastMemoryWarnNs = -Infinity;
  /** A snapshot is being written (the memory manager keeps its hands off). */
  private snapshotting = false;
  /** A live snapshot copies pages while the VM runs (no other snapshot or migration meanwhile). */
  private liveSnapshotting = false;
  /** Vm.migrate() is under way (snapshots wait: they would take its dirty pages). */
  private migrating = false;
  /** A migration sent Go and heard nothing back: the devices stay paused until resume(). */
  private devicesPausedByMigration = false;
  /** Post-copy target: stops the thread still filling this VM's RAM. */
  private stopRemote: (() => Promise<void>) | undefined;
  /** This run's last snapshot: the parent of a diff snapshot. */
  private lastSnapshot: { path: string; id: string } | undefined;
  /** Pages written since lastSnapshot. */
  private dirtyLog: DirtyLog | undefined;
  /** The snapshot this run was restored from: its files stay open while the VM reads pages from them. */
  private snapshotFiles: OpenedSnapshot | undefined;
  /** Told at the end which snapshot pages this run read (Host.restoreVm workingSet). */
  private recordWorkingSet: ((pages: Uint32Array) => void) | undefined;
  /** Restored paused: resume() lets the harts go. */
  private restoredWaiting = false;
  /** How the run began when not booted: a snapshot (possibly one of many
   *  clones: a new VM generation) or a migration (the same VM, moved). */
  private arrivedBy: "snapshot" | "migration" | undefined;

  constructor(private readonly host: Host, readonly name: string, readonly config: VmConfig, readonly owner: number) {
    validateConfig(config, host);
    this.weight = config.weight ?? DEFAULT_WEIGHT;
    this.capPct = config.capPct ?? 0;
    this.affinity = affinityMask(config.affinity, host.pcpus.count);
  }

  get state(): VmState {
    return this._state;
  }

  /** The running machine (undefined unless running or paused). */
  get vmm(): VirtMachine | undefined {
    return this.machine;
  }

  // ---- lifecycle ------------------------------------------------------------------------

  /** Boot the VM (again, when stopped). Running or paused: nothing to do. */
  start(): void {
    this.checkAlive();
    if (this._state === "running" || this._state === "paused") return;
    if (!this.config.kernel) throw new HostError(`VM '${this.name}' has no kernel to boot (it was restored from a snapshot)`);
    this.launch(undefined);
  }

  /**
   * Bring the VM up from a snapshot (Host.restoreVm): its machine state
   * checked and applied, its RAM left in the snapshot's files until touched.
   * Paused afterwards when `paused`, else running. Throws SnapshotError when
   * the snapshot does not fit this VM or does not check out (nothing is left
   * running then).
   */
  restoreFrom(snap: OpenedSnapshot, paused: boolean, workingSet?: WorkingSet): void {
    this.checkAlive();
    if (this._state !== "created" && this._state !== "stopped") throw new HostError(`VM '${this.name}' is ${this._state}: restore into a created or stopped VM`);
    try {
      this.launch({ snap, machine: snap.machine, guestTicks: snap.guestTicks });
    } catch (e) {
      snap.close();
      throw e;
    }
    this.snapshotFiles = snap;
    this.recordWorkingSet = workingSet?.record;
    if (workingSet?.pages) this.readAheadInBackground(snap, workingSet.pages);
    // A diff snapshot taken later holds what changed since this one.
    this.lastSnapshot = { path: snap.chain[0].path, id: snap.meta.id };
    this.startDirtyLog();
    this.arrivedBy = "snapshot";
    this.afterRestore(paused);
  }

  /**
   * Read the pages of a working set (Host.restoreVm) into frames while the
   * guest starts: in runs of adjacent slots, on the main thread, a
   * millisecond at a time, or one run when an exit waits to be served. The
   * vCPU faults in a page it needs first itself; the entry says who was
   * first. A page that does not check out, or a full pool, ends the
   * read-ahead: the guest meets the page when it touches it, and stops with
   * the reason, as without one.
   */
  private readAheadInBackground(snap: OpenedSnapshot, pages: ArrayLike<number>): void {
    const machine = this.machine!;
    const runs = readAhead(snap.pages, pages, (i) => machine.p2m.inSnapshot(i));
    const step = () => {
      if (this.machine !== machine || this.stopping) return;
      const started = performance.now();
      try {
        for (;;) {
          const run = runs.next();
          if (run.done) return;
          for (const { index, bytes } of run.value) machine.p2m.fillSnapshotPage(index, bytes);
          // A vCPU waiting for its exit's answer comes first.
          if (performance.now() - started > READ_AHEAD_SLICE_MS || this.slots.some((v) => isPosted(this.host.sched, v))) break;
        }
      } catch {
        return;
      }
      setImmediate(step);
    };
    setImmediate(step);
  }

  /**
   * A live migration's target (snapshot/migration/receiver.ts): the RAM came
   * over the wire into `ram` (a p2m of this host's pool charged to this VM),
   * the machine state is the source's. Paused afterwards: resume() lets it
   * run. Throws SnapshotError when the state does not fit; `ram` is released then.
   * Post-copy: `remote` has the pages still at the source (entries of kind
   * Remote); `stopRemote` stops the thread that fills them (teardown calls it
   * first, and frees no frame before it is done).
   */
  restoreMigrated(ram: P2m, machine: StateReader, remote?: RemotePages, stopRemote?: () => Promise<void>): void {
    this.checkAlive();
    this.stopRemote = stopRemote;
    if (this._state !== "created") throw new HostError(`VM '${this.name}' is ${this._state}: a migration arrives into a created VM`);
    this.launch({ ram, remote, machine, guestTicks: machine.u64("guestTicks") });
    this.arrivedBy = "migration";
    this.afterRestore(true);
  }

  private afterRestore(paused: boolean): void {
    if (!paused) this.releaseRestored();
    else {
      this._state = "paused";
      this.host.sched.setVmState(this.schedVm, VmRunState.Paused);
      this.restoredWaiting = true;
    }
  }

  private newMachine(from: { ram?: P2m; guestTicks: bigint } | undefined, pagesHandle: PageStoreHandle): VirtMachine {
    const { host, config } = this;
    return new VirtMachine({
      memBytes: config.memBytes, harts: config.cpus, kernel: config.kernel, initrd: config.initrd, cmdline: config.cmdline,
      jit: config.jit ?? {}, consoleOut: config.consoleOut, virtio: config.virtio, console: config.console,
      consoleSize: config.consoleSize, warn: config.warn,
      host: {
        pool: host.pool, core: host.core, owner: this.owner, pages: pagesHandle, p2m: from?.ram,
        hartWakes: () => this.slots.length ? { sched: host.sched.handle, vcpus: [...this.slots] } : undefined,
      },
      restore: from && { guestTicks: from.guestTicks },
      kickHart: (i) => this.slots.length && host.kick(this.slots[i]),
      hartStarted: (i) => this.slots.length && host.kick(this.slots[i], true),
      wake: () => setImmediate(() => this.machine?.afterExit()),
      onEnd: (end) => void this.teardown(end),
      balloon: config.balloon === false ? undefined : {
        statsIntervalMs: typeof config.balloon === "object" ? config.balloon.statsIntervalMs : undefined,
        reporting: typeof config.balloon === "object" ? config.balloon.reporting : undefined,
        discard: (indices, reason) => this.managed ? host.memory.discard(this.managed, indices, reason === "balloon" ? Absent.Ballooned : Absent.Reported) : Promise.resolve(),
        reclaim: (indices) => this.managed && host.memory.undiscard(this.managed, indices),
      },
    });
  }

  private launch(from: { snap?: OpenedSnapshot; ram?: P2m; remote?: RemotePages; machine: StateReader; guestTicks: bigint } | undefined): void {
    const snap = from?.snap;
    const remote = from?.remote;
    const { host, config } = this;
    const pagesHandle = { ...host.memory.store.handle(), snapshot: snap?.pages.handle(), remote: remote?.handle() };
    let machine: VirtMachine;
    try {
      machine = this.newMachine(from, pagesHandle);
    } catch (e) {
      from?.ram?.release(); // not taken over: no machine releases it
      throw e;
    }
    if (from) {
      // Every page with bytes in the snapshot stays there until touched
      // (memory.ts); the rest read as zero, as untouched pages do.
      const p2m = machine.p2m;
      if (remote) p2m.usePageSource(host.memory.store.withSnapshot(undefined, remote));
      if (snap) {
        p2m.usePageSource(host.memory.store.withSnapshot(snap.pages));
        p2m.presetSnapshotPages(snap.pages.withBytes);
      }
      try {
        machine.restoreState(from.machine);
      } catch (e) {
        machine.release();
        if (e instanceof SnapshotError) throw e;
        throw new SnapshotError(`restoring VM '${this.name}': ${(e as Error).message}`);
      }
    }
    this.machine = machine;
    this.lastEnd = undefined;
    this.lastStats = undefined;
    this.memoryWaits = 0;
    this.schedVm = host.sched.addVm(this.weight, this.capPct);
    this.slots = machine.harts.map((slot, index) => host.sched.addVcpu(this.schedVm, index, slot.vcpu.hart, this.affinity));
    this.slots.forEach((v, index) => host.vcpus.set(v, { vm: this, index }));
    this.managed = {
      name: this.name, p2m: machine.p2m, shareGroup: config.shareGroup ?? `vm:${this.name}`,
      holdVcpus: () => this.holdVcpus(), releaseVcpus: () => this.releaseVcpus(), flushTlbs: () => this.postToHarts(host.core.k.REQ_TLB_FLUSH),
      balloon: () => machine.balloonControl(),
    };
    host.memory.add(this.managed);
    if (snap || remote) machine.p2m.usePageSource(host.memory.store.withSnapshot(snap?.pages, remote));
    host.pcpus.addVm({
      id: this.schedVm, owner: this.owner, p2m: machine.p2m.handle(), harts: machine.harts.map((s) => s.vcpu.hart), vcpus: [...this.slots],
      clockStartNs: machine.clock.startNs, jit: config.jit === false ? false : (config.jit ?? {}),
      pageMap: machine.codePageMap?.address ?? 0,
      doorbells: machine.doorbells,
      pages: pagesHandle,
      irqchip: machine.irqchip,
    });
    this.startedAt = monoNs();
    if (from) return; // restoreFrom lets it run (or keeps it paused)
    host.sched.setVmState(this.schedVm, VmRunState.Running);
    this._state = "running";
    void this.loadThenBoot(machine);
  }

  /** A restored VM's harts go: those the snapshot had running are made runnable. */
  private releaseRestored(): void {
    const machine = this.machine!;
    this.restoredWaiting = false;
    this._state = "running";
    machine.resumeDevices();
    // A migrated VM is the same VM: its cards announce where they are now. A
    // restored one may be one of several copies: a new generation ID too.
    if (this.arrivedBy === "migration") machine.announceDevices();
    else machine.restored();
    this.host.sched.setVmState(this.schedVm, VmRunState.Running);
    for (const i of machine.startedHarts) this.host.kick(this.slots[i], true);
  }

  // ---- snapshots ----------------------------------------------------------------------------

  /**
   * Write the VM's whole state to `path` (src/snapshot/): the vCPUs are taken
   * off their pCPUs and device I/O is finished first, and the VM runs on
   * afterwards unless `stayPaused` (or it was paused). `diff`: only the pages
   * written since this VM's last snapshot, which becomes the parent.
   * `whilePaused` runs once the file is written, before the devices and
   * vCPUs go on (the daemon switches the disks to overlays there); what it
   * throws is thrown, the snapshot written all the same.
   */
  async snapshot(path: string, opts: { diff?: boolean; live?: boolean; stayPaused?: boolean; definition?: Plain; progress?: WriteSnapshotOptions["progress"]; whilePaused?(written: WrittenSnapshot): Promise<void> } = {}): Promise<WrittenSnapshot> {
    this.checkAlive();
    const machine = this.machine;
    if (!machine || (this._state !== "running" && this._state !== "paused") || this.stopping) throw new HostError(`VM '${this.name}' is ${this._state}: only a running or paused VM has state to snapshot`);
    if (this.snapshotting || this.liveSnapshotting) throw new HostError(`VM '${this.name}' is being snapshotted already`);
    if (this.migrating) throw new HostError(`VM '${this.name}' is being migrated`);
    if (opts.diff && !this.lastSnapshot) throw new HostError(`VM '${this.name}' has no earlier snapshot in this run to take a diff against`);
    if (opts.live && opts.diff) throw new HostError("a live snapshot is a full one (no --diff with --live)");
    const wasRunning = this._state === "running";
    if (opts.live && wasRunning) return this.liveSnapshot(path, machine, opts);
    this.snapshotting = true;
    try {
      if (wasRunning) await this.pause();
      // The memory manager finishes what it holds the vCPUs for, and starts nothing new (holdVcpus refuses).
      while (this.holds > 0) await new Promise<void>((r) => this.holdWaiters.push(r));
      await machine.pauseDevices();
      try {
        if (machine.ended || this.stopping) throw new HostError(`VM '${this.name}' ended while being snapshotted`);
        // A full snapshot is the next diff's parent: what was written before
        // it is in it, so the log starts over (take() clears it).
        const logged = this.dirtyLog?.take();
        const dirty = opts.diff ? new Set(logged ?? []) : undefined;
        const meta: Omit<SnapshotMeta, "tsvisor" | "id" | "createdAt"> = {
          vm: { name: this.name, cpus: this.config.cpus, memBytes: this.config.memBytes, cmdline: this.config.cmdline, console: this.config.console ?? "ttyS0" },
          ...(opts.diff && this.lastSnapshot ? { parent: this.lastSnapshot } : {}),
          ...(opts.definition !== undefined ? { definition: opts.definition } : {}),
        };
        const written = await writeSnapshot(path, { meta, machine: machine.saveState(), p2m: machine.p2m, dirty, progress: opts.progress });
        this.lastSnapshot = { path: written.path, id: written.id };
        this.startDirtyLog();
        await opts.whilePaused?.(written);
        return written;
      } finally {
        machine.resumeDevices();
      }
    } finally {
      this.snapshotting = false;
      if (wasRunning && !opts.stayPaused && this._state === "paused" && !this.stopping) this.resume();
    }
  }

  /**
   * snapshot() with `live`: the RAM is written while the VM runs, then the
   * pages it wrote meanwhile (the dirty log, vCPUs held only to read and
   * clear it), and in the pause only the last ones and the machine state
   * (snapshot.ts LiveCopy). The VM pauses for milliseconds, not for the
   * whole memory; the file holds the VM as it was at that pause.
   */
  private async liveSnapshot(path: string, machine: VirtMachine, opts: { stayPaused?: boolean; definition?: Plain; progress?: WriteSnapshotOptions["progress"]; whilePaused?(written: WrittenSnapshot): Promise<void> }): Promise<WrittenSnapshot> {
    this.liveSnapshotting = true;
    this.startDirtyLog();
    const log = this.dirtyLog!;
    let paused = false;
    let pausedAt = 0;
    const ended = () => new HostError(`VM '${this.name}' ended while being snapshotted`);
    const userCap = this.capPct;
    const live: LiveCopy = {
      takeDirty: async () => {
        if (paused) return log.take();
        if (!(await this.holdVcpus())) throw ended();
        try {
          return log.take();
        } finally {
          this.releaseVcpus();
        }
      },
      throttle: (pct) => {
        if (this._state !== "destroyed") this.setCap(throttledCap(pct, userCap, this.config.cpus, 100 * this.host.pcpus.count));
      },
      pause: async () => {
        pausedAt = performance.now();
        if (this._state === "running") await this.pause();
        // From here on as snapshot(): the memory manager holds nothing and starts nothing.
        this.snapshotting = true;
        while (this.holds > 0) await new Promise<void>((r) => this.holdWaiters.push(r));
        await machine.pauseDevices();
        paused = true;
        if (machine.ended || this.stopping) throw ended();
        return machine.saveState();
      },
    };
    try {
      const meta: Omit<SnapshotMeta, "tsvisor" | "id" | "createdAt"> = {
        vm: { name: this.name, cpus: this.config.cpus, memBytes: this.config.memBytes, cmdline: this.config.cmdline, console: this.config.console ?? "ttyS0" },
        ...(opts.definition !== undefined ? { definition: opts.definition } : {}),
      };
      const written = await writeSnapshot(path, { meta, live, p2m: machine.p2m, progress: opts.progress });
      this.lastSnapshot = { path: written.path, id: written.id };
      await opts.whilePaused?.(written);
      return { ...written, pausedMs: performance.now() - pausedAt };
    } finally {
      if (paused) machine.resumeDevices();
      this.snapshotting = false;
      this.liveSnapshotting = false;
      if (paused && !opts.stayPaused && this._state === "paused" && !this.stopping) this.resume();
    }
  }

  // ---- live migration (src/snapshot/migration/) ----------------------------------------------

  /**
   * Move the running VM to another host's migration listener
   * (Host.listenForMigrations) while it runs: pre-copy rounds through the
   * dirty log, then a short pause for the last pages and the machine state.
   * The source VM is stopped once the target confirms it runs ("migrated to
   * HOST:PORT"). See snapshot/migration/sender.ts for what happens on failure.
   */
  async migrate(to: MigrateTarget, opts: MigrateOptions = {}): Promise<MigrationResult> {
    this.checkAlive();
    if (!this.machine || (this._state !== "running" && this._state !== "paused") || this.stopping) throw new HostError(`VM '${this.name}' is ${this._state}: only a running or paused VM can be migrated`);
    if (this.migrating) throw new HostError(`VM '${this.name}' is being migrated already`);
    if (this.snapshotting || this.liveSnapshotting) throw new HostError(`VM '${this.name}' is being snapshotted`);
    this.migrating = true;
    try {
      const { migrateVm } = await import("../snapshot/migration/sender.js");
      return await migrateVm(this.migrationSource(this.machine), to, opts);
    } finally {
      this.migrating = false;
    }
  }

  /** What the migration sender may do to this VM's current run. */
  private migrationSource(machine: VirtMachine): MigrationSource {
    return {
      vm: this,
      machine,
      alive: () => this.machine === machine && !this.stopping,
      dirtyLog: () => {
        this.startDirtyLog();
        return this.dirtyLog!;
      },
      holdVcpus: () => this.holdVcpus(),
      releaseVcpus: () => this.releaseVcpus(),
      quiesce: async () => {
        while (this.holds > 0) await new Promise<void>((r) => this.holdWaiters.push(r));
      },
      meta: () => ({ name: this.name, cpus: this.config.cpus, memBytes: this.config.memBytes, cmdline: this.config.cmdline, console: this.config.console ?? "ttyS0" }),
      capPct: () => this.capPct,
      maxCapPct: () => 100 * this.host.pcpus.count,
      leaveDevicesPaused: () => {
        this.devicesPausedByMigration = true;
      },
      forgetDiffBase: () => {
        this.lastSnapshot = undefined;
      },
      end: (reason) => this.stop(reason),
    };
  }

  /** Track the pages written from now on (for the next diff snapshot). The
   *  harts are off their pCPUs: each flushes its TLB before it runs again, so
   *  no store goes past the log through a cached translation. */
  private startDirtyLog(): void {
    const machine = this.machine!;
    if (!this.dirtyLog) {
      this.dirtyLog = DirtyLog.start(machine.p2m);
      for (const s of machine.harts) this.host.core.fn.setDirtyLog(s.vcpu.hart, this.dirtyLog.address);
    }
    this.postToHarts(this.host.core.k.REQ_TLB_FLUSH);
  }

  /** Copy the guest's kernel and initrd into its RAM a piece per event-loop
   *  turn (45 MB for the stock guest: done at once, it held every other VM's
   *  exits for up to a second), then let the boot hart run; the others wait
   *  for HSM hart_start. */
  private async loadThenBoot(machine: VirtMachine): Promise<void> {
    for (;;) {
      let loaded: boolean;
      try {
        loaded = machine.loadGuestStep(LOAD_STEP_BYTES);
      } catch (e) {
        if (!(e instanceof OutOfHostMemory)) throw e;
        // The pool is full: wait (said once) while the memory manager makes room, then go on.
        if (!this.pausedFor) {
          this.pausedFor = `loading its kernel and initrd: ${e.message}`;
          (this.config.warn ?? ((m: string) => process.stderr.write(`tsvisor: ${m}\n`)))(`VM '${this.name}' waits for host memory, ${this.pausedFor}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
        if (this.machine !== machine || this.stopping) return;
        continue;
      }
      if (loaded) break;
      await new Promise((resolve) => setImmediate(resolve));
      if (this.machine !== machine || this.stopping) return; // stopped or destroyed meanwhile
    }
    this.pausedFor = undefined;
    if (this.machine === machine && !this.stopping) this.host.kick(this.slots[0], true);
  }

  /** Stop running the vCPUs; resolves once none is on a pCPU. */
  async pause(): Promise<void> {
    this.checkAlive();
    if (this._state !== "running") return;
    this._state = "paused";
    this.host.sched.setVmState(this.schedVm, VmRunState.Paused);
    await this.offPcpus();
  }

  resume(): void {
    this.checkAlive();
    if (this._state === "running") return;
    if (this._state !== "paused") throw new HostError(`VM '${this.name}' is ${this._state}, not paused: start it instead`);
    if (this.restoredWaiting) return this.releaseRestored();
    if (this.devicesPausedByMigration) {
      this.devicesPausedByMigration = false;
      this.machine?.resumeDevices();
    }
    this._state = "running";
    this.pausedFor = undefined;
    // Held by the memory manager: it lets the vCPUs go when done (releaseVcpus).
    if (this.holds === 0) this.host.sched.setVmState(this.schedVm, VmRunState.Running);
  }

  /** Power the VM off now (virsh destroy): no guest shutdown. */
  async stop(reason = "stopped by the host"): Promise<void> {
    this.checkAlive();
    if (this._state === "created" || this._state === "stopped") return;
    await this.teardown({ kind: "stopped", reason });
  }

  /** Stop the VM if it runs and forget it; its frames are back in the pool. */
  async destroy(): Promise<void> {
    if (this._state === "destroyed") return;
    await this.stop("destroyed");
    this._state = "destroyed";
    this.host.forget(this);
    // Never started: whoever waits for its first run's end (and whoever asks
    // later) learns it was destroyed.
    if (!this.lastEnd) this.finishEnd({ kind: "stopped", reason: "destroyed" });
  }

  /** Resolves when the current (or next) run ends; on a stopped or destroyed
   *  VM, with how its last run ended. */
  waitForEnd(): Promise<RunEnd> {
    if (this.lastEnd && (this._state === "stopped" || this._state === "destroyed")) return Promise.resolve(this.lastEnd);
    return new Promise((resolve) => this.endResolvers.push(resolve));
  }

  /** The host cannot go on (a pCPU worker died). */
  hostFailed(e: Error): void {
    if (this._state === "running" || this._state === "paused") this.finishEnd({ kind: "error", message: e.message });
  }

  // ---- scheduling parameters (take effect at once, also while running) -------------------

  setWeight(weight: number): void {
    this.checkAlive();
    checkWeight(weight);
    this.weight = weight;
    if (this.schedVm >= 0) this.host.sched.setWeight(this.schedVm, weight);
  }

  setCap(capPct: number): void {
    this.checkAlive();
    checkCap(capPct, this.host);
    this.capPct = capPct;
    if (this.schedVm >= 0) this.host.sched.setCap(this.schedVm, capPct);
  }

  /** pCPUs the VM's vCPUs may run on (undefined or empty: all). */
  setAffinity(pcpus: number[] | undefined): void {
    this.checkAlive();
    this.affinity = affinityMask(pcpus, this.host.pcpus.count);
    for (const v of this.slots) this.host.sched.setAffinity(v, this.affinity);
    // A vCPU running where it may no longer run leaves at its next check.
    for (const v of this.slots) {
      if (this.host.isRunning(v)) this.host.core.fn.postRequest(this.host.sched.hartOf(v), this.host.core.k.REQ_EXIT);
    }
  }

  // ---- memory -------------------------------------------------------------------------------

  /** Ask the guest's balloon to hold `bytes` of its RAM (0 empties it): the
   *  host takes those frames back as the driver inflates. */
  setBalloon(bytes: number): void {
    this.checkAlive();
    const balloon = this.machine?.balloon;
    if (!balloon) throw new HostError(`VM '${this.name}' ${this.machine ? "has no balloon (created with balloon: false)" : "is not running"}`);
    try {
      balloon.setTarget(bytes);
    } catch (e) {
      if (e instanceof BalloonError) throw new HostError(e.message);
      throw e;
    }
  }

  /** The balloon's figures and the guest's memory statistics (undefined without a balloon). */
  balloonStats(): BalloonStats | undefined {
    return this.machine?.balloon?.stats();
  }

  get scheduling(): { weight: number; capPct: number; affinity: number[] } {
    const affinity: number[] = [];
    for (let p = 0; p < this.host.pcpus.count; p++) if ((this.affinity >> BigInt(p)) & 1n) affinity.push(p);
    return { weight: this.weight, capPct: this.capPct, affinity };
  }

  /** Device work nothing else prompts (the host's periodic poll). */
  pollDevices(): void {
    if (this._state === "running") this.machine?.afterExit();
  }

  // ---- statistics ---------------------------------------------------------------------------

  stats(): VmStats {
    const now = monoNs();
    const names = ["stopped", "runnable", "running", "blocked"] as const;
    if (this.slots.length === 0 && this.lastStats) {
      // Between runs: what the last run's vCPUs did, all stopped now.
      return { state: this._state, vcpus: this.lastStats.vcpus, residentBytes: 0, uptimeMs: 0 };
    }
    const vcpus = this.slots.map((v) => {
      const a = this.host.sched.accounting(v, now);
      const state = a.state === VcpuState.Runnable ? names[1] : a.state === VcpuState.Running ? names[2] : a.state === VcpuState.Blocked ? names[3] : names[0];
      return { ...a, state };
    });
    return {
      state: this._state,
      vcpus,
      residentBytes: (this.machine?.p2m.populated ?? 0) * FRAME_SIZE,
      uptimeMs: this._state === "running" || this._state === "paused" ? (now - this.startedAt) / 1e6 : 0,
      memory: this.managed && this.host.memory.vmStats(this.managed),
      pausedFor: this.pausedFor,
    };
  }

  /** VM exits (by reason, by device, SBI calls) of the current or last run. */
  exitStats(): ExitStats {
    if (this.lastStats) return this.lastStats.exits;
    const total = this.machine?.stats() ?? new ExitStats();
    const now = monoNs();
    for (const v of this.slots) {
      const a = this.host.sched.accounting(v, now);
      total.instructions += BigInt(a.instructions);
      for (const name of EXIT_NAMES) if (a.exits[name]) total.byReason.set(name, (total.byReason.get(name) ?? 0) + a.exits[name]);
    }
    return total;
  }

  /** Binary translation counts of the current or last run, summed over the pCPUs. */
  async jitStats(): Promise<JitStats | undefined> {
    if (this.lastStats) return this.lastStats.jit;
    return this.schedVm >= 0 ? this.host.pcpus.jitStats(this.schedVm) : undefined;
  }

  // ---- the exit service (main thread) --------------------------------------------------------

  /** vCPU slot `v` (hart `index`) posted an exit. */
  serviceExit(v: number, index: number): void {
    // An exit already handled whose answer waits (a remote fence) is still
    // posted: handling it again would run the SBI call twice.
    if (this.fenceWaits.some((w) => w.v === v)) return;
    const machine = this.machine;
    if (!machine || this.stopping) return answerExit(this.host.sched, v, Mailbox.Stop);
    let answer: ExitAnswer;
    try {
      answer = machine.serviceExit(index);
    } catch (e) {
      // A device model bug must not take the host down: this VM ends.
      void this.teardown({ kind: "error", message: `internal error handling an exit of hart ${index}: ${(e as Error).message}` });
      return answerExit(this.host.sched, v, Mailbox.Stop);
    }
    switch (answer.kind) {
      case "resume":
        return answerExit(this.host.sched, v, Mailbox.Resume);
      case "stop":
        return answerExit(this.host.sched, v, Mailbox.Stop);
      case "block":
        return answerExit(this.host.sched, v, Mailbox.Block);
      case "wait-memory":
        this.waitForMemory(answer.message);
        // It runs into the pause at once (run() takes REQ_EXIT first) and faults again after.
        return answerExit(this.host.sched, v, Mailbox.Resume);
      case "resume-after":
        this.fenceWaits.push({ v, harts: answer.harts, request: answer.request });
        for (const h of answer.harts) this.host.kick(this.slots[h]);
        this.checkFences();
    }
  }

  /** Answer the exits waiting for remote harts once every target has acted
   *  on the request, or runs no guest code now: off the pCPUs, or waiting in
   *  its own exit mailbox (it acts on the request before it runs again).
   *  Two harts fencing each other at once both wait in their mailboxes. */
  private checkFences(): void {
    this.fenceTimer = undefined;
    const words = this.host.pool.words;
    const reqOff = this.host.core.k.REQ_OFF;
    this.fenceWaits = this.fenceWaits.filter((w) => {
      const done = this.stopping !== undefined || w.harts.every((i) => {
        const v = this.slots[i];
        const pending = (Atomics.load(words, (this.host.sched.hartOf(v) + reqOff) >>> 2) & w.request) !== 0;
        return !pending || !this.host.isRunning(v) || isPosted(this.host.sched, v);
      });
      if (done) answerExit(this.host.sched, w.v, this.stopping ? Mailbox.Stop : Mailbox.Resume);
      return !done;
    });
    if (this.fenceWaits.length > 0) this.fenceTimer = setImmediate(() => this.checkFences());
  }

  // ---- the memory manager's side ------------------------------------------------------------------

  /** Take every vCPU off its pCPU and keep it off until releaseVcpus();
   *  false when the VM is going away (nothing is held then). */
  private async holdVcpus(): Promise<boolean> {
    if (!this.machine || this.stopping || this.schedVm < 0 || this.snapshotting) return false;
    this.holds++;
    for (;;) {
      this.host.sched.setVmState(this.schedVm, VmRunState.Paused);
      await this.offPcpus();
      if (!this.machine || this.stopping) {
        this.unhold();
        return false;
      }
      if (this.slots.every((v) => !this.host.isRunning(v))) return true;
    }
  }

  /** The memory manager is done: every hart flushes its TLB before it runs again. */
  private releaseVcpus(): void {
    this.postToHarts(this.host.core.k.REQ_TLB_FLUSH);
    this.unhold();
  }

  private unhold(): void {
    if (--this.holds > 0) return;
    if (this._state === "running" && this.schedVm >= 0 && !this.stopping) this.host.sched.setVmState(this.schedVm, VmRunState.Running);
    const waiters = this.holdWaiters;
    this.holdWaiters = [];
    for (const w of waiters) w();
  }

  private postToHarts(request: number): void {
    for (const v of this.slots) this.host.core.fn.postRequest(this.host.sched.hartOf(v), request);
  }

  /** A fault found no memory: pause, say why, and go on once the host has memory again. */
  private waitForMemory(message: string): void {
    if (this.pausedFor || !this.managed) return;
    this.pausedFor = message;
    this.memoryWaits++;
    // Under lasting pressure a VM may wait many times a second: say so every 10 s, with the count.
    const now = monoNs();
    if (now - this.lastMemoryWarnNs >= 10e9) {
      const again = this.memoryWaits > 1 ? ` (${this.memoryWaits} waits so far)` : "";
      (this.config.warn ?? ((m: string) => process.stderr.write(`tsvisor: ${m}\n`)))(`VM '${this.name}' paused: ${message}; it resumes when the host has free memory${again}`);
      this.lastMemoryWarnNs = now;
    }
    void this.pause();
    this.host.memory.waitForMemory(this.managed, () => {
      if (this._state === "paused" && this.pausedFor) this.resume();
    });
  }

  // ---- teardown ----------------------------------------------------------------------------------

  /** End the current run: take the vCPUs off the pCPUs, drop the workers'
   *  caches, give every frame back. Safe to call more than once. */
  private teardown(end: RunEnd): Promise<void> {
    if (!this.stopping) this.stopping = this.doTeardown(end);
    return this.stopping;
  }

  private async doTeardown(end: RunEnd): Promise<void> {
    const { host } = this;
    // Post-copy still under way: its thread lets go of the RAM, and vCPUs
    // waiting for a page give up (they would never leave their pCPUs).
    const remoteStopped = this.stopRemote?.();
    this.stopRemote = undefined;
    host.sched.setVmState(this.schedVm, VmRunState.Paused);
    await this.offPcpus();
    // Device I/O threads finish the request in hand and let go of guest
    // memory before its frames go back to the pool.
    await this.machine?.quiesceDevices();
    if (this.fenceTimer) clearImmediate(this.fenceTimer);
    this.checkFences();
    // The memory manager lets go of the VM before its frames go back.
    while (this.holds > 0) await new Promise<void>((r) => this.holdWaiters.push(r));
    if (this.managed) host.memory.remove(this.managed);
    this.managed = undefined;
    this.pausedFor = undefined;
    const jit = await host.pcpus.jitStats(this.schedVm);
    this.lastStats = undefined;
    const exits = this.exitStats();
    const vcpus = this.stats().vcpus.map((c) => ({ ...c, state: "stopped" as const }));
    await host.pcpus.dropVm(this.schedVm);
    host.sched.removeVm(this.schedVm, this.slots);
    for (const v of this.slots) host.vcpus.delete(v);
    this.dirtyLog?.stop();
    this.dirtyLog = undefined;
    await remoteStopped;
    if (this.recordWorkingSet && this.machine && this.snapshotFiles) {
      this.recordWorkingSet(this.machine.p2m.snapshotPagesRead(this.snapshotFiles.pages.withBytes));
    }
    this.recordWorkingSet = undefined;
    // A process that exits now gives the frames and files back itself (HostOptions.exitsWithVms).
    if (!host.exitsWithVms || end.kind === "reboot") {
      this.machine?.release();
      this.snapshotFiles?.close();
    }
    this.machine = undefined;
    this.snapshotFiles = undefined;
    this.lastSnapshot = undefined;
    this.restoredWaiting = false;
    this.devicesPausedByMigration = false;
    this.slots = [];
    this.schedVm = -1;
    this.lastStats = { exits, jit, vcpus };
    this.stopping = undefined;
    this.finishEnd(end);
  }

  private finishEnd(end: RunEnd): void {
    this._state = this._state === "destroyed" ? "destroyed" : "stopped";
    this.lastEnd = end;
    const resolvers = this.endResolvers;
    this.endResolvers = [];
    for (const r of resolvers) r(end);
  }

  /** Resolves once no vCPU of this VM is on a pCPU (they are kicked off). */
  private async offPcpus(): Promise<void> {
    const { host } = this;
    for (;;) {
      const running = this.slots.filter((v) => host.isRunning(v));
      // A dead worker never takes its vCPU off: nothing runs any more anyway.
      if (running.length === 0 || host.failed) return;
      for (const v of running) host.core.fn.postRequest(host.sched.hartOf(v), host.core.k.REQ_EXIT);
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  private checkAlive(): void {
    if (this._state === "destroyed") throw new HostError(`VM '${this.name}' is destroyed`);
  }
}

// ---- validation -----------------------------------------------------------------------------

function validateConfig(c: VmConfig, host: Host): void {
  for (const key of Object.keys(c)) if (!CONFIG_KEYS.has(key)) throw new HostError(`unknown VM option '${key}'`);
  if (c.name !== undefined && (typeof c.name !== "string" || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(c.name))) {
    throw new HostError(`VM name '${c.name}': 1 to 63 letters, digits, '.', '_' or '-', not starting with a symbol`);
  }
  if (!Number.isInteger(c.cpus) || c.cpus < 1 || c.cpus > VIRT_MAX_HARTS) throw new HostError(`cpus must be 1..${VIRT_MAX_HARTS}, got ${c.cpus}`);
  if (!Number.isSafeInteger(c.memBytes) || c.memBytes < 1 << 20 || c.memBytes % FRAME_SIZE !== 0) {
    throw new HostError("memory must be a whole number of 4 KiB pages, at least 1 MiB");
  }
  // A VM may have more memory than the pool holds (the memory manager makes
  // room), but its p2m table (4 bytes per page) must fit with room to spare.
  if (c.memBytes > MAX_VM_MEM_BYTES || c.memBytes / 1024 > host.pool.limitBytes / 8) {
    const most = Math.min(MAX_VM_MEM_BYTES, host.pool.limitBytes * 128);
    throw new HostError(`memory ${Math.floor(c.memBytes / 2 ** 20)} MiB is too large for this host (at most ${Math.floor(most / (1 << 20))} MiB with a ${Math.floor(host.pool.limitBytes / (1 << 20))} MiB pool)`);
  }
  if (c.weight !== undefined) checkWeight(c.weight);
  if (c.capPct !== undefined) checkCap(c.capPct, host);
}

function checkWeight(w: number): void {
  if (!Number.isInteger(w) || w < 1 || w > MAX_WEIGHT) throw new HostError(`weight must be 1..${MAX_WEIGHT}, got ${w}`);
}

function checkCap(cap: number, host: Host): void {
  const max = 100 * host.pcpus.count;
  if (!Number.isInteger(cap) || cap < 0 || cap > max) throw new HostError(`cap must be 0 (none) .. ${max} percent, got ${cap}`);
}

function affinityMask(pcpus: number[] | undefined, count: number): bigint {
  if (!pcpus || pcpus.length === 0) return (1n << BigInt(count)) - 1n;
  let mask = 0n;
  for (const p of pcpus) {
    if (!Number.isInteger(p) || p < 0 || p >= count) throw new HostError(`affinity: pCPU ${p} does not exist (the host has 0..${count - 1})`);
    mask |= 1n << BigInt(p);
  }
  return mask;
}
