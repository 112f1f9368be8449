/* What the C files of iodict_log._native share. Each file mirrors one Python
 * module and exports a method table and an init function; _native.c gathers
 * them into one extension module. */
#ifndef IODICT_LOG_NATIVE_H
#define IODICT_LOG_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* _format.c: format.py (frames, checksums, the scan, batches) and the hint's index;
 * for the fast paths, encode_frame from raw bytes, frame_value's checks (1 if the
 * frame that is all of b[0:len] passes them, with where its value starts and its
 * flags) and index.pack_location. */
extern PyMethodDef format_methods[];
int format_init(PyObject *module);
PyObject *frame_bytes(unsigned op, unsigned flags, uint64_t seq, uint64_t birthtime, const char *key, size_t klen,
                      const char *value, size_t vlen, uint32_t salt);
int frame_checks(const unsigned char *b, size_t len, uint32_t salt, size_t *value_at, unsigned *flags);
PyObject *pack_location(uint64_t birthtime, unsigned slot, uint64_t offset, uint64_t length);
PyObject *new_pair(PyObject *a, PyObject *b); /* (a, b), taking both references; NULL if either is NULL */

/* _lock.c: filelock.py's mapped LOCK file (the robust write mutex, the change counter). */
extern PyMethodDef lock_methods[];
int lock_init(PyObject *module);
/* For the other C files (the fast paths), the same operations filelock.py makes:
 * take the robust process-shared mutex at `mutex`, first without waiting, then
 * waiting with the GIL released: 0 taken, 1 taken from a holder that died (made
 * consistent again), -1 with an exception set. */
int lock_take(void *mutex);
/* Give it back: 0, or -1 with an exception set. */
int lock_give(void *mutex);
/* The change counter at `counter` (8-byte aligned in the mapped LOCK file): read
 * it (an atomic acquire load), or add one (atomic, release) and return the new value. */
uint64_t lock_changes(const void *counter);
uint64_t lock_bump(void *counter);

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *Py_NewRef(PyObject *obj) {
    Py_INCREF(obj);
    return obj;
}
static inline PyObject *Py_XNewRef(PyObject *obj) {
    Py_XINCREF(obj);
    return obj;
}
#endif

/* format.py's constants (tests/test_native_format.py checks every op and flag byte). */
#define HEADER_SIZE 36
#define SYNC0 0xd1
#define SYNC1 0x0c
#define OP_SET 1
#define OP_DELETE 2
#define OP_BATCH_BEGIN 3
#define OP_BATCH_COMMIT 4
#define OP_SEAL 5
#define OP_PUT 16
#define OP_TAKE 17
#define OP_LEASE 19
#define FLAG_LZ4 0x01
#define FLAG_PICKLE 0x02
#define FLAG_BATCH 0x04
#define KNOWN_FLAGS 0x07
#define MAX_SEQ 0x7fffffffffffffffULL
#define MAX_FIELD 0xffffffffULL
#define MAX_OFFSET 0xffffffffULL /* index.MAX_OFFSET */
#define LOCATION_SIZE 18         /* hintfile.LOCATION_SIZE */
#define COMPRESS_MIN 256

/* _serialize.c: serialize.py's msgpack for str, bytes, int, float, bool and None.
 * NULL with no exception set: not a scalar it packs or unpacks (the Serializer's). */
extern PyMethodDef serialize_methods[];
PyObject *pack_scalar(PyObject *value);
PyObject *unpack_scalar(const unsigned char *data, size_t len);

/* _log.c: log.py's hot path for the fast paths below (see its header comment).
 * Functions answering int: 1 done, 0 not the common case (nothing changed: leave
 * it to Python), -1 error (an exception is set). */
extern PyMethodDef log_methods[];
int log_init(PyObject *module);
PyObject *dict_get(PyObject *dict, PyObject *name);                 /* borrowed, NULL if absent */
int dict_int(PyObject *dict, PyObject *name, long long *out); /* 0 unless an int that fits */
int dict_set_int(PyObject *dict, PyObject *name, long long value);
int attr_int(PyObject *obj, PyObject *name, long long *out);
int unpack_location(PyObject *loc, unsigned *slot, uint64_t *offset, uint64_t *length, uint64_t *birth);
int object_lock(PyObject *lock); /* the object's RLock: 1 taken, 0 another kind of lock, -1 error */
void object_unlock(PyObject *lock);
int log_is_fresh(PyObject *log); /* Log.refresh() has nothing to do */
PyObject *fast_answer(int r);    /* a fast path's answer: -1 NULL (the error), 0 NotImplemented, 1 None */
int log_read_value(PyObject *log, PyObject *loc, PyObject **data, size_t *value_at, unsigned *flags);
typedef struct {
    PyObject *ldict, *fldict; /* __dict__ of the Log and of its FileLock */
    long long end, segment_bytes, last_seq, last_birthtime;
    void *mutex, *counter;
    int lock_fd, fd, birth_taken, written;
    size_t last_length; /* of the frame append_one wrote last */
    uint64_t released;  /* the change counter as this release left it */
    uint32_t salt;
    Py_ssize_t slot;
} Appender;
int append_begin(Appender *a, PyObject *log); /* 1: the write lock is held, the log up to date */
uint64_t append_birthtime(Appender *a);       /* Log.birthtime() */
int append_one(Appender *a, unsigned op, unsigned flags, const char *key, size_t klen, const char *value, size_t vlen,
               uint64_t birth, PyObject **loc);
int append_data(Appender *a, PyObject *data, long long frames); /* Log._land of framed bytes (a batch) */
int append_end(Appender *a); /* count the change, give the lock: 0 or -1 */

/* _iodict.c: iodict.py's hot paths (d[key] = value, d[key] for str keys, records()). */
extern PyMethodDef iodict_methods[];
int iodict_init(PyObject *module);

/* _durablequeue.c: durablequeue.py's hot paths (put, get, lease, ack). */
extern PyMethodDef durablequeue_methods[];
int durablequeue_init(PyObject *module);

#endif
