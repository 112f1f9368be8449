/* durablequeue.py's hot paths in C: q.put(item) and q.get() when an item is there.
 *
 * put is DurableQueue.put_many([item]) -> _try_put -> LogHandle._write(_append_puts)
 * -> Log.append_one(OP_PUT) + PendingItems.add -> _announce_puts; get is
 * DurableQueue.get -> _try_take -> _take -> PendingItems.head, Log.read_value,
 * Serializer.decode, _settle(OP_TAKE) (Log.append_one, PendingItems.remove,
 * _release_consumed), then the _gotten count: the common case only, step for
 * step, on _log.c's append_begin / append_one / append_end. Python objects keep
 * their own logic (the queue's index, its reclaim, waking waiters): C calls their
 * methods. A bounded queue (maxsize), a lock_timeout, an empty queue (waiting),
 * an item that does not read or decode (the dead-letter path), and every case
 * _log.c declines are left to Python before anything has changed: the caller
 * then runs the Python path.
 */
#include "native.h"

static PyObject *s_held, *s_log, *s_lock, *s_lock_timeout, *s_serializer, *s_pending, *s_maxsize, *s_encode, *s_decode,
    *s_add, *s_head, *s_remove, *s_release_consumed, *s_announce_puts, *s_mutex, *s_gotten, *s_acquire, *s_release, *s_one;

/* The common case's preconditions, and the object's lock taken: 1, 0 Python's, -1 error. */
static int enter(PyObject *qdict, PyObject *q, PyObject **lock) {
    long long maxsize;
    PyObject *timeout = PyObject_GetAttr(q, s_lock_timeout); /* (a class attribute unless set) */
    if (timeout == NULL) return -1;
    int plain = timeout == Py_None;
    Py_DECREF(timeout);
    *lock = dict_get(qdict, s_lock);
    if (!plain || !dict_int(qdict, s_maxsize, &maxsize) || maxsize != 0) return 0; /* (bounded: Python's) */
    return object_lock(*lock);
}

/* put(q, item): q.put(item) for an unbounded queue; NotImplemented to leave it to Python. */
static PyObject *put(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "put(q, item)");
        return NULL;
    }
    PyObject *q = args[0], *item = args[1];
    PyObject *qdict = PyObject_GenericGetDict(q, NULL);
    if (qdict == NULL) return NULL;
    PyObject *serializer = dict_get(qdict, s_serializer), *pending = dict_get(qdict, s_pending), *lock, *log;
    PyObject *pair = NULL, *loc = NULL, *seq = NULL;
    int r = 0;
    if (serializer == NULL || pending == NULL) goto done;
    pair = PyObject_CallMethodOneArg(serializer, s_encode, item); /* (before anything, as put_many) */
    if (pair == NULL) {
        r = -1;
        goto done;
    }
    if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_CheckExact(PyTuple_GET_ITEM(pair, 1)))
        goto done;
    long flags = PyLong_AsLong(PyTuple_GET_ITEM(pair, 0));
    PyObject *stored = PyTuple_GET_ITEM(pair, 1);
    r = enter(qdict, q, &lock);
    if (r <= 0) goto done;
    log = dict_get(qdict, s_log);
    Appender a;
    r = log != NULL && log != Py_None ? append_begin(&a, log) : 0;
    if (r > 0) {
        uint64_t birth = append_birthtime(&a);
        r = append_one(&a, OP_PUT, (unsigned)flags, "", 0, PyBytes_AS_STRING(stored),
                       (size_t)PyBytes_GET_SIZE(stored), birth, &loc);
        if (r > 0) { /* PendingItems.add(log.last_seq, loc) */
            seq = PyLong_FromLongLong(a.last_seq);
            PyObject *done = seq != NULL ? PyObject_CallMethodObjArgs(pending, s_add, seq, loc, NULL) : NULL;
            if (done == NULL) r = -1;
            Py_XDECREF(done);
        }
        if (append_end(&a) < 0) r = -1;
    }
    object_unlock(lock);
    if (r > 0) { /* _try_put: wake this object's waiting gets */
        PyObject *done = PyObject_CallMethodNoArgs(q, s_announce_puts);
        if (done == NULL) r = -1;
        Py_XDECREF(done);
    }
done:
    Py_XDECREF(seq);
    Py_XDECREF(loc);
    Py_XDECREF(pair);
    Py_DECREF(qdict);
    if (r == 0) PyErr_Clear();
    return fast_answer(r);
}

/* _take holding both locks, the queue not empty: 1 with *item, 0 Python's, -1 error. */
static int take(Appender *a, PyObject *q, PyObject *log, PyObject *serializer, PyObject *pending, PyObject **item) {
    PyObject *head = PyObject_CallMethodNoArgs(pending, s_head), *data = NULL, *loc = NULL;
    if (head == NULL) return -1;
    int r = 0;
    size_t value_at;
    unsigned flags;
    unsigned long long seq;
    if (!PyTuple_CheckExact(head) || PyTuple_GET_SIZE(head) != 2) goto leave; /* (None: empty after all) */
    seq = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(head, 0));
    if (PyErr_Occurred()) goto leave;
    r = log_read_value(log, PyTuple_GET_ITEM(head, 1), &data, &value_at, &flags);
    if (r <= 0) goto leave; /* (damaged: Python's warning and TAKE) */
    PyObject *stored = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + value_at,
                                                 PyBytes_GET_SIZE(data) - (Py_ssize_t)value_at);
    PyObject *pyflags = PyLong_FromLong((long)flags);
    *item = stored && pyflags ? PyObject_CallMethodObjArgs(serializer, s_decode, pyflags, stored, NULL) : NULL;
    Py_XDECREF(stored);
    Py_XDECREF(pyflags);
    r = 0;
    if (*item == NULL) goto leave; /* (does not decode: Python's dead letter) */
    /* _settle(log, OP_TAKE, seq) */
    unsigned char key[8];
    for (int i = 0; i < 8; i++) key[i] = (unsigned char)(seq >> (8 * i));
    r = append_one(a, OP_TAKE, 0, (const char *)key, 8, "", 0, append_birthtime(a), &loc);
    if (r > 0) {
        PyObject *done = PyObject_CallMethodOneArg(pending, s_remove, PyTuple_GET_ITEM(head, 0));
        PyObject *released = done != NULL ? PyObject_CallMethodOneArg(q, s_release_consumed, log) : NULL;
        if (released == NULL) r = -1;
        Py_XDECREF(done);
        Py_XDECREF(released);
    }
    if (r <= 0) Py_CLEAR(*item);
leave:
    if (r == 0) PyErr_Clear();
    Py_XDECREF(loc);
    Py_XDECREF(data);
    Py_DECREF(head);
    return r;
}

/* get(q): q.get() when an item is ready; NotImplemented to leave it to Python (empty, or not the
 * common case: items on lease, whose coming back only Python judges). */
static PyObject *get(PyObject *self, PyObject *q) {
    PyObject *qdict = PyObject_GenericGetDict(q, NULL);
    if (qdict == NULL) return NULL;
    PyObject *serializer = dict_get(qdict, s_serializer), *pending = dict_get(qdict, s_pending), *lock, *log;
    PyObject *held = dict_get(qdict, s_held);
    PyObject *item = NULL;
    int r = 0;
    if (serializer == NULL || pending == NULL || held == NULL || !PyDict_Check(held) || PyDict_GET_SIZE(held))
        goto done;
    r = enter(qdict, q, &lock);
    if (r <= 0) goto done;
    log = dict_get(qdict, s_log);
    Py_ssize_t ready = PyObject_Length(pending);
    r = 0;
    if (ready > 0 && log != NULL && log != Py_None) {
        Py_INCREF(log);
        Appender a;
        r = append_begin(&a, log);
        if (r > 0) {
            r = take(&a, q, log, serializer, pending, &item);
            if (append_end(&a) < 0) {
                r = -1;
                Py_CLEAR(item);
            }
        }
        Py_DECREF(log);
    }
    object_unlock(lock);
    if (r > 0) { /* get(): with self.mutex: self._gotten += 1 */
        PyObject *mutex = dict_get(qdict, s_mutex), *gotten = dict_get(qdict, s_gotten);
        PyObject *taken = mutex != NULL ? PyObject_CallMethodNoArgs(mutex, s_acquire) : NULL;
        PyObject *more = taken != NULL && gotten != NULL ? PyNumber_Add(gotten, s_one) : NULL;
        int bad = more == NULL || PyDict_SetItem(qdict, s_gotten, more) < 0;
        if (taken != NULL) {
            PyObject *given = PyObject_CallMethodNoArgs(mutex, s_release);
            bad = bad || given == NULL;
            Py_XDECREF(given);
        }
        Py_XDECREF(taken);
        Py_XDECREF(more);
        if (bad) {
            r = -1;
            Py_CLEAR(item);
        }
    }
done:
    Py_DECREF(qdict);
    if (r < 0) return NULL;
    if (r == 0) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    return item;
}

PyMethodDef durablequeue_methods[] = {
    {"queue_put", (PyCFunction)(void (*)(void))put, METH_FASTCALL, "q.put(item) for an unbounded queue, or NotImplemented."},
    {"queue_get", get, METH_O, "q.get() when an item is ready, or NotImplemented."},
    {NULL, NULL, 0, NULL},
};

int durablequeue_init(PyObject *module) {
#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    INTERN(s_log, "_log") INTERN(s_lock, "_lock") INTERN(s_lock_timeout, "lock_timeout")
    INTERN(s_serializer, "_serializer") INTERN(s_pending, "_pending") INTERN(s_held, "_held") INTERN(s_maxsize, "maxsize")
    INTERN(s_encode, "encode") INTERN(s_decode, "decode") INTERN(s_add, "add") INTERN(s_head, "head")
    INTERN(s_remove, "remove") INTERN(s_release_consumed, "_release_consumed")
    INTERN(s_announce_puts, "_announce_puts") INTERN(s_mutex, "mutex") INTERN(s_gotten, "_gotten")
    INTERN(s_acquire, "acquire") INTERN(s_release, "release")
#undef INTERN
    return (s_one = PyLong_FromLong(1)) == NULL ? -1 : 0;
}
