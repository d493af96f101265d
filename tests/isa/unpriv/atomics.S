/* A extension (unprivileged spec chapter 8): LR/SC success and failure rules,
 * every AMO in both widths, and misaligned atomics trapping. */
#include "test.h"
TEST_BEGIN
  la s0, mem
  /* 8.2: LR then SC to the same address succeeds (rd = 0) and stores */
  TEST_CASE(2, a0, 0, li t0, 5; sd t0, 0(s0); lr.d t1, (s0); li t2, 9; sc.d a0, t2, (s0))
  TEST_CASE(3, a0, 9, ld a0, 0(s0))
  /* SC without a reservation fails (rd != 0) and does not store */
  TEST_CASE(4, a0, 1, li t2, 11; sc.d a0, t2, (s0); snez a0, a0)
  TEST_CASE(5, a0, 9, ld a0, 0(s0))
  /* A second SC after a successful one fails: the reservation is gone */
  TEST_CASE(6, a0, 1, lr.d t1, (s0); sc.d t3, t1, (s0); sc.d a0, t1, (s0); snez a0, a0)
  /* SC to another address than the LR's fails */
  TEST_CASE(7, a0, 1, addi t4, s0, 8; lr.d t1, (s0); sc.d a0, t1, (t4); snez a0, a0)
  /* LR.W sign-extends; SC.W stores 32 bits */
  TEST_CASE(8, a0, 0xffffffff80000000, li t0, 0x80000000; sw t0, 16(s0); addi t4, s0, 16; lr.w a0, (t4))
  TEST_CASE(9, a0, 0x12345678, addi t4, s0, 16; lr.w t1, (t4); li t2, 0x12345678; sc.w t3, t2, (t4); lwu a0, 0(t4))
  /* AMOs return the old value and store op(old, rs2) (8.4) */
  TEST_CASE(10, a0, 0x12, li t0, 0x12; sd t0, 24(s0); addi t4, s0, 24; li t1, 0x34; amoswap.d a0, t1, (t4))
  TEST_CASE(11, a0, 0x34, ld a0, 24(s0))
  TEST_CASE(12, a0, 0x64, addi t4, s0, 24; li t1, 0x30; amoadd.d t2, t1, (t4); ld a0, 0(t4))
  TEST_CASE(13, a0, 0x60, addi t4, s0, 24; li t1, 0x04; amoxor.d t2, t1, (t4); ld a0, 0(t4))
  TEST_CASE(14, a0, 0x40, addi t4, s0, 24; li t1, 0xc0; amoand.d t2, t1, (t4); ld a0, 0(t4))
  TEST_CASE(15, a0, 0x4f, addi t4, s0, 24; li t1, 0x0f; amoor.d t2, t1, (t4); ld a0, 0(t4))
  /* min/max: signed and unsigned differ for negative values */
  TEST_CASE(16, a0, -5, addi t4, s0, 24; li t1, -5; amomin.d t2, t1, (t4); ld a0, 0(t4))
  TEST_CASE(17, a0, -5, addi t4, s0, 24; li t1, 3; amomaxu.d t2, t1, (t4); ld a0, 0(t4))
  TEST_CASE(18, a0, 3, addi t4, s0, 24; li t1, 3; amominu.d t2, t1, (t4); ld a0, 0(t4))
  TEST_CASE(19, a0, 7, addi t4, s0, 24; li t1, 7; amomax.d t2, t1, (t4); ld a0, 0(t4))
  /* .W forms: 32-bit memory, old value sign-extended */
  TEST_CASE(20, a0, 0xffffffffffffffff, addi t4, s0, 32; li t0, -1; sw t0, 0(t4); li t1, 1; amoadd.w a0, t1, (t4))
  TEST_CASE(21, a0, 0, lw a0, 32(s0))
  TEST_CASE(22, a0, 0xffffffff80000000, addi t4, s0, 32; li t0, 0x80000000; sw t0, 0(t4); li t1, 1; amomax.w t2, t1, (t4); lw a0, 0(t4); li t3, 1; bne a0, t3, fail; li t1, 0x80000000; amomaxu.w t2, t1, (t4); lw a0, 0(t4))
  TEST_CASE(23, a0, 1, addi t4, s0, 32; li t1, 1; amominu.w t2, t1, (t4); lw a0, 0(t4))
  TEST_CASE(24, a0, 0x5a, addi t4, s0, 32; li t1, 0x5a; amoswap.w t2, t1, (t4); amoor.w t2, zero, (t4); amoxor.w t2, zero, (t4); li t1, -1; amoand.w t2, t1, (t4); lw a0, 0(t4))
  TEST_CASE(25, a0, 0x5a, addi t4, s0, 32; li t1, -100; amomin.w t2, t1, (t4); mv a0, t2)
  /* Misaligned atomics trap (8.4). The spec allows either exception:
   * AMO/SC -> store/AMO address misaligned (6) or access fault (7),
   * LR -> load address misaligned (4) or access fault (5); mtval = address.
   * (tsvisor raises the misaligned ones; QEMU the access faults.) */
  la t0, trap; csrw mtvec, t0
  li TESTNUM, 26
  addi t4, s0, 2; li s1, 0; amoadd.w t2, t1, (t4)
  ori s1, s1, 1; li t0, 7; bne s1, t0, fail; csrr t0, mtval; bne t0, t4, fail
  li TESTNUM, 27
  addi t4, s0, 4; li s1, 0; lr.d t2, (t4)
  ori s1, s1, 1; li t0, 5; bne s1, t0, fail
  li TESTNUM, 28
  addi t4, s0, 1; li s1, 0; sc.w t2, t1, (t4)
  ori s1, s1, 1; li t0, 7; bne s1, t0, fail
  j pass
  SKIP_TRAP_HANDLER(trap)
TEST_END
.data
.align 4
mem: .zero 64
