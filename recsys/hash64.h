/* The 64-bit hash of recsys.hashing in C, shared by the compiled kernels (recsys/data/fastcat.c,
 * serving/idpath.c): FNV-1a 64 over bytes, then MurmurHash3's fmix64 finaliser. */
#ifndef RECSYS_HASH64_H
#define RECSYS_HASH64_H
#include <stdint.h>

#define FNV_OFFSET 0xCBF29CE484222325ULL
#define FNV_PRIME 0x100000001B3ULL

static inline uint64_t fmix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 33;
    return h;
}

static inline uint64_t fnv1a(const uint8_t *p, int64_t n) {
    uint64_t h = FNV_OFFSET;
    for (int64_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return h;
}

#endif
