/* recsys.serving.idpath: the compiled id path of the lookup service.
 *
 * One Kernel per loaded artifact (built by recsys.serving.compiled from a DirectLookup): it reads
 * the artifact's arrays in place (the vocabulary hash table of recsys.serving.vocabulary, the
 * tables' stored rows) and answers a whole ids.v1 body (recsys.serving.idsv1) in one call: parse
 * the frames, hash strings (FNV-1a 64 + fmix64), probe the vocabulary (or hash into buckets),
 * gather and decode the rows (fp32/fp16/int8/int4) into one float32 answer buffer.
 *
 * It answers only what the numpy path answers 200: any other body (malformed, over the limits,
 * an unknown feature) gives None and the Python path answers it with its own message. Every
 * operation is the numpy path's, in the same order, so the answers are bit-identical (the tests
 * compare them). Built with -ffp-contract=off: no fused multiply-add where numpy rounds twice.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "idpath_bits.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define BUCKET 8
#define MISSING_INDEX 0
#define OOV_INDEX 1
#define MULTIPLIER 0x9E3779B97F4A7C15ULL
#define STACK_BLOCKS 64
#define RELEASE_GIL_AT 4096 /* values from which the kernel runs without the GIL */

enum { KIND_F32 = 0, KIND_F16 = 1, KIND_INT4 = 4, KIND_INT8 = 8 };

typedef struct {
    PyObject_HEAD
    PyObject *keep;  /* the arrays read through the pointers below */
    PyObject *names; /* tuple of bytes: each feature's UTF-8 name, by position */
    Py_ssize_t nfeat;
    uint8_t *multi;  /* per feature: multi-valued (a missing value is an empty bag) */
    int hashed;      /* 1: rows are hash buckets (salts, num_rows); 0: vocabulary indices */
    const int64_t *ids;
    const int32_t *index;
    const uint8_t *full;
    const int64_t *start;
    const uint64_t *count;
    const int64_t *over_ids;
    const int16_t *over_feature;
    const int32_t *over_index;
    Py_ssize_t n_over;
    const int64_t *salts;
    const int64_t *num_rows;
    uint64_t *table; /* per feature: address of row 0, row stride in bytes */
    int kind, dim, q_offset, sb_offset;
    int64_t missing_id;
} Kernel;

typedef struct {
    Py_ssize_t feature;
    int kind;
    uint32_t n;
    Py_ssize_t at; /* raw ids, or the u32 lengths */
    Py_ssize_t out; /* first row of the answer */
} Block;

/* The overflow array's index of (feature f, id), OOV_INDEX when absent (Vocabularies._overflow) */
static int64_t overflow(const Kernel *k, Py_ssize_t f, int64_t id) {
    Py_ssize_t lo = 0, hi = k->n_over;
    while (lo < hi) { /* the first entry >= id */
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (k->over_ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (; lo < k->n_over && k->over_ids[lo] == id; lo++)
        if (k->over_feature[lo] == f) return k->over_index[lo];
    return OOV_INDEX;
}

/* The bucket row of (feature f, raw id) of a hashing method (bucket_per_value_np) */
static inline int64_t hashed_row(const Kernel *k, Py_ssize_t f, int64_t id) {
    return (int64_t)(fmix64((uint64_t)id ^ (uint64_t)k->salts[f]) % (uint64_t)k->num_rows[f]);
}

/* Row `row` of feature f decoded into out[0..dim) (DirectLookup._decode), zeros when absent */
static inline void decode(const Kernel *k, Py_ssize_t f, int64_t row, int present, float *out) {
    const int d = k->dim;
    if (!present) {
        memset(out, 0, sizeof(float) * (size_t)d);
        return;
    }
    const uint8_t *p = (const uint8_t *)(uintptr_t)k->table[2 * f] + (uint64_t)row * k->table[2 * f + 1];
    switch (k->kind) {
    case KIND_F32:
        for (int j = 0; j < d; j++) {
            float v;
            memcpy(&v, p + 4 * j, 4);
            out[j] = v + 0.0f;
        }
        break;
    case KIND_F16:
        for (int j = 0; j < d; j++) out[j] = half_to_float(rd16(p + 2 * j)) + 0.0f;
        break;
    default: {
        const float scale = half_to_float(rd16(p + k->sb_offset)), bias = half_to_float(rd16(p + k->sb_offset + 2));
        const uint8_t *q = p + k->q_offset;
        if (k->kind == KIND_INT8) {
            int j = 0;
#if defined(__SSE2__)
            /* 16 codes at a time: widened to int32, converted, then the same multiply and adds (lane by lane
             * the scalar operations, so the bits are the same; -O2 leaves the scalar loop unvectorized) */
            const __m128 vscale = _mm_set1_ps(scale), vbias = _mm_set1_ps(bias), zero = _mm_setzero_ps();
            const __m128i z = _mm_setzero_si128();
            for (; j + 16 <= d; j += 16) {
                const __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(q + j));
                const __m128i lo = _mm_unpacklo_epi8(b, z), hi = _mm_unpackhi_epi8(b, z);
                const __m128i w[4] = {_mm_unpacklo_epi16(lo, z), _mm_unpackhi_epi16(lo, z), _mm_unpacklo_epi16(hi, z), _mm_unpackhi_epi16(hi, z)};
                for (int r = 0; r < 4; r++) {
                    __m128 t = _mm_mul_ps(_mm_cvtepi32_ps(w[r]), vscale);
                    t = _mm_add_ps(t, vbias);
                    _mm_storeu_ps(out + j + 4 * r, _mm_add_ps(t, zero));
                }
            }
#endif
            for (; j < d; j++) {
                float t = (float)q[j] * scale;
                t = t + bias;
                out[j] = t + 0.0f;
            }
        } else {
            for (int j = 0; j < d; j += 2) {
                float a = (float)(q[j / 2] & 0x0F) * scale, b = (float)(q[j / 2] >> 4) * scale;
                a = a + bias;
                b = b + bias;
                out[j] = a + 0.0f;
                out[j + 1] = b + 0.0f;
            }
        }
    }
    }
}

/* The feature position of a name, -1 when unknown */
static Py_ssize_t feature_of(const Kernel *k, const uint8_t *name, Py_ssize_t len) {
    for (Py_ssize_t f = 0; f < k->nfeat; f++) {
        PyObject *b = PyTuple_GET_ITEM(k->names, f);
        if (PyBytes_GET_SIZE(b) == len && memcmp(PyBytes_AS_STRING(b), name, (size_t)len) == 0) return f;
    }
    return -1;
}

/* Pass 1: the blocks of a body the numpy path would answer 200, else -1 (blocks: room for count) */
static Py_ssize_t parse(const Kernel *k, const uint8_t *s, Py_ssize_t total, Py_ssize_t max_items, Py_ssize_t max_len, Block *blocks,
                        Py_ssize_t count) {
    Py_ssize_t at = 8, seen = 0;
    for (Py_ssize_t b = 0; b < count; b++) {
        if (at + 2 > total) return -1;
        Py_ssize_t len = rd16(s + at);
        if (len < 1 || len > max_len || at + 2 + len + 5 > total) return -1;
        Py_ssize_t f = feature_of(k, s + at + 2, len);
        if (f < 0) return -1; /* unknown, or not UTF-8: the Python path explains */
        at += 2 + len;
        int kind = s[at];
        uint32_t n = rd32(s + at + 1);
        at += 5;
        seen += n;
        if (seen > max_items) return -1;
        Block *blk = &blocks[b];
        blk->feature = f;
        blk->kind = kind;
        blk->n = n;
        blk->at = at;
        blk->out = seen - n;
        if (kind == 0) {
            if (at + 8 * (Py_ssize_t)n > total) return -1;
            at += 8 * (Py_ssize_t)n;
        } else if (kind == 1) {
            if (at + 4 * (Py_ssize_t)n > total) return -1;
            Py_ssize_t size = 0;
            for (uint32_t i = 0; i < n; i++) {
                uint32_t l = rd32(s + at + 4 * (Py_ssize_t)i);
                if ((Py_ssize_t)l > max_len) return -1;
                size += l;
            }
            Py_ssize_t blob = at + 4 * (Py_ssize_t)n;
            if (blob + size > total || !valid_utf8(s + blob, size)) return -1;
            at = blob + size;
        } else {
            return -1;
        }
    }
    return at == total ? seen : -1;
}

/* A chunk of values resolved in passes, each issuing all its memory reads before the next uses them:
 * ids and home buckets (prefetching the buckets), the slots (prefetching the indices), the rows
 * (prefetching the stored rows), then the decode. The misses of a pass overlap. */
#define CHUNK 128
typedef struct {
    int64_t id[CHUNK];
    int64_t row[CHUNK];
    uint64_t bucket[CHUNK];
    int32_t feature[CHUNK];
    int n;
} Chunk;

static void flush(const Kernel *k, Chunk *c, float *out) {
    const int n = c->n;
    if (k->hashed) {
        for (int i = 0; i < n; i++) {
            int32_t f = c->feature[i];
            c->row[i] = hashed_row(k, f, c->id[i]);
            __builtin_prefetch((const uint8_t *)(uintptr_t)k->table[2 * f] + (uint64_t)c->row[i] * k->table[2 * f + 1]);
        }
    } else {
        for (int i = 0; i < n; i++) {
            int32_t f = c->feature[i];
            uint64_t h = ((uint64_t)c->id[i] * MULTIPLIER) >> 32;
            c->bucket[i] = ((h * k->count[f]) >> 32) + (uint64_t)k->start[f];
            __builtin_prefetch(k->ids + c->bucket[i] * BUCKET);
        }
        for (int i = 0; i < n; i++) { /* the slot holding the id (-1: not in its bucket) */
            const int64_t id = c->id[i], *slots = k->ids + c->bucket[i] * BUCKET;
            int64_t at = -1;
            for (int s = 0; s < BUCKET; s++)
                if (slots[s] == id) {
                    at = (int64_t)(c->bucket[i] * BUCKET) + s;
                    break;
                }
            c->row[i] = at;
            if (at >= 0) __builtin_prefetch(k->index + at);
        }
        for (int i = 0; i < n; i++) {
            const int64_t id = c->id[i];
            int32_t f = c->feature[i];
            int64_t row;
            if (id == k->missing_id)
                row = MISSING_INDEX;
            else if (c->row[i] >= 0)
                row = k->index[c->row[i]];
            else if (k->n_over && k->full[c->bucket[i]])
                row = overflow(k, f, id);
            else
                row = OOV_INDEX;
            c->row[i] = row;
            __builtin_prefetch((const uint8_t *)(uintptr_t)k->table[2 * f] + (uint64_t)row * k->table[2 * f + 1]);
        }
    }
    for (int i = 0; i < n; i++) {
        int32_t f = c->feature[i];
        decode(k, f, c->row[i], !(k->multi[f] && c->id[i] == k->missing_id), out + (Py_ssize_t)i * k->dim);
    }
    c->n = 0;
}

static inline void push(const Kernel *k, Chunk *c, Py_ssize_t f, int64_t id, float **out) {
    c->feature[c->n] = (int32_t)f;
    c->id[c->n++] = id;
    if (c->n == CHUNK) {
        flush(k, c, *out);
        *out += CHUNK * k->dim;
    }
}

/* Pass 2: every block's vectors into out, in order (no Python object touched: runs without the GIL) */
static void fill_blocks(const Kernel *k, const uint8_t *s, const Block *blocks, Py_ssize_t count, float *out) {
    Chunk c;
    c.n = 0;
    for (Py_ssize_t b = 0; b < count; b++) {
        const Block *blk = &blocks[b];
        const uint8_t *p = s + blk->at;
        if (blk->kind == 0) {
            for (uint32_t i = 0; i < blk->n; i++) push(k, &c, blk->feature, rd64(p + 8 * (Py_ssize_t)i), &out);
            continue;
        }
        const uint8_t *v = p + 4 * (Py_ssize_t)blk->n;
        for (uint32_t i = 0; i < blk->n; i++) {
            uint32_t l = rd32(p + 4 * (Py_ssize_t)i);
            uint64_t h = FNV_OFFSET;
            for (uint32_t j = 0; j < l; j++) h = (h ^ v[j]) * FNV_PRIME;
            v += l;
            push(k, &c, blk->feature, (int64_t)fmix64(h), &out);
        }
    }
    if (c.n) flush(k, &c, out);
}

/* The vectors of (position, raw id) arrays (positions checked) */
static void fill_pairs(const Kernel *k, const int64_t *feature, const int64_t *raw, Py_ssize_t n, float *out) {
    Chunk c;
    c.n = 0;
    for (Py_ssize_t i = 0; i < n; i++) push(k, &c, feature[i], raw[i], &out);
    if (c.n) flush(k, &c, out);
}

/* Kernel.answer(body, max_items, max_string_length) -> bytes (float32 rows) | None */
static PyObject *Kernel_answer(Kernel *k, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "answer(body, max_items, max_string_length)");
        return NULL;
    }
    if (k->names == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Kernel not initialised");
        return NULL;
    }
    Py_ssize_t max_items = PyLong_AsSsize_t(args[1]), max_len = PyLong_AsSsize_t(args[2]);
    if ((max_items == -1 || max_len == -1) && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *s = view.buf;
    Py_ssize_t total = view.len;
    PyObject *result = Py_None;
    Py_INCREF(Py_None);
    if (total < 8 || memcmp(s, "RIDS", 4) != 0 || s[4] != 1 || s[5] != 0) goto done;
    Py_ssize_t count = rd16(s + 6);
    Block stack[STACK_BLOCKS], *blocks = stack;
    if (count > STACK_BLOCKS && !(blocks = PyMem_Malloc(sizeof(Block) * (size_t)count))) {
        Py_DECREF(result);
        result = PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t n = parse(k, s, total, max_items, max_len, blocks, count);
    if (n >= 0) {
        PyObject *body = PyBytes_FromStringAndSize(NULL, n * k->dim * (Py_ssize_t)sizeof(float));
        if (body == NULL) {
            Py_DECREF(result);
            result = NULL;
        } else {
            float *out = (float *)PyBytes_AS_STRING(body);
            if (n >= RELEASE_GIL_AT) {
                Py_BEGIN_ALLOW_THREADS fill_blocks(k, s, blocks, count, out);
                Py_END_ALLOW_THREADS
            } else {
                fill_blocks(k, s, blocks, count, out);
            }
            Py_DECREF(result);
            result = body;
        }
    }
    if (blocks != stack) PyMem_Free(blocks);
done:
    PyBuffer_Release(&view);
    return result;
}

/* Kernel.fill(feature: int64 buffer, raw: int64 buffer, out: writable float32 buffer of n * dim) */
static PyObject *Kernel_fill(Kernel *k, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "fill(feature, raw, out)");
        return NULL;
    }
    if (k->names == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Kernel not initialised");
        return NULL;
    }
    Py_buffer fv, rv, ov;
    if (PyObject_GetBuffer(args[0], &fv, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &rv, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&fv);
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &ov, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&fv);
        PyBuffer_Release(&rv);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n = rv.len / 8;
    const int64_t *feature = fv.buf, *raw = rv.buf;
    if (fv.len != rv.len || rv.len % 8 || ov.len != n * k->dim * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "fill: feature and raw must be int64 arrays of one length, out float32 [n, dim]");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (feature[i] < 0 || feature[i] >= k->nfeat) {
            PyErr_Format(PyExc_ValueError, "fill: feature position %lld at %zd out of range 0..%zd", (long long)feature[i], i, k->nfeat - 1);
            goto done;
        }
    }
    float *out = ov.buf;
    Py_BEGIN_ALLOW_THREADS fill_pairs(k, feature, raw, n, out);
    Py_END_ALLOW_THREADS result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&fv);
    PyBuffer_Release(&rv);
    PyBuffer_Release(&ov);
    return result;
}

static int Kernel_init(Kernel *k, PyObject *args, PyObject *kwds) {
    PyObject *names, *keep;
    const char *multi, *table;
    Py_ssize_t multi_len, table_len, n_over;
    int hashed, kind, dim, q_offset, sb_offset;
    unsigned long long ids, index, full, start, count, over_ids, over_feature, over_index, salts, num_rows;
    long long missing_id;
    if (!PyArg_ParseTuple(args, "O!y#p(KKKKKKKKn)(KK)y#(iiii)LO:Kernel", &PyTuple_Type, &names, &multi, &multi_len, &hashed, &ids, &index, &full,
                          &start, &count, &over_ids, &over_feature, &over_index, &n_over, &salts, &num_rows, &table, &table_len, &kind, &dim,
                          &q_offset, &sb_offset, &missing_id, &keep))
        return -1;
    Py_ssize_t nfeat = PyTuple_GET_SIZE(names);
    for (Py_ssize_t f = 0; f < nfeat; f++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(names, f))) {
            PyErr_SetString(PyExc_TypeError, "Kernel: names must be a tuple of bytes");
            return -1;
        }
    if (multi_len != nfeat || table_len != 16 * nfeat || dim < 1 || (kind == KIND_INT4 && dim % 2) ||
        (kind != KIND_F32 && kind != KIND_F16 && kind != KIND_INT8 && kind != KIND_INT4)) {
        PyErr_SetString(PyExc_ValueError, "Kernel: one multi byte and one (address, stride) pair per feature, a known kind, int4 dims even");
        return -1;
    }
    PyMem_Free(k->multi);
    PyMem_Free(k->table);
    k->multi = PyMem_Malloc((size_t)nfeat + 1);
    k->table = PyMem_Malloc((size_t)table_len + 16);
    if (!k->multi || !k->table) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(k->multi, multi, (size_t)nfeat);
    memcpy(k->table, table, (size_t)table_len);
    Py_INCREF(names);
    Py_XSETREF(k->names, names);
    Py_INCREF(keep);
    Py_XSETREF(k->keep, keep);
    k->nfeat = nfeat;
    k->hashed = hashed;
    k->ids = (const int64_t *)(uintptr_t)ids;
    k->index = (const int32_t *)(uintptr_t)index;
    k->full = (const uint8_t *)(uintptr_t)full;
    k->start = (const int64_t *)(uintptr_t)start;
    k->count = (const uint64_t *)(uintptr_t)count;
    k->over_ids = (const int64_t *)(uintptr_t)over_ids;
    k->over_feature = (const int16_t *)(uintptr_t)over_feature;
    k->over_index = (const int32_t *)(uintptr_t)over_index;
    k->n_over = n_over;
    k->salts = (const int64_t *)(uintptr_t)salts;
    k->num_rows = (const int64_t *)(uintptr_t)num_rows;
    k->kind = kind;
    k->dim = dim;
    k->q_offset = q_offset;
    k->sb_offset = sb_offset;
    k->missing_id = missing_id;
    return 0;
}

static void Kernel_dealloc(Kernel *k) {
    Py_XDECREF(k->keep);
    Py_XDECREF(k->names);
    PyMem_Free(k->multi);
    PyMem_Free(k->table);
    Py_TYPE(k)->tp_free((PyObject *)k);
}

static PyObject *Kernel_dim(Kernel *k, void *closure) { return PyLong_FromLong(k->dim); }

static PyMethodDef Kernel_methods[] = {
    {"answer", (PyCFunction)(void (*)(void))Kernel_answer, METH_FASTCALL,
     "answer(body, max_items, max_string_length): the float32 rows of an ids.v1 body, or None (the Python path answers)"},
    {"fill", (PyCFunction)(void (*)(void))Kernel_fill, METH_FASTCALL, "fill(feature, raw, out): the vectors of (position, raw id) pairs into out"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Kernel_getset[] = {{"dim", (getter)Kernel_dim, NULL, "floats per vector", NULL}, {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject KernelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "recsys.serving.idpath.Kernel",
    .tp_basicsize = sizeof(Kernel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The compiled id path over one loaded artifact's arrays (see recsys.serving.compiled).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Kernel_init,
    .tp_dealloc = (destructor)Kernel_dealloc,
    .tp_methods = Kernel_methods,
    .tp_getset = Kernel_getset,
};

static struct PyModuleDef idpath_module = {PyModuleDef_HEAD_INIT, "idpath", "The compiled id path (ids.v1 bodies to float32 rows).", -1, NULL};

PyMODINIT_FUNC PyInit_idpath(void) {
    if (PyType_Ready(&KernelType) < 0) return NULL;
    PyObject *m = PyModule_Create(&idpath_module);
    if (m == NULL) return NULL;
    Py_INCREF(&KernelType);
    if (PyModule_AddObject(m, "Kernel", (PyObject *)&KernelType) < 0) {
        Py_DECREF(&KernelType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
