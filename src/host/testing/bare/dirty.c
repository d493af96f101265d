/* Live migration test guest: keeps dirtying its RAM while it is migrated.
 * Both harts write 32 MiB of pages (generation 0), print "written", then
 * for DIRTY_SECONDS by the guest clock rewrite the first 8 MiB of them over
 * and over, pass after pass, each pass with a new generation number. When
 * time is up each hart knows how far it got (its pass and page, kept in
 * registers), so it knows which generation every one of its pages must
 * hold: it checks every word of every page and the boot hart prints
 * "passes=N seconds=S" and "done errors=N", then powers off. A page whose last write was lost on the
 * way (not sent again after being dirtied) holds an older generation and
 * counts as errors. Hart h owns the pages with i % 2 == h. */
#include "bare.h"

#define RAM_BASE 0x80000000UL
#define FIRST (RAM_BASE + (4UL << 20))
#define PAGES ((32UL << 20) / 4096)
#define HOT_PAGES ((8UL << 20) / 4096)
#define WORDS 512
#define DIRTY_SECONDS 30UL
#define TICKS_PER_SECOND 10000000UL

static volatile uint64_t harts_done;
static volatile uint64_t errors;
static volatile uint64_t go;
static volatile uint64_t passes;

static uint64_t word(uint64_t i, uint64_t j, uint64_t gen) {
  uint64_t x = (i * 0x9e3779b97f4a7c15ULL) ^ (j * 0xbf58476d1ce4e5b9ULL) ^ (gen * 0x94d049bb133111ebULL);
  x ^= x >> 31; x *= 0xd6e8feb86659fd93ULL; x ^= x >> 32;
  return x;
}

static void fill(uint64_t i, uint64_t gen) {
  volatile uint64_t *p = (volatile uint64_t *)(FIRST + i * 4096);
  for (uint64_t j = 0; j < WORDS; j++) p[j] = word(i, j, gen);
}

static volatile uint64_t until_shared;

static void write_all(long hart, long harts) {
  for (uint64_t i = (uint64_t)hart; i < PAGES; i += (uint64_t)harts) fill(i, 0);
  __atomic_fetch_add(&harts_done, 1, __ATOMIC_SEQ_CST);
}

static void dirty_then_check(long hart, long harts) {
  /* Pass p writes generation p into each hot page of this hart, in order. */
  uint64_t pass = 1, at = (uint64_t)hart;
  while (rdtime() < until_shared) {
    fill(at, pass);
    at += (uint64_t)harts;
    if (at >= HOT_PAGES) {
      at = (uint64_t)hart;
      pass++;
    }
  }
  if (hart == 0) passes = pass;
  /* This hart's hot pages before `at` hold `pass`, the others pass - 1. */
  uint64_t bad = 0;
  for (uint64_t i = (uint64_t)hart; i < PAGES; i += (uint64_t)harts) {
    uint64_t gen = i >= HOT_PAGES ? 0 : i < at ? pass : pass - 1;
    volatile uint64_t *p = (volatile uint64_t *)(FIRST + i * 4096);
    for (uint64_t j = 0; j < WORDS; j++) if (p[j] != word(i, j, gen)) bad++;
  }
  __atomic_fetch_add(&errors, bad, __ATOMIC_SEQ_CST);
  __atomic_fetch_add(&harts_done, 1, __ATOMIC_SEQ_CST);
}

void bare_secondary(long hartid, long opaque) {
  (void)opaque;
  while (!until_shared) {}
  write_all(hartid, 2);
  while (!go) {}
  dirty_then_check(hartid, 2);
  for (;;) asm volatile("wfi");
}

void bare_main(long hartid) {
  long other = hartid == 0 ? 1 : 0;
  until_shared = rdtime() + (DIRTY_SECONDS + 2) * TICKS_PER_SECOND;
  long harts = sbi_call(SBI_EXT_HSM, 0, other, (long)_secondary, 0).error == 0 ? 2 : 1;
  write_all(hartid, harts);
  while (harts_done < (uint64_t)harts) {}
  puts_("written\n");
  go = 1;
  dirty_then_check(hartid, harts);
  while (harts_done < 2 * (uint64_t)harts) {}
  puts_("passes=");
  put_u64(passes);
  puts_(" seconds=");
  put_u64(rdtime() / TICKS_PER_SECOND);
  puts_("\ndone errors=");
  put_u64(errors);
  puts_("\n");
  poweroff();
}
