// Trap entry and return, interrupt selection and the timer compare
// (privileged spec 1.12: 3.1.6 mstatus, 3.1.7-3.1.9 mtvec/medeleg/mip/mie,
// 3.3.2 xRET, 4.1.1 sstatus; Sstc for stimecmp).

import {
  H, rd, wr,
  PRIV_OFF, MSTATUS_OFF, MEDELEG_OFF, MIDELEG_OFF, MIE_OFF, MIP_OFF, MTVEC_OFF, MEPC_OFF, MCAUSE_OFF,
  MTVAL_OFF, STVEC_OFF, SEPC_OFF, SCAUSE_OFF, STVAL_OFF, MENVCFG_OFF, STIMECMP_OFF, MTIMECMP_OFF, TIME_OFF,
  LINE_MEIP_OFF, LINE_SEIP_OFF, LINE_MSIP_OFF, RES_VALID_OFF,
  PRV_U, PRV_S, PRV_M,
  MSTATUS_SIE, MSTATUS_MIE, MSTATUS_SPIE, MSTATUS_MPIE, MSTATUS_SPP, MSTATUS_MPP, MSTATUS_MPP_SHIFT, MSTATUS_MPRV,
} from "./hart";
import { updateTlbContext } from "./tlb";

export const INTERRUPT_BIT: u64 = 1 << 63;

export const IRQ_SSI: u64 = 1;
export const IRQ_MSI: u64 = 3;
export const IRQ_STI: u64 = 5;
export const IRQ_MTI: u64 = 7;
export const IRQ_SEI: u64 = 9;
export const IRQ_MEI: u64 = 11;

export const MENVCFG_STCE: u64 = 1 << 63;

/** Set when an interrupt may have become takeable; run() then checks. */
export let irqCheckNeeded: bool = true;
export function requestIrqCheck(): void {
  irqCheckNeeded = true;
}
export function clearIrqCheck(): void {
  irqCheckNeeded = false;
}

/** The effective mip: software-writable bits plus the lines and timers that drive
 *  MEIP, SEIP (OR-ed with the writable bit, spec 3.1.9), MSIP, MTIP and, with
 *  Sstc enabled, STIP. */
export function mipValue(): u64 {
  let v = rd(MIP_OFF);
  const t = rd(TIME_OFF);
  // The lines are written by other threads (index.ts setIrqLine).
  if (atomic.load<u64>(H + <usize>LINE_MEIP_OFF) != 0) v |= 1 << IRQ_MEI;
  if (atomic.load<u64>(H + <usize>LINE_SEIP_OFF) != 0) v |= 1 << IRQ_SEI;
  if (atomic.load<u64>(H + <usize>LINE_MSIP_OFF) != 0) v |= 1 << IRQ_MSI;
  if (t >= rd(MTIMECMP_OFF)) v |= 1 << IRQ_MTI;
  if ((rd(MENVCFG_OFF) & MENVCFG_STCE) != 0) {
    v &= ~((<u64>1) << IRQ_STI);
    if (t >= rd(STIMECMP_OFF)) v |= 1 << IRQ_STI;
  }
  return v;
}

export function nextTimerDeadline(): u64 {
  let d = rd(MTIMECMP_OFF);
  if ((rd(MENVCFG_OFF) & MENVCFG_STCE) != 0) {
    const s = rd(STIMECMP_OFF);
    if (s < d) d = s;
  }
  return d;
}

/** WFI resumes when any interrupt is pending and enabled in mie, whatever the
 *  global enables and delegation say (spec 3.3.3). */
export function interruptWakeup(): bool {
  return (mipValue() & rd(MIE_OFF)) != 0;
}

// Priority among simultaneously pending interrupts (spec 3.1.9):
// MEI, MSI, MTI, SEI, SSI, STI.
function highestPriority(p: u64): i64 {
  if (p & (1 << IRQ_MEI)) return <i64>IRQ_MEI;
  if (p & (1 << IRQ_MSI)) return <i64>IRQ_MSI;
  if (p & (1 << IRQ_MTI)) return <i64>IRQ_MTI;
  if (p & (1 << IRQ_SEI)) return <i64>IRQ_SEI;
  if (p & (1 << IRQ_SSI)) return <i64>IRQ_SSI;
  if (p & (1 << IRQ_STI)) return <i64>IRQ_STI;
  return -1;
}

/** The interrupt to take now, or -1 (spec 3.1.6.1: enabled in the target mode's
 *  xIE when running in that mode, always when running in a lower mode, never
 *  when running in a higher mode). */
export function pendingInterrupt(): i64 {
  const pending = mipValue() & rd(MIE_OFF);
  if (pending == 0) return -1;
  const priv = <u32>rd(PRIV_OFF);
  const ms = rd(MSTATUS_OFF);
  const deleg = rd(MIDELEG_OFF);
  const mPending = pending & ~deleg;
  if (mPending != 0 && (priv < PRV_M || (ms & MSTATUS_MIE) != 0)) return highestPriority(mPending);
  const sPending = pending & deleg;
  if (sPending != 0 && (priv < PRV_S || (priv == PRV_S && (ms & MSTATUS_SIE) != 0))) return highestPriority(sPending);
  return -1;
}

/** Enter the trap handler for `cause` (INTERRUPT_BIT set for interrupts) taken at
 *  `pc`; returns the handler's address. Traps from S/U go to S-mode when the cause
 *  is delegated (medeleg/mideleg), never from M-mode (spec 3.1.8). */
export function enterTrap(cause: u64, tval: u64, pc: u64): u64 {
  const priv = <u32>rd(PRIV_OFF);
  const isInterrupt = (cause & INTERRUPT_BIT) != 0;
  const code = cause & ~INTERRUPT_BIT;
  const deleg = isInterrupt ? rd(MIDELEG_OFF) : rd(MEDELEG_OFF);
  // A trap breaks any LR/SC sequence in flight (the A extension lets an SC fail
  // for any reason; clearing here keeps a preempted sequence from succeeding).
  wr(RES_VALID_OFF, 0);
  let ms = rd(MSTATUS_OFF);
  let target: u64;
  if (priv <= PRV_S && ((deleg >> code) & 1) != 0) {
    wr(SCAUSE_OFF, cause);
    wr(SEPC_OFF, pc);
    wr(STVAL_OFF, tval);
    ms = (ms & ~(MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_SIE))
      | ((ms & MSTATUS_SIE) != 0 ? MSTATUS_SPIE : 0)
      | (priv == PRV_S ? MSTATUS_SPP : 0);
    wr(MSTATUS_OFF, ms);
    wr(PRIV_OFF, PRV_S);
    target = rd(STVEC_OFF);
  } else {
    wr(MCAUSE_OFF, cause);
    wr(MEPC_OFF, pc);
    wr(MTVAL_OFF, tval);
    ms = (ms & ~(MSTATUS_MPIE | MSTATUS_MPP | MSTATUS_MIE))
      | ((ms & MSTATUS_MIE) != 0 ? MSTATUS_MPIE : 0)
      | ((<u64>priv) << MSTATUS_MPP_SHIFT);
    wr(MSTATUS_OFF, ms);
    wr(PRIV_OFF, PRV_M);
    target = rd(MTVEC_OFF);
  }
  updateTlbContext();
  // Vectored mode sends interrupts to base + 4 * cause (spec 3.1.7).
  const base = target & ~(<u64>3);
  if ((target & 3) == 1 && isInterrupt) return base + 4 * code;
  return base;
}

/** MRET (spec 3.3.2): back to MPP with MIE = MPIE; MPRV cleared when leaving M. */
export function mret(): u64 {
  let ms = rd(MSTATUS_OFF);
  const mpp = <u32>((ms & MSTATUS_MPP) >> MSTATUS_MPP_SHIFT);
  ms = (ms & ~(MSTATUS_MIE | MSTATUS_MPP)) | ((ms & MSTATUS_MPIE) != 0 ? MSTATUS_MIE : 0) | MSTATUS_MPIE;
  if (mpp != PRV_M) ms &= ~MSTATUS_MPRV;
  wr(MSTATUS_OFF, ms);
  wr(PRIV_OFF, mpp);
  wr(RES_VALID_OFF, 0);
  updateTlbContext();
  requestIrqCheck();
  return rd(MEPC_OFF);
}

/** SRET: back to SPP with SIE = SPIE; MPRV cleared (the new mode is below M). */
export function sret(): u64 {
  let ms = rd(MSTATUS_OFF);
  const spp: u32 = (ms & MSTATUS_SPP) != 0 ? PRV_S : PRV_U;
  ms = (ms & ~(MSTATUS_SIE | MSTATUS_SPP | MSTATUS_MPRV)) | ((ms & MSTATUS_SPIE) != 0 ? MSTATUS_SIE : 0) | MSTATUS_SPIE;
  wr(MSTATUS_OFF, ms);
  wr(PRIV_OFF, spp);
  wr(RES_VALID_OFF, 0);
  updateTlbContext();
  requestIrqCheck();
  return rd(SEPC_OFF);
}

