/* What the bare S-mode programs need: SBI calls (SBI spec v2.0), the virt
 * machine's 16550 UART for output, the time CSR. */
#ifndef BARE_H
#define BARE_H
#include <stdint.h>

#define UART_BASE 0x10000000UL
#define UART_THR 0
#define UART_LSR 5
#define LSR_THRE 0x20

struct sbiret { long error; long value; };

static inline struct sbiret sbi_call(long eid, long fid, long a0, long a1, long a2) {
  register long r0 asm("a0") = a0, r1 asm("a1") = a1, r2 asm("a2") = a2;
  register long r6 asm("a6") = fid, r7 asm("a7") = eid;
  asm volatile("ecall" : "+r"(r0), "+r"(r1) : "r"(r2), "r"(r6), "r"(r7) : "memory");
  return (struct sbiret){ r0, r1 };
}
#define SBI_EXT_IPI 0x735049
#define SBI_EXT_HSM 0x48534D
#define SBI_EXT_SRST 0x53525354

static inline uint64_t rdtime(void) {
  uint64_t t;
  asm volatile("rdtime %0" : "=r"(t));
  return t;
}

static inline void uart_putc(char c) {
  volatile uint8_t *u = (volatile uint8_t *)UART_BASE;
  while (!(u[UART_LSR] & LSR_THRE)) {}
  u[UART_THR] = (uint8_t)c;
}
static inline void puts_(const char *s) { while (*s) uart_putc(*s++); }
static inline void put_u64(uint64_t v) {
  char b[21];
  int i = 20;
  b[i] = 0;
  do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
  puts_(b + i);
}

/* Shut the machine down (SRST: shutdown, no reason): the VM's end is "poweroff". */
static inline void __attribute__((noreturn)) poweroff(void) {
  sbi_call(SBI_EXT_SRST, 0, 0, 0, 0);
  for (;;) asm volatile("wfi");
}

void bare_main(long hartid);
void bare_secondary(long hartid, long opaque);
extern char _secondary[];
#endif
