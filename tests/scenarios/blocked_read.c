/* blocked_read: a thread blocked in read(2) on stdin (a pipe from the test).
 *
 * usage: blocked_read main|thread MESSAGE
 * The reader prints "READY reader=TID" and reads exactly strlen(MESSAGE)
 * bytes; any error (EINTR included) or a mismatch prints FAIL, else PASS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char *expected;

static void *reader(void *arg) {
    (void)arg;
    size_t want = strlen(expected), got = 0;
    char buf[4096];
    if (want >= sizeof buf) { printf("FAIL message too long\n"); return NULL; }
    printf("READY reader=%d\n", gettid());
    fflush(stdout);
    while (got < want) {
        ssize_t n = read(0, buf + got, want - got);
        if (n < 0) { printf("FAIL read: %s (errno %d)\n", strerror(errno), errno); fflush(stdout); return NULL; }
        if (n == 0) { printf("FAIL early EOF after %zu bytes\n", got); fflush(stdout); return NULL; }
        got += (size_t)n;
    }
    if (memcmp(buf, expected, want) == 0) printf("PASS\n");
    else printf("FAIL got %.*s\n", (int)want, buf);
    fflush(stdout);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    expected = argv[2];
    if (strcmp(argv[1], "main") == 0) {
        reader(NULL);
    } else {
        pthread_t t;
        pthread_create(&t, NULL, reader, NULL);
        pthread_join(t, NULL);
    }
    return 0;
}
