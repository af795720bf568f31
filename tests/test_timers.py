"""The timer wheel (sfu/timers.py) and the consent checks that run on it (sfu/ice.py).

Consent runs between real aioice connections on loopback; only aioice's consent
interval and RTO are shortened (module constants it reads at each check) so that
expiry (six intervals without an answer, RFC 7675's 30 s) takes seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os

import aioice
import aioice.ice
import pytest
from aioice import stun

from sfu import ice
from sfu.timers import RESOLUTION, Wheel, wheel

MEDIA_HOST = os.environ.get("ROUNDTABLE_MEDIA_HOST", "127.0.0.1")


async def test_wheel_runs_jobs_in_order_never_early_and_many_per_wakeup() -> None:
    loop = asyncio.get_running_loop()
    w = Wheel(loop)
    ran: list[tuple[int, float]] = []
    start = loop.time()
    delays = [0.15, 0.05, 0.1, 0.05, 0.0]
    for i, delay in enumerate(delays):
        w.call_later(delay, lambda i=i: ran.append((i, loop.time())))
    cancelled = w.call_later(0.07, lambda: ran.append((99, loop.time())))
    cancelled.cancel()
    await asyncio.sleep(0.3)
    assert [i for i, _ in ran] == [4, 1, 3, 2, 0]
    for i, at in ran:
        assert at - start >= delays[i] - 0.002  # asyncio's own clock slack, never a slot
        assert at - start <= delays[i] + RESOLUTION + 0.1  # late by a slot (plus a busy box)
    assert w.fired <= 5  # six jobs in five slots: the two at 0.05 s shared a wake-up
    assert len(w) == 0

    # A thousand jobs within one second take at most one wake-up per slot.
    fired = w.fired
    hits = []
    for i in range(1000):
        w.call_later(0.5 + i / 1000 * 0.5, lambda: hits.append(1))
    await asyncio.sleep(1.2)
    assert len(hits) == 1000
    assert w.fired - fired <= 0.5 / RESOLUTION + 2


async def test_a_job_may_schedule_the_next_one() -> None:
    w = wheel()
    assert wheel() is w  # one per loop
    ticks: list[int] = []

    def tick() -> None:
        ticks.append(1)
        if len(ticks) < 5:
            w.call_later(0.01, tick)

    w.call_later(0, tick)
    await asyncio.sleep(0.5)
    assert len(ticks) == 5


async def test_a_job_re_adding_itself_in_the_past_waits_for_the_next_wakeup() -> None:
    """A job due at once (a time already past) added by a running job does not run in
    the same wake-up: otherwise one such job would spin the event loop forever."""
    loop = asyncio.get_running_loop()
    w = Wheel(loop)
    runs: list[int] = []

    def again() -> None:
        runs.append(w.fired)
        if len(runs) < 1000:
            w.call_at(loop.time() - 1.0, again)

    w.call_later(0, again)
    await asyncio.sleep(0.05)
    assert len(runs) == len(set(runs)), "ran twice in one wake-up"
    assert runs == sorted(runs) and len(runs) > 1


async def connected_pair() -> tuple[aioice.Connection, aioice.Connection]:
    """An SFU-side (controlled) connection and a peer, connected on loopback."""
    sfu = aioice.Connection(ice_controlling=False)
    peer = aioice.Connection(ice_controlling=True)
    ice.mark_connection(sfu)
    original = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [MEDIA_HOST]
    try:
        await sfu.gather_candidates()
        await peer.gather_candidates()
    finally:
        aioice.ice.get_host_addresses = original
    for a, b in ((sfu, peer), (peer, sfu)):
        for candidate in b.local_candidates:
            await a.add_remote_candidate(candidate)
        await a.add_remote_candidate(None)
        a.remote_username, a.remote_password = b.local_username, b.local_password
    await asyncio.gather(sfu.connect(), peer.connect())
    return sfu, peer


@pytest.fixture
def quick_consent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.1)
    monkeypatch.setattr(stun, "RETRY_RTO", 0.1)


async def test_consent_is_checked_on_the_wheel_and_expires_without_answers(
    quick_consent: None, caplog: pytest.LogCaptureFixture
) -> None:
    sfu, peer = await connected_pair()
    try:
        requests = []
        answer = peer.request_received

        def counted(message: stun.Message, addr: tuple[str, int], protocol: object) -> None:
            requests.append(message.attributes.get("USERNAME"))
            answer(message, addr, protocol)

        peer.request_received = counted  # the peer answers as before; we only count
        await asyncio.sleep(0.05)
        # No task per connection: aioice's consent task ended at once.
        assert sfu._query_consent_task is None or sfu._query_consent_task.done()
        assert not any(
            "query_consent" in repr(t.get_coro()) and not t.done()
            for t in asyncio.all_tasks()
            if t is not peer._query_consent_task
        )
        with caplog.at_level(logging.INFO, logger="sfu.ice"):
            await asyncio.sleep(1.5)
            # 0.08-0.12 s apart: about a dozen checks, each signed and answered.
            assert 8 <= len(requests) <= 20
            assert set(requests) == {f"{peer.local_username}:{sfu.local_username}"}
            assert "consent expired" not in caplog.text

            # The peer goes silent (its sockets close): consent expires when the window
            # (6 x 0.1 s) has passed since the last answer, 0-0.12 s before the silence.
            peer.request_received = lambda *args: None
            silent = asyncio.get_running_loop().time()
            for _ in range(100):
                await asyncio.sleep(0.05)
                if "consent expired" in caplog.text:
                    break
            took = asyncio.get_running_loop().time() - silent
            assert "consent expired" in caplog.text
            assert 6 * 0.1 - 0.12 - 0.05 <= took <= 6 * 0.1 + 2 * RESOLUTION + 1.0
        # The SFU's connection waits for a restart instead of closing.
        assert not sfu._closed
        sent = len(requests)
        await asyncio.sleep(0.5)
        assert len(requests) == sent  # and checks no more
    finally:
        await peer.close()
        await sfu.close()


async def test_an_answer_resets_the_failures(
    quick_consent: None, caplog: pytest.LogCaptureFixture
) -> None:
    sfu, peer = await connected_pair()
    try:
        answer = peer.request_received
        seen = []

        def every_third(message: stun.Message, addr: tuple[str, int], protocol: object) -> None:
            seen.append(1)
            if len(seen) % 3 == 0:
                answer(message, addr, protocol)

        peer.request_received = every_third
        with caplog.at_level(logging.INFO, logger="sfu.ice"):
            await asyncio.sleep(3.0)
            assert len(seen) >= 12
            # an answer about every 0.3 s, within every 0.6 s window
            assert "consent expired" not in caplog.text
    finally:
        await peer.close()
        await sfu.close()


async def test_late_answers_are_consent(
    quick_consent: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Every check answered 0.25 s late (longer than the 0.1 s RTO, well within the
    0.6 s window): RFC 7675 counts a response to any request of the window."""
    sfu, peer = await connected_pair()
    try:
        answer = peer.request_received
        loop = asyncio.get_running_loop()
        seen = []

        def late(message: stun.Message, addr: tuple[str, int], protocol: object) -> None:
            seen.append(1)
            loop.call_later(0.25, answer, message, addr, protocol)

        peer.request_received = late
        with caplog.at_level(logging.INFO, logger="sfu.ice"):
            await asyncio.sleep(2.0)
            assert len(seen) >= 12
            assert "consent expired" not in caplog.text
            assert ice.consented(sfu)
    finally:
        await peer.close()
        await sfu.close()


async def test_close_and_restart_stop_the_checks(quick_consent: None) -> None:
    sfu, peer = await connected_pair()
    seen = []
    answer = peer.request_received

    def counted(message: stun.Message, addr: tuple[str, int], protocol: object) -> None:
        seen.append(1)
        answer(message, addr, protocol)

    peer.request_received = counted
    try:
        await asyncio.sleep(0.5)
        assert seen
        await sfu.close()
        n = len(seen)
        await asyncio.sleep(0.5)
        assert len(seen) == n
    finally:
        await peer.close()
        await sfu.close()


async def test_a_closed_connection_is_not_held_by_its_consent_jobs() -> None:
    """Consent's expiry job lies 30 s ahead (aioice's own interval here). Before, close
    left it (and the next check) armed on the wheel, and a cancelled job kept its
    callback: the closed connection - and through its owner's callback a subscriber,
    its allocator and the room's router - lived until the job came due."""
    import gc
    import weakref

    sfu, peer = await connected_pair()
    await asyncio.sleep(0.05)
    assert getattr(sfu, ice._CONSENT, None) is not None
    gone = weakref.ref(sfu)
    await sfu.close()
    await peer.close()
    del sfu
    gc.collect()
    assert gone() is None


async def test_a_cancelled_job_lets_go_of_its_callback() -> None:
    import weakref

    class Owner:
        def job(self) -> None:
            raise AssertionError("cancelled, yet ran")

    owner = Owner()
    gone = weakref.ref(owner)
    timer = wheel().call_later(60, owner.job)
    timer.cancel()
    del owner
    assert gone() is None  # no collection needed: nothing holds it any more


async def test_jobs_due_together_let_the_loop_poll_between_budgets() -> None:
    """A slot holding many jobs runs them in goes of at most ``budget`` seconds, with the
    event loop's other ready work (its sockets' readers) between the goes: 150 allocator
    steps in one slot held the loop for 10-23 ms at 50 rooms. The clock is the test's:
    each job "takes" 1 ms of it."""
    loop = asyncio.get_running_loop()
    now = [0.0]
    w = Wheel(loop, budget=0.0025, clock=lambda: now[0])
    ran: list[str] = []

    def job(i: int) -> None:
        now[0] += 0.001
        ran.append(f"job{i}")
        if i == 0:
            # what a datagram's reader would be: ready work queued behind the wheel
            loop.call_soon(lambda: ran.append("reader"))

    for i in range(10):
        w.call_later(0, lambda i=i: job(i))
    await asyncio.sleep(0.2)
    assert sorted(ran, key=lambda x: (x != "reader", x)) == ["reader"] + [
        f"job{i}" for i in range(10)
    ]
    # three jobs fill a 2.5 ms budget; the reader ran before the fourth
    assert ran.index("reader") == 3
    assert w.deferred == 3  # goes of 3, 3, 3 and 1
    assert w.fired == 1


async def test_a_job_cancelled_while_its_go_waits_does_not_run() -> None:
    loop = asyncio.get_running_loop()
    now = [0.0]
    w = Wheel(loop, budget=0.0005, clock=lambda: now[0])
    ran: list[int] = []
    timers = []

    def job(i: int) -> None:
        now[0] += 0.001
        ran.append(i)
        if i == 0:
            # between this go and the next (as a datagram's reader would): the next job,
            # already taken out of its slot, is cancelled while its go waits
            loop.call_soon(timers[1].cancel)

    for i in range(3):
        timers.append(w.call_later(0, lambda i=i: job(i)))
    await asyncio.sleep(0.2)
    assert ran == [0, 2]
