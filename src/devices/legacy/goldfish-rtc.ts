// Goldfish RTC (compatible "google,goldfish-rtc", as on QEMU's riscv `virt`):
// nanoseconds since the Unix epoch from the host's wall clock, with one alarm.
//   0x00 TIME_LOW   reading it latches TIME_HIGH     0x10 IRQ_ENABLED
//   0x04 TIME_HIGH                                    0x14 CLEAR_ALARM
//   0x08 ALARM_LOW  writing it arms the alarm         0x18 ALARM_STATUS
//   0x0c ALARM_HIGH                                   0x1c CLEAR_INTERRUPT

import type { MmioDevice } from "../../bus/mmio-bus.js";
import { u64, type Plain, type StateReader } from "../../snapshot/state.js";

export const GOLDFISH_RTC_SIZE = 0x1000n;

export interface RtcHost {
  /** Host wall-clock time in nanoseconds since the epoch. */
  nowNs(): bigint;
  setIrq(level: boolean): void;
}

export class GoldfishRtc implements MmioDevice {
  readonly name = "rtc";
  private latchedHigh = 0n;
  private alarmHigh = 0n;
  private alarm: bigint | undefined;
  private irqEnabled = false;
  private irq = false;
  /** Guest-set offset from host time (the guest may set the clock), modulo
   *  2^64 as the 64-bit counter wraps: in [0, 2^64). */
  private offsetNs = 0n;

  constructor(private readonly host: RtcHost) {}

  private now(): bigint {
    return BigInt.asUintN(64, this.host.nowNs() + this.offsetNs);
  }

  private setNow(t: bigint): void {
    this.offsetNs = BigInt.asUintN(64, t - this.host.nowNs());
  }

  /** Plain state. The clock follows the host's wall clock, so what is saved
   *  is the guest's offset from it (the time a guest set with hwclock keeps
   *  running from host time after a restore); then the alarm, the interrupt
   *  enable and line, and the latched high words. */
  saveState(): Plain {
    return {
      offsetNs: u64(this.offsetNs),
      alarmArmed: this.alarm !== undefined,
      alarm: u64(this.alarm ?? 0n),
      alarmHigh: Number(this.alarmHigh),
      latchedHigh: Number(this.latchedHigh),
      irqEnabled: this.irqEnabled,
      irq: this.irq,
    };
  }

  /** Restore saveState()'s value (untrusted: all checked before anything
   *  changes), then drive the interrupt line to the restored level. */
  restoreState(r: StateReader): void {
    const offsetNs = r.u64("offsetNs");
    const alarmArmed = r.bool("alarmArmed");
    const alarm = r.u64("alarm");
    r.check(alarmArmed || alarm === 0n, "alarm: set while not armed");
    const alarmHigh = r.int("alarmHigh", 0, 0xffff_ffff);
    const latchedHigh = r.int("latchedHigh", 0, 0xffff_ffff);
    const irqEnabled = r.bool("irqEnabled");
    const irq = r.bool("irq");
    r.check(!irq || irqEnabled, "irq: raised while interrupts are disabled");
    this.offsetNs = offsetNs;
    this.alarm = alarmArmed ? alarm : undefined;
    this.alarmHigh = BigInt(alarmHigh);
    this.latchedHigh = BigInt(latchedHigh);
    this.irqEnabled = irqEnabled;
    this.irq = irq;
    this.host.setIrq(irq);
  }

  /** Called by the machine now and then: fires a due alarm. */
  poll(): void {
    if (this.alarm !== undefined && this.now() >= this.alarm) {
      this.alarm = undefined;
      if (this.irqEnabled) this.setIrq(true);
    }
  }

  read(offset: number, size: number): bigint {
    if (size !== 4) return 0n;
    switch (offset) {
      case 0x00: {
        const t = this.now();
        this.latchedHigh = t >> 32n;
        return t & 0xffff_ffffn;
      }
      case 0x04: return this.latchedHigh;
      case 0x08: return (this.alarm ?? 0n) & 0xffff_ffffn;
      case 0x0c: return this.alarmHigh;
      case 0x10: return this.irqEnabled ? 1n : 0n;
      case 0x18: return this.alarm !== undefined ? 1n : 0n;
    }
    return 0n;
  }

  write(offset: number, size: number, value: bigint): void {
    if (size !== 4) return;
    const v = value & 0xffff_ffffn;
    switch (offset) {
      case 0x00: this.setNow(((this.now() >> 32n) << 32n) | v); break;
      case 0x04: this.setNow((v << 32n) | (this.now() & 0xffff_ffffn)); break;
      case 0x08: this.alarm = (this.alarmHigh << 32n) | v; this.poll(); break;
      case 0x0c: this.alarmHigh = v; break;
      case 0x10: this.irqEnabled = (v & 1n) !== 0n; if (!this.irqEnabled) this.setIrq(false); break;
      case 0x14: this.alarm = undefined; break;
      case 0x1c: this.setIrq(false); break;
    }
  }

  private setIrq(level: boolean): void {
    if (level !== this.irq) {
      this.irq = level;
      this.host.setIrq(level);
    }
  }
}
