/* Isolation test, the other guest: reads all of its RAM (outside its own
 * image) looking for the secret, prints "scanned words=N found=M" and waits
 * to be destroyed. Reading untouched RAM makes the host back it with frames. */
#include "bare.h"
#include "secret.h"

void bare_secondary(long hartid, long opaque) { (void)hartid; (void)opaque; }

void bare_main(long hartid) {
  (void)hartid;
  uint64_t pattern = ~secret_seed;
  uint64_t words = 0, found = 0;
  FOR_EACH_RAM_WORD(p) {
    if (*p == pattern) found++;
    words++;
  }
  puts_("scanned words=");
  put_u64(words);
  puts_(" found=");
  put_u64(found);
  puts_("\n");
  for (;;) asm volatile("wfi");
}
