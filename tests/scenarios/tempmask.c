/* tempmask: threads waiting with a temporary signal mask (sigsuspend, ppoll, pselect); each checks,
 * once woken, that its own mask is back.
 *
 * usage: tempmask
 * Every thread blocks SIGUSR1 and SIGUSR2 for good and waits with a mask that lets SIGUSR1 in:
 * the main thread in sigsuspend(), one thread in ppoll(), one in pselect().  Prints
 * "READY main=TID ppoll=TID pselect=TID".  kill(pid, SIGUSR1) three times wakes them one by one
 * (the handler runs on the thread whose temporary mask let it in); each woken thread then reads
 * its mask and prints "WOKE kind mask_ok=1" when SIGUSR1 and SIGUSR2 are blocked again (0 if a
 * checkpoint left it with the temporary mask), and waits again.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <unistd.h>

static void on_usr1(int sig) { (void)sig; }

static int mask_ok(void) {
    sigset_t cur;
    pthread_sigmask(SIG_SETMASK, NULL, &cur);
    return sigismember(&cur, SIGUSR1) && sigismember(&cur, SIGUSR2);
}

static void woke(const char *kind) {
    printf("WOKE %s mask_ok=%d\n", kind, mask_ok());
    fflush(stdout);
}

static sigset_t waitmask; /* SIGUSR2 still blocked, SIGUSR1 let in */
static volatile int tids[3];

static void *use_ppoll(void *arg) {
    (void)arg;
    tids[1] = (int)syscall(SYS_gettid);
    int p[2];
    if (pipe(p)) return NULL;
    struct pollfd pfd = {.fd = p[0], .events = POLLIN};
    for (;;) {
        ppoll(&pfd, 1, NULL, &waitmask);
        woke("ppoll");
    }
}

static void *use_pselect(void *arg) {
    (void)arg;
    tids[2] = (int)syscall(SYS_gettid);
    for (;;) {
        pselect(0, NULL, NULL, NULL, NULL, &waitmask);
        woke("pselect");
    }
}

int main(void) {
    sigset_t both;
    sigemptyset(&both);
    sigaddset(&both, SIGUSR1);
    sigaddset(&both, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &both, NULL);
    sigemptyset(&waitmask);
    sigaddset(&waitmask, SIGUSR2);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    tids[0] = (int)syscall(SYS_gettid);
    pthread_t a, b;
    pthread_create(&a, NULL, use_ppoll, NULL);
    pthread_create(&b, NULL, use_pselect, NULL);
    while (!tids[1] || !tids[2]) usleep(1000);
    printf("READY main=%d ppoll=%d pselect=%d\n", tids[0], tids[1], tids[2]);
    fflush(stdout);
    for (;;) {
        sigsuspend(&waitmask);
        woke("sigsuspend");
    }
}
