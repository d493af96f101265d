/* Traps, delegation and CSR access rules (privileged spec 1.12: 3.1 CSRs,
 * 3.1.8 medeleg/mideleg, 3.3 xRET/WFI/ECALL, 4.1 S-mode CSRs).
 *
 * Harness: `to_s` / `to_u` enter S- or U-mode at the next instruction with
 * mret; the M-mode handler records mcause/mtval in s1/s2, then resumes at the
 * label held in s4 (in M-mode), so each case can check what trapped. S-mode
 * traps (delegated) record scause/stval/sstatus in s1/s2/s3 and resume at s4
 * in S-mode through sret. */
#include "test.h"

#define MSTATUS_MPP_MASK (3 << 11)
#define ENTER(mode_bits, label) \
  li t0, MSTATUS_MPP_MASK; csrc mstatus, t0; li t0, mode_bits; csrs mstatus, t0; \
  la t0, label; csrw mepc, t0; mret
/* Run `code` in mode (MPP bits), expect an M-mode trap with `cause`. */
#define EXPECT_M_TRAP(num, mode_bits, cause, code...) \
  li TESTNUM, num; li s1, -1; la s4, 8f; ENTER(mode_bits, 7f); 7: code; j fail; 8: \
  li t0, cause; bne s1, t0, fail

TEST_BEGIN
  la t0, mhandler; csrw mtvec, t0
  la t0, shandler; csrw stvec, t0
  /* misa: RV64 with I M A F D C S U (3.1.1) */
  TEST_CASE(2, a0, 0x800000000014112d, csrr a0, misa)
  TEST_CASE(3, a0, 0, csrr a0, mvendorid; csrr t0, marchid; or a0, a0, t0; csrr t0, mimpid; or a0, a0, t0; csrr t0, mhartid; or a0, a0, t0)
  /* WARL fields: MPP never reads the reserved value 2; UXL and SXL read 2 (64-bit) */
  TEST_CASE(4, a0, 0, li t0, MSTATUS_MPP_MASK; csrc mstatus, t0; li t0, 2 << 11; csrs mstatus, t0; csrr a0, mstatus; srli a0, a0, 11; andi a0, a0, 3; addi a0, a0, -2; seqz a0, a0)
  TEST_CASE(5, a0, 0xa, csrr a0, mstatus; srli a0, a0, 32; andi a0, a0, 0xf)
  /* medeleg bit 11 (ecall from M) is read-only zero; mideleg keeps SSIP/STIP/SEIP */
  TEST_CASE(6, a0, 0, li t0, 1 << 11; csrw medeleg, t0; csrr a0, medeleg)
  TEST_CASE(7, a0, 0x222, li t0, -1; csrw mideleg, t0; csrr a0, mideleg; csrw mideleg, zero)
  /* mepc bit 0 is always zero (IALIGN = 16) */
  TEST_CASE(8, a0, 0x1234, li t0, 0x1235; csrw mepc, t0; csrr a0, mepc)
  /* mtvec mode 2 and 3 are reserved: not kept */
  TEST_CASE(9, a0, 0, la t0, mhandler; ori t1, t0, 2; csrw mtvec, t1; csrr a0, mtvec; andi a0, a0, 3; csrw mtvec, t0)
  /* zero PMP entries: pmpcfg0 and pmpaddr0 read 0 even after writes */
  TEST_CASE(10, a0, 0, li t0, -1; csrw pmpcfg0, t0; csrw pmpaddr0, t0; csrr a0, pmpcfg0; csrr t1, pmpaddr0; or a0, a0, t1)
  /* satp writes with an unsupported MODE are ignored entirely (4.1.11) */
  TEST_CASE(11, a0, 0, csrw satp, zero; li t0, (1 << 60) | 5; csrw satp, t0; csrr a0, satp)

  /* ECALL from each mode: causes 8, 9, 11; mtval 0 */
  EXPECT_M_TRAP(12, 0 << 11, 8, ecall)
  EXPECT_M_TRAP(13, 1 << 11, 9, ecall)
  li TESTNUM, 14; li s1, -1; la s4, 1f; ecall; j fail; 1: li t0, 11; bne s1, t0, fail
  /* EBREAK: cause 3; mtval is its address (tsvisor) or 0, both allowed (3.1.16) */
  li TESTNUM, 15; li s1, -1; la s4, 2f; 1: ebreak; j fail; 2: li t0, 3; bne s1, t0, fail; beqz s2, 3f; la t0, 1b; bne s2, t0, fail; 3:
  /* Illegal instruction: mtval holds the instruction bits */
  li TESTNUM, 16; li s1, -1; la s4, 2f; 1: .word 0xffffffff; j fail; 2: li t0, 2; bne s1, t0, fail; li t0, 0xffffffff; bne s2, t0, fail
  /* A load where nothing is mapped: load access fault with mtval = address */
  li TESTNUM, 17; li s1, -1; la s4, 2f; li a1, 0x30000000; ld a0, 0(a1); j fail; 2: li t0, 5; bne s1, t0, fail; bne s2, a1, fail
  /* CSR privilege: M CSRs from S, S CSRs from U, writes to read-only CSRs */
  EXPECT_M_TRAP(18, 1 << 11, 2, csrr a0, mscratch)
  EXPECT_M_TRAP(19, 0 << 11, 2, csrr a0, sscratch)
  li TESTNUM, 20; li s1, -1; la s4, 2f; csrw mhartid, zero; j fail; 2: li t0, 2; bne s1, t0, fail
  li TESTNUM, 21; li s1, -1; la s4, 2f; csrr a0, 0x7a0; j fail; 2: li t0, 2; bne s1, t0, fail
  /* xRET and WFI privilege rules (3.3.2, 3.1.6.5) */
  EXPECT_M_TRAP(22, 1 << 11, 2, mret)
  EXPECT_M_TRAP(23, 0 << 11, 2, sret)
  EXPECT_M_TRAP(24, 0 << 11, 2, wfi)
  li t0, 1 << 22; csrs mstatus, t0        /* TSR: sret in S is illegal */
  EXPECT_M_TRAP(25, 1 << 11, 2, sret)
  li t0, 1 << 22; csrc mstatus, t0
  li t0, 1 << 20; csrs mstatus, t0        /* TVM: satp and sfence.vma in S are illegal */
  EXPECT_M_TRAP(26, 1 << 11, 2, csrr a0, satp)
  EXPECT_M_TRAP(27, 1 << 11, 2, sfence.vma)
  li t0, 1 << 20; csrc mstatus, t0
  li t0, 1 << 21; csrs mstatus, t0        /* TW: wfi in S is illegal */
  EXPECT_M_TRAP(28, 1 << 11, 2, wfi)
  li t0, 1 << 21; csrc mstatus, t0
  /* counters from S/U are gated by mcounteren and scounteren (3.1.11, 4.1.5) */
  csrw mcounteren, zero
  EXPECT_M_TRAP(29, 1 << 11, 2, rdcycle a0)
  li t0, 7; csrw mcounteren, t0; csrw scounteren, zero
  EXPECT_M_TRAP(30, 0 << 11, 2, rdtime a0)
  /* FS = Off makes FP instructions and fcsr illegal (3.1.6.6) */
  li t0, 3 << 13; csrc mstatus, t0
  li TESTNUM, 31; li s1, -1; la s4, 2f; fadd.d fa0, fa0, fa0; j fail; 2: li t0, 2; bne s1, t0, fail
  li TESTNUM, 32; li s1, -1; la s4, 2f; csrr a0, fcsr; j fail; 2: li t0, 2; bne s1, t0, fail
  /* writing FP state sets FS = Dirty and SD */
  li t0, 1 << 13; csrs mstatus, t0
  TEST_CASE(33, a0, 1, fmv.d.x fa0, zero; csrr a0, mstatus; srli a0, a0, 63)

  /* Delegation (3.1.8): with medeleg set, traps from S/U go to S-mode */
  li t0, (1 << 2) | (1 << 3) | (1 << 8); csrw medeleg, t0
  li TESTNUM, 34; li s1, -1; la s4, 2f; ENTER(0 << 11, 1f)
1: ecall                                  /* from U: delegated, scause 8, SPP = U */
  j fail
2: li t0, 8; bne s1, t0, fail; andi t0, s3, 1 << 8; bnez t0, fail
  li TESTNUM, 35; li s1, -1; la s4, 2f
  la t1, 3f; j 4f                         /* we are in S now: ebreak, delegated */
3: ebreak
  j fail
4: jr t1
2: li t0, 3; bne s1, t0, fail; andi t0, s3, 1 << 8; beqz t0, fail   /* SPP = S */
  /* back to M with an ecall from S (not delegated: bit 9 clear) */
  li TESTNUM, 36; li s1, -1; la s4, 2f; ecall; j fail
2: li t0, 9; bne s1, t0, fail
  /* in M-mode, a delegated cause still traps to M (delegation never lowers) */
  li TESTNUM, 37; li s1, -1; la s4, 2f; ebreak; j fail
2: li t0, 3; bne s1, t0, fail; csrr t0, scause; li t1, 3; bne t0, t1, fail
  csrw medeleg, zero
  /* MRET to U clears MPRV; MPP becomes U after any MRET (3.3.2) */
  li TESTNUM, 38
  li t0, 1 << 17; csrs mstatus, t0
  li s1, -1; la s4, 2f; ENTER(0 << 11, 1f)
1: ecall
2: csrr t0, mstatus; li t1, 1 << 17; and t0, t0, t1; bnez t0, fail
  /* more delegated causes, raised in S and handled in S with stval:
   * load/store access faults (5, 7), misaligned AMO (6) and LR (4) */
  li t0, (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7); csrw medeleg, t0
  li s1, -1; la s4, 1f; ENTER(1 << 11, 1f)
1: li TESTNUM, 39
  li s1, -1; la s4, 2f; li a1, 0x30000000; ld a0, 0(a1); j fail
2: li t0, 5; bne s1, t0, fail; bne s2, a1, fail
  li TESTNUM, 40
  li s1, -1; la s4, 2f; li a1, 0x30000000; sd a0, 0(a1); j fail
2: li t0, 7; bne s1, t0, fail; bne s2, a1, fail
  li TESTNUM, 41
  la a1, scratch; addi a1, a1, 1
  li s1, -1; la s4, 2f; amoadd.w a0, a0, (a1); j fail
2: ori s1, s1, 1; li t0, 7; bne s1, t0, fail   /* 6, or 7: both allowed (A spec 8.4) */
  li TESTNUM, 42
  li s1, -1; la s4, 2f; lr.w a0, (a1); j fail
2: ori s1, s1, 1; li t0, 5; bne s1, t0, fail   /* 4, or 5 */
  la s4, 3f; ecall                                /* not delegated: back to M */
3: csrw medeleg, zero
  j pass

  .balign 4
mhandler:
  csrr s1, mcause
  csrr s2, mtval
  csrw mepc, s4
  li t0, MSTATUS_MPP_MASK; csrs mstatus, t0   /* resume in M-mode */
  mret
  .balign 4
shandler:
  csrr s1, scause
  csrr s2, stval
  csrr s3, sstatus
  csrw sepc, s4
  li t0, 1 << 8; csrs sstatus, t0             /* resume in S-mode */
  sret
TEST_END
.data
.align 4
scratch: .zero 16
