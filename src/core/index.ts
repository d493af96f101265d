// core.wasm: the exported interface of the CPU core.
//
// The hypervisor drives a hart as Linux KVM drives a vCPU: it prepares the hart
// block, calls run() and handles the exit it returns (exit.ts), whose data sits in
// the run record (hart.ts RUN_* offsets, exported below as globals). Every
// function takes the hart block's address `h`; the core keeps no per-hart state
// anywhere else, so one instance can time-slice many harts and a worker thread's
// own instance can run any hart on the shared memory.

import * as hart from "./hart";
import { setCurrentHart, HART_STATE_SIZE, PC_OFF, PRIV_OFF, TIME_OFF, MTIMECMP_OFF, TICK_INSNS_OFF, TICK_LEFT_OFF,
  SBI_MODE_OFF, HTIF_TOHOST_OFF, P2M_TABLE_OFF, P2M_BASE_GFN_OFF, P2M_COUNT_OFF,
  LINE_MEIP_OFF, LINE_SEIP_OFF, LINE_MSIP_OFF, WAITING_OFF, TIME_FLOOR_OFF, DIRTY_LOG_OFF, MIE_OFF } from "./hart";
import { tlbClearAll, updateTlbContext } from "./tlb";
import { csrReadRaw, csrWriteRaw, csrSetBits } from "./csr";
import { resetHart } from "./reset";
import { runHart, jitExecOne, C_DECODE_TABLE_END } from "./execute";
import { loadSlow, storeSlow, htifHit, storeKilledCode, clearStoreKilledCode } from "./memory";
import { status, clearStatus, STATUS_OK, JIT_CACHE_OFF, JIT_BAIL_OFF, H } from "./hart";
import { tlbDropStoresTo } from "./tlb";
import { mulh, mulhu, mulhsu } from "./isa/m";
import { expandCompressed } from "./isa/c";
import { nextTimerDeadline, interruptWakeup } from "./trap";
import { postRequestTo, requestedSsip, REQ_IRQ } from "./requests";
import { hostSetTime } from "./time";

export {
  X_OFF, F_OFF, FFLAGS_OFF, FRM_OFF, PC_OFF, PRIV_OFF, MSTATUS_OFF, SATP_OFF, TIME_OFF, MCYCLE_OFF, MINSTRET_OFF,
  RUN_REASON_OFF, RUN_ADDR_OFF, RUN_DATA_OFF, RUN_SIZE_OFF, RUN_WRITE_OFF, RUN_MMIO_DONE_OFF, RUN_INSNS_OFF,
  REQ_OFF, IN_RUN_OFF, TIME_FLOOR_OFF, DIRTY_LOG_OFF, HART_STATE_SIZE, LINE_MEIP_OFF, LINE_SEIP_OFF,
} from "./hart";
export {
  EXIT_BUDGET, EXIT_MMIO_READ, EXIT_MMIO_WRITE, EXIT_SBI, EXIT_WFI, EXIT_P2M_FAULT, EXIT_HTIF, EXIT_HALT, EXIT_KICK,
  MMIO_COMPLETED, MMIO_NO_DEVICE,
} from "./exit";
export { REQ_IRQ, REQ_SSIP, REQ_TLB_FLUSH, REQ_EXIT } from "./requests";
export { P2M_PRESENT, P2M_WRITABLE, P2M_ACCESSED, P2M_SHARED } from "./p2m";

/** First byte the hypervisor may use: everything below holds the core's data
 *  (static data, then the compressed-instruction decode table). */
export function coreDataEnd(): usize {
  return C_DECODE_TABLE_END;
}

export function hartStateSize(): u32 {
  return HART_STATE_SIZE;
}

/** Reset state (privileged spec 3.4): M-mode, pc = `resetPc`, mhartid = `hartId`. */
export function hartReset(h: usize, hartId: u64, resetPc: u64): void {
  setCurrentHart(h);
  resetHart(hartId, resetPc);
}

/**
 * Execute until a VM exit or until `budget` instructions have retired. Returns the
 * exit reason; RUN_INSNS in the run record holds the instructions retired.
 */
export function run(h: usize, budget: u32): i32 {
  setCurrentHart(h);
  return runHart(budget);
}

export function getX(h: usize, i: u32): u64 { setCurrentHart(h); return hart.getX(i & 31); }
export function setX(h: usize, i: u32, v: u64): void { setCurrentHart(h); hart.setX(i & 31, v); }
export function getF(h: usize, i: u32): u64 { setCurrentHart(h); return hart.getF(i & 31); }
export function setF(h: usize, i: u32, v: u64): void { setCurrentHart(h); hart.setF(i & 31, v); }
export function getPc(h: usize): u64 { return load<u64>(h, PC_OFF); }
export function setPc(h: usize, v: u64): void { store<u64>(h, v & ~(<u64>1), PC_OFF); }
export function getPriv(h: usize): u32 { return <u32>load<u64>(h, PRIV_OFF); }
export function setPriv(h: usize, p: u32): void {
  setCurrentHart(h);
  store<u64>(h, <u64>(p == 2 ? 3 : p & 3), PRIV_OFF);
  updateTlbContext();
}

/** CSR access for the hypervisor: no privilege checks; -1 from csrRead when the
 *  CSR does not exist (use csrExists to tell). */
export function csrRead(h: usize, csr: u32): u64 { setCurrentHart(h); return csrReadRaw(csr); }
export function csrWrite(h: usize, csr: u32, v: u64): void { setCurrentHart(h); csrWriteRaw(csr, v); }
/** Set bits in a CSR as CSRRS does (for mip: without latching the PLIC's SEIP
 *  line into the writable bit), e.g. mip.SSIP for an IPI. */
export function csrSet(h: usize, csr: u32, bits: u64): void { setCurrentHart(h); csrSetBits(csr, bits); }

/** Attach the VM's p2m (see p2m.ts for the entry format) and flush the TLB. */
export function setP2m(h: usize, table: usize, baseGfn: u64, count: u64): void {
  store<u64>(h, <u64>table, P2M_TABLE_OFF);
  store<u64>(h, baseGfn, P2M_BASE_GFN_OFF);
  store<u64>(h, count, P2M_COUNT_OFF);
  tlbFlush(h);
}

/** Drop every cached translation (after the hypervisor changed the p2m).
 *  Only on the thread that runs the hart; from any other, post REQ_TLB_FLUSH. */
export function tlbFlush(h: usize): void {
  setCurrentHart(h);
  tlbClearAll();
}

/** Post REQ_* bits to hart `h` (requests.ts); callable from any thread, also
 *  while the hart runs on another one. Same as Atomics.or on an Int32Array
 *  over the shared buffer at index (h + REQ_OFF) / 4. */
export function postRequest(h: usize, bits: u32): void {
  postRequestTo(h, bits);
}

// Interrupt lines from devices: the PLIC's M and S context outputs (MEIP, SEIP)
// and the ACLINT MSWI bit (MSIP). Values: 0 low, 1 high. Callable from any
// thread: the level is stored atomically, then REQ_IRQ makes a running hart
// look at it (the store comes first, so the hart that takes the request sees it).
export const IRQ_LINE_MSIP: u32 = 3;
export const IRQ_LINE_SEIP: u32 = 9;
export const IRQ_LINE_MEIP: u32 = 11;
export function setIrqLine(h: usize, line: u32, level: u32): void {
  const off = line == IRQ_LINE_MEIP ? LINE_MEIP_OFF : line == IRQ_LINE_SEIP ? LINE_SEIP_OFF : LINE_MSIP_OFF;
  atomic.store<u64>(h + <usize>off, level != 0 ? 1 : 0);
  postRequestTo(h, REQ_IRQ);
}
/** The level of a device interrupt line as last set (0 or 1): the hart block
 *  is the one place it lives (the ACLINT's msip register reads it back). */
export function getIrqLine(h: usize, line: u32): u32 {
  const off = line == IRQ_LINE_MEIP ? LINE_MEIP_OFF : line == IRQ_LINE_SEIP ? LINE_SEIP_OFF : LINE_MSIP_OFF;
  return atomic.load<u64>(h + <usize>off) != 0 ? 1 : 0;
}

// The platform timer (ACLINT MTIMER mtime) as this hart sees it. It advances by
// one every TICK_INSNS retired instructions, so time is a pure function of the
// instruction stream (deterministic); a hypervisor that wants wall-clock time
// sets it from the host clock between runs. With a shared time floor
// (setTimeShared) setTime never moves time backwards (time.ts).
export function getTime(h: usize): u64 { return load<u64>(h, TIME_OFF); }
export function setTime(h: usize, t: u64): void { hostSetTime(h, t); }

/** Share the VM's u64 time floor at host address `addr` (8-byte aligned, as
 *  wasm atomics require; 0: none, each hart's time is its own): every guest
 *  read of `time` on a hart with the floor is at least any read another hart
 *  completed before it (time.ts). False, and nothing changed, when misaligned. */
export function setTimeShared(h: usize, addr: usize): bool {
  if ((addr & 7) != 0) return false;
  store<u64>(h, <u64>addr, TIME_FLOOR_OFF);
  return true;
}
/** Log this hart's writes to guest RAM in the VM's dirty bitmap at host
 *  address `addr` (one bit per page of the p2m window, u32 words; 0: off).
 *  Only stores that look up the p2m set bits, not store TLB hits: flush the
 *  hart's TLB after turning the log on (and after clearing bits). False, and
 *  nothing changed, when `addr` is not 4-byte aligned (wasm atomics). */
export function setDirtyLog(h: usize, addr: usize): bool {
  if ((addr & 3) != 0) return false;
  store<u64>(h, <u64>addr, DIRTY_LOG_OFF);
  return true;
}

export function getMtimecmp(h: usize): u64 { return load<u64>(h, MTIMECMP_OFF); }
export function setMtimecmp(h: usize, v: u64): void { store<u64>(h, v, MTIMECMP_OFF); }
export function setTickInsns(h: usize, n: u32): void {
  const v: u64 = n == 0 ? 1 : <u64>n;
  store<u64>(h, v, TICK_INSNS_OFF);
  store<u64>(h, v, TICK_LEFT_OFF);
}

/** Earliest time at which a timer interrupt can become pending for this hart
 *  (mtimecmp, and stimecmp when Sstc is enabled); u64 max when none. */
export function timerDeadline(h: usize): u64 { setCurrentHart(h); return nextTimerDeadline(); }

/** Would a pending-and-enabled interrupt end a WFI now (spec 3.3.3)? An IPI
 *  waiting in the request word (REQ_SSIP) counts: run() entry sets mip.SSIP. */
export function wakeupPending(h: usize): bool {
  setCurrentHart(h);
  return interruptWakeup() || (requestedSsip(h) & load<u64>(h, MIE_OFF)) != 0;
}

/** Is the hart waiting in WFI (the last exit was EXIT_WFI and it has not run since)? */
export function isWaiting(h: usize): bool { return load<u64>(h, WAITING_OFF) != 0; }

/** 1: ECALL from S-mode (and U-mode when not delegated) is an SBI hypercall exit,
 *  as under KVM; 0: it traps to the guest's own M-mode (bare-metal programs). */
export function setSbiMode(h: usize, on: u32): void { store<u64>(h, on != 0 ? 1 : 0, SBI_MODE_OFF); }

/** Guest-physical address of the HTIF `tohost` doubleword (0 = none). */
export function setHtifTohost(h: usize, gpa: u64): void {
  store<u64>(h, gpa, HTIF_TOHOST_OFF);
  tlbFlush(h);
}

// ---- binary translation (src/jit/) --------------------------------------------

export {
  CTX_FETCH_OFF, CTX_LOAD_OFF, CTX_STORE_OFF, JIT_CACHE_OFF, JIT_BAIL_OFF,
  TLB_FETCH_OFF, TLB_LOAD_OFF, TLB_STORE_OFF, TLB_ENTRIES, TLB_FETCH_GPA_OFF,
} from "./hart";
export {
  AREA_BUCKET_MASK, AREA_THRESHOLD, AREA_BATCH, AREA_QUEUE_LEN, AREA_PAGEMAP, AREA_PAGEMAP_BASE,
  AREA_PAGEMAP_COUNT, AREA_STAT_ENTERED, AREA_STAT_BAILS, AREA_STAT_INVALIDATIONS, AREA_STAT_INSNS, AREA_STAT_CHAINED, AREA_QUEUE, AREA_QUEUE_CAP,
  AREA_TABLE, BUCKET_WAYS, ENTRY_SIZE, ENTRY_FN, ENTRY_HITS, ENTRY_GEN, ENTRY_BLOCK, HITS_QUEUED, HITS_NEVER, PAGE_CODE,
  jitLink,
} from "./jit-cache";
export { JIT_NEED_INTERP, JIT_STOPPED } from "./execute";

/** Attach the VM's translation cache area to a hart (0: interpreter only). */
export function setJitCache(h: usize, areaAddr: usize): void {
  store<u64>(h, <u64>areaAddr, JIT_CACHE_OFF);
}

/** Host frame `hostPage` now holds translated code: keep it out of this hart's
 *  store TLB. Callable while run() executes (the host compiles from inside it). */
export function jitDropStores(h: usize, hostPage: usize): void {
  const saved = H;
  setCurrentHart(h);
  tlbDropStoresTo(hostPage);
  setCurrentHart(saved);
}

/** 32-bit encoding of a compressed instruction, 0 when it is illegal. */
export function expandC(c: u32): u32 {
  return expandCompressed(c & 0xffff);
}

// The slow paths translated code calls (imported by every generated module).
// They run on the hart run() is executing. A fault or exit is never taken here:
// the helper undoes nothing because it changed nothing, and tells the caller to
// hand the instruction to the interpreter, which takes it precisely.

/** A load that missed the inline TLB check. JIT_BAIL = 1 when it cannot complete. */
export function jitLoad(va: u64, size: u32): u64 {
  const v = loadSlow(va, size);
  if (status != STATUS_OK) {
    clearStatus();
    store<u64>(H, 1, JIT_BAIL_OFF);
    return 0;
  }
  store<u64>(H, 0, JIT_BAIL_OFF);
  return v;
}

/** A store that missed the inline TLB check. Returns 0 when it is done;
 *  `bail` when it did nothing (the interpreter must run it: a fault, an MMIO
 *  exit...); `stop` when it is done but translated code must stop right after
 *  it (it overwrote translated code or reached HTIF tohost). `bail` and `stop`
 *  are the translator's exit codes for the two cases, opaque to the core. */
export function jitStore(va: u64, v: u64, size: u32, bail: i32, stop: i32): i32 {
  clearStoreKilledCode();
  storeSlow(va, v, size);
  if (status != STATUS_OK) {
    clearStatus();
    return bail;
  }
  return storeKilledCode || htifHit ? stop : 0;
}

/** One instruction translated code leaves to the interpreter's execute (FP,
 *  atomics, bit manipulation): see jitExecOne; 0, `bail` or `stop` as for jitStore. */
export function jitExec(insn: u32, pc: u64, len: u32, bail: i32, stop: i32): i32 {
  const r = jitExecOne(insn, pc, len);
  return r == 0 ? 0 : r == 1 ? bail : stop;
}

/** High half of a 128-bit product (no wasm instruction for it): kind 1 MULH,
 *  2 MULHSU, 3 MULHU (the funct3 values). */
export function jitMulh(a: u64, b: u64, kind: u32): u64 {
  return kind == 1 ? mulh(a, b) : kind == 2 ? mulhsu(a, b) : mulhu(a, b);
}
