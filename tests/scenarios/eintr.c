/* eintr: a thread blocked in pause() or sigsuspend() gets -1/EINTR once a caught signal's handler has run.
 *
 * usage: eintr pause|sigsuspend
 * Installs a SIGUSR1 handler (no SA_RESTART), keeps SIGUSR2 blocked, prints "READY" and waits once in the
 * call (sigsuspend's temporary mask lets SIGUSR1 in; SIGUSR1 is blocked outside it).  When the call returns
 * it prints "PASS" if it returned -1 with errno EINTR after the handler ran and the blocked mask is as before
 * the call, else "FAIL why".  A call restarted after its handler ran (the kernel never does that for pause
 * and sigsuspend) never returns: the test's wait for the line fails.
 */
#define _GNU_SOURCE
#include "verdict.h"

int main(int argc, char **argv) {
    int suspend = argc > 1 && !strcmp(argv[1], "sigsuspend");
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sigset_t before, wait, now;
    sigemptyset(&before);
    sigaddset(&before, SIGUSR2);
    if (suspend) sigaddset(&before, SIGUSR1);
    sigprocmask(SIG_SETMASK, &before, NULL);
    sigemptyset(&wait);
    sigaddset(&wait, SIGUSR2);
    printf("READY\n");
    fflush(stdout);
    int r = suspend ? sigsuspend(&wait) : pause();
    int e = errno;
    sigprocmask(SIG_SETMASK, NULL, &now);
    if (r != -1 || e != EINTR) fail("the call returned %d (%s), not -1/EINTR", r, strerror(e));
    if (!got_usr1) fail("the handler did not run");
    if (sigismember(&now, SIGUSR1) != sigismember(&before, SIGUSR1) || !sigismember(&now, SIGUSR2))
        fail("the blocked mask changed");
    printf(why[0] ? "FAIL %s\n" : "PASS%s\n", why);
    fflush(stdout);
    return 0;
}
