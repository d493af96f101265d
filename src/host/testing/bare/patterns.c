/* Overcommit test guest: writes known patterns over most of its RAM, waits
 * (so the host can share, compress and swap them out), then reads every page
 * back and checks it, writes into some of the pages that were shared, and
 * checks again. Each page i holds one of four kinds, so every mechanism has
 * something to do:
 *   i % 4 == 0: all zero                     (dropped: needs no frame)
 *   i % 4 == 1: the same bytes in every page (shared, across VMs too)
 *   i % 4 == 2: unique but compressible      (compressed)
 *   i % 4 == 3: pseudo-random                (swapped raw)
 * With two harts, hart h takes the pages with i % 2 == h. It prints
 * "written", then "done errors=N" and powers off. */
#include "bare.h"

#define RAM_BASE 0x80000000UL
#define RAM_BYTES (64UL << 20)
/* The image, stacks and .bss sit in the first 4 MiB. */
#define FIRST (RAM_BASE + (4UL << 20))
#define PAGES ((RAM_BASE + RAM_BYTES - FIRST) / 4096)
#define WORDS 512
/* Seconds to wait between writing and checking (the timebase is 10 MHz). */
#define WAIT_TICKS (3UL * 10000000UL)

static volatile uint64_t harts_done;
static volatile uint64_t phase;
static volatile uint64_t errors;

static uint64_t word(uint64_t i, uint64_t j, uint64_t seed) {
  switch (i % 4) {
    case 0: return 0;
    case 1: return 0x5ade5ade00000000ULL | j;
    case 2: return (i << 32) | (j & 7);
    default: {
      uint64_t x = (i * 0x9e3779b97f4a7c15ULL) ^ (j * 0xbf58476d1ce4e5b9ULL) ^ seed;
      x ^= x >> 31; x *= 0x94d049bb133111ebULL; x ^= x >> 29;
      return x;
    }
  }
}

/* After phase 2, pages of kind 1 with i % 8 == 1 carry their number in word 0. */
static uint64_t expected(uint64_t i, uint64_t j, uint64_t seed, int rewritten) {
  if (rewritten && i % 8 == 1 && j == 0) return i;
  return word(i, j, seed);
}

static const uint64_t seed = 0x1234567;

static void write_pages(long hart, long harts) {
  for (uint64_t i = (uint64_t)hart; i < PAGES; i += (uint64_t)harts) {
    volatile uint64_t *p = (volatile uint64_t *)(FIRST + i * 4096);
    for (uint64_t j = 0; j < WORDS; j++) p[j] = word(i, j, seed);
  }
  __atomic_fetch_add(&harts_done, 1, __ATOMIC_SEQ_CST);
}

static void check_pages(long hart, long harts) {
  uint64_t bad = 0;
  for (uint64_t i = (uint64_t)hart; i < PAGES; i += (uint64_t)harts) {
    volatile uint64_t *p = (volatile uint64_t *)(FIRST + i * 4096);
    for (uint64_t j = 0; j < WORDS; j++) if (p[j] != expected(i, j, seed, 0)) bad++;
    if (i % 8 == 1) p[0] = i; /* a store into a shared page: it gets its own copy */
  }
  for (uint64_t i = (uint64_t)hart; i < PAGES; i += (uint64_t)harts) {
    volatile uint64_t *p = (volatile uint64_t *)(FIRST + i * 4096);
    for (uint64_t j = 0; j < WORDS; j++) if (p[j] != expected(i, j, seed, 1)) bad++;
  }
  __atomic_fetch_add(&errors, bad, __ATOMIC_SEQ_CST);
  __atomic_fetch_add(&harts_done, 1, __ATOMIC_SEQ_CST);
}

void bare_secondary(long hartid, long opaque) {
  (void)opaque;
  write_pages(hartid, 2);
  while (phase < 1) {}
  check_pages(hartid, 2);
  for (;;) asm volatile("wfi");
}

void bare_main(long hartid) {
  long other = hartid == 0 ? 1 : 0;
  long harts = sbi_call(SBI_EXT_HSM, 0, other, (long)_secondary, 0).error == 0 ? 2 : 1;
  write_pages(hartid, harts);
  while (harts_done < (uint64_t)harts) {}
  puts_("written\n");
  uint64_t until = rdtime() + WAIT_TICKS;
  while (rdtime() < until) {}
  phase = 1;
  check_pages(hartid, harts);
  while (harts_done < 2 * (uint64_t)harts) {}
  puts_("done errors=");
  put_u64(errors);
  puts_("\n");
  poweroff();
}
