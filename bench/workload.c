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

struct region {
    const char *kind;
    uint8_t *addr;
    size_t len;
};

static struct region regions[3];
static size_t total_len;
static double rate_mbs;
static atomic_uint_fast64_t pages_written;
static struct timespec t_start;

/* splitmix64: seeds; xorshift64*: the stream.  Good enough for filling memory. */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t xs(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dULL;
}

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

/* ---- heap-like content ------------------------------------------------ */

static const char *const vocab[] = {
    "user_id", "session", "GET /index.html HTTP/1.1", "application/json", "true", "false",
    "Content-Length", "en_US.UTF-8", "localhost", "timeout", "status", "ok", "error",
    "/var/lib/app/data", "name", "value", "id", "created_at", "2024-05-01T12:00:00Z",
    "null", "count", "items", "price", "EUR", "Accept-Encoding: gzip", "cache", "key:",
};
#define NVOCAB (sizeof(vocab) / sizeof(vocab[0]))

/* Fake type objects every "object" points to (like ob_type in CPython). */
static uint64_t type_ptrs[12];

static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* A pointer to somewhere near `at` (allocators keep related objects close),
 * sometimes NULL, sometimes far away in the same region. */
static uint64_t near_ptr(uint64_t *s, const struct region *r, const uint8_t *at)
{
    uint64_t x = xs(s);
    size_t off = (size_t)(at - r->addr);
    unsigned k = x & 15;
    if (k < 4)
        return 0;
    if (k < 14) {
        int64_t delta = (int64_t)((x >> 8) % 512) - 256;
        int64_t o = (int64_t)off + delta * 16;
        if (o < 0)
            o = 0;
        if ((size_t)o >= r->len)
            o = (int64_t)r->len - 16;
        off = (size_t)o;
    } else {
        off = (size_t)((x >> 8) % (r->len / 16)) * 16;
    }
    return (uint64_t)(uintptr_t)(r->addr + (off & ~15UL));
}

static void put_words(uint64_t *s, uint8_t *q, size_t room)
{
    size_t len = 0;
    while (len + 1 < room) {
        const char *w = vocab[xs(s) % NVOCAB];
        size_t wl = strlen(w);
        if (len + wl + 1 >= room)
            break;
        memcpy(q + len, w, wl);
        len += wl;
        q[len++] = ' ';
    }
    if (len)
        q[len - 1] = 0;
}

static void fill_heap(const struct region *r, uint64_t seed)
{
    uint64_t s = seed | 1;
    uint8_t *p = r->addr, *end = r->addr + r->len;
    uint32_t counter = 1000;
    double prices[64];
    for (int i = 0; i < 12; i++)
        type_ptrs[i] = 0x55d4c3a00000ULL + 0x1000 * (xs(&s) % 4096) + 0x40 * i;
    for (int i = 0; i < 64; i++)
        prices[i] = (double)(xs(&s) % 100000) / 100.0;

    while (p + 8192 < end) {
        uint64_t x = xs(&s);
        unsigned kind = x % 100;
        size_t n; /* chunk size including the 8-byte header, multiple of 16 */
        uint8_t *q = p + 8;
        if (kind < 36) { /* object: refcount, type, next, prev, key, value, flags */
            n = 64;
            put64(q, 1 + (x >> 8) % 3);
            put64(q + 8, type_ptrs[(x >> 16) % 12]);
            put64(q + 16, near_ptr(&s, r, p));
            put64(q + 24, near_ptr(&s, r, p));
            put32(q + 32, counter++);
            put32(q + 36, (uint32_t)((x >> 24) % 100));
            put64(q + 40, (x >> 40) & 1);
        } else if (kind < 58) { /* short string(s) */
            size_t room = 16 + 16 * ((x >> 8) % 5);
            n = room + 16;
            put_words(&s, q, room);
        } else if (kind < 68) { /* array of counters / small ints */
            size_t cnt = 16 + (x >> 8) % 48;
            n = ((cnt * 4 + 8 + 15) & ~15UL) + 8;
            uint32_t base = (uint32_t)((x >> 20) % 100000);
            for (size_t i = 0; i < cnt; i++)
                put32(q + 4 * i, base + (uint32_t)(i * (1 + (x >> 50) % 4)));
        } else if (kind < 78) { /* freed chunk: fd/bk pointers, rest left zero */
            n = 32 + 16 * ((x >> 8) % 48);
            put64(q, near_ptr(&s, r, p));
            put64(q + 8, near_ptr(&s, r, p));
        } else if (kind < 83) { /* doubles: prices out of a catalogue */
            size_t cnt = 4 + (x >> 8) % 12;
            n = ((cnt * 8 + 8 + 15) & ~15UL);
            for (size_t i = 0; i < cnt; i++)
                memcpy(q + 8 * i, &prices[xs(&s) % 64], 8);
        } else if (kind < 88) { /* hash table: bucket array, mostly empty */
            size_t cnt = 64 << ((x >> 8) % 4);
            n = cnt * 8 + 16;
            for (size_t i = 0; i < cnt; i++)
                if ((xs(&s) & 3) == 0)
                    put64(q + 8 * i, near_ptr(&s, r, p));
        } else if (kind < 92) { /* I/O buffer: some text, the rest unused */
            size_t cap = 512 << ((x >> 8) % 4);
            n = cap + 16;
            put_words(&s, q, 32 + (x >> 16) % (cap / 2));
        } else { /* vector of pointers */
            size_t cnt = 4 + (x >> 8) % 28;
            n = ((cnt * 8 + 8 + 15) & ~15UL);
            for (size_t i = 0; i < cnt; i++)
                put64(q + 8 * i, near_ptr(&s, r, p));
        }
        put64(p, n | 1); /* malloc size field with PREV_INUSE */
        p += n;
    }
    /* touch what is left so the whole region is resident */
    for (; p < end; p += PAGE)
        *(volatile uint8_t *)p = 0;
}

static void fill_zero(const struct region *r)
{
    for (uint8_t *p = r->addr; p < r->addr + r->len; p += PAGE)
        *(volatile uint8_t *)p = 0; /* write fault: a real zeroed page, counted in RSS */
}

static void fill_random(const struct region *r, uint64_t seed)
{
    uint64_t s = seed | 1;
    uint64_t *w = (uint64_t *)r->addr, *end = (uint64_t *)(r->addr + r->len);
    while (w < end)
        *w++ = xs(&s);
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
