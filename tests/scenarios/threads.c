/* threads: the thread count keeps changing — short-lived threads are created
 * and exit all the time, next to NSTABLE long-lived busy threads.
 *
 * usage: threads NSTABLE
 * Prints "READY counter=ADDR"; *counter grows while the process runs.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static volatile uint64_t counter;

static void *short_lived(void *arg) { (void)arg; for (int i = 0; i < 1000; i++) counter++; return NULL; }
static void *busy(void *arg) { (void)arg; for (;;) counter++; return NULL; }

int main(int argc, char **argv) {
    int nstable = argc > 1 ? atoi(argv[1]) : 1;
    for (int i = 0; i < nstable; i++) {
        pthread_t t;
        pthread_create(&t, NULL, busy, NULL);
    }
    printf("READY counter=%p\n", (void *)&counter);
    fflush(stdout);
    for (;;) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, short_lived, NULL);
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    }
}
