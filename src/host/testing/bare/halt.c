/* A guest whose only hart halts: WFI with every interrupt masked (sie = 0),
 * after saying "halted". Its vCPU must block and cost the host nothing. */
#include "bare.h"

void bare_secondary(long hartid, long opaque) { (void)hartid; (void)opaque; }

void bare_main(long hartid) {
  (void)hartid;
  puts_("halted\n");
  for (;;) asm volatile("wfi");
}
