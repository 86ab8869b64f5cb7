/* seccomp_strict: a process in seccomp strict mode, echoing what it reads with read/write only.
 *
 * usage: seccomp_strict [thread]
 * Prints "READY pid=P", enters strict mode, then for each line read on stdin answers "ECHO N LINE" (N
 * counts the lines).  A line "getpid" makes it call getpid, for which strict mode kills it (SIGKILL):
 * the test's proof that it is still strict.  EOF ends it with exit (the one exit strict mode allows).
 * "thread": a second thread does all that (strict mode is per thread: "READY pid=P tid=T"), the main
 * thread waits in pause() outside seccomp; strict mode ends only that thread.
 */
#define _GNU_SOURCE
#include <linux/seccomp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static void *echo(void *ready) {
    char buf[256], out[300];
    unsigned n = 0;
    if (ready) printf("READY pid=%d tid=%ld\n", getpid(), (long)syscall(SYS_gettid));
    else printf("READY pid=%d\n", getpid());
    fflush(stdout);
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0)) {
        printf("FAIL strict mode\n");
        fflush(stdout);
        syscall(SYS_exit_group, 1);
    }
    for (;;) {
        ssize_t r = read(0, buf, sizeof buf - 1);  /* a line per write of the test */
        if (r <= 0) syscall(SYS_exit, 0);
        buf[r] = 0;
        if (!strncmp(buf, "getpid", 6)) syscall(SYS_getpid);
        n++;
        /* no snprintf: it may call something else than write */
        int k = 0;
        memcpy(out, "ECHO ", 5);
        k = 5;
        char digits[12];
        int d = 0;
        unsigned v = n;
        do { digits[d++] = '0' + v % 10; v /= 10; } while (v);
        while (d) out[k++] = digits[--d];
        out[k++] = ' ';
        memcpy(out + k, buf, r);
        k += r;
        if (write(1, out, k) != k) syscall(SYS_exit, 1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    pthread_t t;
    if (argc > 1 && !strcmp(argv[1], "thread")) {
        if (pthread_create(&t, NULL, echo, (void *)1)) return 1;
        for (;;) pause();
    }
    echo(NULL);
    return 0;
}
