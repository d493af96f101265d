// tsvisor-agent: the guest side of `tsvisor vm exec`. Built static for
// riscv64 when the initramfs is (images/agent.ts) and started by init in the
// background when the VM has a virtio-vsock device (images/init.ts).
//
// It listens on vsock port 52 (argv[1] overrides) and serves each connection
// in a process of its own, so sessions run concurrently. The protocol
// (images/agent-protocol.ts is the host's half) is frames:
//   type u8, stream u8, reserved u16 (0), length u32 little-endian, payload
//   ENV   6  client -> agent, optional, before EXEC, once: NAME=VALUE entries,
//            each NUL-terminated, added to the command's environment
//   CWD   7  client -> agent, optional, before EXEC, once: the directory the
//            command starts in
//   TTY   8  client -> agent, optional, before EXEC, once: u16 rows, u16 columns:
//            the command gets a pseudo-terminal of that size as its stdin,
//            stdout and stderr (its output comes as stream 1; the end of the
//            client's stdin is not passed on: a terminal's input ends when its
//            user types ^D or the command exits. Typed on the client's behalf,
//            ^D would race the command's terminal mode: read in canonical
//            mode it is an end of file, in raw mode a key, and one written in
//            the first and read in the second is lost)
//   RESIZE 9 client -> agent, after EXEC, with TTY: u16 rows, u16 columns
//   EXEC  1  client -> agent, once: argv, each word NUL-terminated
//   DATA  2  stream 0: stdin (client -> agent); 1 stdout, 2 stderr (agent -> client)
//   EOF   3  stream 0: the client's stdin ended (the command's stdin is closed)
//   EXIT  4  agent -> client, last: i32 status (the exit code; 128+N for signal N)
//   ERROR 5  agent -> client: a protocol error, in words; the session ends
// The command runs in a session of its own, with stdin, stdout and stderr
// pipes, PATH and HOME as init set them (and ENV's entries), in /root (or
// CWD's directory). A command that cannot be run exits 127 (not found) or
// 126 (found, not executable; or no such CWD, as `docker exec -w` does), as
// a shell says.
// The session ends when the command has exited and its stdout and stderr are
// closed. When the client goes away, the command's process group is killed.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

enum { T_EXEC = 1, T_DATA = 2, T_EOF = 3, T_EXIT = 4, T_ERROR = 5, T_ENV = 6, T_CWD = 7, T_TTY = 8, T_RESIZE = 9 };
#define HDR 8
#define MAX_EXEC (1 << 20)
#define MAX_DATA (64 << 10)

static int write_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int read_all(int fd, void *buf, size_t n) {
  char *p = buf;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static int send_frame(int fd, int type, int stream, const void *payload, uint32_t len) {
  unsigned char h[HDR] = { (unsigned char)type, (unsigned char)stream, 0, 0,
    (unsigned char)len, (unsigned char)(len >> 8), (unsigned char)(len >> 16), (unsigned char)(len >> 24) };
  if (write_all(fd, h, HDR) < 0) return -1;
  return len ? write_all(fd, payload, len) : 0;
}

static void fail_session(int conn, const char *msg) {
  send_frame(conn, T_ERROR, 0, msg, (uint32_t)strlen(msg));
  _exit(1);
}

static int read_header(int fd, int *type, int *stream, uint32_t *len) {
  unsigned char h[HDR];
  if (read_all(fd, h, HDR) < 0) return -1;
  *type = h[0];
  *stream = h[1];
  *len = (uint32_t)h[4] | ((uint32_t)h[5] << 8) | ((uint32_t)h[6] << 16) | ((uint32_t)h[7] << 24);
  return 0;
}

/* A frame's payload of NUL-terminated words (len bytes, at most MAX_EXEC) as
 * a NULL-terminated array; `what` names the frame in errors. */
static char **read_words(int conn, uint32_t len, const char *what) {
  char msg[64];
  snprintf(msg, sizeof msg, "%s: the last word is not NUL-terminated", what);
  char *words = malloc(len + 1);
  if (!words || read_all(conn, words, len) < 0) _exit(1);
  words[len] = 0;
  if (len == 0 || words[len - 1] != 0) fail_session(conn, msg);
  size_t n = 0;
  for (uint32_t i = 0; i < len; i++) n += words[i] == 0;
  char **list = calloc(n + 1, sizeof *list);
  if (!list) _exit(1);
  char *w = words;
  for (size_t i = 0; i < n; i++) {
    list[i] = w;
    w += strlen(w) + 1;
  }
  return list;
}

/* A TTY or RESIZE payload: u16 rows, u16 columns (little-endian). */
static int read_winsize(int conn, uint32_t len, struct winsize *ws) {
  unsigned char b[4];
  if (len != 4 || read_all(conn, b, 4) < 0) return -1;
  memset(ws, 0, sizeof *ws);
  ws->ws_row = (unsigned short)(b[0] | b[1] << 8);
  ws->ws_col = (unsigned short)(b[2] | b[3] << 8);
  return 0;
}

static void session(int conn) {
  signal(SIGCHLD, SIG_DFL);
  int type, stream;
  uint32_t len;
  char **env = 0, **cwd = 0, **argv = 0;
  int tty = 0;
  struct winsize ws;
  while (!argv) {
    if (read_header(conn, &type, &stream, &len) < 0) _exit(1);
    if (len == 0 || len > MAX_EXEC) fail_session(conn, "expected ENV, CWD, TTY or EXEC with a payload of 1 byte to 1 MiB");
    if (type == T_TTY && !tty) {
      if (read_winsize(conn, len, &ws) < 0) fail_session(conn, "TTY: expected rows and columns (4 bytes)");
      tty = 1;
    } else if (type == T_ENV && !env) {
      env = read_words(conn, len, "ENV");
      for (char **e = env; *e; e++) {
        char *eq = strchr(*e, '=');
        if (!eq || eq == *e) fail_session(conn, "ENV: an entry is not NAME=VALUE");
      }
    } else if (type == T_CWD && !cwd) {
      cwd = read_words(conn, len, "CWD");
      if (!cwd[0] || cwd[1] || !cwd[0][0]) fail_session(conn, "CWD: expected one directory");
    } else if (type == T_EXEC) {
      argv = read_words(conn, len, "EXEC");
    } else {
      fail_session(conn, "expected ENV, CWD, TTY or EXEC (each once), EXEC last");
    }
  }
  if (!argv[0] || argv[0][0] == 0) fail_session(conn, "EXEC: empty command");

  // Pipes, or a pseudo-terminal whose master is both the command's input and its output.
  int in[2], out[2], err[2], master = -1;
  char *slave = 0;
  if (tty) {
    master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0 || !(slave = ptsname(master))) fail_session(conn, "no pseudo-terminal (is /dev/pts mounted?)");
    ioctl(master, TIOCSWINSZ, &ws);
  } else if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
    fail_session(conn, "pipe failed");
  }
  pid_t pid = fork();
  if (pid < 0) fail_session(conn, "fork failed");
  if (pid == 0) {
    setsid();
    if (tty) {
      int s = open(slave, O_RDWR);
      if (s < 0 || ioctl(s, TIOCSCTTY, 0) < 0) _exit(126);
      dup2(s, 0);
      dup2(s, 1);
      dup2(s, 2);
      if (s > 2) close(s);
    } else {
      dup2(in[0], 0);
      dup2(out[1], 1);
      dup2(err[1], 2);
    }
    signal(SIGPIPE, SIG_DFL);
    for (char **e = env; e && *e; e++) putenv(*e);
    if (cwd && chdir(cwd[0]) < 0) {
      dprintf(2, "tsvisor-agent: cannot start in %s: %s\n", cwd[0], strerror(errno));
      _exit(126);
    }
    execvp(argv[0], argv);
    int e = errno;
    dprintf(2, "%s: %s\n", argv[0], e == ENOENT ? "not found" : strerror(e));
    _exit(e == ENOENT ? 127 : 126);
  }
  int in_fd, out_fd, err_fd;
  if (tty) {
    in_fd = dup(master);
    out_fd = master;
    err_fd = -1;
  } else {
    close(in[0]);
    close(out[1]);
    close(err[1]);
    in_fd = in[1];
    out_fd = out[0];
    err_fd = err[0];
  }
  fcntl(in_fd, F_SETFL, O_NONBLOCK);

  static char buf[MAX_DATA];
  static char pending[MAX_DATA];
  size_t pend_off = 0, pend_len = 0;
  int stdin_eof = 0, conn_open = 1, exited = 0, status = 0;
  for (;;) {
    if (!exited) {
      int st;
      pid_t r = waitpid(pid, &st, WNOHANG);
      if (r == pid) {
        exited = 1;
        status = WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : 1;
      }
    }
    if (exited && out_fd < 0 && err_fd < 0) break;
    // With a terminal the command's exit ends the session once its output is
    // read (a process it left behind may hold the terminal open for ever).
    if (exited && tty) {
      ssize_t r;
      while ((r = read(out_fd, buf, sizeof buf)) > 0) {
        if (conn_open && send_frame(conn, T_DATA, 1, buf, (uint32_t)r) < 0) conn_open = 0;
      }
      break;
    }
    struct pollfd p[4];
    int n = 0, i_conn = -1, i_in = -1, i_out = -1, i_err = -1;
    if (conn_open && pend_len == 0) { i_conn = n; p[n].fd = conn; p[n++].events = POLLIN; }
    if (in_fd >= 0 && pend_len > 0) { i_in = n; p[n].fd = in_fd; p[n++].events = POLLOUT; }
    if (out_fd >= 0) { i_out = n; p[n].fd = out_fd; p[n++].events = POLLIN; }
    if (err_fd >= 0) { i_err = n; p[n].fd = err_fd; p[n++].events = POLLIN; }
    // Until it exits, look at the child every 50 ms when its outputs are closed
    // (or may stay open without it: a terminal).
    int timeout = (!exited && out_fd < 0 && err_fd < 0) || n == 0 || tty ? 50 : -1;
    if (poll(p, (nfds_t)n, timeout) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (i_conn >= 0 && p[i_conn].revents) {
      if (read_header(conn, &type, &stream, &len) < 0) {
        conn_open = 0;
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
        continue;
      }
      if (type == T_DATA && stream == 0 && len <= MAX_DATA) {
        if (read_all(conn, pending, len) < 0) { conn_open = 0; kill(-pid, SIGKILL); kill(pid, SIGKILL); continue; }
        if (in_fd >= 0) { pend_off = 0; pend_len = len; }
      } else if (type == T_EOF && len == 0) {
        stdin_eof = 1;
      } else if (type == T_RESIZE && tty) {
        struct winsize nws;
        if (read_winsize(conn, len, &nws) < 0) { conn_open = 0; kill(-pid, SIGKILL); kill(pid, SIGKILL); continue; }
        ioctl(master, TIOCSWINSZ, &nws);
      } else {
        send_frame(conn, T_ERROR, 0, "unexpected frame", 16);
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
        conn_open = 0;
        continue;
      }
    }
    if (i_in >= 0 && p[i_in].revents) {
      ssize_t wr = write(in_fd, pending + pend_off, pend_len);
      if (wr > 0) { pend_off += (size_t)wr; pend_len -= (size_t)wr; }
      else if (wr < 0 && errno != EAGAIN && errno != EINTR) { pend_len = 0; close(in_fd); in_fd = -1; }
    }
    if (in_fd >= 0 && pend_len == 0 && stdin_eof) {
      close(in_fd); // a pipe's end is the command's end of file; a terminal's master stays open (out_fd)
      in_fd = -1;
    }
    int *fds[2] = { &out_fd, &err_fd };
    int idx[2] = { i_out, i_err };
    for (int k = 0; k < 2; k++) {
      if (idx[k] < 0 || !p[idx[k]].revents) continue;
      ssize_t r = read(*fds[k], buf, sizeof buf);
      if (r > 0) {
        if (conn_open && send_frame(conn, T_DATA, k + 1, buf, (uint32_t)r) < 0) { conn_open = 0; kill(-pid, SIGKILL); kill(pid, SIGKILL); }
      } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
        close(*fds[k]);
        *fds[k] = -1;
      }
    }
  }
  if (conn_open) {
    unsigned char s[4] = { (unsigned char)status, (unsigned char)(status >> 8), (unsigned char)(status >> 16), (unsigned char)(status >> 24) };
    send_frame(conn, T_EXIT, 0, s, 4);
  }
  _exit(0);
}

int main(int argc, char **argv) {
  unsigned int port = argc > 1 ? (unsigned int)strtoul(argv[1], 0, 10) : 52;
  signal(SIGPIPE, SIG_IGN);
  signal(SIGCHLD, SIG_IGN); // sessions are reaped by the kernel
  if (chdir("/root") < 0) (void)chdir("/");
  int l = -1;
  // The transport may still be coming up: try for a few seconds.
  for (int tries = 0; tries < 50; tries++) {
    l = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l >= 0) {
      struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
      if (bind(l, (struct sockaddr *)&a, sizeof a) == 0 && listen(l, 16) == 0) break;
      close(l);
      l = -1;
    }
    usleep(100000);
  }
  if (l < 0) {
    perror("tsvisor-agent: vsock");
    return 1;
  }
  for (;;) {
    int c = accept4(l, 0, 0, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      usleep(10000);
      continue;
    }
    pid_t pid = fork();
    if (pid == 0) {
      close(l);
      session(c);
    }
    close(c);
  }
}
