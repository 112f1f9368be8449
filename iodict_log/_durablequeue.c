/* durablequeue.py's hot paths in C: q.put(item), and q.get(), q.lease() and lease.ack()
 * when an item is there.
 *
 * put is DurableQueue.put_many([item]) -> _try_put -> LogHandle._write(_append_puts)
 * -> Log.append_one(OP_PUT) + PendingItems.add -> _announce_puts; get is
 * DurableQueue.get -> _try_take -> _take -> PendingItems.head, Log.read_value,
 * Serializer.decode, _settle(OP_TAKE) (Log.append_one, PendingItems.remove,
 * _release_consumed), then the _gotten count; lease is the same take up to the
 * decode, then _lend (Holders.own, the LEASE, LeasedItems.leased, _lent); ack is
 * Lease.ack -> _end_lease -> _current (LeasedItems.is_current), _settle(OP_TAKE)
 * (LeasedItems.settle_held). The common case only, step for step, on _log.c's
 * append_begin / append_one / append_end. Python objects keep their own logic (the
 * queue's index, judging which held items are back, waking waiters): C calls their
 * methods. A bounded queue (maxsize), a lock_timeout, an empty queue (waiting), a
 * held item back (it goes first: LeasedItems.reclaim judges, called here), an item
 * that does not read or decode (the dead-letter path), a lease no longer current
 * (LeaseExpiredError), and every case _log.c declines are left to Python before
 * anything has changed: the caller then runs the Python path.
 */
#include "native.h"

#include <string.h>
#include <time.h>

static PyObject *s_held, *s_leases, *s_lent, *s_reclaim, *s_back_count, *s_holders, *s_own, *s_leased, *s_lease_timeout,
    *s_is_current, *s_settle_held, *s_id, *s_holder_, *s_deliveries;
static PyObject *s_log, *s_lock, *s_lock_timeout, *s_serializer, *s_pending, *s_maxsize, *s_encode, *s_decode,
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

/* PendingItems.head(), read and decoded: 1 with *seq and *item, 0 Python's, -1 error. */
static int read_head(PyObject *log, PyObject *serializer, PyObject *pending, PyObject **seq, PyObject **item) {
    PyObject *head = PyObject_CallMethodNoArgs(pending, s_head), *data = NULL;
    if (head == NULL) return -1;
    int r = 0;
    size_t value_at;
    unsigned flags;
    if (!PyTuple_CheckExact(head) || PyTuple_GET_SIZE(head) != 2) goto leave; /* (None: empty after all) */
    r = log_read_value(log, PyTuple_GET_ITEM(head, 1), &data, &value_at, &flags);
    if (r <= 0) goto leave; /* (damaged: Python's warning and TAKE) */
    PyObject *stored = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + value_at,
                                                 PyBytes_GET_SIZE(data) - (Py_ssize_t)value_at);
    PyObject *pyflags = PyLong_FromLong((long)flags);
    *item = stored && pyflags ? PyObject_CallMethodObjArgs(serializer, s_decode, pyflags, stored, NULL) : NULL;
    Py_XDECREF(stored);
    Py_XDECREF(pyflags);
    r = *item != NULL; /* (does not decode: Python's dead letter) */
    if (r) *seq = Py_NewRef(PyTuple_GET_ITEM(head, 0));
    else if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception))
        r = -1; /* (KeyboardInterrupt, SystemExit: raised, as in Python) */
leave:
    if (r == 0) PyErr_Clear();
    Py_XDECREF(data);
    Py_DECREF(head);
    return r;
}

/* Append op (OP_TAKE, OP_LEASE) naming the PUT `seq`, with `value`: 1, 0 Python's, -1 error. */
static int append_about(Appender *a, unsigned op, PyObject *seq, const char *value, size_t vlen) {
    unsigned long long n = PyLong_AsUnsignedLongLong(seq);
    if (n == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    unsigned char key[8];
    for (int i = 0; i < 8; i++) key[i] = (unsigned char)(n >> (8 * i));
    PyObject *loc = NULL;
    int r = append_one(a, op, 0, (const char *)key, 8, value, vlen, append_birthtime(a), &loc);
    Py_XDECREF(loc);
    return r;
}

/* _settle(log, OP_TAKE, seq) after the TAKE: the item leaves `held` (an ack) or the ready
 * items (a get), then the consumed segments go. */
static int settled(PyObject *q, PyObject *log, PyObject *leases, PyObject *pending, PyObject *seq, int held) {
    PyObject *done = held ? PyObject_CallMethodObjArgs(leases, s_settle_held, seq, Py_False, NULL)
                          : PyObject_CallMethodOneArg(pending, s_remove, seq);
    PyObject *released = done != NULL ? PyObject_CallMethodOneArg(q, s_release_consumed, log) : NULL;
    Py_XDECREF(done);
    Py_XDECREF(released);
    return released == NULL ? -1 : 1;
}

/* Holding both locks, the log caught up: whether the oldest ready item is PendingItems.head(),
 * as _oldest_ready says when no held item is back (LeasedItems.reclaim judges): 1, 0, -1. */
static int head_is_oldest(PyObject *held, PyObject *leases, PyObject *pending) {
    Py_ssize_t ready = PyObject_Length(pending);
    if (ready <= 0 || !PyDict_GET_SIZE(held)) return ready < 0 ? -1 : ready > 0; /* (none held: none back) */
    PyObject *done = PyObject_CallMethodNoArgs(leases, s_reclaim);
    if (done == NULL) return -1;
    Py_DECREF(done);
    long long back;
    return attr_int(leases, s_back_count, &back) && back == 0;
}

/* What get() and lease() share: the queue's parts, and its object lock taken. */
typedef struct {
    PyObject *qdict, *serializer, *pending, *leases, *held, *log, *lock;
} Parts;

/* 1 with the object lock held and the parts borrowed (qdict owned), 0 Python's, -1 error. */
static int parts_enter(Parts *p, PyObject *q) {
    memset(p, 0, sizeof *p);
    if ((p->qdict = PyObject_GenericGetDict(q, NULL)) == NULL) return -1;
    p->serializer = dict_get(p->qdict, s_serializer);
    p->pending = dict_get(p->qdict, s_pending);
    p->leases = dict_get(p->qdict, s_leases);
    p->held = dict_get(p->qdict, s_held);
    if (p->serializer == NULL || p->pending == NULL || p->leases == NULL || p->held == NULL || !PyDict_Check(p->held))
        return 0;
    int r = enter(p->qdict, q, &p->lock);
    if (r <= 0) return r;
    p->log = dict_get(p->qdict, s_log);
    if (p->log != NULL && p->log != Py_None) return 1;
    object_unlock(p->lock); /* (closed: Python's StoreClosedError) */
    return 0;
}

/* get(q): q.get() when an item is ready; NotImplemented to leave it to Python (empty, an item
 * that came back from a lease first, or not the common case). */
static PyObject *get(PyObject *self, PyObject *q) {
    Parts p;
    PyObject *item = NULL, *seq = NULL;
    int r = parts_enter(&p, q);
    if (r > 0) {
        PyObject *log = Py_NewRef(p.log);
        Appender a;
        r = append_begin(&a, log);
        if (r > 0) {
            r = head_is_oldest(p.held, p.leases, p.pending);
            if (r > 0) r = read_head(log, p.serializer, p.pending, &seq, &item);
            if (r > 0) r = append_about(&a, OP_TAKE, seq, "", 0);
            if (r > 0) r = settled(q, log, p.leases, p.pending, seq, 0);
            if (append_end(&a) < 0) r = -1;
        }
        Py_DECREF(log);
        object_unlock(p.lock);
    }
    if (r > 0) { /* get(): with self.mutex: self._gotten += 1 */
        PyObject *mutex = dict_get(p.qdict, s_mutex), *gotten = dict_get(p.qdict, s_gotten);
        PyObject *taken = mutex != NULL ? PyObject_CallMethodNoArgs(mutex, s_acquire) : NULL;
        PyObject *more = taken != NULL && gotten != NULL ? PyNumber_Add(gotten, s_one) : NULL;
        int bad = more == NULL || PyDict_SetItem(p.qdict, s_gotten, more) < 0;
        if (taken != NULL) {
            PyObject *given = PyObject_CallMethodNoArgs(mutex, s_release);
            bad = bad || given == NULL;
            Py_XDECREF(given);
        }
        Py_XDECREF(taken);
        Py_XDECREF(more);
        if (bad) r = -1;
    }
    Py_XDECREF(seq);
    Py_XDECREF(p.qdict);
    if (r <= 0) Py_CLEAR(item);
    if (r < 0) return NULL;
    if (r == 0) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    return item;
}

/* The queue's lease_timeout in *seconds (-1: none): 1, 0 Python's (not a float or an int), -1 error. */
static int lease_seconds(PyObject *qdict, double *seconds) {
    PyObject *timeout = dict_get(qdict, s_lease_timeout);
    *seconds = -1;
    if (timeout == NULL) return 0;
    if (timeout == Py_None) return 1;
    if (!PyFloat_CheckExact(timeout) && !PyLong_CheckExact(timeout)) return 0;
    *seconds = PyFloat_AsDouble(timeout);
    return *seconds == -1.0 && PyErr_Occurred() ? -1 : 1;
}

/* _expiry(seconds): the wall-clock ns a lease taken now for `seconds` expires; 0: never. */
static uint64_t lease_expiry(double seconds) {
    if (seconds < 0) return 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec + (uint64_t)(long long)(seconds * 1e9);
}

/* lease(q, Lease): q.lease() when an item is ready, as _take(lease=True) -> _lend does it;
 * NotImplemented to leave it to Python. */
static PyObject *lease(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "lease(q, Lease)");
        return NULL;
    }
    PyObject *q = args[0], *lease_type = args[1];
    Parts p;
    PyObject *item = NULL, *seq = NULL, *holder = NULL, *lease = NULL;
    int r = parts_enter(&p, q);
    if (r > 0) {
        PyObject *log = Py_NewRef(p.log), *lent = dict_get(p.qdict, s_lent);
        uint64_t expiry = 0;
        double seconds;
        Appender a;
        r = lent != NULL && PySet_CheckExact(lent) ? lease_seconds(p.qdict, &seconds) : 0;
        if (r > 0) r = append_begin(&a, log);
        if (r > 0) {
            r = head_is_oldest(p.held, p.leases, p.pending);
            if (r > 0) r = read_head(log, p.serializer, p.pending, &seq, &item);
            if (r > 0) { /* _lend: holders.own(), the LEASE, leased(), _lent.add((seq, 1)) */
                PyObject *holders = PyObject_GetAttr(p.leases, s_holders);
                holder = holders != NULL ? PyObject_CallMethodNoArgs(holders, s_own) : NULL;
                Py_XDECREF(holders);
                unsigned long long token = holder != NULL ? PyLong_AsUnsignedLongLong(holder) : 0;
                r = holder == NULL || PyErr_Occurred() ? -1 : 1;
                if (r > 0) {
                    expiry = lease_expiry(seconds); /* (holding the lock, caught up: as _lend) */
                    unsigned char value[20]; /* format.LEASE: <QQI holder, expiry, delivery */
                    for (int i = 0; i < 8; i++) {
                        value[i] = (unsigned char)(token >> (8 * i));
                        value[8 + i] = (unsigned char)(expiry >> (8 * i));
                    }
                    value[16] = 1, value[17] = value[18] = value[19] = 0;
                    r = append_about(&a, OP_LEASE, seq, (const char *)value, sizeof value);
                }
            }
            if (r > 0) {
                PyObject *at = PyLong_FromUnsignedLongLong(expiry);
                PyObject *done =
                    at != NULL ? PyObject_CallMethodObjArgs(p.leases, s_leased, seq, holder, at, s_one, NULL) : NULL;
                PyObject *pair = done != NULL ? PyTuple_Pack(2, seq, s_one) : NULL;
                r = pair != NULL && PySet_Add(lent, pair) == 0 ? 1 : -1;
                Py_XDECREF(at);
                Py_XDECREF(done);
                Py_XDECREF(pair);
            }
            if (append_end(&a) < 0) r = -1;
        }
        Py_DECREF(log);
        object_unlock(p.lock);
    }
    if (r > 0) {
        PyObject *fields[5] = {q, item, seq, s_one, holder};
        lease = PyObject_Vectorcall(lease_type, fields, 5, NULL);
        if (lease == NULL) r = -1;
    }
    Py_XDECREF(item);
    Py_XDECREF(seq);
    Py_XDECREF(holder);
    Py_XDECREF(p.qdict);
    if (r < 0) return NULL;
    if (r == 0) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    return lease;
}

/* ack(q, lease): lease.ack() while the lease is current, as _end_lease(lease, OP_TAKE) does
 * it; NotImplemented to leave it to Python (which raises LeaseExpiredError if it is not). */
static PyObject *ack(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "ack(q, lease)");
        return NULL;
    }
    PyObject *q = args[0], *lease = args[1];
    Parts p = {0};
    PyObject *seq = PyObject_GetAttr(lease, s_id), *holder = PyObject_GetAttr(lease, s_holder_),
             *delivery = PyObject_GetAttr(lease, s_deliveries);
    int r = seq != NULL && holder != NULL && delivery != NULL ? parts_enter(&p, q) : -1;
    if (r > 0) {
        PyObject *log = Py_NewRef(p.log), *lent = dict_get(p.qdict, s_lent);
        Appender a;
        r = lent != NULL && PySet_CheckExact(lent) ? append_begin(&a, log) : 0;
        if (r > 0) {
            PyObject *current = PyObject_CallMethodObjArgs(p.leases, s_is_current, seq, holder, delivery, NULL);
            r = current == NULL ? -1 : current == Py_True; /* (not current: Python's LeaseExpiredError) */
            Py_XDECREF(current);
            if (r > 0) r = append_about(&a, OP_TAKE, seq, "", 0);
            if (r > 0) r = settled(q, log, p.leases, p.pending, seq, 1);
            if (r > 0) {
                PyObject *pair = PyTuple_Pack(2, seq, delivery);
                r = pair != NULL && PySet_Discard(lent, pair) >= 0 ? 1 : -1;
                Py_XDECREF(pair);
            }
            if (append_end(&a) < 0) r = -1;
        }
        Py_DECREF(log);
        object_unlock(p.lock);
    }
    Py_XDECREF(seq);
    Py_XDECREF(holder);
    Py_XDECREF(delivery);
    Py_XDECREF(p.qdict);
    if (r == 0) PyErr_Clear();
    return fast_answer(r);
}

PyMethodDef durablequeue_methods[] = {
    {"queue_put", (PyCFunction)(void (*)(void))put, METH_FASTCALL, "q.put(item) for an unbounded queue, or NotImplemented."},
    {"queue_get", get, METH_O, "q.get() when an item is ready, or NotImplemented."},
    {"queue_lease", (PyCFunction)(void (*)(void))lease, METH_FASTCALL, "q.lease() when an item is ready, or NotImplemented."},
    {"queue_ack", (PyCFunction)(void (*)(void))ack, METH_FASTCALL, "lease.ack() while it is current, or NotImplemented."},
    {NULL, NULL, 0, NULL},
};

int durablequeue_init(PyObject *module) {
#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    INTERN(s_log, "_log") INTERN(s_lock, "_lock") INTERN(s_lock_timeout, "lock_timeout")
    INTERN(s_serializer, "_serializer") INTERN(s_pending, "_pending") INTERN(s_held, "_held") INTERN(s_maxsize, "maxsize")
    INTERN(s_leases, "_leases") INTERN(s_lent, "_lent") INTERN(s_reclaim, "reclaim") INTERN(s_back_count, "back_count")
    INTERN(s_holders, "holders") INTERN(s_own, "own") INTERN(s_leased, "leased") INTERN(s_lease_timeout, "lease_timeout")
    INTERN(s_is_current, "is_current") INTERN(s_settle_held, "settle_held") INTERN(s_id, "id")
    INTERN(s_holder_, "_holder") INTERN(s_deliveries, "deliveries")
    INTERN(s_encode, "encode") INTERN(s_decode, "decode") INTERN(s_add, "add") INTERN(s_head, "head")
    INTERN(s_remove, "remove") INTERN(s_release_consumed, "_release_consumed")
    INTERN(s_announce_puts, "_announce_puts") INTERN(s_mutex, "mutex") INTERN(s_gotten, "_gotten")
    INTERN(s_acquire, "acquire") INTERN(s_release, "release")
#undef INTERN
    return (s_one = PyLong_FromLong(1)) == NULL ? -1 : 0;
}
