"""One load-generator process: the rooms it was given, joined, measured, then left.

The coordinator (``bench.runner``) starts one or more of these with
``multiprocessing`` and steers them with two events: ``start`` opens the measurement
window in every process at once, ``stop`` closes it. A process reports over a queue:
``("joined", 1)`` per participant, ``("ready", ...)`` once every subscriber of its rooms
receives every publisher (or the join timeout passed), then ``("result", ...)``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .link import NetnsLoop, gather_per_thread
from .media import EncodedMedia
from .participant import SyntheticParticipant, Window

log = logging.getLogger(__name__)

ROLES = ("caseworker", "client")
SAMPLE_EVERY_S = 0.5  # every participant's timeline while a link is shaped (--link)
PARTNER_GRANTS = ("publish", "subscribe", "audio", "video", "see_client")


@dataclass(frozen=True, slots=True)
class Scenario:
    url: str
    api_key: str
    secret: str | None  # mints partner tokens where there is no invite API
    participants: int
    partner_delay: float
    join_pacing: float
    audio_only: bool
    media: EncodedMedia
    media_host: str | None
    join_timeout: float = 60.0
    tls_verify: bool = True
    aiortc_publisher: bool = False  # publish through aiortc's RTCRtpSender (slower)
    # simulcast (media.layers set): the layer each subscriber's tiles ask for
    # (bench.participant.VIEWS) and the layers' sizes, low → high
    view: str | None = None
    layer_sizes: tuple[tuple[int, int], ...] = ()
    # --link: (room index, participant index, namespace path, its address) of each
    # participant that joins from behind a shaped link (bench.link)
    links: tuple[tuple[int, int, str, str], ...] = ()


@dataclass(slots=True)
class RoomRun:
    index: int
    room_id: str = ""
    participants: list[SyntheticParticipant] | None = None
    error: str | None = None


def _token_from(link: str) -> str:
    fragment = urlsplit(link).fragment
    for part in fragment.split("&"):
        if part.startswith("token="):
            return part[len("token=") :]
    raise ValueError("join link without #token=")


def partner_token(secret: str, room: str, n: int) -> str:
    """What `roundtable token --role partner` prints, with an invite's usual grants."""
    from signaling.store import MemoryStore
    from signaling.tokens import TokenService

    token, _ = TokenService(secret, MemoryStore()).issue(
        room=room,
        role="partner",
        name=f"Partner {n}",
        org="Bench",
        grants=PARTNER_GRANTS,
        ttl=3600,
    )
    return token


class Generator:
    """The rooms of one process."""

    def __init__(self, scenario: Scenario, room_indices: list[int], report: Any) -> None:
        self.s = scenario
        self.rooms = [RoomRun(i) for i in room_indices]
        self.window = Window()
        self.report = report  # callable(tuple)
        self._http: aiohttp.ClientSession | None = None
        self._shaped_loops: list[NetnsLoop] = []
        self.window_t0 = 0.0

    def shaped(self) -> list[SyntheticParticipant]:
        return [p for room in self.rooms for p in (room.participants or []) if p.shaped]

    def sample_shaped(self) -> None:
        """One point of every participant's timeline while a link is shaped: what it
        has received of each publisher's audio and video so far in the window
        (bench.report turns the differences between points into rates and loss per
        interval; the unshaped subscribers' show whether one link's shaping reaches
        the others)."""
        t = round(time.monotonic() - self.window_t0, 2)
        for p in (p for room in self.rooms for p in (room.participants or [])):
            point = []
            for f in list(p.rx.flows.values()):
                exp = f.rtp_last - f.rtp_first + 1 if f.rtp_first is not None else 0
                point.append([f.publisher, f.kind, f.w_packets, exp, f.w_bytes])
            p.timeline.append([t, point])

    async def join_all(self) -> None:
        connector = aiohttp.TCPConnector(ssl=None if self.s.tls_verify else False)
        self._http = aiohttp.ClientSession(connector=connector)
        tasks = []
        for n, room in enumerate(self.rooms):
            tasks.append(asyncio.ensure_future(self._run_room(room, n * self.s.join_pacing)))
        await asyncio.gather(*tasks)

    async def _run_room(self, room: RoomRun, delay: float) -> None:
        await asyncio.sleep(delay)
        s = self.s
        room.participants = []
        try:
            t0 = time.monotonic_ns()
            assert self._http is not None
            async with self._http.post(
                f"{s.url}/api/rooms",
                json={
                    "client_name": "Bench client",
                    "caseworker_name": "Bench caseworker",
                    # Synthetic clients are not let in by a person: straight into the room.
                    "client_lobby": False,
                    "client_consent": False,
                },
                headers={"Authorization": f"Bearer {s.api_key}"},
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 201:
                    raise RuntimeError(f"POST /api/rooms: {resp.status} {body}")
            room.room_id = body["room"]
            tokens = [_token_from(body["caseworker_url"]), _token_from(body["client_url"])]
            for i in range(min(2, s.participants)):
                await self._join(tokens[i], ROLES[i], room, i, t0)
                self.report(("joined", 1))
                if s.join_pacing:
                    await asyncio.sleep(s.join_pacing)
            if s.participants > 2:
                await asyncio.sleep(s.partner_delay)
                for i in range(2, s.participants):
                    t1 = time.monotonic_ns()
                    token, via = await self._invite(room.room_id, tokens[0], i - 1)
                    await self._join(token, "partner", room, i, t1, via)
                    self.report(("joined", 1))
                    if s.join_pacing:
                        await asyncio.sleep(s.join_pacing)
        except Exception as exc:
            room.error = f"{type(exc).__name__}: {exc}"
            log.warning("room %d: %s", room.index, room.error)
            self.report(("joined", 0))

    async def _invite(self, room_id: str, caseworker_token: str, n: int) -> tuple[str, str]:
        """A partner's token: dialled in by the caseworker through the invite API
        (``POST /api/rooms/{room}/invites``, no waiting room), or, where a server has no
        invite API (the baseline relay), minted with the secret like `roundtable token`."""
        assert self._http is not None
        async with self._http.post(
            f"{self.s.url}/api/rooms/{room_id}/invites",
            json={
                "organisation_type": "other",
                "organisation": "Bench",
                "name": f"Partner {n}",
                "rights": ["audio", "video", "see_client"],
                "waiting_room": False,
            },
            headers={"Authorization": f"Bearer {caseworker_token}"},
        ) as resp:
            if resp.status == 201:
                return _token_from((await resp.json())["invite_url"]), "invite"
            if resp.status not in (404, 405) or not self.s.secret:
                raise RuntimeError(f"POST invites: {resp.status} {await resp.text()}")
        return partner_token(self.s.secret, room_id, n), "token"

    async def _join(
        self, token: str, role: str, room: RoomRun, i: int, t0: int, via: str = "room"
    ) -> SyntheticParticipant:
        """A participant joined; from behind its shaped link if --link chose its seat
        (then it lives on an event loop of its own, in a thread inside its namespace)."""
        seat = next((x for x in self.s.links if x[0] == room.index and x[1] == i), None)
        if seat is None:
            p = self._participant(token, role, room, i)
            p.via = via
            await p.join(t0)
            return p
        runner = NetnsLoop(seat[2], seat[3], name=f"bench-shaped-{room.index}-{i}")
        self._shaped_loops.append(runner)

        async def make() -> SyntheticParticipant:
            return self._participant(token, role, room, i, shaped=True)

        p = await runner.run(make())
        p.via = via
        p.runner = runner
        await runner.run(p.join(t0))
        return p

    def _participant(
        self, token: str, role: str, room: RoomRun, i: int, shaped: bool = False
    ) -> SyntheticParticipant:
        p = SyntheticParticipant(
            self.s.url,
            token,
            role,
            index=room.index * 100 + i,
            media=self.s.media,
            window=self.window,
            audio_only=self.s.audio_only,
            tls_verify=self.s.tls_verify,
            aiortc_publisher=self.s.aiortc_publisher,
            # behind a link: tiles as big as the top layer, so the layer it gets is the
            # allocator's choice for its bandwidth, not its view's
            view="h" if shaped and self.s.view else self.s.view,
            layer_sizes=self.s.layer_sizes,
            shaped=shaped,
        )
        assert room.participants is not None
        room.participants.append(p)
        return p

    def complete(self) -> tuple[int, int]:
        """(publisher→subscriber pairs receiving media, pairs expected)."""
        have = want = 0
        for room in self.rooms:
            people = room.participants or []
            pids = {p.pid for p in people if p.pid and p.tracks}
            for p in people:
                others = pids - {p.pid}
                want += len(others)
                have += len(others & p.received_from())
        return have, want

    async def wait_flowing(self, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            have, want = self.complete()
            if want and have >= want:
                return
            await asyncio.sleep(0.2)

    def results(self, window_s: float) -> list[dict[str, Any]]:
        out = []
        for room in self.rooms:
            people = room.participants or []
            pids = {p.pid: p for p in people if p.pid}
            flows = []
            e2e: list[int] = []
            for p in people:
                e2e.extend(p.rx.e2e_ns)
                for f in p.rx.flows.values():
                    flows.append(
                        {
                            "subscriber": p.pid,
                            "publisher": f.publisher,
                            "kind": f.kind,
                            "packets": f.packets,
                            "w_packets": f.w_packets,
                            "w_bytes": f.w_bytes,
                            "frames": f.frames,
                            "markers": f.markers,
                            "frames_expected": (f.last_seq - f.first_seq + 1)
                            if f.first_seq is not None
                            else 0,
                            "rtp_expected": (f.rtp_last - f.rtp_first + 1)
                            if f.rtp_first is not None
                            else 0,
                            "rtp_received": f.w_packets,
                        }
                    )
            out.append(
                {
                    "index": room.index,
                    "room": room.room_id,
                    "error": room.error,
                    "participants": [
                        {
                            "id": p.pid,
                            "role": p.role,
                            "via": p.via,
                            "publishes": bool(p.tracks),
                            "join_ms": (p.rx.first_media_ns - p.join_started_ns) / 1e6
                            if p.rx.first_media_ns
                            else None,
                            "received_from": sorted(p.received_from()),
                            "errors": p.errors[:5],
                            "sent_frames": p.sent_frames,
                            "send_drops": p.send_drops,
                            "shaped": p.shaped,
                            "reconnects": p.reconnects,
                            "timeline": p.timeline,
                        }
                        for p in people
                    ],
                    "publishers": sorted(pid for pid, p in pids.items() if p.tracks),
                    "flows": flows,
                    "e2e_ns": e2e,
                    "window_s": window_s,
                }
            )
        return out

    async def close(self) -> None:
        people = [p for room in self.rooms for p in (room.participants or [])]
        await asyncio.gather(
            *(p.runner.run(p.close()) if p.runner else p.close() for p in people),
            return_exceptions=True,
        )
        for runner in self._shaped_loops:
            runner.stop()
        if self._http is not None:
            await self._http.close()


async def run(
    scenario: Scenario, room_indices: list[int], report: Any, start: Any, stop: Any
) -> None:
    """Join, report ready, measure between ``start`` and ``stop`` (threading-like events)."""
    gen = Generator(scenario, room_indices, report)
    try:
        await gen.join_all()
        await gen.wait_flowing(scenario.join_timeout)
        have, want = gen.complete()
        report(("ready", {"pairs": have, "pairs_expected": want}))
        parent = os.getppid()
        while not start.is_set():  # noqa: ASYNC110 - see below
            if stop.is_set() or os.getppid() != parent:
                break
            await asyncio.sleep(0.02)
        gen.window.active = True
        t0 = gen.window_t0 = time.monotonic()
        sampling = bool(scenario.links)  # every worker: the unshaped rooms count too
        next_sample = t0
        # multiprocessing events cannot be awaited; poll them (bounded by the coordinator).
        while not stop.is_set() and os.getppid() == parent:  # noqa: ASYNC110
            if sampling and time.monotonic() >= next_sample:
                gen.sample_shaped()
                next_sample += SAMPLE_EVERY_S
            await asyncio.sleep(0.02)
        if sampling:
            gen.sample_shaped()
        gen.window.active = False
        report(("result", gen.results(time.monotonic() - t0)))
    except Exception as exc:
        log.exception("generator failed")
        report(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        try:
            await asyncio.wait_for(gen.close(), 30)
        except Exception:
            pass


def process_main(
    scenario: Scenario, room_indices: list[int], queue: Any, start: Any, stop: Any, cpu: int | None
) -> None:
    """Entry point of a generator process (``multiprocessing``, spawn)."""
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("aioice", "aiortc", "socketio", "engineio"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    from sfu import aiortc_hooks

    # aioice skips loopback; the synthetic peers gather on the media host like the server.
    aiortc_hooks.use_media_host(scenario.media_host)
    if scenario.links:
        gather_per_thread()  # those behind a link gather on their namespace's address
    asyncio.run(run(scenario, room_indices, queue.put, start, stop))
