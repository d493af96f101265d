// VM exit reasons: why run() handed control back to the hypervisor. The data of
// each exit sits in the run record (hart.ts RUN_* offsets), as in Linux KVM's
// struct kvm_run. The hypervisor handles the exit and calls run() again.

/** Instruction budget of this run() used up (a time slice ended). */
export const EXIT_BUDGET: i32 = 1;
/** Load from an address no p2m entry covers: the hypervisor supplies the data
 *  (RUN_DATA, then RUN_MMIO_DONE = 1) and the instruction is re-executed.
 *  RUN_MMIO_DONE = 2 instead says no device is there: the access faults. */
export const EXIT_MMIO_READ: i32 = 2;
/** Store to an address no p2m entry covers: RUN_DATA holds the value. The store
 *  instruction is re-executed with RUN_MMIO_DONE = 1 and then retires. */
export const EXIT_MMIO_WRITE: i32 = 3;
/** ECALL to the SBI (a hypercall). a0..a7 hold the call; pc is already past the
 *  ecall; the hypervisor writes a0/a1 (error, value) before resuming. */
export const EXIT_SBI: i32 = 4;
/** WFI with no interrupt pending; pc is past the wfi. */
export const EXIT_WFI: i32 = 5;
/** Guest-physical page inside the p2m window that is not mapped, or mapped
 *  read-only and written. RUN_ADDR/RUN_WRITE say which; the instruction restarts. */
export const EXIT_P2M_FAULT: i32 = 6;
/** A store reached the HTIF `tohost` doubleword; RUN_DATA holds its new value. */
export const EXIT_HTIF: i32 = 7;
/** The hart cannot continue (for example a trap vector that cannot be fetched
 *  keeps faulting); RUN_ADDR holds the pc. */
export const EXIT_HALT: i32 = 8;
/** Another thread posted REQ_EXIT to the hart (requests.ts): run() ended as
 *  soon as it noticed, at an instruction boundary (pc and RUN_INSNS exact). */
export const EXIT_KICK: i32 = 9;

// RUN_WRITE values for p2m faults.
export const ACCESS_READ: u64 = 0;
export const ACCESS_WRITE: u64 = 1;
export const ACCESS_FETCH: u64 = 2;

// RUN_MMIO_DONE values the hypervisor writes after an MMIO exit.
export const MMIO_COMPLETED: u64 = 1;
export const MMIO_NO_DEVICE: u64 = 2;
