/* Isolation test, the owner of the secret: writes it over all of its RAM
 * (outside its own image), says "filled" and waits to be destroyed. */
#include "bare.h"
#include "secret.h"

void bare_secondary(long hartid, long opaque) { (void)hartid; (void)opaque; }

void bare_main(long hartid) {
  (void)hartid;
  uint64_t pattern = ~secret_seed;
  uint64_t words = 0;
  FOR_EACH_RAM_WORD(p) {
    *p = pattern;
    words++;
  }
  puts_("filled words=");
  put_u64(words);
  puts_("\n");
  for (;;) asm volatile("wfi"); /* sie is 0: sleeps for good */
}
