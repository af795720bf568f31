"""``roundtable-bench``: load-test a roundtable server and report what the SFU adds.

Synthetic participants are real aiortc peers that join through the server's HTTP API
and Socket.IO signalling, publish pre-encoded VP8/Opus with a timestamp trailer and
measure what they receive without decoding (see ``bench/participant.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from . import link as link_mod
from . import report as report_mod
from .generator import Scenario
from .media import (
    SIMULCAST_LAYERS,
    TRAILER,
    EncodedMedia,
    encode_media,
    packetize_video,
    with_layers,
)
from .participant import VIEWS
from .runner import cpu_plan, measure_floor, run_load, server_rss_mb, start_local

# One measured run of the load: label, server URL, API key, secret, rooms, server pid,
# simulcast (None: as the options say) -> its report.
RunOne = Callable[..., Awaitable[dict[str, Any]]]

EPILOG = """\
examples:
  roundtable-bench --local --rooms 10 --participants 3 --duration 20 \\
      --json bench-out/bench.json --plot bench-out/bench.png
  roundtable-bench --local --baseline --rooms 4 --participants 3 --duration 15
  roundtable-bench --local --compare-simulcast --rooms 10 --participants 3 --duration 20
  unshare -n sh -c 'ip link set lo up && roundtable-bench --local --simulcast --rooms 2 \\
      --duration 30 --link 300kbit,,2% --link-subscribers 1 --link-until 20 --plot out.png'
  roundtable-bench --local --find-capacity --rooms 5 --capacity-step 5 --duration 10
  roundtable-bench --local --find-capacity --server-workers 1,2 --workers 2
  roundtable-bench --url https://talk.example.org --api-key KEY --secret SECRET \\
      --rooms 20 --participants 4 --workers 4

Against a remote server, raise its ROUNDTABLE_JOINS_PER_IP_PER_MINUTE (one generator
host makes every join) and ROUNDTABLE_MAX_PARTICIPANTS if --participants exceeds it.
Partners (participants beyond caseworker and client) are dialled in by the
caseworker through POST /api/rooms/{room}/invites (no waiting room); a server without
the invite API needs --secret (or ROUNDTABLE_SECRET) to mint partner tokens instead.
Server CPU/RSS come from psutil with --local; against --url only if the server
exports process_cpu_seconds_total / process_resident_memory_bytes on /metrics.

The JSON report holds overall.{sfu_latency_ms,e2e_latency_ms}.{p50,p95,p99,max},
overall.loss_pct, overall.server_cpu_pct, overall.tracks_forwarded, ... and a `rooms`
list with the same per room.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="roundtable-bench",
        description=(
            "Load-test roundtable with synthetic aiortc participants through the real HTTP "
            "API and Socket.IO signalling. Reports per room and overall: SFU-added forwarding "
            "latency (the server's /metrics histogram), end-to-end latency, packet loss, join "
            "time, server CPU and memory, forwarded packets/s and tracks per core."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = p.add_argument_group("target")
    target.add_argument("--url", help="server base URL, e.g. http://127.0.0.1:8080")
    target.add_argument(
        "--api-key",
        default=os.environ.get("ROUNDTABLE_API_KEY"),
        help="operator API key for POST /api/rooms (default: $ROUNDTABLE_API_KEY)",
    )
    target.add_argument(
        "--secret",
        default=os.environ.get("ROUNDTABLE_SECRET"),
        help="token secret, to mint partner tokens like `roundtable token` where the server "
        "has no invite API (default: $ROUNDTABLE_SECRET)",
    )
    target.add_argument(
        "--local",
        action="store_true",
        help="start a private `roundtable serve` on a free loopback port with generated "
        "secrets (server pinned to one core with taskset, generators to another)",
    )
    target.add_argument(
        "--media-host",
        default=os.environ.get("ROUNDTABLE_MEDIA_HOST", "127.0.0.1"),
        help="address the synthetic peers (and a --local server) gather ICE on "
        "(default: $ROUNDTABLE_MEDIA_HOST or 127.0.0.1)",
    )
    target.add_argument(
        "--no-pin",
        action="store_true",
        help="with --local: let the OS place server and generators (on a shared machine "
        "a pinned process cannot escape a busy core)",
    )
    target.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    target.add_argument(
        "--server-workers",
        metavar="N[,M...]",
        help="with --local: start `roundtable serve --workers N` (N nodes of one cluster, a "
        "private redis-server) instead of one process; a list (1,2) runs the whole mode "
        "(e.g. --find-capacity) once per value and reports the ratio. Server and generators "
        "are then not pinned: the workers need the cores (on 2 cores they share them with "
        "the generators). Not to be confused with --workers, the generator processes",
    )

    load = p.add_argument_group("load")
    load.add_argument("--rooms", type=int, default=2, help="rooms (sessions) to run (default 2)")
    load.add_argument(
        "--participants",
        type=int,
        default=3,
        help="participants per room: caseworker, client, then partners (default 3)",
    )
    load.add_argument(
        "--partner-delay",
        type=float,
        default=1.0,
        help="seconds after caseworker and client before partners are dialled in (default 1)",
    )
    load.add_argument(
        "--duration", type=float, default=10.0, help="measurement window in seconds (default 10)"
    )
    load.add_argument(
        "--join-pacing",
        type=float,
        default=0.05,
        help="seconds between joins within a room and between room starts (default 0.05)",
    )
    load.add_argument("--audio-only", action="store_true", help="publish Opus only, no video")
    load.add_argument(
        "--video-bitrate", type=int, default=500, help="VP8 bitrate in kbit/s (default 500)"
    )
    load.add_argument(
        "--simulcast",
        action="store_true",
        help="publish the camera as the page does: three VP8 layers (rid l/m/h, 208×156 at "
        "100, 416×312 at 350, 832×624 at 1000 kbit/s; each its own SSRC with the rid and mid "
        "header extensions, key frame per layer on PLI) and follow the server's "
        "publish.layers; subscribers report their tiles with `view` (see --view), so the "
        "SFU forwards one layer per subscriber and publisher. The report adds the video "
        "legs per layer and the packets the SFU received. See also --compare-simulcast",
    )
    load.add_argument(
        "--view",
        choices=VIEWS,
        default="mixed",
        help="with --simulcast: the layer each subscriber's tiles ask for. mixed (default): "
        "participant i asks its j-th other publisher for layer (i+j) mod 3, so every layer "
        "is forwarded; l/m/h: tiles the size of that layer; top: no view report (the SFU "
        "forwards the top layer)",
    )
    load.add_argument(
        "--simulcast-scale",
        type=float,
        default=1.0,
        help="with --simulcast: layer sizes and bitrates times this (default 1: the page's; "
        "0.5 encodes faster for a quick run)",
    )
    load.add_argument(
        "--link",
        metavar="RATE[,DELAY[~JITTER]][,LOSS]",
        help="put --link-subscribers subscribers (the client of the first rooms) behind a "
        "shaped link, e.g. 300kbit or 300kbit,100ms,2%%: each in a network namespace of "
        "its own on a veth pair. RATE: tc tbf on the bench's end (what flows to the "
        "subscriber, media and signalling alike; the uplink is not rate-shaped). DELAY: "
        "one-way, each direction (a round trip takes 2 x DELAY plus the rate's queue; "
        "100ms~10ms: each packet 90-110 ms, uniform, so packets may overtake); by "
        "netem where the kernel has it, and on a kernel without netem (this development "
        "machine's) by a user-space delay line (bench/delayline.py) in a router namespace "
        "between bench and subscriber, through TUN devices: it holds each packet for DELAY "
        "the way netem would (median within ~0.5 ms; docs/bench.md); without netem and "
        "without /dev/net/tun a DELAY is refused. LOSS: random, on the downlink: netem's or "
        "the delay line's with a DELAY, nftables numgen in the subscriber's namespace without. Which mechanism ran "
        "and the link's idle round trip are in the output, JSON and PNG. Needs root in the "
        "bench's own network namespace (unshare -n) with ip, tc, nft, nsenter and unshare; "
        "--local only. The report gives per shaped subscriber its audio loss, the layer it "
        "received of each publisher over time and the SFU's estimate of its link (and "
        "--plot draws them)",
    )
    load.add_argument(
        "--link-tun",
        default=link_mod.TUN_PATH,
        metavar="PATH",
        help="with --link and a DELAY on a kernel without netem: the TUN clone device the "
        "delay line opens (default %(default)s)",
    )
    load.add_argument(
        "--link-subscribers",
        type=int,
        default=1,
        help="with --link: how many subscribers are shaped, one per room from the first "
        "(default 1)",
    )
    load.add_argument(
        "--link-from",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --link: put the shaping on this many seconds into the measurement window "
        "(default 0: at its start; everyone joins over unshaped links, as in the browser test)",
    )
    load.add_argument(
        "--link-before-join",
        action="store_true",
        help="with --link: shape from before anyone joins instead (the shaped participant's "
        "signalling may drop while the SFU still sends at its initial estimate; it "
        "reconnects with its resume secret like the page)",
    )
    load.add_argument(
        "--link-until",
        type=float,
        metavar="SECONDS",
        help="with --link: lift the shaping this many seconds into the measurement window "
        "(the timeline then shows the climb back)",
    )
    load.add_argument(
        "--aiortc-publisher",
        action="store_true",
        help="publish through aiortc's RTCRtpSender (packetised per frame, sent from Python) "
        "instead of the cheaper pre-packetised C send path, for comparison",
    )
    load.add_argument(
        "--workers",
        type=int,
        default=1,
        help="generator processes (rooms are split between them; default 1)",
    )
    load.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of media before measuring (default 2)"
    )

    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write the report as JSON")
    out.add_argument(
        "--plot",
        metavar="FILE",
        help="write a PNG: latency per room, CPU over time (with --link: each shaped subscriber's layers, estimate and audio loss over time)",
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    out.add_argument(
        "--no-floor",
        action="store_true",
        help="with --local: do not measure the Python-loop floors (bench/floor.py) on the "
        "server's core after each window (the report's ratio_to_floor, and "
        "ratio_to_fair_floor: a live reader on the generator's core, one unprotect per "
        "fan-out)",
    )

    modes = p.add_argument_group("modes")
    modes.add_argument(
        "--baseline",
        action="store_true",
        help="also run the same load through a transcoding relay (aiortc MediaRelay, "
        "decode → re-encode; started locally) and report the ratios",
    )
    modes.add_argument(
        "--compare-ports",
        action="store_true",
        help="with --local: run the same load against a server on one shared media port "
        "(ROUNDTABLE_MEDIA_PORT, the default) and one with an ephemeral port per connection "
        "(ROUNDTABLE_MEDIA_PORT=0), alternating --compare-rounds times, and report the CPU "
        "per forwarded packet of each and their ratio",
    )
    modes.add_argument(
        "--compare-simulcast",
        action="store_true",
        help="run the same load without and with --simulcast against one server, "
        "alternating --compare-rounds times (each run with its own window and floor), and "
        "report CPU per forwarded packet of each and their ratio (simulcast ÷ plain), SFU-"
        "added latency p50/p99 per mode and the video legs per layer. Without simulcast the "
        "publishers send the usual single stream (--video-bitrate, 640×360)",
    )
    modes.add_argument(
        "--compare-rounds",
        type=int,
        default=2,
        help="compare-ports / compare-simulcast: rounds (default 2)",
    )
    modes.add_argument(
        "--find-capacity",
        action="store_true",
        help="raise the number of rooms from --rooms by --capacity-step until p99 SFU "
        "latency or loss pass their thresholds (or a generator saturates), then bisect "
        "between the last step that held and the first that failed; print the largest "
        "load that held and which side saturated first",
    )
    modes.add_argument(
        "--p99-threshold-ms", type=float, default=10.0, help="capacity: p99 limit (default 10 ms)"
    )
    modes.add_argument(
        "--loss-threshold", type=float, default=1.0, help="capacity: loss limit in %% (default 1)"
    )
    modes.add_argument(
        "--capacity-step", type=int, default=5, help="capacity: rooms added per step (default 5)"
    )
    modes.add_argument(
        "--capacity-retries",
        type=int,
        default=1,
        choices=[0, 1],
        help="capacity: run a failed step once more before stopping (default 1)",
    )
    modes.add_argument(
        "--capacity-max-rooms", type=int, default=200, help="capacity: stop at this many rooms"
    )
    modes.add_argument(
        "--capacity-resolution",
        type=int,
        default=0,
        help="capacity: bisect until the last held and the first failed step are at most "
        "this many rooms apart (default: a quarter of --capacity-step, at least 1)",
    )
    return p


def _server_workers(args: argparse.Namespace) -> list[int]:
    if not args.server_workers:
        return [1]
    try:
        values = [int(v) for v in str(args.server_workers).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values) or not args.local:
        parser().error("--server-workers takes numbers like 1,2 and needs --local")
    return values


async def _compare_workers(args: argparse.Namespace, counts: list[int]) -> int:
    """The same mode against ``serve --workers N`` for each N, one after the other."""
    results: dict[int, dict[str, Any]] = {}
    for n in counts:
        print(f"--- serve --workers {n} ---", flush=True)
        one_args = argparse.Namespace(**vars(args))
        one_args.server_workers = None
        one_args.no_pin = True  # the workers need every core
        one_args.json = None
        one_args.plot = None
        one_args._workers_override = n
        results[n] = await _run_single(one_args)
    rows = []
    for n, result in results.items():
        cap = result.get("capacity") or {}
        o = result.get("overall") or {}
        rows.append(
            {
                "workers": n,
                "held_rooms": cap.get("held_rooms"),
                "held_tracks": cap.get("held_tracks", o.get("tracks_forwarded")),
                "server_cpu_pct": o.get("server_cpu_pct"),
                "cpu_us_per_forwarded_packet": o.get("cpu_us_per_forwarded_packet"),
                "sfu_p99_ms": (o.get("sfu_latency_ms") or {}).get("p99"),
                "loss_pct": o.get("loss_pct"),
            }
        )
    print("workers | held tracks | server CPU % | CPU µs/forwarded packet | SFU p99 ms | loss %")
    for r in rows:
        print(
            f"{r['workers']:>7} | {r['held_tracks']!s:>11} | {r['server_cpu_pct']!s:>12} | "
            f"{r['cpu_us_per_forwarded_packet']!s:>23} | {r['sfu_p99_ms']!s:>10} | {r['loss_pct']}"
        )
    base = rows[0]["held_tracks"] or 0
    for r in rows[1:]:
        if base and r["held_tracks"] is not None:
            print(
                f"capacity ratio workers {r['workers']} vs {rows[0]['workers']}: "
                f"{r['held_tracks'] / base:.2f}"
            )
    print(
        f"(this machine has {os.cpu_count()} cores; the generators run on the same cores, so "
        "on 2 cores they take CPU the second worker would use: compare CPU per forwarded "
        "packet to see the scaling)"
    )
    if args.json:
        report_mod.write_json(
            args.json, {"server_workers": rows, "runs": {str(n): r for n, r in results.items()}}
        )
    return 0


def _video_pps(media: EncodedMedia, view: str) -> float:
    """Nominal RTP packets/s of one forwarded video track: the plain stream's, or with
    simulcast the layer (or, mixed, the mean of the layers) the views ask for."""
    if not media.layers:
        return media.packets_per_second("video")
    rids = [r for r, _, _ in SIMULCAST_LAYERS[: len(media.layers)]]
    if view == "mixed":
        return sum(media.packets_per_second("video", k) for k in range(len(rids))) / len(rids)
    k = len(rids) - 1 if view == "top" else rids.index(view)
    return media.packets_per_second("video", k)


def _scenario_dict(args: argparse.Namespace, rooms: int, media: Any = None) -> dict[str, Any]:
    pps = (
        [media.packets_per_second("audio")]
        + ([] if args.audio_only else [_video_pps(media, args.view)])
        if media is not None
        else []
    )
    simulcast = media is not None and bool(media.layers) and not args.audio_only
    return {
        "simulcast": simulcast,
        "view": args.view if simulcast else None,
        "layer_kbps": [round(k, 1) for k in media.layer_kbps()] if simulcast else None,
        # RTP packets/s of one forwarded track, averaged over the kinds published
        "track_pps": round(sum(pps) / len(pps), 1) if pps else None,
        "rooms": rooms,
        "participants": args.participants,
        "duration_s": args.duration,
        "audio_only": args.audio_only,
        "video_kbps": None if args.audio_only else args.video_bitrate,
        "partner_delay_s": args.partner_delay,
        "join_pacing_s": args.join_pacing,
        "workers": args.workers,
        "publisher": "aiortc" if args.aiortc_publisher else "c",
        "local": args.local,
        "cpus": os.cpu_count(),
        "link": args.link,
        "link_subscribers": args.link_subscribers if args.link else 0,
        "link_until_s": args.link_until,
        "link_from_s": None if args.link_before_join else args.link_from,
    }


def floor_sizes(media: EncodedMedia, audio_only: bool) -> list[int]:
    """Payload sizes of one second of one audio and one video track, as the publishers
    send them: the floor forwards the same mix the SFU does (with simulcast: a second of
    each layer)."""
    sizes = [len(f) + TRAILER.size for f in media.audio[:50]]
    if not audio_only:
        for frames in media.layers or (media.video,):
            for frame in packetize_video(frames)[:30]:
                sizes += [len(p) + 4 for p in frame]  # + the VP8 descriptor
    return sizes or [160]


def simulcast_media(media: EncodedMedia, scale: float) -> EncodedMedia:
    """``media`` plus the page's layers (:data:`~bench.media.SIMULCAST_LAYERS`), their
    sizes and bitrates times ``scale``."""
    layers = tuple(
        (
            rid,
            (max(16, int(w * scale) // 2 * 2), max(16, int(h * scale) // 2 * 2)),
            int(rate * scale),
        )
        for rid, (w, h), rate in SIMULCAST_LAYERS
    )
    return with_layers(media, layers)


async def _run(args: argparse.Namespace) -> int:
    # SIGTERM or SIGHUP (kill, pkill, a CI timeout, a closed terminal) ends the run as
    # Ctrl-C does: cancelled, so the server, redis and generator processes it started
    # stop with it. Python's default for SIGTERM ended the bench alone, and its server
    # and generators went on forwarding media for as long as nobody noticed.
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is not None:

        def stop() -> None:
            # Once: a second signal would cancel the cleanup itself (a server sent its
            # terminate but its redis and workdir left, the next server not stopped).
            # Further signals are ignored by the process, not by this handler: closing
            # the loop puts back the default action, and a second SIGTERM between a
            # quick cleanup and the exit killed the bench (-15, not 143).
            for sig in (signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)
            if not task.cancelling():
                task.cancel()

        for sig in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop)
    server_workers = _server_workers(args)
    if len(server_workers) > 1 or server_workers[0] > 1:
        return await _compare_workers(args, server_workers)
    result = await _run_single(args)
    ok = result.get("overall", {}).get("complete", True) if not args.find_capacity else True
    return 0 if ok else 1


async def _run_single(args: argparse.Namespace) -> dict[str, Any]:
    progress = not args.no_progress
    workers = getattr(args, "_workers_override", 1)
    scrape_urls: dict[str, str] = {}
    t = time.monotonic()
    media = encode_media(args.video_bitrate * 1000, video=not args.audio_only)
    layered = None
    if (args.simulcast or args.compare_simulcast) and not args.audio_only:
        layered = simulcast_media(media, args.simulcast_scale)
    if progress:
        print(
            f"media: {len(media.video)} VP8 frames (~{media.measured_video_kbps:.0f} kbit/s), "
            f"{len(media.audio)} Opus frames"
            + (
                ", simulcast layers at "
                + "/".join(f"{k:.0f}" for k in layered.layer_kbps())
                + " kbit/s"
                if layered
                else ""
            )
            + f", encoded once in {time.monotonic() - t:.1f} s",
            file=sys.stderr,
        )
    server_cpu, gen_cpu = cpu_plan() if args.local and not args.no_pin else (None, None)
    max_rooms = args.capacity_max_rooms if args.find_capacity else args.rooms
    servers = []
    links = None
    seats: tuple[tuple[int, int, str, str], ...] = ()
    server_host = "127.0.0.1"
    if args.link:
        # the namespaces first: the server must listen where they can reach it
        links = link_mod.create(
            link_mod.parse_link(args.link),
            args.link_subscribers,
            shaped=args.link_before_join,
            tun_path=args.link_tun,
        )
        server_host = args.media_host = link_mod.LINK_HOST
        from sfu import aiortc_hooks

        aiortc_hooks.use_media_host(args.media_host)
        seat = 1 if args.participants > 1 else 0  # the client, at home on a weak line
        seats = tuple((r, seat, sh.netns, sh.inside_ip) for r, sh in enumerate(links.shaped))
        if progress:
            print(
                f"link {links.spec}: {len(links.shaped)} subscriber(s) shaped by "
                f"{links.describe()}; idle RTT "
                + ", ".join(f"{sh.rtt_ms} ms" for sh in links.shaped),
                file=sys.stderr,
            )
    try:
        if args.compare_ports:
            url = api_key = secret = pid = None  # a server per round, started below
        elif args.local:
            sfu = await start_local(
                "sfu",
                args.media_host,
                args.participants,
                server_cpu,
                workers=workers,
                host=server_host,
            )
            servers.append(sfu)
            scrape_urls[sfu.url] = sfu.metrics_url
            url, api_key, secret, pid = sfu.url, sfu.api_key, sfu.secret, sfu.pid
            if progress:
                print(
                    f"local server {url} (pid {pid}, core {server_cpu}), generators on core {gen_cpu}",
                    file=sys.stderr,
                )
        else:
            url, api_key, secret, pid = args.url.rstrip("/"), args.api_key, args.secret, None

        def scenario(target_url: str, key: str, sec: str | None, sim: bool) -> Scenario:
            used = layered if sim and layered is not None else media
            return Scenario(
                url=target_url,
                api_key=key,
                secret=sec,
                participants=args.participants,
                partner_delay=args.partner_delay,
                join_pacing=args.join_pacing,
                audio_only=args.audio_only,
                media=used,
                media_host=args.media_host,
                tls_verify=not args.insecure,
                aiortc_publisher=args.aiortc_publisher,
                view=args.view if used.layers else None,
                layer_sizes=_sizes(used),
                links=seats,
            )

        # Each server's RSS before its first participant, taken at its first run: the
        # baseline of "RSS per participant" for every later run on it (capacity steps).
        idle_rss: dict[int, float | None] = {}

        async def one(
            label: str,
            target: str,
            key: str,
            sec: str | None,
            rooms: int,
            spid: int | None,
            sim: bool | None = None,
        ) -> dict[str, Any]:
            sim = bool(args.simulcast) if sim is None else sim
            used = layered if sim and layered is not None else media
            if spid and spid not in idle_rss:
                idle_rss[spid] = server_rss_mb(spid)
            raw = await run_load(
                label,
                scrape_urls.get(target, target),
                scenario(target, key, sec, sim),
                rooms,
                args.workers,
                args.duration,
                spid,
                gen_cpu,
                progress=progress,
                warmup=args.warmup,
                links=links,
                link_until=args.link_until,
                link_from=None if args.link_before_join else args.link_from,
                rss_idle_mb=idle_rss.get(spid) if spid else None,
            )
            floor = None
            if args.local and not args.no_floor:
                # The fair floor forwards each received packet as often as the SFU did.
                o = report_mod.summarise(raw, _scenario_dict(args, rooms, used))["overall"]
                fwd, rx = o.get("forwarded_pps"), o.get("sfu_received_pps")
                floor = await measure_floor(
                    floor_sizes(used, args.audio_only),
                    server_cpu,
                    fanout=fwd / rx if fwd and rx else None,
                    reader_cpu=gen_cpu,
                )
            return report_mod.summarise(raw, _scenario_dict(args, rooms, used), floor)

        if args.compare_simulcast:
            result = await _compare_simulcast(args, one, url, api_key, secret, pid)
        elif args.compare_ports:
            result = await _compare_ports(args, one, server_cpu)
        elif args.find_capacity:
            result = await _find_capacity(args, one, url, api_key, secret, pid, max_rooms)
        else:
            result = await one("roundtable", url, api_key, secret, args.rooms, pid)
            print(report_mod.table(result))
            if args.baseline:
                base = await start_local(
                    "baseline", args.media_host, args.participants, server_cpu, api_key=None
                )
                servers.append(base)
                base_report = await one(
                    "transcoding", base.url, base.api_key, base.secret, args.rooms, base.pid
                )
                print(report_mod.table(base_report))
                cmp = report_mod.compare(result, base_report)
                print(report_mod.comparison_table(cmp, result, base_report))
                result = {**result, "baseline": base_report, "comparison": cmp}
        if args.json:
            report_mod.write_json(args.json, result)
        if args.plot and "rooms" in result:
            report_mod.plot(args.plot, result, result.get("baseline"))
        return result
    finally:
        for s in servers:
            await s.stop()
        if links is not None:
            links.close()


def _sizes(media: EncodedMedia) -> tuple[tuple[int, int], ...]:
    """The simulcast layers' frame sizes, read from each loop's key frame."""
    out = []
    for frames in media.layers:
        key = frames[0]
        # VP8 key frame: 3-byte frame tag, start code, then 14-bit width and height
        out.append(
            (
                int.from_bytes(key[6:8], "little") & 0x3FFF,
                int.from_bytes(key[8:10], "little") & 0x3FFF,
            )
        )
    return tuple(out)


async def _compare_simulcast(
    args: argparse.Namespace,
    one: RunOne,
    url: str,
    api_key: str,
    secret: str | None,
    pid: int | None,
) -> dict[str, Any]:
    """The same load without and with simulcast on one server, alternating, each run
    with its own window and floor; medians and the ratio."""
    modes = ("plain", "simulcast")
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for round_no in range(1, args.compare_rounds + 1):
        for mode in modes:
            rep = await one(
                f"{mode}, round {round_no}",
                url,
                api_key,
                secret,
                args.rooms,
                pid,
                mode == "simulcast",
            )
            runs[mode].append(rep)
            print(report_mod.table(rep))
    summary = report_mod.simulcast_comparison(runs)
    print(report_mod.simulcast_table(summary))
    return {"compare_simulcast": summary, "runs": runs}


async def _compare_ports(
    args: argparse.Namespace, one: RunOne, server_cpu: int | None
) -> dict[str, Any]:
    """The same load on a shared media port and on ephemeral ports, alternating, each
    round on a fresh server pinned to the same core."""
    modes = {"shared": {}, "ephemeral": {"ROUNDTABLE_MEDIA_PORT": "0"}}
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for round_no in range(1, args.compare_rounds + 1):
        for mode, env in modes.items():
            srv = await start_local(
                "sfu", args.media_host, args.participants, server_cpu, extra_env=env
            )
            try:
                rep = await one(
                    f"{mode} port, round {round_no}",
                    srv.url,
                    srv.api_key,
                    srv.secret,
                    args.rooms,
                    srv.pid,
                )
            finally:
                await srv.stop()
            runs[mode].append(rep)
            o = rep["overall"]
            print(
                f"round {round_no} {mode:>9} port: {o['cpu_us_per_forwarded_packet']} µs CPU per "
                f"forwarded packet, server CPU {o['server_cpu_pct']} %, SFU p99 "
                f"{o['sfu_latency_ms']['p99']} ms, loss {o['loss_pct']} %"
            )

    def cost(mode: str) -> float | None:
        values = sorted(
            r["overall"]["cpu_us_per_forwarded_packet"]
            for r in runs[mode]
            if r["overall"]["cpu_us_per_forwarded_packet"] is not None
        )
        return values[len(values) // 2] if values else None

    shared, ephemeral = cost("shared"), cost("ephemeral")
    ratio = round(shared / ephemeral, 3) if shared and ephemeral else None
    print(
        f"median µs CPU per forwarded packet: shared port {shared}, ephemeral ports "
        f"{ephemeral}; shared/ephemeral = {ratio}"
    )
    return {
        "compare_ports": {
            "rounds": args.compare_rounds,
            "shared_us_per_packet": shared,
            "ephemeral_us_per_packet": ephemeral,
            "ratio": ratio,
        },
        "runs": runs,
    }


async def _find_capacity(
    args: argparse.Namespace,
    one: RunOne,
    url: str,
    api_key: str,
    secret: str | None,
    pid: int | None,
    max_rooms: int,
) -> dict[str, Any]:
    steps = []
    held: dict[str, Any] | None = None
    rooms = max(1, args.rooms)
    retried = False
    resolution = args.capacity_resolution or max(1, args.capacity_step // 4)
    failed_at: int | None = None  # the fewest rooms that failed so far
    while rooms <= max_rooms:
        rep = await one(f"capacity {rooms} rooms", url, api_key, secret, rooms, pid)
        o = rep["overall"]
        p99 = o["sfu_latency_ms"]["p99"]
        reasons = []
        if not o["complete"]:
            reasons.append("not every subscriber received every publisher")
        if p99 is None or p99 > args.p99_threshold_ms:
            reasons.append(f"SFU p99 {p99} ms > {args.p99_threshold_ms} ms")
        if o["loss_pct"] > args.loss_threshold:
            reasons.append(f"loss {o['loss_pct']} % > {args.loss_threshold} %")
        gen = o["generator_cpu_pct"]
        if gen is not None and gen > 85 * max(1, args.workers):
            # Loss and lateness from here on would measure the generator, not the server.
            reasons.append(f"generator saturated ({gen:.0f} % CPU): add cores or --workers")
        ok = not reasons
        steps.append(
            {
                "server_core_pct": _per_core(o["server_cpu_pct"], args),
                "rooms": rooms,
                "tracks_forwarded": o["tracks_forwarded"],
                "sfu_p50_ms": o["sfu_latency_ms"]["p50"],
                "sfu_p99_ms": p99,
                "e2e_p99_ms": o["e2e_latency_ms"]["p99"],
                "loss_pct": o["loss_pct"],
                "server_cpu_pct": o["server_cpu_pct"],
                "tracks_per_core": o["tracks_per_core"],
                "tracks_per_core_at_nominal_rate": o["tracks_per_core_at_nominal_rate"],
                "cpu_us_per_forwarded_packet": o["cpu_us_per_forwarded_packet"],
                "server_rss_mb": o["server_rss_mb"],
                "server_rss_idle_mb": o["server_rss_idle_mb"],
                "rss_mb_per_participant": o["rss_mb_per_participant"],
                "complete": o["complete"],
                "generator_cpu_pct": o["generator_cpu_pct"],
                "server_wait_pct": o.get("server_wait_pct"),
                "loop_stalls": o.get("loop_stalls"),
                "gc": o.get("gc"),
                "load_avg": round(os.getloadavg()[0], 2),
                "held": ok,
                "why_not": reasons,
            }
        )
        stalls = o.get("loop_stalls") or {}
        print(
            f"{rooms:>4} rooms: {o['tracks_forwarded']} tracks, SFU p99 {p99} ms, "
            f"loss {o['loss_pct']} %, server CPU {o['server_cpu_pct']} %, loop stalls "
            f"> 10 ms: {stalls.get('over_10ms', '-')} (longest ≤ {stalls.get('max_ms', '-')} ms; "
            f"by own CPU {stalls.get('cpu_over_10ms', '-')}, ≤ {stalls.get('cpu_max_ms', '-')} ms)"
            " -> " + ("held" if ok else "FAILED: " + "; ".join(reasons))
        )
        if not ok and not retried and args.capacity_retries:
            # One scheduling hiccup on a shared machine should not end the search.
            retried = True
            print(f"{rooms:>4} rooms: running the step again once")
            continue
        retried = False
        if ok:
            if held is None or rooms > held["scenario"]["rooms"]:
                held = rep
        else:
            failed_at = rooms if failed_at is None else min(failed_at, rooms)
        following = next_capacity_step(
            held["scenario"]["rooms"] if held else 0, failed_at, args.capacity_step, resolution
        )
        if following is None:
            break
        rooms = following
    if held is not None:
        o = held["overall"]
        print(
            f"largest load that held: {held['scenario']['rooms']} rooms × {args.participants} "
            f"participants = {o['tracks_forwarded']} forwarded tracks at SFU p99 "
            f"{o['sfu_latency_ms']['p99']} ms, loss {o['loss_pct']} %, server CPU "
            f"{o['server_cpu_pct']} % ({o['tracks_per_core']} tracks per core; "
            f"{o['tracks_per_core_at_nominal_rate']} at the nominal packet rate)"
        )
        print(report_mod.table(held))
    else:
        print("no load held (even the first step failed)")
    verdict = saturation(steps, args)
    print(f"saturated first: {verdict['side']} — {verdict['evidence']}")
    return {
        "capacity": {
            "saturated": verdict,
            "p99_threshold_ms": args.p99_threshold_ms,
            "loss_threshold_pct": args.loss_threshold,
            "steps": steps,
            "held_rooms": held["scenario"]["rooms"] if held else 0,
            "held_tracks": held["overall"]["tracks_forwarded"] if held else 0,
        },
        **(held or {}),
    }


def next_capacity_step(
    held_rooms: int, failed_at: int | None, step: int, resolution: int
) -> int | None:
    """The rooms of the capacity search's next step, or None when it is done: up by
    ``step`` while every step holds; after a failure, halfway between the largest load
    that held (0 if none did) and the smallest that failed, until they are
    ``resolution`` apart. A first step that fails searches downwards: started at 40
    rooms on a server whose SFU p99 passed 10 ms at 35, the search used to end with "no
    load held" and no limit at all."""
    if failed_at is None:
        return held_rooms + step
    gap = failed_at - held_rooms
    if gap <= resolution or gap < 2:
        return None
    return held_rooms + gap // 2


SERVER_SATURATED_PCT = 90.0  # of each core the server may use: it has no headroom left
GENERATOR_SATURATED_PCT = 85.0  # per generator process, as the report warns
# % of the window the server was ready but waited for its core (other processes on it)
# above which a failure with both CPUs below their limits is the machine's, not the SFU's
MACHINE_WAIT_PCT = 2.0


def _per_core(server_cpu_pct: float | None, args: argparse.Namespace) -> float | None:
    """The server's CPU as % of the cores it may use (one, or one per --server-workers)."""
    if server_cpu_pct is None:
        return None
    return round(server_cpu_pct / max(1, getattr(args, "_workers_override", 1)), 1)


def saturation(steps: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Which side gave out first in a capacity search, and the figures that show it.

    The step judged is the smallest load that failed (after bisection that need not be
    the last step run), or the largest tried when every step held. A side is saturated
    when its CPU is at its limit: the server at SERVER_SATURATED_PCT of its core(s),
    the generators at GENERATOR_SATURATED_PCT each. If both are, the one nearer its
    limit; if neither is, the failure is loss (or SFU latency) with CPU to spare, which
    points at the path between them (socket buffers, the kernel) rather than either CPU.
    """
    if not steps:
        return {"side": "none", "evidence": "no step ran"}
    # A run that failed at a load that held on its retry, or below a load that held,
    # was a hiccup the search went past: it is not the limit.
    failed = [
        s
        for s in steps
        if not s["held"] and not any(h["held"] and h["rooms"] >= s["rooms"] for h in steps)
    ]
    if failed:
        # the smallest load that failed; of its runs (a retried step), the last
        limit = min(s["rooms"] for s in failed)
        last = [s for s in failed if s["rooms"] == limit][-1]
    else:
        last = max(steps, key=lambda s: s["rooms"])
    held = sorted(
        (s for s in steps if s["held"] and s["rooms"] < last["rooms"] + (0 if failed else 1)),
        key=lambda s: s["rooms"],
    )
    srv, gen = last["server_core_pct"], last["generator_cpu_pct"]
    gen_limit = GENERATOR_SATURATED_PCT * max(1, args.workers)
    srv_load = (srv or 0.0) / SERVER_SATURATED_PCT
    gen_load = (gen or 0.0) / gen_limit
    wait = last.get("server_wait_pct")
    if last["held"]:
        side = "none"
    elif srv_load >= 1.0 or gen_load >= 1.0:
        side = "server CPU" if srv_load >= gen_load else "generator CPU"
    elif wait is not None and wait >= MACHINE_WAIT_PCT:
        # Packets waited in the socket while other processes had the server's core.
        side = "machine"
    elif last["loss_pct"] > args.loss_threshold:
        side = "loss"
    elif not last["complete"]:
        side = "joins"
    else:
        side = "SFU latency"
    evidence = (
        f"at {last['rooms']} rooms ({last['tracks_forwarded']} tracks): server CPU "
        f"{srv} % of its core(s) (limit {SERVER_SATURATED_PCT:.0f} %), generator CPU {gen} % "
        f"(limit {gen_limit:.0f} %), loss {last['loss_pct']} % (limit {args.loss_threshold} %), "
        f"SFU p99 {last['sfu_p99_ms']} ms, e2e p99 {last['e2e_p99_ms']} ms, server waited "
        f"for its core {wait} % of the window (machine limit {MACHINE_WAIT_PCT} %), load "
        f"average {last.get('load_avg')}"
    )
    if held:
        h = held[-1]
        evidence += (
            f"; last held {h['rooms']} rooms: server {h['server_core_pct']} %, generator "
            f"{h['generator_cpu_pct']} %, loss {h['loss_pct']} %"
        )
    if side == "none":
        evidence = (
            "every step held up to the largest tried (raise --capacity-max-rooms): " + evidence
        )
    return {"side": side, "evidence": evidence, "rooms": last["rooms"]}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.local and not args.url:
        parser().error("give --url (and --api-key) or --local")
    if not args.local and not args.api_key:
        parser().error("--api-key (or $ROUNDTABLE_API_KEY) is needed with --url")
    if args.baseline and args.find_capacity:
        parser().error("--baseline and --find-capacity are separate runs")
    if args.compare_ports and (not args.local or args.baseline or args.find_capacity):
        parser().error("--compare-ports needs --local and is a run of its own")
    if args.compare_simulcast and (args.baseline or args.find_capacity or args.compare_ports):
        parser().error("--compare-simulcast is a run of its own")
    if (args.simulcast or args.compare_simulcast) and args.audio_only:
        parser().error("--simulcast needs video (not --audio-only)")
    if (args.simulcast or args.compare_simulcast) and args.aiortc_publisher:
        parser().error("--simulcast sends from the C publisher (aiortc cannot send simulcast)")
    if args.link:
        try:
            spec = link_mod.parse_link(args.link)
        except ValueError as exc:
            parser().error(str(exc))
        if not args.local or args.server_workers or args.compare_ports or args.baseline:
            parser().error("--link needs --local (one server) and no --baseline/--compare-ports")
        if args.link_subscribers > args.rooms:
            parser().error("--link-subscribers: at most one per room (--rooms)")
        try:
            link_mod.preflight(spec, args.link_tun)
        except link_mod.LinkError as exc:
            print(f"roundtable-bench: {exc}", file=sys.stderr)
            return 2
    elif args.link_until is not None or args.link_before_join:
        parser().error("--link-until/--link-before-join need --link")
    if not 0.1 <= args.simulcast_scale <= 1.0:
        parser().error("--simulcast-scale must be between 0.1 and 1")
    if args.rooms < 1 or args.participants < 1 or args.duration <= 0:
        parser().error("--rooms, --participants and --duration must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc", "socketio", "engineio"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from sfu import aiortc_hooks

    aiortc_hooks.use_media_host(args.media_host)
    try:
        return asyncio.run(_run(args))
    except link_mod.LinkError as exc:
        print(f"roundtable-bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # SIGTERM/SIGHUP (see _run)
        print("roundtable-bench: stopped by a signal", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
