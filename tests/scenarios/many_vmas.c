/* many_vmas: hundreds of mappings of every kind, checked by the process itself after a restore.
 *
 * usage: many_vmas FILE_PREFIX [hugetlb]
 *
 * Layout (each kind in several VMAs, kept apart by PROT_NONE guard pages so
 * they cannot merge): anonymous private areas with a per-page pattern, in
 * read-write, read-only, PROT_NONE and exec-only protection (exec-only ones
 * hold a tiny function `mov eax, imm; ret` the check calls); MAP_SHARED
 * anonymous pages each mapped twice (mremap with old_size 0 makes a second
 * view of the same shmem object): a worker thread writes through one view,
 * the main thread must see it through the other; a private file mapping with
 * some pages written (COW copies) and others still file pages; a shared file
 * mapping whose writes must reach the file (checked with pread); a
 * MAP_GROWSDOWN area; the heap grown with sbrk; a THP area (MADV_HUGEPAGE);
 * with "hugetlb", a MAP_HUGETLB area too.
 *
 * stdout: "READY vmas=N" once set up; on SIGUSR1 it checks everything and prints
 * "CHECK PASS vmas=N round=R" or "CHECK FAIL <what>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096UL
#define N_ANON 160
#define N_SHM 40
#define FILE_PAGES 16
#define THP_SIZE (8UL << 20)
#define HUGE (2UL << 20)

static unsigned char *anon[N_ANON], *shm_a[N_SHM], *shm_b[N_SHM];
static unsigned char *fpriv, *fshared, *gd, *brk_area, *thp, *huge;
static const char *prefix;
static int shared_fd, want_huge;
static volatile sig_atomic_t usr1;
static volatile unsigned long req, done;
static unsigned round_no;
static char why[256];

static unsigned char pat(unsigned long i, unsigned seed) { return (unsigned char)(i * 131u + seed * 29u + (i >> 12)); }
static void on_usr1(int s) { (void)s; usr1 = 1; }

static void *map(void *at, size_t len, int prot, int flags) {
    void *p = mmap(at, len, prot, flags | (at ? MAP_FIXED : 0), -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    return p;
}

static void fill(unsigned char *p, size_t len, unsigned seed) { for (size_t i = 0; i < len; i++) p[i] = pat(i, seed); }

static int same(const unsigned char *p, size_t len, unsigned seed) {
    for (size_t i = 0; i < len; i++) if (p[i] != pat(i, seed)) return 0;
    return 1;
}

static int anon_prot(int i) {
    static const int prots[] = {PROT_READ | PROT_WRITE, PROT_READ, PROT_NONE, PROT_EXEC, PROT_READ | PROT_WRITE | PROT_EXEC};
    return prots[i % 5];
}

static void *worker(void *arg) {
    (void)arg;
    for (;;) {  /* write each request number through the first view of every shared page */
        unsigned long r = req;
        if (r != done) {
            for (int i = 0; i < N_SHM; i++) memcpy(shm_a[i] + 8, &r, sizeof r);
            __atomic_store_n(&done, r, __ATOMIC_RELEASE);
        }
        usleep(200);
    }
    return NULL;
}

static int count_vmas(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    int n = 0, c;
    while ((c = fgetc(f)) != EOF) n += c == '\n';
    fclose(f);
    return n;
}

/* The VmFlags line of the VMA containing addr has flag (e.g. "gd", "hg"). */
static int vma_has_flag(void *addr, const char *flag) {
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0, found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = (uintptr_t)addr >= s && (uintptr_t)addr < e;
        } else if (in && !strncmp(line, "VmFlags:", 8)) {
            char want[8];
            snprintf(want, sizeof want, " %s", flag);
            found = strstr(line, want) != NULL;
            break;
        }
    }
    fclose(f);
    return found;
}

#define CHECK(cond, ...) do { if (!(cond)) { snprintf(why, sizeof why, __VA_ARGS__); return 0; } } while (0)

static int check(void) {
    for (int i = 0; i < N_ANON; i++) {
        int prot = anon_prot(i);
        if (prot == PROT_EXEC) {
            int (*fn)(void) = (int (*)(void))anon[i];
            CHECK(fn() == 0x1000 + i, "exec-only area %d returns %#x", i, fn());
            continue;
        }
        if (!(prot & PROT_READ)) mprotect(anon[i], 2 * PG, PROT_READ);
        int ok = same(anon[i], 2 * PG, 100 + i);
        if (!(prot & PROT_READ)) mprotect(anon[i], 2 * PG, prot);
        CHECK(ok, "anon area %d (prot %d) changed", i, prot);
    }
    for (int i = 0; i < N_SHM; i++)
        CHECK(same(shm_b[i] + 64, PG - 64, 300 + i), "shared anon page %d: second view differs", i);
    unsigned long r = ++req;
    for (int spin = 0; __atomic_load_n(&done, __ATOMIC_ACQUIRE) != r; spin++) {
        CHECK(spin < 5000, "worker thread did not answer request %lu", r);
        usleep(1000);
    }
    for (int i = 0; i < N_SHM; i++) {
        unsigned long got;
        memcpy(&got, shm_b[i] + 8, sizeof got);
        CHECK(got == r, "shared anon page %d: thread wrote %lu through one view, the other shows %lu", i, r, got);
    }
    for (unsigned long p = 0; p < FILE_PAGES; p++) {
        unsigned seed = p % 2 ? 500 + p : 400 + p;  /* odd pages were written (COW), even ones are file pages */
        CHECK(same(fpriv + p * PG, PG, seed), "private file mapping page %lu wrong", p);
    }
    CHECK(same(fshared + 64, 4 * PG - 64, 600), "shared file mapping content");
    unsigned long stamp = 0xabc00000UL + round_no, back = 0;
    memcpy(fshared, &stamp, sizeof stamp);
    CHECK(pread(shared_fd, &back, sizeof back, 0) == sizeof back && back == stamp,
          "a write to the shared file mapping did not reach the file (%#lx)", back);
    CHECK(same(gd, 4 * PG, 700), "growsdown area content");
    CHECK(vma_has_flag(gd, "gd"), "growsdown area lost VM_GROWSDOWN");
    CHECK(same(brk_area, 2 << 20, 800), "sbrk area content");
    CHECK(sbrk(0) == brk_area + (2 << 20), "program break moved: %p", sbrk(0));
    CHECK(same(thp, THP_SIZE, 900), "THP area content");
    CHECK(vma_has_flag(thp, "hg"), "THP area lost MADV_HUGEPAGE (hg)");
    if (want_huge) CHECK(same(huge, HUGE, 1000), "hugetlb area content");
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    prefix = argv[1];
    want_huge = argc > 2 && !strcmp(argv[2], "hugetlb");
    mallopt(M_MMAP_THRESHOLD, 0);  /* malloc never moves the break: sbrk(0) is ours to check */
    char path[4096];

    /* One PROT_NONE reservation; every area is placed in it with a guard page after it. */
    unsigned char *res = map(NULL, N_ANON * 3 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
    for (int i = 0; i < N_ANON; i++) {
        anon[i] = map(res + i * 3 * PG, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
        if (anon_prot(i) == PROT_EXEC) {
            unsigned imm = 0x1000 + i;
            unsigned char code[6] = {0xb8, imm & 0xff, (imm >> 8) & 0xff, 0, 0, 0xc3};
            memcpy(anon[i], code, sizeof code);
        } else {
            fill(anon[i], 2 * PG, 100 + i);
        }
        mprotect(anon[i], 2 * PG, anon_prot(i));
    }
    unsigned char *shres = map(NULL, N_SHM * 2 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
    for (int i = 0; i < N_SHM; i++) {
        shm_a[i] = map(shres + i * 2 * PG, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
        fill(shm_a[i] + 64, PG - 64, 300 + i);
        shm_b[i] = mremap(shm_a[i], 0, PG, MREMAP_MAYMOVE);
        if (shm_b[i] == MAP_FAILED) { perror("mremap"); return 1; }
    }

    snprintf(path, sizeof path, "%s.priv", prefix);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    for (unsigned long p = 0; p < FILE_PAGES; p++) {
        unsigned char buf[PG];
        fill(buf, PG, 400 + p);
        if (write(fd, buf, PG) != PG) return 1;
    }
    fpriv = mmap(NULL, FILE_PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    for (unsigned long p = 1; p < FILE_PAGES; p += 2) fill(fpriv + p * PG, PG, 500 + p);
    for (unsigned long p = 0; p < FILE_PAGES; p += 2) (void)*(volatile unsigned char *)(fpriv + p * PG);
    close(fd);

    snprintf(path, sizeof path, "%s.shared", prefix);
    shared_fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (ftruncate(shared_fd, 4 * PG)) return 1;
    fshared = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, shared_fd, 0);
    fill(fshared + 64, 4 * PG - 64, 600);

    gd = map(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN);
    fill(gd, 4 * PG, 700);
    brk_area = sbrk(2 << 20);
    fill(brk_area, 2 << 20, 800);

    unsigned char *raw = map(NULL, THP_SIZE + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    thp = (unsigned char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
    madvise(thp, THP_SIZE, MADV_HUGEPAGE);
    fill(thp, THP_SIZE, 900);
    if (want_huge) {
        huge = mmap(NULL, HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        if (huge == MAP_FAILED) { printf("FAIL mmap MAP_HUGETLB\n"); fflush(stdout); return 1; }
        fill(huge, HUGE, 1000);
    }

    pthread_t th;
    pthread_create(&th, NULL, worker, NULL);
    signal(SIGUSR1, on_usr1);
    printf("READY vmas=%d\n", count_vmas());
    fflush(stdout);
    for (;;) {
        usleep(2000);
        if (!usr1) continue;
        usr1 = 0;
        round_no++;
        if (check()) printf("CHECK PASS vmas=%d round=%u\n", count_vmas(), round_no);
        else printf("CHECK FAIL %s\n", why);
        fflush(stdout);
    }
}
