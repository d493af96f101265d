// Hart state: one block of plain memory per hart, at an address the hypervisor
// chose inside the shared memory. The core never allocates; it works on the block
// `H` points at while `run()` executes. Keeping all state in memory (not in wasm
// globals) makes it plain data: a snapshot is a byte copy, and a worker thread
// can run any hart.

// ---- layout (byte offsets from H) -------------------------------------------
// The hypervisor reads these through the exported offset constants in index.ts.

export const X_OFF: u32 = 0; //          x0..x31, 8 bytes each
export const F_OFF: u32 = 256; //        f0..f31 raw bits (NaN-boxed for F)
export const PC_OFF: u32 = 512;
export const PRIV_OFF: u32 = 520; //     0 = U, 1 = S, 3 = M
export const FFLAGS_OFF: u32 = 528; //   accrued exceptions NV DZ OF UF NX (bits 4..0)
export const FRM_OFF: u32 = 536; //      dynamic rounding mode (0..7 stored, 5..7 illegal to use)

// Machine and supervisor CSRs (privileged spec 1.12, chapter 3 and 4).
export const MSTATUS_OFF: u32 = 544;
export const MEDELEG_OFF: u32 = 552;
export const MIDELEG_OFF: u32 = 560;
export const MIE_OFF: u32 = 568;
export const MIP_OFF: u32 = 576; //      software-writable bits only (SSIP, STIP, SEIP)
export const MTVEC_OFF: u32 = 584;
export const MSCRATCH_OFF: u32 = 592;
export const MEPC_OFF: u32 = 600;
export const MCAUSE_OFF: u32 = 608;
export const MTVAL_OFF: u32 = 616;
export const MCOUNTEREN_OFF: u32 = 624;
export const MENVCFG_OFF: u32 = 632;
export const MCOUNTINHIBIT_OFF: u32 = 640;
export const STVEC_OFF: u32 = 648;
export const SSCRATCH_OFF: u32 = 656;
export const SEPC_OFF: u32 = 664;
export const SCAUSE_OFF: u32 = 672;
export const STVAL_OFF: u32 = 680;
export const SCOUNTEREN_OFF: u32 = 688;
export const SENVCFG_OFF: u32 = 696;
export const SATP_OFF: u32 = 704;
export const STIMECMP_OFF: u32 = 712;
export const MTIMECMP_OFF: u32 = 720; // the ACLINT MTIMER compare of this hart
export const TIME_OFF: u32 = 728; //     the platform timer as this hart sees it
export const MCYCLE_OFF: u32 = 736;
export const MINSTRET_OFF: u32 = 744;
export const MHARTID_OFF: u32 = 752;

// Interrupt lines driven by devices outside the core (PLIC contexts, ACLINT MSWI).
export const LINE_MEIP_OFF: u32 = 760;
export const LINE_SEIP_OFF: u32 = 768;
export const LINE_MSIP_OFF: u32 = 776;

// LR/SC reservation (A extension, section 8.2).
export const RES_VALID_OFF: u32 = 784; // 0 none, 1 LR.W, 2 LR.D
export const RES_ADDR_OFF: u32 = 792; //  guest-physical address of the reserved doubleword/word
export const RES_VALUE_OFF: u32 = 800; // value observed by LR; SC is a compare-and-swap on it

// The VM's p2m as this hart uses it (see p2m.ts).
export const P2M_TABLE_OFF: u32 = 808; // host address of u32 entries
export const P2M_BASE_GFN_OFF: u32 = 816;
export const P2M_COUNT_OFF: u32 = 824;

// Hypervisor configuration of this hart.
export const SBI_MODE_OFF: u32 = 832; //    1: ECALL from S/U-mode-to-M is an SBI exit (no firmware)
export const HTIF_TOHOST_OFF: u32 = 840; // guest-physical address of `tohost`, 0 = none
export const TICK_INSNS_OFF: u32 = 848; //  instructions per timer tick (deterministic time)
export const TICK_LEFT_OFF: u32 = 856;

// Run record (like struct kvm_run): why run() returned and the data of that exit.
export const RUN_REASON_OFF: u32 = 864;
export const RUN_ADDR_OFF: u32 = 872; //  MMIO / p2m fault guest-physical address, HTIF: tohost addr
export const RUN_DATA_OFF: u32 = 880; //  MMIO write data, MMIO read result (filled by hypervisor), HTIF value
export const RUN_SIZE_OFF: u32 = 888; //  access size in bytes
export const RUN_WRITE_OFF: u32 = 896; // 0 read, 1 write, 2 instruction fetch (p2m faults)
export const RUN_MMIO_DONE_OFF: u32 = 904; // hypervisor sets 1 after filling RUN_DATA for a read
export const RUN_INSNS_OFF: u32 = 912; // instructions retired by the last run()

export const WAITING_OFF: u32 = 920; // 1 while the hart sits in WFI (set at the exit, cleared by run)

// The TLB contexts (tlb.ts) mirrored in memory for translated code, which reads
// them once on entry to compare against TLB tags inline.
export const CTX_FETCH_OFF: u32 = 928;
export const CTX_LOAD_OFF: u32 = 936;
export const CTX_STORE_OFF: u32 = 944;

// Binary translation (jit-cache.ts): the VM's translation cache (0 = JIT off),
// and the flag a slow-path helper raises when translated code must give the
// instruction back to the interpreter.
export const JIT_CACHE_OFF: u32 = 952;
export const JIT_BAIL_OFF: u32 = 960;
// Distinct superpages with TLB entries since the last full flush (tlb.ts):
// their count, TLB_SUPER_MAX + 1 once the list overflowed.
export const TLB_SUPER_FILLS_OFF: u32 = 968;

// Cross-thread requests (requests.ts): a u32 of REQ_* bits other threads set
// with an atomic OR while the hart may be running on another worker thread.
export const REQ_OFF: u32 = 976;
// 1 while the hart is inside run() (set and cleared by the thread that runs
// it, vcpu.ts and pcpu-worker.ts): a thread that posted REQ_TLB_FLUSH and
// must know the flush happened before it goes on (a store breaking a page's
// sharing, p2m.ts shootDownTlbs) waits only for harts inside run(); the
// others take the request at run() entry, before their first instruction.
// The u32 after the request word, in the same u64 slot.
export const IN_RUN_OFF: u32 = 980;
// Host address of the VM's shared u64 time floor (time.ts), 0 = none.
export const TIME_FLOOR_OFF: u32 = 984;
// Host address of the VM's dirty log (src/memory/dirty-log.ts), 0 = off: a
// bitmap of u32 words, one bit per page of the p2m window, that every p2m
// lookup for a write sets (p2m.ts). Kept across a hart reset.
export const DIRTY_LOG_OFF: u32 = 992;
// The access an MMIO completion (RUN_MMIO_DONE) belongs to: its address, and
// its size | write << 8. Kept apart from RUN_ADDR/RUN_SIZE/RUN_WRITE because
// re-executing the instruction may first stop for a p2m fault (its code page
// or a page-table page not mapped yet: a lazily restored snapshot, a page
// swapped out meanwhile), which reports its own address there; matching the
// completion against that would perform the device access a second time.
export const MMIO_KEY_ADDR_OFF: u32 = 1000;
export const MMIO_KEY_ACCESS_OFF: u32 = 1008;
// TLB generation (tlb.ts): part of every tag, so a full flush only counts up.
export const TLB_EPOCH_OFF: u32 = 1016;

// Software TLB (tlb.ts): three direct-mapped arrays (fetch, load, store).
export const TLB_OFF: u32 = 1024;
// 8192 entries map 32 MiB per array (448 KiB of hart block): programs that
// touch a few MiB at random (hash tables, pointer chasing) ran 2 to 8 times
// slower with 256, on page walks (bench:guest). A full flush costs nothing at
// any size (tlb.ts: epochs).
export const TLB_ENTRIES: u32 = 8192;
export const TLB_ENTRY_SIZE: u32 = 16;
export const TLB_ARRAY_SIZE: u32 = TLB_ENTRIES * TLB_ENTRY_SIZE;
export const TLB_FETCH_OFF: u32 = TLB_OFF;
export const TLB_LOAD_OFF: u32 = TLB_OFF + TLB_ARRAY_SIZE;
export const TLB_STORE_OFF: u32 = TLB_OFF + 2 * TLB_ARRAY_SIZE;

// Guest-physical page of each fetch TLB entry (same index), so the dispatcher
// can key translations by guest-physical address without a page walk.
export const TLB_FETCH_GPA_OFF: u32 = TLB_OFF + 3 * TLB_ARRAY_SIZE;

// The superpages the TLB holds entries from (tlb.ts): u64 each, the
// superpage's virtual address | its level (1 to 4).
export const TLB_SUPER_MAX: u32 = 16;
export const TLB_SUPER_LIST_OFF: u32 = TLB_FETCH_GPA_OFF + TLB_ENTRIES * 8;

export const HART_STATE_SIZE: u32 = TLB_SUPER_LIST_OFF + TLB_SUPER_MAX * 8;

// ---- the running hart ---------------------------------------------------------

/** Base address of the hart block that run() is executing. */
export let H: usize = 0;

export function setCurrentHart(h: usize): void {
  H = h;
}

@inline export function rd(off: u32): u64 {
  return load<u64>(H + <usize>off);
}
@inline export function wr(off: u32, v: u64): void {
  store<u64>(H + <usize>off, v);
}

// Integer registers. x0 reads as zero and ignores writes: we store it but never
// let a write land (setX filters), so reading it is a plain load.
@inline export function getX(i: u32): u64 {
  return load<u64>(H + ((<usize>i) << 3));
}
@inline export function setX(i: u32, v: u64): void {
  if (i != 0) store<u64>(H + ((<usize>i) << 3), v);
}

// Floating-point registers as raw bits. Writers must call markFsDirty() (fp code
// does that once per instruction), because mstatus.FS tracks FP state changes.
@inline export function getF(i: u32): u64 {
  return load<u64>(H + F_OFF + ((<usize>i) << 3));
}
@inline export function setF(i: u32, v: u64): void {
  store<u64>(H + F_OFF + ((<usize>i) << 3), v);
}

@inline export function getPriv(): u32 {
  return <u32>load<u64>(H, PRIV_OFF);
}

// ---- privilege levels, causes -------------------------------------------------

export const PRV_U: u32 = 0;
export const PRV_S: u32 = 1;
export const PRV_M: u32 = 3;

// Exception codes (privileged spec 1.12, table 3.6).
export const CAUSE_MISALIGNED_FETCH: u64 = 0;
export const CAUSE_FETCH_ACCESS: u64 = 1;
export const CAUSE_ILLEGAL_INSTRUCTION: u64 = 2;
export const CAUSE_BREAKPOINT: u64 = 3;
export const CAUSE_MISALIGNED_LOAD: u64 = 4;
export const CAUSE_LOAD_ACCESS: u64 = 5;
export const CAUSE_MISALIGNED_STORE: u64 = 6;
export const CAUSE_STORE_ACCESS: u64 = 7;
export const CAUSE_USER_ECALL: u64 = 8;
export const CAUSE_SUPERVISOR_ECALL: u64 = 9;
export const CAUSE_MACHINE_ECALL: u64 = 11;
export const CAUSE_FETCH_PAGE_FAULT: u64 = 12;
export const CAUSE_LOAD_PAGE_FAULT: u64 = 13;
export const CAUSE_STORE_PAGE_FAULT: u64 = 15;

// mstatus fields used across files.
export const MSTATUS_SIE: u64 = 1 << 1;
export const MSTATUS_MIE: u64 = 1 << 3;
export const MSTATUS_SPIE: u64 = 1 << 5;
export const MSTATUS_MPIE: u64 = 1 << 7;
export const MSTATUS_SPP: u64 = 1 << 8;
export const MSTATUS_MPP_SHIFT: u64 = 11;
export const MSTATUS_MPP: u64 = 3 << 11;
export const MSTATUS_FS_SHIFT: u64 = 13;
export const MSTATUS_FS: u64 = 3 << 13;
export const MSTATUS_MPRV: u64 = 1 << 17;
export const MSTATUS_SUM: u64 = 1 << 18;
export const MSTATUS_MXR: u64 = 1 << 19;
export const MSTATUS_TVM: u64 = 1 << 20;
export const MSTATUS_TW: u64 = 1 << 21;
export const MSTATUS_TSR: u64 = 1 << 22;
export const MSTATUS_UXL: u64 = 3 << 32; //  field masks
export const MSTATUS_SXL: u64 = 3 << 34;
/** UXL = SXL = 2: XLEN is 64 in U- and S-mode (read-only, spec 3.1.6.2). */
export const MSTATUS_XLEN64: u64 = (2 << 32) | (2 << 34);
export const MSTATUS_SD: u64 = 1 << 63;

// ---- instruction outcome --------------------------------------------------------
// An instruction either completes, raises a synchronous exception, or needs the
// hypervisor (a VM exit). Memory helpers report the last two through `status`, and
// every caller checks it before writing a destination register, so a faulting
// instruction has no architectural effect (precise traps).

export const STATUS_OK: i32 = 0;
export const STATUS_TRAP: i32 = 1;
export const STATUS_EXIT: i32 = 2;

export let status: i32 = STATUS_OK;
export let trapCause: u64 = 0;
export let trapTval: u64 = 0;

export function raise(cause: u64, tval: u64): void {
  status = STATUS_TRAP;
  trapCause = cause;
  trapTval = tval;
}

/** Illegal instruction; mtval/stval receive the instruction bits (spec 3.1.16). */
export function illegal(insn: u32): void {
  raise(CAUSE_ILLEGAL_INSTRUCTION, <u64>insn);
}

export function requestExit(): void {
  status = STATUS_EXIT;
}

export function clearStatus(): void {
  status = STATUS_OK;
}

// ---- FP state helpers (F/D extensions, mstatus.FS) -------------------------------

/** FP instructions and fcsr are illegal while mstatus.FS is Off (spec 3.1.6.6). */
@inline export function fsOff(): bool {
  return (rd(MSTATUS_OFF) & MSTATUS_FS) == 0;
}

/** Any write to f registers or fcsr makes the FP state Dirty (and SD set). */
@inline export function markFsDirty(): void {
  wr(MSTATUS_OFF, rd(MSTATUS_OFF) | MSTATUS_FS | MSTATUS_SD);
}

@inline export function accrueFflags(flags: u32): void {
  if (flags != 0) wr(FFLAGS_OFF, rd(FFLAGS_OFF) | <u64>flags);
}
