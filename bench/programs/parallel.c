/* bench:host's SMP workload, a static riscv64 Linux program: THREADS threads
 * each run the same CPU-bound integer kernel (an xorshift generator feeding a
 * small hash table in the thread's own cache-sized array) for ROUNDS rounds,
 * with no sharing between them; the main thread times start to last join with
 * CLOCK_MONOTONIC and prints "parallel threads=T ms=M check=C". Perfect
 * scaling: T threads on T vCPUs take as long as one thread on one. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long rounds;

static void *work(void *arg) {
  uint64_t x = 0x9e3779b97f4a7c15ull ^ (uintptr_t)arg;
  static __thread uint32_t table[4096];
  uint64_t sum = 0;
  for (long r = 0; r < rounds; r++) {
    for (int i = 0; i < 4096; i++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      uint32_t slot = (uint32_t)(x >> 52);
      table[slot] += (uint32_t)x;
      sum += table[(slot * 2654435761u) >> 20 & 4095];
    }
  }
  return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 2;
  rounds = argc > 2 ? atol(argv[2]) : 2000;
  if (threads < 1 || threads > 64 || rounds < 1) {
    fprintf(stderr, "usage: parallel THREADS ROUNDS\n");
    return 2;
  }
  pthread_t t[64];
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, work, (void *)(uintptr_t)(i + 1));
  uint64_t check = 0;
  for (int i = 0; i < threads; i++) {
    void *r;
    pthread_join(t[i], &r);
    check ^= (uintptr_t)r;
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  long ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
  printf("parallel threads=%d ms=%ld check=%llx\n", threads, ms, (unsigned long long)check);
  return 0;
}
