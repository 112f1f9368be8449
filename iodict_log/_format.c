/* format.py in C, and the location checks of hintfile.py: the same names, the
 * same answers, the same bytes, the same exceptions. Read it beside format.py.
 *
 *   encode_frame, decode_frame, frame_value, header_length   format.py's, as they are
 *   scan       Scan._frames and Scan._resync over a buffer; Scan (Python) drives it
 *   encode_batch   format.encode_batch (what Log._encode_batch writes)
 *   decode_locations   hintfile.decode_locations (the hint's packed locations, checked)
 *   index_dict   hintfile.index_dict (the dict of a hint's keys and locations)
 *   setup      format.py hands over its Frame and Damage types at import
 *
 * Buffers come through the buffer protocol (bytes, bytearray, memoryview, mmap);
 * keys and values come back as bytes whatever the buffer's type. Every read is
 * bounds-checked first, lengths are 64-bit: no input can make these read outside
 * the buffer. Positions must be >= 0 (a negative one decodes nothing, where
 * Python would count it from the end). */
#include "native.h"

#include <string.h>
#include <zlib.h>

static int known_op(unsigned op) { return (op >= 1 && op <= 5) || (op >= 16 && op <= 20); } /* KNOWN_OPS */
static int data_op(unsigned op) { return op == 1 || op == 2 || (op >= 16 && op <= 20); }   /* DATA_OPS */

static PyTypeObject *Frame_type;  /* format.Frame */
static PyTypeObject *Damage_type; /* format.Damage */
static PyObject *StructError;     /* struct.error, what struct.pack raises for a field out of range */
static PyObject *damaged_frame;   /* "damaged frame", Scan's reason */

static uint32_t le32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t le64(const uint8_t *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }
static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> 8 * i);
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> 8 * i);
}

/* zlib.crc32(data, salt): zlib takes at most 4 GiB a call. */
static uint32_t crc(uint32_t salt, const uint8_t *p, size_t n) {
    uLong value = salt;
    while (n > 0) {
        uInt part = n > (1u << 30) ? (1u << 30) : (uInt)n;
        value = crc32(value, p, part);
        p += part;
        n -= part;
    }
    return (uint32_t)value;
}

/* A frame's header fields, once _checked_header has vouched for them. */
typedef struct {
    Py_ssize_t offset, length; /* length: header, key and value */
    uint32_t dcrc, key_len, value_len;
    unsigned op, flags;
    uint64_t seq, birthtime;
} Header;

/* _checked_header: 1 if a header whose checksum holds starts at pos, else 0. */
static int checked_header(const uint8_t *buf, Py_ssize_t n, Py_ssize_t pos, uint32_t salt, Header *h) {
    if (pos < 0 || pos > n - HEADER_SIZE) return 0;
    const uint8_t *p = buf + pos;
    if (p[0] != SYNC0 || p[1] != SYNC1 || crc(salt, p + 6, HEADER_SIZE - 6) != le32(p + 2)) return 0;
    h->offset = pos;
    h->dcrc = le32(p + 6);
    h->op = p[10];
    h->flags = p[11];
    h->key_len = le32(p + 12);
    h->value_len = le32(p + 16);
    h->seq = le64(p + 20);
    h->birthtime = le64(p + 28);
    h->length = HEADER_SIZE + (Py_ssize_t)h->key_len + (Py_ssize_t)h->value_len; /* < 2**33 */
    return 1;
}

/* decode_frame's checks past the header: 1 if the frame at h is valid. */
static int valid_frame(const uint8_t *buf, Py_ssize_t n, const Header *h, uint32_t salt) {
    if (h->length > n - h->offset || !known_op(h->op) || h->flags & ~KNOWN_FLAGS || (h->seq | h->birthtime) > MAX_SEQ)
        return 0;
    /* (one CRC over key and value: the same as the two chained) */
    return crc(salt, buf + h->offset + HEADER_SIZE, (size_t)h->length - HEADER_SIZE) == h->dcrc;
}

/* Frame(offset, length, op, flags, seq, birthtime_ns, key, value), built through the
 * tuple subclass's tp_alloc (calling the class would cost a Python call). */
static PyObject *new_frame(const uint8_t *buf, const Header *h) {
    const char *key = (const char *)buf + h->offset + HEADER_SIZE;
    PyObject *frame = Frame_type->tp_alloc(Frame_type, 8);
    if (frame == NULL) return NULL;
    PyObject *items[8] = {
        PyLong_FromSsize_t(h->offset),
        PyLong_FromSsize_t(h->length),
        PyLong_FromLong(h->op),
        PyLong_FromLong(h->flags),
        PyLong_FromUnsignedLongLong(h->seq),
        PyLong_FromUnsignedLongLong(h->birthtime),
        PyBytes_FromStringAndSize(key, h->key_len),
        PyBytes_FromStringAndSize(key + h->key_len, h->value_len),
    };
    for (int i = 0; i < 8; i++) PyTuple_SET_ITEM(frame, i, items[i]); /* (the tuple owns them, even NULLs) */
    for (int i = 0; i < 8; i++) {
        if (items[i] == NULL) {
            Py_DECREF(frame);
            return NULL;
        }
    }
    return frame;
}

/* What the walk collects of a frame: the Frame, or (puts) its (seq, location), the
 * buffer lying at offset `at` of segment `slot` (Scan.put_locations). */
static PyObject *new_item(const uint8_t *buf, const Header *h, int puts, unsigned long long slot, Py_ssize_t at) {
    if (!puts) return new_frame(buf, h);
    return new_pair(PyLong_FromUnsignedLongLong(h->seq),
                    pack_location(h->birthtime, (unsigned)slot, (uint64_t)(at + h->offset), (uint64_t)h->length));
}

static PyObject *new_damage(Py_ssize_t offset, Py_ssize_t length) {
    PyObject *damage = Damage_type->tp_alloc(Damage_type, 3);
    if (damage == NULL) return NULL;
    PyObject *a = PyLong_FromSsize_t(offset), *b = PyLong_FromSsize_t(length);
    PyTuple_SET_ITEM(damage, 0, a);
    PyTuple_SET_ITEM(damage, 1, b);
    Py_INCREF(damaged_frame);
    PyTuple_SET_ITEM(damage, 2, damaged_frame);
    if (a == NULL || b == NULL) {
        Py_DECREF(damage);
        return NULL;
    }
    return damage;
}

/* (a, b), taking both references, even when one is NULL (then NULL). */
PyObject *new_pair(PyObject *a, PyObject *b) {
    PyObject *out = a == NULL || b == NULL ? NULL : PyTuple_New(2);
    if (out == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, a);
    PyTuple_SET_ITEM(out, 1, b);
    return out;
}

static int ready(void) {
    if (Frame_type == NULL) PyErr_SetString(PyExc_RuntimeError, "iodict_log._native: setup() was not called");
    return Frame_type != NULL;
}

/* An unsigned field as struct.pack takes it: struct.error unless an int in [0, max]. */
static int field(PyObject *obj, uint64_t max, uint64_t *out) {
    if (!PyLong_Check(obj) && !PyIndex_Check(obj)) {
        PyErr_SetString(StructError, "required argument is not an integer");
        return -1;
    }
    PyObject *number = PyLong_Check(obj) ? Py_NewRef(obj) : PyNumber_Index(obj);
    if (number == NULL) return -1;
    unsigned long long value = PyLong_AsUnsignedLongLong(number);
    Py_DECREF(number);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear(); /* negative, or over 2**64 */
    } else if (value <= max) {
        *out = value;
        return 0;
    }
    PyErr_SetString(StructError, "argument out of range");
    return -1;
}

/* zlib.crc32's value argument: any int, taken modulo 2**32. */
static int salt_of(PyObject *obj, uint32_t *salt) {
    unsigned long value = PyLong_AsUnsignedLongMask(obj);
    if (value == (unsigned long)-1 && PyErr_Occurred()) return -1;
    *salt = (uint32_t)value;
    return 0;
}

static int position(PyObject *obj, Py_ssize_t *pos) {
    *pos = PyNumber_AsSsize_t(obj, PyExc_OverflowError);
    return *pos == -1 && PyErr_Occurred() ? -1 : 0;
}

/* A frame's bytes into out (HEADER_SIZE + key_len + value_len of room). */
static void write_frame(uint8_t *out, unsigned op, unsigned flags, uint64_t seq, uint64_t birthtime,
                        const Py_buffer *key, const Py_buffer *value, uint32_t salt) {
    uint8_t *fields = out + 6;
    if (key->len) memcpy(out + HEADER_SIZE, key->buf, key->len);
    if (value->len) memcpy(out + HEADER_SIZE + key->len, value->buf, value->len);
    put32(fields, crc(salt, out + HEADER_SIZE, key->len + value->len));
    fields[4] = (uint8_t)op;
    fields[5] = (uint8_t)flags;
    put32(fields + 6, (uint32_t)key->len);
    put32(fields + 10, (uint32_t)value->len);
    put64(fields + 14, seq);
    put64(fields + 22, birthtime);
    out[0] = SYNC0;
    out[1] = SYNC1;
    put32(out + 2, crc(salt, fields, HEADER_SIZE - 6));
}

/* The numeric fields of a frame (op, flags, seq, birthtime), checked as FIELDS.pack does. */
static int frame_fields(PyObject *const *args, uint64_t *op, uint64_t *flags, uint64_t *seq, uint64_t *birthtime) {
    return field(args[0], 255, op) < 0 || field(args[1], 255, flags) < 0 || field(args[2], UINT64_MAX, seq) < 0 ||
                   field(args[3], UINT64_MAX, birthtime) < 0
               ? -1
               : 0;
}

/* encode_frame(op, flags, seq, birthtime_ns, key, value, *, salt) */
static PyObject *encode_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    if (nargs != 6 || kwnames == NULL || PyTuple_GET_SIZE(kwnames) != 1 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)) ||
        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "salt") != 0) {
        PyErr_SetString(PyExc_TypeError, "encode_frame(op, flags, seq, birthtime_ns, key, value, *, salt)");
        return NULL;
    }
    uint32_t salt;
    uint64_t op, flags, seq, birthtime;
    Py_buffer key = {0}, value = {0};
    PyObject *out = NULL;
    if (PyObject_GetBuffer(args[4], &key, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[5], &value, PyBUF_SIMPLE) < 0) goto done;
    if (salt_of(args[6], &salt) < 0 || frame_fields(args, &op, &flags, &seq, &birthtime) < 0) goto done;
    if ((uint64_t)key.len > MAX_FIELD || (uint64_t)value.len > MAX_FIELD) {
        PyErr_SetString(StructError, "argument out of range");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + key.len + value.len);
    if (out != NULL) write_frame((uint8_t *)PyBytes_AS_STRING(out), op, flags, seq, birthtime, &key, &value, salt);
done:
    if (value.obj != NULL) PyBuffer_Release(&value);
    PyBuffer_Release(&key);
    return out;
}

/* decode_frame(buf, pos, salt) -> Frame | None */
static PyObject *decode_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t pos;
    uint32_t salt;
    Header h;
    Py_buffer view;
    if (!ready()) return NULL;
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "decode_frame(buf, pos, salt)");
    if (position(args[1], &pos) < 0 || salt_of(args[2], &salt) < 0) return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *buf = view.buf;
    PyObject *out = checked_header(buf, view.len, pos, salt, &h) && valid_frame(buf, view.len, &h, salt)
                        ? new_frame(buf, &h)
                        : Py_NewRef(Py_None);
    PyBuffer_Release(&view);
    return out;
}

/* frame_value(buf, salt) -> (flags, value) | None: the frame that is all of buf */
static PyObject *frame_value(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t salt;
    Header h;
    Py_buffer view;
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "frame_value(buf, salt)");
    if (salt_of(args[1], &salt) < 0 || PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *buf = view.buf;
    PyObject *out;
    if (checked_header(buf, view.len, 0, salt, &h) && h.length == view.len && valid_frame(buf, view.len, &h, salt)) {
        Py_ssize_t at = HEADER_SIZE + h.key_len;
        out = new_pair(PyLong_FromLong(h.flags), PyBytes_FromStringAndSize((const char *)buf + at, view.len - at));
    } else {
        out = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&view);
    return out;
}

/* For the fast paths (native.h): encode_frame from raw bytes, and frame_value's checks. */
PyObject *frame_bytes(unsigned op, unsigned flags, uint64_t seq, uint64_t birthtime, const char *key, size_t klen,
                      const char *value, size_t vlen, uint32_t salt) {
    Py_buffer k = {.buf = (void *)key, .len = (Py_ssize_t)klen}, v = {.buf = (void *)value, .len = (Py_ssize_t)vlen};
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(HEADER_SIZE + klen + vlen));
    if (out != NULL) write_frame((uint8_t *)PyBytes_AS_STRING(out), op, flags, seq, birthtime, &k, &v, salt);
    return out;
}

int frame_checks(const unsigned char *b, size_t len, uint32_t salt, size_t *value_at, unsigned *flags) {
    Header h;
    if (!checked_header(b, (Py_ssize_t)len, 0, salt, &h) || h.length != (Py_ssize_t)len ||
        !valid_frame(b, (Py_ssize_t)len, &h, salt))
        return 0;
    *value_at = HEADER_SIZE + (size_t)h.key_len;
    *flags = h.flags;
    return 1;
}

/* header_length(buf, pos, salt) -> int | None */
static PyObject *header_length(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t pos;
    uint32_t salt;
    Header h;
    Py_buffer view;
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "header_length(buf, pos, salt)");
    if (position(args[1], &pos) < 0 || salt_of(args[2], &salt) < 0) return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    int found = checked_header(view.buf, view.len, pos, salt, &h);
    PyBuffer_Release(&view);
    return found ? PyLong_FromSsize_t(h.length) : Py_NewRef(Py_None);
}

/* Scan._resync: where scanning resumes after the bad frame at pos; -1 if nothing valid follows. */
static Py_ssize_t resync(const uint8_t *buf, Py_ssize_t n, Py_ssize_t pos, uint32_t salt) {
    Py_ssize_t last = n - HEADER_SIZE; /* the last offset a whole header can start at */
    Header h;
    if (checked_header(buf, n, pos, salt, &h)) { /* its length is vouched for: skip it whole */
        if (h.length > n - pos) return -1;
        pos += h.length - 1;
    }
    const uint8_t *failed = NULL; /* the last header (from hcrc on) whose checksum failed */
    for (;;) {
        const uint8_t *at = pos + 1 <= last ? memchr(buf + pos + 1, SYNC0, last - pos) : NULL;
        if (at == NULL) return -1; /* (no header fits: no frame can follow) */
        pos = at - buf;
        if (at[1] != SYNC1) continue;
        if ((failed != NULL && memcmp(failed, at + 2, HEADER_SIZE - 2) == 0) || !checked_header(buf, n, pos, salt, &h)) {
            failed = at + 2; /* (a run of sync bytes repeats it: at most one CRC per sync pair) */
            continue;
        }
        if (valid_frame(buf, n, &h, salt)) return pos;
        if (h.length > n - pos) return -1;
        pos += h.length - 1;
    }
}

/* Appends the items of list `from` to `to` and empties `from`. */
static int move_all(PyObject *to, PyObject *from) {
    Py_ssize_t end = PyList_GET_SIZE(to);
    if (PyList_SetSlice(to, end, end, from) < 0) return -1;
    return PyList_SetSlice(from, 0, PyList_GET_SIZE(from), NULL);
}

static int append_new(PyObject *list, PyObject *item) {
    if (item == NULL) return -1;
    int failed = PyList_Append(list, item);
    Py_DECREF(item);
    return failed;
}

/* scan(buf, salt, start, complete, committed, damage, last_seq, last_birthtime[, slot, at])
 *   -> (frames, end, last_seq, last_birthtime, resume)
 *
 * Scan._frames from start, appending damage regions to the list `damage`. It stops
 * just after a SEAL, with resume the offset to go on from and end as Scan has it
 * while the SEAL is yielded (a consumer may stop there: Log._scan does), and after
 * WALK_FRAMES frames, outside a batch (so a 64 MiB segment is never all Frames at
 * once); at the end of the buffer resume is None. With committed, batch members are
 * frames like any other (Scan's committed). Given slot and at (the buffer lying
 * at offset `at` of segment `slot`), frames are only the PUTs, each as (seq, location)
 * (Scan.put_locations): the same walk and checks, without building Frames. */
#define WALK_FRAMES 1024
static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t pos, end, resume = -1, at = 0;
    uint32_t salt;
    unsigned long long last_seq, last_birthtime, slot = 0;
    Py_buffer view;
    Header h;
    if (!ready()) return NULL;
    if ((nargs != 8 && nargs != 10) || !PyList_Check(args[5]))
        return PyErr_Format(PyExc_TypeError,
                            "scan(buf, salt, start, complete, committed, damage, last_seq, last_birthtime[, slot, at])");
    PyObject *damage = args[5];
    int puts = nargs == 10; /* only the PUTs, as (seq, location) */
    int complete = PyObject_IsTrue(args[3]), committed = PyObject_IsTrue(args[4]);
    if (complete < 0 || committed < 0 || salt_of(args[1], &salt) < 0 || position(args[2], &pos) < 0) return NULL;
    int held = !committed; /* (whether batch members wait for their COMMIT) */
    last_seq = PyLong_AsUnsignedLongLong(args[6]);
    last_birthtime = PyLong_AsUnsignedLongLong(args[7]);
    if (puts) {
        slot = PyLong_AsUnsignedLongLong(args[8]);
        at = PyLong_AsSsize_t(args[9]);
    }
    if (PyErr_Occurred()) return NULL;
    if (pos < 0) return PyErr_Format(PyExc_ValueError, "start must be >= 0");
    if (slot > 0xFFFF || at < 0 || at > 0xFFFFFFFF) return PyErr_Format(PyExc_OverflowError, "slot or at out of range");
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *buf = view.buf;
    Py_ssize_t n = view.len;
    PyObject *out = NULL, *frames = PyList_New(0), *batch_damage = PyList_New(0);
    PyObject *batch = NULL; /* members of a batch not yet known to be whole (NULL: no batch) */
    Py_ssize_t members = 0, members_end = 0;    /* how many (PUTs or not), where the last ends */
    unsigned long long members_seq = 0, members_birthtime = 0; /* their highest */
    if (frames == NULL || batch_damage == NULL) goto done;
    end = pos;
    while (pos < n) {
        if (!checked_header(buf, n, pos, salt, &h) || !valid_frame(buf, n, &h, salt)) {
            Py_ssize_t at = resync(buf, n, pos, salt);
            if (at < 0) break; /* nothing valid follows: an unfinished tail, or a finished segment's damaged end */
            if (append_new(batch == NULL ? damage : batch_damage, new_damage(pos, at - pos)) < 0) goto done;
            pos = at;
            if (batch == NULL) end = pos;
            continue;
        }
        pos += h.length;
        if (held && h.flags & FLAG_BATCH && data_op(h.op)) {
            if (batch == NULL && (batch = PyList_New(0)) == NULL) goto done; /* its BEGIN was damaged */
            if ((!puts || h.op == OP_PUT) && append_new(batch, new_item(buf, &h, puts, slot, at)) < 0) goto done;
            members++;
            members_end = pos;
            if (h.seq > members_seq) members_seq = h.seq;
            if (h.birthtime > members_birthtime) members_birthtime = h.birthtime;
            continue;
        }
        if (batch != NULL) { /* something valid follows the batch: it was written whole */
            if (move_all(frames, batch) < 0 || move_all(damage, batch_damage) < 0) goto done;
            Py_CLEAR(batch);
            members = 0;
            members_seq = members_birthtime = 0;
            end = h.offset;
        }
        if (held && h.op == OP_BATCH_BEGIN) {
            if ((batch = PyList_New(0)) == NULL) goto done;
            continue;
        }
        if (h.seq > last_seq) last_seq = h.seq;
        if (h.birthtime > last_birthtime) last_birthtime = h.birthtime;
        if (h.op != OP_BATCH_BEGIN && h.op != OP_BATCH_COMMIT) {
            if ((!puts || h.op == OP_PUT) && append_new(frames, new_item(buf, &h, puts, slot, at)) < 0) goto done;
            if (h.op == OP_SEAL) {
                resume = pos;
                break;
            }
        }
        end = pos;
        if (PyList_GET_SIZE(frames) >= WALK_FRAMES) {
            resume = pos;
            break;
        }
    }
    if (resume < 0 && members && complete) {
        /* A finished segment was sealed after this batch: its intact members stand. */
        if (members_seq > last_seq) last_seq = members_seq;
        if (members_birthtime > last_birthtime) last_birthtime = members_birthtime;
        end = members_end;
        if (move_all(frames, batch) < 0 || move_all(damage, batch_damage) < 0) goto done;
    }
    out = resume < 0 ? Py_BuildValue("(OnKKO)", frames, end, last_seq, last_birthtime, Py_None)
                     : Py_BuildValue("(OnKKn)", frames, end, last_seq, last_birthtime, resume);
done:
    Py_XDECREF(batch);
    Py_XDECREF(batch_damage);
    Py_XDECREF(frames);
    PyBuffer_Release(&view);
    return out;
}

/* A packed location (index.pack_location): birthtime << 80 | slot << 64 | offset << 32 | length,
 * from its 18 little-endian bytes (as the hint stores it). */
static PyObject *location_from_bytes(const uint8_t *p) {
#if PY_VERSION_HEX >= 0x030D0000
    return PyLong_FromUnsignedNativeBytes(p, LOCATION_SIZE, Py_ASNATIVEBYTES_LITTLE_ENDIAN);
#else
    return _PyLong_FromByteArray(p, LOCATION_SIZE, 1, 0);
#endif
}

PyObject *pack_location(uint64_t birthtime, unsigned slot, uint64_t offset, uint64_t length) {
    uint8_t raw[LOCATION_SIZE];
    put32(raw, (uint32_t)length);
    put32(raw + 4, (uint32_t)offset);
    raw[8] = (uint8_t)slot;
    raw[9] = (uint8_t)(slot >> 8);
    put64(raw + 10, birthtime);
    return location_from_bytes(raw);
}

/* The fields of one entry (op, flags, key, stored value, birthtime_ns) of encode_batch. */
typedef struct {
    PyObject *fields; /* the entry as a tuple */
    uint64_t op, flags, birthtime;
    Py_buffer key, value;
} Entry;

/* encode_batch(entries, seq, begin_birthtime, commit_birthtime, offset, slot, salt)
 *   -> (bytes, [(seq, location)], last seq)
 * Entries are checked in order, each as the Python one meets its fields; offset and
 * slot must fit a location (Log._land refuses a segment past 4 GiB anyway). */
static PyObject *encode_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t seq, begin_birthtime, commit_birthtime, offset, slot;
    uint32_t salt;
    if (nargs != 7)
        return PyErr_Format(PyExc_TypeError,
                            "encode_batch(entries, seq, begin_birthtime, commit_birthtime, offset, slot, salt)");
    if (salt_of(args[6], &salt) < 0 || field(args[1], UINT64_MAX, &seq) < 0 ||
        field(args[2], UINT64_MAX, &begin_birthtime) < 0 || field(args[4], MAX_FIELD, &offset) < 0 ||
        field(args[5], 0xffff, &slot) < 0)
        return NULL;
    PyObject *items = PySequence_Tuple(args[0]); /* (a copy: no __index__ can change it under us) */
    if (items == NULL) return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(items), taken = 0;
    PyObject *out = NULL, *data = NULL, *locs = NULL;
    Entry *entries = PyMem_Calloc(count ? count : 1, sizeof(Entry));
    if (entries == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if ((uint64_t)count > MAX_FIELD) { /* (COUNT.pack) */
        PyErr_SetString(StructError, "argument out of range");
        goto done;
    }
    uint64_t size = 2 * HEADER_SIZE + 4;
    for (Py_ssize_t i = 0; i < count; i++) {
        Entry *e = &entries[i];
        PyObject *entry = e->fields = PySequence_Tuple(PyTuple_GET_ITEM(items, i)); /* (unpacked as Python does) */
        if (entry == NULL) goto done;
        if (PyTuple_GET_SIZE(entry) != 5) {
            PyErr_SetString(PyExc_ValueError, "an entry is (op, flags, key, value, birthtime_ns)");
            goto done;
        }
        PyObject *const *f = &PyTuple_GET_ITEM(entry, 0);
        if (!PyIndex_Check(f[1])) { /* (flags | FLAG_BATCH) */
            PyErr_Format(PyExc_TypeError, "unsupported operand type(s) for |: '%.100s' and 'int'",
                         Py_TYPE(f[1])->tp_name);
            goto done;
        }
        if (PyObject_GetBuffer(f[2], &e->key, PyBUF_SIMPLE) < 0) goto done;
        if (PyObject_GetBuffer(f[3], &e->value, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&e->key);
            goto done;
        }
        taken++; /* (entries[:taken] hold buffers, released below) */
        if (field(f[0], 255, &e->op) < 0 || field(f[1], 255, &e->flags) < 0 ||
            seq > UINT64_MAX - (uint64_t)(i + 1) || field(f[4], UINT64_MAX, &e->birthtime) < 0 ||
            (uint64_t)e->key.len > MAX_FIELD || (uint64_t)e->value.len > MAX_FIELD) {
            if (!PyErr_Occurred()) PyErr_SetString(StructError, "argument out of range");
            goto done;
        }
        size += HEADER_SIZE + e->key.len + e->value.len;
    }
    if (field(args[3], UINT64_MAX, &commit_birthtime) < 0 || seq > UINT64_MAX - (uint64_t)count - 1) {
        if (!PyErr_Occurred()) PyErr_SetString(StructError, "argument out of range");
        goto done;
    }
    if (size > PY_SSIZE_T_MAX) {
        PyErr_NoMemory();
        goto done;
    }
    if ((data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size)) == NULL || (locs = PyList_New(count)) == NULL)
        goto done;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(data);
    uint8_t count_bytes[4];
    put32(count_bytes, (uint32_t)count);
    Py_buffer empty = {.buf = NULL, .len = 0}, counted = {.buf = count_bytes, .len = 4};
    write_frame(p, OP_BATCH_BEGIN, 0, seq, begin_birthtime, &empty, &counted, salt);
    p += HEADER_SIZE + 4;
    offset += HEADER_SIZE + 4;
    for (Py_ssize_t i = 0; i < count; i++) {
        Entry *e = &entries[i];
        uint64_t length = HEADER_SIZE + e->key.len + e->value.len;
        seq++;
        write_frame(p, e->op, e->flags | FLAG_BATCH, seq, e->birthtime, &e->key, &e->value, salt);
        PyObject *loc = new_pair(PyLong_FromUnsignedLongLong(seq), pack_location(e->birthtime, slot, offset, length));
        if (loc == NULL) goto done;
        PyList_SET_ITEM(locs, i, loc);
        p += length;
        offset += length; /* (a location's offset is u32: Log._land refuses a segment past 4 GiB) */
    }
    seq++;
    write_frame(p, OP_BATCH_COMMIT, 0, seq, commit_birthtime, &empty, &empty, salt);
    out = Py_BuildValue("(OOK)", data, locs, seq);
done:
    for (Py_ssize_t i = 0; i < taken; i++) {
        PyBuffer_Release(&entries[i].key);
        PyBuffer_Release(&entries[i].value);
    }
    for (Py_ssize_t i = 0; entries != NULL && i < count; i++) Py_XDECREF(entries[i].fields);
    PyMem_Free(entries);
    Py_XDECREF(data);
    Py_XDECREF(locs);
    Py_DECREF(items);
    return out;
}

/* decode_locations(raw, sizes) -> (locations, live bytes): hintfile.decode_locations,
 * the packed locations of a hint's index, each at least a frame header long, in a
 * covered segment (a slot below len(sizes)) and within its covered size, births
 * strictly increasing; ValueError otherwise. */
static PyObject *decode_locations(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer view;
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "decode_locations(raw, sizes)");
    PyObject *sizes = PySequence_Tuple(args[1]); /* (a copy: no __index__ can change it under us) */
    if (sizes == NULL) return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        Py_DECREF(sizes);
        return NULL;
    }
    Py_ssize_t slots = PyTuple_GET_SIZE(sizes), count = view.len / LOCATION_SIZE;
    PyObject *out = NULL, *locations = NULL;
    uint64_t *limit = PyMem_Malloc((slots ? slots : 1) * sizeof(uint64_t)), live = 0, birth = 0;
    if (limit == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < slots; i++) {
        int overflow;
        long long size = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(sizes, i), &overflow);
        if (size == -1 && PyErr_Occurred()) goto done;
        limit[i] = overflow > 0 ? UINT64_MAX : size < 0 ? 0 : (uint64_t)size;
    }
    /* The three checks in hintfile's order, each over all locations (so the same one fails first). */
    const uint8_t *p, *first = view.buf, *stop = first + count * LOCATION_SIZE;
    const char *refused = view.len % LOCATION_SIZE ? "not a whole number of locations" : NULL;
    for (p = first; p < stop && refused == NULL; p += LOCATION_SIZE) {
        if (le32(p) < HEADER_SIZE) refused = "a location shorter than a frame header";
        live += le32(p);
    }
    for (p = first; p < stop && refused == NULL; p += LOCATION_SIZE) {
        unsigned slot = p[8] | p[9] << 8;
        if ((Py_ssize_t)slot >= slots || (uint64_t)le32(p + 4) + le32(p) > limit[slot])
            refused = "a location outside the covered segments";
    }
    for (p = first; p < stop && refused == NULL; p += LOCATION_SIZE) {
        if (p > first && le64(p + 10) <= birth) refused = "births out of order";
        birth = le64(p + 10);
    }
    if (refused != NULL) {
        PyErr_SetString(PyExc_ValueError, refused);
        goto done;
    }
    if ((locations = PyList_New(count)) == NULL) goto done;
    p = view.buf;
    for (Py_ssize_t i = 0; i < count; i++, p += LOCATION_SIZE) {
        PyObject *loc = location_from_bytes(p);
        if (loc == NULL) goto done;
        PyList_SET_ITEM(locations, i, loc);
    }
    out = Py_BuildValue("(OK)", locations, (unsigned long long)live);
done:
    Py_XDECREF(locations);
    PyMem_Free(limit);
    PyBuffer_Release(&view);
    Py_DECREF(sizes);
    return out;
}

/* index_dict(keys, locations) -> dict(zip(keys, locations)), for two lists, built presized
 * (a third faster than growing it: index._load's million keys from a hint). */
static PyObject *index_dict(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0]) || !PyList_Check(args[1]))
        return PyErr_Format(PyExc_TypeError, "index_dict(keys, locations) takes two lists");
    PyObject *keys = args[0], *locations = args[1];
    Py_ssize_t n = Py_MIN(PyList_GET_SIZE(keys), PyList_GET_SIZE(locations));
    PyObject *index = PyDict_New(); /* (not presized: a dict grown by insertion takes ~11 B/key less at 1M keys) */
    if (index == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(keys) && i < PyList_GET_SIZE(locations); i++) {
        PyObject *key = Py_NewRef(PyList_GET_ITEM(keys, i)), *location = Py_NewRef(PyList_GET_ITEM(locations, i));
        int failed = PyDict_SetItem(index, key, location); /* (a key's __hash__ may change the lists) */
        Py_DECREF(key);
        Py_DECREF(location);
        if (failed < 0) {
            Py_DECREF(index);
            return NULL;
        }
    }
    return index;
}

/* setup(Frame, Damage): the NamedTuple types the decoders build (format.py, at import). */
static PyObject *setup(PyObject *self, PyObject *args) {
    PyObject *frame, *damage;
    if (!PyArg_ParseTuple(args, "O!O!", &PyType_Type, &frame, &PyType_Type, &damage)) return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)frame, &PyTuple_Type) ||
        !PyType_IsSubtype((PyTypeObject *)damage, &PyTuple_Type))
        return PyErr_Format(PyExc_TypeError, "setup() takes two tuple subclasses");
    Py_INCREF(frame);
    Py_INCREF(damage);
    Py_XDECREF(Frame_type);
    Py_XDECREF(Damage_type);
    Frame_type = (PyTypeObject *)frame;
    Damage_type = (PyTypeObject *)damage;
    Py_RETURN_NONE;
}

PyMethodDef format_methods[] = {
    {"encode_frame", (PyCFunction)(void (*)(void))encode_frame, METH_FASTCALL | METH_KEYWORDS,
     "format.encode_frame in C."},
    {"decode_frame", (PyCFunction)(void (*)(void))decode_frame, METH_FASTCALL, "format.decode_frame in C."},
    {"frame_value", (PyCFunction)(void (*)(void))frame_value, METH_FASTCALL, "format.frame_value in C."},
    {"header_length", (PyCFunction)(void (*)(void))header_length, METH_FASTCALL, "format.header_length in C."},
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL, "Scan._frames and Scan._resync in C."},
    {"encode_batch", (PyCFunction)(void (*)(void))encode_batch, METH_FASTCALL, "format.encode_batch in C."},
    {"decode_locations", (PyCFunction)(void (*)(void))decode_locations, METH_FASTCALL,
     "hintfile.decode_locations in C."},
    {"index_dict", (PyCFunction)(void (*)(void))index_dict, METH_FASTCALL, "hintfile.index_dict in C."},
    {"setup", setup, METH_VARARGS, "setup(Frame, Damage): the types format.py decodes into."},
    {NULL, NULL, 0, NULL},
};

int format_init(PyObject *module) {
    PyObject *struct_module = PyImport_ImportModule("struct");
    if (struct_module == NULL) return -1;
    StructError = PyObject_GetAttrString(struct_module, "error");
    Py_DECREF(struct_module);
    damaged_frame = PyUnicode_InternFromString("damaged frame");
    return StructError == NULL || damaged_frame == NULL ? -1 : 0;
}
