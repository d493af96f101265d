// Hart reset (privileged spec 3.4): M-mode, MIE and MPRV clear, misa at its
// value, pc at the reset vector. The hypervisor's configuration of the hart
// (p2m, SBI mode, HTIF address, tick rate, translation cache, time floor)
// survives a reset. The request word is a mailbox other threads OR into, so it
// is never overwritten: a reset drops the requests aimed at the old state
// (its TLB is flushed, its mip cleared, lines are re-read at run() entry)
// with an atomic AND, and keeps REQ_EXIT, which is aimed at the host's run loop.

import {
  H, wr, X_OFF, P2M_TABLE_OFF, PC_OFF, PRIV_OFF, MSTATUS_OFF, MHARTID_OFF, MTIMECMP_OFF, STIMECMP_OFF,
  TICK_INSNS_OFF, TICK_LEFT_OFF, RUN_REASON_OFF, TLB_OFF, JIT_CACHE_OFF, PRV_M, MSTATUS_XLEN64, rd,
  REQ_OFF, TIME_FLOOR_OFF, DIRTY_LOG_OFF, LINE_MEIP_OFF, RES_VALID_OFF,
} from "./hart";
import { tlbClearAll } from "./tlb";
import { REQ_EXIT } from "./requests";

export function resetHart(hartId: u64, resetPc: u64): void {
  const jitCache = rd(JIT_CACHE_OFF);
  // The interrupt lines are wires other threads drive (setIrqLine): a hart
  // reset does not change their level, nor write them under a device's feet.
  memory.fill(H + X_OFF, 0, LINE_MEIP_OFF - X_OFF);
  memory.fill(H + RES_VALID_OFF, 0, P2M_TABLE_OFF - RES_VALID_OFF);
  const timeFloor = rd(TIME_FLOOR_OFF);
  const dirtyLog = rd(DIRTY_LOG_OFF); // the host's logging outlives a guest's hart reset
  memory.fill(H + RUN_REASON_OFF, 0, REQ_OFF - RUN_REASON_OFF);
  memory.fill(H + REQ_OFF + 8, 0, TLB_OFF - REQ_OFF - 8);
  atomic.and<u32>(H + REQ_OFF, REQ_EXIT);
  wr(JIT_CACHE_OFF, jitCache);
  wr(TIME_FLOOR_OFF, timeFloor);
  wr(DIRTY_LOG_OFF, dirtyLog);
  wr(PC_OFF, resetPc);
  wr(PRIV_OFF, PRV_M);
  // XLEN is 64 in every mode (UXL = SXL = 2).
  wr(MSTATUS_OFF, MSTATUS_XLEN64);
  wr(MHARTID_OFF, hartId);
  // No timer interrupt until software programs a compare value.
  wr(MTIMECMP_OFF, 0xffffffffffffffff);
  wr(STIMECMP_OFF, 0xffffffffffffffff);
  if (rd(TICK_INSNS_OFF) == 0) wr(TICK_INSNS_OFF, 1);
  wr(TICK_LEFT_OFF, rd(TICK_INSNS_OFF));
  tlbClearAll();
}
