/*
 * SRTP: the libsrtp session aiortc negotiated over DTLS, used from C.
 *
 * Crosses into Python: nothing per packet. Python hands over the session once a DTLS
 * transport is connected (Leg.set_route, Reader.set_rtp, from sfu.aiortc_hooks, which
 * reads the C function pointers and the context from pylibsrtp's cffi objects); we keep
 * a reference to the Python Session object so the context outlives every call that
 * uses it. Before each use, fp_srtp_live() reads the DTLS transport's `_state` (one
 * attribute read): once it is no longer connected the session is dropped, so a closed
 * connection never protects or unprotects with a freed context.
 */
#include "fastpath.h"

void fp_srtp_set(FpSrtp *s, void *ctx, srtp_fn rtp, srtp_fn rtcp, PyObject *session,
                 PyObject *dtls, PyObject *connected)
{
    fp_srtp_clear(s);
    s->ctx = ctx;
    s->rtp = rtp;
    s->rtcp = rtcp;
    s->session = Py_NewRef(session);
    s->dtls = Py_NewRef(dtls);
    s->connected = Py_NewRef(connected);
}

void fp_srtp_clear(FpSrtp *s)
{
    s->ctx = NULL;
    s->rtp = s->rtcp = NULL;
    Py_CLEAR(s->session);
    Py_CLEAR(s->dtls);
    Py_CLEAR(s->connected);
}

int fp_srtp_traverse(FpSrtp *s, visitproc visit, void *arg)
{
    Py_VISIT(s->session);
    Py_VISIT(s->dtls);
    Py_VISIT(s->connected);
    return 0;
}

int fp_srtp_live(FpSrtp *s)
{
    if (!s->dtls)
        return 0;
    PyObject *state = PyObject_GetAttr(s->dtls, fp_str_state);
    if (!state)
        return -1;
    int ok = state == s->connected;
    Py_DECREF(state);
    return ok;
}
