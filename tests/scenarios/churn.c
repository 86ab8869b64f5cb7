/* churn: threads appear and exit all the time — two spawner threads each create and
 * join a short-lived thread in a tight loop — and the process checks the results.
 *
 * usage: churn
 *
 * Each short-lived thread sums a 1 MiB pattern and returns the sum; its
 * spawner compares it with the known value.  The main thread prints every
 * 5 ms "PASS joined=N pid=P" (N: threads joined so far, never going back) or
 * "FAIL <why>".  Prints "READY" first.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define SIZE (1 << 20)
static unsigned char pattern[SIZE];
static uint64_t expected;
static volatile uint64_t joined, bad;

static void *worker(void *arg) {
    (void)arg;
    uint64_t sum = 0;
    for (size_t i = 0; i < SIZE; i += 64) sum += pattern[i];
    return (void *)(uintptr_t)sum;
}

static void *spawner(void *arg) {
    (void)arg;
    for (;;) {
        pthread_t t;
        void *ret;
        if (pthread_create(&t, NULL, worker, NULL)) { bad++; continue; }
        pthread_join(t, &ret);
        if ((uintptr_t)ret != expected) bad++;
        __atomic_add_fetch(&joined, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

int main(void) {
    for (size_t i = 0; i < SIZE; i++) pattern[i] = (unsigned char)(i * 13 + 5);
    for (size_t i = 0; i < SIZE; i += 64) expected += pattern[i];
    pthread_t s1, s2;
    pthread_create(&s1, NULL, spawner, NULL);
    pthread_create(&s2, NULL, spawner, NULL);
    printf("READY\n");
    fflush(stdout);
    uint64_t last = 0;
    for (;;) {
        usleep(5000);
        uint64_t now = joined;
        if (bad) printf("FAIL %lu wrong sums or failed pthread_create\n", (unsigned long)bad);
        else if (now < last) printf("FAIL joined went back from %lu to %lu\n", (unsigned long)last, (unsigned long)now);
        else printf("PASS joined=%lu pid=%d\n", (unsigned long)now, getpid());
        last = now;
        fflush(stdout);
    }
}
