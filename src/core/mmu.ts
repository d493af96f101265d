// Guest-virtual -> guest-physical translation: Sv39, Sv48 and Sv57 page walks
// (privileged spec 1.12, section 4.3.2 "Virtual Address Translation Process"),
// with hardware update of the A and D bits. PTEs are read through the p2m,
// like any other guest-physical access.

import {
  SATP_OFF, MSTATUS_OFF, rd, raise, requestExit,
  MSTATUS_SUM, MSTATUS_MXR, PRV_U, PRV_S,
  CAUSE_FETCH_PAGE_FAULT, CAUSE_LOAD_PAGE_FAULT, CAUSE_STORE_PAGE_FAULT,
  CAUSE_FETCH_ACCESS, CAUSE_LOAD_ACCESS, CAUSE_STORE_ACCESS,
  H, RUN_REASON_OFF, RUN_ADDR_OFF, RUN_WRITE_OFF, RUN_SIZE_OFF,
} from "./hart";
import { p2mLookup, P2M_MMIO, P2M_FAULT } from "./p2m";
import { EXIT_P2M_FAULT } from "./exit";

export const ACC_FETCH: u32 = 0;
export const ACC_LOAD: u32 = 1;
export const ACC_STORE: u32 = 2; // stores and AMOs

const PTE_V: u64 = 1 << 0;
const PTE_R: u64 = 1 << 1;
const PTE_W: u64 = 1 << 2;
const PTE_X: u64 = 1 << 3;
const PTE_U: u64 = 1 << 4;
const PTE_A: u64 = 1 << 6;
const PTE_D: u64 = 1 << 7;
// Bits 63:54 are reserved (no Svpbmt, Svnapot): a PTE with any of them set faults.
const PTE_RESERVED: u64 = 0xffc0000000000000;

export const SATP_MODE_BARE: u64 = 0;
export const SATP_MODE_SV39: u64 = 8;
export const SATP_MODE_SV48: u64 = 9;
export const SATP_MODE_SV57: u64 = 10;

export function pageFault(va: u64, access: u32): void {
  raise(access == ACC_FETCH ? CAUSE_FETCH_PAGE_FAULT : access == ACC_LOAD ? CAUSE_LOAD_PAGE_FAULT : CAUSE_STORE_PAGE_FAULT, va);
}

export function accessFault(va: u64, access: u32): void {
  raise(access == ACC_FETCH ? CAUSE_FETCH_ACCESS : access == ACC_LOAD ? CAUSE_LOAD_ACCESS : CAUSE_STORE_ACCESS, va);
}

/** Stop run() for the hypervisor to map `gpa` (the instruction restarts). */
export function p2mFaultExit(gpa: u64, access: u32): void {
  store<i64>(H, <i64>EXIT_P2M_FAULT, RUN_REASON_OFF);
  store<u64>(H, gpa, RUN_ADDR_OFF);
  store<u64>(H, access == ACC_FETCH ? 2 : access == ACC_STORE ? 1 : 0, RUN_WRITE_OFF);
  store<u64>(H, 8, RUN_SIZE_OFF);
  requestExit();
}

/** Level of the leaf PTE the last successful translate() used (0: 4 KiB page
 *  or no translation): the TLB fill after it records it. */
export let walkLevel: i32 = 0;

/**
 * Translate `va` for an access of kind `access` at effective privilege `priv`.
 * Returns the guest-physical address, or sets `status` (page fault, access fault
 * or p2m-fault exit) and returns 0. `translate` false means bare (M-mode, or
 * satp.MODE = Bare): the address is used as is.
 */
export function translate(va: u64, access: u32, priv: u32, translateOn: bool): u64 {
  walkLevel = 0;
  if (!translateOn) return va;
  const satp = rd(SATP_OFF);
  const mode = satp >> 60;
  const levels: i32 = mode == SATP_MODE_SV39 ? 3 : mode == SATP_MODE_SV48 ? 4 : 5;
  // The address must be a sign extension of its top translated bit.
  const vaBits = 12 + 9 * levels;
  const top = (<i64>va) >> (vaBits - 1);
  if (top != 0 && top != -1) {
    pageFault(va, access);
    return 0;
  }
  let a: u64 = (satp & 0xfffffffffff) << 12;
  const ms = rd(MSTATUS_OFF);
  for (let i = levels - 1; i >= 0; i--) {
    const pteAddr = a + (((va >> (12 + 9 * <u64>i)) & 0x1ff) << 3);
    // Walk until a leaf; A/D updates below are a compare-and-swap on the PTE so a
    // concurrent change by another hart restarts the check (spec 4.3.2 step 7).
    const host = p2mLookup(pteAddr, false);
    if (host == P2M_MMIO) { accessFault(va, access); return 0; }
    if (host == P2M_FAULT) { p2mFaultExit(pteAddr, ACC_LOAD); return 0; }
    const ptePtr = host + <usize>(pteAddr & 0xfff);
    let pte = atomic.load<u64>(ptePtr);
    if ((pte & PTE_V) == 0 || ((pte & PTE_R) == 0 && (pte & PTE_W) != 0) || (pte & PTE_RESERVED) != 0) {
      pageFault(va, access);
      return 0;
    }
    if ((pte & (PTE_R | PTE_X)) == 0) {
      // Pointer to the next level; there is none below level 0.
      if (i == 0) { pageFault(va, access); return 0; }
      a = ((pte >> 10) & 0xfffffffffff) << 12;
      continue;
    }
    // Leaf: permission checks (spec 4.3.2 step 5, 4.3.1 SUM/MXR).
    if (access == ACC_FETCH) {
      if ((pte & PTE_X) == 0) { pageFault(va, access); return 0; }
    } else if (access == ACC_LOAD) {
      if ((pte & PTE_R) == 0 && !((ms & MSTATUS_MXR) != 0 && (pte & PTE_X) != 0)) { pageFault(va, access); return 0; }
    } else {
      if ((pte & PTE_W) == 0) { pageFault(va, access); return 0; }
    }
    if (priv == PRV_U) {
      if ((pte & PTE_U) == 0) { pageFault(va, access); return 0; }
    } else if (priv == PRV_S && (pte & PTE_U) != 0) {
      if (access == ACC_FETCH || (ms & MSTATUS_SUM) == 0) { pageFault(va, access); return 0; }
    }
    // A superpage must have its low PPN fields zero (step 6).
    const ppn = (pte >> 10) & 0xfffffffffff;
    if (i > 0) {
      const lowMask: u64 = ((<u64>1) << (9 * <u64>i)) - 1;
      if ((ppn & lowMask) != 0) { pageFault(va, access); return 0; }
    }
    // A and D updates (Svadu behaviour: hardware sets them, atomically).
    let need = PTE_A;
    if (access == ACC_STORE) need |= PTE_D;
    if ((pte & need) != need) {
      const hostW = p2mLookup(pteAddr, true);
      if (hostW == P2M_FAULT) { p2mFaultExit(pteAddr, ACC_STORE); return 0; }
      if (atomic.cmpxchg<u64>(ptePtr, pte, pte | need) != pte) {
        // The PTE changed under us: redo the whole walk.
        return translate(va, access, priv, translateOn);
      }
    }
    walkLevel = i;
    const pageShift = 12 + 9 * <u64>i;
    const offMask: u64 = ((<u64>1) << pageShift) - 1;
    return ((ppn << 12) & ~offMask) | (va & offMask);
  }
  pageFault(va, access);
  return 0;
}

