/* iodict.py's hot paths in C: d[key] = value and d[key] for str keys, and the
 * Records of records().
 *
 * set_str and get_str are IODict.__setitem__ / __getitem__ (with IODict._set,
 * KeyIndex.get/set and Serializer.encode/decode) for the common case only, step
 * for step, on _log.c's append_begin / append_one / append_end (LogHandle._write,
 * Log.append_one) and log_read_value (Log.read_value). Whenever the case is not
 * the common one they return NotImplemented BEFORE anything changed, and the
 * Python path runs: it does the rare work and raises the errors. So the C path
 * never reproduces an error message; it only ever writes the record the Python
 * path would have written, byte for byte.
 *
 * Values that are str, bytes, int, float, bool or None are packed by
 * _serialize.c; any other goes through the store's Serializer.
 */
#include "native.h"

#include <string.h>

static PyObject *compress_value, *encode_batch; /* format's, handed over by iodict.py */
static PyObject *s_log, *s_lock, *s_lock_timeout, *s_index, *s_serializer, *s_compress, *s_compact_check_at,
    *s_locations, *s_live_bytes, *s_flag, *s_encode, *s_decode, *s_consider_compacting, *s_op_set, *s_py_getitem,
    *s_py_setitem;

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

/* The common case's preconditions of a write, as IODict's Python path would meet them:
 * the default lock, the msgpack Serializer, no lock_timeout, an open store. */
static int writable(PyObject *ddict, PyObject **lock, PyObject **serializer) {
    long long flag;
    PyObject *log = dict_get(ddict, s_log);
    *lock = dict_get(ddict, s_lock);
    *serializer = dict_get(ddict, s_serializer);
    return *lock != NULL && *serializer != NULL && dict_get(ddict, s_lock_timeout) == Py_None && log != NULL &&
           log != Py_None && attr_int(*serializer, s_flag, &flag) && flag == 0;
}

/* IODict._set holding the object's lock: 1 written, 0 Python's, -1 error. */
static int set_holding(PyObject *ddict, PyObject *log, PyObject *key, PyObject *kbytes, long long flags,
                       PyObject *stored) {
    long long check_at, last_seq, live;
    PyObject *index = dict_get(ddict, s_index);
    if (index == NULL || !dict_int(ddict, s_compact_check_at, &check_at)) return 0;
    Appender a;
    int r = append_begin(&a, log);
    if (r <= 0) return r;
    last_seq = a.last_seq;
    PyObject *locations = PyObject_GetAttr(index, s_locations), *old = NULL, *loc = NULL;
    unsigned old_slot;
    uint64_t old_offset, old_length = 0, birth;
    r = 0;
    if (last_seq >= check_at || locations == NULL || !PyDict_CheckExact(locations)) goto leave; /* (compaction check) */
    old = PyDict_GetItemWithError(locations, key);
    if ((old == NULL && PyErr_Occurred()) || (old != NULL && !unpack_location(old, &old_slot, &old_offset, &old_length, &birth)))
        goto leave;
    if (old == NULL) birth = append_birthtime(&a);
    r = append_one(&a, OP_SET, (unsigned)flags, PyBytes_AS_STRING(kbytes), (size_t)PyBytes_GET_SIZE(kbytes),
                   PyBytes_AS_STRING(stored), (size_t)PyBytes_GET_SIZE(stored), birth, &loc);
    if (r <= 0) goto leave;
    /* KeyIndex.set */
    if (PyDict_SetItem(locations, key, loc) < 0 || !attr_int(index, s_live_bytes, &live)) {
        r = -1;
    } else {
        PyObject *v = PyLong_FromLongLong(live - (long long)old_length + (long long)a.last_length);
        if (v == NULL || PyObject_SetAttr(index, s_live_bytes, v) < 0) r = -1;
        Py_XDECREF(v);
    }
leave:
    if (r == 0 && PyErr_Occurred()) PyErr_Clear();
    Py_XDECREF(loc);
    Py_XDECREF(locations);
    if (append_end(&a) < 0) r = -1;
    return r;
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
    int r = 0;
    PyObject *kbytes = NULL, *stored = NULL, *lock, *serializer, *log;
    long long flags;
    if (!writable(ddict, &lock, &serializer)) goto done;
    kbytes = pack_scalar(key); /* encode_canonical_key(key) */
    if (kbytes == NULL) {
        r = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    stored = encode_value(serializer, value, dict_get(ddict, s_compress) == Py_True, &flags);
    if (stored == NULL) {
        r = -1;
        goto done;
    }
    r = object_lock(lock);
    if (r <= 0) goto done;
    log = dict_get(ddict, s_log); /* (again: closed meanwhile?) */
    if (log != NULL && log != Py_None) {
        Py_INCREF(log);
        r = set_holding(ddict, log, key, kbytes, flags, stored);
        Py_DECREF(log);
    } else {
        r = 0;
    }
    object_unlock(lock);
done:
    Py_XDECREF(kbytes);
    Py_XDECREF(stored);
    Py_DECREF(ddict);
    return fast_answer(r);
}

/* --- d.update(pairs) -------------------------------------------------------- */

/* IODict._put for str keys, holding the object's lock: 1 written, 0 Python's, -1 error.
 * keys, kbytes, flags and stored are lists of the same length (at least 2). */
static int put_holding(PyObject *d, PyObject *ddict, PyObject *log, PyObject *keys, PyObject *kbytes,
                       PyObject *flags, PyObject *stored) {
    PyObject *index = dict_get(ddict, s_index);
    if (index == NULL) return 0;
    Appender a;
    int r = append_begin(&a, log);
    if (r <= 0) return r;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    PyObject *locations = PyObject_GetAttr(index, s_locations), *born = PyDict_New(), *entries = PyList_New(n);
    PyObject *batch = NULL;
    r = -1;
    if (locations == NULL || born == NULL || entries == NULL) goto leave;
    r = 0;
    if (!PyDict_CheckExact(locations)) goto leave;
    for (Py_ssize_t i = 0; i < n; i++) { /* each key's birthtime: its own, or a new one (once per batch) */
        PyObject *key = PyList_GET_ITEM(keys, i), *birth = PyDict_GetItemWithError(born, key);
        if (birth == NULL) {
            if (PyErr_Occurred()) goto fail;
            PyObject *old = PyDict_GetItemWithError(locations, key);
            unsigned slot;
            uint64_t offset, length, b;
            if (old == NULL && PyErr_Occurred()) goto fail;
            if (old != NULL && !unpack_location(old, &slot, &offset, &length, &b)) goto leave;
            birth = PyLong_FromUnsignedLongLong(old == NULL ? append_birthtime(&a) : b);
            if (birth == NULL || PyDict_SetItem(born, key, birth) < 0) {
                Py_XDECREF(birth);
                goto fail;
            }
            Py_DECREF(birth); /* (born holds it) */
        }
        PyObject *entry = PyTuple_Pack(5, s_op_set, PyList_GET_ITEM(flags, i), PyList_GET_ITEM(kbytes, i),
                                       PyList_GET_ITEM(stored, i), birth);
        if (entry == NULL) goto fail;
        PyList_SET_ITEM(entries, i, entry);
    }
    /* Log.append_batch: BEGIN's and COMMIT's birthtimes after the entries', then one write. */
    uint64_t begin = append_birthtime(&a), commit = append_birthtime(&a);
    batch = PyObject_CallFunction(encode_batch, "OLKKLnk", entries, a.last_seq + 1, (unsigned long long)begin,
                                  (unsigned long long)commit, a.end, a.slot, (unsigned long)a.salt);
    if (batch == NULL) goto fail;
    if (!PyTuple_CheckExact(batch) || PyTuple_GET_SIZE(batch) != 3 || !PyBytes_CheckExact(PyTuple_GET_ITEM(batch, 0)) ||
        !PyList_CheckExact(PyTuple_GET_ITEM(batch, 1)) || PyList_GET_SIZE(PyTuple_GET_ITEM(batch, 1)) != n) {
        PyErr_SetString(PyExc_SystemError, "format.encode_batch gave no (bytes, locations, seq)");
        goto fail;
    }
    r = append_data(&a, PyTuple_GET_ITEM(batch, 0), n + 2);
    if (r <= 0) goto leave;
    /* KeyIndex.set of each, in order */
    long long live;
    if (!attr_int(index, s_live_bytes, &live)) goto fail;
    PyObject *locs = PyTuple_GET_ITEM(batch, 1);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(locs, i), *key = PyList_GET_ITEM(keys, i);
        unsigned slot;
        uint64_t offset, length, b, old_length = 0;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) goto fail;
        PyObject *loc = PyTuple_GET_ITEM(pair, 1), *old = PyDict_GetItemWithError(locations, key);
        if (old == NULL && PyErr_Occurred()) goto fail;
        if (old != NULL && !unpack_location(old, &slot, &offset, &old_length, &b)) goto fail;
        if (!unpack_location(loc, &slot, &offset, &length, &b) || PyDict_SetItem(locations, key, loc) < 0) goto fail;
        live += (long long)length - (long long)old_length;
    }
    PyObject *v = PyLong_FromLongLong(live);
    if (v == NULL || PyObject_SetAttr(index, s_live_bytes, v) < 0) {
        Py_XDECREF(v);
        goto fail;
    }
    Py_DECREF(v);
    long long check_at;
    if (dict_int(ddict, s_compact_check_at, &check_at) && a.last_seq >= check_at) { /* (under the lock, as in _put) */
        PyObject *done = PyObject_CallMethodOneArg(d, s_consider_compacting, log);
        if (done == NULL) goto fail;
        Py_DECREF(done);
    }
    r = 1;
    goto leave;
fail:
    r = -1;
leave:
    if (r == 0) PyErr_Clear();
    Py_XDECREF(batch);
    Py_XDECREF(entries);
    Py_XDECREF(born);
    Py_XDECREF(locations);
    if (append_end(&a) < 0) r = -1;
    return r;
}

/* update_str(d, pairs): d.update(pairs) for a list of 2 or more (str key, value) pairs;
 * NotImplemented to leave it to Python. */
static PyObject *update_str(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "update_str(d, pairs: list)");
        return NULL;
    }
    PyObject *d = args[0], *pairs = args[1];
    Py_ssize_t n = PyList_GET_SIZE(pairs);
    if (n < 2) Py_RETURN_NOTIMPLEMENTED;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(pairs, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(pair, 0)))
            Py_RETURN_NOTIMPLEMENTED;
    }
    PyObject *ddict = PyObject_GenericGetDict(d, NULL);
    if (ddict == NULL) return NULL;
    int r = 0;
    PyObject *keys = PyList_New(n), *kbytes = PyList_New(n), *flags = PyList_New(n), *stored = PyList_New(n);
    PyObject *lock, *serializer, *log;
    if (keys == NULL || kbytes == NULL || flags == NULL || stored == NULL) {
        r = -1;
        goto done;
    }
    if (!writable(ddict, &lock, &serializer)) goto done;
    int compress = dict_get(ddict, s_compress) == Py_True;
    for (Py_ssize_t i = 0; i < n; i++) { /* IODict._encoded of each, before anything is written */
        PyObject *pair = PyList_GET_ITEM(pairs, i), *key = PyTuple_GET_ITEM(pair, 0);
        PyObject *kb = pack_scalar(key);
        if (kb == NULL) {
            r = PyErr_Occurred() ? -1 : 0;
            goto done;
        }
        long long f;
        PyObject *value = encode_value(serializer, PyTuple_GET_ITEM(pair, 1), compress, &f);
        PyObject *pf = value != NULL ? PyLong_FromLongLong(f) : NULL;
        if (pf == NULL) {
            Py_DECREF(kb);
            Py_XDECREF(value);
            r = -1;
            goto done;
        }
        PyList_SET_ITEM(keys, i, Py_NewRef(key));
        PyList_SET_ITEM(kbytes, i, kb);
        PyList_SET_ITEM(flags, i, pf);
        PyList_SET_ITEM(stored, i, value);
    }
    r = object_lock(lock);
    if (r <= 0) goto done;
    log = dict_get(ddict, s_log); /* (again: closed meanwhile?) */
    if (log != NULL && log != Py_None) {
        Py_INCREF(log);
        r = put_holding(d, ddict, log, keys, kbytes, flags, stored);
        Py_DECREF(log);
    } else {
        r = 0;
    }
    object_unlock(lock);
done:
    Py_XDECREF(keys);
    Py_XDECREF(kbytes);
    Py_XDECREF(flags);
    Py_XDECREF(stored);
    Py_DECREF(ddict);
    return fast_answer(r);
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
    PyObject *data = NULL, *serializer = dict_get(ddict, s_serializer), *lock = dict_get(ddict, s_lock), *log, *index;
    int r = 0;
    size_t value_at;
    unsigned flags;
    if (lock == NULL || serializer == NULL || dict_get(ddict, s_lock_timeout) != Py_None) goto done;
    r = object_lock(lock);
    if (r <= 0) goto done;
    log = dict_get(ddict, s_log);
    index = dict_get(ddict, s_index);
    r = 0;
    if (log != NULL && log != Py_None && index != NULL && log_is_fresh(log)) { /* (LogHandle._read's refresh) */
        PyObject *locations = PyObject_GetAttr(index, s_locations);
        PyObject *loc = locations != NULL && PyDict_CheckExact(locations) ? PyDict_GetItemWithError(locations, key) : NULL;
        if (loc != NULL) {
            Py_INCREF(loc);
            r = log_read_value(log, loc, &data, &value_at, &flags);
            Py_DECREF(loc);
        } else if (locations != NULL && PyDict_CheckExact(locations) && !PyErr_Occurred()) {
            PyErr_SetObject(PyExc_KeyError, key); /* missing */
            r = -1;
        }
        Py_XDECREF(locations);
        if (r == 0) PyErr_Clear();
    }
    object_unlock(lock);
done:
    Py_DECREF(ddict);
    if (r < 0) return NULL;
    if (r == 0) Py_RETURN_NOTIMPLEMENTED;
    /* Serializer.decode, after the lock as in Python */
    const unsigned char *value = (unsigned char *)PyBytes_AS_STRING(data) + value_at;
    size_t vlen = (size_t)PyBytes_GET_SIZE(data) - value_at;
    PyObject *decoded = (flags & (FLAG_LZ4 | FLAG_PICKLE)) == 0 ? unpack_scalar(value, vlen) : NULL;
    if (decoded == NULL) {
        PyObject *stored = PyBytes_FromStringAndSize((const char *)value, (Py_ssize_t)vlen);
        PyObject *pyflags = PyLong_FromLong((long)flags);
        decoded = stored && pyflags ? PyObject_CallMethodObjArgs(serializer, s_decode, pyflags, stored, NULL) : NULL;
        Py_XDECREF(stored);
        Py_XDECREF(pyflags);
    }
    Py_DECREF(data);
    return decoded;
}

/* --- IODict.__getitem__ / __setitem__ ------------------------------------------ */
/* iodict.py makes these the class's methods (through method()): d[key] and
 * d[key] = value without a Python frame, and the Python methods, kept as
 * _py_getitem and _py_setitem, for every key and case the C path declines. */

static PyObject *getitem(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "__getitem__(self, key)");
        return NULL;
    }
    PyObject *value = get_str(NULL, args, 2);
    if (value != Py_NotImplemented) return value;
    Py_DECREF(value);
    return PyObject_CallMethodOneArg(args[0], s_py_getitem, args[1]);
}

static PyObject *setitem(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__setitem__(self, key, value)");
        return NULL;
    }
    PyObject *done = set_str(NULL, args, 3);
    if (done != Py_NotImplemented) return done;
    Py_DECREF(done);
    return PyObject_CallMethodObjArgs(args[0], s_py_setitem, args[1], args[2], NULL);
}

/* method(function): the function as a method of a class (it then receives self). */
static PyObject *method(PyObject *self, PyObject *function) { return PyInstanceMethod_New(function); }

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

/* setup_iodict(compress_value, encode_batch): format's, handed over by iodict.py. */
static PyObject *setup_iodict(PyObject *self, PyObject *args) {
    PyObject *compress, *batch;
    if (!PyArg_ParseTuple(args, "OO", &compress, &batch)) return NULL;
    Py_XSETREF(compress_value, Py_NewRef(compress));
    Py_XSETREF(encode_batch, Py_NewRef(batch));
    Py_RETURN_NONE;
}

PyMethodDef iodict_methods[] = {
    {"setup_iodict", setup_iodict, METH_VARARGS, "Hand the fast paths format's compress_value and encode_batch."},
    {"update_str", (PyCFunction)(void (*)(void))update_str, METH_FASTCALL, "d.update(pairs) for str keys, or NotImplemented."},
    {"set_str", (PyCFunction)(void (*)(void))set_str, METH_FASTCALL, "d[key] = value for a str key, or NotImplemented."},
    {"get_str", (PyCFunction)(void (*)(void))get_str, METH_FASTCALL, "d[key] for a str key, or NotImplemented."},
    {"getitem", (PyCFunction)(void (*)(void))getitem, METH_FASTCALL, "IODict.__getitem__: C for str keys, else _py_getitem."},
    {"setitem", (PyCFunction)(void (*)(void))setitem, METH_FASTCALL, "IODict.__setitem__: C for str keys, else _py_setitem."},
    {"method", method, METH_O, "A function as a method of a class."},
    {"records", records, METH_VARARGS, "IODict._record of each SET and DELETE frame of a list of Frames."},
    {NULL, NULL, 0, NULL},
};

int iodict_init(PyObject *module) {
#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    INTERN(s_log, "_log") INTERN(s_lock, "_lock") INTERN(s_lock_timeout, "lock_timeout") INTERN(s_index, "_index")
    INTERN(s_serializer, "_serializer") INTERN(s_compress, "_compress") INTERN(s_compact_check_at, "_compact_check_at")
    INTERN(s_locations, "_locations") INTERN(s_live_bytes, "live_bytes") INTERN(s_flag, "flag")
    INTERN(s_encode, "encode") INTERN(s_decode, "decode") INTERN(s_consider_compacting, "_consider_compacting")
    INTERN(s_py_getitem, "_py_getitem") INTERN(s_py_setitem, "_py_setitem")
#undef INTERN
    return (s_op_set = PyLong_FromLong(OP_SET)) == NULL ? -1 : 0;
}
