// Guest-side helper for `npm run bench:io` (bench/io.ts). Unlike the other
// programs here it is a Linux user program, built static with Debian's
// riscv64-linux-gnu-gcc, and it reaches the guest through `tsvisor run`'s
// stdin (/tsvisor/stdin). Clocks are the guest's CLOCK_MONOTONIC.
//
//   iobench time CMD [ARGS...]
//       runs CMD, waits for it, prints "elapsed SECONDS" on stderr and exits
//       with CMD's status (busybox's date has no sub-second format).
//   iobench rand DEV read|write SPAN SECONDS
//       random 4 KiB reads or writes at 4 KiB-aligned offsets within the first
//       SPAN bytes of DEV, one at a time (queue depth 1), with O_DIRECT so the
//       guest's page cache stays out of it, for about SECONDS seconds; writes
//       end with fsync (a virtio-blk flush), which is counted. Prints
//       "ops N seconds S iops R".

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int usage(void) {
  fprintf(stderr, "usage: iobench time CMD [ARGS...] | iobench rand DEV read|write SPAN SECONDS\n");
  return 2;
}

static int run_timed(char **argv) {
  double t0 = now();
  pid_t pid = fork();
  if (pid < 0) {
    perror("iobench: fork");
    return 1;
  }
  if (pid == 0) {
    execvp(argv[0], argv);
    fprintf(stderr, "iobench: exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      perror("iobench: waitpid");
      return 1;
    }
  }
  fprintf(stderr, "elapsed %.6f\n", now() - t0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_random(void) {  // xorshift64*: fixed seed, same offsets every run
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return rng * 0x2545f4914f6cdd1dull;
}

static int run_random(const char *dev, const char *mode, const char *span_arg, const char *secs_arg) {
  int writing = strcmp(mode, "write") == 0;
  if (!writing && strcmp(mode, "read") != 0) return usage();
  long long span = atoll(span_arg);
  double seconds = atof(secs_arg);
  uint64_t blocks = (uint64_t)span / BLOCK;
  if (blocks == 0 || seconds <= 0) return usage();

  int fd = open(dev, (writing ? O_RDWR : O_RDONLY) | O_DIRECT);
  if (fd < 0) {
    fprintf(stderr, "iobench: open %s: %s\n", dev, strerror(errno));
    return 1;
  }
  void *buf;
  if (posix_memalign(&buf, BLOCK, BLOCK) != 0) return 1;
  for (int i = 0; i < BLOCK; i++) ((unsigned char *)buf)[i] = (unsigned char)(i * 7 + 1);

  long ops = 0;
  double t0 = now(), t;
  do {
    // Check the clock every 16 operations: cheap, and still stops on time.
    for (int i = 0; i < 16; i++) {
      off_t off = (off_t)(next_random() % blocks) * BLOCK;
      ssize_t n = writing ? pwrite(fd, buf, BLOCK, off) : pread(fd, buf, BLOCK, off);
      if (n != BLOCK) {
        fprintf(stderr, "iobench: %s at %lld: %s\n", mode, (long long)off, n < 0 ? strerror(errno) : "short transfer");
        return 1;
      }
      ops++;
    }
    t = now() - t0;
  } while (t < seconds);
  if (writing && fsync(fd) != 0) {
    perror("iobench: fsync");
    return 1;
  }
  t = now() - t0;
  close(fd);
  printf("ops %ld seconds %.6f iops %.1f\n", ops, t, (double)ops / t);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "time") == 0) return run_timed(argv + 2);
  if (argc == 6 && strcmp(argv[1], "rand") == 0) return run_random(argv[2], argv[3], argv[4], argv[5]);
  return usage();
}
