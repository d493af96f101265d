// virtio-mmio transport, version 2 (virtio 1.2, 4.2 "Virtio Over MMIO"):
// the register block a driver uses to discover a device, negotiate features,
// place its queues and notify, at one of the `virt` machine's 4 KiB slots.
//
//   0x000 MagicValue "virt"      0x050 QueueNotify (W)
//   0x004 Version = 2            0x060 InterruptStatus        0x064 InterruptACK (W)
//   0x008 DeviceID               0x070 Status
//   0x00c VendorID               0x080/084 QueueDescLow/High
//   0x010 DeviceFeatures         0x090/094 QueueDriverLow/High (available ring)
//   0x014 DeviceFeaturesSel (W)  0x0a0/0a4 QueueDeviceLow/High (used ring)
//   0x020 DriverFeatures (W)     0x0ac SHMSel (W), 0x0b0/0b4 SHMLenLow/High, 0x0b8/0bc SHMBaseLow/High
//   0x024 DriverFeaturesSel (W)  0x0fc ConfigGeneration
//   0x030 QueueSel (W)           0x100.. device configuration space
//   0x034 QueueNumMax
//   0x038 QueueNum (W)
//   0x044 QueueReady
//
// Only the modern interface: a driver that does not accept VIRTIO_F_VERSION_1
// does not get FEATURES_OK (4.2.2.2 and 2.2.1). The registers are 32 bits
// wide; the configuration space takes 8, 16 and 32-bit accesses.
//
// Snapshots (src/snapshot/state.ts): pauseIo() stops device work, saveState()
// gives the registers, each live queue's indices and the device's own state
// as plain data; restoreState() applies them, checked as untrusted input, to
// a freshly built transport and device, which stay paused until resumeIo().

import type { MmioDevice } from "../../bus/mmio-bus.js";
import { GuestMemoryError, type GuestMemory, type SharedGuestMemory } from "../../memory/guest-memory.js";
import { OutOfHostMemory } from "../../memory/frame-pool.js";
import {
  type VirtioDevice, type VirtioContext,
  STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_DEVICE_NEEDS_RESET, STATUS_FAILED,
  VIRTIO_F_VERSION_1, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX,
} from "./virtio.js";
import { VirtQueue, QueueBroken, ChainError, QueueStats, ringAreaSizes, type QueueIndices } from "./queue.js";
import { SnapshotError, StateReader, u64, type Plain } from "../../snapshot/state.js";
import { REG, INT_USED_BUFFER, INT_CONFIG_CHANGE } from "./mmio-registers.js";
import { InterruptStatus } from "./interrupt-status.js";
import type { IrqfdRoute } from "../../host/irqfd.js";

const MAGIC = 0x7472_6976; // "virt"
const VERSION = 2;
/** VendorID: any value; QEMU uses "QEMU", tsvisor its own. */
const VENDOR_ID = 0x5653_5354; // "TSSV"

/** Every status bit a device can show (2.1). */
const STATUS_BITS = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK | STATUS_FEATURES_OK | STATUS_DEVICE_NEEDS_RESET | STATUS_FAILED;


export const VIRTIO_MMIO_SIZE = 0x1000n;

/** What the driver wrote for one queue (4.2.3.2), live once QueueReady is 1. */
interface QueueRegs {
  num: number;
  ready: boolean;
  desc: bigint;
  driver: bigint;
  device: bigint;
}

export interface VirtioMmioHost {
  mem: GuestMemory;
  /** The same RAM for devices that serve their queues on another thread (virtio.ts VirtioContext.shared). */
  shared?: SharedGuestMemory;
  /** The interrupt line follows `high()` (InterruptStatus != 0), read where
   *  no other thread moves the line meanwhile (plic.ts setLevelFrom). */
  setIrq(high: () => boolean): void;
  /**
   * Where InterruptStatus lives when other threads raise or acknowledge it
   * too (a disk's I/O thread, a vCPU's worker, host/irqfd.ts): Int32 word
   * `index` of shared memory. Without it the transport keeps its own.
   */
  interruptStatus?: { words: Int32Array; index: number };
  /** With interruptStatus: how another thread raises this transport's interrupt (VirtioContext.irqfd). */
  irqfd?(): IrqfdRoute | undefined;
  /** The device has asynchronous work: have the machine call poll() soon. */
  requestPoll(): void;
  /** A driver error worth a host-side line (a broken ring: DEVICE_NEEDS_RESET). */
  warn(message: string): void;
}

export class VirtioMmio implements MmioDevice {
  readonly name: string;
  private status = 0;
  private deviceFeaturesSel = 0;
  private driverFeaturesSel = 0;
  private driverFeatures = 0n;
  private queueSel = 0;
  /** InterruptStatus (4.2.2), changed only by atomic operations: other threads may share it. */
  private readonly isr: InterruptStatus;
  private configGeneration = 0;
  private regs: QueueRegs[];
  /** The live queues, by index: the device looks its queues up here (a queue not ready has none). */
  private queues: (VirtQueue | undefined)[] = [];
  /** Counts survive resets: they describe the VM's whole run. */
  readonly queueStats: QueueStats[];
  notifiesIgnored = 0;
  needsResets = 0;
  /** pauseIo() to resumeIo(), and a restored transport until resumeIo(): no device work. */
  private ioPaused = false;

  constructor(readonly device: VirtioDevice, private readonly host: VirtioMmioHost) {
    this.name = device.name;
    const shared = host.interruptStatus;
    this.isr = new InterruptStatus(shared?.words ?? new Int32Array(1), shared?.index ?? 0, (high) => host.setIrq(high));
    this.regs = device.queueMaxSizes.map(() => emptyQueueRegs());
    this.queueStats = device.queueMaxSizes.map(() => new QueueStats());
    // A device outlives a guest reboot (its disk stays open): start it clean.
    device.reset();
  }

  /** Everything the device offers: its own bits and the transport's. */
  get offeredFeatures(): bigint {
    return this.device.features | VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX;
  }

  read(offset: number, size: number): bigint {
    if (offset >= REG.Config) {
      if (size !== 1 && size !== 2 && size !== 4) return 0n;
      return BigInt(this.device.readConfig(offset - REG.Config, size) >>> 0);
    }
    if (size !== 4) return 0n;
    const q = this.regs[this.queueSel];
    switch (offset) {
      case REG.MagicValue: return BigInt(MAGIC);
      case REG.Version: return BigInt(VERSION);
      case REG.DeviceID: return BigInt(this.device.deviceId);
      case REG.VendorID: return BigInt(VENDOR_ID);
      case REG.DeviceFeatures:
        return this.deviceFeaturesSel > 1 ? 0n : (this.offeredFeatures >> BigInt(32 * this.deviceFeaturesSel)) & 0xffff_ffffn;
      case REG.QueueNumMax: return BigInt(q ? this.device.queueMaxSizes[this.queueSel] : 0);
      case REG.QueueReady: return q?.ready ? 1n : 0n;
      case REG.InterruptStatus: return BigInt(this.isr.value);
      case REG.Status: return BigInt(this.status);
      case REG.ConfigGeneration: return BigInt(this.configGeneration);
      // No shared memory regions: a length of all ones says "none" (4.2.2).
      case REG.SHMLenLow: case REG.SHMLenHigh: case REG.SHMBaseLow: case REG.SHMBaseHigh: return 0xffff_ffffn;
    }
    return 0n;
  }

  write(offset: number, size: number, value: bigint): void {
    if (offset >= REG.Config) {
      if (size === 1 || size === 2 || size === 4) this.device.writeConfig(offset - REG.Config, size, Number(value & 0xffff_ffffn));
      return;
    }
    if (size !== 4) return;
    const v = Number(value & 0xffff_ffffn);
    const q = this.regs[this.queueSel];
    switch (offset) {
      case REG.DeviceFeaturesSel: this.deviceFeaturesSel = v; return;
      case REG.DriverFeaturesSel: this.driverFeaturesSel = v; return;
      case REG.DriverFeatures:
        // Only before FEATURES_OK (3.1.1); a selector beyond the 64 feature bits is ignored.
        if (this.status & STATUS_FEATURES_OK || this.driverFeaturesSel > 1) return;
        {
          const shift = BigInt(32 * this.driverFeaturesSel);
          this.driverFeatures = (this.driverFeatures & ~(0xffff_ffffn << shift)) | (BigInt(v) << shift);
        }
        return;
      case REG.QueueSel: this.queueSel = v; return;
      case REG.QueueNum: if (q && !q.ready) q.num = v; return;
      case REG.QueueDescLow: if (q && !q.ready) q.desc = setLow(q.desc, v); return;
      case REG.QueueDescHigh: if (q && !q.ready) q.desc = setHigh(q.desc, v); return;
      case REG.QueueDriverLow: if (q && !q.ready) q.driver = setLow(q.driver, v); return;
      case REG.QueueDriverHigh: if (q && !q.ready) q.driver = setHigh(q.driver, v); return;
      case REG.QueueDeviceLow: if (q && !q.ready) q.device = setLow(q.device, v); return;
      case REG.QueueDeviceHigh: if (q && !q.ready) q.device = setHigh(q.device, v); return;
      case REG.QueueReady: if (q) this.setQueueReady(this.queueSel, v === 1); return;
      case REG.QueueNotify: this.onNotify(v & 0xffff); return;
      case REG.InterruptACK:
        this.isr.acknowledge(v);
        return;
      case REG.Status: this.setStatus(v & 0xff); return;
    }
  }

  /** Deferred device work (network input): the machine calls this when asked. */
  poll(): void {
    if (this.ioPaused) return;
    if (!(this.status & STATUS_DRIVER_OK) || this.status & STATUS_DEVICE_NEEDS_RESET) return;
    this.guarded(() => this.device.poll?.());
  }

  /** For the device's configChanged(): bump the generation and interrupt (4.2.2, ConfigGeneration). */
  private configChanged(): void {
    this.configGeneration = (this.configGeneration + 1) >>> 0;
    if (this.status & STATUS_DRIVER_OK) {
      this.isr.raise(INT_CONFIG_CHANGE);
    }
  }

  private setStatus(v: number): void {
    if (v === 0) return this.reset();
    // The driver may only add bits (3.1.1); FEATURES_OK is the device's to grant.
    let next = this.status | (v & (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK | STATUS_FAILED));
    if (v & STATUS_FEATURES_OK && !(this.status & STATUS_FEATURES_OK) && this.featuresAcceptable()) next |= STATUS_FEATURES_OK;
    const activating = next & STATUS_DRIVER_OK && !(this.status & STATUS_DRIVER_OK);
    this.status = next;
    if (activating) {
      if (!(this.status & STATUS_FEATURES_OK)) return this.needsReset("DRIVER_OK without FEATURES_OK");
      this.guarded(() => this.device.activate(this.context(), this.queues, this.driverFeatures));
    }
  }

  /** 2.2.1 and 4.2.2.2: only offered bits, and VERSION_1 (no legacy interface here). */
  private featuresAcceptable(): boolean {
    return (this.driverFeatures & ~this.offeredFeatures) === 0n && (this.driverFeatures & VIRTIO_F_VERSION_1) !== 0n;
  }

  private reset(): void {
    this.device.reset();
    this.status = 0;
    this.driverFeatures = 0n;
    this.deviceFeaturesSel = this.driverFeaturesSel = this.queueSel = 0;
    this.isr.store(0);
    this.regs = this.device.queueMaxSizes.map(() => emptyQueueRegs());
    this.queues = [];
    this.isr.sync();
  }

  /** QueueReady = 1 makes a queue live once its size and ring addresses check out (2.7, 4.2.3.2). */
  private setQueueReady(index: number, ready: boolean): void {
    const q = this.regs[index];
    if (!ready) {
      // 4.2.2.2: the driver stops using a queue by writing 0 here. From then on
      // the device must leave its rings alone, whatever a notify or poll() asks:
      // the queue object goes, and a later QueueReady = 1 makes a new one from
      // the registers as they are then (another size, other rings).
      const wasReady = q.ready;
      q.ready = false;
      this.queues[index] = undefined;
      if (wasReady) this.device.queueStopped?.(index);
      return;
    }
    if (q.ready) return;
    const problem = this.queueProblem(index, q);
    if (problem) return this.needsReset(`queue ${index}: ${problem}`);
    q.ready = true;
    const eventIdx = (this.driverFeatures & VIRTIO_F_EVENT_IDX) !== 0n;
    const indirect = (this.driverFeatures & VIRTIO_F_INDIRECT_DESC) !== 0n;
    this.queues[index] = this.liveQueue(index, q, eventIdx, indirect);
  }

  /** Why queue `index` cannot go live with these registers (2.7, 4.2.3.2), or undefined. */
  private queueProblem(index: number, q: QueueRegs): string | undefined {
    const max = this.device.queueMaxSizes[index];
    const sizes = ringAreaSizes(q.num);
    return q.num === 0 || q.num > max || (q.num & (q.num - 1)) !== 0 ? `size ${q.num} (a power of 2 up to ${max})` :
      q.desc % 16n !== 0n || q.driver % 2n !== 0n || q.device % 4n !== 0n ? "misaligned ring" :
      !this.host.mem.isRam(q.desc, sizes.desc) || !this.host.mem.isRam(q.driver, sizes.avail + 2) || !this.host.mem.isRam(q.device, sizes.used + 2)
        ? "ring outside guest RAM" : undefined;
  }

  private liveQueue(index: number, q: QueueRegs, eventIdx: boolean, indirect: boolean): VirtQueue {
    return new VirtQueue(index, { size: q.num, descAddr: q.desc, availAddr: q.driver, usedAddr: q.device, eventIdx, indirect },
      this.host.mem, () => this.usedBufferInterrupt(), this.queueStats[index]);
  }

  // ---- snapshots ----------------------------------------------------------------------

  /**
   * Stop device work for a snapshot: notifies and polls wait, the device
   * finishes or parks what it has in flight (VirtioDevice.pauseIo). Resolves
   * when no thread of the device touches guest memory.
   */
  async pauseIo(): Promise<void> {
    this.ioPaused = true;
    await this.device.pauseIo?.();
  }

  /**
   * Go on after pauseIo() or restoreState(). Every live queue is looked at
   * once (a notify the driver made while the device was paused, or in the
   * original VM just before its snapshot, is not lost: a spurious one costs
   * a look at the ring) and host input waiting is delivered.
   */
  resumeIo(): void {
    if (!this.ioPaused) return;
    this.ioPaused = false;
    this.device.resumeIo?.();
    if (!(this.status & STATUS_DRIVER_OK) || this.status & STATUS_DEVICE_NEEDS_RESET) return;
    this.queues.forEach((q, i) => {
      if (q && !(this.status & STATUS_DEVICE_NEEDS_RESET)) this.guarded(() => this.device.notify(i));
    });
    this.poll();
  }

  /**
   * The transport's state and the device's, as plain data (after pauseIo(),
   * so the indices are final). Counters (queueStats, notifiesIgnored,
   * needsResets) are not saved: they describe one process's run, and a
   * restored VM counts from zero.
   */
  saveState(): Plain {
    return {
      deviceId: this.device.deviceId,
      status: this.status,
      deviceFeaturesSel: this.deviceFeaturesSel,
      driverFeaturesSel: this.driverFeaturesSel,
      driverFeatures: u64(this.driverFeatures),
      queueSel: this.queueSel,
      interruptStatus: this.isr.value,
      configGeneration: this.configGeneration,
      queues: this.regs.map((q, i) => {
        const live = this.queues[i];
        const regs = { num: q.num, ready: q.ready, desc: u64(q.desc), driver: u64(q.driver), device: u64(q.device) };
        if (!q.ready || !live) return regs;
        return { ...regs, eventIdx: live.config.eventIdx, indirect: live.config.indirect, indices: live.saveState() };
      }),
      device: this.device.saveState?.() ?? null,
    };
  }

  /**
   * Apply saved state (untrusted: SnapshotError naming the field for anything
   * that does not check out) to this freshly built transport, whose device is
   * of the same type and configuration. Ready queues go live with their
   * indices, under the checks QueueReady makes; a running driver's device is
   * activated, then given its own state; the interrupt line follows
   * InterruptStatus. I/O stays paused until resumeIo().
   */
  restoreState(r: StateReader): void {
    const deviceId = r.int("deviceId", 0, 0xffff_ffff);
    if (deviceId !== this.device.deviceId) {
      throw new SnapshotError(`${r.path}.deviceId: a snapshot of device type ${deviceId}, this device is type ${this.device.deviceId}`);
    }
    const status = r.int("status", 0, 0xff);
    if (status & ~STATUS_BITS) throw new SnapshotError(`${r.path}.status: 0x${status.toString(16)} has bits no device sets`);
    const driverFeatures = r.u64("driverFeatures");
    const s = {
      status,
      deviceFeaturesSel: r.int("deviceFeaturesSel", 0, 0xffff_ffff),
      driverFeaturesSel: r.int("driverFeaturesSel", 0, 0xffff_ffff),
      driverFeatures,
      queueSel: r.int("queueSel", 0, 0xffff_ffff),
      interruptStatus: r.int("interruptStatus", 0, INT_USED_BUFFER | INT_CONFIG_CHANGE),
      configGeneration: r.int("configGeneration", 0, 0xffff_ffff),
    };
    const needsReset = (status & STATUS_DEVICE_NEEDS_RESET) !== 0;
    if (status & STATUS_FEATURES_OK) {
      // Before FEATURES_OK the driver may write any bits (the device refuses them then); after it, only what was granted.
      const unknown = driverFeatures & ~this.offeredFeatures;
      if (unknown) throw new SnapshotError(`${r.path}.driverFeatures: bits 0x${unknown.toString(16)} were never offered`);
      if (!(driverFeatures & VIRTIO_F_VERSION_1)) throw new SnapshotError(`${r.path}.driverFeatures: FEATURES_OK without VIRTIO_F_VERSION_1`);
    } else if (status & STATUS_DRIVER_OK && !needsReset) {
      throw new SnapshotError(`${r.path}.status: DRIVER_OK without FEATURES_OK (the device would need a reset)`);
    }
    const saved = r.array("queues", this.device.queueMaxSizes.length);
    if (saved.length !== this.device.queueMaxSizes.length) {
      throw new SnapshotError(`${r.path}.queues: ${saved.length} queues, this device has ${this.device.queueMaxSizes.length}`);
    }
    const regs: QueueRegs[] = [];
    const live: ({ eventIdx: boolean; indirect: boolean; indices: QueueIndices } | undefined)[] = [];
    saved.forEach((qr, i) => {
      const q: QueueRegs = {
        num: qr.int("num", 0, 0xffff_ffff), ready: qr.bool("ready"),
        desc: qr.u64("desc"), driver: qr.u64("driver"), device: qr.u64("device"),
      };
      regs.push(q);
      if (!q.ready) return live.push(undefined);
      const problem = this.queueProblem(i, q);
      if (problem) throw new SnapshotError(`${qr.path}: ready with ${problem}`);
      live.push({ eventIdx: qr.bool("eventIdx"), indirect: qr.bool("indirect"), indices: VirtQueue.readIndices(qr.obj("indices"), q.num) });
    });
    const deviceState = this.device.restoreState ? r.obj("device") : undefined;

    // Everything the transport keeps checked: apply it.
    this.status = s.status;
    this.deviceFeaturesSel = s.deviceFeaturesSel;
    this.driverFeaturesSel = s.driverFeaturesSel;
    this.driverFeatures = s.driverFeatures;
    this.queueSel = s.queueSel;
    this.isr.store(s.interruptStatus);
    this.configGeneration = s.configGeneration;
    this.regs = regs;
    this.queues = live.map((l, i) => {
      if (!l) return undefined;
      const q = this.liveQueue(i, regs[i], l.eventIdx, l.indirect);
      q.setIndices(l.indices);
      return q;
    });
    // The device starts no I/O until resumeIo(); a fresh one has nothing in flight to wait for.
    this.ioPaused = true;
    this.device.pauseIo?.().catch(() => {});
    try {
      if (status & STATUS_DRIVER_OK && !needsReset) {
        this.guarded(() => this.device.activate(this.context(), this.queues, this.driverFeatures));
      }
      if (deviceState) this.device.restoreState?.(deviceState);
    } catch (e) {
      // Nothing half-restored stays live: the device and transport go back to reset.
      this.reset();
      throw e;
    }
    this.isr.sync();
  }

  private onNotify(index: number): void {
    // Paused (no vCPU should run): resumeIo() looks at every queue.
    if (this.ioPaused) return;
    const queue = this.queues[index];
    if (!(this.status & STATUS_DRIVER_OK) || this.status & STATUS_DEVICE_NEEDS_RESET || !queue || !this.regs[index].ready) {
      this.notifiesIgnored++;
      return;
    }
    queue.stats.notifications++;
    this.guarded(() => this.device.notify(index));
  }

  private usedBufferInterrupt(): void {
    this.isr.raise(INT_USED_BUFFER);
  }

  /** Run device code; a broken ring stops the device until reset instead of the hypervisor. */
  private guarded(work: () => void): void {
    try {
      work();
    } catch (e) {
      if (e instanceof QueueBroken) return this.needsReset(e.message);
      // A malformed chain or a guest address the device model let through is
      // still the guest's doing: it must not end the VM either. What the device
      // was in the middle of is unknown, so it needs a reset (2.1.2).
      if (e instanceof ChainError || e instanceof GuestMemoryError) return this.needsReset(`${e.message} (not handled by the device)`);
      // No frame for a DMA even from the host's reserve: this device stops,
      // the VM does not (README, "Memory overcommit").
      if (e instanceof OutOfHostMemory) return this.needsReset(e.message);
      throw e;
    }
  }

  /** 2.1.2: set DEVICE_NEEDS_RESET and, once the driver is running, tell it. */
  private needsReset(why: string): void {
    if (this.status & STATUS_DEVICE_NEEDS_RESET) return;
    this.needsResets++;
    this.host.warn(`${this.name}: ${why}; the device needs a reset`);
    this.status |= STATUS_DEVICE_NEEDS_RESET;
    if (this.status & STATUS_DRIVER_OK) {
      this.isr.raise(INT_CONFIG_CHANGE);
    }
  }

  private context(): VirtioContext {
    return {
      mem: this.host.mem,
      shared: this.host.shared,
      configChanged: () => this.configChanged(),
      requestPoll: () => this.host.requestPoll(),
      usedBuffer: () => {
        if (this.status & STATUS_DRIVER_OK) this.usedBufferInterrupt();
      },
      needsReset: (why) => this.needsReset(why),
      irqfd: this.host.irqfd && (() => this.host.irqfd!()),
    };
  }
}

function emptyQueueRegs(): QueueRegs {
  return { num: 0, ready: false, desc: 0n, driver: 0n, device: 0n };
}

function setLow(old: bigint, v: number): bigint {
  return (old & ~0xffff_ffffn) | BigInt(v);
}

function setHigh(old: bigint, v: number): bigint {
  return (old & 0xffff_ffffn) | (BigInt(v) << 32n);
}
