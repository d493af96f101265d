/* A guest that echoes what it reads on the UART (its console), polling every
 * millisecond from WFI with a timer (no interrupt taken: sstatus.SIE stays
 * 0, a pending timer only ends the WFI). 'q' says "bye" and powers off.
 * The control plane's console tests type into it. */
#include "bare.h"

#define UART_RBR 0
#define UART_IER 1
#define LSR_DR 0x01
#define SBI_EXT_TIME 0x54494D45

void bare_secondary(long hartid, long opaque) { (void)hartid; (void)opaque; }

void bare_main(long hartid) {
  (void)hartid;
  volatile uint8_t *u = (volatile uint8_t *)UART_BASE;
  u[UART_IER] = 0x01; /* "received data available": the host feeds the UART only to a driver that listens */
  puts_("echo ready\n");
  asm volatile("csrs sie, %0" ::"r"(1UL << 5)); /* STIE: the timer may end a WFI */
  for (;;) {
    while (u[UART_LSR] & LSR_DR) {
      char c = (char)u[UART_RBR];
      if (c == 'q') {
        puts_("bye\n");
        poweroff();
      }
      uart_putc(c);
    }
    sbi_call(SBI_EXT_TIME, 0, (long)(rdtime() + 10000), 0, 0); /* 1 ms at 10 MHz */
    asm volatile("wfi");
  }
}
