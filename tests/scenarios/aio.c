/* aio: a target holding a native AIO context (io_setup) whose ring has been used.
 *
 * usage: aio FILE MODE
 *   MODE "used":     a context of 200 events in slot 1 (slot 0 freed again: io_setup, io_destroy), 5 reads
 *                    of FILE submitted and reaped (ring head = tail = 5)
 *   MODE "unreaped": the same, and one more read completed but never reaped (head != tail)
 *   MODE "forked":   the same as "used", and a child that inherited the ring's mapping (not the context)
 *   MODE "tree":     a child forked first sets up its own context the same way ("used"); SIGUSR1 to the parent
 *                    has the child check first ("PASS child head=H"), then the parent
 *   MODE "poll":     the same as "used", and an IOCB_CMD_POLL for POLLIN on stdin in flight (completes when
 *                    a byte comes); SIGUSR1 then reaps that event first ("PASS polled head=H")
 * Prints "READY pid=P ctx=0xADDR id=I nr=N head=H [child=C]".  SIGUSR1 checks that the ring's header is
 * as it was, submits a read and a write of FILE with the same context and reaps them, checks the bytes,
 * then io_destroy: "PASS head=H" or "FAIL why".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "verdict.h"

struct aio_ring { unsigned id, nr, head, tail, magic, compat_features, incompat_features, header_length; };

static long io_setup(unsigned nr, aio_context_t *ctx) { return syscall(SYS_io_setup, nr, ctx); }
static long io_destroy(aio_context_t ctx) { return syscall(SYS_io_destroy, ctx); }
static long io_submit(aio_context_t ctx, long n, struct iocb **iocbs) { return syscall(SYS_io_submit, ctx, n, iocbs); }
static long io_getevents(aio_context_t ctx, long min, long n, struct io_event *ev) {
    return syscall(SYS_io_getevents, ctx, min, n, ev, NULL);
}

static struct iocb cb(int fd, int op, void *buf, size_t n, off_t off, uint64_t data) {
    struct iocb c = {.aio_data = data, .aio_lio_opcode = op, .aio_fildes = fd, .aio_buf = (uintptr_t)buf,
                     .aio_nbytes = n, .aio_offset = off};
    return c;
}

/* Submit one request and reap its event (res is the byte count); -1 on a failure (recorded). */
static long one(aio_context_t ctx, struct iocb c, const char *what) {
    struct iocb *p = &c;
    struct io_event ev;
    if (io_submit(ctx, 1, &p) != 1) { fail("io_submit %s: %s", what, strerror(errno)); return -1; }
    if (io_getevents(ctx, 1, 1, &ev) != 1) { fail("io_getevents %s: %s", what, strerror(errno)); return -1; }
    if (ev.data != c.aio_data) { fail("%s: event data %llu", what, (unsigned long long)ev.data); return -1; }
    return ev.res;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: aio FILE used|unreaped|forked\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    catch_usr1();
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) die("open");
    char data[4096];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (char)('a' + i % 26);
    if (write(fd, data, sizeof data) != (ssize_t)sizeof data) die("write");

    pid_t sibling = 0;  /* "tree": a child made first, which sets up a context of its own the same way */
    int ready[2] = {-1, -1};
    if (!strcmp(argv[2], "tree")) {
        if (pipe(ready)) die("pipe");
        if ((sibling = fork()) < 0) die("fork");
    }
    int in_child = ready[0] >= 0 && sibling == 0;
    aio_context_t gone = 0, ctx = 0;
    if (io_setup(1, &gone) || io_setup(200, &ctx)) die("io_setup");
    if (io_destroy(gone)) die("io_destroy");  /* slot 0 free again: ctx stays in slot 1 */
    char buf[64];
    for (int i = 0; i < 5; i++)
        if (one(ctx, cb(fd, IOCB_CMD_PREAD, buf, sizeof buf, i * 64, i + 1), "setup read") != sizeof buf) die("read");
    if (why[0]) { printf("FAIL setup: %s\n", why); return 1; }
    if (!strcmp(argv[2], "unreaped")) {
        struct iocb c = cb(fd, IOCB_CMD_PREAD, buf, sizeof buf, 0, 99), *p = &c;
        if (io_submit(ctx, 1, &p) != 1) die("io_submit");
    }
    int polling = !strcmp(argv[2], "poll");
    if (polling) {
        struct iocb c = cb(0, IOCB_CMD_POLL, NULL, 0, 0, 42), *p = &c;
        c.aio_buf = POLLIN;
        if (io_submit(ctx, 1, &p) != 1) die("io_submit poll");
    }
    pid_t child = 0;
    if (!strcmp(argv[2], "forked")) {
        child = fork();
        if (child < 0) die("fork");
        if (child == 0) { for (;;) pause(); }
    }
    struct aio_ring *ring = (struct aio_ring *)ctx, before = *ring;
    if (!strcmp(argv[2], "unreaped"))  /* the read completes in io_submit (buffered): wait all the same */
        while (ring->tail == ring->head) usleep(1000);
    char byte = 0;
    if (in_child && write(ready[1], &byte, 1) != 1) die("write ready");
    if (sibling && read(ready[0], &byte, 1) != 1) die("read ready");
    if (!in_child) printf("READY pid=%d ctx=%#llx id=%u nr=%u head=%u", getpid(), (unsigned long long)ctx, before.id, before.nr,
           before.head);
    if (child || sibling) printf(" child=%d", child ? child : sibling);
    if (!in_child) printf("\n");

    for (;;) {
        await_usr1();
        why[0] = 0;
        if (sibling) { kill(sibling, SIGUSR1); waitpid(sibling, NULL, 0); }  /* its line first */
        if (polling) {
            struct io_event ev;
            if (io_getevents(ctx, 1, 1, &ev) != 1 || ev.data != 42 || !(ev.res & POLLIN)) fail("the poll's event");
            before.head = before.tail = ring->head;
        }
        struct aio_ring now = *ring;
        if (memcmp(&now, &before, sizeof now))
            fail("ring header id %u nr %u head %u tail %u magic %#x (was id %u nr %u head %u tail %u)", now.id,
                 now.nr, now.head, now.tail, now.magic, before.id, before.nr, before.head, before.tail);
        char out[64] = "written through the restored AIO context";
        if (one(ctx, cb(fd, IOCB_CMD_PWRITE, out, sizeof out, 1000, 7), "write") != sizeof out) fail("short write");
        memset(buf, 0, sizeof buf);
        if (one(ctx, cb(fd, IOCB_CMD_PREAD, buf, sizeof buf, 1000, 8), "read") != sizeof buf) fail("short read");
        if (memcmp(buf, out, sizeof out)) fail("read back other bytes");
        if (one(ctx, cb(fd, IOCB_CMD_PREAD, buf, 26, 0, 9), "read 2") != 26 || memcmp(buf, data, 26))
            fail("the file's first bytes differ");
        unsigned head = ring->head;
        if (head != (before.head + 3) % before.nr || ring->tail != head) fail("ring head %u tail %u", head, ring->tail);
        if (io_destroy(ctx)) fail("io_destroy: %s", strerror(errno));
        if (why[0]) printf("FAIL %s\n", why);
        else printf("PASS %s%shead=%u\n", in_child ? "child " : "", polling ? "polled " : "", head);
        if (child) { kill(child, SIGKILL); waitpid(child, NULL, 0); }
        return 0;
    }
}
