/*
 * SRTP: the libsrtp session aiortc negotiated over DTLS, used from C, and Live, the
 * DTLS transport's state as one C flag.
 *
 * Crosses into Python: nothing per packet. Python hands over the session once a DTLS
 * transport is connected (Leg.set_route, Reader.set_rtp, from sfu.aiortc_hooks, which
 * reads the C function pointers and the context from pylibsrtp's cffi objects) with the
 * transport's Live; we keep a reference to the Python Session object so the context
 * outlives every call that uses it. sfu.aiortc_hooks sets Live.connected from the
 * transport's own _set_state, the one place aiortc changes its state, before the new
 * state is stored and announced. Before each use, fp_srtp_live() reads that flag (a C
 * int): once the transport is no longer connected the session is dropped, so a closed
 * connection never protects or unprotects with a freed context.
 */
#include "fastpath.h"
#include <structmember.h>

static int Live_init(Live *self, PyObject *args, PyObject *kwds)
{
    /* Live(connected) */
    int connected;
    if (!PyArg_ParseTuple(args, "p", &connected))
        return -1;
    self->connected = (char)connected;
    return 0;
}

static PyMemberDef Live_members[] = {
    {"connected", T_BOOL, offsetof(Live, connected), 0,
     "whether the DTLS transport is connected: its sessions may be used"},
    {NULL},
};

PyTypeObject LiveType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu._fastpath.Live",
    .tp_doc = "Live(connected): a DTLS transport's state as the C path reads it",
    .tp_basicsize = sizeof(Live),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Live_init,
    .tp_members = Live_members,
};

int fp_srtp_set(FpSrtp *s, void *ctx, srtp_fn rtp, srtp_fn rtcp, PyObject *session,
                PyObject *live)
{
    if (!PyObject_TypeCheck(live, &LiveType)) {
        PyErr_SetString(PyExc_TypeError, "the DTLS transport's state must be a Live");
        return -1;
    }
    fp_srtp_clear(s);
    s->ctx = ctx;
    s->rtp = rtp;
    s->rtcp = rtcp;
    s->session = Py_NewRef(session);
    s->live = (Live *)Py_NewRef(live);
    return 0;
}

void fp_srtp_clear(FpSrtp *s)
{
    s->ctx = NULL;
    s->rtp = s->rtcp = NULL;
    Py_CLEAR(s->session);
    Py_CLEAR(s->live);
}

int fp_srtp_traverse(FpSrtp *s, visitproc visit, void *arg)
{
    Py_VISIT(s->session);
    Py_VISIT(s->live);
    return 0;
}
