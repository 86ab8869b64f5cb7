/* sig_storm: a process with SA_SIGINFO handlers on many signals, run on an alternate
 * signal stack, that checks what it receives; and the sender of the storm.
 *
 * usage: sig_storm target
 *        sig_storm send PID N BASE
 *
 * target: handlers (SA_SIGINFO | SA_ONSTACK | SA_RESTART) on 8 real-time
 * signals and 7 standard ones; a worker thread blocks them all, so the main
 * thread (the one with the sigaltstack) takes every one.  Each handler checks
 * it runs on the alternate stack and that siginfo names its signal.  For a
 * real-time signal the sigqueue value must be exactly the last one + 1 (they
 * are queued and delivered in order: none may be lost or reordered), or
 * a multiple of 1e6 plus 1 where a new storm starts.  Standard signals may merge while
 * pending (POSIX), so they are only counted.  On SIGUSR1 it prints
 * "CHECK PASS rt=v1,..,v8 std=c1,..,c7 wrong=0" or "CHECK FAIL <why>".
 *
 * send: sigqueue(PID, RT i, BASE + k) for k = 1..N and every RT signal
 * (retrying on EAGAIN: the queue is bounded by RLIMIT_SIGPENDING), and every
 * 16th round one of each standard signal.  Exits 0 after "SENT N", 3 if PID
 * disappeared.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NRT 8
#define ALT_SIZE (256 * 1024)
static const int std_sigs[] = {SIGHUP, SIGUSR2, SIGPIPE, SIGALRM, SIGURG, SIGIO, SIGPWR};
#define NSTD (int)(sizeof std_sigs / sizeof std_sigs[0])

static char *alt;
static volatile long rt_last[NRT], std_count[NSTD], wrong;
static volatile sig_atomic_t report;
static char why[200];
static long base_new_storm = 1000000;

static void note(const char *what, long a, long b) {
    if (!wrong) snprintf(why, sizeof why, "%s (%ld, %ld)", what, a, b);
    wrong++;
}

static void on_signal(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    char here;
    if (&here < alt || &here >= alt + ALT_SIZE) note("handler not on the alternate stack", sig, 0);
    if (si->si_signo != sig) note("siginfo names another signal", sig, si->si_signo);
    if (sig >= SIGRTMIN && sig < SIGRTMIN + NRT) {
        int i = sig - SIGRTMIN;
        long v = si->si_value.sival_int;
        if (si->si_code != SI_QUEUE) note("rt signal without SI_QUEUE", sig, si->si_code);
        if (v == rt_last[i] + 1 || v % base_new_storm == 1) rt_last[i] = v;  /* next, or a new storm at k * 1e6 */
        else note("rt signal value out of sequence", rt_last[i], v);
        return;
    }
    for (int i = 0; i < NSTD; i++)
        if (std_sigs[i] == sig) std_count[i]++;
}

static void on_usr1(int sig) { (void)sig; report = 1; }

static void *worker(void *arg) {
    (void)arg;
    volatile unsigned long spin = 0;
    for (;;) { spin++; if ((spin & 0xfffff) == 0) usleep(100); }
    return NULL;
}

static int target(void) {
    sigset_t storm;
    sigemptyset(&storm);
    struct sigaction sa = {.sa_sigaction = on_signal, .sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART};
    sigfillset(&sa.sa_mask);
    for (int i = 0; i < NRT; i++) { sigaction(SIGRTMIN + i, &sa, NULL); sigaddset(&storm, SIGRTMIN + i); }
    for (int i = 0; i < NSTD; i++) { sigaction(std_sigs[i], &sa, NULL); sigaddset(&storm, std_sigs[i]); }
    alt = malloc(ALT_SIZE);
    stack_t ss = {.ss_sp = alt, .ss_size = ALT_SIZE};
    if (sigaltstack(&ss, NULL)) { perror("sigaltstack"); return 1; }
    pthread_sigmask(SIG_BLOCK, &storm, NULL);
    pthread_t th;
    pthread_create(&th, NULL, worker, NULL);  /* inherits the blocked storm signals */
    pthread_sigmask(SIG_UNBLOCK, &storm, NULL);
    signal(SIGUSR1, on_usr1);
    printf("READY\n");
    fflush(stdout);
    for (;;) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
        if (!report) continue;
        report = 0;
        stack_t cur;
        sigaltstack(NULL, &cur);
        if (cur.ss_sp != alt || cur.ss_size != ALT_SIZE) note("sigaltstack changed", (long)cur.ss_size, 0);
        char rt[200] = "", sd[200] = "";
        for (int i = 0; i < NRT; i++) snprintf(rt + strlen(rt), sizeof rt - strlen(rt), "%s%ld", i ? "," : "", rt_last[i]);
        for (int i = 0; i < NSTD; i++) snprintf(sd + strlen(sd), sizeof sd - strlen(sd), "%s%ld", i ? "," : "", std_count[i]);
        if (wrong) printf("CHECK FAIL %s wrong=%ld\n", why, wrong);
        else printf("CHECK PASS rt=%s std=%s wrong=0\n", rt, sd);
        fflush(stdout);
    }
}

static int sender(pid_t pid, long n, long base) {
    for (long k = 1; k <= n; k++) {
        for (int i = 0; i < NRT; i++) {
            union sigval v = {.sival_int = (int)(base + k)};
            while (sigqueue(pid, SIGRTMIN + i, v)) {
                if (errno == ESRCH) return 3;
                if (errno != EAGAIN) { perror("sigqueue"); return 1; }
                usleep(50);
            }
        }
        if (k % 16 == 0)
            for (int i = 0; i < NSTD; i++)
                if (kill(pid, std_sigs[i]) && errno == ESRCH) return 3;
    }
    printf("SENT %ld\n", n);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "target")) return target();
    if (argc >= 5 && !strcmp(argv[1], "send")) return sender(atoi(argv[2]), atol(argv[3]), atol(argv[4]));
    fprintf(stderr, "usage: sig_storm target | send PID N BASE\n");
    return 2;
}
