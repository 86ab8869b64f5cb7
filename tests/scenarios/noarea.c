/* noarea: a small process tree in which one child refuses memfd_create (a seccomp filter: EPERM),
 * so ckpt cannot map its injection area there and injects that child's calls unguarded.
 *
 * usage: noarea
 * The root forks two children; child 1 installs the filter.  Each process bumps a counter
 * in a loop.  Prints "READY pids=ROOT,C1,C2" once all run.  On SIGUSR1 each process checks
 * that its counter moved since the last round and that memfd_create still gives what its
 * filter says (EPERM in child 1, a descriptor elsewhere), then prints "PASS pid=P" or
 * "FAIL pid=P why".  Children die with the root (PR_SET_PDEATHSIG).
 */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include "verdict.h"

static volatile unsigned long counter;

static void deny_memfd(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_memfd_create, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof f / sizeof f[0], f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog))
        die("seccomp");
}

static void run(int denied) {
    unsigned long last = 0;
    for (;;) {
        for (int i = 0; i < 1000000; i++) counter++;
        usleep(1000);
        if (!got_usr1) continue;
        got_usr1 = 0;
        why[0] = 0;
        if (counter == last) fail("counter stuck at %lu", counter);
        last = counter;
        int fd = memfd_create("probe", MFD_CLOEXEC);
        if (denied && !(fd < 0 && errno == EPERM)) fail("memfd_create allowed (fd %d)", fd);
        if (!denied && fd < 0) fail("memfd_create: %s", strerror(errno));
        if (fd >= 0) close(fd);
        if (why[0]) printf("FAIL pid=%d %s\n", getpid(), why);
        else printf("PASS pid=%d\n", getpid());
        fflush(stdout);
    }
}

int main(void) {
    pid_t root = getpid(), kids[2];
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);  /* before READY, in every process */
    for (int i = 0; i < 2; i++) {
        kids[i] = fork();
        if (kids[i] < 0) die("fork");
        if (kids[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != root) _exit(1);
            if (i == 0) deny_memfd();
            run(i == 0);
        }
    }
    usleep(100000);
    printf("READY pids=%d,%d,%d\n", root, kids[0], kids[1]);
    fflush(stdout);
    run(0);
}
