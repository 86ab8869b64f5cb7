/* vdso_moved: a process that moved its vDSO and vvar pages elsewhere, or unmapped them.
 *
 * usage: vdso_moved move|unmap [tree]
 *
 * "move": [vvar], [vvar_vclock] (6.15+) and [vdso] go, in their relative layout (the vDSO's code reads the
 * vvar pages at fixed offsets from itself), to a free place with mremap; __vdso_clock_gettime is
 * then called at its new address.  "unmap": all of them are unmapped.  Either way glibc's cached vDSO
 * pointers are stale, so nothing here calls the C library's clock functions afterwards: only raw system calls.
 * A 16-page area holds a pattern.  Prints "READY pid=P vdso=ADDR" (0 when unmapped), then on each SIGUSR1
 * checks /proc/self/maps (the kernel areas where they were put, or none), the moved vDSO's clock against
 * the system call's, and the pattern; prints "PASS vdso-moved round=N" or "FAIL why".  With "tree", a child
 * forked before the move keeps its areas where they were (and only waits).
 */
#define _GNU_SOURCE
#include <elf.h>
#include <stdint.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "verdict.h"

#define PG 4096
#define NAREAS 3

static const char *names[NAREAS] = {"[vvar]", "[vvar_vclock]", "[vdso]"};
static unsigned long starts[NAREAS], ends[NAREAS];  /* where each is now (0: absent) */
static unsigned char *area;

static void find_areas(unsigned long *s, unsigned long *e) {
    char line[512];
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) die("maps");
    for (int i = 0; i < NAREAS; i++) s[i] = e[i] = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        char name[256] = "";
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %255s", &a, &b, name) < 2) continue;
        for (int i = 0; i < NAREAS; i++)
            if (!strcmp(name, names[i])) { s[i] = a; e[i] = b; }
    }
    fclose(f);
}

/* Offset of a dynamic symbol in the vDSO mapped at base (its section headers are mapped with it). */
static unsigned long vdso_symbol(unsigned long base, const char *want) {
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)base;
    const Elf64_Shdr *sh = (const Elf64_Shdr *)(base + eh->e_shoff);
    unsigned long load = 0;
    const Elf64_Phdr *ph = (const Elf64_Phdr *)(base + eh->e_phoff);
    for (int i = 0; i < eh->e_phnum; i++)
        if (ph[i].p_type == PT_LOAD) { load = ph[i].p_vaddr; break; }
    for (int i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_DYNSYM) continue;
        const Elf64_Sym *sym = (const Elf64_Sym *)(base + sh[i].sh_offset);
        const char *str = (const char *)(base + sh[sh[i].sh_link].sh_offset);
        for (unsigned long k = 0; k < sh[i].sh_size / sizeof *sym; k++)
            if (!strcmp(str + sym[k].st_name, want)) return sym[k].st_value - load;
    }
    return 0;
}

static long raw_monotonic_ns(void) {
    struct timespec t;
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static volatile sig_atomic_t asked;
static void on_signal(int sig) { (void)sig; asked = 1; }

int main(int argc, char **argv) {
    int move = argc > 1 && !strcmp(argv[1], "move");
    int tree = argc > 2 && !strcmp(argv[2], "tree");  /* a child forked first keeps its kernel areas */
    pid_t child = 0;
    unsigned long fn_off = 0;
    area = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) die("mmap");
    for (int i = 0; i < 16 * PG; i++) area[i] = (unsigned char)(i * 7 + i / PG);
    find_areas(starts, ends);
    if (!starts[2]) die("no [vdso]");
    fn_off = vdso_symbol(starts[2], "__vdso_clock_gettime");
    if (!fn_off) die("no __vdso_clock_gettime");
    if (tree) {
        child = fork();
        if (child < 0) die("fork");
        if (child == 0) for (;;) pause();
    }
    unsigned long lo = starts[2], hi = ends[2];
    for (int i = 0; i < NAREAS; i++)
        if (starts[i]) { if (starts[i] < lo) lo = starts[i]; if (ends[i] > hi) hi = ends[i]; }
    if (move) {
        /* A free place of their span (reserved PROT_NONE, then replaced by the areas moved there). */
        void *spot = mmap(NULL, hi - lo, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (spot == MAP_FAILED) die("mmap");
        unsigned long to = (unsigned long)spot;
        for (int i = 0; i < NAREAS; i++) {
            if (!starts[i]) continue;
            void *got = mremap((void *)starts[i], ends[i] - starts[i], ends[i] - starts[i],
                               MREMAP_MAYMOVE | MREMAP_FIXED, (void *)(to + (starts[i] - lo)));
            if (got == MAP_FAILED) die("mremap");
            ends[i] = to + (ends[i] - lo);
            starts[i] = to + (starts[i] - lo);
        }
    } else {
        for (int i = 0; i < NAREAS; i++)
            if (starts[i] && syscall(SYS_munmap, starts[i], ends[i] - starts[i])) die("munmap");
        for (int i = 0; i < NAREAS; i++) starts[i] = ends[i] = 0;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGUSR1, &sa, NULL);
    printf("READY pid=%d vdso=%#lx child=%d\n", getpid(), starts[2], (int)child);
    fflush(stdout);
    for (int round = 1;; round++) {
        while (!asked) pause();
        asked = 0;
        why[0] = 0;
        unsigned long s[NAREAS], e[NAREAS];
        find_areas(s, e);
        for (int i = 0; i < NAREAS; i++)
            if (s[i] != starts[i] || e[i] != ends[i])
                fail("%s at %#lx-%#lx, want %#lx-%#lx", names[i], s[i], e[i], starts[i], ends[i]);
        if (move && !why[0]) {
            int (*fn)(clockid_t, struct timespec *) = (void *)(starts[2] + fn_off);
            struct timespec t;
            long before = raw_monotonic_ns();
            int rc = fn(CLOCK_MONOTONIC, &t);
            long after = raw_monotonic_ns(), got = t.tv_sec * 1000000000L + t.tv_nsec;
            if (rc || got < before || got > after)
                fail("the moved vDSO's clock_gettime gave %d, %ld outside [%ld, %ld]", rc, got, before, after);
        }
        for (int i = 0; i < 16 * PG; i++)
            if (area[i] != (unsigned char)(i * 7 + i / PG)) { fail("pattern differs at %d", i); break; }
        if (why[0]) printf("FAIL %s\n", why);
        else printf("PASS vdso-moved round=%d\n", round);
        fflush(stdout);
    }
}
