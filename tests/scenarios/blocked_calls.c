/* blocked_calls: one thread blocked in each call a checkpoint interrupts, each
 * checking that the call comes back normally (never EINTR) once the process
 * runs again — after a restore, the restored call.
 *
 * usage: blocked_calls MILLISECONDS
 *
 * Sleepers loop for ever over a sleep of MILLISECONDS and print, per round,
 * "ROUND kind n=N ms=E eintr=K" (E: how long that round took, K: EINTRs seen
 * in it; glibc's wrappers are used where noted, the rest go through
 * syscall(2)):
 *   nanosleep     nanosleep(2) (syscall)        nanosleep_libc  glibc nanosleep() (clock_nanosleep inline)
 *   clock_rel     clock_nanosleep relative      clock_abs       clock_nanosleep TIMER_ABSTIME
 *   poll_sleep    glibc poll(NULL, 0, ms)
 * Waiters block with a one-hour (or no) timeout until the main thread wakes
 * them, once a line arrives on stdin; each prints "DONE kind ret=R errno=E
 * eintr=K ms=M":
 *   poll, poll_inf (glibc poll, 1 h / -1)  ppoll, select, pselect6 (syscall, 1 h)
 *   epoll_wait, epoll_inf (1 h / -1)       epoll_pwait (glibc, with a mask), epoll_pwait2 (syscall)
 *   futex (FUTEX_WAIT relative), futex_abs (FUTEX_WAIT_BITSET absolute), futex_libc (sem_timedwait)
 *   sigtimedwait (SIGUSR2, sent to the thread), recv (SO_RCVTIMEO 1 h), accept4 (SO_RCVTIMEO 1 h)
 * The main thread prints "READY kind=TID ..." first, then, once every waiter
 * is done, PASS when each returned what it was woken with and none saw
 * EINTR, else "FAIL kind ...".  SIGUSR2 is blocked in every thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HOUR_MS 3600000L

enum kind {
    NANOSLEEP, NANOSLEEP_LIBC, CLOCK_REL, CLOCK_ABS, POLL_SLEEP, /* sleepers */
    POLL, POLL_INF, PPOLL, SELECT, PSELECT6, EPOLL_WAIT, EPOLL_INF, EPOLL_PWAIT, EPOLL_PWAIT2,
    FUTEX, FUTEX_ABS, FUTEX_LIBC, SIGTIMEDWAIT, RECV, ACCEPT4, NKINDS
};
#define FIRST_WAITER POLL
static const char *names[NKINDS] = {
    "nanosleep", "nanosleep_libc", "clock_rel", "clock_abs", "poll_sleep",
    "poll", "poll_inf", "ppoll", "select", "pselect6", "epoll_wait", "epoll_inf", "epoll_pwait", "epoll_pwait2",
    "futex", "futex_abs", "futex_libc", "sigtimedwait", "recv", "accept4",
};

static long sleep_ms;
static int tids[NKINDS];
static volatile int ready;
static int event_pipe[2];        /* written once by main: every poller sees POLLIN */
static int epfds[NKINDS];        /* one epoll instance per epoll waiter: each gets its own wake-up */
static int sock_pair[2];         /* main writes one byte into [1] */
static int listener = -1;        /* abstract unix socket the main thread connects to */
static struct sockaddr_un listen_addr;
static uint32_t futex_word, futex_abs_word;
static sem_t sem;
static const char *verdict[NKINDS];

static socklen_t listen_addr_len(void) {
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(listen_addr.sun_path + 1));
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct timespec ms_to_ts(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    return ts;
}

static void started(int k) {
    tids[k] = gettid();
    __atomic_add_fetch(&ready, 1, __ATOMIC_SEQ_CST);
}

/* One sleep of sleep_ms; returns the EINTRs seen (each retried as the call's own contract says). */
static int sleep_once(int k) {
    int eintr = 0;
    struct timespec req = ms_to_ts(sleep_ms), rem;
    switch (k) {
    case NANOSLEEP:
        while (syscall(SYS_nanosleep, &req, &rem) == -1 && errno == EINTR) { eintr++; req = rem; }
        break;
    case NANOSLEEP_LIBC:
        while (nanosleep(&req, &rem) == -1 && errno == EINTR) { eintr++; req = rem; }
        break;
    case CLOCK_REL:
        while (syscall(SYS_clock_nanosleep, CLOCK_MONOTONIC, 0, &req, &rem) == -1 && errno == EINTR) {
            eintr++;
            req = rem;
        }
        break;
    case CLOCK_ABS: {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += req.tv_sec;
        until.tv_nsec += req.tv_nsec;
        if (until.tv_nsec >= 1000000000) { until.tv_sec++; until.tv_nsec -= 1000000000; }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR) eintr++;
        break;
    }
    case POLL_SLEEP: {
        long deadline = now_ms() + sleep_ms;
        for (long left = sleep_ms; left > 0; left = deadline - now_ms())
            if (poll(NULL, 0, (int)left) == -1 && errno == EINTR) eintr++;
        break;
    }
    }
    return eintr;
}

static void *sleeper(void *arg) {
    int k = (int)(intptr_t)arg;
    started(k);
    for (long n = 1;; n++) {
        long start = now_ms();
        int eintr = sleep_once(k);
        printf("ROUND %s n=%ld ms=%ld eintr=%d\n", names[k], n, now_ms() - start, eintr);
        fflush(stdout);
    }
    return NULL;
}

/* One wait; *ret is the call's result and *err its errno.  Returns true when the call ended
 * for a reason other than EINTR (woken or, for no test here, timed out). */
static int wait_once(int k, long *ret, int *err) {
    struct pollfd p = {event_pipe[0], POLLIN, 0};
    struct timespec hour = ms_to_ts(HOUR_MS);
    struct epoll_event ev;
    long r = -1;
    errno = 0;
    switch (k) {
    case POLL: r = poll(&p, 1, (int)HOUR_MS); break;
    case POLL_INF: r = poll(&p, 1, -1); break;
    case PPOLL: r = syscall(SYS_ppoll, &p, 1, &hour, NULL, 8); break;
    case SELECT:
    case PSELECT6: {
        fd_set set;
        FD_ZERO(&set);
        FD_SET(event_pipe[0], &set);
        struct timeval tv = {HOUR_MS / 1000, 0};
        r = k == SELECT ? syscall(SYS_select, event_pipe[0] + 1, &set, NULL, NULL, &tv)
                        : syscall(SYS_pselect6, event_pipe[0] + 1, &set, NULL, NULL, &hour, NULL);
        break;
    }
    case EPOLL_WAIT: r = syscall(SYS_epoll_wait, epfds[k], &ev, 1, (int)HOUR_MS); break;
    case EPOLL_INF: r = syscall(SYS_epoll_wait, epfds[k], &ev, 1, -1); break;
    case EPOLL_PWAIT: {
        sigset_t mask;
        pthread_sigmask(SIG_BLOCK, NULL, &mask);
        r = epoll_pwait(epfds[k], &ev, 1, (int)HOUR_MS, &mask);
        break;
    }
    case EPOLL_PWAIT2: r = syscall(SYS_epoll_pwait2, epfds[k], &ev, 1, &hour, NULL, 8); break;
    case FUTEX:
        if (__atomic_load_n(&futex_word, __ATOMIC_SEQ_CST)) return 1;
        r = syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, &hour, NULL, 0);
        break;
    case FUTEX_ABS: {
        if (__atomic_load_n(&futex_abs_word, __ATOMIC_SEQ_CST)) return 1;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += HOUR_MS / 1000;
        r = syscall(SYS_futex, &futex_abs_word, FUTEX_WAIT_BITSET_PRIVATE, 0, &until, NULL, FUTEX_BITSET_MATCH_ANY);
        break;
    }
    case FUTEX_LIBC: {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += HOUR_MS / 1000;
        r = sem_timedwait(&sem, &until);
        break;
    }
    case SIGTIMEDWAIT: {
        sigset_t usr2;
        sigemptyset(&usr2);
        sigaddset(&usr2, SIGUSR2);
        r = sigtimedwait(&usr2, NULL, &hour);
        break;
    }
    case RECV: {
        char c;
        r = recv(sock_pair[0], &c, 1, 0);
        break;
    }
    case ACCEPT4: r = accept4(listener, NULL, NULL, SOCK_CLOEXEC); break;
    }
    *ret = r;
    *err = r < 0 ? errno : 0;
    /* A futex wait may also end with EAGAIN (the word changed before it slept): woken all the same. */
    return !(r < 0 && errno == EINTR);
}

static int woken_as_expected(int k, long r, int err) {
    switch (k) {
    case FUTEX: case FUTEX_ABS: return r == 0 || err == EAGAIN || (r == -1 && err == 0);
    case FUTEX_LIBC: return r == 0;
    case SIGTIMEDWAIT: return r == SIGUSR2;
    case ACCEPT4: return r >= 0;
    default: return r == 1;
    }
}

static void *waiter(void *arg) {
    int k = (int)(intptr_t)arg;
    started(k);
    long start = now_ms(), r = 0;
    int err = 0, eintr = 0;
    while (!wait_once(k, &r, &err)) eintr++;
    if (k == FUTEX || k == FUTEX_ABS) { r = 0; err = 0; }  /* returned early: the word was already set */
    printf("DONE %s ret=%ld errno=%d eintr=%d ms=%ld\n", names[k], r, err, eintr, now_ms() - start);
    fflush(stdout);
    verdict[k] = eintr ? "saw EINTR" : woken_as_expected(k, r, err) ? NULL : "woke with an unexpected result";
    return NULL;
}

static void setup(void) {
    if (pipe(event_pipe) != 0) exit(3);
    for (int k = EPOLL_WAIT; k <= EPOLL_PWAIT2; k++) {
        epfds[k] = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN};
        if (epfds[k] < 0 || epoll_ctl(epfds[k], EPOLL_CTL_ADD, event_pipe[0], &ev) != 0) exit(3);
    }
    struct timeval hour = {HOUR_MS / 1000, 0};
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sock_pair) != 0) exit(3);
    setsockopt(sock_pair[0], SOL_SOCKET, SO_RCVTIMEO, &hour, sizeof hour);
    listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    listen_addr.sun_family = AF_UNIX;
    snprintf(listen_addr.sun_path + 1, sizeof listen_addr.sun_path - 1, "blocked_calls.%d", getpid());
    if (bind(listener, (struct sockaddr *)&listen_addr, listen_addr_len()) != 0 || listen(listener, 1) != 0) exit(3);
    setsockopt(listener, SOL_SOCKET, SO_RCVTIMEO, &hour, sizeof hour);
    sem_init(&sem, 0, 0);
}

static void wake_all(void) {
    if (write(event_pipe[1], "e", 1) != 1) exit(3);
    __atomic_store_n(&futex_word, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    __atomic_store_n(&futex_abs_word, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &futex_abs_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    sem_post(&sem);
    syscall(SYS_tgkill, getpid(), tids[SIGTIMEDWAIT], SIGUSR2);
    if (write(sock_pair[1], "r", 1) != 1) exit(3);
    int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&listen_addr, listen_addr_len()) != 0) exit(3);
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    sleep_ms = atol(argv[1]);
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &usr2, NULL);
    setup();
    pthread_t t[NKINDS];
    for (int k = 0; k < NKINDS; k++)
        pthread_create(&t[k], NULL, k < FIRST_WAITER ? sleeper : waiter, (void *)(intptr_t)k);
    while (__atomic_load_n(&ready, __ATOMIC_SEQ_CST) < NKINDS) usleep(100);
    printf("READY");
    for (int k = 0; k < NKINDS; k++) printf(" %s=%d", names[k], tids[k]);
    printf("\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 3;
    wake_all();
    int bad = 0;
    for (int k = FIRST_WAITER; k < NKINDS; k++) {
        pthread_join(t[k], NULL);
        if (verdict[k]) { printf("FAIL %s %s\n", names[k], verdict[k]); bad = 1; }
    }
    if (!bad) printf("PASS\n");
    fflush(stdout);
    for (;;) pause();  /* the sleepers go on; the test ends the process */
}
