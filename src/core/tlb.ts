// Software TLB: guest-virtual page -> host address, for fetch, load and store.
//
// Each array is direct-mapped by virtual page number. An entry holds a tag and
// an addend (host address - guest-virtual page address), so a hit costs one
// compare and one add. The tag is the page address with a context value in its
// low 12 bits: the effective privilege and the mstatus bits that change the
// outcome of a permission check (SUM, MXR) and whether translation is on. A mode
// change then needs no flush: entries made under another context simply miss.
// Entries are made only after the page walk succeeded with A (and D for stores)
// set and the p2m allowed the access, so a hit needs no further checks.
//
// Flushes: SFENCE.VMA (spec 4.2.1), any satp write, and whenever the hypervisor
// changes the p2m (tlbFlush export). SFENCE.VMA with an address drops only
// what maps that address (Linux issues one after most PTE changes: some 100,000
// in a boot, which used to empty the whole TLB each time).

import {
  H, TLB_ENTRIES, TLB_FETCH_OFF, TLB_LOAD_OFF, TLB_STORE_OFF, TLB_ENTRY_SIZE, TLB_LEVEL_OFF, TLB_SUPER_FILLS_OFF, TLB_OFF,
  MSTATUS_OFF, SATP_OFF, PRIV_OFF, rd, wr, CTX_FETCH_OFF, CTX_LOAD_OFF, CTX_STORE_OFF, TLB_FETCH_GPA_OFF,
  MSTATUS_MPRV, MSTATUS_MPP, MSTATUS_MPP_SHIFT, MSTATUS_SUM, MSTATUS_MXR, PRV_M,
} from "./hart";
import { walkLevel } from "./mmu";

export let ctxFetch: u64 = 0;
export let ctxLoad: u64 = 0;
export let ctxStore: u64 = 0;
/** Effective privilege for loads and stores (MPRV applies MPP in M-mode). */
export let dataPriv: u32 = 0;

const CTX_VALID: u64 = 0x100;
const INVALID_TAG: u64 = 0xffffffffffffffff;

/** Recompute the contexts; call after any change of priv, mstatus or satp. */
export function updateTlbContext(): void {
  const priv = <u32>rd(PRIV_OFF);
  const ms = rd(MSTATUS_OFF);
  const satpOn: u64 = (rd(SATP_OFF) >> 60) != 0 ? 1 : 0;
  let dp = priv;
  if (priv == PRV_M && (ms & MSTATUS_MPRV) != 0) dp = <u32>((ms & MSTATUS_MPP) >> MSTATUS_MPP_SHIFT);
  dataPriv = dp;
  const fetchOn: u64 = priv != PRV_M ? satpOn : 0;
  const dataOn: u64 = dp != PRV_M ? satpOn : 0;
  const sum: u64 = (ms & MSTATUS_SUM) != 0 ? 1 : 0;
  const mxr: u64 = (ms & MSTATUS_MXR) != 0 ? 1 : 0;
  ctxFetch = CTX_VALID | <u64>priv | (fetchOn << 4);
  ctxLoad = CTX_VALID | <u64>dp | (dataOn << 4) | (sum << 2) | (mxr << 3);
  ctxStore = CTX_VALID | <u64>dp | (dataOn << 4) | (sum << 2);
  wr(CTX_FETCH_OFF, ctxFetch);
  wr(CTX_LOAD_OFF, ctxLoad);
  wr(CTX_STORE_OFF, ctxStore);
}

/** Drop the fetch entries only (FENCE.I after a store broke a page's sharing:
 *  fetches may have kept the shared frame, see p2m.ts). */
export function tlbFlushFetch(): void {
  for (let i: u32 = 0; i < TLB_ENTRIES; i++) {
    store<u64>(H + TLB_FETCH_OFF + <usize>(i * TLB_ENTRY_SIZE), INVALID_TAG);
  }
}

export function tlbFlushAll(): void {
  for (let i: u32 = 0; i < 3 * TLB_ENTRIES; i++) {
    store<u64>(H + TLB_FETCH_OFF + <usize>(i * TLB_ENTRY_SIZE), INVALID_TAG);
  }
  wr(TLB_SUPER_FILLS_OFF, 0);
}

/**
 * SFENCE.VMA rs1 = va (spec 4.2.1): drop every entry the leaf PTE mapping va
 * may have made. A 4 KiB page has one place in each array; a superpage may
 * have made entries for any of its pages, so when there are superpage entries
 * each one is checked against the superpage around va at its own level.
 */
export function tlbFlushPage(va: u64): void {
  const idx = tlbIndex(va);
  for (let a: u32 = 0; a < 3; a++) store<u64>(H + TLB_FETCH_OFF + <usize>(a * TLB_ENTRIES * TLB_ENTRY_SIZE) + idx, INVALID_TAG);
  if (rd(TLB_SUPER_FILLS_OFF) == 0) return;
  for (let i: u32 = 0; i < 3 * TLB_ENTRIES; i++) {
    const level = <u64>load<u8>(H + TLB_LEVEL_OFF + <usize>i);
    if (level == 0) continue;
    const e = H + TLB_FETCH_OFF + <usize>(i * TLB_ENTRY_SIZE);
    const tag = load<u64>(e);
    if (tag != INVALID_TAG && ((tag ^ va) >> (12 + 9 * level)) == 0) store<u64>(e, INVALID_TAG);
  }
}

@inline export function tlbIndex(va: u64): usize {
  return ((<usize>(va >> 12)) & (TLB_ENTRIES - 1)) << 4;
}

export function tlbFill(arrayOff: u32, va: u64, ctx: u64, hostPage: usize): void {
  const idx = tlbIndex(va);
  const e = H + <usize>arrayOff + idx;
  const vpage = va & ~(<u64>0xfff);
  store<u64>(e, vpage | ctx);
  store<u64>(e, (<u64>hostPage) - vpage, 8);
  store<u8>(H + TLB_LEVEL_OFF + <usize>((arrayOff - TLB_OFF) / TLB_ENTRY_SIZE) + (idx >> 4), <u8>walkLevel);
  if (walkLevel != 0) wr(TLB_SUPER_FILLS_OFF, rd(TLB_SUPER_FILLS_OFF) + 1);
}

/** Fetch fills also record the guest-physical page (translations are keyed by it). */
export function tlbFillFetch(va: u64, ctx: u64, hostPage: usize, gpa: u64): void {
  tlbFill(TLB_FETCH_OFF, va, ctx, hostPage);
  store<u64>(H + <usize>TLB_FETCH_GPA_OFF + (tlbIndex(va) >> 1), gpa & ~(<u64>0xfff));
}

/** Drop the store entries that map host frame `hostPage` (it now holds translated
 *  code, so every store to it must take the slow path and invalidate). */
export function tlbDropStoresTo(hostPage: usize): void {
  for (let i: u32 = 0; i < TLB_ENTRIES; i++) {
    const e = H + TLB_STORE_OFF + <usize>(i * TLB_ENTRY_SIZE);
    const tag = load<u64>(e);
    if (tag == INVALID_TAG) continue;
    if (<usize>((tag & ~(<u64>0xfff)) + load<u64>(e, 8)) == hostPage) store<u64>(e, INVALID_TAG);
  }
}

export { TLB_FETCH_OFF, TLB_LOAD_OFF, TLB_STORE_OFF };
