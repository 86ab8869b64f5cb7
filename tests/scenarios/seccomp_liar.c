/* seccomp_liar: a filter that answers the calls ckpt injects with lies, fake successes and errors.
 *
 * Before its filter, the process sets its timer slack to 123457 ns, arms ITIMER_REAL for an hour, and
 * counts its mappings.  Its filter then makes getitimer (but its own, into `truth`) and prctl
 * "succeed" through SECCOMP_RET_TRAP (its SIGSYS handler returns 0 and writes no answer: a timer of
 * all zeros, a timer slack of 0), fails mmap, munmap, madvise and membarrier with EPERM, and
 * rt_sigaction with ENOSYS.  A dump that took those answers would record no timer, no slack, or fail;
 * ckpt's calls pass by the filter (PTRACE_O_SUSPEND_SECCOMP).
 * usage: seccomp_liar
 * Prints "READY", then on SIGUSR1 checks its timer (getitimer into `truth`), /proc/self/timerslack_ns,
 * its mapping count, and that prctl is still lied to (the filter came back); prints "PASS" or "FAIL why".
 */
#define _GNU_SOURCE
#include "verdict.h"
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <stdint.h>
#include <ucontext.h>

#define ANSWER(nr, action) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), BPF_STMT(BPF_RET | BPF_K, (action))

static struct itimerval truth;  /* its own getitimer writes here, and only that one is answered truly */

static struct sock_filter lies[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_getitimer, 0, 6),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),      /* low half */
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0 /* patched: &truth low */, 0, 3),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1]) + 4),  /* high half */
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0 /* patched: &truth high */, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
    ANSWER(__NR_prctl, SECCOMP_RET_TRAP),
    ANSWER(__NR_mmap, SECCOMP_RET_ERRNO | EPERM),
    ANSWER(__NR_munmap, SECCOMP_RET_ERRNO | EPERM),
    ANSWER(__NR_madvise, SECCOMP_RET_ERRNO | EPERM),
    ANSWER(__NR_membarrier, SECCOMP_RET_ERRNO | EPERM),
    ANSWER(__NR_rt_sigaction, SECCOMP_RET_ERRNO | ENOSYS),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
};


static void on_sys(int sig, siginfo_t *si, void *uc_) {
    (void)sig; (void)si;
    ((ucontext_t *)uc_)->uc_mcontext.gregs[REG_RAX] = 0;  /* "it worked", and nothing written */
}

static int mappings(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return -1;
    int n = 0, c;
    while ((c = fgetc(f)) != EOF) n += c == '\n';
    fclose(f);
    return n;
}

static long slack(void) {
    FILE *f = fopen("/proc/self/timerslack_ns", "r");
    long v = -1;
    if (f) { if (fscanf(f, "%ld", &v) != 1) v = -1; fclose(f); }
    return v;
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_sigaction = on_sys;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSYS, &sa, NULL);
    signal(SIGUSR1, on_usr1);
    if (prctl(PR_SET_TIMERSLACK, 123457, 0, 0, 0)) die("PR_SET_TIMERSLACK");
    struct itimerval it = {{3600, 0}, {3600, 0}};
    if (setitimer(ITIMER_REAL, &it, NULL)) die("setitimer");
    char *probe = malloc(1 << 20);  /* stdio's and malloc's memory, before mmap fails */
    if (!probe) die("malloc");
    int before = mappings();
    printf("READY\n");
    fflush(stdout);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("no_new_privs");
    lies[6].k = (uint32_t)(uintptr_t)&truth;
    lies[8].k = (uint32_t)((uintptr_t)&truth >> 32);
    struct sock_fprog prog = {sizeof lies / sizeof lies[0], lies};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) die("seccomp");
    while (!got_usr1) pause();
    int after = mappings();
    long s = slack();
    if (syscall(SYS_getitimer, ITIMER_REAL, &truth)) fail("getitimer: %s", strerror(errno));
    if (truth.it_interval.tv_sec != 3600 || truth.it_value.tv_sec < 3000)
        fail("ITIMER_REAL interval %lds, %lds left: not the hour it was armed for",
             (long)truth.it_interval.tv_sec, (long)truth.it_value.tv_sec);
    if (s != 123457) fail("timer slack %ld, not 123457", s);
    if (after != before) fail("%d mappings, %d before", after, before);
    if (prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0) != 0) fail("prctl is no longer lied to: the filter is gone");
    printf(why[0] ? "FAIL %s\n" : "PASS%s\n", why);
    fflush(stdout);
    free(probe);
    return 0;
}
