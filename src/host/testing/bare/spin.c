/* A hostile guest for the starvation test: every hart spins forever with
 * interrupts off (sstatus.SIE = 0, sie = 0), never exits, never yields.
 * Hart 0 starts the others (SBI HSM) and says "spinning". */
#include "bare.h"

#define HARTS 2

void bare_secondary(long hartid, long opaque) {
  (void)hartid;
  (void)opaque;
  for (;;) asm volatile("" ::: "memory");
}

void bare_main(long hartid) {
  for (long h = 0; h < HARTS; h++)
    if (h != hartid) sbi_call(SBI_EXT_HSM, 0, h, (long)_secondary, 0);
  puts_("spinning\n");
  for (;;) asm volatile("" ::: "memory");
}
