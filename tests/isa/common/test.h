/* Self-checking bare-metal test convention (the riscv-tests one).
 *
 * A test runs in M-mode from _start. It reports through HTIF: the 64-bit
 * `tohost` word gets 1 for pass, (N << 1) | 1 for "test case N failed".
 * tsvisor `run --bare` exits 0 on pass and N on failure.
 *
 * Use in a .S file:
 *   #include "test.h"
 *   TEST_BEGIN
 *     TEST_CASE(2, a0, 42, li a0, 40; addi a0, a0, 2)
 *   TEST_END
 * TESTNUM (gp) holds the current case number; `fail` reports it.
 * Any trap not expected by the test jumps to the default handler, which
 * reports failure of the current case. A test that expects traps installs
 * its own mtvec.
 */
#ifndef TSVISOR_TEST_H
#define TSVISOR_TEST_H

#define TESTNUM gp

#define MSTATUS_FS_INIT (1 << 13)

#define TEST_BEGIN                                   \
  .section .text.init;                               \
  .globl _start;                                     \
_start:                                              \
  la t0, __default_trap;                             \
  csrw mtvec, t0;                                    \
  li t0, MSTATUS_FS_INIT;                            \
  csrs mstatus, t0;                                  \
  csrwi fcsr, 0;                                     \
  /* Open all memory to S/U on harts that have PMP     \
   * entries (tsvisor has none: these writes are        \
   * ignored there; QEMU has 16). */                   \
  li t0, -1;                                         \
  csrw pmpaddr0, t0;                                 \
  li t0, 0x1f;                                       \
  csrw pmpcfg0, t0;                                  \
  la sp, __test_stack_top;                           \
  li TESTNUM, 0;                                     \
  j __test_body;                                     \
  .align 2;                                          \
__default_trap:                                      \
  j fail;                                            \
__test_body:

#define TEST_END                                     \
pass:                                                \
  fence;                                             \
  li t0, 1;                                          \
  la t1, tohost;                                     \
  sd t0, 0(t1);                                      \
1: j 1b;                                             \
fail:                                                \
  fence;                                             \
  slli t0, TESTNUM, 1;                               \
  ori t0, t0, 1;                                     \
  la t1, tohost;                                     \
  sd t0, 0(t1);                                      \
2: j 2b;                                             \
  .section .tohost, "aw", @progbits;                 \
  .align 6; .globl tohost; tohost: .dword 0;         \
  .size tohost, 8;                                   \
  .align 6; .globl fromhost; fromhost: .dword 0;     \
  .size fromhost, 8;                                 \
  .section .bss;                                     \
  .align 4;                                          \
  .space 8192;                                       \
__test_stack_top:                                    \
  .section .text

/* Run `code`, then compare register `reg` with `expected`. */
#define TEST_CASE(num, reg, expected, code...)       \
  li TESTNUM, num;                                   \
  code;                                              \
  li t6, expected;                                   \
  bne reg, t6, fail;

/* An M-mode trap handler at `label` that records mcause in s1 and resumes
 * after the trapping instruction, whatever its length (2 or 4 bytes).
 * Clobbers t0 and t1. */
#define SKIP_TRAP_HANDLER(label)                     \
  .balign 4;                                         \
label:                                               \
  csrr s1, mcause;                                   \
  csrr t0, mepc;                                     \
  lhu t1, 0(t0);                                     \
  andi t1, t1, 3;                                    \
  addi t0, t0, 2;                                    \
  addi t1, t1, -3;                                   \
  bnez t1, 9f;                                       \
  addi t0, t0, 2;                                    \
9: csrw mepc, t0;                                    \
  mret

#endif
