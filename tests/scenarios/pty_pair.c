/* pty_pair: two pseudo-terminal pairs held inside the tree, one the controlling terminal of a session.
 *
 * The root (a session leader, as tests/targets.py starts it) opens pairs A and B (/dev/ptmx) and forks
 * the child, which setsid()s, opens slave A without O_NOCTTY (its controlling terminal), and slave B.
 *   A: canonical, ECHO on, VEOL '@', window 33x111 (5x7 pixels); the child's child, the grandchild,
 *      leads its own group, the terminal's foreground group (tcsetpgrp), and holds /dev/tty open.
 *   B: raw (cfmakeraw, VMIN 1), output speed 4800, window 44x132, slave exclusive (TIOCEXCL), packet
 *      mode on its master (set after the raw termios: no status byte is pending).
 * Left unread for the dump: on A, the child wrote "from-child\n" (the master reads it with ONLCR), then
 * the root wrote "line1\nline2@half": two lines (ended by \n and by VEOL) and a line being typed, all
 * echoed to the master; on B, the child wrote "raw-out\0\377" and the root "raw\003in\021".
 * Prints "READY pid=P child=C grandchild=G pts_a=N pts_b=M".
 * SIGUSR1 (once per copy: the round reads the queues): the root reads both masters and checks every
 * byte, B's packet mode, lock, window and termios; resizes A (the grandchild reports its SIGWINCH
 * through /dev/tty); asks the child (SIGUSR1), which checks its queues, session, terminal, foreground
 * group, takes the foreground, checks /dev/tty, A's termios and B's exclusive mode, reads the rest of
 * the typed line and answers through A.  Then "PASS pts_a=N pts_b=M" or "FAIL why".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>

#include "verdict.h"

static int ma, mb, sa, sb, tty_fd;
static pid_t child, grandchild;
static volatile sig_atomic_t winched;
static void on_winch(int sig) { (void)sig; winched = 1; }

static int pts_of(int master) {
    unsigned n;
    return ioctl(master, TIOCGPTN, &n) ? -1 : (int)n;
}

/* Exactly len bytes from fd within 10 s (a slow machine), else what came. */
static size_t read_n(int fd, char *buf, size_t len) {
    size_t got = 0;
    long deadline = now_ms() + 10000;
    while (got < len) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        long left = deadline - now_ms();
        if (left <= 0 || poll(&p, 1, (int)left) != 1) break;
        ssize_t n = read(fd, buf + got, len - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    return got;
}

static void expect_bytes(int fd, const char *what, const char *want, size_t len) {
    char buf[256];
    size_t got = read_n(fd, buf, len);
    if (got != len || memcmp(buf, want, len)) fail("%s: got %zu bytes '%.*s', wanted '%.*s'", what, got, (int)got, buf,
                                                    (int)len, want);
}

static void expect_nothing(int fd, const char *what) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) == 1) fail("%s: more bytes queued than expected", what);
}

static void grandchild_main(int sync) {
    signal(SIGWINCH, on_winch);
    setpgid(0, 0);
    tty_fd = open("/dev/tty", O_RDWR);  /* the controlling terminal, held across the dump */
    if (tty_fd < 0) die("open /dev/tty");
    if (write(sync, "g", 1) != 1) die("sync");
    close(sync);
    sigset_t none;
    sigemptyset(&none);
    for (;;) {
        while (!winched) sigsuspend(&none);
        winched = 0;
        struct winsize w;
        if (ioctl(tty_fd, TIOCGWINSZ, &w)) dprintf(tty_fd, "WINCH error\n");
        else dprintf(tty_fd, "WINCH %dx%d\n", w.ws_row, w.ws_col);
    }
}

static void child_round(void) {
    char buf[64];
    if (tcgetpgrp(sa) != grandchild) fail("child: foreground group %d, wanted %d", tcgetpgrp(sa), grandchild);
    if (tcsetpgrp(sa, getpgrp())) fail("child: tcsetpgrp: %s", strerror(errno));  /* to read without SIGTTIN */
    ssize_t n = read(sa, buf, sizeof buf);  /* canonical: one line a read */
    if (n != 6 || memcmp(buf, "line1\n", 6)) fail("child: first line '%.*s'", (int)(n > 0 ? n : 0), buf);
    n = read(sa, buf, sizeof buf);
    if (n != 6 || memcmp(buf, "line2@", 6)) fail("child: VEOL line '%.*s'", (int)(n > 0 ? n : 0), buf);
    n = read(sa, buf, sizeof buf);  /* the typed "half", finished by the root after the restore */
    if (n != 10 || memcmp(buf, "half-done\n", 10)) fail("child: typed line '%.*s'", (int)(n > 0 ? n : 0), buf);
    expect_bytes(sb, "child: slave B's input", "raw\003in\021", 8);
    if (getsid(0) != getpid()) fail("child: session %d", getsid(0));
    if (tcgetsid(sa) != getpid()) fail("child: slave A is the terminal of session %d", tcgetsid(sa));
    int t = open("/dev/tty", O_RDWR);  /* (its device is 5:0: that it leads our session tells it is ours) */
    if (t < 0) fail("child: open /dev/tty: %s", strerror(errno));
    else if (tcgetsid(t) != getpid()) fail("child: /dev/tty is the terminal of session %d", tcgetsid(t));
    if (t >= 0) close(t);
    struct termios ta;
    if (tcgetattr(sa, &ta)) fail("child: tcgetattr A");
    else if (!(ta.c_lflag & ICANON) || !(ta.c_lflag & ECHO) || ta.c_cc[VEOL] != '@') fail("child: A's termios");
    int excl = 0;
    if (ioctl(sb, TIOCGEXCL, &excl) || excl != 1) fail("child: slave B not exclusive");
    struct winsize w;
    if (ioctl(sa, TIOCGWINSZ, &w) || w.ws_row != 50 || w.ws_col != 100) fail("child: A's window");
    if (why[0]) dprintf(sa, "CHILD FAIL %s\n", why);
    else dprintf(sa, "CHILD PASS\n");
}

static void child_main(int sync) {
    setsid();
    char name[64];
    if (ptsname_r(ma, name, sizeof name)) die("ptsname A");
    sa = open(name, O_RDWR);  /* a session leader without a terminal: this one becomes it */
    if (sa < 0) die("open slave A");
    if (ptsname_r(mb, name, sizeof name)) die("ptsname B");
    sb = open(name, O_RDWR | O_NOCTTY);
    if (sb < 0) die("open slave B");
    close(ma);
    close(mb);
    struct termios t;
    tcgetattr(sa, &t);
    t.c_cc[VEOL] = '@';
    tcsetattr(sa, TCSANOW, &t);
    struct winsize wa = {.ws_row = 33, .ws_col = 111, .ws_xpixel = 5, .ws_ypixel = 7};
    ioctl(sa, TIOCSWINSZ, &wa);
    tcgetattr(sb, &t);
    cfmakeraw(&t);
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    cfsetospeed(&t, B4800);
    tcsetattr(sb, TCSANOW, &t);
    struct winsize wb = {.ws_row = 44, .ws_col = 132};
    ioctl(sb, TIOCSWINSZ, &wb);
    ioctl(sb, TIOCEXCL);
    int gsync[2];
    if (pipe(gsync)) die("pipe");
    grandchild = fork();
    if (grandchild < 0) die("fork");
    if (grandchild == 0) {
        close(gsync[0]);
        close(sync);  /* the root's: only the child answers it */
        grandchild_main(gsync[1]);
    }
    close(gsync[1]);
    setpgid(grandchild, grandchild);
    char c;
    if (read(gsync[0], &c, 1) != 1 || read(gsync[0], &c, 1) != 0) die("grandchild sync");
    close(gsync[0]);
    if (tcsetpgrp(sa, grandchild)) die("tcsetpgrp");
    signal(SIGTTOU, SIG_IGN);  /* a background group now: writing and tcgetattr stay allowed */
    if (write(sa, "from-child\n", 11) != 11) die("write A");
    if (write(sb, "raw-out\0\377", 9) != 9) die("write B");
    if (write(sync, &grandchild, sizeof grandchild) != sizeof grandchild) die("sync");
    close(sync);
    for (;;) {
        why[0] = 0;
        await_usr1();
        child_round();
    }
}

static int open_master(void) {
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || grantpt(m) || unlockpt(m)) die("posix_openpt");
    return m;
}

static void root_round(void) {
    expect_bytes(ma, "master A", "from-child\r\nline1\r\nline2@half", 29);
    expect_nothing(ma, "master A");
    expect_bytes(mb, "master B (packet mode)", "\0raw-out\0\377", 10);
    expect_nothing(mb, "master B");
    int v = -1;
    if (ioctl(mb, TIOCGPKT, &v) || v != 1) fail("B's packet mode %d", v);
    if (ioctl(ma, TIOCGPTLCK, &v) || v != 0) fail("A's lock %d", v);
    struct winsize w;
    if (ioctl(mb, TIOCGWINSZ, &w) || w.ws_row != 44 || w.ws_col != 132) fail("B's window");
    if (ioctl(ma, TIOCGWINSZ, &w) || w.ws_row != 33 || w.ws_col != 111 || w.ws_xpixel != 5 || w.ws_ypixel != 7)
        fail("A's window %dx%d", w.ws_row, w.ws_col);
    struct termios t;
    if (tcgetattr(mb, &t) || (t.c_lflag & (ICANON | ECHO)) || cfgetospeed(&t) != B4800 || t.c_cc[VMIN] != 1)
        fail("B's termios");
    struct winsize nw = {.ws_row = 50, .ws_col = 100};
    ioctl(ma, TIOCSWINSZ, &nw);  /* SIGWINCH to the foreground group: the grandchild */
    expect_bytes(ma, "the grandchild's SIGWINCH", "WINCH 50x100\r\n", 14);
    kill(child, SIGUSR1);
    if (write(ma, "-done\n", 6) != 6) fail("write master A");
    expect_bytes(ma, "the echo of the rest of the line", "-done\r\n", 7);
    char line[512];
    if (read_report_line(ma, line, sizeof line, 10000)) fail("no answer from the child");
    else if (strcmp(line, "CHILD PASS\r")) fail("%s", line);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    catch_usr1();
    ma = open_master();
    mb = open_master();
    int sync[2];
    if (pipe(sync)) die("pipe");
    child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        close(sync[0]);
        child_main(sync[1]);
    }
    close(sync[1]);
    if (read(sync[0], &grandchild, sizeof grandchild) != sizeof grandchild) die("child sync");
    char eof;
    if (read(sync[0], &eof, 1) != 0) die("child sync end");  /* every write end closed: no pipe is left */
    close(sync[0]);
    int one = 1;
    if (ioctl(mb, TIOCPKT, &one)) die("TIOCPKT");
    if (write(ma, "line1\nline2@half", 16) != 16 || write(mb, "raw\003in\021", 8) != 8) die("write masters");
    printf("READY pid=%d child=%d grandchild=%d pts_a=%d pts_b=%d\n", getpid(), child, grandchild, pts_of(ma),
           pts_of(mb));
    for (;;) {
        why[0] = 0;
        await_usr1();
        root_round();
        if (why[0]) printf("FAIL %s\n", why);
        else printf("PASS pts_a=%d pts_b=%d\n", pts_of(ma), pts_of(mb));
    }
}
