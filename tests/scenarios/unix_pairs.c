/* unix_pairs: unix socketpairs between two processes and inside each, with data queued both ways.
 *
 * usage: unix_pairs [NAME]
 *
 * The root R forks a child C.  For each type T of stream, dgram and seqpacket,
 * a socketpair joins R and C (R keeps end 0, C end 1); R also holds both ends
 * of a dgram pair, C both ends of a stream pair.  On every pair, each side
 * sends its round's data to the other — stream: writes of 5000, 1 and 70000
 * bytes; dgram/seqpacket: messages of 100, 0, 1, 3000 and 60000 bytes (a
 * zero-length one among them) — and then the receiving side consumes the first
 * 10 bytes (stream) or the first message, so data is left unread at both ends
 * of every pair, from the middle of a stream.  With NAME, R also connects a
 * stream socket to the abstract name @NAME (a listener of the test, outside
 * the tree) and sends "hello" on it.
 *
 * READY pids=R,C once all is queued.  Each SIGUSR1 to R runs a round N = 1, 2,
 * ...: R sends SIGUSR1 to C; each process checks that each of its pair ends
 * holds exactly what is left of the data sent to it (contents, message
 * boundaries, nothing more), C tells R it has checked, then R and C exchange a new message both ways on
 * every cross pair (and each process on its own pair), and every pair is filled
 * again as at READY (so a dump after the line finds the same state).  C reports
 * "OK" or "FAIL why" through a pipe; R prints
 *     "PASS unix_pairs round=N ext=E"   or   "FAIL round=N why; ..."
 * where E is "none" (no NAME), "open" (the socket to @NAME is still connected:
 * nothing to read, a write goes through) or "closed" (reads give EOF, writes
 * EPIPE: restored with --ext-unix-close).
 * C exits when R is gone (its stream end hangs up); tests kill both anyway.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "verdict.h"

#define NTYPES 3
#define REPORT_MS 5000
static const int types[NTYPES] = {SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET};
static const char *const tname[NTYPES] = {"stream", "dgram", "seqpacket"};
static const size_t stream_writes[] = {5000, 1, 70000};
static const size_t msg_sizes[] = {100, 0, 1, 3000, 60000};
#define NWRITES (sizeof stream_writes / sizeof *stream_writes)
#define NMSGS (sizeof msg_sizes / sizeof *msg_sizes)
#define STREAM_SKIP 10
#define BIG 70001

/* Directions (who sends), for the contents: R->C, C->R, and each process's own pair. */
enum { FROM_R, FROM_C, IN_R_A, IN_R_B, IN_C_A, IN_C_B };

static int xp[NTYPES][2];      /* cross pairs: [0] in R, [1] in C */
static int rpair[2], cpair[2]; /* R's own dgram pair, C's own stream pair */
static int rep[2];             /* C -> R reports */
static int ext = -1;           /* R's socket to @NAME */
static int is_child;
static pid_t child;
static unsigned round_no;
static unsigned char buf[BIG];





/* Byte i of piece k (a write or a message) sent in direction dir on pair type t, round r. */
static unsigned char byte_of(int dir, int t, int k, size_t i, unsigned r) {
    return (unsigned char)(dir * 71 + t * 29 + k * 13 + r * 101 + i * 7 + (i >> 9));
}

static size_t piece_len(int t, int k) { return types[t] == SOCK_STREAM ? stream_writes[k] : msg_sizes[k]; }
static int npieces(int t) { return types[t] == SOCK_STREAM ? (int)NWRITES : (int)NMSGS; }

/* Send this round's pieces on fd (blocking), then consume the first 10 bytes / first message of what the
 * other side sent to us on rfd (it is there once the peer has sent, which both do first). */
static void send_round(int fd, int dir, int t) {
    for (int k = 0; k < npieces(t); k++) {
        size_t n = piece_len(t, k);
        for (size_t i = 0; i < n; i++) buf[i] = byte_of(dir, t, k, i, round_no);
        ssize_t got = send(fd, buf, n, 0);
        if (got != (ssize_t)n) fail("%s send %d: %zd (%s)", tname[t], k, got, got < 0 ? strerror(errno) : "short");
    }
}

static void consume_first(int fd, int t) {
    ssize_t got = recv(fd, buf, types[t] == SOCK_STREAM ? STREAM_SKIP : BIG, MSG_WAITALL);
    size_t wantn = types[t] == SOCK_STREAM ? STREAM_SKIP : msg_sizes[0];
    if (got != (ssize_t)wantn) fail("%s consume first: %zd (%s)", tname[t], got, got < 0 ? strerror(errno) : "short");
}

/* What fd must hold: the pieces sent in direction dir, minus what was consumed, exactly. */
static void check_left(int fd, int dir, int t, const char *what) {
    if (types[t] == SOCK_STREAM) {
        size_t total = 0;
        for (int k = 0; k < npieces(t); k++) total += piece_len(t, k);
        size_t pos = 0, off = STREAM_SKIP;  /* pos: bytes checked, from the stream's offset STREAM_SKIP */
        while (off < total) {
            ssize_t got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (got <= 0) { fail("%s: %zu of %zu bytes, then %s", what, pos, total - STREAM_SKIP, got ? strerror(errno) : "EOF"); return; }
            ssize_t j = 0;
            for (; j < got && off < total; j++, off++, pos++) {
                size_t o = off; int k = 0;
                while (o >= stream_writes[k]) o -= stream_writes[k++];
                if (buf[j] != byte_of(dir, t, k, o, round_no)) { fail("%s: byte %zu differs", what, off); return; }
            }
            if (j < got) { fail("%s: %zd bytes more than sent", what, got - j); return; }
        }
    } else {
        for (int k = 1; k < npieces(t); k++) {
            ssize_t got = recv(fd, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
            if (got < 0) { fail("%s: message %d: %s", what, k, strerror(errno)); return; }
            if ((size_t)got != msg_sizes[k]) { fail("%s: message %d is %zd bytes, want %zu", what, k, got, msg_sizes[k]); return; }
            for (size_t i = 0; i < msg_sizes[k]; i++)
                if (buf[i] != byte_of(dir, t, k, i, round_no)) { fail("%s: message %d byte %zu differs", what, k, i); return; }
        }
    }
    ssize_t more = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (more >= 0 || errno != EAGAIN) fail("%s: more queued than sent (%zd)", what, more);
}

/* A new message from a to b, received and checked (b is blocking; it arrives at once or never). */
static void exchange(int a, int b, int t, const char *what) {
    char msg[64], got[64];
    int n = snprintf(msg, sizeof msg, "hello %s round %u from %d", what, round_no, (int)getpid());
    if (send(a, msg, n, 0) != n) { fail("%s: send: %s", what, strerror(errno)); return; }
    struct pollfd pfd = {.fd = b, .events = POLLIN};
    if (poll(&pfd, 1, 2000) != 1) { fail("%s: nothing arrived", what); return; }
    ssize_t r = recv(b, got, types[t] == SOCK_STREAM ? (size_t)n : sizeof got, types[t] == SOCK_STREAM ? MSG_WAITALL : 0);
    if (r != n || memcmp(got, msg, n)) fail("%s: got %zd bytes, not the message", what, r);
}

static void fill_own_pair(void) {  /* both directions of this process's own pair */
    int *p = is_child ? cpair : rpair, t = is_child ? 0 : 1, a = is_child ? IN_C_A : IN_R_A;
    send_round(p[0], a, t);
    send_round(p[1], a + 1, t);
    consume_first(p[1], t);
    consume_first(p[0], t);
}

static void fill_cross(void) {
    for (int t = 0; t < NTYPES; t++) send_round(xp[t][is_child], is_child ? FROM_C : FROM_R, t);
    for (int t = 0; t < NTYPES; t++) consume_first(xp[t][is_child], t);
}

static void check_all(void) {
    char what[64];
    for (int t = 0; t < NTYPES; t++) {
        snprintf(what, sizeof what, "%s %s", is_child ? "C" : "R", tname[t]);
        check_left(xp[t][is_child], is_child ? FROM_R : FROM_C, t, what);
    }
    int *p = is_child ? cpair : rpair, t = is_child ? 0 : 1, a = is_child ? IN_C_A : IN_R_A;
    check_left(p[1], a, t, is_child ? "C's own pair, end 1" : "R's own pair, end 1");
    check_left(p[0], a + 1, t, is_child ? "C's own pair, end 0" : "R's own pair, end 0");
    exchange(p[0], p[1], t, "own pair 0->1");
    exchange(p[1], p[0], t, "own pair 1->0");
}

/* Cross exchange: R pings on each cross pair, C answers; both sides check. */
static void cross_exchange(void) {
    for (int t = 0; t < NTYPES; t++) {
        char msg[64], got[64];
        int fd = xp[t][is_child];
        int n = snprintf(msg, sizeof msg, "%s %s round %u", is_child ? "pong" : "ping", tname[t], round_no);
        char other[64];
        int on = snprintf(other, sizeof other, "%s %s round %u", is_child ? "ping" : "pong", tname[t], round_no);
        if (!is_child && send(fd, msg, n, 0) != n) fail("R %s: ping: %s", tname[t], strerror(errno));
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 2000) != 1) { fail("%s %s: no %s", is_child ? "C" : "R", tname[t], is_child ? "ping" : "pong"); continue; }
        ssize_t r = recv(fd, got, on, types[t] == SOCK_STREAM ? MSG_WAITALL : 0);
        if (r != on || memcmp(got, other, on)) fail("%s %s: got %zd bytes, not \"%s\"", is_child ? "C" : "R", tname[t], r, other);
        if (is_child && send(fd, msg, n, 0) != n) fail("C %s: pong: %s", tname[t], strerror(errno));
    }
}

static int read_report(char *line, size_t size);

static void round_body(void) {
    check_all();
    /* The pings must not reach a queue before its check has read it: C says when it has checked. */
    if (is_child) {
        if (write(rep[1], "checked\n", 8) != 8) _exit(1);
    } else {
        char line[64];
        if (read_report(line, sizeof line) || strcmp(line, "checked")) fail("C did not check");
    }
    cross_exchange();
    round_no++;
    fill_own_pair();
    fill_cross();
}

static void child_main(void) {
    is_child = 1;
    for (int t = 0; t < NTYPES; t++) close(xp[t][0]);
    close(rpair[0]);
    close(rpair[1]);
    close(rep[0]);
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, cpair)) die("socketpair");
    fill_own_pair();
    fill_cross();
    char line[sizeof why + 16];
    snprintf(line, sizeof line, why[0] ? "FAIL C setup: %s\n" : "up\n", why);
    if (write(rep[1], line, strlen(line)) < 0) _exit(1);
    for (;;) {
        await_usr1_or_hangup(xp[0][1]);  /* it hangs up: R is gone */
        why[0] = 0;
        round_body();
        snprintf(line, sizeof line, why[0] ? "FAIL C: %s\n" : "OK\n", why);
        if (write(rep[1], line, strlen(line)) < 0) _exit(1);
    }
}

static const char *ext_state(void) {
    if (ext < 0) return "none";
    char c;
    ssize_t r = recv(ext, &c, 1, MSG_DONTWAIT);
    if (r > 0) { fail("ext: unexpected data"); return "bad"; }
    if (r < 0 && errno == EAGAIN) {
        if (send(ext, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1) { fail("ext: write: %s", strerror(errno)); return "bad"; }
        return "open";
    }
    if (r < 0) { fail("ext: read: %s", strerror(errno)); return "bad"; }
    if (send(ext, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0 || errno != EPIPE) { fail("ext: EOF but write %s", strerror(errno)); return "bad"; }
    return "closed";
}

static int read_report(char *line, size_t size) { return read_report_line(rep[0], line, size, REPORT_MS); }

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    catch_usr1();
    for (int t = 0; t < NTYPES; t++)
        if (socketpair(AF_UNIX, types[t], 0, xp[t])) die("socketpair");
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, rpair) || pipe(rep)) die("socketpair");
    if (argc > 1) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        size_t n = strlen(argv[1]);
        memcpy(sun.sun_path + 1, argv[1], n);
        ext = socket(AF_UNIX, SOCK_STREAM, 0);
        if (ext < 0 || connect(ext, (struct sockaddr *)&sun, sizeof(sa_family_t) + 1 + n)) die("connect @NAME");
        if (send(ext, "hello", 5, 0) != 5) die("send @NAME");
    }
    child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        if (ext >= 0) close(ext);
        child_main();
    }
    for (int t = 0; t < NTYPES; t++) close(xp[t][1]);
    close(rep[1]);
    fill_own_pair();
    fill_cross();
    char line[sizeof why + 64];
    if (read_report(line, sizeof line) || strcmp(line, "up")) {
        printf("FAIL setup: child: %s\n", line);
        return 1;
    }
    if (why[0]) {
        printf("FAIL setup: %s\n", why);
        return 1;
    }
    printf("READY pids=%d,%d\n", (int)getpid(), (int)child);
    for (unsigned n = 1;; n++) {
        await_usr1();
        why[0] = 0;
        if (kill(child, SIGUSR1)) fail("kill C: %s", strerror(errno));
        round_body();
        const char *e = ext_state();
        if (read_report(line, sizeof line)) fail("C: no report");
        else if (strcmp(line, "OK")) fail("%s", line);
        if (why[0]) printf("FAIL round=%u %s\n", n, why);
        else printf("PASS unix_pairs round=%u ext=%s\n", n, e);
    }
}
