/* noarea: a small process tree in which one child cannot memfd_create (no descriptor left: EMFILE),
 * so ckpt cannot map its injection area there and injects that child's calls unguarded.
 *
 * usage: noarea
 * The root forks two children; child 1 lowers its limit.  Each process bumps a counter
 * in a loop.  Prints "READY pids=ROOT,C1,C2" once all run.  On SIGUSR1 each process checks
 * that its counter moved since the last round and that memfd_create still gives what its
 * limit says (EMFILE in child 1, a descriptor elsewhere), then prints "PASS pid=P" or
 * "FAIL pid=P why".  Children die with the root (PR_SET_PDEATHSIG).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include "verdict.h"

static volatile unsigned long counter;

static void deny_memfd(void) {
    /* No descriptor left: RLIMIT_NOFILE just above the highest one open, so memfd_create fails (EMFILE).
     * (Not a seccomp filter: ckpt's injected calls pass by filters, PTRACE_O_SUSPEND_SECCOMP.) */
    int top = 2;
    for (int fd = 3; fd < 1024; fd++)
        if (fcntl(fd, F_GETFD) != -1) top = fd;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) die("getrlimit");
    rl.rlim_cur = top + 1;
    if (setrlimit(RLIMIT_NOFILE, &rl)) die("setrlimit");
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
        if (denied && !(fd < 0 && errno == EMFILE)) fail("memfd_create allowed (fd %d)", fd);
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
