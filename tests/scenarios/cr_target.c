// cflags: -mavx512f
/* cr_target: a process that checks its own state for ever, for dump/restore tests.
 *
 * usage: cr_target RESULT_PATH NTHREADS [blocked]
 *
 * Sets up memory: a heap pattern, a pattern on the main stack, an anonymous
 * mmap, a private file mapping (a file it writes itself at RESULT_PATH.map)
 * with some pages written (dirty COW copies) and others left as file pages,
 * a PROT_NONE guard page, a read-only page, and a 64 MiB region with a
 * per-page pattern; the rounding mode is set to FE_UPWARD (MXCSR).
 * NTHREADS worker threads each keep a tid-derived pattern in %zmm16 (state
 * that lives only in registers) and re-check it, their gettid() and a
 * per-thread counter in a register-held loop.  With "blocked", one thread
 * blocks in read(0) and one loops in a relative nanosleep, recording what
 * the kernel returned.  (MXCSR is read with stmxcsr, not fenv: no -lm.)
 *
 * No fd is needed after a restore: every report opens RESULT_PATH afresh
 * (O_TRUNC) and writes one line "PASS round=N pid=P tids=T1,T2,... eintr=E
 * readres=R readerr=X" or "FAIL <reason>".  Prints "READY" on stdout once set up.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BIG (64UL << 20)
#define PG 4096UL
#define MAXT 16

static const char *result_path;
static char fail_msg[256];
static volatile int failed;
static int nthreads;
static int tids[MAXT];
static volatile uint64_t counters[MAXT];
static volatile long eintr_count, read_result = -2, read_errno;
static int read_tid, sleep_tid;

static unsigned char *heap, *anon, *filemap, *guard, *ro, *big;

static void fail(const char *msg) {
    if (!failed) {
        snprintf(fail_msg, sizeof fail_msg, "%s", msg);
        failed = 1;
    }
}

static unsigned char pat(uintptr_t i, unsigned seed) { return (unsigned char)((i * 131u + seed * 7u) ^ (i >> 12)); }

static void *worker(void *arg) {
    int idx = (int)(intptr_t)arg;
    int tid = (int)syscall(SYS_gettid);
    tids[idx] = tid;
    unsigned char in[64], out[64];
    for (uint64_t round = 0;; round++) {
        for (int i = 0; i < 64; i++) in[i] = (unsigned char)(tid * 3 + i + round);
        __asm__ volatile("vmovdqu64 %0, %%zmm16" : : "m"(in) : "xmm16");
        /* spin with the value held only in zmm16 (no libc calls here) */
        volatile uint64_t spin = 0;
        for (int k = 0; k < 200000; k++) spin += k;
        __asm__ volatile("vmovdqu64 %%zmm16, %0" : "=m"(out));
        for (int i = 0; i < 64; i++)
            if (out[i] != in[i]) { fail("zmm16 changed in a worker"); break; }
        if ((int)syscall(SYS_gettid) != tid) fail("gettid changed in a worker");
        counters[idx]++;
    }
    return NULL;
}

static void *reader(void *arg) {
    (void)arg;
    read_tid = (int)syscall(SYS_gettid);
    char c;
    long r = read(0, &c, 1);
    read_errno = r < 0 ? errno : 0;
    read_result = r;
    for (;;) pause();
    return NULL;
}

static void *sleeper(void *arg) {
    (void)arg;
    sleep_tid = (int)syscall(SYS_gettid);
    for (;;) {
        struct timespec req = {3600, 0}, rem;
        while (nanosleep(&req, &rem) == -1) {
            if (errno != EINTR) { fail("nanosleep: unexpected errno"); break; }
            eintr_count++;
            req = rem;
        }
    }
    return NULL;
}

static void check_memory(unsigned seed_stack, const unsigned char *stackbuf) {
    for (size_t i = 0; i < 3 * PG; i++) if (heap[i] != pat(i, 1)) { fail("heap pattern"); return; }
    for (size_t i = 0; i < 512; i++) if (stackbuf[i] != pat(i, seed_stack)) { fail("stack pattern"); return; }
    for (size_t i = 0; i < 16 * PG; i++) if (anon[i] != pat(i, 3)) { fail("anon mmap pattern"); return; }
    /* file mapping: pages 0 and 2 written by us, 1 and 3 still the file's ('F') */
    for (size_t p = 0; p < 4; p++)
        for (size_t i = 0; i < PG; i++) {
            unsigned char want = (p % 2 == 0) ? pat(i + p * PG, 4) : 'F';
            if (filemap[p * PG + i] != want) { fail("file-private mapping content"); return; }
        }
    for (size_t i = 0; i < PG; i++) if (ro[i] != pat(i, 5)) { fail("read-only page"); return; }
    for (size_t p = 0; p < BIG / PG; p++) {
        uint64_t *w = (uint64_t *)(big + p * PG);
        if (w[0] != p * 0x9E3779B97F4A7C15ULL || w[511] != ~p) { fail("64 MiB region pattern"); return; }
    }
    if ((__builtin_ia32_stmxcsr() & 0x6000u) != 0x4000u) fail("rounding mode (MXCSR) changed");
    /* protections, as the kernel shows them */
    FILE *m = fopen("/proc/self/maps", "r");
    char line[512];
    int guard_ok = 0, ro_ok = 0;
    while (m && fgets(line, sizeof line, m)) {
        unsigned long s, e;
        char perms[5];
        if (sscanf(line, "%lx-%lx %4s", &s, &e, perms) != 3) continue;
        if (s <= (unsigned long)guard && (unsigned long)guard < e && strcmp(perms, "---p") == 0) guard_ok = 1;
        if (s <= (unsigned long)ro && (unsigned long)ro < e && strcmp(perms, "r--p") == 0) ro_ok = 1;
    }
    if (m) fclose(m);
    if (!guard_ok) fail("guard page is not PROT_NONE");
    if (!ro_ok) fail("read-only page is not r--p");
}

static void report(uint64_t round) {
    char buf[1024];
    int n;
    if (failed) {
        n = snprintf(buf, sizeof buf, "FAIL %s\n", fail_msg);
    } else {
        n = snprintf(buf, sizeof buf, "PASS round=%lu pid=%d tids=%d", (unsigned long)round, getpid(), getpid());
        for (int i = 0; i < nthreads; i++) n += snprintf(buf + n, sizeof buf - n, ",%d", tids[i]);
        if (read_tid) n += snprintf(buf + n, sizeof buf - n, ",%d", read_tid);
        if (sleep_tid) n += snprintf(buf + n, sizeof buf - n, ",%d", sleep_tid);
        n += snprintf(buf + n, sizeof buf - n, " eintr=%ld readres=%ld readerr=%ld counters=", eintr_count,
                      read_result, read_errno);
        for (int i = 0; i < nthreads; i++) n += snprintf(buf + n, sizeof buf - n, "%s%lu", i ? "," : "", (unsigned long)counters[i]);
        n += snprintf(buf + n, sizeof buf - n, "\n");
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", result_path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return;
    if (write(fd, buf, n) == n) rename(tmp, result_path);
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    result_path = argv[1];
    nthreads = atoi(argv[2]);
    int blocked = argc > 3 && strcmp(argv[3], "blocked") == 0;
    if (nthreads > MAXT) nthreads = MAXT;
    __builtin_ia32_ldmxcsr((__builtin_ia32_stmxcsr() & ~0x6000u) | 0x4000u); /* round up */

    heap = malloc(3 * PG);
    for (size_t i = 0; i < 3 * PG; i++) heap[i] = pat(i, 1);
    unsigned char stackbuf[512];
    unsigned seed_stack = 2;
    for (size_t i = 0; i < 512; i++) stackbuf[i] = pat(i, seed_stack);
    anon = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < 16 * PG; i++) anon[i] = pat(i, 3);

    char fpath[4200];
    snprintf(fpath, sizeof fpath, "%s.map", result_path);
    int fd = open(fpath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    static unsigned char fbuf[4 * PG];
    memset(fbuf, 'F', sizeof fbuf);
    if (write(fd, fbuf, sizeof fbuf) != (ssize_t)sizeof fbuf) return 3;
    filemap = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    for (size_t p = 0; p < 4; p += 2)
        for (size_t i = 0; i < PG; i++) filemap[p * PG + i] = pat(i + p * PG, 4);
    (void)filemap[PG]; /* read a clean page: it stays a file page */

    guard = mmap(NULL, PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ro = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < PG; i++) ro[i] = pat(i, 5);
    mprotect(ro, PG, PROT_READ);
    big = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t p = 0; p < BIG / PG; p++) {
        uint64_t *w = (uint64_t *)(big + p * PG);
        w[0] = p * 0x9E3779B97F4A7C15ULL;
        w[511] = ~p;
    }

    pthread_t t;
    for (int i = 0; i < nthreads; i++) pthread_create(&t, NULL, worker, (void *)(intptr_t)i);
    if (blocked) {
        pthread_create(&t, NULL, reader, NULL);
        pthread_create(&t, NULL, sleeper, NULL);
    }
    for (;;) {
        int all = 1;
        for (int i = 0; i < nthreads; i++) if (!tids[i]) all = 0;
        if (blocked && (!read_tid || !sleep_tid)) all = 0;
        if (all) break;
        usleep(1000);
    }
    printf("READY\n");
    fflush(stdout);
    for (uint64_t round = 0;; round++) {
        check_memory(seed_stack, stackbuf);
        report(round);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
