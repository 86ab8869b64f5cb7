/* across.c: a dynamically linked program with a library of its own, for restores where its files are copies.
 *
 * tests/e2e/test_across_hosts.py builds it twice: with -DACROSS_LIB -shared -fPIC as libacross.so
 * (ACROSS_SALT changes the library's code, and so its build-id), and as the program, linked to
 * that library with rpath $ORIGIN.  The program prints "READY pid=P", then on each SIGUSR1
 * "PASS n=N sum=S": N counts rounds and S sums 3*N + ACROSS_SALT, both kept in the library's own
 * data (private pages the image holds) and computed by the library's code (pages a restore maps
 * from the file).  It waits in sigsuspend, which a restore resumes.
 */
#ifdef ACROSS_LIB
#ifndef ACROSS_SALT
#define ACROSS_SALT 0
#endif
static long rounds, sum;

long across_round(void) {
    rounds++;
    sum += rounds * 3 + ACROSS_SALT;
    return rounds;
}

long across_sum(void) { return sum; }
#else
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

long across_round(void);
long across_sum(void);

static volatile sig_atomic_t asked;

static void on_usr1(int sig) { (void)sig; asked = 1; }

int main(void) {
    struct sigaction sa = {.sa_handler = on_usr1};
    sigset_t block, old;
    sigaction(SIGUSR1, &sa, NULL);
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &old);
    printf("READY pid=%d\n", (int)getpid());
    fflush(stdout);
    for (;;) {
        while (!asked)
            sigsuspend(&old);
        asked = 0;
        long n = across_round();
        printf("PASS n=%ld sum=%ld\n", n, across_sum());
        fflush(stdout);
    }
}
#endif
