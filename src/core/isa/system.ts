// SYSTEM opcode: ECALL, EBREAK, MRET, SRET, WFI, SFENCE.VMA (privileged spec
// 3.3) and the Zicsr instructions (csr.ts). Returns the next pc.

import {
  rd, wr, raise, illegal, H, getX,
  PRIV_OFF, MSTATUS_OFF, SBI_MODE_OFF, RUN_REASON_OFF, WAITING_OFF,
  PRV_U, PRV_S, PRV_M, MSTATUS_TSR, MSTATUS_TVM, MSTATUS_TW,
  CAUSE_USER_ECALL, CAUSE_SUPERVISOR_ECALL, CAUSE_MACHINE_ECALL, CAUSE_BREAKPOINT,
} from "../hart";
import { execCsr } from "../csr";
import { mret, sret, interruptWakeup } from "../trap";
import { tlbFlushAll, tlbFlushPage } from "../tlb";
import { EXIT_SBI, EXIT_WFI } from "../exit";
import { requestsPending, takeRequests, kick } from "../requests";

/** Set when the instruction completed but run() must exit after retiring it. */
export let exitAfterRetire: bool = false;
export function clearExitAfterRetire(): void {
  exitAfterRetire = false;
}

export function execSystem(insn: u32, pc: u64): u64 {
  const f3 = (insn >> 12) & 7;
  if (f3 != 0) {
    if (f3 == 4) { illegal(insn); return pc; } // hypervisor loads/stores: no H extension
    execCsr(insn);
    return pc + 4;
  }
  const priv = <u32>rd(PRIV_OFF);
  const ms = rd(MSTATUS_OFF);
  // Fixed encodings with rd = 0 and rs1 = 0, except SFENCE.VMA which has rs1/rs2.
  if ((insn >> 25) == 0x09 && ((insn >> 7) & 31) == 0) {
    // SFENCE.VMA: illegal in U-mode, and in S-mode when TVM is set (spec 3.1.6.5).
    if (priv == PRV_U || (priv == PRV_S && (ms & MSTATUS_TVM) != 0)) { illegal(insn); return pc; }
    const rs1 = (insn >> 15) & 31;
    if (rs1 != 0) tlbFlushPage(getX(rs1)); else tlbFlushAll();
    return pc + 4;
  }
  switch (insn) {
    case 0x00000073: // ECALL
      if (priv == PRV_S && rd(SBI_MODE_OFF) != 0) {
        // A hypercall: the hypervisor implements the SBI (no firmware in the guest).
        store<i64>(H, <i64>EXIT_SBI, RUN_REASON_OFF);
        exitAfterRetire = true;
        return pc + 4;
      }
      raise(priv == PRV_U ? CAUSE_USER_ECALL : priv == PRV_S ? CAUSE_SUPERVISOR_ECALL : CAUSE_MACHINE_ECALL, 0);
      return pc;
    case 0x00100073: // EBREAK: mtval holds the breakpoint's address (spec 3.1.16)
      raise(CAUSE_BREAKPOINT, pc);
      return pc;
    case 0x30200073: // MRET
      if (priv != PRV_M) { illegal(insn); return pc; }
      return mret();
    case 0x10200073: // SRET
      if (priv == PRV_U || (priv == PRV_S && (ms & MSTATUS_TSR) != 0)) { illegal(insn); return pc; }
      return sret();
    case 0x10500073: // WFI
      // Illegal in U-mode, and below M when TW is set: we treat the time limit
      // of spec 3.1.6.5 as zero.
      if (priv == PRV_U || (priv < PRV_M && (ms & MSTATUS_TW) != 0)) { illegal(insn); return pc; }
      // An IPI or line change waiting in the request word wakes the hart as
      // surely as one already in mip: take them before deciding to sleep.
      if (requestsPending() && takeRequests()) {
        kick();
        exitAfterRetire = true;
        return pc + 4;
      }
      if (!interruptWakeup()) {
        store<i64>(H, <i64>EXIT_WFI, RUN_REASON_OFF);
        wr(WAITING_OFF, 1);
        exitAfterRetire = true;
      }
      return pc + 4;
  }
  illegal(insn);
  return pc;
}

