/* durablequeue.py's hot paths in C: placeholder (next commit). */
#include "native.h"
PyMethodDef durablequeue_methods[] = {{NULL, NULL, 0, NULL}};
int durablequeue_init(PyObject *module) { return 0; }
