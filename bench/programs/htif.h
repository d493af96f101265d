/* HTIF console and exit for bare-metal programs (the spike / riscv-tests
 * convention: a 64-bit `tohost` word holding device << 56 | command << 48 |
 * payload). tsvisor `run --bare` implements the host side. */
#ifndef BENCH_HTIF_H
#define BENCH_HTIF_H
#include <stdint.h>
#include <stddef.h>

void htif_putchar(char c);
void htif_puts(const char *s);           /* no newline added */
void print_u64(uint64_t v);              /* decimal */
void print_hex(uint64_t v);              /* 0x... */
void print_fixed(double v, int decimals);/* -0.169087605 style */
void htif_exit(int code) __attribute__((noreturn));

/* The benchmark's one-line result, then its exit code. */
int report(const char *name, int ok);

void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);

/* A small deterministic PRNG (xorshift64) so inputs are the same every run. */
static inline uint64_t xorshift64(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13; x ^= x >> 7; x ^= x << 17;
  return *s = x;
}
#endif
