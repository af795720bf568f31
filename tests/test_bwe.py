"""sfu._bwe: aiortc's receive-side bandwidth estimator in C, compared call by call."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from aiortc.rate import RemoteBitrateEstimator
from sfu._bwe import RemoteBitrateEstimator as CEstimator

SSRC = 0x1234
Packet = dict[str, int]


def _outcome(estimator: object, packet: Packet) -> object:
    try:
        return estimator.add(**packet)  # type: ignore[attr-defined]
    except ArithmeticError as exc:  # aiortc's raises too on some degenerate inputs
        return type(exc)


def _aiortc_state(estimator: RemoteBitrateEstimator) -> dict[str, object]:
    kalman, detector, control = estimator.estimator, estimator.detector, estimator.rate_control
    counter = estimator.incoming_bitrate
    overuse_time = detector.overuse_time
    avg_max = control.avg_max_bitrate_kbps
    return {
        "offset": kalman._offset,
        "slope": kalman.slope,
        "E": (*kalman.E[0], *kalman.E[1]),
        "avg_noise": kalman.avg_noise,
        "var_noise": float(kalman.var_noise),
        "num_of_deltas": kalman._num_of_deltas,
        "hypothesis": detector.hypothesis.value,
        "threshold": float(detector.threshold),
        "overuse_counter": detector.overuse_counter,
        "overuse_time": None if overuse_time is None else float(overuse_time),
        "current_bitrate": control.current_bitrate,
        "avg_max_bitrate_kbps": None if avg_max is None else float(avg_max),
        "var_max_bitrate_kbps": float(control.var_max_bitrate_kbps),
        "rate_control_state": control.state.value,
        "near_max": int(control.near_max),
        "total_count": counter._total.count,
        "total_value": counter._total.value,
    }


def _assert_same(packets: Iterator[Packet]) -> int:
    """Feed both estimators; return how many estimates they gave.

    After every packet both must have returned (or raised) the same, and the state
    behind it must be the same: ints, and the same doubles bit for bit (their reprs).
    """
    ours, theirs = CEstimator(), RemoteBitrateEstimator()
    estimates = 0
    for i, packet in enumerate(packets):
        expected = _outcome(theirs, packet)
        got = _outcome(ours, packet)
        assert got == expected, (i, packet)
        assert repr(ours._state()) == repr(_aiortc_state(theirs)), (i, packet)
        if isinstance(got, tuple):
            assert type(got[0]) is int
            estimates += 1
    return estimates


def _abs_send_time(send_ms: int) -> int:
    return (send_ms * (1 << 18) // 1000) & 0xFFFFFF  # 6.18 fixed-point seconds, 24 bits


def _jittery(
    seed: int,
    count: int,
    *,
    start_ms: int = 0,
    ssrcs: int = 2,
    step_back: float = 0.0,
    gap: float = 0.001,
    max_gap_ms: int = 3000,
    min_payload: int = 100,
    max_payload: int = 1200,
) -> Iterator[Packet]:
    # Bursts within a millisecond, frame gaps, a queue that fills and drains, rare
    # stalls; optionally a wall clock that steps back. Overuse and recovery follow.
    rng = random.Random(seed)
    send_ms, arrival_ms, queue_ms = start_ms, 10_000, 0.0
    for _ in range(count):
        send_ms += rng.choice([0, 0, 0, 1, 5, 33])
        queue_ms = max(0.0, queue_ms + rng.uniform(-1.5, 1.6))
        stall = rng.randrange(max_gap_ms) if rng.random() < gap else 0
        arrival_ms = max(arrival_ms, 10_000 + send_ms - start_ms + int(queue_ms) + stall)
        if rng.random() < step_back:
            arrival_ms -= rng.choice([1, 3, 50, 999, 1000, 5000])
        yield {
            "arrival_time_ms": arrival_ms,
            "abs_send_time": _abs_send_time(send_ms),
            "payload_size": rng.randrange(min_payload, max_payload),
            "ssrc": SSRC + rng.randrange(ssrcs),
        }


@pytest.mark.parametrize("seed", range(6))
def test_same_estimates_as_aiortc_on_a_jittery_trace(seed: int) -> None:
    assert _assert_same(_jittery(seed, 30_000)) > 50


@pytest.mark.parametrize("seed", range(4))
def test_same_estimates_when_the_wall_clock_steps_back(seed: int) -> None:
    assert _assert_same(_jittery(seed, 20_000, step_back=0.002)) > 20


@pytest.mark.parametrize("seed", range(3))
def test_same_estimates_across_huge_gaps_and_rate_counter_resets(seed: int) -> None:
    # Gaps of up to a minute empty the rate window (the counter resets) and jump the
    # 24-bit abs-send-time, which wraps every 64 s, by arbitrary amounts.
    assert _assert_same(_jittery(seed, 20_000, gap=0.01, max_gap_ms=60_000)) > 20


@pytest.mark.parametrize("seed", range(3))
def test_same_estimates_on_an_erratic_wall_clock(seed: int) -> None:
    # Arrival times that jump ahead by up to 1.5 s and often step back by as much: the
    # rate counter's ring index wraps both ways, its window empties and it resets.
    def packets() -> Iterator[Packet]:
        rng = random.Random(seed)
        now_ms, send_ms = 50_000, 0
        for _ in range(20_000):
            step = rng.choice([0, 0, 1, 2, 7, 33, 400, 1500])
            now_ms, send_ms = now_ms + step, send_ms + step
            if rng.random() < 0.05:
                now_ms -= rng.randrange(1, 1500)
            yield {
                "arrival_time_ms": now_ms,
                "abs_send_time": _abs_send_time(send_ms),
                "payload_size": rng.randrange(1, 1500),
                "ssrc": SSRC,
            }

    assert _assert_same(packets()) > 100


@pytest.mark.parametrize("seed", range(3))
def test_same_estimates_across_the_abs_send_time_wraparound(seed: int) -> None:
    # Start 2 s before the 24-bit wrap (64 s) and run through it several times.
    packets = _jittery(seed, 30_000, start_ms=62_000, gap=0)
    assert _assert_same(packets) > 50


def test_same_estimates_with_many_ssrcs_in_first_seen_order() -> None:
    rng = random.Random(7)
    ssrcs = rng.sample(range(1 << 32), 9)

    def packets() -> Iterator[Packet]:
        for i, packet in enumerate(_jittery(7, 10_000)):
            # SSRCs appear one after another, then interleave at random
            packet["ssrc"] = ssrcs[min(i // 500, len(ssrcs) - 1) if i < 5000 else rng.randrange(9)]
            yield packet

    assert _assert_same(packets()) > 20


@pytest.mark.parametrize("seed", range(3))
def test_same_outcome_on_nearly_empty_payloads(seed: int) -> None:
    # With payloads of 0 and, rarely, 1 byte an overuse drops the estimate to 0 bit/s
    # while a maximum is still remembered; the additive increase that follows divides
    # by zero (0 packets per frame) in aiortc's. Ours must raise the same, after the
    # same state changes, and then go on as aiortc's does.
    rng = random.Random(seed)

    def packets() -> Iterator[Packet]:
        for packet in _jittery(seed, 20_000):
            packet["payload_size"] = int(rng.random() < 0.005)
            yield packet

    ours, theirs = CEstimator(), RemoteBitrateEstimator()
    outcomes = set()
    for i, packet in enumerate(packets()):
        expected = _outcome(theirs, packet)
        assert _outcome(ours, packet) == expected, i
        outcomes.add(expected if isinstance(expected, type) else type(expected))
    assert outcomes == {ZeroDivisionError, tuple, type(None)}


def test_positional_arguments_and_a_fresh_list_per_estimate() -> None:
    ours, theirs = CEstimator(), RemoteBitrateEstimator()
    estimates = 0
    for packet in _jittery(1, 5000):
        args = (packet["arrival_time_ms"], packet["abs_send_time"], packet["payload_size"], SSRC)
        got = ours.add(*args)
        assert got == theirs.add(*args)
        if got is not None:
            got[1].append(-1)  # the caller may keep or change it
            estimates += 1
    assert estimates > 5
    with pytest.raises(TypeError):
        ours.add(1, 2, 3)
    with pytest.raises(TypeError):
        ours.add(1, 2, 3, 4, ssrc=5)
    with pytest.raises(TypeError):
        ours.add(1, 2, 3, ssrk=4)
