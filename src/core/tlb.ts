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
//
// A full flush does not touch the arrays: the context also holds a 6-bit
// epoch, which the flush counts up, so every older entry misses; only when
// the epoch wraps are the arrays really cleared. That keeps flushes (a satp
// write at each context switch) free whatever the TLB's size.
//
// Superpages: a superpage PTE makes one entry per 4 KiB page touched, in the
// slots of those pages. SFENCE.VMA of one address must drop them all, so the
// TLB keeps a short list of the superpages it holds entries from; a flush of
// an address outside all of them (the usual case: Linux flushes user pages,
// the kernel maps its memory with superpages) costs a few compares.

import {
  H, TLB_ENTRIES, TLB_FETCH_OFF, TLB_LOAD_OFF, TLB_STORE_OFF, TLB_ENTRY_SIZE, TLB_SUPER_FILLS_OFF, TLB_OFF,
  MSTATUS_OFF, SATP_OFF, PRIV_OFF, rd, wr, CTX_FETCH_OFF, CTX_LOAD_OFF, CTX_STORE_OFF, TLB_FETCH_GPA_OFF,
  TLB_EPOCH_OFF, TLB_SUPER_LIST_OFF, TLB_SUPER_MAX,
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
/** The context's free bits (5-7, 9-11) carry the epoch. */
const EPOCHS: u64 = 64;

@inline function epochBits(): u64 {
  const e = rd(TLB_EPOCH_OFF);
  return ((e & 7) << 5) | ((e >> 3) << 9);
}

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
  const valid = CTX_VALID | epochBits();
  ctxFetch = valid | <u64>priv | (fetchOn << 4);
  ctxLoad = valid | <u64>dp | (dataOn << 4) | (sum << 2) | (mxr << 3);
  ctxStore = valid | <u64>dp | (dataOn << 4) | (sum << 2);
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

/** Flush everything: a new epoch (see above); the contexts follow. */
export function tlbFlushAll(): void {
  const epoch = (rd(TLB_EPOCH_OFF) + 1) & (EPOCHS - 1);
  if (epoch == 0) tlbClearAll();
  else {
    wr(TLB_EPOCH_OFF, epoch);
    wr(TLB_SUPER_FILLS_OFF, 0);
  }
  updateTlbContext();
}

/** Invalidate every entry for real (epoch wrap, hart reset, a new p2m). */
export function tlbClearAll(): void {
  for (let i: u32 = 0; i < 3 * TLB_ENTRIES; i++) {
    store<u64>(H + TLB_FETCH_OFF + <usize>(i * TLB_ENTRY_SIZE), INVALID_TAG);
  }
  wr(TLB_EPOCH_OFF, 0);
  wr(TLB_SUPER_FILLS_OFF, 0);
  updateTlbContext();
}

/**
 * SFENCE.VMA rs1 = va (spec 4.2.1): drop every entry the leaf PTE mapping va
 * may have made: its page's slot in each array, and when va lies in a
 * superpage the TLB holds entries from, every entry inside that superpage.
 */
export function tlbFlushPage(va: u64): void {
  const idx = tlbIndex(va);
  for (let a: u32 = 0; a < 3; a++) store<u64>(H + TLB_FETCH_OFF + <usize>(a * TLB_ENTRIES * TLB_ENTRY_SIZE) + idx, INVALID_TAG);
  let n = <u32>rd(TLB_SUPER_FILLS_OFF);
  if (n == 0) return;
  if (n > TLB_SUPER_MAX) {
    // The list overflowed: any entry may come from a superpage around va.
    tlbFlushAll();
    return;
  }
  for (let i: u32 = 0; i < n; ) {
    const s = load<u64>(H + TLB_SUPER_LIST_OFF + <usize>(i * 8));
    const level = <u32>(s & 7);
    if (((s ^ va) >> (12 + 9 * <u64>level)) != 0) { i++; continue; }
    dropRange(va, level);
    // Every entry of that superpage is gone: take it off the list.
    n--;
    store<u64>(H + TLB_SUPER_LIST_OFF + <usize>(i * 8), load<u64>(H + TLB_SUPER_LIST_OFF + <usize>(n * 8)));
  }
  wr(TLB_SUPER_FILLS_OFF, n);
}

/** Drop every entry for a page inside the level-`level` superpage around va.
 *  A 2 MiB superpage's pages sit in 512 consecutive slots; larger ones may
 *  be anywhere. */
function dropRange(va: u64, level: u32): void {
  const shift = 12 + 9 * <u64>level;
  let first: u32 = 0;
  let count: u32 = TLB_ENTRIES;
  if (level == 1 && TLB_ENTRIES >= 512) {
    first = <u32>((va >> 12) & <u64>(TLB_ENTRIES - 1)) & ~(<u32>511);
    count = 512;
  }
  for (let a: u32 = 0; a < 3; a++) {
    for (let i: u32 = first; i < first + count; i++) {
      const e = H + TLB_FETCH_OFF + <usize>((a * TLB_ENTRIES + i) * TLB_ENTRY_SIZE);
      const tag = load<u64>(e);
      if (tag != INVALID_TAG && ((tag ^ va) >> shift) == 0) store<u64>(e, INVALID_TAG);
    }
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
  if (walkLevel != 0) noteSuperpage(va, walkLevel);
}

/** Put the superpage around va on the list (see tlbFlushPage), once. */
function noteSuperpage(va: u64, level: u32): void {
  const n = <u32>rd(TLB_SUPER_FILLS_OFF);
  if (n > TLB_SUPER_MAX) return;
  const s = (va & ~((<u64>1 << (12 + 9 * <u64>level)) - 1)) | <u64>level;
  for (let i: u32 = 0; i < n; i++) if (load<u64>(H + TLB_SUPER_LIST_OFF + <usize>(i * 8)) == s) return;
  if (n < TLB_SUPER_MAX) store<u64>(H + TLB_SUPER_LIST_OFF + <usize>(n * 8), s);
  wr(TLB_SUPER_FILLS_OFF, n + 1);
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
