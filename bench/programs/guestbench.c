// User-mode workloads for `npm run bench:guest` (bench/guest.ts): one static
// riscv64 Linux program, run inside the Debian guest under tsvisor and under
// QEMU's TCG. Each workload times itself with the guest's CLOCK_MONOTONIC and
// prints
//     BENCH <name> elapsed <seconds> sum <checksum>
// where the checksum depends only on the work done, so both engines must
// print the same one (a wrong result is caught, not timed).
//
//   guestbench NAME SCALE     one workload, SCALE times its unit of work
//   guestbench gen BYTES      text for the busybox tools (seeded, on stdout)
//
// Workloads (each a kind of code real programs spend time in):
//   sort      integer: quicksort of pseudo-random 32-bit keys
//   hash      integer + memory: open-addressing hash table, inserts and lookups
//   chase     pointer chasing: a random cyclic list over 16 MiB (TLB and cache misses)
//   matmul    floating point: double-precision matrix multiply
//   nbody     floating point: n-body steps with sqrt and division
//   string    string handling: strlen, strstr, memcmp, memcpy over a text
//   interp    a small bytecode interpreter (indirect branches)
//   lz        a compressor: LZ77 with a hash chain, then decompressed and compared
//   parallel  two threads of `hash` at once (for two vCPUs)

#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) {
  // xorshift64*: the same sequence on every engine
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545f4914f6cdd1dull;
}

static void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (!p) {
    fprintf(stderr, "guestbench: out of memory (%zu bytes)\n", n);
    exit(1);
  }
  return p;
}

// ---- sort ------------------------------------------------------------------

static void quicksort(uint32_t *a, long lo, long hi) {
  while (lo < hi) {
    uint32_t p = a[lo + (hi - lo) / 2];
    long i = lo, j = hi;
    while (i <= j) {
      while (a[i] < p) i++;
      while (a[j] > p) j--;
      if (i <= j) {
        uint32_t t = a[i];
        a[i++] = a[j];
        a[j--] = t;
      }
    }
    if (j - lo < hi - i) {
      quicksort(a, lo, j);
      lo = i;
    } else {
      quicksort(a, i, hi);
      hi = j;
    }
  }
}

static uint64_t w_sort(long scale) {
  const long n = 200000;
  uint32_t *a = xmalloc(n * sizeof *a);
  uint64_t sum = 0;
  for (long r = 0; r < scale; r++) {
    for (long i = 0; i < n; i++) a[i] = (uint32_t)next();
    quicksort(a, 0, n - 1);
    for (long i = 0; i < n; i += 997) sum = sum * 31 + a[i];
  }
  free(a);
  return sum;
}

// ---- hash ------------------------------------------------------------------

static uint64_t hash_work(long scale, uint64_t seed) {
  const long slots = 1 << 18, n = 150000;
  uint64_t *keys = xmalloc(slots * sizeof *keys);
  uint32_t *vals = xmalloc(slots * sizeof *vals);
  uint64_t sum = 0;
  for (long r = 0; r < scale; r++) {
    uint64_t s = seed + (uint64_t)r;
    memset(keys, 0, slots * sizeof *keys);
    for (long i = 0; i < n; i++) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      uint64_t k = (s >> 16) | 1;
      uint64_t h = (k * 0x9e3779b97f4a7c15ull) >> 46;
      while (keys[h] && keys[h] != k) h = (h + 1) & (slots - 1);
      keys[h] = k;
      vals[h] = (uint32_t)i;
    }
    uint64_t t = seed + (uint64_t)r; // the same keys, looked up again
    for (long i = 0; i < n; i++) {
      t = t * 6364136223846793005ull + 1442695040888963407ull;
      uint64_t k = (t >> 16) | 1;
      uint64_t h = (k * 0x9e3779b97f4a7c15ull) >> 46;
      while (keys[h] != k) h = (h + 1) & (slots - 1);
      sum += vals[h];
    }
  }
  free(keys);
  free(vals);
  return sum;
}

static uint64_t w_hash(long scale) {
  return hash_work(scale, 12345);
}

// ---- chase -----------------------------------------------------------------

static uint64_t w_chase(long scale) {
  const long n = (16 << 20) / sizeof(uint32_t);
  uint32_t *next_of = xmalloc(n * sizeof *next_of);
  uint32_t *order = xmalloc(n * sizeof *order);
  for (long i = 0; i < n; i++) order[i] = (uint32_t)i;
  for (long i = n - 1; i > 0; i--) {
    long j = (long)(next() % (uint64_t)(i + 1));
    uint32_t t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  for (long i = 0; i < n; i++) next_of[order[i]] = order[(i + 1) % n];
  free(order);
  uint64_t sum = 0;
  uint32_t at = 0;
  for (long r = 0; r < scale; r++) {
    for (long i = 0; i < 1000000; i++) at = next_of[at];
    sum += at;
  }
  free(next_of);
  return sum;
}

// ---- matmul, nbody ---------------------------------------------------------

static uint64_t w_matmul(long scale) {
  const int n = 128;
  double *a = xmalloc(n * n * sizeof *a), *b = xmalloc(n * n * sizeof *b), *c = xmalloc(n * n * sizeof *c);
  for (int i = 0; i < n * n; i++) {
    a[i] = (double)(next() % 1000) / 997.0;
    b[i] = (double)(next() % 1000) / 991.0;
  }
  double total = 0;
  for (long r = 0; r < scale; r++) {
    for (int i = 0; i < n; i++)
      for (int j = 0; j < n; j++) {
        double s = 0;
        for (int k = 0; k < n; k++) s += a[i * n + k] * b[k * n + j];
        c[i * n + j] = s;
      }
    total += c[(r * 7) % (n * n)];
    a[r % (n * n)] += 0.5;
  }
  free(a);
  free(b);
  free(c);
  return (uint64_t)(total * 1000.0);
}

static uint64_t w_nbody(long scale) {
  enum { N = 48 };
  double x[N], y[N], z[N], vx[N], vy[N], vz[N], m[N];
  for (int i = 0; i < N; i++) {
    x[i] = (double)(next() % 2000) - 1000;
    y[i] = (double)(next() % 2000) - 1000;
    z[i] = (double)(next() % 2000) - 1000;
    vx[i] = vy[i] = vz[i] = 0;
    m[i] = 1 + (double)(next() % 100);
  }
  const double dt = 0.01;
  for (long step = 0; step < scale * 40; step++) {
    for (int i = 0; i < N; i++)
      for (int j = 0; j < N; j++) {
        if (i == j) continue;
        double dx = x[j] - x[i], dy = y[j] - y[i], dz = z[j] - z[i];
        double d2 = dx * dx + dy * dy + dz * dz + 1.0;
        double f = m[j] / (d2 * sqrt(d2));
        vx[i] += dx * f * dt;
        vy[i] += dy * f * dt;
        vz[i] += dz * f * dt;
      }
    for (int i = 0; i < N; i++) {
      x[i] += vx[i] * dt;
      y[i] += vy[i] * dt;
      z[i] += vz[i] * dt;
    }
  }
  double e = 0;
  for (int i = 0; i < N; i++) e += m[i] * (vx[i] * vx[i] + vy[i] * vy[i] + vz[i] * vz[i]);
  return (uint64_t)(e * 1e6);
}

// ---- string ----------------------------------------------------------------

static const char *WORDS[] = {"virtual", "machine", "page", "table", "interrupt", "queue", "descriptor", "kernel",
                              "guest", "host", "memory", "device", "register", "translation", "buffer", "cache"};

static void make_text(char *buf, long len) {
  long at = 0;
  while (at < len - 16) {
    const char *w = WORDS[next() % 16];
    long l = (long)strlen(w);
    memcpy(buf + at, w, l);
    at += l;
    buf[at++] = next() % 11 == 0 ? '\n' : ' ';
  }
  buf[at] = 0;
}

static uint64_t w_string(long scale) {
  const long len = 1 << 20;
  char *text = xmalloc(len + 1), *out = xmalloc(2 * len + 1);
  make_text(text, len);
  uint64_t sum = 0;
  for (long r = 0; r < scale; r++) {
    // replace every "page" by "frame", line by line, and count what changed
    long o = 0;
    for (char *line = text; *line;) {
      char *end = strchr(line, '\n');
      long l = end ? end - line : (long)strlen(line);
      char *p = line;
      for (;;) {
        char *hit = memmem(p, l - (p - line), "page", 4);
        if (!hit) break;
        memcpy(out + o, p, hit - p);
        o += hit - p;
        memcpy(out + o, "frame", 5);
        o += 5;
        p = hit + 4;
        sum++;
      }
      memcpy(out + o, p, l - (p - line));
      o += l - (p - line);
      out[o++] = '\n';
      line += l + (end ? 1 : 0);
    }
    out[o] = 0;
    sum += (uint64_t)strlen(out) + (uint64_t)(memcmp(out, text, 64) > 0) + (strstr(out, "translation buffer") != 0);
  }
  free(text);
  free(out);
  return sum;
}

// ---- interp ----------------------------------------------------------------

enum { OP_PUSH, OP_LOAD, OP_STORE, OP_ADD, OP_SUB, OP_MUL, OP_MOD, OP_LT, OP_JZ, OP_JMP, OP_HALT };

static uint64_t w_interp(long scale) {
  // s = 0; for (i = 0; i < n; i++) s = (s * 31 + i) % 1000003;
  const int64_t code[] = {
      OP_PUSH, 0, OP_STORE, 0,                      // s = 0
      OP_PUSH, 0, OP_STORE, 1,                      // i = 0
      OP_LOAD, 1, OP_LOAD, 2, OP_LT, OP_JZ, 39,     // 8: while (i < n)
      OP_LOAD, 0, OP_PUSH, 31, OP_MUL, OP_LOAD, 1, OP_ADD, OP_PUSH, 1000003, OP_MOD, OP_STORE, 0,
      OP_LOAD, 1, OP_PUSH, 1, OP_ADD, OP_STORE, 1,  // i++
      OP_JMP, 8, 0, 0,                              // 35
      OP_HALT,                                      // 39
  };
  int64_t vars[3] = {0, 0, 200000};
  uint64_t sum = 0;
  for (long r = 0; r < scale; r++) {
    int64_t stack[16];
    int sp = 0;
    long pc = 0;
    vars[2] = 200000 + r;
    for (;;) {
      int64_t op = code[pc++];
      switch (op) {
        case OP_PUSH: stack[sp++] = code[pc++]; break;
        case OP_LOAD: stack[sp++] = vars[code[pc++]]; break;
        case OP_STORE: vars[code[pc++]] = stack[--sp]; break;
        case OP_ADD: sp--; stack[sp - 1] += stack[sp]; break;
        case OP_SUB: sp--; stack[sp - 1] -= stack[sp]; break;
        case OP_MUL: sp--; stack[sp - 1] *= stack[sp]; break;
        case OP_MOD: sp--; stack[sp - 1] %= stack[sp]; break;
        case OP_LT: sp--; stack[sp - 1] = stack[sp - 1] < stack[sp]; break;
        case OP_JZ: { int64_t t = code[pc++]; if (!stack[--sp]) pc = t; break; }
        case OP_JMP: pc = code[pc]; break;
        case OP_HALT: goto done;
        default: fprintf(stderr, "guestbench: bad opcode\n"); exit(1);
      }
    }
  done:
    sum = sum * 7 + (uint64_t)vars[0];
  }
  return sum;
}

// ---- lz --------------------------------------------------------------------

static long lz_compress(const uint8_t *in, long n, uint8_t *out) {
  // tokens: 0x00 len8 bytes... (literals) | 0x01 len8 dist16 (a match)
  enum { HBITS = 15, WINDOW = 65535, MINM = 4 };
  static int32_t head[1 << HBITS];
  static int32_t prev[1 << 20];
  memset(head, -1, sizeof head);
  long o = 0, lit = 0, i = 0;
  while (i < n) {
    long best = 0, bestd = 0;
    if (i + MINM <= n) {
      uint32_t h = ((uint32_t)in[i] | in[i + 1] << 8 | in[i + 2] << 16 | (uint32_t)in[i + 3] << 24) * 2654435761u >> (32 - HBITS);
      long cand = head[h], tries = 16;
      while (cand >= 0 && i - cand <= WINDOW && tries--) {
        long l = 0;
        while (i + l < n && l < 255 && in[cand + l] == in[i + l]) l++;
        if (l > best) {
          best = l;
          bestd = i - cand;
        }
        cand = prev[cand & ((1 << 20) - 1)];
      }
      prev[i & ((1 << 20) - 1)] = head[h];
      head[h] = (int32_t)i;
    }
    if (best >= MINM) {
      if (lit) {
        out[o++] = 0; out[o++] = (uint8_t)lit;
        memcpy(out + o, in + i - lit, lit);
        o += lit;
        lit = 0;
      }
      out[o++] = 1; out[o++] = (uint8_t)best; out[o++] = (uint8_t)bestd; out[o++] = (uint8_t)(bestd >> 8);
      i += best;
    } else {
      i++;
      if (++lit == 255) {
        out[o++] = 0; out[o++] = 255;
        memcpy(out + o, in + i - lit, lit);
        o += lit;
        lit = 0;
      }
    }
  }
  if (lit) {
    out[o++] = 0; out[o++] = (uint8_t)lit;
    memcpy(out + o, in + n - lit, lit);
    o += lit;
  }
  return o;
}

static long lz_decompress(const uint8_t *in, long n, uint8_t *out) {
  long o = 0;
  for (long i = 0; i < n;) {
    if (in[i] == 0) {
      long l = in[i + 1];
      memcpy(out + o, in + i + 2, l);
      o += l;
      i += 2 + l;
    } else {
      long l = in[i + 1], d = in[i + 2] | in[i + 3] << 8;
      for (long k = 0; k < l; k++, o++) out[o] = out[o - d];
      i += 4;
    }
  }
  return o;
}

static uint64_t w_lz(long scale) {
  const long n = 1 << 20;
  uint8_t *text = xmalloc(n + 1), *packed = xmalloc(2 * n), *back = xmalloc(n);
  make_text((char *)text, n + 1);
  uint64_t sum = 0;
  for (long r = 0; r < scale; r++) {
    text[r % n] ^= 1;
    long c = lz_compress(text, n, packed);
    long d = lz_decompress(packed, c, back);
    if (d != n || memcmp(back, text, n) != 0) {
      fprintf(stderr, "guestbench: lz round trip failed\n");
      exit(1);
    }
    sum += (uint64_t)c;
  }
  free(text);
  free(packed);
  free(back);
  return sum;
}

// ---- parallel --------------------------------------------------------------

struct job {
  long scale;
  uint64_t seed, sum;
};

static void *hash_thread(void *p) {
  struct job *j = p;
  j->sum = hash_work(j->scale, j->seed);
  return 0;
}

static uint64_t w_parallel(long scale) {
  pthread_t t[2];
  struct job jobs[2] = {{scale, 1, 0}, {scale, 2, 0}};
  for (int i = 0; i < 2; i++) pthread_create(&t[i], 0, hash_thread, &jobs[i]);
  for (int i = 0; i < 2; i++) pthread_join(t[i], 0);
  return jobs[0].sum ^ (jobs[1].sum << 1);
}

// ---- gen -------------------------------------------------------------------

static int gen(long bytes) {
  // "word number word\n" lines: sort, awk, gzip and sha256sum work on it
  long at = 0;
  char line[96];
  while (at < bytes) {
    int l = snprintf(line, sizeof line, "%s %u %s\n", WORDS[next() % 16], (unsigned)(next() % 100000), WORDS[next() % 16]);
    fwrite(line, 1, l, stdout);
    at += l;
  }
  return 0;
}

static const struct {
  const char *name;
  uint64_t (*run)(long);
} WORKLOADS[] = {
    {"sort", w_sort}, {"hash", w_hash}, {"chase", w_chase}, {"matmul", w_matmul}, {"nbody", w_nbody},
    {"string", w_string}, {"interp", w_interp}, {"lz", w_lz}, {"parallel", w_parallel},
};

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "gen") == 0) return gen(atol(argv[2]));
  if (argc != 3) {
    fprintf(stderr, "usage: guestbench NAME SCALE | guestbench gen BYTES\n");
    return 2;
  }
  long scale = atol(argv[2]);
  for (size_t i = 0; i < sizeof WORKLOADS / sizeof WORKLOADS[0]; i++) {
    if (strcmp(argv[1], WORKLOADS[i].name) != 0) continue;
    double t0 = now();
    uint64_t sum = WORKLOADS[i].run(scale);
    printf("BENCH %s elapsed %.6f sum %016llx\n", argv[1], now() - t0, (unsigned long long)sum);
    return 0;
  }
  fprintf(stderr, "guestbench: unknown workload '%s'\n", argv[1]);
  return 2;
}
