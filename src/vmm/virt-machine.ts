// The `virt` machine for Linux guests: QEMU's riscv `virt` memory map and
// devices (arch/riscv/layout.ts), a device tree written by tsvisor, N harts,
// and the SBI implemented as hypercalls, so the kernel boots with no firmware
// in the guest.
//
// Data flow: a hart runs until an exit; MMIO goes to the device on the bus;
// SBI calls come here and go to the handlers in arch/riscv/sbi, which act on
// the machine through the SbiPlatform below; devices raise interrupts through
// the PLIC into the harts' external-interrupt lines.
//
// Two ways to run it: inside a host (src/host/), whose pCPU workers run the
// harts in parallel and hand this machine the exits only it can handle
// (serviceExit, on the main thread); or alone in this thread, harts
// time-sliced by runRound (the unit tests' way, deterministic enough to
// single-step a scenario).

import type { IrqfdRoute } from "../host/irqfd.js";
import type { SchedulerHandle } from "../host/scheduler.js";
import { instantiateCore, CORE_RESERVED_BYTES, type Core } from "../vcpu/core.js";
import { FramePool } from "../memory/frame-pool.js";
import { P2m } from "../memory/p2m.js";
import type { BalloonControl } from "../memory/manager/memory-manager.js";
import type { PageStoreHandle } from "../memory/manager/page-store.js";
import { GuestMemory } from "../memory/guest-memory.js";
import { MmioBus } from "../bus/mmio-bus.js";
import { Vcpu } from "../vcpu/vcpu.js";
import { ExitStats } from "../vcpu/exit-stats.js";
import { Jit, type JitOptions } from "../jit/jit.js";
import { Aclint } from "../devices/irq/aclint.js";
import { Plic, plicSize } from "../devices/irq/plic.js";
import { Uart16550 } from "../devices/legacy/uart16550.js";
import { GoldfishRtc } from "../devices/legacy/goldfish-rtc.js";
import { Syscon, type PowerEvent } from "../devices/legacy/syscon.js";
import { VmGenId } from "../devices/legacy/vmgenid.js";
import * as L from "../arch/riscv/layout.js";
import { virtFdt } from "../arch/riscv/virt-fdt.js";
import { planBoot, type BootLayout } from "../arch/riscv/boot.js";
import type { KernelImage } from "../arch/riscv/boot-image.js";
import { handleSbiCall, HartState, SbiStats, type SbiPlatform, type SbiCaller, type SbiOutcome } from "../arch/riscv/sbi/sbi.js";
import { takeQueueDoorbells, QUEUE_NOTIFY_OFFSET, type DoorbellArea } from "./queue-doorbell.js";
import { RealtimeClock, REALTIME_TICK_INSNS } from "./clock.js";
import { MachineError } from "./bare-machine.js";
import { CodePageMap } from "../jit/code-page-map.js";
import { OWNER_HOST } from "../memory/frame-pool.js";
import { PanicWatch } from "./panic-watch.js";
import type { VirtioDevice } from "../devices/virtio/virtio.js";
import { VirtioMmio, VIRTIO_MMIO_SIZE } from "../devices/virtio/mmio.js";
import { VirtioRng } from "../devices/virtio/rng.js";
import { VirtioBalloon } from "../devices/virtio/balloon.js";
import { VirtioConsole } from "../devices/virtio/console.js";
import { SnapshotError, StateReader, bytes, u64, type Plain } from "../snapshot/state.js";
import { saveHart, restoreHart } from "../snapshot/hart-state.js";

export interface VirtMachineConfig {
  memBytes: number;
  harts: number;
  /** What boots (absent only when `restore` gives the machine's state instead). */
  kernel?: KernelImage;
  initrd?: Uint8Array;
  cmdline: string;
  /** Guest console output (UART, virtio console and SBI debug console). */
  consoleOut(bytes: Uint8Array): void;
  /** virtio devices that use host resources (disks, network), in slot order
   *  after which the machine adds its own (console, entropy). The caller owns
   *  them: they outlive a reboot. */
  virtio?: VirtioDevice[];
  /** Where console input goes: the UART (ttyS0, the default) or a virtio console (hvc0). */
  console?: "ttyS0" | "hvc0";
  /** The host terminal's size, told to a virtio console (VIRTIO_CONSOLE_F_SIZE),
   *  so programs in the guest know it without asking the terminal. */
  consoleSize?: { cols: number; rows: number };
  /** A device got host input while the VM may be idle: run it soon. */
  wake?(): void;
  /** A guest driver error worth a line on the host (a device needing a reset). */
  warn?(message: string): void;
  /** Binary translation (undefined or false: interpreter only). */
  jit?: JitOptions | false;
  /** Parts a host owns and shares among its VMs. Absent: the machine makes
   *  its own pool and core and runs alone in this thread (runRound). */
  host?: MachineHostParts;
  /** Something outside hart `index` may have made it runnable (an interrupt
   *  line, an IPI, HSM hart_start): the host wakes it if it sleeps. */
  kickHart?(index: number): void;
  /** HSM hart_start made hart `index` runnable. */
  hartStarted?(index: number): void;
  /** A virtio-balloon, and what takes the pages its driver gives up (by
   *  index in the RAM window). Absent: no balloon. */
  balloon?: {
    statsIntervalMs?: number;
    /** Free page reporting (default on). */
    reporting?: boolean;
    discard(indices: number[], reason: "balloon" | "reported"): Promise<void>;
    reclaim(indices: number[]): void;
  };
  /** The guest ended (power-off, reboot, panic, a halted hart). */
  onEnd?(end: VmEnd): void;
  /** Resume a snapshot instead of booting: the machine's saved state (its
   *  guest time sets the clock; restoreState() applies the rest once the
   *  RAM's pages are in place). */
  restore?: { guestTicks: bigint };
}

export interface MachineHostParts {
  pool: FramePool;
  /** The main thread's core instance: it reads and writes hart blocks of
   *  vCPUs that are not running (or that wait in an exit mailbox). */
  core: Core;
  /** The pool owner every frame of this VM is charged to. */
  owner: number;
  /** The scheduler and the harts' vCPU slots in it, for threads that wake
   *  them (host/irqfd.ts); undefined before the harts are scheduled. */
  hartWakes?(): { sched: SchedulerHandle; vcpus: number[] } | undefined;
  /** The host's page store (device threads find compressed and swapped pages there). */
  pages?: PageStoreHandle;
  /** RAM filled already, the machine takes it over (a live migration's
   *  target, src/snapshot/migration/): a p2m of this pool, owner and size. */
  p2m?: P2m;
}

/** What a vCPU does after the machine handled its exit. */
export type ExitAnswer =
  | { kind: "resume" }
  /** Resume once these harts have acted on a posted request (SBI remote
   *  fences return only when the targets have flushed, as under KVM). */
  | { kind: "resume-after"; harts: number[]; request: number }
  | { kind: "stop" }
  | { kind: "block" }
  /** No frame for a p2m fault (the host is out of memory, or a swapped page
   *  cannot be read): the VM waits, paused, and the fault is retried after. */
  | { kind: "wait-memory"; message: string };

/** Where a VM's PLIC is and its shared state (devices/irq/plic.ts), and
 *  its virtio transports' InterruptStatus words (host address, one Int32 per
 *  slot), whose reads and acknowledgements the vCPU's thread answers too. */
export interface IrqchipArea {
  state: SharedArrayBuffer;
  base: bigint;
  size: bigint;
  contexts: number;
  interruptStatus: number;
  virtioSlots: number;
}

/** How the guest ended. */
export type VmEnd =
  | { kind: "poweroff" }
  /** The guest reported a failure status through the test finisher. */
  | { kind: "exit-status"; code: number }
  | { kind: "reboot" }
  | { kind: "panic"; message: string }
  /** A hart cannot go on (its trap handler faults on every instruction). */
  | { kind: "error"; message: string };

export type RoundResult = { kind: "busy" } | { kind: "idle" } | { kind: "ended"; end: VmEnd };

// CSR numbers (privileged spec 2.2).
const CSR_MEDELEG = 0x302, CSR_MIDELEG = 0x303, CSR_MCOUNTEREN = 0x306, CSR_MENVCFG = 0x30a;
const CSR_SCOUNTEREN = 0x106, CSR_STIMECMP = 0x14d;
/** Exceptions the guest kernel handles itself: everything but ECALL from S and M
 *  (hypercalls) and the reserved causes, since there is no M-mode firmware to
 *  take them (OpenSBI delegates a subset because it emulates the rest). */
const MEDELEG_ALL_BUT_ECALL_S = 0xb1ffn;
/** Supervisor software, timer and external interrupts go to S-mode. */
const MIDELEG_S_INTERRUPTS = 0x222n;
const MENVCFG_STCE = 1n << 63n;
const PRV_S = 1;
const A0 = 10, A1 = 11;
/** Byte offset of the InterruptStatus words in the transports' shared frame (after the doorbell words). */
const INTERRUPT_STATUS_AT = 4 * L.VIRT_VIRTIO_SLOTS;

interface HartSlot {
  readonly id: number;
  readonly vcpu: Vcpu;
  state: HartState;
}

export class VirtMachine {
  readonly core: Core;
  readonly pool: FramePool;
  readonly p2m: P2m;
  readonly harts: HartSlot[];
  /** Host address of the VM's time floor (coherent time across harts, core csr.ts), 0 with one hart. */
  readonly timeFloor: number;
  /** The page map of translated code every translation cache of this VM shares. */
  readonly codePageMap: CodePageMap | undefined;
  /** With a host: the virtio transports' queue doorbells its workers ring (vmm/queue-doorbell.ts). */
  readonly doorbells: DoorbellArea | undefined;
  /** With a host: host address of the transports' InterruptStatus words, one Int32 per slot. */
  readonly interruptStatusWords: number;
  readonly owner: number;
  readonly uart: Uart16550;
  /** In a host: the PLIC's shared state and the transports' InterruptStatus words, for a vCPU's
   *  thread to answer its accesses to them itself (it wakes a hart whose line it raised). */
  get irqchip(): IrqchipArea | undefined {
    if (!this.doorbells) return undefined;
    return {
      state: this.plic.buffer, base: L.VIRT_PLIC_BASE, size: plicSize(this.harts.length), contexts: this.plic.contexts,
      interruptStatus: this.interruptStatusWords, virtioSlots: this.virtio.length,
    };
  }
  /** Where kernel, initrd and device tree went (undefined for a restored machine). */
  readonly layout: BootLayout | undefined;
  readonly sbiStats = new SbiStats();
  private readonly ram: GuestMemory;
  private readonly plic: Plic;
  private readonly rtc: GoldfishRtc;
  private readonly aclint: Aclint;
  /** The VM generation ID: a restored VM gets a new one, and its kernel reseeds its RNG. */
  readonly vmgenid: VmGenId;
  readonly clock: RealtimeClock;
  private readonly panicWatch = new PanicWatch();
  private readonly platform: SbiPlatform;
  private readonly consoleIn: number[] = [];
  private readonly virtio: VirtioMmio[] = [];
  /** The memory balloon (virtio-balloon), when the VM has one. */
  readonly balloon: VirtioBalloon | undefined;
  private readonly hvc: VirtioConsole | undefined;
  private pollRequested = false;
  /** The translation cache (undefined with the JIT off). */
  readonly jit: Jit | undefined;
  private end: VmEnd | undefined;

  constructor(private readonly cfg: VirtMachineConfig) {
    if (!Number.isInteger(cfg.harts) || cfg.harts < 1 || cfg.harts > L.VIRT_MAX_HARTS) {
      throw new MachineError(`--cpus must be 1..${L.VIRT_MAX_HARTS}`);
    }
    // A restored guest's clock goes on from the snapshot's time (DESIGN.md:
    // saved state includes the clocks), as if it had been paused meanwhile.
    this.clock = cfg.restore ? RealtimeClock.startingAt(cfg.restore.guestTicks) : new RealtimeClock();
    const pool = cfg.host?.pool ?? new FramePool(CORE_RESERVED_BYTES);
    this.pool = pool;
    this.owner = cfg.host?.owner ?? OWNER_HOST;
    this.core = cfg.host?.core ?? instantiateCore(pool.memory);
    const given = cfg.host?.p2m;
    if (given && (given.pool !== pool || given.owner !== this.owner || given.count * 4096 !== cfg.memBytes || given.start !== L.VIRT_RAM_BASE)) {
      throw new MachineError("the RAM handed to the machine is of another pool, owner, size or base");
    }
    const p2m = given ?? new P2m(pool, L.VIRT_RAM_BASE, cfg.memBytes, { owner: this.owner });
    this.p2m = p2m;
    this.ram = new GuestMemory(p2m, pool.memory);
    const bus = new MmioBus();
    this.harts = [];
    for (let id = 0; id < cfg.harts; id++) {
      this.harts.push({ id, vcpu: new Vcpu(this.core, pool, id, p2m, bus, "exit", this.owner), state: HartState.Stopped });
    }
    // A store that breaks a page's sharing has each of them flush its TLB first.
    p2m.setTlbHolders(this.harts.map((s) => s.vcpu.hart + this.core.k.REQ_OFF), this.core.k.REQ_TLB_FLUSH);
    this.timeFloor = 0;
    if (cfg.harts > 1) {
      // One clock per VM: a time read on any hart is never below one another
      // hart completed before it (core csr.ts explains why this matters).
      this.timeFloor = pool.alloc(this.owner);
      for (const s of this.harts) this.core.fn.setTimeShared(s.vcpu.hart, this.timeFloor);
    }
    if (cfg.jit && cfg.host) {
      // The host's workers translate; they share this map of translated pages.
      this.codePageMap = CodePageMap.create(pool, p2m, this.owner);
    } else if (cfg.jit) {
      this.jit = new Jit(this.core, pool, p2m, cfg.jit);
      for (const s of this.harts) this.jit.attachHart(s.vcpu.hart);
    }

    const { fn, k } = this.core;
    this.plic = new Plic(2 * cfg.harts, (context, level) => {
      // Context 2h is hart h's M-mode, 2h+1 its S-mode (plic.ts).
      const index = context >> 1;
      fn.setIrqLine(this.harts[index].vcpu.hart, context & 1 ? k.IRQ_LINE_SEIP : k.IRQ_LINE_MEIP, level ? 1 : 0);
      if (level) cfg.kickHart?.(index);
    });
    const console = (bytes: Uint8Array) => {
      this.panicWatch.feed(bytes);
      cfg.consoleOut(bytes);
    };
    this.uart = new Uart16550({
      transmit: (b) => console(Uint8Array.of(b)),
      setIrq: (level) => this.plic.setLevel(L.VIRT_UART_IRQ, level),
    });
    this.rtc = new GoldfishRtc({
      nowNs: () => BigInt(Date.now()) * 1_000_000n,
      setIrq: (level) => this.plic.setLevel(L.VIRT_RTC_IRQ, level),
    });
    bus.register(L.VIRT_TEST_BASE, L.VIRT_TEST_SIZE, new Syscon((e) => this.onPowerEvent(e)));
    bus.register(L.VIRT_RTC_BASE, L.VIRT_RTC_SIZE, this.rtc);
    this.vmgenid = new VmGenId({ setIrq: (level) => this.plic.setLevel(L.VIRT_VMGENID_IRQ, level) });
    bus.register(L.VIRT_VMGENID_BASE, L.VIRT_VMGENID_SIZE, this.vmgenid);
    this.aclint = new Aclint(this.core, this.harts.map((s) => s.vcpu.hart), (i) => cfg.kickHart?.(i), () => this.clock.now());
    bus.register(L.VIRT_CLINT_BASE, L.VIRT_CLINT_SIZE, this.aclint);
    bus.register(L.VIRT_PLIC_BASE, plicSize(cfg.harts), this.plic);
    bus.register(L.VIRT_UART_BASE, L.VIRT_UART_SIZE, this.uart);

    if (cfg.console === "hvc0") this.hvc = new VirtioConsole({ name: "console0", output: console, size: cfg.consoleSize });
    if (cfg.balloon) {
      const b = cfg.balloon;
      const indices = (gpas: bigint[]) => gpas.map((g) => p2m.indexOf(g)).filter((i) => i >= 0);
      this.balloon = new VirtioBalloon({
        discard: (gpas, reason) => b.discard(indices(gpas), reason),
        reclaim: (gpas) => b.reclaim(indices(gpas)),
        isRam: (gpa, len) => this.ram.isRam(gpa, len),
        ramBytes: cfg.memBytes,
      }, { statsIntervalMs: b.statsIntervalMs, reporting: b.reporting });
    }
    // The balloon goes last: adding it leaves the other devices' slots (and names) as they were.
    const devices = [...(cfg.virtio ?? []), ...(this.hvc ? [this.hvc] : []), new VirtioRng("rng0"), ...(this.balloon ? [this.balloon] : [])];
    if (devices.length > L.VIRT_VIRTIO_SLOTS) throw new MachineError(`too many virtio devices: ${devices.length}, the virt machine has ${L.VIRT_VIRTIO_SLOTS} slots`);
    // Inside a host, a device may serve its queues on a thread of its own
    // (blk-iothread.ts): the RAM as that thread attaches it, with the page
    // map its writes retire translations in.
    const shared = cfg.host ? { pool: pool.handle(), p2m: p2m.handle(), codePageMap: this.codePageMap?.address ?? 0, pages: cfg.host.pages } : undefined;
    // In a host, one frame holds the transports' words other threads use:
    // the queue doorbells workers ring (queue-doorbell.ts), then each
    // transport's InterruptStatus, which an I/O thread raises and a vCPU's
    // worker reads and acknowledges (host/irqfd.ts).
    const words = cfg.host ? pool.alloc(this.owner) : 0;
    this.doorbells = cfg.host ? { words, slots: devices.length, direct: devices.map((d: VirtioDevice) => d.directKick) } : undefined;
    this.interruptStatusWords = cfg.host ? words + INTERRUPT_STATUS_AT : 0;
    devices.forEach((device, slot) => {
      const source = L.VIRT_VIRTIO_IRQ_BASE + slot;
      const transport = new VirtioMmio(device, {
        mem: this.ram,
        shared,
        setIrq: (high) => this.plic.setLevelFrom(source, high),
        interruptStatus: cfg.host ? { words: pool.words, index: (this.interruptStatusWords >>> 2) + slot } : undefined,
        irqfd: cfg.host && (() => this.irqfdRoute(slot)),
        requestPoll: () => {
          this.pollRequested = true;
          cfg.wake?.();
        },
        warn: (m) => cfg.warn?.(m),
      });
      bus.register(L.virtioSlotBase(slot), VIRTIO_MMIO_SIZE, transport);
      this.virtio.push(transport);
    });

    this.platform = this.sbiPlatform(console);
    if (cfg.restore) {
      this.layout = undefined;
      return;
    }
    this.layout = this.planGuest();
    // In a host, the main thread serves every VM's exits: the images go in
    // a piece at a time (loadGuestStep) between its other work. Alone, at once.
    if (!cfg.host) while (!this.loadGuestStep(Infinity));
    const boot = this.harts[0];
    this.startHart(boot, this.layout.kernelAddr, this.layout.fdtAddr);
  }

  // ---- snapshots (src/snapshot/) ------------------------------------------------------------

  /** What a snapshot must match to be restored here: harts, RAM, devices by slot. */
  configFingerprint(): Plain {
    return {
      harts: this.harts.length,
      memBytes: this.cfg.memBytes,
      console: this.cfg.console ?? "ttyS0",
      devices: this.virtio.map((t) => `${t.name}:${t.device.deviceId}`),
    };
  }

  /** Finish device I/O in flight and take no more until resumeDevices(): the
   *  RAM and device state hold still for a snapshot. */
  async pauseDevices(): Promise<void> {
    this.serviceDoorbells();
    await Promise.all(this.virtio.map((t) => t.pauseIo()));
  }

  resumeDevices(): void {
    for (const t of this.virtio) t.resumeIo();
    this.afterExit();
  }

  /** After a restore: a new VM generation (the guest reseeds its RNG: this
   *  may be one of several clones), and each network card announces itself. */
  restored(): void {
    this.vmgenid.newGeneration();
    this.announceDevices();
  }

  /** After a migration: each network card announces itself (virtio.ts announce). */
  announceDevices(): void {
    for (const t of this.virtio) t.device.announce?.();
  }

  /** Everything but RAM, as plain data. No hart may run (they are off their
   *  pCPUs) and the devices are paused (pauseDevices()). */
  saveState(): Plain {
    if (this.pendingLoad.length > 0) throw new SnapshotError("the VM is still loading its kernel: snapshot it once it runs");
    const { fn } = this.core;
    return {
      config: this.configFingerprint(),
      guestTicks: u64(this.clock.now()),
      timeFloor: u64(this.timeFloor ? Atomics.load(new BigUint64Array(this.pool.memory.buffer, this.timeFloor, 1), 0) : 0n),
      harts: this.harts.map((s) => ({ state: s.state, block: saveHart(this.core, s.vcpu.hart), time: u64(fn.getTime(s.vcpu.hart)) })),
      plic: this.plic.saveState(),
      aclint: this.aclint.saveState(),
      uart: this.uart.saveState(),
      rtc: this.rtc.saveState(),
      vmgenid: this.vmgenid.saveState(),
      consoleIn: bytes(Uint8Array.from(this.consoleIn)),
      virtio: this.virtio.map((t) => t.saveState()),
      ended: this.end ? true : false,
    };
  }

  /** Apply saved state to this machine, built with `restore` from the same
   *  configuration. Untrusted: any value out of range is a SnapshotError. */
  restoreState(r: StateReader): void {
    const config = r.obj("config");
    const mine = this.configFingerprint() as Record<string, Plain>;
    const harts = config.int("harts", 1, L.VIRT_MAX_HARTS);
    if (harts !== mine.harts) throw new SnapshotError(`the snapshot is of a VM with ${harts} harts, this one has ${mine.harts}`);
    const mem = config.num("memBytes");
    if (mem !== mine.memBytes) throw new SnapshotError(`the snapshot is of a VM with ${mem / 2 ** 20} MiB of RAM, this one has ${(mine.memBytes as number) / 2 ** 20} MiB`);
    const consoleKind = config.oneOf("console", ["ttyS0", "hvc0"]);
    if (consoleKind !== mine.console) throw new SnapshotError(`the snapshot's console is ${consoleKind}, this VM's ${mine.console as string}`);
    const devices = config.array("devices", L.VIRT_VIRTIO_SLOTS).map((d) => d.asString(64));
    const myDevices = mine.devices as string[];
    if (devices.join(",") !== myDevices.join(",")) throw new SnapshotError(`the snapshot's virtio devices are [${devices.join(", ")}], this VM's [${myDevices.join(", ")}]`);
    if (r.bool("ended")) throw new SnapshotError("the snapshot is of a VM whose guest had ended");
    const { fn } = this.core;
    const saved = r.array("harts", L.VIRT_MAX_HARTS);
    r.check(saved.length === this.harts.length, "hart count differs from the configuration");
    saved.forEach((hr, i) => {
      const slot = this.harts[i];
      const state = hr.int("state", 0, HartState.Suspended) as HartState;
      if (state === HartState.StartPending || state === HartState.StopPending) throw new SnapshotError(`${hr.path}.state: a transient HSM state`);
      // A stopped hart's block is not restored: HSM hart_start resets it before
      // it runs, and one that never ran was never reset (its block is zero).
      if (state !== HartState.Stopped) restoreHart(this.core, slot.vcpu.hart, i, hr.obj("block"));
      fn.setTime(slot.vcpu.hart, hr.u64("time"));
      slot.state = state;
    });
    if (this.timeFloor) Atomics.store(new BigUint64Array(this.pool.memory.buffer, this.timeFloor, 1), 0, r.u64("timeFloor"));
    this.plic.restoreState(r.obj("plic"));
    this.aclint.restoreState(r.obj("aclint"));
    this.uart.restoreState(r.obj("uart"));
    this.rtc.restoreState(r.obj("rtc"));
    this.vmgenid.restoreState(r.obj("vmgenid"));
    this.consoleIn.splice(0, this.consoleIn.length, ...r.bytes("consoleIn", 1 << 20));
    const transports = r.array("virtio", L.VIRT_VIRTIO_SLOTS);
    r.check(transports.length === this.virtio.length, "virtio device count differs from the configuration");
    transports.forEach((t, i) => this.virtio[i].restoreState(t));
  }

  /** Harts that run once the restored VM is let go (the others wait for HSM or an interrupt). */
  get startedHarts(): number[] {
    return this.harts.filter((s) => s.state === HartState.Started).map((s) => s.id);
  }

  /** What is still to be copied into RAM before the boot hart may run. */
  private pendingLoad: { gpa: bigint; bytes: Uint8Array }[] = [];

  /**
   * Copy up to `maxBytes` more of kernel, initrd and device tree into RAM;
   * true once all of it is there (the boot hart must not run before).
   */
  loadGuestStep(maxBytes: number): boolean {
    let budget = maxBytes;
    while (this.pendingLoad.length > 0 && budget > 0) {
      const piece = this.pendingLoad[0];
      const n = Math.min(piece.bytes.length, budget);
      this.ram.write(piece.gpa, piece.bytes.subarray(0, n));
      budget -= n;
      if (n === piece.bytes.length) this.pendingLoad.shift();
      else this.pendingLoad[0] = { gpa: piece.gpa + BigInt(n), bytes: piece.bytes.subarray(n) };
    }
    return this.pendingLoad.length === 0;
  }

  /** Where kernel, initrd and device tree go (Linux RISC-V boot protocol); queue their copies. */
  private planGuest(): BootLayout {
    const { cfg } = this;
    const ramSize = BigInt(cfg.memBytes);
    const fdtFor = (initrd?: { start: bigint; end: bigint }) =>
      virtFdt({ harts: cfg.harts, ramSize, bootargs: cfg.cmdline, initrd, virtioSlots: this.virtio.map((_, slot) => slot) });
    // The blob's size does not depend on the initrd addresses (fixed-width cells).
    const sizing = fdtFor(cfg.initrd ? { start: 0n, end: 0n } : undefined);
    if (!cfg.kernel) throw new MachineError("no kernel to boot");
    const layout = planBoot(L.VIRT_RAM_BASE, ramSize, cfg.kernel, cfg.initrd?.length, sizing.length);
    this.pendingLoad = [{ gpa: layout.kernelAddr, bytes: cfg.kernel.bytes }];
    if (cfg.initrd && layout.initrd) this.pendingLoad.push({ gpa: layout.initrd.start, bytes: cfg.initrd });
    this.pendingLoad.push({ gpa: layout.fdtAddr, bytes: fdtFor(layout.initrd) });
    return layout;
  }

  /** Enter the kernel on a hart as an SBI implementation would (SBI spec, HSM
   *  hart_start; Linux boot.rst): S-mode, MMU off, a0 = hart ID, a1 = arg. */
  private startHart(slot: HartSlot, pc: bigint, arg: bigint): void {
    const { fn } = this.core;
    const h = slot.vcpu.hart;
    slot.vcpu.reset(pc);
    fn.setSbiMode(h, 1);
    fn.setTickInsns(h, REALTIME_TICK_INSNS);
    fn.csrWrite(h, CSR_MEDELEG, MEDELEG_ALL_BUT_ECALL_S);
    fn.csrWrite(h, CSR_MIDELEG, MIDELEG_S_INTERRUPTS);
    // The guest may read cycle, time and instret, and uses Sstc's stimecmp.
    fn.csrWrite(h, CSR_MCOUNTEREN, 7n);
    // And so may user space, as firmware leaves it (OpenSBI's hart init sets
    // scounteren to CY|TM|IR): the vDSO's clock_gettime reads time with
    // rdtime, and Linux only narrows scounteren when it has an SBI PMU.
    fn.csrWrite(h, CSR_SCOUNTEREN, 7n);
    fn.csrWrite(h, CSR_MENVCFG, MENVCFG_STCE);
    fn.setTime(h, this.clock.now());
    fn.setPriv(h, PRV_S);
    fn.setX(h, A0, BigInt(slot.id));
    fn.setX(h, A1, arg);
    slot.state = HartState.Started;
  }

  private onPowerEvent(e: PowerEvent): void {
    if (e.kind === "poweroff") this.finish({ kind: "poweroff" });
    else if (e.kind === "fail") this.finish({ kind: "exit-status", code: e.code });
    else this.finish({ kind: "reboot" });
  }

  private finish(end: VmEnd): void {
    if (this.end) return;
    // A restart right after "Kernel panic" is the panic=-1 path, not a user's reboot.
    const panic = this.panicWatch.message;
    this.end = end.kind === "reboot" && panic !== undefined ? { kind: "panic", message: panic } : end;
    for (const s of this.harts) s.vcpu.requestStop();
    this.cfg.onEnd?.(this.end);
  }

  /** How the guest ended, once it has. */
  get ended(): VmEnd | undefined {
    return this.end;
  }

  // ---- inside a host: exits handed over by the pCPU workers -------------------------------

  /**
   * Handle the exit hart `index` left in its run record (MMIO, SBI, a halted
   * hart): its worker waits in the exit mailbox meanwhile, so the hart block
   * is ours to read and write. Returns what the vCPU does next.
   */
  serviceExit(index: number): ExitAnswer {
    const slot = this.harts[index];
    const { k } = this.core;
    if (this.end) return { kind: "stop" };
    const reason = Number(slot.vcpu.runRecord(k.RUN_REASON_OFF));
    let answer: ExitAnswer;
    switch (reason) {
      case k.EXIT_MMIO_READ:
      case k.EXIT_MMIO_WRITE:
        slot.vcpu.handleMmioExit(reason === k.EXIT_MMIO_WRITE);
        answer = { kind: "resume" };
        break;
      case k.EXIT_SBI:
        answer = this.serviceSbi(slot);
        break;
      case k.EXIT_P2M_FAULT: {
        // The worker could not resolve it: outside RAM, or no frame or page to be had there.
        const gpa = slot.vcpu.runRecord(k.RUN_ADDR_OFF);
        const write = slot.vcpu.runRecord(k.RUN_WRITE_OFF) === 1n;
        try {
          if (this.p2m.resolveFault(gpa, write)) {
            answer = { kind: "resume" };
            break;
          }
        } catch (e) {
          // A page the snapshot file cannot give back (corrupted, cut short)
          // will not come later: the VM ends, saying which. Anything else is
          // the host out of memory for now: wait.
          if (e instanceof SnapshotError) {
            this.finish({ kind: "error", message: `hart ${index}: ${e.message}` });
            answer = { kind: "stop" };
            break;
          }
          answer = { kind: "wait-memory", message: `hart ${index} cannot get guest page 0x${gpa.toString(16)}: ${(e as Error).message}` };
          break;
        }
        this.finish({ kind: "error", message: `hart ${index}: guest-physical address 0x${gpa.toString(16)} cannot be mapped` });
        answer = { kind: "stop" };
        break;
      }
      default: {
        const pc = slot.vcpu.runRecord(k.RUN_ADDR_OFF);
        this.finish({ kind: "error", message: `hart ${index} halted: its trap handler at 0x${pc.toString(16)} faults on every instruction` });
        answer = { kind: "stop" };
      }
    }
    this.afterExit();
    return this.end ? { kind: "stop" } : answer;
  }

  /** How another thread raises virtio slot `slot`'s interrupt (host/irqfd.ts), once the host has the harts scheduled. */
  private irqfdRoute(slot: number): IrqfdRoute | undefined {
    const wakes = this.cfg.host?.hartWakes?.();
    if (!wakes) return undefined;
    const { k } = this.core;
    return {
      interruptStatus: this.interruptStatusWords + 4 * slot,
      plic: this.plic.buffer, contexts: this.plic.contexts, source: L.VIRT_VIRTIO_IRQ_BASE + slot,
      harts: this.harts.map((s) => s.vcpu.hart), vcpus: wakes.vcpus, sched: wakes.sched,
      lineMeipOff: k.LINE_MEIP_OFF, lineSeipOff: k.LINE_SEIP_OFF, reqOff: k.REQ_OFF, reqIrq: k.REQ_IRQ, reqExit: k.REQ_EXIT,
    };
  }

  /** Hand the queue notifications workers recorded to their transports
   *  (the QueueNotify writes, taken off the exit path). */
  serviceDoorbells(): void {
    const area = this.doorbells;
    if (!area || this.end) return;
    let any = false;
    for (let slot = 0; slot < area.slots; slot++) {
      for (const q of takeQueueDoorbells(area, this.pool.words, slot)) {
        this.virtio[slot].write(QUEUE_NOTIFY_OFFSET, 4, BigInt(q));
        any = true;
      }
    }
    if (any) this.afterExit();
  }

  /** Device work an exit may have made due: UART input once its driver
   *  listens, virtio queues a backend asked to have polled. */
  afterExit(): void {
    this.feedUart();
    this.rtc.poll();
    if (this.pollRequested) {
      this.pollRequested = false;
      for (const t of this.virtio) t.poll();
    }
  }

  private serviceSbi(slot: HartSlot): ExitAnswer {
    this.fenceTargets = undefined;
    const keepRunning = this.handleSbi(slot);
    const fence = this.fenceTargets as { harts: number[]; request: number } | undefined;
    if (!keepRunning) return slot.state === HartState.Suspended ? { kind: "block" } : { kind: "stop" };
    return fence ? { kind: "resume-after", ...fence } : { kind: "resume" };
  }

  /** Targets of the SBI remote fence being handled (serviceSbi waits for them). */
  private fenceTargets: { harts: number[]; request: number } | undefined;

  /** The VM's balloon as the host's memory manager drives it (undefined
   *  while the machine has none, or its driver is not up). */
  balloonControl(): BalloonControl | undefined {
    const b = this.balloon;
    if (!b || b.guestStats().updatedAt === undefined) return undefined;
    return {
      guestAvailableBytes: () => b.guestStats().availableBytes ?? b.guestStats().freeBytes,
      get targetBytes() {
        return b.target;
      },
      setTarget: (bytes) => b.setTarget(Math.min(bytes, this.cfg.memBytes)),
    };
  }

  /** Before release(): devices that touch guest memory on other threads (an
   *  I/O thread's request in flight) let go of it. The main thread serves on meanwhile. */
  async quiesceDevices(): Promise<void> {
    await Promise.all(this.virtio.map((t) => t.device.quiesce?.()));
  }

  /** Give every frame of the VM back to the pool (zeroed): its p2m, RAM, hart
   *  blocks and translation areas. No hart may run afterwards, and no device
   *  thread may touch guest memory (quiesceDevices()). */
  release(): void {
    this.jit?.release();
    if (this.cfg.host) {
      this.p2m.releaseBorrowed();
      this.pool.releaseOwner(this.owner);
      return;
    }
    this.codePageMap?.release();
    for (const s of this.harts) s.vcpu.release();
    if (this.timeFloor) this.pool.free(this.timeFloor);
    this.p2m.release();
  }

  /** Host keyboard or pipe input for the guest console. */
  consoleInput(bytes: Uint8Array): void {
    if (this.hvc) return this.hvc.input(bytes);
    for (const b of bytes) this.consoleIn.push(b);
  }

  /** The host terminal was resized (only a virtio console can tell the guest). */
  consoleResize(cols: number, rows: number): void {
    this.hvc?.resize(cols, rows);
  }

  /** Input bytes not yet taken by the guest (for host-side flow control). */
  get consoleBacklog(): number {
    if (this.hvc) return this.hvc.inputBacklog;
    return this.consoleIn.length + this.uart.rxWaiting;
  }

  /** Run every hart that can run for one slice of `sliceInsns` instructions. */
  runRound(sliceInsns: number): RoundResult {
    const { fn } = this.core;
    if (this.end) return { kind: "ended", end: this.end };
    this.afterExit();
    const now = this.clock.now();
    let ran = false;
    for (const slot of this.harts) {
      if (slot.state === HartState.Stopped) continue;
      const h = slot.vcpu.hart;
      if (fn.getTime(h) < now) fn.setTime(h, now);
      const sleeping = slot.state === HartState.Suspended || fn.isWaiting(h);
      if (sleeping && !fn.wakeupPending(h)) continue;
      slot.state = HartState.Started;
      ran = true;
      this.runHart(slot, sliceInsns);
      if (this.end) return { kind: "ended", end: this.end };
    }
    return ran ? { kind: "busy" } : { kind: "idle" };
  }

  /** Host milliseconds until the earliest timer of a sleeping hart (undefined: none armed). */
  msUntilNextTimer(): number | undefined {
    let best: bigint | undefined;
    for (const slot of this.harts) {
      if (slot.state === HartState.Stopped) continue;
      const d = this.core.fn.timerDeadline(slot.vcpu.hart);
      if (d !== -1n && (best === undefined || d < best)) best = d;
    }
    return best === undefined ? undefined : this.clock.msUntil(BigInt.asUintN(64, best));
  }

  private runHart(slot: HartSlot, budget: number): void {
    const { vcpu } = slot;
    let left = budget;
    while (left > 0 && !this.end) {
      const before = vcpu.stats.instructions;
      const end = vcpu.runSlice(left);
      left -= Number(vcpu.stats.instructions - before);
      switch (end.kind) {
        case "budget":
        case "wfi":
        case "stop":
          return;
        case "sbi":
          if (!this.handleSbi(slot)) return;
          break;
        case "halt":
          throw new MachineError(`hart ${slot.id} halted: its trap handler at 0x${end.pc.toString(16)} faults on every instruction`);
        case "stuck":
        case "htif":
          throw new MachineError(`internal error: unexpected ${end.kind} exit on the virt machine`);
      }
    }
  }

  /** Returns whether the hart keeps running. */
  private handleSbi(slot: HartSlot): boolean {
    const { fn } = this.core;
    const h = slot.vcpu.hart;
    const caller: SbiCaller = { hartId: slot.id, getX: (i) => fn.getX(h, i), setX: (i, v) => fn.setX(h, i, v) };
    const outcome: SbiOutcome = handleSbiCall(caller, this.platform, this.sbiStats);
    switch (outcome.kind) {
      case "continue":
        return true;
      case "hart-stopped":
        slot.state = HartState.Stopped;
        return false;
      case "hart-suspended":
        slot.state = HartState.Suspended;
        return false;
      case "reset":
        this.finish(outcome.type === "shutdown" ? { kind: "poweroff" } : { kind: "reboot" });
        return false;
    }
  }

  /** The UART takes host input only once its driver listens (receive interrupt
   *  enabled): the 8250 driver clears the FIFO when it starts, and bytes typed
   *  before would be lost. Beyond the FIFO the UART keeps a backlog. */
  private feedUart(): void {
    if (this.consoleIn.length === 0 || !this.uart.rxInterruptEnabled) return;
    this.uart.receive(Uint8Array.from(this.consoleIn.splice(0, this.consoleIn.length)));
  }

  private sbiPlatform(console: (bytes: Uint8Array) => void): SbiPlatform {
    const { fn, k } = this.core;
    const hartOf = (id: number) => this.harts[id].vcpu.hart;
    return {
      hartCount: this.harts.length,
      setTimer: (id, value) => fn.csrWrite(hartOf(id), CSR_STIMECMP, value),
      sendIpi: (ids) => {
        for (const id of ids) {
          // An IPI is a supervisor software interrupt at the target (SBI
          // spec v2.0, 7.1 sbi_send_ipi): sip.SSIP, set by the target's own
          // thread when it sees the request (the target may be running on
          // another worker, and mip is its to write). Never a read-then-write
          // of mip here: a read returns SEIP OR-ed with the PLIC's line, and
          // writing that back latched SEIP on for good (privileged spec 3.1.9).
          fn.postRequest(hartOf(id), k.REQ_SSIP);
          this.cfg.kickHart?.(id);
        }
      },
      remoteFence: (ids, kind) => {
        // FENCE.I: translations are keyed by guest-physical page and retired
        // when the page is written, so there is nothing to drop. SFENCE.VMA:
        // the target flushes its TLB when it sees the request; the caller
        // resumes once every target has (SBI spec v2.0, chapter 8: the call
        // returns when the fence is done on the remote harts).
        if (kind !== "sfence.vma") return;
        for (const id of ids) fn.postRequest(hartOf(id), k.REQ_TLB_FLUSH);
        this.fenceTargets = { harts: [...ids], request: k.REQ_TLB_FLUSH };
      },
      hartState: (id) => this.harts[id].state,
      startHart: (id, pc, opaque) => {
        this.startHart(this.harts[id], pc, opaque);
        this.cfg.hartStarted?.(id);
      },
      isRam: (gpa, len) => this.ram.isRam(gpa, len),
      readGuest: (gpa, len) => this.ram.read(gpa, len),
      writeGuest: (gpa, bytes) => this.ram.write(gpa, bytes),
      consoleWrite: console,
      // Console input goes to the UART, the guest's console; the SBI debug
      // console is output-only here (a read returning 0 bytes is valid).
      consoleRead: () => new Uint8Array(0),
    };
  }

  /** Per-queue and per-device virtio counts for `--stats`. */
  /** Per-queue virtio counts of every device, for metrics. */
  virtioQueueCounts(): { device: string; queue: number; requests: number; bytesRead: number; bytesWritten: number; notifications: number; interrupts: number }[] {
    return this.virtio.flatMap((t) => {
      t.device.syncStats?.();
      return t.queueStats.map((q, queue) => ({
        device: t.name, queue, requests: q.requests, bytesRead: q.bytesRead, bytesWritten: q.bytesWritten,
        notifications: q.notifications, interrupts: q.interrupts,
      }));
    });
  }

  virtioStats(): string {
    const lines = ["virtio queues:"];
    const mib = (n: number) => `${(n / (1 << 20)).toFixed(1)} MiB`;
    for (const t of this.virtio) {
      t.device.syncStats?.();
      t.queueStats.forEach((q, i) => {
        if (q.notifications === 0 && q.requests === 0) return;
        lines.push(`  ${`${t.name} q${i}`.padEnd(14)} ${q.notifications} notifies, ${q.requests} requests, ${q.interrupts} interrupts, ${mib(q.bytesRead)} from guest, ${mib(q.bytesWritten)} to guest` +
          (q.badChains ? `, ${q.badChains} bad chains` : ""));
      });
      if (t.notifiesIgnored) lines.push(`  ${t.name.padEnd(14)} ${t.notifiesIgnored} notifies ignored (queue not ready)`);
      if (t.needsResets) lines.push(`  ${t.name.padEnd(14)} ${t.needsResets} times DEVICE_NEEDS_RESET`);
    }
    const devices = this.virtio.flatMap((t) => t.device.statsLines?.() ?? []);
    if (devices.length) lines.push("virtio devices:", ...devices.map((l) => `  ${l}`));
    return lines.join("\n");
  }

  /** Exit counts of all harts, SBI calls by extension. */
  stats(): ExitStats {
    const total = new ExitStats();
    for (const s of this.harts) total.add(s.vcpu.stats);
    for (const [ext, n] of this.sbiStats.calls) total.countSbi(ext, n);
    return total;
  }
}
