/*
 * Meter: a room's forwarded-packet counters and SFU-added latency histogram.
 *
 * Crosses into Python: nothing per packet when the C path sends (leg.c adds to the
 * Meter in C). Python calls Meter.sent() for a packet it forwarded itself (queued, or
 * a repair) and Meter.received() for a publisher's packet the Python path took, and
 * sfu.stats reads counts/total_ns/packets/bytes when /metrics is
 * scraped or the room's stats are asked for.
 */
#include "fastpath.h"

static int Meter_init(Meter *self, PyObject *args, PyObject *kwds)
{
    PyObject *bounds;
    if (!PyArg_ParseTuple(args, "O", &bounds))
        return -1;
    PyObject *seq = PySequence_Fast(bounds, "bounds must be a sequence of ints (ns)");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > MAX_BUCKETS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "between 1 and 32 bucket bounds");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        if (i > 0 && v <= self->bounds[i - 1]) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "bucket bounds must increase");
            return -1;
        }
        self->bounds[i] = v;
    }
    Py_DECREF(seq);
    self->nbounds = (int)n;
    memset(self->counts, 0, sizeof(self->counts));
    self->total_ns = self->n = self->packets = self->bytes = 0;
    self->packets_in = self->bytes_in = 0;
    return 0;
}

static PyObject *Meter_observe(Meter *self, PyObject *arg)
{
    long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred())
        return NULL;
    meter_observe(self, ns);
    Py_RETURN_NONE;
}

static PyObject *Meter_sent(Meter *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* sent(nbytes, latency_ns): a packet forwarded by the Python (queued) path. */
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "sent(nbytes, latency_ns)");
        return NULL;
    }
    long long nbytes = PyLong_AsLongLong(args[0]);
    long long ns = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    self->packets++;
    self->bytes += (unsigned long long)nbytes;
    meter_observe(self, ns);
    Py_RETURN_NONE;
}

static PyObject *Meter_received(Meter *self, PyObject *arg)
{
    /* received(nbytes): a publisher's packet taken by the Python path (inbound.c counts
     * its own). */
    long long nbytes = PyLong_AsLongLong(arg);
    if (nbytes == -1 && PyErr_Occurred())
        return NULL;
    self->packets_in++;
    self->packets_in_py++;
    self->bytes_in += (unsigned long long)nbytes;
    Py_RETURN_NONE;
}

static PyObject *Meter_get_counts(Meter *self, void *closure)
{
    PyObject *out = PyList_New(self->nbounds + 1);
    if (!out)
        return NULL;
    for (int i = 0; i <= self->nbounds; i++)
        PyList_SET_ITEM(out, i, PyLong_FromUnsignedLongLong(self->counts[i]));
    return out;
}

static PyObject *Meter_get_bounds(Meter *self, void *closure)
{
    PyObject *out = PyTuple_New(self->nbounds);
    if (!out)
        return NULL;
    for (int i = 0; i < self->nbounds; i++)
        PyTuple_SET_ITEM(out, i, PyLong_FromLongLong(self->bounds[i]));
    return out;
}

#define ULL_GETTER(type, field)                                                           \
    static PyObject *type##_get_##field(type *self, void *closure)                       \
    {                                                                                     \
        return PyLong_FromUnsignedLongLong(self->field);                                  \
    }

ULL_GETTER(Meter, total_ns)
ULL_GETTER(Meter, n)
ULL_GETTER(Meter, packets)
ULL_GETTER(Meter, bytes)
ULL_GETTER(Meter, packets_in)
ULL_GETTER(Meter, bytes_in)
ULL_GETTER(Meter, packets_in_py)

static PyMethodDef Meter_methods[] = {
    {"observe", (PyCFunction)Meter_observe, METH_O, "Count one delay in nanoseconds."},
    {"sent", (PyCFunction)(void (*)(void))Meter_sent, METH_FASTCALL,
     "sent(nbytes, latency_ns): count one packet forwarded outside the C path."},
    {"received", (PyCFunction)Meter_received, METH_O,
     "received(nbytes): count one publisher packet taken by the Python path."},
    {NULL},
};

static PyGetSetDef Meter_getset[] = {
    {"counts", (getter)Meter_get_counts, NULL, "per-bucket counts, the last is +Inf", NULL},
    {"bounds", (getter)Meter_get_bounds, NULL, "bucket upper bounds (ns)", NULL},
    {"total_ns", (getter)Meter_get_total_ns, NULL, "sum of observed delays (ns)", NULL},
    {"n", (getter)Meter_get_n, NULL, "number of observed delays", NULL},
    {"packets", (getter)Meter_get_packets, NULL, "packets forwarded", NULL},
    {"bytes", (getter)Meter_get_bytes, NULL, "bytes forwarded (RTP, before SRTP)", NULL},
    {"packets_in", (getter)Meter_get_packets_in, NULL, "RTP packets from publishers", NULL},
    {"bytes_in", (getter)Meter_get_bytes_in, NULL, "their payload bytes", NULL},
    {"packets_in_python", (getter)Meter_get_packets_in_py, NULL,
     "of packets_in, those forwarded by the Python path (received())", NULL},
    {NULL},
};

PyTypeObject MeterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu._fastpath.Meter",
    .tp_basicsize = sizeof(Meter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Meter(bounds_ns): forwarded packets, bytes and a latency histogram.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Meter_init,
    .tp_methods = Meter_methods,
    .tp_getset = Meter_getset,
};
