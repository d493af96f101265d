/* A first pass over the integer extensions: one case per group, so a broken
 * build or dispatch fails fast before the per-extension programs run. */
#include "test.h"
TEST_BEGIN
  TEST_CASE(2, a0, 42, li a0, 40; addi a0, a0, 2)
  TEST_CASE(3, a0, -1, li a0, 0; addi a0, a0, -1)
  TEST_CASE(4, a0, 0x7ffffffe80000000, li a1, 0x7fffffff; slli a0, a1, 32; li a2, 0x80000000; srli a2,a2,0; li t0,0xffffffff80000000; add a0,a0,t0; li t1, 1; slli t1,t1,32; sub a0,a0,t1; add a0,a0,t1)
  TEST_CASE(5, a0, 6, li a1, 2; li a2, 3; mul a0, a1, a2)
  TEST_CASE(6, a0, -1, li a1, 5; li a2, 0; div a0, a1, a2)
  TEST_CASE(7, a0, 1, la a1, data; li a2, 7; sw a2, 1(a1); lw a3, 1(a1); addi a0, a3, -6)
  TEST_CASE(8, a0, 3, la a1, data; li a2, 3; amoadd.d a3, a2, (a1); ld a0, 0(a1); sub a0, a0, a3; addi a0, a0, 0)
  TEST_CASE(9, a0, 0, la a1, data; lr.d a2, (a1); sc.d a0, a2, (a1))
  TEST_CASE(10, a0, 5, c.li a0, 5)
  TEST_CASE(11, a0, 64, li a1, 0; clz a0, a1)
  TEST_CASE(12, a0, 1, csrr a1, instret; csrr a2, instret; sub a0, a2, a1)
TEST_END
.data
.align 4
data: .dword 0, 0
