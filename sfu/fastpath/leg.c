/*
 * Leg: one forwarded track on one subscriber connection -- the per-subscriber half of
 * the forwarding hot path.
 *
 * For every forwarded RTP packet and every subscriber, the SFU rewrites the RTP header
 * (the subscriber's SSRC, payload type, sequence number and timestamp, the subscriber's
 * MID extension; for VP8 the payload descriptor's picture ids, vp8.c), keeps it for
 * NACKs, SRTP-protects it and sends it. Written in
 * Python that is ~40 Python-level steps per packet and leg; here it is one call. The
 * semantics are those documented on sfu.forwarder.Leg, which owns a `Leg` object of
 * this module and keeps everything that is not per packet (key-frame waits, queueing,
 * feedback) in Python.
 *
 * Crosses into Python:
 * - per packet: one fanout() call from sfu.forwarder for all ready legs of a track;
 *   per leg, one attribute read of the DTLS state and one fileno() call (the route
 *   checks below), and asyncio's transport `_buffer_size` when it has one. Legs that
 *   are not ready, or whose send did not simply go out, come back to Python in a list.
 * - per route change: set_route()/clear_route(); per negotiation: configure().
 * - once per RTCP interval: take_counters() (sender reports, getStats); on a NACK:
 *   history(seq). Sent packets stay in the history for HISTORY_MS (2 s) at most.
 *
 * The NACK history does not copy packets: a slot keeps a reference to the payload as
 * received (one bytes object shared by every leg of the track and the reader's
 * Packet) and what this leg wrote around it (sequence number, timestamp, marker, the
 * abs-send-time stamped, the VP8 descriptor bytes as rewritten); history(seq) and a
 * send that would block build the packet from that again. A copy per packet and leg
 * was a malloc, a memcpy and a free per forwarded packet, and most of the memory a
 * participant cost.
 *
 * Sending: a non-blocking sendto() on the ICE pair's UDP socket. Before each send we
 * check that the DTLS transport is still connected and that the socket is still open
 * (its fileno() is not -1), so a closed connection can never send on a reused file
 * descriptor. When the socket would block, the rewritten packet is handed back to
 * Python, which queues it on asyncio's transport like any other write.
 */
#include "fastpath.h"

#include <errno.h>
#include <string.h>

#define HISTORY 512
/* How long a sent packet is kept for NACKs. libwebrtc keeps a sent packet for
 * max(1 s, 3 x RTT) (RtpPacketHistory); a repair older than that reaches a jitter buffer
 * that has given up on its frame. Bounding the history by time, not only by the 512
 * slots (10 s of a 500 kbit/s video), is most of what a participant costs in memory:
 * one copy per packet per subscribing leg. */
#define HISTORY_MS 2000
/* Late packets kept behind the history's tail, culled by their own age (see Leg_cull).
 * Reordering is rare and brief; when more are outstanding, the oldest goes early. */
#define LATE 8
#define BUF_SIZE 2048
#define MAX_EXT 64
/* The payload's first bytes as this leg sent them: a VP8 descriptor's PictureID and
 * TL0PICIDX (vp8.c) lie within its first 5 bytes. */
#define HEAD 6
/* Temporal thinning (Leg_thin): the sequence numbers and picture ids thinned out last,
 * by which a late packet finds its place. 0.7 s of a thinned 640x360 layer; a packet
 * later than that is dropped (its place is not known). */
#define THINNED 64
#define ALL_LAYERS 255

/* One sent packet in the NACK history (see the top of this file). */
typedef struct {
    PyObject *payload; /* bytes as received, shared; NULL: empty slot */
    uint32_t ms;       /* when it was sent (CLOCK_MONOTONIC ms, wraps) */
    uint32_t ts;       /* the timestamp it went out with */
    uint32_t config;   /* Leg.config_gen then: a packet of an older configuration is gone */
    uint16_t seq;      /* the sequence number it went out with */
    uint8_t marker;
    uint8_t abs[3];    /* the abs-send-time stamped into it, if the leg stamps one */
    uint8_t head[HEAD];
} Sent;

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
    int vp8;     /* set by Python: the payloads are VP8, their picture ids follow the leg */
    FpVp8 vp8s;
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
    Sent history[HISTORY];
    uint32_t config_gen; /* bumped by configure(): the header the history rebuilds with */
    uint16_t history_tail;        /* the oldest output seq that may still be held */
    int history_used;
    uint32_t keep_ms;             /* HISTORY_MS unless a test shortens it */
    uint16_t late[LATE];          /* seqs stored behind history_tail, in the order sent */
    int late_n;
    /* route: where and how to send */
    int routed;
    FpSrtp srtp; /* .rtp is srtp_protect */
    PyObject *sock;
    PyObject *transport; /* asyncio's datagram transport on sock, or NULL */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    /* counters, read by Python to keep RTCP sender reports and getStats true */
    unsigned long long sr_packets, sr_octets, tx_packets, tx_bytes, errors;
    int64_t sr_mono_ns; /* when the last packet was sent; NTP time at take_counters() */
    int64_t now_ns;     /* the clock read of the last rewrite: one read per packet and leg */
    uint32_t sr_rtp_ts;
    /* Temporal thinning of VP8 (Leg_thin): the highest temporal layer forwarded now and
     * the one asked for (ALL_LAYERS: no thinning), what was thinned out since the last
     * rebase (rings of THINNED, newest at [n - 1 % THINNED]). */
    uint8_t tid_max, tid_want;
    uint16_t last_in; /* the newest input sequence number since the rebase (VP8 legs) */
    unsigned long long thinned_n; /* sequence numbers thinned since the rebase */
    unsigned long long thinned_pics;
    uint16_t thinned_seq[THINNED];
    uint16_t thinned_pid[THINNED];
    int last_thinned_pid; /* -1: none */
    int prev_thinned;     /* the newest packet so far was thinned out ... */
    int prev_marker;      /* ... and ended its picture */
    unsigned long long thinned; /* counter for Python (take_counters) */
    unsigned char buf[BUF_SIZE];
} Leg;

static void Leg_clear_route_(Leg *self)
{
    self->routed = 0;
    fp_srtp_clear(&self->srtp);
    Py_CLEAR(self->sock);
    Py_CLEAR(self->transport);
}

static int Leg_traverse(Leg *self, visitproc visit, void *arg)
{
    Py_VISIT(self->meter);
    Py_VISIT(self->sock);
    Py_VISIT(self->transport);
    return fp_srtp_traverse(&self->srtp, visit, arg);
}

static int Leg_clear(Leg *self)
{
    Py_CLEAR(self->meter);
    Leg_clear_route_(self);
    for (int i = 0; i < HISTORY; i++)
        Py_CLEAR(self->history[i].payload);
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
    self->keep_ms = HISTORY_MS;
    self->tid_max = self->tid_want = ALL_LAYERS;
    self->last_thinned_pid = -1;
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
    self->config_gen++;
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
    /* set_route(srtp_ctx, protect_fn, session, sock, host, port, live[, transport]):
     *           live is the DTLS transport's Live; transport is asyncio's on sock, whose
     *           pending writes a send must not overtake */
    unsigned long long ctx, fn;
    PyObject *session, *sock, *live, *transport = NULL;
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "KKOOsiO|O", &ctx, &fn, &session, &sock, &host, &port, &live,
                          &transport))
        return NULL;
    if (!ctx || !fn || port <= 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "incomplete route");
        return NULL;
    }
    struct sockaddr_storage addr;
    socklen_t addrlen;
    if (fp_sockaddr(host, port, &addr, &addrlen) < 0) {
        PyErr_SetString(PyExc_ValueError, "remote host is not a numeric address");
        return NULL;
    }
    Leg_clear_route_(self);
    if (fp_srtp_set(&self->srtp, (void *)(uintptr_t)ctx, (srtp_fn)(uintptr_t)fn, NULL, session,
                    live) < 0)
        return NULL;
    Py_INCREF(sock);
    self->sock = sock;
    if (transport && transport != Py_None) {
        Py_INCREF(transport);
        self->transport = transport;
    }
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
    PyObject *size = PyObject_GetAttr(self->transport, fp_str_buffer_size);
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
    if (!fp_srtp_live(&self->srtp)) {
        Leg_clear_route_(self);
        return -1;
    }
    PyObject *fdo = PyObject_CallMethodNoArgs(self->sock, fp_str_fileno);
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

/* Where v lies among the n newest entries of a ring of THINNED (mod mask + 1): how many
 * are newer than it; *same: it is one of them; *before: it is older than every entry the
 * ring can still vouch for (the ring overflowed, or older ones are more than half the
 * number space behind the newest, where "newer" can no longer be told). Distances are
 * taken back from the newest entry, so 7-bit picture ids do not alias. */
static int ring_newer(const uint16_t *ring, unsigned long long n, uint16_t v, uint16_t mask,
                      int *same, int *before)
{
    int count = 0, k = n < THINNED ? (int)n : THINNED;
    uint16_t half = (uint16_t)((mask >> 1) + 1), oldest = 0;
    uint16_t newest = ring[(n - 1) % THINNED];
    uint16_t dv = (uint16_t)(newest - v) & mask;
    *same = *before = 0;
    if (dv >= half)
        return 0; /* newer than every entry */
    int complete = n <= THINNED;
    for (int i = 0; i < k; i++) {
        uint16_t de = (uint16_t)(newest - ring[i]) & mask;
        if (de >= half) {
            complete = 0; /* too far back to place */
            continue;
        }
        if (de > oldest)
            oldest = de;
        if (de == dv)
            *same = 1;
        else if (de < dv)
            count++;
    }
    if (!complete && dv > oldest)
        *before = 1;
    return count;
}

/* Temporal thinning of a VP8 stream: forward only temporal layers up to tid_max (set
 * from Python as `temporal`), the cheap way down on a link that starts to fill up: no key
 * frame, no switch, the frame rate falls (Chromium's VP8 simulcast layers are L1T3:
 * layer 0 is a quarter of the frames and about 40 % of the rate). As mediasoup and
 * LiveKit do, what the subscriber receives stays a stream without holes: every packet
 * thinned out takes its sequence number along (seq_off), every picture its picture id
 * (vp8.c), and TL0PICIDX needs nothing (layer 0 is never thinned). A lower limit takes
 * effect at the next picture's start; a higher one at a key frame or at the next picture
 * of a layer above the limit whose Y bit says it refers only to layer 0 (from there on
 * nothing refers to a picture thinned out). Chromium's L1T3 (seen through its encoded
 * frames' dependencies) has such a pair every 8 pictures, T2 then T1 after a T0; a T2
 * or T1 picture elsewhere refers to the T1 before it, and starting there decoded it
 * against a reference the subscriber never had.
 *
 * A packet newer than any seen since the rebase is judged by its layer. A late one
 * (reordered, a repair) is placed by the rings: its sequence number and picture id
 * move up by the packets and pictures thinned out after it, and a piece of a picture
 * thinned out is thinned too. Returns 1 to drop the packet; *seq_adj and *pid_adj are
 * a late packet's corrections. Only legs with `vp8` set come here. */
static int Leg_thin(Leg *self, const unsigned char *p, Py_ssize_t n, uint16_t seq,
                    uint16_t gap, int marker, uint16_t *seq_adj, uint16_t *pid_adj)
{
    FpVp8Layer l;
    *seq_adj = *pid_adj = 0;
    if (fp_vp8_layer(p, n, &l) < 0 || l.mask != 0x7FFF)
        return 0; /* only 15-bit picture ids (Chromium's; so l.pid is set below): without
                   * them a receiver cannot tell a picture left out from one lost, and 7
                   * bits wrap within what the rings must place */
    /* gap: how far past the newest input sequence number seen before it (0, or over
     * 0x7FFF: a late packet) */
    if (gap - 1u < 0x7FFFu) {
        if (self->tid_max == ALL_LAYERS && self->thinned_n &&
            (uint16_t)(seq - self->thinned_seq[(self->thinned_n - 1) % THINNED]) > 0x1000) {
            /* long past the last thinning: no late packet reaches back there (one that
             * would is dropped at the floor instead of mapping onto a number sent) */
            self->thinned_n = self->thinned_pics = 0;
            self->last_thinned_pid = -1;
            self->floor = (uint16_t)(self->last_out_seq + 1);
        }
        if (l.start && self->tid_want != self->tid_max &&
            (self->tid_want < self->tid_max || l.key ||
             (l.sync && l.tid > self->tid_max && l.tid <= self->tid_want)))
            self->tid_max = self->tid_want;
        /* Packets missing just before this one that belonged to a picture thinned out
         * (the rest of it came before, or this is more of it) are thinned too: a repair
         * of one later is left out, and its number must not stay a hole. */
        if (gap > 1 && self->prev_thinned &&
            (l.pid == self->last_thinned_pid ||
             (!self->prev_marker && l.start &&
              ((l.pid - self->last_thinned_pid) & l.mask) == 1))) {
            for (uint16_t k = 1; k < gap; k++)
                self->thinned_seq[self->thinned_n++ % THINNED] = (uint16_t)(seq - gap + k);
            self->seq_off = (uint16_t)(self->seq_off - (gap - 1));
        }
        if (l.tid <= self->tid_max) {
            self->prev_thinned = 0;
            return 0;
        }
        self->thinned_seq[self->thinned_n++ % THINNED] = seq;
        self->seq_off--;
        if (l.pid != self->last_thinned_pid) {
            self->thinned_pid[self->thinned_pics++ % THINNED] = (uint16_t)l.pid;
            self->last_thinned_pid = l.pid;
            self->vp8s.pid_off--;
        }
        self->prev_thinned = 1;
        self->prev_marker = marker;
        self->thinned++;
        return 1;
    }
    if (!self->thinned_n)
        return 0; /* nothing thinned since the rebase: the offsets hold as they are */
    int same, before;
    int later = ring_newer(self->thinned_seq, self->thinned_n, seq, 0xFFFF, &same, &before);
    if (same || before)
        return 1; /* a copy of a packet thinned out, or too old to place */
    *seq_adj = (uint16_t)later;
    if (self->thinned_pics) {
        int pics = ring_newer(self->thinned_pid, self->thinned_pics, (uint16_t)l.pid, l.mask,
                              &same, &before);
        if (same || before)
            return 1; /* a piece of a picture thinned out, or too old to place */
        *pid_adj = (uint16_t)pics;
    }
    /* A whole late picture not in the ring passes whatever its layer: leaving it out
     * would leave a hole in the picture ids, on which Chromium waits; passing it costs at
     * most one picture decoded against an older reference. Not placed either: a late
     * packet of a picture thinned out whose own number the ring does not have (the rest
     * of that picture came before it with a gap the rule above could not attribute, or
     * it is a repair of a loss upstream): the number it would have had stays a hole,
     * which the subscriber NACKs and counts as lost (mediasoup's SeqManager has the same
     * limit: it cannot renumber what was sent). */
    return 0;
}

/* Rewrite into self->buf; returns the packet length, 0 for a packet to drop (stale, or
 * thinned out), or -1 with an exception set. */
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
    int64_t now = self->now_ns = mono_ns();
    int new_source = 0, rebased = 0;
    if (!self->have_in_ssrc || ssrc != self->in_ssrc || self->rebase) {
        rebased = 1;
        if (!self->have_in_ssrc || ssrc != self->in_ssrc) {
            new_source = 1;
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
        self->last_in = (uint16_t)seq;
        /* older packets are dropped at the floor now: the rings describe nothing ahead */
        self->thinned_n = self->thinned_pics = 0;
        self->last_thinned_pid = -1;
        self->prev_thinned = 0;
    }
    uint16_t seq_adj = 0, pid_adj = 0;
    if (self->vp8 && !rebased) {
        /* (Not the first packet after a rebase: the offsets were just chosen from it, and
         * a rebase waits for a key frame, which is layer 0 anyway.) */
        uint16_t gap = (uint16_t)((uint16_t)seq - self->last_in);
        if (gap - 1u < 0x7FFFu)
            self->last_in = (uint16_t)seq;
        if ((self->tid_max != ALL_LAYERS || self->tid_want != ALL_LAYERS || self->thinned_n) &&
            Leg_thin(self, (const unsigned char *)PyBytes_AS_STRING(payload), plen,
                     (uint16_t)seq, gap, marker, &seq_adj, &pid_adj))
            return 0;
    }
    uint16_t out_seq = (uint16_t)(seq + self->seq_off + seq_adj);
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
    if (self->vp8) {
        /* Picture ids continue across a change of layer (vp8.c), and across a resume of
         * the same one (a park, a queue drop) when it starts a key frame, as every
         * resume does: otherwise they would jump by the pictures skipped meanwhile. A
         * rebase that resumes within a picture keeps the offset (renumbering there
         * would split one picture over two ids). */
        unsigned char *vp8 = b + 12 + self->ext_len;
        int resync = new_source || (rebased && fp_vp8_keyframe_start(vp8, plen));
        fp_vp8_rewrite(&self->vp8s, vp8, plen, resync, pid_adj);
    }
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

/* Let the late packet stored behind the tail go: the oldest of them (late[0]). Its
 * slot may hold a newer packet by now, which stays. */
static void Leg_drop_late(Leg *self)
{
    Sent *slot = &self->history[self->late[0] % HISTORY];
    if (slot->payload && slot->seq == self->late[0])
        Py_CLEAR(slot->payload);
    self->late_n--;
    memmove(self->late, self->late + 1, (size_t)self->late_n * sizeof self->late[0]);
}

/* Drop the packets kept longer than keep_ms, oldest first, up to the newest sequence
 * number `head`. Sequence numbers go out in order, so this stops at the first packet
 * still young enough: amortised one step per packet sent. A late (reordered) packet
 * goes out after numbers above its own, and may find the walk already past its number
 * (its slot was empty then): those are listed in `late` and culled by their own age
 * (REVIEW #10: they stayed until their slot was reused, whatever their age). */
static void Leg_cull(Leg *self, uint16_t head, uint32_t now_ms)
{
    while (self->late_n) {
        Sent *slot = &self->history[self->late[0] % HISTORY];
        if (slot->payload && slot->seq == self->late[0] && now_ms - slot->ms < self->keep_ms)
            break;
        Leg_drop_late(self);
    }
    if (!self->history_used) {
        self->history_tail = head;
        self->history_used = 1;
        return;
    }
    uint16_t span = (uint16_t)(head - self->history_tail);
    if (span >= 0x8000)
        return; /* a late packet behind the tail: nothing older to drop */
    if (span >= HISTORY) /* those slots hold newer packets by now */
        self->history_tail = (uint16_t)(head - (HISTORY - 1));
    while (self->history_tail != head) {
        int i = self->history_tail % HISTORY;
        if (self->history[i].payload && now_ms - self->history[i].ms < self->keep_ms)
            break;
        Py_CLEAR(self->history[i].payload);
        self->history_tail++;
    }
}

static inline uint32_t mono_ms(void)
{
    return (uint32_t)(mono_ns() / 1000000);
}

/* Keep the packet just rewritten into self->buf (`len` bytes around `payload`) for
 * NACKs: a reference to the payload and the bytes this leg wrote. Allocates nothing
 * and runs no Python code. */
static void Leg_remember(Leg *self, PyObject *payload, Py_ssize_t len)
{
    const unsigned char *b = self->buf;
    uint16_t seq = (uint16_t)(b[2] << 8 | b[3]);
    uint32_t now_ms = (uint32_t)(self->now_ns / 1000000); /* as rewritten, just now */
    Leg_cull(self, seq, now_ms);
    Sent *slot = &self->history[seq % HISTORY];
    if ((uint16_t)(seq - self->history_tail) >= 0x8000) { /* behind the tail: late */
        if (slot->payload && slot->seq != seq &&
            (uint16_t)(slot->seq - self->history_tail) < 0x8000)
            return; /* over 512 late: its slot holds a newer packet, the likelier NACK */
        if (self->late_n == LATE)
            Leg_drop_late(self);
        self->late[self->late_n++] = seq;
    }
    Py_INCREF(payload);
    Py_XSETREF(slot->payload, payload);
    slot->ms = now_ms;
    slot->seq = seq;
    slot->ts = (uint32_t)b[4] << 24 | (uint32_t)b[5] << 16 | (uint32_t)b[6] << 8 | b[7];
    slot->marker = (b[1] & 0x80) != 0;
    slot->config = self->config_gen;
    if (self->abs_off)
        memcpy(slot->abs, b + 12 + self->abs_off, 3);
    Py_ssize_t plen = len - 12 - self->ext_len, h = plen < HEAD ? plen : HEAD;
    memcpy(slot->head, b + 12 + self->ext_len, (size_t)h);
}

/* The packet this leg sent with sequence number seq, unprotected, as a new bytes
 * object; None if the history no longer has it. */
static PyObject *Leg_sent_packet(Leg *self, uint16_t seq)
{
    Sent *slot = &self->history[seq % HISTORY];
    if (!slot->payload || slot->seq != seq || slot->config != self->config_gen)
        Py_RETURN_NONE;
    Py_ssize_t plen = PyBytes_GET_SIZE(slot->payload), h = plen < HEAD ? plen : HEAD;
    Py_ssize_t len = 12 + self->ext_len + plen;
    PyObject *out = PyBytes_FromStringAndSize(NULL, len);
    if (!out)
        return NULL;
    unsigned char *b = (unsigned char *)PyBytes_AS_STRING(out);
    b[0] = self->first_byte;
    b[1] = (uint8_t)((slot->marker ? 0x80 : 0) | self->pt);
    b[2] = seq >> 8;
    b[3] = seq & 0xFF;
    b[4] = slot->ts >> 24;
    b[5] = (slot->ts >> 16) & 0xFF;
    b[6] = (slot->ts >> 8) & 0xFF;
    b[7] = slot->ts & 0xFF;
    b[8] = self->ssrc >> 24;
    b[9] = (self->ssrc >> 16) & 0xFF;
    b[10] = (self->ssrc >> 8) & 0xFF;
    b[11] = self->ssrc & 0xFF;
    memcpy(b + 12, self->ext, self->ext_len);
    if (self->abs_off)
        memcpy(b + 12 + self->abs_off, slot->abs, 3);
    memcpy(b + 12 + self->ext_len, PyBytes_AS_STRING(slot->payload), plen);
    memcpy(b + 12 + self->ext_len, slot->head, (size_t)h);
    return out;
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
    Leg_remember(self, args[0], len);
    PyObject *data = PyBytes_FromStringAndSize((const char *)self->buf, len);
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
        Py_RETURN_NONE; /* stale or thinned: dropped */
    Leg_remember(self, payload, len);
    if (!self->routed || Leg_buffered(self)) /* the route went, or asyncio holds earlier */
        return PyBytes_FromStringAndSize((const char *)self->buf, len); /* writes: queue */
    /* no Python code runs from here to the end: the route stays as checked */
    int plen = (int)len;
    if (self->srtp.rtp(self->srtp.ctx, self->buf, &plen) != 0) {
        self->errors++;
        Py_RETURN_NONE;
    }
    ssize_t n = sendto(fd, self->buf, (size_t)plen, MSG_DONTWAIT,
                       (struct sockaddr *)&self->addr, self->addrlen);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
            /* Python queues it (aiortc's tx session allows the re-protect); self->buf
             * is protected by now, the history has it as it was before */
            uint16_t out_seq = (uint16_t)(self->buf[2] << 8 | self->buf[3]);
            return Leg_sent_packet(self, out_seq);
        }
        self->errors++;
        Py_RETURN_NONE;
    }
    Meter *m = self->meter;
    m->packets++;
    m->bytes += (unsigned long long)len;
    int64_t sent_ns = mono_ns();
    meter_observe(m, sent_ns - t_in);
    self->sr_packets++;
    self->sr_octets += (unsigned long long)(len - 12 - self->ext_len);
    self->sr_rtp_ts = out_ts;
    self->sr_mono_ns = sent_ns;
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

PyObject *fp_py_fanout(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
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
    return fp_fanout(args[0], args[1], marker, seq, ts, ssrc, t_in);
}

PyObject *fp_fanout(PyObject *legs, PyObject *payload, int marker, uint32_t seq, uint32_t ts,
                    uint32_t ssrc, long long t_in)
{
    PyObject *slow = NULL;
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
            r = leg_send(leg, payload, marker, seq, ts, ssrc, t_in);
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
    return Leg_sent_packet(self, (uint16_t)seq);
}

/* The NTP time of the last send, from the monotonic time it was taken at: an NTP clock
 * read per packet and leg would only ever be used for the last packet before a report. */
static uint64_t Leg_sr_ntp(Leg *self)
{
    if (!self->sr_mono_ns)
        return 0;
    int64_t ago = mono_ns() - self->sr_mono_ns;
    if (ago < 0)
        ago = 0;
    uint64_t ago_ntp = ((uint64_t)(ago / 1000000000LL) << 32) |
                       (((uint64_t)(ago % 1000000000LL) << 32) / 1000000000ULL);
    return ntp_now() - ago_ntp;
}

static PyObject *Leg_take_counters(Leg *self, PyObject *unused)
{
    /* take_counters() -> (packets, octets, ntp, rtp_ts, tx_packets, tx_bytes, errors,
     * stale, thinned) since the last call: sent by this path (ntp/rtp_ts of the last
     * packet), failed sends, late packets dropped at a rebase point, and packets of
     * temporal layers thinned out (Leg_thin). */
    PyObject *out = Py_BuildValue("(KKKIKKKKK)", self->sr_packets, self->sr_octets,
                                  (unsigned long long)Leg_sr_ntp(self), self->sr_rtp_ts,
                                  self->tx_packets, self->tx_bytes, self->errors, self->stale,
                                  self->thinned);
    if (!out)
        return NULL;
    /* A leg that stopped sending (paused, parked) lets its history go here. */
    if (self->history_used)
        Leg_cull(self, (uint16_t)(self->last_out_seq + 1), mono_ms());
    self->sr_packets = self->sr_octets = self->tx_packets = self->tx_bytes = 0;
    self->errors = self->stale = self->thinned = 0;
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
     "set_route(srtp_ctx, protect_fn, session, sock, host, port, live[, transport])"},
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

static PyObject *Leg_get_vp8(Leg *self, void *closure)
{
    return PyBool_FromLong(self->vp8);
}

static int Leg_set_vp8(Leg *self, PyObject *value, void *closure)
{
    int v = value ? PyObject_IsTrue(value) : 0;
    if (v < 0)
        return -1;
    self->vp8 = v;
    return 0;
}

static PyObject *Leg_get_keep_ms(Leg *self, void *closure)
{
    return PyLong_FromUnsignedLong(self->keep_ms);
}

static int Leg_set_keep_ms(Leg *self, PyObject *value, void *closure)
{
    unsigned long ms = value ? PyLong_AsUnsignedLong(value) : (unsigned long)-1;
    if (ms == (unsigned long)-1 && (!value || PyErr_Occurred())) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "keep_ms cannot be deleted");
        return -1;
    }
    self->keep_ms = (uint32_t)(ms > 0x7FFFFFFF ? 0x7FFFFFFF : ms);
    return 0;
}

static PyObject *Leg_get_last_seq(Leg *self, void *closure)
{
    return PyLong_FromUnsignedLong(self->last_out_seq);
}

static PyObject *Leg_get_temporal(Leg *self, void *closure)
{
    if (self->tid_want == ALL_LAYERS)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->tid_want);
}

static int Leg_set_temporal(Leg *self, PyObject *value, void *closure)
{
    if (!value || value == Py_None) {
        self->tid_want = ALL_LAYERS;
        return 0;
    }
    long t = PyLong_AsLong(value);
    if (t == -1 && PyErr_Occurred())
        return -1;
    if (t < 0 || t > 3) {
        PyErr_SetString(PyExc_ValueError, "temporal: a layer 0-3, or None for all");
        return -1;
    }
    self->tid_want = (uint8_t)t;
    return 0;
}

static PyObject *Leg_get_temporal_now(Leg *self, void *closure)
{
    if (self->tid_max == ALL_LAYERS)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->tid_max);
}

static PyGetSetDef Leg_getset[] = {
    {"temporal", (getter)Leg_get_temporal, (setter)Leg_set_temporal,
     "the highest VP8 temporal layer to forward, None for all (Leg_thin)", NULL},
    {"temporal_now", (getter)Leg_get_temporal_now, NULL,
     "the highest temporal layer forwarded now: `temporal` once a picture allowed the change",
     NULL},
    {"vp8", (getter)Leg_get_vp8, (setter)Leg_set_vp8,
     "VP8 payloads: keep their picture ids continuous across sources (vp8.c)", NULL},
    {"keep_ms", (getter)Leg_get_keep_ms, (setter)Leg_set_keep_ms,
     "how long (ms) a sent packet stays in the NACK history", NULL},
    {"ready", (getter)Leg_get_ready, (setter)Leg_set_ready,
     "whether fanout() may send to this leg at once (kept by sfu.forwarder.Leg)", NULL},
    {"routed", (getter)Leg_get_routed, NULL, "whether a usable route is set", NULL},
    {"last_seq", (getter)Leg_get_last_seq, NULL,
     "the newest output sequence number sent (sfu.downlink fences reports with it)", NULL},
    {NULL},
};

PyTypeObject LegType = {
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

