/* Reservation test guest: the hart takes an LR.D reservation, holds it for three
 * seconds of guest time (a snapshot is taken meanwhile), then tries the SC.D.
 * A hart restored from that snapshot must come back with its reservation
 * (the width of the LR included: A extension 8.2 pairs SC.D with LR.D) and
 * prints "sc=0" as the hart that was never stopped does. */
#include "bare.h"

#define TICKS_PER_SECOND 10000000UL

static volatile uint64_t word = 41;

void bare_secondary(long hartid, long opaque) { (void)hartid; (void)opaque; for (;;) asm volatile("wfi"); }

void bare_main(long hartid) {
  (void)hartid;
  uint64_t seen, failed;
  uint64_t start = rdtime();
  asm volatile("lr.d %0, (%1)" : "=r"(seen) : "r"(&word) : "memory");
  puts_("reserved\n");
  while (rdtime() < start + 3 * TICKS_PER_SECOND) {}
  asm volatile("sc.d %0, %2, (%1)" : "=r"(failed) : "r"(&word), "r"(seen + 1) : "memory");
  puts_("sc=");
  put_u64(failed);
  puts_(" word=");
  put_u64(word);
  puts_("\n");
  poweroff();
}
