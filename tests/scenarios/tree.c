/* tree: a process tree, dumped and restored as a whole, that checks itself.
 *
 * usage: tree [DIR]      (the shared file is created in DIR, default /tmp)
 *
 * The root R forks
 *   C1  same session and process group as R; runs one extra thread; each of
 *       its two threads has a timer slack of its own
 *   C2  its own process group, same session
 *   C3  its own session; forks G, which stays in C3's session and group
 *   C4  joins C2's process group (another group of R's session)
 *   Z   exits at once with status 7; R leaves it a zombie until the first check
 *       (R blocks SIGCHLD, which has a handler, and takes Z's before READY:
 *       every round checks that none is pending — no child ends, so one would
 *       be a restore's doing)
 * Every process fills a private 2 MiB malloc'ed buffer with a pattern derived
 * from its pid and records its pid, ppid, sid and pgid.  All of them share one
 * open file description of DIR/ckpt-tree-XXXXXX (4096 bytes, left on disk),
 * at offset 100 at READY.  Each of C1, C2, C3, G, C4 keeps only fds 0, 1, 2,
 * the shared file, the write end of its report pipe (to R) and the read end of
 * its data pipe (from R), which holds 1000 known bytes nobody reads before the
 * check.  R keeps 0, 1, 2, the file, the report read ends, the data write ends.
 *
 * Once every process is set up, R prints "READY pids=R,C1,C2,C3,G,C4,Z".
 * Each SIGUSR1 to R runs a check round N = 1, 2, ...: R sends SIGUSR1 to C1-C4
 * and C3 forwards it to G.  Each child checks its ids and the shape of the tree,
 * its buffer, that exactly round N's 1000 bytes are buffered in its data pipe
 * (and reads them); C1 also checks that its thread still runs (a counter that
 * advances, its tid and a pattern on its own stack) and that the shared offset
 * is 100*N, then moves it to 100*(N+1).  Each child writes "OK NAME" or
 * "FAIL NAME why" to its report pipe.  R reads the five reports (3 s timeout),
 * checks Z (round 1: waitpid reaps it with exit status 7; later rounds: ECHILD),
 * its own ids (not its ppid: R's parent is outside the tree), buffer, the
 * file's contents and the offset 100*(N+1), puts round N+1's bytes in every
 * data pipe (so a dump after the line checks buffered bytes again), and prints
 *     "PASS tree 7 processes round=N"   or   "FAIL round=N why; why; ..."
 * A child exits when its data pipe hangs up (R is gone); tests kill every pid
 * of the READY line anyway.  C3 is a child subreaper and G has PR_SET_PDEATHSIG
 * (SIGTERM); both are checked after a restore.
 */
// cflags: -pthread
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "verdict.h"

#define HEAP_WORDS ((2u << 20) / 8)
#define FILE_SIZE 4096
#define MSG_LEN 1000
#define REPORT_MS 3000  /* how long R waits for the five reports of a round */
#define SETUP_MS 10000  /* ... and for the children to be set up */

enum { C1, C2, C3, G, C4, NKIDS };  /* the processes that report to R */
static const char *const names[NKIDS] = {"C1", "C2", "C3", "G", "C4"};

static int role = -1;                          /* index in names; -1 in R */
static int tmpfd;                              /* the shared open file description */
static int rep[NKIDS][2], dat[NKIDS][2];       /* report pipes kid -> R, data pipes R -> kid */
static pid_t pids[NKIDS], rpid, rsid, rpgid, zpid;
static struct { pid_t pid, ppid, sid, pgid; } me;  /* recorded at set-up */
static uint64_t *heap;
static unsigned round_no;





static void nap_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

/* ---- the known contents: heap buffer, shared file, data-pipe messages ---- */

static uint64_t heap_word(pid_t pid, size_t i) { return (uint64_t)pid * 0x9E3779B97F4A7C15ull ^ (i * 0x100000001b3ull); }
static unsigned char file_byte(size_t i) { return (unsigned char)(i * 7 + 1); }

static void fill_heap(pid_t pid) {
    for (size_t i = 0; i < HEAP_WORDS; i++) heap[i] = heap_word(pid, i);
}

static void check_heap(void) {
    for (size_t i = 0; i < HEAP_WORDS; i++)
        if (heap[i] != heap_word(me.pid, i)) { fail("heap word %zu changed", i); return; }
}

static void message(int kid, unsigned round, unsigned char *buf) {
    for (int i = 0; i < MSG_LEN; i++) buf[i] = (unsigned char)(kid * 37 + round * 101 + i * 13 + (i >> 7));
}

static void send_message(int kid, unsigned round) {
    unsigned char buf[MSG_LEN];
    message(kid, round, buf);
    ssize_t n = write(dat[kid][1], buf, MSG_LEN);
    if (n != MSG_LEN) fail("data pipe to %s: write returned %zd (%s)", names[kid], n, n < 0 ? strerror(errno) : "short");
}

/* ---- ids ---- */

static void record_ids(void) { me.pid = getpid(); me.ppid = getppid(); me.sid = getsid(0); me.pgid = getpgid(0); }

/* The ids must be the recorded ones, and a child's must also give the tree's shape. */
static void check_ids(void) {
    pid_t pid = getpid(), ppid = getppid(), sid = getsid(0), pgid = getpgid(0);
    if (pid != me.pid || (role >= 0 && ppid != me.ppid) || sid != me.sid || pgid != me.pgid)
        fail("pid/ppid/sid/pgid %d/%d/%d/%d, recorded %d/%d/%d/%d", pid, ppid, sid, pgid, me.pid, me.ppid, me.sid, me.pgid);
    if (role < 0) return;
    pid_t want_ppid = role == G ? pids[C3] : rpid, want_sid = rsid, want_pgid = rpgid;
    if (role == C2) want_pgid = pid;
    if (role == C3) want_sid = want_pgid = pid;
    if (role == G) want_sid = want_pgid = pids[C3];
    if (role == C4) want_pgid = pids[C2];
    if (ppid != want_ppid || sid != want_sid || pgid != want_pgid)
        fail("ppid/sid/pgid %d/%d/%d, want %d/%d/%d", ppid, sid, pgid, want_ppid, want_sid, want_pgid);
    /* C3 is a child subreaper; G has a parent-death signal (SIGTERM). */
    int subreaper = -1, pdeath = -1;
    prctl(PR_GET_CHILD_SUBREAPER, &subreaper);
    prctl(PR_GET_PDEATHSIG, &pdeath);
    if (subreaper != (role == C3) || pdeath != (role == G ? SIGTERM : 0))
        fail("subreaper %d, pdeath signal %d, want %d, %d", subreaper, pdeath, role == C3, role == G ? SIGTERM : 0);
}

/* ---- C1's extra thread ---- */

/* Timer slacks set by C1's two threads: the leader's and another thread's are dumped two ways. */
#define C1_SLACK_NS 70000
#define WORKER_SLACK_NS 90000

static volatile uint64_t worker_count;
static volatile pid_t worker_tid;
static volatile int worker_bad;
static char worker_why[128];

static void *worker(void *arg) {
    (void)arg;
    volatile unsigned char local[4096];  /* on this thread's own stack */
    pid_t tid = (pid_t)syscall(SYS_gettid);
    for (size_t i = 0; i < sizeof local; i++) local[i] = (unsigned char)(tid * 13 + i * 7);
    if (prctl(PR_SET_TIMERSLACK, WORKER_SLACK_NS)) snprintf(worker_why, sizeof worker_why, "PR_SET_TIMERSLACK failed");
    worker_tid = tid;
    for (;;) {
        if (!worker_bad) {
            pid_t now = (pid_t)syscall(SYS_gettid);
            int slack = prctl(PR_GET_TIMERSLACK);
            if (now != tid) snprintf(worker_why, sizeof worker_why, "thread tid %d, was %d", now, tid);
            if (slack != WORKER_SLACK_NS)
                snprintf(worker_why, sizeof worker_why, "thread timer slack %d, want %d", slack, WORKER_SLACK_NS);
            for (size_t i = 0; i < sizeof local && !worker_why[0]; i++)
                if (local[i] != (unsigned char)(tid * 13 + i * 7))
                    snprintf(worker_why, sizeof worker_why, "thread stack byte %zu changed", i);
            worker_bad = worker_why[0] != 0;
        }
        worker_count++;
        nap_ms(2);
    }
    return NULL;
}

static void check_worker(void) {
    uint64_t before = worker_count;
    for (int i = 0; i < 1000 && worker_count == before; i++) nap_ms(1);
    if (worker_count == before) fail("thread counter stuck at %llu", (unsigned long long)before);
    if (worker_bad) fail("%s", worker_why);
    int slack = prctl(PR_GET_TIMERSLACK);
    if (slack != C1_SLACK_NS) fail("C1: timer slack %d, want %d", slack, C1_SLACK_NS);
    if (syscall(SYS_tgkill, me.pid, worker_tid, 0)) fail("thread %d: %s", (int)worker_tid, strerror(errno));
}

/* ---- children ---- */

/* Close every fd >= 3 but the ones in keep[] (a few, any order). */
static void close_except(int *keep, int n) {
    for (int i = 1; i < n; i++)  /* insertion sort */
        for (int j = i; j > 0 && keep[j - 1] > keep[j]; j--) { int t = keep[j]; keep[j] = keep[j - 1]; keep[j - 1] = t; }
    unsigned lo = 3;
    for (int i = 0; i < n; i++) {
        if ((unsigned)keep[i] < lo) continue;
        if ((unsigned)keep[i] > lo) syscall(SYS_close_range, lo, keep[i] - 1, 0);
        lo = keep[i] + 1;
    }
    syscall(SYS_close_range, lo, ~0U, 0);
}

static void report(const char *line) {
    if (write(rep[role][1], line, strlen(line)) < 0) _exit(1);  /* R is gone */
}

static void child_check(void) {
    why[0] = 0;
    round_no++;
    if (role == C3 && kill(pids[G], SIGUSR1)) fail("kill G: %s", strerror(errno));
    check_ids();
    check_heap();
    int queued = -1;
    if (ioctl(dat[role][0], FIONREAD, &queued)) fail("FIONREAD: %s", strerror(errno));
    else if (queued != MSG_LEN) fail("data pipe holds %d bytes, want %d", queued, MSG_LEN);
    else {
        unsigned char got[MSG_LEN], want[MSG_LEN];
        ssize_t n = read(dat[role][0], got, MSG_LEN);  /* all buffered: one read gets them */
        message(role, round_no, want);
        if (n != MSG_LEN) fail("data pipe read returned %zd", n);
        else if (memcmp(got, want, MSG_LEN)) fail("data pipe bytes are not round %u's", round_no);
    }
    if (role == C1) {
        check_worker();
        off_t off = lseek(tmpfd, 0, SEEK_CUR);
        if (off != 100L * round_no) fail("shared offset %ld, want %ld", (long)off, 100L * round_no);
        if (lseek(tmpfd, 100L * (round_no + 1), SEEK_SET) < 0) fail("lseek: %s", strerror(errno));
    }
    char line[sizeof why + 16];
    if (why[0]) snprintf(line, sizeof line, "FAIL %s %s\n", names[role], why);
    else snprintf(line, sizeof line, "OK %s\n", names[role]);
    report(line);
}

static pid_t start_child(int r);

static void child_main(int r) {
    role = r;
    pids[role] = getpid();
    int keep[] = {tmpfd, rep[role][1], dat[role][0], rep[G][1], dat[G][0]};
    /* C3 keeps G's pipe ends until it has forked G */
    close_except(keep, role == C3 ? 5 : 3);
    why[0] = 0;
    if (role == C2 && setpgid(0, 0)) fail("setpgid: %s", strerror(errno));
    if (role == C4 && setpgid(0, pids[C2])) fail("setpgid: %s", strerror(errno));
    if (role == G && prctl(PR_SET_PDEATHSIG, SIGTERM)) fail("PR_SET_PDEATHSIG: %s", strerror(errno));
    if (role == C3) {
        if (setsid() < 0) fail("setsid: %s", strerror(errno));
        if (prctl(PR_SET_CHILD_SUBREAPER, 1)) fail("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
        pids[G] = start_child(G);
        close(rep[G][1]);
        close(dat[G][0]);
    }
    fill_heap(getpid());
    record_ids();
    if (role == C1) {
        pthread_t t;
        if (prctl(PR_SET_TIMERSLACK, C1_SLACK_NS)) fail("PR_SET_TIMERSLACK: %s", strerror(errno));
        if (pthread_create(&t, NULL, worker, NULL)) fail("pthread_create failed");
        else while (worker_count == 0) nap_ms(1);  /* running, tid recorded */
    }
    check_ids();
    check_heap();
    char line[sizeof why + 32];
    if (why[0]) snprintf(line, sizeof line, "FAIL %s setup: %s\n", names[role], why);
    else snprintf(line, sizeof line, "up %d\n", (int)getpid());
    report(line);
    if (why[0]) _exit(1);

    for (;;) {
        await_usr1_or_hangup(dat[role][0]);  /* the data pipe hangs up: no writer left, R is gone */
        child_check();
    }
}

static pid_t start_child(int r) {
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) child_main(r);
    return pid;
}

/* ---- R ---- */

/* One '\n'-terminated line from fd (the newline dropped) by deadline; NULL and
 * *err set on timeout, EOF or error. */
static char *read_line(int fd, char *buf, size_t size, long deadline, const char **err) {
    size_t n = 0;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        long left = deadline - now_ms();
        if (left < 0) left = 0;
        int r = poll(&pfd, 1, (int)left);
        if (r == 0) { *err = "no report in time"; return NULL; }
        if (r < 0) { *err = strerror(errno); return NULL; }
        char c;
        ssize_t got = read(fd, &c, 1);
        if (got <= 0) { *err = got ? strerror(errno) : "report pipe EOF"; return NULL; }
        if (c == '\n') { buf[n] = 0; return buf; }
        if (n + 1 < size) buf[n++] = c;
    }
}

static void on_chld(int sig) { (void)sig; }

static void root_round(void) {
    why[0] = 0;
    round_no++;
    for (int k = 0; k < NKIDS; k++) {  /* drop late reports of an earlier, failed round */
        struct pollfd pfd = {.fd = rep[k][0], .events = POLLIN};
        char junk[512];
        while (poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN) && read(rep[k][0], junk, sizeof junk) > 0) {}
    }
    for (int k = 0; k < NKIDS; k++)
        if (k != G && kill(pids[k], SIGUSR1)) fail("kill %s: %s", names[k], strerror(errno));
    long deadline = now_ms() + REPORT_MS;
    for (int k = 0; k < NKIDS; k++) {
        char line[1200];
        const char *err;
        if (!read_line(rep[k][0], line, sizeof line, deadline, &err)) fail("%s: %s", names[k], err);
        else if (strncmp(line, "OK ", 3)) fail("%s", strncmp(line, "FAIL ", 5) ? line : line + 5);
    }

    static int z_reaped;
    int st = 0;
    pid_t w = waitpid(zpid, &st, WNOHANG);
    if (z_reaped) {
        if (w != -1 || errno != ECHILD) fail("Z: waitpid after reaping returned %d", (int)w);
    } else if (w != zpid) {
        fail("Z: waitpid returned %d (%s)", (int)w, w < 0 ? strerror(errno) : "not a zombie");
    } else {
        z_reaped = 1;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 7) fail("Z: wait status 0x%x, want exit 7", st);
    }

    sigset_t pending;
    if (sigpending(&pending) || sigismember(&pending, SIGCHLD)) fail("R: a SIGCHLD is pending, no child ended");

    check_ids();
    check_heap();
    off_t off = lseek(tmpfd, 0, SEEK_CUR);
    if (off != 100L * (round_no + 1)) fail("R: shared offset %ld, want %ld", (long)off, 100L * (round_no + 1));
    unsigned char buf[FILE_SIZE];
    if (pread(tmpfd, buf, FILE_SIZE, 0) != FILE_SIZE) fail("R: pread: %s", strerror(errno));
    else for (size_t i = 0; i < FILE_SIZE; i++)
        if (buf[i] != file_byte(i)) { fail("R: file byte %zu changed", i); break; }

    for (int k = 0; k < NKIDS; k++) send_message(k, round_no + 1);
    if (why[0]) printf("FAIL round=%u %s\n", round_no, why);
    else printf("PASS tree 7 processes round=%u\n", round_no);
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    rpid = getpid();
    rsid = getsid(0);
    rpgid = getpgid(0);

    /* SIGUSR1 is blocked everywhere (C1's thread included) but inside the wait. */
    catch_usr1();
    signal(SIGPIPE, SIG_IGN);  /* a dead reader shows as EPIPE in a FAIL line */

    heap = malloc(HEAP_WORDS * sizeof *heap);
    if (!heap) die("malloc");
    fill_heap(rpid);

    char path[4096];
    snprintf(path, sizeof path, "%s/ckpt-tree-XXXXXX", dir);
    if ((tmpfd = mkstemp(path)) < 0) die("mkstemp");
    unsigned char buf[FILE_SIZE];
    for (size_t i = 0; i < FILE_SIZE; i++) buf[i] = file_byte(i);
    if (write(tmpfd, buf, FILE_SIZE) != FILE_SIZE || lseek(tmpfd, 100, SEEK_SET) != 100) die("temp file");

    for (int k = 0; k < NKIDS; k++) {
        if (pipe(rep[k]) || pipe(dat[k])) die("pipe");
        send_message(k, 1);  /* round 1's bytes, read only at the first check */
    }
    if (why[0]) { printf("FAIL setup: %s\n", why); fflush(stdout); return 1; }

    pids[C1] = start_child(C1);
    pids[C2] = start_child(C2);
    if (setpgid(pids[C2], pids[C2])) die("setpgid C2");  /* done from both sides: no race with C4 */
    pids[C3] = start_child(C3);                           /* forks G */
    pids[C4] = start_child(C4);
    if (setpgid(pids[C4], pids[C2])) die("setpgid C4");
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    zpid = fork();
    if (zpid < 0) die("fork");
    if (zpid == 0) _exit(7);
    if (sigprocmask(SIG_BLOCK, &chld, NULL)) die("sigprocmask");
    struct sigaction on = {.sa_handler = on_chld};  /* not SIG_DFL: setting SIG_DFL would drop a pending one */
    if (sigaction(SIGCHLD, &on, NULL)) die("sigaction SIGCHLD");

    for (int k = 0; k < NKIDS; k++) { close(rep[k][1]); close(dat[k][0]); }
    long deadline = now_ms() + SETUP_MS;
    for (int k = 0; k < NKIDS; k++) {  /* "up PID" from every child and G: set up, waiting */
        char line[1200];
        const char *err;
        int pid;
        if (!read_line(rep[k][0], line, sizeof line, deadline, &err)) {
            printf("FAIL setup: %s: %s\n", names[k], err);
            fflush(stdout);
            return 1;
        }
        if (sscanf(line, "up %d", &pid) != 1 || (k != G && pid != pids[k])) {
            printf("FAIL setup: %s said: %s\n", names[k], line);
            fflush(stdout);
            return 1;
        }
        pids[k] = pid;  /* G's pid is known only this way */
    }
    siginfo_t si;  /* Z is a zombie before READY; WNOWAIT leaves it one */
    if (waitid(P_PID, zpid, &si, WEXITED | WNOWAIT)) die("waitid Z");
    struct timespec no_wait = {0, 0};
    sigtimedwait(&chld, NULL, &no_wait);  /* Z's, if it came after the block (before, SIG_DFL dropped it) */
    record_ids();

    printf("READY pids=%d,%d,%d,%d,%d,%d,%d\n", rpid, pids[C1], pids[C2], pids[C3], pids[G], pids[C4], zpid);
    fflush(stdout);
    for (;;) {
        await_usr1();
        root_round();
    }
}
