/* recsys.serving.idpath's bit-level helpers: the hash finaliser, little-endian reads, the exact
 * half-to-float conversion numpy uses, and the strict UTF-8 check of Python's decoder. */
#ifndef RECSYS_IDPATH_BITS_H
#define RECSYS_IDPATH_BITS_H
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "hash64.h" /* fmix64, FNV_OFFSET, FNV_PRIME (recsys/hash64.h) */

static inline uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline int64_t rd64(const uint8_t *p) {
    int64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint16_t rd16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* numpy's npy_halfbits_to_floatbits: exact */
static inline float half_to_float(uint16_t h) {
    uint32_t f_sgn = ((uint32_t)h & 0x8000u) << 16, bits;
    uint32_t h_exp = h & 0x7c00u;
    if (h_exp == 0) {
        uint32_t h_sig = h & 0x03ffu;
        if (h_sig == 0) {
            bits = f_sgn;
        } else {
            h_sig <<= 1;
            while ((h_sig & 0x0400u) == 0) {
                h_sig <<= 1;
                h_exp++;
            }
            bits = f_sgn + (((uint32_t)(127 - 15) - h_exp) << 23) + ((h_sig & 0x03ffu) << 13);
        }
    } else if (h_exp == 0x7c00u) {
        bits = f_sgn + 0x7f800000u + (((uint32_t)h & 0x03ffu) << 13);
    } else {
        bits = f_sgn + ((((uint32_t)h & 0x7fffu) + 0x1c000u) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Strict UTF-8 (what Python's bytes.decode("utf-8") accepts): 1 when valid */
static int valid_utf8(const uint8_t *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ULL)) {
                i += 8;
                continue;
            }
        }
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        Py_ssize_t len;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return 0;
        }
        if (i + len > n || s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (Py_ssize_t k = 2; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += len;
    }
    return 1;
}

#endif
