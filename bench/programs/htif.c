#include "htif.h"

/* The host finds these through the ELF symbol table. */
volatile uint64_t tohost __attribute__((section(".tohost"), aligned(64)));
volatile uint64_t fromhost __attribute__((section(".tohost"), aligned(64)));

static void htif_send(uint64_t device, uint64_t command, uint64_t payload) {
  /* The host clears tohost once it has taken a request. */
  while (tohost != 0) {}
  tohost = (device << 56) | (command << 48) | payload;
}

void htif_putchar(char c) { htif_send(1, 1, (uint8_t)c); }

void htif_puts(const char *s) {
  while (*s) htif_putchar(*s++);
}

void print_u64(uint64_t v) {
  char buf[24];
  int i = 0;
  do { buf[i++] = (char)('0' + v % 10); v /= 10; } while (v);
  while (i) htif_putchar(buf[--i]);
}

void print_hex(uint64_t v) {
  htif_puts("0x");
  int started = 0;
  for (int shift = 60; shift >= 0; shift -= 4) {
    unsigned d = (v >> shift) & 15;
    if (d || started || shift == 0) { htif_putchar("0123456789abcdef"[d]); started = 1; }
  }
}

void print_fixed(double v, int decimals) {
  if (v < 0) { htif_putchar('-'); v = -v; }
  uint64_t scale = 1;
  for (int i = 0; i < decimals; i++) scale *= 10;
  uint64_t n = (uint64_t)(v * (double)scale + 0.5);
  print_u64(n / scale);
  htif_putchar('.');
  uint64_t frac = n % scale;
  for (uint64_t d = scale / 10; d; d /= 10) { htif_putchar((char)('0' + frac / d)); frac %= d; }
}

void htif_exit(int code) {
  while (tohost != 0) {}
  tohost = ((uint64_t)(unsigned)code << 1) | 1;
  for (;;) {}
}

int report(const char *name, int ok) {
  htif_puts(name);
  htif_puts(ok ? ": pass\n" : ": FAIL\n");
  return ok ? 0 : 1;
}

void trap_report(uint64_t cause, uint64_t epc, uint64_t tval) {
  htif_puts("unexpected trap: mcause ");
  print_hex(cause);
  htif_puts(" mepc ");
  print_hex(epc);
  htif_puts(" mtval ");
  print_hex(tval);
  htif_putchar('\n');
  htif_exit(99);
}

/* gcc may turn loops into calls to these even in freestanding code. */
void *memcpy(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  if ((((uintptr_t)d | (uintptr_t)s | n) & 7) == 0) {
    uint64_t *d8 = dst;
    const uint64_t *s8 = src;
    for (size_t i = 0; i < n / 8; i++) d8[i] = s8[i];
    return dst;
  }
  while (n--) *d++ = *s++;
  return dst;
}

void *memset(void *dst, int c, size_t n) {
  unsigned char *d = dst;
  while (n--) *d++ = (unsigned char)c;
  return dst;
}
