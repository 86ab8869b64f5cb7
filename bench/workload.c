/*
 * workload: a target process for ckpt's benchmarks.
 *
 * It allocates SIZE MiB of anonymous private memory in three VMAs and fills
 * them with a mix meant to look like a real process to a compressor:
 *
 *   heap    (default 60 %)  malloc-like chunks: size headers, structs with
 *                           pointers into the heap (mostly near their own
 *                           address, as allocators lay out), small ints,
 *                           short strings from a vocabulary, arrays of
 *                           counters and prices, freed chunks.  Tuned to
 *                           compress ~5-7x with zstd -1, like the real heaps
 *                           measured for DESIGN.md (~6.7x).
 *   zero    (default 25 %)  zero pages, *touched*: each page is written once
 *                           so it is resident and counted in RSS (a process
 *                           that calloc'ed and never used it).
 *   random  (default 15 %)  xorshift output: incompressible (media, crypto
 *                           state, already-compressed buffers).
 *
 * Every page of every region is resident, so RSS ~= SIZE.  Then it prints
 *
 *   REGION <kind> <hex addr> <length>      one line per region
 *   READY <pid> <total length>
 *
 * on stdout and waits.  With -r RATE (MB/s) it starts -t THREADS writer
 * threads that together dirty RATE MB/s of pages, picked uniformly over all
 * regions; each write changes one 8-byte word of the page (so the content
 * mix stays about the same).  SIGUSR1 makes it print
 * "WRITTEN <pages> <seconds>" (pages dirtied since start).  SIGTERM/SIGINT end
 * it.  Unless -k is given it asks for SIGKILL when its parent dies
 * (PR_SET_PDEATHSIG), so a crashed benchmark never leaves a 1 GiB process.
 *
 * It refuses to start with any descriptor other than 0, 1, 2 open: a
 * checkpoint target must not carry stray fds from whoever launched it
 * (DESIGN.md §3).
 *
 * Usage: workload [-s SIZE_MIB] [-r RATE_MBS] [-t THREADS] [-m H,Z,R] [-S SEED] [-k]
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

#include "fill.h" /* struct region, splitmix/xs, fill_heap/fill_zero/fill_random */

static struct region regions[3];
static size_t total_len;
static double rate_mbs;
static atomic_uint_fast64_t pages_written;
static struct timespec t_start;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t_start.tv_sec) + (t.tv_nsec - t_start.tv_nsec) / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "workload: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void check_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        die("opendir /proc/self/fd");
    int self = dirfd(d), bad = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        int fd = atoi(e->d_name);
        if (fd > 2 && fd != self)
            bad = fd;
    }
    closedir(d);
    if (bad >= 0) {
        fprintf(stderr, "workload: fd %d is open; start me with only 0, 1 and 2 (close_fds)\n", bad);
        exit(2);
    }
}

/* ---- page writers ------------------------------------------------------ */

struct writer {
    pthread_t th;
    uint64_t seed;
    double pages_per_s;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    uint64_t s = w->seed | 1;
    size_t npages = total_len / PAGE;
    double start = now_s(), done = 0;
    for (;;) {
        double due = (now_s() - start) * w->pages_per_s;
        while (done < due) {
            size_t pg = xs(&s) % npages, off = pg * PAGE;
            int i = 0;
            while (off >= regions[i].len) {
                off -= regions[i].len;
                i++;
            }
            uint64_t *word = (uint64_t *)(regions[i].addr + off) + (xs(&s) % (PAGE / 8));
            *(volatile uint64_t *)word = (i == 2) ? xs(&s) : *word + 1;
            done += 1;
            atomic_fetch_add_explicit(&pages_written, 1, memory_order_relaxed);
        }
        struct timespec ts = {0, 1000000}; /* 1 ms pacing */
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    size_t size_mib = 1024;
    int threads = 1, keep = 0, opt;
    unsigned pct[3] = {60, 25, 15};
    uint64_t seed = 0x5eed;

    check_fds();
    while ((opt = getopt(argc, argv, "s:r:t:m:S:k")) != -1) {
        switch (opt) {
        case 's': size_mib = strtoull(optarg, NULL, 0); break;
        case 'r': rate_mbs = strtod(optarg, NULL); break;
        case 't': threads = atoi(optarg); break;
        case 'm':
            if (sscanf(optarg, "%u,%u,%u", &pct[0], &pct[1], &pct[2]) != 3 || pct[0] + pct[1] + pct[2] != 100) {
                fprintf(stderr, "workload: -m wants three percentages summing to 100\n");
                return 2;
            }
            break;
        case 'S': seed = strtoull(optarg, NULL, 0); break;
        case 'k': keep = 1; break;
        default:
            fprintf(stderr, "usage: %s [-s SIZE_MIB] [-r RATE_MBS] [-t THREADS] [-m H,Z,R] [-S SEED] [-k]\n", argv[0]);
            return 2;
        }
    }
    if (size_mib == 0 || threads < 1) {
        fprintf(stderr, "workload: size and threads must be positive\n");
        return 2;
    }
    if (!keep) {
        pid_t parent = getppid();
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
            die("prctl(PR_SET_PDEATHSIG)");
        if (getppid() != parent) /* parent died before the prctl */
            return 1;
    }

    /* SIGUSR1/TERM/INT are taken synchronously by the main thread only. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t_start);

    static const char *const kinds[3] = {"heap", "zero", "random"};
    size_t bytes = size_mib << 20, assigned = 0;
    for (int i = 0; i < 3; i++) {
        size_t len = (i == 2) ? bytes - assigned : (bytes / 100 * pct[i]) & ~(PAGE - 1);
        assigned += len;
        regions[i].kind = kinds[i];
        regions[i].len = len;
        if (!len)
            continue;
        void *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (a == MAP_FAILED)
            die("mmap");
        regions[i].addr = a;
    }
    total_len = bytes;
    if (regions[0].len)
        fill_heap(&regions[0], splitmix(&seed));
    if (regions[1].len)
        fill_zero(&regions[1]);
    if (regions[2].len)
        fill_random(&regions[2], splitmix(&seed));

    for (int i = 0; i < 3; i++)
        printf("REGION %s %#" PRIxPTR " %zu\n", regions[i].kind, (uintptr_t)regions[i].addr, regions[i].len);
    printf("READY %d %zu\n", (int)getpid(), total_len);
    fflush(stdout);

    if (rate_mbs > 0) {
        struct writer *ws = calloc((size_t)threads, sizeof(*ws));
        if (!ws)
            die("calloc");
        for (int i = 0; i < threads; i++) {
            ws[i].seed = splitmix(&seed);
            ws[i].pages_per_s = rate_mbs * 1e6 / PAGE / threads;
            errno = pthread_create(&ws[i].th, NULL, writer_main, &ws[i]);
            if (errno)
                die("pthread_create");
        }
    }

    for (;;) {
        int sig;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGUSR1) {
            printf("WRITTEN %" PRIuFAST64 " %.3f\n", atomic_load(&pages_written), now_s());
            fflush(stdout);
        } else {
            return 0;
        }
    }
}
