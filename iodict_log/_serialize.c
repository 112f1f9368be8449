/* serialize.py's msgpack for scalars in C: str, bytes, int, float, bool and None,
 * packed exactly as msgpack's Packer(use_bin_type=True, strict_types=True) packs
 * them, and unpacked as msgpack.unpackb(raw=False) unpacks them. Anything else
 * (containers, tuples, exts, other types) is the Serializer's: these say so by
 * returning NULL with no exception set. tests/test_native_iodict.py holds them
 * to msgpack on random input. */
#include "native.h"

#include <string.h>

/* --- msgpack scalars, as msgpack's Packer(use_bin_type=True, strict_types=True) ---- */

/* Pack a str, bytes, int, float, bool or None into a new bytes object; NULL with no
 * exception for any other type (or a str that is not valid Unicode), NULL with an
 * exception on failure. */
PyObject *pack_scalar(PyObject *v) {
    unsigned char head[9];
    size_t n = 0;
    const char *body = NULL;
    Py_ssize_t blen = 0;
    if (PyUnicode_CheckExact(v)) {
        body = PyUnicode_AsUTF8AndSize(v, &blen);
        if (body == NULL) {
            PyErr_Clear();  /* a lone surrogate: the Python path raises TypeError */
            return NULL;
        }
        if (blen < 32) head[n++] = (unsigned char)(0xa0 | blen);
        else if (blen < 256) { head[n++] = 0xd9; head[n++] = (unsigned char)blen; }
        else if (blen < 65536) { head[n++] = 0xda; head[n++] = (unsigned char)(blen >> 8); head[n++] = (unsigned char)blen; }
        else if ((uint64_t)blen <= 0xffffffffULL) {
            head[n++] = 0xdb;
            for (int i = 3; i >= 0; i--) head[n++] = (unsigned char)((uint64_t)blen >> (8 * i));
        } else return NULL;
    } else if (PyBytes_CheckExact(v)) {
        body = PyBytes_AS_STRING(v);
        blen = PyBytes_GET_SIZE(v);
        if (blen < 256) { head[n++] = 0xc4; head[n++] = (unsigned char)blen; }
        else if (blen < 65536) { head[n++] = 0xc5; head[n++] = (unsigned char)(blen >> 8); head[n++] = (unsigned char)blen; }
        else if ((uint64_t)blen <= 0xffffffffULL) {
            head[n++] = 0xc6;
            for (int i = 3; i >= 0; i--) head[n++] = (unsigned char)((uint64_t)blen >> (8 * i));
        } else return NULL;
    } else if (v == Py_None) {
        head[n++] = 0xc0;
    } else if (v == Py_True || v == Py_False) {
        head[n++] = v == Py_True ? 0xc3 : 0xc2;
    } else if (PyLong_CheckExact(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return NULL;  /* (2**63 .. 2**64-1, or out of range: the Serializer's) */
        }
        if (x >= 0) {
            uint64_t u = (uint64_t)x;
            if (u < 128) head[n++] = (unsigned char)u;
            else if (u < 256) { head[n++] = 0xcc; head[n++] = (unsigned char)u; }
            else if (u < 65536) { head[n++] = 0xcd; head[n++] = (unsigned char)(u >> 8); head[n++] = (unsigned char)u; }
            else if (u <= 0xffffffffULL) { head[n++] = 0xce; for (int i = 3; i >= 0; i--) head[n++] = (unsigned char)(u >> (8 * i)); }
            else { head[n++] = 0xcf; for (int i = 7; i >= 0; i--) head[n++] = (unsigned char)(u >> (8 * i)); }
        } else {
            if (x >= -32) head[n++] = (unsigned char)(x & 0xff);
            else if (x >= -128) { head[n++] = 0xd0; head[n++] = (unsigned char)(x & 0xff); }
            else if (x >= -32768) { head[n++] = 0xd1; head[n++] = (unsigned char)((x >> 8) & 0xff); head[n++] = (unsigned char)(x & 0xff); }
            else if (x >= -2147483648LL) { head[n++] = 0xd2; for (int i = 3; i >= 0; i--) head[n++] = (unsigned char)((uint64_t)x >> (8 * i)); }
            else { head[n++] = 0xd3; for (int i = 7; i >= 0; i--) head[n++] = (unsigned char)((uint64_t)x >> (8 * i)); }
        }
    } else if (PyFloat_CheckExact(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        uint64_t u;
        memcpy(&u, &d, 8);
        head[n++] = 0xcb;
        for (int i = 7; i >= 0; i--) head[n++] = (unsigned char)(u >> (8 * i));
    } else {
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n + blen);
    if (out == NULL) return NULL;
    memcpy(PyBytes_AS_STRING(out), head, n);
    if (blen) memcpy(PyBytes_AS_STRING(out) + n, body, (size_t)blen);
    return out;
}

/* Unpack the msgpack scalar that is all of data[0:len]: a new reference, or NULL
 * with no exception when it is not one (a container, an ext, trailing bytes,
 * invalid UTF-8): the Serializer then decodes it, or says what is wrong. */
PyObject *unpack_scalar(const unsigned char *p, size_t len) {
    if (len == 0) return NULL;
    unsigned h = p[0];
    size_t need = 1, blen = 0, at = 1;
    int kind; /* 0 str, 1 bin */
    if (h <= 0x7f) return len == 1 ? PyLong_FromLong((long)h) : NULL;
    if (h >= 0xe0) return len == 1 ? PyLong_FromLong((long)(signed char)h) : NULL;
    switch (h) {
    case 0xc0: if (len != 1) return NULL; Py_RETURN_NONE;
    case 0xc2: if (len != 1) return NULL; Py_RETURN_FALSE;
    case 0xc3: if (len != 1) return NULL; Py_RETURN_TRUE;
    case 0xcc: return len == 2 ? PyLong_FromLong(p[1]) : NULL;
    case 0xcd: return len == 3 ? PyLong_FromLong((long)p[1] << 8 | p[2]) : NULL;
    case 0xce: return len == 5 ? PyLong_FromUnsignedLong((unsigned long)p[1] << 24 | (unsigned long)p[2] << 16 | (unsigned long)p[3] << 8 | p[4]) : NULL;
    case 0xcf: {
        if (len != 9) return NULL;
        uint64_t u = 0;
        for (int i = 1; i <= 8; i++) u = u << 8 | p[i];
        return PyLong_FromUnsignedLongLong(u);
    }
    case 0xd0: return len == 2 ? PyLong_FromLong((signed char)p[1]) : NULL;
    case 0xd1: return len == 3 ? PyLong_FromLong((int16_t)((uint16_t)p[1] << 8 | p[2])) : NULL;
    case 0xd2: return len == 5 ? PyLong_FromLong((int32_t)((uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4])) : NULL;
    case 0xd3: {
        if (len != 9) return NULL;
        uint64_t u = 0;
        for (int i = 1; i <= 8; i++) u = u << 8 | p[i];
        return PyLong_FromLongLong((long long)u);
    }
    case 0xcb: {
        if (len != 9) return NULL;
        uint64_t u = 0;
        for (int i = 1; i <= 8; i++) u = u << 8 | p[i];
        double d;
        memcpy(&d, &u, 8);
        return PyFloat_FromDouble(d);
    }
    case 0xd9: kind = 0; need = 2; break;
    case 0xda: kind = 0; need = 3; break;
    case 0xdb: kind = 0; need = 5; break;
    case 0xc4: kind = 1; need = 2; break;
    case 0xc5: kind = 1; need = 3; break;
    case 0xc6: kind = 1; need = 5; break;
    default:
        if (h >= 0xa0 && h <= 0xbf) {
            kind = 0;
            blen = h & 0x1f;
            break;
        }
        return NULL; /* containers, exts, float32: the Serializer's */
    }
    if (need > 1) {
        if (len < need) return NULL;
        for (size_t i = 1; i < need; i++) blen = blen << 8 | p[i];
        at = need;
    }
    if (len - at != blen) return NULL;
    if (kind == 1) return PyBytes_FromStringAndSize((const char *)p + at, (Py_ssize_t)blen);
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p + at, (Py_ssize_t)blen, NULL);
    if (s == NULL) PyErr_Clear();
    return s;
}

/* pack_scalar(value) -> bytes | None and unpack_scalar(data) -> value | NotImplemented:
 * the msgpack scalar codec above, for the tests that hold it to msgpack's. */
static PyObject *py_pack_scalar(PyObject *self, PyObject *value) {
    PyObject *out = pack_scalar(value);
    if (out == NULL && !PyErr_Occurred()) Py_RETURN_NONE;
    return out;
}

static PyObject *py_unpack_scalar(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *out = unpack_scalar(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (out == NULL && !PyErr_Occurred()) Py_RETURN_NOTIMPLEMENTED;
    return out;
}

PyMethodDef serialize_methods[] = {
    {"pack_scalar", py_pack_scalar, METH_O, "The msgpack bytes of a str, bytes, int, float, bool or None, else None."},
    {"unpack_scalar", py_unpack_scalar, METH_O, "The msgpack scalar that is all of data, else NotImplemented."},
    {NULL, NULL, 0, NULL},
};
