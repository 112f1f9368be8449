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

#endif
