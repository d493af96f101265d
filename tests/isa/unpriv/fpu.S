/* F and D at the ISA level (unprivileged spec chapters 11, 12): NaN-boxing,
 * moves, sign injection, classify, compares and their flags, saturating
 * conversions, the fcsr views and reserved rounding modes. (Rounding of the
 * arithmetic itself is compared with IEEE 754 in src/core/fp/fp.test.mts.) */
#include "test.h"
#define FLAGS(reg) csrrw reg, fflags, zero
TEST_BEGIN
  /* 11.2 NaN-boxing: FLW and FMV.W.X box with ones; FMV.X.W sign-extends */
  TEST_CASE(2, a0, 0xffffffff3f800000, li t0, 0x3f800000; fmv.w.x fa0, t0; fmv.x.d a0, fa0)
  TEST_CASE(3, a0, 0xffffffffbf800000, la t0, words; flw fa0, 0(t0); fmv.x.d a0, fa0)
  TEST_CASE(4, a0, 0xffffffffbf800000, la t0, words; flw fa0, 0(t0); fmv.x.w a0, fa0)
  /* an improperly boxed single reads as the canonical NaN */
  TEST_CASE(5, a0, 0x7fc00000, li t0, 0x000000003f800000; fmv.d.x fa0, t0; fadd.s fa1, fa0, fa0; fmv.x.w a0, fa1; li t0, 0xffffffff; and a0, a0, t0)
  /* FSW stores the low 32 bits, FSD all 64 */
  TEST_CASE(6, a0, 0x3f800000, li t0, 0x3f800000; fmv.w.x fa0, t0; la t1, buf; fsw fa0, 0(t1); lwu a0, 0(t1))
  TEST_CASE(7, a0, 0x400921fb54442d18, li t0, 0x400921fb54442d18; fmv.d.x fa0, t0; la t1, buf; fsd fa0, 8(t1); ld a0, 8(t1))
  /* sign injection: FSGNJ, FSGNJN (fneg), FSGNJX (fabs via x^x) */
  TEST_CASE(8, a0, 0xbff0000000000000, li t0, 0x3ff0000000000000; fmv.d.x fa0, t0; fneg.d fa1, fa0; fmv.x.d a0, fa1)
  TEST_CASE(9, a0, 0x3ff0000000000000, li t0, 0xbff0000000000000; fmv.d.x fa0, t0; fabs.d fa1, fa0; fmv.x.d a0, fa1)
  TEST_CASE(10, a0, 0xbff0000000000000, li t0, 0x3ff0000000000000; fmv.d.x fa0, t0; li t1, 0x8000000000000000; fmv.d.x fa1, t1; fsgnj.d fa2, fa0, fa1; fmv.x.d a0, fa2)
  TEST_CASE(11, a0, 0x3ff0000000000000, li t0, 0xbff0000000000000; fmv.d.x fa0, t0; fmv.d.x fa1, t0; fsgnjx.d fa2, fa0, fa1; fmv.x.d a0, fa2)
  /* 11.9 FCLASS: one bit for each of the ten classes */
  TEST_CASE(12, a0, 1 << 0, li t0, 0xfff0000000000000; fmv.d.x fa0, t0; fclass.d a0, fa0)
  TEST_CASE(13, a0, 1 << 1, li t0, 0xbff0000000000000; fmv.d.x fa0, t0; fclass.d a0, fa0)
  TEST_CASE(14, a0, 1 << 2, li t0, 0x8000000000000001; fmv.d.x fa0, t0; fclass.d a0, fa0)
  TEST_CASE(15, a0, 1 << 3, li t0, 0x8000000000000000; fmv.d.x fa0, t0; fclass.d a0, fa0)
  TEST_CASE(16, a0, 1 << 4, fmv.d.x fa0, zero; fclass.d a0, fa0)
  TEST_CASE(17, a0, 1 << 5, li t0, 0x00000001; fmv.w.x fa0, t0; fclass.s a0, fa0)
  TEST_CASE(18, a0, 1 << 6, li t0, 0x3f800000; fmv.w.x fa0, t0; fclass.s a0, fa0)
  TEST_CASE(19, a0, 1 << 7, li t0, 0x7f800000; fmv.w.x fa0, t0; fclass.s a0, fa0)
  TEST_CASE(20, a0, 1 << 8, li t0, 0x7fa00000; fmv.w.x fa0, t0; fclass.s a0, fa0)
  TEST_CASE(21, a0, 1 << 9, li t0, 0x7fc00000; fmv.w.x fa0, t0; fclass.s a0, fa0)
  /* 11.8 compares: FEQ is quiet (NV only for sNaN), FLT/FLE signal on any NaN */
  li t0, 0x7ff8000000000000; fmv.d.x fs0, t0   /* qNaN */
  li t0, 0x7ff4000000000000; fmv.d.x fs1, t0   /* sNaN */
  li t0, 0x3ff0000000000000; fmv.d.x fs2, t0   /* 1.0 */
  TEST_CASE(22, a0, 0, csrw fflags, zero; feq.d a1, fs0, fs2; FLAGS(a0))
  TEST_CASE(23, a0, 0x10, csrw fflags, zero; feq.d a1, fs1, fs2; FLAGS(a0))
  TEST_CASE(24, a0, 0x10, csrw fflags, zero; flt.d a1, fs0, fs2; FLAGS(a0))
  TEST_CASE(25, a0, 0, csrw fflags, zero; fle.d a0, fs0, fs2)
  TEST_CASE(26, a0, 1, fle.d a0, fs2, fs2)
  /* FMIN/FMAX: a NaN operand gives the other; -0 < +0 */
  TEST_CASE(27, a0, 0x3ff0000000000000, fmin.d fa0, fs0, fs2; fmv.x.d a0, fa0)
  TEST_CASE(28, a0, 0x8000000000000000, li t0, 0x8000000000000000; fmv.d.x fa1, t0; fmv.d.x fa2, zero; fmin.d fa0, fa2, fa1; fmv.x.d a0, fa0)
  TEST_CASE(29, a0, 0, li t0, 0x8000000000000000; fmv.d.x fa1, t0; fmv.d.x fa2, zero; fmax.d fa0, fa1, fa2; fmv.x.d a0, fa0)
  TEST_CASE(30, a0, 0x7ff8000000000000, fmax.d fa0, fs0, fs1; fmv.x.d a0, fa0)
  /* 11.7 conversions saturate and raise NV (not NX) when out of range */
  TEST_CASE(31, a0, 0x7fffffff, csrw fflags, zero; fcvt.w.d a0, fs0, rtz)
  TEST_CASE(32, a0, 0x10, FLAGS(a0))
  TEST_CASE(33, a0, 0xffffffff80000000, li t0, 0xc1e0000000200000; fmv.d.x fa0, t0; fcvt.w.d a0, fa0, rtz)
  TEST_CASE(34, a0, 0x7fffffff, li t0, 0x41e0000000000000; fmv.d.x fa0, t0; fcvt.w.d a0, fa0, rtz)
  TEST_CASE(35, a0, 0, li t0, 0xbff0000000000000; fmv.d.x fa0, t0; fcvt.lu.d a0, fa0, rtz)
  TEST_CASE(36, a0, 0xffffffffffffffff, li t0, 0x7ff0000000000000; fmv.d.x fa0, t0; fcvt.lu.d a0, fa0, rtz)
  TEST_CASE(37, a0, 0xffffffffffffffff, li t0, 0x4f800000; fmv.w.x fa0, t0; fcvt.wu.s a0, fa0, rtz)
  TEST_CASE(38, a0, 0x01, csrw fflags, zero; li t0, 0x3fe0000000000000; fmv.d.x fa0, t0; fcvt.l.d a1, fa0, rtz; FLAGS(a0))
  /* exceptions: DZ, invalid sqrt */
  TEST_CASE(39, a0, 0x08, csrw fflags, zero; fmv.d.x fa1, zero; fdiv.d fa0, fs2, fa1; FLAGS(a0))
  TEST_CASE(40, a0, 0x7ff8000000000000, csrw fflags, zero; li t0, 0xbff0000000000000; fmv.d.x fa0, t0; fsqrt.d fa0, fa0; fmv.x.d a0, fa0)
  TEST_CASE(41, a0, 0x10, FLAGS(a0))
  /* 11.2 fcsr = frm << 5 | fflags */
  TEST_CASE(42, a0, 0x1f, csrwi fcsr, 0; li t0, 0x7f; csrw fcsr, t0; csrr a0, fflags)
  TEST_CASE(43, a0, 3, csrr a0, frm)
  TEST_CASE(44, a0, 0x41, csrwi fcsr, 0; csrwi frm, 2; csrsi fflags, 1; csrr a0, fcsr)
  csrwi fcsr, 0
  /* reserved rounding modes are illegal: static 5 and 6, dynamic with frm > 4 */
  la t0, trap; csrw mtvec, t0
  li TESTNUM, 45
  li s1, 0
  .word 0x02b55553          /* fadd.d fa0, fa0, fa1 with rm = 5 */
  li t0, 2; bne s1, t0, fail
  li TESTNUM, 46
  li s1, 0
  csrwi frm, 5
  fadd.d fa0, fa0, fa1      /* rm = dyn */
  li t0, 2; bne s1, t0, fail
  csrwi frm, 0
  j pass
  SKIP_TRAP_HANDLER(trap)
TEST_END
.data
.align 4
words: .word 0xbf800000, 0
buf: .zero 16
