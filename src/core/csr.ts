// Control and status registers (Zicsr; privileged spec 1.12 chapters 2-4).
//
// csrReadRaw/csrWriteRaw implement each CSR's value and WARL rules; execCsr adds
// the access rules of the CSR instructions (privilege from csr[9:8], read-only
// from csr[11:10] = 3, counter enables, TVM, FS, Sstc's STCE).

import {
  rd, wr, getX, setX, illegal, markFsDirty,
  FFLAGS_OFF, FRM_OFF, PRIV_OFF, MSTATUS_OFF, MEDELEG_OFF, MIDELEG_OFF, MIE_OFF, MIP_OFF, MTVEC_OFF,
  MSCRATCH_OFF, MEPC_OFF, MCAUSE_OFF, MTVAL_OFF, MCOUNTEREN_OFF, MENVCFG_OFF, MCOUNTINHIBIT_OFF,
  STVEC_OFF, SSCRATCH_OFF, SEPC_OFF, SCAUSE_OFF, STVAL_OFF, SCOUNTEREN_OFF, SENVCFG_OFF, SATP_OFF,
  STIMECMP_OFF, TIME_OFF, MCYCLE_OFF, MINSTRET_OFF, MHARTID_OFF,
  PRV_S, PRV_M,
  MSTATUS_SIE, MSTATUS_MIE, MSTATUS_SPIE, MSTATUS_MPIE, MSTATUS_SPP, MSTATUS_MPP, MSTATUS_FS, MSTATUS_MPRV,
  MSTATUS_SUM, MSTATUS_MXR, MSTATUS_TVM, MSTATUS_TW, MSTATUS_TSR, MSTATUS_UXL, MSTATUS_SXL, MSTATUS_SD,
  MSTATUS_MPP_SHIFT, MSTATUS_XLEN64,
} from "./hart";
import { updateTlbContext, tlbFlushAll } from "./tlb";
import { mipValue, requestIrqCheck, MENVCFG_STCE } from "./trap";
import { counterValue, writeCounter, writeCountInhibit } from "./counters";
import { guestTime } from "./time";
import { SATP_MODE_BARE, SATP_MODE_SV39, SATP_MODE_SV48, SATP_MODE_SV57 } from "./mmu";

// misa: RV64 (MXL = 2) with I, M, A, F, D, C, S, U (spec 3.1.1). Read-only.
export const MISA_VALUE: u64 = (<u64>2 << 62) | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 8) | (1 << 12) | (1 << 18) | (1 << 20);

const MSTATUS_WRITABLE: u64 = MSTATUS_SIE | MSTATUS_MIE | MSTATUS_SPIE | MSTATUS_MPIE | MSTATUS_SPP | MSTATUS_MPP |
  MSTATUS_FS | MSTATUS_MPRV | MSTATUS_SUM | MSTATUS_MXR | MSTATUS_TVM | MSTATUS_TW | MSTATUS_TSR;
// sstatus is a view of mstatus (spec 4.1.1).
const SSTATUS_MASK: u64 = MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_FS | MSTATUS_SUM | MSTATUS_MXR |
  MSTATUS_UXL | MSTATUS_SD;
const SSTATUS_WRITABLE: u64 = MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_FS | MSTATUS_SUM | MSTATUS_MXR;

// Exceptions that may be delegated: all defined causes except ecall from M (11).
const MEDELEG_WRITABLE: u64 = 0xb3ff;
// Only supervisor interrupts can be delegated (spec 3.1.8).
const MIDELEG_WRITABLE: u64 = (1 << 1) | (1 << 5) | (1 << 9);
const MIE_WRITABLE: u64 = (1 << 1) | (1 << 3) | (1 << 5) | (1 << 7) | (1 << 9) | (1 << 11);
const MIP_WRITABLE: u64 = (1 << 1) | (1 << 5) | (1 << 9);
const COUNTEREN_WRITABLE: u64 = 7; // CY, TM, IR
const MENVCFG_WRITABLE: u64 = MENVCFG_STCE | 1; // STCE, FIOM
const SENVCFG_WRITABLE: u64 = 1; //               FIOM

/** Set by csrReadRaw when the CSR does not exist. */
export let csrMissing: bool = false;

function withSd(ms: u64): u64 {
  return (ms & MSTATUS_FS) == MSTATUS_FS ? ms | MSTATUS_SD : ms & ~MSTATUS_SD;
}

export function csrReadRaw(csr: u32): u64 {
  csrMissing = false;
  switch (csr) {
    case 0x001: return rd(FFLAGS_OFF);
    case 0x002: return rd(FRM_OFF);
    case 0x003: return (rd(FRM_OFF) << 5) | rd(FFLAGS_OFF);
    case 0xc00: return counterValue(MCYCLE_OFF, 1);
    case 0xc01: return rd(TIME_OFF);
    case 0xc02: return counterValue(MINSTRET_OFF, 4);
    case 0x100: return rd(MSTATUS_OFF) & SSTATUS_MASK;
    case 0x104: return rd(MIE_OFF) & rd(MIDELEG_OFF);
    case 0x105: return rd(STVEC_OFF);
    case 0x106: return rd(SCOUNTEREN_OFF);
    case 0x10a: return rd(SENVCFG_OFF);
    case 0x140: return rd(SSCRATCH_OFF);
    case 0x141: return rd(SEPC_OFF);
    case 0x142: return rd(SCAUSE_OFF);
    case 0x143: return rd(STVAL_OFF);
    case 0x144: return mipValue() & rd(MIDELEG_OFF);
    case 0x14d: return rd(STIMECMP_OFF);
    case 0x180: return rd(SATP_OFF);
    case 0xf11: case 0xf12: case 0xf13: case 0xf15: return 0;
    case 0xf14: return rd(MHARTID_OFF);
    case 0x300: return rd(MSTATUS_OFF);
    case 0x301: return MISA_VALUE;
    case 0x302: return rd(MEDELEG_OFF);
    case 0x303: return rd(MIDELEG_OFF);
    case 0x304: return rd(MIE_OFF);
    case 0x305: return rd(MTVEC_OFF);
    case 0x306: return rd(MCOUNTEREN_OFF);
    case 0x30a: return rd(MENVCFG_OFF);
    case 0x320: return rd(MCOUNTINHIBIT_OFF);
    case 0x340: return rd(MSCRATCH_OFF);
    case 0x341: return rd(MEPC_OFF);
    case 0x342: return rd(MCAUSE_OFF);
    case 0x343: return rd(MTVAL_OFF);
    case 0x344: return mipValue();
    case 0xb00: return counterValue(MCYCLE_OFF, 1);
    case 0xb02: return counterValue(MINSTRET_OFF, 4);
  }
  // Hardwired-zero WARL CSRs: mhpmevent3..31, mhpmcounter3..31 (no events to
  // count), and the PMP CSRs (zero PMP entries; RV64 has only even pmpcfg).
  if (csr >= 0x323 && csr <= 0x33f) return 0;
  if (csr >= 0xb03 && csr <= 0xb1f) return 0;
  if (csr >= 0x3a0 && csr <= 0x3af && (csr & 1) == 0) return 0;
  if (csr >= 0x3b0 && csr <= 0x3ef) return 0;
  // hpmcounter3..31 exist as views of the zero mhpmcounters (their access is
  // governed by the counter-enable bits, which are hardwired zero for them).
  if (csr >= 0xc03 && csr <= 0xc1f) return 0;
  csrMissing = true;
  return 0;
}

export function csrWriteRaw(csr: u32, v: u64): void {
  switch (csr) {
    case 0x001: wr(FFLAGS_OFF, v & 0x1f); markFsDirty(); return;
    case 0x002: wr(FRM_OFF, v & 7); markFsDirty(); return;
    case 0x003: wr(FFLAGS_OFF, v & 0x1f); wr(FRM_OFF, (v >> 5) & 7); markFsDirty(); return;
    case 0x100: writeMstatus((rd(MSTATUS_OFF) & ~SSTATUS_WRITABLE) | (v & SSTATUS_WRITABLE)); return;
    case 0x104: {
      const m = rd(MIDELEG_OFF) & MIE_WRITABLE;
      wr(MIE_OFF, (rd(MIE_OFF) & ~m) | (v & m));
      requestIrqCheck();
      return;
    }
    case 0x105: writeTvec(STVEC_OFF, v); return;
    case 0x106: wr(SCOUNTEREN_OFF, v & COUNTEREN_WRITABLE); return;
    case 0x10a: wr(SENVCFG_OFF, v & SENVCFG_WRITABLE); return;
    case 0x140: wr(SSCRATCH_OFF, v); return;
    case 0x141: wr(SEPC_OFF, v & ~(<u64>1)); return;
    case 0x142: wr(SCAUSE_OFF, v); return;
    case 0x143: wr(STVAL_OFF, v); return;
    case 0x144: {
      // Only SSIP is writable through sip, and only when delegated (spec 4.1.3).
      const m = rd(MIDELEG_OFF) & (1 << 1);
      wr(MIP_OFF, (rd(MIP_OFF) & ~m) | (v & m));
      requestIrqCheck();
      return;
    }
    case 0x14d: wr(STIMECMP_OFF, v); requestIrqCheck(); return;
    case 0x180: writeSatp(v); return;
    case 0x300: writeMstatus(v); return;
    case 0x302: wr(MEDELEG_OFF, v & MEDELEG_WRITABLE); return;
    case 0x303: wr(MIDELEG_OFF, v & MIDELEG_WRITABLE); requestIrqCheck(); return;
    case 0x304: wr(MIE_OFF, v & MIE_WRITABLE); requestIrqCheck(); return;
    case 0x305: writeTvec(MTVEC_OFF, v); return;
    case 0x306: wr(MCOUNTEREN_OFF, v & COUNTEREN_WRITABLE); return;
    case 0x30a: wr(MENVCFG_OFF, v & MENVCFG_WRITABLE); requestIrqCheck(); return;
    case 0x320: writeCountInhibit(v); return;
    case 0x340: wr(MSCRATCH_OFF, v); return;
    case 0x341: wr(MEPC_OFF, v & ~(<u64>1)); return;
    case 0x342: wr(MCAUSE_OFF, v); return;
    case 0x343: wr(MTVAL_OFF, v); return;
    case 0x344: {
      // STIP is read-only while Sstc drives it from stimecmp.
      let m = MIP_WRITABLE;
      if ((rd(MENVCFG_OFF) & MENVCFG_STCE) != 0) m &= ~((<u64>1) << 5);
      wr(MIP_OFF, (rd(MIP_OFF) & ~m) | (v & m));
      requestIrqCheck();
      return;
    }
    case 0xb00: writeCounter(MCYCLE_OFF, 1, v); return;
    case 0xb02: writeCounter(MINSTRET_OFF, 4, v); return;
  }
  // Everything else that exists is read-only zero or read-only (checked by execCsr).
}

function writeMstatus(v: u64): void {
  const old = rd(MSTATUS_OFF);
  let n = (old & ~MSTATUS_WRITABLE) | (v & MSTATUS_WRITABLE);
  // MPP is WARL over {U, S, M}: the reserved value 2 leaves the field unchanged.
  if (((n & MSTATUS_MPP) >> MSTATUS_MPP_SHIFT) == 2) n = (n & ~MSTATUS_MPP) | (old & MSTATUS_MPP);
  n = (n & ~(MSTATUS_UXL | MSTATUS_SXL)) | MSTATUS_XLEN64;
  wr(MSTATUS_OFF, withSd(n));
  updateTlbContext();
  requestIrqCheck();
}

function writeTvec(off: u32, v: u64): void {
  // MODE 2 and 3 are reserved: keep only Direct (0) and Vectored (1).
  const mode = v & 3;
  wr(off, (v & ~(<u64>3)) | (mode < 2 ? mode : 0));
}

function writeSatp(v: u64): void {
  const mode = v >> 60;
  // A write with an unsupported MODE has no effect at all (spec 4.1.11).
  if (mode != SATP_MODE_BARE && mode != SATP_MODE_SV39 && mode != SATP_MODE_SV48 && mode != SATP_MODE_SV57) return;
  // 16 ASID bits, 44 PPN bits.
  wr(SATP_OFF, v & 0xf000ffffffffffff);
  // The spec requires SFENCE.VMA after a satp change; flushing here as well is
  // allowed and keeps the TLB simple (it is not tagged by ASID).
  tlbFlushAll();
  updateTlbContext();
}

/** Whether a counter CSR (cycle/time/instret, hpmcounterN) may be read at `priv`
 *  (mcounteren for S and U, scounteren too for U: spec 3.1.11, 4.1.5). */
function counterAllowed(csr: u32, priv: u32): bool {
  if (priv == PRV_M) return true;
  const bit = (<u64>1) << <u64>(csr & 31);
  if ((rd(MCOUNTEREN_OFF) & bit) == 0) return false;
  if (priv < PRV_S && (rd(SCOUNTEREN_OFF) & bit) == 0) return false;
  return true;
}

const MIP_SEIP: u64 = 1 << 9;

/** The value CSRRS and CSRRC modify, given the value a read returns (`read`).
 *  They differ for mip: a read gives SEIP as the software-writable bit OR-ed
 *  with the external interrupt controller's signal, but only the
 *  software-writable bit takes part in the read-modify-write of CSRRS/CSRRC
 *  (privileged spec 1.12, 3.1.9). Using the read value would copy the PLIC's
 *  line into the writable bit whenever another bit of mip is set or cleared
 *  while the line is high, and SEIP would then stay pending after the line
 *  drops: an external interrupt with nothing to claim, taken forever. */
function csrRmwBase(csr: u32, read: u64): u64 {
  if (csr == 0x344) return (read & ~MIP_SEIP) | (rd(MIP_OFF) & MIP_SEIP);
  return read;
}

/** CSRRS for the hypervisor (no privilege checks): set `bits` in `csr` with
 *  the instruction's read-modify-write rules (csrRmwBase). */
export function csrSetBits(csr: u32, bits: u64): void {
  const read = csrReadRaw(csr);
  if (csrMissing) return;
  csrWriteRaw(csr, csrRmwBase(csr, read) | bits);
}

/** CSRRW, CSRRS, CSRRC and their immediate forms. */
export function execCsr(insn: u32): void {
  const csr = insn >> 20;
  const rdIdx = (insn >> 7) & 31;
  const rs1 = (insn >> 15) & 31;
  const f3 = (insn >> 12) & 7;
  const op = f3 & 3;
  const priv = <u32>rd(PRIV_OFF);
  // CSRRW always writes; CSRRS/CSRRC write only when rs1/uimm is nonzero
  // (spec 9.1), which is what lets them read read-only CSRs.
  const writes = op == 1 || rs1 != 0;
  if (((csr >> 8) & 3) > priv) { illegal(insn); return; }
  if (writes && (csr >> 10) == 3) { illegal(insn); return; }
  if (csr <= 3 && (rd(MSTATUS_OFF) & MSTATUS_FS) == 0) { illegal(insn); return; }
  if (csr >= 0xc00 && csr <= 0xc1f && !counterAllowed(csr, priv)) { illegal(insn); return; }
  if (csr == 0x180 && priv == PRV_S && (rd(MSTATUS_OFF) & MSTATUS_TVM) != 0) { illegal(insn); return; }
  if (csr == 0x14d && priv == PRV_S) {
    // Sstc: stimecmp needs menvcfg.STCE and mcounteren.TM in S-mode.
    if ((rd(MENVCFG_OFF) & MENVCFG_STCE) == 0 || (rd(MCOUNTEREN_OFF) & 2) == 0) { illegal(insn); return; }
  }
  // The guest's reads of `time` keep the harts of a VM coherent (time.ts).
  let old: u64;
  if (csr == 0xc01) {
    csrMissing = false;
    old = guestTime();
  } else {
    old = csrReadRaw(csr);
  }
  if (csrMissing) { illegal(insn); return; }
  if (writes) {
    const src: u64 = (f3 & 4) != 0 ? <u64>rs1 : getX(rs1);
    const base = csrRmwBase(csr, old);
    const v = op == 1 ? src : op == 2 ? base | src : base & ~src;
    csrWriteRaw(csr, v);
  }
  setX(rdIdx, old);
}

