/* procattrs: process and thread attributes set through /proc and prctl/membarrier, each checked after a restore.
 *
 * usage: procattrs
 * The process writes its audit loginuid (1234: settable once, unprivileged, while unset), registers for
 * every private expedited membarrier command the kernel has, turns on KSM merge-any (PR_SET_MEMORY_MERGE)
 * and MDWE (PR_SET_MDWE, REFUSE_EXEC_GAIN) where the kernel has them (6.4, 6.3: EINVAL before); thread "tsc"
 * sets PR_TSC_SIGSEGV and thread "mce" PR_MCE_KILL early.  Prints "READY membarrier=M merge=0|1 mdwe=0|1" (what
 * it set); on SIGUSR1 it checks each (the threads ask for their own) and prints "PASS" or
 * "FAIL why".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include "verdict.h"

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif
#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif

static const int probes[3][2] = {
    {MEMBARRIER_CMD_PRIVATE_EXPEDITED, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED},
    {MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE},
    {MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ},
};
static volatile int ask[2], answer[2];
static pthread_barrier_t ready;

static long mb(int cmd) { return syscall(SYS_membarrier, cmd, 0, 0); }

static int own(int i) {  /* what thread i asks of itself */
    if (i == 0) { int v = -1; prctl(PR_GET_TSC, &v, 0, 0, 0); return v; }
    return prctl(PR_MCE_KILL_GET, 0, 0, 0, 0);
}

static void *run(void *arg) {
    int i = (int)(long)arg;
    if (i == 0 && prctl(PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0)) die("PR_SET_TSC");
    if (i == 1 && prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0)) die("PR_MCE_KILL");
    pthread_barrier_wait(&ready);
    for (;;) {  /* no clock: with PR_TSC_SIGSEGV the vDSO's rdtsc would fault */
        if (__atomic_load_n(&ask[i], __ATOMIC_SEQ_CST) == 1) {
            answer[i] = own(i);
            __atomic_store_n(&ask[i], 2, __ATOMIC_SEQ_CST);
        }
        syscall(SYS_sched_yield);
    }
    return NULL;
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    int fd = open("/proc/self/loginuid", O_WRONLY);
    if (fd < 0 || write(fd, "1234", 4) != 4) die("write /proc/self/loginuid");
    close(fd);
    long have = mb(MEMBARRIER_CMD_QUERY);
    int registered = 0;
    for (int i = 0; i < 3; i++)
        if (have > 0 && (have & probes[i][1])) {
            if (mb(probes[i][1])) die("membarrier register");
            registered |= 1 << i;
        }
    int merge = prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) == 0;
    if (!merge && errno != EINVAL) die("PR_SET_MEMORY_MERGE");
    pthread_barrier_init(&ready, NULL, 3);
    sigset_t usr1;  /* the threads block SIGUSR1: it must reach the main thread, waiting in pause() */
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    pthread_t t;
    for (long i = 0; i < 2; i++)
        if (pthread_create(&t, NULL, run, (void *)i)) die("pthread_create");
    pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
    pthread_barrier_wait(&ready);
    int mdwe = prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0;
    if (!mdwe && errno != EINVAL) die("PR_SET_MDWE");
    printf("READY membarrier=%d merge=%d mdwe=%d\n", registered, merge, mdwe);
    fflush(stdout);
    while (!got_usr1) pause();

    char buf[32] = {0};
    fd = open("/proc/self/loginuid", O_RDONLY);
    if (fd < 0 || read(fd, buf, sizeof buf - 1) <= 0) fail("read loginuid: %s", strerror(errno));
    else if (strcmp(buf, "1234")) fail("loginuid %s", buf);
    if (fd >= 0) close(fd);
    for (int i = 0; i < 3; i++) {
        long r = mb(probes[i][0]);
        if ((registered >> i & 1) != (r == 0)) fail("membarrier %#x answers %ld", probes[i][0], r);
    }
    if (merge && prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) != 1) fail("memory merge off");
    if (mdwe && prctl(PR_GET_MDWE, 0, 0, 0, 0) != PR_MDWE_REFUSE_EXEC_GAIN) fail("MDWE %d", prctl(PR_GET_MDWE, 0, 0, 0, 0));
    for (int i = 0; i < 2; i++) {
        ask[i] = 1;
        while (__atomic_load_n(&ask[i], __ATOMIC_SEQ_CST) != 2) usleep(1000);
    }
    if (answer[0] != PR_TSC_SIGSEGV) fail("tsc thread: PR_GET_TSC %d", answer[0]);
    if (answer[1] != PR_MCE_KILL_EARLY) fail("mce thread: PR_MCE_KILL_GET %d", answer[1]);
    printf(why[0] ? "FAIL %s\n" : "PASS%s\n", why);
    fflush(stdout);
    return 0;
}
