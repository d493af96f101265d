/* C extension (unprivileged spec chapter 16): every RV64C instruction, each
 * written with its c. mnemonic so the assembler must emit the 16-bit form. */
#include "test.h"
TEST_BEGIN
  la s0, data
  /* CI/CSS-format stack-pointer forms use sp (x2) */
  mv s1, sp
  mv sp, s0
  TEST_CASE(2, a0, 0x1122334455667788, li t0, 0x1122334455667788; c.sdsp t0, 8(sp); c.ldsp a0, 8(sp))
  TEST_CASE(3, a0, 0xffffffff80000000, li t0, 0x80000000; c.swsp t0, 16(sp); c.lwsp a0, 16(sp))
  TEST_CASE(4, a0, 0x4000000000000000, li t0, 0x4000000000000000; fmv.d.x fa0, t0; c.fsdsp fa0, 24(sp); c.fldsp fa1, 24(sp); fmv.x.d a0, fa1)
  TEST_CASE(5, a0, 64, mv t1, sp; c.addi16sp sp, 64; sub a0, sp, t1; mv sp, t1)
  TEST_CASE(6, a0, 1, mv t1, sp; c.addi4spn a0, sp, 8; sub a0, a0, t1; srli a0, a0, 3)
  mv sp, s1
  /* CL/CS forms with x8..x15 */
  TEST_CASE(7, a0, 0x0102030405060708, li a1, 0x0102030405060708; c.sd a1, 32(s0); c.ld a0, 32(s0))
  TEST_CASE(8, a0, -2, li a1, -2; c.sw a1, 40(s0); c.lw a0, 40(s0))
  TEST_CASE(9, a0, 0x3ff0000000000000, li t0, 0x3ff0000000000000; fmv.d.x fa2, t0; c.fsd fa2, 48(s0); c.fld fa3, 48(s0); fmv.x.d a0, fa3)
  /* CI: c.li, c.lui (sign-extends), c.addi, c.addiw (sign-extends), c.slli */
  TEST_CASE(10, a0, -32, c.li a0, -32)
  TEST_CASE(11, a0, 0xfffffffffffe0000, c.lui a0, 0xfffe0)
  TEST_CASE(12, a0, 31, c.li a0, 0; c.addi a0, 31)
  TEST_CASE(13, a0, 0xffffffff80000000, li a0, 0x7fffffff; c.addiw a0, 1)
  TEST_CASE(14, a0, 0x8000000000000000, c.li a0, 1; c.slli a0, 63)
  /* CB: c.srli, c.srai, c.andi, c.beqz, c.bnez */
  TEST_CASE(15, a0, 1, li a0, 0x8000000000000000; c.srli a0, 63)
  TEST_CASE(16, a0, -1, li a0, 0x8000000000000000; c.srai a0, 63)
  TEST_CASE(17, a0, 0x10, li a0, 0x1f; c.andi a0, -16)
  TEST_CASE(18, a0, 2, c.li a0, 0; c.beqz a0, 1f; c.li a0, 9; 1: c.addi a0, 2)
  TEST_CASE(19, a0, 3, c.li a0, 1; c.bnez a0, 1f; c.li a0, 9; 1: c.addi a0, 2)
  /* CA: c.sub, c.xor, c.or, c.and, c.subw (sign-extends), c.addw */
  TEST_CASE(20, a0, -1, c.li a0, 1; c.li a1, 2; c.sub a0, a1)
  TEST_CASE(21, a0, 6, c.li a0, 5; c.li a1, 3; c.xor a0, a1)
  TEST_CASE(22, a0, 7, c.li a0, 5; c.li a1, 3; c.or a0, a1)
  TEST_CASE(23, a0, 1, c.li a0, 5; c.li a1, 3; c.and a0, a1)
  TEST_CASE(24, a0, 0x7fffffff, li a0, 0x80000000; c.li a1, 1; c.subw a0, a1)
  TEST_CASE(25, a0, 0xffffffff80000000, li a0, 0x7fffffff; c.li a1, 1; c.addw a0, a1)
  /* CR: c.mv, c.add, c.jr, c.jalr (link = pc + 2) */
  TEST_CASE(26, a0, 42, li a1, 42; c.mv a0, a1)
  TEST_CASE(27, a0, 50, li a0, 8; li a1, 42; c.add a0, a1)
  TEST_CASE(28, a0, 5, c.li a0, 5; la t0, 1f; c.jr t0; c.li a0, 9; 1:)
  TEST_CASE(29, a0, 2, la t0, 2f; 1: c.jalr t0; 2: la t1, 1b; sub a0, ra, t1)
  /* CJ: c.j */
  TEST_CASE(30, a0, 4, c.li a0, 4; c.j 1f; c.li a0, 9; 1:)
  /* c.nop; c.ebreak traps with mepc at the 2-byte instruction (cause 3) */
  TEST_CASE(31, a0, 7, c.li a0, 7; c.nop)
  la t0, trap; csrw mtvec, t0
  li TESTNUM, 32
  li s1, 0
  la s2, brk
brk: c.ebreak
  li t0, 3; bne s1, t0, fail
  bne s3, s2, fail
  /* A 32-bit instruction straddling a 4 KiB page boundary executes */
  li TESTNUM, 33
  call straddle
  li t0, 0x5a5; bne a0, t0, fail
  j pass
  .balign 4
trap:
  csrr s1, mcause
  csrr s3, mepc
  addi t0, s3, 2
  csrw mepc, t0
  mret
TEST_END
  .section .text
  .balign 4096
  .fill 2046, 2, 0x0001   /* c.nop up to the last halfword of the page */
straddle:
  li a0, 0x5a5            /* a 32-bit addi starting 2 bytes before the page end */
  ret
.data
.align 4
data: .zero 128
