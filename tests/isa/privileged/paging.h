/* Virtual memory, the same program for Sv39, Sv48 and Sv57 (privileged spec
 * 1.12, 4.3-4.5). Include after defining LEVELS (3, 4, 5) and SATP_MODE
 * (8, 9, 10).
 *
 * Page tables: the root maps the test image 1:1 with one top-level superpage;
 * root[1] leads through one table per level to LEAF, a table of 4 KiB pages at
 * VA_TEST + i * 4096 with the permissions listed below, all backed by DPAGE
 * (whose first word is `ret`, so executable mappings can be called).
 * Faults go to M-mode (medeleg = 0): the handler records mcause/mtval in s1/s2
 * and resumes at s4 in the mode the trap came from. */
#include "test.h"

#define V 1
#define R 2
#define W 4
#define X 8
#define U 16
#define A 64
#define D 128
#define TOP_SHIFT (12 + 9 * (LEVELS - 1))
#define VA_TEST (1 << TOP_SHIFT)
#define PAGE(i) (VA_TEST + (i) * 4096)
#define MPP_MASK (3 << 11)

/* leaf i of LEAF (registers t0-t2 clobbered) */
#define SET_LEAF(i, flags, frame) \
  la t0, frame; srli t0, t0, 12; slli t0, t0, 10; ori t0, t0, flags; la t1, LEAF; sd t0, (i) * 8(t1)
/* expect `code` to fault with cause (mtval = addr) */
#define EXPECT_FAULT(num, cause, addr, code...) \
  li TESTNUM, num; li s1, -1; la s4, 8f; code; j fail; 8: li t0, cause; bne s1, t0, fail; li t0, addr; bne s2, t0, fail

TEST_BEGIN
  la t0, mhandler; csrw mtvec, t0
  /* root: identity superpage over the image, and root[1] -> first table */
  la a0, ROOT
  li t0, 0x80000000 >> TOP_SHIFT; andi t1, t0, 511; slli t1, t1, 3; add t1, a0, t1
  slli t0, t0, TOP_SHIFT; srli t0, t0, 12; slli t0, t0, 10; ori t0, t0, V|R|W|X|A|D; sd t0, 0(t1)
  la t2, TABLES
  srli t0, t2, 12; slli t0, t0, 10; ori t0, t0, V; sd t0, 8(a0)
  /* chain TABLES[0] -> TABLES[1] -> ... -> LEAF through entry 0 */
  li t3, LEVELS - 2
1: beqz t3, 2f
  li t5, 4096; add t4, t2, t5
  srli t0, t4, 12; slli t0, t0, 10; ori t0, t0, V; sd t0, 0(t2)
  mv t2, t4; addi t3, t3, -1; j 1b
2:
  /* the 4 KiB pages */
  SET_LEAF(0, V|R|A|D, DPAGE)
  SET_LEAF(1, V|R|W|A|D, DPAGE)
  SET_LEAF(2, V|X|A|D, DPAGE)
  SET_LEAF(3, V|R|W|X|A|D, DPAGE)
  SET_LEAF(4, V|W|A|D, DPAGE)           /* W without R: reserved */
  SET_LEAF(5, R|W|A|D, DPAGE)           /* V = 0 */
  SET_LEAF(6, V|R|W|U|A|D, DPAGE)       /* user page */
  SET_LEAF(8, V|R|W, DPAGE)             /* A = D = 0: the walk sets them */
  SET_LEAF(9, V|X|U|A|D, DPAGE)         /* user-executable data page */
  SET_LEAF(10, V|R|X|U|A|D, u_code)     /* the U-mode code */
  SET_LEAF(7, V|R|A|D, DPAGE)
  la t1, LEAF; ld t0, 7*8(t1); li t2, 1; slli t2, t2, 60; or t0, t0, t2; sd t0, 7*8(t1)  /* reserved bit 60 */
  /* a misaligned superpage: the level-1 entry 1 points to DPAGE as a leaf */
  la t1, LEAF; li t0, 4096; sub t1, t1, t0     /* the table above LEAF */
  la t0, DPAGE; srli t0, t0, 12; slli t0, t0, 10; ori t0, t0, V|R|W|A|D; sd t0, 8(t1)
  la t0, DPAGE; li t1, 0x00008067; sw t1, 0(t0)   /* ret */
  li t1, 0x1234; sd t1, 8(t0)
  /* written, not loaded with the image: an image page never written may be
   * a frame shared between VMs, which the TLB does not cache for loads, and
   * the SFENCE.VMA cases below need cached translations to be meaningful */
  la t0, DPAGE2; li t1, 0x5678; sd t1, 8(t0)
  /* satp, then S-mode */
  la t0, ROOT; srli t0, t0, 12; li t1, SATP_MODE; slli t1, t1, 60; or t0, t0, t1; csrw satp, t0
  sfence.vma
  TEST_CASE(2, a0, SATP_MODE, csrr a0, satp; srli a0, a0, 60)
  li t0, MPP_MASK; csrc mstatus, t0; li t0, 1 << 11; csrs mstatus, t0
  la t0, s_mode; csrw mepc, t0; mret
s_mode:
  /* 4.3.1 leaf permissions */
  TEST_CASE(3, a0, 0x1234, li t0, PAGE(0); ld a0, 8(t0))
  EXPECT_FAULT(4, 15, PAGE(0) + 16, li t0, PAGE(0); sd t0, 16(t0))
  TEST_CASE(5, a0, 77, li t0, PAGE(1); li t1, 77; sd t1, 16(t0); ld a0, 16(t0))
  EXPECT_FAULT(6, 13, PAGE(2) + 8, li t0, PAGE(2); ld a0, 8(t0))
  TEST_CASE(7, a0, 0x1234, li t0, 1 << 19; csrs sstatus, t0; li t0, PAGE(2); ld a0, 8(t0); li t0, 1 << 19; csrc sstatus, t0)  /* MXR */
  TEST_CASE(8, a0, 1, li t0, PAGE(3); jalr t0; li a0, 1)                    /* fetch from RWX */
  EXPECT_FAULT(9, 12, PAGE(0), li t0, PAGE(0); jalr t0)                     /* fetch from R */
  EXPECT_FAULT(10, 13, PAGE(4), li t0, PAGE(4); ld a0, 0(t0))               /* W without R */
  EXPECT_FAULT(11, 13, PAGE(5), li t0, PAGE(5); ld a0, 0(t0))               /* V = 0 */
  EXPECT_FAULT(12, 13, PAGE(7), li t0, PAGE(7); ld a0, 0(t0))               /* reserved bits */
  /* 4.3.1 SUM: S may touch U pages only with SUM; never execute them */
  EXPECT_FAULT(13, 13, PAGE(6), li t0, PAGE(6); ld a0, 0(t0))
  TEST_CASE(14, a0, 0x1234, li t0, 1 << 18; csrs sstatus, t0; li t0, PAGE(6); ld a0, 8(t0))
  EXPECT_FAULT(15, 12, PAGE(9), li t0, PAGE(9); jalr t0)
  li t0, 1 << 18; csrc sstatus, t0
  /* hardware A/D updates */
  TEST_CASE(16, a0, A, li t0, PAGE(8); ld a1, 0(t0); la t1, LEAF; ld a0, 8*8(t1); andi a0, a0, A|D)
  TEST_CASE(17, a0, A|D, li t0, PAGE(8); sd zero, 24(t0); la t1, LEAF; ld a0, 8*8(t1); andi a0, a0, A|D)
  /* a superpage whose PPN is not aligned faults (4.3.2 step 6) */
  EXPECT_FAULT(18, 13, VA_TEST + (1 << 21), li t0, VA_TEST + (1 << 21); ld a0, 0(t0))
  /* addresses that are not sign-extended from the top VA bit fault */
  EXPECT_FAULT(19, 13, 1 << (12 + 9 * LEVELS), li t0, 1 << (12 + 9 * LEVELS); ld a0, 0(t0))
  /* SFENCE.VMA makes a changed PTE visible: remap page 1 to DPAGE2 */
  li TESTNUM, 20
  SET_LEAF(1, V|R|W|A|D, DPAGE2)
  sfence.vma
  li t0, PAGE(1); ld a0, 8(t0); li t1, 0x5678; bne a0, t1, fail
  /* U-mode (code in a U|X page): user pages work, supervisor pages fault;
   * the fault returns to M-mode at u_done */
  li TESTNUM, 21
  li s1, -1; la s4, u_done
  li a0, 0; li t3, PAGE(6); li t4, PAGE(1)
  li t0, 1 << 8; csrc sstatus, t0          /* SPP = U */
  li t0, PAGE(10); csrw sepc, t0; sret
u_done:
  li t1, 0x1234; bne a0, t1, fail          /* the user page was readable */
  li TESTNUM, 22
  li t0, 13; bne s1, t0, fail              /* the supervisor page was not */
  li t0, PAGE(1); bne s2, t0, fail
  /* back in M: MPRV with MPP = S translates M's data accesses as S */
  li TESTNUM, 23
  li t0, MPP_MASK; csrc mstatus, t0; li t0, (1 << 11) | (1 << 17); csrs mstatus, t0
  li t0, PAGE(1); ld a0, 8(t0)
  li t0, 1 << 17; csrc mstatus, t0
  li t1, 0x5678; bne a0, t1, fail
  /* delegated page faults go to S with scause and stval (3.1.8) */
  li TESTNUM, 24
  la t0, shandler; csrw stvec, t0
  li t0, (1 << 12) | (1 << 13) | (1 << 15); csrw medeleg, t0
  li s1, -1; la s4, 1f
  li t0, MPP_MASK; csrc mstatus, t0; li t0, 1 << 11; csrs mstatus, t0
  la t0, 2f; csrw mepc, t0; mret
2: li t0, PAGE(5); ld a0, 0(t0); j fail
1: li t0, 13; bne s1, t0, fail; li t0, PAGE(5); bne s2, t0, fail
  li TESTNUM, 25
  li s1, -1; la s4, 1f; li t0, PAGE(0); sd a0, 0(t0); j fail
1: li t0, 15; bne s1, t0, fail
  li TESTNUM, 26
  li s1, -1; li t0, PAGE(2); jalr t0                      /* X-only page: the `ret` there runs */
  li t0, -1; bne s1, t0, fail
  li t0, PAGE(1); la s4, 3f; jalr t0; j fail              /* an RW page is not executable */
3: li t0, 12; bne s1, t0, fail; li t0, PAGE(1); bne s2, t0, fail
  /* SFENCE.VMA with an address (4.2.1), from S: a changed 4 KiB PTE is seen
   * after a fence naming its page */
  li TESTNUM, 27
  li t0, PAGE(1); ld a0, 8(t0)
  SET_LEAF(1, V|R|W|A|D, DPAGE)
  li t0, PAGE(1); sfence.vma t0, zero
  ld a0, 8(t0); li t1, 0x1234; bne a0, t1, fail
  /* ...and a superpage is gone for all its pages after a fence naming one:
   * root[3] aliases the image's superpage, two of its pages are read, it is
   * unmapped, the fence names the first page, the second must fault */
  li TESTNUM, 28
  la a2, ROOT; ld t0, ((0x80000000 >> TOP_SHIFT) & 511) * 8(a2); sd t0, 3 * 8(a2); sfence.vma
  li t2, (1 << TOP_SHIFT) - 1; li t5, 3 << TOP_SHIFT
  la t3, DPAGE; and t3, t3, t2; add t3, t3, t5
  la t4, DPAGE2; and t4, t4, t2; add t4, t4, t5
  ld a0, 8(t3); ld a1, 8(t4); li t1, 0x5678; bne a1, t1, fail
  sd zero, 3 * 8(a2)
  sfence.vma t3, zero
  li s1, -1; la s4, 9f; ld a1, 8(t4); j fail
9: li t0, 13; bne s1, t0, fail; addi t0, t4, 8; bne s2, t0, fail
  /* the same with 2 MiB superpages (entries 2.. of the table above LEAF, each
   * mapping the image's first 2 MiB), first one, then 18 of them at once */
  li TESTNUM, 29
  li a3, 2; li a4, 2; jal superpage_fence
  li TESTNUM, 30
  li a3, 2; li a4, 19; jal superpage_fence
  /* a changed PTE is seen after many fences in a row too (a TLB that tags its
   * entries with a count of flushes must not let an old one match again when
   * the count wraps) */
  li TESTNUM, 31
  li t0, PAGE(1); ld a0, 8(t0); li t1, 0x1234; bne a0, t1, fail
  SET_LEAF(1, V|R|W|A|D, DPAGE2)
  li t3, 64
1: sfence.vma; addi t3, t3, -1; bnez t3, 1b
  li t0, PAGE(1); ld a0, 8(t0); li t1, 0x5678; bne a0, t1, fail
  j pass

/* Map 2 MiB superpages at entries a3..a4 of the table above LEAF, touch two
 * pages of each (DPAGE's and the last one), unmap the last superpage, fence
 * its first page: its last must fault. */
superpage_fence:
  mv s5, ra
  la a2, LEAF; li t0, 4096; sub a2, a2, t0
  li t0, 0x80000000; srli t0, t0, 12; slli t0, t0, 10; ori t0, t0, V|R|W|A|D
  slli t1, a3, 3; add t1, a2, t1; slli t2, a4, 3; add t2, a2, t2
1: sd t0, 0(t1); addi t1, t1, 8; bleu t1, t2, 1b
  sfence.vma
  li t2, 0x80000000
  la t3, DPAGE; sub t3, t3, t2; li t4, (1 << 21) - 4096
  mv t6, a3
2: slli t5, t6, 21; li t0, VA_TEST; add t5, t5, t0
  add t0, t5, t3; ld a0, 8(t0); add t0, t5, t4; sd t6, 8(t0); ld a1, 8(t0); bne a1, t6, fail
  addi t6, t6, 1; bleu t6, a4, 2b
  add t3, t3, t5; add t4, t4, t5
  slli t2, a4, 3; add t2, a2, t2; sd zero, 0(t2)
  sfence.vma t3, zero
  li s1, -1; la s4, 9f; ld a1, 8(t4); j fail
9: li t0, 13; bne s1, t0, fail; addi t0, t4, 8; bne s2, t0, fail
  /* unmap the rest */
  slli t1, a3, 3; add t1, a2, t1; slli t2, a4, 3; add t2, a2, t2
3: sd zero, 0(t1); addi t1, t1, 8; bleu t1, t2, 3b
  sfence.vma
  mv ra, s5
  ret

  .balign 4
mhandler:
  csrr s1, mcause
  csrr s2, mtval
  /* a trap from U ends the U-mode part: continue in M (from S: stay in S) */
  csrr t0, mstatus; li t1, MPP_MASK; and t0, t0, t1; bnez t0, 1f
  csrs mstatus, t1
1: csrw mepc, s4
  mret
  .balign 4
shandler:
  csrr s1, scause
  csrr s2, stval
  csrw sepc, s4
  li t0, 1 << 8; csrs sstatus, t0   /* stay in S */
  sret
TEST_END

  .section .text.user, "ax"
  .balign 4096
u_code:                                    /* runs in U-mode at PAGE(10) */
  ld a0, 8(t3)
  ld a1, 0(t4)
1: j 1b

.data
.balign 4096
ROOT: .zero 4096
TABLES: .zero 4096 * (LEVELS - 2)
LEAF: .zero 4096
DPAGE: .zero 4096
DPAGE2: .zero 4096
