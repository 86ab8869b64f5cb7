// cflags: -mavx512f
/* avx512: keeps a pattern in %zmm16 (AVX-512-only state) while spinning.
 *
 * Prints "READY" once the pattern is loaded; on SIGUSR1 prints
 * "ZMM16=<64 bytes hex>" read back from the register.  Nothing in the loop
 * calls libc, whose string functions may use %zmm16-31 themselves.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>

static volatile sig_atomic_t dump_requested;
static void on_usr1(int sig) { (void)sig; dump_requested = 1; }

int main(void) {
    unsigned char pat[64], out[64];
    for (int i = 0; i < 64; i++) pat[i] = (unsigned char)(0xa0 + i);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    printf("READY\n");
    fflush(stdout);
    __asm__ volatile("vmovdqu64 %0, %%zmm16" : : "m"(pat) : "xmm16");
    for (;;) {
        if (dump_requested) {
            __asm__ volatile("vmovdqu64 %%zmm16, %0" : "=m"(out));
            dump_requested = 0;
            printf("ZMM16=");
            for (int i = 0; i < 64; i++) printf("%02x", out[i]);
            printf("\n");
            fflush(stdout);
            __asm__ volatile("vmovdqu64 %0, %%zmm16" : : "m"(out) : "xmm16");
        }
    }
}
