/* log.py's hot path in C, for the fast paths of _iodict.c and _durablequeue.c:
 * LogHandle._write / _read around one operation, Log.refresh's "nothing new",
 * Log.birthtime, Log.append_one + Log._land, and Log.read_value.
 *
 * They read and write the same attributes of the same objects (the Log's and
 * the FileLock's __dict__, Segment's slots) as the Python code, in the same
 * order. append_begin() takes the write lock only in the common case: no
 * deadline, no group commit or sync=True, no crash point armed, no faulty file
 * operations installed (tests/faultyfs.py), no roll due, nothing another
 * process changed (the change counter, or under flock the file size), not a
 * forked child with closed descriptors, not a read-only Log (which never takes
 * the lock: its Python path raises ReadOnlyError). In any other case it answers 0 having
 * changed nothing, and the caller leaves the whole operation to Python, which
 * does the rare work and raises the errors.
 *
 * While the C path holds the write lock, FileLock._depth is 1, as it is in
 * Python under `with log.file_lock`, so Python code called meanwhile (a
 * queue's PendingItems, its segment reclaim) sees the lock held and never
 * takes it again.
 */
#include "native.h"

#include <errno.h>
#include <string.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

/* Handed over by log.py at import (setup_log). */
static PyObject *RLockType, *ReloadNeeded, *rlock_acquire, *rlock_release, *fileops_dict, *os_write, *os_ftruncate, *crashpoints_dict, *filelock_dict;
static PyObject *s_readonly, *s_forked, *s_sync_interval, *s_sync_always, *s_end, *s_segment_bytes, *s_last_seq,
    *s_last_birthtime, *s_segments, *s_file_lock, *s_changes, *s_fd, *s_lock_fd, *s_salt, *s_depth, *s_generation,
    *s_deadline, *s_mutex, *s_counter, *s_owner_died, *s_acquire, *s_release, *s_write, *s_ftruncate, *s_ARMED,
    *s_fork_generation, *s_view, *s_sealed_size, *s_refresh, *s_zero, *s_one;
#define VIEW_MIN (1 << 20) /* the smallest mapping made: a segment grows into it */

/* --- attributes ------------------------------------------------------------- */

PyObject *dict_get(PyObject *dict, PyObject *name) {
    PyObject *v = PyDict_GetItemWithError(dict, name);
    if (v == NULL) PyErr_Clear();
    return v;
}

int dict_int(PyObject *dict, PyObject *name, long long *out) {
    PyObject *v = dict_get(dict, name);
    if (v == NULL || !PyLong_CheckExact(v)) return 0;
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (*out == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

int dict_set_int(PyObject *dict, PyObject *name, long long value) {
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) return -1;
    int r = PyDict_SetItem(dict, name, v);
    Py_DECREF(v);
    return r;
}

int attr_int(PyObject *obj, PyObject *name, long long *out) {
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

/* --- index.unpack_location (pack_location is _format.c's) ----------------------- */

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int unpack_location(PyObject *loc, unsigned *slot, uint64_t *offset, uint64_t *length, uint64_t *birth) {
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
    *birth = (uint64_t)get_u32(b + 10) | (uint64_t)get_u32(b + 14) << 32;
    return 1;
}

/* --- the object's lock (LogHandle: `with self._lock`) -------------------------- */

int object_lock(PyObject *lock) {
    if (lock == NULL || Py_TYPE(lock) != (PyTypeObject *)RLockType) return 0; /* (another kind: Python's) */
    PyObject *r = PyObject_Vectorcall(rlock_acquire, &lock, 1, NULL); /* (RLock.acquire(lock): no method lookup) */
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 1;
}

void object_unlock(PyObject *lock) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *r = PyObject_Vectorcall(rlock_release, &lock, 1, NULL);
    Py_XDECREF(r);
    if (type != NULL) PyErr_Restore(type, value, tb);
}

/* --- the write lock (FileLock.__enter__ / __exit__ at depth 0, no deadline) ------ */

static int file_lock_take(Appender *a) {
    if (a->mutex != NULL) return lock_take(a->mutex);
    if (flock(a->lock_fd, LOCK_EX | LOCK_NB) == 0) return 0;
    int r;
    Py_BEGIN_ALLOW_THREADS
    do r = flock(a->lock_fd, LOCK_EX); while (r < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    if (r < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

/* FileLock.__exit__: every release is counted, before unlocking, whatever the holder
 * did (after a dead holder above all: the others trust the counter to tell them). */
static int file_lock_give(Appender *a) {
    if (a->counter != NULL) a->released = lock_bump(a->counter);
    int r = a->mutex != NULL ? lock_give(a->mutex) : flock(a->lock_fd, LOCK_UN);
    if (r < 0 && a->mutex == NULL) PyErr_SetFromErrno(PyExc_OSError);
    return r < 0 ? -1 : 0;
}

/* --- Log.refresh: is there nothing new? ---------------------------------------- */

/* 1 if nobody changed anything since this process last caught up: the change counter
 * when LOCK has one, else the last segment still ends at log._end. 0 otherwise. */
static int fresh(PyObject *ldict, void *counter, PyObject *active) {
    long long changes, end, fd;
    if (counter != NULL) return dict_int(ldict, s_changes, &changes) && lock_changes(counter) == (uint64_t)changes;
    return dict_int(ldict, s_end, &end) && active != Py_None && attr_int(active, s_fd, &fd) &&
           lseek((int)fd, 0, SEEK_END) == (off_t)end;
}

int log_is_fresh(PyObject *log) {
    PyObject *ldict = PyObject_GenericGetDict(log, NULL);
    if (ldict == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *filelock = dict_get(ldict, s_file_lock), *segments = dict_get(ldict, s_segments);
    long long counter = 0;
    int ok = dict_get(ldict, s_forked) == Py_False && filelock != NULL && segments != NULL &&
             PyList_CheckExact(segments) && PyList_GET_SIZE(segments) > 0;
    PyObject *fldict = ok ? PyObject_GenericGetDict(filelock, NULL) : NULL;
    if (fldict != NULL) {
        if (!dict_int(fldict, s_counter, &counter)) counter = 0;
        ok = fresh(ldict, (void *)(intptr_t)counter, PyList_GET_ITEM(segments, PyList_GET_SIZE(segments) - 1));
        Py_DECREF(fldict);
    } else {
        PyErr_Clear();
        ok = 0;
    }
    Py_DECREF(ldict);
    return ok;
}

/* --- Log.read_value, through a mapping of the segment -------------------------
 *
 * A get reads its record from a read-only shared mapping of the segment instead of
 * making a pread: no syscall. Each Segment holds its mapping as `view` (a
 * SegmentView, unmapped when the last reference goes: Segment.close drops it, and a
 * read in flight holds its own), made on the first read and made larger when the
 * segment has grown past it; a sealed segment (sealed_size >= 0) is mapped whole,
 * so that its view never grows. A view needs no descriptor once made: a segment
 * that its Log's clock parked (fd -1, segment.py) is read through its view, and
 * only making or growing one needs the fd (without it, the read is declined and
 * Python reopens the segment). Only offsets below what the index has seen committed
 * are ever touched, and those pages exist unless another program cut the file
 * (repair, or damage): that read then faults with SIGBUS, which a handler turns
 * back into "not the common case" (the Python path then raises CorruptionError for
 * the cut record), never a crash. The handler is installed with the first mapping;
 * a SIGBUS outside a guarded copy goes to the handler that was there before. */

typedef struct {
    PyObject_HEAD
    void *addr;
    size_t size;
} SegmentView;

static void view_dealloc(SegmentView *v) {
    if (v->addr != NULL) munmap(v->addr, v->size);
    PyObject_Free(v);
}

static PyTypeObject SegmentViewType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "iodict_log._native.SegmentView",
    .tp_basicsize = sizeof(SegmentView),
    .tp_dealloc = (destructor)view_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A read-only mapping of one segment file (_log.c).",
};

static __thread sigjmp_buf *volatile bus_guard; /* set around a copy from a mapping (volatile: the handler reads it) */
static struct sigaction previous_bus;
static int bus_handler_installed;

static void on_bus(int sig, siginfo_t *info, void *context) {
    sigjmp_buf *guard = bus_guard;
    if (guard != NULL) {
        bus_guard = NULL;
        siglongjmp(*guard, 1); /* (SA_NODEFER: SIGBUS is not left blocked) */
    }
    if (previous_bus.sa_flags & SA_SIGINFO) {
        previous_bus.sa_sigaction(sig, info, context);
    } else if (previous_bus.sa_handler != SIG_DFL && previous_bus.sa_handler != SIG_IGN) {
        previous_bus.sa_handler(sig);
    } else { /* as if nobody had been here: the default action */
        signal(sig, SIG_DFL);
        raise(sig);
    }
}

static int install_bus_handler(void) {
    if (bus_handler_installed) return 1;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_bus;
    action.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &previous_bus) < 0) return 0;
    bus_handler_installed = 1;
    return 1;
}

/* The segment's view covering [0, end), made (or made larger) if need be, which
 * needs fd >= 0; a new reference, or NULL (no exception) when there can be none:
 * then pread, or with no fd decline. */
static PyObject *view_of(PyObject *segment, int fd, uint64_t end) {
    PyObject *view = PyObject_GetAttr(segment, s_view);
    if (view == NULL) {
        PyErr_Clear();
        return NULL; /* (a Segment without the slot) */
    }
    if (Py_TYPE(view) == &SegmentViewType && ((SegmentView *)view)->size >= end) return view;
    size_t size = Py_TYPE(view) == &SegmentViewType ? ((SegmentView *)view)->size * 2 : 0;
    Py_DECREF(view);
    long long sealed;
    if (fd < 0 || !install_bus_handler()) return NULL;
    if (attr_int(segment, s_sealed_size, &sealed) && sealed >= 0 && (uint64_t)sealed >= end) {
        size = (size_t)sealed; /* sealed: whole, and never again */
    } else {
        if (size < end) size = (size_t)end;
        if (size < VIEW_MIN) size = VIEW_MIN;
    }
    void *addr = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED) return NULL;
    SegmentView *made = PyObject_New(SegmentView, &SegmentViewType);
    if (made == NULL) {
        munmap(addr, size);
        PyErr_Clear();
        return NULL;
    }
    made->addr = addr;
    made->size = size;
    if (PyObject_SetAttr(segment, s_view, (PyObject *)made) < 0) { /* (the old view goes when its readers are done) */
        Py_DECREF(made);
        PyErr_Clear();
        return NULL;
    }
    return (PyObject *)made;
}

/* Copy length bytes at offset from the view into out: 1, or 0 if the file was cut under it. */
static int copy_from(SegmentView *view, uint64_t offset, size_t length, char *out) {
    sigjmp_buf guard;
    if (sigsetjmp(guard, 0)) return 0; /* (bus_guard was cleared by the handler) */
    bus_guard = &guard;
    memcpy(out, (const char *)view->addr + offset, length);
    bus_guard = NULL;
    return 1;
}

int log_read_value(PyObject *log, PyObject *loc, PyObject **data, size_t *value_at, unsigned *flags) {
    unsigned slot;
    uint64_t offset, length, birth;
    long long fd, salt;
    PyObject *ldict = PyObject_GenericGetDict(log, NULL);
    if (ldict == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *segments = dict_get(ldict, s_segments);
    int ok = segments != NULL && PyList_CheckExact(segments) && unpack_location(loc, &slot, &offset, &length, &birth) &&
             (Py_ssize_t)slot < PyList_GET_SIZE(segments);
    PyObject *segment = ok ? Py_NewRef(PyList_GET_ITEM(segments, slot)) : NULL;
    Py_DECREF(ldict);
    ok = ok && segment != Py_None && attr_int(segment, s_fd, &fd) && attr_int(segment, s_salt, &salt);
    PyObject *bytes = ok ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length) : NULL;
    PyObject *view = bytes != NULL ? view_of(segment, (int)fd, offset + length) : NULL;
    Py_XDECREF(segment);
    if (!ok) return 0;
    if (bytes == NULL) return -1;
    if (view != NULL) {
        ok = copy_from((SegmentView *)view, offset, (size_t)length, PyBytes_AS_STRING(bytes));
        Py_DECREF(view);
    } else if (fd < 0) {
        ok = 0; /* parked (or closed), no view covering it: Python reopens it */
    } else {
        ssize_t got;
        Py_BEGIN_ALLOW_THREADS
        do got = pread((int)fd, PyBytes_AS_STRING(bytes), (size_t)length, (off_t)offset); while (got < 0 && errno == EINTR);
        Py_END_ALLOW_THREADS
        ok = got == (ssize_t)length;
    }
    if (!ok || !frame_checks((unsigned char *)PyBytes_AS_STRING(bytes), (size_t)length, (uint32_t)salt, value_at, flags)) {
        Py_DECREF(bytes);
        return 0; /* cut short or damaged: Python raises CorruptionError */
    }
    *data = bytes;
    return 1;
}

/* read_value(log, loc) -> (flags, stored value) | None: Log.read_value through the
 * mapping; None when the record cannot be read so (Python then raises). */
static PyObject *read_value(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read_value(log, loc)");
        return NULL;
    }
    PyObject *data;
    size_t value_at;
    unsigned flags;
    int r = log_read_value(args[0], args[1], &data, &value_at, &flags);
    if (r < 0) return NULL;
    if (r == 0) Py_RETURN_NONE;
    PyObject *value = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + value_at, PyBytes_GET_SIZE(data) - (Py_ssize_t)value_at);
    Py_DECREF(data);
    return new_pair(PyLong_FromLong((long)flags), value);
}

PyObject *fast_answer(int r) {
    if (r < 0) return NULL;
    if (r == 0) Py_RETURN_NOTIMPLEMENTED;
    Py_RETURN_NONE;
}

/* --- appending ------------------------------------------------------------------ */

/* The active segment and the Log's state as the append needs them (after any catch-up):
 * 1, or 0 when they are not what the common case needs (a roll is due: Python's). */
static int read_state(Appender *a) {
    long long fd, salt;
    PyObject *segments = dict_get(a->ldict, s_segments);
    if (!dict_int(a->ldict, s_end, &a->end) || !dict_int(a->ldict, s_segment_bytes, &a->segment_bytes) ||
        !dict_int(a->ldict, s_last_seq, &a->last_seq) || !dict_int(a->ldict, s_last_birthtime, &a->last_birthtime) ||
        a->end >= a->segment_bytes || segments == NULL || !PyList_CheckExact(segments) || PyList_GET_SIZE(segments) == 0)
        return 0;
    a->slot = PyList_GET_SIZE(segments) - 1;
    PyObject *active = PyList_GET_ITEM(segments, a->slot);
    if (active == Py_None || !attr_int(active, s_fd, &fd) || fd < 0 || !attr_int(active, s_salt, &salt)) return 0;
    a->fd = (int)fd;
    a->salt = (uint32_t)salt;
    return 1;
}

int append_begin(Appender *a, PyObject *log) {
    memset(a, 0, sizeof *a);
    if (PyDict_GetItemWithError(crashpoints_dict, s_ARMED) != Py_False ||
        dict_get(fileops_dict, s_write) != os_write || dict_get(fileops_dict, s_ftruncate) != os_ftruncate) {
        PyErr_Clear();
        return 0;
    }
    PyObject *ldict = PyObject_GenericGetDict(log, NULL);
    if (ldict == NULL) return -1;
    a->ldict = ldict;
    long long generation, fork_generation, depth, mutex = 0, counter = 0, lock_fd = -1;
    /* (_sync_error is set only by a group commit: sync_interval None means none) */
    if (dict_get(ldict, s_readonly) != Py_False || dict_get(ldict, s_forked) != Py_False ||
        dict_get(ldict, s_sync_interval) != Py_None ||
        dict_get(ldict, s_sync_always) != Py_False)
        goto python;
    PyObject *filelock = dict_get(ldict, s_file_lock), *segments = dict_get(ldict, s_segments);
    if (filelock == NULL || segments == NULL || !PyList_CheckExact(segments) || PyList_GET_SIZE(segments) == 0)
        goto python;
    a->fldict = PyObject_GenericGetDict(filelock, NULL);
    if (a->fldict == NULL) goto fail;
    if (!dict_int(a->fldict, s_depth, &depth) || depth != 0 || !dict_int(a->fldict, s_generation, &generation) ||
        !dict_int(filelock_dict, s_fork_generation, &fork_generation) || generation != fork_generation ||
        dict_get(a->fldict, s_deadline) != Py_None)
        goto python;
    dict_int(a->fldict, s_mutex, &mutex);
    dict_int(a->fldict, s_counter, &counter);
    if (mutex == 0 && !dict_int(a->fldict, s_lock_fd, &lock_fd)) goto python;
    a->mutex = (void *)(intptr_t)mutex;
    a->counter = (void *)(intptr_t)counter;
    a->lock_fd = (int)lock_fd;
    int taken = file_lock_take(a);
    if (taken < 0) goto fail;
    if (taken == 1) { /* its holder died: Python's refresh looks at everything */
        int r = PyDict_SetItem(a->fldict, s_owner_died, Py_True);
        file_lock_give(a);
        if (r < 0) goto fail;
        goto python;
    }
    if (PyDict_SetItem(a->fldict, s_depth, s_one) < 0) {
        file_lock_give(a);
        goto fail;
    }
    /* log.refresh(defer_reload=True) under the lock, as LogHandle._write: nothing to do if
     * nobody changed anything (under the mutex the counter says it all, a holder that died
     * being reported above; under flock a dead holder's bytes only show in the size), else
     * Python's catch-up runs here, holding the lock. A reload due (ReloadNeeded) leaves the
     * whole call to Python, which lets go of the lock to rebuild; any other error is the
     * call's, as it is in Python. */
    PyObject *active = PyList_GET_ITEM(segments, PyList_GET_SIZE(segments) - 1);
    if (!(a->mutex != NULL ? fresh(ldict, a->counter, active) : fresh(ldict, NULL, active))) {
        PyObject *done = PyObject_CallMethodOneArg(log, s_refresh, Py_True);
        Py_XDECREF(done);
        if (done == NULL) {
            if (PyErr_ExceptionMatches(ReloadNeeded)) PyErr_Clear();
            goto leave;
        }
    }
    if (read_state(a)) return 1;
leave: {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyDict_SetItem(a->fldict, s_depth, s_zero);
        file_lock_give(a);
        PyErr_Restore(type, value, tb);
    }
python:
    Py_CLEAR(a->fldict);
    Py_CLEAR(a->ldict);
    return PyErr_Occurred() ? -1 : 0;
fail:
    Py_CLEAR(a->fldict);
    Py_CLEAR(a->ldict);
    return -1;
}

uint64_t append_birthtime(Appender *a) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long now = ((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec) / 1000 * 1000;
    a->last_birthtime = now > a->last_birthtime ? now : a->last_birthtime + 1000;
    a->birth_taken = 1;
    return (uint64_t)a->last_birthtime;
}

int append_data(Appender *a, PyObject *data, long long frames) {
    if (a->end >= a->segment_bytes) return 0; /* (a second append filled the segment: the roll is Python's) */
    size_t length = (size_t)PyBytes_GET_SIZE(data);
    if ((uint64_t)a->end + length > MAX_OFFSET) return 0; /* (past 4 GiB: Python's error) */
    /* Segment.append: all of it or none of it. */
    const char *p = PyBytes_AS_STRING(data);
    size_t left = length;
    int error = 0;
    Py_BEGIN_ALLOW_THREADS
    while (left) {
        ssize_t w = write(a->fd, p, left);
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
        do r = ftruncate(a->fd, (off_t)a->end); while (r < 0 && errno == EINTR);
    }
    Py_END_ALLOW_THREADS
    if (error) {
        errno = error;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    a->end += (long long)length;
    a->last_length = length;
    a->last_seq += frames;
    a->written = 1;
    /* The Log's state, as append_one / append_batch leave it, before any Python code runs. */
    if (dict_set_int(a->ldict, s_end, a->end) < 0 || dict_set_int(a->ldict, s_last_seq, a->last_seq) < 0 ||
        (a->birth_taken && dict_set_int(a->ldict, s_last_birthtime, a->last_birthtime) < 0))
        return -1;
    return 1;
}

int append_one(Appender *a, unsigned op, unsigned flags, const char *key, size_t klen, const char *value, size_t vlen,
               uint64_t birth, PyObject **loc) {
    PyObject *frame = frame_bytes(op, flags, (uint64_t)a->last_seq + 1, birth, key, klen, value, vlen, a->salt);
    if (frame == NULL) return -1;
    long long at = a->end;
    int r = append_data(a, frame, 1);
    Py_DECREF(frame);
    if (r <= 0) return r;
    *loc = pack_location(birth, (unsigned)a->slot, (uint64_t)at, a->last_length);
    return *loc == NULL ? -1 : 1;
}

int append_end(Appender *a) {
    int bad = PyDict_SetItem(a->fldict, s_depth, s_zero) < 0;
    if (file_lock_give(a) < 0) bad = 1;
    /* After an append the count is ours: nobody else changed anything while we held the
     * lock, so this process is up to date at it (as LogHandle._write records it). */
    if (a->counter != NULL && a->written && !bad) {
        PyObject *v = PyLong_FromUnsignedLongLong(a->released);
        bad = v == NULL || PyDict_SetItem(a->ldict, s_changes, v) < 0;
        Py_XDECREF(v);
    }
    Py_CLEAR(a->fldict);
    Py_CLEAR(a->ldict);
    return bad ? -1 : 0;
}

/* --- setup ---------------------------------------------------------------------- */

static PyObject *module_dict(PyObject *module) {
    if (!PyModule_Check(module)) {
        PyErr_SetString(PyExc_TypeError, "setup_log expects modules");
        return NULL;
    }
    return Py_NewRef(PyModule_GetDict(module));
}

/* setup_log(RLock type, fileops, crashpoints, filelock, ReloadNeeded): what the fast
 * paths compare against, handed over by log.py at import. */
static PyObject *setup_log(PyObject *self, PyObject *args) {
    PyObject *rlock, *fileops, *crashpoints, *filelock, *reload;
    if (!PyArg_ParseTuple(args, "OOOOO", &rlock, &fileops, &crashpoints, &filelock, &reload)) return NULL;
    Py_XSETREF(ReloadNeeded, Py_NewRef(reload));
    Py_XSETREF(RLockType, Py_NewRef(rlock));
    Py_XSETREF(rlock_acquire, PyObject_GetAttr(rlock, s_acquire)); /* (the method descriptors) */
    Py_XSETREF(rlock_release, PyObject_GetAttr(rlock, s_release));
    if (rlock_acquire == NULL || rlock_release == NULL) return NULL;
    Py_XSETREF(fileops_dict, module_dict(fileops));
    Py_XSETREF(crashpoints_dict, module_dict(crashpoints));
    Py_XSETREF(filelock_dict, module_dict(filelock));
    if (fileops_dict == NULL || crashpoints_dict == NULL || filelock_dict == NULL) return NULL;
    /* The primitives as they are now (unfaulted): the fast paths run only while they stay. */
    Py_XSETREF(os_write, Py_XNewRef(dict_get(fileops_dict, s_write)));
    Py_XSETREF(os_ftruncate, Py_XNewRef(dict_get(fileops_dict, s_ftruncate)));
    Py_RETURN_NONE;
}

PyMethodDef log_methods[] = {
    {"setup_log", setup_log, METH_VARARGS, "Hand the fast paths what they compare against (log.py)."},
    {"read_value", (PyCFunction)(void (*)(void))read_value, METH_FASTCALL, "Log.read_value, or None to leave it to Python."},
    {NULL, NULL, 0, NULL},
};

int log_init(PyObject *module) {
#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;
    INTERN(s_readonly, "readonly") INTERN(s_forked, "_forked") INTERN(s_sync_interval, "sync_interval") INTERN(s_sync_always, "sync_always")
    INTERN(s_end, "_end") INTERN(s_segment_bytes, "segment_bytes")
    INTERN(s_last_seq, "last_seq") INTERN(s_last_birthtime, "last_birthtime") INTERN(s_segments, "_segments")
    INTERN(s_file_lock, "file_lock") INTERN(s_changes, "_changes") INTERN(s_fd, "fd") INTERN(s_lock_fd, "_fd")
    INTERN(s_salt, "salt") INTERN(s_depth, "_depth") INTERN(s_generation, "_generation")
    INTERN(s_deadline, "deadline") INTERN(s_mutex, "_mutex") INTERN(s_counter, "_counter")
    INTERN(s_owner_died, "owner_died") INTERN(s_acquire, "acquire") INTERN(s_release, "release")
    INTERN(s_write, "write") INTERN(s_ftruncate, "ftruncate") INTERN(s_ARMED, "ARMED")
    INTERN(s_fork_generation, "_fork_generation") INTERN(s_view, "view")
    INTERN(s_sealed_size, "sealed_size") INTERN(s_refresh, "refresh")
#undef INTERN
    if (PyType_Ready(&SegmentViewType) < 0) return -1;
    if ((s_zero = PyLong_FromLong(0)) == NULL || (s_one = PyLong_FromLong(1)) == NULL) return -1;
    return 0;
}
