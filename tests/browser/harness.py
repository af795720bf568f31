"""Browser harness helpers: the server handle, Chromium's flags and page probes.

Everything runs inside the loopback-only namespace of ``make test``. Chromium keeps its
mDNS obfuscation of host candidates (``xxxx.local``): the server drops those and learns
the browser's address from its connectivity checks (peer-reflexive), as in production.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import BrowserContext, Page

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("ROUNDTABLE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
]


# --- the server ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    base_url: str
    api_key: str
    secret: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes]
    tls: ssl.SSLContext | None = None  # trusts the test certificate of an HTTPS server

    def urlopen(self, target: str | urllib.request.Request, timeout: float = 10) -> Any:
        """``urllib`` against this server (a path, or a Request with a full URL)."""
        if isinstance(target, str):
            target = self.base_url + target
        return urllib.request.urlopen(target, timeout=timeout, context=self.tls)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.api_key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self.urlopen(req) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    async def cpu_percent(self, seconds: float) -> float:
        """CPU the server process used over ``seconds`` (100 = one core)."""
        import psutil

        proc = psutil.Process(self.proc.pid)
        before = proc.cpu_times()
        start = time.monotonic()
        await asyncio.sleep(seconds)
        after = proc.cpu_times()
        used = (after.user - before.user) + (after.system - before.system)
        return 100.0 * used / (time.monotonic() - start)

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{"name{labels}": value}``."""
        with self.urlopen("/metrics") as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                try:
                    out[key] = float(value)
                except ValueError:
                    pass
        return out

    def _metric_sum(self, name: str) -> float | None:
        values = [v for k, v in self.metrics().items() if k == name or k.startswith(name + "{")]
        return sum(values) if values else None

    def leg_layers(self, metrics: dict[str, float] | None = None) -> dict[tuple[str, str], int]:
        """``(subscriber, publisher) -> layer`` each video leg forwards now (-1: paused),
        as the SFU's ``roundtable_video_leg_layer`` says (in ``metrics`` if given: one
        ``/metrics`` read for several figures)."""
        return {
            (labels["subscriber"], labels["publisher"]): int(value)
            for labels, value in self.labelled("roundtable_video_leg_layer", metrics)
        }

    def downlink_estimates(self, metrics: dict[str, float] | None = None) -> dict[str, float]:
        """``subscriber -> bits/s`` the SFU believes that subscriber's link takes."""
        return {
            labels["subscriber"]: value
            for labels, value in self.labelled("roundtable_downlink_estimate_bps", metrics)
        }

    def labelled(
        self, name: str, metrics: dict[str, float] | None = None
    ) -> list[tuple[dict[str, str], float]]:
        """Every sample of the metric ``name`` with its labels."""
        out = []
        for key, value in (self.metrics() if metrics is None else metrics).items():
            if key.startswith(name + "{"):
                inner = key[len(name) + 1 : -1]
                labels = dict(
                    (part.split("=", 1)[0], part.split("=", 1)[1].strip('"'))
                    for part in inner.split(",")
                    if "=" in part
                )
                out.append((labels, value))
        return out

    def participants(self) -> int:
        """Participants the server holds (all states), from ``/metrics``."""
        return int(self._metric_sum("roundtable_participants") or 0)

    def peer_connections(self) -> int | None:
        """Peer connections the SFU holds, if it exports that gauge."""
        for name in ("roundtable_peer_connections", "roundtable_sfu_peer_connections"):
            value = self._metric_sum(name)
            if value is not None:
                return int(value)
        return None

    def create_room(self, **body: Any) -> dict[str, Any]:
        """``POST /api/rooms``; join links are rebased onto this server's address.

        The client link joins directly unless a test asks for the waiting room or consent.
        """
        body.setdefault("client_lobby", False)
        body.setdefault("client_consent", False)
        status, room = self.request("POST", "/api/rooms", body)
        assert status == 201, (status, room)
        for key in ("caseworker_url", "client_url"):
            if room[key] is not None:  # no client link when the client is at the desk
                room[key] = self.local_url(room[key])
        return room

    def local_url(self, url: str) -> str:
        # The public base may differ from where the test reaches the server; keep path+fragment.
        parts = urlsplit(url)
        return f"{self.base_url}{parts.path}#{parts.fragment}"

    def token(self, room: str, role: str, name: str, *extra: str) -> str:
        """A token from the operator CLI (``roundtable token``), signed with our secret."""
        out = subprocess.run(
            [
                str(bin_path("roundtable")),
                "token",
                "--room",
                room,
                "--role",
                role,
                "--name",
                name,
                *extra,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.strip().splitlines()[-1].strip()

    def join_url(self, token: str) -> str:
        return f"{self.base_url}/join#token={token}"


def bin_path(name: str) -> Path:
    candidate = Path(sys.executable).parent / name
    return candidate if candidate.exists() else ROOT / ".venv" / "bin" / name


# --- the browsers ----------------------------------------------------------------------


@dataclass
class Browser:
    """One Chromium (own process, own fresh profile) with one page."""

    name: str
    context: BrowserContext
    page: Page
    console: list[str] = field(default_factory=list)

    async def close(self) -> None:
        await self.context.close()


def log_line(browser: Browser, line: str) -> None:
    browser.console.append(line)
    if "error" in line.lower():
        print(f"[{browser.name}] {line}")


# --- page helpers ----------------------------------------------------------------------


async def open_join(browser: Browser, url: str) -> None:
    """Open a join link and wait until the preview has its devices."""
    await browser.page.goto(url)
    await browser.page.wait_for_selector("body[data-ready=true]", timeout=15000)


async def join(browser: Browser, url: str | None = None) -> None:
    """Open ``url`` (unless the page is already on its link) and press the join button."""
    if url:
        await open_join(browser, url)
    await browser.page.get_by_test_id("join-button").click()
    await wait_js(browser, "Boolean(window.roundtable && window.roundtable.you)", within=15)


async def click_join(browser: Browser, within: float = 45.0) -> str:
    """On the pre-join page, as a person: tick the consent box if there is one, press join.

    Generous by default: a loaded machine can take long to set up the call, and only the
    click itself (no force) is what this checks."""
    page = browser.page
    consent = page.get_by_test_id("consent")
    if await consent.is_visible():
        await consent.click()
        assert await consent.is_checked()
    await page.get_by_test_id("join-button").click()
    await wait_js(browser, "Boolean(window.roundtable && window.roundtable.you)", within=within)
    return await my_id(browser)


async def in_call(browser: Browser, within: float = 60.0) -> None:
    """The call view is shown (after the waiting room, if any)."""
    await browser.page.wait_for_selector("#view-call:not([hidden])", timeout=within * 1000)


async def wait_js(browser: Browser, expression: str, within: float = 10.0) -> Any:
    """Poll a JS expression until truthy (``wait_for_function`` needs eval, which our CSP forbids)."""
    start = time.monotonic()
    while True:
        value = await browser.page.evaluate(expression)
        if value:
            return value
        if time.monotonic() - start > within:
            raise AssertionError(f"{browser.name}: {expression} still false after {within}s")
        await asyncio.sleep(0.1)


async def my_id(browser: Browser) -> str:
    return await browser.page.evaluate("window.roundtable.you.id")


# Per remote video: size, clock and frames decoded (inbound-rtp, mapped to the participant
# through the mid of the subscribe offer's track list).
_SAMPLE_JS = """
async () => {
  const rt = window.roundtable;
  const pc = rt.pcs && rt.pcs.subscribe;
  const frames = {};
  if (pc) {
    const byTrack = {};
    for (const tr of pc.getTransceivers()) {
      if (tr.receiver && tr.receiver.track && tr.mid !== null) byTrack[tr.receiver.track.id] = tr.mid;
    }
    const map = rt.call ? rt.call.trackMap : new Map();
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type !== 'inbound-rtp' || s.kind !== 'video') return;
      const mid = s.mid !== undefined ? String(s.mid) : byTrack[s.trackIdentifier];
      const info = map.get(mid);
      if (!info) return;
      frames[info.participant] = (frames[info.participant] || 0) + (s.framesDecoded || 0);
    });
  }
  const out = {};
  for (const v of document.querySelectorAll('video[data-testid="remote-video"]')) {
    out[v.dataset.participant] = {
      role: v.dataset.role, width: v.videoWidth, time: v.currentTime, paused: v.paused,
      frames: frames[v.dataset.participant] || 0,
      audio: v.srcObject ? v.srcObject.getAudioTracks().length : 0,
    };
  }
  return out;
}
"""


# Every inbound RTP stream of the page's subscribe connection, keyed
# "participant:kind:ssrc" (mapped through the mid of the subscribe offer's track list).
_INBOUND_RTP_JS = """
async () => {
  const rt = window.roundtable;
  const pc = rt.pcs && rt.pcs.subscribe;
  const out = {};
  if (!pc) return out;
  const map = rt.call ? rt.call.trackMap : new Map();
  const stats = await pc.getStats();
  stats.forEach((s) => {
    if (s.type !== 'inbound-rtp') return;
    const info = map.get(String(s.mid));
    if (!info) return;
    out[`${info.participant}:${s.kind}:${s.ssrc}`] = {
      lost: s.packetsLost || 0, received: s.packetsReceived || 0,
      width: s.frameWidth || 0, height: s.frameHeight || 0, frames: s.framesDecoded || 0,
      keyframes: s.keyFramesDecoded || 0, dropped: s.framesDropped || 0,
      freezes: s.freezeCount || 0, freezeSeconds: s.totalFreezesDuration || 0,
      pli: s.pliCount || 0, nack: s.nackCount || 0,
      concealed: s.concealedSamples || 0, samples: s.totalSamplesReceived || 0,
      bytes: s.bytesReceived || 0, header: s.headerBytesReceived || 0,
    };
  });
  return out;
}
"""


def partner_url(server: Server, room: str) -> str:
    """A join link for a partner of the pension insurance with every media grant."""
    token = server.token(
        room,
        "partner",
        "Frau Sommer",
        "--org",
        "Deutsche Rentenversicherung",
        "--grants",
        "publish,subscribe,audio,video,see_client,screen",
    )
    return server.join_url(token)


async def inbound_rtp(browser: Browser) -> dict[str, dict[str, Any]]:
    """What the page receives, per remote participant, kind and RTP stream (getStats)."""
    return await browser.page.evaluate(_INBOUND_RTP_JS)


# Every freeze of the page's inbound videos, one by one. getStats gives only a count and a
# total (``freezeCount``, ``totalFreezesDuration``); read every 100 ms, each freeze shows
# as its own step, since a freeze lasts at least 150 ms (Chromium: a frame interval over
# max(3x the mean, the mean + 150 ms)) and two cannot end within one read. A step of more
# than one freeze (a page too busy to read in time) is kept with its count.
_FREEZE_WATCH_JS = """
(period) => {
  const rt = window.roundtable;
  if (rt.freezeWatch) return;
  const last = new Map();
  const w = rt.freezeWatch = {log: [], busy: false};
  w.timer = setInterval(async () => {
    const pc = rt.pcs && rt.pcs.subscribe;
    if (!pc || w.busy) return;
    w.busy = true;
    try {
      const map = rt.call ? rt.call.trackMap : new Map();
      const stats = await pc.getStats();
      stats.forEach((s) => {
        if (s.type !== 'inbound-rtp' || s.kind !== 'video') return;
        const info = map.get(String(s.mid));
        const n = s.freezeCount || 0, seconds = s.totalFreezesDuration || 0;
        const before = last.get(s.ssrc);
        last.set(s.ssrc, {n, seconds});
        if (!info || !before || n <= before.n) return;
        w.log.push({participant: info.participant, ssrc: s.ssrc, count: n - before.n,
                    seconds: seconds - before.seconds, at: performance.now()});
      });
    } finally { w.busy = false; }
  }, period);
}
"""


async def watch_freezes(browser: Browser, period_ms: int = 100) -> None:
    """Start logging each freeze of the page's inbound videos (``take_freezes``)."""
    await browser.page.evaluate(_FREEZE_WATCH_JS, period_ms)


async def take_freezes(browser: Browser) -> list[dict[str, Any]]:
    """The freezes logged since the last take (``watch_freezes``), oldest first: each
    ``{participant, ssrc, count, seconds}``; ``count`` > 1 only when the page read late,
    then ``seconds`` is their sum."""
    return await browser.page.evaluate(
        "() => { const w = window.roundtable.freezeWatch; const l = w.log; w.log = []; return l; }"
    )


async def remote_videos(browser: Browser) -> dict[str, dict[str, Any]]:
    return await browser.page.evaluate(_SAMPLE_JS)


async def wait_remote_playing(
    browser: Browser, participants: set[str], within: float = 30.0
) -> dict[str, Any]:
    """Wait until the page plays video of exactly ``participants``.

    Playing means: ``videoWidth > 0``, ``currentTime`` advancing and inbound-rtp
    ``framesDecoded`` rising between two samples a second apart.
    """
    deadline = time.monotonic() + within
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        first = await remote_videos(browser)
        await asyncio.sleep(1.0)
        second = await remote_videos(browser)
        last = second
        if set(second) == participants and all(
            pid in first
            and second[pid]["width"] > 0
            and second[pid]["time"] > first[pid]["time"]
            and second[pid]["frames"] > first[pid]["frames"]
            for pid in participants
        ):
            return second
    console = "\n".join(browser.console[-30:])
    raise AssertionError(
        f"{browser.name}: remote video of {sorted(participants)} not playing within {within}s; "
        f"last sample {last}\nconsole:\n{console}"
    )


async def wait_remote_set(browser: Browser, participants: set[str], within: float = 10.0) -> float:
    """Wait until the page's remote tiles are exactly ``participants``; returns seconds taken."""
    start = time.monotonic()
    while True:
        ids = await browser.page.evaluate(
            "[...document.querySelectorAll('video[data-testid=\"remote-video\"]')].map(v => v.dataset.participant)"
        )
        if set(ids) == participants:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(
                f"{browser.name}: remote tiles {sorted(ids)} != {sorted(participants)} after {within}s"
            )
        await asyncio.sleep(0.2)


SELECTED_REMOTE_PORTS = """async () => {
  const ports = [];
  for (const pc of [window.roundtable.pcs.publish, window.roundtable.pcs.subscribe]) {
    if (!pc) continue;
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type !== 'transport' || !s.selectedCandidatePairId) return;
      const pair = stats.get(s.selectedCandidatePairId);
      const remote = pair && stats.get(pair.remoteCandidateId);
      if (remote) ports.push(remote.port);
    });
  }
  return ports;
}"""


async def selected_remote_ports(browser: Browser) -> list[int]:
    """The server ports of the page's selected ICE candidate pairs (publish, subscribe)."""
    return await browser.page.evaluate(SELECTED_REMOTE_PORTS)


async def join_to_first_frame_ms(browser: Browser) -> int | None:
    return await browser.page.evaluate("window.roundtable.metrics.joinToFirstFrameMs")


def claims_of(url: str) -> dict[str, Any]:
    """The (unverified) JWT payload of a join link."""
    token = urlsplit(url).fragment.split("token=", 1)[1]
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


Launch = Callable[..., Awaitable[Browser]]


async def eventually(check: Callable[[], Any], within: float, what: str) -> Any:
    """Poll ``check`` (sync) every 0.2 s until it returns something truthy."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {within}s: {what}")


_UNNAMED_JS = """
() => {
  const visible = (el) => el.offsetParent !== null || el.getClientRects().length > 0;
  const named = (el) =>
    (el.getAttribute('aria-label') || '').trim() ||
    (el.getAttribute('aria-labelledby') || '').trim() ||
    (el.labels && el.labels.length > 0) ||
    (el.tagName === 'BUTTON' && el.textContent.trim());
  return [...document.querySelectorAll('button, input, select, textarea, video')]
    .filter((el) => visible(el) && !named(el))
    .map((el) => el.outerHTML.slice(0, 120));
}
"""


async def unnamed_controls(browser: Browser) -> list[str]:
    """Visible buttons, fields and videos that a screen reader could not name."""
    return await browser.page.evaluate(_UNNAMED_JS)


# --- accessibility ---------------------------------------------------------------------

AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"


async def axe_findings(
    browser: Browser, impacts: tuple[str, ...] = ("serious", "critical")
) -> list[str]:
    """Run axe-core (vendored from npm, web/package.json devDependencies) over the page.

    It is evaluated through the DevTools protocol, so the page's CSP (no inline scripts)
    stays as it is and the page itself never serves axe. Returns one line per finding of
    the given impacts: rule, impact and the first offending elements.
    """
    if not AXE.exists():
        raise AssertionError(f"{AXE} missing: `make install` installs web/node_modules")
    page = browser.page
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE.read_text() + "\n;true")
    result = await page.evaluate(
        """async (impacts) => {
          const r = await window.axe.run(document, { resultTypes: ['violations'] });
          return r.violations
            .filter((v) => impacts.includes(v.impact))
            .map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(' | ')}`);
        }""",
        list(impacts),
    )
    return result


async def launch_inside(
    launch: Launch, ns: Any, name: str, server: Server, url: str, **kwargs: Any
) -> tuple[Browser, str]:
    """A Chromium in the child namespace ``ns`` (``tests.netns``) and ``url`` as it
    reaches ``server`` from there (the veth's outside address). Camera and microphone
    need a secure context, and that origin is plain http: Chromium is told to trust it.
    """
    outside = f"http://{ns.outside_ip}:{urlsplit(server.base_url).port}"
    parts = urlsplit(url)
    browser = await launch(
        name,
        executable=str(ns.wrapper(CHROMIUM, f"chromium-{name}")),
        args=[f"--unsafely-treat-insecure-origin-as-secure={outside}"],
        **kwargs,
    )
    return browser, f"{outside}{parts.path}#{parts.fragment}"
