/* The most frequent request of all, answered without entering the interpreter.
 *
 * A poller that finds nothing new sends the very same bytes again and again, and
 * gets the same answer but for its fresh client id (server/repeat.py: the decision's
 * Unchanged, kept for every poller of that request). answer_again() is that one
 * case of Repeat.answer, in C: HttpConnection.data_received calls it first, and
 * reads the request in Python whenever it says no (returns False). It says no to
 * anything but the plainest case, so that every decision stays in one place, the
 * Python path, which is also what runs where this extension is not built:
 *
 *   - the connection is idle and keeps a Repeat for anonymous pollers, with a kept
 *     answer (Unchanged) whose request is byte for byte the one just read, on a
 *     connection of the same shape;
 *   - the decision keeps the connection alive, has no token expiry to check, and
 *     the node is not draining; the access log is off;
 *   - the broker says its read is still the kept answer's (Broker.same_read), and
 *     a drawn client id is at hand (presence.ascii_client_ids()).
 *
 * It then does what Repeat._send and HttpConnection.respond would: counts the bytes,
 * writes the kept answer around a fresh client id, and renews the keep-alive deadline.
 *
 * The objects are Python classes with __slots__. Their slots are read where CPython
 * keeps them: configure() takes each slot's offset from its member descriptor once,
 * and refuses (TypeError) if a name is not a plain slot, so that a renamed field
 * fails at import, not at a request. tests/server/test_server_speedups.py holds the
 * C path to the Python one; the differential test runs both.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define SLOT(object, offset) (*(PyObject **)((char *)(object) + (offset)))

static int configured;
static PyTypeObject *connection_type, *repeat_type, *unchanged_type, *read_type;
static PyObject *client_ids;  /* presence.ascii_client_ids(): a list popped from its end */
static PyObject *bytes_key;   /* the stats counter of HTTP bytes written */

/* Where answer_again finds what it reads: slot offsets, and a named tuple's indexes. */
typedef struct {
    /* HttpConnection */
    Py_ssize_t conn_access, conn_busy, conn_closing, conn_deadline, conn_failure, conn_misses,
        conn_on_lost, conn_queue, conn_repeat, conn_request_begun, conn_server, conn_shape,
        conn_transport;
    /* Repeat */
    Py_ssize_t repeat_identity, repeat_read, repeat_unchanged;
    /* Unchanged */
    Py_ssize_t kept_channel, kept_found, kept_head, kept_request, kept_shape, kept_start,
        kept_tail;
    /* PollRead */
    Py_ssize_t read_expires, read_keep_alive, read_page, read_server;
} Layout;

static Layout at;

static PyObject *str_broker, *str_draining, *str_keep_alive_deadline, *str_same_read,
    *str_stats, *str_write, *zero;

/* Replace a slot's value (a new reference to `value` is taken). */
static void
set_slot(PyObject *object, Py_ssize_t offset, PyObject *value)
{
    PyObject *old = SLOT(object, offset);
    Py_INCREF(value);
    SLOT(object, offset) = value;
    Py_XDECREF(old);
}

/* 1: answered; 0: not this case, nothing done; -1: an exception is set (nothing was
 * written unless it was the write itself that failed). */
static int
answer(PyObject *conn, PyObject *data)
{
    PyObject *shape, *queue, *repeat, *kept, *request, *read, *server, *transport, *found;
    PyObject *broker = NULL, *same = NULL, *client = NULL, *reply = NULL, *stats = NULL,
        *size = NULL, *total = NULL, *written = NULL, *deadline = NULL, *draining;
    Py_ssize_t length, count, head_size, client_size, tail_size;
    int answered = -1, flag;

    if (!configured || !PyBytes_CheckExact(data) || !PyObject_TypeCheck(conn, connection_type))
        return 0;
    /* An idle connection, nothing held back, nothing pipelined, no request begun. */
    if (SLOT(conn, at.conn_closing) != Py_False || SLOT(conn, at.conn_busy) != Py_False
            || SLOT(conn, at.conn_request_begun) != Py_False
            || SLOT(conn, at.conn_failure) != Py_None || SLOT(conn, at.conn_access) != Py_None)
        return 0;
    shape = SLOT(conn, at.conn_shape);
    queue = SLOT(conn, at.conn_queue);
    repeat = SLOT(conn, at.conn_repeat);
    if (shape == NULL || shape == Py_None || queue == NULL || !PyList_CheckExact(queue)
            || PyList_GET_SIZE(queue) != 0 || repeat == NULL || !Py_IS_TYPE(repeat, repeat_type))
        return 0;
    /* An anonymous poller's Repeat, with a kept answer to the very same bytes. */
    if (SLOT(repeat, at.repeat_identity) != Py_None)
        return 0;
    kept = SLOT(repeat, at.repeat_unchanged);
    if (kept == NULL || !Py_IS_TYPE(kept, unchanged_type) || SLOT(kept, at.kept_shape) != shape)
        return 0;
    request = SLOT(kept, at.kept_request);
    length = PyBytes_GET_SIZE(data);
    if (request == NULL || !PyBytes_CheckExact(request) || PyBytes_GET_SIZE(request) != length
            || memcmp(PyBytes_AS_STRING(request), PyBytes_AS_STRING(data), length) != 0)
        return 0;
    found = SLOT(kept, at.kept_found);
    if (found == NULL || found == Py_None || SLOT(kept, at.kept_channel) == NULL
            || SLOT(kept, at.kept_start) == NULL)
        return 0;
    /* Its decision: keep-alive, no token expiry (the Python path reads the clock). */
    read = SLOT(repeat, at.repeat_read);
    if (read == NULL || !Py_IS_TYPE(read, read_type))
        return 0;
    server = PyTuple_GET_ITEM(read, at.read_server);
    if (PyTuple_GET_ITEM(read, at.read_keep_alive) != Py_True
            || SLOT(conn, at.conn_server) != server)
        return 0;
    flag = PyObject_IsTrue(PyTuple_GET_ITEM(read, at.read_expires));
    if (flag != 0)
        return flag < 0 ? -1 : 0;
    transport = SLOT(conn, at.conn_transport);
    if (transport == NULL || transport == Py_None || PyList_GET_SIZE(client_ids) == 0)
        return 0;
    draining = PyObject_GetAttr(server, str_draining);
    if (draining == NULL)
        return -1;
    Py_DECREF(draining);
    if (draining != Py_False)
        return 0;

    /* What Python runs from here may change the slots: hold what is used after it. */
    Py_INCREF(kept);
    Py_INCREF(read);
    Py_INCREF(transport);
    broker = PyObject_GetAttr(server, str_broker);
    if (broker == NULL)
        goto done;
    {
        PyObject *args[5] = {broker, SLOT(kept, at.kept_channel), SLOT(kept, at.kept_start),
                             PyTuple_GET_ITEM(read, at.read_page), found};
        for (int i = 1; i < 5; i++)
            Py_INCREF(args[i]);
        same = PyObject_VectorcallMethod(str_same_read, args,
                                         5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        for (int i = 1; i < 5; i++)
            Py_DECREF(args[i]);
    }
    if (same == NULL)
        goto done;
    if (same != Py_True || PyList_GET_SIZE(client_ids) == 0) {
        answered = 0;  /* the log moved on: the Python path reads it */
        goto done;
    }

    /* Repeat._send: the kept answer around a fresh client id. */
    {
        PyObject *head = SLOT(kept, at.kept_head), *tail = SLOT(kept, at.kept_tail);
        char *out;
        count = PyList_GET_SIZE(client_ids);
        client = PyList_GET_ITEM(client_ids, count - 1);
        if (head == NULL || tail == NULL || !PyBytes_CheckExact(head)
                || !PyBytes_CheckExact(tail) || !PyBytes_CheckExact(client)) {
            client = NULL;
            answered = 0;
            goto done;
        }
        Py_INCREF(client);
        if (PyList_SetSlice(client_ids, count - 1, count, NULL) < 0)
            goto done;
        head_size = PyBytes_GET_SIZE(head);
        client_size = PyBytes_GET_SIZE(client);
        tail_size = PyBytes_GET_SIZE(tail);
        reply = PyBytes_FromStringAndSize(NULL, head_size + client_size + tail_size);
        if (reply == NULL)
            goto done;
        out = PyBytes_AS_STRING(reply);
        memcpy(out, PyBytes_AS_STRING(head), head_size);
        memcpy(out + head_size, PyBytes_AS_STRING(client), client_size);
        memcpy(out + head_size + client_size, PyBytes_AS_STRING(tail), tail_size);
    }

    /* HttpConnection.respond, for a connection that stays open with nothing queued. */
    set_slot(conn, at.conn_on_lost, Py_None);
    stats = PyObject_GetAttr(server, str_stats);
    if (stats == NULL || !PyDict_Check(stats)) {
        if (stats != NULL)
            PyErr_SetString(PyExc_TypeError, "Server.stats is not a dict");
        goto done;
    }
    size = PyLong_FromSsize_t(PyBytes_GET_SIZE(reply));
    if (size == NULL)
        goto done;
    {
        PyObject *before = PyDict_GetItemWithError(stats, bytes_key);  /* borrowed */
        if (before == NULL && PyErr_Occurred())
            goto done;
        total = before == NULL ? Py_NewRef(size) : PyNumber_Add(before, size);
    }
    if (total == NULL || PyDict_SetItem(stats, bytes_key, total) < 0)
        goto done;
    {
        PyObject *args[2] = {transport, reply};
        written = PyObject_VectorcallMethod(str_write, args,
                                            2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    if (written == NULL)
        goto done;
    /* HttpConnection.data_received after an answer given again. */
    set_slot(conn, at.conn_misses, zero);
    if (SLOT(conn, at.conn_busy) == Py_False && SLOT(conn, at.conn_closing) == Py_False) {
        deadline = PyObject_GetAttr(server, str_keep_alive_deadline);
        if (deadline == NULL)
            goto done;
        set_slot(conn, at.conn_deadline, deadline);
    }
    answered = 1;
done:
    Py_XDECREF(deadline);
    Py_XDECREF(written);
    Py_XDECREF(total);
    Py_XDECREF(size);
    Py_XDECREF(stats);
    Py_XDECREF(reply);
    Py_XDECREF(client);
    Py_XDECREF(same);
    Py_XDECREF(broker);
    Py_DECREF(transport);
    Py_DECREF(read);
    Py_DECREF(kept);
    return answered;
}

static PyObject *
answer_again(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int answered;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "answer_again(conn, data) takes two arguments");
        return NULL;
    }
    answered = answer(args[0], args[1]);
    if (answered < 0)
        return NULL;
    return Py_NewRef(answered ? Py_True : Py_False);
}

/* The offset of the slot `name` of `type`; -1 with TypeError if it is not a plain slot. */
static Py_ssize_t
slot_offset(PyTypeObject *type, const char *name)
{
    PyObject *found = PyObject_GetAttrString((PyObject *)type, name);
    Py_ssize_t offset = -1;
    if (found == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s has no slot %s", type->tp_name, name);
        }
        return -1;
    }
    if (Py_IS_TYPE(found, &PyMemberDescr_Type)
            && ((PyMemberDescrObject *)found)->d_member->type == T_OBJECT_EX
            && PyType_IsSubtype(type, PyDescr_TYPE(found)))
        offset = ((PyMemberDescrObject *)found)->d_member->offset;
    else
        PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, name);
    Py_DECREF(found);
    return offset;
}

/* The index of the field `name` of the named tuple `type`; -1 with an exception if none. */
static Py_ssize_t
field_index(PyTypeObject *type, const char *name)
{
    PyObject *fields = PyObject_GetAttrString((PyObject *)type, "_fields");
    PyObject *text;
    Py_ssize_t index = -1;
    if (fields == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s is not a named tuple with a field %s",
                         type->tp_name, name);
        }
        return -1;
    }
    text = PyUnicode_FromString(name);
    if (text != NULL && PyTuple_Check(fields) && PyType_IsSubtype(type, &PyTuple_Type))
        index = PySequence_Index(fields, text);
    if (text != NULL && index < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s is not a named tuple with a field %s",
                     type->tp_name, name);
    }
    Py_XDECREF(text);
    Py_DECREF(fields);
    return index;
}

static PyObject *
configure(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"connection", "repeat", "unchanged", "read", "client_ids",
                               "bytes_key", NULL};
    PyTypeObject *connection, *repeat, *unchanged, *read;
    PyObject *ids, *key;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!O!O!O!U:configure", keywords,
                                     &PyType_Type, &connection, &PyType_Type, &repeat,
                                     &PyType_Type, &unchanged, &PyType_Type, &read,
                                     &PyList_Type, &ids, &key))
        return NULL;
    Layout found;
#define OFFSET(field, type, name) if ((found.field = slot_offset(type, name)) < 0) return NULL
    OFFSET(conn_access, connection, "_access");
    OFFSET(conn_busy, connection, "busy");
    OFFSET(conn_closing, connection, "closing");
    OFFSET(conn_deadline, connection, "deadline");
    OFFSET(conn_failure, connection, "_failure");
    OFFSET(conn_misses, connection, "_misses");
    OFFSET(conn_on_lost, connection, "on_lost");
    OFFSET(conn_queue, connection, "queue");
    OFFSET(conn_repeat, connection, "_repeat");
    OFFSET(conn_request_begun, connection, "_request_begun");
    OFFSET(conn_server, connection, "server");
    OFFSET(conn_shape, connection, "_repeat_shape");
    OFFSET(conn_transport, connection, "transport");
    OFFSET(repeat_identity, repeat, "identity");
    OFFSET(repeat_read, repeat, "read");
    OFFSET(repeat_unchanged, repeat, "unchanged");
    OFFSET(kept_channel, unchanged, "channel");
    OFFSET(kept_found, unchanged, "found");
    OFFSET(kept_head, unchanged, "head");
    OFFSET(kept_request, unchanged, "request");
    OFFSET(kept_shape, unchanged, "shape");
    OFFSET(kept_start, unchanged, "start");
    OFFSET(kept_tail, unchanged, "tail");
#undef OFFSET
#define INDEX(field, name) if ((found.field = field_index(read, name)) < 0) return NULL
    INDEX(read_expires, "expires");
    INDEX(read_keep_alive, "keep_alive");
    INDEX(read_page, "page");
    INDEX(read_server, "server");
#undef INDEX
    /* All found: from now on answer_again reads these (a failure above changed nothing). */
    at = found;
    Py_XSETREF(connection_type, (PyTypeObject *)Py_NewRef(connection));
    Py_XSETREF(repeat_type, (PyTypeObject *)Py_NewRef(repeat));
    Py_XSETREF(unchanged_type, (PyTypeObject *)Py_NewRef(unchanged));
    Py_XSETREF(read_type, (PyTypeObject *)Py_NewRef(read));
    Py_XSETREF(client_ids, Py_NewRef(ids));
    Py_XSETREF(bytes_key, Py_NewRef(key));
    configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"answer_again", (PyCFunction)(void (*)(void))answer_again, METH_FASTCALL,
     "answer_again(conn, data) -> bool\n\nAnswer data, read by conn, if it is the very "
     "request its kept answer answered (see the module's source); False: nothing was done."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "configure(*, connection, repeat, unchanged, read, client_ids, bytes_key) -> None\n\n"
     "The classes whose slots answer_again reads, the pool of client ids it pops from, "
     "and the stats key of the HTTP bytes it counts. Until then it answers nothing."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tidings.server.speedups",
    "The very request again, answered in C (see speedups.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit_speedups(void)
{
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(str_broker, "broker");
    INTERN(str_draining, "draining");
    INTERN(str_keep_alive_deadline, "keep_alive_deadline");
    INTERN(str_same_read, "same_read");
    INTERN(str_stats, "stats");
    INTERN(str_write, "write");
#undef INTERN
    if ((zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    return PyModule_Create(&module);
}
