/*
 * Reader: reads every datagram queued on an ICE socket in one event-loop callback.
 *
 * Crosses into Python:
 * - per wakeup: the event loop calls the Reader (it is the socket's read callback,
 *   installed by sfu.aiortc_hooks / sfu.udpmux instead of asyncio's _read_ready); it
 *   reads up to FP_READ_BATCH datagrams, MMSG per recvmmsg(), then returns to the loop.
 * - per SRTP packet: one attribute read of the DTLS state, then one call of the
 *   connection's on_rtp(Packet, ntp_ms) (or on_rtcp(bytes) for SRTCP).
 * - per datagram that is not SRTP (STUN, DTLS) or whose connection has no SRTP yet:
 *   the protocol's datagram_received(data, addr), as asyncio would call it.
 * - per callback, per connection touched: its DTLS transport's rx counters (getStats).
 * - on a shared socket (sfu/udpmux.py): one dict lookup per datagram, in C, in the
 *   routes dict Python keeps (addr_key(host, port) -> the owning Reader).
 * - with read coalescing (coalesce(loop, window), the shared socket): after a read
 *   callback, loop.remove_reader(fd) and loop.call_later(window, poll); each poll reads
 *   what arrived meanwhile and calls call_later again, or, when nothing arrived (or a
 *   full FP_READ_BATCH did), loop.add_reader(fd, reader). So while media flows the loop
 *   wakes for this socket once per window, not once per datagram or two.
 */
#include "fastpath.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#define MMSG 16   /* datagrams per recvmmsg() */
/* A slot per datagram of one recvmmsg(). WebRTC keeps datagrams under the path MTU
 * (media, DTLS records, STUN); one that does not fit is dropped (MSG_TRUNC). */
#define SLOT 8192

/* Only ever used by one read callback at a time: the event loop does not nest them. */
static unsigned char slots[MMSG][SLOT];
static struct mmsghdr msgs[MMSG];
static struct iovec iovs[MMSG];
static struct sockaddr_storage addrs[MMSG];
/* The kernel's receive time of each datagram (SO_TIMESTAMPNS, enabled per socket in
 * Reader_init): transport-cc reports when a packet reached the host, not when the
 * event loop got round to it, so a busy loop does not look like a congested link and
 * a probe cluster read in one batch keeps its spread. */
static union {
    char buf[CMSG_SPACE(sizeof(struct timespec))];
    struct cmsghdr align;
} ctrls[MMSG];
static int64_t arrival_ns; /* the datagram being handled: kernel time on CLOCK_MONOTONIC */

typedef struct {
    PyObject_HEAD
    int fd;
    PyObject *datagram_received; /* the protocol's datagram_received(data, addr) */
    PyObject *error_received;    /* the protocol's error_received(exc) */
    /* set once the DTLS transport is connected: SRTP goes to on_rtp/on_rtcp directly */
    int rtp;
    FpSrtp srtp;    /* .rtp, .rtcp: srtp_unprotect, srtp_unprotect_rtcp */
    PyObject *dtls; /* aiortc's RTCDtlsTransport, whose receive counters we keep */
    PyObject *on_rtp, *on_rtcp;
    int abs_id, mid_id, rid_id, rrid_id; /* header extension ids, 0: not negotiated */
    /* transport-cc: the extension id and where arrivals go (twcc.c); NULL: not negotiated */
    int twcc_id;
    PyObject *arrivals;
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
    /* Read coalescing (Reader_coalesce): every wake-up of the event loop costs ~15 us
     * of kernel sleep and wake in this VM, and at a few thousand datagrams a second
     * they arrive one or two per wake-up. NULL loop: off (the loop calls us per
     * readiness). Else, after a read the socket is not watched for `window` seconds;
     * a timer (poll) reads what arrived meanwhile in one batch. A datagram waits at
     * most about `window` more than it would have (the loop's timers have 1 ms
     * resolution), and the first one after a quiet spell waits not at all. */
    PyObject *loop;
    PyObject *poll;  /* this Reader's bound poll method, made once */
    PyObject *timer; /* the loop's TimerHandle of the next poll; NULL: watched */
    PyObject *window;
    unsigned long long polls;
    int last_count; /* datagrams of the last read */
} Reader;

static void Reader_clear_rtp_(Reader *self)
{
    self->rtp = 0;
    fp_srtp_clear(&self->srtp);
    Py_CLEAR(self->dtls);
    Py_CLEAR(self->on_rtp);
    Py_CLEAR(self->on_rtcp);
    Py_CLEAR(self->arrivals);
}

static int Reader_traverse(Reader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->datagram_received);
    Py_VISIT(self->error_received);
    Py_VISIT(self->dtls);
    Py_VISIT(self->on_rtp);
    Py_VISIT(self->on_rtcp);
    Py_VISIT(self->routes);
    Py_VISIT(self->arrivals);
    Py_VISIT(self->loop);
    Py_VISIT(self->poll);
    Py_VISIT(self->timer);
    Py_VISIT(self->window);
    return fp_srtp_traverse(&self->srtp, visit, arg);
}

static int Reader_clear(Reader *self)
{
    Py_CLEAR(self->datagram_received);
    Py_CLEAR(self->error_received);
    Py_CLEAR(self->routes);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->poll);
    Py_CLEAR(self->timer);
    Py_CLEAR(self->window);
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
    if (fd >= 0) {
        int on = 1; /* best effort: without it, arrival is when the batch was read */
        (void)setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on));
    }
    Py_INCREF(dr);
    Py_XSETREF(self->datagram_received, dr);
    Py_INCREF(er);
    Py_XSETREF(self->error_received, er);
    return 0;
}

static PyObject *Reader_set_rtp(Reader *self, PyObject *args)
{
    /* set_rtp(srtp_ctx, unprotect_fn, unprotect_rtcp_fn, session, dtls, live,
     *         on_rtp, on_rtcp, abs_id, mid_id[, rid_id, rrid_id]): live is dtls's Live */
    unsigned long long ctx, fn, fn_rtcp;
    PyObject *session, *dtls, *live, *on_rtp, *on_rtcp;
    int abs_id, mid_id, rid_id = 0, rrid_id = 0;
    if (!PyArg_ParseTuple(args, "KKKOOOOOii|ii", &ctx, &fn, &fn_rtcp, &session, &dtls,
                          &live, &on_rtp, &on_rtcp, &abs_id, &mid_id, &rid_id, &rrid_id))
        return NULL;
    if (!ctx || !fn || !fn_rtcp || !PyCallable_Check(on_rtp) || !PyCallable_Check(on_rtcp)) {
        PyErr_SetString(PyExc_ValueError, "incomplete RTP route");
        return NULL;
    }
    Reader_clear_rtp_(self);
    if (fp_srtp_set(&self->srtp, (void *)(uintptr_t)ctx, (srtp_fn)(uintptr_t)fn,
                    (srtp_fn)(uintptr_t)fn_rtcp, session, live) < 0)
        return NULL;
    self->dtls = Py_NewRef(dtls);
    Py_INCREF(on_rtp);
    self->on_rtp = on_rtp;
    Py_INCREF(on_rtcp);
    self->on_rtcp = on_rtcp;
    self->abs_id = abs_id;
    self->mid_id = mid_id;
    self->rid_id = rid_id;
    self->rrid_id = rrid_id;
    self->rtp = 1;
    Py_RETURN_NONE;
}

static PyObject *Reader_set_twcc(Reader *self, PyObject *args)
{
    /* set_twcc(ext_id, arrivals | None), after set_rtp: record every RTP packet's
     * transport-wide sequence number and arrival time in arrivals */
    int ext_id;
    PyObject *arrivals;
    if (!PyArg_ParseTuple(args, "iO", &ext_id, &arrivals))
        return NULL;
    if (arrivals != Py_None && (Py_TYPE(arrivals) != &ArrivalsType || ext_id < 1 || ext_id > 255)) {
        PyErr_SetString(PyExc_ValueError, "set_twcc(ext_id 1..255, Arrivals | None)");
        return NULL;
    }
    self->twcc_id = ext_id;
    Py_XSETREF(self->arrivals, arrivals == Py_None ? NULL : Py_NewRef(arrivals));
    Py_RETURN_NONE;
}

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

int fp_sockaddr(const char *host, int port, struct sockaddr_storage *a, socklen_t *len)
{
    memset(a, 0, sizeof(*a));
    struct sockaddr_in *a4 = (struct sockaddr_in *)a;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)a;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof(*a4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*a6);
        return 0;
    }
    return -1;
}

PyObject *fp_py_addr_key(PyObject *module, PyObject *args)
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
    socklen_t len;
    if (fp_sockaddr(host, port, &a, &len) < 0) {
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

/* Hand one datagram to the protocol like asyncio's _read_ready would. */
static int Reader_fallback(Reader *self, const unsigned char *buf, Py_ssize_t n,
                           const struct sockaddr_storage *addr)
{
    PyObject *data = PyBytes_FromStringAndSize((const char *)buf, n);
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

static PyObject *Reader_drain(Reader *self, Reader **touched, int *ntouched, int *count);
static int Reader_schedule(Reader *self);
static int Reader_take(Reader *self, unsigned char *buf, Py_ssize_t n,
                       const struct sockaddr_storage *addr, int flags, Reader **touched,
                       int *ntouched);

/* Add what a Reader read since the last flush to its DTLS transport's counters (read
 * by getStats): once per read callback rather than per packet. */
static void Reader_flush_counters(Reader *t)
{
    if (!t->dtls || !t->pending_packets)
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (add_to_attr(t->dtls, fp_str_rx_packets, t->pending_packets) < 0 ||
        add_to_attr(t->dtls, fp_str_rx_bytes, t->pending_bytes) < 0)
        PyErr_Clear();
    PyErr_Restore(type, value, tb);
    t->pending_packets = t->pending_bytes = 0;
}

/* One read callback: up to FP_READ_BATCH datagrams; their count in self->last_count. */
static PyObject *Reader_read(Reader *self, PyObject *unused)
{
    self->wakeups++;
    Reader *touched[FP_READ_BATCH];
    int ntouched = 0;
    self->last_count = 0;
    PyObject *r = Reader_drain(self, touched, &ntouched, &self->last_count);
    for (int i = 0; i < ntouched; i++) {
        Reader_flush_counters(touched[i]);
        Py_DECREF(touched[i]);
    }
    return r;
}

/* Stop watching the socket and read it again in a window. 0, or -1 (error set). */
static int Reader_pause(Reader *self)
{
    PyObject *fd = PyLong_FromLong(self->fd);
    PyObject *r = fd ? PyObject_CallMethodOneArg(self->loop, fp_str_remove_reader, fd) : NULL;
    Py_XDECREF(fd);
    if (!r)
        return -1;
    Py_DECREF(r);
    return Reader_schedule(self);
}

static int Reader_schedule(Reader *self)
{
    PyObject *t = PyObject_CallMethodObjArgs(self->loop, fp_str_call_later, self->window,
                                             self->poll, NULL);
    if (!t)
        return -1;
    Py_XSETREF(self->timer, t);
    return 0;
}

/* Watch the socket again (the loop calls the Reader on readiness). */
static int Reader_watch(Reader *self)
{
    PyObject *fd = PyLong_FromLong(self->fd);
    PyObject *r = fd ? PyObject_CallMethodObjArgs(self->loop, fp_str_add_reader, fd,
                                                  (PyObject *)self, NULL)
                     : NULL;
    Py_XDECREF(fd);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *Reader_poll(Reader *self, PyObject *unused)
{
    /* The window's timer: read what arrived during it. Whatever happens, the socket
     * is read again: by another timer, or by the loop watching it. */
    Py_CLEAR(self->timer);
    if (!self->loop || self->fd < 0)
        Py_RETURN_NONE; /* stopped */
    self->polls++;
    PyObject *r = Reader_read(self, NULL);
    int rearm;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (r && self->last_count > 0 && self->last_count < FP_READ_BATCH)
        rearm = Reader_schedule(self); /* media flows: the next batch in a window */
    else
        rearm = Reader_watch(self); /* quiet (or more than a batch): the loop wakes us */
    if (rearm < 0) {
        Py_XDECREF(r);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    PyErr_Restore(type, value, tb);
    return r;
}

static PyObject *Reader_coalesce(Reader *self, PyObject *args)
{
    /* coalesce(loop, window_s): read coalescing (above), after loop.add_reader(fd, self) */
    PyObject *loop;
    double window;
    if (!PyArg_ParseTuple(args, "Od", &loop, &window))
        return NULL;
    if (self->fd < 0 || !(window > 0 && window <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "coalesce(loop, 0 < window <= 1 s) on a socket");
        return NULL;
    }
    PyObject *w = PyFloat_FromDouble(window);
    PyObject *poll = w ? PyObject_GetAttrString((PyObject *)self, "poll") : NULL;
    if (!poll) {
        Py_XDECREF(w);
        return NULL;
    }
    Py_XSETREF(self->window, w);
    Py_XSETREF(self->poll, poll);
    Py_INCREF(loop);
    Py_XSETREF(self->loop, loop);
    Py_RETURN_NONE;
}

static PyObject *Reader_stop(Reader *self, PyObject *unused)
{
    /* stop(): no more polls (the socket is being closed; the caller removes the
     * loop's reader). Breaks the Reader -> poll -> Reader cycle. */
    if (self->timer) {
        PyObject *r = PyObject_CallMethod(self->timer, "cancel", NULL);
        if (!r)
            return NULL;
        Py_DECREF(r);
    }
    Py_CLEAR(self->timer);
    Py_CLEAR(self->poll);
    Py_CLEAR(self->loop);
    Py_RETURN_NONE;
}

static PyObject *Reader_call(Reader *self, PyObject *args, PyObject *kwds)
{
    /* The event loop's read callback: up to FP_READ_BATCH datagrams, then back to the loop. */
    if (!self->datagram_received || !self->error_received) {
        PyErr_SetString(PyExc_RuntimeError, "Reader was not initialised");
        return NULL;
    }
    if (self->fd < 0) {
        PyErr_SetString(PyExc_RuntimeError, "a routed Reader has no socket of its own");
        return NULL;
    }
    PyObject *r = Reader_read(self, NULL);
    if (!r || !self->loop || self->timer)
        return r;
    /* The loop woke us for what was queued: leave the socket unwatched for a window,
     * unless a full batch says more is waiting (the loop will call again at once). */
    if (self->last_count < FP_READ_BATCH && Reader_pause(self) < 0)
        Py_CLEAR(r);
    return r;
}

/* Handle one datagram in buf with t's SRTP state and protocol. 0, or -1 with an
 * exception set. */
static int Reader_handle(Reader *t, unsigned char *buf, Py_ssize_t n,
                         const struct sockaddr_storage *addr)
{
    unsigned char b0 = buf[0], b1 = n > 1 ? buf[1] : 0;
    if (!(t->rtp && n > 12 && b0 > 127 && b0 < 192))
        return Reader_fallback(t, buf, n, addr);
    if (!fp_srtp_live(&t->srtp)) {
        Reader_clear_rtp_(t);
        return Reader_fallback(t, buf, n, addr);
    }
    t->rx_packets++;
    t->rx_bytes += (unsigned long long)n;
    t->pending_packets++;
    t->pending_bytes += (unsigned long long)n;
    int len = (int)n;
    if (b1 > 191 && b1 < 209) { /* SRTCP, by aiortc's is_rtcp */
        if (t->srtp.rtcp(t->srtp.ctx, buf, &len) != 0)
            return 0;
        PyObject *data = PyBytes_FromStringAndSize((const char *)buf, len);
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
    if (t->srtp.rtp(t->srtp.ctx, buf, &len) != 0)
        return 0; /* not authentic, or replayed: dropped, as aiortc does */
    if (t->arrivals)
        fp_arrivals_record(t->arrivals, buf, len, t->twcc_id, arrival_ns);
    /* The packet's arrival, from which the SFU's forwarding latency is measured, is
     * the kernel's receive time: it includes the wait for the event loop (and a
     * coalescing window, below), not only the work after the read. */
    PyObject *p =
        fp_parse_rtp(buf, len, t->abs_id, t->mid_id, t->rid_id, t->rrid_id, arrival_ns);
    if (!p)
        return 0;
    PyObject *ms = PyLong_FromLongLong(ntp_ms());
    PyObject *callback = t->on_rtp;
    Py_INCREF(callback); /* the call may replace what the reader holds */
    PyObject *r = ms ? PyObject_CallFunctionObjArgs(callback, p, ms, NULL) : NULL;
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

/* Up to FP_READ_BATCH datagrams, MMSG per recvmmsg(): one system call for what arrived
 * together instead of one each. */
static PyObject *Reader_drain(Reader *self, Reader **touched, int *ntouched, int *count)
{
    int budget = FP_READ_BATCH;
    while (budget > 0) {
        unsigned int want = budget < MMSG ? (unsigned int)budget : MMSG;
        for (unsigned int i = 0; i < want; i++) {
            iovs[i].iov_base = slots[i];
            iovs[i].iov_len = SLOT;
            memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &addrs[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
            msgs[i].msg_hdr.msg_control = ctrls[i].buf;
            msgs[i].msg_hdr.msg_controllen = sizeof(ctrls[i].buf);
        }
        int got = recvmmsg(self->fd, msgs, want, MSG_DONTWAIT, NULL);
        if (got < 0) {
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
        budget -= got;
        *count += got;
        int64_t t_in = mono_ns();
        struct timespec wall;
        clock_gettime(CLOCK_REALTIME, &wall);
        int64_t wall_to_mono = t_in - ((int64_t)wall.tv_sec * 1000000000LL + wall.tv_nsec);
        for (int i = 0; i < got; i++) {
            arrival_ns = t_in;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c;
                 c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                    struct timespec k;
                    memcpy(&k, CMSG_DATA(c), sizeof(k));
                    int64_t kernel = (int64_t)k.tv_sec * 1000000000LL + k.tv_nsec + wall_to_mono;
                    if (kernel <= t_in) /* never after we read it (a clock step) */
                        arrival_ns = kernel;
                }
            }
            if (Reader_take(self, slots[i], (Py_ssize_t)msgs[i].msg_len, &addrs[i],
                            msgs[i].msg_hdr.msg_flags, touched, ntouched) < 0)
                return NULL;
        }
        if ((unsigned int)got < want)
            break; /* the socket is empty */
    }
    Py_RETURN_NONE;
}

/* One datagram of a batch: to the Reader that owns its address. 0, or -1 (error set). */
static int Reader_take(Reader *self, unsigned char *buf, Py_ssize_t n,
                       const struct sockaddr_storage *addr, int flags, Reader **touched,
                       int *ntouched)
{
    if (flags & MSG_TRUNC)
        return 0; /* larger than any datagram WebRTC sends: dropped */
    self->datagrams++;
    Reader *t = self;
    if (self->routes) {
        t = Reader_route(self, addr);
        if (!t) {
            if (PyErr_Occurred() || Reader_fallback(self, buf, n, addr) < 0)
                return -1;
            return 0;
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
    return Reader_handle(t, buf, n, addr);
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

static PyObject *Reader_get_polls(Reader *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->polls);
}

static PyObject *Reader_get_paused(Reader *self, void *closure)
{
    return PyBool_FromLong(self->timer != NULL);
}

static PyMethodDef Reader_methods[] = {
    {"set_routes", (PyCFunction)Reader_set_routes, METH_O,
     "set_routes(routes): share this socket; routes maps addr_key(host, port) -> Reader"},
    {"set_rtp", (PyCFunction)Reader_set_rtp, METH_VARARGS,
     "set_rtp(srtp_ctx, unprotect_fn, unprotect_rtcp_fn, session, dtls, live, on_rtp, "
     "on_rtcp, abs_id, mid_id[, rid_id, rrid_id])"},
    {"coalesce", (PyCFunction)Reader_coalesce, METH_VARARGS,
     "coalesce(loop, window_s): after each read, leave the socket unwatched for window_s and "
     "read what arrived in one batch (the Reader must be the loop's reader of its fd)"},
    {"poll", (PyCFunction)Reader_poll, METH_NOARGS, "the coalescing window's timer callback"},
    {"stop", (PyCFunction)Reader_stop, METH_NOARGS, "stop(): cancel the next poll"},
    {"set_twcc", (PyCFunction)Reader_set_twcc, METH_VARARGS,
     "set_twcc(ext_id, arrivals | None): record transport-wide sequence numbers (twcc.c)"},
    {NULL},
};

static PyGetSetDef Reader_getset[] = {
    {"rtp", (getter)Reader_get_rtp, NULL, "whether SRTP is handled here", NULL},
    {"stats", (getter)Reader_get_stats, NULL, "(datagrams, wakeups) so far", NULL},
    {"rx", (getter)Reader_get_rx, NULL, "(SRTP packets, bytes) read here so far", NULL},
    {"polls", (getter)Reader_get_polls, NULL, "reads by a coalescing window's timer so far",
     NULL},
    {"paused", (getter)Reader_get_paused, NULL,
     "whether the socket is unwatched until the next poll (coalescing)", NULL},
    {NULL},
};

PyTypeObject ReaderType = {
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

