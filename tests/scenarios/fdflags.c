/* fdflags: descriptors of every common kind, each with its own file status flags, FD_CLOEXEC, and memfd seals
 * and modes, noted at the start and checked again on each SIGUSR1.
 *
 * usage: fdflags DIR [nounix]   (nounix: without the socketpair, for a kernel without unix_diag)
 *   regular files in DIR: O_RDWR|O_APPEND|O_NOATIME; O_RDONLY|O_DIRECT (where DIR's filesystem takes it);
 *     O_WRONLY|O_NONBLOCK|O_ASYNC (F_SETFL), close-on-exec
 *   a pipe in packet mode (pipe2 O_DIRECT|O_NONBLOCK), its write end O_ASYNC too
 *   a FIFO in DIR, O_RDWR|O_NONBLOCK
 *   memfds: sealable, close-on-exec, O_APPEND|O_NONBLOCK|O_NOATIME, sealed
 *     F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_FUTURE_WRITE; not sealable (its seals read F_SEAL_SEAL), reopened
 *     read-only and O_DIRECT (shmem takes it at open since 6.6) through /proc/self/fd; MFD_NOEXEC_SEAL (Linux 6.3+: mode 0666, F_SEAL_EXEC); MFD_EXEC then
 *     fchmod 0750
 *   a unix socketpair (SOCK_NONBLOCK, one end O_ASYNC), a UDP socket and a TCP listener O_NONBLOCK|O_ASYNC,
 *   eventfds (EFD_NONBLOCK; O_ASYNC), a timerfd, a signalfd, an inotify and an epoll instance non-blocking,
 *   files O_SYNC and O_DSYNC|O_APPEND, a directory O_NOATIME|O_NONBLOCK, /dev/null O_APPEND|O_NONBLOCK, an
 *   O_PATH directory, a memfd O_ASYNC
 * Prints "READY pid=P fds=N skipped=WHAT,..." (what this kernel or filesystem does not take), then on each
 * SIGUSR1 "PASS fds=N" or "FAIL why".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "verdict.h"

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#define MFD_EXEC 0x0010U
#endif
#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

#define STATUS (O_ACCMODE | O_APPEND | O_NONBLOCK | O_DIRECT | O_NOATIME | O_ASYNC | O_DSYNC | O_SYNC)

struct noted { int fd; const char *what; int fl, fdfl, seals; mode_t mode; };
static struct noted noted[64];
static int nnoted;
static char skipped[256];

static void note(int fd, const char *what) {
    if (fd < 0) die(what);
    struct stat st;
    if (fstat(fd, &st)) die("fstat");
    noted[nnoted++] = (struct noted){fd, what, fcntl(fd, F_GETFL) & STATUS, fcntl(fd, F_GETFD),
                                     fcntl(fd, F_GET_SEALS), st.st_mode};
}

static void skip(const char *what) {
    if (skipped[0]) strcat(skipped, ",");
    strcat(skipped, what);
}

static int setfl(int fd, int add, const char *what) {
    if (fd < 0) die(what);
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | add)) die(what);
    return fd;
}

static int memfd(const char *name, unsigned flags) {
    int fd = memfd_create(name, flags);
    if (fd < 0) die(name);
    if (ftruncate(fd, 8192)) die("ftruncate");
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: fdflags DIR [nounix]\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    catch_usr1();
    char path[4096];
    snprintf(path, sizeof path, "%s/appended", argv[1]);
    note(open(path, O_RDWR | O_CREAT | O_APPEND | O_NOATIME, 0600), "O_APPEND|O_NOATIME file");
    snprintf(path, sizeof path, "%s/direct", argv[1]);
    int fd = open(path, O_RDWR | O_CREAT, 0600);
    if (fd < 0 || ftruncate(fd, 4096)) die("direct file");
    close(fd);
    fd = open(path, O_RDONLY | O_DIRECT);
    if (fd >= 0) note(fd, "O_DIRECT file");
    else if (errno == EINVAL) skip("O_DIRECT-file");
    else die("O_DIRECT file");
    snprintf(path, sizeof path, "%s/async", argv[1]);
    note(setfl(open(path, O_WRONLY | O_CREAT | O_NONBLOCK | O_CLOEXEC, 0600), O_ASYNC, "async file"),
         "O_NONBLOCK|O_ASYNC file");

    int p[2];
    if (pipe2(p, O_DIRECT | O_NONBLOCK)) die("pipe2");
    note(p[0], "packet pipe read end");
    note(setfl(p[1], O_ASYNC, "packet pipe"), "packet pipe write end, O_ASYNC");
    if (write(p[1], "packet", 6) != 6) die("write");
    snprintf(path, sizeof path, "%s/fifo", argv[1]);
    if (mkfifo(path, 0600)) die("mkfifo");
    note(open(path, O_RDWR | O_NONBLOCK), "FIFO O_RDWR|O_NONBLOCK");

    fd = memfd("sealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    setfl(fd, O_APPEND | O_NONBLOCK | O_NOATIME, "memfd flags");
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE)) die("F_ADD_SEALS");
    note(fd, "sealed memfd");
    fd = memfd("unsealable", 0);
    note(fd, "unsealable memfd");
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    note(open(path, O_RDONLY), "unsealable memfd, read-only");
    fd = open(path, O_RDWR | O_DIRECT);  /* shmem takes O_DIRECT at open (6.6+), memfd_create's file never */
    if (fd >= 0) note(fd, "unsealable memfd, reopened O_DIRECT");
    else if (errno == EINVAL) skip("O_DIRECT-memfd");
    else die("memfd O_DIRECT");
    fd = memfd_create("noexec", MFD_NOEXEC_SEAL | MFD_CLOEXEC);
    if (fd >= 0) note(fd, "MFD_NOEXEC_SEAL memfd");
    else if (errno == EINVAL) skip("MFD_NOEXEC_SEAL");
    else die("MFD_NOEXEC_SEAL");
    fd = memfd_create("exec", MFD_EXEC | MFD_ALLOW_SEALING);
    if (fd < 0 && errno == EINVAL) fd = memfd_create("exec", MFD_ALLOW_SEALING);  /* before 6.3: exec is the default */
    if (fd < 0 || fchmod(fd, 0750)) die("memfd exec");
    note(fd, "memfd mode 0750");

    int sv[2];
    if (argc == 3 && !strcmp(argv[2], "nounix")) skip("unix");  /* a kernel without unix_diag: ckpt refuses it */
    else if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv)) die("socketpair");
    else {
        note(sv[0], "socketpair end O_NONBLOCK");
        note(setfl(sv[1], O_ASYNC, "socket O_ASYNC"), "socketpair end O_NONBLOCK|O_ASYNC");
    }
    note(setfl(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), O_NONBLOCK | O_ASYNC, "udp"), "UDP O_NONBLOCK|O_ASYNC");
    note(eventfd(0, EFD_NONBLOCK), "eventfd EFD_NONBLOCK");
    note(setfl(eventfd(0, EFD_CLOEXEC), O_ASYNC, "eventfd O_ASYNC"), "eventfd O_ASYNC");
    int tcp = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (tcp < 0 || bind(tcp, (struct sockaddr *)&lo, sizeof lo) || listen(tcp, 4)) die("tcp listener");
    note(setfl(tcp, O_NONBLOCK | O_ASYNC, "tcp"), "TCP listener O_NONBLOCK|O_ASYNC");
    note(setfl(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), O_ASYNC, "timerfd"), "timerfd O_NONBLOCK|O_ASYNC");
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr2, NULL);
    note(signalfd(-1, &usr2, SFD_NONBLOCK), "signalfd O_NONBLOCK");
    note(inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify O_NONBLOCK");
    note(setfl(epoll_create1(0), O_NONBLOCK, "epoll"), "epoll O_NONBLOCK");
    snprintf(path, sizeof path, "%s/sync", argv[1]);
    note(open(path, O_WRONLY | O_CREAT | O_SYNC, 0600), "O_SYNC file");
    snprintf(path, sizeof path, "%s/dsync", argv[1]);
    note(open(path, O_RDWR | O_CREAT | O_DSYNC | O_APPEND, 0600), "O_DSYNC|O_APPEND file");
    note(open(argv[1], O_RDONLY | O_DIRECTORY | O_NOATIME | O_NONBLOCK), "directory O_NOATIME|O_NONBLOCK");
    note(open("/dev/null", O_WRONLY | O_APPEND | O_NONBLOCK), "/dev/null O_APPEND|O_NONBLOCK");
    note(open(argv[1], O_PATH | O_DIRECTORY), "O_PATH directory");
    fd = memfd("async", MFD_ALLOW_SEALING);
    note(setfl(fd, O_ASYNC, "memfd O_ASYNC"), "memfd O_ASYNC");

    printf("READY pid=%d fds=%d skipped=%s\n", getpid(), nnoted, skipped[0] ? skipped : "none");
    for (;;) {
        await_usr1();
        why[0] = 0;
        for (int i = 0; i < nnoted; i++) {
            struct noted *n = &noted[i];
            struct stat st;
            int fl = fcntl(n->fd, F_GETFL) & STATUS, fdfl = fcntl(n->fd, F_GETFD), seals = fcntl(n->fd, F_GET_SEALS);
            if (fstat(n->fd, &st)) { fail("fd %d (%s): %s", n->fd, n->what, strerror(errno)); continue; }
            if (fl != n->fl) fail("fd %d (%s): status flags %#o, were %#o", n->fd, n->what, fl, n->fl);
            if (fdfl != n->fdfl) fail("fd %d (%s): fd flags %#x, were %#x", n->fd, n->what, fdfl, n->fdfl);
            if (seals != n->seals) fail("fd %d (%s): seals %#x, were %#x", n->fd, n->what, seals, n->seals);
            if (st.st_mode != n->mode) fail("fd %d (%s): mode %o, was %o", n->fd, n->what, st.st_mode, n->mode);
        }
        char got[16];
        ssize_t r = read(p[0], got, sizeof got);
        if (r != 6 || memcmp(got, "packet", 6)) fail("the pipe's packet: %zd bytes", r);
        else if (write(p[1], "packet", 6) != 6) fail("write the packet back: %s", strerror(errno));
        if (why[0]) printf("FAIL %s\n", why);
        else printf("PASS fds=%d\n", nnoted);
    }
}
