// Clock check for the Debian guest (src/host/smp-guest.test.ts): does
// CLOCK_MONOTONIC behave as one clock when threads read it on every vCPU?
// A static riscv64 Linux program (riscv64-linux-gnu-gcc -static -pthread); it
// reaches the guest as `tsvisor run`'s stdin (/tsvisor/stdin).
//
//   clock [-t THREADS] [-n READS_PER_THREAD] [-j MAX_STEP_MS] [-s SLEEP_MS]
//
// More threads than vCPUs read CLOCK_MONOTONIC (the vDSO: rdtime, scaled by
// the kernel's published mult/shift) in a loop, and every few thousand reads
// each one moves itself to the next CPU with sched_setaffinity, so reads of
// one thread come from every vCPU. Violations:
//   backwards (global)  a shared "last completed read" holds the largest value
//                       any thread has read (amomaxu.d after each read). A
//                       thread loads it before its read; a read that returns
//                       less than a value another thread had already read
//                       before this read began is time going backwards.
//   backwards (own)     a thread's read below its own previous read.
//   step                consecutive reads of one thread further apart than
//                       MAX_STEP_MS (default 1000 ms). Legitimate gaps (the
//                       thread preempted, the host busy) are milliseconds to
//                       tens of them; a misread counter scaled by the vDSO is
//                       off by minutes.
//   sleep               a clock_nanosleep of SLEEP_MS (default 200) must take
//                       at least that long and less than MAX_STEP_MS more.
//
// Output, in this order:
//   "clock: start"          printed (and drained from the tty) just before
//                           the first timed read: the host timestamps it
//   one "ok   NAME: ..." or "FAIL NAME: ..." line per check, and the first
//                           few violations as "FAIL ..." lines
//   "clock: elapsed NS ns"  guest CLOCK_MONOTONIC from just after "start" to
//                           just before this line, for the host to compare
//                           with its own clock between the two lines
//   "clock: all N checks passed" (exit 0) or "clock: K of N checks FAILED"
//                           (exit 1)

#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 64
#define HOP_READS 2000 /* reads between moves to the next CPU */
#define WATCHDOG_S 120

static unsigned nthreads = 8;
static unsigned long reads = 250000;
static uint64_t max_step_ns = 1000000000ull;
static uint64_t sleep_ns = 200000000ull;
static int ncpus;

static uint64_t last_read __attribute__((aligned(64))); /* largest value read so far, any thread */

enum { BACK_GLOBAL, BACK_OWN, STEP, NKINDS };
static const char *const kind_name[NKINDS] = {"backwards-global", "backwards-own", "step"};
static unsigned long kind_count[NKINDS];
static unsigned long printed[NKINDS];

struct result {
  uint64_t max_step, hops, first, final;
} results[MAX_THREADS];

static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "FAIL clock: timed out (no progress for 120 s)\n";
  write(1, msg, sizeof msg - 1);
  _exit(1);
}

static inline uint64_t read_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void publish(uint64_t v) {
  __asm__ volatile("amomaxu.d.rl zero, %1, %0" : "+A"(last_read) : "r"(v) : "memory");
}

static void fmt_ns(char *buf, size_t len, uint64_t ns) {
  snprintf(buf, len, "%" PRIu64 ".%09" PRIu64 " s", (uint64_t)(ns / 1000000000u), (uint64_t)(ns % 1000000000u));
}

static void fmt_diff(char *buf, size_t len, uint64_t ns) {
  if (ns < 10000000ull) snprintf(buf, len, "%.1f us", ns / 1e3);
  else snprintf(buf, len, "%.3f s", ns / 1e9);
}

static void violation(int kind, unsigned t, unsigned long i, uint64_t before, uint64_t got) {
  __atomic_fetch_add(&kind_count[kind], 1, __ATOMIC_RELAXED);
  if (__atomic_fetch_add(&printed[kind], 1, __ATOMIC_RELAXED) >= 4) return; /* the first few of each kind */
  char b[32], g[32], d[32];
  fmt_ns(b, sizeof b, before);
  fmt_ns(g, sizeof g, got);
  int cpu = sched_getcpu();
  if (kind == STEP) {
    fmt_diff(d, sizeof d, got - before);
    printf("FAIL %s: thread %u read %lu on cpu %d: %s, %s after its previous read %s\n", kind_name[kind], t, i, cpu, g, d, b);
  } else {
    fmt_diff(d, sizeof d, before - got);
    printf("FAIL %s: thread %u read %lu on cpu %d: %s, %s before %s %s\n", kind_name[kind], t, i, cpu, g, d,
           kind == BACK_GLOBAL ? "a value already read by another thread," : "its own previous read,", b);
  }
}

static void move_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);
}

static void *reader(void *arg) {
  const unsigned t = (unsigned)(uintptr_t)arg;
  struct result *res = &results[t];
  int cpu = (int)(t % (unsigned)ncpus);
  move_to(cpu);
  uint64_t prev = read_ns();
  res->first = prev;
  publish(prev);
  for (unsigned long i = 1; i < reads; i++) {
    if (i % HOP_READS == 0) {
      cpu = (cpu + 1) % ncpus;
      move_to(cpu);
      res->hops++;
    }
    const uint64_t before = __atomic_load_n(&last_read, __ATOMIC_ACQUIRE);
    const uint64_t now = read_ns();
    if (now < before) violation(BACK_GLOBAL, t, i, before, now);
    if (now < prev) violation(BACK_OWN, t, i, prev, now);
    else if (now - prev > max_step_ns) violation(STEP, t, i, prev, now);
    else if (now - prev > res->max_step) res->max_step = now - prev;
    publish(now);
    prev = now;
  }
  res->final = prev;
  return NULL;
}

static int usage(void) {
  fprintf(stderr, "usage: clock [-t THREADS (1..%d)] [-n READS_PER_THREAD] [-j MAX_STEP_MS] [-s SLEEP_MS]\n", MAX_THREADS);
  return 2;
}

int main(int argc, char **argv) {
  int opt;
  while ((opt = getopt(argc, argv, "t:n:j:s:")) != -1) {
    char *end;
    unsigned long v = strtoul(optarg, &end, 0);
    if (*end || v == 0) return usage();
    switch (opt) {
      case 't':
        if (v > MAX_THREADS) return usage();
        nthreads = (unsigned)v;
        break;
      case 'n':
        reads = v;
        break;
      case 'j':
        max_step_ns = v * 1000000ull;
        break;
      case 's':
        sleep_ns = v * 1000000ull;
        break;
      default:
        return usage();
    }
  }
  if (optind != argc) return usage();
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGALRM, on_alarm);
  alarm(WATCHDOG_S);
  ncpus = get_nprocs();
  printf("clock: %u threads on %d cpus, %lu reads each, moving to the next cpu every %d reads\n", nthreads, ncpus, reads, HOP_READS);
  printf("clock: start\n");
  tcdrain(1); /* out of the guest's tty before the clock starts (not a tty: no-op) */
  const uint64_t t0 = read_ns();

  pthread_t th[MAX_THREADS];
  for (unsigned t = 0; t < nthreads; t++) {
    int e = pthread_create(&th[t], NULL, reader, (void *)(uintptr_t)t);
    if (e) {
      printf("FAIL clock: pthread_create: %s\n", strerror(e));
      return 1;
    }
  }
  for (unsigned t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
  const uint64_t t_read = read_ns();

  const struct timespec req = {(time_t)(sleep_ns / 1000000000ull), (long)(sleep_ns % 1000000000ull)};
  const uint64_t s0 = read_ns();
  clock_nanosleep(CLOCK_MONOTONIC, 0, &req, NULL);
  const uint64_t slept = read_ns() - s0;
  const uint64_t t1 = read_ns();

  unsigned failed = 0, nchecks = 0;
  uint64_t max_step = 0, hops = 0;
  for (unsigned t = 0; t < nthreads; t++) {
    if (results[t].max_step > max_step) max_step = results[t].max_step;
    hops += results[t].hops;
  }
  const double read_s = (double)(t_read - t0) / 1e9;
  const unsigned long total = reads * nthreads;
  for (int k = 0; k < NKINDS; k++) {
    nchecks++;
    if (kind_count[k]) {
      failed++;
      printf("FAIL %s: %lu of %lu reads\n", kind_name[k], kind_count[k], total);
    } else if (k == STEP) {
      printf("ok   step: no step over %" PRIu64 " ms between reads of one thread, largest %.3f ms\n", max_step_ns / 1000000, max_step / 1e6);
    } else {
      printf("ok   %s: %lu reads in %.2f s (%.0f per second), %" PRIu64 " cpu moves\n", kind_name[k], total, read_s, total / read_s, hops);
    }
  }
  nchecks++;
  if (slept < sleep_ns || slept - sleep_ns > max_step_ns) {
    failed++;
    printf("FAIL sleep: a %" PRIu64 " ms clock_nanosleep took %.3f ms\n", sleep_ns / 1000000, slept / 1e6);
  } else {
    printf("ok   sleep: a %" PRIu64 " ms clock_nanosleep took %.3f ms\n", sleep_ns / 1000000, slept / 1e6);
  }
  printf("clock: elapsed %" PRIu64 " ns\n", t1 - t0);
  if (failed) {
    printf("clock: %u of %u checks FAILED\n", failed, nchecks);
    return 1;
  }
  printf("clock: all %u checks passed\n", nchecks);
  return 0;
}
