/* Shootdown test guest: one hart spins reading a flag in a page while the
 * other, later, writes it. Both see the page as the snapshot left it: in a
 * VM restored from a snapshot taken after "ready", the reader's first touch
 * maps the clones' shared frame (and its TLB caches it), and the writer's
 * store breaks the sharing. The reader must see the store: it prints
 * "seen". A reader still holding the shared frame in its TLB
 * would spin for ever. It then waits to be destroyed. */
#include "bare.h"

#define FLAG_PAGE (0x80000000UL + (4UL << 20))
#define TICKS_PER_SECOND 10000000UL

static volatile uint64_t start;

void bare_secondary(long hartid, long opaque) {
  (void)hartid; (void)opaque;
  while (start == 0) {}
  volatile uint64_t *flag = (volatile uint64_t *)FLAG_PAGE;
  while (rdtime() < start + 2 * TICKS_PER_SECOND) {}
  flag[0] = 1;
  for (;;) asm volatile("wfi");
}

void bare_main(long hartid) {
  long other = hartid == 0 ? 1 : 0;
  volatile uint64_t *flag = (volatile uint64_t *)FLAG_PAGE;
  flag[0] = 0;
  flag[1] = 0x5eed; /* not all zero: the snapshot stores the page */
  if (sbi_call(SBI_EXT_HSM, 0, other, (long)_secondary, 0).error != 0) {
    puts_("no second hart\n");
    poweroff();
  }
  start = rdtime();
  puts_("ready\n");
  while (rdtime() < start + TICKS_PER_SECOND) {}
  while (flag[0] == 0) {}
  puts_("seen\n");
  for (;;) asm volatile("wfi");
}
