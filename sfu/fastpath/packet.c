/*
 * Packet: a decrypted RTP packet, parsed once, readable like aiortc's RtpPacket.
 *
 * Crosses into Python: one Packet object per received RTP packet, made by reader.c and
 * passed to the connection's on_rtp (sfu.aiortc_hooks), which routes it to the
 * forwarder; Python reads its attributes (payload as bytes, header fields as ints, the
 * abs-send-time, MID and the two stream-id extensions: simulcast layers and their RTX,
 * sfu/simulcast.py). parse_rtp() is exposed for the tests.
 */
#include "fastpath.h"

#include <structmember.h>


static void Packet_dealloc(Packet *self)
{
    Py_XDECREF(self->payload);
    Py_XDECREF(self->abs_send_time);
    Py_XDECREF(self->mid);
    Py_XDECREF(self->rid);
    Py_XDECREF(self->rrid);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Packet_get_self(PyObject *self, void *closure)
{
    /* packet.extensions is the packet: it carries the extension attributes itself. */
    Py_INCREF(self);
    return self;
}

static PyObject *Packet_get_none(PyObject *self, void *closure)
{
    Py_RETURN_NONE; /* extensions this SFU does not read */
}

static PyObject *Packet_get_csrc(Packet *self, void *closure)
{
    PyObject *out = PyList_New(self->ncsrc);
    if (!out)
        return NULL;
    for (int i = 0; i < self->ncsrc; i++)
        PyList_SET_ITEM(out, i, PyLong_FromUnsignedLong(self->csrc[i]));
    return out;
}

static PyObject *Packet_get_version(PyObject *self, void *closure)
{
    return PyLong_FromLong(2);
}

static PyObject *Packet_repr(Packet *self)
{
    return PyUnicode_FromFormat("Packet(seq=%u, ts=%u, marker=%d, payload=%u, %zd bytes)",
                                self->sequence_number, self->timestamp, self->marker,
                                self->payload_type, PyBytes_GET_SIZE(self->payload));
}

static PyMemberDef Packet_members[] = {
    {"marker", T_INT, offsetof(Packet, marker), READONLY, NULL},
    {"payload_type", T_UINT, offsetof(Packet, payload_type), READONLY, NULL},
    {"sequence_number", T_UINT, offsetof(Packet, sequence_number), READONLY, NULL},
    {"timestamp", T_UINT, offsetof(Packet, timestamp), READONLY, NULL},
    {"ssrc", T_UINT, offsetof(Packet, ssrc), READONLY, NULL},
    {"padding_size", T_INT, offsetof(Packet, padding_size), READONLY, NULL},
    {"payload", T_OBJECT, offsetof(Packet, payload), READONLY, NULL},
    {"abs_send_time", T_OBJECT, offsetof(Packet, abs_send_time), READONLY, NULL},
    {"mid", T_OBJECT, offsetof(Packet, mid), READONLY, NULL},
    {"rtp_stream_id", T_OBJECT, offsetof(Packet, rid), READONLY, NULL},
    {"repaired_rtp_stream_id", T_OBJECT, offsetof(Packet, rrid), READONLY, NULL},
    {"arrival_ns", T_LONGLONG, offsetof(Packet, arrival_ns), 0,
     "perf_counter_ns() clock: when the kernel received the datagram (SO_TIMESTAMPNS; "
     "else when it was read), before SRTP"},
    {NULL},
};

static PyGetSetDef Packet_getset[] = {
    {"extensions", Packet_get_self, NULL, NULL, NULL},
    {"csrc", (getter)Packet_get_csrc, NULL, NULL, NULL},
    {"version", Packet_get_version, NULL, NULL, NULL},
    {"audio_level", Packet_get_none, NULL, NULL, NULL},
    {"transmission_offset", Packet_get_none, NULL, NULL, NULL},
    {"transport_sequence_number", Packet_get_none, NULL, NULL, NULL},
    {NULL},
};

PyTypeObject PacketType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu._fastpath.Packet",
    .tp_basicsize = sizeof(Packet),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A decrypted RTP packet, with the attributes of aiortc's RtpPacket that "
              "the SFU reads (packet.extensions is the packet itself).",
    .tp_dealloc = (destructor)Packet_dealloc,
    .tp_repr = (reprfunc)Packet_repr,
    .tp_members = Packet_members,
    .tp_getset = Packet_getset,
};

/* Parse a plain RTP packet (RFC 3550, RFC 8285 extensions); NULL if malformed (no
 * exception: such packets are dropped, as aiortc drops them). */
PyObject *fp_parse_rtp(const unsigned char *d, Py_ssize_t n, int abs_id, int mid_id,
                       int rid_id, int rrid_id, long long arrival_ns)
{
    if (n < 12 || (d[0] >> 6) != 2)
        return NULL;
    int cc = d[0] & 0x0F;
    Py_ssize_t pos = 12 + 4 * cc;
    if (n < pos)
        return NULL;
    long abs_send_time = -1;
    const unsigned char *mid = NULL, *rid = NULL, *rrid = NULL;
    int mid_len = 0, rid_len = 0, rrid_len = 0;
    if (d[0] & 0x10) {
        if (n < pos + 4)
            return NULL;
        unsigned int profile = d[pos] << 8 | d[pos + 1];
        Py_ssize_t xlen = 4 * (d[pos + 2] << 8 | d[pos + 3]);
        pos += 4;
        if (n < pos + xlen)
            return NULL;
        Py_ssize_t i = pos, end = pos + xlen;
        /* as aiortc's unpack_header_extensions: a zero byte is padding, a truncated
         * element makes the packet malformed; only 0xBEDE and 0x1000 carry elements */
        while ((profile == 0xBEDE || profile == 0x1000) && i < end) {
            if (d[i] == 0) {
                i++;
                continue;
            }
            int id, len;
            const unsigned char *value;
            if (profile == 0xBEDE) {
                id = d[i] >> 4;
                len = (d[i] & 0x0F) + 1;
                value = d + i + 1;
            } else {
                if (i + 2 > end)
                    return NULL;
                id = d[i];
                len = d[i + 1];
                value = d + i + 2;
            }
            if (value + len > d + end)
                return NULL;
            if (abs_id && id == abs_id) {
                if (len != 3)
                    return NULL; /* aiortc cannot read it either */
                abs_send_time = value[0] << 16 | value[1] << 8 | value[2];
            } else if (mid_id && id == mid_id) {
                mid = value;
                mid_len = len;
            } else if (rid_id && id == rid_id) {
                rid = value;
                rid_len = len;
            } else if (rrid_id && id == rrid_id) {
                rrid = value;
                rrid_len = len;
            }
            i = (value - d) + len;
        }
        pos = end;
    }
    int padding = 0;
    if (d[0] & 0x20) {
        padding = d[n - 1];
        if (!padding || padding > n - pos)
            return NULL;
    }
    Packet *p = PyObject_New(Packet, &PacketType);
    if (!p)
        return NULL;
    p->marker = d[1] >> 7;
    p->payload_type = d[1] & 0x7F;
    p->sequence_number = d[2] << 8 | d[3];
    p->timestamp = (uint32_t)d[4] << 24 | d[5] << 16 | d[6] << 8 | d[7];
    p->ssrc = (uint32_t)d[8] << 24 | d[9] << 16 | d[10] << 8 | d[11];
    p->padding_size = padding;
    p->ncsrc = cc;
    for (int c = 0; c < cc; c++) {
        const unsigned char *q = d + 12 + 4 * c;
        p->csrc[c] = (uint32_t)q[0] << 24 | q[1] << 16 | q[2] << 8 | q[3];
    }
    p->arrival_ns = arrival_ns;
    p->abs_send_time = NULL;
    p->mid = NULL;
    p->rid = NULL;
    p->rrid = NULL;
    p->payload = PyBytes_FromStringAndSize((const char *)d + pos, n - pos - padding);
    if (abs_send_time >= 0)
        p->abs_send_time = PyLong_FromLong(abs_send_time);
    if (mid)
        p->mid = PyUnicode_DecodeUTF8((const char *)mid, mid_len, NULL);
    if (rid)
        p->rid = PyUnicode_DecodeUTF8((const char *)rid, rid_len, NULL);
    if (rrid)
        p->rrid = PyUnicode_DecodeUTF8((const char *)rrid, rrid_len, NULL);
    if (!p->payload || (abs_send_time >= 0 && !p->abs_send_time) || (mid && !p->mid) ||
        (rid && !p->rid) || (rrid && !p->rrid)) {
        Py_DECREF(p);
        PyErr_Clear();
        return NULL;
    }
    return (PyObject *)p;
}

PyObject *fp_py_parse_rtp(PyObject *module, PyObject *args)
{
    /* parse_rtp(data, abs_send_time_id, mid_id[, rid_id, rrid_id]) -> Packet | None
     * (for tests) */
    Py_buffer data;
    int abs_id, mid_id, rid_id = 0, rrid_id = 0;
    if (!PyArg_ParseTuple(args, "y*ii|ii", &data, &abs_id, &mid_id, &rid_id, &rrid_id))
        return NULL;
    PyObject *p = fp_parse_rtp(data.buf, data.len, abs_id, mid_id, rid_id, rrid_id, 0);
    PyBuffer_Release(&data);
    if (!p)
        Py_RETURN_NONE;
    return p;
}

