/* Sv39 end to end: a gigapage identity map plus a 3-level walk to a 4 KiB page,
 * S-mode access through it, A/D set by the walk (spec 4.3.1), a store page
 * fault on a read-only page (cause 15), an M-mode CSR read from S (illegal),
 * and ecall from S (cause 9). */
#include "test.h"
#define PTE_V 1
#define PTE_R 2
#define PTE_W 4
#define PTE_X 8
#define PTE_U 16
#define PTE_A 64
#define PTE_D 128
TEST_BEGIN
  # root[2] = gigapage 0x80000000 RWX A D (identity); root[0] -> l1 table; l1[0] -> l0; l0[0] -> data page (RW, A=D=0), va 0x0
  la t0, root
  la t1, l1
  srli t1, t1, 12; slli t1, t1, 10; ori t1, t1, PTE_V; sd t1, 0(t0)
  li t1, (0x80000000 >> 12) << 10 | PTE_V|PTE_R|PTE_W|PTE_X|PTE_A|PTE_D; sd t1, 16(t0)
  la t0, l1; la t1, l0
  srli t1, t1, 12; slli t1, t1, 10; ori t1, t1, PTE_V; sd t1, 0(t0)
  la t0, l0; la t1, page
  srli t1, t1, 12; slli t1, t1, 10; ori t1, t1, PTE_V|PTE_R|PTE_W; sd t1, 0(t0)
  # page at va 0x1000: read-only
  la t1, page
  srli t1, t1, 12; slli t1, t1, 10; ori t1, t1, PTE_V|PTE_R|PTE_A; sd t1, 8(t0)
  la t0, root; srli t0, t0, 12; li t1, 8; slli t1, t1, 60; or t0, t0, t1; csrw satp, t0
  sfence.vma
  la t0, mtrap; csrw mtvec, t0
  # enter S at s_code
  li t0, 3<<11; csrc mstatus, t0; li t0, 1<<11; csrs mstatus, t0
  la t0, s_code; csrw mepc, t0
  mret
.option norvc
s_code:
  li TESTNUM, 2
  li a0, 0
  li a1, 77
  sd a1, 0(a0)
  ld a2, 0(a0)
  bne a1, a2, fail
  li TESTNUM, 3
  la t0, l0; ld t1, 0(t0); andi t1, t1, PTE_A|PTE_D; li t2, PTE_A|PTE_D; bne t1, t2, fail
  li TESTNUM, 4
  li a0, 0x1000
  ld a2, 0(a0)
  bne a1, a2, fail
  li TESTNUM, 5
  li s1, 0
  sd a1, 0(a0)       # store page fault -> M handler sets s1 = mcause, skips
  li t0, 15; bne s1, t0, fail
  li TESTNUM, 6
  csrr t0, mtval  # illegal in S -> trap; handler sets s1=2
  li t0, 2; bne s1, t0, fail
  ecall
.option rvc
.p2align 3
.option norvc
mtrap:
  csrr s1, mcause
  li t0, 9; beq s1, t0, pass
  csrr t0, mepc; addi t0, t0, 4; csrw mepc, t0
  mret
TEST_END
.data
.align 12
root: .zero 4096
l1: .zero 4096
l0: .zero 4096
page: .zero 4096
