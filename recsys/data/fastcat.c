/* Compiled kernels of the converter's categorical path (recsys.data.kernels wraps them).
 *
 * hash_strings: the raw id of each value of an Arrow string / large_string array, read from its
 *   validity, offsets and data buffers: FNV-1a 64 over the UTF-8 bytes, then MurmurHash3's
 *   fmix64 (recsys.hashing.hash64_str); a null hashes like "".
 * Counter: train frequencies of int64 ids in an open-addressing hash table (linear probing).
 * Index: id -> position in a vocabulary, and the converter's id -> index rule.
 *
 * Buffers come through the buffer protocol (numpy arrays, pyarrow buffers): no numpy headers.
 * Loops run without the GIL; a Counter refuses to be fed from two threads at once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "hash64.h"

#define PREFETCH 16

static inline int64_t load_offset(const void *offsets, int large, int64_t i) {
    return large ? ((const int64_t *)offsets)[i] : (int64_t)((const int32_t *)offsets)[i];
}

/* hash_strings(validity or None, offsets, data or None, offset, length, large, out) */
static PyObject *hash_strings(PyObject *self, PyObject *args) {
    PyObject *validity_obj, *data_obj;
    Py_buffer offsets, out, validity = {0}, data = {0};
    Py_ssize_t offset, length;
    int large;
    if (!PyArg_ParseTuple(args, "Oy*Onnpw*", &validity_obj, &offsets, &data_obj, &offset, &length, &large, &out))
        return NULL;
    PyObject *result = NULL;
    int have_validity = validity_obj != Py_None, have_data = data_obj != Py_None;
    if (have_validity && PyObject_GetBuffer(validity_obj, &validity, PyBUF_SIMPLE) < 0) goto done;
    if (have_data && PyObject_GetBuffer(data_obj, &data, PyBUF_SIMPLE) < 0) goto done;
    Py_ssize_t width = large ? 8 : 4;
    if (offset < 0 || length < 0) {
        PyErr_SetString(PyExc_ValueError, "hash_strings: negative offset or length");
        goto done;
    }
    if (length == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (offsets.len < (offset + length + 1) * width) {
        PyErr_Format(PyExc_ValueError, "hash_strings: offsets buffer of %zd bytes is too short for %zd values at offset %zd",
                     offsets.len, length, offset);
        goto done;
    }
    if (have_validity && validity.len * 8 < offset + length) {
        PyErr_SetString(PyExc_ValueError, "hash_strings: validity bitmap too short");
        goto done;
    }
    if (out.len < length * 8) {
        PyErr_SetString(PyExc_ValueError, "hash_strings: output buffer too short");
        goto done;
    }
    const uint8_t *bits = have_validity ? (const uint8_t *)validity.buf : NULL;
    const uint8_t *bytes = have_data ? (const uint8_t *)data.buf : NULL;
    int64_t data_len = have_data ? (int64_t)data.len : 0;
    uint64_t *dst = (uint64_t *)out.buf;
    const uint64_t empty = fmix64(FNV_OFFSET);
    Py_ssize_t bad = -1;
    Py_BEGIN_ALLOW_THREADS;
    int64_t start = load_offset(offsets.buf, large, offset);
    for (Py_ssize_t i = 0; i < length; i++) {
        int64_t end = load_offset(offsets.buf, large, offset + i + 1);
        if (bits != NULL && !((bits[(offset + i) >> 3] >> ((offset + i) & 7)) & 1)) {
            dst[i] = empty;
        } else if (start < 0 || end < start || end > data_len) {
            bad = i;
            break;
        } else {
            dst[i] = fmix64(fnv1a(bytes + start, end - start));
        }
        start = end;
    }
    Py_END_ALLOW_THREADS;
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError, "hash_strings: value %zd has offsets outside the data buffer", bad);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    if (have_validity && validity.obj != NULL) PyBuffer_Release(&validity);
    if (have_data && data.obj != NULL) PyBuffer_Release(&data);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&out);
    return result;
}

/* ---- open-addressing table of int64 keys with an int64 value each ---- */

typedef struct {
    int64_t key;
    int64_t value;
} Slot;

typedef struct {
    Slot *slots;  /* key 0 marks a free slot; the id 0 lives in zero_value */
    int64_t mask; /* capacity - 1 (a power of two) */
    int shift;    /* 64 - log2(capacity) */
    int64_t size; /* keys stored in slots (not counting id 0) */
    int has_zero;
    int64_t zero_value;
} Table;

static inline uint64_t slot_of(const Table *t, int64_t key) {
    return ((uint64_t)key * 0x9E3779B97F4A7C15ULL) >> t->shift;
}

static inline void table_prefetch(const Table *t, int64_t key) {
    __builtin_prefetch(&t->slots[slot_of(t, key)]);
}

static int table_init(Table *t, int64_t expected) {
    int64_t capacity = 16;
    int bits = 4;
    while (capacity < 2 * expected) {
        capacity <<= 1;
        bits++;
    }
    t->slots = calloc((size_t)capacity, sizeof(Slot));
    if (t->slots == NULL) return -1;
    t->mask = capacity - 1;
    t->shift = 64 - bits;
    t->size = 0;
    t->has_zero = 0;
    t->zero_value = 0;
    return 0;
}

/* The slot of key (not 0): where it is, or the free slot where it goes. */
static inline Slot *table_find(const Table *t, int64_t key) {
    uint64_t i = slot_of(t, key);
    for (;;) {
        Slot *s = &t->slots[i];
        if (s->key == key || s->key == 0) return s;
        i = (i + 1) & (uint64_t)t->mask;
    }
}

static int table_grow(Table *t) {
    Table bigger;
    if (table_init(&bigger, (t->mask + 1)) < 0) return -1;
    for (int64_t i = 0; i <= t->mask; i++) {
        if (i + PREFETCH <= t->mask && t->slots[i + PREFETCH].key != 0) table_prefetch(&bigger, t->slots[i + PREFETCH].key);
        if (t->slots[i].key != 0) *table_find(&bigger, t->slots[i].key) = t->slots[i];
    }
    free(t->slots);
    bigger.size = t->size;
    bigger.has_zero = t->has_zero;
    bigger.zero_value = t->zero_value;
    *t = bigger;
    return 0;
}

/* Adds delta to the value of key (inserting it at 0); -1 when out of memory. */
static inline int table_add(Table *t, int64_t key, int64_t delta) {
    if (key == 0) {
        t->has_zero = 1;
        t->zero_value += delta;
        return 0;
    }
    Slot *s = table_find(t, key);
    if (s->key == 0) {
        if (2 * (t->size + 1) > t->mask + 1) {
            if (table_grow(t) < 0) return -1;
            s = table_find(t, key);
        }
        s->key = key;
        s->value = 0;
        t->size++;
    }
    s->value += delta;
    return 0;
}

/* The value of key, or -1 when absent. */
static inline int64_t table_get(const Table *t, int64_t key) {
    if (key == 0) return t->has_zero ? t->zero_value : -1;
    Slot *s = table_find(t, key);
    return s->key == 0 ? -1 : s->value;
}

static int64_t table_len(const Table *t) { return t->size + t->has_zero; }

/* ---- Counter ---- */

typedef struct {
    PyObject_HEAD Table table;
    int64_t missing; /* the id never counted (the hash of "") */
    int busy;
} CounterObject;

static int Counter_init(CounterObject *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"missing", NULL};
    long long missing;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "L", names, &missing)) return -1;
    free(self->table.slots);
    if (table_init(&self->table, 1024) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    self->missing = (int64_t)missing;
    return 0;
}

static void Counter_dealloc(CounterObject *self) {
    free(self->table.slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int counter_enter(CounterObject *self) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Counter used from two threads at once");
        return -1;
    }
    self->busy = 1;
    return 0;
}

/* add_rows(ids int64, rows uint8/bool or None): count ids[i] where rows[i] (the missing id excluded). */
static PyObject *Counter_add_rows(CounterObject *self, PyObject *args) {
    Py_buffer ids;
    PyObject *rows_obj;
    Py_buffer rows = {0};
    if (!PyArg_ParseTuple(args, "y*O", &ids, &rows_obj)) return NULL;
    int have_rows = rows_obj != Py_None;
    if (have_rows && PyObject_GetBuffer(rows_obj, &rows, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&ids);
        return NULL;
    }
    Py_ssize_t n = ids.len / 8;
    if (have_rows && rows.len != n) {
        PyErr_Format(PyExc_ValueError, "add_rows: %zd ids but %zd row flags", n, rows.len);
        goto fail;
    }
    if (self->table.slots == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Counter not initialised");
        goto fail;
    }
    if (counter_enter(self) < 0) goto fail;
    const int64_t *key = (const int64_t *)ids.buf;
    const uint8_t *take = have_rows ? (const uint8_t *)rows.buf : NULL;
    int64_t missing = self->missing;
    int oom = 0;
    Py_BEGIN_ALLOW_THREADS;
    Table *t = &self->table;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i + PREFETCH < n) table_prefetch(t, key[i + PREFETCH]);
        if ((take == NULL || take[i]) && key[i] != missing && table_add(t, key[i], 1) < 0) {
            oom = 1;
            break;
        }
    }
    Py_END_ALLOW_THREADS;
    self->busy = 0;
    if (oom) {
        PyErr_NoMemory();
        goto fail;
    }
    if (have_rows) PyBuffer_Release(&rows);
    PyBuffer_Release(&ids);
    Py_RETURN_NONE;
fail:
    if (have_rows) PyBuffer_Release(&rows);
    PyBuffer_Release(&ids);
    return NULL;
}

/* add(ids int64, counts int64): add counts[i] occurrences of ids[i] (the missing id excluded). */
static PyObject *Counter_add(CounterObject *self, PyObject *args) {
    Py_buffer ids, counts;
    if (!PyArg_ParseTuple(args, "y*y*", &ids, &counts)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = ids.len / 8;
    if (counts.len != ids.len) {
        PyErr_Format(PyExc_ValueError, "add: %zd ids but %zd counts", n, counts.len / 8);
        goto done;
    }
    if (self->table.slots == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Counter not initialised");
        goto done;
    }
    if (counter_enter(self) < 0) goto done;
    const int64_t *key = (const int64_t *)ids.buf, *delta = (const int64_t *)counts.buf;
    int oom = 0;
    int64_t missing = self->missing;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (key[i] != missing && table_add(&self->table, key[i], delta[i]) < 0) {
            oom = 1;
            break;
        }
    }
    Py_END_ALLOW_THREADS;
    self->busy = 0;
    if (oom) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&ids);
    PyBuffer_Release(&counts);
    return result;
}

/* export(ids_out, counts_out): every (id, count), in table order. */
static PyObject *Counter_export(CounterObject *self, PyObject *args) {
    Py_buffer ids, counts;
    if (!PyArg_ParseTuple(args, "w*w*", &ids, &counts)) return NULL;
    PyObject *result = NULL;
    int64_t n = table_len(&self->table);
    if (self->table.slots == NULL) n = -1;
    if (ids.len != n * 8 || counts.len != n * 8) {
        PyErr_Format(PyExc_ValueError, "export: the outputs must hold %lld values", (long long)n);
        goto done;
    }
    int64_t *id = (int64_t *)ids.buf, *count = (int64_t *)counts.buf, j = 0;
    const Table *t = &self->table;
    if (t->has_zero) {
        id[j] = 0;
        count[j++] = t->zero_value;
    }
    for (int64_t i = 0; i <= t->mask; i++) {
        if (t->slots[i].key != 0) {
            id[j] = t->slots[i].key;
            count[j++] = t->slots[i].value;
        }
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&ids);
    PyBuffer_Release(&counts);
    return result;
}

static Py_ssize_t Counter_len(CounterObject *self) { return (Py_ssize_t)table_len(&self->table); }

static PyMethodDef Counter_methods[] = {
    {"add_rows", (PyCFunction)Counter_add_rows, METH_VARARGS, "Count ids[i] where rows[i] (rows None: all); the missing id is skipped."},
    {"add", (PyCFunction)Counter_add, METH_VARARGS, "Add counts[i] occurrences of ids[i]; the missing id is skipped."},
    {"export", (PyCFunction)Counter_export, METH_VARARGS, "Write every (id, count) into two int64 buffers of len(self) values."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Counter_sequence = {.sq_length = (lenfunc)Counter_len};

static PyTypeObject CounterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "recsys.data.fastcat.Counter",
    .tp_doc = PyDoc_STR("Counter(missing): frequencies of int64 ids, the id `missing` never counted."),
    .tp_basicsize = sizeof(CounterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Counter_init,
    .tp_dealloc = (destructor)Counter_dealloc,
    .tp_methods = Counter_methods,
    .tp_as_sequence = &Counter_sequence,
};

/* ---- Index ---- */

typedef struct {
    PyObject_HEAD Table table;
} IndexObject;

static int Index_init(IndexObject *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"ids", NULL};
    Py_buffer ids;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*", names, &ids)) return -1;
    Py_ssize_t n = ids.len / 8;
    free(self->table.slots);
    self->table.slots = NULL;
    if (table_init(&self->table, n) < 0) {
        PyBuffer_Release(&ids);
        PyErr_NoMemory();
        return -1;
    }
    const int64_t *key = (const int64_t *)ids.buf;
    Py_ssize_t duplicate = -1;
    Py_BEGIN_ALLOW_THREADS;
    Table *t = &self->table;
    for (Py_ssize_t i = 0; i < n; i++) { /* capacity >= 2n: never grows */
        if (i + PREFETCH < n) table_prefetch(t, key[i + PREFETCH]);
        if (key[i] == 0) {
            if (t->has_zero) {
                duplicate = i;
                break;
            }
            t->has_zero = 1;
            t->zero_value = i;
            continue;
        }
        Slot *s = table_find(t, key[i]);
        if (s->key != 0) {
            duplicate = i;
            break;
        }
        s->key = key[i];
        s->value = i;
        t->size++;
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&ids);
    if (duplicate >= 0) {
        PyErr_Format(PyExc_ValueError, "Index: the id at position %zd is a duplicate (ids must be distinct)", duplicate);
        return -1;
    }
    return 0;
}

static void Index_dealloc(IndexObject *self) {
    free(self->table.slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* lookup(ids, out, missing_id, missing_index, oov_index, reserved):
 * out[i] = missing_index if ids[i] == missing_id, else position + reserved, else oov_index. */
static PyObject *Index_lookup(IndexObject *self, PyObject *args) {
    Py_buffer ids, out;
    long long missing, missing_index, oov, reserved;
    if (!PyArg_ParseTuple(args, "y*w*LLLL", &ids, &out, &missing, &missing_index, &oov, &reserved)) return NULL;
    Py_ssize_t n = ids.len / 8;
    if (out.len != ids.len || self->table.slots == NULL) {
        PyBuffer_Release(&ids);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "lookup: ids and out differ in length (or the Index is not initialised)");
        return NULL;
    }
    const int64_t *key = (const int64_t *)ids.buf;
    int64_t *dst = (int64_t *)out.buf;
    const Table *t = &self->table;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i + PREFETCH < n) table_prefetch(t, key[i + PREFETCH]);
        int64_t pos = table_get(t, key[i]);
        dst[i] = key[i] == missing ? missing_index : pos < 0 ? oov : pos + reserved;
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&ids);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static Py_ssize_t Index_len(IndexObject *self) { return (Py_ssize_t)table_len(&self->table); }

static PyMethodDef Index_methods[] = {
    {"lookup", (PyCFunction)Index_lookup, METH_VARARGS, "lookup(ids, out, missing_id, missing_index, oov_index, reserved)."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Index_sequence = {.sq_length = (lenfunc)Index_len};

static PyTypeObject IndexType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "recsys.data.fastcat.Index",
    .tp_doc = PyDoc_STR("Index(ids): position of each of the distinct int64 ids."),
    .tp_basicsize = sizeof(IndexObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Index_init,
    .tp_dealloc = (destructor)Index_dealloc,
    .tp_methods = Index_methods,
    .tp_as_sequence = &Index_sequence,
};

static PyMethodDef module_methods[] = {
    {"hash_strings", hash_strings, METH_VARARGS,
     "hash_strings(validity, offsets, data, offset, length, large, out): FNV-1a 64 + fmix64 of each string (null as '')."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "fastcat", "Compiled kernels of the converter's categorical path.", -1,
                                    module_methods};

PyMODINIT_FUNC PyInit_fastcat(void) {
    if (PyType_Ready(&CounterType) < 0 || PyType_Ready(&IndexType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Counter", (PyObject *)&CounterType) < 0 || PyModule_AddObjectRef(m, "Index", (PyObject *)&IndexType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
