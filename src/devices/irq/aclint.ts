// CLINT-compatible ACLINT: MSWI (machine software interrupts) and MTIMER
// (mtime, mtimecmp) in one 64 KiB region, laid out as SiFive's CLINT and QEMU's
// riscv `virt`/spike machines (RISC-V ACLINT spec 1.0, sections 2 and 3):
//   +0x0000 + 4*hart   msip      bit 0 drives the hart's MSIP
//   +0x4000 + 8*hart   mtimecmp  the hart's timer compare (MTIP when mtime >= it)
//   +0xbff8            mtime     the platform timer
// The compare and the interrupt lines live in the core (per hart), so the timer
// check costs nothing per instruction here; this model only maps registers.
// msip too is only the hart's MSIP line in its hart block (read back through
// the core), so it has one home: a hart block saved or reset carries it.

import type { MmioDevice } from "../../bus/mmio-bus.js";
import { asU64, type Core } from "../../vcpu/core.js";
import type { Plain, StateReader } from "../../snapshot/state.js";

export const ACLINT_SIZE = 0x10000n;
const MSIP_BASE = 0x0000;
const MTIMECMP_BASE = 0x4000;
const MTIME = 0xbff8;

export class Aclint implements MmioDevice {
  readonly name = "clint";

  /** `kick(i)`: hart i's MSIP line rose (it may sleep on another thread).
   *  `now()`: the VM's real-time clock, when it has one; mtime reads it, as
   *  harts running on other threads keep their own copies of the time that
   *  only catch up with it between their runs. */
  constructor(
    private readonly core: Core,
    private readonly harts: number[],
    private readonly kick?: (index: number) => void,
    private readonly now?: () => bigint,
  ) {}

  read(offset: number, size: number): bigint {
    if (offset >= MSIP_BASE && offset < MSIP_BASE + 4 * this.harts.length) {
      // ACLINT spec, MSWI chapter: a 32-bit WARL register, upper 31 bits wired
      // to zero, bit 0 reflected in mip.MSIP; so it reads back (from the hart block).
      if ((offset & 3) !== 0) return 0n;
      return BigInt(this.core.fn.getIrqLine(this.harts[(offset - MSIP_BASE) >> 2], this.core.k.IRQ_LINE_MSIP));
    }
    const reg = this.reg64(offset);
    if (reg === undefined) return 0n;
    const v = reg.get();
    return size === 8 ? v : (v >> BigInt(8 * (offset & 4))) & 0xffff_ffffn;
  }

  write(offset: number, size: number, value: bigint): void {
    if (offset >= MSIP_BASE && offset < MSIP_BASE + 4 * this.harts.length) {
      if ((offset & 3) !== 0) return;
      const index = (offset - MSIP_BASE) >> 2;
      const level = Number(value & 1n);
      this.core.fn.setIrqLine(this.harts[index], this.core.k.IRQ_LINE_MSIP, level);
      if (level) this.kick?.(index);
      return;
    }
    const reg = this.reg64(offset);
    if (reg === undefined) return;
    if (size === 8) {
      reg.set(value);
      return;
    }
    // 32-bit halves, as RV32 software and Linux's clint driver may write them.
    const shift = BigInt(8 * (offset & 4));
    const mask = 0xffff_ffffn << shift;
    reg.set((reg.get() & ~mask) | ((value & 0xffff_ffffn) << shift));
  }

  /** Nothing of its own: msip is each hart's MSIP line and mtimecmp/mtime
   *  live in the hart blocks, all saved with the harts. The hart count is
   *  saved so a snapshot cannot be restored onto an ACLINT of another shape. */
  saveState(): Plain {
    return { harts: this.harts.length };
  }

  /** Checks saveState()'s value; there is no output to drive (the lines are in the harts). */
  restoreState(r: StateReader): void {
    r.int("harts", this.harts.length, this.harts.length);
  }

  private reg64(offset: number): { get(): bigint; set(v: bigint): void } | undefined {
    const f = this.core.fn;
    const aligned = offset & ~7;
    if (aligned === MTIME) {
      return {
        get: () => {
          const local = asU64(f.getTime(this.harts[0]));
          const now = this.now?.() ?? 0n;
          return now > local ? now : local;
        },
        // mtime is one platform-wide counter: every hart sees the same value.
        set: (v) => this.harts.forEach((h) => f.setTime(h, v)),
      };
    }
    const idx = (aligned - MTIMECMP_BASE) >> 3;
    if (aligned >= MTIMECMP_BASE && idx < this.harts.length) {
      const h = this.harts[idx];
      return { get: () => asU64(f.getMtimecmp(h)), set: (v) => f.setMtimecmp(h, v) };
    }
    return undefined;
  }
}
