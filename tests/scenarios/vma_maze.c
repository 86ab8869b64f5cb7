/* vma_maze: tens of thousands of small mappings, some pages written between pre-dumps, the layout
 * changed on request; the process checks every page it owns against what it wrote.
 *
 * usage: vma_maze NMAPS PAGES    (PAGES >= 2 for every kind of change; 3 splits a chunk too)
 *
 * One anonymous area of NMAPS * PAGES pages, every page written; every other chunk of PAGES pages
 * gets PROT_EXEC too, so rw- and rwx chunks alternate and cannot merge: NMAPS writable VMAs, all
 * of them trackable.  Every page owned holds MAGIC and a version that never repeats; a table (in
 * its own mapping) keeps the version each page must hold, so after a restore the process itself
 * tells whether a write was lost.
 *
 * stdin commands (one per line):
 *   "w PERMILLE"  write PERMILLE pages in 1000 of the area, spread evenly  -> "OK n"
 *   "c"           change the layout, one round of every kind below          -> "OK"
 *   "v"           check every page owned against the table                  -> "CHECK PASS pages=N"
 *                                                                               or "CHECK FAIL ..."
 *   EOF           stop reading; run on until killed (stdin /dev/null: a target for the bench)
 * Layout changes ("c"), each followed by writes into what changed: an mprotect that splits a chunk
 * in three; an mprotect that merges a chunk with both neighbours; mmap(MAP_FIXED) over a chunk
 * with the same protection (a new VMA whose /proc/PID/maps line is the old one's, letter for
 * letter); munmap of a chunk's middle page; a chunk moved by mremap out of the area and another
 * moved back into a hole; a new mapping; an extra mapping grown by mremap; the brk grown.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <signal.h>
#include <unistd.h>

#define PG 4096UL
#define MAGIC 0x5a4d414d56414d5aULL /* "ZMAVMAMZ" */
#define MAXREG 64

struct region { unsigned char *addr; long n; uint64_t *ver; };  /* ver[i] == 0: page i not owned */

static struct region reg[MAXREG];   /* reg[0]: the area */
static int nreg = 1;
static long nmaps, chunk, round_no;
static int moved_out = -1;  /* the region of the chunk last moved out of the area */
static uint64_t counter = 1;

static void *table(long n) {
    void *p = mmap(NULL, n * sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { printf("FAIL mmap table\n"); fflush(stdout); exit(3); }
    return p;
}

static void stamp(struct region *r, long i) {
    uint64_t v = counter++;
    uint64_t *p = (uint64_t *)(r->addr + i * PG);
    p[0] = MAGIC;
    p[1] = v;
    r->addr[16 + v % (PG - 16)] ^= (unsigned char)v;
    r->ver[i] = v;
}

static struct region *add_region(unsigned char *addr, long n) {
    if (nreg == MAXREG) { printf("FAIL too many regions\n"); fflush(stdout); exit(3); }
    struct region *r = &reg[nreg++];
    r->addr = addr; r->n = n; r->ver = table(n);
    for (long i = 0; i < n; i++) stamp(r, i);
    return r;
}

static int chunk_prot(long c) { return c % 2 ? PROT_READ | PROT_WRITE | PROT_EXEC : PROT_READ | PROT_WRITE; }

static void die(const char *what) { printf("FAIL %s\n", what); fflush(stdout); exit(3); }

/* A chunk of the area still wholly owned and in its original protection, from a pseudo-random start. */
static long pick(long seed, int want_rwx) {
    for (long k = 0; k < nmaps; k++) {
        long c = (seed * 7919 + k) % (nmaps - 2) + 1;
        if ((c % 2) != want_rwx) continue;
        long ok = 1;
        for (long i = (c - 1) * chunk; i < (c + 2) * chunk && ok; i++) ok = reg[0].ver[i] != 0;
        if (ok) return c;
    }
    die("no chunk left to change");
    return 0;
}

static void change(void) {
    struct region *a = &reg[0];
    long s = ++round_no * 31;
    /* split: the middle page of an rw- chunk becomes rwx (three VMAs) */
    long c = pick(s, 0), mid = c * chunk + chunk / 2;
    if (chunk >= 3) {
        if (mprotect(a->addr + mid * PG, PG, PROT_READ | PROT_WRITE | PROT_EXEC)) die("mprotect split");
        stamp(a, mid); stamp(a, c * chunk);
    }
    /* merge: an rwx chunk becomes rw-, one VMA with both neighbours */
    c = pick(s + 1, 1);
    if (mprotect(a->addr + c * chunk * PG, chunk * PG, PROT_READ | PROT_WRITE)) die("mprotect merge");
    stamp(a, c * chunk - 1); stamp(a, c * chunk + chunk - 1);
    /* MAP_FIXED over a chunk, same protection: a new VMA, its maps line unchanged; zero until written */
    c = pick(s + 2, 1);
    unsigned char *at = a->addr + c * chunk * PG;
    if (mmap(at, chunk * PG, chunk_prot(c), MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != at) die("mmap fixed");
    for (long i = 0; i < chunk; i++) stamp(a, c * chunk + i);
    /* munmap of a chunk's middle page: two VMAs and a hole */
    if (chunk >= 2) {
        c = pick(s + 3, 0);
        mid = c * chunk + chunk / 2;
        if (munmap(a->addr + mid * PG, PG)) die("munmap");
        a->ver[mid] = 0;
        stamp(a, c * chunk);
    }
    /* mremap a chunk out of the area (to wherever the kernel likes), write one of its pages; the
     * chunk moved out last round goes back into the hole, unwritten */
    c = pick(s + 4, 0);
    at = a->addr + c * chunk * PG;
    unsigned char *moved = mremap(at, chunk * PG, chunk * PG, MREMAP_MAYMOVE | MREMAP_FIXED,
                                  mmap(NULL, chunk * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (moved == MAP_FAILED) die("mremap out");
    uint64_t *ver = table(chunk);
    memcpy(ver, &a->ver[c * chunk], chunk * sizeof(uint64_t));
    memset(&a->ver[c * chunk], 0, chunk * sizeof(uint64_t));
    if (moved_out >= 0) {
        struct region *back = &reg[moved_out];
        if (mremap(back->addr, chunk * PG, chunk * PG, MREMAP_MAYMOVE | MREMAP_FIXED, at) != at) die("mremap back");
        memcpy(&a->ver[c * chunk], back->ver, chunk * sizeof(uint64_t));
        munmap(back->ver, chunk * sizeof(uint64_t));
        back->addr = moved; back->ver = ver;
    } else {
        moved_out = nreg++;
        reg[moved_out].addr = moved; reg[moved_out].n = chunk; reg[moved_out].ver = ver;
    }
    stamp(&reg[moved_out], 0);
    /* a new mapping, and one grown (and maybe moved) by mremap */
    unsigned char *p = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("mmap");
    struct region *fresh = add_region(p, 3);
    p = mremap(fresh->addr, 3 * PG, 6 * PG, MREMAP_MAYMOVE);
    if (p == MAP_FAILED) die("mremap grow");
    ver = table(6);
    memcpy(ver, fresh->ver, 3 * sizeof(uint64_t));
    munmap(fresh->ver, 3 * sizeof(uint64_t));
    fresh->addr = p; fresh->n = 6; fresh->ver = ver;
    for (long i = 3; i < 6; i++) stamp(fresh, i);
    /* the brk, grown by a page */
    p = sbrk(PG);
    if (p != (void *)-1 && ((uintptr_t)p & (PG - 1)) == 0) {
        struct region *b = &reg[nreg++];
        b->addr = p; b->n = 1; b->ver = table(1);
        stamp(b, 0);
    }
}

static long write_some(long permille) {
    struct region *a = &reg[0];
    long n = 0, total = nmaps * chunk, step = permille > 0 ? 1000 / permille : total;
    for (long i = round_no % (step ? step : 1); i < total; i += step ? step : 1)
        if (a->ver[i]) { stamp(a, i); n++; }
    return n;
}

static long check(char *why, size_t len) {
    long pages = 0;
    for (int k = 0; k < nreg; k++) {
        struct region *r = &reg[k];
        for (long i = 0; i < r->n; i++) {
            if (!r->ver[i]) continue;
            uint64_t *p = (uint64_t *)(r->addr + i * PG);
            if (p[0] != MAGIC || p[1] != r->ver[i]) {
                snprintf(why, len, "page %p (region %d page %ld): version %llu, expected %llu", (void *)p, k, i,
                         (unsigned long long)(p[0] == MAGIC ? p[1] : 0), (unsigned long long)r->ver[i]);
                return -1;
            }
            pages++;
        }
    }
    return pages;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    static char obuf[4096];
    setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
    nmaps = atol(argv[1]);
    chunk = atol(argv[2]);
    if (nmaps < 8 || chunk < 1) return 2;
    uintptr_t cur = (uintptr_t)sbrk(0);  /* page-align the brk so sbrk(PG) hands out whole pages */
    if (cur & (PG - 1)) sbrk(PG - (cur & (PG - 1)));
    long total = nmaps * chunk;
    unsigned char *area = mmap(NULL, total * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) die("mmap area");
    reg[0].addr = area; reg[0].n = total; reg[0].ver = table(total);
    for (long i = 0; i < total; i++) stamp(&reg[0], i);
    for (long c = 1; c < nmaps; c += 2)
        if (mprotect(area + c * chunk * PG, chunk * PG, chunk_prot(c))) die("mprotect");
    printf("READY area=%p npages=%ld\n", (void *)area, total);
    fflush(stdout);
    char line[256], why[256];
    while (fgets(line, sizeof line, stdin)) {
        if (line[0] == 'w') {
            printf("OK %ld\n", write_some(atol(line + 1)));
        } else if (line[0] == 'c') {
            change();
            printf("OK\n");
        } else if (line[0] == 'v') {
            long n = check(why, sizeof why);
            if (n < 0) printf("CHECK FAIL %s\n", why);
            else printf("CHECK PASS pages=%ld\n", n);
        }
        fflush(stdout);
    }
    for (;;) pause();
}
