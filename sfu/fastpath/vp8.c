/*
 * VP8's RTP payload descriptor (RFC 7741 4.2): where a key frame starts, and the
 * picture numbering a subscriber sees across a change of source.
 *
 * A leg that moves between simulcast layers sends the subscriber one stream made of
 * pieces of several: sequence numbers and timestamps are made continuous in leg.c, and
 * here the descriptor's PictureID (and TL0PICIDX) too. Each layer numbers its pictures
 * on its own, so without this the subscriber's picture ids jump at every switch, and
 * Chromium's VP8 receiver takes a jump for lost pictures (it waits for them or asks for
 * another key frame). As mediasoup's VP8 EncodingContext and LiveKit's VP8 munger do:
 * at the first packet of a new source (or of the same one resumed at a key frame after a
 * pause) the offset is chosen so its picture id is the last one sent plus one, and every packet of that source is shifted by the same offset, so
 * gaps and reordering within a layer stay as the publisher made them. The first source
 * a leg ever forwards keeps its own numbers (offset 0): a leg that never switches sends
 * the publisher's descriptor unchanged. The descriptor keeps its size (a 7-bit picture
 * id stays 7 bits, wrapping at 128); the KEYIDX of the T/K byte is left alone.
 *
 * Nothing here crosses into Python: leg.c calls fp_vp8_rewrite() on the rewritten
 * packet's payload, inbound.c calls fp_vp8_keyframe_start(); Leg.vp8 (set from
 * sfu.forwarder.Leg.configure) says whether a leg forwards VP8 at all.
 */
#include "fastpath.h"

/* Offsets of the PictureID (-1: none; *wide 1 for 15 bits), TL0PICIDX (-1: none) and
 * the TID/Y/KEYIDX byte (-1: none) in a descriptor, and of the VP8 payload header; 0,
 * or -1 for a short packet. */
static int vp8_fields(const unsigned char *p, Py_ssize_t n, Py_ssize_t *pid, int *wide,
                      Py_ssize_t *tl0, Py_ssize_t *tk, Py_ssize_t *hdr)
{
    *pid = *tl0 = *tk = -1;
    *wide = 0;
    if (n < 1)
        return -1;
    Py_ssize_t i = 1;
    if (p[0] & 0x80) { /* X: the extension byte follows */
        if (n < 2)
            return -1;
        unsigned char x = p[1];
        i = 2;
        if (x & 0x80) { /* I: PictureID, 7 or 15 bits (M) */
            if (i >= n)
                return -1;
            *wide = (p[i] & 0x80) != 0;
            if (*wide && i + 1 >= n)
                return -1;
            *pid = i;
            i += *wide ? 2 : 1;
        }
        if (x & 0x40) { /* L: TL0PICIDX */
            if (i >= n)
                return -1;
            *tl0 = i;
            i += 1;
        }
        if (x & 0x30) { /* T or K: the TID/Y/KEYIDX byte */
            if (i >= n)
                return -1;
            if (x & 0x20) /* T: its TID is valid */
                *tk = i;
            i += 1;
        }
    }
    *hdr = i;
    return 0;
}

int fp_vp8_keyframe_start(const unsigned char *p, Py_ssize_t n)
{
    /* as sfu.codecs.vp8_keyframe_start: S set, partition 0, and the frame tag's P bit
     * clear */
    if (n < 1 || !(p[0] & 0x10) || (p[0] & 0x07))
        return 0;
    FpVp8Layer l;
    return fp_vp8_layer(p, n, &l) == 0 && l.key;
}

int fp_vp8_layer(const unsigned char *p, Py_ssize_t n, FpVp8Layer *out)
{
    Py_ssize_t pid, tl0, tk, hdr;
    int wide;
    out->tid = out->start = out->sync = out->key = 0;
    out->pid = -1;
    out->mask = 0;
    if (vp8_fields(p, n, &pid, &wide, &tl0, &tk, &hdr) < 0)
        return -1;
    if (tk >= 0) {
        out->tid = p[tk] >> 6;
        out->sync = (p[tk] & 0x20) != 0;
    }
    out->start = (p[0] & 0x10) && !(p[0] & 0x07);
    out->key = out->start && hdr < n && !(p[hdr] & 0x01);
    if (pid >= 0) {
        out->mask = wide ? 0x7FFF : 0x7F;
        out->pid = wide ? ((p[pid] & 0x7F) << 8 | p[pid + 1]) : p[pid] & 0x7F;
    }
    return 0;
}

void fp_vp8_rewrite(FpVp8 *v, unsigned char *p, Py_ssize_t n, int resync, uint16_t late_adj)
{
    Py_ssize_t pid_at, tl0_at, tk_at, hdr;
    int wide;
    if (resync)
        v->pending = 1; /* the offsets are chosen at its first picture id */
    if (vp8_fields(p, n, &pid_at, &wide, &tl0_at, &tk_at, &hdr) < 0 || pid_at < 0)
        return; /* no picture id: nothing a subscriber could count on */
    uint16_t pid = wide ? (uint16_t)((p[pid_at] & 0x7F) << 8 | p[pid_at + 1]) : p[pid_at] & 0x7F;
    uint16_t mask = wide ? 0x7FFF : 0x7F;
    uint8_t tl0 = tl0_at >= 0 ? p[tl0_at] : 0;
    if (v->pending) {
        v->pid_off = v->sent ? (uint16_t)(v->last_pid + 1 - pid) : 0;
        v->tl0_off = v->tl0_sent ? (uint8_t)(v->last_tl0 + 1 - tl0) : 0;
        v->pending = 0;
    }
    uint16_t out = (uint16_t)(pid + v->pid_off + late_adj) & mask;
    uint8_t out_tl0 = (uint8_t)(tl0 + v->tl0_off);
    if (wide) {
        p[pid_at] = 0x80 | (uint8_t)(out >> 8);
        p[pid_at + 1] = out & 0xFF;
    } else {
        p[pid_at] = (uint8_t)out;
    }
    if (tl0_at >= 0)
        p[tl0_at] = out_tl0;
    /* remember the newest picture (a late packet of an older one changes nothing) */
    if (!v->sent || (uint16_t)((out - v->last_pid) & mask) < (mask >> 1) + 1) {
        v->last_pid = out;
        if (tl0_at >= 0) {
            v->last_tl0 = out_tl0;
            v->tl0_sent = 1;
        }
        v->sent = 1;
    }
}
