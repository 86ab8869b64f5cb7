/* vdso_clock: threads that call the vDSO all the time, for restores on a kernel with another vDSO.
 *
 * usage: vdso_clock NTHREADS [NSPIN [tree]]
 *
 * Dynamically linked: glibc finds the vDSO's functions at start-up and keeps their addresses
 * (what a restore on another kernel must keep working, ckpt/resources/vdso.py).  NTHREADS worker
 * threads each call, in bursts of 64: clock_gettime (CLOCK_MONOTONIC, CLOCK_REALTIME,
 * CLOCK_BOOTTIME), gettimeofday, time, getcpu and clock_getres, through glibc (so through the vDSO),
 * and check each answer: the monotonic clocks never go back, gettimeofday and time lie between two
 * CLOCK_REALTIME reads, getcpu names a CPU, clock_getres gives a resolution.  The first NSPIN threads
 * call without a pause (so a dump often catches them inside the vDSO); the others sleep 2 ms
 * between bursts.  A 256 KiB area holds a pattern of per-page values.  With "tree", the process forks
 * first and parent and child each do all of this (a tree of two: each its own READY and CHECK lines).
 *
 * Prints "READY pid=P threads=T" on stdout, then waits for SIGUSR1; on each, the main thread calls
 * the same functions itself, checks the pattern, waits (up to 60 s) until every worker has made
 * more calls than at the last check, and prints "CHECK PASS round=N threads=T calls=C pid=P" or
 * "CHECK FAIL pid=P why" (a worker's first failure included).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/time.h>

#include "verdict.h"

#define MAXT 16
#define AREA_PAGES 64

static int nthreads, nspin;
static atomic_long calls[MAXT];
static atomic_int failed[MAXT];
static char failure[MAXT][160];
static unsigned char *area;

static long ns(const struct timespec *t) { return t->tv_sec * 1000000000L + t->tv_nsec; }

/* One burst of calls into the vDSO by thread i (i < 0: the main thread); 0 or a failure in out.
 * gettimeofday and time are read between two CLOCK_REALTIME reads and must lie between them; a
 * dump may freeze the thread between two reads (and a restore on another machine meet another
 * wall clock), so only three such samples in a row count as a failure: no time limit is assumed. */
static int burst(int i, long *last_mono, long *last_boot, char *out, size_t outsz) {
    int odd = 0;
    for (int k = 0; k < 64; k++) {
        struct timespec mono, real1, real2, boot, res;
        struct timeval tv;
        unsigned cpu = ~0u, node = ~0u;
        if (clock_gettime(CLOCK_MONOTONIC, &mono) || clock_gettime(CLOCK_REALTIME, &real1))
            return snprintf(out, outsz, "thread %d: clock_gettime: %s", i, strerror(errno)), -1;
        if (gettimeofday(&tv, NULL))
            return snprintf(out, outsz, "thread %d: gettimeofday: %s", i, strerror(errno)), -1;
        time_t t = time(NULL);
        if (clock_gettime(CLOCK_REALTIME, &real2) || clock_gettime(CLOCK_BOOTTIME, &boot))
            return snprintf(out, outsz, "thread %d: clock_gettime: %s", i, strerror(errno)), -1;
        if (getcpu(&cpu, &node) || cpu >= 4096)
            return snprintf(out, outsz, "thread %d: getcpu gave cpu %u (%s)", i, cpu, strerror(errno)), -1;
        if (clock_getres(CLOCK_MONOTONIC, &res) || ns(&res) <= 0 || ns(&res) > 10000000)
            return snprintf(out, outsz, "thread %d: clock_getres gave %ld ns", i, ns(&res)), -1;
        if (ns(&mono) < *last_mono || ns(&boot) < *last_boot)
            return snprintf(out, outsz, "thread %d: a monotonic clock went back: %ld < %ld or %ld < %ld", i,
                            ns(&mono), *last_mono, ns(&boot), *last_boot), -1;
        *last_mono = ns(&mono);
        *last_boot = ns(&boot);
        long tod = tv.tv_sec * 1000000000L + tv.tv_usec * 1000L;  /* µs: up to 999 ns below the clock */
        int ok = tod >= ns(&real1) - 1000 && tod <= ns(&real2) && t >= real1.tv_sec - 1 && t <= real2.tv_sec;
        if (ok) {
            odd = 0;
        } else if (++odd == 3) {
            return snprintf(out, outsz, "thread %d: gettimeofday %ld or time() %ld not between CLOCK_REALTIME reads "
                            "%ld and %ld, 3 times in a row", i, tod, (long)t, ns(&real1), ns(&real2)), -1;
        }
    }
    return 0;
}

static void *worker(void *arg) {
    int i = (int)(intptr_t)arg;
    long mono = 0, boot = 0;
    for (;;) {
        if (!failed[i] && burst(i, &mono, &boot, failure[i], sizeof failure[i]))
            failed[i] = 1;
        calls[i] += 64;
        if (i >= nspin) {
            struct timespec d = {0, 2000000};
            nanosleep(&d, NULL);
        }
    }
    return NULL;
}

static unsigned char pattern(int page) { return (unsigned char)(page * 37 + 11); }

int main(int argc, char **argv) {
    nthreads = argc > 1 ? atoi(argv[1]) : 2;
    nspin = argc > 2 ? atoi(argv[2]) : 0;
    if (nthreads < 1 || nthreads > MAXT) nthreads = 2;
    if (argc > 3 && !strcmp(argv[3], "tree") && fork() < 0) die("fork");
    area = mmap(NULL, AREA_PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) die("mmap");
    for (int p = 0; p < AREA_PAGES; p++) memset(area + p * 4096, pattern(p), 4096);

    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    struct sigaction sa = {.sa_handler = on_usr1};
    sigaction(SIGUSR1, &sa, NULL);
    pthread_sigmask(SIG_BLOCK, &usr1, &old);  /* the workers keep it blocked: the main thread takes it */
    for (int i = 0; i < nthreads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, (void *)(intptr_t)i)) die("pthread_create");
    }
    printf("READY pid=%d threads=%d\n", getpid(), nthreads);
    fflush(stdout);

    long seen[MAXT] = {0};
    long mono = 0, boot = 0;
    for (int round = 1;; round++) {
        while (!got_usr1) sigsuspend(&old);
        got_usr1 = 0;
        why[0] = 0;
        char mine[160];
        if (burst(-1, &mono, &boot, mine, sizeof mine)) fail("%s", mine);
        for (int p = 0; p < AREA_PAGES; p++)
            for (int b = 0; b < 4096; b += 512)
                if (area[p * 4096 + b] != pattern(p)) {
                    fail("page %d byte %d is %d, not %d", p, b, area[p * 4096 + b], pattern(p));
                    p = AREA_PAGES;
                    break;
                }
        long deadline = now_ms() + 60000, total = 0;
        for (int i = 0; i < nthreads; i++) {
            while (calls[i] <= seen[i] && now_ms() < deadline) {
                struct timespec d = {0, 5000000};
                nanosleep(&d, NULL);
            }
            if (calls[i] <= seen[i]) fail("thread %d made no call in 60 s", i);
            seen[i] = calls[i];
            total += seen[i];
            if (failed[i]) fail("%s", failure[i]);
        }
        if (why[0]) printf("CHECK FAIL pid=%d %s\n", getpid(), why);
        else printf("CHECK PASS round=%d threads=%d calls=%ld pid=%d\n", round, nthreads, total, getpid());
        fflush(stdout);
    }
}
