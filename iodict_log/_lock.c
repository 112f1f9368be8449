/* filelock.py's write mutex and change counter in C (docs/CONCURRENCY.md, "The LOCK file").
 *
 * The mutex is a robust, process-shared, error-checking pthread mutex in the
 * mapped LOCK file; filelock.py maps the file and passes addresses. The pure-
 * Python build makes the same pthread calls on the same mutex through ctypes,
 * so processes of both builds exclude each other. Taking it: a trylock with the
 * GIL held, then waits with the GIL released, in slices of at most WAIT_SLICE_NS
 * so that signals (Ctrl-C) are handled and a deadline is met. EOWNERDEAD (the
 * holder died): make the mutex consistent and report it (1), the caller then
 * treats the store as changed. The counter: an atomic acquire load, and an
 * atomic add made by the holder before it unlocks. */
#include "native.h"

#include <errno.h>
#include <time.h>

#if defined(__linux__) && defined(__GLIBC__)
#include <pthread.h>
#define HAVE_ROBUST_MUTEX 1
#if __GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 30)
#define HAVE_CLOCKLOCK 1
#endif
#endif

#define WAIT_SLICE_NS 100000000LL /* a blocked wait looks at signals this often */

uint64_t lock_changes(const void *counter) { return __atomic_load_n((const uint64_t *)counter, __ATOMIC_ACQUIRE); }

uint64_t lock_bump(void *counter) { return __atomic_add_fetch((uint64_t *)counter, 1, __ATOMIC_RELEASE); }

static PyObject *as_address(PyObject *arg, void **out) {
    void *p = PyLong_AsVoidPtr(arg);
    if (p == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "a NULL address");
        return NULL;
    }
    *out = p;
    return arg;
}

#ifdef HAVE_ROBUST_MUTEX

static int set_error(int rc, const char *call) {
    errno = rc;
    PyErr_SetFromErrnoWithFilename(PyExc_OSError, call);
    return -1;
}

/* Taken from a holder that died: make it consistent again. 1, or -1 with an exception. */
static int recovered(pthread_mutex_t *m) {
    int rc = pthread_mutex_consistent(m);
    return rc == 0 ? 1 : set_error(rc, "pthread_mutex_consistent");
}

static void add_ns(struct timespec *ts, long long ns) {
    long long total = (long long)ts->tv_nsec + ns;
    ts->tv_sec += (time_t)(total / 1000000000LL);
    ts->tv_nsec = (long)(total % 1000000000LL);
}

static int before(const struct timespec *a, const struct timespec *b) {
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* Wait for the mutex until `deadline` (CLOCK_MONOTONIC; NULL: no end): 0 or 1 taken,
 * 2 timed out, -1 with an exception set. Called with the GIL held, after a failed try. */
static int wait_until(pthread_mutex_t *m, const struct timespec *deadline) {
    for (;;) {
        struct timespec now, until;
        int rc;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (deadline != NULL && !before(&now, deadline)) return 2;
        until = now;
        add_ns(&until, WAIT_SLICE_NS);
        if (deadline != NULL && before(deadline, &until)) until = *deadline;
        Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_CLOCKLOCK
        rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &until);
#else
        {
            struct timespec real;
            clock_gettime(CLOCK_REALTIME, &real);
            add_ns(&real, (until.tv_sec - now.tv_sec) * 1000000000LL + (until.tv_nsec - now.tv_nsec));
            rc = pthread_mutex_timedlock(m, &real);
        }
#endif
        Py_END_ALLOW_THREADS
        if (rc == 0) return 0;
        if (rc == EOWNERDEAD) return recovered(m);
        if (rc == EDEADLK && deadline != NULL) return 2; /* (this thread holds it: not by any deadline) */
        if (rc != ETIMEDOUT) return set_error(rc, "pthread_mutex_clocklock");
        if (PyErr_CheckSignals() < 0) return -1;
    }
}

/* The first attempt, with the GIL held: 0 or 1 taken, 2 busy, -1 with an exception set. */
static int try_take(pthread_mutex_t *m) {
    int rc = pthread_mutex_trylock(m);
    if (rc == 0) return 0;
    if (rc == EBUSY || rc == EDEADLK) return 2; /* (EDEADLK: this thread holds it, through another object) */
    if (rc == EOWNERDEAD) return recovered(m);
    return set_error(rc, "pthread_mutex_trylock");
}

int lock_take(void *mutex) {
    int rc = try_take((pthread_mutex_t *)mutex);
    return rc == 2 ? wait_until((pthread_mutex_t *)mutex, NULL) : rc;
}

int lock_give(void *mutex) {
    int rc = pthread_mutex_unlock((pthread_mutex_t *)mutex);
    return rc == 0 ? 0 : set_error(rc, "pthread_mutex_unlock");
}

static int init_mutex(void *mutex) {
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc != 0) return set_error(rc, "pthread_mutexattr_init");
    if ((rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)) == 0 &&
        (rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)) == 0 &&
        (rc = pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK)) == 0)
        rc = pthread_mutex_init((pthread_mutex_t *)mutex, &attr);
    pthread_mutexattr_destroy(&attr);
    return rc == 0 ? 0 : set_error(rc, "pthread_mutex_init");
}

static size_t mutex_size(void) { return sizeof(pthread_mutex_t); }

#else /* no robust process-shared mutexes here: filelock.py uses the flock protocol */

static int unsupported(void) {
    PyErr_SetString(PyExc_NotImplementedError, "no robust process-shared mutexes on this platform");
    return -1;
}

int lock_take(void *mutex) { return unsupported(); }
int lock_give(void *mutex) { return unsupported(); }
static int init_mutex(void *mutex) { return unsupported(); }
static int try_take(void *mutex) { return unsupported(); }
static int wait_until(void *mutex, const struct timespec *deadline) { return unsupported(); }
static size_t mutex_size(void) { return 0; }

#endif

/* --- what filelock.py calls ------------------------------------------------ */

static PyObject *py_mutex_size(PyObject *self, PyObject *unused) { return PyLong_FromSize_t(mutex_size()); }

static PyObject *py_init_mutex(PyObject *self, PyObject *arg) {
    void *m;
    if (as_address(arg, &m) == NULL || init_mutex(m) < 0) return NULL;
    Py_RETURN_NONE;
}

/* take_mutex(address, deadline): deadline a time.monotonic() value or None.
 * 0 taken, 1 taken from a holder that died, 2 not taken by the deadline. */
static PyObject *py_take_mutex(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *m;
    int rc;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "take_mutex(address, deadline)");
        return NULL;
    }
    if (as_address(args[0], &m) == NULL) return NULL;
    if (args[1] == Py_None) {
        rc = lock_take(m);
    } else {
        struct timespec deadline;
        double when = PyFloat_AsDouble(args[1]);
        if (when == -1.0 && PyErr_Occurred()) return NULL;
        if (!(when >= 0.0 && when < 1e15)) { /* (time.monotonic() values; NaN fails too) */
            PyErr_SetString(PyExc_ValueError, "the deadline must be a time.monotonic() value");
            return NULL;
        }
        deadline.tv_sec = (time_t)when;
        deadline.tv_nsec = (long)((when - (double)deadline.tv_sec) * 1e9);
        if (deadline.tv_nsec > 999999999L) deadline.tv_nsec = 999999999L;
        rc = try_take(m);
        if (rc == 2) rc = wait_until(m, &deadline);
    }
    return rc < 0 ? NULL : PyLong_FromLong(rc);
}

/* try_mutex(address): 0 taken, 1 taken from a holder that died, 2 busy. */
static PyObject *py_try_mutex(PyObject *self, PyObject *arg) {
    void *m;
    int rc;
    if (as_address(arg, &m) == NULL) return NULL;
    rc = try_take(m);
    return rc < 0 ? NULL : PyLong_FromLong(rc);
}

static PyObject *py_give_mutex(PyObject *self, PyObject *arg) {
    void *m;
    if (as_address(arg, &m) == NULL || lock_give(m) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_changes(PyObject *self, PyObject *arg) {
    void *c;
    if (as_address(arg, &c) == NULL) return NULL;
    return PyLong_FromUnsignedLongLong(lock_changes(c));
}

static PyObject *py_bump(PyObject *self, PyObject *arg) {
    void *c;
    if (as_address(arg, &c) == NULL) return NULL;
    return PyLong_FromUnsignedLongLong(lock_bump(c));
}

PyMethodDef lock_methods[] = {
    {"mutex_size", py_mutex_size, METH_NOARGS, "sizeof(pthread_mutex_t); 0 without robust mutexes."},
    {"init_mutex", py_init_mutex, METH_O, "Initialise a robust, process-shared, error-checking mutex at an address."},
    {"take_mutex", (PyCFunction)(void (*)(void))py_take_mutex, METH_FASTCALL,
     "take_mutex(address, deadline): 0 taken, 1 from a dead holder, 2 not by the deadline."},
    {"try_mutex", py_try_mutex, METH_O, "try_mutex(address): 0 taken, 1 from a dead holder, 2 busy."},
    {"give_mutex", py_give_mutex, METH_O, "Unlock the mutex at an address."},
    {"changes", py_changes, METH_O, "The change counter at an address (an atomic load)."},
    {"bump", py_bump, METH_O, "Add one to the change counter at an address; the new value."},
    {NULL, NULL, 0, NULL},
};

int lock_init(PyObject *module) { return 0; }
