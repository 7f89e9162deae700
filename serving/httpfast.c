/* recsys.serving.httpfast: recognises the one request shape the lean front answers without a parser.
 *
 * match(data, auth, max_length) looks at the start of `data` (bytes received at a request boundary)
 * and returns (end, body_start, keep_alive, accept) when it begins with one whole request of exactly
 * this form, else None:
 *
 *   POST /v1/embeddings HTTP/1.1 CRLF
 *   header lines "name: value" CRLF (token names, visible or space/tab value characters, none at the
 *   value's end), then CRLF
 *   Content-Type: application/vnd.recsys.ids.v1 (parameters after ';' allowed), once
 *   Content-Length: digits, once, at most max_length; the body that long, all in `data`
 *   Authorization equal to `auth` (compared in constant time) when `auth` is not None
 *   no Transfer-Encoding, Expect or Upgrade; Connection absent, "keep-alive" or "close"
 *
 * Anything else (another method, path or version, a bare LF, obs-fold, a repeated header that
 * matters, a partial body, a large header block) gives None, and the caller hands the same bytes to
 * the full HTTP parser (httptools): declining is always safe, so this accepts a strict subset of
 * what that parser reads the same way (tests/unit/test_httpfast.py checks every accepted request
 * against httptools). `accept` is the Accept header's value (b"" when absent).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_HEADER_BYTES 8192

static const char LINE[] = "POST /v1/embeddings HTTP/1.1\r\n";
static const char MEDIA[] = "application/vnd.recsys.ids.v1";

static int is_tchar(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_vchar(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

static int name_is(const unsigned char *name, Py_ssize_t n, const char *want) {
    Py_ssize_t w = (Py_ssize_t)strlen(want);
    if (n != w) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = name[i];
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c - 'A' + 'a');
        if (c != (unsigned char)want[i]) return 0;
    }
    return 1;
}

static int media_is_ids(const unsigned char *v, Py_ssize_t n) {
    Py_ssize_t end = 0;
    while (end < n && v[end] != ';') end++;
    while (end > 0 && (v[end - 1] == ' ' || v[end - 1] == '\t')) end--;
    return name_is(v, end, MEDIA);
}

static PyObject *match(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "match(data, auth, max_length)");
        return NULL;
    }
    Py_buffer data, auth = {0};
    int have_auth = args[1] != Py_None;
    long long max_length = PyLong_AsLongLong(args[2]);
    if (max_length == -1 && PyErr_Occurred()) return NULL;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) return NULL;
    if (have_auth && PyObject_GetBuffer(args[1], &auth, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    const unsigned char *p = data.buf;
    Py_ssize_t n = data.len, line = (Py_ssize_t)sizeof(LINE) - 1, pos = line;
    PyObject *result = Py_None;
    int ctype = 0, auth_ok = !have_auth, auth_seen = 0, keep = 1, conn_seen = 0;
    long long length = -1;
    const unsigned char *accept = NULL;
    Py_ssize_t accept_len = 0, limit = n < MAX_HEADER_BYTES ? n : MAX_HEADER_BYTES;
    if (n < line || memcmp(p, LINE, (size_t)line) != 0) goto done;
    for (;;) {
        if (pos + 1 >= limit) goto done;
        if (p[pos] == '\r') {  /* the empty line: end of the headers */
            if (p[pos + 1] != '\n') goto done;
            pos += 2;
            break;
        }
        Py_ssize_t name = pos;
        while (pos < limit && is_tchar(p[pos])) pos++;
        if (pos == name || pos >= limit || p[pos] != ':') goto done;
        Py_ssize_t name_len = pos - name;
        pos++;
        while (pos < limit && (p[pos] == ' ' || p[pos] == '\t')) pos++;
        Py_ssize_t value = pos;
        while (pos < limit && is_vchar(p[pos])) pos++;
        if (pos + 1 >= limit || p[pos] != '\r' || p[pos + 1] != '\n') goto done;
        Py_ssize_t value_len = pos - value;
        if (value_len > 0 && (p[pos - 1] == ' ' || p[pos - 1] == '\t')) goto done; /* trailing white space: parsers differ */
        const unsigned char *nm = p + name, *v = p + value;
        pos += 2;
        if (name_is(nm, name_len, "content-length")) {
            if (length >= 0 || value_len == 0 || value_len > 15) goto done;
            length = 0;
            for (Py_ssize_t i = 0; i < value_len; i++) {
                if (v[i] < '0' || v[i] > '9') goto done;
                length = length * 10 + (v[i] - '0');
            }
        } else if (name_is(nm, name_len, "content-type")) {
            if (ctype || !media_is_ids(v, value_len)) goto done;
            ctype = 1;
        } else if (name_is(nm, name_len, "authorization")) {
            if (auth_seen) goto done;
            auth_seen = 1;
            if (have_auth && value_len == auth.len) {
                unsigned char diff = 0;
                for (Py_ssize_t i = 0; i < value_len; i++) diff |= (unsigned char)(v[i] ^ ((const unsigned char *)auth.buf)[i]);
                auth_ok = diff == 0;
            }
        } else if (name_is(nm, name_len, "accept")) {
            if (accept != NULL) goto done;
            accept = v;
            accept_len = value_len;
        } else if (name_is(nm, name_len, "connection")) {
            if (conn_seen) goto done;
            conn_seen = 1;
            if (name_is(v, value_len, "close")) keep = 0;
            else if (!name_is(v, value_len, "keep-alive")) goto done;
        } else if (name_is(nm, name_len, "transfer-encoding") || name_is(nm, name_len, "expect") || name_is(nm, name_len, "upgrade")) {
            goto done;
        }
    }
    if (!ctype || !auth_ok || length < 0 || length > max_length || n - pos < length) goto done;
    result = Py_BuildValue("(nnOy#)", pos + (Py_ssize_t)length, pos, keep ? Py_True : Py_False, accept ? (const char *)accept : "",
                           accept_len);
    goto out;
done:
    Py_INCREF(result);
out:
    PyBuffer_Release(&data);
    if (have_auth) PyBuffer_Release(&auth);
    return result;
}

static PyMethodDef methods[] = {
    {"match", (PyCFunction)(void (*)(void))match, METH_FASTCALL,
     "match(data, auth, max_length): (end, body_start, keep_alive, accept) of the ids.v1 lookup at data's start, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "httpfast", "The lean front's request recogniser.", -1, methods};

PyMODINIT_FUNC PyInit_httpfast(void) { return PyModule_Create(&module); }
