/* constants: prints "NAME VALUE" for kernel constants and struct layouts as the
 * system headers define them, so the tests can compare ckpt.kernel against them.
 */
#define _GNU_SOURCE
#include <linux/sched.h>
#include <linux/userfaultfd.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>

#define P(name) printf("%s %llu\n", #name, (unsigned long long)(name))
#define OFF(type, field) printf("offsetof(%s.%s) %zu\n", #type, #field, offsetof(struct type, field))
#define SIZE(type) printf("sizeof(%s) %zu\n", #type, sizeof(struct type))

int main(void) {
    P(PTRACE_PEEKDATA); P(PTRACE_POKEDATA); P(PTRACE_CONT); P(PTRACE_SINGLESTEP); P(PTRACE_GETREGS);
    P(PTRACE_SETREGS); P(PTRACE_DETACH); P(PTRACE_SYSCALL); P(PTRACE_SETOPTIONS); P(PTRACE_GETEVENTMSG);
    P(PTRACE_GETSIGINFO); P(PTRACE_SETSIGINFO); P(PTRACE_GETREGSET); P(PTRACE_SETREGSET); P(PTRACE_SEIZE);
    P(PTRACE_INTERRUPT); P(PTRACE_LISTEN); P(PTRACE_GETSIGMASK); P(PTRACE_SETSIGMASK);
    P(PTRACE_GET_RSEQ_CONFIGURATION); P(PTRACE_PEEKSIGINFO); P(PTRACE_PEEKSIGINFO_SHARED);
    P(PTRACE_O_TRACESYSGOOD); P(PTRACE_O_TRACECLONE); P(PTRACE_O_TRACEFORK); P(PTRACE_O_TRACEEXEC);
    P(PTRACE_O_EXITKILL); P(PTRACE_O_SUSPEND_SECCOMP);
    P(PTRACE_EVENT_CLONE); P(PTRACE_EVENT_EXEC); P(PTRACE_EVENT_EXIT); P(PTRACE_EVENT_STOP);
    P(__WALL);
    SIZE(user_regs_struct);
    P(PROT_NONE); P(PROT_READ); P(PROT_WRITE); P(PROT_EXEC); P(PROT_GROWSDOWN);
    P(MAP_SHARED); P(MAP_PRIVATE); P(MAP_SHARED_VALIDATE); P(MAP_FIXED); P(MAP_ANONYMOUS);
    P(MAP_GROWSDOWN); P(MAP_NORESERVE); P(MAP_POPULATE); P(MAP_STACK); P(MAP_HUGETLB);
    P(MAP_FIXED_NOREPLACE);
    P(MADV_DONTNEED); P(MADV_FREE); P(MADV_DONTFORK); P(MADV_HUGEPAGE); P(MADV_WIPEONFORK);
    P(MADV_POPULATE_WRITE);
    P(MREMAP_MAYMOVE); P(MREMAP_FIXED); P(MREMAP_DONTUNMAP);
    P(UFFD_API); P(UFFDIO_API); P(UFFDIO_REGISTER); P(UFFDIO_UNREGISTER); P(UFFDIO_WRITEPROTECT);
    P(UFFDIO_REGISTER_MODE_WP); P(UFFDIO_WRITEPROTECT_MODE_WP); P(UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
    P(UFFD_FEATURE_THREAD_ID); P(UFFD_USER_MODE_ONLY);
    SIZE(uffdio_api); SIZE(uffdio_register); SIZE(uffdio_writeprotect);
    P(CLONE_VM); P(CLONE_THREAD); P(CLONE_SETTLS); P(CLONE_PARENT_SETTID); P(CLONE_CHILD_CLEARTID);
    P(CLONE_PIDFD); P(CLONE_NEWTIME); P(CLONE_CLEAR_SIGHAND); P(CLONE_INTO_CGROUP);
    P(CLONE_ARGS_SIZE_VER2);
    SIZE(clone_args); OFF(clone_args, set_tid); OFF(clone_args, set_tid_size); OFF(clone_args, cgroup);
    return 0;
}
