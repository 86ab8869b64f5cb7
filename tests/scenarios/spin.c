/* spin: busy threads and a known memory layout, for seizing and memory access.
 *
 * usage: spin [NTHREADS] [FLAGS]   FLAGS may contain 't' (ignore SIGTRAP)
 * Prints "READY counters=ADDR pattern=ADDR npages=N protnone=ADDR".
 * counters[i] is incremented by thread i forever; page p of the pattern area
 * holds byte (p * 7 + 1) & 0xff; the PROT_NONE page holds 0x5a.
 * On SIGUSR1 the main thread checks the pattern and prints PASS or FAIL.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NPAGES 64
#define MAXTHREADS 64
#define PAGE 4096

static volatile uint64_t counters[MAXTHREADS];
static volatile sig_atomic_t check_requested;
static unsigned char *pattern;

static void on_usr1(int sig) { (void)sig; check_requested = 1; }

static void *spin(void *arg) {
    long i = (long)arg;
    for (;;) counters[i]++;
    return NULL;
}

static int pattern_ok(void) {
    for (int p = 0; p < NPAGES; p++)
        for (int b = 0; b < PAGE; b++)
            if (pattern[p * PAGE + b] != (unsigned char)(p * 7 + 1)) {
                printf("FAIL pattern page %d byte %d is %#x\n", p, b, pattern[p * PAGE + b]);
                return 0;
            }
    return 1;
}

int main(int argc, char **argv) {
    int nthreads = argc > 1 ? atoi(argv[1]) : 1;
    const char *flags = argc > 2 ? argv[2] : "";
    if (nthreads < 1 || nthreads > MAXTHREADS) return 2;
    if (strchr(flags, 't')) signal(SIGTRAP, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);

    pattern = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *none = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pattern == MAP_FAILED || none == MAP_FAILED) return 3;
    for (int p = 0; p < NPAGES; p++) memset(pattern + p * PAGE, p * 7 + 1, PAGE);
    memset(none, 0x5a, PAGE);
    mprotect(none, PAGE, PROT_NONE);

    for (long i = 1; i < nthreads; i++) {
        pthread_t t;
        pthread_create(&t, NULL, spin, (void *)i);
    }
    printf("READY counters=%p pattern=%p npages=%d protnone=%p\n", (void *)counters, pattern, NPAGES, none);
    fflush(stdout);
    for (;;) {
        counters[0]++;
        if (check_requested) {
            check_requested = 0;
            if (pattern_ok()) printf("PASS\n");
            fflush(stdout);
        }
    }
}
