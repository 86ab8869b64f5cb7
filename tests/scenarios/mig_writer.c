/* mig_writer: writer threads rewriting whole pages at a steady rate; on SIGUSR1 it checks itself.
 *
 * usage: mig_writer NPAGES NTHREADS WRITES_PER_S_PER_THREAD   (NPAGES a multiple of NTHREADS)
 *
 * The whole state follows from the writers' counters.  Thread t owns the M =
 * NPAGES / NTHREADS pages p = t + j * NTHREADS; its n-th write (n = 0, 1, ...)
 * goes to its owned page j = n * S mod M (S coprime to M: a permutation, so a
 * page is rewritten every M writes) and stamps it with version
 * v = (t + 1) << 40 | (n + 1): word 0 MAGIC, word 1 v, word 2 the page number,
 * every other word a function of v and its index.  Then it stores v in the
 * version table (its own mapping) and n + 1 in done[t] (another one).  Before
 * any write, page j of thread t holds version (t + 1) << 40 | 0.
 *
 * On SIGUSR1 the main thread makes every writer wait at a barrier (between two
 * writes), then derives from done[t] alone which version every page must carry
 * — the last write n < done[t] that went to it — and compares each word of
 * each page and each table entry with it.  It prints
 *   CHECK PASS checks=K pages=N total=W writes=W0,W1,...
 *   CHECK FAIL checks=K bad=B first=PAGE want=V page=V' table=V''
 * and lets the writers go on.  A write the process made but a checkpoint lost
 * (a page, a table entry or a counter from an older copy) fails the check.
 *
 * Prints "READY pid=PID area=ADDR npages=N threads=T" first.  Output goes
 * straight to fd 1 with write(): no stdio buffer to lose or duplicate.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)
#define MAGIC 0x4d49475752495445ULL /* "ETIRWGIM" */
#define MAXT 64

static uint64_t *area;     /* NPAGES pages */
static uint64_t *table;    /* NPAGES versions, its own mapping */
static _Atomic uint64_t *done; /* writes done per thread, its own page */
static long npages, per;   /* per = M, the pages of one thread */
static long stride;
static int nthreads;
static double rate;
static atomic_int pause_req;
static pthread_barrier_t barrier;
static volatile sig_atomic_t check_req;
static long *want;         /* scratch for the check: the write each owned page must hold, -1 none */

static uint64_t version(int t, long n) { return ((uint64_t)(t + 1) << 40) | (uint64_t)(n + 1); }
static long page_of(int t, long j) { return t + j * nthreads; }
static uint64_t word(uint64_t v, long i) { return (v * 0x9E3779B97F4A7C15ULL) ^ (uint64_t)i * 0xD6E8FEB86659FD93ULL; }

static void stamp(long p, uint64_t v)
{
    volatile uint64_t *w = area + p * WORDS;
    w[0] = MAGIC;
    w[1] = v;
    w[2] = (uint64_t)p;
    for (long i = 3; i < WORDS; i++)
        w[i] = word(v, i);
}

static void *writer(void *arg)
{
    int t = (int)(intptr_t)arg;
    long batch = rate >= 1000 ? (long)(rate / 1000) : 1;
    struct timespec pause = {0, (long)(1e9 * batch / rate)};
    long n = (long)atomic_load(&done[t]);
    for (;;) {
        for (long i = 0; i < batch; i++, n++) {
            long p = page_of(t, (n % per) * stride % per);
            uint64_t v = version(t, n);
            stamp(p, v);
            ((volatile uint64_t *)table)[p] = v;
            atomic_store_explicit(&done[t], (uint64_t)(n + 1), memory_order_release);
        }
        if (atomic_load(&pause_req)) {
            pthread_barrier_wait(&barrier); /* the check runs */
            pthread_barrier_wait(&barrier); /* and is over */
        }
        nanosleep(&pause, NULL);
    }
    return NULL;
}

static void check(void)
{
    static long checks;
    char out[512];
    long bad = 0, first = -1;
    uint64_t first_want = 0, first_page = 0, first_table = 0, total = 0;
    uint64_t counts[MAXT];

    atomic_store(&pause_req, 1);
    pthread_barrier_wait(&barrier); /* every writer is between two writes */
    checks++;
    for (int t = 0; t < nthreads; t++) {
        long nt = (long)atomic_load(&done[t]);
        counts[t] = (uint64_t)nt;
        total += (uint64_t)nt;
        for (long j = 0; j < per; j++)
            want[j] = -1;
        for (long n = nt > per ? nt - per : 0; n < nt; n++)
            want[(n % per) * stride % per] = n;
        for (long j = 0; j < per; j++) {
            long p = page_of(t, j);
            uint64_t v = version(t, want[j]); /* want -1: the initial stamp, n + 1 = 0 */
            const uint64_t *w = area + p * WORDS;
            int ok = w[0] == MAGIC && w[1] == v && w[2] == (uint64_t)p && table[p] == v;
            for (long i = 3; ok && i < WORDS; i++)
                ok = w[i] == word(v, i);
            if (!ok) {
                if (first < 0) {
                    first = p;
                    first_want = v;
                    first_page = w[1];
                    first_table = table[p];
                }
                bad++;
            }
        }
    }
    atomic_store(&pause_req, 0);
    pthread_barrier_wait(&barrier); /* the writers go on */

    int len;
    if (bad == 0) {
        len = snprintf(out, sizeof out, "CHECK PASS checks=%ld pages=%ld total=%llu writes=", checks, npages,
                       (unsigned long long)total);
        for (int t = 0; t < nthreads && len < (int)sizeof out - 24; t++)
            len += snprintf(out + len, sizeof out - len, "%s%llu", t ? "," : "", (unsigned long long)counts[t]);
        len += snprintf(out + len, sizeof out - len, "\n");
    } else {
        len = snprintf(out, sizeof out, "CHECK FAIL checks=%ld bad=%ld first=%ld want=%#llx page=%#llx table=%#llx\n",
                       checks, bad, first, (unsigned long long)first_want, (unsigned long long)first_page,
                       (unsigned long long)first_table);
    }
    if (write(1, out, (size_t)len) < 0)
        _exit(5);
}

static void on_usr1(int sig) { (void)sig; check_req = 1; }

static long gcd(long a, long b) { while (b) { long r = a % b; a = b; b = r; } return a; }

int main(int argc, char **argv)
{
    if (argc != 4) return 2;
    npages = atol(argv[1]);
    nthreads = atoi(argv[2]);
    rate = atof(argv[3]);
    if (nthreads < 1 || nthreads > MAXT || npages < nthreads || npages % nthreads || rate <= 0) return 2;
    per = npages / nthreads;
    for (stride = 7919 % per ? 7919 : 7921; gcd(stride, per) != 1; stride += 2)
        ;
    area = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    table = mmap(NULL, npages * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    done = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    want = malloc(per * sizeof *want);
    if (area == MAP_FAILED || table == MAP_FAILED || done == MAP_FAILED || !want) return 3;
    for (int t = 0; t < nthreads; t++)
        for (long j = 0; j < per; j++) {
            stamp(page_of(t, j), version(t, -1));
            table[page_of(t, j)] = version(t, -1);
        }
    pthread_barrier_init(&barrier, NULL, (unsigned)nthreads + 1);

    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL); /* the writers never take it: only the main thread */
    for (int t = 0; t < nthreads; t++) {
        pthread_t th;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setstacksize(&a, 256 * 1024);
        if (pthread_create(&th, &a, writer, (void *)(intptr_t)t)) return 4;
        pthread_attr_destroy(&a);
    }
    pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);

    char out[160];
    int len = snprintf(out, sizeof out, "READY pid=%d area=%p npages=%ld threads=%d\n", getpid(), (void *)area,
                       npages, nthreads);
    if (write(1, out, (size_t)len) < 0) return 5;
    struct timespec tick = {0, 2000000};
    for (;;) {
        if (check_req) {
            check_req = 0;
            check();
        }
        nanosleep(&tick, NULL);
    }
}
