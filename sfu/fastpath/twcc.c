/*
 * Arrivals: when each RTP packet of a publish transport arrived, by its transport-wide
 * sequence number (draft-holmer-rmcat-transport-wide-cc-extensions-01).
 *
 * With transport-cc negotiated the publisher's own congestion controller (Chromium's
 * GoogCC) estimates its uplink from our report of these arrivals (RTCP transport
 * feedback, built in sfu/twcc.py). It needs every packet — media, RTX, padding-only
 * probes, every simulcast layer — and in-order media no longer reaches Python
 * (inbound.c), so the Reader records here, in C, right after SRTP: one extension
 * lookup and one array append per packet.
 *
 * Crosses into Python: nothing per packet. sfu.twcc drains the buffer on a timer
 * (drain() -> the recorded (seq, arrival_us) pairs, oldest first) and reads `pending`
 * to send early when many packets wait. A full buffer (Python did not drain for a
 * long time) drops further arrivals, which the feedback then reports as lost: the
 * honest answer when we could not look.
 */
#include "fastpath.h"

#include <structmember.h>

#define ARRIVALS_CAP 8192 /* > 1.5 s at 5000 packets/s; drained every 50-250 ms */

typedef struct {
    PyObject_HEAD
    Py_ssize_t n;
    uint32_t media_ssrc; /* the SSRC of the latest recorded packet (feedback's media SSRC) */
    unsigned long long recorded, overflow;
    uint16_t seq[ARRIVALS_CAP];
    int64_t us[ARRIVALS_CAP]; /* CLOCK_MONOTONIC, microseconds */
} Arrivals;

/* The transport-wide sequence number of an RTP packet (RFC 8285 one- or two-byte
 * header extension `ext_id`, two bytes), or -1 if it carries none. */
static long twcc_seq(const unsigned char *d, Py_ssize_t n, int ext_id)
{
    if (n < 12 || !(d[0] & 0x10))
        return -1;
    Py_ssize_t pos = 12 + 4 * (d[0] & 0x0F);
    if (n < pos + 4)
        return -1;
    unsigned int profile = d[pos] << 8 | d[pos + 1];
    Py_ssize_t end = pos + 4 + 4 * (d[pos + 2] << 8 | d[pos + 3]);
    if (end > n || (profile != 0xBEDE && (profile & 0xFFF0) != 0x1000))
        return -1;
    Py_ssize_t i = pos + 4;
    while (i < end) {
        if (d[i] == 0) { /* padding */
            i++;
            continue;
        }
        int id, len;
        Py_ssize_t value;
        if (profile == 0xBEDE) {
            id = d[i] >> 4;
            len = (d[i] & 0x0F) + 1;
            value = i + 1;
            if (id == 15)
                return -1; /* reserved: stop parsing (RFC 8285 4.2) */
        } else {
            if (i + 2 > end)
                return -1;
            id = d[i];
            len = d[i + 1];
            value = i + 2;
        }
        if (value + len > end)
            return -1;
        if (id == ext_id)
            return len == 2 ? (long)(d[value] << 8 | d[value + 1]) : -1;
        i = value + len;
    }
    return -1;
}

void fp_arrivals_record(PyObject *arrivals, const unsigned char *d, Py_ssize_t n, int ext_id,
                        int64_t arrival_ns)
{
    Arrivals *a = (Arrivals *)arrivals;
    long seq = twcc_seq(d, n, ext_id);
    if (seq < 0)
        return;
    if (a->n >= ARRIVALS_CAP) {
        a->overflow++;
        return;
    }
    a->seq[a->n] = (uint16_t)seq;
    a->us[a->n] = arrival_ns / 1000;
    a->n++;
    a->recorded++;
    a->media_ssrc = (uint32_t)d[8] << 24 | d[9] << 16 | d[10] << 8 | d[11];
}

static PyObject *Arrivals_drain(Arrivals *self, PyObject *unused)
{
    PyObject *out = PyList_New(self->n);
    if (!out)
        return NULL;
    for (Py_ssize_t i = 0; i < self->n; i++) {
        PyObject *pair = Py_BuildValue("(HL)", self->seq[i], (long long)self->us[i]);
        if (!pair) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, pair);
    }
    self->n = 0;
    return out;
}

static PyObject *Arrivals_record(Arrivals *self, PyObject *args)
{
    /* record(packet_bytes, ext_id, arrival_ns): what the Reader does, for tests */
    Py_buffer data;
    int ext_id;
    long long ns;
    if (!PyArg_ParseTuple(args, "y*iL", &data, &ext_id, &ns))
        return NULL;
    fp_arrivals_record((PyObject *)self, data.buf, data.len, ext_id, ns);
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

static PyObject *Arrivals_get_pending(Arrivals *self, void *closure)
{
    return PyLong_FromSsize_t(self->n);
}

static PyMemberDef Arrivals_members[] = {
    {"media_ssrc", T_UINT, offsetof(Arrivals, media_ssrc), READONLY,
     "the SSRC of the latest recorded packet"},
    {"recorded", T_ULONGLONG, offsetof(Arrivals, recorded), READONLY, "packets recorded"},
    {"overflow", T_ULONGLONG, offsetof(Arrivals, overflow), READONLY,
     "packets not recorded because the buffer was full"},
    {NULL},
};

static PyMethodDef Arrivals_methods[] = {
    {"drain", (PyCFunction)Arrivals_drain, METH_NOARGS,
     "drain() -> [(transport-wide seq, arrival µs, monotonic)] since the last drain"},
    {"record", (PyCFunction)Arrivals_record, METH_VARARGS,
     "record(rtp_packet, ext_id, arrival_ns): record one packet as the Reader does"},
    {NULL},
};

static PyGetSetDef Arrivals_getset[] = {
    {"pending", (getter)Arrivals_get_pending, NULL, "arrivals waiting to be drained", NULL},
    {NULL},
};

PyTypeObject ArrivalsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu._fastpath.Arrivals",
    .tp_basicsize = sizeof(Arrivals),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Arrivals(): the transport-wide sequence numbers and arrival times a "
              "Reader records for transport-cc feedback (Reader.set_twcc).",
    .tp_new = PyType_GenericNew,
    .tp_methods = Arrivals_methods,
    .tp_members = Arrivals_members,
    .tp_getset = Arrivals_getset,
};
