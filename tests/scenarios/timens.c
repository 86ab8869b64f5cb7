/* timens: a process tree that watches its own CLOCK_MONOTONIC and CLOCK_BOOTTIME across a checkpoint.
 *
 * usage: timens [MONO_S BOOT_S]
 *
 * With offsets, a launcher first makes a time namespace for its children (unshare(CLONE_NEWTIME), then
 * "1 MONO_S 0" and "7 BOOT_S 0" into /proc/self/timens_offsets) and forks the tree into it: its clocks
 * then differ from the host's by hours.  The launcher itself stays in the host's namespace, with another
 * one for its children, and waits for the tree (a tree ckpt must refuse to dump).  Without offsets the
 * process runs in the namespace it was started in.
 *
 * The tree is "main" and its child "sub".  Both sample CLOCK_MONOTONIC and CLOCK_BOOTTIME every ~2 ms
 * and keep the largest forward step and the number of backward steps seen.  main also arms three
 * non-blocking timerfds 4 s ahead: R relative on CLOCK_MONOTONIC, A absolute (TFD_TIMER_ABSTIME) on
 * CLOCK_MONOTONIC, B absolute on CLOCK_BOOTTIME; each must expire, and never before 4 s of its own
 * clock have passed since it was armed.  sub has a second thread blocked in clock_nanosleep
 * (TIMER_ABSTIME, CLOCK_MONOTONIC) until 4 s after it started: it must wake, not before that time.
 * main prints "READY pid=P sub=S mono=NS boot=NS" once sub's sleeper is asleep.
 *
 * Each SIGUSR1 makes the process print "PASS role=main|sub back=N maxjump_ms=M fired=RAB mono=NS
 * boot=NS" (fired: the timers that expired so far — for sub "S" once its sleeper woke —, "-" for none),
 * or "FAIL role=... why" when a clock stepped back, a timer expired or the sleeper woke early.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "verdict.h"

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

#define NS 1000000000LL
#define TIMEOUT_NS (4 * NS)

static int64_t clock_ns(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec * NS + ts.tv_nsec;
}

struct timer {
    char name;
    clockid_t clock;
    int flags;
    int fd;
    int64_t armed;  /* the clock's value when it was armed */
    int fired;
};

static struct timer timers[] = {
    {'R', CLOCK_MONOTONIC, 0, -1, 0, 0},
    {'A', CLOCK_MONOTONIC, TFD_TIMER_ABSTIME, -1, 0, 0},
    {'B', CLOCK_BOOTTIME, TFD_TIMER_ABSTIME, -1, 0, 0},
};
#define NTIMERS (sizeof timers / sizeof timers[0])

static void arm(struct timer *t) {
    t->fd = timerfd_create(t->clock, TFD_NONBLOCK | TFD_CLOEXEC);
    if (t->fd < 0) die("timerfd_create");
    t->armed = clock_ns(t->clock);
    int64_t when = t->flags & TFD_TIMER_ABSTIME ? t->armed + TIMEOUT_NS : TIMEOUT_NS;
    struct itimerspec its = {.it_value = {.tv_sec = when / NS, .tv_nsec = when % NS}};
    if (timerfd_settime(t->fd, t->flags, &its, NULL)) die("timerfd_settime");
}

static void check_timers(void) {
    for (size_t i = 0; i < NTIMERS; i++) {
        struct timer *t = &timers[i];
        uint64_t ticks;
        if (t->fd < 0 || t->fired || read(t->fd, &ticks, sizeof ticks) != sizeof ticks) continue;
        int64_t after = clock_ns(t->clock) - t->armed;
        t->fired = 1;
        if (after < TIMEOUT_NS) fail("timer %c expired %lld ms after it was armed, before its %lld ms", t->name,
                                     (long long)(after / 1000000), (long long)(TIMEOUT_NS / 1000000));
    }
}

static volatile int64_t sleep_until;  /* the sleeper's CLOCK_MONOTONIC deadline */
static volatile int slept, slept_early;

static void *sleeper(void *arg) {
    (void)arg;
    struct timespec until = {.tv_sec = sleep_until / NS, .tv_nsec = sleep_until % NS};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR) {}
    slept_early = clock_ns(CLOCK_MONOTONIC) < sleep_until;
    slept = 1;
    return NULL;
}

static void run(const char *role) {
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);  /* taken by sigtimedwait below, which is also the loop's sleep */
    int64_t prev[2] = {clock_ns(CLOCK_MONOTONIC), clock_ns(CLOCK_BOOTTIME)};
    int64_t maxjump = 0;
    long back = 0;
    for (;;) {
        struct timespec nap = {0, 2000000};
        int sig = sigtimedwait(&usr1, NULL, &nap);
        int64_t now[2] = {clock_ns(CLOCK_MONOTONIC), clock_ns(CLOCK_BOOTTIME)};
        for (int c = 0; c < 2; c++) {
            if (now[c] < prev[c]) {
                back++;
                fail("%s stepped back by %lld ms", c ? "CLOCK_BOOTTIME" : "CLOCK_MONOTONIC",
                     (long long)((prev[c] - now[c]) / 1000000));
            } else if (now[c] - prev[c] > maxjump) {
                maxjump = now[c] - prev[c];
            }
            prev[c] = now[c];
        }
        check_timers();
        if (slept_early) {
            fail("the sleeper woke before its deadline");
            slept_early = 0;
        }
        if (sig != SIGUSR1) continue;
        char fired[NTIMERS + 2] = {0};
        size_t n = 0;
        for (size_t i = 0; i < NTIMERS; i++)
            if (timers[i].fired) fired[n++] = timers[i].name;
        if (slept) fired[n++] = 'S';
        if (why[0]) {
            printf("FAIL role=%s %s\n", role, why);
        } else {
            printf("PASS role=%s back=%ld maxjump_ms=%lld fired=%s mono=%lld boot=%lld\n", role, back,
                   (long long)(maxjump / 1000000), n ? fired : "-", (long long)now[0], (long long)now[1]);
        }
        fflush(stdout);
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3) {
        if (unshare(CLONE_NEWTIME)) die("unshare(CLONE_NEWTIME)");
        int fd = open("/proc/self/timens_offsets", O_WRONLY);
        if (fd < 0) die("open timens_offsets");
        char buf[128];
        int len = snprintf(buf, sizeof buf, "%d %s 0\n%d %s 0\n", CLOCK_MONOTONIC, argv[1], CLOCK_BOOTTIME, argv[2]);
        if (write(fd, buf, len) != len) die("write timens_offsets");
        close(fd);
        pid_t tree = fork();
        if (tree < 0) die("fork");
        if (tree > 0) {  /* the launcher: another namespace for its children than its own */
            int status;
            while (waitpid(tree, &status, 0) < 0 && errno == EINTR) {}
            return 0;
        }
    }
    int up[2];
    if (pipe(up)) die("pipe");
    pid_t sub = fork();
    if (sub < 0) die("fork");
    if (sub == 0) {
        close(up[0]);
        sleep_until = clock_ns(CLOCK_MONOTONIC) + TIMEOUT_NS;
        pthread_t th;
        if (pthread_create(&th, NULL, sleeper, NULL)) die("pthread_create");
        close(up[1]);  /* main goes on: the sleeper is started (asleep a moment later) */
        run("sub");
    }
    close(up[1]);
    char c;
    while (read(up[0], &c, 1) < 0 && errno == EINTR) {}
    close(up[0]);
    for (size_t i = 0; i < NTIMERS; i++) arm(&timers[i]);
    printf("READY pid=%d sub=%d mono=%lld boot=%lld\n", getpid(), sub, (long long)clock_ns(CLOCK_MONOTONIC),
           (long long)clock_ns(CLOCK_BOOTTIME));
    run("main");
}
