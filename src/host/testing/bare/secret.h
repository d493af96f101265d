/* The isolation test's secret: 64 MiB of RAM per guest, filled with
 * ~secret_seed. The seed is volatile so the compiler cannot fold the
 * complement into the image: the pattern exists only where fill.c wrote it. */
#ifndef SECRET_H
#define SECRET_H
#include <stdint.h>
#define RAM_BASE 0x80000000UL
#define RAM_BYTES (64UL << 20)
static volatile uint64_t secret_seed = 0x5a17c0ffee15bad5ULL;
extern char _start[], _end[];
/* Visit every 8-byte word of RAM outside this program's own image. */
#define FOR_EACH_RAM_WORD(p)                                                         \
  for (volatile uint64_t *p = (volatile uint64_t *)RAM_BASE;                          \
       p < (volatile uint64_t *)(RAM_BASE + RAM_BYTES);                               \
       p = (p + 1 == (volatile uint64_t *)_start) ? (volatile uint64_t *)_end : p + 1)
#endif
