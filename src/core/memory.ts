// Guest memory as instructions see it: fetch, load, store and atomic access by
// guest-virtual address. Fast path: the software TLB (tlb.ts). Slow path: page
// walk (mmu.ts), then the p2m (p2m.ts), then either host memory, an MMIO exit or
// a p2m-fault exit.
//
// Callers check `status` after every call and do nothing more if it is not OK;
// the helpers then return 0 and have changed no guest state.
//
// MMIO exits restart the instruction: the hypervisor completes the access in the
// run record (RUN_MMIO_DONE = 1, and RUN_DATA for reads), run() re-executes the
// same instruction, and the access with the same address, size and direction
// takes the completed value instead of exiting again. This keeps every kind of
// load (integer, FP, sign- or zero-extending) on one path.
//
// Misaligned loads and stores to RAM complete here (the privileged spec allows
// it, section 3.6.3.3), including across a page boundary: both pages are
// translated before any byte is written, so a fault on the second page leaves
// memory untouched.

import {
  H, status, raise, requestExit, STATUS_OK,
  RUN_REASON_OFF, RUN_ADDR_OFF, RUN_DATA_OFF, RUN_SIZE_OFF, RUN_WRITE_OFF, RUN_MMIO_DONE_OFF,
  MMIO_KEY_ADDR_OFF, MMIO_KEY_ACCESS_OFF, HTIF_TOHOST_OFF, PRIV_OFF,
  CAUSE_MISALIGNED_LOAD, CAUSE_MISALIGNED_STORE,
} from "./hart";
import { p2mLookup, p2mLastShared, P2M_MMIO, P2M_FAULT } from "./p2m";
import {
  ctxFetch, ctxLoad, ctxStore, dataPriv, tlbIndex, tlbFill, tlbFillFetch,
  TLB_FETCH_OFF, TLB_LOAD_OFF, TLB_STORE_OFF,
} from "./tlb";
import { storeHitsCode } from "./jit-cache";
import { translate, accessFault, p2mFaultExit, ACC_FETCH, ACC_LOAD, ACC_STORE } from "./mmu";
import { EXIT_MMIO_READ, EXIT_MMIO_WRITE, EXIT_HTIF, MMIO_COMPLETED, MMIO_NO_DEVICE } from "./exit";

/** Set when a store touched HTIF `tohost`: run() retires the instruction, then exits. */
export let htifHit: bool = false;
/** Set when a store overwrote a page holding translated code (jit-cache.ts):
 *  translated code must not run past that store. Cleared by its reader. */
export let storeKilledCode: bool = false;
export function clearStoreKilledCode(): void {
  storeKilledCode = false;
}
/** Set once a fetch entry mapped a shared frame: from then on FENCE.I drops
 *  the fetch entries (execute.ts). */
export let fetchFromShared: bool = false;
/** Guest-physical address of the last atomic access (for the LR reservation). */
export let lastAtomicGpa: u64 = 0;

const PAGE_MASK: u64 = ~(<u64>0xfff);

// ---- fast paths ---------------------------------------------------------------

@inline function tlbHost(arrayOff: u32, va: u64, ctx: u64, size: u64): usize {
  const e = H + <usize>arrayOff + tlbIndex(va);
  if (load<u64>(e) == ((va & PAGE_MASK) | ctx) && (va & 0xfff) <= 4096 - size) {
    return <usize>(va + load<u64>(e, 8));
  }
  return 0;
}

@inline export function load8(va: u64): u64 {
  const p = tlbHost(TLB_LOAD_OFF, va, ctxLoad, 1);
  return p != 0 ? <u64>load<u8>(p) : loadSlow(va, 1);
}
@inline export function load16(va: u64): u64 {
  const p = tlbHost(TLB_LOAD_OFF, va, ctxLoad, 2);
  return p != 0 ? <u64>load<u16>(p) : loadSlow(va, 2);
}
@inline export function load32(va: u64): u64 {
  const p = tlbHost(TLB_LOAD_OFF, va, ctxLoad, 4);
  return p != 0 ? <u64>load<u32>(p) : loadSlow(va, 4);
}
@inline export function load64(va: u64): u64 {
  const p = tlbHost(TLB_LOAD_OFF, va, ctxLoad, 8);
  return p != 0 ? load<u64>(p) : loadSlow(va, 8);
}

@inline export function store8(va: u64, v: u64): void {
  const p = tlbHost(TLB_STORE_OFF, va, ctxStore, 1);
  if (p != 0) store<u8>(p, <u8>v); else storeSlow(va, v, 1);
}
@inline export function store16(va: u64, v: u64): void {
  const p = tlbHost(TLB_STORE_OFF, va, ctxStore, 2);
  if (p != 0) store<u16>(p, <u16>v); else storeSlow(va, v, 2);
}
@inline export function store32(va: u64, v: u64): void {
  const p = tlbHost(TLB_STORE_OFF, va, ctxStore, 4);
  if (p != 0) store<u32>(p, <u32>v); else storeSlow(va, v, 4);
}
@inline export function store64(va: u64, v: u64): void {
  const p = tlbHost(TLB_STORE_OFF, va, ctxStore, 8);
  if (p != 0) store<u64>(p, v); else storeSlow(va, v, 8);
}

/** The instruction at `pc`: 32 bits, or a 16-bit compressed one in the low half
 *  (the upper half is then garbage and must be ignored). */
@inline export function fetch(pc: u64): u32 {
  const p = tlbHost(TLB_FETCH_OFF, pc, ctxFetch, 4);
  return p != 0 ? load<u32>(p) : fetchSlow(pc);
}

// ---- slow paths -------------------------------------------------------------------

@inline function dataTranslateOn(ctx: u64): bool {
  return (ctx & 0x10) != 0;
}

function readHost(p: usize, size: u32): u64 {
  if (size == 1) return <u64>load<u8>(p);
  if (size == 2) return <u64>load<u16>(p);
  if (size == 4) return <u64>load<u32>(p);
  return load<u64>(p);
}

function writeHost(p: usize, v: u64, size: u32): void {
  if (size == 1) store<u8>(p, <u8>v);
  else if (size == 2) store<u16>(p, <u16>v);
  else if (size == 4) store<u32>(p, <u32>v);
  else store<u64>(p, v);
}

@inline function sizeMask(size: u32): u64 {
  return size == 8 ? 0xffffffffffffffff : ((<u64>1) << (<u64>size * 8)) - 1;
}

/** How the hypervisor completed the MMIO access this instruction exited for
 *  (exit.ts); MMIO_PENDING when it has not (a different access, or none). A
 *  "no device" completion raises an access fault, as a bus error does on
 *  hardware (privileged spec 3.6.1). */
const MMIO_PENDING: u64 = 0;

function takeMmioCompletion(gpa: u64, size: u32, write: u64): u64 {
  const done = load<u64>(H, RUN_MMIO_DONE_OFF);
  if (done == MMIO_PENDING) return MMIO_PENDING;
  if (load<u64>(H, MMIO_KEY_ADDR_OFF) != gpa || load<u64>(H, MMIO_KEY_ACCESS_OFF) != mmioAccessKey(size, write)) return MMIO_PENDING;
  store<u64>(H, 0, RUN_MMIO_DONE_OFF);
  return done == MMIO_COMPLETED ? MMIO_COMPLETED : MMIO_NO_DEVICE;
}

@inline function mmioAccessKey(size: u32, write: u64): u64 {
  return <u64>size | (write << 8);
}

function mmioExit(reason: i32, gpa: u64, size: u32, write: u64, data: u64): void {
  store<u64>(H, MMIO_PENDING, RUN_MMIO_DONE_OFF);
  store<u64>(H, gpa, MMIO_KEY_ADDR_OFF);
  store<u64>(H, mmioAccessKey(size, write), MMIO_KEY_ACCESS_OFF);
  store<i64>(H, <i64>reason, RUN_REASON_OFF);
  store<u64>(H, gpa, RUN_ADDR_OFF);
  store<u64>(H, <u64>size, RUN_SIZE_OFF);
  store<u64>(H, write, RUN_WRITE_OFF);
  store<u64>(H, data, RUN_DATA_OFF);
  requestExit();
}

function mmioRead(va: u64, gpa: u64, size: u32): u64 {
  // Device registers are accessed naturally aligned; anything else is refused.
  if ((gpa & (<u64>size - 1)) != 0) { accessFault(va, ACC_LOAD); return 0; }
  const done = takeMmioCompletion(gpa, size, 0);
  if (done == MMIO_COMPLETED) return load<u64>(H, RUN_DATA_OFF) & sizeMask(size);
  if (done == MMIO_NO_DEVICE) { accessFault(va, ACC_LOAD); return 0; }
  mmioExit(EXIT_MMIO_READ, gpa, size, 0, 0);
  return 0;
}

function mmioWrite(va: u64, gpa: u64, v: u64, size: u32): void {
  if ((gpa & (<u64>size - 1)) != 0) { accessFault(va, ACC_STORE); return; }
  const done = takeMmioCompletion(gpa, size, 1);
  if (done == MMIO_COMPLETED) return;
  if (done == MMIO_NO_DEVICE) { accessFault(va, ACC_STORE); return; }
  mmioExit(EXIT_MMIO_WRITE, gpa, size, 1, v & sizeMask(size));
}

export function loadSlow(va: u64, size: u32): u64 {
  const on = dataTranslateOn(ctxLoad);
  const off = va & 0xfff;
  const gpa = translate(va, ACC_LOAD, dataPriv, on);
  if (status != STATUS_OK) return 0;
  if (off + <u64>size <= 4096) {
    const host = p2mLookup(gpa, false);
    if (host == P2M_MMIO) return mmioRead(va, gpa, size);
    if (host == P2M_FAULT) { p2mFaultExit(gpa, ACC_LOAD); return 0; }
    tlbFill(TLB_LOAD_OFF, va, ctxLoad, host);
    return readHost(host + <usize>(gpa & 0xfff), size);
  }
  // Misaligned across two pages.
  const va2 = (va + 4096) & PAGE_MASK;
  const gpa2 = translate(va2, ACC_LOAD, dataPriv, on);
  if (status != STATUS_OK) return 0;
  const h1 = p2mLookup(gpa, false);
  const h2 = p2mLookup(gpa2, false);
  if (h1 == P2M_MMIO || h2 == P2M_MMIO) { accessFault(va, ACC_LOAD); return 0; }
  if (h1 == P2M_FAULT) { p2mFaultExit(gpa, ACC_LOAD); return 0; }
  if (h2 == P2M_FAULT) { p2mFaultExit(gpa2, ACC_LOAD); return 0; }
  const n1 = <u32>(4096 - off);
  let v: u64 = 0;
  for (let i: u32 = 0; i < size; i++) {
    const b = i < n1 ? load<u8>(h1 + <usize>off + i) : load<u8>(h2 + <usize>(i - n1));
    v |= (<u64>b) << (<u64>i * 8);
  }
  return v;
}

function isTohostPage(gpa: u64): bool {
  const t = load<u64>(H, HTIF_TOHOST_OFF);
  return t != 0 && (gpa >> 12) == (t >> 12);
}

function checkTohost(gpa: u64, size: u32): void {
  const t = load<u64>(H, HTIF_TOHOST_OFF);
  if (t == 0 || gpa + <u64>size <= t || gpa >= t + 8) return;
  const host = p2mLookup(t, false);
  if (host == P2M_MMIO || host == P2M_FAULT) return;
  store<i64>(H, <i64>EXIT_HTIF, RUN_REASON_OFF);
  store<u64>(H, t, RUN_ADDR_OFF);
  store<u64>(H, load<u64>(host + <usize>(t & 0xfff)), RUN_DATA_OFF);
  htifHit = true;
}

export function clearHtifHit(): void {
  htifHit = false;
}

export function storeSlow(va: u64, v: u64, size: u32): void {
  const on = dataTranslateOn(ctxStore);
  const off = va & 0xfff;
  const gpa = translate(va, ACC_STORE, dataPriv, on);
  if (status != STATUS_OK) return;
  if (off + <u64>size <= 4096) {
    const host = p2mLookup(gpa, true);
    if (host == P2M_MMIO) { mmioWrite(va, gpa, v, size); return; }
    if (host == P2M_FAULT) { p2mFaultExit(gpa, ACC_STORE); return; }
    if (storeHitsCode(gpa)) storeKilledCode = true;
    if (isTohostPage(gpa)) {
      writeHost(host + <usize>(gpa & 0xfff), v, size);
      checkTohost(gpa, size);
      return;
    }
    // A page with translations is kept out of the store TLB (the host drops its
    // entries when it translates), so the first store to it comes here and
    // retires them above; from then on the page holds no translations and its
    // stores may take the fast path.
    tlbFill(TLB_STORE_OFF, va, ctxStore, host);
    writeHost(host + <usize>(gpa & 0xfff), v, size);
    return;
  }
  const va2 = (va + 4096) & PAGE_MASK;
  const gpa2 = translate(va2, ACC_STORE, dataPriv, on);
  if (status != STATUS_OK) return;
  const h1 = p2mLookup(gpa, true);
  const h2 = p2mLookup(gpa2, true);
  if (h1 == P2M_MMIO || h2 == P2M_MMIO) { accessFault(va, ACC_STORE); return; }
  if (h1 == P2M_FAULT) { p2mFaultExit(gpa, ACC_STORE); return; }
  if (h2 == P2M_FAULT) { p2mFaultExit(gpa2, ACC_STORE); return; }
  if (storeHitsCode(gpa)) storeKilledCode = true;
  if (storeHitsCode(gpa2)) storeKilledCode = true;
  const n1 = <u32>(4096 - off);
  for (let i: u32 = 0; i < size; i++) {
    const b = <u8>(v >> (<u64>i * 8));
    if (i < n1) store<u8>(h1 + <usize>off + i, b); else store<u8>(h2 + <usize>(i - n1), b);
  }
  checkTohost(gpa, n1 < size ? n1 : size);
  if (n1 < size) checkTohost(gpa2, size - n1);
}

function fetchHalf(va: u64, fault: u64): usize {
  const gpa = translate(va, ACC_FETCH, <u32>load<u64>(H, PRIV_OFF), (ctxFetch & 0x10) != 0);
  if (status != STATUS_OK) {
    return 0;
  }
  const host = p2mLookup(gpa, false);
  if (host == P2M_MMIO) { accessFault(fault, ACC_FETCH); return 0; }
  if (host == P2M_FAULT) { p2mFaultExit(gpa, ACC_FETCH); return 0; }
  // A shared frame may be cached for fetches: after a store breaks the
  // sharing, fetching the old bytes until FENCE.I is what Zifencei allows.
  if (p2mLastShared) fetchFromShared = true;
  tlbFillFetch(va, ctxFetch, host, gpa);
  return host + <usize>(gpa & 0xfff);
}

export function fetchSlow(pc: u64): u32 {
  const p = fetchHalf(pc, pc);
  if (p == 0) return 0;
  const lo = <u32>load<u16>(p);
  if ((lo & 3) != 3) return lo;
  if ((pc & 0xfff) != 0xffe) return load<u32>(p);
  // A 32-bit instruction straddling two pages; a fault on the second half
  // reports that half's address (spec 3.1.16, mtval for instruction faults).
  const p2 = fetchHalf(pc + 2, pc + 2);
  if (p2 == 0) return 0;
  return lo | ((<u32>load<u16>(p2)) << 16);
}

/**
 * Host address for an LR, SC or AMO of `size` bytes at `va` (A extension 8.4:
 * they must be naturally aligned, and need write permission except LR).
 * Sets `lastAtomicGpa`. Returns 0 with `status` set on any fault.
 */
export function atomicHost(va: u64, size: u32, isLr: bool): usize {
  if ((va & (<u64>size - 1)) != 0) {
    raise(isLr ? CAUSE_MISALIGNED_LOAD : CAUSE_MISALIGNED_STORE, va);
    return 0;
  }
  const access = isLr ? ACC_LOAD : ACC_STORE;
  const gpa = translate(va, access, dataPriv, dataTranslateOn(isLr ? ctxLoad : ctxStore));
  if (status != STATUS_OK) return 0;
  const host = p2mLookup(gpa, !isLr);
  // Device space does not support atomics (PMA, privileged spec 3.6.3).
  if (host == P2M_MMIO) { accessFault(va, access); return 0; }
  if (host == P2M_FAULT) { p2mFaultExit(gpa, access); return 0; }
  if (!isLr && storeHitsCode(gpa)) storeKilledCode = true;
  lastAtomicGpa = gpa;
  return host + <usize>(gpa & 0xfff);
}

