/* Interrupts (privileged spec 1.12: 3.1.6.1 global enables, 3.1.9 mip/mie and
 * priority, 3.3.3 WFI; Sstc for stimecmp). Time advances with executed
 * instructions, so the cases arm timers a few thousand ticks ahead and spin.
 * Handlers record the cause in s1 and return to the label in s4. */
#include "test.h"
#define CLINT_MSIP      0x02000000
#define CLINT_MTIMECMP  0x02004000
#define CLINT_MTIME     0x0200bff8
#define IRQ(c) (0x8000000000000000 | (c))
#define MPP_MASK (3 << 11)
/* Spin until the handler redirects to s4; bounded so a missing interrupt fails
 * the case instead of hanging (QEMU's timer runs on wall-clock time). */
#define WAIT_IRQ li t5, 20000000; 1: addi t5, t5, -1; bnez t5, 1b

TEST_BEGIN
  la t0, mhandler; csrw mtvec, t0
  la t0, shandler; csrw stvec, t0
  li t0, -1; li t1, CLINT_MTIMECMP; sd t0, 0(t1)

  /* machine timer: pending when mtime >= mtimecmp, taken with MIE and MTIE */
  li TESTNUM, 2
  li s1, -1; la s4, 3f
  li t1, CLINT_MTIME; ld t2, 0(t1); addi t2, t2, 500; li t1, CLINT_MTIMECMP; sd t2, 0(t1)
  li t0, 1 << 7; csrs mie, t0
  csrsi mstatus, 8
  WAIT_IRQ
3: csrci mstatus, 8
  li t0, IRQ(7); bne s1, t0, fail

  /* mip.MTIP follows the compare; not taken while MIE = 0 in M-mode */
  li TESTNUM, 3
  li s1, -1
  li t1, CLINT_MTIME; ld t2, 0(t1); li t1, CLINT_MTIMECMP; sd t2, 0(t1)   /* due now */
  csrr t0, mip; andi t0, t0, 1 << 7; beqz t0, fail
  li t5, 1000; 1: addi t5, t5, -1; bnez t5, 1b
  bgez s1, fail                       /* nothing taken */
  li t0, -1; li t1, CLINT_MTIMECMP; sd t0, 0(t1)
  csrr t0, mip; andi t0, t0, 1 << 7; bnez t0, fail

  /* machine software interrupt through the CLINT's msip */
  li TESTNUM, 4
  li s1, -1; la s4, 3f
  li t0, 1 << 3; csrs mie, t0
  li t1, CLINT_MSIP; li t0, 1; sw t0, 0(t1)
  csrsi mstatus, 8
  WAIT_IRQ
3: csrci mstatus, 8
  li t0, IRQ(3); bne s1, t0, fail

  /* priority: MSI before MTI when both are pending (3.1.9) */
  li TESTNUM, 5
  li s1, -1; la s4, 3f
  li t1, CLINT_MSIP; li t0, 1; sw t0, 0(t1)
  li t1, CLINT_MTIME; ld t2, 0(t1); li t1, CLINT_MTIMECMP; sd t2, 0(t1)
  csrsi mstatus, 8
  WAIT_IRQ
3: csrci mstatus, 8
  li t0, IRQ(3); bne s1, t0, fail
  li t0, -1; li t1, CLINT_MTIMECMP; sd t0, 0(t1)
  li t0, (1 << 7) | (1 << 3); csrc mie, t0

  /* WFI resumes when an enabled interrupt becomes pending, even with MIE = 0:
   * execution continues after the wfi, no trap (3.3.3) */
  li TESTNUM, 6
  li s1, -1
  li t1, CLINT_MTIME; ld t2, 0(t1); addi t2, t2, 300; li t1, CLINT_MTIMECMP; sd t2, 0(t1)
  li t0, 1 << 7; csrs mie, t0
  wfi
  bgez s1, fail
  csrr t0, mip; andi t0, t0, 1 << 7; beqz t0, fail
  li t0, 1 << 7; csrc mie, t0
  li t0, -1; li t1, CLINT_MTIMECMP; sd t0, 0(t1)

  /* supervisor software interrupt delegated to S, taken in S with SIE */
  li TESTNUM, 7
  li t0, 1 << 1; csrw mideleg, t0; csrs mie, t0
  li s1, -1; la s4, 3f
  li t0, MPP_MASK; csrc mstatus, t0; li t0, 1 << 11; csrs mstatus, t0
  la t0, 1f; csrw mepc, t0; mret
1: csrsi sstatus, 2                   /* S-mode: SIE on */
  csrsi sip, 2                        /* raise SSIP */
  WAIT_IRQ
3: li t0, IRQ(1); bne s1, t0, fail
  ecall                               /* back to M */
back_in_m_7:
  csrw mideleg, zero
  li t0, 1 << 1; csrc mie, t0; csrc mip, t0

  /* an S-level interrupt pending while in M-mode is not taken */
  li TESTNUM, 8
  li t0, 1 << 1; csrw mideleg, t0; csrs mie, t0; csrs mip, t0
  li s1, -1
  csrsi mstatus, 8
  li t5, 1000; 1: addi t5, t5, -1; bnez t5, 1b
  csrci mstatus, 8
  bgez s1, fail
  li t0, 1 << 1; csrc mip, t0; csrc mie, t0; csrw mideleg, zero

  /* Sstc: stimecmp drives STIP (menvcfg.STCE); delegated STI taken in S */
  li TESTNUM, 9
  li t0, 1; slli t0, t0, 63; csrs menvcfg, t0
  li t0, 7; csrw mcounteren, t0
  li t0, 1 << 5; csrw mideleg, t0; csrs mie, t0
  li s1, -1; la s4, 3f
  li t0, MPP_MASK; csrc mstatus, t0; li t0, 1 << 11; csrs mstatus, t0
  la t0, 1f; csrw mepc, t0; mret
1: rdtime t2; addi t2, t2, 400; csrw stimecmp, t2
  csrsi sstatus, 2
  WAIT_IRQ
3: li t0, IRQ(5); bne s1, t0, fail
  li t0, -1; csrw stimecmp, t0
  csrr t0, sip; andi t0, t0, 1 << 5; bnez t0, fail   /* STIP follows stimecmp */
  ecall
  j pass

  .balign 4
mhandler:
  csrr s1, mcause
  bltz s1, 1f
  /* an ecall from S returns to M-mode at the instruction after it */
  csrr t0, mepc; addi t0, t0, 4; csrw mepc, t0
  li t0, MPP_MASK; csrs mstatus, t0
  li s1, -1
  mret
1: csrw mepc, s4
  /* clear the sources so the handler is not re-entered */
  li t0, CLINT_MSIP; sw zero, 0(t0)
  li t0, -1; li t1, CLINT_MTIMECMP; sd t0, 0(t1)
  li t0, MPP_MASK; csrs mstatus, t0   /* resume in M, MIE stays as MPIE said */
  li t0, 1 << 7; csrc mstatus, t0     /* MPIE = 0: resume with MIE off */
  mret
  .balign 4
shandler:
  csrr s1, scause
  csrw sepc, s4
  csrci sip, 2                        /* (a pending STI stays: SPIE = 0 masks it) */
  li t0, 1 << 8; csrs sstatus, t0     /* stay in S */
  li t0, 1 << 5; csrc sstatus, t0     /* SPIE = 0: resume with SIE off */
  sret
TEST_END
