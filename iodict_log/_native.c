/* iodict_log._native: the optional C core. One module, one file per Python
 * module it speeds up (native.h lists them); iodict_log/native.py loads it. */
#include "native.h"

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "iodict_log._native", "The optional C core of iodict_log (see native.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL) return NULL;
    if (PyModule_AddFunctions(module, format_methods) < 0 || format_init(module) < 0 ||
        PyModule_AddFunctions(module, lock_methods) < 0 || lock_init(module) < 0 ||
        PyModule_AddFunctions(module, serialize_methods) < 0 || PyModule_AddFunctions(module, log_methods) < 0 ||
        log_init(module) < 0 || PyModule_AddFunctions(module, iodict_methods) < 0 || iodict_init(module) < 0 ||
        PyModule_AddFunctions(module, durablequeue_methods) < 0 || durablequeue_init(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
