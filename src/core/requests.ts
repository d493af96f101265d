// Requests from other threads to a hart that may be running on another worker
// thread (DESIGN.md, "The host layer": interrupt lines, IPIs and remote fences
// are requests posted to a vCPU's request word and noticed within a bounded
// time, also inside translated loops).
//
// The word (hart.ts REQ_OFF) is a u32 of REQ_* bits. Any thread sets bits with
// an atomic OR (postRequest, or Atomics.or on an Int32Array over the shared
// buffer); only the thread running the hart clears them, with one atomic
// exchange to 0, and acts on every bit it took. The hart polls the word with
// an atomic load (which the compiler may not hoist out of a loop):
//   - at run() entry, before the first instruction;
//   - in the interpreter loops at every tick boundary (TICK_INSNS instructions);
//   - between chained regions and after translated code returns;
//   - at WFI, before deciding to sleep (isa/system.ts);
//   - in translated code at every backward branch (translate.ts), which leaves
//     the region at the branch target as a budget end does.
// State only the hart's own thread may write (mip, the TLB) is changed here,
// on that thread, so it never races with the hart's own CSR writes or fills.

import { H, rd, wr, MIP_OFF, REQ_OFF, RUN_REASON_OFF } from "./hart";
import { tlbFlushAll } from "./tlb";
import { requestIrqCheck } from "./trap";
import { EXIT_KICK } from "./exit";

/** Re-check interrupts: an interrupt line or a mip input changed. */
export const REQ_IRQ: u32 = 1;
/** Set mip.SSIP (an IPI: SBI spec 7.1 sbi_send_ipi). */
export const REQ_SSIP: u32 = 2;
/** Flush the whole TLB (a remote SFENCE.VMA, or the p2m changed). */
export const REQ_TLB_FLUSH: u32 = 4;
/** End run() as soon as possible with EXIT_KICK (preempt or pause the vCPU). */
export const REQ_EXIT: u32 = 8;

const MIP_SSIP: u64 = 1 << 1;

/** Is any request waiting? One atomic load (a plain load on x86). */
@inline export function requestsPending(): bool {
  return atomic.load<u32>(H + <usize>REQ_OFF) != 0;
}

/** Take every waiting request and act on it; true when one was REQ_EXIT
 *  (the caller ends run() with EXIT_KICK, see kick()). */
export function takeRequests(): bool {
  const bits = atomic.xchg<u32>(H + <usize>REQ_OFF, 0);
  if ((bits & REQ_TLB_FLUSH) != 0) tlbFlushAll();
  if ((bits & REQ_SSIP) != 0) {
    wr(MIP_OFF, rd(MIP_OFF) | MIP_SSIP);
    requestIrqCheck();
  }
  if ((bits & REQ_IRQ) != 0) requestIrqCheck();
  return (bits & REQ_EXIT) != 0;
}

/** Record EXIT_KICK as the exit reason; returns it. */
export function kick(): i32 {
  store<i64>(H, <i64>EXIT_KICK, RUN_REASON_OFF);
  return EXIT_KICK;
}

/** Post `bits` to the hart block at `h` (from any thread). */
export function postRequestTo(h: usize, bits: u32): void {
  atomic.or<u32>(h + <usize>REQ_OFF, bits);
}

/** mip.SSIP as a waiting REQ_SSIP will set it (for the host's wakeup test of
 *  a hart that is not running). */
export function requestedSsip(h: usize): u64 {
  return (atomic.load<u32>(h + <usize>REQ_OFF) & REQ_SSIP) != 0 ? MIP_SSIP : 0;
}
