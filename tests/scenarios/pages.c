/* pages: an anonymous area whose pages the test asks it to write, for dirty tracking.
 *
 * usage: pages NPAGES
 * Prints "READY area=ADDR npages=N" after touching every page once, then
 * reads commands from stdin, one per line: "w P1 P2 ..." writes one byte into
 * each listed page and prints "OK"; EOF exits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE 4096

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    long npages = atol(argv[1]);
    volatile unsigned char *area = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE,
                                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) return 3;
    for (long p = 0; p < npages; p++) area[p * PAGE] = 1;
    printf("READY area=%p npages=%ld\n", (void *)area, npages);
    fflush(stdout);
    char line[65536];
    while (fgets(line, sizeof line, stdin)) {
        if (line[0] != 'w') continue;
        char *s = line + 1, *end;
        for (;;) {
            long p = strtol(s, &end, 10);
            if (end == s) break;
            if (p >= 0 && p < npages) area[p * PAGE + 8]++;
            s = end;
        }
        printf("OK\n");
        fflush(stdout);
    }
    return 0;
}
