// An interrupt storm a Linux user program can raise on a 2-vCPU guest, for
// the host engine's starvation test (src/host/starvation.test.ts). A user
// program cannot turn interrupts off; what it can do is keep both vCPUs
// busy and make the kernel send interrupts between them as fast as it can:
//
//   spin-0, spin-1    a busy loop pinned to each CPU
//   membarrier        MEMBARRIER_CMD_PRIVATE_EXPEDITED in a loop on CPU 0: an
//                     IPI to every other CPU running this process
//   mprotect          a page made read-only and writable again in a loop on
//                     CPU 1, writing it in between: a TLB shootdown of the
//                     other CPU each time (an SBI remote fence on RISC-V)
//   ping-0, ping-1    a token passed back and forth through a futex between
//                     CPU 0 and CPU 1: a cross-CPU wake-up each time
//
// A static riscv64 Linux program (riscv64-linux-gnu-gcc -static -pthread); it
// reaches the guest as the command's stdin (/tsvisor/stdin). It prints
// "storm-ready" once every thread runs, then runs until the VM is stopped.
#define _GNU_SOURCE
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static atomic_int started;
static atomic_int token;
static volatile char *page;

static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) {
    perror("sched_setaffinity");
    exit(1);
  }
  atomic_fetch_add(&started, 1);
}

static void *spin(void *arg) {
  pin((int)(long)arg);
  for (volatile unsigned long n = 0;; n++) {
  }
  return NULL;
}

static void *membarrier_storm(void *arg) {
  (void)arg;
  pin(0);
  for (;;) {
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) {
      perror("membarrier");
      exit(1);
    }
  }
  return NULL;
}

static void *mprotect_storm(void *arg) {
  (void)arg;
  pin(1);
  for (;;) {
    if (mprotect((void *)page, 4096, PROT_READ) != 0 || mprotect((void *)page, 4096, PROT_READ | PROT_WRITE) != 0) {
      perror("mprotect");
      exit(1);
    }
    page[0]++;
  }
  return NULL;
}

static void *ping(void *arg) {
  int me = (int)(long)arg;
  pin(me);
  for (;;) {
    int t;
    while ((t = atomic_load(&token)) != me) syscall(SYS_futex, &token, FUTEX_WAIT_PRIVATE, t, NULL, NULL, 0);
    atomic_store(&token, 1 - me);
    syscall(SYS_futex, &token, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
  }
  return NULL;
}

int main(void) {
  if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) != 0) {
    perror("membarrier register");
    return 1;
  }
  page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  page[0] = 1;
  struct { void *(*fn)(void *); long arg; } threads[] = {
    { spin, 0 }, { spin, 1 }, { membarrier_storm, 0 }, { mprotect_storm, 0 }, { ping, 0 }, { ping, 1 },
  };
  const int n = sizeof threads / sizeof threads[0];
  for (int i = 0; i < n; i++) {
    pthread_t t;
    if (pthread_create(&t, NULL, threads[i].fn, (void *)threads[i].arg) != 0) {
      perror("pthread_create");
      return 1;
    }
  }
  while (atomic_load(&started) < n) sched_yield();
  printf("storm-ready\n");
  fflush(stdout);
  for (;;) pause();
}
