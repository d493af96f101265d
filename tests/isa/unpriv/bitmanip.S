/* Zba, Zbb, Zbs (bit-manipulation 1.0.0): every instruction. */
#include "test.h"
TEST_BEGIN
  /* Zba: shifted adds, .uw forms zero-extend rs1's low word */
  TEST_CASE(2, a0, 0x105, li a1, 0x80; li a2, 5; sh1add a0, a1, a2)
  TEST_CASE(3, a0, 0x205, li a1, 0x80; li a2, 5; sh2add a0, a1, a2)
  TEST_CASE(4, a0, 0x405, li a1, 0x80; li a2, 5; sh3add a0, a1, a2)
  TEST_CASE(5, a0, 0x100000000, li a1, -1; li a2, 1; add.uw a0, a1, a2)
  TEST_CASE(6, a0, 0x1ffffffff, li a1, 0xffffffffffffffff; li a2, 1; sh1add.uw a0, a1, a2)
  TEST_CASE(7, a0, 0x3fffffffd, li a1, 0x12345678ffffffff; li a2, 1; sh2add.uw a0, a1, a2)
  TEST_CASE(8, a0, 0x800000000, li a1, 0xf00000000; li a2, 0x800000000; sh3add.uw a0, a1, a2)
  TEST_CASE(9, a0, 0x1fffffffe, li a1, -1; slli.uw a0, a1, 1)
  /* Zbb: logic with negation */
  TEST_CASE(10, a0, 0xf0, li a1, 0xff; li a2, 0x0f; andn a0, a1, a2)
  TEST_CASE(11, a0, 0xfffffffffffffff0, li a1, 0; li a2, 0x0f; orn a0, a1, a2)
  TEST_CASE(12, a0, 0xffffffffffffff0f, li a1, 0xf0; li a2, 0; xnor a0, a1, a2)
  /* counts: clz/ctz of 0 are XLEN (or 32 for W forms) */
  TEST_CASE(13, a0, 64, clz a0, zero)
  TEST_CASE(14, a0, 11, li a1, 0x0010000000000000; clz a0, a1)
  TEST_CASE(15, a0, 64, ctz a0, zero)
  TEST_CASE(16, a0, 52, li a1, 0x0010000000000000; ctz a0, a1)
  TEST_CASE(17, a0, 64, li a1, -1; cpop a0, a1)
  TEST_CASE(18, a0, 32, clzw a0, zero)
  TEST_CASE(19, a0, 0, li a1, 0xffffffff80000000; clzw a0, a1)
  TEST_CASE(20, a0, 32, li a1, 0x100000000; ctzw a0, a1)
  TEST_CASE(21, a0, 16, li a1, 0xffff0000ffff0000; cpopw a0, a1)
  /* min/max signed and unsigned */
  TEST_CASE(22, a0, -1, li a1, -1; li a2, 1; min a0, a1, a2)
  TEST_CASE(23, a0, 1, li a1, -1; li a2, 1; minu a0, a1, a2)
  TEST_CASE(24, a0, 1, li a1, -1; li a2, 1; max a0, a1, a2)
  TEST_CASE(25, a0, -1, li a1, -1; li a2, 1; maxu a0, a1, a2)
  /* sign and zero extension */
  TEST_CASE(26, a0, -128, li a1, 0x1280; sext.b a0, a1)
  TEST_CASE(27, a0, -32768, li a1, 0x18000; sext.h a0, a1)
  TEST_CASE(28, a0, 0x8000, li a1, -32768; zext.h a0, a1)
  /* rotations, 64- and 32-bit (W forms sign-extend) */
  TEST_CASE(29, a0, 0x8000000000000001, li a1, 3; li a2, 1; ror a0, a1, a2)
  TEST_CASE(30, a0, 6, li a1, 3; li a2, 65; rol a0, a1, a2)
  TEST_CASE(31, a0, 0x8000000000000001, li a1, 3; rori a0, a1, 1)
  TEST_CASE(32, a0, 0xffffffff80000001, li a1, 3; roriw a0, a1, 1)
  TEST_CASE(33, a0, 0xffffffff80000000, li a1, 1; li a2, 31; rolw a0, a1, a2)
  TEST_CASE(34, a0, 0xffffffff80000000, li a1, 1; li a2, 1; rorw a0, a1, a2)
  /* byte operations */
  TEST_CASE(35, a0, 0xff00ff00000000ff, li a1, 0x0100800000000001; orc.b a0, a1)
  TEST_CASE(36, a0, 0x0807060504030201, li a1, 0x0102030405060708; rev8 a0, a1)
  /* Zbs: single bits, register and immediate forms, bit 0 and bit 63 */
  TEST_CASE(37, a0, 0x7fffffffffffffff, li a1, -1; li a2, 63; bclr a0, a1, a2)
  TEST_CASE(38, a0, 1, li a1, 0x8000000000000000; li a2, 63; bext a0, a1, a2)
  TEST_CASE(39, a0, 0x8000000000000001, li a1, 1; li a2, 127; binv a0, a1, a2)
  TEST_CASE(40, a0, 1, li a2, 0; bset a0, zero, a2)
  TEST_CASE(41, a0, -2, li a1, -1; bclri a0, a1, 0)
  TEST_CASE(42, a0, 0, li a1, 1; bexti a0, a1, 63)
  TEST_CASE(43, a0, 0x8000000000000000, binvi a0, zero, 63)
  TEST_CASE(44, a0, 0x8000000000000000, bseti a0, zero, 63)
TEST_END
