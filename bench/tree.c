/*
 * tree: a process tree for ckpt's tree benchmark (bench/tree.py).
 *
 * Shape: the root R forks C children (-c, default 3) and each child forks G
 * grandchildren (-g, default 4): 1 + 3 + 3 * 4 = 16 processes.  Two levels
 * rather than a flat tree because dump and restore walk parents and children,
 * and a real service (a supervisor, its workers, their helpers) has depth; a
 * flat tree is -c 15 -g 0, a single process -c 0.
 *
 * Memory: every process, once forked (so nobody carries a copy-on-write copy
 * of its parent's data), maps SIZE MiB (-s, default 64) of private anonymous
 * memory in two VMAs (none with -s 0) and fills them with bench/fill.h's content seeded from its
 * own pid, so every process holds distinct data that compresses like the main
 * workload's: heap-like (default 85 %) and random (15 %), -m H,R to change.
 * Unlike workload.c there is no zero region: every page holds data a dump
 * must read, compress and store.  Each process keeps a checksum of its memory
 * (sum of word[i] * (2i + 1) mod 2^64), updated on every write it makes.
 *
 * Set-up: each process prints, on the stdout all of them share,
 *
 *   REGION <pid> <kind> <hex addr> <length>     one line per VMA
 *
 * and reports its pid to R through a pipe that is closed everywhere before
 * READY; once every process is filled, R prints
 *
 *   READY pids=R,P1,P2,...                      (R first; all 1 + C + C*G)
 *
 * and from then on every process holds only fds 0, 1, 2.  Commands are
 * signals to R, which forwards each to its children (and they to theirs)
 * before doing its own part; every process answers with one line (a single
 * write(2) on the shared file description: lines never interleave):
 *
 *   SIGUSR1  rewrite 1 % of its pages, spread (every 100th page, from a
 *            different start each round; one 8-byte word each)
 *            -> DIRTY <pid> <round> <pages>
 *   SIGUSR2  check: pid (and ppid, below R) as recorded at set-up, and the
 *            memory against the checksum -> CHECK <pid> <n> OK | CHECK <pid> <n> FAIL <why>
 *   SIGTERM/SIGINT  forward and exit.
 *
 * Lifetime: every process asks for SIGKILL when its parent dies
 * (PR_SET_PDEATHSIG), so a crashed bench leaves nothing.  Whatever a restore
 * makes of that setting (the restored R has another parent), below R a
 * process also exits when its parent changes (it looks once a second), so
 * killing a restored R ends the whole tree.
 *
 * -k: R does not ask for SIGKILL when its parent dies (the others still do, from their
 * parents): CRIU re-arms a restored root's setting before its `restore -d` exits, which
 * would kill it; whoever starts R with -k kills it (bench/criu.py does, on every exit path).
 *
 * Usage: tree [-c CHILDREN] [-g GRANDCHILDREN] [-s SIZE_MIB] [-m H,R] [-k]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

#include "fill.h" /* struct region, splitmix/xs, fill_heap/fill_random */

#define MAX_KIDS 64
#define DIRTY_STEP 100      /* 1 % of the pages: every 100th */
#define SETUP_MS 600000     /* how long R waits for every process to be filled */

static struct region regions[2];
static size_t npages;                  /* of both regions, back to back */
static uint64_t csum, seed;            /* checksum of the memory; this process's RNG state */
static pid_t kids[MAX_KIDS];
static int nkids;
static pid_t my_pid, my_ppid;
static int is_root;
static int ready_r = -1;                /* R's end of the ready pipe */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line)
        n = sizeof line - 1;
    if (write(1, line, (size_t)n) < 0) /* one write: a whole line, never interleaved */
        _exit(1);
}

static void die(const char *what)
{
    say("FAIL %d setup: %s: %s\n", (int)getpid(), what, strerror(errno));
    _exit(1); /* R sees its pipe hang up short; the others see their parent go */
}

static long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000;
}

/* The 64-bit word `w` of the memory (both regions back to back). */
static uint64_t *word(size_t w)
{
    size_t off = w * 8;
    int i = 0;
    while (off >= regions[i].len) {
        off -= regions[i].len;
        i++;
    }
    return (uint64_t *)(regions[i].addr + off);
}

static uint64_t checksum(void)
{
    uint64_t sum = 0, k = 1;
    for (int i = 0; i < 2; i++) {
        const uint64_t *w = (const uint64_t *)regions[i].addr, *end = w + regions[i].len / 8;
        for (; w < end; w++, k += 2)
            sum += *w * k;
    }
    return sum;
}

static void set_up_memory(size_t size_mib, unsigned heap_pct)
{
    size_t bytes = size_mib << 20;
    size_t heap = (bytes / 100 * heap_pct) & ~(PAGE - 1);
    static const char *const kinds[2] = {"heap", "random"};
    regions[0].len = heap;
    regions[1].len = bytes - heap;
    for (int i = 0; i < 2; i++) {
        regions[i].kind = kinds[i];
        if (!regions[i].len)
            continue;
        void *a = mmap(NULL, regions[i].len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (a == MAP_FAILED)
            die("mmap");
        regions[i].addr = a;
    }
    seed = 0x7ee5eedULL ^ ((uint64_t)my_pid << 20); /* distinct data in every process */
    if (regions[0].len)
        fill_heap(&regions[0], splitmix(&seed));
    if (regions[1].len)
        fill_random(&regions[1], splitmix(&seed));
    npages = bytes / PAGE;
    csum = checksum();
    for (int i = 0; i < 2; i++)
        if (regions[i].len)
            say("REGION %d %s %#" PRIxPTR " %zu\n", (int)my_pid, regions[i].kind, (uintptr_t)regions[i].addr,
                regions[i].len);
}

/* Rewrite one word in every DIRTY_STEP-th page (a different start each round); pages written. */
static size_t dirty(unsigned round)
{
    size_t n = 0;
    for (size_t pg = round % DIRTY_STEP; pg < npages; pg += DIRTY_STEP, n++) {
        size_t w = pg * (PAGE / 8) + xs(&seed) % (PAGE / 8);
        uint64_t *p = word(w), old = *p, new = old + 1 + (xs(&seed) & 0xff);
        *(volatile uint64_t *)p = new;
        csum += (new - old) * (2 * (uint64_t)w + 1);
    }
    return n;
}

static void forward(int sig)
{
    for (int i = 0; i < nkids; i++)
        kill(kids[i], sig); /* a child that is gone is not ours to report */
}

static sigset_t cmds; /* the command signals, blocked everywhere: taken by sigwait only */
static void serve(void);

/* Fork a process of the tree that forks `grandkids` of its own; in the parent, its pid. */
static pid_t start(int grandkids, int ready_w, size_t size_mib, unsigned heap_pct)
{
    pid_t parent = getpid(), pid = fork();
    if (pid < 0)
        die("fork");
    if (pid > 0)
        return pid;
    if (is_root)
        close(ready_r); /* only R reads the pids */
    is_root = 0;
    nkids = 0;
    my_pid = getpid();
    my_ppid = parent;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        die("prctl(PR_SET_PDEATHSIG)");
    if (getppid() != parent) /* the parent died before the prctl */
        _exit(1);
    for (int i = 0; i < grandkids; i++)
        kids[nkids++] = start(0, ready_w, size_mib, heap_pct);
    set_up_memory(size_mib, heap_pct);
    int32_t me = (int32_t)my_pid;
    if (write(ready_w, &me, sizeof me) != sizeof me) /* < PIPE_BUF: atomic */
        die("write to the ready pipe");
    close(ready_w);
    serve(); /* never returns */
    _exit(0);
}

static void serve(void)
{
    unsigned dirty_round = 0, checks = 0;
    for (;;) {
        int sig;
        if (is_root) {
            if (sigwait(&cmds, &sig) != 0)
                continue;
        } else {
            struct timespec second = {1, 0};
            sig = sigtimedwait(&cmds, NULL, &second);
            if (sig < 0) {
                if (errno == EAGAIN && getppid() != my_ppid) /* the parent is gone: so is the tree */
                    _exit(0);
                continue;
            }
        }
        forward(sig);
        if (sig == SIGUSR1) {
            dirty_round++;
            size_t n = dirty(dirty_round);
            say("DIRTY %d %u %zu\n", (int)my_pid, dirty_round, n);
        } else if (sig == SIGUSR2) {
            checks++;
            char why[256] = "";
            pid_t pid = getpid(), ppid = getppid();
            uint64_t now = checksum();
            if (pid != my_pid)
                snprintf(why, sizeof why, "pid %d, was %d", (int)pid, (int)my_pid);
            else if (!is_root && ppid != my_ppid)
                snprintf(why, sizeof why, "ppid %d, was %d", (int)ppid, (int)my_ppid);
            else if (now != csum)
                snprintf(why, sizeof why, "memory checksum %#" PRIx64 ", want %#" PRIx64, now, csum);
            if (why[0])
                say("CHECK %d %u FAIL %s\n", (int)my_pid, checks, why);
            else
                say("CHECK %d %u OK\n", (int)my_pid, checks);
        } else {
            _exit(0);
        }
    }
}

int main(int argc, char **argv)
{
    int children = 3, grandchildren = 4, keep = 0, opt;
    size_t size_mib = 64;
    unsigned pct[2] = {85, 15};
    while ((opt = getopt(argc, argv, "c:g:s:m:k")) != -1) {
        switch (opt) {
        case 'c': children = atoi(optarg); break;
        case 'g': grandchildren = atoi(optarg); break;
        case 's': size_mib = strtoull(optarg, NULL, 0); break;
        case 'k': keep = 1; break;
        case 'm':
            if (sscanf(optarg, "%u,%u", &pct[0], &pct[1]) != 2 || pct[0] + pct[1] != 100) {
                fprintf(stderr, "tree: -m wants two percentages summing to 100\n");
                return 2;
            }
            break;
        default:
            fprintf(stderr, "usage: %s [-c CHILDREN] [-g GRANDCHILDREN] [-s SIZE_MIB] [-m H,R] [-k]\n", argv[0]);
            return 2;
        }
    }
    if (children < 0 || grandchildren < 0 || children > MAX_KIDS || grandchildren > MAX_KIDS) {
        fprintf(stderr, "tree: counts in 0..%d\n", MAX_KIDS);
        return 2;
    }
    pid_t parent = getppid();
    if (!keep && prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        die("prctl(PR_SET_PDEATHSIG)");
    if (getppid() != parent)
        return 1;

    /* The commands are taken synchronously (sigwait), in every process: block them before forking. */
    sigemptyset(&cmds);
    sigaddset(&cmds, SIGUSR1);
    sigaddset(&cmds, SIGUSR2);
    sigaddset(&cmds, SIGTERM);
    sigaddset(&cmds, SIGINT);
    sigprocmask(SIG_BLOCK, &cmds, NULL);

    int ready[2];
    if (pipe(ready) != 0)
        die("pipe");
    ready_r = ready[0];
    is_root = 1;
    my_pid = getpid();
    my_ppid = parent;
    int total = 1 + children + children * grandchildren;
    for (int i = 0; i < children; i++)
        kids[nkids++] = start(grandchildren, ready[1], size_mib, pct[0]);
    close(ready[1]);
    set_up_memory(size_mib, pct[0]);

    char line[16 + 12 * (1 + MAX_KIDS + MAX_KIDS * MAX_KIDS)];
    int len = snprintf(line, sizeof line, "READY pids=%d", (int)my_pid);
    long deadline = now_ms() + SETUP_MS;
    for (int got = 1; got < total;) {
        struct pollfd pfd = {.fd = ready[0], .events = POLLIN};
        long left = deadline - now_ms();
        int r = poll(&pfd, 1, left > 0 ? (int)left : 0);
        int32_t pid;
        if (r == 1 && read(ready[0], &pid, sizeof pid) == sizeof pid) {
            len += snprintf(line + len, sizeof line - (size_t)len, ",%d", (int)pid);
            got++;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        say("FAIL %d setup: %d of %d processes ready (%s)\n", (int)my_pid, got, total,
            r == 0 ? "timeout" : "a process failed");
        forward(SIGKILL);
        return 1;
    }
    close(ready[0]);
    line[len++] = '\n';
    if (write(1, line, (size_t)len) != len) /* longer than say()'s line: written as is */
        return 1;
    serve();
    return 0;
}
