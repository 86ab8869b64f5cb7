/* vecregs.h: hold a pattern in the widest vector registers this CPU has, so a test can see that register state
 * survives ptrace's NT_X86_XSTATE or a dump and restore on any x86-64 machine.
 *
 * vec_detect() picks at run time (libgcc's cpuid check, which also asks XCR0 whether the kernel enabled the
 * state), never by assumption:
 *   VEC_ZMM  AVX-512F: %zmm15 (its bytes span the SSE, AVX and ZMM_Hi256 components), %zmm16 (Hi16_ZMM) and
 *            the opmask %k1 — every AVX-512 state component;
 *   VEC_YMM  AVX: %ymm15 (SSE and AVX components);
 *   VEC_XMM  otherwise (SSE2 is in every x86-64): %xmm15.
 * Each hold function is compiled for its own instruction set with a target attribute, so the file builds
 * without -mavx512f and a CPU never executes an instruction it lacks (no SIGILL).
 *
 * vec_hold() loads the pattern, spins inside one asm statement (no compiler-made or libc code can touch the
 * registers meanwhile) for `spins` turns or until *stop is non-zero, then stores the registers back.  A
 * signal handler run meanwhile is harmless: the kernel saves and restores the whole XSAVE area around it.
 */
#ifndef CKPT_VECREGS_H
#define CKPT_VECREGS_H

#include <signal.h>
#include <stdint.h>

enum vec_kind { VEC_XMM, VEC_YMM, VEC_ZMM };

/* What the target prints (READY vec=...), how many pattern bytes each kind holds, and what a failure names. */
static const char *const vec_name[] = {"xmm", "ymm", "zmm"};
static const unsigned vec_bytes[] = {16, 32, 128};
static const char *const vec_regs_held[] = {"%xmm15", "%ymm15", "%zmm15, %zmm16 and %k1"};

/* The registers' contents: v[0..vec_bytes) and, for VEC_ZMM only, k (for %k1; AVX-512F's kmovw is 16 bits). */
struct vec_regs {
    unsigned char v[128];
    uint16_t k;
};

__attribute__((unused))
static enum vec_kind vec_detect(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return VEC_ZMM;
    if (__builtin_cpu_supports("avx")) return VEC_YMM;
    return VEC_XMM;
}

/* The spin between load and store: %rcx counts down, (%[stop]) ends it early. */
#define VEC_SPIN                         \
    "1:\n\t"                             \
    "test %%rcx, %%rcx\n\t"              \
    "jz 2f\n\t"                          \
    "dec %%rcx\n\t"                      \
    "cmpl $0, (%[stop])\n\t"             \
    "je 1b\n"                            \
    "2:\n\t"

static void vec_hold_xmm(const struct vec_regs *in, struct vec_regs *out, uint64_t spins,
                         const volatile sig_atomic_t *stop) {
    __asm__ volatile("movdqu (%[in]), %%xmm15\n\t" VEC_SPIN "movdqu %%xmm15, (%[out])"
                     : "+c"(spins)
                     : [in] "r"(in->v), [out] "r"(out->v), [stop] "r"(stop)
                     : "xmm15", "memory", "cc");
}

__attribute__((target("avx")))
static void vec_hold_ymm(const struct vec_regs *in, struct vec_regs *out, uint64_t spins,
                         const volatile sig_atomic_t *stop) {
    __asm__ volatile("vmovdqu (%[in]), %%ymm15\n\t" VEC_SPIN "vmovdqu %%ymm15, (%[out])\n\t"
                     "vzeroupper"
                     : "+c"(spins)
                     : [in] "r"(in->v), [out] "r"(out->v), [stop] "r"(stop)
                     : "xmm15", "memory", "cc");
}

__attribute__((target("avx512f")))
static void vec_hold_zmm(const struct vec_regs *in, struct vec_regs *out, uint64_t spins,
                         const volatile sig_atomic_t *stop) {
    __asm__ volatile("vmovdqu64 (%[in]), %%zmm15\n\t"
                     "vmovdqu64 64(%[in]), %%zmm16\n\t"
                     "kmovw %[k], %%k1\n\t" VEC_SPIN
                     "vmovdqu64 %%zmm15, (%[out])\n\t"
                     "vmovdqu64 %%zmm16, 64(%[out])\n\t"
                     "kmovw %%k1, %[kout]\n\t"
                     "vzeroupper"
                     : "+c"(spins), [kout] "=m"(out->k)
                     : [in] "r"(in->v), [out] "r"(out->v), [stop] "r"(stop), [k] "r"((unsigned)in->k)
                     : "xmm15", "xmm16", "k1", "memory", "cc");
}

__attribute__((unused))
static void vec_hold(enum vec_kind kind, const struct vec_regs *in, struct vec_regs *out, uint64_t spins,
                     const volatile sig_atomic_t *stop) {
    if (kind == VEC_ZMM) vec_hold_zmm(in, out, spins, stop);
    else if (kind == VEC_YMM) vec_hold_ymm(in, out, spins, stop);
    else vec_hold_xmm(in, out, spins, stop);
}

#endif
