/* What the C files of iodict_log._native share. Each file mirrors one Python
 * module and exports a method table and an init function; _native.c gathers
 * them into one extension module. */
#ifndef IODICT_LOG_NATIVE_H
#define IODICT_LOG_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* _format.c: format.py (frames, checksums, the scan, batches) and the hint's index. */
extern PyMethodDef format_methods[];
int format_init(PyObject *module);

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

/* _iodict.c: iodict.py's hot paths (d[key] = value, d[key] for str keys). */
extern PyMethodDef iodict_methods[];
int iodict_init(PyObject *module);

#endif
