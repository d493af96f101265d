/* bench:host's latency probe, a bare S-mode kernel (src/host/testing/bare/).
 *  - MMIO exit round trip: hart 0 reads the UART's line status register, an
 *    exit the pCPU worker hands to the main thread, bracketed by rdtime (the
 *    worker brings `time` up to the host clock after every exit, so the
 *    second read is exact and the first one a few instructions late).
 *    Prints "mmio n= min= p50= p90= p99= max=" in 10 MHz ticks.
 *  - Device interrupt latency, measured by the host: hart 1 takes the UART's
 *    receive interrupt through the PLIC, while spinning in translated code
 *    (mode 0) or waiting in WFI (mode 1, its vCPU blocked). The handler
 *    counts in `probe` before anything else; the host injects a byte and
 *    times until the count moves. Hart 0 prints "ready <address of probe>"
 *    and parks.
 */
#include "bare.h"

#define MMIO_SAMPLES 20000

static uint32_t mmio[MMIO_SAMPLES];

static void sort(uint32_t *a, int n) {
  /* Shell sort: no libc here, and n is small. */
  for (int gap = n / 2; gap > 0; gap /= 2)
    for (int i = gap; i < n; i++) {
      uint32_t v = a[i];
      int j = i;
      for (; j >= gap && a[j - gap] > v; j -= gap) a[j] = a[j - gap];
      a[j] = v;
    }
}

static void report(const char *name, uint32_t *a, int n) {
  sort(a, n);
  puts_(name);
  puts_(" n=");
  put_u64((uint64_t)n);
  puts_(" min=");
  put_u64(a[0]);
  puts_(" p50=");
  put_u64(a[n / 2]);
  puts_(" p90=");
  put_u64(a[n * 9 / 10]);
  puts_(" p99=");
  put_u64(a[n * 99 / 100]);
  puts_(" max=");
  put_u64(a[n - 1]);
  puts_("\n");
}

#define PLIC 0x0c000000UL
#define UART_IRQ 10
#define UART_IER 1
#define UART_RBR 0
#define LSR_DR 0x01
/* PLIC context of hart 1's S-mode (QEMU virt numbering: 2 * hart + 1). */
#define CTX 3

static struct {
  volatile uint32_t irqs;  /* handler entries */
  volatile uint32_t done;  /* handler exits (claim completed) */
  volatile uint32_t mode;  /* 0: spin, 1: wait in WFI (the host writes it) */
  volatile uint32_t ready;
} __attribute__((aligned(16))) probe;
static volatile uint64_t spins;

static inline void w32(uintptr_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline uint32_t r32(uintptr_t a) { return *(volatile uint32_t *)a; }

void __attribute__((interrupt("supervisor"))) on_irq(void) {
  probe.irqs = probe.irqs + 1;
  asm volatile("fence w, rw" ::: "memory");
  uint32_t id = r32(PLIC + 0x200004 + 0x1000 * CTX); /* claim */
  volatile uint8_t *uart = (volatile uint8_t *)UART_BASE;
  while (uart[UART_LSR] & LSR_DR) (void)uart[UART_RBR];
  w32(PLIC + 0x200004 + 0x1000 * CTX, id); /* complete */
  probe.done = probe.done + 1;
}

void bare_secondary(long hartid, long opaque) {
  (void)hartid;
  (void)opaque;
  asm volatile("csrw stvec, %0" ::"r"((uintptr_t)on_irq));
  asm volatile("csrs sie, %0" ::"r"(1UL << 9)); /* SEIE */
  asm volatile("csrs sstatus, %0" ::"r"(1UL << 1)); /* SIE */
  probe.ready = 1;
  for (;;) {
    if (probe.mode) asm volatile("wfi");
    else spins = spins + 1;
  }
}

static void put_hex(uint64_t v) {
  puts_("0x");
  for (int s = 60; s >= 0; s -= 4) uart_putc("0123456789abcdef"[(v >> s) & 15]);
}

void bare_main(long hartid) {
  volatile uint8_t *uart = (volatile uint8_t *)UART_BASE;
  if (hartid != 0) {
    puts_("boot hart is not hart 0\n");
    poweroff();
  }
  for (int i = 0; i < MMIO_SAMPLES; i++) {
    uint64_t t0 = rdtime();
    (void)uart[UART_LSR];
    mmio[i] = (uint32_t)(rdtime() - t0);
  }
  report("mmio", mmio, MMIO_SAMPLES);

  /* The UART's receive interrupt to hart 1's S-mode, nowhere else. */
  w32(PLIC + 4 * UART_IRQ, 1);
  w32(PLIC + 0x2000 + 0x80 * CTX, 1u << UART_IRQ);
  w32(PLIC + 0x200000 + 0x1000 * CTX, 0);
  uart[UART_IER] = 1; /* ERBFI */
  if (sbi_call(SBI_EXT_HSM, 0, 1, (long)_secondary, 0).error != 0) {
    puts_("hart_start failed\n");
    poweroff();
  }
  while (!probe.ready) {}
  puts_("ready ");
  put_hex((uintptr_t)&probe);
  puts_("\n");
  for (;;) asm volatile("wfi"); /* sie is 0: this hart sleeps for good */
}
