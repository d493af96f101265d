/* Zicsr, Zicntr, Zifencei, Zihintpause (unprivileged spec chapters 3, 9, 10). */
#include "test.h"
TEST_BEGIN
  /* CSRRW returns the old value and writes the new one */
  TEST_CASE(2, a0, 5, li t0, 5; csrw mscratch, t0; li t1, 9; csrrw a0, mscratch, t1)
  TEST_CASE(3, a0, 9, csrr a0, mscratch)
  /* CSRRS/CSRRC set and clear bits */
  TEST_CASE(4, a0, 0xf9, li t0, 0xf0; csrrs zero, mscratch, t0; csrr a0, mscratch)
  TEST_CASE(5, a0, 0x09, li t0, 0xf0; csrrc a0, mscratch, t0; csrr a0, mscratch)
  /* immediate forms */
  TEST_CASE(6, a0, 0x1f, csrwi mscratch, 0x1f; csrr a0, mscratch)
  TEST_CASE(7, a0, 0x1b, csrci mscratch, 4; csrr a0, mscratch)
  TEST_CASE(8, a0, 0x1b, csrrsi a0, mscratch, 0)
  /* CSRRS with rs1 = x0 does not write: reading a read-only counter works (9.1) */
  TEST_CASE(9, a0, 1, csrrs a0, cycle, zero; snez a0, a0)
  /* instret counts retired instructions exactly: csrr, 3 addi, csrr */
  TEST_CASE(10, a0, 4, csrr t1, instret; addi t2, t2, 1; addi t2, t2, 1; addi t2, t2, 1; csrr t3, instret; sub a0, t3, t1)
  /* cycle and time never go backwards */
  TEST_CASE(11, a0, 1, rdcycle t1; rdcycle t2; sltu a0, t2, t1; xori a0, a0, 1)
  TEST_CASE(12, a0, 1, rdtime t1; li t0, 1000; 1: addi t0, t0, -1; bnez t0, 1b; rdtime t2; sltu a0, t1, t2)
  /* FENCE.I makes a stored instruction visible to fetch (Zifencei) */
  li TESTNUM, 13
  la t0, patch
  li t1, 0x02a00513        /* addi a0, zero, 42 */
  sw t1, 0(t0)
  fence.i
  li a0, 0
patch:
  .word 0x00100513         /* addi a0, zero, 1: a 32-bit slot to patch */
  li t0, 42
  bne a0, t0, fail
  /* PAUSE is a hint: it executes with no effect (Zihintpause) */
  TEST_CASE(14, a0, 3, li a0, 3; pause)
TEST_END
