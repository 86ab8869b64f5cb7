/* writer: writer threads rewriting random pages at a known rate, plus mapping churn, for dirty tracking.
 *
 * usage: writer NPAGES NTHREADS WRITES_PER_S_PER_THREAD CHURN(0|1)
 *
 * Every tracked page starts with MAGIC (u64) then a version (u64).  Each write
 * stores a fresh value of one global counter, so a page's version changes on
 * every write and never repeats, even in a new mapping at an old address.
 * Writers pick random pages of the main area.  With CHURN=1 a churn thread
 * keeps up to 24 small regions alive, every ~1 ms doing one of: mmap a new
 * region, munmap (all or its tail), mremap (grow, possibly moving), grow the
 * brk by a page; each new page gets MAGIC + a version.
 * Prints "READY area=ADDR npages=N" then reads commands from stdin:
 *   "t" creates one more writer thread ("OK tid"), "x" execs /bin/sleep, EOF exits.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define MAGIC 0x5452434b57524954ULL /* "TIRWKCRT" */
#define MAXREG 24

static unsigned char *area;
static long npages;
static double rate;
static _Atomic uint64_t counter = 1;

static void stamp(unsigned char *page)
{
    uint64_t v = atomic_fetch_add(&counter, 1);
    ((volatile uint64_t *)page)[0] = MAGIC;
    atomic_store_explicit((_Atomic uint64_t *)(page + 8), v, memory_order_relaxed);
    page[16 + v % (PAGE - 16)] = (unsigned char)v;
}

static void *writer(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u;
    long batch = rate >= 1000 ? (long)(rate / 1000) : 1;
    struct timespec pause = {0, (long)(1e9 * batch / rate)};
    for (;;) {
        for (long i = 0; i < batch; i++)
            stamp(area + (rand_r(&seed) % npages) * PAGE);
        nanosleep(&pause, NULL);
    }
    return NULL;
}

struct region { unsigned char *addr; long n; };

static void *churn(void *arg)
{
    (void)arg;
    struct region r[MAXREG] = {{0}};
    unsigned seed = 12345;
    struct timespec pause = {0, 1000000};
    for (;;) {
        int i = rand_r(&seed) % MAXREG, op = rand_r(&seed) % 4;
        if (!r[i].addr) {
            long n = 1 + rand_r(&seed) % 8;
            unsigned char *p = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) continue;
            for (long k = 0; k < n; k++) stamp(p + k * PAGE);
            r[i].addr = p; r[i].n = n;
        } else if (op == 0) {
            munmap(r[i].addr, r[i].n * PAGE);
            r[i].addr = NULL;
        } else if (op == 1 && r[i].n > 1) {
            long keep = r[i].n / 2;
            munmap(r[i].addr + keep * PAGE, (r[i].n - keep) * PAGE);
            r[i].n = keep;
            stamp(r[i].addr);
        } else if (op == 2 && r[i].n < 48) {
            long n = r[i].n * 2;
            unsigned char *p = mremap(r[i].addr, r[i].n * PAGE, n * PAGE, MREMAP_MAYMOVE);
            if (p == MAP_FAILED) continue;
            for (long k = r[i].n; k < n; k++) stamp(p + k * PAGE);
            r[i].addr = p; r[i].n = n;
        } else if (op == 3) {
            unsigned char *b = sbrk(PAGE);
            if (b != (void *)-1 && ((uintptr_t)b & (PAGE - 1)) == 0) stamp(b);
        } else {
            stamp(r[i].addr + (rand_r(&seed) % r[i].n) * PAGE);
        }
        nanosleep(&pause, NULL);
    }
    return NULL;
}

static void start_thread(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 256 * 1024);
    if (pthread_create(&t, &a, fn, arg)) { printf("FAIL pthread_create\n"); fflush(stdout); exit(4); }
    pthread_attr_destroy(&a);
}

int main(int argc, char **argv)
{
    if (argc != 5) return 2;
    static char obuf[4096];
    setvbuf(stdout, obuf, _IOFBF, sizeof obuf); /* no malloc racing the churn thread's sbrk */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    npages = atol(argv[1]);
    int nthreads = atoi(argv[2]);
    rate = atof(argv[3]);
    int do_churn = atoi(argv[4]);
    /* page-align the brk so sbrk(PAGE) hands out whole pages */
    uintptr_t cur = (uintptr_t)sbrk(0);
    if (cur & (PAGE - 1)) sbrk(PAGE - (cur & (PAGE - 1)));
    area = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) return 3;
    for (long p = 0; p < npages; p++) stamp(area + p * PAGE);
    long next = 1;
    for (int i = 0; i < nthreads; i++) start_thread(writer, (void *)(uintptr_t)next++);
    if (do_churn) start_thread(churn, NULL);
    printf("READY area=%p npages=%ld\n", (void *)area, npages);
    fflush(stdout);
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        if (line[0] == 'x') {
            execl("/bin/sleep", "sleep", "100", (char *)NULL);
            printf("FAIL exec\n");
            fflush(stdout);
        } else if (line[0] == 't') {
            start_thread(writer, (void *)(uintptr_t)next++);
            printf("OK %ld\n", next);
            fflush(stdout);
        }
    }
    return 0;
}
