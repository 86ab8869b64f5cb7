/* thread_creds: threads of one process with credentials of their own, set with raw syscalls (glibc's
 * setuid() & co. would set every thread's).
 *
 * usage: thread_creds   (as root)
 * Thread "uid" sets its uids to 1000 (setresuid, keeping no capability); thread "gid" its gids to 2000
 * and its supplementary groups to {5, 6}; thread "caps" drops CAP_NET_RAW from its effective,
 * permitted and inheritable sets (capset); thread "nnp" sets no_new_privs.  The main thread keeps the
 * process's.  Each thread then waits in pause().  The main thread records the Uid, Gid, Groups, Cap* and
 * NoNewPrivs lines of every thread's /proc/self/task/TID/status, prints "READY", and on SIGUSR1 reads them
 * again and asks each thread's own view (getresuid, getresgid, getgroups, capget, PR_GET_NO_NEW_PRIVS,
 * from inside that thread) and prints "PASS" when all are as before, else "FAIL why".
 */
#define _GNU_SOURCE
#include <linux/capability.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include "verdict.h"

#define NT 5
static const char *names[NT] = {"main", "uid", "gid", "caps", "nnp"};
static int tids[NT];
static char before[NT][1024];
static char own[NT][256];       /* what each thread sees of itself, before */
static volatile int ask[NT];    /* the main thread asks thread i to describe itself again */
static char again[NT][256];
static pthread_barrier_t ready;

static void lines(int tid, char *out, size_t n) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/self/task/%d/status", tid);
    FILE *f = fopen(path, "r");
    if (!f) die("open task status");
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = 0;
    out[0] = 0;
    for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n"))
        if (!strncmp(l, "Uid:", 4) || !strncmp(l, "Gid:", 4) || !strncmp(l, "Groups:", 7) || !strncmp(l, "Cap", 3) ||
            !strncmp(l, "NoNewPrivs:", 11))
            snprintf(out + strlen(out), n - strlen(out), "%s|", l);
}

static void describe(char *out, size_t n) {
    unsigned r, e, s, g[3];
    gid_t groups[16];
    syscall(SYS_getresuid, &r, &e, &s);
    syscall(SYS_getresgid, &g[0], &g[1], &g[2]);
    int ng = (int)syscall(SYS_getgroups, 16, groups);
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    syscall(SYS_capget, &h, d);
    snprintf(out, n, "uid %u/%u/%u gid %u/%u/%u ngroups %d caps %x/%x/%x nnp %d", r, e, s, g[0], g[1], g[2], ng,
             d[0].effective, d[0].permitted, d[0].inheritable, prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
}

static void *run(void *arg) {
    int i = (int)(long)arg;
    tids[i] = (int)syscall(SYS_gettid);
    if (i == 1 && syscall(SYS_setresuid, 1000, 1000, 1000)) die("setresuid");
    if (i == 2) {
        gid_t g[2] = {5, 6};
        if (syscall(SYS_setgroups, 2, g) || syscall(SYS_setresgid, 2000, 2000, 2000)) die("setgroups/setresgid");
    }
    if (i == 3) {
        struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct d[2];
        if (syscall(SYS_capget, &h, d)) die("capget");
        unsigned bit = 1u << CAP_NET_RAW;
        d[0].effective &= ~bit; d[0].permitted &= ~bit; d[0].inheritable &= ~bit;
        if (syscall(SYS_capset, &h, d)) die("capset");
    }
    if (i == 4 && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("PR_SET_NO_NEW_PRIVS");
    describe(own[i], sizeof own[i]);
    pthread_barrier_wait(&ready);
    for (;;) {
        if (ask[i] == 1) {
            describe(again[i], sizeof again[i]);
            __atomic_store_n(&ask[i], 2, __ATOMIC_SEQ_CST);
        }
        usleep(1000);
    }
    return NULL;
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    pthread_barrier_init(&ready, NULL, NT);
    sigset_t usr1;  /* the threads block SIGUSR1: it must reach the main thread, waiting in pause() */
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    tids[0] = (int)syscall(SYS_gettid);
    pthread_t t;
    for (long i = 1; i < NT; i++)
        if (pthread_create(&t, NULL, run, (void *)i)) die("pthread_create");
    pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
    describe(own[0], sizeof own[0]);
    pthread_barrier_wait(&ready);
    for (int i = 0; i < NT; i++) lines(tids[i], before[i], sizeof before[i]);
    if (!strcmp(before[1], before[0]) || !strcmp(before[2], before[0]) || !strcmp(before[3], before[0]) ||
        !strcmp(before[4], before[0])) { errno = 0; die("a thread's credentials did not change"); }
    printf("READY\n");
    fflush(stdout);
    while (!got_usr1) pause();
    char now[1024];
    for (int i = 0; i < NT; i++) {
        lines(tids[i], now, sizeof now);
        if (strcmp(now, before[i])) fail("%s: status %s, was %s", names[i], now, before[i]);
    }
    describe(again[0], sizeof again[0]);
    for (int i = 1; i < NT; i++) {
        ask[i] = 1;
        while (__atomic_load_n(&ask[i], __ATOMIC_SEQ_CST) != 2) usleep(1000);
    }
    for (int i = 0; i < NT; i++)
        if (strcmp(again[i], own[i])) fail("%s sees %s, saw %s", names[i], again[i], own[i]);
    printf(why[0] ? "FAIL %s\n" : "PASS%s\n", why);
    fflush(stdout);
    return 0;
}
