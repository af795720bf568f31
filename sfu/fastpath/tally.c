/*
 * RxTally/RxFlow: the load generator's subscribers count what they receive in C.
 *
 * Not used by the server. bench/participant.py gives an RxTally to the C Reader of
 * each synthetic subscriber as its on_rtp (sfu.aiortc_hooks.read_in_c): per packet it
 * finds the flow by SSRC, counts it, extends its sequence number and, on a frame's last
 * packet (marker bit), reads the bench's trailer (bench/media.py TRAILER: "RT",
 * publisher index, frame number, send time in CLOCK_MONOTONIC ns) for the end-to-end
 * latency. A capacity search on a 2-core machine should find the server's limit, not
 * the generator's: this is ~40 Python steps per packet fewer on the generator's core.
 *
 * Crosses into Python: learn(packet) for an SSRC not seen since the last subscribe
 * offer (returns its RxFlow or None); one attribute read of window.active per packet;
 * one int appended to the e2e list per frame; the bench reads the flows' counters after
 * the window.
 */
#include "fastpath.h"

#include <structmember.h>

#define TRAILER_SIZE 18 /* struct "!2sIIQ" */

typedef struct {
    PyObject_HEAD
    PyObject *publisher, *kind;
    long long packets, w_packets, w_bytes, frames, markers;
    long long first_seq, last_seq, rtp_first, rtp_last, rtp_last16;
    int have_first_seq, have_rtp_first;
} RxFlow;

static int RxFlow_init(RxFlow *self, PyObject *args, PyObject *kwds)
{
    PyObject *publisher, *kind;
    if (!PyArg_ParseTuple(args, "OO", &publisher, &kind))
        return -1;
    Py_XSETREF(self->publisher, Py_NewRef(publisher));
    Py_XSETREF(self->kind, Py_NewRef(kind));
    return 0;
}

static void RxFlow_dealloc(RxFlow *self)
{
    Py_XDECREF(self->publisher);
    Py_XDECREF(self->kind);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *RxFlow_get_first_seq(RxFlow *self, void *closure)
{
    if (!self->have_first_seq)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(self->first_seq);
}

static PyObject *RxFlow_get_rtp_first(RxFlow *self, void *closure)
{
    if (!self->have_rtp_first)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(self->rtp_first);
}

static PyMemberDef RxFlow_members[] = {
    {"publisher", T_OBJECT, offsetof(RxFlow, publisher), READONLY, NULL},
    {"kind", T_OBJECT, offsetof(RxFlow, kind), READONLY, NULL},
    {"packets", T_LONGLONG, offsetof(RxFlow, packets), READONLY, "every packet"},
    {"w_packets", T_LONGLONG, offsetof(RxFlow, w_packets), READONLY, "in the window"},
    {"w_bytes", T_LONGLONG, offsetof(RxFlow, w_bytes), READONLY, "payload, in the window"},
    {"frames", T_LONGLONG, offsetof(RxFlow, frames), READONLY, "with a readable trailer"},
    {"markers", T_LONGLONG, offsetof(RxFlow, markers), READONLY, "packets ending a frame"},
    {"last_seq", T_LONGLONG, offsetof(RxFlow, last_seq), READONLY, "trailer frame number"},
    {"rtp_last", T_LONGLONG, offsetof(RxFlow, rtp_last), READONLY, "extended RTP seq"},
    {"rtp_last16", T_LONGLONG, offsetof(RxFlow, rtp_last16), READONLY, NULL},
    {NULL},
};

static PyGetSetDef RxFlow_getset[] = {
    {"first_seq", (getter)RxFlow_get_first_seq, NULL, "first trailer frame number", NULL},
    {"rtp_first", (getter)RxFlow_get_rtp_first, NULL, "first extended RTP seq", NULL},
    {NULL},
};

PyTypeObject RxFlowType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu._fastpath.RxFlow",
    .tp_basicsize = sizeof(RxFlow),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RxFlow(publisher, kind): what one synthetic subscriber received of one track.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RxFlow_init,
    .tp_dealloc = (destructor)RxFlow_dealloc,
    .tp_members = RxFlow_members,
    .tp_getset = RxFlow_getset,
};

typedef struct {
    PyObject_HEAD
    PyObject *window;  /* .active: whether the measurement window is open */
    PyObject *e2e;     /* list of end-to-end latencies, ns */
    PyObject *by_ssrc; /* ssrc -> RxFlow, cleared by Python at each offer */
    PyObject *learn;   /* learn(packet) -> RxFlow | None */
} RxTally;

static int RxTally_traverse(RxTally *self, visitproc visit, void *arg)
{
    Py_VISIT(self->window);
    Py_VISIT(self->e2e);
    Py_VISIT(self->by_ssrc);
    Py_VISIT(self->learn);
    return 0;
}

static int RxTally_clear(RxTally *self)
{
    Py_CLEAR(self->window);
    Py_CLEAR(self->e2e);
    Py_CLEAR(self->by_ssrc);
    Py_CLEAR(self->learn);
    return 0;
}

static void RxTally_dealloc(RxTally *self)
{
    PyObject_GC_UnTrack(self);
    RxTally_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int RxTally_init(RxTally *self, PyObject *args, PyObject *kwds)
{
    /* RxTally(window, e2e_list, by_ssrc, learn) */
    PyObject *window, *e2e, *by_ssrc, *learn;
    if (!PyArg_ParseTuple(args, "OO!O!O", &window, &PyList_Type, &e2e, &PyDict_Type, &by_ssrc,
                          &learn))
        return -1;
    Py_XSETREF(self->window, Py_NewRef(window));
    Py_XSETREF(self->e2e, Py_NewRef(e2e));
    Py_XSETREF(self->by_ssrc, Py_NewRef(by_ssrc));
    Py_XSETREF(self->learn, Py_NewRef(learn));
    return 0;
}

static PyObject *str_active;

static PyObject *RxTally_call(RxTally *self, PyObject *args, PyObject *kwds)
{
    PyObject *packet, *ms;
    if (!self->window) {
        PyErr_SetString(PyExc_RuntimeError, "RxTally was not initialised");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "RxTally", 2, 2, &packet, &ms))
        return NULL;
    if (Py_TYPE(packet) != &PacketType) {
        PyErr_SetString(PyExc_TypeError, "RxTally counts sfu._fastpath.Packet objects");
        return NULL;
    }
    Packet *p = (Packet *)packet;
    PyObject *key = PyLong_FromUnsignedLong(p->ssrc);
    if (!key)
        return NULL;
    PyObject *flow = PyDict_GetItemWithError(self->by_ssrc, key); /* borrowed */
    Py_DECREF(key);
    if (flow)
        Py_INCREF(flow);
    else if (PyErr_Occurred())
        return NULL;
    else if (!(flow = PyObject_CallOneArg(self->learn, packet)))
        return NULL;
    if (Py_TYPE(flow) != &RxFlowType) {
        Py_DECREF(flow);
        Py_RETURN_NONE; /* not a flow of ours */
    }
    RxFlow *f = (RxFlow *)flow;
    f->packets++;
    PyObject *active = PyObject_GetAttr(self->window, str_active);
    int on = active ? PyObject_IsTrue(active) : -1;
    Py_XDECREF(active);
    if (on <= 0) {
        Py_DECREF(flow);
        if (on < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    Py_ssize_t plen = PyBytes_GET_SIZE(p->payload);
    f->w_packets++;
    f->w_bytes += plen;
    long long seq = p->sequence_number;
    if (!f->have_rtp_first) {
        f->have_rtp_first = 1;
        f->rtp_first = f->rtp_last = f->rtp_last16 = seq;
    } else {
        /* extend the 16-bit sequence number; older (reordered) ones only count */
        long long delta = (seq - f->rtp_last16) & 0xFFFF;
        if (delta < 0x8000) {
            f->rtp_last += delta;
            f->rtp_last16 = seq;
        }
    }
    if (p->marker) {
        f->markers++;
        const unsigned char *t =
            (const unsigned char *)PyBytes_AS_STRING(p->payload) + plen - TRAILER_SIZE;
        if (plen >= TRAILER_SIZE && t[0] == 'R' && t[1] == 'T') {
            long long fseq = (long long)((uint32_t)t[6] << 24 | t[7] << 16 | t[8] << 8 | t[9]);
            uint64_t sent = 0;
            for (int i = 10; i < 18; i++)
                sent = sent << 8 | t[i];
            PyObject *lat = PyLong_FromLongLong(p->arrival_ns - (long long)sent);
            if (!lat || PyList_Append(self->e2e, lat) < 0) {
                Py_XDECREF(lat);
                Py_DECREF(flow);
                return NULL;
            }
            Py_DECREF(lat);
            f->frames++;
            if (!f->have_first_seq || fseq < f->first_seq) {
                f->have_first_seq = 1;
                f->first_seq = fseq;
            }
            if (fseq > f->last_seq)
                f->last_seq = fseq;
        }
    }
    Py_DECREF(flow);
    Py_RETURN_NONE;
}

PyTypeObject RxTallyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu._fastpath.RxTally",
    .tp_basicsize = sizeof(RxTally),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "RxTally(window, e2e, by_ssrc, learn): the load generator's on_rtp, counting "
              "received packets per flow and reading frame trailers in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RxTally_init,
    .tp_dealloc = (destructor)RxTally_dealloc,
    .tp_traverse = (traverseproc)RxTally_traverse,
    .tp_clear = (inquiry)RxTally_clear,
    .tp_call = (ternaryfunc)RxTally_call,
};

int fp_tally_init(void)
{
    str_active = PyUnicode_InternFromString("active");
    return str_active ? 0 : -1;
}
