/*
 * sfu._fastpath: the per-packet half of the SFU in C, one file per concern.
 *
 *   reader.c  the event loop's read callback: drain a (shared) UDP socket, SRTP-unprotect
 *             and parse RTP, hand one Packet per RTP packet to Python
 *   packet.c  Packet: a parsed RTP packet readable like aiortc's RtpPacket; parse_rtp()
 *   srtp.c    the libsrtp session aiortc negotiated over DTLS, and the DTLS-state guard
 *   inbound.c Inbound/Track: a publisher's packet accounted and fanned out without Python
 *   twcc.c    Arrivals: transport-wide sequence numbers and arrival times (transport-cc)
 *   leg.c     Leg: rewrite, remember, protect and send one forwarded track; fanout()
 *   vp8.c     VP8 payload descriptor: key-frame start, picture ids continuous per leg
 *   meter.c   Meter: a room's forwarded-packet counters and latency histogram
 *   tally.c   RxTally: the load generator's subscribers count what they receive (bench)
 *   module.c  the module: its functions, types and the interned attribute names
 *
 * Everything here runs with the GIL held, on the event loop's thread.
 */
#ifndef ROUNDTABLE_FASTPATH_H
#define ROUNDTABLE_FASTPATH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#define NTP_EPOCH 2208988800ULL

/* ---- time ------------------------------------------------------------------------- */

static inline int64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* 64-bit NTP time (32.32 fixed point) */
static inline uint64_t ntp_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    uint64_t secs = (uint64_t)t.tv_sec + NTP_EPOCH;
    uint64_t frac = ((uint64_t)t.tv_nsec << 32) / 1000000000ULL;
    return (secs << 32) | frac;
}

/* aiortc.clock.current_ms(): milliseconds since the NTP epoch */
static inline long long ntp_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return ((long long)t.tv_sec + (long long)NTP_EPOCH) * 1000LL + t.tv_nsec / 1000000;
}

/* ---- interned attribute names (module.c) ------------------------------------------ */

extern PyObject *fp_str_fileno, *fp_str_buffer_size;
extern PyObject *fp_str_rx_packets, *fp_str_rx_bytes;
extern PyObject *fp_str_add_reader, *fp_str_remove_reader, *fp_str_call_later;

/* ---- srtp.c ----------------------------------------------------------------------- */

/* pylibsrtp's srtp_protect/srtp_unprotect (and their RTCP twins) */
typedef int (*srtp_fn)(void *ctx, void *hdr, int *len);

#define SRTP_TRAILER 144 /* pylibsrtp's SRTP_MAX_TRAILER_LEN */

/* A DTLS transport's state as the C path reads it: connected is set from Python by the
 * transport's _set_state (sfu.aiortc_hooks.live), never read from the transport. */
typedef struct {
    PyObject_HEAD
    char connected;
} Live;

extern PyTypeObject LiveType;

/* A libsrtp session borrowed from aiortc, valid while its DTLS transport is connected. */
typedef struct {
    void *ctx;
    srtp_fn rtp, rtcp; /* protect or unprotect, as the user set them; rtcp may be NULL */
    PyObject *session; /* pylibsrtp's Session: keeps ctx alive */
    Live *live;        /* the DTLS transport's state */
} FpSrtp;

/* 0, or -1 with an exception set (live is not a Live; s is left as it was) */
int fp_srtp_set(FpSrtp *s, void *ctx, srtp_fn rtp, srtp_fn rtcp, PyObject *session,
                PyObject *live);
void fp_srtp_clear(FpSrtp *s);
int fp_srtp_traverse(FpSrtp *s, visitproc visit, void *arg);
/* 1 while the DTLS transport is connected, 0 once it is not */
static inline int fp_srtp_live(const FpSrtp *s)
{
    return s->live && s->live->connected;
}

/* ---- meter.c ---------------------------------------------------------------------- */

#define MAX_BUCKETS 32

typedef struct {
    PyObject_HEAD
    int64_t bounds[MAX_BUCKETS];
    int nbounds;
    unsigned long long counts[MAX_BUCKETS + 1];
    unsigned long long total_ns;
    unsigned long long n;
    unsigned long long packets;
    unsigned long long bytes;
    unsigned long long packets_in; /* RTP packets received from publishers */
    unsigned long long bytes_in;   /* their payload bytes */
    unsigned long long packets_in_py; /* of packets_in: those the Python path took */
} Meter;

extern PyTypeObject MeterType;

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

/* ---- packet.c --------------------------------------------------------------------- */

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
    PyObject *rid;           /* str or NULL: sdes:rtp-stream-id (a simulcast layer) */
    PyObject *rrid;          /* str or NULL: sdes:repaired-rtp-stream-id (its RTX) */
    long long arrival_ns;
} Packet;

extern PyTypeObject PacketType;
/* A new Packet, or NULL (no exception) for a malformed packet. */
PyObject *fp_parse_rtp(const unsigned char *d, Py_ssize_t n, int abs_id, int mid_id,
                       int rid_id, int rrid_id, long long arrival_ns);
PyObject *fp_py_parse_rtp(PyObject *module, PyObject *args);

/* ---- vp8.c ----------------------------------------------------------------------- */

/* A leg's VP8 picture numbering: what it sent last and the current source's offsets. */
typedef struct {
    int pending;  /* a new source began: choose the offsets at its first picture id */
    int sent, tl0_sent;
    uint16_t pid_off, last_pid;
    uint8_t tl0_off, last_tl0;
} FpVp8;

/* 1 if the VP8 RTP payload p[0..n) is the first packet of a key frame */
int fp_vp8_keyframe_start(const unsigned char *p, Py_ssize_t n);
/* Shift the payload descriptor's PictureID/TL0PICIDX in place onto the leg's numbering;
 * resync: continue from the last picture sent (another SSRC, or a resume at a key
 * frame); late_adj: added to a late packet's picture id (pictures thinned out after
 * it, leg.c). */
void fp_vp8_rewrite(FpVp8 *v, unsigned char *p, Py_ssize_t n, int resync, uint16_t late_adj);

/* What the temporal thinning in leg.c reads of a descriptor. */
typedef struct {
    int tid;       /* temporal layer (0 when the descriptor has no TID) */
    int start;     /* the packet starts a picture (S set, partition 0) */
    int sync;      /* Y: the picture refers only to layer 0 (a layer can start here) */
    int key;       /* it starts a key frame */
    int pid;       /* its PictureID as the publisher sent it, -1: none */
    uint16_t mask; /* 0x7F or 0x7FFF: the PictureID's width */
} FpVp8Layer;
/* 0, or -1 for a descriptor too short to read. */
int fp_vp8_layer(const unsigned char *p, Py_ssize_t n, FpVp8Layer *out);

/* ---- leg.c ------------------------------------------------------------------------ */

extern PyTypeObject LegType;
PyObject *fp_py_fanout(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
/* One packet to every ready Leg of the list `legs`: None, or a new list of (index,
 * result) for Python (see fanout() in leg.c); NULL with an exception set. */
PyObject *fp_fanout(PyObject *legs, PyObject *payload, int marker, uint32_t seq, uint32_t ts,
                    uint32_t ssrc, long long t_in);

/* ---- inbound.c -------------------------------------------------------------------- */

/* aiortc.rtp.RTP_HISTORY_SIZE: how far behind the newest packet NackGenerator keeps a
 * missing one (module constant NACK_HISTORY, checked by sfu.aiortc_hooks) */
#define FP_NACK_HISTORY 128

/* Datagrams per read callback, at most: what stays queued waits for the loop's next
 * iteration, behind every timer-wheel go and callback that is ready by then. 64 kept
 * ~2.6 ms of arrivals per callback at 75 rooms x 3 (25,000 datagrams/s) and the SFU p99
 * at 21-47 ms; 256 read what queued during a wheel go at once and held it at 8.8-9.5 ms
 * (docs/bench.md, 2026-12-03). At ~26 us per media datagram with two subscribers, a full
 * batch is ~7 ms of work: the bound on how long the socket keeps the loop from the rest
 * (signalling, timers) under overload. */
#define FP_READ_BATCH 256

extern PyTypeObject InboundType, TrackType;
int fp_inbound_init_names(void);

/* ---- twcc.c ----------------------------------------------------------------------- */

extern PyTypeObject ArrivalsType;
/* Record the transport-wide sequence number (extension ext_id) of the decrypted RTP
 * packet d[0..n) with its arrival time, if it carries one. */
void fp_arrivals_record(PyObject *arrivals, const unsigned char *d, Py_ssize_t n, int ext_id,
                        int64_t arrival_ns);

/* ---- tally.c (the load generator's receive side) ---------------------------------- */

extern PyTypeObject RxFlowType, RxTallyType;
int fp_tally_init(void);

/* ---- reader.c --------------------------------------------------------------------- */

extern PyTypeObject ReaderType;
PyObject *fp_py_addr_key(PyObject *module, PyObject *args);
/* host/port -> sockaddr; 0, or -1 if host is not a numeric address (no exception) */
int fp_sockaddr(const char *host, int port, struct sockaddr_storage *a, socklen_t *len);

#endif
