// The guest half of vsock-guest.test.ts: AF_VSOCK stream sockets both ways,
// byte-exact, with transfers larger than the credit window.
//   vsock-guest HOSTPORT GUESTPORT BYTES
// 1. connects to the host (CID 2) port HOSTPORT, sends BYTES of pattern 1,
//    shuts its sending side, reads until EOF and checks BYTES of pattern 2;
// 2. listens on GUESTPORT, prints "vsock-guest: listening", accepts, reads
//    BYTES of pattern 3, sends BYTES of pattern 4, shuts its sending side,
//    waits for the host's "K" and EOF;
// prints "vsock-guest: ok" and exits 0, or a reason and exits 1.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static unsigned char pattern(unsigned long i, int seed) {
  return (unsigned char)(i * 7 + seed * 13 + (i >> 12));
}

static void die(const char *what) {
  printf("vsock-guest: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void send_pattern(int fd, unsigned long n, int seed) {
  static unsigned char buf[65536];
  unsigned long done = 0;
  while (done < n) {
    unsigned long k = n - done < sizeof buf ? n - done : sizeof buf;
    for (unsigned long j = 0; j < k; j++) buf[j] = pattern(done + j, seed);
    unsigned long off = 0;
    while (off < k) {
      ssize_t w = write(fd, buf + off, k - off);
      if (w < 0) die("write");
      off += (unsigned long)w;
    }
    done += k;
  }
}

/* Reads exactly n bytes (or until EOF when until_eof) and checks them. */
static void recv_pattern(int fd, unsigned long n, int seed, int until_eof) {
  static unsigned char buf[65536];
  unsigned long done = 0;
  for (;;) {
    size_t want = sizeof buf;
    if (!until_eof && n - done < want) want = n - done;
    if (want == 0) break;
    ssize_t r = read(fd, buf, want);
    if (r < 0) die("read");
    if (r == 0) break;
    for (ssize_t j = 0; j < r; j++) {
      if (done + (unsigned long)j >= n || buf[j] != pattern(done + j, seed)) {
        printf("vsock-guest: pattern %d: byte %lu wrong (0x%02x)\n", seed, done + j, buf[j]);
        exit(1);
      }
    }
    done += (unsigned long)r;
  }
  if (done != n) {
    printf("vsock-guest: pattern %d: %lu bytes, expected %lu\n", seed, done, n);
    exit(1);
  }
}

int main(int argc, char **argv) {
  if (argc != 4) {
    printf("usage: vsock-guest HOSTPORT GUESTPORT BYTES\n");
    return 2;
  }
  unsigned int host_port = (unsigned int)strtoul(argv[1], 0, 10);
  unsigned int guest_port = (unsigned int)strtoul(argv[2], 0, 10);
  unsigned long n = strtoul(argv[3], 0, 10);
  setvbuf(stdout, 0, _IONBF, 0);

  int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  struct sockaddr_vm to = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = host_port };
  if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0) die("connect");
  send_pattern(fd, n, 1);
  if (shutdown(fd, SHUT_WR) < 0) die("shutdown");
  recv_pattern(fd, n, 2, 1);
  close(fd);
  printf("vsock-guest: connect ok\n");

  int l = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (l < 0) die("socket");
  struct sockaddr_vm me = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = guest_port };
  if (bind(l, (struct sockaddr *)&me, sizeof me) < 0) die("bind");
  if (listen(l, 4) < 0) die("listen");
  printf("vsock-guest: listening\n");
  int c = accept(l, 0, 0);
  if (c < 0) die("accept");
  recv_pattern(c, n, 3, 0);
  send_pattern(c, n, 4);
  if (shutdown(c, SHUT_WR) < 0) die("shutdown");
  char k = 0;
  if (read(c, &k, 1) != 1 || k != 'K') {
    printf("vsock-guest: no K from the host\n");
    return 1;
  }
  if (read(c, &k, 1) != 0) {
    printf("vsock-guest: more than K from the host\n");
    return 1;
  }
  close(c);
  close(l);
  printf("vsock-guest: ok\n");
  return 0;
}
