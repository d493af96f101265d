/* Integer kernel: sieve of Eratosthenes up to 4,000,000 (one byte per odd
 * number, 2 MB), then a sort: heapsort of 200,000 pseudo-random 64-bit keys.
 * Self-check: pi(4,000,000) = 283,146 primes (a known value), and the sorted
 * array is ordered and has the same sum and xor as before sorting. */
#include "htif.h"

#define LIMIT 4000000
#define EXPECTED_PRIMES 283146
#define KEYS 200000

static uint8_t composite[LIMIT / 2];
static uint64_t keys[KEYS];

static uint64_t count_primes(void) {
  uint64_t count = 1; /* 2 */
  for (uint64_t i = 3; i * i < LIMIT; i += 2)
    if (!composite[i / 2])
      for (uint64_t j = i * i; j < LIMIT; j += 2 * i) composite[j / 2] = 1;
  for (uint64_t i = 3; i < LIMIT; i += 2) count += !composite[i / 2];
  return count;
}

static void sift_down(uint64_t *a, size_t start, size_t end) {
  size_t root = start;
  while (2 * root + 1 < end) {
    size_t child = 2 * root + 1;
    if (child + 1 < end && a[child] < a[child + 1]) child++;
    if (a[root] >= a[child]) return;
    uint64_t t = a[root]; a[root] = a[child]; a[child] = t;
    root = child;
  }
}

static void heapsort(uint64_t *a, size_t n) {
  for (size_t start = n / 2; start-- > 0;) sift_down(a, start, n);
  for (size_t end = n - 1; end > 0; end--) {
    uint64_t t = a[0]; a[0] = a[end]; a[end] = t;
    sift_down(a, 0, end);
  }
}

int main(void) {
  uint64_t primes = count_primes();
  int ok = primes == EXPECTED_PRIMES;

  uint64_t seed = 12345, sum = 0, x = 0;
  for (int i = 0; i < KEYS; i++) { keys[i] = xorshift64(&seed); sum += keys[i]; x ^= keys[i]; }
  heapsort(keys, KEYS);
  uint64_t sum2 = keys[0], x2 = keys[0];
  for (int i = 1; i < KEYS; i++) {
    ok &= keys[i - 1] <= keys[i];
    sum2 += keys[i];
    x2 ^= keys[i];
  }
  ok &= sum == sum2 && x == x2;
  htif_puts("primes below 4000000: ");
  print_u64(primes);
  htif_puts(", sorted 200000 keys\n");
  return report("sieve+sort", ok);
}
