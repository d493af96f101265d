// The host: one frame pool, the pCPU workers, the scheduler and the table
// of VMs (DESIGN.md, "The host layer"). The typed API that `tsvisor run`,
// the coming control plane and the tests all drive:
//
//   const host = await Host.create({ pcpus: 2 });
//   const vm = host.createVm({ name: "a", kernel, initrd, cmdline, cpus: 2, memBytes: 256 << 20,
//                              consoleOut: (b) => process.stdout.write(b) });
//   vm.start();
//   const end = await vm.waitForEnd();   // { kind: "poweroff" } ...
//   await host.close();
//
// The main thread is the I/O side: device models and backends run here, and
// so does the exit service, which answers the exits workers post to it.

import { availableParallelism } from "node:os";
import { FramePool, FIRST_VM_OWNER, MAX_OWNER, WASM_PAGE_SIZE, WASM_MAX_PAGES } from "../memory/frame-pool.js";
import { instantiateCore, CORE_RESERVED_BYTES, type Core } from "../vcpu/core.js";
import { Scheduler, VcpuState, MAX_PCPUS } from "./scheduler.js";
import { serveDoorbell, isPosted } from "./exit-mailbox.js";
import { PcpuPool } from "./pcpu-pool.js";
import { wakeVcpu } from "./irqfd.js";
import { Vm, HostError, type VmConfig, type WorkingSet } from "./vm.js";
import { MemoryManager, type OvercommitOptions } from "../memory/manager/memory-manager.js";
import { openSnapshot } from "../snapshot/snapshot.js";
import { SnapshotSharing } from "../snapshot/page-share.js";
import type { MigrationListener, ListenOptions } from "../snapshot/migration/receiver.js";

export { Vm, HostError, type VmConfig } from "./vm.js";
export type { VmState, VmStats, RunEnd, WorkingSet } from "./vm.js";

/** How often the main thread looks at device state nothing else prompts it
 *  to: the old single-thread runner's idle bound. */
const DEVICE_POLL_MS = 50;

export interface HostOptions {
  /** pCPU worker threads (default: one per host core, see README "The host engine"). */
  pcpus?: number;
  /** Size of the frame pool, shared by all VMs (default and at most 4 GiB).
   *  The VMs' memory may add up to more: the memory manager makes room. */
  memLimitBytes?: number;
  /** The memory manager's mechanisms (memory/manager/memory-manager.ts). */
  overcommit?: OvercommitOptions;
  /** Size of the scheduler's shared table (default 1024 vCPUs, 256 VMs: about 100 KiB). */
  maxVcpus?: number;
  maxVms?: number;
  /** The process exits when its VMs end (the CLI's `run`). A VM that ends
   *  other than by reboot then keeps its frames: the exit gives them all back
   *  at once, where handing a 512 MiB guest's back to the pool one by one
   *  took a fast start about 40 ms. close() stops the workers without
   *  waiting for them. */
  exitsWithVms?: boolean;
}

export interface HostInfo {
  pcpus: number;
  vms: number;
  pool: { limitBytes: number; committedBytes: number; framesInUse: number };
}

/** The host's side of a vCPU the exit service may be asked about. */
export interface VcpuRef {
  vm: Vm;
  index: number;
}

export class Host {
  readonly pool: FramePool;
  /** The main thread's core instance: reads and writes hart blocks of vCPUs that are not running. */
  readonly core: Core;
  readonly sched: Scheduler;
  readonly pcpus: PcpuPool;
  /** Balloon, page sharing, compression and swap over the pool. */
  readonly memory: MemoryManager;
  private readonly vmsByName = new Map<string, Vm>();
  /** Scheduler vCPU slot -> its VM and hart index. */
  readonly vcpus = new Map<number, VcpuRef>();
  private readonly usedOwners = new Set<number>();
  /** The frames VMs restored from one snapshot share (snapshot/page-share.ts). */
  readonly snapshotSharing: SnapshotSharing;
  private readonly doorbell: { stop(): void };
  /** Keeps the process alive while the host is open: the workers, their
   *  ports and the doorbell wait do not (a host is a server until closed). */
  private readonly keepAlive = setInterval(() => {}, 1 << 30);
  /** One timer for all VMs' device work nothing else prompts (an RTC alarm,
   *  UART input waiting for its driver): 20 wake-ups a second for the host,
   *  not for each VM. */
  private readonly devicePoll = setInterval(() => {
    for (const vm of this.vmsByName.values()) vm.pollDevices();
  }, DEVICE_POLL_MS);
  private fatal: Error | undefined;
  private readonly listeners = new Set<MigrationListener>();
  private closed = false;
  readonly exitsWithVms: boolean;

  static async create(opts: HostOptions = {}): Promise<Host> {
    return new Host(opts);
  }

  private constructor(opts: HostOptions) {
    const pcpus = opts.pcpus ?? availableParallelism();
    if (!Number.isInteger(pcpus) || pcpus < 1 || pcpus > MAX_PCPUS) throw new HostError(`pcpus must be 1..${MAX_PCPUS}`);
    const limit = opts.memLimitBytes ?? WASM_MAX_PAGES * WASM_PAGE_SIZE;
    if (!Number.isSafeInteger(limit) || limit < 16 << 20 || limit > WASM_MAX_PAGES * WASM_PAGE_SIZE) {
      throw new HostError("the host memory limit must be 16 MiB .. 4 GiB");
    }
    this.exitsWithVms = opts.exitsWithVms ?? false;
    this.pool = new FramePool({ reservedBytes: CORE_RESERVED_BYTES, maxPages: Math.floor(limit / WASM_PAGE_SIZE) });
    this.core = instantiateCore(this.pool.memory);
    this.sched = Scheduler.create(pcpus, opts.maxVcpus ?? 1024, opts.maxVms ?? 256);
    this.pcpus = new PcpuPool(pcpus, this.pool, this.sched, (e) => this.onFatal(e));
    this.memory = new MemoryManager(this.pool, opts.overcommit ?? {}, () => this.allocOwner());
    this.snapshotSharing = new SnapshotSharing(this.pool, { take: () => this.allocOwner(), give: (o) => this.usedOwners.delete(o) });
    this.memory.addCache(() => this.snapshotSharing.dropUnmapped());
    this.doorbell = serveDoorbell(this.sched, () => this.serveExits());
  }

  get vms(): Vm[] {
    return [...this.vmsByName.values()];
  }

  vm(name: string): Vm | undefined {
    return this.vmsByName.get(name);
  }

  info(): HostInfo {
    return {
      pcpus: this.pcpus.count,
      vms: this.vmsByName.size,
      pool: { limitBytes: this.pool.limitBytes, committedBytes: this.pool.committedBytes, framesInUse: this.pool.framesInUse },
    };
  }

  /** Define a VM (state "created"; start() boots it). */
  createVm(config: VmConfig): Vm {
    if (this.closed) throw new HostError("the host is closed");
    if (this.fatal) throw new HostError(`the host failed: ${this.fatal.message}`);
    const name = config.name ?? `vm${this.vmsByName.size}`;
    if (this.vmsByName.has(name)) throw new HostError(`a VM named '${name}' exists already`);
    const vm = new Vm(this, name, config, this.allocOwner());
    this.vmsByName.set(name, vm);
    return vm;
  }

  /**
   * A VM brought back from a snapshot file (Vm.snapshot wrote it): its
   * harts, clocks, devices and RAM as they were, on any host CPU. Its shape
   * (vCPUs, memory, command line, console) comes from the snapshot; the
   * caller gives what is host-side: the name (default the snapshot's), the
   * devices' backends in the same slots as when it was taken, the console.
   * The VM runs at once, or stays paused until resume() when `paused`.
   * Throws SnapshotError when the file is not a usable snapshot or does not
   * fit the devices given; nothing is left behind then.
   */
  restoreVm(path: string, config: Omit<VmConfig, "cpus" | "memBytes" | "cmdline" | "console" | "kernel"> & { kernel?: VmConfig["kernel"]; paused?: boolean; workingSet?: WorkingSet }): Vm {
    const snap = openSnapshot(path);
    // Every VM restored from this snapshot reads its pages through one table
    // of shared frames (a clone costs what it writes); the last one gives it back.
    try {
      snap.pages = snap.pages.withShare(this.snapshotSharing.acquire(snap.meta.id, snap.pages.pageCount));
    } catch (e) {
      snap.close();
      throw e;
    }
    const closeFiles = snap.close;
    let released = false;
    snap.close = () => {
      closeFiles();
      if (!released) this.snapshotSharing.release(snap.meta.id);
      released = true;
    };
    const { paused, workingSet, ...rest } = config;
    let vm: Vm;
    try {
      // Clones of one snapshot start out with the same pages: they may share
      // them (under memory pressure the scanner merges them), unless told otherwise.
      vm = this.createVm({ ...rest, shareGroup: rest.shareGroup ?? `snapshot:${snap.meta.id}`, name: rest.name ?? snap.meta.vm.name, cpus: snap.meta.vm.cpus, memBytes: snap.meta.vm.memBytes, cmdline: snap.meta.vm.cmdline, console: snap.meta.vm.console });
    } catch (e) {
      snap.close();
      throw e;
    }
    try {
      vm.restoreFrom(snap, paused ?? false, workingSet);
    } catch (e) {
      // Gone at once: a retry under the same name must not find it.
      this.forget(vm);
      void vm.destroy();
      throw e;
    }
    return vm;
  }

  /**
   * Take VMs live-migrated here (Vm.migrate on another host): a TCP listener
   * on `host:port` (default 127.0.0.1) that accepts sources proving they know
   * `token`. Each VM arrives paused until its last pages and state are in,
   * then runs here (onVm); a migration that fails leaves nothing behind.
   * Close the listener when done (host.close() does).
   */
  async listenForMigrations(opts: ListenOptions): Promise<MigrationListener> {
    if (this.closed) throw new HostError("the host is closed");
    // Loaded when first asked for: a host that never migrates (a `run`) does without it.
    const { MigrationListener } = await import("../snapshot/migration/receiver.js");
    const l = await MigrationListener.listen(this, opts);
    this.listeners.add(l);
    return l;
  }

  /** Called by Vm.destroy(). */
  forget(vm: Vm): void {
    this.vmsByName.delete(vm.name);
    this.usedOwners.delete(vm.owner);
  }

  private allocOwner(): number {
    for (let o = FIRST_VM_OWNER; o <= MAX_OWNER; o++) {
      if (!this.usedOwners.has(o)) {
        this.usedOwners.add(o);
        return o;
      }
    }
    throw new HostError("too many VMs");
  }

  /** Wake vCPU slot `v` if it sleeps; preempt a running one that deserves its pCPU less. */
  kick(v: number, start = false): void {
    wakeVcpu(this.sched, v, this.pool.words, this.core.k.REQ_OFF, this.core.k.REQ_EXIT, start);
  }

  /** Answer every posted exit (the doorbell rang). */
  private serveExits(): void {
    // Queue notifications first: an exit a vCPU posted after ringing one
    // (reading InterruptStatus, say) sees the device after the notification.
    for (const vm of this.vmsByName.values()) vm.vmm?.serviceDoorbells();
    for (const [v, ref] of this.vcpus) {
      if (isPosted(this.sched, v)) ref.vm.serviceExit(v, ref.index);
    }
  }

  /** The host cannot run guests any more (a pCPU worker died). */
  get failed(): boolean {
    return this.fatal !== undefined;
  }

  /** Is vCPU slot `v` on a pCPU right now? */
  isRunning(v: number): boolean {
    return this.sched.stateOf(v) === VcpuState.Running;
  }

  private onFatal(e: Error): void {
    if (this.fatal) return;
    this.fatal = e;
    for (const vm of this.vms) vm.hostFailed(e);
  }

  /** Destroy every VM and stop the workers. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const l of this.listeners) await l.close();
    for (const vm of this.vms) await vm.destroy();
    this.doorbell.stop();
    if (this.exitsWithVms) void this.pcpus.close();
    else await this.pcpus.close();
    clearInterval(this.keepAlive);
    clearInterval(this.devicePoll);
    this.memory.close();
  }
}
