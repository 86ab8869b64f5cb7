/*
 * fill.h: the content of the bench targets' memory (bench/workload.c, bench/tree.c).
 *
 * One definition of what "realistic" memory is, so that every target compresses
 * alike and rows of different targets compare: heap-like chunks tuned to compress
 * ~5-7x with zstd -1 (workload.c's header says how), touched zero pages, and
 * xorshift output (incompressible).  Header-only (static functions): each target
 * is one translation unit; bench/workload.py's build_c rebuilds a target when
 * this file is newer than its binary.
 */
#ifndef CKPT_BENCH_FILL_H
#define CKPT_BENCH_FILL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef PAGE
#define PAGE 4096UL
#endif

struct region {
    const char *kind;
    uint8_t *addr;
    size_t len;
};

/* splitmix64: seeds; xorshift64*: the stream.  Good enough for filling memory. */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t xs(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/* ---- heap-like content ------------------------------------------------ */

static const char *const vocab[] = {
    "user_id", "session", "GET /index.html HTTP/1.1", "application/json", "true", "false",
    "Content-Length", "en_US.UTF-8", "localhost", "timeout", "status", "ok", "error",
    "/var/lib/app/data", "name", "value", "id", "created_at", "2024-05-01T12:00:00Z",
    "null", "count", "items", "price", "EUR", "Accept-Encoding: gzip", "cache", "key:",
};
#define NVOCAB (sizeof(vocab) / sizeof(vocab[0]))

/* Fake type objects every "object" points to (like ob_type in CPython). */
static uint64_t type_ptrs[12];

static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* A pointer to somewhere near `at` (allocators keep related objects close),
 * sometimes NULL, sometimes far away in the same region. */
static uint64_t near_ptr(uint64_t *s, const struct region *r, const uint8_t *at)
{
    uint64_t x = xs(s);
    size_t off = (size_t)(at - r->addr);
    unsigned k = x & 15;
    if (k < 4)
        return 0;
    if (k < 14) {
        int64_t delta = (int64_t)((x >> 8) % 512) - 256;
        int64_t o = (int64_t)off + delta * 16;
        if (o < 0)
            o = 0;
        if ((size_t)o >= r->len)
            o = (int64_t)r->len - 16;
        off = (size_t)o;
    } else {
        off = (size_t)((x >> 8) % (r->len / 16)) * 16;
    }
    return (uint64_t)(uintptr_t)(r->addr + (off & ~15UL));
}

static void put_words(uint64_t *s, uint8_t *q, size_t room)
{
    size_t len = 0;
    while (len + 1 < room) {
        const char *w = vocab[xs(s) % NVOCAB];
        size_t wl = strlen(w);
        if (len + wl + 1 >= room)
            break;
        memcpy(q + len, w, wl);
        len += wl;
        q[len++] = ' ';
    }
    if (len)
        q[len - 1] = 0;
}

__attribute__((unused)) static void fill_heap(const struct region *r, uint64_t seed)
{
    uint64_t s = seed | 1;
    uint8_t *p = r->addr, *end = r->addr + r->len;
    uint32_t counter = 1000;
    double prices[64];
    for (int i = 0; i < 12; i++)
        type_ptrs[i] = 0x55d4c3a00000ULL + 0x1000 * (xs(&s) % 4096) + 0x40 * i;
    for (int i = 0; i < 64; i++)
        prices[i] = (double)(xs(&s) % 100000) / 100.0;

    while (p + 8192 < end) {
        uint64_t x = xs(&s);
        unsigned kind = x % 100;
        size_t n; /* chunk size including the 8-byte header, multiple of 16 */
        uint8_t *q = p + 8;
        if (kind < 36) { /* object: refcount, type, next, prev, key, value, flags */
            n = 64;
            put64(q, 1 + (x >> 8) % 3);
            put64(q + 8, type_ptrs[(x >> 16) % 12]);
            put64(q + 16, near_ptr(&s, r, p));
            put64(q + 24, near_ptr(&s, r, p));
            put32(q + 32, counter++);
            put32(q + 36, (uint32_t)((x >> 24) % 100));
            put64(q + 40, (x >> 40) & 1);
        } else if (kind < 58) { /* short string(s) */
            size_t room = 16 + 16 * ((x >> 8) % 5);
            n = room + 16;
            put_words(&s, q, room);
        } else if (kind < 68) { /* array of counters / small ints */
            size_t cnt = 16 + (x >> 8) % 48;
            n = ((cnt * 4 + 8 + 15) & ~15UL) + 8;
            uint32_t base = (uint32_t)((x >> 20) % 100000);
            for (size_t i = 0; i < cnt; i++)
                put32(q + 4 * i, base + (uint32_t)(i * (1 + (x >> 50) % 4)));
        } else if (kind < 78) { /* freed chunk: fd/bk pointers, rest left zero */
            n = 32 + 16 * ((x >> 8) % 48);
            put64(q, near_ptr(&s, r, p));
            put64(q + 8, near_ptr(&s, r, p));
        } else if (kind < 83) { /* doubles: prices out of a catalogue */
            size_t cnt = 4 + (x >> 8) % 12;
            n = ((cnt * 8 + 8 + 15) & ~15UL);
            for (size_t i = 0; i < cnt; i++)
                memcpy(q + 8 * i, &prices[xs(&s) % 64], 8);
        } else if (kind < 88) { /* hash table: bucket array, mostly empty */
            size_t cnt = 64 << ((x >> 8) % 4);
            n = cnt * 8 + 16;
            for (size_t i = 0; i < cnt; i++)
                if ((xs(&s) & 3) == 0)
                    put64(q + 8 * i, near_ptr(&s, r, p));
        } else if (kind < 92) { /* I/O buffer: some text, the rest unused */
            size_t cap = 512 << ((x >> 8) % 4);
            n = cap + 16;
            put_words(&s, q, 32 + (x >> 16) % (cap / 2));
        } else { /* vector of pointers */
            size_t cnt = 4 + (x >> 8) % 28;
            n = ((cnt * 8 + 8 + 15) & ~15UL);
            for (size_t i = 0; i < cnt; i++)
                put64(q + 8 * i, near_ptr(&s, r, p));
        }
        put64(p, n | 1); /* malloc size field with PREV_INUSE */
        p += n;
    }
    /* touch what is left so the whole region is resident */
    for (; p < end; p += PAGE)
        *(volatile uint8_t *)p = 0;
}

__attribute__((unused)) static void fill_zero(const struct region *r)
{
    for (uint8_t *p = r->addr; p < r->addr + r->len; p += PAGE)
        *(volatile uint8_t *)p = 0; /* write fault: a real zeroed page, counted in RSS */
}

__attribute__((unused)) static void fill_random(const struct region *r, uint64_t seed)
{
    uint64_t s = seed | 1;
    uint64_t *w = (uint64_t *)r->addr, *end = (uint64_t *)(r->addr + r->len);
    while (w < end)
        *w++ = xs(&s);
}

#endif /* CKPT_BENCH_FILL_H */
