/* timers: interval timers and POSIX timers that must survive a checkpoint; the process checks them itself.
 *
 * usage: timers
 *
 * Set-up (raw syscalls throughout: the kernel's timer ids, not glibc's timer_t):
 *   ITIMER_REAL     10 s, then every 5 s        (SIGALRM: must not fire during a test)
 *   ITIMER_VIRTUAL  100 s, then every 50 s      ITIMER_PROF  200 s, one-shot
 *   POSIX timers created in this order, so they get ids 0..5; the second is deleted (a gap):
 *     A 0  CLOCK_MONOTONIC  SIGEV_SIGNAL SIGRTMIN+2  value 0xa0a0  30 s, then every 7 s
 *       1  deleted
 *     B 2  CLOCK_REALTIME   SIGEV_SIGNAL SIGRTMIN+2  value 0xb0b0  disarmed
 *     C 3  CLOCK_MONOTONIC  SIGEV_THREAD_ID to the worker thread, SIGRTMIN+3, value 0xc0c0, 250 ms then every 300 ms
 *     T 4  CLOCK_MONOTONIC  SIGEV_SIGNAL SIGRTMIN+1  value 0x7474  every 200 ms: the tick counter
 *     O 5  CLOCK_BOOTTIME   SIGEV_SIGNAL SIGRTMIN+4  value 0x0505  one-shot 20 ms; SIGRTMIN+4 is blocked in
 *          every thread, so its signal stays queued until a check round takes it
 * then prints "READY ids=0,2,3,4,5 worker=TID".
 *
 * Each SIGUSR1 runs check round N (1, 2, ...):
 *   - timer_gettime works on every id, and fails (EINVAL) on 1 and on 6;
 *   - /proc/self/timers shows each timer with its signal, sigev_value, notify (C: the worker's tid) and clock;
 *   - intervals as set; B and O disarmed; A, C, T, REAL, VIRTUAL, PROF armed;
 *   - A and REAL: no more time left than the previous round (or the set-up) saw, and no less than that
 *     minus the CLOCK_MONOTONIC time since (20 ms of slack for a preempted reader); the surplus
 *     ("lag", ms) is reported: 0 for timers that kept running, the time the process was away for
 *     timers restored from an image; C and T within a period;
 *     VIRTUAL and PROF: CPU time, at most one tick (setitimer rounds up) + 20 ms more than before;
 *   - O's signal is taken (sigtimedwait: SI_TIMER, id 5, value 0x0505) exactly once over all rounds;
 *   - T and C keep firing: the round waits (1.5 s at most) until T ticked twice more and C once more;
 *     C's handler ran only in the worker, every tick had SI_TIMER with its id and value, and no
 *     other timer signal arrived (SIGALRM, SIGVTALRM, SIGPROF, SIGRTMIN+2);
 * and prints "PASS round=N ticks=T cticks=C lag_real=MS lag_a=MS" or "FAIL round=N why; why; ...".
 */
// cflags: -pthread
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "verdict.h"

#define NS 1000000000LL
#define MS 1000000LL

enum { A, B, C, T, O, NT };
static const char *const names[NT] = {"A", "B", "C", "T", "O"};
static int ids[NT];
static const int clocks[NT] = {CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_MONOTONIC, CLOCK_BOOTTIME};
static const uint64_t values[NT] = {0xa0a0, 0xb0b0, 0xc0c0, 0x7474, 0x0505};
static int signos[NT];
static const long long intervals[NT] = {7 * NS, 0, 300 * MS, 200 * MS, 0};

static pid_t worker_tid;
static volatile sig_atomic_t ticks, bad_ticks, cticks, c_wrong_thread, unexpected;
static unsigned round_no;
static int o_total;
static long long prev_real_ns, prev_a_ns, prev_virt_ns, prev_prof_ns, prev_at_ns;


static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * NS + ts.tv_nsec;
}

static long long ts_ns(struct timespec ts) { return ts.tv_sec * NS + ts.tv_nsec; }
static long long tv_ns(struct timeval tv) { return tv.tv_sec * NS + tv.tv_usec * 1000LL; }


static void on_tick(int sig, siginfo_t *si, void *uc) {
    (void)sig; (void)uc;
    if (si->si_code == SI_TIMER && si->si_timerid == ids[T] && (uint64_t)si->si_value.sival_ptr == values[T])
        ticks++;
    else
        bad_ticks++;
}

static void on_c(int sig, siginfo_t *si, void *uc) {
    (void)sig; (void)uc;
    if (syscall(SYS_gettid) != worker_tid) c_wrong_thread++;
    else if (si->si_code == SI_TIMER && si->si_timerid == ids[C] && (uint64_t)si->si_value.sival_ptr == values[C])
        cticks++;
    else
        bad_ticks++;
}

static void on_unexpected(int sig) { (void)sig; unexpected++; }

static void handle(int sig, void (*fn)(int), void (*act)(int, siginfo_t *, void *)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    if (act) { sa.sa_sigaction = act; sa.sa_flags = SA_SIGINFO | SA_RESTART; }
    else { sa.sa_handler = fn; sa.sa_flags = SA_RESTART; }
    sigaction(sig, &sa, NULL);
}

static void *worker(void *arg) {
    (void)arg;
    worker_tid = syscall(SYS_gettid);
    sigset_t only;
    sigfillset(&only);
    sigdelset(&only, signos[C]);
    pthread_sigmask(SIG_SETMASK, &only, NULL);
    for (;;) pause();
    return NULL;
}

static int create(int clock, int notify, int signo, uint64_t value, pid_t tid) {
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = notify;
    ev.sigev_signo = signo;
    ev.sigev_value.sival_ptr = (void *)value;
    ev._sigev_un._tid = tid;
    int id = -1;
    if (syscall(SYS_timer_create, clock, &ev, &id)) { perror("timer_create"); exit(1); }
    return id;
}

static void arm(int id, long long value, long long interval) {
    struct itimerspec its = {{interval / NS, interval % NS}, {value / NS, value % NS}};
    if (syscall(SYS_timer_settime, id, 0, &its, NULL)) { perror("timer_settime"); exit(1); }
}

static int gettime(int id, struct itimerspec *its) { return syscall(SYS_timer_gettime, id, its); }

/* The /proc/self/timers block of timer ``id``: its signal, value, notify and clock as expected? */
static void check_proc(int i) {
    FILE *f = fopen("/proc/self/timers", "r");
    if (!f) { fail("/proc/self/timers: %s", strerror(errno)); return; }
    char line[256];
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        int id;
        if (sscanf(line, "ID: %d", &id) != 1 || id != ids[i]) continue;
        found = 1;
        char how[32], who[8];
        int signo, npid, clock;
        unsigned long long value;
        if (!fgets(line, sizeof line, f) || sscanf(line, "signal: %d/%llx", &signo, &value) != 2 ||
            !fgets(line, sizeof line, f) || sscanf(line, "notify: %31[a-z]/%7[a-z].%d", how, who, &npid) != 3 ||
            !fgets(line, sizeof line, f) || sscanf(line, "ClockID: %d", &clock) != 1) {
            fail("timer %s: bad /proc/self/timers block", names[i]);
            break;
        }
        int thread = i == C;
        if (signo != signos[i] || value != values[i] || clock != clocks[i] || strcmp(how, "signal") ||
            strcmp(who, thread ? "tid" : "pid") || npid != (thread ? worker_tid : getpid()))
            fail("timer %s: /proc says signal %d/%llx notify %s/%s.%d clock %d", names[i], signo, value, how, who,
                 npid, clock);
    }
    fclose(f);
    if (!found) fail("timer %s (id %d) not in /proc/self/timers", names[i], ids[i]);
}

static long long lag_ms(const char *what, long long now, long long prev, long long elapsed) {
    if (now <= 0) { fail("%s disarmed", what); return 0; }
    if (now > prev) fail("%s: %lld ms left, more than the %lld ms of the previous round", what, now / MS, prev / MS);
    long long lag = now - (prev - elapsed);
    if (lag < -20 * MS) fail("%s: ran %lld ms ahead of CLOCK_MONOTONIC", what, -lag / MS);
    return lag / MS;
}

static void check(void) {
    why[0] = 0;
    round_no++;
    int t0 = ticks, c0 = cticks;
    /* The clock and the times left, read back to back: the "lag" is their difference. */
    struct itimerspec its[NT];
    struct itimerval real, virt, prof;
    memset(its, 0, sizeof its);
    long long at = now_ns(), elapsed = at - prev_at_ns;
    getitimer(ITIMER_REAL, &real);
    int err[NT];
    for (int i = 0; i < NT; i++) err[i] = gettime(ids[i], &its[i]) ? errno : 0;
    getitimer(ITIMER_VIRTUAL, &virt);
    getitimer(ITIMER_PROF, &prof);

    for (int i = 0; i < NT; i++) {
        if (err[i]) { fail("timer_gettime(%s = %d): %s", names[i], ids[i], strerror(err[i])); continue; }
        if (ts_ns(its[i].it_interval) != intervals[i])
            fail("timer %s: interval %lld ns, not %lld", names[i], ts_ns(its[i].it_interval), intervals[i]);
        check_proc(i);
    }
    struct itimerspec none;
    if (gettime(1, &none) == 0 || errno != EINVAL) fail("timer 1 exists (it was deleted)");
    if (gettime(6, &none) == 0 || errno != EINVAL) fail("timer 6 exists (never created)");
    if (ts_ns(its[B].it_value)) fail("timer B armed: %lld ns", ts_ns(its[B].it_value));
    if (ts_ns(its[O].it_value)) fail("timer O armed: %lld ns", ts_ns(its[O].it_value));
    for (int i = C; i <= T; i++) {
        long long v = ts_ns(its[i].it_value);
        if (v <= 0 || v > intervals[i]) fail("timer %s: %lld ns left, not within its period", names[i], v);
    }
    long long lag_a = lag_ms("timer A", ts_ns(its[A].it_value), prev_a_ns, elapsed);
    prev_a_ns = ts_ns(its[A].it_value);

    long long lag_real = lag_ms("ITIMER_REAL", tv_ns(real.it_value), prev_real_ns, elapsed);
    prev_real_ns = tv_ns(real.it_value);
    if (tv_ns(real.it_interval) != 5 * NS) fail("ITIMER_REAL interval %lld ns", tv_ns(real.it_interval));
    if (tv_ns(virt.it_interval) != 50 * NS) fail("ITIMER_VIRTUAL interval %lld ns", tv_ns(virt.it_interval));
    if (tv_ns(prof.it_interval) != 0) fail("ITIMER_PROF interval %lld ns", tv_ns(prof.it_interval));
    long long v = tv_ns(virt.it_value), p = tv_ns(prof.it_value);
    if (v <= 0 || v > prev_virt_ns + 20 * MS || v < prev_virt_ns - NS)
        fail("ITIMER_VIRTUAL: %lld ms left, %lld before", v / MS, prev_virt_ns / MS);
    if (p <= 0 || p > prev_prof_ns + 20 * MS || p < prev_prof_ns - NS)
        fail("ITIMER_PROF: %lld ms left, %lld before", p / MS, prev_prof_ns / MS);
    prev_virt_ns = v;
    prev_prof_ns = p;

    sigset_t oset;
    sigemptyset(&oset);
    sigaddset(&oset, signos[O]);
    struct timespec zero = {0, 0};
    siginfo_t si;
    while (sigtimedwait(&oset, &si, &zero) > 0) {
        o_total++;
        if (si.si_code != SI_TIMER || si.si_timerid != ids[O] || (uint64_t)si.si_value.sival_ptr != values[O])
            fail("signal of O: code %d id %d value %p", si.si_code, si.si_timerid, si.si_value.sival_ptr);
    }
    if (o_total != 1) fail("timer O's signal taken %d times", o_total);

    long long deadline = now_ns() + 1500 * MS;
    while ((ticks < t0 + 2 || cticks < c0 + 1) && now_ns() < deadline) {
        struct timespec ten = {0, 10 * MS};
        nanosleep(&ten, NULL);
    }
    if (ticks < t0 + 2) fail("timer T ticked %d times in 1.5 s", ticks - t0);
    if (cticks < c0 + 1) fail("timer C fired %d times in 1.5 s", cticks - c0);
    if (bad_ticks) fail("%d timer signals with a wrong siginfo", bad_ticks);
    if (c_wrong_thread) fail("timer C's signal ran in another thread %d times", c_wrong_thread);
    if (unexpected) fail("%d unexpected timer signals", unexpected);
    prev_at_ns = at;

    if (why[0]) printf("FAIL round=%u %s\n", round_no, why);
    else printf("PASS round=%u ticks=%d cticks=%d lag_real=%lld lag_a=%lld\n", round_no, ticks, cticks, lag_real, lag_a);
    fflush(stdout);
}

int main(void) {
    signos[A] = signos[B] = SIGRTMIN + 2;
    signos[C] = SIGRTMIN + 3;
    signos[T] = SIGRTMIN + 1;
    signos[O] = SIGRTMIN + 4;
    handle(SIGUSR1, on_usr1, NULL);
    handle(signos[T], NULL, on_tick);
    handle(signos[C], NULL, on_c);
    handle(SIGRTMIN + 2, on_unexpected, NULL);
    handle(SIGALRM, on_unexpected, NULL);
    handle(SIGVTALRM, on_unexpected, NULL);
    handle(SIGPROF, on_unexpected, NULL);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, signos[O]);
    sigprocmask(SIG_BLOCK, &block, NULL);  /* inherited by the worker */

    pthread_t w;
    pthread_create(&w, NULL, worker, NULL);
    while (!worker_tid) usleep(1000);

    struct itimerval real = {{5, 0}, {10, 0}}, virt = {{50, 0}, {100, 0}}, prof = {{0, 0}, {200, 0}};
    setitimer(ITIMER_REAL, &real, NULL);
    setitimer(ITIMER_VIRTUAL, &virt, NULL);
    setitimer(ITIMER_PROF, &prof, NULL);
    prev_at_ns = now_ns();
    prev_real_ns = 10 * NS;
    prev_virt_ns = 100 * NS + 20 * MS;  /* setitimer adds a tick */
    prev_prof_ns = 200 * NS + 20 * MS;

    ids[A] = create(clocks[A], SIGEV_SIGNAL, signos[A], values[A], 0);
    int gap = create(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0);
    ids[B] = create(clocks[B], SIGEV_SIGNAL, signos[B], values[B], 0);
    ids[C] = create(clocks[C], SIGEV_THREAD_ID, signos[C], values[C], worker_tid);
    ids[T] = create(clocks[T], SIGEV_SIGNAL, signos[T], values[T], 0);
    ids[O] = create(clocks[O], SIGEV_SIGNAL, signos[O], values[O], 0);
    syscall(SYS_timer_delete, gap);
    arm(ids[A], 30 * NS, intervals[A]);
    prev_a_ns = 30 * NS;
    arm(ids[C], 250 * MS, intervals[C]);
    arm(ids[T], intervals[T], intervals[T]);
    arm(ids[O], 20 * MS, 0);
    struct timespec wait_o = {0, 50 * MS};
    while (nanosleep(&wait_o, &wait_o)) {}  /* O has fired: its signal waits in the queue */

    printf("READY ids=%d,%d,%d,%d,%d worker=%d\n", ids[A], ids[B], ids[C], ids[T], ids[O], worker_tid);
    fflush(stdout);
    for (;;) {
        pause();
        if (got_usr1) {
            got_usr1 = 0;
            check();
        }
    }
}
