// SMP correctness check for the Debian guest (src/host/smp-guest.test.ts):
// more threads than vCPUs hammer shared memory with every kind of atomic
// operation RISC-V Linux programs use, and every final count must be exact.
// A static riscv64 Linux program (riscv64-linux-gnu-gcc -static -pthread); it
// reaches the guest as `tsvisor run`'s stdin (/tsvisor/stdin).
//
//   smp [-r ROUNDS] [-t THREADS] [-c CHECK]
//
// Checks, one phase each (all threads start together at a barrier):
//   amo-add        __atomic_fetch_add/sub, relaxed and seq_cst, 32 and 64 bit
//                  (amoadd.w/.d, with .aqrl), across the 32-bit sign boundary
//                  and with carries from the low into the high word
//   amo-minmax     amomax/amomaxu/amomin/amominu .w and .d: signed values that
//                  cross zero, unsigned ones that cross the sign bit; each
//                  thread checks that the value returned never goes below
//                  (above, for min) what it stored itself before, and the
//                  steps the threads saw (new - old) must add up to
//                  final - initial, which any lost update breaks
//   amo-logic      amoxor .w/.d (final XOR of all operands) and amoor/amoand
//                  .w/.d on bits each thread owns: the old value returned must
//                  show the thread's own bit exactly as it left it
//   amo-swap-lock  a spinlock taken with amoswap.w.aq, released with
//                  amoswap.w.rl, around plain increments
//   lrsc-add       lr.d/sc.d and lr.w.aq/sc.w.rl retry loops; one counter
//                  updated by lr/sc and amoadd.d at once (an AMO between LR
//                  and SC must make the SC fail); lr.w/sc.w on one half of a
//                  doubleword while amoadd.w updates the other half
//   lrsc-lock      a spinlock taken with lr.w.aq/sc.w, released with a
//                  release store (fence rw,w; sw), around plain increments
//   mutex          pthread_mutex around plain increments
//   futex-sem      a hand-written futex semaphore (FUTEX_WAIT/FUTEX_WAKE)
//                  used as a lock around plain increments
//   futex-pingpong pairs of threads hand a token back and forth through two
//                  futex semaphores; payloads are plain stores, checked by
//                  the other side
//   spsc-ring      single-producer/single-consumer rings: payload written with
//                  plain stores, index published with a release store, read
//                  with an acquire load; every payload word is checked
//
// Output: one line per check, "ok   NAME: ..." or "FAIL NAME: ...", then
// "smp: all N checks passed" (exit 0) or "smp: K of N checks FAILED" (exit 1).
// A phase that makes no progress for WATCHDOG_S seconds (a lost wake-up, a
// livelock) prints "FAIL NAME: timed out ..." and exits 1.

#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 32 /* each thread owns one bit of a 32-bit word in amo-logic */
#define WATCHDOG_S 60
#define ALIGNED __attribute__((aligned(64)))

static unsigned nthreads = 8;
static unsigned long rounds = 10000;

// ---- reporting ----------------------------------------------------------------

static const char *volatile phase = "startup";
static unsigned long violations; /* in the current phase, counted by the threads */

/** A wrong value seen while the phase runs: counted, the first few printed. */
static void violation(const char *fmt, ...) {
  if (__atomic_fetch_add(&violations, 1, __ATOMIC_RELAXED) >= 5) return;
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  printf("FAIL %s: %s\n", phase, buf);
}

static void on_alarm(int sig) {
  (void)sig;
  char buf[160];
  int n = snprintf(buf, sizeof buf, "FAIL %s: timed out after %d s (a lost wake-up or a livelock)\n", phase, WATCHDOG_S);
  write(1, buf, n > 0 ? (size_t)n : 0);
  _exit(1);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static uint64_t mix(uint64_t x) { /* splitmix64 */
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/** Busy-wait step for threads that wait on another thread: there are more
 *  threads than vCPUs, so give the vCPU away soon. */
static inline void spin_wait(unsigned *spins) {
  if (++*spins % 16 == 0) sched_yield();
  else __asm__ volatile(".insn i 0x0f, 0, x0, x0, 0x010"); /* pause (Zihintpause) */
}

// ---- the atomic instructions, by name ------------------------------------------
// "A": an address held in a register, as AMOs and LR/SC take it.

#define AMO(name, insn, T)                                                         \
  static inline T name(T *p, T v) {                                                \
    T old;                                                                         \
    __asm__ volatile(insn " %0, %2, %1" : "=&r"(old), "+A"(*p) : "r"(v) : "memory"); \
    return old;                                                                    \
  }
AMO(amomax_d, "amomax.d", int64_t)
AMO(amomaxu_d, "amomaxu.d", uint64_t)
AMO(amomin_d, "amomin.d", int64_t)
AMO(amominu_d, "amominu.d", uint64_t)
AMO(amomax_w, "amomax.w", int32_t)
AMO(amomaxu_w, "amomaxu.w.aq", uint32_t)
AMO(amomin_w, "amomin.w.rl", int32_t)
AMO(amominu_w, "amominu.w.aqrl", uint32_t)
AMO(amoxor_d, "amoxor.d", uint64_t)
AMO(amoxor_w, "amoxor.w.aqrl", uint32_t)
AMO(amoor_d, "amoor.d.aq", uint64_t)
AMO(amoand_d, "amoand.d.rl", uint64_t)
AMO(amoor_w, "amoor.w", uint32_t)
AMO(amoand_w, "amoand.w", uint32_t)
AMO(amoswap_w_aq, "amoswap.w.aq", uint32_t)
AMO(amoswap_w_rl, "amoswap.w.rl", uint32_t)

/** *p += inc with an lr.d/sc.d retry loop; counts failed SCs. */
static inline uint64_t lrsc_add_d(uint64_t *p, uint64_t inc, unsigned long *fails) {
  uint64_t old, sum;
  unsigned long rc, f = 0;
  __asm__ volatile(
      "1: lr.d %[old], %[mem]\n\t"
      "add %[sum], %[old], %[inc]\n\t"
      "sc.d %[rc], %[sum], %[mem]\n\t"
      "beqz %[rc], 2f\n\t"
      "addi %[f], %[f], 1\n\t"
      "j 1b\n"
      "2:"
      : [old] "=&r"(old), [sum] "=&r"(sum), [rc] "=&r"(rc), [mem] "+A"(*p), [f] "+r"(f)
      : [inc] "r"(inc)
      : "memory");
  *fails += f;
  return old;
}

/** *p += inc with an lr.w.aq/sc.w.rl retry loop; counts failed SCs. */
static inline uint32_t lrsc_add_w(uint32_t *p, uint32_t inc, unsigned long *fails) {
  uint32_t old, sum;
  unsigned long rc, f = 0;
  __asm__ volatile(
      "1: lr.w.aq %[old], %[mem]\n\t"
      "addw %[sum], %[old], %[inc]\n\t"
      "sc.w.rl %[rc], %[sum], %[mem]\n\t"
      "beqz %[rc], 2f\n\t"
      "addi %[f], %[f], 1\n\t"
      "j 1b\n"
      "2:"
      : [old] "=&r"(old), [sum] "=&r"(sum), [rc] "=&r"(rc), [mem] "+A"(*p), [f] "+r"(f)
      : [inc] "r"(inc)
      : "memory");
  *fails += f;
  return old;
}

/** One attempt at 0 -> 1 with lr.w.aq/sc.w (a failed SC is retried). */
static inline int lrsc_trylock(uint32_t *lock) {
  uint32_t old;
  unsigned long rc;
  __asm__ volatile(
      "1: lr.w.aq %[old], %[mem]\n\t"
      "bnez %[old], 2f\n\t"
      "sc.w %[rc], %[one], %[mem]\n\t"
      "bnez %[rc], 1b\n"
      "2:"
      : [old] "=&r"(old), [rc] "=&r"(rc), [mem] "+A"(*lock)
      : [one] "r"(1)
      : "memory");
  return old == 0;
}

/** Release store and acquire load as the Linux kernel (smp_store_release,
 *  smp_load_acquire) and newer compilers write them: a fence and a plain
 *  access. (GCC 12's __atomic_store_n(RELEASE) is fence + amoswap instead.) */
static inline void store_release_d(uint64_t *p, uint64_t v) {
  __asm__ volatile("fence rw, w\n\tsd %1, %0" : "=m"(*p) : "r"(v) : "memory");
}
static inline void store_release_w(uint32_t *p, uint32_t v) {
  __asm__ volatile("fence rw, w\n\tsw %1, %0" : "=m"(*p) : "r"(v) : "memory");
}
static inline uint64_t load_acquire_d(const uint64_t *p) {
  uint64_t v;
  __asm__ volatile("ld %0, %1\n\tfence r, rw" : "=r"(v) : "m"(*p) : "memory");
  return v;
}

// ---- the phases -------------------------------------------------------------------

typedef void (*work_fn)(unsigned t);
static pthread_barrier_t start_line;
static work_fn current_work;

static void *thread_main(void *arg) {
  pthread_barrier_wait(&start_line);
  current_work((unsigned)(uintptr_t)arg);
  return NULL;
}

static void run_threads(work_fn fn) {
  pthread_t th[MAX_THREADS];
  current_work = fn;
  pthread_barrier_init(&start_line, NULL, nthreads);
  for (unsigned t = 0; t < nthreads; t++) {
    int e = pthread_create(&th[t], NULL, thread_main, (void *)(uintptr_t)t);
    if (e) {
      printf("FAIL %s: pthread_create: %s\n", phase, strerror(e));
      exit(1);
    }
  }
  for (unsigned t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
  pthread_barrier_destroy(&start_line);
}

/** Plain (non-atomic) data that a lock protects: a and b move together. */
struct guarded {
  uint64_t a, b;
};
static void guarded_step(struct guarded *g) {
  if (g->a != g->b) violation("inside the lock: a = %" PRIu64 " but b = %" PRIu64, g->a, g->b);
  g->a++;
  __asm__ volatile("" ::: "memory"); /* two separate stores, not one */
  g->b++;
}

// amo-add
static struct {
  uint32_t r32 ALIGNED, s32;
  uint64_t r64, s64;
} add = {0x7fffff00u, 5, 0xffffff00ull, 0};

static void work_amo_add(unsigned t) {
  (void)t;
  for (unsigned long i = 0; i < rounds; i++) {
    __atomic_fetch_add(&add.r32, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&add.s32, 3, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&add.r64, 0x100000001ull, __ATOMIC_RELAXED);
    __atomic_fetch_sub(&add.s64, 7, __ATOMIC_SEQ_CST);
  }
}

// amo-minmax: thread t's k-th value is k*T + t, so every value is used once.
// Two exact checks besides the final values:
// - What a thread stored stays the floor (ceiling, for min) of every value it
//   reads back later, unless an update was lost.
// - Conservation: in any atomic history each operation moves the variable from
//   the old value it returns to max(old, v) (min), so the sum over all
//   operations of (new - old), each computed by its thread from the value
//   returned, telescopes to final - initial (modulo 2^64 or 2^32). An update
//   lost between two harts makes two operations start from the same old
//   value, and the sum no longer adds up, however small the race.
struct mm_vars {
  int64_t max_d, min_d;
  uint64_t maxu_d, minu_d;
  int32_t max_w, min_w;
  uint32_t maxu_w, minu_w;
};
#define MM_INIT {INT64_MIN, INT64_MAX, 0, UINT64_MAX, INT32_MIN, INT32_MAX, 0, UINT32_MAX}
static const struct mm_vars mm_initial = MM_INIT;
static struct mm_vars mm ALIGNED = MM_INIT;
static struct mm_sums {
  uint64_t max_d, min_d, maxu_d, minu_d;
  uint32_t max_w, min_w, maxu_w, minu_w;
} mm_sum[MAX_THREADS];
#define SIGN64 0x8000000000000000ull

static void work_amo_minmax(unsigned t) {
  const uint64_t n = (uint64_t)rounds * nthreads, half = n / 2;
  struct mm_vars prev = mm_initial;
  struct mm_sums sum = {0};
  for (unsigned long i = 0; i < rounds; i++) {
    const uint64_t k = i * nthreads + t;
#define MM(fn, var, T, UT, v, cmp, fmt)                                                                  \
  do {                                                                                                  \
    T v_ = (T)(v), old_ = fn(&mm.var, v_);                                                              \
    if (old_ cmp prev.var) violation(#fn " returned %" fmt " after this thread stored %" fmt, old_, prev.var); \
    prev.var = v_;                                                                                      \
    sum.var += (UT)((v_ cmp old_) ? old_ : v_) - (UT)old_;                                              \
  } while (0)
    MM(amomax_d, max_d, int64_t, uint64_t, (int64_t)k - (int64_t)half, <, PRId64);
    MM(amomin_d, min_d, int64_t, uint64_t, (int64_t)half - (int64_t)k, >, PRId64);
    MM(amomaxu_d, maxu_d, uint64_t, uint64_t, SIGN64 - half + k, <, PRIx64);
    MM(amominu_d, minu_d, uint64_t, uint64_t, SIGN64 + half - k, >, PRIx64);
    MM(amomax_w, max_w, int32_t, uint32_t, (int32_t)k - (int32_t)half, <, PRId32);
    MM(amomin_w, min_w, int32_t, uint32_t, (int32_t)half - (int32_t)k, >, PRId32);
    MM(amomaxu_w, maxu_w, uint32_t, uint32_t, 0x80000000u - (uint32_t)half + (uint32_t)k, <, PRIx32);
    MM(amominu_w, minu_w, uint32_t, uint32_t, 0x80000000u + (uint32_t)half - (uint32_t)k, >, PRIx32);
#undef MM
  }
  mm_sum[t] = sum;
}

// amo-logic
#define BIT_WORDS 8
static struct {
  uint64_t xor_d ALIGNED;
  uint32_t xor_w;
  uint64_t bits_d[BIT_WORDS] ALIGNED;
  uint32_t bits_w[BIT_WORDS];
} logic;
static uint64_t xor_expected_d[MAX_THREADS];
static uint32_t xor_expected_w[MAX_THREADS];

/** Whether round i sets (else clears) the bits of word i % BIT_WORDS. */
static int logic_sets(unsigned long i) { return (i / BIT_WORDS) % 2 == 0; }

static void work_amo_logic(unsigned t) {
  const uint64_t bit_d = 1ull << (63 - t);
  const uint32_t bit_w = 1u << t;
  uint64_t x_d = 0;
  uint32_t x_w = 0;
  for (unsigned long i = 0; i < rounds; i++) {
    const uint64_t v = mix(i * MAX_THREADS + t);
    amoxor_d(&logic.xor_d, v);
    amoxor_w(&logic.xor_w, (uint32_t)(v >> 32));
    x_d ^= v;
    x_w ^= (uint32_t)(v >> 32);
    const unsigned w = i % BIT_WORDS;
    if (logic_sets(i)) {
      uint64_t od = amoor_d(&logic.bits_d[w], bit_d);
      uint32_t ow = amoor_w(&logic.bits_w[w], bit_w);
      if (od & bit_d) violation("amoor.d: own bit already set in word %u (old %016" PRIx64 ")", w, od);
      if (ow & bit_w) violation("amoor.w: own bit already set in word %u (old %08" PRIx32 ")", w, ow);
    } else {
      uint64_t od = amoand_d(&logic.bits_d[w], ~bit_d);
      uint32_t ow = amoand_w(&logic.bits_w[w], ~bit_w);
      if (!(od & bit_d)) violation("amoand.d: own bit lost from word %u (old %016" PRIx64 ")", w, od);
      if (!(ow & bit_w)) violation("amoand.w: own bit lost from word %u (old %08" PRIx32 ")", w, ow);
    }
  }
  xor_expected_d[t] = x_d;
  xor_expected_w[t] = x_w;
}

// amo-swap-lock, lrsc-lock, mutex, futex-sem: a lock around guarded data.
static uint32_t swap_lock ALIGNED;
static struct guarded swap_data ALIGNED;

static void work_amo_swap_lock(unsigned t) {
  (void)t;
  for (unsigned long i = 0; i < rounds; i++) {
    unsigned spins = 0;
    while (amoswap_w_aq(&swap_lock, 1) != 0)
      while (__atomic_load_n(&swap_lock, __ATOMIC_RELAXED) != 0) spin_wait(&spins);
    guarded_step(&swap_data);
    if (amoswap_w_rl(&swap_lock, 0) != 1) violation("amoswap.w.rl: the lock was not held");
  }
}

// lrsc-add
static struct {
  uint64_t d ALIGNED;
  uint32_t w ALIGNED;
  uint64_t mixed ALIGNED;
  struct {
    uint32_t lo, hi;
  } halves ALIGNED;
} lrsc = {0, 0xfffff000u, 0, {0, 0}};
static unsigned long sc_fails[MAX_THREADS];

static void work_lrsc_add(unsigned t) {
  unsigned long fails = 0;
  for (unsigned long i = 0; i < rounds; i++) {
    lrsc_add_d(&lrsc.d, 0x100000001ull, &fails);
    lrsc_add_w(&lrsc.w, 1, &fails);
    if ((i + t) % 2) lrsc_add_d(&lrsc.mixed, 1, &fails);
    else __atomic_fetch_add(&lrsc.mixed, 1, __ATOMIC_RELAXED);
    lrsc_add_w(&lrsc.halves.lo, 1, &fails);
    __atomic_fetch_add(&lrsc.halves.hi, 1, __ATOMIC_RELAXED);
  }
  sc_fails[t] = fails;
}

// lrsc-lock
static uint32_t lrsc_lock ALIGNED;
static struct guarded lrsc_data ALIGNED;

static void work_lrsc_lock(unsigned t) {
  (void)t;
  for (unsigned long i = 0; i < rounds; i++) {
    unsigned spins = 0;
    while (!lrsc_trylock(&lrsc_lock))
      while (__atomic_load_n(&lrsc_lock, __ATOMIC_RELAXED) != 0) spin_wait(&spins);
    guarded_step(&lrsc_data);
    store_release_w(&lrsc_lock, 0);
  }
}

// mutex
static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
static struct guarded mutex_data ALIGNED;

static void work_mutex(unsigned t) {
  (void)t;
  for (unsigned long i = 0; i < rounds; i++) {
    pthread_mutex_lock(&mutex);
    guarded_step(&mutex_data);
    pthread_mutex_unlock(&mutex);
  }
}

// futex-sem: a counting semaphore on a futex word, with a waiter count so a
// post without sleepers makes no system call.
struct fsem {
  uint32_t val ALIGNED;
  uint32_t waiters;
};
static unsigned long futex_sleeps[MAX_THREADS];

static long futex(uint32_t *word, int op, uint32_t val) {
  return syscall(SYS_futex, word, op, val, NULL, NULL, 0);
}

static void fsem_wait(struct fsem *s, unsigned t) {
  for (;;) {
    uint32_t v = __atomic_load_n(&s->val, __ATOMIC_RELAXED);
    while (v > 0)
      if (__atomic_compare_exchange_n(&s->val, &v, v - 1, 1, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return;
    // Announce the sleep before checking once more; fsem_post increments
    // then reads waiters, so one of the two sees the other (both seq_cst).
    __atomic_fetch_add(&s->waiters, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->val, __ATOMIC_SEQ_CST) == 0) {
      // The kernel sleeps only if val is still 0 (else EAGAIN).
      if (futex(&s->val, FUTEX_WAIT_PRIVATE, 0) == 0) futex_sleeps[t]++;
      else if (errno != EAGAIN && errno != EINTR) violation("FUTEX_WAIT: %s", strerror(errno));
    }
    __atomic_fetch_sub(&s->waiters, 1, __ATOMIC_RELAXED);
  }
}

static void fsem_post(struct fsem *s) {
  __atomic_fetch_add(&s->val, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&s->waiters, __ATOMIC_SEQ_CST) > 0 && futex(&s->val, FUTEX_WAKE_PRIVATE, 1) < 0)
    violation("FUTEX_WAKE: %s", strerror(errno));
}

static struct fsem sem_lock = {1, 0};
static struct guarded sem_data ALIGNED;

static void work_futex_sem(unsigned t) {
  for (unsigned long i = 0; i < rounds; i++) {
    fsem_wait(&sem_lock, t);
    guarded_step(&sem_data);
    fsem_post(&sem_lock);
  }
}

// futex-pingpong: thread 2p serves, 2p+1 answers.
static struct pair {
  struct fsem ping, pong;
  uint64_t ask[4] ALIGNED;
  uint64_t answer[4] ALIGNED;
  unsigned long done;
} pairs[MAX_THREADS / 2];

static unsigned long pingpong_rounds(void) { return rounds / 8 > 0 ? rounds / 8 : 1; }

static void work_futex_pingpong(unsigned t) {
  struct pair *p = &pairs[t / 2];
  if (t / 2 >= nthreads / 2) return; /* odd thread count: the last one sits out */
  const uint64_t seed = (uint64_t)(t / 2) << 48;
  for (unsigned long i = 0; i < pingpong_rounds(); i++) {
    const uint64_t q = mix(seed + i);
    if (t % 2 == 0) {
      for (int j = 0; j < 4; j++) p->ask[j] = q + j;
      fsem_post(&p->ping);
      fsem_wait(&p->pong, t);
      for (int j = 0; j < 4; j++)
        if (p->answer[j] != ~(q + j)) violation("pair %u round %lu: answer[%d] = %016" PRIx64 ", expected %016" PRIx64, t / 2, i, j, p->answer[j], ~(q + j));
      p->done++;
    } else {
      fsem_wait(&p->ping, t);
      for (int j = 0; j < 4; j++)
        if (p->ask[j] != q + j) violation("pair %u round %lu: ask[%d] = %016" PRIx64 ", expected %016" PRIx64, t / 2, i, j, p->ask[j], q + j);
      for (int j = 0; j < 4; j++) p->answer[j] = ~p->ask[j];
      fsem_post(&p->pong);
    }
  }
}

// spsc-ring: thread 2p produces, 2p+1 consumes.
#define RING_SLOTS 32
static struct ring {
  uint64_t head ALIGNED; /* items published: written by the producer */
  uint64_t tail ALIGNED; /* items consumed: written by the consumer */
  uint64_t slot[RING_SLOTS][4] ALIGNED;
  uint64_t received, producer_waits, consumer_waits;
} rings[MAX_THREADS / 2];

static unsigned long ring_items(void) { return rounds; }

static void payload(uint64_t seed, uint64_t n, uint64_t out[4]) {
  out[0] = n;
  out[1] = mix(seed ^ n);
  out[2] = ~n;
  out[3] = n * 0x9e3779b97f4a7c15ull + seed;
}

/** Even rings publish and read the indexes with fence + plain access (inline
 *  asm), odd rings with GCC's __atomic builtins. */
static uint64_t ring_load(unsigned p, const uint64_t *index) {
  return p % 2 == 0 ? load_acquire_d(index) : __atomic_load_n(index, __ATOMIC_ACQUIRE);
}
static void ring_publish(unsigned p, uint64_t *index, uint64_t v) {
  if (p % 2 == 0) store_release_d(index, v);
  else __atomic_store_n(index, v, __ATOMIC_RELEASE);
}

static void work_spsc_ring(unsigned t) {
  const unsigned p = t / 2;
  struct ring *r = &rings[p];
  if (p >= nthreads / 2) return;
  const uint64_t seed = mix(p);
  const uint64_t items = ring_items();
  unsigned spins = 0;
  if (t % 2 == 0) {
    for (uint64_t n = 0; n < items; n++) {
      // The consumer's release store of tail orders its reads of the slot
      // before this thread's writes to it.
      if (n - ring_load(p, &r->tail) >= RING_SLOTS) {
        r->producer_waits++;
        while (n - ring_load(p, &r->tail) >= RING_SLOTS) spin_wait(&spins);
      }
      payload(seed, n, r->slot[n % RING_SLOTS]); /* plain stores */
      ring_publish(p, &r->head, n + 1);
    }
  } else {
    for (uint64_t n = 0; n < items; n++) {
      if (ring_load(p, &r->head) == n) {
        r->consumer_waits++;
        while (ring_load(p, &r->head) == n) spin_wait(&spins);
      }
      uint64_t want[4];
      payload(seed, n, want);
      const uint64_t *got = r->slot[n % RING_SLOTS]; /* plain loads */
      for (int j = 0; j < 4; j++)
        if (got[j] != want[j]) violation("ring %u item %" PRIu64 ": word %d = %016" PRIx64 ", expected %016" PRIx64, p, n, j, got[j], want[j]);
      r->received++;
      ring_publish(p, &r->tail, n + 1);
    }
  }
}

// ---- checking the results -------------------------------------------------------

static int mismatches;

/** Compares one final value; prints the first mismatches. */
static void expect(const char *what, uint64_t got, uint64_t want) {
  if (got == want) return;
  if (mismatches++ < 5) printf("FAIL %s: %s = %" PRIu64 " (0x%" PRIx64 "), expected %" PRIu64 " (0x%" PRIx64 ")\n", phase, what, got, got, want, want);
}

static void check_guarded(const char *what, struct guarded *g, uint64_t n) {
  char name[64];
  snprintf(name, sizeof name, "%s.a", what);
  expect(name, g->a, n);
  snprintf(name, sizeof name, "%s.b", what);
  expect(name, g->b, n);
}

static unsigned long sum(const unsigned long *v, unsigned n) {
  unsigned long s = 0;
  for (unsigned i = 0; i < n; i++) s += v[i];
  return s;
}

static void check_amo_add(char *note, size_t len) {
  const uint64_t n = (uint64_t)rounds * nthreads;
  expect("relaxed amoadd.w", add.r32, (uint32_t)(0x7fffff00u + n));
  expect("seq_cst amoadd.w", add.s32, (uint32_t)(5 + 3 * n));
  expect("relaxed amoadd.d", add.r64, 0xffffff00ull + 0x100000001ull * n);
  expect("seq_cst amoadd.d (sub)", add.s64, (uint64_t)0 - 7 * n);
  snprintf(note, len, "4 counters x %" PRIu64 " adds exact", n);
}

static void check_amo_minmax(char *note, size_t len) {
  const uint64_t n = (uint64_t)rounds * nthreads, half = n / 2, last = n - 1;
  expect("amomax.d", (uint64_t)mm.max_d, (uint64_t)((int64_t)last - (int64_t)half));
  expect("amomin.d", (uint64_t)mm.min_d, (uint64_t)((int64_t)half - (int64_t)last));
  expect("amomaxu.d", mm.maxu_d, SIGN64 - half + last);
  expect("amominu.d", mm.minu_d, SIGN64 + half - last);
  expect("amomax.w", (uint32_t)mm.max_w, (uint32_t)((int32_t)last - (int32_t)half));
  expect("amomin.w", (uint32_t)mm.min_w, (uint32_t)((int32_t)half - (int32_t)last));
  expect("amomaxu.w", mm.maxu_w, 0x80000000u - (uint32_t)half + (uint32_t)last);
  expect("amominu.w", mm.minu_w, 0x80000000u + (uint32_t)half - (uint32_t)last);
  struct mm_sums total = {0};
  for (unsigned t = 0; t < nthreads; t++) {
#define ADD(var) total.var += mm_sum[t].var
    ADD(max_d); ADD(min_d); ADD(maxu_d); ADD(minu_d); ADD(max_w); ADD(min_w); ADD(maxu_w); ADD(minu_w);
#undef ADD
  }
#define CONSERVED(var, UT) expect("sum of " #var " steps the threads saw", total.var, (UT)((UT)mm.var - (UT)mm_initial.var))
  CONSERVED(max_d, uint64_t); CONSERVED(min_d, uint64_t); CONSERVED(maxu_d, uint64_t); CONSERVED(minu_d, uint64_t);
  CONSERVED(max_w, uint32_t); CONSERVED(min_w, uint32_t); CONSERVED(maxu_w, uint32_t); CONSERVED(minu_w, uint32_t);
#undef CONSERVED
  snprintf(note, len, "8 variables x %" PRIu64 " ops exact, every step accounted for", n);
}

static void check_amo_logic(char *note, size_t len) {
  uint64_t xd = 0;
  uint32_t xw = 0;
  for (unsigned t = 0; t < nthreads; t++) xd ^= xor_expected_d[t], xw ^= xor_expected_w[t];
  expect("amoxor.d", logic.xor_d, xd);
  expect("amoxor.w", logic.xor_w, xw);
  const uint64_t all_d = nthreads == 64 ? UINT64_MAX : ~(UINT64_MAX >> nthreads);
  const uint32_t all_w = nthreads == 32 ? UINT32_MAX : (1u << nthreads) - 1;
  for (unsigned w = 0; w < BIT_WORDS; w++) {
    // The last round that touched word w decides whether its bits are set.
    unsigned long last = rounds - 1 - ((rounds - 1 + BIT_WORDS - w) % BIT_WORDS);
    const int set = rounds > w && logic_sets(last);
    char what[40];
    snprintf(what, sizeof what, "amoor/amoand.d word %u", w);
    expect(what, logic.bits_d[w], set ? all_d : 0);
    snprintf(what, sizeof what, "amoor/amoand.w word %u", w);
    expect(what, logic.bits_w[w], set ? all_w : 0);
  }
  snprintf(note, len, "2 xor + %d bit words x %" PRIu64 " ops exact", 2 * BIT_WORDS, (uint64_t)rounds * nthreads);
}

static void check_amo_swap_lock(char *note, size_t len) {
  check_guarded("counter", &swap_data, (uint64_t)rounds * nthreads);
  snprintf(note, len, "%" PRIu64 " locked increments exact", (uint64_t)rounds * nthreads);
}

static void check_lrsc_add(char *note, size_t len) {
  const uint64_t n = (uint64_t)rounds * nthreads;
  expect("lr.d/sc.d", lrsc.d, 0x100000001ull * n);
  expect("lr.w/sc.w", lrsc.w, (uint32_t)(0xfffff000u + n));
  expect("lr.d/sc.d mixed with amoadd.d", lrsc.mixed, n);
  expect("lr.w/sc.w low half", lrsc.halves.lo, (uint32_t)n);
  expect("amoadd.w high half", lrsc.halves.hi, (uint32_t)n);
  snprintf(note, len, "5 counters x %" PRIu64 " adds exact, %lu SC failures retried", n, sum(sc_fails, nthreads));
}

static void check_lrsc_lock(char *note, size_t len) {
  check_guarded("counter", &lrsc_data, (uint64_t)rounds * nthreads);
  snprintf(note, len, "%" PRIu64 " locked increments exact", (uint64_t)rounds * nthreads);
}

static void check_mutex(char *note, size_t len) {
  check_guarded("counter", &mutex_data, (uint64_t)rounds * nthreads);
  snprintf(note, len, "%" PRIu64 " locked increments exact", (uint64_t)rounds * nthreads);
}

static void check_futex_sem(char *note, size_t len) {
  check_guarded("counter", &sem_data, (uint64_t)rounds * nthreads);
  expect("semaphore value", sem_lock.val, 1);
  snprintf(note, len, "%" PRIu64 " locked increments exact, %lu futex sleeps", (uint64_t)rounds * nthreads, sum(futex_sleeps, nthreads));
}

static void check_futex_pingpong(char *note, size_t len) {
  for (unsigned p = 0; p < nthreads / 2; p++) {
    char what[32];
    snprintf(what, sizeof what, "pair %u round trips", p);
    expect(what, pairs[p].done, pingpong_rounds());
  }
  snprintf(note, len, "%u pairs x %lu round trips, %lu futex sleeps", nthreads / 2, pingpong_rounds(), sum(futex_sleeps, nthreads));
}

static void check_spsc_ring(char *note, size_t len) {
  uint64_t waits = 0;
  for (unsigned p = 0; p < nthreads / 2; p++) {
    char what[32];
    snprintf(what, sizeof what, "ring %u items", p);
    expect(what, rings[p].received, ring_items());
    waits += rings[p].producer_waits + rings[p].consumer_waits;
  }
  snprintf(note, len, "%u rings x %lu items, every payload word checked, %" PRIu64 " waits", nthreads / 2, ring_items(), waits);
}

static const struct check {
  const char *name;
  work_fn work;
  void (*check)(char *note, size_t len);
} checks[] = {
    {"amo-add", work_amo_add, check_amo_add},
    {"amo-minmax", work_amo_minmax, check_amo_minmax},
    {"amo-logic", work_amo_logic, check_amo_logic},
    {"amo-swap-lock", work_amo_swap_lock, check_amo_swap_lock},
    {"lrsc-add", work_lrsc_add, check_lrsc_add},
    {"lrsc-lock", work_lrsc_lock, check_lrsc_lock},
    {"mutex", work_mutex, check_mutex},
    {"futex-sem", work_futex_sem, check_futex_sem},
    {"futex-pingpong", work_futex_pingpong, check_futex_pingpong},
    {"spsc-ring", work_spsc_ring, check_spsc_ring},
};
#define NCHECKS (sizeof checks / sizeof checks[0])

static int usage(void) {
  fprintf(stderr, "usage: smp [-r ROUNDS] [-t THREADS (2..%d)] [-c CHECK]\n", MAX_THREADS);
  return 2;
}

int main(int argc, char **argv) {
  const char *only = NULL;
  int opt;
  while ((opt = getopt(argc, argv, "r:t:c:")) != -1) {
    char *end;
    switch (opt) {
      case 'r':
        rounds = strtoul(optarg, &end, 0);
        if (*end || rounds == 0 || rounds > (1ul << 24)) return usage();
        break;
      case 't':
        nthreads = (unsigned)strtoul(optarg, &end, 0);
        if (*end || nthreads < 2 || nthreads > MAX_THREADS) return usage();
        break;
      case 'c':
        only = optarg;
        break;
      default:
        return usage();
    }
  }
  if (optind != argc) return usage();
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGALRM, on_alarm);
  printf("smp: %u threads on %d cpus, %lu rounds\n", nthreads, get_nprocs(), rounds);

  unsigned ran = 0, failed = 0;
  for (size_t c = 0; c < NCHECKS; c++) {
    if (only && strcmp(only, checks[c].name) != 0) continue;
    phase = checks[c].name;
    violations = 0;
    mismatches = 0;
    memset(futex_sleeps, 0, sizeof futex_sleeps);
    alarm(WATCHDOG_S);
    const double t0 = now_ms();
    run_threads(checks[c].work);
    const double ms = now_ms() - t0;
    alarm(0);
    char note[160];
    checks[c].check(note, sizeof note);
    ran++;
    if (violations || mismatches) {
      failed++;
      printf("FAIL %s: %lu wrong values seen while running, %d wrong final values (%s)\n", phase, violations, mismatches, note);
    } else {
      printf("ok   %s: %s, %.0f ms\n", phase, note, ms);
    }
  }
  if (ran == 0) {
    printf("FAIL smp: no check named %s\n", only);
    return 2;
  }
  if (failed) {
    printf("smp: %u of %u checks FAILED\n", failed, ran);
    return 1;
  }
  printf("smp: all %u checks passed\n", ran);
  return 0;
}
