/* stopped: children in a group stop (job control), one whose stop its parent has not yet waited for and one
 * whose stop it has; each must stay stopped, and the parent's waitpid(WUNTRACED) view must stay as it was.
 *
 * usage: stopped
 * The root forks A and B, each leading a group of its own as a shell's jobs do (each waits in pause() for
 * SIGCONT, whose handler makes it exit 3).  It stops A with
 * SIGSTOP and looks at the stop with waitid(WNOWAIT) (not consumed: a later waitpid(WUNTRACED) still reports
 * it), and B with SIGTSTP, whose stop it consumes with waitpid(WUNTRACED).  It counts the SIGCHLDs it gets,
 * then prints "READY a=PID b=PID" and waits for SIGUSR1.  On SIGUSR1 it checks: A and B are in state T
 * (/proc/PID/stat), no SIGCHLD came meanwhile, A's stop is still reported (CLD_STOPPED, SIGSTOP) and B's
 * is not reported again; then it continues both with SIGCONT, reaps them (exit 3 each) and prints "PASS" or
 * "FAIL why".  The test may stop the root itself too (SIGSTOP from outside) and continue it before SIGUSR1.
 */
#define _GNU_SOURCE
#include <sys/wait.h>
#include "verdict.h"

static volatile sig_atomic_t chld;

static void on_chld(int sig) { (void)sig; chld++; }
static pid_t root;
/* A child ends in the handler itself: a flag tested before pause() could be set by a stop landing between. */
static void on_cont(int sig) { (void)sig; if (getpid() != root) _exit(3); }

static pid_t child(void) {
    pid_t p = fork();
    if (p < 0) die("fork");
    if (p == 0) {
        for (;;) pause();
    }
    setpgid(p, p);  /* a job of its own: its group is not orphaned (SIGTSTP would be discarded) */
    return p;
}

static char state_of(pid_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *close = strrchr(buf, ')');
    return close && close[1] == ' ' ? close[2] : '?';
}

static void reap(pid_t pid, const char *name) {
    int status;
    if (waitpid(pid, &status, 0) != pid) fail("waitpid(%s): %s", name, strerror(errno));
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 3) fail("%s ended with status %#x, not exit 3", name, status);
}

int main(void) {
    root = getpid();
    struct sigaction sa = {0};
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    sa.sa_handler = on_usr1;
    sa.sa_flags = 0;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_cont;  /* the children's, inherited: set before a stop can reach them */
    sigaction(SIGCONT, &sa, NULL);
    pid_t a = child(), b = child();

    siginfo_t si;
    kill(a, SIGSTOP);
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, a, &si, WSTOPPED | WNOWAIT)) die("waitid(a, WNOWAIT)");
    kill(b, SIGTSTP);
    int status;
    if (waitpid(b, &status, WUNTRACED) != b) die("waitpid(b, WUNTRACED)");
    if (!WIFSTOPPED(status) || WSTOPSIG(status) != SIGTSTP) { errno = 0; die("b did not stop by SIGTSTP"); }
    int seen = chld;
    printf("READY a=%d b=%d\n", a, b);
    fflush(stdout);
    while (!got_usr1) pause();

    if (state_of(a) != 'T') fail("a is in state %c, not T", state_of(a));
    if (state_of(b) != 'T') fail("b is in state %c, not T", state_of(b));
    if (chld != seen) fail("%d SIGCHLD came while the children stayed stopped", chld - seen);
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, a, &si, WSTOPPED | WNOHANG | WNOWAIT)) fail("waitid(a): %s", strerror(errno));
    else if (si.si_pid != a || si.si_code != CLD_STOPPED || si.si_status != SIGSTOP)
        fail("a's stop is not reported (pid %d code %d status %d)", si.si_pid, si.si_code, si.si_status);
    if (waitpid(a, &status, WUNTRACED | WNOHANG) != a || !WIFSTOPPED(status) || WSTOPSIG(status) != SIGSTOP)
        fail("waitpid(a, WUNTRACED) does not report its stop");
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, b, &si, WSTOPPED | WNOHANG)) fail("waitid(b): %s", strerror(errno));
    else if (si.si_pid != 0) fail("b's stop was reported again (code %d status %d)", si.si_code, si.si_status);
    kill(a, SIGCONT);
    kill(b, SIGCONT);
    reap(a, "a");
    reap(b, "b");
    printf(why[0] ? "FAIL %s\n" : "PASS%s\n", why);
    fflush(stdout);
    return 0;
}
