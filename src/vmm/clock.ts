// The VM's platform timer (the ACLINT `mtime` every hart's `time` CSR reads),
// in ticks of the virt machine's 10 MHz timebase.
//
// A real-time clock follows the host's monotonic clock, so `sleep 1` in the
// guest takes a second and an idle guest lets the host sleep. The core also
// advances each hart's copy of the time while it runs (one tick per
// TICK_INSNS instructions, deliberately slower than any real run), and the
// machine brings every hart up to the host clock before each slice; harts
// therefore never see time go backwards and differ by at most one slice.

import { VIRT_TIMEBASE_HZ } from "../arch/riscv/layout.js";

/** Instructions per tick inside a slice: 1 GHz-equivalent, so the in-slice
 *  estimate never runs ahead of the host clock. */
export const REALTIME_TICK_INSNS = 100;

const NS_PER_TICK = BigInt(1e9 / VIRT_TIMEBASE_HZ);

export class RealtimeClock {
  /** `startNs`: process.hrtime.bigint() when the clock read 0 (default: now).
   *  Every thread's hrtime is the same clock, so a pCPU worker makes its
   *  view of a VM's clock from the VM's start. */
  constructor(readonly startNs = process.hrtime.bigint()) {}

  /** A clock that reads `ticks` now (a restored VM's, going on from its snapshot). */
  static startingAt(ticks: bigint): RealtimeClock {
    return new RealtimeClock(process.hrtime.bigint() - ticks * NS_PER_TICK);
  }

  /** Ticks since the machine was created. */
  now(): bigint {
    return (process.hrtime.bigint() - this.startNs) / NS_PER_TICK;
  }

  /** Host monotonic nanoseconds (process.hrtime) at which the clock reads `ticks`. */
  hostNsAt(ticks: bigint): number {
    return Number(this.startNs + ticks * NS_PER_TICK);
  }

  /** Milliseconds of host time until the clock reads `ticks` (0 if passed). */
  msUntil(ticks: bigint): number {
    const d = ticks - this.now();
    return d <= 0n ? 0 : Number(d * NS_PER_TICK) / 1e6;
  }
}
