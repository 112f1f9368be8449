/* iodict.py's hot paths in C: d[key] = value and d[key] for str keys.
 *
 * Each is the Python path (IODict.__setitem__ -> LogHandle._write -> IODict._set
 * -> Log.append_one -> Log._land; IODict.__getitem__ -> LogHandle._read ->
 * Log.read_value -> format.frame_value -> Serializer.decode) for the common case
 * only, step for step and in the same order, reading and writing the same
 * attributes of the same objects. Whenever the case is not the common one (a
 * lock_timeout or deadline, group commit or sync=True, a crash point armed, a
 * roll or a compaction check due, another process's changes to catch up on, a
 * forked child, faulty file operations installed by a test, an error of any
 * kind while reading) it returns NotImplemented BEFORE it has changed anything,
 * and the caller runs the Python path, which does the rare work and raises the
 * errors. So the C path never has to reproduce an error message: it only ever
 * writes a record the Python path would have written, byte for byte.
 *
 * Values that are str, bytes, int, float, bool or None are packed here exactly as
 * msgpack's Packer (use_bin_type, strict_types) packs them; anything else goes
 * through the store's Serializer. A write that fails leaves nothing behind (the
 * partial bytes are cut, as Segment.append does) and raises OSError.
 */
#include "native.h"

#include <errno.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

/* format.py and index.py constants this file needs (the two must agree). */
#define HEADER_SIZE 36
#define OP_SET 1
#define FLAG_LZ4 0x01
#define FLAG_PICKLE 0x02
#define KNOWN_FLAGS 0x07
#define MAX_SEQ 0x7fffffffffffffffULL
#define MAX_OFFSET 0xffffffffULL
#define COMPRESS_MIN 256
static const unsigned char SYNC[2] = {0xd1, 0x0c};
static int known_op(unsigned op) { return (op >= 1 && op <= 5) || (op >= 16 && op <= 18); }

/* Objects handed over by iodict.py at import (setup_iodict). */
static PyObject *RLockType, *fileops_dict, *os_write, *os_ftruncate, *crashpoints_dict, *filelock_dict,
    *compress_value;
/* Interned attribute names. */
static PyObject *s_log, *s_lock, *s_lock_timeout, *s_index, *s_serializer, *s_compress, *s_compact_check_at,
    *s_forked, *s_sync_interval, *s_sync_always, *s_sync_error, *s_end, *s_segment_bytes, *s_last_seq,
    *s_last_birthtime, *s_segments, *s_file_lock, *s_changes, *s_fd, *s_lock_fd, *s_salt, *s_locations, *s_live_bytes,
    *s_depth, *s_generation, *s_deadline, *s_mutex, *s_counter, *s_owner_died, *s_flag, *s_acquire, *s_release,
    *s_write, *s_ftruncate, *s_ARMED, *s_fork_generation, *s_encode, *s_decode;

/* --- little helpers ------------------------------------------------------ */

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const unsigned char *p) { return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }

/* An attribute of an instance's __dict__ (borrowed), NULL if absent (no exception). */
static PyObject *field(PyObject *dict, PyObject *name) {
    PyObject *v = PyDict_GetItemWithError(dict, name);
    if (v == NULL) PyErr_Clear();
    return v;
}

/* The value of an int attribute into *out; 0 when it is not an int that fits. */
static int int_field(PyObject *dict, PyObject *name, long long *out) {
    PyObject *v = field(dict, name);
    if (v == NULL || !PyLong_CheckExact(v)) return 0;
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (*out == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static int set_int(PyObject *dict, PyObject *name, long long value) {
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) return -1;
    int r = PyDict_SetItem(dict, name, v);
    Py_DECREF(v);
    return r;
}

static int set_u64(PyObject *dict, PyObject *name, uint64_t value) {
    PyObject *v = PyLong_FromUnsignedLongLong(value);
    if (v == NULL) return -1;
    int r = PyDict_SetItem(dict, name, v);
    Py_DECREF(v);
    return r;
}

/* An int attribute read through getattr (slots); 0 if not an int that fits. */
static int int_attr(PyObject *obj, PyObject *name, long long *out) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) {
        PyErr_Clear();
        return 0;
    }
    int ok = 0;
    if (PyLong_CheckExact(v)) {
        int overflow;
        *out = PyLong_AsLongLongAndOverflow(v, &overflow);
        ok = !overflow && !(*out == -1 && PyErr_Occurred());
        PyErr_Clear();
    }
    Py_DECREF(v);
    return ok;
}

/* index.pack_location: (((birthtime << 16 | slot) << 32 | offset) << 32) | length, up to 144 bits. */
static PyObject *pack_location(uint64_t birthtime, unsigned slot, uint64_t offset, uint64_t length) {
    unsigned char b[18];
    put_u32(b, (uint32_t)length);
    put_u32(b + 4, (uint32_t)offset);
    b[8] = (unsigned char)slot;
    b[9] = (unsigned char)(slot >> 8);
    put_u64(b + 10, birthtime);
#if PY_VERSION_HEX >= 0x030D0000
    return PyLong_FromUnsignedNativeBytes(b, sizeof b, Py_ASNATIVEBYTES_LITTLE_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER);
#else
    return _PyLong_FromByteArray(b, sizeof b, 1, 0);
#endif
}

/* (slot, offset, length, birthtime) of a packed location; 0 if it is not one. */
static int unpack_location(PyObject *loc, unsigned *slot, uint64_t *offset, uint64_t *length, uint64_t *birth) {
    unsigned char b[18];
    if (!PyLong_CheckExact(loc) || _PyLong_Sign(loc) < 0) return 0;
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t n = PyLong_AsNativeBytes(loc, b, sizeof b, Py_ASNATIVEBYTES_LITTLE_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER);
    if (n < 0 || n > (Py_ssize_t)sizeof b) {
        PyErr_Clear();
        return 0;
    }
#else
    if (_PyLong_AsByteArray((PyLongObject *)loc, b, sizeof b, 1, 0) < 0) {
        PyErr_Clear();
        return 0;
    }
#endif
    *length = get_u32(b);
    *offset = get_u32(b + 4);
    *slot = (unsigned)b[8] | (unsigned)b[9] << 8;
    *birth = get_u64(b + 10);
    return 1;
}

/* --- msgpack scalars, as msgpack's Packer(use_bin_type=True, strict_types=True) ---- */

/* Pack a str, bytes, int, float, bool or None into a new bytes object; NULL with no
 * exception for any other type (or a str that is not valid Unicode), NULL with an
 * exception on failure. */
static PyObject *pack_scalar(PyObject *v) {
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
static PyObject *unpack_scalar(const unsigned char *p, size_t len) {
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

/* --- the frame ------------------------------------------------------------ */

/* format.encode_frame into a new bytes object. */
static PyObject *frame_bytes(unsigned op, unsigned flags, uint64_t seq, uint64_t birthtime, const char *key,
                             size_t klen, const char *value, size_t vlen, uint32_t salt) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(HEADER_SIZE + klen + vlen));
    if (out == NULL) return NULL;
    unsigned char *b = (unsigned char *)PyBytes_AS_STRING(out);
    memcpy(b + HEADER_SIZE, key, klen);
    memcpy(b + HEADER_SIZE + klen, value, vlen);
    uLong dcrc = crc32(crc32(salt, (const Bytef *)key, (uInt)klen), (const Bytef *)value, (uInt)vlen);
    b[0] = SYNC[0];
    b[1] = SYNC[1];
    put_u32(b + 6, (uint32_t)dcrc);
    b[10] = (unsigned char)op;
    b[11] = (unsigned char)flags;
    put_u32(b + 12, (uint32_t)klen);
    put_u32(b + 16, (uint32_t)vlen);
    put_u64(b + 20, seq);
    put_u64(b + 28, birthtime);
    put_u32(b + 2, (uint32_t)crc32(salt, b + 6, HEADER_SIZE - 6));
    return out;
}

/* format.frame_value's checks on the frame that is all of b[0:len]; the value's
 * offset and flags, or 0 if they fail. */
static int frame_checks(const unsigned char *b, size_t len, uint32_t salt, size_t *value_at, unsigned *flags) {
    if (len < HEADER_SIZE || b[0] != SYNC[0] || b[1] != SYNC[1]) return 0;
    if (crc32(salt, b + 6, HEADER_SIZE - 6) != get_u32(b + 2)) return 0;
    uint64_t klen = get_u32(b + 12), vlen = get_u32(b + 16);
    if (HEADER_SIZE + klen + vlen != len || !known_op(b[10]) || (b[11] & ~KNOWN_FLAGS)) return 0;
    if ((get_u64(b + 20) | get_u64(b + 28)) > MAX_SEQ) return 0;
    if (crc32(salt, b + HEADER_SIZE, (uInt)(len - HEADER_SIZE)) != get_u32(b + 6)) return 0;
    *value_at = HEADER_SIZE + (size_t)klen;
    *flags = b[11];
    return 1;
}

/* --- the locks ------------------------------------------------------------ */

/* Take the object's RLock (the default lock): 1, or 0 when it is another kind. */
static int object_lock(PyObject *lock) {
    if (Py_TYPE(lock) != (PyTypeObject *)RLockType) return 0;
    PyObject *r = PyObject_CallMethodNoArgs(lock, s_acquire);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 1;
}

static void object_unlock(PyObject *lock) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *r = PyObject_CallMethodNoArgs(lock, s_release);
    Py_XDECREF(r);
    if (type != NULL) PyErr_Restore(type, value, tb);
}

/* The write lock as FileLock.__enter__ takes it when nobody in this process holds
 * it and no deadline is set: the mutex (1: its holder had died), or flock.
 * Returns 0 taken, 1 taken from a dead holder, -1 error. */
static int file_lock_take(void *mutex, int fd) {
    if (mutex != NULL) return lock_take(mutex);
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) return 0;
    int r;
    Py_BEGIN_ALLOW_THREADS
    do r = flock(fd, LOCK_EX); while (r < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    if (r < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static int file_lock_give(void *mutex, int fd) {
    if (mutex != NULL) return lock_give(mutex);
    if (flock(fd, LOCK_UN) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

/* --- d[key] = value --------------------------------------------------------- */

/* The stored bytes and flags of a value, as Serializer.encode(value, compress). */
static PyObject *encode_value(PyObject *serializer, PyObject *value, int compress, long long *flags) {
    PyObject *data = pack_scalar(value);
    if (data == NULL) {
        if (PyErr_Occurred()) return NULL;
        PyObject *pair = PyObject_CallMethodObjArgs(serializer, s_encode, value, compress ? Py_True : Py_False, NULL);
        if (pair == NULL) return NULL;
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_CheckExact(PyTuple_GET_ITEM(pair, 1))) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_SystemError, "Serializer.encode gave no (flags, bytes)");
            return NULL;
        }
        *flags = PyLong_AsLongLong(PyTuple_GET_ITEM(pair, 0));
        data = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
        Py_DECREF(pair);
        return data;
    }
    *flags = 0;
    if (compress && PyBytes_GET_SIZE(data) >= COMPRESS_MIN) {
        PyObject *pair = PyObject_CallOneArg(compress_value, data);
        Py_DECREF(data);
        if (pair == NULL) return NULL;
        *flags = PyLong_AsLongLong(PyTuple_GET_ITEM(pair, 0));
        data = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
        Py_DECREF(pair);
    }
    return data;
}

/* The common case of the write, holding the object's lock; Py_NotImplemented to
 * leave it to Python (nothing changed), NULL on error, None when written. */
static PyObject *set_holding(PyObject *ddict, PyObject *log, PyObject *key, PyObject *kbytes, long long flags,
                             PyObject *stored) {
    if (PyDict_GetItemWithError(crashpoints_dict, s_ARMED) != Py_False) goto python;
    if (field(fileops_dict, s_write) != os_write || field(fileops_dict, s_ftruncate) != os_ftruncate) goto python;
    if (!PyObject_HasAttr(log, s_file_lock)) goto python;
    PyObject *ldict = PyObject_GenericGetDict(log, NULL);
    if (ldict == NULL) return NULL;
    PyObject *result = Py_NotImplemented;
    PyObject *filelock = NULL, *fldict = NULL;
    long long end, segment_bytes, last_seq, last_birthtime, check_at, x;
    if (field(ldict, s_forked) != Py_False || field(ldict, s_sync_interval) != Py_None ||
        field(ldict, s_sync_always) != Py_False || field(ldict, s_sync_error) != Py_None)
        goto done;
    if (!int_field(ldict, s_end, &end) || !int_field(ldict, s_segment_bytes, &segment_bytes) ||
        !int_field(ldict, s_last_seq, &last_seq) || !int_field(ldict, s_last_birthtime, &last_birthtime) ||
        !int_field(ddict, s_compact_check_at, &check_at))
        goto done;
    if (end >= segment_bytes || last_seq >= check_at) goto done; /* a roll, a compaction check: Python's */
    filelock = field(ldict, s_file_lock);
    if (filelock == NULL) goto done;
    fldict = PyObject_GenericGetDict(filelock, NULL);
    if (fldict == NULL) goto fail;
    long long depth, generation, fork_generation, mutex_addr = 0, counter_addr = 0, fd, salt, changes = -1;
    if (!int_field(fldict, s_depth, &depth) || depth != 0 || !int_field(fldict, s_generation, &generation) ||
        !int_field(filelock_dict, s_fork_generation, &fork_generation) || generation != fork_generation ||
        field(fldict, s_deadline) != Py_None)
        goto done;
    int_field(fldict, s_mutex, &mutex_addr);
    int_field(fldict, s_counter, &counter_addr);
    if (counter_addr && !int_field(ldict, s_changes, &changes)) goto done;
    PyObject *segments = field(ldict, s_segments);
    if (segments == NULL || !PyList_CheckExact(segments) || PyList_GET_SIZE(segments) == 0) goto done;
    Py_ssize_t slot = PyList_GET_SIZE(segments) - 1;
    PyObject *active = PyList_GET_ITEM(segments, slot);
    if (!int_attr(active, s_fd, &fd) || fd < 0 || !int_attr(active, s_salt, &salt)) goto done;
    PyObject *index = field(ddict, s_index);
    if (index == NULL) goto done;
    PyObject *locations = PyObject_GetAttr(index, s_locations);
    if (locations == NULL || !PyDict_CheckExact(locations)) {
        PyErr_Clear();
        Py_XDECREF(locations);
        goto done;
    }
    long long lock_fd = -1;
    if (mutex_addr == 0 && !int_field(fldict, s_lock_fd, &lock_fd)) {
        Py_DECREF(locations);
        goto done;
    }

    /* with log.file_lock: */
    void *mutex = (void *)(intptr_t)mutex_addr, *counter = (void *)(intptr_t)counter_addr;
    int taken = file_lock_take(mutex, (int)lock_fd);
    if (taken < 0) {
        Py_DECREF(locations);
        goto fail;
    }
    if (taken == 1) { /* its holder died: Python's refresh looks at everything */
        PyDict_SetItem(fldict, s_owner_died, Py_True);
        file_lock_give(mutex, (int)lock_fd);
        Py_DECREF(locations);
        goto done;
    }
    /* log.refresh(): nothing to do only if nobody changed anything (the counter, under
     * the mutex) or, under flock, the file still ends where we think it does. */
    int fresh = mutex != NULL ? counter != NULL && lock_changes(counter) == (uint64_t)changes
                              : lseek((int)fd, 0, SEEK_END) == (off_t)end;
    PyObject *old = fresh ? PyDict_GetItemWithError(locations, key) : NULL;
    unsigned old_slot;
    uint64_t old_offset, old_length = 0, birth;
    if (!fresh || (old == NULL && PyErr_Occurred()) ||
        (old != NULL && !unpack_location(old, &old_slot, &old_offset, &old_length, &birth))) {
        PyErr_Clear();
        file_lock_give(mutex, (int)lock_fd);
        Py_DECREF(locations);
        goto done;
    }
    if (old == NULL) { /* Log.birthtime() */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long long now = ((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec) / 1000 * 1000;
        last_birthtime = now > last_birthtime ? now : last_birthtime + 1000;
        birth = (uint64_t)last_birthtime;
    }
    const char *kb = PyBytes_AS_STRING(kbytes);
    PyObject *frame = frame_bytes(OP_SET, (unsigned)flags, (uint64_t)last_seq + 1, birth, kb,
                                  (size_t)PyBytes_GET_SIZE(kbytes), PyBytes_AS_STRING(stored),
                                  (size_t)PyBytes_GET_SIZE(stored), (uint32_t)salt);
    if (frame == NULL || (uint64_t)end + (uint64_t)PyBytes_GET_SIZE(frame) > MAX_OFFSET) {
        Py_XDECREF(frame);
        PyErr_Clear();
        file_lock_give(mutex, (int)lock_fd);
        Py_DECREF(locations);
        goto done; /* (past 4 GiB: Python's error) */
    }
    /* Segment.append: all of it or none of it. */
    const char *p = PyBytes_AS_STRING(frame);
    size_t left = (size_t)PyBytes_GET_SIZE(frame);
    int error = 0;
    Py_BEGIN_ALLOW_THREADS
    while (left) {
        ssize_t w = write((int)fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            error = errno;
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    if (error) {
        int r;
        do r = ftruncate((int)fd, (off_t)end); while (r < 0 && errno == EINTR);
    }
    Py_END_ALLOW_THREADS
    if (error) {
        errno = error;
        PyErr_SetFromErrno(PyExc_OSError);
        if (counter != NULL) lock_bump(counter);
        file_lock_give(mutex, (int)lock_fd);
        Py_DECREF(frame);
        Py_DECREF(locations);
        goto fail;
    }
    long long length = (long long)PyBytes_GET_SIZE(frame);
    Py_DECREF(frame);
    /* Log state, then the index (KeyIndex.set), as append_one and IODict._set leave them. */
    PyObject *loc = pack_location(birth, (unsigned)slot, (uint64_t)end, (uint64_t)length);
    int bad = loc == NULL || set_int(ldict, s_end, end + length) < 0 || set_int(ldict, s_last_seq, last_seq + 1) < 0 ||
              (old == NULL && set_int(ldict, s_last_birthtime, last_birthtime) < 0) ||
              PyDict_SetItem(locations, key, loc) < 0;
    Py_XDECREF(loc);
    if (!bad && int_attr(index, s_live_bytes, &x)) {
        PyObject *live = PyLong_FromLongLong(x - (long long)old_length + length);
        bad = live == NULL || PyObject_SetAttr(index, s_live_bytes, live) < 0;
        Py_XDECREF(live);
    }
    Py_DECREF(locations);
    /* FileLock.__exit__: count the change, then let go. */
    if (counter != NULL) {
        uint64_t now = lock_bump(counter);
        if (!bad && mutex != NULL) bad = set_u64(ldict, s_changes, now) < 0;
    }
    if (file_lock_give(mutex, (int)lock_fd) < 0 || bad) goto fail;
    result = Py_None;
    goto done;
fail:
    result = NULL;
done:
    Py_XDECREF(fldict);
    Py_DECREF(ldict);
    return result == NULL ? NULL : Py_NewRef(result);
python:
    Py_RETURN_NOTIMPLEMENTED;
}

/* set_str(d, key, value): d[key] = value for a str key; NotImplemented to leave it to Python. */
static PyObject *set_str(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "set_str(d, key, value)");
        return NULL;
    }
    PyObject *d = args[0], *key = args[1], *value = args[2];
    if (!PyUnicode_CheckExact(key)) Py_RETURN_NOTIMPLEMENTED;
    PyObject *ddict = PyObject_GenericGetDict(d, NULL);
    if (ddict == NULL) return NULL;
    PyObject *result = Py_NotImplemented, *kbytes = NULL, *stored = NULL;
    PyObject *lock = field(ddict, s_lock), *serializer = field(ddict, s_serializer);
    long long flag;
    if (lock == NULL || serializer == NULL || field(ddict, s_lock_timeout) != Py_None || field(ddict, s_log) == NULL ||
        field(ddict, s_log) == Py_None || !int_attr(serializer, s_flag, &flag) || flag != 0)
        goto done;
    kbytes = pack_scalar(key); /* encode_canonical_key(key) */
    if (kbytes == NULL) {
        if (PyErr_Occurred()) result = NULL;
        goto done;
    }
    long long flags;
    stored = encode_value(serializer, value, field(ddict, s_compress) == Py_True, &flags);
    if (stored == NULL) {
        result = NULL;
        goto done;
    }
    int locked = object_lock(lock);
    if (locked <= 0) {
        if (locked < 0) result = NULL;
        goto done;
    }
    PyObject *log = field(ddict, s_log); /* (again: closed meanwhile?) */
    if (log != NULL && log != Py_None) {
        Py_INCREF(log);
        PyObject *r = set_holding(ddict, log, key, kbytes, flags, stored);
        Py_DECREF(log);
        object_unlock(lock);
        if (r == NULL) result = NULL;
        else {
            result = r == Py_None ? Py_None : Py_NotImplemented; /* (static singletons: no reference kept) */
            Py_DECREF(r);
        }
    } else {
        object_unlock(lock);
    }
done:
    Py_XDECREF(kbytes);
    Py_XDECREF(stored);
    Py_DECREF(ddict);
    if (result == Py_NotImplemented && PyErr_Occurred()) result = NULL;
    return result == NULL ? NULL : Py_NewRef(result);
}

/* --- d[key] ---------------------------------------------------------------- */

/* get_str(d, key): d[key] for a str key (KeyError if missing); NotImplemented to leave it to Python. */
static PyObject *get_str(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "get_str(d, key)");
        return NULL;
    }
    PyObject *d = args[0], *key = args[1];
    if (!PyUnicode_CheckExact(key)) Py_RETURN_NOTIMPLEMENTED;
    PyObject *ddict = PyObject_GenericGetDict(d, NULL);
    if (ddict == NULL) return NULL;
    PyObject *result = Py_NotImplemented, *ldict = NULL, *data = NULL, *serializer = field(ddict, s_serializer);
    PyObject *lock = field(ddict, s_lock), *log;
    if (lock == NULL || serializer == NULL || field(ddict, s_lock_timeout) != Py_None) goto done;
    int locked = object_lock(lock);
    if (locked <= 0) {
        if (locked < 0) result = NULL;
        goto done;
    }
    log = field(ddict, s_log);
    if (log == NULL || log == Py_None) goto unlock;
    ldict = PyObject_GenericGetDict(log, NULL);
    if (ldict == NULL) {
        result = NULL;
        goto unlock;
    }
    /* log.refresh(): nothing to do only if the counter says nobody changed anything. */
    PyObject *filelock = field(ldict, s_file_lock), *segments = field(ldict, s_segments), *index = field(ddict, s_index);
    long long counter_addr = 0, changes, end, fd, salt;
    if (field(ldict, s_forked) != Py_False || filelock == NULL || segments == NULL || !PyList_CheckExact(segments) ||
        PyList_GET_SIZE(segments) == 0 || index == NULL)
        goto unlock;
    if (int_attr(filelock, s_counter, &counter_addr) && counter_addr != 0) {
        if (!int_field(ldict, s_changes, &changes) || lock_changes((void *)(intptr_t)counter_addr) != (uint64_t)changes)
            goto unlock;
    } else { /* no counter: the last segment still ends where we think it does */
        PyObject *last = PyList_GET_ITEM(segments, PyList_GET_SIZE(segments) - 1);
        if (!int_field(ldict, s_end, &end) || last == Py_None || !int_attr(last, s_fd, &fd) ||
            lseek((int)fd, 0, SEEK_END) != (off_t)end)
            goto unlock;
    }
    PyObject *locations = PyObject_GetAttr(index, s_locations);
    if (locations == NULL) {
        PyErr_Clear();
        goto unlock;
    }
    PyObject *loc = PyDict_CheckExact(locations) ? PyDict_GetItemWithError(locations, key) : NULL;
    unsigned slot;
    uint64_t offset, length, birth;
    if (loc == NULL) {
        if (!PyErr_Occurred() && PyDict_CheckExact(locations)) { /* missing */
            PyErr_SetObject(PyExc_KeyError, key);
            result = NULL;
        }
        Py_DECREF(locations);
        goto unlock;
    }
    Py_INCREF(loc);
    Py_DECREF(locations);
    int ok = unpack_location(loc, &slot, &offset, &length, &birth);
    Py_DECREF(loc);
    if (!ok || (Py_ssize_t)slot >= PyList_GET_SIZE(segments)) goto unlock;
    PyObject *segment = PyList_GET_ITEM(segments, slot);
    if (segment == Py_None || !int_attr(segment, s_fd, &fd) || fd < 0 || !int_attr(segment, s_salt, &salt)) goto unlock;
    /* Segment.read + format.frame_value */
    data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
    if (data == NULL) {
        result = NULL;
        goto unlock;
    }
    ssize_t got;
    Py_BEGIN_ALLOW_THREADS
    do got = pread((int)fd, PyBytes_AS_STRING(data), (size_t)length, (off_t)offset); while (got < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    size_t value_at;
    unsigned flags;
    if (got != (ssize_t)length ||
        !frame_checks((unsigned char *)PyBytes_AS_STRING(data), (size_t)length, (uint32_t)salt, &value_at, &flags))
        goto unlock; /* cut short or damaged: Python raises CorruptionError */
    object_unlock(lock);
    lock = NULL;
    /* Serializer.decode, after the lock as in Python */
    const unsigned char *value = (unsigned char *)PyBytes_AS_STRING(data) + value_at;
    size_t vlen = (size_t)length - value_at;
    PyObject *decoded = (flags & (FLAG_LZ4 | FLAG_PICKLE)) == 0 ? unpack_scalar(value, vlen) : NULL;
    if (decoded == NULL) {
        PyObject *stored = PyBytes_FromStringAndSize((const char *)value, (Py_ssize_t)vlen);
        PyObject *pyflags = PyLong_FromLong((long)flags);
        decoded = stored && pyflags ? PyObject_CallMethodObjArgs(serializer, s_decode, pyflags, stored, NULL) : NULL;
        Py_XDECREF(stored);
        Py_XDECREF(pyflags);
    }
    Py_DECREF(data);
    Py_DECREF(ldict);
    Py_DECREF(ddict);
    return decoded; /* (a new reference, or NULL with the Serializer's exception) */
unlock:
    if (lock != NULL) object_unlock(lock);
done:
    Py_XDECREF(data);
    Py_XDECREF(ldict);
    Py_DECREF(ddict);
    if (result == Py_NotImplemented && PyErr_Occurred()) PyErr_Clear();
    return result == NULL ? NULL : Py_NewRef(result);
}

/* --- d.records() ------------------------------------------------------------ */

/* The key whose stored bytes are data, as serialize.decode_key: a str, bytes or int
 * key when its bytes are exactly its canonical encoding, else decode_key's answer. */
static PyObject *key_of(PyObject *data, PyObject *decode_key) {
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    PyObject *key = unpack_scalar(p, (size_t)PyBytes_GET_SIZE(data));
    if (key != NULL) {
        if (PyUnicode_CheckExact(key) || PyBytes_CheckExact(key) || PyLong_CheckExact(key)) {
            PyObject *again = pack_scalar(key);
            int canonical = again != NULL && PyBytes_GET_SIZE(again) == PyBytes_GET_SIZE(data) &&
                            memcmp(PyBytes_AS_STRING(again), p, (size_t)PyBytes_GET_SIZE(data)) == 0;
            Py_XDECREF(again);
            PyErr_Clear();
            if (canonical) return key;
        }
        Py_DECREF(key);
    }
    return PyObject_CallOneArg(decode_key, data);
}

/* records(frames, serializer, decode_key, Record, set, delete): IODict._record of each
 * SET and DELETE frame of the list, in order (the others are skipped). */
static PyObject *records(PyObject *self, PyObject *args) {
    PyObject *frames, *serializer, *decode_key, *record_type, *set_name, *delete_name;
    if (!PyArg_ParseTuple(args, "O!OOO!UU", &PyList_Type, &frames, &serializer, &decode_key, &PyType_Type,
                          &record_type, &set_name, &delete_name))
        return NULL;
    PyTypeObject *type = (PyTypeObject *)record_type;
    if (!PyType_IsSubtype(type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "Record must be a tuple type");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(frames);
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *frame = PyList_GET_ITEM(frames, i);
        if (!PyTuple_Check(frame) || PyTuple_GET_SIZE(frame) != 8) {
            PyErr_SetString(PyExc_TypeError, "records() takes format.Frame tuples");
            goto fail;
        }
        long op = PyLong_AsLong(PyTuple_GET_ITEM(frame, 2));
        if (op == -1 && PyErr_Occurred()) goto fail;
        if (op != OP_SET && op != 2) continue;
        PyObject *kdata = PyTuple_GET_ITEM(frame, 6), *vdata = PyTuple_GET_ITEM(frame, 7);
        if (!PyBytes_Check(kdata) || !PyBytes_Check(vdata)) {
            PyErr_SetString(PyExc_TypeError, "a Frame's key and value are bytes");
            goto fail;
        }
        PyObject *key = key_of(kdata, decode_key), *value;
        if (key == NULL) goto fail;
        if (op == OP_SET) {
            long flags = PyLong_AsLong(PyTuple_GET_ITEM(frame, 3));
            value = (flags & (FLAG_LZ4 | FLAG_PICKLE)) == 0
                        ? unpack_scalar((const unsigned char *)PyBytes_AS_STRING(vdata), (size_t)PyBytes_GET_SIZE(vdata))
                        : NULL;
            if (value == NULL)
                value = PyObject_CallMethodObjArgs(serializer, s_decode, PyTuple_GET_ITEM(frame, 3), vdata, NULL);
            if (value == NULL) {
                Py_DECREF(key);
                goto fail;
            }
        } else {
            value = Py_NewRef(Py_None);
        }
        double birth = PyFloat_AsDouble(PyTuple_GET_ITEM(frame, 5));
        PyObject *rec = type->tp_alloc(type, 5);
        if (rec == NULL || (birth == -1.0 && PyErr_Occurred())) {
            Py_XDECREF(rec);
            Py_DECREF(key);
            Py_DECREF(value);
            goto fail;
        }
        PyTuple_SET_ITEM(rec, 0, Py_NewRef(PyTuple_GET_ITEM(frame, 4)));
        PyTuple_SET_ITEM(rec, 1, PyFloat_FromDouble(birth / 1e9));
        PyTuple_SET_ITEM(rec, 2, Py_NewRef(op == OP_SET ? set_name : delete_name));
        PyTuple_SET_ITEM(rec, 3, key);
        PyTuple_SET_ITEM(rec, 4, value);
        if (PyTuple_GET_ITEM(rec, 1) == NULL || PyList_Append(out, rec) < 0) {
            Py_DECREF(rec);
            goto fail;
        }
        Py_DECREF(rec);
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* --- setup ------------------------------------------------------------------- */

static PyObject *module_dict(PyObject *module) {
    if (!PyModule_Check(module)) {
        PyErr_SetString(PyExc_TypeError, "setup_iodict expects modules");
        return NULL;
    }
    return Py_NewRef(PyModule_GetDict(module));
}

/* setup_iodict(RLock type, fileops, crashpoints, filelock, compress_value): what
 * the fast paths compare against, handed over by iodict.py at import. */
static PyObject *setup_iodict(PyObject *self, PyObject *args) {
    PyObject *rlock, *fileops, *crashpoints, *filelock, *compress;
    if (!PyArg_ParseTuple(args, "OOOOO", &rlock, &fileops, &crashpoints, &filelock, &compress)) return NULL;
    Py_XSETREF(RLockType, Py_NewRef(rlock));
    Py_XSETREF(fileops_dict, module_dict(fileops));
    Py_XSETREF(crashpoints_dict, module_dict(crashpoints));
    Py_XSETREF(filelock_dict, module_dict(filelock));
    Py_XSETREF(compress_value, Py_NewRef(compress));
    if (fileops_dict == NULL || crashpoints_dict == NULL || filelock_dict == NULL) return NULL;
    /* The primitives as they are now (unfaulted): the fast path runs only while they stay. */
    Py_XSETREF(os_write, Py_XNewRef(field(fileops_dict, s_write)));
    Py_XSETREF(os_ftruncate, Py_XNewRef(field(fileops_dict, s_ftruncate)));
    Py_RETURN_NONE;
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

PyMethodDef iodict_methods[] = {
    {"pack_scalar", py_pack_scalar, METH_O, "The msgpack bytes of a str, bytes, int, float, bool or None, else None."},
    {"unpack_scalar", py_unpack_scalar, METH_O, "The msgpack scalar that is all of data, else NotImplemented."},
    {"setup_iodict", setup_iodict, METH_VARARGS, "Hand the fast paths what they compare against (iodict.py)."},
    {"set_str", (PyCFunction)(void (*)(void))set_str, METH_FASTCALL, "d[key] = value for a str key, or NotImplemented."},
    {"get_str", (PyCFunction)(void (*)(void))get_str, METH_FASTCALL, "d[key] for a str key, or NotImplemented."},
    {"records", records, METH_VARARGS, "IODict._record of each SET and DELETE frame of a list of Frames."},
    {NULL, NULL, 0, NULL},
};

int iodict_init(PyObject *module) {
#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    INTERN(s_log, "_log") INTERN(s_lock, "_lock") INTERN(s_lock_timeout, "lock_timeout") INTERN(s_index, "_index")
    INTERN(s_serializer, "_serializer") INTERN(s_compress, "_compress") INTERN(s_compact_check_at, "_compact_check_at")
    INTERN(s_forked, "_forked") INTERN(s_sync_interval, "sync_interval") INTERN(s_sync_always, "sync_always")
    INTERN(s_sync_error, "_sync_error") INTERN(s_end, "_end") INTERN(s_segment_bytes, "segment_bytes")
    INTERN(s_last_seq, "last_seq") INTERN(s_last_birthtime, "last_birthtime") INTERN(s_segments, "_segments")
    INTERN(s_file_lock, "file_lock") INTERN(s_changes, "_changes") INTERN(s_fd, "fd") INTERN(s_lock_fd, "_fd") INTERN(s_salt, "salt")
    INTERN(s_locations, "_locations") INTERN(s_live_bytes, "live_bytes") INTERN(s_depth, "_depth")
    INTERN(s_generation, "_generation") INTERN(s_deadline, "deadline") INTERN(s_mutex, "_mutex")
    INTERN(s_counter, "_counter") INTERN(s_owner_died, "owner_died") INTERN(s_flag, "flag")
    INTERN(s_acquire, "acquire") INTERN(s_release, "release") INTERN(s_write, "write")
    INTERN(s_ftruncate, "ftruncate") INTERN(s_ARMED, "ARMED") INTERN(s_fork_generation, "_fork_generation")
    INTERN(s_encode, "encode") INTERN(s_decode, "decode")
#undef INTERN
    return 0;
}
