/* daemon: the classic daemon start — fork, fork again, the grandchild calls setsid
 * (a session and process group leader with no terminal), cwd /, stdio on /dev/null.
 *
 * usage: daemon STATE_PREFIX
 *
 * The starter exits once the daemon is running; the daemon writes its pid to
 * STATE_PREFIX.pid.  On SIGUSR1 it checks its memory (a pattern and a counter
 * that only it advances) and writes STATE_PREFIX.status (via rename, so a
 * reader never sees half a line): "PASS pid=P sid=S pgid=G ppid=Q round=N" or
 * "FAIL <why>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t usr1;
static void on_usr1(int s) { (void)s; usr1 = 1; }

static void put(const char *prefix, const char *suffix, const char *text) {
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s.%s", prefix, suffix);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
    rename(tmp, path);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *prefix = argv[1];
    pid_t mid = fork();
    if (mid > 0) {  /* the starter: back to the shell once the middle process is gone */
        int st;
        waitpid(mid, &st, 0);
        return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
    }
    if (fork() > 0) _exit(0);  /* the middle process: the daemon is reparented to init (or a subreaper) */
    if (setsid() < 0) return 1;
    if (chdir("/")) return 1;
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0); dup2(null, 1); dup2(null, 2);
    if (null > 2) close(null);
    static unsigned char mem[1 << 20];
    for (size_t i = 0; i < sizeof mem; i++) mem[i] = (unsigned char)(i * 7 + 3);
    signal(SIGUSR1, on_usr1);
    sigset_t usr1_set, wait_mask;
    sigemptyset(&usr1_set);
    sigaddset(&usr1_set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1_set, &wait_mask);  /* taken only inside sigsuspend: no lost wake-up */
    char line[256];
    snprintf(line, sizeof line, "%d\n", getpid());
    put(prefix, "pid", line);
    unsigned round = 0;
    for (;;) {
        sigsuspend(&wait_mask);
        if (!usr1) continue;
        usr1 = 0;
        round++;
        int ok = 1;
        for (size_t i = 0; i < sizeof mem; i++) ok &= mem[i] == (unsigned char)(i * 7 + 3);
        if (ok) snprintf(line, sizeof line, "PASS pid=%d sid=%d pgid=%d ppid=%d round=%u\n", getpid(), getsid(0),
                         getpgid(0), getppid(), round);
        else snprintf(line, sizeof line, "FAIL memory changed\n");
        put(prefix, "status", line);
    }
}
