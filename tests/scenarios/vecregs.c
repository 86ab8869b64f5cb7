/* vecregs: keeps a pattern in the widest vector registers this CPU has (vecregs.h) while it spins.
 *
 * Prints "READY vec=KIND" (xmm, ymm or zmm) once set up; the pattern is byte i = 0x40 + i over the kind's
 * vec_bytes.  On each SIGUSR1 prints "VEC=<hex>" of the registers as read back, then holds those bytes
 * again.  The registers are loaded, held and read inside one asm statement, so nothing — neither compiled
 * code nor libc — can change them between the tracer's view and ours.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>

#include "vecregs.h"

static volatile sig_atomic_t dump_requested;
static void on_usr1(int sig) { (void)sig; dump_requested = 1; }

int main(void) {
    enum vec_kind kind = vec_detect();
    struct vec_regs pat = {0}, out = {0};
    for (unsigned i = 0; i < vec_bytes[kind]; i++) pat.v[i] = (unsigned char)(0x40 + i);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    printf("READY vec=%s\n", vec_name[kind]);
    fflush(stdout);
    for (;;) {
        vec_hold(kind, &pat, &out, UINT64_MAX, &dump_requested);
        dump_requested = 0;
        printf("VEC=");
        for (unsigned i = 0; i < vec_bytes[kind]; i++) printf("%02x", out.v[i]);
        printf("\n");
        fflush(stdout);
        pat = out;
    }
}
