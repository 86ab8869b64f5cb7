/* sleeper: threads parked in nanosleep, clock_nanosleep(TIMER_ABSTIME), a timed
 * futex wait and pause(), each measuring how long it really slept.
 *
 * usage: sleeper MILLISECONDS
 * Prints "READY nanosleep=TID clock_abs=TID futex=TID pause=TID"; each timed
 * sleeper prints "DONE kind elapsed_ms=E eintr=N" when its time is up; the
 * pause thread waits for SIGUSR1 (handler without SA_RESTART, so pause returns
 * EINTR).  The main thread prints PASS when every timed sleeper slept at least
 * MILLISECONDS and at most 1 s more, else FAIL.  Only the pause thread leaves
 * SIGUSR1 unblocked, so kill(pid, SIGUSR1) reaches it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long duration_ms;
static int tids[4];
static long elapsed[3];
static volatile int ready;
static uint32_t futex_word;

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void report(int kind, const char *name, long start, int eintr) {
    elapsed[kind] = now_ms() - start;
    printf("DONE %s elapsed_ms=%ld eintr=%d\n", name, elapsed[kind], eintr);
    fflush(stdout);
}

static void *t_nanosleep(void *arg) {
    (void)arg;
    tids[0] = gettid();
    __atomic_add_fetch(&ready, 1, __ATOMIC_SEQ_CST);
    long start = now_ms();
    struct timespec req = {duration_ms / 1000, (duration_ms % 1000) * 1000000}, rem;
    int eintr = 0;
    /* glibc's nanosleep() is clock_nanosleep(2); call nanosleep(2) itself. */
    while (syscall(SYS_nanosleep, &req, &rem) == -1 && errno == EINTR) { eintr++; req = rem; }
    report(0, "nanosleep", start, eintr);
    return NULL;
}

static void *t_clock_abs(void *arg) {
    (void)arg;
    tids[1] = gettid();
    __atomic_add_fetch(&ready, 1, __ATOMIC_SEQ_CST);
    long start = now_ms();
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += duration_ms / 1000;
    until.tv_nsec += (duration_ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) { until.tv_sec++; until.tv_nsec -= 1000000000; }
    int eintr = 0;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR) eintr++;
    report(1, "clock_abs", start, eintr);
    return NULL;
}

static void *t_futex(void *arg) {
    (void)arg;
    tids[2] = gettid();
    __atomic_add_fetch(&ready, 1, __ATOMIC_SEQ_CST);
    long start = now_ms(), deadline = start + duration_ms;
    int eintr = 0;
    for (;;) {
        long left = deadline - now_ms();
        if (left <= 0) break;
        struct timespec ts = {left / 1000, (left % 1000) * 1000000};
        long r = syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, &ts, NULL, 0);
        if (r == -1 && errno == ETIMEDOUT) break;
        if (r == -1 && errno == EINTR) eintr++;
    }
    report(2, "futex", start, eintr);
    return NULL;
}

static void on_usr1(int sig) { (void)sig; }

static void *t_pause(void *arg) {
    (void)arg;
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
    tids[3] = gettid();
    __atomic_add_fetch(&ready, 1, __ATOMIC_SEQ_CST);
    int r = pause();
    printf("DONE pause ret=%d errno=%d\n", r, errno);
    fflush(stdout);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    duration_ms = atol(argv[1]);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;  /* no SA_RESTART */
    sigaction(SIGUSR1, &sa, NULL);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);

    void *(*fns[4])(void *) = {t_nanosleep, t_clock_abs, t_futex, t_pause};
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, fns[i], NULL);
    while (__atomic_load_n(&ready, __ATOMIC_SEQ_CST) < 4) usleep(100);
    printf("READY nanosleep=%d clock_abs=%d futex=%d pause=%d\n", tids[0], tids[1], tids[2], tids[3]);
    fflush(stdout);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 3; i++)
        if (elapsed[i] < duration_ms || elapsed[i] > duration_ms + 1000) {
            printf("FAIL sleeper %d slept %ld ms for %ld\n", i, elapsed[i], duration_ms);
            return 1;
        }
    printf("PASS\n");
    return 0;
}
