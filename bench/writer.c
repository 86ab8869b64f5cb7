/*
 * writer: a target that times its own memory writes, for the per-write cost of dirty tracking.
 *
 * It maps SIZE MiB of anonymous private memory (MADV_NOHUGEPAGE: 4 KiB pages
 * whatever the host's THP mode, so one write = one page = one uffd-wp fault),
 * writes every page once so all are resident, prints
 *
 *   READY <hex addr> <length>
 *
 * and then serves one command per line on stdin, one reply line on stdout:
 *
 *   seq          one 8-byte store into each page, in address order
 *   rand         the same, in a random order (a new permutation each time,
 *                shuffled before the clock starts)
 *       -> ROUND <writes> <ns>        time of the store loop alone
 *   sustain MS   stores to random words of random pages for MS milliseconds
 *       -> SUSTAIN <writes> <ns>
 *
 * Each round stores a value it never stored before, so a content digest (the
 * hash tracker) sees every page change.  The clock is CLOCK_MONOTONIC around
 * the loop; the sustained loop reads it every 1024 stores.  EOF or an unknown
 * command ends it.  It asks for SIGKILL when its parent dies
 * (PR_SET_PDEATHSIG), so a crashed bench never leaves it running.
 *
 * Usage: writer [-s SIZE_MIB]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
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

static void die(const char *what)
{
    fprintf(stderr, "writer: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv)
{
    size_t size_mib = 256;
    int opt;
    while ((opt = getopt(argc, argv, "s:")) != -1) {
        if (opt == 's') {
            size_mib = strtoull(optarg, NULL, 0);
        } else {
            fprintf(stderr, "usage: %s [-s SIZE_MIB]\n", argv[0]);
            return 2;
        }
    }
    if (size_mib == 0) {
        fprintf(stderr, "writer: size must be positive\n");
        return 2;
    }
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        die("prctl(PR_SET_PDEATHSIG)");
    if (getppid() != parent) /* the parent died before the prctl */
        return 1;

    size_t len = size_mib << 20, npages = len / PAGE;
    uint8_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        die("mmap");
    if (madvise(mem, len, MADV_NOHUGEPAGE) != 0)
        die("madvise(MADV_NOHUGEPAGE)");
    for (size_t i = 0; i < npages; i++)
        *(volatile uint64_t *)(mem + i * PAGE) = i; /* resident, and written before: the baseline */
    size_t *order = malloc(npages * sizeof(*order));
    if (!order)
        die("malloc");
    for (size_t i = 0; i < npages; i++)
        order[i] = i;

    printf("READY %#" PRIxPTR " %zu\n", (uintptr_t)mem, len);
    fflush(stdout);

    uint64_t seed = 0x5eed5eedULL, value = (uint64_t)npages;
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        value += npages; /* never stored before in any page */
        if (strcmp(line, "seq\n") == 0 || strcmp(line, "rand\n") == 0) {
            int random = line[0] == 'r';
            if (random)
                for (size_t i = npages - 1; i > 0; i--) { /* Fisher-Yates */
                    size_t j = xs(&seed) % (i + 1), t = order[i];
                    order[i] = order[j];
                    order[j] = t;
                }
            uint64_t t0 = now_ns();
            if (random)
                for (size_t i = 0; i < npages; i++)
                    *(volatile uint64_t *)(mem + order[i] * PAGE) = value + i;
            else
                for (size_t i = 0; i < npages; i++)
                    *(volatile uint64_t *)(mem + i * PAGE) = value + i;
            uint64_t t1 = now_ns();
            printf("ROUND %zu %" PRIu64 "\n", npages, t1 - t0);
        } else if (strncmp(line, "sustain ", 8) == 0) {
            uint64_t ms = strtoull(line + 8, NULL, 10), n = 0;
            uint64_t t0 = now_ns(), end = t0 + ms * 1000000ULL, t1;
            do {
                for (int k = 0; k < 1024; k++) {
                    uint64_t x = xs(&seed);
                    size_t pg = (x >> 9) % npages, word = x & (PAGE / 8 - 1);
                    *(volatile uint64_t *)(mem + pg * PAGE + word * 8) = value + n + k;
                }
                n += 1024;
                t1 = now_ns();
            } while (t1 < end);
            printf("SUSTAIN %" PRIu64 " %" PRIu64 "\n", n, t1 - t0);
        } else {
            fprintf(stderr, "writer: unknown command %s", line);
            return 2;
        }
        fflush(stdout);
    }
    return 0;
}
