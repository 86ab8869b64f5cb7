/* cr_target: a process that checks its own state for ever, for dump/restore tests.
 *
 * usage: cr_target RESULT_PATH NTHREADS [blocked]
 *
 * Sets up memory: a heap pattern, a pattern on the main stack, an anonymous
 * mmap, a private file mapping (a file it writes itself at RESULT_PATH.map)
 * with some pages written (dirty COW copies) and others left as file pages,
 * a PROT_NONE guard page, a read-only page, and a 64 MiB region with a
 * per-page pattern; the rounding mode is set to FE_UPWARD (MXCSR).
 * NTHREADS worker threads each keep a tid-derived pattern in the widest
 * vector registers the CPU has (vecregs.h: %zmm15, %zmm16 and %k1 with
 * AVX-512, else %ymm15, else %xmm15; state that lives only in registers) and
 * re-check it, their gettid() and a per-thread counter in a register-held
 * loop.  With "blocked", one thread blocks in read(0) and one loops in a
 * relative nanosleep, recording what the kernel returned.  (MXCSR is read with stmxcsr, not fenv: no -lm.)
 *
 * Every round writes one line to stdout (a pipe to the test; no file is held
 * open between rounds, so a dump never catches a half-written report):
 * "PASS round=N pid=P tids=T1,T2,... eintr=E readres=R readerr=X readbuf=B"
 * or "FAIL <reason>".  Prints "READY vec=KIND" on stdout once set up, KIND the
 * registers the workers hold (xmm, ymm or zmm: vecregs.h).
 *
 * Process-wide state for the resource modules: cwd is RESULT_PATH.d, a data
 * file is open at fd 40 and dup'ed at fd 41 (shared offset 1234), /dev/null
 * at fd 42, an internal pipe at fds 43/44 holding "hello", RLIMIT_NOFILE is
 * 777/4096 and RLIMIT_CORE 0/0, SIGUSR1 and SIGUSR2 have handlers, SIGUSR2 is
 * blocked in every thread and one SIGUSR2 the test sends stays pending.
 * On SIGUSR1 the main loop checks all of that (memory included), unblocks
 * SIGUSR2 — its handler must run exactly once — and prints on stdout
 * "CHECK PASS round=N threads=T usr2=1 readres=R readbuf=B" or "CHECK FAIL why".
 * The blocked reader reads up to 63 bytes from fd 0 (a pipe to the test).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "vecregs.h"

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
static char read_buf[64];
static volatile sig_atomic_t usr1_flag, usr2_count;
static char cwd_want[4200];
static enum vec_kind vkind;

static void on_usr1(int sig) { (void)sig; usr1_flag = 1; }
static void on_usr2(int sig) { (void)sig; usr2_count++; }

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
    static const volatile sig_atomic_t never;
    struct vec_regs in, out;
    for (uint64_t round = 0;; round++) {
        for (unsigned i = 0; i < sizeof in.v; i++) in.v[i] = (unsigned char)(tid * 3 + i + round);
        in.k = (uint16_t)(tid * 7 + round);
        memset(&out, 0, sizeof out);
        vec_hold(vkind, &in, &out, 1000000, &never); /* the value held only in registers while it spins */
        if (memcmp(out.v, in.v, vec_bytes[vkind]) != 0 || (vkind == VEC_ZMM && out.k != in.k)) {
            char msg[64];
            snprintf(msg, sizeof msg, "%s changed in a worker", vec_regs_held[vkind]);
            fail(msg);
        }
        if ((int)syscall(SYS_gettid) != tid) fail("gettid changed in a worker");
        counters[idx]++;
    }
    return NULL;
}

static void *reader(void *arg) {
    (void)arg;
    read_tid = (int)syscall(SYS_gettid);
    long r = read(0, read_buf, sizeof read_buf - 1);
    if (r > 0) read_buf[r] = 0;
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
        n += snprintf(buf + n, sizeof buf - n, " eintr=%ld readres=%ld readerr=%ld readbuf=%s counters=", eintr_count,
                      read_result, read_errno, read_result > 0 ? read_buf : "-");
        for (int i = 0; i < nthreads; i++) n += snprintf(buf + n, sizeof buf - n, "%s%lu", i ? "," : "", (unsigned long)counters[i]);
        n += snprintf(buf + n, sizeof buf - n, "\n");
    }
    if (write(1, buf, n) != n) fail("write to stdout");
}

static int count_threads(void) {
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) if (e->d_name[0] != '.') n++;
    if (d) closedir(d);
    return n;
}

/* The state of the resource modules; returns NULL when all is as it was set up. */
static const char *check_process(int want_threads) {
    char cwd[4200];
    if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, cwd_want) != 0) return "cwd changed";
    if (lseek(40, 0, SEEK_CUR) != 1234) return "offset of fd 40";
    if (lseek(41, 0, SEEK_CUR) != 1234) return "offset of fd 41";
    if (lseek(40, 1, SEEK_CUR) != 1235 || lseek(41, 0, SEEK_CUR) != 1235) return "fds 40/41 do not share an offset";
    lseek(40, 1234, SEEK_SET);
    char c;
    if (pread(40, &c, 1, 1234) != 1 || c != (char)('a' + 1234 % 26)) return "content of fd 40";
    if (!(fcntl(41, F_GETFD) & FD_CLOEXEC) || (fcntl(40, F_GETFD) & FD_CLOEXEC)) return "FD_CLOEXEC of fds 40/41";
    struct stat st;
    if (fstat(42, &st) != 0 || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(1, 3)) return "fd 42 is not /dev/null";
    int queued = -1;
    if (ioctl(43, FIONREAD, &queued) != 0 || queued != 5) return "pipe 43/44 does not hold 5 bytes";
    char hello[6] = {0};
    if (read(43, hello, 5) != 5 || strcmp(hello, "hello") != 0) return "pipe content";
    if (write(44, "hello", 5) != 5) return "pipe write";
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur != 777 || rl.rlim_max != 4096) return "RLIMIT_NOFILE";
    if (getrlimit(RLIMIT_CORE, &rl) != 0 || rl.rlim_cur != 0 || rl.rlim_max != 0) return "RLIMIT_CORE";
    struct sigaction sa;
    if (sigaction(SIGUSR1, NULL, &sa) != 0 || sa.sa_handler != on_usr1) return "SIGUSR1 handler";
    if (sigaction(SIGUSR2, NULL, &sa) != 0 || sa.sa_handler != on_usr2) return "SIGUSR2 handler";
    if (count_threads() != want_threads) return "thread count";
    if (getsid(0) != getpid()) return "not a session leader";
    /* protections, as the kernel shows them (only here: no fd is held open between checks) */
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
    if (!guard_ok) return "guard page is not PROT_NONE";
    if (!ro_ok) return "read-only page is not r--p";

    sigset_t pend;
    sigpending(&pend);
    if (!sigismember(&pend, SIGUSR2)) return "SIGUSR2 not pending";
    if (usr2_count != 0) return "SIGUSR2 handled while blocked";
    sigset_t u2;
    sigemptyset(&u2);
    sigaddset(&u2, SIGUSR2);
    pthread_sigmask(SIG_UNBLOCK, &u2, NULL);
    pthread_sigmask(SIG_BLOCK, &u2, NULL);
    if (usr2_count != 1) return "the pending SIGUSR2 was not delivered once on unblocking";
    return NULL;
}

static int setup_process(void) {
    snprintf(cwd_want, sizeof cwd_want, "%s.d", result_path);
    mkdir(cwd_want, 0700);
    if (chdir(cwd_want) != 0 || !getcwd(cwd_want, sizeof cwd_want)) return -1;
    int fd = open("data", O_RDWR | O_CREAT | O_TRUNC, 0600);
    static char data[10000];
    for (int i = 0; i < (int)sizeof data; i++) data[i] = (char)('a' + i % 26);
    if (fd < 0 || write(fd, data, sizeof data) != (ssize_t)sizeof data) return -1;
    if (dup2(fd, 40) != 40 || dup3(fd, 41, O_CLOEXEC) != 41) return -1;
    close(fd);
    lseek(40, 1234, SEEK_SET);
    fd = open("/dev/null", O_RDWR);
    if (dup2(fd, 42) != 42) return -1;
    close(fd);
    int p[2];
    if (pipe(p) != 0 || dup2(p[0], 43) != 43 || dup2(p[1], 44) != 44) return -1;
    close(p[0]);
    close(p[1]);
    if (write(44, "hello", 5) != 5) return -1;
    struct rlimit rl = {777, 4096};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
    struct rlimit core = {0, 0};
    if (setrlimit(RLIMIT_CORE, &core) != 0) return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    sigset_t u2;
    sigemptyset(&u2);
    sigaddset(&u2, SIGUSR2);
    sigaddset(&u2, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &u2, NULL); /* before the threads: they inherit it; main unblocks SIGUSR1 later */
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    result_path = argv[1];
    nthreads = atoi(argv[2]);
    int blocked = argc > 3 && strcmp(argv[3], "blocked") == 0;
    if (nthreads > MAXT) nthreads = MAXT;
    vkind = vec_detect();
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

    if (setup_process() != 0) { perror("setup"); return 4; }
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
    sigset_t u1;
    sigemptyset(&u1);
    sigaddset(&u1, SIGUSR1);
    pthread_sigmask(SIG_UNBLOCK, &u1, NULL); /* SIGUSR1 is for the main thread only */
    printf("READY vec=%s\n", vec_name[vkind]);
    fflush(stdout);
    int want_threads = 1 + nthreads + (blocked ? 2 : 0);
    for (uint64_t round = 0;; round++) {
        check_memory(seed_stack, stackbuf);
        report(round);
        if (usr1_flag) {
            usr1_flag = 0;
            const char *why = failed ? fail_msg : check_process(want_threads);
            char line[512];
            int n = why ? snprintf(line, sizeof line, "CHECK FAIL %s\n", why)
                        : snprintf(line, sizeof line, "CHECK PASS round=%lu threads=%d usr2=%d readres=%ld readbuf=%s\n",
                                   (unsigned long)round, count_threads(), (int)usr2_count, read_result,
                                   read_result > 0 ? read_buf : "-");
            if (write(1, line, n) != n) fail("write to stdout");
        }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
