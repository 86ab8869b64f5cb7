// A child made by clone(CLONE_FILES): parent and child share one descriptor table
// (with the argument "fs": clone(CLONE_FS) instead, which a dump refuses).
// Prints "READY pid=PARENT child=CHILD".  On SIGUSR1 the parent opens /dev/null at fd
// 40 + N (round N) and signals the child, which checks that fd exists in its table too
// and prints "PASS files N" (or FAIL): the table is still one after a restore.
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char stack[64 * 1024];
static volatile sig_atomic_t round_no, asked;
static pid_t parent;

static void on_usr1(int sig) { (void)sig; asked = 1; }

/* Wait for SIGUSR1 without losing one: it is blocked except inside sigsuspend. */
static void wait_usr1(void) {
    sigset_t none;
    sigemptyset(&none);
    while (!asked)
        sigsuspend(&none);
    asked = 0;
}

static int child_main(void *arg) {
    (void)arg;
    for (;;) {
        wait_usr1();
        round_no++;
        int fd = 40 + round_no;
        if (fcntl(fd, F_GETFD) < 0 || getppid() != parent)
            printf("FAIL files %d: fd %d not in the child's table (or ppid %d)\n", round_no, fd, getppid());
        else
            printf("PASS files %d\n", round_no);
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv) {
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);  /* inherited by the child */
    signal(SIGUSR1, on_usr1);
    parent = getpid();
    /* "clone_files fs": share cwd and root instead (CLONE_FS), which a dump refuses */
    int shared = argc > 1 && argv[1][0] == 'f' ? CLONE_FS : CLONE_FILES;
    int child = clone(child_main, stack + sizeof stack, shared | SIGCHLD, NULL);
    if (child < 0) {
        printf("FAIL clone: %m\n");
        return 1;
    }
    printf("READY pid=%d child=%d\n", getpid(), child);
    fflush(stdout);
    for (;;) {
        wait_usr1();
        round_no++;
        int fd = open("/dev/null", O_RDONLY);
        if (fd < 0 || dup2(fd, 40 + round_no) < 0) {
            printf("FAIL open: %m\n");
            fflush(stdout);
        }
        close(fd);
        kill(child, SIGUSR1);
    }
}
