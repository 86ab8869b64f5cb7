/* verdict.h: how the self-checking scenarios collect a round's failures and report set-up errors.
 *
 * fail() appends to `why` ("; "-separated, truncated rather than overflowing); a round prints
 * "PASS ..." when `why` is empty, else "FAIL ... why".  die() ends a target whose set-up failed.
 * Each scenario is one .c file including this header (tests/targets.py rebuilds on either's change).
 */
#ifndef CKPT_VERDICT_H
#define CKPT_VERDICT_H

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char why[2048];  /* this round's failures, "; "-separated */
static volatile sig_atomic_t got_usr1;  /* a round was asked for (on_usr1 is the SIGUSR1 handler) */

__attribute__((unused))
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

__attribute__((unused, format(printf, 1, 2)))
static void fail(const char *fmt, ...) {
    size_t n = strlen(why);
    if (n + 8 >= sizeof why) return;
    if (n) { strcpy(why + n, "; "); n += 2; }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why + n, sizeof why - n, fmt, ap);
    va_end(ap);
}

__attribute__((unused))
static void die(const char *what) {
    printf("FAIL setup: %s: %s\n", what, strerror(errno));
    fflush(stdout);
    exit(1);
}

__attribute__((unused))
static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000;
}

/* One line (its newline dropped, truncated to fit) from fd, read a byte at a time so nothing after it is
 * taken; -1 if none comes within timeout_ms or the fd ends first. */
__attribute__((unused))
static int read_report_line(int fd, char *line, size_t size, long timeout_ms) {
    size_t n = 0;
    long deadline = now_ms() + timeout_ms;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        long left = deadline - now_ms();
        if (poll(&pfd, 1, left < 0 ? 0 : (int)left) != 1) return -1;
        char c;
        if (read(fd, &c, 1) != 1) return -1;
        if (c == '\n') { line[n] = 0; return 0; }
        if (n + 1 < size) line[n++] = c;
    }
}

/* Catch SIGUSR1 with on_usr1 and block it: it gets through only inside await_usr1*, so none is lost
 * between rounds.  Threads and children made after inherit the block. */
__attribute__((unused))
static void catch_usr1(void) {
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    struct sigaction sa = {.sa_handler = on_usr1};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
}

/* Wait for the next SIGUSR1 (blocked outside this wait: catch_usr1). */
__attribute__((unused))
static void await_usr1(void) {
    sigset_t waitmask;
    sigprocmask(SIG_SETMASK, NULL, &waitmask);
    sigdelset(&waitmask, SIGUSR1);
    while (!got_usr1) sigsuspend(&waitmask);
    got_usr1 = 0;
}

/* A child's await_usr1: it also ends (_exit(1)) once fd hangs up, its parent gone.  events = 0:
 * bytes buffered in fd do not wake it, only POLLHUP or POLLERR do. */
__attribute__((unused))
static void await_usr1_or_hangup(int fd) {
    sigset_t waitmask;
    sigprocmask(SIG_SETMASK, NULL, &waitmask);
    sigdelset(&waitmask, SIGUSR1);
    struct pollfd pfd = {.fd = fd, .events = 0};
    while (!got_usr1) {
        int n = ppoll(&pfd, 1, NULL, &waitmask);
        if (n > 0 || (n < 0 && errno != EINTR)) _exit(1);
    }
    got_usr1 = 0;
}

#endif
