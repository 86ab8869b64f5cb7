/* scm_rights: descriptors in flight (SCM_RIGHTS) in unix socket receive queues, held by no process.
 *
 * usage: scm_rights DIR
 *
 * The root R forks a child C.  Before READY, with nobody reading:
 *
 *  - two SOCK_STREAM socketpairs R->C, S1 and S2, each given the same four sends by R:
 *      (a) 100 bytes, no fd;
 *      (b) 10 bytes with SCM_RIGHTS of a regular file DIR/scm_rights-R.file ("0123456789abcdef",
 *          opened O_RDWR, offset 5), which R then closes: the open file exists only in flight;
 *      (c) 50 bytes, no fd;
 *      (d) 3 bytes with two fds at once: the read end of a pipe holding "pipe-data" (R closes it and keeps
 *          the write end) and an eventfd (counter 7, EFD_NONBLOCK) that R keeps too.
 *    The same three open files are in flight twice (once per pair): one open file each, not copies.
 *  - a SOCK_DGRAM socketpair R->C with "m1", "m2" carrying an end X of a fresh stream socketpair (X, Y)
 *    whose queue holds "to-x" (R closes X, keeps Y), then "m3";
 *  - a SOCK_SEQPACKET socketpair C->R with "from-c" carrying a memfd "scm-memfd" holding "memfd-bytes"
 *    (offset 11), which C closes.
 *
 * READY pids=R,C once all is queued.  SIGUSR1 to R runs the one round there is (the queues are read, so a
 * dump is only meaningful before it): R writes "more" into the pipe, checks its eventfd still counts 7,
 * sends SIGUSR1 to C, and checks its seqpacket end (one message "from-c" with the memfd: its name,
 * contents, offset; nothing more).  C reads and checks:
 *
 *  - S1 with 4096-byte reads: 110 bytes with the file (plain Linux glues (a) to the message carrying fds and
 *    stops right after it), 53 bytes with the pipe and the eventfd, then nothing;
 *  - S2 with reads of 100, 5, 55, 4096 bytes: 100 without fds (they belong to (b), not to (a)), 5 with the
 *    file (fds come with the first byte read of their message), 55 without (the rest of (b), then (c)), 3
 *    with the pipe and the eventfd, then nothing;
 *    every byte's value (by its stream offset) and the order of the fds in each message;
 *  - S1's and S2's copies are the same open files (kcmp); the file is that path, O_RDWR, and reads give
 *    "56789abcdef" then EOF (offset 5 kept), after which S2's copy is at offset 16 (shared position);
 *  - the pipe gives "pipe-datamore" (R's write end is its other end), then nothing;
 *  - the eventfd reads 7 (then EAGAIN: nonblocking), and C writes 3 into it;
 *  - the datagrams "m1" (no fd), "m2" (one fd X), "m3" (no fd), then nothing; X is a unix stream socket
 *    holding exactly "to-x"; C writes "back" into it.
 *
 * C reports "OK" or "FAIL why" through a pipe; R then reads "back" from Y (X's peer is Y) and 3 from its
 * eventfd (the one C received), and prints "PASS scm_rights" or "FAIL round=1 why; ...".  A later SIGUSR1
 * prints "FAIL round=N: ...": there is one round.  alarm(20) during the round, so nothing hangs.
 * C exits when R is gone (its end of S1 hangs up); tests kill both anyway.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "verdict.h"

#define BIG 4096
#define MAXFDS 8
#define REPORT_MS 10000
#define ROUND_ALARM 20

static const size_t piece_len[4] = {100, 10, 50, 3};
#define STREAM_TOTAL 163

static int s1[2], s2[2], dg[2], sq[2], rep[2];  /* [0] in R, [1] in C */
static int pw = -1, efd = -1, y = -1;           /* R: the pipe's write end, the eventfd, X's peer */
static char path[4096];
static pid_t child;
static unsigned char buf[BIG];





/* Byte at offset off of the stream: the piece's letter first, then a pattern of the offset. */
static unsigned char stream_byte(size_t off) {
    size_t o = off;
    int k = 0;
    while (k < 3 && o >= piece_len[k]) o -= piece_len[k++];
    return o == 0 ? (unsigned char)('A' + k) : (unsigned char)('a' + (off * 7 + k) % 26);
}

static void send_fds(int s, const void *data, size_t n, const int *fds, int nfds, const char *what) {
    struct iovec iov = {(void *)data, n};
    union { char b[CMSG_SPACE(MAXFDS * sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds) {
        memset(&u, 0, sizeof u);
        m.msg_control = u.b;
        m.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    if (sendmsg(s, &m, 0) != (ssize_t)n) die(what);
}

/* recvmsg into b (at most n bytes), the fds received appended to fds[*nfds]; -1 with errno on error. */
static ssize_t recv_fds(int s, void *b, size_t n, int flags, int *fds, int *nfds, const char *what) {
    struct iovec iov = {b, n};
    union { char b[CMSG_SPACE(MAXFDS * sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b};
    ssize_t r = recvmsg(s, &m, flags);
    if (r < 0) return r;
    if (m.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) fail("%s: msg_flags %#x", what, m.msg_flags);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            fail("%s: control message %d/%d", what, c->cmsg_level, c->cmsg_type);
            continue;
        }
        int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (int i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (*nfds < MAXFDS) fds[(*nfds)++] = fd;
        }
    }
    return r;
}

static int same_file(int a, int b) {
    long r = syscall(SYS_kcmp, (long)getpid(), (long)getpid(), KCMP_FILE, (long)a, (long)b);
    if (r < 0) fail("kcmp: %s", strerror(errno));
    return r == 0;
}

static const char *fd_link(int fd) {
    static char link[256];
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(p, link, sizeof link - 1);
    link[n < 0 ? 0 : n] = 0;
    return link;
}

/* Nothing more queued on a socket (a nonblocking read gives EAGAIN). */
static void check_empty(int s, const char *what) {
    int fds[MAXFDS], nf = 0;
    ssize_t more = recv_fds(s, buf, sizeof buf, MSG_DONTWAIT, fds, &nf, what);
    if (more >= 0 || errno != EAGAIN) fail("%s: more queued than sent (%zd bytes, %d fd(s))", what, more, nf);
}

/* ---- C ------------------------------------------------------------------------------------------ */

struct read_step { size_t ask, len; int nfds; };
static const struct read_step big_reads[] = {{BIG, 110, 1}, {BIG, 53, 2}};
static const struct read_step exact_reads[] = {{100, 100, 0}, {5, 5, 1}, {55, 55, 0}, {BIG, 3, 2}};

/* Read a stream pair's queue step by step; got[0..2]: the file, the pipe, the eventfd, in arrival order. */
static int read_stream(int s, const char *name, const struct read_step *steps, int nsteps, int got[MAXFDS]) {
    int nf = 0, bad = 0;
    size_t off = 0;
    char seen[256] = "";
    for (int i = 0; i < nsteps; i++) {
        int before = nf;
        ssize_t r = recv_fds(s, buf, steps[i].ask, MSG_DONTWAIT, got, &nf, name);
        if (r <= 0) { fail("%s: read %d: %s", name, i + 1, r ? strerror(errno) : "EOF"); return -1; }
        snprintf(seen + strlen(seen), sizeof seen - strlen(seen), "%s%zd+%dfd", i ? " " : "", r, nf - before);
        if ((size_t)r != steps[i].len || nf - before != steps[i].nfds) bad = 1;
        for (ssize_t j = 0; j < r; j++)
            if (off + j >= STREAM_TOTAL || buf[j] != stream_byte(off + j)) {
                fail("%s: byte at offset %zu differs", name, off + j);
                return -1;
            }
        off += r;
    }
    char want[256] = "";
    for (int i = 0; i < nsteps; i++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%zu+%dfd", i ? " " : "", steps[i].len, steps[i].nfds);
    if (bad) { fail("%s: reads gave %s, want %s", name, seen, want); return -1; }
    check_empty(s, name);
    if (nf != 3) { fail("%s: %d fds in all, want 3", name, nf); return -1; }
    return 0;
}

static void check_file(int f, int f2) {
    struct stat a, b;
    if (fstat(f, &a) || stat(path, &b)) { fail("file: stat: %s", strerror(errno)); return; }
    if (!S_ISREG(a.st_mode) || a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
        fail("file: fd is %s, not %s", fd_link(f), path);
        return;
    }
    int fl = fcntl(f, F_GETFL);
    if ((fl & O_ACCMODE) != O_RDWR) fail("file: flags %#o, not O_RDWR", fl);
    char got[32];
    ssize_t n = read(f, got, sizeof got);
    if (n != 11 || memcmp(got, "56789abcdef", 11)) {
        fail("file: read gave %zd bytes \"%.*s\", want \"56789abcdef\" (offset 5)", n, n > 0 ? (int)n : 0, got);
        return;
    }
    if ((n = read(f, got, sizeof got)) != 0) fail("file: %zd bytes after the end", n);
    off_t pos = lseek(f2, 0, SEEK_CUR);
    if (pos != 16) fail("file: S2's copy at offset %lld, not 16: not the same open file", (long long)pos);
}

static void check_pipe(int p) {
    struct stat st;
    if (fstat(p, &st) || !S_ISFIFO(st.st_mode)) { fail("pipe: fd is %s", fd_link(p)); return; }
    int fl = fcntl(p, F_GETFL);
    if ((fl & O_ACCMODE) != O_RDONLY) fail("pipe: flags %#o, not O_RDONLY", fl);
    static const char want[] = "pipe-datamore";
    char got[64];
    size_t n = 0;
    long deadline = now_ms() + 3000;
    while (n < sizeof want - 1) {
        struct pollfd pfd = {.fd = p, .events = POLLIN};
        long left = deadline - now_ms();
        if (poll(&pfd, 1, left < 0 ? 0 : (int)left) != 1) break;
        ssize_t r = read(p, got + n, sizeof got - n);
        if (r <= 0) break;
        n += r;
    }
    if (n != sizeof want - 1 || memcmp(got, want, n)) {
        fail("pipe: read \"%.*s\", want \"%s\"", (int)n, got, want);
        return;
    }
    struct pollfd pfd = {.fd = p, .events = POLLIN};
    if (poll(&pfd, 1, 0) != 0) fail("pipe: more than \"%s\" (revents %#x)", want, pfd.revents);
}

static void check_eventfd(int e) {
    if (strcmp(fd_link(e), "anon_inode:[eventfd]")) { fail("eventfd: fd is %s", fd_link(e)); return; }
    int fl = fcntl(e, F_GETFL);
    if (!(fl & O_NONBLOCK) || (fl & O_ACCMODE) != O_RDWR) fail("eventfd: flags %#o, not O_RDWR|O_NONBLOCK", fl);
    uint64_t v = 0;
    if (read(e, &v, 8) != 8 || v != 7) { fail("eventfd: read %llu (%s), want 7", (unsigned long long)v, strerror(errno)); return; }
    if (read(e, &v, 8) >= 0 || errno != EAGAIN) fail("eventfd: a second read did not give EAGAIN");
    v = 3;
    if (write(e, &v, 8) != 8) fail("eventfd: write 3: %s", strerror(errno));
}

static void check_dgram(void) {
    static const char *const want[3] = {"m1", "m2", "m3"};
    int x = -1;
    for (int i = 0; i < 3; i++) {
        int fds[MAXFDS], nf = 0;
        char what[32];
        snprintf(what, sizeof what, "dgram message %d", i + 1);
        ssize_t r = recv_fds(dg[1], buf, sizeof buf, MSG_DONTWAIT, fds, &nf, what);
        if (r < 0) { fail("%s: %s", what, strerror(errno)); return; }
        if (r != 2 || memcmp(buf, want[i], 2) || nf != (i == 1)) {
            fail("%s: \"%.*s\" with %d fd(s), want \"%s\" with %d", what, (int)r, buf, nf, want[i], i == 1);
            return;
        }
        if (i == 1) x = fds[0];
    }
    check_empty(dg[1], "dgram");
    int type = 0, domain = 0;
    socklen_t len = sizeof type;
    getsockopt(x, SOL_SOCKET, SO_TYPE, &type, &len);
    len = sizeof domain;
    getsockopt(x, SOL_SOCKET, SO_DOMAIN, &domain, &len);
    if (type != SOCK_STREAM || domain != AF_UNIX) { fail("X: %s is not a unix stream socket", fd_link(x)); return; }
    ssize_t r = recv(x, buf, sizeof buf, MSG_DONTWAIT);
    if (r != 4 || memcmp(buf, "to-x", 4)) { fail("X: read %zd bytes, want \"to-x\"", r); return; }
    check_empty(x, "X");
    if (send(x, "back", 4, MSG_NOSIGNAL) != 4) fail("X: send \"back\": %s", strerror(errno));
}

static void child_round(void) {
    int a[MAXFDS], b[MAXFDS];
    int ok1 = read_stream(s1[1], "S1 (4096-byte reads)", big_reads, 2, a);
    int ok2 = read_stream(s2[1], "S2 (reads of 100, 5, 55, 4096)", exact_reads, 4, b);
    if (!ok1 && !ok2) {
        static const char *const names[3] = {"file", "pipe", "eventfd"};
        for (int i = 0; i < 3; i++)
            if (!same_file(a[i], b[i])) fail("%s: S1's fd (%s) and S2's (%s) are different open files",
                                              names[i], fd_link(a[i]), fd_link(b[i]));
        check_file(a[0], b[0]);
        check_pipe(a[1]);
        check_eventfd(a[2]);
    }
    check_dgram();
}

static void child_main(void) {
    close(s1[0]); close(s2[0]); close(dg[0]); close(sq[0]); close(rep[0]);
    int m = memfd_create("scm-memfd", 0);
    if (m < 0 || write(m, "memfd-bytes", 11) != 11) die("memfd");
    send_fds(sq[1], "from-c", 6, &m, 1, "send from-c");
    close(m);
    if (write(rep[1], "up\n", 3) != 3) _exit(1);
    for (;;) {
        await_usr1_or_hangup(s1[1]);  /* S1 hangs up: R is gone */
        why[0] = 0;
        alarm(ROUND_ALARM);
        child_round();
        alarm(0);
        char line[sizeof why + 16];
        snprintf(line, sizeof line, why[0] ? "FAIL C: %s\n" : "OK\n", why);
        if (write(rep[1], line, strlen(line)) < 0) _exit(1);
    }
}

/* ---- R ------------------------------------------------------------------------------------------ */

static int read_report(char *line, size_t size) { return read_report_line(rep[0], line, size, REPORT_MS); }

static void root_setup(void) {
    int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (f < 0 || write(f, "0123456789abcdef", 16) != 16 || lseek(f, 5, SEEK_SET) != 5) die(path);
    int p[2];
    if (pipe(p) || write(p[1], "pipe-data", 9) != 9) die("pipe");
    pw = p[1];
    efd = eventfd(7, EFD_NONBLOCK);
    if (efd < 0) die("eventfd");
    int two[2] = {p[0], efd};
    unsigned char data[STREAM_TOTAL];
    for (size_t i = 0; i < STREAM_TOTAL; i++) data[i] = stream_byte(i);
    for (int i = 0; i < 2; i++) {
        int s = i ? s2[0] : s1[0];
        send_fds(s, data, 100, NULL, 0, "send (a)");
        send_fds(s, data + 100, 10, &f, 1, "send (b)");
        send_fds(s, data + 110, 50, NULL, 0, "send (c)");
        send_fds(s, data + 160, 3, two, 2, "send (d)");
    }
    close(f);
    close(p[0]);
    int xy[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, xy) || write(xy[1], "to-x", 4) != 4) die("socketpair X, Y");
    y = xy[1];
    send_fds(dg[0], "m1", 2, NULL, 0, "send m1");
    send_fds(dg[0], "m2", 2, &xy[0], 1, "send m2");
    send_fds(dg[0], "m3", 2, NULL, 0, "send m3");
    close(xy[0]);
}

/* The counter of R's eventfd, from /proc/self/fdinfo (read without taking it). */
static long long eventfd_count(void) {
    char p[64], line[256];
    snprintf(p, sizeof p, "/proc/self/fdinfo/%d", efd);
    FILE *fi = fopen(p, "r");
    long long v = -1;
    if (!fi) return -1;
    while (fgets(line, sizeof line, fi))
        if (sscanf(line, "eventfd-count: %llx", &v) == 1) break;
    fclose(fi);
    return v;
}

static void check_seqpacket(void) {
    int fds[MAXFDS], nf = 0;
    ssize_t r = recv_fds(sq[0], buf, sizeof buf, MSG_DONTWAIT, fds, &nf, "seqpacket");
    if (r < 0) { fail("seqpacket: %s", strerror(errno)); return; }
    if (r != 6 || memcmp(buf, "from-c", 6) || nf != 1) {
        fail("seqpacket: \"%.*s\" with %d fd(s), want \"from-c\" with 1", (int)r, buf, nf);
        return;
    }
    check_empty(sq[0], "seqpacket");
    int m = fds[0];
    if (strcmp(fd_link(m), "/memfd:scm-memfd (deleted)")) fail("memfd: fd is %s", fd_link(m));
    char got[32];
    ssize_t n = pread(m, got, sizeof got, 0);
    if (n != 11 || memcmp(got, "memfd-bytes", 11)) fail("memfd: holds %zd bytes \"%.*s\"", n, n > 0 ? (int)n : 0, got);
    off_t pos = lseek(m, 0, SEEK_CUR);
    if (pos != 11) fail("memfd: at offset %lld, not 11", (long long)pos);
}

static void root_round(void) {
    long long count = eventfd_count();
    if (count != 7) fail("R's eventfd counts %lld before C reads it, not 7", count);
    if (write(pw, "more", 4) != 4) fail("pipe: write \"more\": %s", strerror(errno));
    if (kill(child, SIGUSR1)) fail("kill C: %s", strerror(errno));
    check_seqpacket();
    char line[sizeof why + 64] = "";
    if (read_report(line, sizeof line)) { fail("C: no report"); return; }
    if (strcmp(line, "OK")) { fail("%s", line); return; }
    struct pollfd pfd = {.fd = y, .events = POLLIN};
    ssize_t r = poll(&pfd, 1, 3000) == 1 ? recv(y, buf, sizeof buf, MSG_DONTWAIT) : -1;
    if (r != 4 || memcmp(buf, "back", 4)) fail("Y: read %zd bytes, not \"back\" from X", r);
    else check_empty(y, "Y");
    uint64_t v = 0;
    if (read(efd, &v, 8) != 8 || v != 3)
        fail("R's eventfd: read %llu (%s), want the 3 C wrote into the eventfd it received",
             (unsigned long long)v, strerror(errno));
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: scm_rights DIR\n");
        return 2;
    }
    snprintf(path, sizeof path, "%s/scm_rights-%d.file", argv[1], (int)getpid());
    catch_usr1();
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, s1) || socketpair(AF_UNIX, SOCK_STREAM, 0, s2) ||
        socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq) || pipe(rep))
        die("socketpair");
    child = fork();
    if (child < 0) die("fork");
    if (child == 0) child_main();
    close(s1[1]); close(s2[1]); close(dg[1]); close(sq[1]); close(rep[1]);
    root_setup();
    char line[sizeof why + 64] = "";
    if (read_report(line, sizeof line) || strcmp(line, "up")) {
        printf("FAIL setup: child: %s\n", line);
        return 1;
    }
    printf("READY pids=%d,%d\n", (int)getpid(), (int)child);
    for (unsigned n = 1;; n++) {
        await_usr1();
        if (n > 1) {
            printf("FAIL round=%u: scm_rights has one round (its queues were read in round 1)\n", n);
            continue;
        }
        why[0] = 0;
        alarm(ROUND_ALARM);
        root_round();
        alarm(0);
        if (why[0]) printf("FAIL round=%u %s\n", n, why);
        else printf("PASS scm_rights\n");
    }
}
