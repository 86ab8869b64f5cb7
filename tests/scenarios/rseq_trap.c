/* rseq_trap: a hostile target whose rseq critical section covers the code ckpt injects its syscalls through.
 *
 * usage: rseq_trap   (stdin: a pipe the test writes one byte to)
 * glibc registered the thread's struct rseq (__rseq_offset); the target points its rseq_cs at a critical
 * section covering 0x700000000000-0x7fffffffe000 (libc, ld.so, the vDSO, the stacks: where ckpt
 * finds a syscall instruction), with its abort handler in this binary (PIE, lower).  The kernel moves a
 * thread that returns to user space inside that range after a preemption, a migration or a ptrace stop to
 * the abort handler, which prints "HIJACKED" and exits 3: what an injected call would run into.  Then it
 * prints "READY" and blocks in read(0) through its own syscall instruction, outside the range.  Woken by
 * a byte on stdin, it checks that its rseq_cs points at its section or was cleared (the kernel clears it
 * lazily), that the section is unchanged, clears it (libc is usable again) and prints "PASS" or "FAIL why".  "SKIP why" when glibc did not register rseq.
 */
#define _GNU_SOURCE
#include "verdict.h"
#include <stddef.h>
#include <stdint.h>
#include <sys/rseq.h>

#define RSEQ_SIG_X86 0x53053053

static struct rseq_cs section __attribute__((aligned(32)));

/* The abort handler: the signature the kernel checks in the 4 bytes before it, then raw syscalls only. */
__asm__(".text\n"
        ".long 0x53053053\n"
        "rseq_trap_abort:\n"
        "  mov $1, %eax\n"           /* write(1, msg, 9) */
        "  mov $1, %edi\n"
        "  lea hijacked_msg(%rip), %rsi\n"
        "  mov $9, %edx\n"
        "  syscall\n"
        "  mov $231, %eax\n"         /* exit_group(3) */
        "  mov $3, %edi\n"
        "  syscall\n"
        "hijacked_msg: .ascii \"HIJACKED\\n\"\n");
extern char rseq_trap_abort[];

static long raw_read(int fd, void *buf, long n) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "0"(0L), "D"((long)fd), "S"(buf), "d"(n) : "rcx", "r11", "memory");
    return r;
}

int main(void) {
    if (__rseq_size == 0) {
        printf("SKIP glibc did not register rseq\n");
        fflush(stdout);
        return 0;
    }
    if ((uintptr_t)rseq_trap_abort >= 0x700000000000ULL) die("this binary is mapped inside the section");
    struct rseq *rs = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
    section.version = 0;
    section.flags = 0;
    section.start_ip = 0x700000000000ULL;
    section.post_commit_offset = 0x7fffffffe000ULL - section.start_ip;  /* the kernel wants it below TASK_SIZE */
    section.abort_ip = (uintptr_t)rseq_trap_abort;
    printf("READY\n");
    fflush(stdout);
    /* From here until it is cleared below, only this binary's code runs. */
    __atomic_store_n(&rs->rseq_cs, (uint64_t)(uintptr_t)&section, __ATOMIC_RELEASE);
    char c;
    long r;
    do r = raw_read(0, &c, 1); while (r == -EINTR);
    uint64_t cs = __atomic_load_n(&rs->rseq_cs, __ATOMIC_ACQUIRE);
    __atomic_store_n(&rs->rseq_cs, 0, __ATOMIC_RELEASE);
    if (r != 1) fail("read returned %ld", r);
    /* The kernel clears rseq_cs itself when the thread comes back to user space outside the section
     * after a context switch (a blocking read has one): its own pointer or 0, nothing else. */
    if (cs != 0 && cs != (uint64_t)(uintptr_t)&section)
        fail("rseq_cs is %#llx, not the section at %p", (unsigned long long)cs, (void *)&section);
    if (section.start_ip != 0x700000000000ULL || section.abort_ip != (uintptr_t)rseq_trap_abort) fail("the section changed");
    printf(why[0] ? "FAIL %s\n" : "PASS%s\n", why);
    fflush(stdout);
    return 0;
}
