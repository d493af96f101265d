/* Floating-point values computed by C code: division, sqrt and fma in both
 * formats checked bit for bit against IEEE 754 results, conversions, and a
 * harmonic sum. Returns the number of the first failing check. */
typedef unsigned long uint64_t; typedef unsigned int uint32_t;
static volatile double vd[4] = {1.0, 3.0, 2.0, 1e308};
static volatile float vf[4] = {1.0f, 3.0f, 2.0f, 1e38f};
static uint64_t bits(double d) { union { double d; uint64_t u; } x = { d }; return x.u; }
static uint32_t fbits(float f) { union { float f; uint32_t u; } x = { f }; return x.u; }
int main(void) {
  if (bits(vd[0] / vd[1]) != 0x3FD5555555555555ull) return 2;
  if (fbits(vf[0] / vf[1]) != 0x3EAAAAABu) return 3;
  if (bits(__builtin_sqrt(vd[2])) != 0x3FF6A09E667F3BCDull) return 4;
  if (fbits(__builtin_sqrtf(vf[2])) != 0x3FB504F3u) return 5;
  if (bits(vd[3] * 10.0) != 0x7FF0000000000000ull) return 6;
  if (bits(__builtin_fma(vd[1], vd[0] / vd[1], -vd[0])) != 0xBC90000000000000ull) return 7; /* 3*(1/3)-1 = -2^-54 exactly */
  if ((long)(vd[1] * 2.5) != 7) return 8;
  if (bits((double)vf[1]) != 0x4008000000000000ull) return 9;
  if (fbits((float)(vd[0]/vd[1])) != 0x3EAAAAABu) return 10;
  double acc = 0; for (int i = 1; i <= 1000; i++) acc += 1.0 / i;
  if (acc < 7.48 || acc > 7.49) return 11;
  return 0;
}
