/* A hostile guest for the starvation test: hart 0 sends IPIs to hart 1 as
 * fast as it can (each an SBI call the main thread serves), hart 1 takes them
 * with interrupts on, and hart 0 says "storm" once the first one arrived. */
#include "bare.h"

static volatile uint64_t taken;

void __attribute__((interrupt("supervisor"))) on_ipi(void) {
  asm volatile("csrc sip, %0" ::"r"(1UL << 1));
  taken = taken + 1;
}

void bare_secondary(long hartid, long opaque) {
  (void)hartid;
  (void)opaque;
  asm volatile("csrw stvec, %0" ::"r"((uintptr_t)on_ipi));
  asm volatile("csrs sie, %0" ::"r"(1UL << 1));
  asm volatile("csrs sstatus, %0" ::"r"(1UL << 1));
  for (;;) asm volatile("" ::: "memory");
}

void bare_main(long hartid) {
  long other = hartid == 0 ? 1 : 0;
  sbi_call(SBI_EXT_HSM, 0, other, (long)_secondary, 0);
  int said = 0;
  for (;;) {
    sbi_call(SBI_EXT_IPI, 0, 1L << other, 0, 0);
    if (!said && taken > 0) {
      puts_("storm\n");
      said = 1;
    }
  }
}
