/* two_regions: two separate anonymous regions A and B with known page patterns, for range selection.
 *
 * usage: two_regions NPAGES
 * A and B are NPAGES pages each, with an unmapped gap between them (never one
 * VMA).  Every page of both is filled with generation 1 before
 * "READY a=ADDR b=ADDR npages=N" is printed.  Commands on stdin, one per line:
 *   "w R FIRST COUNT GEN"  fill pages FIRST..FIRST+COUNT-1 of region R (a or b) with generation GEN, print OK
 *   "c"                    check every page of both regions against the generations written, print PASS or FAIL
 * A page of generation G in region R, page P holds 512 words (R << 56 | P << 32 | G) ^ word index,
 * so a page from an older generation, another page or another region is caught.  The
 * expected generations live in this process's .bss, outside both regions.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#define PAGE 4096
#define WORDS (PAGE / 8)
#define MAXPAGES 4096

static uint32_t expected[2][MAXPAGES];
static uint64_t *region[2];
static long npages;

static uint64_t word(int r, long p, uint32_t gen, long i) {
    return (((uint64_t)(r + 1) << 56) | ((uint64_t)p << 32) | gen) ^ (uint64_t)i;
}

static void fill(int r, long p, uint32_t gen) {
    uint64_t *page = region[r] + p * WORDS;
    for (long i = 0; i < WORDS; i++) page[i] = word(r, p, gen, i);
    expected[r][p] = gen;
}

static int check(void) {
    for (int r = 0; r < 2; r++)
        for (long p = 0; p < npages; p++)
            for (long i = 0; i < WORDS; i++) {
                uint64_t got = region[r][p * WORDS + i];
                if (got != word(r, p, expected[r][p], i)) {
                    printf("FAIL region %c page %ld word %ld: %#lx, want generation %u\n", 'a' + r, p, i,
                           (unsigned long)got, expected[r][p]);
                    return 0;
                }
            }
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    npages = atol(argv[1]);
    if (npages <= 0 || npages > MAXPAGES) return 2;
    size_t len = (size_t)npages * PAGE;
    char *all = mmap(NULL, 3 * len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (all == MAP_FAILED) return 3;
    if (munmap(all + len, len)) return 3;  /* the gap: A and B never merge into one VMA */
    region[0] = (uint64_t *)all;
    region[1] = (uint64_t *)(all + 2 * len);
    for (int r = 0; r < 2; r++)
        for (long p = 0; p < npages; p++) fill(r, p, 1);
    printf("READY a=%p b=%p npages=%ld\n", (void *)region[0], (void *)region[1], npages);
    fflush(stdout);
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        char r;
        long first, count;
        unsigned gen;
        if (line[0] == 'c') {
            if (check()) printf("PASS\n");
        } else if (sscanf(line, "w %c %ld %ld %u", &r, &first, &count, &gen) == 4 && (r == 'a' || r == 'b')
                   && first >= 0 && count >= 0 && first + count <= npages) {
            for (long p = first; p < first + count; p++) fill(r - 'a', p, gen);
            printf("OK\n");
        } else {
            printf("FAIL bad command: %s", line);
        }
        fflush(stdout);
    }
    return 0;
}
