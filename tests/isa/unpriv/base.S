/* RV64I and M: arithmetic, shifts, W forms, branches, jumps, loads and stores
 * (unprivileged spec chapters 2, 5, 7). Each case names the rule it checks. */
#include "test.h"
TEST_BEGIN
  /* 2.4 ADDI/ADD wrap modulo 2^64; SUB */
  TEST_CASE(2, a0, 0x8000000000000000, li a1, 0x7fffffffffffffff; addi a0, a1, 1)
  TEST_CASE(3, a0, -3, li a1, 2; li a2, 5; sub a0, a1, a2)
  /* SLT/SLTU compare signed vs unsigned; SLTIU x, 1 is "seqz" */
  TEST_CASE(4, a0, 1, li a1, -1; li a2, 1; slt a0, a1, a2)
  TEST_CASE(5, a0, 0, li a1, -1; li a2, 1; sltu a0, a1, a2)
  TEST_CASE(6, a0, 1, li a1, 0; sltiu a0, a1, 1)
  /* Shifts use the low 6 bits of rs2 (RV64) */
  TEST_CASE(7, a0, 0x8000000000000000, li a1, 1; li a2, 63; sll a0, a1, a2)
  TEST_CASE(8, a0, 2, li a1, 1; li a2, 65; sll a0, a1, a2)
  TEST_CASE(9, a0, -1, li a1, 0x8000000000000000; srai a0, a1, 63)
  TEST_CASE(10, a0, 1, li a1, 0x8000000000000000; srli a0, a1, 63)
  TEST_CASE(11, a0, 0x123, li a1, 0x123; slli a0, a1, 0)
  /* 5.2 W forms: 32-bit result sign-extended; shifts use 5 bits */
  TEST_CASE(12, a0, 0xffffffff80000000, li a1, 0x7fffffff; addiw a0, a1, 1)
  TEST_CASE(13, a0, 0xffffffff80000000, li a1, 1; li a2, 31; sllw a0, a1, a2)
  TEST_CASE(14, a0, 2, li a1, 1; li a2, 33; sllw a0, a1, a2)
  TEST_CASE(15, a0, 0x7fffffff, li a1, 0xffffffff; srliw a0, a1, 1)
  TEST_CASE(16, a0, -1, li a1, 0x80000000; sraiw a0, a1, 31)
  TEST_CASE(17, a0, 0xffffffff80000000, li a1, 0x7fffffff; li a2, -1; subw a0, a1, a2)
  TEST_CASE(18, a0, 1, li a1, 0x100000001; addw a0, a1, zero)
  /* LUI sign-extends bit 31 on RV64; AUIPC adds to its own pc */
  TEST_CASE(19, a0, 0xffffffff80000000, lui a0, 0x80000)
  TEST_CASE(20, a0, 0, 1: auipc a1, 0; la a2, 1b; sub a0, a1, a2)
  /* Logic with sign-extended immediates */
  TEST_CASE(21, a0, 0xff00, li a1, 0xffff; andi a0, a1, -256)
  TEST_CASE(22, a0, -2, li a1, 1; xori a0, a1, -1)
  /* Branches: taken/not taken at signed/unsigned boundaries (2.5) */
  TEST_CASE(23, a0, 1, li a0, 0; li a1, -1; li a2, 0; blt a1, a2, 1f; j 2f; 1: li a0, 1; 2:)
  TEST_CASE(24, a0, 0, li a0, 0; li a1, -1; li a2, 0; bltu a1, a2, 1f; j 2f; 1: li a0, 1; 2:)
  TEST_CASE(25, a0, 1, li a0, 0; li a1, 5; li a2, 5; bge a1, a2, 1f; j 2f; 1: li a0, 1; 2:)
  TEST_CASE(26, a0, 1, li a0, 0; li a1, 0; li a2, -1; bgeu a2, a1, 1f; j 2f; 1: li a0, 1; 2:)
  TEST_CASE(27, a0, 0, li a0, 0; li a1, 3; beq a1, zero, 1f; j 2f; 1: li a0, 1; 2:)
  TEST_CASE(28, a0, 1, li a0, 0; li a1, 3; bne a1, zero, 1f; j 2f; 1: li a0, 1; 2:)
  /* JAL/JALR: link = pc + 4; JALR clears bit 0 of the target; rd == rs1 */
  TEST_CASE(29, a0, 0, jal a1, 1f; 1: la a2, 1b; sub a0, a1, a2)
  TEST_CASE(30, a0, 7, li a0, 0; la a1, 1f; addi a1, a1, 1; jalr a1, 0(a1); li a0, 99; 1: addi a0, a0, 7)
  TEST_CASE(31, a0, 0, la t0, 1f; jalr t0, 0(t0); 1: la a1, 1b; sub a0, t0, a1)
  /* Loads sign- or zero-extend; stores write only their width (2.6) */
  TEST_CASE(32, a0, -128, la a1, buf; li a2, 0x80; sb a2, 0(a1); lb a0, 0(a1))
  TEST_CASE(33, a0, 0x80, la a1, buf; lbu a0, 0(a1))
  TEST_CASE(34, a0, -2, la a1, buf; li a2, 0xfffe; sh a2, 2(a1); lh a0, 2(a1))
  TEST_CASE(35, a0, 0xfffe, la a1, buf; lhu a0, 2(a1))
  TEST_CASE(36, a0, 0xffffffff80000000, la a1, buf; li a2, 0x80000000; sw a2, 4(a1); lw a0, 4(a1))
  TEST_CASE(37, a0, 0x80000000, la a1, buf; lwu a0, 4(a1))
  TEST_CASE(38, a0, 0x80000000fffe0080, la a1, buf; ld a0, 0(a1))
  TEST_CASE(39, a0, 0x1122334455667788, la a1, buf; li a2, 0x1122334455667788; sd a2, 8(a1); ld a0, 8(a1))
  /* x0 ignores writes */
  TEST_CASE(40, a0, 0, li a1, 5; add zero, a1, a1; mv a0, zero)
  /* M (chapter 7): products, high parts, division corner cases (table 7.1) */
  TEST_CASE(41, a0, 0xfffffffffffffffe, li a1, -1; li a2, 2; mul a0, a1, a2)
  TEST_CASE(42, a0, -1, li a1, -1; li a2, 2; mulh a0, a1, a2)
  TEST_CASE(43, a0, 1, li a1, -1; li a2, 2; mulhu a0, a1, a2)
  TEST_CASE(44, a0, -1, li a1, -1; li a2, 2; mulhsu a0, a1, a2)
  TEST_CASE(45, a0, 0x4000000000000000, li a1, 0x8000000000000000; li a2, 0x8000000000000000; mulhu a0, a1, a2)
  TEST_CASE(46, a0, -1, li a1, 7; li a2, 0; div a0, a1, a2)
  TEST_CASE(47, a0, 7, li a1, 7; li a2, 0; rem a0, a1, a2)
  TEST_CASE(48, a0, -1, li a1, 7; li a2, 0; divu a0, a1, a2)
  TEST_CASE(49, a0, 7, li a1, 7; li a2, 0; remu a0, a1, a2)
  TEST_CASE(50, a0, 0x8000000000000000, li a1, 0x8000000000000000; li a2, -1; div a0, a1, a2)
  TEST_CASE(51, a0, 0, li a1, 0x8000000000000000; li a2, -1; rem a0, a1, a2)
  TEST_CASE(52, a0, -2, li a1, -7; li a2, 3; div a0, a1, a2)
  TEST_CASE(53, a0, -1, li a1, -7; li a2, 3; rem a0, a1, a2)
  TEST_CASE(54, a0, 0xffffffff80000000, li a1, 0x80000000; li a2, -1; divw a0, a1, a2)
  TEST_CASE(55, a0, 0, li a1, 0x80000000; li a2, -1; remw a0, a1, a2)
  TEST_CASE(56, a0, -1, li a1, 5; li a2, 0; divuw a0, a1, a2)
  TEST_CASE(57, a0, 5, li a1, 0x100000005; li a2, 0; remuw a0, a1, a2)
  TEST_CASE(58, a0, 0xfffffffffffffffe, li a1, 0x7fffffff; li a2, 0x100000002; mulw a0, a1, a2)
  /* Misaligned loads and stores complete (privileged spec 3.6.3.3 allows it) */
  TEST_CASE(59, a0, 0x0807060504030201, la a1, mis; ld a0, 1(a1))
  TEST_CASE(60, a0, 0x05040302, la a1, mis; lwu a0, 2(a1))
  TEST_CASE(61, a0, 0x0403, la a1, mis; lhu a0, 3(a1))
  TEST_CASE(62, a0, 0xaabbccdd, la a1, mis; li a2, 0xaabbccdd; sw a2, 5(a1); lwu a0, 5(a1))
  /* the misaligned store above left its neighbours (bytes 4 and 9) alone */
  TEST_CASE(63, a0, 0x0904, la a1, mis; lbu a0, 4(a1); lbu t0, 9(a1); slli t0, t0, 8; or a0, a0, t0)
  /* ... across a 4 KiB page boundary */
  TEST_CASE(64, a0, 0x1122334455667788, la a1, page_end; li a2, 0x1122334455667788; sd a2, -3(a1); ld a0, -3(a1))
  TEST_CASE(65, a0, 0x55667788, la a1, page_end; lwu a0, -3(a1))
  TEST_CASE(66, a0, 0x11223344, la a1, page_end; lwu a0, 1(a1))
TEST_END
.data
.align 4
buf: .zero 16
mis: .byte 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
.balign 4096
.zero 4092
.byte 0
page_end: .zero 64
