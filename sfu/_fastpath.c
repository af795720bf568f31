/*
 * sfu._fastpath: the per-subscriber half of the forwarding hot path in C.
 *
 * For every forwarded RTP packet and every subscriber, the SFU rewrites the RTP
 * header (the subscriber's SSRC, payload type, sequence number and timestamp, the
 * subscriber's MID extension), keeps a copy for NACKs, SRTP-protects it and sends it.
 * Written in Python that is ~40 Python-level steps per packet and leg; here it is one
 * call. The semantics are those documented on sfu.forwarder.Leg, which owns a
 * `Leg` object of this module and keeps everything that is not per packet (key-frame
 * waits, queueing, feedback) in Python.
 *
 * SRTP: the packet is protected with the *same* libsrtp session aiortc negotiated over
 * DTLS. pylibsrtp wraps libsrtp with cffi and exports the C function pointers and the
 * session context (sfu.aiortc_hooks.fast_route reads them); we hold a reference to
 * the Python Session object so the context outlives every call that uses it.
 *
 * Sending: a non-blocking sendto() on the ICE pair's UDP socket. Before each send we
 * check that the DTLS transport is still connected and that the socket is still open
 * (its fileno() is not -1), so a closed connection can never send on a reused file
 * descriptor. When the socket would block, the rewritten packet is handed back to
 * Python, which queues it on asyncio's transport like any other write.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define MAX_BUCKETS 32
#define HISTORY 512
#define BUF_SIZE 2048
#define SRTP_TRAILER 144 /* pylibsrtp's SRTP_MAX_TRAILER_LEN */
#define MAX_EXT 64
#define NTP_EPOCH 2208988800ULL

typedef int (*srtp_fn)(void *ctx, void *hdr, int *len);

static PyObject *str_state, *str_fileno, *str_buffer_size;

static inline int64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline uint64_t ntp_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    uint64_t secs = (uint64_t)t.tv_sec + NTP_EPOCH;
    uint64_t frac = ((uint64_t)t.tv_nsec << 32) / 1000000000ULL;
    return (secs << 32) | frac;
}

/* ---------------------------------------------------------------------------------- */
/* Meter: a room's forwarded-packet counters and latency histogram.                    */

typedef struct {
    PyObject_HEAD
    int64_t bounds[MAX_BUCKETS];
    int nbounds;
    unsigned long long counts[MAX_BUCKETS + 1];
    unsigned long long total_ns;
    unsigned long long n;
    unsigned long long packets;
    unsigned long long bytes;
} Meter;

static inline void meter_observe(Meter *m, int64_t ns)
{
    if (ns < 0)
        ns = 0;
    int i = 0;
    while (i < m->nbounds && ns > m->bounds[i])
        i++;
    m->counts[i]++;
    m->total_ns += (unsigned long long)ns;
    m->n++;
}

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

static PyMethodDef Meter_methods[] = {
    {"observe", (PyCFunction)Meter_observe, METH_O, "Count one delay in nanoseconds."},
    {"sent", (PyCFunction)(void (*)(void))Meter_sent, METH_FASTCALL,
     "sent(nbytes, latency_ns): count one packet forwarded outside the C path."},
    {NULL},
};

static PyGetSetDef Meter_getset[] = {
    {"counts", (getter)Meter_get_counts, NULL, "per-bucket counts, the last is +Inf", NULL},
    {"bounds", (getter)Meter_get_bounds, NULL, "bucket upper bounds (ns)", NULL},
    {"total_ns", (getter)Meter_get_total_ns, NULL, "sum of observed delays (ns)", NULL},
    {"n", (getter)Meter_get_n, NULL, "number of observed delays", NULL},
    {"packets", (getter)Meter_get_packets, NULL, "packets forwarded", NULL},
    {"bytes", (getter)Meter_get_bytes, NULL, "bytes forwarded (RTP, before SRTP)", NULL},
    {NULL},
};

static PyTypeObject MeterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu._fastpath.Meter",
    .tp_basicsize = sizeof(Meter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Meter(bounds_ns): forwarded packets, bytes and a latency histogram.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Meter_init,
    .tp_methods = Meter_methods,
    .tp_getset = Meter_getset,
};

/* ---------------------------------------------------------------------------------- */
/* Leg: one forwarded track on one subscriber connection.                              */

typedef struct {
    PyObject_HEAD
    Meter *meter;
    /* what the subscriber negotiated */
    int configured;
    uint8_t first_byte, pt;
    uint32_t ssrc;
    uint32_t clock_rate;
    uint8_t ext[MAX_EXT];
    int ext_len;
    int abs_off; /* where in ext to stamp abs-send-time at send, 0: not at all */
    int ready;   /* set by Python: nothing queued or awaited, sends go out at once */
    /* rewriting state (see sfu.forwarder.Leg) */
    int have_in_ssrc;
    uint32_t in_ssrc;
    uint16_t seq_off;
    uint32_t ts_off;
    int rebase;
    uint16_t last_out_seq;
    uint32_t last_out_ts;
    int64_t last_out_time_ns; /* 0: never */
    /* The first output sequence number after the last rebase: a late packet (reordered,
     * or a repair) that would map below it would reuse a number, and an SRTP index,
     * already sent before the rebase, so it is dropped instead. */
    uint16_t floor;
    unsigned long long stale;
    PyObject *history[HISTORY];
    /* route: where and how to send */
    int routed;
    void *srtp_ctx;
    srtp_fn protect;
    PyObject *session; /* keeps srtp_ctx alive */
    PyObject *sock;
    PyObject *transport; /* asyncio's datagram transport on sock, or NULL */
    PyObject *dtls;
    PyObject *connected; /* the State the DTLS transport must be in */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    /* counters, read by Python to keep RTCP sender reports and getStats true */
    unsigned long long sr_packets, sr_octets, tx_packets, tx_bytes, errors;
    uint64_t sr_ntp;
    uint32_t sr_rtp_ts;
    unsigned char buf[BUF_SIZE];
} Leg;

static void Leg_clear_route_(Leg *self)
{
    self->routed = 0;
    self->srtp_ctx = NULL;
    self->protect = NULL;
    Py_CLEAR(self->session);
    Py_CLEAR(self->sock);
    Py_CLEAR(self->transport);
    Py_CLEAR(self->dtls);
    Py_CLEAR(self->connected);
}

static int Leg_traverse(Leg *self, visitproc visit, void *arg)
{
    Py_VISIT(self->meter);
    Py_VISIT(self->session);
    Py_VISIT(self->sock);
    Py_VISIT(self->transport);
    Py_VISIT(self->dtls);
    Py_VISIT(self->connected);
    return 0;
}

static int Leg_clear(Leg *self)
{
    Py_CLEAR(self->meter);
    Leg_clear_route_(self);
    for (int i = 0; i < HISTORY; i++)
        Py_CLEAR(self->history[i]);
    return 0;
}

static void Leg_dealloc(Leg *self)
{
    PyObject_GC_UnTrack(self);
    Leg_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Leg_init(Leg *self, PyObject *args, PyObject *kwds)
{
    /* Leg(meter, first_seq, first_ts): the random starting point of the output stream. */
    PyObject *meter;
    unsigned int seq, ts;
    if (!PyArg_ParseTuple(args, "O!II", &MeterType, &meter, &seq, &ts))
        return -1;
    Py_INCREF(meter);
    Py_XSETREF(self->meter, (Meter *)meter);
    self->last_out_seq = (uint16_t)seq;
    self->floor = (uint16_t)(seq + 1);
    self->last_out_ts = (uint32_t)ts;
    self->last_out_time_ns = 0;
    self->rebase = 1;
    self->have_in_ssrc = 0;
    self->clock_rate = 90000;
    self->first_byte = 0x80;
    return 0;
}

static PyObject *Leg_configure(Leg *self, PyObject *args)
{
    /* configure(payload_type, ssrc, clock_rate, ext[, abs_send_time_offset]): ext is the
     * ready header extension block (0xBEDE profile, length, elements) or b""; if an
     * offset is given, the 3 bytes there get the abs-send-time of each send (a
     * publisher, like the benchmark's; the SFU's legs never set it). */
    unsigned int pt, ssrc, clock_rate;
    int abs_off = 0;
    Py_buffer ext;
    if (!PyArg_ParseTuple(args, "IIIy*|i", &pt, &ssrc, &clock_rate, &ext, &abs_off))
        return NULL;
    if (pt > 127 || ext.len > MAX_EXT || ext.len % 4 || clock_rate == 0 || abs_off < 0 ||
        (abs_off && (abs_off < 5 || abs_off + 3 > ext.len))) {
        PyBuffer_Release(&ext);
        PyErr_SetString(PyExc_ValueError, "bad payload type, clock rate or extension block");
        return NULL;
    }
    self->pt = (uint8_t)pt;
    self->ssrc = ssrc;
    self->clock_rate = clock_rate;
    memcpy(self->ext, ext.buf, ext.len);
    self->ext_len = (int)ext.len;
    self->abs_off = abs_off;
    self->first_byte = ext.len ? 0x90 : 0x80;
    self->configured = 1;
    PyBuffer_Release(&ext);
    Py_RETURN_NONE;
}

static PyObject *Leg_rebase(Leg *self, PyObject *unused)
{
    self->rebase = 1;
    Py_RETURN_NONE;
}

static PyObject *Leg_set_route(Leg *self, PyObject *args)
{
    /* set_route(srtp_ctx, protect_fn, session, sock, host, port, dtls, connected[,
     *           transport]): transport is asyncio's on sock, whose pending writes a send
     *           must not overtake */
    unsigned long long ctx, fn;
    PyObject *session, *sock, *dtls, *connected, *transport = NULL;
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "KKOOsiOO|O", &ctx, &fn, &session, &sock, &host, &port, &dtls,
                          &connected, &transport))
        return NULL;
    if (!ctx || !fn || port <= 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "incomplete route");
        return NULL;
    }
    struct sockaddr_storage addr;
    socklen_t addrlen;
    memset(&addr, 0, sizeof(addr));
    struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        addrlen = sizeof(*a4);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        addrlen = sizeof(*a6);
    } else {
        PyErr_SetString(PyExc_ValueError, "remote host is not a numeric address");
        return NULL;
    }
    Leg_clear_route_(self);
    self->srtp_ctx = (void *)(uintptr_t)ctx;
    self->protect = (srtp_fn)(uintptr_t)fn;
    Py_INCREF(session);
    self->session = session;
    Py_INCREF(sock);
    self->sock = sock;
    if (transport && transport != Py_None) {
        Py_INCREF(transport);
        self->transport = transport;
    }
    Py_INCREF(dtls);
    self->dtls = dtls;
    Py_INCREF(connected);
    self->connected = connected;
    self->addr = addr;
    self->addrlen = addrlen;
    self->routed = 1;
    Py_RETURN_NONE;
}

static PyObject *Leg_clear_route(Leg *self, PyObject *unused)
{
    Leg_clear_route_(self);
    Py_RETURN_NONE;
}

/* Whether asyncio's transport for the route still buffers earlier writes (RTCP, queued
 * packets): a direct send would overtake them. Unknown counts as buffered. */
static int Leg_buffered(Leg *self)
{
    if (!self->transport)
        return 0;
    PyObject *size = PyObject_GetAttr(self->transport, str_buffer_size);
    if (!size) {
        PyErr_Clear();
        return 1;
    }
    int buffered = PyObject_IsTrue(size);
    Py_DECREF(size);
    if (buffered < 0) {
        PyErr_Clear();
        return 1;
    }
    return buffered;
}

/* The socket's fd while the route is usable, else -1 (and the route is dropped). */
static int Leg_route_fd(Leg *self)
{
    if (!self->routed)
        return -1;
    PyObject *state = PyObject_GetAttr(self->dtls, str_state);
    if (!state) {
        PyErr_Clear();
        Leg_clear_route_(self);
        return -1;
    }
    int ok = state == self->connected;
    Py_DECREF(state);
    if (!ok) {
        Leg_clear_route_(self);
        return -1;
    }
    PyObject *fdo = PyObject_CallMethodNoArgs(self->sock, str_fileno);
    if (!fdo) {
        PyErr_Clear();
        Leg_clear_route_(self);
        return -1;
    }
    long fd = PyLong_AsLong(fdo);
    Py_DECREF(fdo);
    if (fd < 0) {
        PyErr_Clear();
        Leg_clear_route_(self);
        return -1;
    }
    return (int)fd;
}

/* Rewrite into self->buf; returns the packet length, 0 for a packet to drop (stale), or
 * -1 with an exception set. */
static Py_ssize_t Leg_rewrite_into(Leg *self, PyObject *payload, int marker, uint32_t seq,
                                   uint32_t ts, uint32_t ssrc, uint32_t *out_ts_p)
{
    if (!PyBytes_Check(payload)) {
        PyErr_SetString(PyExc_TypeError, "payload must be bytes");
        return -1;
    }
    Py_ssize_t plen = PyBytes_GET_SIZE(payload);
    Py_ssize_t len = 12 + self->ext_len + plen;
    if (len + SRTP_TRAILER > BUF_SIZE) {
        PyErr_SetString(PyExc_ValueError, "packet is too long");
        return -1;
    }
    int64_t now = mono_ns();
    if (!self->have_in_ssrc || ssrc != self->in_ssrc || self->rebase) {
        if (!self->have_in_ssrc || ssrc != self->in_ssrc) {
            /* A new source: continue the timestamps from the last one sent plus the
             * wall-clock time since, so the subscriber's jitter buffer sees no jump. */
            uint32_t step = 1;
            if (self->last_out_time_ns) {
                double s = (double)(now - self->last_out_time_ns) / 1e9 * self->clock_rate;
                if (s > 1.0)
                    step = s > 4294967295.0 ? 0xFFFFFFFFu : (uint32_t)s;
            }
            self->ts_off = self->last_out_ts + step - ts;
            self->in_ssrc = ssrc;
            self->have_in_ssrc = 1;
        }
        self->seq_off = (uint16_t)(self->last_out_seq + 1 - seq);
        self->floor = (uint16_t)(self->last_out_seq + 1);
        self->rebase = 0;
    }
    uint16_t out_seq = (uint16_t)(seq + self->seq_off);
    uint32_t out_ts = ts + self->ts_off;
    if ((int16_t)(uint16_t)(out_seq - self->floor) < 0) {
        self->stale++;
        return 0; /* older than the rebase point: its number may already be taken */
    }
    if ((uint16_t)(out_seq - self->last_out_seq) < 0x8000) { /* newer than the last sent */
        self->last_out_seq = out_seq;
        self->last_out_ts = out_ts;
        self->last_out_time_ns = now;
        if ((uint16_t)(out_seq - self->floor) > 0x4000) /* keep the comparison in range */
            self->floor = (uint16_t)(out_seq - 0x4000);
    }
    unsigned char *b = self->buf;
    b[0] = self->first_byte;
    b[1] = (uint8_t)((marker ? 0x80 : 0) | self->pt);
    b[2] = out_seq >> 8;
    b[3] = out_seq & 0xFF;
    b[4] = out_ts >> 24;
    b[5] = (out_ts >> 16) & 0xFF;
    b[6] = (out_ts >> 8) & 0xFF;
    b[7] = out_ts & 0xFF;
    b[8] = self->ssrc >> 24;
    b[9] = (self->ssrc >> 16) & 0xFF;
    b[10] = (self->ssrc >> 8) & 0xFF;
    b[11] = self->ssrc & 0xFF;
    memcpy(b + 12, self->ext, self->ext_len);
    if (self->abs_off) {
        /* abs-send-time: NTP time in 6.18 fixed point, 24 bits */
        uint32_t abs = (uint32_t)(ntp_now() >> 14) & 0xFFFFFF;
        unsigned char *a = b + 12 + self->abs_off;
        a[0] = abs >> 16;
        a[1] = (abs >> 8) & 0xFF;
        a[2] = abs & 0xFF;
    }
    memcpy(b + 12 + self->ext_len, PyBytes_AS_STRING(payload), plen);
    *out_ts_p = out_ts;
    return len;
}

static int parse_packet_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                             int *marker, uint32_t *seq, uint32_t *ts, uint32_t *ssrc)
{
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, "(payload, marker, seq, ts, ssrc[, t_in_ns])");
        return -1;
    }
    *marker = PyObject_IsTrue(args[1]);
    *seq = (uint32_t)PyLong_AsUnsignedLongMask(args[2]);
    *ts = (uint32_t)PyLong_AsUnsignedLongMask(args[3]);
    *ssrc = (uint32_t)PyLong_AsUnsignedLongMask(args[4]);
    if (*marker < 0 || PyErr_Occurred())
        return -1;
    return 0;
}

/* Keep the unprotected packet for NACKs; returns a new reference. */
static PyObject *Leg_remember(Leg *self, Py_ssize_t len)
{
    PyObject *data = PyBytes_FromStringAndSize((const char *)self->buf, len);
    if (!data)
        return NULL;
    uint16_t seq = (uint16_t)(self->buf[2] << 8 | self->buf[3]);
    Py_INCREF(data);
    Py_XSETREF(self->history[seq % HISTORY], data);
    return data;
}

static PyObject *Leg_rewrite(Leg *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* rewrite(payload, marker, seq, ts, ssrc) -> (packet, out_ts) without sending, or
     * None for a packet older than the last rebase (drop it). */
    int marker;
    uint32_t seq, ts, ssrc, out_ts;
    if (parse_packet_args(args, nargs, 5, &marker, &seq, &ts, &ssrc) < 0)
        return NULL;
    Py_ssize_t len = Leg_rewrite_into(self, args[0], marker, seq, ts, ssrc, &out_ts);
    if (len < 0)
        return NULL;
    if (len == 0)
        Py_RETURN_NONE;
    PyObject *data = Leg_remember(self, len);
    if (!data)
        return NULL;
    return Py_BuildValue("(NI)", data, out_ts);
}

/* Rewrite, remember, protect and send one packet; see Leg.send for the result. */
static PyObject *leg_send(Leg *self, PyObject *payload, int marker, uint32_t seq, uint32_t ts,
                          uint32_t ssrc, long long t_in)
{
    uint32_t out_ts;
    if (!self->configured || !self->meter)
        Py_RETURN_FALSE;
    int fd = Leg_route_fd(self);
    if (fd < 0)
        Py_RETURN_FALSE;
    Py_ssize_t len = Leg_rewrite_into(self, payload, marker, seq, ts, ssrc, &out_ts);
    if (len < 0)
        return NULL;
    if (len == 0)
        Py_RETURN_NONE; /* stale: dropped */
    PyObject *data = Leg_remember(self, len); /* may run the GC, hence Python code */
    if (!data)
        return NULL;
    if (!self->routed || Leg_buffered(self))
        return data; /* the route went, or asyncio holds earlier writes: queue behind */
    /* no Python code runs from here to the end: the route stays as checked */
    int plen = (int)len;
    if (self->protect(self->srtp_ctx, self->buf, &plen) != 0) {
        self->errors++;
        Py_DECREF(data);
        Py_RETURN_NONE;
    }
    ssize_t n = sendto(fd, self->buf, (size_t)plen, MSG_DONTWAIT,
                       (struct sockaddr *)&self->addr, self->addrlen);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
            return data; /* Python queues it (aiortc's tx session allows the re-protect) */
        self->errors++;
        Py_DECREF(data);
        Py_RETURN_NONE;
    }
    Py_DECREF(data);
    Meter *m = self->meter;
    m->packets++;
    m->bytes += (unsigned long long)len;
    meter_observe(m, mono_ns() - t_in);
    self->sr_packets++;
    self->sr_octets += (unsigned long long)(len - 12 - self->ext_len);
    self->sr_rtp_ts = out_ts;
    self->sr_ntp = ntp_now();
    self->tx_packets++;
    self->tx_bytes += (unsigned long long)plen;
    Py_RETURN_NONE;
}

static PyObject *Leg_send(Leg *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* send(payload, marker, seq, ts, ssrc, t_in_ns) ->
     *   None: sent (or dropped by SRTP/the kernel, counted in `errors`);
     *   False: no usable route, nothing changed, take the Python path;
     *   bytes: rewritten but the socket would block: queue this packet. */
    int marker;
    uint32_t seq, ts, ssrc;
    if (parse_packet_args(args, nargs, 6, &marker, &seq, &ts, &ssrc) < 0)
        return NULL;
    long long t_in = PyLong_AsLongLong(args[5]);
    if (t_in == -1 && PyErr_Occurred())
        return NULL;
    return leg_send(self, args[0], marker, seq, ts, ssrc, t_in);
}

static PyTypeObject LegType;

static PyObject *py_fanout(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    /* fanout(legs, payload, marker, seq, ts, ssrc, t_in_ns) -> None | [(index, result)]
     * One packet to every ready Leg in the list. Legs that are not ready, and ready
     * legs whose send did not simply go out (result False or bytes, as Leg.send), are
     * returned for Python to handle; such a leg is no longer ready. */
    int marker;
    uint32_t seq, ts, ssrc;
    if (nargs != 7 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "fanout(legs, payload, marker, seq, ts, ssrc, t_in)");
        return NULL;
    }
    if (parse_packet_args(args + 1, nargs - 1, 6, &marker, &seq, &ts, &ssrc) < 0)
        return NULL;
    long long t_in = PyLong_AsLongLong(args[6]);
    if (t_in == -1 && PyErr_Occurred())
        return NULL;
    PyObject *legs = args[0], *slow = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(legs); i++) {
        PyObject *item = PyList_GET_ITEM(legs, i);
        if (!PyObject_TypeCheck(item, &LegType)) {
            Py_XDECREF(slow);
            PyErr_SetString(PyExc_TypeError, "legs must be sfu._fastpath.Leg objects");
            return NULL;
        }
        Leg *leg = (Leg *)item;
        PyObject *r;
        if (leg->ready) {
            Py_INCREF(item); /* a send cannot drop the list's reference, but be safe */
            r = leg_send(leg, args[1], marker, seq, ts, ssrc, t_in);
            Py_DECREF(item);
            if (!r) {
                Py_XDECREF(slow);
                return NULL;
            }
            if (r == Py_None) {
                Py_DECREF(r);
                continue;
            }
            leg->ready = 0;
        } else {
            r = Py_NewRef(Py_None);
        }
        if (!slow && !(slow = PyList_New(0))) {
            Py_DECREF(r);
            return NULL;
        }
        PyObject *pair = Py_BuildValue("(nN)", i, r);
        if (!pair || PyList_Append(slow, pair) < 0) {
            Py_XDECREF(pair);
            Py_DECREF(slow);
            return NULL;
        }
        Py_DECREF(pair);
    }
    if (!slow)
        Py_RETURN_NONE;
    return slow;
}

static PyObject *Leg_history(Leg *self, PyObject *arg)
{
    /* history(seq) -> the packet sent with this output sequence number, or None. */
    long seq = PyLong_AsLong(arg);
    if (seq == -1 && PyErr_Occurred())
        return NULL;
    PyObject *data = self->history[(uint16_t)seq % HISTORY];
    if (data && PyBytes_GET_SIZE(data) >= 4) {
        const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(data);
        if ((b[2] << 8 | b[3]) == (uint16_t)seq) {
            Py_INCREF(data);
            return data;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *Leg_take_counters(Leg *self, PyObject *unused)
{
    /* take_counters() -> (packets, octets, ntp, rtp_ts, tx_packets, tx_bytes, errors,
     * stale) since the last call: sent by this path (ntp/rtp_ts of the last packet),
     * failed sends, and late packets dropped at a rebase point. */
    PyObject *out = Py_BuildValue("(KKKIKKKK)", self->sr_packets, self->sr_octets,
                                  (unsigned long long)self->sr_ntp, self->sr_rtp_ts,
                                  self->tx_packets, self->tx_bytes, self->errors, self->stale);
    if (!out)
        return NULL;
    self->sr_packets = self->sr_octets = self->tx_packets = self->tx_bytes = 0;
    self->errors = self->stale = 0;
    return out;
}

static PyObject *Leg_get_routed(Leg *self, void *closure)
{
    return PyBool_FromLong(self->routed);
}

static PyMethodDef Leg_methods[] = {
    {"configure", (PyCFunction)Leg_configure, METH_VARARGS,
     "configure(payload_type, ssrc, clock_rate, ext_block[, abs_send_time_offset])"},
    {"rebase", (PyCFunction)Leg_rebase, METH_NOARGS,
     "Rebase the sequence offset at the next packet (we dropped packets)."},
    {"set_route", (PyCFunction)Leg_set_route, METH_VARARGS,
     "set_route(srtp_ctx, protect_fn, session, sock, host, port, dtls, connected)"},
    {"clear_route", (PyCFunction)Leg_clear_route, METH_NOARGS, "Forget the route."},
    {"rewrite", (PyCFunction)(void (*)(void))Leg_rewrite, METH_FASTCALL,
     "rewrite(payload, marker, seq, ts, ssrc) -> (packet, out_ts)"},
    {"send", (PyCFunction)(void (*)(void))Leg_send, METH_FASTCALL,
     "send(payload, marker, seq, ts, ssrc, t_in_ns) -> None | False | bytes"},
    {"history", (PyCFunction)Leg_history, METH_O, "history(seq) -> bytes | None"},
    {"take_counters", (PyCFunction)Leg_take_counters, METH_NOARGS,
     "Counters of packets sent by this path since the last call."},
    {NULL},
};

static PyObject *Leg_get_ready(Leg *self, void *closure)
{
    return PyBool_FromLong(self->ready);
}

static int Leg_set_ready(Leg *self, PyObject *value, void *closure)
{
    int v = value ? PyObject_IsTrue(value) : 0;
    if (v < 0)
        return -1;
    self->ready = v;
    return 0;
}

static PyGetSetDef Leg_getset[] = {
    {"ready", (getter)Leg_get_ready, (setter)Leg_set_ready,
     "whether fanout() may send to this leg at once (kept by sfu.forwarder.Leg)", NULL},
    {"routed", (getter)Leg_get_routed, NULL, "whether a usable route is set", NULL},
    {NULL},
};

static PyTypeObject LegType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu._fastpath.Leg",
    .tp_basicsize = sizeof(Leg),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Leg(meter, first_seq, first_ts): one forwarded track on one subscriber.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Leg_init,
    .tp_dealloc = (destructor)Leg_dealloc,
    .tp_traverse = (traverseproc)Leg_traverse,
    .tp_clear = (inquiry)Leg_clear,
    .tp_methods = Leg_methods,
    .tp_getset = Leg_getset,
};

/* ---------------------------------------------------------------------------------- */
/* Packet: a decrypted RTP packet, parsed once, readable like aiortc's RtpPacket.      */

#define MAX_CSRC 15

typedef struct {
    PyObject_HEAD
    int marker;
    unsigned int payload_type;
    unsigned int sequence_number;
    unsigned int timestamp;
    unsigned int ssrc;
    int padding_size;
    int ncsrc;
    uint32_t csrc[MAX_CSRC];
    PyObject *payload;       /* bytes */
    PyObject *abs_send_time; /* int or NULL */
    PyObject *mid;           /* str or NULL */
    long long arrival_ns;
} Packet;

static void Packet_dealloc(Packet *self)
{
    Py_XDECREF(self->payload);
    Py_XDECREF(self->abs_send_time);
    Py_XDECREF(self->mid);
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
    {"arrival_ns", T_LONGLONG, offsetof(Packet, arrival_ns), 0,
     "perf_counter_ns() when the datagram was read, before SRTP"},
    {NULL},
};

static PyGetSetDef Packet_getset[] = {
    {"extensions", Packet_get_self, NULL, NULL, NULL},
    {"csrc", (getter)Packet_get_csrc, NULL, NULL, NULL},
    {"version", Packet_get_version, NULL, NULL, NULL},
    {"audio_level", Packet_get_none, NULL, NULL, NULL},
    {"repaired_rtp_stream_id", Packet_get_none, NULL, NULL, NULL},
    {"rtp_stream_id", Packet_get_none, NULL, NULL, NULL},
    {"transmission_offset", Packet_get_none, NULL, NULL, NULL},
    {"transport_sequence_number", Packet_get_none, NULL, NULL, NULL},
    {NULL},
};

static PyTypeObject PacketType = {
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
static Packet *parse_rtp(const unsigned char *d, Py_ssize_t n, int abs_id, int mid_id)
{
    if (n < 12 || (d[0] >> 6) != 2)
        return NULL;
    int cc = d[0] & 0x0F;
    Py_ssize_t pos = 12 + 4 * cc;
    if (n < pos)
        return NULL;
    long abs_send_time = -1;
    const unsigned char *mid = NULL;
    int mid_len = 0;
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
    p->arrival_ns = 0;
    p->abs_send_time = NULL;
    p->mid = NULL;
    p->payload = PyBytes_FromStringAndSize((const char *)d + pos, n - pos - padding);
    if (abs_send_time >= 0)
        p->abs_send_time = PyLong_FromLong(abs_send_time);
    if (mid)
        p->mid = PyUnicode_DecodeUTF8((const char *)mid, mid_len, NULL);
    if (!p->payload || (abs_send_time >= 0 && !p->abs_send_time) || (mid && !p->mid)) {
        Py_DECREF(p);
        PyErr_Clear();
        return NULL;
    }
    return p;
}

static PyObject *py_parse_rtp(PyObject *module, PyObject *args)
{
    /* parse_rtp(data, abs_send_time_id, mid_id) -> Packet | None (for tests) */
    Py_buffer data;
    int abs_id, mid_id;
    if (!PyArg_ParseTuple(args, "y*ii", &data, &abs_id, &mid_id))
        return NULL;
    Packet *p = parse_rtp(data.buf, data.len, abs_id, mid_id);
    PyBuffer_Release(&data);
    if (!p)
        Py_RETURN_NONE;
    return (PyObject *)p;
}

/* ---------------------------------------------------------------------------------- */
/* Reader: reads every datagram queued on an ICE socket in one event-loop callback.    */

#define RECV_BUF 65536
#define BATCH 64

static unsigned char recv_buf[RECV_BUF];

typedef struct {
    PyObject_HEAD
    int fd;
    PyObject *datagram_received; /* the protocol's datagram_received(data, addr) */
    PyObject *error_received;    /* the protocol's error_received(exc) */
    /* set once the DTLS transport is connected: SRTP goes to on_rtp/on_rtcp directly */
    int rtp;
    void *srtp_ctx;
    srtp_fn unprotect, unprotect_rtcp;
    PyObject *session, *dtls, *connected, *on_rtp, *on_rtcp;
    int abs_id, mid_id;
    unsigned long long rx_packets, rx_bytes, datagrams, wakeups;
    /* A socket shared by many ICE connections (sfu/udpmux.py): remote address key
     * (addr_key) -> the Reader of the connection that owns that address. The
     * datagram is handled with that Reader's SRTP state and protocol; an address with
     * no route goes to this Reader's own datagram_received (the mux's dispatcher).
     * NULL for a socket of one connection. */
    PyObject *routes;
    /* DTLS counters not yet added to the transport (a routed Reader, flushed once per
     * read callback of the shared socket) */
    unsigned long long pending_packets, pending_bytes;
} Reader;

static void Reader_clear_rtp_(Reader *self)
{
    self->rtp = 0;
    self->srtp_ctx = NULL;
    self->unprotect = self->unprotect_rtcp = NULL;
    Py_CLEAR(self->session);
    Py_CLEAR(self->dtls);
    Py_CLEAR(self->connected);
    Py_CLEAR(self->on_rtp);
    Py_CLEAR(self->on_rtcp);
}

static int Reader_traverse(Reader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->datagram_received);
    Py_VISIT(self->error_received);
    Py_VISIT(self->session);
    Py_VISIT(self->dtls);
    Py_VISIT(self->connected);
    Py_VISIT(self->on_rtp);
    Py_VISIT(self->on_rtcp);
    Py_VISIT(self->routes);
    return 0;
}

static int Reader_clear(Reader *self)
{
    Py_CLEAR(self->datagram_received);
    Py_CLEAR(self->error_received);
    Py_CLEAR(self->routes);
    Reader_clear_rtp_(self);
    return 0;
}

static void Reader_dealloc(Reader *self)
{
    PyObject_GC_UnTrack(self);
    Reader_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Reader_init(Reader *self, PyObject *args, PyObject *kwds)
{
    /* Reader(fd, datagram_received, error_received) */
    int fd;
    PyObject *dr, *er;
    if (!PyArg_ParseTuple(args, "iOO", &fd, &dr, &er))
        return -1;
    self->fd = fd;
    Py_INCREF(dr);
    Py_XSETREF(self->datagram_received, dr);
    Py_INCREF(er);
    Py_XSETREF(self->error_received, er);
    return 0;
}

static PyObject *Reader_set_rtp(Reader *self, PyObject *args)
{
    /* set_rtp(srtp_ctx, unprotect_fn, unprotect_rtcp_fn, session, dtls, connected,
     *         on_rtp, on_rtcp, abs_id, mid_id) */
    unsigned long long ctx, fn, fn_rtcp;
    PyObject *session, *dtls, *connected, *on_rtp, *on_rtcp;
    int abs_id, mid_id;
    if (!PyArg_ParseTuple(args, "KKKOOOOOii", &ctx, &fn, &fn_rtcp, &session, &dtls, &connected,
                          &on_rtp, &on_rtcp, &abs_id, &mid_id))
        return NULL;
    if (!ctx || !fn || !fn_rtcp || !PyCallable_Check(on_rtp) || !PyCallable_Check(on_rtcp)) {
        PyErr_SetString(PyExc_ValueError, "incomplete RTP route");
        return NULL;
    }
    Reader_clear_rtp_(self);
    self->srtp_ctx = (void *)(uintptr_t)ctx;
    self->unprotect = (srtp_fn)(uintptr_t)fn;
    self->unprotect_rtcp = (srtp_fn)(uintptr_t)fn_rtcp;
    Py_INCREF(session);
    self->session = session;
    Py_INCREF(dtls);
    self->dtls = dtls;
    Py_INCREF(connected);
    self->connected = connected;
    Py_INCREF(on_rtp);
    self->on_rtp = on_rtp;
    Py_INCREF(on_rtcp);
    self->on_rtcp = on_rtcp;
    self->abs_id = abs_id;
    self->mid_id = mid_id;
    self->rtp = 1;
    Py_RETURN_NONE;
}

static PyTypeObject ReaderType;

static PyObject *Reader_set_routes(Reader *self, PyObject *routes)
{
    if (!PyDict_Check(routes)) {
        PyErr_SetString(PyExc_TypeError, "routes must be a dict");
        return NULL;
    }
    Py_INCREF(routes);
    Py_XSETREF(self->routes, routes);
    Py_RETURN_NONE;
}

/* The routing key of a remote address: an int for IPv4, 18 bytes for IPv6. Python
 * computes the same key with addr_key(host, port). */
static PyObject *sockaddr_key(const struct sockaddr_storage *a)
{
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)a;
        uint64_t k = ((uint64_t)ntohl(a4->sin_addr.s_addr) << 16) | ntohs(a4->sin_port);
        return PyLong_FromUnsignedLongLong(k);
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)a;
        unsigned char k[18];
        memcpy(k, &a6->sin6_addr, 16);
        memcpy(k + 16, &a6->sin6_port, 2);
        return PyBytes_FromStringAndSize((const char *)k, 18);
    }
    Py_RETURN_NONE;
}

static PyObject *py_addr_key(PyObject *module, PyObject *args)
{
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "si", &host, &port))
        return NULL;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return NULL;
    }
    struct sockaddr_storage a;
    memset(&a, 0, sizeof(a));
    struct sockaddr_in *a4 = (struct sockaddr_in *)&a;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&a;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
    } else {
        PyErr_SetString(PyExc_ValueError, "not an IP address");
        return NULL;
    }
    return sockaddr_key(&a);
}

static PyObject *make_addr(const struct sockaddr_storage *a)
{
    char host[INET6_ADDRSTRLEN];
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)a;
        inet_ntop(AF_INET, &a4->sin_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, ntohs(a4->sin_port));
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)a;
        inet_ntop(AF_INET6, &a6->sin6_addr, host, sizeof(host));
        return Py_BuildValue("(siII)", host, ntohs(a6->sin6_port),
                             (unsigned int)ntohl(a6->sin6_flowinfo),
                             (unsigned int)a6->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

static inline long long ntp_ms(void)
{
    /* aiortc.clock.current_ms(): milliseconds since the NTP epoch */
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return ((long long)t.tv_sec + (long long)NTP_EPOCH) * 1000LL + t.tv_nsec / 1000000;
}

/* Hand one datagram to the protocol like asyncio's _read_ready would. */
static int Reader_fallback(Reader *self, Py_ssize_t n, const struct sockaddr_storage *addr)
{
    PyObject *data = PyBytes_FromStringAndSize((const char *)recv_buf, n);
    PyObject *a = make_addr(addr);
    PyObject *r = NULL, *callback = self->datagram_received;
    Py_INCREF(callback); /* the call may replace what the reader holds */
    if (data && a)
        r = PyObject_CallFunctionObjArgs(callback, data, a, NULL);
    Py_DECREF(callback);
    Py_XDECREF(data);
    Py_XDECREF(a);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *str_rx_packets, *str_rx_bytes;

/* Add to an integer attribute (aiortc's transport counters, read by getStats). */
static int add_to_attr(PyObject *obj, PyObject *name, unsigned long long n)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v)
        return -1;
    PyObject *d = PyLong_FromUnsignedLongLong(n);
    PyObject *sum = d ? PyNumber_Add(v, d) : NULL;
    Py_DECREF(v);
    Py_XDECREF(d);
    if (!sum)
        return -1;
    int r = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return r;
}

static PyObject *Reader_drain(Reader *self, Reader **touched, int *ntouched);

/* Add what a Reader read since the last flush to its DTLS transport's counters (read
 * by getStats): once per read callback rather than per packet. */
static void Reader_flush_counters(Reader *t)
{
    if (!t->dtls || !t->pending_packets)
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (add_to_attr(t->dtls, str_rx_packets, t->pending_packets) < 0 ||
        add_to_attr(t->dtls, str_rx_bytes, t->pending_bytes) < 0)
        PyErr_Clear();
    PyErr_Restore(type, value, tb);
    t->pending_packets = t->pending_bytes = 0;
}

static PyObject *Reader_call(Reader *self, PyObject *args, PyObject *kwds)
{
    /* The event loop's read callback: up to BATCH datagrams, then back to the loop. */
    if (!self->datagram_received || !self->error_received) {
        PyErr_SetString(PyExc_RuntimeError, "Reader was not initialised");
        return NULL;
    }
    if (self->fd < 0) {
        PyErr_SetString(PyExc_RuntimeError, "a routed Reader has no socket of its own");
        return NULL;
    }
    self->wakeups++;
    Reader *touched[BATCH];
    int ntouched = 0;
    PyObject *r = Reader_drain(self, touched, &ntouched);
    for (int i = 0; i < ntouched; i++) {
        Reader_flush_counters(touched[i]);
        Py_DECREF(touched[i]);
    }
    return r;
}

/* Handle one datagram in recv_buf with t's SRTP state and protocol. 0, or -1 with an
 * exception set. */
static int Reader_handle(Reader *t, Py_ssize_t n, const struct sockaddr_storage *addr,
                         int64_t t_in)
{
    unsigned char b0 = recv_buf[0], b1 = n > 1 ? recv_buf[1] : 0;
    if (!(t->rtp && n > 12 && b0 > 127 && b0 < 192))
        return Reader_fallback(t, n, addr);
    PyObject *state = PyObject_GetAttr(t->dtls, str_state);
    if (!state)
        return -1;
    int connected = state == t->connected;
    Py_DECREF(state);
    if (!connected) {
        Reader_clear_rtp_(t);
        return Reader_fallback(t, n, addr);
    }
    t->rx_packets++;
    t->rx_bytes += (unsigned long long)n;
    t->pending_packets++;
    t->pending_bytes += (unsigned long long)n;
    int len = (int)n;
    if (b1 > 191 && b1 < 209) { /* SRTCP, by aiortc's is_rtcp */
        if (t->unprotect_rtcp(t->srtp_ctx, recv_buf, &len) != 0)
            return 0;
        PyObject *data = PyBytes_FromStringAndSize((const char *)recv_buf, len);
        PyObject *callback = t->on_rtcp;
        Py_INCREF(callback); /* the call may replace what the reader holds */
        PyObject *r = data ? PyObject_CallOneArg(callback, data) : NULL;
        Py_DECREF(callback);
        Py_XDECREF(data);
        if (!r)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    if (t->unprotect(t->srtp_ctx, recv_buf, &len) != 0)
        return 0; /* not authentic, or replayed: dropped, as aiortc does */
    Packet *p = parse_rtp(recv_buf, len, t->abs_id, t->mid_id);
    if (!p)
        return 0;
    p->arrival_ns = t_in;
    PyObject *ms = PyLong_FromLongLong(ntp_ms());
    PyObject *callback = t->on_rtp;
    Py_INCREF(callback); /* the call may replace what the reader holds */
    PyObject *r = ms ? PyObject_CallFunctionObjArgs(callback, (PyObject *)p, ms, NULL) : NULL;
    Py_DECREF(callback);
    Py_XDECREF(ms);
    Py_DECREF(p);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The Reader that owns a datagram from addr on a shared socket (a new reference, or
 * NULL: unrouted, or an error is set). */
static Reader *Reader_route(Reader *self, const struct sockaddr_storage *addr)
{
    PyObject *key = sockaddr_key(addr);
    if (!key)
        return NULL;
    PyObject *found = PyDict_GetItemWithError(self->routes, key); /* borrowed */
    Py_DECREF(key);
    if (!found || Py_TYPE(found) != &ReaderType)
        return NULL;
    Py_INCREF(found);
    return (Reader *)found;
}

static PyObject *Reader_drain(Reader *self, Reader **touched, int *ntouched)
{
    for (int i = 0; i < BATCH; i++) {
        struct sockaddr_storage addr;
        socklen_t alen = sizeof(addr);
        ssize_t n = recvfrom(self->fd, recv_buf, RECV_BUF, MSG_DONTWAIT,
                             (struct sockaddr *)&addr, &alen);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            PyErr_SetFromErrno(PyExc_OSError); /* handed to error_received, like asyncio */
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            PyObject *callback = self->error_received;
            Py_INCREF(callback);
            PyObject *r = PyObject_CallOneArg(callback, value);
            Py_DECREF(callback);
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            if (!r)
                return NULL;
            Py_DECREF(r);
            break;
        }
        self->datagrams++;
        int64_t t_in = mono_ns();
        Reader *t = self;
        if (self->routes) {
            t = Reader_route(self, &addr);
            if (!t) {
                if (PyErr_Occurred() || Reader_fallback(self, n, &addr) < 0)
                    return NULL;
                continue;
            }
            /* t stays alive (and its counters pending) until the callback ends */
            int seen = 0;
            for (int j = 0; j < *ntouched; j++)
                if (touched[j] == t)
                    seen = 1;
            if (seen)
                Py_DECREF(t);
            else
                touched[(*ntouched)++] = t;
        } else if (*ntouched == 0) {
            Py_INCREF(self);
            touched[(*ntouched)++] = self;
        }
        if (Reader_handle(t, n, &addr, t_in) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Reader_get_rtp(Reader *self, void *closure)
{
    return PyBool_FromLong(self->rtp);
}

static PyObject *Reader_get_rx(Reader *self, void *closure)
{
    return Py_BuildValue("(KK)", self->rx_packets, self->rx_bytes);
}

static PyObject *Reader_get_stats(Reader *self, void *closure)
{
    return Py_BuildValue("(KK)", self->datagrams, self->wakeups);
}

static PyMethodDef Reader_methods[] = {
    {"set_routes", (PyCFunction)Reader_set_routes, METH_O,
     "set_routes(routes): share this socket; routes maps addr_key(host, port) -> Reader"},
    {"set_rtp", (PyCFunction)Reader_set_rtp, METH_VARARGS,
     "set_rtp(srtp_ctx, unprotect_fn, unprotect_rtcp_fn, session, dtls, connected, on_rtp, "
     "on_rtcp, abs_id, mid_id)"},
    {NULL},
};

static PyGetSetDef Reader_getset[] = {
    {"rtp", (getter)Reader_get_rtp, NULL, "whether SRTP is handled here", NULL},
    {"stats", (getter)Reader_get_stats, NULL, "(datagrams, wakeups) so far", NULL},
    {"rx", (getter)Reader_get_rx, NULL, "(SRTP packets, bytes) read here so far", NULL},
    {NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sfu._fastpath.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Reader(fd, datagram_received, error_received): an event-loop read "
              "callback that drains a UDP socket, decrypting and parsing SRTP itself once "
              "set_rtp() was called and handing everything else to the protocol.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_traverse = (traverseproc)Reader_traverse,
    .tp_clear = (inquiry)Reader_clear,
    .tp_call = (ternaryfunc)Reader_call,
    .tp_methods = Reader_methods,
    .tp_getset = Reader_getset,
};

static PyMethodDef module_methods[] = {
    {"fanout", (PyCFunction)(void (*)(void))py_fanout, METH_FASTCALL,
     "fanout(legs, payload, marker, seq, ts, ssrc, t_in_ns) -> None | [(index, result)]"},
    {"addr_key", py_addr_key, METH_VARARGS,
     "addr_key(host, port) -> the key of a remote address in Reader.set_routes()"},
    {"parse_rtp", py_parse_rtp, METH_VARARGS,
     "parse_rtp(data, abs_send_time_id, mid_id) -> Packet | None"},
    {NULL},
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sfu._fastpath",
    .m_doc = "Per-subscriber RTP rewrite, SRTP protect and send, in C.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&MeterType) < 0 || PyType_Ready(&LegType) < 0 ||
        PyType_Ready(&PacketType) < 0 || PyType_Ready(&ReaderType) < 0)
        return NULL;
    str_state = PyUnicode_InternFromString("_state");
    str_fileno = PyUnicode_InternFromString("fileno");
    str_buffer_size = PyUnicode_InternFromString("_buffer_size");
    /* aiortc 1.16's RTCDtlsTransport counters (checked by sfu.aiortc_hooks) */
    str_rx_packets = PyUnicode_InternFromString("_RTCDtlsTransport__rx_packets");
    str_rx_bytes = PyUnicode_InternFromString("_RTCDtlsTransport__rx_bytes");
    if (!str_state || !str_fileno || !str_buffer_size || !str_rx_packets || !str_rx_bytes)
        return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (!m)
        return NULL;
    Py_INCREF(&MeterType);
    Py_INCREF(&LegType);
    Py_INCREF(&PacketType);
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "Meter", (PyObject *)&MeterType) < 0 ||
        PyModule_AddObject(m, "Leg", (PyObject *)&LegType) < 0 ||
        PyModule_AddObject(m, "Packet", (PyObject *)&PacketType) < 0 ||
        PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
