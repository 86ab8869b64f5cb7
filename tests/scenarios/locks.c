/* locks: file locks of every kind held by a parent and its child, and processes blocked waiting for locks.
 *
 * usage: locks hold DIR | locks wait DIR | locks waitext FILE | locks holdone FILE
 *
 * hold: the parent opens DIR/data (1000 bytes) and takes POSIX locks on it: a write lock on bytes 0-9 and a
 *   read lock from byte 500 to EOF (asked as SEEK_END -500, length 0); an OFD write lock on bytes 200-209
 *   through a second open of it; an exclusive flock on DIR/flock; a read lease on DIR/lease and a write
 *   lease on DIR/wlease (its only open file).  Then it forks a child, which inherits the open files (the OFD lock, the flock and the leases are the open files', so
 *   the child has them too) and takes its own: a POSIX write lock on 300-309 through the inherited
 *   descriptor, and an OFD read lock on 400-409 through its own open of DIR/data.
 *   Prints "READY pids=PARENT,CHILD".  On SIGUSR1 a new process (forked: no lock is inherited) checks with
 *   F_GETLK / F_OFD_GETLK that each range is held by the right owner and type, that no other range is, that
 *   F_SETLK of a held range is refused while a free one is granted, and that flock(LOCK_NB) is refused; the
 *   parent checks F_GETLEASE and the leased files' owner (itself, as F_SETLEASE made it), and each
 *   process that its descriptors are where they were.  "PASS" or "FAIL why".
 *
 * wait: the parent holds a POSIX write lock on DIR/data bytes 0-9 and an exclusive flock on DIR/flock (its
 *   own open); child 1 waits in F_SETLKW for bytes 0-9, child 2 in flock(LOCK_EX) on its own open of
 *   DIR/flock.  Prints "READY pids=PARENT,CHILD1,CHILD2" (the test waits until both are blocked).  On SIGUSR1
 *   the parent checks (from a forked process) that it still holds both locks and that neither child has
 *   reported getting one, releases the POSIX lock, waits for child 1's "got", checks that child 1 holds the
 *   range now, then releases the flock and waits for child 2's "got".  "PASS" or "FAIL why".
 *
 * holdone: holds a POSIX write lock on FILE bytes 0-9 (a holder outside a dumped tree); prints
 *   "READY pid=P", releases it on SIGUSR1 and prints "RELEASED".
 *
 * waitext: waits in F_SETLKW for a write lock on FILE bytes 0-9 (held by a `holdone`, outside the tree),
 *   then prints "GOT" and checks with F_GETLK from a forked process that it holds it: "PASS" or "FAIL why".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>

#include "verdict.h"

static int lk(int fd, int cmd, short type, short whence, off_t start, off_t len) {
    struct flock fl = {.l_type = type, .l_whence = whence, .l_start = start, .l_len = len};
    return fcntl(fd, cmd, &fl);
}

/* F_GETLK / F_OFD_GETLK of a write request on [start, start+len): the conflicting lock, if any */
static struct flock probe(int fd, int cmd, off_t start, off_t len) {
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    if (fcntl(fd, cmd, &fl)) { fl.l_type = -1; fl.l_pid = -errno; }
    return fl;
}

static void expect_lock(int fd, int cmd, off_t start, off_t len, short type, pid_t pid, const char *what) {
    struct flock fl = probe(fd, cmd, start, len);
    if (fl.l_type != type || (type != F_UNLCK && (fl.l_pid != pid || fl.l_start != start || fl.l_len != len)))
        fail("%s: F_GETLK says type %d pid %d %lld+%lld, want type %d pid %d %lld+%lld", what, fl.l_type,
             fl.l_pid, (long long)fl.l_start, (long long)fl.l_len, type, pid, (long long)start, (long long)len);
}

/* Run fn in a new process (it holds no lock of ours); its failures come back through a pipe. */
static void from_outside(void (*fn)(const char *, pid_t, pid_t), const char *dir, pid_t a, pid_t b) {
    int p[2];
    if (pipe(p)) die("pipe");
    pid_t c = fork();
    if (c < 0) die("fork");
    if (c == 0) {
        close(p[0]);
        why[0] = 0;
        fn(dir, a, b);
        if (write(p[1], why, strlen(why)) < 0) _exit(2);
        _exit(0);
    }
    close(p[1]);
    char buf[sizeof why] = {0};
    ssize_t n = 0, r;
    while ((r = read(p[0], buf + n, sizeof buf - 1 - n)) > 0) n += r;
    close(p[0]);
    waitpid(c, NULL, 0);
    if (n > 0) fail("%s", buf);
}

static int open_in(const char *dir, const char *name, int flags) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, flags | O_CLOEXEC, 0644);
    if (fd < 0) die(path);
    return fd;
}

static void check_held(const char *dir, pid_t parent, pid_t child) {
    int d = open_in(dir, "data", O_RDWR);
    expect_lock(d, F_GETLK, 0, 10, F_WRLCK, parent, "parent's write lock 0-9");
    expect_lock(d, F_GETLK, 500, 0, F_RDLCK, parent, "parent's read lock 500-EOF");
    expect_lock(d, F_GETLK, 300, 10, F_WRLCK, child, "child's write lock 300-309");
    expect_lock(d, F_OFD_GETLK, 200, 10, F_WRLCK, -1, "OFD write lock 200-209");
    expect_lock(d, F_OFD_GETLK, 400, 10, F_RDLCK, -1, "OFD read lock 400-409");
    expect_lock(d, F_GETLK, 10, 90, F_UNLCK, 0, "bytes 10-99 (free)");
    if (lk(d, F_SETLK, F_WRLCK, SEEK_SET, 0, 10) == 0 || (errno != EAGAIN && errno != EACCES))
        fail("a second process got the write lock on 0-9");
    if (lk(d, F_SETLK, F_RDLCK, SEEK_SET, 300, 1) == 0 || (errno != EAGAIN && errno != EACCES))
        fail("a second process got a read lock inside the child's write lock");
    if (lk(d, F_SETLK, F_WRLCK, SEEK_SET, 20, 10)) fail("the free range 20-29 is refused: %s", strerror(errno));
    if (lk(d, F_SETLK, F_RDLCK, SEEK_SET, 400, 10)) fail("a read lock beside the OFD read lock is refused");
    close(d);  /* drops this process's own locks */
    int f = open_in(dir, "flock", O_RDONLY);
    if (flock(f, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK) fail("a second process got the flock");
    close(f);
}

static void hold(const char *dir) {
    int d = open_in(dir, "data", O_RDWR | O_CREAT | O_TRUNC);
    char buf[1000];
    memset(buf, 'x', sizeof buf);
    if (write(d, buf, sizeof buf) != sizeof buf) die("write data");
    if (lk(d, F_SETLK, F_WRLCK, SEEK_SET, 0, 10)) die("posix write lock");
    if (lk(d, F_SETLK, F_RDLCK, SEEK_END, -500, 0)) die("posix read lock");
    int o = open_in(dir, "data", O_RDWR);
    if (lk(o, F_OFD_SETLK, F_WRLCK, SEEK_SET, 200, 10)) die("ofd write lock");
    int f = open_in(dir, "flock", O_RDWR | O_CREAT);
    if (flock(f, LOCK_EX | LOCK_NB)) die("flock");
    close(open_in(dir, "lease", O_WRONLY | O_CREAT | O_TRUNC));
    int l = open_in(dir, "lease", O_RDONLY);
    signal(SIGIO, SIG_IGN);  /* a lease break's notice (a test breaks it) must not end us */
    if (fcntl(l, F_SETLEASE, F_RDLCK)) die("lease");
    int wl = open_in(dir, "wlease", O_RDWR | O_CREAT | O_TRUNC);  /* its only open file: a write lease */
    if (fcntl(wl, F_SETLEASE, F_WRLCK)) die("write lease");
    catch_usr1();
    int up[2], down[2];
    if (pipe(up) || pipe(down)) die("pipe");
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        close(up[0]);
        close(down[1]);
        if (lk(d, F_SETLK, F_WRLCK, SEEK_SET, 300, 10)) die("child's posix lock");
        int co = open_in(dir, "data", O_RDONLY);
        if (lk(co, F_OFD_SETLK, F_RDLCK, SEEK_SET, 400, 10)) die("child's ofd lock");
        if (write(up[1], "R", 1) != 1) die("ready");
        char c;
        if (read(down[0], &c, 1) != 1) _exit(1);  /* after the restore: check my descriptors */
        why[0] = 0;
        if (fcntl(d, F_GETFD) < 0 || fcntl(o, F_GETFD) < 0 || fcntl(f, F_GETFD) < 0 || fcntl(co, F_GETFD) < 0)
            fail("child: a descriptor is gone");
        if (write(up[1], why[0] ? "F" : "P", 1) != 1) _exit(1);
        _exit(0);
    }
    close(up[1]);
    close(down[0]);
    char c;
    if (read(up[0], &c, 1) != 1) die("child ready");
    printf("READY pids=%d,%d\n", getpid(), child);
    fflush(stdout);
    await_usr1();
    why[0] = 0;
    from_outside(check_held, dir, getpid(), child);
    int lease = fcntl(l, F_GETLEASE);
    if (lease != F_RDLCK) fail("F_GETLEASE says %d, want F_RDLCK", lease);
    lease = fcntl(wl, F_GETLEASE);
    if (lease != F_WRLCK) fail("F_GETLEASE of DIR/wlease says %d, want F_WRLCK", lease);
    if (fcntl(l, F_GETOWN) != getpid() || fcntl(wl, F_GETOWN) != getpid()) fail("a leased file's owner changed");
    if (write(down[1], "C", 1) != 1 || read(up[0], &c, 1) != 1 || c != 'P') fail("the child's check failed");
    int st;
    waitpid(child, &st, 0);
    printf(why[0] ? "FAIL %s\n" : "PASS%s\n", why);
    fflush(stdout);
}

/* bytes 0-9 of DIR/data are write-locked by `holder`; with `flocked`, DIR/flock is locked too */
static void check_first_range(const char *dir, pid_t holder, pid_t flocked) {
    int d = open_in(dir, "data", O_RDWR);
    expect_lock(d, F_GETLK, 0, 10, F_WRLCK, holder, "the write lock on 0-9");
    close(d);
    if (!flocked) return;
    int f = open_in(dir, "flock", O_RDONLY);
    if (flock(f, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK) fail("the parent's flock is gone");
    close(f);
}

static void waiters(const char *dir) {
    int d = open_in(dir, "data", O_RDWR | O_CREAT | O_TRUNC);
    if (lk(d, F_SETLK, F_WRLCK, SEEK_SET, 0, 10)) die("posix write lock");
    int f = open_in(dir, "flock", O_RDWR | O_CREAT);
    if (flock(f, LOCK_EX | LOCK_NB)) die("flock");
    catch_usr1();
    int up[2];
    if (pipe(up)) die("pipe");
    pid_t kids[2];
    for (int i = 0; i < 2; i++) {
        kids[i] = fork();
        if (kids[i] < 0) die("fork");
        if (kids[i] == 0) {
            close(up[0]);
            close(d);
            close(f);
            int mine = open_in(dir, i == 0 ? "data" : "flock", O_RDWR);
            int r = i == 0 ? lk(mine, F_SETLKW, F_WRLCK, SEEK_SET, 0, 10) : flock(mine, LOCK_EX);
            if (write(up[1], r == 0 ? (i == 0 ? "1" : "2") : "E", 1) != 1) _exit(1);
            pause();  /* holding it until the parent ends us */
            _exit(0);
        }
    }
    close(up[1]);
    printf("READY pids=%d,%d,%d\n", getpid(), kids[0], kids[1]);
    fflush(stdout);
    await_usr1();
    why[0] = 0;
    struct pollfd pfd = {.fd = up[0], .events = POLLIN};
    if (poll(&pfd, 1, 0) != 0) fail("a child got its lock before it was released");
    from_outside(check_first_range, dir, getpid(), 1);
    char c = 0;
    if (lk(d, F_SETLK, F_UNLCK, SEEK_SET, 0, 10)) fail("unlock: %s", strerror(errno));
    if (poll(&pfd, 1, 60000) != 1 || read(up[0], &c, 1) != 1 || c != '1')
        fail("child 1 did not get the lock once released (%c)", c);
    from_outside(check_first_range, dir, kids[0], 0);
    if (flock(f, LOCK_UN)) fail("flock unlock: %s", strerror(errno));
    c = 0;
    if (poll(&pfd, 1, 60000) != 1 || read(up[0], &c, 1) != 1 || c != '2') fail("child 2 did not get the flock (%c)", c);
    for (int i = 0; i < 2; i++) {
        kill(kids[i], SIGKILL);
        waitpid(kids[i], NULL, 0);
    }
    printf(why[0] ? "FAIL %s\n" : "PASS%s\n", why);
    fflush(stdout);
}

static void check_mine(const char *file, pid_t me, pid_t unused) {
    (void)unused;
    int d = open(file, O_RDWR | O_CLOEXEC);
    if (d < 0) { fail("open %s: %s", file, strerror(errno)); return; }
    expect_lock(d, F_GETLK, 0, 10, F_WRLCK, me, "the write lock got after the wait");
    close(d);
}

static void wait_outside(const char *file) {
    int d = open(file, O_RDWR | O_CLOEXEC);
    if (d < 0) die("open");
    printf("READY pid=%d\n", getpid());
    fflush(stdout);
    if (lk(d, F_SETLKW, F_WRLCK, SEEK_SET, 0, 10)) die("F_SETLKW");
    printf("GOT\n");
    fflush(stdout);
    why[0] = 0;
    from_outside(check_mine, file, getpid(), 0);
    printf(why[0] ? "FAIL %s\n" : "PASS%s\n", why);
    fflush(stdout);
    pause();
}

static void hold_one(const char *file) {
    int d = open(file, O_RDWR | O_CLOEXEC);
    if (d < 0) die("open");
    if (lk(d, F_SETLK, F_WRLCK, SEEK_SET, 0, 10)) die("F_SETLK");
    catch_usr1();
    printf("READY pid=%d\n", getpid());
    fflush(stdout);
    await_usr1();
    if (lk(d, F_SETLK, F_UNLCK, SEEK_SET, 0, 10)) die("F_UNLCK");
    printf("RELEASED\n");
    fflush(stdout);
    pause();
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    if (!strcmp(argv[1], "hold")) hold(argv[2]);
    else if (!strcmp(argv[1], "wait")) waiters(argv[2]);
    else if (!strcmp(argv[1], "waitext")) wait_outside(argv[2]);
    else if (!strcmp(argv[1], "holdone")) hold_one(argv[2]);
    else return 2;
    return 0;
}
