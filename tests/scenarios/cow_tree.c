/* cow_tree: a parent and three forked children sharing private memory copy-on-write, checking themselves.
 *
 * usage: cow_tree [MIB]      (default 64)
 *
 * The root R maps MIB MiB of private anonymous memory, fills it with pseudo-random words (a fixed
 * seed: every process can compute them) and forks C0, C1, C2.  Child k then writes DIRTY pages of its
 * own (pages k + 3*j*37, a pattern of its own): every other page it still shares with R, physically,
 * until one of them writes it.  Each child keeps fds 0-2 and the write end of its report pipe.
 * Once every child has written its pages, R prints "READY pids=R,C0,C1,C2 addr=0x... size=BYTES".
 *
 * Each SIGUSR1 to R runs a round N: R sends SIGUSR1 to each child; each checks every word of its area
 * (its own pages have its pattern, the others the common data) and writes "OK Ck" or "FAIL Ck why" to
 * its report pipe; R checks its own area, reads the three reports (30 s timeout) and prints
 *     "PASS cow_tree round=N"   or   "FAIL round=N why; why; ..."
 * Nobody writes the area after READY.  A child exits when its report pipe's reader (R) is gone; tests
 * kill every pid of the READY line anyway.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "verdict.h"

#define NKIDS 3
#define DIRTY 8
#define PAGE 4096
#define REPORT_MS 30000  /* a bound for a hung child only: checking 64 MiB takes seconds in a TCG guest under load */

static uint64_t *area;
static size_t words;
static int role = -1;  /* -1: R; else the child's index */
static int rep[NKIDS][2];

static uint64_t common_word(size_t i) {
    uint64_t x = i * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;  /* splitmix64 of the index */
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t own_word(int k, size_t i) { return common_word(i) ^ (0x1111111111111111ull * (uint64_t)(k + 1)); }

/* Page p of the area is child k's own when it is one of the pages k writes. */
static int owner_of(size_t page) {
    for (int k = 0; k < NKIDS; k++)
        for (size_t j = 0; j < DIRTY; j++)
            if (page == (size_t)k + 3 * j * 37) return k;
    return -1;
}

static void check_area(void) {
    size_t per_page = PAGE / 8;
    for (size_t i = 0; i < words; i++) {
        int owner = role >= 0 ? owner_of(i / per_page) : -1;
        uint64_t want = owner == role && role >= 0 ? own_word(role, i) : common_word(i);
        if (area[i] != want) { fail("word %zu (page %zu) differs", i, i / per_page); return; }
    }
}

static void child(int k) {
    role = k;
    for (int j = 0; j < NKIDS; j++) {
        close(rep[j][0]);
        if (j != k) close(rep[j][1]);
    }
    size_t per_page = PAGE / 8;
    for (size_t j = 0; j < DIRTY; j++) {
        size_t page = (size_t)k + 3 * j * 37;
        for (size_t i = page * per_page; i < (page + 1) * per_page; i++) area[i] = own_word(k, i);
    }
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    if (write(rep[k][1], "W", 1) != 1) _exit(1);  /* its pages are written */
    for (;;) {
        int sig;
        if (sigwait(&usr1, &sig)) continue;
        why[0] = 0;
        check_area();
        char line[sizeof why + 32];
        int n = why[0] ? snprintf(line, sizeof line, "FAIL C%d %s\n", k, why) : snprintf(line, sizeof line, "OK C%d\n", k);
        if (write(rep[k][1], line, (size_t)n) != n) _exit(0);  /* R is gone */
    }
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    size_t size = mib << 20;
    words = size / 8;
    area = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) die("mmap");
    for (size_t i = 0; i < words; i++) area[i] = common_word(i);
    pid_t kids[NKIDS];
    for (int k = 0; k < NKIDS; k++) {
        if (pipe(rep[k])) die("pipe");
    }
    for (int k = 0; k < NKIDS; k++) {
        kids[k] = fork();
        if (kids[k] < 0) die("fork");
        if (kids[k] == 0) child(k);
    }
    for (int k = 0; k < NKIDS; k++) {
        close(rep[k][1]);
        char c;
        if (read(rep[k][0], &c, 1) != 1) die("child set-up");
    }
    struct sigaction sa = {.sa_handler = on_usr1};
    sigaction(SIGUSR1, &sa, NULL);
    printf("READY pids=%d,%d,%d,%d addr=%p size=%zu\n", getpid(), kids[0], kids[1], kids[2], (void *)area, size);
    fflush(stdout);
    for (unsigned round_no = 1;; round_no++) {
        while (!got_usr1) pause();
        got_usr1 = 0;
        why[0] = 0;
        for (int k = 0; k < NKIDS; k++) kill(kids[k], SIGUSR1);
        check_area();
        for (int k = 0; k < NKIDS; k++) {
            char line[sizeof why + 32];
            if (read_report_line(rep[k][0], line, sizeof line, REPORT_MS) < 0) fail("no report from C%d", k);
            else if (strncmp(line, "OK ", 3)) fail("%s", line);
        }
        if (why[0]) printf("FAIL round=%u %s\n", round_no, why);
        else printf("PASS cow_tree round=%u\n", round_no);
        fflush(stdout);
    }
}
