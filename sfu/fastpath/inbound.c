/*
 * Inbound: a publisher's RTP packet, from the Reader to the subscribers' Legs, in C.
 *
 * Without it every received packet runs ~10 Python frames before the C fan-out: the
 * connection's on_rtp, aiortc's RTP router, the receiver's handler, Forwarder.tap,
 * and the receive-side accounting of sfu.aiortc_hooks._account_rtp (aiortc's
 * StreamStatistics and NackGenerator, the REMB estimator, the active-SSRC time).
 * An Inbound is the Reader's on_rtp callback for one DTLS transport; it holds a
 * Track per published SSRC (registered by sfu.forwarder once that SSRC is known) and
 * takes the packet itself when nothing about it needs a decision:
 *
 * - the Track is armed for this SSRC, not paused, and the payload type is the one the
 *   legs were negotiated for (not RTX, RED, FEC), with a payload of 1..max bytes;
 * - for a simulcast layer (Track.keys): the packet does not start a VP8 key frame. Key
 *   frames are where legs switch layers, and the frame size that picks a layer is read
 *   from them; Python does both (sfu.forwarder.Forwarder._at_keyframe), once per key
 *   frame, and the layer's other packets stay here;
 * - the receiver is enabled, its stream statistics already exist, and the packet is
 *   newer than the last (no reordering), and, where NACKs are negotiated, it is exactly
 *   the next sequence number (so no NACK can be due; packets still missing from an
 *   earlier loss are aged here as NackGenerator.truncate does, their repair, RTX, comes
 *   through Python).
 *
 * Then it does what the Python path does, with the same results: aiortc's
 * StreamStatistics fields (the same object, updated in its __dict__ as
 * StreamStatistics.add would), the NackGenerator's max_seq, the bandwidth estimator
 * (sfu._bwe, called directly), the active-SSRC time every 100 ms, the room's and the
 * track's received counters (Track.received, for the allocator's rates) and arrival time
 * (Track.last_ns: whether a layer is flowing), the fan-out to every ready Leg (leg.c).
 *
 * An RTX SSRC (Track.rtx, registered once its media stream is known) forwards nothing
 * from here: its padding (padding-only packets, and libwebrtc's payload padding, packets
 * the stream already has) is accounted and dropped as the Python path would; a repair of
 * a missing packet goes to Python, which forwards it.
 *
 * Crosses into Python:
 * - any other packet: the fallback (the Python on_rtp it replaced), untouched; so the
 *   first packets of an SSRC (a layer is bound by its rtp-stream-id there, and registers
 *   its Track), a layer's key frames, repairs (RTX bound by repaired-rtp-stream-id), gaps;
 * - an estimate the estimator returns: on_remb(estimate, arrival_ms) (throttle, send);
 * - legs the fan-out could not send to: on_slow(packet, [(index, result)]), as
 *   Forwarder.tap hands them to Leg.push;
 * - every 100 ms per SSRC: clock.current_datetime() for getSynchronizationSources.
 */
#include "fastpath.h"

#include <structmember.h>

#define ACTIVE_SSRC_REFRESH_MS 100 /* as sfu.aiortc_hooks._ACTIVE_SSRC_REFRESH_MS */

static PyObject *s_enabled, *s_base_seq, *s_max_seq, *s_cycles, *s_packets_received,
    *s_clockrate, *s_jitter_q4, *s_last_arrival, *s_last_timestamp, *s_missing;

/* ---------------------------------------------------------------------------------- */
/* Track: one published SSRC and what its packets update.                              */

typedef struct {
    PyObject_HEAD
    /* forwarding (set by sfu.forwarder.Forwarder) */
    Meter *meter;
    PyObject *legs;    /* the Forwarder's list of C legs, shared */
    PyObject *on_slow; /* on_slow(packet, slow) */
    int payload_type;  /* -1: none yet */
    int paused;
    int max_payload;
    /* A simulcast layer: the first packet of each VP8 key frame goes to Python, which
     * moves legs switching to this layer and reads the frame size (0: no such check). */
    int keys;
    /* A stream's RTX SSRC: nothing is forwarded from here; padding (empty, or a packet
     * the stream already has: libwebrtc's payload padding) is accounted and dropped, a
     * repair of a missing packet goes to Python. nack is the media stream's generator. */
    int rtx;
    long long last_ns; /* arrival of the last packet, either path (Forwarder.last_ns) */
    /* receive accounting (set by sfu.aiortc_hooks, NULL: none) */
    PyObject *receiver;
    PyObject *streams;     /* aiortc's ssrc -> StreamStatistics */
    PyObject *nack;        /* aiortc's NackGenerator, or NULL */
    PyObject *active_ssrc; /* aiortc's ssrc -> datetime */
    PyObject *now_datetime;
    PyObject *estimate; /* the estimator's bound add(), or NULL */
    PyObject *on_remb;
    long long active_until;
    /* The oldest missing sequence number at the last walk of nack.missing (valid if
     * nack_oldest_ok): nothing can age out before the history passes it (nack_truncate). */
    int nack_oldest_ok;
    uint16_t nack_oldest;
    unsigned long long fast, slow;
    unsigned long long payload_bytes; /* of the packets taken here */
} Track;

static int Track_traverse(Track *self, visitproc visit, void *arg)
{
    Py_VISIT(self->meter);
    Py_VISIT(self->legs);
    Py_VISIT(self->on_slow);
    Py_VISIT(self->receiver);
    Py_VISIT(self->streams);
    Py_VISIT(self->nack);
    Py_VISIT(self->active_ssrc);
    Py_VISIT(self->now_datetime);
    Py_VISIT(self->estimate);
    Py_VISIT(self->on_remb);
    return 0;
}

static void Track_clear_account(Track *self)
{
    Py_CLEAR(self->receiver);
    Py_CLEAR(self->streams);
    Py_CLEAR(self->nack);
    Py_CLEAR(self->active_ssrc);
    Py_CLEAR(self->now_datetime);
    Py_CLEAR(self->estimate);
    Py_CLEAR(self->on_remb);
}

static int Track_clear(Track *self)
{
    Py_CLEAR(self->meter);
    Py_CLEAR(self->legs);
    Py_CLEAR(self->on_slow);
    Track_clear_account(self);
    return 0;
}

static void Track_dealloc(Track *self)
{
    PyObject_GC_UnTrack(self);
    Track_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Track_init(Track *self, PyObject *args, PyObject *kwds)
{
    /* Track(meter, legs, on_slow, max_payload) */
    PyObject *meter, *legs, *on_slow;
    int max_payload;
    if (!PyArg_ParseTuple(args, "O!O!Oi", &MeterType, &meter, &PyList_Type, &legs, &on_slow,
                          &max_payload))
        return -1;
    Py_XSETREF(self->meter, (Meter *)Py_NewRef(meter));
    Py_XSETREF(self->legs, Py_NewRef(legs));
    Py_XSETREF(self->on_slow, Py_NewRef(on_slow));
    self->max_payload = max_payload;
    self->payload_type = -1;
    return 0;
}

static PyObject *Track_account(Track *self, PyObject *args)
{
    /* account(receiver, streams, nack, active_ssrc, now_datetime, estimate, on_remb):
     * what the receive-side accounting of this track's receiver updates; nack and
     * estimate may be None. */
    PyObject *receiver, *streams, *nack, *active, *now, *estimate, *on_remb;
    if (!PyArg_ParseTuple(args, "OO!OO!OOO", &receiver, &PyDict_Type, &streams, &nack,
                          &PyDict_Type, &active, &now, &estimate, &on_remb))
        return NULL;
    Track_clear_account(self);
    self->receiver = Py_NewRef(receiver);
    self->streams = Py_NewRef(streams);
    self->nack = nack == Py_None ? NULL : Py_NewRef(nack);
    self->active_ssrc = Py_NewRef(active);
    self->now_datetime = Py_NewRef(now);
    self->estimate = estimate == Py_None ? NULL : Py_NewRef(estimate);
    self->on_remb = Py_NewRef(on_remb);
    self->active_until = 0;
    self->nack_oldest_ok = 0;
    Py_RETURN_NONE;
}

static PyObject *Track_get_payload_type(Track *self, void *closure)
{
    if (self->payload_type < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->payload_type);
}

static int Track_set_payload_type(Track *self, PyObject *value, void *closure)
{
    if (!value || value == Py_None) {
        self->payload_type = -1;
        return 0;
    }
    long pt = PyLong_AsLong(value);
    if (pt == -1 && PyErr_Occurred())
        return -1;
    self->payload_type = (pt >= 0 && pt <= 127) ? (int)pt : -1;
    return 0;
}

static PyObject *Track_get_paused(Track *self, void *closure)
{
    return PyBool_FromLong(self->paused);
}

static int Track_set_paused(Track *self, PyObject *value, void *closure)
{
    int v = value ? PyObject_IsTrue(value) : 0;
    if (v < 0)
        return -1;
    self->paused = v;
    return 0;
}

static PyObject *Track_get_keys(Track *self, void *closure)
{
    return PyBool_FromLong(self->keys);
}

static int Track_set_keys(Track *self, PyObject *value, void *closure)
{
    int v = value ? PyObject_IsTrue(value) : 0;
    if (v < 0)
        return -1;
    self->keys = v;
    return 0;
}

static PyObject *Track_get_rtx(Track *self, void *closure)
{
    return PyBool_FromLong(self->rtx);
}

static int Track_set_rtx(Track *self, PyObject *value, void *closure)
{
    int v = value ? PyObject_IsTrue(value) : 0;
    if (v < 0)
        return -1;
    self->rtx = v;
    return 0;
}

static PyObject *Track_get_last_ns(Track *self, void *closure)
{
    return PyLong_FromLongLong(self->last_ns);
}

static int Track_set_last_ns(Track *self, PyObject *value, void *closure)
{
    long long v = value ? PyLong_AsLongLong(value) : 0;
    if (v == -1 && PyErr_Occurred())
        return -1;
    self->last_ns = v;
    return 0;
}

static PyObject *Track_get_counts(Track *self, void *closure)
{
    return Py_BuildValue("(KK)", self->fast, self->slow);
}

static PyObject *Track_get_received(Track *self, void *closure)
{
    return Py_BuildValue("(KK)", self->fast, self->payload_bytes);
}

static PyMethodDef Track_methods[] = {
    {"account", (PyCFunction)Track_account, METH_VARARGS,
     "account(receiver, streams, nack, active_ssrc, now_datetime, estimate, on_remb)"},
    {NULL},
};

static PyGetSetDef Track_getset[] = {
    {"payload_type", (getter)Track_get_payload_type, (setter)Track_set_payload_type,
     "the payload type the legs forward (None: nothing goes the C way)", NULL},
    {"paused", (getter)Track_get_paused, (setter)Track_set_paused, "forwarding paused", NULL},
    {"keys", (getter)Track_get_keys, (setter)Track_set_keys,
     "hand the first packet of every VP8 key frame to Python (a simulcast layer)", NULL},
    {"rtx", (getter)Track_get_rtx, (setter)Track_set_rtx,
     "an RTX SSRC: take its padding, hand repairs to Python", NULL},
    {"last_ns", (getter)Track_get_last_ns, (setter)Track_set_last_ns,
     "arrival (perf_counter_ns) of the last packet; Python's path sets it too", NULL},
    {"counts", (getter)Track_get_counts, NULL, "(packets taken in C, handed to Python)", NULL},
    {"received", (getter)Track_get_received, NULL, "(packets, payload bytes) taken in C", NULL},
    {NULL},
};

PyTypeObject TrackType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu._fastpath.Track",
    .tp_basicsize = sizeof(Track),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Track(meter, legs, on_slow, max_payload): one published SSRC, forwarded "
              "and accounted in C by an Inbound.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Track_init,
    .tp_dealloc = (destructor)Track_dealloc,
    .tp_traverse = (traverseproc)Track_traverse,
    .tp_clear = (inquiry)Track_clear,
    .tp_methods = Track_methods,
    .tp_getset = Track_getset,
};

/* ---------------------------------------------------------------------------------- */
/* the accounting, as sfu.aiortc_hooks._account_rtp does it for an in-order packet     */

static inline int uint16_gt(uint32_t a, uint32_t b)
{
    return (a > b && a - b < 0x8000) || (a < b && b - a > 0x8000);
}

/* An int attribute in an object's __dict__: 1 and *out, 0 if absent or None, -1 error. */
static int dict_ll(PyObject *d, PyObject *key, long long *out)
{
    PyObject *v = PyDict_GetItemWithError(d, key);
    if (!v)
        return PyErr_Occurred() ? -1 : 0;
    if (v == Py_None)
        return 0;
    *out = PyLong_AsLongLong(v);
    if (*out == -1 && PyErr_Occurred())
        return -1;
    return 1;
}

static int dict_set_ll(PyObject *d, PyObject *key, long long v)
{
    PyObject *o = PyLong_FromLongLong(v);
    if (!o)
        return -1;
    int r = PyDict_SetItem(d, key, o);
    Py_DECREF(o);
    return r;
}

/* The __dict__ of aiortc's StreamStatistics for ssrc, if it can take this packet here
 * (borrowed); NULL without an exception otherwise. */
static PyObject *stream_for(Track *t, PyObject *ssrc_key, uint32_t seq, long long *max_seq)
{
    PyObject *stream = PyDict_GetItemWithError(t->streams, ssrc_key);
    if (!stream)
        return NULL;
    PyObject **dp = _PyObject_GetDictPtr(stream);
    if (!dp || !*dp)
        return NULL;
    PyObject *d = *dp;
    long long base;
    int r1 = dict_ll(d, s_base_seq, &base), r2 = dict_ll(d, s_max_seq, max_seq);
    if (r1 <= 0 || r2 <= 0 || !uint16_gt(seq, (uint32_t)*max_seq))
        return NULL;
    return d;
}

static int nack_allows(Track *t, uint32_t seq)
{
    if (!t->nack)
        return 1;
    PyObject **dp = _PyObject_GetDictPtr(t->nack);
    if (!dp || !*dp)
        return 0;
    long long max_seq;
    if (dict_ll(*dp, s_max_seq, &max_seq) <= 0 || (uint32_t)((max_seq + 1) & 0xFFFF) != seq)
        return 0;
    /* Packets still missing (a loss not yet repaired) do not stop the next one: it adds
     * nothing to the set, and nack_truncate() ages it as NackGenerator.add would. */
    PyObject *missing = PyDict_GetItemWithError(*dp, s_missing);
    return missing && PySet_Check(missing);
}

/* NackGenerator.truncate once max_seq is seq: forget the missing packets more than
 * FP_NACK_HISTORY behind it (aiortc 1.16). 0, or -1 with an exception set.
 * Walking the set costs a list, an iterator and a PyLong read per entry, and on a lossy
 * uplink that is never repaired it would run for every packet taken here. It runs only
 * once the history passes the oldest entry of the last walk: aiortc adds only packets
 * newer than max_seq to the set (NackGenerator.add), so nothing older can appear, and
 * removals (repairs) only make the walk early, never late. */
static int nack_truncate(Track *t, PyObject *d, uint32_t seq)
{
    PyObject *missing = PyDict_GetItemWithError(d, s_missing);
    if (!missing)
        return PyErr_Occurred() ? -1 : 0;
    if (!PySet_Check(missing) || PySet_GET_SIZE(missing) == 0)
        return 0;
    uint32_t min_seq = (seq - FP_NACK_HISTORY) & 0xFFFF;
    if (t->nack_oldest_ok && !uint16_gt(min_seq, t->nack_oldest))
        return 0;
    t->nack_oldest_ok = 0;
    uint32_t oldest = 0, oldest_age = 0;
    int kept = 0, cacheable = 1;
    PyObject *old = PyList_New(0), *it = old ? PyObject_GetIter(missing) : NULL, *item;
    if (!it) {
        Py_XDECREF(old);
        return -1;
    }
    while ((item = PyIter_Next(it))) {
        long v = PyLong_AsLong(item);
        int stale = v >= 0 && uint16_gt(min_seq, (uint32_t)v);
        int r = (v == -1 && PyErr_Occurred()) ? -1 : stale ? PyList_Append(old, item) : 0;
        if (!stale && v >= 0) {
            uint32_t age = (seq - (uint32_t)v) & 0xFFFF;
            if (age >= 0x8000) /* not behind max_seq (never from NackGenerator.add) */
                cacheable = 0;
            else if (!kept || age > oldest_age) {
                oldest = (uint32_t)v & 0xFFFF;
                oldest_age = age;
            }
            kept = 1;
        }
        Py_DECREF(item);
        if (r < 0)
            break;
    }
    Py_DECREF(it);
    for (Py_ssize_t i = 0; !PyErr_Occurred() && i < PyList_GET_SIZE(old); i++)
        PySet_Discard(missing, PyList_GET_ITEM(old, i));
    Py_DECREF(old);
    if (PyErr_Occurred())
        return -1;
    if (kept && cacheable) {
        t->nack_oldest = (uint16_t)oldest;
        t->nack_oldest_ok = 1;
    }
    return 0;
}

/* StreamStatistics.add for an in-order packet (aiortc 1.16). */
static int stream_add(PyObject *d, long long max_seq, uint32_t seq, uint32_t ts)
{
    long long received, cycles = 0, clockrate, jq4 = 0, last_arrival = 0, last_ts = 0;
    if (dict_ll(d, s_packets_received, &received) <= 0 || dict_ll(d, s_clockrate, &clockrate) <= 0)
        return -1;
    if (dict_ll(d, s_cycles, &cycles) < 0 || dict_ll(d, s_jitter_q4, &jq4) < 0)
        return -1;
    int have_arrival = dict_ll(d, s_last_arrival, &last_arrival);
    int have_ts = dict_ll(d, s_last_timestamp, &last_ts);
    if (have_arrival < 0 || have_ts < 0)
        return -1;
    received++;
    /* int(time.time() * clockrate), with time.time()'s own double */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double secs = (double)((long long)now.tv_sec * 1000000000LL + now.tv_nsec) / 1e9;
    long long arrival = (long long)(secs * (double)clockrate);
    if (seq < (uint32_t)max_seq)
        cycles += 1 << 16;
    if (have_ts && have_arrival && (long long)ts != last_ts && received > 1) {
        long long diff = (arrival - last_arrival) - ((long long)ts - last_ts);
        if (diff < 0)
            diff = -diff;
        jq4 += diff - ((jq4 + 8) >> 4);
    }
    if (dict_set_ll(d, s_packets_received, received) < 0 || dict_set_ll(d, s_cycles, cycles) < 0 ||
        dict_set_ll(d, s_max_seq, seq) < 0 || dict_set_ll(d, s_jitter_q4, jq4) < 0 ||
        dict_set_ll(d, s_last_arrival, arrival) < 0 || dict_set_ll(d, s_last_timestamp, ts) < 0)
        return -1;
    return 0;
}

/* ---------------------------------------------------------------------------------- */
/* Inbound: the Reader's on_rtp for one DTLS transport.                                */

typedef struct {
    PyObject_HEAD
    PyObject *fallback; /* the Python on_rtp(packet, arrival_ms) */
    PyObject *tracks;   /* ssrc -> Track */
} Inbound;

static int Inbound_traverse(Inbound *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fallback);
    Py_VISIT(self->tracks);
    return 0;
}

static int Inbound_clear(Inbound *self)
{
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->tracks);
    return 0;
}

static void Inbound_dealloc(Inbound *self)
{
    PyObject_GC_UnTrack(self);
    Inbound_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Inbound_init(Inbound *self, PyObject *args, PyObject *kwds)
{
    /* Inbound(fallback) */
    PyObject *fallback;
    if (!PyArg_ParseTuple(args, "O", &fallback))
        return -1;
    Py_XSETREF(self->fallback, Py_NewRef(fallback));
    if (!self->tracks && !(self->tracks = PyDict_New()))
        return -1;
    return 0;
}

static int account_rx(Track *t, Packet *p, PyObject *ssrc_key, PyObject *ms, Py_ssize_t plen);
static int Inbound_take_rtx(Track *t, Packet *p, PyObject *ssrc_key, PyObject *ms);

/* 1: taken here, 0: not for this path (nothing changed), -1: error */
static int Inbound_take(Track *t, Packet *p, PyObject *ssrc_key, PyObject *ms)
{
    if (!t->meter || !t->legs || !t->on_slow || !p->payload)
        return 0; /* a Track made without __init__ */
    if (t->rtx)
        return Inbound_take_rtx(t, p, ssrc_key, ms);
    Py_ssize_t plen = PyBytes_GET_SIZE(p->payload);
    if (t->paused || (int)p->payload_type != t->payload_type || plen < 1 ||
        plen > t->max_payload || !t->meter)
        return 0;
    if (t->keys && fp_vp8_keyframe_start((const unsigned char *)PyBytes_AS_STRING(p->payload),
                                         plen))
        return 0; /* a layer's key frame: Python decides who moves to this layer */
    uint32_t seq = p->sequence_number;
    PyObject *stream = NULL;
    long long max_seq = 0;
    if (t->receiver) {
        PyObject *enabled = PyObject_GetAttr(t->receiver, s_enabled);
        if (!enabled)
            return -1;
        int on = PyObject_IsTrue(enabled);
        Py_DECREF(enabled);
        if (on <= 0)
            return on;
        stream = stream_for(t, ssrc_key, seq, &max_seq);
        if (!stream)
            return PyErr_Occurred() ? -1 : 0;
        if (!nack_allows(t, seq))
            return PyErr_Occurred() ? -1 : 0;
    }
    /* Forwarder.tap: count, fan out, hand what did not go to Python */
    t->last_ns = p->arrival_ns;
    t->meter->packets_in++;
    t->meter->bytes_in += (unsigned long long)plen;
    t->payload_bytes += (unsigned long long)plen;
    PyObject *slow = fp_fanout(t->legs, p->payload, p->marker, seq, p->timestamp, p->ssrc,
                               p->arrival_ns);
    if (!slow)
        return -1;
    if (slow != Py_None) {
        PyObject *r = PyObject_CallFunctionObjArgs(t->on_slow, (PyObject *)p, slow, NULL);
        Py_DECREF(slow);
        if (!r)
            return -1;
        Py_DECREF(r);
    } else {
        Py_DECREF(slow);
    }
    if (!t->receiver)
        return 1;
    if (account_rx(t, p, ssrc_key, ms, plen) < 0)
        return -1;
    if (t->nack) {
        PyObject **dp = _PyObject_GetDictPtr(t->nack);
        if (dp && *dp && (dict_set_ll(*dp, s_max_seq, seq) < 0 || nack_truncate(t, *dp, seq) < 0))
            return -1;
    }
    return 1;
}

/* _account_rtp for a packet taken here: estimator, active SSRC, statistics (NACK state:
 * the caller's). 0, or -1 with an exception set. */
static int account_rx(Track *t, Packet *p, PyObject *ssrc_key, PyObject *ms, Py_ssize_t plen)
{
    uint32_t seq = p->sequence_number;
    long long max_seq = 0;
    long long arrival_ms = PyLong_AsLongLong(ms);
    if (arrival_ms == -1 && PyErr_Occurred())
        return -1;
    if (t->estimate && p->abs_send_time) {
        PyObject *size = PyLong_FromSsize_t(plen + p->padding_size);
        PyObject *argv[4] = {ms, p->abs_send_time, size, NULL};
        PyObject *ssrc_o = size ? PyLong_FromUnsignedLong(p->ssrc) : NULL;
        argv[3] = ssrc_o;
        PyObject *remb = ssrc_o ? PyObject_Vectorcall(t->estimate, argv, 4, NULL) : NULL;
        Py_XDECREF(size);
        Py_XDECREF(ssrc_o);
        if (!remb)
            return -1;
        if (remb != Py_None) {
            PyObject *r = PyObject_CallFunctionObjArgs(t->on_remb, remb, ms, NULL);
            Py_DECREF(remb);
            if (!r)
                return -1;
            Py_DECREF(r);
        } else {
            Py_DECREF(remb);
        }
    }
    if (arrival_ms >= t->active_until) {
        PyObject *when = PyObject_CallNoArgs(t->now_datetime);
        if (!when || PyDict_SetItem(t->active_ssrc, ssrc_key, when) < 0) {
            Py_XDECREF(when);
            return -1;
        }
        Py_DECREF(when);
        t->active_until = arrival_ms + ACTIVE_SSRC_REFRESH_MS;
    }
    /* the stream's dict may have changed hands during the calls above: look again */
    PyObject *stream = stream_for(t, ssrc_key, seq, &max_seq);
    if (stream && stream_add(stream, max_seq, seq, p->timestamp) < 0)
        return -1;
    return PyErr_Occurred() ? -1 : 0;
}

/* A packet on a Track.rtx: 1 taken (padding, accounted and dropped as Forwarder.tap and
 * _account_rtp would), 0 for Python (a repair, or anything unusual), -1 error. */
static int Inbound_take_rtx(Track *t, Packet *p, PyObject *ssrc_key, PyObject *ms)
{
    Py_ssize_t plen = PyBytes_GET_SIZE(p->payload);
    if (t->paused || !t->receiver || (int)p->payload_type != t->payload_type || plen == 1)
        return 0;
    if (plen >= 2) {
        /* payload padding only: the original is not missing and not newer than the
         * newest packet of the stream (hooks.repairs_loss; NackGenerator.add then
         * changes nothing) */
        if (!t->nack)
            return 0;
        PyObject **dp = _PyObject_GetDictPtr(t->nack);
        long long max_seq;
        if (!dp || !*dp || dict_ll(*dp, s_max_seq, &max_seq) <= 0)
            return PyErr_Occurred() ? -1 : 0;
        const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(p->payload);
        uint32_t osn = (uint32_t)b[0] << 8 | b[1];
        if (uint16_gt(osn, (uint32_t)max_seq))
            return 0;
        PyObject *missing = PyDict_GetItemWithError(*dp, s_missing);
        if (!missing || !PySet_Check(missing))
            return PyErr_Occurred() ? -1 : 0;
        PyObject *o = PyLong_FromUnsignedLong(osn);
        int repair = o ? PySet_Contains(missing, o) : -1;
        Py_XDECREF(o);
        if (repair != 0)
            return repair < 0 ? -1 : 0; /* a repair: Python forwards it */
    }
    PyObject *enabled = PyObject_GetAttr(t->receiver, s_enabled);
    if (!enabled)
        return -1;
    int on = PyObject_IsTrue(enabled);
    Py_DECREF(enabled);
    if (on <= 0)
        return on;
    long long max_seq = 0;
    if (!stream_for(t, ssrc_key, p->sequence_number, &max_seq))
        return PyErr_Occurred() ? -1 : 0;
    return account_rx(t, p, ssrc_key, ms, plen) < 0 ? -1 : 1;
}

static PyObject *Inbound_call(Inbound *self, PyObject *args, PyObject *kwds)
{
    PyObject *packet, *ms;
    if (!self->fallback || !self->tracks) {
        PyErr_SetString(PyExc_RuntimeError, "Inbound was not initialised");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Inbound", 2, 2, &packet, &ms))
        return NULL;
    if (Py_TYPE(packet) == &PacketType && PyDict_GET_SIZE(self->tracks)) {
        Packet *p = (Packet *)packet;
        PyObject *key = PyLong_FromUnsignedLong(p->ssrc);
        if (!key)
            return NULL;
        PyObject *found = PyDict_GetItemWithError(self->tracks, key);
        if (found && Py_TYPE(found) == &TrackType) {
            Track *t = (Track *)Py_NewRef(found);
            int taken = Inbound_take(t, p, key, ms);
            if (taken > 0)
                t->fast++;
            else if (taken == 0)
                t->slow++;
            Py_DECREF(t);
            Py_DECREF(key);
            if (taken < 0)
                return NULL;
            if (taken > 0)
                Py_RETURN_NONE;
        } else {
            Py_DECREF(key);
            if (PyErr_Occurred())
                return NULL;
        }
    }
    PyObject *callback = Py_NewRef(self->fallback); /* the call may replace it */
    PyObject *r = PyObject_Call(callback, args, kwds);
    Py_DECREF(callback);
    return r;
}

static PyObject *Inbound_set_fallback(Inbound *self, PyObject *fallback)
{
    Py_XSETREF(self->fallback, Py_NewRef(fallback));
    Py_RETURN_NONE;
}

static PyMemberDef Inbound_members[] = {
    {"tracks", T_OBJECT, offsetof(Inbound, tracks), READONLY,
     "ssrc -> Track: packets of these SSRCs may be taken in C"},
    {NULL},
};

static PyMethodDef Inbound_methods[] = {
    {"set_fallback", (PyCFunction)Inbound_set_fallback, METH_O,
     "set_fallback(on_rtp): where every packet not taken here goes"},
    {NULL},
};

PyTypeObject InboundType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu._fastpath.Inbound",
    .tp_basicsize = sizeof(Inbound),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Inbound(fallback): a Reader's on_rtp(packet, arrival_ms) that forwards and "
              "accounts the packets of its tracks in C and hands the rest to fallback.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Inbound_init,
    .tp_dealloc = (destructor)Inbound_dealloc,
    .tp_traverse = (traverseproc)Inbound_traverse,
    .tp_clear = (inquiry)Inbound_clear,
    .tp_call = (ternaryfunc)Inbound_call,
    .tp_members = Inbound_members,
    .tp_methods = Inbound_methods,
};

int fp_inbound_init_names(void)
{
    s_enabled = PyUnicode_InternFromString("_enabled");
    s_base_seq = PyUnicode_InternFromString("base_seq");
    s_max_seq = PyUnicode_InternFromString("max_seq");
    s_cycles = PyUnicode_InternFromString("cycles");
    s_packets_received = PyUnicode_InternFromString("packets_received");
    s_clockrate = PyUnicode_InternFromString("_clockrate");
    s_jitter_q4 = PyUnicode_InternFromString("_jitter_q4");
    s_last_arrival = PyUnicode_InternFromString("_last_arrival");
    s_last_timestamp = PyUnicode_InternFromString("_last_timestamp");
    s_missing = PyUnicode_InternFromString("missing");
    return (s_enabled && s_base_seq && s_max_seq && s_cycles && s_packets_received &&
            s_clockrate && s_jitter_q4 && s_last_arrival && s_last_timestamp && s_missing)
               ? 0
               : -1;
}
