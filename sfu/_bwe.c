/*
 * sfu._bwe: aiortc's receive-side bandwidth estimator (aiortc.rate, 1.16.0) in C.
 *
 * The SFU feeds every received video packet that carries abs-send-time to a
 * RemoteBitrateEstimator, whose estimates go back to the publisher as REMB; in Python
 * that was ~12-15 % of the server's CPU. This is a line-by-line port of
 * RemoteBitrateEstimator and what it uses (RateCounter, InterArrival,
 * OveruseEstimator, OveruseDetector, AimdRateControl) that returns *the same* value
 * as aiortc's for every call, so the publisher hears exactly what it would from
 * aiortc. To that end:
 *
 * - Python floats are C doubles and every expression keeps Python's order of
 *   operations; builds must not contract a*b+c into FMAs (setup.py passes
 *   -ffp-contract=off). An int operand of a float operation is converted to double
 *   first, as CPython does; int / int (true division) is an exactly rounded double
 *   division, as CPython's; pow, sqrt, ceil and round come from the same libm.
 * - Python ints are int64_t. Inputs are range-checked so that no intermediate can
 *   overflow; the one product that can grow with the input (bytes in the rate
 *   window times 8000) falls back to Python ints when it leaves the exact range.
 * - round() rounds half to even, int() truncates, min/max return the first argument
 *   unless the second compares smaller/greater (so NaN behaves as in Python), and
 *   float ** and pow() raise where CPython's float_pow does. ZeroDivisionError,
 *   ValueError and OverflowError are raised at the same point, after the same
 *   state changes, as in aiortc.
 * - The rate counter's per-millisecond expiry loop clears a whole window at once
 *   when the gap is at least a window long (same buckets, same totals).
 *
 * add() allocates no Python object unless it returns an estimate; the SSRC list
 * holds the first int object seen for each SSRC, in first-seen order, as the keys of
 * aiortc's dict do.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BURST_DELTA_THRESHOLD_MS 5
#define MAX_ADAPT_OFFSET_MS 15
#define MIN_NUM_DELTAS 60
#define DELTA_COUNTER_MAX 1000
#define MIN_FRAME_PERIOD_HISTORY_LENGTH 60
#define INTER_ARRIVAL_SHIFT 26
#define TIMESTAMP_GROUP_LENGTH_MS 5
#define TIMESTAMP_TO_MS (1000.0 / (1 << INTER_ARRIVAL_SHIFT))
#define GROUP_LENGTH (((int64_t)TIMESTAMP_GROUP_LENGTH_MS << INTER_ARRIVAL_SHIFT) / 1000)
#define WINDOW 1000 /* incoming bitrate: RateCounter(1000, 8000) */
#define SCALE 8000
#define FEEDBACK_INTERVAL 500
#define EXACT (INT64_C(1) << 53) /* ints up to this convert to double exactly */
/* Input limits that keep every int64 intermediate far from overflow. */
#define MAX_TIME (INT64_C(1) << 60)
#define MAX_ABS_SEND_TIME (INT64_C(1) << 52)
#define MAX_PAYLOAD (INT64_C(1) << 32)

enum { NORMAL = 0, UNDERUSING = 1, OVERUSING = 2 };       /* BandwidthUsage */
enum { HOLD = 0, INCREASE = 1, DECREASE = 2 };            /* RateControlState */

typedef struct {
    int64_t arrival_time; /* set after the group's first packet, before it is read */
    int64_t first_timestamp;
    int64_t last_timestamp;
    int64_t size;
} Group;

typedef struct {
    PyObject_HEAD
    /* RateCounter */
    int64_t rc_count[WINDOW];
    int64_t rc_value[WINDOW];
    int64_t rc_origin_index, rc_origin_ms, rc_total_count, rc_total_value;
    int rc_has_origin;
    int incoming_bitrate_initialized;
    /* InterArrival */
    int has_current, has_previous;
    Group current, previous;
    /* OveruseEstimator */
    double e00, e01, e10, e11, offset, previous_offset, slope, avg_noise, var_noise;
    int64_t num_of_deltas;
    double hist[MIN_FRAME_PERIOD_HISTORY_LENGTH]; /* ring, oldest at hist_start */
    int hist_start, hist_len;
    /* OveruseDetector */
    int hypothesis, det_has_last_update, has_overuse_time;
    int64_t det_last_update_ms, overuse_counter;
    double overuse_time, det_previous_offset, threshold;
    /* AimdRateControl */
    int has_avg_max, current_bitrate_initialized, has_first_throughput_time;
    int has_last_change, near_max, state;
    double avg_max_bitrate_kbps, var_max_bitrate_kbps;
    int64_t current_bitrate, first_estimated_throughput_time, last_change_ms;
    int64_t latest_estimated_throughput, rtt;
    /* RemoteBitrateEstimator */
    int has_last_update;
    int64_t last_update_ms;
    Py_ssize_t n_ssrcs, ssrc_capacity;
    int64_t *ssrc_values;
    PyObject **ssrc_objects;
} Estimator;

/* ---- Python semantics ---------------------------------------------------- */

static inline double py_min(double a, double b) { return b < a ? b : a; }
static inline double py_max(double a, double b) { return b > a ? b : a; }
static inline int64_t imin(int64_t a, int64_t b) { return b < a ? b : a; }
static inline int64_t imax(int64_t a, int64_t b) { return b > a ? b : a; }

/* floor modulo by a positive divisor, as Python's % */
static inline int64_t py_mod(int64_t a, int64_t m)
{
    int64_t r = a % m;
    return r < 0 ? r + m : r;
}

static inline int64_t u32_add(int64_t a, int64_t b) { return (int64_t)((uint64_t)(a + b) & 0xFFFFFFFFu); }

static inline int u32_gt(int64_t a, int64_t b)
{
    const int64_t half_mod = 0x80000000LL;
    return (a < b && (b - a) > half_mod) || (a > b && (a - b) < half_mod);
}

/* PyLong_FromDouble's checks, for a double that is already integral. */
static int to_int64(double x, int64_t *out)
{
    if (isnan(x)) {
        PyErr_SetString(PyExc_ValueError, "cannot convert float NaN to integer");
        return -1;
    }
    if (isinf(x)) {
        PyErr_SetString(PyExc_OverflowError, "cannot convert float infinity to integer");
        return -1;
    }
    if (!(x >= -9223372036854775808.0 && x < 9223372036854775808.0)) {
        PyErr_SetString(PyExc_OverflowError, "sfu._bwe: integer out of int64 range");
        return -1;
    }
    *out = (int64_t)x;
    return 0;
}

/* round(x) for a float: half to even (float.__round__ with no ndigits) */
static int py_round(double x, int64_t *out)
{
    double rounded = round(x);
    if (fabs(x - rounded) == 0.5)
        rounded = 2.0 * round(x / 2.0);
    return to_int64(rounded, out);
}

/* int(x) for a float */
static inline int py_trunc(double x, int64_t *out) { return to_int64(x, out); }

/* math.ceil(x) for a float */
static inline int py_ceil(double x, int64_t *out) { return to_int64(ceil(x), out); }

/* math.sqrt */
static int py_sqrt(double x, double *out)
{
    if (x < 0.0) {
        PyErr_SetString(PyExc_ValueError, "math domain error");
        return -1;
    }
    *out = sqrt(x);
    return 0;
}

static inline int is_odd_integer(double x) { return fmod(fabs(x), 2.0) == 1.0; }

/* CPython's float_pow (x ** y and pow(x, y) on floats), without the complex result of
 * a negative base to a fractional power, which aiortc's bases and exponents rule out. */
static int py_pow(double iv, double iw, double *out)
{
    int negate_result = 0;
    double ix;
    if (iw == 0) {
        *out = 1.0;
        return 0;
    }
    if (isnan(iv)) {
        *out = iv;
        return 0;
    }
    if (isnan(iw)) {
        *out = iv == 1.0 ? 1.0 : iw;
        return 0;
    }
    if (isinf(iw)) {
        iv = fabs(iv);
        if (iv == 1.0)
            *out = 1.0;
        else if ((iw > 0.0) == (iv > 1.0))
            *out = fabs(iw);
        else
            *out = 0.0;
        return 0;
    }
    if (isinf(iv)) {
        int iw_is_odd = is_odd_integer(iw);
        if (iw > 0.0)
            *out = iw_is_odd ? iv : fabs(iv);
        else
            *out = iw_is_odd ? copysign(0.0, iv) : 0.0;
        return 0;
    }
    if (iv == 0.0) {
        int iw_is_odd = is_odd_integer(iw);
        if (iw < 0.0) {
            PyErr_SetString(PyExc_ZeroDivisionError,
                            "0.0 cannot be raised to a negative power");
            return -1;
        }
        *out = iw_is_odd ? iv : 0.0;
        return 0;
    }
    if (iv < 0.0) {
        if (iw != floor(iw)) {
            PyErr_SetString(PyExc_ValueError, "sfu._bwe: negative base, fractional power");
            return -1;
        }
        iv = -iv;
        negate_result = is_odd_integer(iw);
    }
    if (iv == 1.0) {
        *out = negate_result ? -1.0 : 1.0;
        return 0;
    }
    errno = 0;
    ix = pow(iv, iw);
    if (errno == 0) {
        if (ix == HUGE_VAL || ix == -HUGE_VAL)
            errno = ERANGE;
    }
    else if (errno == ERANGE && ix == 0.0) {
        errno = 0;
    }
    if (negate_result)
        ix = -ix;
    if (errno != 0) {
        PyErr_SetFromErrno(errno == ERANGE ? PyExc_OverflowError : PyExc_ValueError);
        return -1;
    }
    *out = ix;
    return 0;
}

/* float division that raises as Python's does */
static inline int py_fdiv(double a, double b, double *out)
{
    if (b == 0.0) {
        PyErr_SetString(PyExc_ZeroDivisionError, "float division by zero");
        return -1;
    }
    *out = a / b;
    return 0;
}

/* a * b / den on Python ints (true division): exact product, one correctly rounded
 * division. Beyond 2**53 the double conversion would round, so Python does it. */
static int int_muldiv(int64_t a, int64_t b, int64_t den, double *out)
{
    int64_t p;
    if (den == 0) {
        PyErr_SetString(PyExc_ZeroDivisionError, "division by zero");
        return -1;
    }
    if (!__builtin_mul_overflow(a, b, &p) && p <= EXACT && p >= -EXACT && den <= EXACT &&
        den >= -EXACT) {
        *out = (double)p / (double)den;
        return 0;
    }
    PyObject *pa = PyLong_FromLongLong(a), *pb = PyLong_FromLongLong(b);
    PyObject *pd = PyLong_FromLongLong(den), *prod = NULL, *q = NULL;
    int rc = -1;
    if (pa && pb && pd && (prod = PyNumber_Multiply(pa, pb)) && (q = PyNumber_TrueDivide(prod, pd))) {
        *out = PyFloat_AsDouble(q);
        rc = (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
    }
    Py_XDECREF(pa);
    Py_XDECREF(pb);
    Py_XDECREF(pd);
    Py_XDECREF(prod);
    Py_XDECREF(q);
    return rc;
}

/* ---- RateCounter --------------------------------------------------------- */

static void rc_reset(Estimator *s)
{
    /* every bucket with a value has a count, so no count means all buckets are 0 */
    if (s->rc_total_count != 0 || s->rc_total_value != 0) {
        memset(s->rc_count, 0, sizeof(s->rc_count));
        memset(s->rc_value, 0, sizeof(s->rc_value));
    }
    s->rc_origin_index = 0;
    s->rc_has_origin = 0;
    s->rc_origin_ms = 0;
    s->rc_total_count = 0;
    s->rc_total_value = 0;
}

static void rc_erase_old(Estimator *s, int64_t now_ms)
{
    int64_t new_origin_ms = now_ms - WINDOW + 1;
    if (s->rc_origin_ms >= new_origin_ms)
        return;
    int64_t steps = new_origin_ms - s->rc_origin_ms;
    int64_t index = s->rc_origin_index;
    if (steps >= WINDOW) {
        /* each bucket is visited and emptied: the totals (their sums) go to 0 */
        rc_reset(s);
        index = (index + steps) % WINDOW;
    }
    else {
        for (int64_t i = 0; i < steps; i++) {
            s->rc_total_count -= s->rc_count[index];
            s->rc_total_value -= s->rc_value[index];
            s->rc_count[index] = 0;
            s->rc_value[index] = 0;
            if (++index == WINDOW)
                index = 0;
        }
    }
    s->rc_has_origin = 1;
    s->rc_origin_index = index;
    s->rc_origin_ms = new_origin_ms;
}

static void rc_add(Estimator *s, int64_t value, int64_t now_ms)
{
    if (!s->rc_has_origin) {
        s->rc_has_origin = 1;
        s->rc_origin_ms = now_ms;
    }
    else {
        rc_erase_old(s, now_ms);
    }
    int64_t index = py_mod(s->rc_origin_index + now_ms - s->rc_origin_ms, WINDOW);
    s->rc_count[index] += 1;
    s->rc_value[index] += value;
    s->rc_total_count += 1;
    s->rc_total_value += value;
}

/* -1: error, 0: None, 1: *out */
static int rc_rate(Estimator *s, int64_t now_ms, int64_t *out)
{
    if (s->rc_has_origin) {
        rc_erase_old(s, now_ms);
        int64_t active_window_size = now_ms - s->rc_origin_ms + 1;
        if (s->rc_total_count > 0 && active_window_size > 1) {
            double rate;
            if (int_muldiv(SCALE, s->rc_total_value, active_window_size, &rate) < 0 ||
                py_round(rate, out) < 0)
                return -1;
            return 1;
        }
    }
    return 0;
}

/* ---- InterArrival -------------------------------------------------------- */

static int belongs_to_burst(Estimator *s, int64_t timestamp, int64_t arrival_time)
{
    int64_t timestamp_delta = u32_add(timestamp, -s->current.last_timestamp);
    int64_t timestamp_delta_ms;
    /* at most 2**32 * 2**-26 * 1000: finite and in range */
    py_round(TIMESTAMP_TO_MS * (double)timestamp_delta, &timestamp_delta_ms);
    int64_t arrival_time_delta = arrival_time - s->current.arrival_time;
    return timestamp_delta_ms == 0 ||
           ((arrival_time_delta - timestamp_delta_ms) < 0 &&
            arrival_time_delta <= BURST_DELTA_THRESHOLD_MS);
}

static inline void new_group(Group *g, int64_t timestamp)
{
    g->arrival_time = 0;
    g->first_timestamp = timestamp;
    g->last_timestamp = timestamp;
    g->size = 0;
}

/* 1 when the deltas between the last two complete groups are in *d_* */
static int compute_deltas(Estimator *s, int64_t timestamp, int64_t arrival_time,
                          int64_t packet_size, int64_t *d_timestamp, int64_t *d_arrival,
                          int64_t *d_size)
{
    int deltas = 0;
    if (!s->has_current) {
        new_group(&s->current, timestamp);
        s->has_current = 1;
    }
    else if (u32_add(timestamp, -s->current.first_timestamp) >= 0x80000000LL) {
        return 0; /* out of order */
    }
    else if (!belongs_to_burst(s, timestamp, arrival_time) &&
             u32_add(timestamp, -s->current.first_timestamp) > GROUP_LENGTH) {
        if (s->has_previous) {
            *d_timestamp = u32_add(s->current.last_timestamp, -s->previous.last_timestamp);
            *d_arrival = s->current.arrival_time - s->previous.arrival_time;
            *d_size = s->current.size - s->previous.size;
            deltas = 1;
        }
        s->previous = s->current;
        s->has_previous = 1;
        new_group(&s->current, timestamp);
    }
    else if (u32_gt(timestamp, s->current.last_timestamp)) {
        s->current.last_timestamp = timestamp;
    }
    s->current.size += packet_size;
    s->current.arrival_time = arrival_time;
    return deltas;
}

/* ---- OveruseEstimator ---------------------------------------------------- */

static double update_min_frame_period(Estimator *s, double ts_delta)
{
    double min_frame_period = ts_delta;
    if (s->hist_len >= MIN_FRAME_PERIOD_HISTORY_LENGTH) {
        s->hist_start = (s->hist_start + 1) % MIN_FRAME_PERIOD_HISTORY_LENGTH;
        s->hist_len--;
    }
    for (int i = 0; i < s->hist_len; i++) {
        double old = s->hist[(s->hist_start + i) % MIN_FRAME_PERIOD_HISTORY_LENGTH];
        min_frame_period = py_min(old, min_frame_period);
    }
    s->hist[(s->hist_start + s->hist_len) % MIN_FRAME_PERIOD_HISTORY_LENGTH] = ts_delta;
    s->hist_len++;
    return min_frame_period;
}

static int update_noise_estimate(Estimator *s, double residual, double ts_delta)
{
    double alpha = 0.01, beta, square;
    if (s->num_of_deltas > 10 * 30)
        alpha = 0.002;
    if (py_pow(1 - alpha, ts_delta * 30.0 / 1000.0, &beta) < 0)
        return -1;
    s->avg_noise = beta * s->avg_noise + (1 - beta) * residual;
    double scaled_var = beta * s->var_noise;
    if (py_pow(s->avg_noise - residual, 2, &square) < 0)
        return -1;
    s->var_noise = scaled_var + (1 - beta) * square;
    if (s->var_noise < 1)
        s->var_noise = 1;
    return 0;
}

static int estimator_update(Estimator *s, int64_t time_delta_ms, double timestamp_delta_ms,
                            int64_t size_delta, int current_hypothesis)
{
    const double process_noise0 = 1e-13, process_noise1 = 1e-3;
    double min_frame_period = update_min_frame_period(s, timestamp_delta_ms);
    double t_ts_delta = (double)time_delta_ms - timestamp_delta_ms;
    double h0 = (double)size_delta, h1 = 1.0;

    s->num_of_deltas = imin(s->num_of_deltas + 1, DELTA_COUNTER_MAX);

    s->e00 += process_noise0;
    s->e11 += process_noise1;
    if ((current_hypothesis == OVERUSING && s->offset < s->previous_offset) ||
        (current_hypothesis == UNDERUSING && s->offset > s->previous_offset))
        s->e11 += 10 * process_noise1;

    double eh0 = s->e00 * h0 + s->e01 * h1;
    double eh1 = s->e10 * h0 + s->e11 * h1;

    double residual = t_ts_delta - s->slope * h0 - s->offset;
    if (current_hypothesis == NORMAL) {
        double root;
        if (py_sqrt(s->var_noise, &root) < 0)
            return -1;
        double max_residual = 3.0 * root;
        if (fabs(residual) < max_residual) {
            if (update_noise_estimate(s, residual, min_frame_period) < 0)
                return -1;
        }
        else if (update_noise_estimate(s, residual < 0 ? -max_residual : max_residual,
                                       min_frame_period) < 0) {
            return -1;
        }
    }

    double denom = s->var_noise + h0 * eh0 + h1 * eh1, k0, k1;
    if (py_fdiv(eh0, denom, &k0) < 0 || py_fdiv(eh1, denom, &k1) < 0)
        return -1;

    double ikh00 = 1.0 - k0 * h0, ikh01 = -k0 * h1;
    double ikh10 = -k1 * h0, ikh11 = 1.0 - k1 * h1;
    double e00 = s->e00, e01 = s->e01;

    s->e00 = e00 * ikh00 + s->e10 * ikh01;
    s->e01 = e01 * ikh00 + s->e11 * ikh01;
    s->e10 = e00 * ikh10 + s->e10 * ikh11;
    s->e11 = e01 * ikh10 + s->e11 * ikh11;

    s->previous_offset = s->offset;
    s->slope += k0 * residual;
    s->offset += k1 * residual;
    return 0;
}

/* ---- OveruseDetector ----------------------------------------------------- */

static void update_threshold(Estimator *s, double modified_offset, int64_t now_ms)
{
    const double k_up = 0.0087, k_down = 0.039;
    if (!s->det_has_last_update) {
        s->det_has_last_update = 1;
        s->det_last_update_ms = now_ms;
    }
    if (fabs(modified_offset) > s->threshold + MAX_ADAPT_OFFSET_MS) {
        s->det_last_update_ms = now_ms;
        return;
    }
    double k = fabs(modified_offset) < s->threshold ? k_down : k_up;
    int64_t time_delta_ms = imin(now_ms - s->det_last_update_ms, 100);
    s->threshold += k * (fabs(modified_offset) - s->threshold) * (double)time_delta_ms;
    s->threshold = py_max(6, py_min(s->threshold, 600));
    s->det_last_update_ms = now_ms;
}

static void detect(Estimator *s, double offset, double timestamp_delta_ms,
                   int64_t num_of_deltas, int64_t now_ms)
{
    const double overuse_time_threshold = 10;
    if (num_of_deltas < 2)
        return;
    double T = (double)imin(num_of_deltas, MIN_NUM_DELTAS) * offset;
    if (T > s->threshold) {
        if (!s->has_overuse_time) {
            s->has_overuse_time = 1;
            s->overuse_time = timestamp_delta_ms / 2;
        }
        else {
            s->overuse_time += timestamp_delta_ms;
        }
        s->overuse_counter += 1;
        if (s->overuse_time > overuse_time_threshold && s->overuse_counter > 1 &&
            offset >= s->det_previous_offset) {
            s->overuse_counter = 0;
            s->overuse_time = 0;
            s->hypothesis = OVERUSING;
        }
    }
    else if (T < -s->threshold) {
        s->overuse_counter = 0;
        s->has_overuse_time = 0;
        s->hypothesis = UNDERUSING;
    }
    else {
        s->overuse_counter = 0;
        s->has_overuse_time = 0;
        s->hypothesis = NORMAL;
    }
    s->det_previous_offset = offset;
    update_threshold(s, T, now_ms);
}

/* ---- AimdRateControl ----------------------------------------------------- */

static int near_max_rate_increase(Estimator *s, int64_t *out)
{
    double bits_per_frame, avg_packet_size_bits;
    int64_t packets_per_frame, increase;
    if (int_muldiv(s->current_bitrate, 1, 30, &bits_per_frame) < 0 ||
        py_ceil(bits_per_frame / (8 * 1200), &packets_per_frame) < 0 ||
        py_fdiv(bits_per_frame, (double)packets_per_frame, &avg_packet_size_bits) < 0)
        return -1;
    int64_t response_time = s->rtt + 100;
    if (py_trunc((avg_packet_size_bits * 1000) / (double)response_time, &increase) < 0)
        return -1;
    *out = imax(4000, increase);
    return 0;
}

static int additive_rate_increase(Estimator *s, int64_t now_ms, int64_t *out)
{
    int64_t increase;
    double q;
    if (!s->has_last_change) {
        PyErr_SetString(PyExc_TypeError, "sfu._bwe: no last change time");
        return -1;
    }
    int64_t elapsed = now_ms - s->last_change_ms;
    if (near_max_rate_increase(s, &increase) < 0 || int_muldiv(elapsed, increase, 1000, &q) < 0)
        return -1;
    return py_trunc(q, out);
}

static int multiplicative_rate_increase(Estimator *s, int64_t new_bitrate, int64_t now_ms,
                                        int64_t *out)
{
    double alpha = 1.08;
    if (s->has_last_change) {
        int64_t elapsed_ms = imin(now_ms - s->last_change_ms, 1000);
        double exponent;
        if (int_muldiv(elapsed_ms, 1, 1000, &exponent) < 0 || py_pow(alpha, exponent, &alpha) < 0)
            return -1;
    }
    return py_trunc(py_max((alpha - 1) * (double)new_bitrate, 1000), out);
}

static int clamp_bitrate(Estimator *s, int64_t new_bitrate, int64_t estimated_throughput,
                         int64_t *out)
{
    int64_t scaled;
    if (py_trunc(1.5 * (double)estimated_throughput, &scaled) < 0)
        return -1;
    int64_t max_bitrate = imax(scaled + 10000, s->current_bitrate);
    *out = imin(new_bitrate, max_bitrate);
    return 0;
}

static int update_max_throughput_estimate(Estimator *s, double estimated_throughput_kbps)
{
    const double alpha = 0.05;
    double square;
    if (!s->has_avg_max) {
        s->has_avg_max = 1;
        s->avg_max_bitrate_kbps = estimated_throughput_kbps;
    }
    else {
        s->avg_max_bitrate_kbps =
            (1 - alpha) * s->avg_max_bitrate_kbps + alpha * estimated_throughput_kbps;
    }
    double norm = py_max(1, s->avg_max_bitrate_kbps);
    double kept = (1 - alpha) * s->var_max_bitrate_kbps;
    if (py_pow(s->avg_max_bitrate_kbps - estimated_throughput_kbps, 2, &square) < 0)
        return -1;
    s->var_max_bitrate_kbps = kept + alpha * square / norm;
    s->var_max_bitrate_kbps = py_max(0.4, py_min(s->var_max_bitrate_kbps, 2.5));
    return 0;
}

/* -1: error, 0: None, 1: *out */
static int rate_control_update(Estimator *s, int bandwidth_usage, int has_throughput,
                               int64_t estimated_throughput, int64_t now_ms, int64_t *out)
{
    if (!s->current_bitrate_initialized && has_throughput) {
        if (!s->has_first_throughput_time) {
            s->has_first_throughput_time = 1;
            s->first_estimated_throughput_time = now_ms;
        }
        else if (now_ms - s->first_estimated_throughput_time > 3000) {
            s->current_bitrate = estimated_throughput;
            s->current_bitrate_initialized = 1;
        }
    }

    /* wait for initialisation or overuse */
    if (!s->current_bitrate_initialized && bandwidth_usage != OVERUSING)
        return 0;

    if (bandwidth_usage == NORMAL && s->state == HOLD) {
        s->has_last_change = 1;
        s->last_change_ms = now_ms;
        s->state = INCREASE;
    }
    else if (bandwidth_usage == OVERUSING) {
        s->state = DECREASE;
    }
    else if (bandwidth_usage == UNDERUSING) {
        s->state = HOLD;
    }

    int64_t new_bitrate = s->current_bitrate, increase;
    if (has_throughput)
        s->latest_estimated_throughput = estimated_throughput;
    else
        estimated_throughput = s->latest_estimated_throughput;
    double estimated_throughput_kbps, sigma_kbps;
    if (int_muldiv(estimated_throughput, 1, 1000, &estimated_throughput_kbps) < 0)
        return -1;

    if (s->state == INCREASE) {
        if (s->has_avg_max) {
            if (py_sqrt(s->var_max_bitrate_kbps * s->avg_max_bitrate_kbps, &sigma_kbps) < 0)
                return -1;
            if (estimated_throughput_kbps >= s->avg_max_bitrate_kbps + 3 * sigma_kbps) {
                s->near_max = 0;
                s->has_avg_max = 0;
            }
        }
        if (s->near_max) {
            if (additive_rate_increase(s, now_ms, &increase) < 0)
                return -1;
        }
        else if (multiplicative_rate_increase(s, new_bitrate, now_ms, &increase) < 0) {
            return -1;
        }
        new_bitrate += increase;
        s->has_last_change = 1;
        s->last_change_ms = now_ms;
    }
    else if (s->state == DECREASE) {
        if (s->has_avg_max) {
            if (py_sqrt(s->var_max_bitrate_kbps * s->avg_max_bitrate_kbps, &sigma_kbps) < 0)
                return -1;
            if (estimated_throughput_kbps < s->avg_max_bitrate_kbps - 3 * sigma_kbps)
                s->has_avg_max = 0;
        }
        if (update_max_throughput_estimate(s, estimated_throughput_kbps) < 0)
            return -1;
        s->near_max = 1;
        if (py_round(0.85 * (double)estimated_throughput, &new_bitrate) < 0)
            return -1;
        s->has_last_change = 1;
        s->last_change_ms = now_ms;
        s->state = HOLD;
    }

    if (clamp_bitrate(s, new_bitrate, estimated_throughput, &s->current_bitrate) < 0)
        return -1;
    *out = s->current_bitrate;
    return 1;
}

/* ---- RemoteBitrateEstimator ---------------------------------------------- */

/* A publisher can send under any number of SSRCs; aiortc keeps them all in a dict. The
 * REMB lists the first MAX_SSRCS only (a real track uses one or two: media and RTX), so
 * this linear scan stays short whatever a peer sends. */
#define MAX_SSRCS 32

static int note_ssrc(Estimator *s, int64_t ssrc, PyObject *obj)
{
    for (Py_ssize_t i = 0; i < s->n_ssrcs; i++)
        if (s->ssrc_values[i] == ssrc)
            return 0;
    if (s->n_ssrcs >= MAX_SSRCS)
        return 0;
    if (s->n_ssrcs == s->ssrc_capacity) {
        Py_ssize_t capacity = s->ssrc_capacity ? 2 * s->ssrc_capacity : 4;
        int64_t *values = PyMem_Realloc(s->ssrc_values, capacity * sizeof(int64_t));
        if (values == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->ssrc_values = values;
        PyObject **objects = PyMem_Realloc(s->ssrc_objects, capacity * sizeof(PyObject *));
        if (objects == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->ssrc_objects = objects;
        s->ssrc_capacity = capacity;
    }
    Py_INCREF(obj);
    s->ssrc_values[s->n_ssrcs] = ssrc;
    s->ssrc_objects[s->n_ssrcs] = obj;
    s->n_ssrcs++;
    return 0;
}

static PyObject *estimate(Estimator *s, int64_t target_bitrate)
{
    PyObject *ssrcs = PyList_New(s->n_ssrcs);
    if (ssrcs == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < s->n_ssrcs; i++) {
        Py_INCREF(s->ssrc_objects[i]);
        PyList_SET_ITEM(ssrcs, i, s->ssrc_objects[i]);
    }
    PyObject *bitrate = PyLong_FromLongLong(target_bitrate);
    if (bitrate == NULL) {
        Py_DECREF(ssrcs);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, bitrate, ssrcs);
    Py_DECREF(bitrate);
    Py_DECREF(ssrcs);
    return result;
}

static const char *const add_names[] = {"arrival_time_ms", "abs_send_time", "payload_size",
                                        "ssrc"};
#define N_ADD_ARGS 4
static PyObject *add_name_objects[N_ADD_ARGS];

static int get_int(PyObject *obj, int64_t limit, const char *name, int64_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", name);
        return -1;
    }
    *out = PyLong_AsLongLong(obj);
    if (*out == -1 && PyErr_Occurred())
        return -1;
    if (limit && (*out >= limit || *out <= -limit)) {
        PyErr_Format(PyExc_OverflowError, "%s out of range", name);
        return -1;
    }
    return 0;
}

/* add(arrival_time_ms, abs_send_time, payload_size, ssrc) */
static PyObject *Estimator_add(Estimator *s, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    PyObject *argv[N_ADD_ARGS] = {NULL, NULL, NULL, NULL};
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > N_ADD_ARGS) {
        PyErr_SetString(PyExc_TypeError, "add() takes 4 arguments");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        argv[i] = args[i];
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int found = -1;
        for (int i = 0; i < N_ADD_ARGS && found < 0; i++)
            if (key == add_name_objects[i])
                found = i;
        for (int i = 0; i < N_ADD_ARGS && found < 0; i++)
            if (PyUnicode_Compare(key, add_name_objects[i]) == 0)
                found = i;
        if (found < 0) {
            PyErr_Format(PyExc_TypeError, "add() got an unexpected keyword argument '%U'", key);
            return NULL;
        }
        if (argv[found] != NULL) {
            PyErr_Format(PyExc_TypeError, "add() got multiple values for argument '%s'",
                         add_names[found]);
            return NULL;
        }
        argv[found] = args[nargs + k];
    }
    for (int i = 0; i < N_ADD_ARGS; i++) {
        if (argv[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "add() missing required argument '%s'", add_names[i]);
            return NULL;
        }
    }
    int64_t arrival_time_ms, abs_send_time, payload_size, ssrc;
    if (get_int(argv[0], MAX_TIME, add_names[0], &arrival_time_ms) < 0 ||
        get_int(argv[1], MAX_ABS_SEND_TIME, add_names[1], &abs_send_time) < 0 ||
        get_int(argv[2], MAX_PAYLOAD, add_names[2], &payload_size) < 0 ||
        get_int(argv[3], 0, add_names[3], &ssrc) < 0)
        return NULL;

    int64_t timestamp = abs_send_time * 256; /* abs_send_time << 8 */
    if (note_ssrc(s, ssrc, argv[3]) < 0)
        return NULL;

    /* update incoming bitrate */
    int64_t rate;
    int has_rate = rc_rate(s, arrival_time_ms, &rate);
    if (has_rate < 0)
        return NULL;
    if (has_rate) {
        s->incoming_bitrate_initialized = 1;
    }
    else if (s->incoming_bitrate_initialized) {
        rc_reset(s);
        s->incoming_bitrate_initialized = 0;
    }
    rc_add(s, payload_size, arrival_time_ms);

    /* calculate inter-arrival deltas */
    int64_t d_timestamp, d_arrival, d_size;
    if (compute_deltas(s, timestamp, arrival_time_ms, payload_size, &d_timestamp, &d_arrival,
                       &d_size)) {
        double timestamp_delta_ms = (double)d_timestamp * TIMESTAMP_TO_MS;
        if (estimator_update(s, d_arrival, timestamp_delta_ms, d_size, s->hypothesis) < 0)
            return NULL;
        detect(s, s->offset, timestamp_delta_ms, s->num_of_deltas, arrival_time_ms);
    }

    if (!s->has_last_update || (arrival_time_ms - s->last_update_ms) > FEEDBACK_INTERVAL ||
        s->hypothesis == OVERUSING) {
        int64_t throughput, target_bitrate;
        int has_throughput = rc_rate(s, arrival_time_ms, &throughput);
        if (has_throughput < 0)
            return NULL;
        int has_target = rate_control_update(s, s->hypothesis, has_throughput, throughput,
                                             arrival_time_ms, &target_bitrate);
        if (has_target < 0)
            return NULL;
        if (has_target) {
            s->has_last_update = 1;
            s->last_update_ms = arrival_time_ms;
            return estimate(s, target_bitrate);
        }
    }
    Py_RETURN_NONE;
}

/* For tests: the filter and controller state, to compare bit for bit with aiortc's. */
static PyObject *Estimator_state(Estimator *s, PyObject *unused)
{
    (void)unused;
    return Py_BuildValue(
        "{s:d,s:d,s:(dddd),s:d,s:d,s:L,s:i,s:d,s:L,s:N,s:L,s:N,s:d,s:i,s:i,s:L,s:L}", "offset",
        s->offset, "slope", s->slope, "E", s->e00, s->e01, s->e10, s->e11, "avg_noise",
        s->avg_noise, "var_noise", s->var_noise, "num_of_deltas", (long long)s->num_of_deltas,
        "hypothesis", s->hypothesis, "threshold", s->threshold, "overuse_counter",
        (long long)s->overuse_counter, "overuse_time",
        s->has_overuse_time ? PyFloat_FromDouble(s->overuse_time) : Py_NewRef(Py_None),
        "current_bitrate", (long long)s->current_bitrate, "avg_max_bitrate_kbps",
        s->has_avg_max ? PyFloat_FromDouble(s->avg_max_bitrate_kbps) : Py_NewRef(Py_None),
        "var_max_bitrate_kbps", s->var_max_bitrate_kbps, "rate_control_state", s->state,
        "near_max", s->near_max, "total_count", (long long)s->rc_total_count, "total_value",
        (long long)s->rc_total_value);
}

static int Estimator_init(Estimator *s, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "RemoteBitrateEstimator() takes no arguments");
        return -1;
    }
    for (Py_ssize_t i = 0; i < s->n_ssrcs; i++)
        Py_DECREF(s->ssrc_objects[i]);
    s->n_ssrcs = 0;
    /* RateCounter(1000, 8000) */
    memset(s->rc_count, 0, sizeof(s->rc_count));
    memset(s->rc_value, 0, sizeof(s->rc_value));
    s->rc_total_count = s->rc_total_value = 0;
    rc_reset(s);
    s->incoming_bitrate_initialized = 1;
    /* InterArrival */
    s->has_current = s->has_previous = 0;
    /* OveruseEstimator */
    s->e00 = 100.0;
    s->e01 = 0.0;
    s->e10 = 0.0;
    s->e11 = 0.1;
    s->num_of_deltas = 0;
    s->offset = 0.0;
    s->previous_offset = 0.0;
    s->slope = 1.0 / 64;
    s->hist_start = s->hist_len = 0;
    s->avg_noise = 0.0;
    s->var_noise = 50.0;
    /* OveruseDetector */
    s->hypothesis = NORMAL;
    s->det_has_last_update = 0;
    s->overuse_counter = 0;
    s->has_overuse_time = 0;
    s->overuse_time = 0.0;
    s->det_previous_offset = 0.0;
    s->threshold = 12.5;
    /* AimdRateControl */
    s->has_avg_max = 0;
    s->var_max_bitrate_kbps = 0.4;
    s->current_bitrate = 30000000;
    s->current_bitrate_initialized = 0;
    s->has_first_throughput_time = 0;
    s->has_last_change = 0;
    s->near_max = 0;
    s->latest_estimated_throughput = 30000000;
    s->rtt = 200;
    s->state = HOLD;
    /* RemoteBitrateEstimator */
    s->has_last_update = 0;
    return 0;
}

static void Estimator_dealloc(Estimator *s)
{
    for (Py_ssize_t i = 0; i < s->n_ssrcs; i++)
        Py_DECREF(s->ssrc_objects[i]);
    PyMem_Free(s->ssrc_values);
    PyMem_Free(s->ssrc_objects);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyMethodDef Estimator_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Estimator_add, METH_FASTCALL | METH_KEYWORDS,
     "add(arrival_time_ms, abs_send_time, payload_size, ssrc) -> None or "
     "(target_bitrate, ssrcs), as aiortc.rate.RemoteBitrateEstimator.add."},
    {"_state", (PyCFunction)Estimator_state, METH_NOARGS, "internal state, for tests"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EstimatorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._bwe.RemoteBitrateEstimator",
    .tp_basicsize = sizeof(Estimator),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "aiortc.rate.RemoteBitrateEstimator in C: the same estimates, call by call.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Estimator_init,
    .tp_dealloc = (destructor)Estimator_dealloc,
    .tp_methods = Estimator_methods,
};

static struct PyModuleDef bwe_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sfu._bwe",
    .m_doc = "aiortc's receive-side bandwidth estimator (REMB), ported to C.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__bwe(void)
{
    for (int i = 0; i < N_ADD_ARGS; i++) {
        if (add_name_objects[i] == NULL) {
            add_name_objects[i] = PyUnicode_InternFromString(add_names[i]);
            if (add_name_objects[i] == NULL)
                return NULL;
        }
    }
    if (PyType_Ready(&EstimatorType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&bwe_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&EstimatorType);
    if (PyModule_AddObject(m, "RemoteBitrateEstimator", (PyObject *)&EstimatorType) < 0) {
        Py_DECREF(&EstimatorType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
