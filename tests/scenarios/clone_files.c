// A child made by clone(CLONE_FILES): parent and child share one descriptor table.
// Prints "READY pid=PARENT child=CHILD"; both then sleep.  A dump of the tree must
// refuse it (restored apart, the table would silently stop being shared).
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char stack[64 * 1024];

static int child_main(void *arg) {
    (void)arg;
    for (;;)
        pause();
    return 0;
}

int main(void) {
    int child = clone(child_main, stack + sizeof stack, CLONE_FILES | SIGCHLD, NULL);
    if (child < 0) {
        printf("FAIL clone: %m\n");
        return 1;
    }
    printf("READY pid=%d child=%d\n", getpid(), child);
    fflush(stdout);
    for (;;)
        pause();
}
