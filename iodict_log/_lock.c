/* filelock.py's mutex in C: placeholder until the lock core lands. */
#include "native.h"

PyMethodDef lock_methods[] = {{NULL, NULL, 0, NULL}};

int lock_init(PyObject *module) { return 0; }
