/* The converter's fast path for plain delimited text (recsys.data.fastrows wraps it).
 *
 * parse_rows reads the lines of one block of the input straight from its bytes: each column is
 * the label ("0" or "1"), a dense integer (an optional '-' and 1 to 18 digits; empty: NaN), a
 * categorical value (its raw id: FNV-1a 64 + fmix64 of the bytes, recsys.hashing.hash64_str; empty:
 * the hash of "") or unused. These are the values pyarrow's CSV reader and the converter's
 * vectorised checks give for such rows, bit for bit. Anything else declines the whole block
 * (returns -1, before or while parsing), and the caller parses it as before: a byte below 0x20
 * other than the delimiter and '\n' (a carriage return, NUL, ...), any byte >= 0x80 (non-ASCII,
 * a byte-order mark), an empty line, a row with the wrong number of columns, a row with every
 * column empty (a blank row, dropped by the converter), a label or dense value of any other form.
 *
 * A first pass over the block (16 bytes at a time with SSE2) counts its lines and looks for odd
 * bytes, so a block that declines for them costs one fast scan and the outputs are sized first.
 * The loops run without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "hash64.h"

#define MAX_DIGITS 18 /* below 2^63: exact in int64, rounded once to double as pyarrow rounds the decimal */
#define DECLINE (-1)
#define TOO_SMALL (-2)

/* Lines in p[0..n) (a last line without '\n' counts); DECLINE when an odd byte is found. */
static Py_ssize_t prescan(const uint8_t *p, Py_ssize_t n, uint8_t delim) {
    Py_ssize_t lines = 0, i = 0;
#if defined(__SSE2__)
    const __m128i newline = _mm_set1_epi8('\n'), sep = _mm_set1_epi8((char)delim), space = _mm_set1_epi8(0x20);
    for (; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(p + i));
        int nl = _mm_movemask_epi8(_mm_cmpeq_epi8(v, newline));
        int dl = _mm_movemask_epi8(_mm_cmpeq_epi8(v, sep));
        int low = _mm_movemask_epi8(_mm_cmplt_epi8(v, space)); /* signed: below 0x20, or 0x80 and above */
        if (low & ~(nl | dl)) return DECLINE;
        for (unsigned m = (unsigned)nl; m; m &= m - 1) lines++; /* no popcnt instruction assumed */
    }
#endif
    for (; i < n; i++) {
        uint8_t c = p[i];
        if (c == '\n')
            lines++;
        else if ((c < 0x20 && c != delim) || c >= 0x80)
            return DECLINE;
    }
    if (n > 0 && p[n - 1] != '\n') lines++;
    return lines;
}

typedef struct {
    const char *roles; /* per column: 'l' label, 'd' dense, 's' sparse, 'x' unused */
    Py_ssize_t ncols;
    uint8_t delim;
    float *label;
    double *dense;   /* [n_dense][capacity] */
    int64_t *sparse; /* [n_sparse][capacity] */
    Py_ssize_t capacity;
} Out;

/* Parses the line at *pp (it ends with '\n') into row `row`; advances *pp past the '\n'. 0 or DECLINE. */
static int parse_line(const Out *o, const uint8_t **pp, Py_ssize_t row) {
    const uint8_t *p = *pp;
    const uint8_t delim = o->delim;
    Py_ssize_t d = 0, s = 0;
    int any = 0;
    for (Py_ssize_t c = 0; c < o->ncols; c++) {
        const uint8_t *q = p;
        switch (o->roles[c]) {
        case 's': {
            uint64_t h = FNV_OFFSET;
            uint8_t ch;
            while ((ch = *q) != delim && ch != '\n') {
                h = (h ^ ch) * FNV_PRIME;
                q++;
            }
            o->sparse[s++ * o->capacity + row] = (int64_t)fmix64(h);
            break;
        }
        case 'd': {
            int neg = *q == '-';
            q += neg;
            const uint8_t *digits = q;
            uint64_t v = 0;
            while ((unsigned)(*q - '0') < 10u) v = v * 10 + (uint64_t)(*q++ - '0');
            Py_ssize_t k = q - digits;
            if (k > MAX_DIGITS || (k == 0 && neg)) return DECLINE;
            o->dense[d++ * o->capacity + row] = k == 0 ? NAN : neg ? -(double)v : (double)v;
            break;
        }
        case 'l':
            if ((*q != '0' && *q != '1') || (q[1] != delim && q[1] != '\n')) return DECLINE;
            o->label[row] = (float)(*q - '0');
            q++;
            break;
        default:
            while (*q != delim && *q != '\n') q++;
        }
        any |= q != p;
        if (*q != (c + 1 < o->ncols ? delim : '\n')) return DECLINE; /* a bad value, or the wrong number of columns */
        p = q + 1;
    }
    if (!any) return DECLINE; /* a blank row */
    *pp = p;
    return 0;
}

/* parse_rows(data, roles, delimiter, label, dense, sparse, start, capacity) -> rows, -1 (declined) or -2 (outputs too small) */
static PyObject *parse_rows(PyObject *self, PyObject *args) {
    Py_buffer data, label, dense, sparse;
    const char *roles;
    Py_ssize_t ncols, start, capacity;
    int delimiter;
    if (!PyArg_ParseTuple(args, "y*s#iw*w*w*nn", &data, &roles, &ncols, &delimiter, &label, &dense, &sparse, &start, &capacity))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n_dense = 0, n_sparse = 0, n_label = 0;
    for (Py_ssize_t c = 0; c < ncols; c++) {
        n_dense += roles[c] == 'd';
        n_sparse += roles[c] == 's';
        n_label += roles[c] == 'l';
    }
    if (ncols < 2 || n_label > 1 || delimiter <= 0 || delimiter >= 0x80 || delimiter == '\n' || start < 0 || start > capacity ||
        label.len < capacity * (Py_ssize_t)sizeof(float) || dense.len < n_dense * capacity * (Py_ssize_t)sizeof(double) ||
        sparse.len < n_sparse * capacity * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "parse_rows: bad roles, delimiter, start or output sizes");
        goto done;
    }
    Out o = {roles, ncols, (uint8_t)delimiter, (float *)label.buf, (double *)dense.buf, (int64_t *)sparse.buf, capacity};
    const uint8_t *p = (const uint8_t *)data.buf;
    Py_ssize_t n = data.len, rows, status = 0;
    uint8_t *tail = NULL;
    Py_BEGIN_ALLOW_THREADS;
    rows = prescan(p, n, (uint8_t)delimiter);
    if (rows >= 0 && start + rows > capacity) status = TOO_SMALL;
    if (rows < 0) status = DECLINE;
    Py_ssize_t full = rows - (n > 0 && p[n - 1] != '\n'); /* lines ending in '\n' */
    const uint8_t *end = p + n;
    for (Py_ssize_t r = 0; status == 0 && r < full; r++)
        if (parse_line(&o, &p, start + r) < 0) status = DECLINE;
    if (status == 0 && full < rows) { /* the last line has no '\n': parsed from a copy with one */
        tail = malloc((size_t)(end - p) + 1);
        if (tail == NULL) {
            status = TOO_SMALL - 1;
        } else {
            memcpy(tail, p, (size_t)(end - p));
            tail[end - p] = '\n';
            const uint8_t *t = tail;
            if (parse_line(&o, &t, start + full) < 0) status = DECLINE;
        }
    }
    free(tail);
    Py_END_ALLOW_THREADS;
    if (status == TOO_SMALL - 1) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyLong_FromSsize_t(status < 0 ? status : rows);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&label);
    PyBuffer_Release(&dense);
    PyBuffer_Release(&sparse);
    return result;
}

static PyMethodDef module_methods[] = {
    {"parse_rows", parse_rows, METH_VARARGS,
     "parse_rows(data, roles, delimiter, label, dense, sparse, start, capacity): rows parsed into rows start.. of the outputs, "
     "-1 when the block is declined, -2 when the outputs cannot hold its rows."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "fastparse", "The converter's fast path for plain delimited text.", -1,
                                    module_methods};

PyMODINIT_FUNC PyInit_fastparse(void) { return PyModule_Create(&module); }
