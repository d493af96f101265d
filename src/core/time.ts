// The `time` CSR as the guest reads it, coherent across the harts of a VM.
//
// Each hart keeps its own copy of the platform timer (hart.ts TIME_OFF): the
// core advances it by one every TICK_INSNS retired instructions, and the host
// brings it forward to its clock between slices. Harts running side by side
// on different threads then drift apart by up to a slice, and a guest sees
// time go backwards when a thread migrates from one hart to another: Linux's
// vDSO clock_gettime reads `time` with rdtime on whichever hart it runs, and
// per-hart skew turned a 0.4 s computation into 0.000 s, then 1100 s.
//
// So a VM with more than one hart shares one u64 "time floor" (its address is
// in TIME_FLOOR_OFF; 0 = none, a single hart or deterministic bare-metal mode,
// where nothing changes). Every guest read of `time` returns
// t = max(local time, floor), raises the floor to t (compare-and-swap) and
// moves local time to t, so a read on any hart is never below a read another
// hart completed before it. (Unprivileged spec 20191213, 10.1: "The real-time
// clocks of all harts in a single user application should be synchronized to
// within one tick of the real-time clock.") The instruction-driven ticking
// stays as it is.

import { rd, wr, TIME_OFF, TIME_FLOOR_OFF } from "./hart";
import { requestIrqCheck } from "./trap";

/** What a guest read of `time` returns (rdtime, csrr time). */
export function guestTime(): u64 {
  const local = rd(TIME_OFF);
  const floor = <usize>rd(TIME_FLOOR_OFF);
  if (floor == 0) return local;
  let f = atomic.load<u64>(floor);
  while (f < local) {
    const seen = atomic.cmpxchg<u64>(floor, f, local);
    if (seen == f) return local;
    f = seen;
  }
  if (f > local) {
    wr(TIME_OFF, f);
    // A timer compare may have been passed.
    requestIrqCheck();
  }
  return f;
}

/** The host sets the time of hart block `h`: never backwards once a floor is
 *  shared (neither below what the hart had, nor below what any hart read). */
export function hostSetTime(h: usize, t: u64): void {
  const floor = <usize>load<u64>(h, TIME_FLOOR_OFF);
  if (floor != 0) {
    const local = load<u64>(h, TIME_OFF);
    if (t < local) t = local;
    const f = atomic.load<u64>(floor);
    if (t < f) t = f;
  }
  store<u64>(h, t, TIME_OFF);
}
