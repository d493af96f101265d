/*
 * tap-relay NAME: the part of tsvisor's tap backend (tap.ts) that Node cannot
 * do itself. Attaching to a tap device takes the TUNSETIFF ioctl on
 * /dev/net/tun, which Node has no call for, so this small program does it and
 * then relays Ethernet frames between the tap and its stdin/stdout, each frame
 * preceded by its length as 4 bytes, big-endian (the framing of framing.ts).
 *
 *   - It attaches to the tap NAME (IFF_TAP | IFF_NO_PI), creating it when it
 *     does not exist; a tap it creates is not persistent and disappears when
 *     the relay exits. It then writes an empty frame (4 zero bytes): "ready".
 *   - tap -> stdout: one frame at a time; while stdout is full, the tap is not
 *     read, so the kernel's tap queue (not this program) absorbs a slow reader.
 *   - stdin -> tap: frames written to the tap as they arrive; the kernel drops
 *     what it cannot take (the interface is down, its queue is full).
 *   - It exits 0 when stdin reaches its end or stdout is closed, and 1 with
 *     one line on stderr ("reason (hint)"; tap.ts prefixes "tap:NAME: ") when
 *     it cannot go on.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* The largest IP packet behind an Ethernet header with a VLAN tag (MAX_FRAME_BYTES in net-backend.ts). */
#define MAX_FRAME (65535 + 18)
#define HEADER 4

static const char *ifname;

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

static int open_tap(void) {
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT || e == ENODEV) die("/dev/net/tun: %s (load the tun module: modprobe tun)", strerror(e));
    if (e == EACCES || e == EPERM) die("/dev/net/tun: %s (need CAP_NET_ADMIN, or read-write access to /dev/net/tun)", strerror(e));
    die("/dev/net/tun: %s", strerror(e));
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int e = errno;
    if (e == EPERM || e == EACCES)
      die("%s (need CAP_NET_ADMIN, or create it with `ip tuntap add %s mode tap user $USER`)", strerror(e), ifname);
    if (e == EBUSY) die("%s (another program has it open)", strerror(e));
    if (e == EINVAL) die("%s (an interface of that name exists and is not a tap device)", strerror(e));
    die("%s", strerror(e));
  }
  return fd;
}

static void set_nonblocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) die("fcntl: %s", strerror(errno));
}

static int transient(int e) { return e == EAGAIN || e == EWOULDBLOCK || e == EINTR; }

/* stdin: frames from tsvisor, possibly split or several per read. */
static unsigned char in_buf[HEADER + MAX_FRAME];
static size_t in_len;

/* stdout: the one frame from the tap that is being written out. */
static unsigned char out_buf[HEADER + MAX_FRAME];
static size_t out_len, out_done;

static void put_header(unsigned char *p, uint32_t n) {
  p[0] = n >> 24; p[1] = n >> 16; p[2] = n >> 8; p[3] = n;
}

/* Reads what stdin has and writes every complete frame to the tap. */
static void from_stdin(int tap) {
  ssize_t n = read(0, in_buf + in_len, sizeof in_buf - in_len);
  if (n == 0) exit(0);
  if (n < 0) {
    if (transient(errno)) return;
    die("reading stdin: %s", strerror(errno));
  }
  in_len += (size_t)n;
  size_t at = 0;
  while (in_len - at >= HEADER) {
    const unsigned char *p = in_buf + at;
    uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    if (len == 0 || len > MAX_FRAME) die("bad frame length %u from tsvisor", len);
    if (in_len - at < HEADER + len) break;
    if (write(tap, p + HEADER, len) < 0 && errno == EBADFD) die("the tap device went away");
    at += HEADER + len;
  }
  memmove(in_buf, in_buf + at, in_len - at);
  in_len -= at;
}

/* Writes as much of the pending frame as stdout takes. */
static void flush_stdout(void) {
  while (out_done < out_len) {
    ssize_t n = write(1, out_buf + out_done, out_len - out_done);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      exit(0); /* tsvisor closed its end */
    }
    out_done += (size_t)n;
  }
  out_len = out_done = 0;
}

static void from_tap(int tap) {
  ssize_t n = read(tap, out_buf + HEADER, MAX_FRAME);
  if (n <= 0) {
    if (n < 0 && !transient(errno)) die("reading the tap: %s", strerror(errno));
    return;
  }
  put_header(out_buf, (uint32_t)n);
  out_len = HEADER + (size_t)n;
  out_done = 0;
  flush_stdout();
}

int main(int argc, char **argv) {
  if (argc != 2 || argv[1][0] == 0) die("usage: tap-relay NAME");
  ifname = argv[1];
  if (strlen(ifname) >= IFNAMSIZ) die("name longer than %d bytes", IFNAMSIZ - 1);
  signal(SIGPIPE, SIG_IGN);
  int tap = open_tap();
  set_nonblocking(tap);
  set_nonblocking(1);
  put_header(out_buf, 0); /* ready */
  out_len = HEADER;
  flush_stdout();

  for (;;) {
    struct pollfd p[3] = {
      { .fd = 0, .events = POLLIN },
      { .fd = tap, .events = out_len ? 0 : POLLIN },
      { .fd = 1, .events = out_len ? POLLOUT : 0 },
    };
    if (poll(p, 3, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll: %s", strerror(errno));
    }
    if (p[2].revents & (POLLERR | POLLHUP) && !(p[2].revents & POLLOUT)) exit(0);
    if (p[0].revents) from_stdin(tap);
    if (p[2].revents & POLLOUT) flush_stdout();
    if (p[1].revents & POLLIN) from_tap(tap);
    if (p[1].revents & (POLLERR | POLLNVAL)) die("the tap device went away");
  }
}
