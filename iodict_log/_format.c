/* format.py in C: placeholder until the format core lands. */
#include "native.h"

PyMethodDef format_methods[] = {{NULL, NULL, 0, NULL}};

int format_init(PyObject *module) { return 0; }
