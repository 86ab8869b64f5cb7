/* evfds: a target holding timerfds, a signalfd, two inotify instances and an epoll set over them.
 *
 * usage: evfds DIR [proc]
 *   fd 3  timerfd CLOCK_MONOTONIC, TFD_NONBLOCK|TFD_CLOEXEC, every 100 ms; the main loop reads it (epoll)
 *   fd 4  timerfd CLOCK_MONOTONIC, blocking, one-shot 30 s from the start
 *   fd 5  timerfd CLOCK_MONOTONIC, TFD_NONBLOCK, one-shot 50 ms, never read: one expiration left unread
 *   fd 6  timerfd CLOCK_REALTIME, TFD_TIMER_ABSTIME, one-shot at a wall-clock time 60 s from the start
 *   fd 7  signalfd for SIGUSR2 (blocked), SFD_NONBLOCK|SFD_CLOEXEC; the main loop reads it (epoll)
 *   fd 8  inotify, IN_NONBLOCK: DIR (IN_CREATE|IN_DELETE|IN_ONLYDIR, wd 1), a watch added and removed
 *         again (wd 2, a gap), DIR/watched (IN_MODIFY|IN_CLOSE_WRITE|IN_EXCL_UNLINK, wd 3); read by the main loop
 *   fd 9  inotify, blocking: DIR (IN_CREATE), never read (its queue is what a dump has to leave behind);
 *         with "proc" also /proc (wd 2), a filesystem whose file handles cannot be opened
 *   fd 10 epoll over fd 3 (EPOLLIN, data 3) and fd 7 (EPOLLIN, data 7)
 * Prints "READY pid=P dirwd=1 filewd=3", then one line per event it reads:
 * "SIGFD sig=N pid=P" (signalfd), "INOTIFY wd=W mask=M name=N" (fd 8).
 * SIGUSR1 checks every descriptor's flags and settings and prints
 * "PASS ticks=T long_ms=L abs_ms=A oneshot=R" (periodic ticks read so far, time left on fd 4,
 * fd 6's deadline in ms since the Epoch, whether fd 5 is readable) or "FAIL why".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

static void die(const char *what) { printf("FAIL %s: %s\n", what, strerror(errno)); fflush(stdout); exit(1); }

static int at(int fd, int want) {
    if (fd < 0) die("create");
    if (fd != want) {
        int flags = fcntl(fd, F_GETFD);
        if (dup3(fd, want, flags & FD_CLOEXEC ? O_CLOEXEC : 0) < 0) die("dup3");
        close(fd);
    }
    return want;
}

static long long ns_of(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }

static unsigned long long ticks;
static char fail[256];

static void check(int ok, const char *what) { if (!ok && !fail[0]) snprintf(fail, sizeof fail, "%s", what); }

static void check_flags(int fd, int nonblock, int cloexec, const char *what) {
    int fl = fcntl(fd, F_GETFL), fdf = fcntl(fd, F_GETFD);
    check(fl >= 0 && !!(fl & O_NONBLOCK) == nonblock && fdf >= 0 && !!(fdf & FD_CLOEXEC) == cloexec, what);
}

static void verify(void) {
    struct itimerspec p, l, o, a;
    fail[0] = 0;
    /* it_value may read 0 for a moment while the timer fires: only the period is checked */
    check(timerfd_gettime(3, &p) == 0 && ns_of(p.it_interval) == 100000000LL, "periodic timer");
    check(timerfd_gettime(4, &l) == 0 && ns_of(l.it_interval) == 0 && ns_of(l.it_value) > 0, "30 s timer");
    check(timerfd_gettime(5, &o) == 0 && ns_of(o.it_interval) == 0 && ns_of(o.it_value) == 0, "50 ms timer");
    check(timerfd_gettime(6, &a) == 0 && ns_of(a.it_interval) == 0 && ns_of(a.it_value) > 0, "realtime timer");
    check_flags(3, 1, 1, "fd 3 flags");
    check_flags(4, 0, 0, "fd 4 flags");
    check_flags(5, 1, 0, "fd 5 flags");
    check_flags(6, 0, 0, "fd 6 flags");
    check_flags(7, 1, 1, "fd 7 flags");
    check_flags(8, 1, 0, "fd 8 flags");
    check_flags(9, 0, 0, "fd 9 flags");
    check_flags(10, 0, 0, "fd 10 flags");
    struct pollfd pf = {5, POLLIN, 0};
    int oneshot = poll(&pf, 1, 0) == 1 && (pf.revents & POLLIN);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    long long abs_ms = (ns_of(now) + ns_of(a.it_value)) / 1000000;
    if (fail[0]) printf("FAIL %s\n", fail);
    else printf("PASS ticks=%llu long_ms=%lld abs_ms=%lld oneshot=%d\n", ticks, ns_of(l.it_value) / 1000000, abs_ms,
                oneshot);
    fflush(stdout);
}

static void read_inotify(int fd, int print) {
    char buf[4096] __attribute__((aligned(8)));
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if (print) printf("INOTIFY wd=%d mask=%x name=%s\n", ev->wd, ev->mask, ev->len ? ev->name : "");
            p += sizeof *ev + ev->len;
        }
    }
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) return 2;
    const char *dir = argv[1];
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr2, NULL);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);

    struct itimerspec its = {{0, 100000000}, {0, 100000000}};
    if (timerfd_settime(at(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC), 3), 0, &its, NULL)) die("settime 3");
    struct itimerspec longer = {{0, 0}, {30, 0}};
    if (timerfd_settime(at(timerfd_create(CLOCK_MONOTONIC, 0), 4), 0, &longer, NULL)) die("settime 4");
    struct itimerspec shot = {{0, 0}, {0, 50000000}};
    if (timerfd_settime(at(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 5), 0, &shot, NULL)) die("settime 5");
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct itimerspec abs = {{0, 0}, {now.tv_sec + 60, now.tv_nsec}};
    if (timerfd_settime(at(timerfd_create(CLOCK_REALTIME, 0), 6), TFD_TIMER_ABSTIME, &abs, NULL)) die("settime 6");
    at(signalfd(-1, &usr2, SFD_NONBLOCK | SFD_CLOEXEC), 7);

    char path[4096];
    int in = at(inotify_init1(IN_NONBLOCK), 8);
    int dirwd = inotify_add_watch(in, dir, IN_CREATE | IN_DELETE | IN_ONLYDIR);
    snprintf(path, sizeof path, "%s/watched", dir);
    int f = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (f < 0) die("open watched");
    close(f);
    int gap = inotify_add_watch(in, path, IN_ATTRIB);
    if (gap < 0 || inotify_rm_watch(in, gap)) die("gap watch");
    int filewd = inotify_add_watch(in, path, IN_MODIFY | IN_CLOSE_WRITE | IN_EXCL_UNLINK);
    if (dirwd != 1 || gap != 2 || filewd != 3) die("watch descriptors");
    usleep(1000);
    read_inotify(in, 0);  /* our own IN_CREATE and the gap's IN_IGNORED */
    int quiet = at(inotify_init1(0), 9);
    if (inotify_add_watch(quiet, dir, IN_CREATE) != 1) die("quiet watch");
    if (argc == 3 && !strcmp(argv[2], "proc") && inotify_add_watch(quiet, "/proc", IN_CREATE) != 2) die("proc watch");

    int ep = at(epoll_create1(0), 10);
    struct epoll_event ev = {EPOLLIN, {.u64 = 3}};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, 3, &ev)) die("epoll_ctl 3");
    ev.data.u64 = 7;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, 7, &ev)) die("epoll_ctl 7");

    printf("READY pid=%d dirwd=%d filewd=%d\n", getpid(), dirwd, filewd);
    fflush(stdout);
    for (;;) {
        struct epoll_event evs[4];
        int n = epoll_wait(ep, evs, 4, 20);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == 3) {
                uint64_t t;
                if (read(3, &t, sizeof t) == sizeof t) ticks += t;
            } else if (evs[i].data.u64 == 7) {
                struct signalfd_siginfo si;
                while (read(7, &si, sizeof si) == sizeof si) printf("SIGFD sig=%u pid=%u\n", si.ssi_signo, si.ssi_pid);
                fflush(stdout);
            } else {
                printf("FAIL epoll data %llu\n", (unsigned long long)evs[i].data.u64);
                fflush(stdout);
            }
        }
        read_inotify(in, 1);
        if (got_usr1) { got_usr1 = 0; verify(); }
    }
}
