/* resources: a target that sets up process-wide state for the resource modules,
 * and the helper it is restored into.  Built without PIE so that handler and
 * restorer addresses are the same in every process of this binary: a handler
 * restored from the target into the helper is real code there too.
 *
 * usage: resources MODE [args]
 *   helper            block the test signals, print READY, poll a flag every 2 ms
 *   signals           handlers (SA_SIGINFO|SA_RESTART|SA_RESTORER with our own
 *                     restorer), SIGINT/SIGPIPE ignored, SIGUSR2/SIGHUP/RT+1/RT+2
 *                     blocked; queues SIGUSR2 (value 42) and RT+1 twice (1, 2)
 *                     process-wide and RT+2 to its own thread; READY
 *   creds             groups, gids, uids 1000/1001/1002 keeping some capabilities,
 *                     an ambient one, a smaller bounding set, no_new_privs; READY
 *   files DIR [EXTRA] regular files at fds 3-6 (3 and 4 share one open file, 4
 *                     close-on-exec; 5 O_NONBLOCK; 6 O_APPEND), /dev/null at 7, a deleted
 *                     file at 8, DIR at 9, a pipe 10/11 holding 3 KiB, a FIFO at 12
 *                     (O_RDWR, 100 bytes), /dev/urandom at 20; EXTRA "external" adds fd
 *                     13, a pipe to a child process, "socket" a unix stream socket at 13 whose
 *                     peer sent it an epoll instance (SCM_RIGHTS, still queued: no process
 *                     holds the epoll) and closed; READY
 *   helper files      a helper whose SIGUSR1 report is the files one
 *   limits DIR        rlimits lowered, umask 027, cwd DIR, comm "ckpt-limits",
 *                     oom_score_adj 300, nice 5, affinity CPU 0; READY
 * On SIGUSR1 (if the handler is installed, by the program or by a restore) the
 * main loop prints "USR1 code=C", then drains every blocked signal that is
 * pending with sigtimedwait: "PENDING sig=N code=C val=V pid=P", then "END".
 */
// cflags: -no-pie
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SA_RESTORER 0x04000000
struct ksigaction { void *handler; unsigned long flags; void *restorer; unsigned long mask; };
void ckpt_restorer(void);
__asm__(".text\n.globl ckpt_restorer\nckpt_restorer:\n\tmov $15, %rax\n\tsyscall\n\thlt\n");

static volatile sig_atomic_t got_usr1, usr1_code;

static void on_usr1(int sig, siginfo_t *si, void *uc) { (void)sig; (void)uc; usr1_code = si->si_code; got_usr1 = 1; }
static void on_other(int sig) { (void)sig; }

static sigset_t test_set(void) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR2);
    sigaddset(&s, SIGHUP);
    sigaddset(&s, SIGRTMIN + 1);
    sigaddset(&s, SIGRTMIN + 2);
    return s;
}

static void ksig(int sig, void *handler, unsigned long flags, unsigned long mask) {
    struct ksigaction ka = {handler, flags | SA_RESTORER, (void *)ckpt_restorer, mask};
    if (syscall(SYS_rt_sigaction, sig, &ka, NULL, 8)) { printf("FAIL rt_sigaction %d: %s\n", sig, strerror(errno)); exit(1); }
}

static void die(const char *what) { printf("FAIL %s: %s\n", what, strerror(errno)); fflush(stdout); exit(1); }

static void setup_signals(void) {
    ksig(SIGUSR1, (void *)on_usr1, SA_SIGINFO | SA_RESTART, 1UL << (SIGTERM - 1));
    ksig(SIGALRM, (void *)on_other, SA_NODEFER | SA_RESETHAND, 0);
    ksig(SIGCHLD, SIG_DFL, SA_NOCLDSTOP, 0);
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    union sigval v = {.sival_int = 42};
    if (sigqueue(getpid(), SIGUSR2, v)) die("sigqueue");
    v.sival_int = 1;
    if (sigqueue(getpid(), SIGRTMIN + 1, v)) die("sigqueue");
    v.sival_int = 2;
    if (sigqueue(getpid(), SIGRTMIN + 1, v)) die("sigqueue");
    if (syscall(SYS_tgkill, getpid(), gettid(), SIGRTMIN + 2)) die("tgkill");
}

static void capset3(unsigned long long inh, unsigned long long prm, unsigned long long eff) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2] = {
        {(unsigned)eff, (unsigned)prm, (unsigned)inh}, {(unsigned)(eff >> 32), (unsigned)(prm >> 32), (unsigned)(inh >> 32)}};
    if (syscall(SYS_capset, &h, d)) die("capset");
}

static void setup_creds(void) {
    gid_t groups[] = {1001, 1002, 4000};
    if (setgroups(3, groups)) die("setgroups");
    if (setresgid(1000, 1001, 1002)) die("setresgid");
    setfsgid(1000);
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_MODULE) || prctl(PR_CAPBSET_DROP, CAP_MKNOD)) die("capbset_drop");
    if (prctl(PR_SET_KEEPCAPS, 1)) die("keepcaps");
    if (setresuid(1000, 1001, 1002)) die("setresuid");
    setfsuid(1002);
    unsigned long long nbs = 1ULL << CAP_NET_BIND_SERVICE, kill = 1ULL << CAP_KILL, own = 1ULL << CAP_CHOWN;
    capset3(nbs, nbs | kill | own, kill);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0)) die("ambient");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("no_new_privs");
}

static void setup_limits(const char *dir) {
    struct rlimit nofile = {200, 300}, core = {0, 1 << 20}, stack = {4 << 20, 16 << 20};
    if (setrlimit(RLIMIT_NOFILE, &nofile) || setrlimit(RLIMIT_CORE, &core) || setrlimit(RLIMIT_STACK, &stack)) die("setrlimit");
    umask(027);
    if (chdir(dir)) die("chdir");
    if (prctl(PR_SET_NAME, "ckpt-limits")) die("PR_SET_NAME");
    FILE *f = fopen("/proc/self/oom_score_adj", "w");
    if (!f || fprintf(f, "300") < 0 || fclose(f)) die("oom_score_adj");
    if (setpriority(PRIO_PROCESS, 0, 5)) die("setpriority");
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(0, &cpus);
    if (sched_setaffinity(0, sizeof cpus, &cpus)) die("sched_setaffinity");
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) || prctl(PR_SET_PDEATHSIG, SIGTERM)) die("prctl flags");
}

static int files_mode;

static int at(int fd, int want) {
    if (fd < 0) die("open");
    if (fd != want) { if (dup2(fd, want) < 0) die("dup2"); close(fd); }
    return want;
}

static void setup_files(const char *dir, const char *extra) {
    char path[4096];
    snprintf(path, sizeof path, "%s/data", dir);
    int fd = at(open(path, O_RDWR | O_CREAT | O_TRUNC, 0640), 3);
    if (write(fd, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!?", 64) != 64) die("write");
    lseek(fd, 10, SEEK_SET);
    if (dup3(3, 4, O_CLOEXEC) < 0) die("dup3");
    lseek(at(open(path, O_RDONLY | O_NONBLOCK), 5), 20, SEEK_SET);
    snprintf(path, sizeof path, "%s/log", dir);
    if (write(at(open(path, O_WRONLY | O_CREAT | O_APPEND, 0600), 6), "hello", 5) != 5) die("write");
    at(open("/dev/null", O_RDWR), 7);
    snprintf(path, sizeof path, "%s/gone", dir);
    fd = at(open(path, O_RDWR | O_CREAT | O_TRUNC, 0600), 8);
    if (write(fd, "secret contents", 15) != 15) die("write");
    lseek(fd, 3, SEEK_SET);
    unlink(path);
    at(open(dir, O_RDONLY | O_DIRECTORY), 9);
    int p[2];
    if (pipe(p)) die("pipe");
    at(p[0], 10);
    at(p[1], 11);
    char buf[3072];
    for (int i = 0; i < 3072; i++) buf[i] = (char)(i * 7);
    if (write(11, buf, 1000) != 1000 || write(11, buf + 1000, 2072) != 2072) die("write pipe");
    fcntl(11, F_SETFL, O_NONBLOCK);
    snprintf(path, sizeof path, "%s/fifo", dir);
    if (mkfifo(path, 0600)) die("mkfifo");
    if (write(at(open(path, O_RDWR), 12), buf, 100) != 100) die("write fifo");
    at(open("/dev/urandom", O_RDONLY), 20);
    if (extra && !strcmp(extra, "external")) {
        int sync[2];
        if (pipe(p) || pipe(sync)) die("pipe");
        if (fork() == 0) {  /* the peer holds only the read end, at fd 100; says so on `sync` */
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            dup2(p[0], 100);
            dup2(sync[1], 101);
            syscall(SYS_close_range, 0, 99, 0);
            syscall(SYS_close_range, 102, ~0U, 0);
            if (write(101, "x", 1) != 1) _exit(1);
            close(101);
            for (;;) pause();
        }
        close(p[0]);
        close(sync[1]);
        char c;
        if (read(sync[0], &c, 1) != 1) die("sync");
        close(sync[0]);
        at(p[1], 13);
    } else if (extra && !strcmp(extra, "socket")) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die("socketpair");
        char c = 'x';
        struct iovec iov = {&c, 1};
        union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        int in_flight = epoll_create1(EPOLL_CLOEXEC);
        if (in_flight < 0) die("epoll_create1");
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &in_flight, sizeof(int));
        if (sendmsg(sv[1], &mh, 0) != 1) die("sendmsg");
        at(sv[0], 13);
        close(sv[1]);
        close(in_flight);
    }
    files_mode = 1;
    ksig(SIGUSR1, (void *)on_usr1, SA_SIGINFO | SA_RESTART, 0);
}

static void report_files(void) {
    int queued = 0, fifo = 0;
    ioctl(10, FIONREAD, &queued);
    ioctl(12, FIONREAD, &fifo);
    char buf[4096];
    unsigned sum = 0;
    int n = queued > 0 ? (int)read(10, buf, sizeof buf) : 0;
    for (int i = 0; i < n; i++) sum = sum * 31 + (unsigned char)buf[i];
    char del[8] = {0};
    if (pread(8, del, 6, 3) != 6) strcpy(del, "?");
    printf("FILES pos3=%ld pos5=%ld pos6=%ld pos8=%ld pipe=%d read=%d sum=%u fifo=%d del=%s\n",
           (long)lseek(3, 0, SEEK_CUR), (long)lseek(5, 0, SEEK_CUR), (long)lseek(6, 0, SEEK_CUR),
           (long)lseek(8, 0, SEEK_CUR), queued, n, sum, fifo, del);
}

static void report(void) {
    if (files_mode) report_files();
    printf("USR1 code=%d\n", (int)usr1_code);
    sigset_t s = test_set();
    struct timespec zero = {0, 0};
    siginfo_t si;
    int sig;
    while ((sig = sigtimedwait(&s, &si, &zero)) > 0)
        printf("PENDING sig=%d code=%d val=%d pid=%d\n", sig, si.si_code,
               si.si_code == SI_QUEUE ? si.si_value.sival_int : 0, (int)si.si_pid);
    printf("END\n");
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    sigset_t s = test_set();
    sigprocmask(SIG_BLOCK, &s, NULL);
    const char *mode = argv[1];
    if (!strcmp(mode, "signals")) setup_signals();
    else if (!strcmp(mode, "creds")) setup_creds();
    else if (!strcmp(mode, "limits") && argc == 3) setup_limits(argv[2]);
    else if (!strcmp(mode, "files") && argc >= 3) setup_files(argv[2], argc > 3 ? argv[3] : NULL);
    else if (!strcmp(mode, "helper")) {
        files_mode = argc > 2 && !strcmp(argv[2], "files");
        if (files_mode) ksig(SIGUSR1, (void *)on_usr1, SA_SIGINFO | SA_RESTART, 0);
    }
    else return 2;
    printf("READY pid=%d\n", getpid());
    fflush(stdout);
    /* Poll the flag rather than trusting one pause(): a signal that arrives just
     * as a release restarts the wait runs its handler and leaves pause()
     * waiting again (seen in 1 of ~8 freeze/release cycles, see the report). */
    for (;;) {
        usleep(2000);
        if (got_usr1) { got_usr1 = 0; report(); }
    }
}
