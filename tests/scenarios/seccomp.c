/* seccomp: a process whose threads and child run under seccomp filters, checked by each of them on SIGUSR1.
 *
 * The main thread sets no_new_privs and installs filter A: getppid and uname fail with EPERM,
 * rt_sigaction with EACCES, prctl, umask and memfd_create kill the process (ckpt injects all of these into
 * a target, memfd_create first, for its injection area: a dump must pass by them), every other call is
 * allowed.  Then:
 *   thread 1 is made (it shares A);
 *   thread 2 is made and installs its own filter B on top (getpgrp fails with EPERM, in it only), with
 *     SECCOMP_FILTER_FLAG_LOG;
 *   a child is forked (it inherits A; it checks when the parent asks through a pipe, and ends when the
 *     parent does).
 * usage: seccomp
 * Prints "READY pid=P child=C", then on each SIGUSR1 (to the process) every thread and the child check
 * that each forbidden call is refused as it was, that getpid, getpgrp (but in thread 2) and write work,
 * and their status lines Seccomp: 2 and Seccomp_filters (1, thread 2: 2); then "PASS threads=3 child=1"
 * or "FAIL why".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#define DENY(nr, action) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), BPF_STMT(BPF_RET | BPF_K, (action))

static struct sock_filter filter_a[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    DENY(__NR_getppid, SECCOMP_RET_ERRNO | EPERM),
    DENY(__NR_uname, SECCOMP_RET_ERRNO | EPERM),
    DENY(__NR_rt_sigaction, SECCOMP_RET_ERRNO | EACCES),
    DENY(__NR_prctl, SECCOMP_RET_KILL_PROCESS),
    DENY(__NR_umask, SECCOMP_RET_KILL_PROCESS),
    DENY(__NR_memfd_create, SECCOMP_RET_KILL_PROCESS),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
};

static struct sock_filter filter_b[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    DENY(__NR_getpgrp, SECCOMP_RET_ERRNO | EPERM),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
};

static int install(struct sock_filter *f, unsigned short n, unsigned flags) {
    struct sock_fprog prog = {n, f};
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

/* The value of a status line of this thread, or -1. */
static int status_value(const char *key) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/task/%ld/status", (long)syscall(SYS_gettid));
    FILE *f = fopen(path, "r");
    int v = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') v = atoi(line + n + 1);
    if (f) fclose(f);
    return v;
}

/* Every check of one thread; "" when all pass. */
static void check(const char *who, int filters, int pgrp_denied, char *why, size_t len) {
    struct utsname u;
    why[0] = 0;
    errno = 0;
    long r = syscall(SYS_getppid);
    if (r != -1 || errno != EPERM) { snprintf(why, len, "%s: getppid gave %ld (%s)", who, r, strerror(errno)); return; }
    errno = 0;
    if (uname(&u) != -1 || errno != EPERM) { snprintf(why, len, "%s: uname was not refused (%s)", who, strerror(errno)); return; }
    errno = 0;
    r = syscall(SYS_rt_sigaction, SIGUSR2, NULL, NULL, 8);
    if (r != -1 || errno != EACCES) { snprintf(why, len, "%s: rt_sigaction gave %ld (%s)", who, r, strerror(errno)); return; }
    if (syscall(SYS_getpid) != getpid()) { snprintf(why, len, "%s: getpid failed", who); return; }
    errno = 0;
    r = syscall(SYS_getpgrp);
    if (pgrp_denied ? (r != -1 || errno != EPERM) : r <= 0) {
        snprintf(why, len, "%s: getpgrp gave %ld (%s)", who, r, strerror(errno));
        return;
    }
    int mode = status_value("Seccomp"), n = status_value("Seccomp_filters");
    if (mode != 2 || n != filters) snprintf(why, len, "%s: Seccomp %d, Seccomp_filters %d", who, mode, n);
}

struct worker {
    int go[2], done[2];
    const char *name;
    int own_filter;
    char why[256];
};

static void *work(void *arg) {
    struct worker *w = arg;
    char c = 0;
    if (w->own_filter && install(filter_b, sizeof filter_b / sizeof filter_b[0], SECCOMP_FILTER_FLAG_LOG)) {
        snprintf(w->why, sizeof w->why, "install filter B: %s", strerror(errno));
        c = 1;
    }
    if (write(w->done[1], &c, 1) != 1) abort();
    while (read(w->go[0], &c, 1) == 1) {
        check(w->name, w->own_filter ? 2 : 1, w->own_filter, w->why, sizeof w->why);
        if (write(w->done[1], &c, 1) != 1) abort();
    }
    return NULL;
}

static void start(struct worker *w, const char *name, int own_filter) {
    pthread_t t;
    char c;
    w->name = name;
    w->own_filter = own_filter;
    if (pipe(w->go) || pipe(w->done) || pthread_create(&t, NULL, work, w) || read(w->done[0], &c, 1) != 1 || c) {
        printf("FAIL start %s: %s\n", name, w->why[0] ? w->why : strerror(errno));
        exit(1);
    }
}

int main(void) {
    sigset_t usr1;
    siginfo_t si;
    char why[256];
    struct worker w1 = {0}, w2 = {0};
    int report[2], ask[2];

    setvbuf(stdout, NULL, _IOLBF, 0);
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);  /* before anything: every thread blocks it, the main one takes it */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || install(filter_a, sizeof filter_a / sizeof filter_a[0], 0)) {
        printf("FAIL install filter A: %s\n", strerror(errno));
        return 1;
    }
    start(&w1, "thread 1", 0);
    start(&w2, "thread 2", 1);
    if (pipe(report) || pipe(ask)) return 1;
    pid_t child = fork();
    if (child == 0) {  /* checks when asked; ends when the parent does (EOF) */
        char c;
        close(ask[1]);
        while (read(ask[0], &c, 1) == 1) {
            check("child", 1, 0, why, sizeof why);
            if (write(report[1], why, sizeof why) != sizeof why) abort();
        }
        _exit(0);
    }
    close(ask[0]);
    printf("READY pid=%d child=%d\n", getpid(), child);
    for (;;) {
        if (sigwaitinfo(&usr1, &si) < 0) continue;
        char c = 0, theirs[256];
        check("main", 1, 0, why, sizeof why);
        struct worker *ws[] = {&w1, &w2};
        for (int i = 0; i < 2; i++) {
            if (write(ws[i]->go[1], &c, 1) != 1 || read(ws[i]->done[0], &c, 1) != 1) abort();
            if (!why[0] && ws[i]->why[0]) snprintf(why, sizeof why, "%s", ws[i]->why);
        }
        if (write(ask[1], &c, 1) != 1) abort();
        if (read(report[0], theirs, sizeof theirs) != sizeof theirs) snprintf(theirs, sizeof theirs, "child: no report");
        if (!why[0] && theirs[0]) snprintf(why, sizeof why, "%s", theirs);
        if (why[0]) printf("FAIL %s\n", why);
        else printf("PASS threads=3 child=1\n");
    }
}
