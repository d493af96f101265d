/* Memory kernel over buffers larger than the TLB reach: STREAM-style copy and
 * triad over 2 x 4 MiB of 64-bit words, memcpy of 4 MiB, then pointer chasing
 * through a 4 MiB random cycle (every load depends on the previous one).
 * Self-check: checksums of the copies match, and the chase visits every node
 * exactly once before returning to the start (Sattolo's algorithm builds a
 * single cycle). */
#include "htif.h"

#define WORDS (512 * 1024) /* 4 MiB of uint64_t */
#define ROUNDS 8
#define NODES (512 * 1024) /* 4 MiB of 8-byte links */

static uint64_t a[WORDS], b[WORDS], c[WORDS];
static uint64_t next[NODES];

static uint64_t checksum(const uint64_t *p, size_t n) {
  uint64_t s = 0;
  for (size_t i = 0; i < n; i++) s = s * 31 + p[i];
  return s;
}

int main(void) {
  uint64_t seed = 42;
  for (size_t i = 0; i < WORDS; i++) a[i] = xorshift64(&seed);
  uint64_t sum_a = checksum(a, WORDS);
  int ok = 1;

  for (int r = 0; r < ROUNDS; r++) {
    for (size_t i = 0; i < WORDS; i++) b[i] = a[i];                  /* copy */
    for (size_t i = 0; i < WORDS; i++) c[i] = b[i] + 3 * a[i];       /* triad */
    memcpy(a, b, sizeof a);                                          /* memcpy */
  }
  ok &= checksum(a, WORDS) == sum_a && checksum(b, WORDS) == sum_a;
  for (size_t i = 0; i < WORDS; i++) ok &= c[i] == 4 * a[i];

  /* Sattolo: a random permutation that is one cycle through all nodes. */
  for (size_t i = 0; i < NODES; i++) next[i] = i;
  for (size_t i = NODES - 1; i > 0; i--) {
    size_t j = xorshift64(&seed) % i;
    uint64_t t = next[i]; next[i] = next[j]; next[j] = t;
  }
  uint64_t p = 0, steps = 0;
  do { p = next[p]; steps++; } while (p != 0 && steps <= NODES);
  ok &= steps == NODES;
  for (int r = 0; r < ROUNDS - 1; r++)
    for (size_t s = 0; s < NODES; s++) p = next[p];
  ok &= p == 0;

  htif_puts("streamed 3 x 4 MiB x 8 rounds, chased ");
  print_u64(NODES * ROUNDS);
  htif_puts(" dependent loads\n");
  return report("memory", ok);
}
