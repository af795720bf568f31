"""From raw measurements to the report: per-room and overall statistics, table, JSON, plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .runner import RawRun
from .scrape import Histogram


def _pcts_ms(values_ns: list[int]) -> dict[str, float | None]:
    if not values_ns:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    a = np.asarray(values_ns, dtype=np.float64) / 1e6
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(a.max()), 3),
        "n": int(a.size),
    }


def _hist_ms(h: Histogram | None) -> dict[str, float | None]:
    if h is None or h.count <= 0:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None, "n": 0}

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1e3, 3)

    return {
        "p50": ms(h.quantile(0.50)),
        "p95": ms(h.quantile(0.95)),
        "p99": ms(h.quantile(0.99)),
        "max": ms(h.max_bound()),  # upper bound of the highest non-empty bucket
        "mean": ms(h.mean),
        "n": int(h.count),
    }


def _loss(flows: list[dict[str, Any]]) -> dict[str, float]:
    f_exp = sum(f["frames_expected"] for f in flows)
    f_got = sum(min(f["frames"], f["frames_expected"]) for f in flows)
    r_exp = sum(f["rtp_expected"] for f in flows)
    r_got = sum(min(f["rtp_received"], f["rtp_expected"]) for f in flows)
    frame_loss = 100.0 * (f_exp - f_got) / f_exp if f_exp else 0.0
    rtp_loss = 100.0 * (r_exp - r_got) / r_exp if r_exp else 0.0
    return {
        # The SFU renumbers around packets it drops itself, so RTP gaps alone would hide
        # its drops; the trailer's frame numbers do not. Report the worse of the two.
        "loss_pct": round(max(frame_loss, rtp_loss), 3),
        "frame_loss_pct": round(frame_loss, 3),
        "rtp_loss_pct": round(rtp_loss, 3),
    }


def _complete(room: dict[str, Any]) -> tuple[bool, list[str]]:
    """Did every subscriber receive media from every other publisher of its room?"""
    missing = []
    publishers = set(room["publishers"])
    for p in room["participants"]:
        lacking = publishers - {p["id"]} - set(p["received_from"])
        if lacking:
            missing.append(f"{p['id']} got nothing from {', '.join(sorted(lacking))}")
    expected = room["error"] is None and len(publishers) == len(room["participants"])
    return expected and not missing, missing


def summarise(
    raw: RawRun, scenario: dict[str, Any], floor: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The report for one load run (``--json`` layout; ``rooms`` holds the same per room).
    ``floor``: what :mod:`bench.floor` measured on the server's core after the window."""
    window = raw.window_s or 1.0
    hists: dict[str, Histogram] = {}
    if raw.after is not None:
        for room_id, h in raw.after.latency.items():
            before = raw.before.latency.get(room_id) if raw.before else None
            hists[room_id] = h.minus(before)
    rooms_out = []
    all_e2e: list[int] = []
    all_flows: list[dict[str, Any]] = []
    joins: list[float] = []
    total_hist = Histogram()
    all_complete = bool(raw.rooms) and not raw.errors
    for room in raw.rooms:
        h = hists.get(room["room"])
        if h is not None:
            total_hist = total_hist.plus(h)
        active = [f for f in room["flows"] if f["w_packets"] > 0]
        complete, missing = _complete(room)
        all_complete = all_complete and complete
        room_joins = [p["join_ms"] for p in room["participants"] if p["join_ms"] is not None]
        joins += room_joins
        all_e2e += room["e2e_ns"]
        all_flows += room["flows"]
        rooms_out.append(
            {
                "room": room["room"],
                "index": room["index"],
                "participants": len(room["participants"]),
                "joined_via": sorted(
                    {f"{p['role']}:{p.get('via', 'room')}" for p in room["participants"]}
                ),
                "sfu_latency_ms": _hist_ms(h),
                "e2e_latency_ms": _pcts_ms(room["e2e_ns"]),
                **_loss(room["flows"]),
                "tracks_forwarded": len(active),
                "forwarded_pps": round(h.count / window, 1) if h else None,
                "received_pps": round(sum(f["w_packets"] for f in active) / window, 1),
                "received_kbps": round(sum(f["w_bytes"] for f in active) * 8 / window / 1e3, 1),
                "received_fps": round(sum(f["markers"] for f in active) / window, 1),
                "join_ms": _pcts_ms([int(j * 1e6) for j in room_joins]),
                "complete": complete,
                "missing": missing,
                "error": room["error"],
                "flows": [
                    {
                        k: f[k]
                        for k in (
                            "subscriber",
                            "publisher",
                            "kind",
                            "w_packets",
                            "frames",
                            "frames_expected",
                            "rtp_received",
                            "rtp_expected",
                        )
                    }
                    for f in room["flows"]
                ],
                "participant_errors": sorted(
                    {e for p in room["participants"] for e in p["errors"]}
                )[:5],
            }
        )
    tracks = sum(r["tracks_forwarded"] for r in rooms_out)
    cpu = raw.cpu_pct
    fwd_pps = total_hist.count / window if total_hist.count else None
    track_pps = scenario.get("track_pps")
    us_per_packet = round(cpu / 100.0 / fwd_pps * 1e6, 1) if cpu and fwd_pps else None
    floor_us = (floor or {}).get("us_per_packet")
    fair = (floor or {}).get("fair")
    fair_us = (fair or {}).get("us_per_packet")
    people = sum(len(r["participants"]) for r in raw.rooms)
    overall = {
        "sfu_latency_ms": _hist_ms(total_hist if total_hist.count else None),
        "e2e_latency_ms": _pcts_ms(all_e2e),
        **_loss(all_flows),
        "tracks_forwarded": tracks,
        "forwarded_pps": round(total_hist.count / window, 1) if total_hist.count else None,
        "received_pps": round(sum(r["received_pps"] for r in rooms_out), 1),
        "received_kbps": round(sum(r["received_kbps"] for r in rooms_out), 1),
        "received_fps": round(sum(r["received_fps"] for r in rooms_out), 1),
        "join_ms": _pcts_ms([int(j * 1e6) for j in joins]),
        "server_cpu_pct": None if cpu is None else round(cpu, 1),
        "server_rss_mb": None if raw.rss_mb is None else round(raw.rss_mb, 1),
        # The baseline below: the server's RSS before any participant ever joined it.
        "server_rss_idle_mb": None if raw.rss_idle_mb is None else round(raw.rss_idle_mb, 1),
        # What each participant adds to the server's memory: peak RSS in the window minus
        # that baseline, per participant (issue 16: ≤ 2 MB at 30 rooms × 3).
        "rss_mb_per_participant": round((raw.rss_mb - raw.rss_idle_mb) / people, 2)
        if raw.rss_mb is not None and raw.rss_idle_mb is not None and people
        else None,
        "generator_cpu_pct": None
        if raw.generator_cpu_pct is None
        else round(raw.generator_cpu_pct, 1),
        # How long the server was ready to run but waited for its core (other processes
        # on it), in % of the window: the SFU latency counts that wait.
        "server_wait_pct": None if raw.server_wait_pct is None else round(raw.server_wait_pct, 2),
        # The server's event loop (server.loopwatch): stretches between two polls of its
        # sockets longer than 5/10/20 ms (a datagram arriving then waits that long), the
        # longest, and its GC pauses by generation.
        "loop_stalls": _loop_stalls(raw, window),
        "gc": _gc(raw),
        "tracks_per_core": round(tracks / (cpu / 100.0), 1) if cpu else None,
        # Per forwarded packet, so a generator that sent less does not flatter the server:
        "cpu_us_per_forwarded_packet": us_per_packet,
        # The same cost as a multiple of the Python-loop floor (bench/floor.py) measured
        # on the same core in the same run: a ratio survives a noisy machine.
        "floor_us_per_packet": floor_us,
        "ratio_to_floor": round(us_per_packet / floor_us, 2)
        if us_per_packet and floor_us
        else None,
        # Beside it, never instead: the fair floor (bench/floor.py, docs/bench.md) sends to
        # a live reader on the generator's core, as the SFU's sendto must, and unprotects
        # once per fan-out (forwarded ÷ received packets of this run), as the SFU does.
        "fair_floor_us_per_packet": fair_us,
        "ratio_to_fair_floor": round(us_per_packet / fair_us, 2)
        if us_per_packet and fair_us
        else None,
        "fair_floor": fair,
        "tracks_per_core_at_nominal_rate": round(fwd_pps / (cpu / 100.0) / track_pps, 1)
        if cpu and fwd_pps and track_pps
        else None,
        "cpu_pct_per_track": round(cpu / tracks, 3) if cpu and tracks else None,
        "dropped_packets": _counter_delta(raw, "roundtable_media_dropped_total"),
        # What the SFU received from publishers (with simulcast: every layer, of which
        # it forwards one per subscriber), and its video legs by layer at the window's end.
        "sfu_received_pps": _rate(raw, "roundtable_media_packets_in_total", window),
        "video_legs_by_layer": dict(sorted(raw.legs_by_layer.items())),
        "keyframe_requests": _counter_delta(raw, "roundtable_media_keyframe_requests_total"),
        "complete": all_complete,
        "joined": raw.joined,
    }
    links = _links(raw)
    if links:
        overall["shaped_audio_loss_pct"] = max(x["audio_loss_pct"] for x in links)
        settled = [
            x["phases"]["audio"]["settled"]["audio_loss_pct"]
            for x in links
            if "settled" in x["phases"]["audio"]
            and x["phases"]["audio"]["settled"]["audio_loss_pct"] is not None
        ]
        overall["shaped_settled_audio_loss_pct"] = max(settled) if settled else None
    unshaped = _unshaped(raw) if links else None
    if unshaped is not None:
        overall["unshaped_audio_loss_pct"] = unshaped["audio_loss_pct"]
        overall["unshaped_legs_moved"] = unshaped["legs_moved"]
    return {
        "label": raw.label,
        "scenario": scenario,
        "links": links,
        "unshaped": unshaped,
        "window_s": round(window, 2),
        "overall": overall,
        "rooms": rooms_out,
        "cpu_series": [list(s) for s in raw.cpu_series],
        "errors": raw.errors,
    }


def _links(raw: RawRun) -> list[dict[str, Any]]:
    """Per subscriber behind a shaped link (--link): audio and video loss over the
    window, and its timeline: per 0.5 s the layer the SFU forwarded it of each
    publisher's video (-1 paused), the SFU's estimate of its downlink, what arrived
    (kbit/s) and the audio lost in that interval (from its RTP sequence numbers)."""
    out = []
    k = 0
    for room in raw.rooms:
        for p in room["participants"]:
            if not p.get("shaped"):
                continue
            flows = [f for f in room["flows"] if f["subscriber"] == p["id"]]
            audio = [f for f in flows if f["kind"] == "audio"]
            video = [f for f in flows if f["kind"] == "video"]
            timeline = []
            prev: dict[tuple[str, str], tuple[int, int, int]] = {}
            for t, point in p.get("timeline") or []:
                got = lost = nbytes = 0
                for publisher, kind, packets, expected, octets in point:
                    a = prev.get((publisher, kind), (0, 0, 0))
                    prev[(publisher, kind)] = (packets, expected, octets)
                    nbytes += octets - a[2]
                    if kind == "audio":
                        got += packets - a[0]
                        lost += max(0, (expected - a[1]) - (packets - a[0]))
                timeline.append(
                    {
                        "t": t,
                        "audio_loss_pct": round(100.0 * lost / (lost + got), 2)
                        if lost + got
                        else None,
                        # the counts, so phases can be summed packet-weighted
                        "audio_lost": lost,
                        "audio_received": got,
                        "received_kbps_total": nbytes,  # bytes; made a rate below
                    }
                )
            for a, b in zip(timeline, timeline[1:], strict=False):
                dt = b["t"] - a["t"]
                b["received_kbps"] = (
                    round(b["received_kbps_total"] * 8 / dt / 1e3, 1) if dt else None
                )
            for point in timeline:
                point.pop("received_kbps_total")
                point.setdefault("received_kbps", None)
            # the SFU's side, sampled by the coordinator from /metrics
            layers: list[dict[str, Any]] = []
            for t, legs, estimates in raw.leg_series:
                layers.append(
                    {
                        "t": t,
                        "layers": {
                            pub: int(v)
                            for (r, sub, pub), v in legs.items()
                            if r == room["room"] and sub == p["id"]
                        },
                        "estimate_kbps": round(estimates[(room["room"], p["id"])] / 1e3, 1)
                        if (room["room"], p["id"]) in estimates
                        else None,
                    }
                )
            phases = link_phases(timeline, layers, raw.link_shaped_at, raw.link_lifted_at)
            drops = raw.link_drops[k] if k < len(raw.link_drops) else {}
            info = raw.link_info[k] if k < len(raw.link_info) else {}
            k += 1
            out.append(
                {
                    "room": room["room"],
                    "subscriber": p["id"],
                    "role": p["role"],
                    "signalling_reconnects": p.get("reconnects", 0),
                    "errors": p.get("errors", []),
                    **{f"audio_{key}": v for key, v in _loss(audio).items()},
                    **{f"video_{key}": v for key, v in _loss(video).items()},
                    "phases": phases,
                    "timeline": timeline,
                    "sfu": layers,
                    "lifted_at": raw.link_lifted_at,
                    "shaped_at": raw.link_shaped_at,
                    "shaping_dropped": drops,
                    # "tc tbf + netem (delay)", "... + userspace delay line via TUN (delay)"
                    "shaping": info.get("shaping"),
                    "delay_mechanism": info.get("delay"),
                    "idle_rtt_ms": info.get("rtt_ms"),
                }
            )
    return out


def _unshaped(raw: RawRun) -> dict[str, Any] | None:
    """The subscribers *not* behind a shaped link, while one is shaped (from the
    shaping to the lift; shaped before the join: from the window's start): their audio
    and video loss (RTP sequence numbers, packet-weighted over the 0.5 s intervals
    whose middle lies in that span), the worst one subscriber saw in one interval, which
    of their video legs the SFU moved off the layer it had before the shaping, and the
    lowest estimate of their downlinks. One link's shaping should reach none of this
    (issue 15: the unshaped subscribers keep their layer)."""
    start = raw.link_shaped_at or 0.0
    end = raw.link_lifted_at if raw.link_lifted_at is not None else 1e9
    shaped = {(r["room"], p["id"]) for r in raw.rooms for p in r["participants"] if p.get("shaped")}
    got = {"audio": [0, 0], "video": [0, 0]}  # kind -> [expected, lost]
    worst: dict[str, Any] | None = None
    subscribers = 0
    for room in raw.rooms:
        for p in room["participants"]:
            if (room["room"], p["id"]) in shaped or not p.get("timeline"):
                continue
            subscribers += 1
            prev: dict[tuple[str, str], tuple[int, int]] = {}
            prev_t = None
            for t, point in p["timeline"]:
                mid = t if prev_t is None else (prev_t + t) / 2
                prev_t = t
                expected = lost = 0
                for publisher, kind, packets, exp, _octets in point:
                    a = prev.get((publisher, kind), (0, 0))
                    prev[(publisher, kind)] = (packets, exp)
                    if not start <= mid < end:
                        continue
                    e, miss = exp - a[1], max(0, (exp - a[1]) - (packets - a[0]))
                    got[kind][0] += e
                    got[kind][1] += miss
                    expected += e
                    lost += miss
                if expected and (worst is None or lost / expected > worst["loss_pct"] / 100):
                    worst = {
                        "t": t,
                        "subscriber": p["id"],
                        "loss_pct": round(100.0 * lost / expected, 2),
                    }
    if not subscribers:
        return None
    # Each unshaped video leg's layer at the SFU (/metrics), against its last before.
    before: dict[tuple[str, str, str], float] = {}
    moves: list[dict[str, Any]] = []
    moved: set[tuple[str, str, str]] = set()
    lowest = None
    for t, legs, estimates in raw.leg_series:
        for (r, sub, pub), layer in legs.items():
            if (r, sub) in shaped:
                continue
            key = (r, sub, pub)
            if t < start or key not in before:
                before[key] = layer
            elif t < end and layer != before[key] and key not in moved:
                moved.add(key)
                moves.append(
                    {"t": t, "subscriber": sub, "publisher": pub, "from": before[key], "to": layer}
                )
        if start <= t < end:
            for (r, sub), bps in estimates.items():
                if (r, sub) not in shaped:
                    lowest = bps if lowest is None else min(lowest, bps)

    def pct(kind: str) -> float | None:
        e, lost = got[kind]
        return round(100.0 * lost / e, 2) if e else None

    return {
        "subscribers": subscribers,
        "from_s": round(start, 2),
        "until_s": round(end, 2) if end < 1e9 else None,
        "audio_loss_pct": pct("audio"),
        "video_loss_pct": pct("video"),
        "worst_interval": worst,
        "legs": len(before),
        "legs_moved": len(moved),
        "moves": moves[:10],
        "estimate_min_kbps": round(lowest / 1e3, 1) if lowest is not None else None,
    }


def unshaped_line(u: dict[str, Any]) -> str:
    worst = u["worst_interval"]
    return (
        f"unshaped subscribers ({u['subscribers']}) while the link was shaped: audio loss "
        f"{_f(u['audio_loss_pct'])} %, video {_f(u['video_loss_pct'])} % (worst 0.5 s of one: "
        f"{_f(worst['loss_pct'] if worst else None)} %) · {u['legs_moved']} of {u['legs']} "
        f"video legs moved off their layer · lowest estimate "
        f"{_f(u['estimate_min_kbps'], 0)} kbit/s"
    )


BROWSER_SETTLE_S = 5.0  # the browser test's steady window starts this long after the move down


def link_phases(
    timeline: list[dict[str, Any]],
    sfu: list[dict[str, Any]],
    shaped_at: float | None,
    lifted_at: float | None,
) -> dict[str, Any]:
    """The shaped window cut where its behaviour changes, so one loss figure does not
    mix the shock with the steady state (issue 15 compares the settled part with a
    browser's): *transition* from the shaping until every video the subscriber gets
    is on the low layer or paused (the SFU's answer to the link), *settled* from then
    until the lift, *after the lift* to the end. Audio loss per phase is
    packet-weighted over the 0.5 s intervals ending in it. ``to_low_s``: shaping →
    low/paused; ``climb_s``: lift → every video back on the layer it had before the
    shaping (``first_up_s``: the first step up of any, paused → low included); None:
    not seen."""
    start = shaped_at or 0.0
    before: dict[str, int] = {}
    for pt in sfu:
        if pt["t"] < start:
            before.update(pt["layers"])
    low_at = next(
        (
            pt["t"]
            for pt in sfu
            if pt["t"] >= start
            and (lifted_at is None or pt["t"] <= lifted_at)
            and pt["layers"]
            and all(v <= 0 for v in pt["layers"].values())
        ),
        None,
    )
    if not before:
        # shaped from the start: climbing back means the best it had before the low point
        for pt in sfu:
            if low_at is not None and pt["t"] >= low_at:
                break
            for pub, v in pt["layers"].items():
                before[pub] = max(v, before.get(pub, -1))
    climbed_at = first_up = None
    if lifted_at is not None:
        after = [pt for pt in sfu if pt["t"] >= lifted_at and pt["layers"]]
        at_lift = next(
            (pt["layers"] for pt in reversed(sfu) if pt["t"] < lifted_at and pt["layers"]), {}
        )
        first_up = next(
            (
                pt["t"]
                for pt in after
                if any(v > at_lift.get(pub, -1) for pub, v in pt["layers"].items())
            ),
            None,
        )
        if before:
            climbed_at = next(
                (
                    pt["t"]
                    for pt in after
                    if all(pt["layers"].get(pub, -1) >= v for pub, v in before.items())
                ),
                None,
            )
    bounds = {"before": (-1e9, start)}
    end_shaped = lifted_at if lifted_at is not None else 1e9
    if low_at is None:
        bounds["transition"] = (start, end_shaped)
    else:
        bounds["transition"] = (start, low_at)
        bounds["settled"] = (low_at, end_shaped)
    if lifted_at is not None:
        bounds["after_lift"] = (lifted_at, 1e9)
    if low_at is not None and low_at + BROWSER_SETTLE_S < end_shaped:
        # the window tests/browser/test_weak_link.py measures (comparable figures)
        bounds["settled_browser_window"] = (low_at + BROWSER_SETTLE_S, end_shaped)
    loss: dict[str, Any] = {}
    for name, (a, b) in bounds.items():
        lost = got = 0
        prev_t = None
        for pt in timeline:
            # an interval belongs to the phase its middle lies in
            mid = pt["t"] if prev_t is None else (prev_t + pt["t"]) / 2
            prev_t = pt["t"]
            if a <= mid < b:
                lost += pt.get("audio_lost", 0)
                got += pt.get("audio_received", 0)
        loss[name] = {
            "from_s": round(max(a, 0.0), 2),
            "until_s": round(b, 2) if b < 1e9 else None,
            "audio_loss_pct": round(100.0 * lost / (lost + got), 2) if lost + got else None,
            "audio_packets": lost + got,
        }

    def since(t: float | None, ref: float | None) -> float | None:
        return round(t - ref, 2) if t is not None and ref is not None else None

    browser = loss.pop("settled_browser_window", None)
    return {
        "low_at": low_at,
        "settled_browser_window": browser,
        "to_low_s": since(low_at, start),
        "climb_target": before,
        "first_up_at": first_up,
        "first_up_s": since(first_up, lifted_at),
        "climbed_at": climbed_at,
        "climb_s": since(climbed_at, lifted_at),
        "audio": loss,
    }


def phase_lines(x: dict[str, Any]) -> list[str]:
    ph = x.get("phases")
    if not ph:
        return []
    a = ph["audio"]

    def part(name: str, label: str) -> str:
        p = a.get(name)
        if p is None:
            return f"{label}: -"
        span = (
            f"{p['from_s']:g}–{p['until_s']:g} s"
            if p["until_s"] is not None
            else (f"{p['from_s']:g} s–end")
        )
        return f"{label} {span}: audio loss {_f(p['audio_loss_pct'])} % of {p['audio_packets']}"

    low = (
        f"low/paused {ph['to_low_s']:g} s after the shaping"
        if ph["to_low_s"] is not None
        else "never all on low/paused while shaped"
    )
    out = [f"    phases: {low} · {part('transition', 'transition')} · {part('settled', 'settled')}"]
    bw = ph.get("settled_browser_window")
    if bw is not None:
        out[0] += (
            f" (from {BROWSER_SETTLE_S:g} s after the move, as the browser test: "
            f"{_f(bw['audio_loss_pct'])} % of {bw['audio_packets']})"
        )
    if "after_lift" in a:
        if ph["climb_s"] is not None:
            climb = f"back on the layers before the shaping {ph['climb_s']:g} s after the lift"
        else:
            climb = "not back on the layers before the shaping by the end"
        if ph["first_up_s"] is not None:
            climb += f" (first step up after {ph['first_up_s']:g} s)"
        out.append(f"    after the lift: {climb} · {part('after_lift', 'after the lift')}")
    return out


def layer_runs(points: list[dict[str, Any]], publisher: str) -> str:
    """A publisher's layer over time, as runs: ``h 0–3.5 s → l 4–20 s`` (p: paused)."""
    names = {-1: "paused", 0: "l", 1: "m", 2: "h"}
    runs: list[list[Any]] = []
    for pt in points:
        layer = pt["layers"].get(publisher)
        if layer is None:
            continue
        if runs and runs[-1][0] == layer:
            runs[-1][2] = pt["t"]
        else:
            runs.append([layer, pt["t"], pt["t"]])
    return " → ".join(f"{names.get(r[0], r[0])} {r[1]:g}–{r[2]:g} s" for r in runs) or "-"


def link_lines(x: dict[str, Any], spec: str | None) -> list[str]:
    estimates = [pt["estimate_kbps"] for pt in x["sfu"] if pt["estimate_kbps"] is not None]
    est = (
        f"estimate {min(estimates):.0f}–{max(estimates):.0f} kbit/s (median "
        f"{float(np.median(estimates)):.0f})"
        if estimates
        else "no estimate sampled"
    )
    lifted = f", shaped from {x['shaped_at']:g} s" if x.get("shaped_at") is not None else ""
    lifted += f", lifted at {x['lifted_at']:g} s" if x.get("lifted_at") is not None else ""
    drops = x.get("shaping_dropped") or {}
    how = f"    via {x['shaping']}" if x.get("shaping") else ""
    if how and x.get("idle_rtt_ms") is not None:
        how += f" · idle RTT through the link {x['idle_rtt_ms']:g} ms"
    late = drops.get("delayline_lateness_us")
    if how and late and late.get("n"):
        how += (
            f" · delay line: {drops.get('delayline_packets', 0)} packets, released late by "
            f"p50 {_f(late['p50'] / 1e3, 2)} / p99 {_f(late['p99'] / 1e3, 2)} / max "
            f"{_f(late['max'] / 1e3, 2)} ms, dropped {drops.get('delayline_dropped', 0)}"
        )
    out = [
        f"shaped subscriber {x['subscriber']} ({x['role']}, room {x['room']}, link {spec}{lifted}): "
        f"audio loss {_f(x['audio_loss_pct'])} % · {est} · "
        f"dropped by tc {drops.get('tc_dropped', '-')}, by nftables {drops.get('nft_dropped', '-')} · "
        f"signalling reconnected {x.get('signalling_reconnects', 0)}×"
    ]
    if how:
        out.append(how)
    out.extend(phase_lines(x))
    pubs = sorted({pub for pt in x["sfu"] for pub in pt["layers"]})
    for pub in pubs:
        out.append(f"    layer of {pub}: {layer_runs(x['sfu'], pub)}")
    return out


def _rate(raw: RawRun, name: str, window: float) -> float | None:
    delta = _counter_delta(raw, name)
    return None if delta is None else round(delta / window, 1)


def _median(values: list[float | None]) -> float | None:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else round((vals[mid - 1] + vals[mid]) / 2, 3)


def simulcast_comparison(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``--compare-simulcast``: per mode (``plain``, ``simulcast``) the median over its
    rounds of CPU per forwarded packet, its ratio to the floor, SFU-added p50/p99, loss
    and packets in/out; the ratio simulcast ÷ plain of the CPU per forwarded packet, per
    round (the two runs of a round are neighbours in time) and of the medians."""
    out: dict[str, Any] = {"rounds": len(runs.get("plain", []))}
    for mode, reps in runs.items():
        o = [r["overall"] for r in reps]
        out[mode] = {
            "cpu_us_per_forwarded_packet": _median([x["cpu_us_per_forwarded_packet"] for x in o]),
            "ratio_to_floor": _median([x["ratio_to_floor"] for x in o]),
            "ratio_to_fair_floor": _median([x.get("ratio_to_fair_floor") for x in o]),
            "sfu_p50_ms": _median([x["sfu_latency_ms"]["p50"] for x in o]),
            "sfu_p99_ms": _median([x["sfu_latency_ms"]["p99"] for x in o]),
            "e2e_p50_ms": _median([x["e2e_latency_ms"]["p50"] for x in o]),
            "loss_pct": _median([x["loss_pct"] for x in o]),
            "forwarded_pps": _median([x["forwarded_pps"] for x in o]),
            "sfu_received_pps": _median([x.get("sfu_received_pps") for x in o]),
            "server_cpu_pct": _median([x["server_cpu_pct"] for x in o]),
            "video_legs_by_layer": o[-1].get("video_legs_by_layer") if o else {},
            "complete": all(x["complete"] for x in o),
        }
    per_round = []
    for a, b in zip(runs.get("plain", []), runs.get("simulcast", []), strict=False):
        x = a["overall"]["cpu_us_per_forwarded_packet"]
        y = b["overall"]["cpu_us_per_forwarded_packet"]
        per_round.append(round(y / x, 3) if x and y else None)
    out["ratio_per_round"] = per_round
    plain = out.get("plain", {}).get("cpu_us_per_forwarded_packet")
    sim = out.get("simulcast", {}).get("cpu_us_per_forwarded_packet")
    out["ratio"] = round(sim / plain, 3) if plain and sim else None
    return out


def simulcast_table(summary: dict[str, Any]) -> str:
    head = (
        f"{'mode':<10} {'µs CPU/fwd pkt':>14} {'× floor':>8} {'× fair':>7} {'SFU p50 ms':>10} "
        f"{'p99 ms':>7} {'loss %':>7} {'fwd pkt/s':>9} {'in pkt/s':>9} {'CPU %':>6}  legs by layer"
    )
    lines = [f"== without vs with simulcast (median of {summary['rounds']} rounds) ==", head]
    for mode in ("plain", "simulcast"):
        m = summary.get(mode)
        if not m:
            continue
        layers = ", ".join(f"{k}: {v:.0f}" for k, v in (m["video_legs_by_layer"] or {}).items())
        lines.append(
            f"{mode:<10} {_f(m['cpu_us_per_forwarded_packet'], 1):>14} "
            f"{_f(m['ratio_to_floor'], 2):>8} {_f(m.get('ratio_to_fair_floor'), 2):>7} "
            f"{_f(m['sfu_p50_ms'], 3):>10} "
            f"{_f(m['sfu_p99_ms'], 3):>7} {_f(m['loss_pct'], 2):>7} "
            f"{_f(m['forwarded_pps'], 0):>9} {_f(m['sfu_received_pps'], 0):>9} "
            f"{_f(m['server_cpu_pct'], 1):>6}  {layers or '-'}"
        )
    rounds = ", ".join(_f(r, 2) for r in summary["ratio_per_round"])
    lines.append(
        f"CPU per forwarded packet, simulcast ÷ plain: {_f(summary['ratio'], 2)} "
        f"(per round: {rounds}); same server, same invocation"
    )
    return "\n".join(lines)


def _hist_delta(raw: RawRun, key: str) -> Histogram | None:
    if raw.before is None or raw.after is None or key not in raw.after.hists:
        return None
    return raw.after.hists[key].minus(raw.before.hists.get(key))


STALL_MS = (5, 10, 20)


def _loop_stalls(raw: RawRun, window: float) -> dict[str, Any] | None:
    h = _hist_delta(raw, "loop")
    if h is None:
        return None
    out: dict[str, Any] = {
        f"over_{ms}ms": round(h.count - h.buckets.get(ms / 1000, 0.0)) for ms in STALL_MS
    }
    top = h.max_bound()
    out["max_ms"] = None if top is None else round(top * 1000, 1)  # bucket bound: "≤"
    out["stretches_per_s"] = round(h.count / window, 1) if window else None
    out["busy_pct"] = round(100.0 * h.total / window, 1) if window else None
    # The same stretches by the server thread's own CPU time: what is left when the OS
    # running other processes meanwhile (server_wait_pct) is taken out - the server's
    # own stalls, comparable on a shared machine.
    c = _hist_delta(raw, "loop_cpu")
    if c is not None:
        for ms in STALL_MS:
            out[f"cpu_over_{ms}ms"] = round(c.count - c.buckets.get(ms / 1000, 0.0))
        top = c.max_bound()
        out["cpu_max_ms"] = None if top is None else round(top * 1000, 1)
    return out


def _gc(raw: RawRun) -> dict[str, Any] | None:
    out = {}
    for gen in range(3):
        h = _hist_delta(raw, f"gc{gen}")
        if h is None:
            return None
        top = h.max_bound()
        out[f"gen{gen}"] = {
            "count": round(h.count),
            "total_ms": round(h.total * 1000, 1),
            "max_ms": None if top is None else round(top * 1000, 1),
        }
    return out


def _counter_delta(raw: RawRun, name: str) -> float | None:
    if raw.before is None or raw.after is None or name not in raw.after.counters:
        return None
    return raw.after.counters[name] - raw.before.counters.get(name, 0.0)


def compare(sfu: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Forwarding against transcoding as ratios (how many times cheaper/faster we are)."""
    a, b = sfu["overall"], baseline["overall"]

    def ratio(x: float | None, y: float | None) -> float | None:
        return round(y / x, 2) if x and y else None

    per_track_sfu = a["cpu_pct_per_track"]
    per_track_base = b["cpu_pct_per_track"]

    # A saturated relay delivers less than it is sent: charge CPU per frame delivered.
    def per_kframe(o: dict[str, Any]) -> float | None:
        if not o["server_cpu_pct"] or not o["received_fps"]:
            return None
        return o["server_cpu_pct"] / o["received_fps"] * 1000

    return {
        "cpu_per_stream_ratio": ratio(per_track_sfu, per_track_base),
        "cpu_per_delivered_frame_ratio": ratio(per_kframe(a), per_kframe(b)),
        "sfu_cpu_pct_per_track": per_track_sfu,
        "baseline_cpu_pct_per_track": per_track_base,
        "e2e_p50_ratio": ratio(a["e2e_latency_ms"]["p50"], b["e2e_latency_ms"]["p50"]),
        "delivered_fps": {"sfu": a["received_fps"], "baseline": b["received_fps"]},
        "delivered_pps": {"sfu": a["received_pps"], "baseline": b["received_pps"]},
    }


def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def table(report: dict[str, Any]) -> str:
    """The terminal table: one row per room and one for the whole run."""
    head = (
        f"{'room':<20} {'trk':>4} {'fwd pps':>8} | {'SFU ms p50':>10} {'p95':>6} {'p99':>6} "
        f"{'max≤':>6} | {'e2e ms p50':>10} {'p95':>6} {'p99':>6} {'max':>7} | "
        f"{'loss %':>6} | {'join ms p50':>11} | ok"
    )
    lines = [f"== {report['label']} ==", head, "-" * len(head)]

    def row(name: str, r: dict[str, Any]) -> str:
        s, e, j = r["sfu_latency_ms"], r["e2e_latency_ms"], r["join_ms"]
        ok = r.get("complete")
        return (
            f"{name:<20} {_f(r['tracks_forwarded']):>4} {_f(r['forwarded_pps'], 0):>8} | "
            f"{_f(s['p50'], 3):>10} {_f(s['p95'], 3):>6} {_f(s['p99'], 3):>6} {_f(s['max'], 1):>6} | "
            f"{_f(e['p50']):>10} {_f(e['p95']):>6} {_f(e['p99']):>6} {_f(e['max'], 1):>7} | "
            f"{_f(r['loss_pct']):>6} | {_f(j['p50'], 0):>11} | {'yes' if ok else 'NO'}"
        )

    for r in report["rooms"]:
        lines.append(row(r["room"] or f"#{r['index']} (failed)", r))
    lines.append("-" * len(head))
    o = report["overall"]
    lines.append(row("overall", o))
    lines.append(
        f"server CPU {_f(o['server_cpu_pct'], 1)} % · RSS {_f(o['server_rss_mb'], 0)} MB "
        f"({_f(o.get('rss_mb_per_participant'), 2)} MB per participant over the "
        f"{_f(o.get('server_rss_idle_mb'), 0)} MB before anyone joined) · "
        f"{o['tracks_forwarded']} tracks forwarded · {_f(o['tracks_per_core'], 0)} tracks per core "
        f"({_f(o['tracks_per_core_at_nominal_rate'], 0)} at the nominal packet rate, "
        f"{_f(o['cpu_us_per_forwarded_packet'], 1)} µs CPU per forwarded packet = "
        f"{_f(o.get('ratio_to_floor'), 2)}× the Python-loop floor of "
        f"{_f(o.get('floor_us_per_packet'), 1)} µs, "
        f"{_f(o.get('ratio_to_fair_floor'), 2)}× the fair floor of "
        f"{_f(o.get('fair_floor_us_per_packet'), 1)} µs) · "
        f"received {_f(o['received_pps'], 0)} pkt/s, {_f(o['received_kbps'] / 1000 if o['received_kbps'] else None, 1)} Mbit/s · "
        f"dropped {_f(o['dropped_packets'], 0)} · window {report['window_s']} s · "
        f"generator CPU {_f(o['generator_cpu_pct'], 0)} % · "
        f"server waited for its core {_f(o.get('server_wait_pct'), 1)} % of the window"
    )
    stalls, gcs = o.get("loop_stalls"), o.get("gc")
    if stalls is not None:
        lines.append(
            "server loop stalls (poll to poll): "
            + ", ".join(f"> {ms} ms: {stalls[f'over_{ms}ms']}" for ms in STALL_MS)
            + f", longest ≤ {_f(stalls['max_ms'], 1)} ms · busy {_f(stalls['busy_pct'], 1)} %"
            + " · by own CPU time: "
            + ", ".join(f"> {ms} ms: {_f(stalls.get(f'cpu_over_{ms}ms'))}" for ms in STALL_MS)
            + f", longest ≤ {_f(stalls.get('cpu_max_ms'), 1)} ms"
            + (
                " · GC "
                + ", ".join(
                    f"gen{g}: {v['count']}× {_f(v['total_ms'], 1)} ms (max ≤ {_f(v['max_ms'], 1)})"
                    for g, v in enumerate(gcs.values())
                )
                if gcs
                else ""
            )
        )
    if o["generator_cpu_pct"] and o["generator_cpu_pct"] > 85 * max(
        1, report["scenario"]["workers"]
    ):
        lines.append(
            "warning: the generator was saturated; end-to-end latency and loss measure it, "
            "not the server (add --workers on a machine with more cores)"
        )
    for x in report.get("links") or []:
        lines.extend(link_lines(x, report["scenario"].get("link")))
    if report.get("unshaped"):
        lines.append(unshaped_line(report["unshaped"]))
    for err in report["errors"][:5]:
        lines.append(f"error: {err}")
    for r in report["rooms"]:
        for m in r["missing"][:3]:
            lines.append(f"room {r['room']}: {m}")
        if r["error"]:
            lines.append(f"room #{r['index']}: {r['error']}")
    return "\n".join(lines)


def comparison_table(cmp: dict[str, Any], sfu: dict[str, Any], base: dict[str, Any]) -> str:
    a, b = sfu["overall"], base["overall"]
    lines = [
        "== forwarding (roundtable) vs transcoding (aiortc MediaRelay) ==",
        f"{'':<28} {'roundtable':>12} {'transcoding':>12} {'ratio':>8}",
        f"{'server CPU %':<28} {_f(a['server_cpu_pct'], 1):>12} {_f(b['server_cpu_pct'], 1):>12}",
        f"{'tracks forwarded':<28} {_f(a['tracks_forwarded']):>12} {_f(b['tracks_forwarded']):>12}",
        f"{'CPU % per stream':<28} {_f(a['cpu_pct_per_track'], 3):>12} {_f(b['cpu_pct_per_track'], 3):>12} "
        f"{_f(cmp['cpu_per_stream_ratio'], 1):>7}×",
        f"{'delivered pkt/s':<28} {_f(a['received_pps'], 0):>12} {_f(b['received_pps'], 0):>12}",
        f"{'delivered frames/s':<28} {_f(a['received_fps'], 0):>12} {_f(b['received_fps'], 0):>12}",
        f"{'CPU per delivered frame':<28} {'':>12} {'':>12} "
        f"{_f(cmp['cpu_per_delivered_frame_ratio'], 1):>7}×",
        f"{'RSS MB':<28} {_f(a['server_rss_mb'], 0):>12} {_f(b['server_rss_mb'], 0):>12}",
    ]
    return "\n".join(lines)


def _plot_link(ax_layers: Any, ax_loss: Any, x: dict[str, Any], spec: str | None) -> None:
    """One shaped subscriber: the layer it got of each publisher and the SFU's estimate
    of its link over time; below, its audio loss and what arrived per interval."""
    names = {-1: "paused", 0: "l", 1: "m", 2: "h"}
    pubs = sorted({pub for pt in x["sfu"] for pub in pt["layers"]})
    for pub in pubs:
        pts = [(pt["t"], pt["layers"][pub]) for pt in x["sfu"] if pub in pt["layers"]]
        ax_layers.step(
            [t for t, _ in pts], [v for _, v in pts], where="post", label=f"layer of {pub[:10]}"
        )
    ax_layers.set_yticks(list(names), [names[k] for k in names])
    ax_layers.set_ylim(-1.5, 2.5)
    ax_layers.set_ylabel("layer forwarded")
    est = [(pt["t"], pt["estimate_kbps"]) for pt in x["sfu"] if pt["estimate_kbps"] is not None]
    twin = ax_layers.twinx()
    if est:
        twin.plot([t for t, _ in est], [v for _, v in est], "k--", label="SFU estimate")
    twin.set_ylabel("estimate kbit/s")
    twin.set_ylim(bottom=0)
    for ax in (ax_layers, ax_loss):
        start = x.get("shaped_at") or 0.0
        end = x.get("lifted_at")
        last = max([pt["t"] for pt in x["sfu"]] + [start + 1])
        ax.axvspan(start, end if end is not None else last, color="#f4cccc", alpha=0.35, lw=0)
        ax.grid(alpha=0.3)
    ph = x.get("phases") or {}
    marks = [
        (ph.get("low_at"), f"low/paused +{ph.get('to_low_s')} s", "#8c564b"),
        (ph.get("climbed_at"), f"climbed back +{ph.get('climb_s')} s", "#2ca02c"),
    ]
    for t, label, colour in marks:
        if t is None:
            continue
        for ax in (ax_layers, ax_loss):
            ax.axvline(t, color=colour, ls=":", lw=1.5)
        ax_layers.annotate(
            label, (t, 2.3), xytext=(3, 0), textcoords="offset points", fontsize=8, color=colour
        )
    for name, label in (
        ("transition", "transition"),
        ("settled", "settled"),
        ("after_lift", "after lift"),
    ):
        p = (ph.get("audio") or {}).get(name)
        if not p or p["audio_packets"] == 0:
            continue
        ax_loss.annotate(
            f"{label}\n{_f(p['audio_loss_pct'])} %",
            (p["from_s"], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=8,
        )
    handles = ax_layers.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax_layers.legend(handles[0] + more[0], handles[1] + more[1], loc="lower left", fontsize=8)
    ax_layers.set_title(
        f"subscriber {x['subscriber'][:12]} behind {spec} (shaded: shaped) — audio loss "
        f"{_f(x['audio_loss_pct'])} % over the window"
        + (f"\n{x['shaping']}" if x.get("shaping") else "")
        + (f", idle RTT {x['idle_rtt_ms']:g} ms" if x.get("idle_rtt_ms") is not None else ""),
        fontsize=9,
    )
    tl = [pt for pt in x["timeline"] if pt.get("received_kbps") is not None]
    ax_loss.bar(
        [pt["t"] for pt in tl],
        [pt["audio_loss_pct"] or 0.0 for pt in tl],
        width=0.4,
        color="#c44e52",
        label="audio loss % (per 0.5 s)",
    )
    ax_loss.set_ylabel("audio loss %")
    ax_loss.set_xlabel("s into the measurement window")
    rx = ax_loss.twinx()
    rx.plot([pt["t"] for pt in tl], [pt["received_kbps"] for pt in tl], color="#4c72b0")
    rx.set_ylabel("received kbit/s", color="#4c72b0")
    rx.set_ylim(bottom=0)
    ax_loss.legend(loc="upper right", fontsize=8)


def write_json(path: str, data: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, default=str) + "\n")


def plot(path: str, report: dict[str, Any], baseline: dict[str, Any] | None = None) -> None:
    """Latency percentiles per room (SFU-added and end-to-end) and server CPU over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rooms = report["rooms"]
    links = (report.get("links") or [])[:4]
    fig, axes = plt.subplots(
        3 + 2 * len(links), 1, figsize=(10, 11 + 5.5 * len(links)), squeeze=False
    )
    ax1, ax2, ax3 = axes[0][0], axes[1][0], axes[2][0]
    for n, x in enumerate(links):
        _plot_link(axes[3 + 2 * n][0], axes[4 + 2 * n][0], x, report["scenario"].get("link"))
    x = np.arange(len(rooms))
    labels = [str(r["index"]) for r in rooms]
    for ax, key, title in (
        (ax1, "sfu_latency_ms", "SFU-added forwarding latency per room (from /metrics)"),
        (
            ax2,
            "e2e_latency_ms",
            "end-to-end latency per room (publisher send → subscriber receive)",
        ),
    ):
        for k, (q, colour) in enumerate(
            (("p50", "#4c72b0"), ("p95", "#dd8452"), ("p99", "#c44e52"))
        ):
            vals = [r[key][q] if r[key][q] is not None else np.nan for r in rooms]
            ax.bar(x + (k - 1) * 0.27, vals, 0.27, label=q, color=colour)
        finite = [r[key][q] for r in rooms for q in ("p50", "p99") if r[key][q]]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 30:
            ax.set_yscale("log")  # keep p50 visible next to a long tail
        ax.set_xticks(x, labels)
        ax.set_xlabel("room #")
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
    series = report["cpu_series"]
    if series:
        ax3.plot([s[0] for s in series], [s[1] for s in series], label=f"{report['label']} CPU %")
    if baseline and baseline["cpu_series"]:
        bs = baseline["cpu_series"]
        ax3.plot([s[0] for s in bs], [s[1] for s in bs], label=f"{baseline['label']} CPU %")
    ax3.set_xlabel("s into the measurement window")
    ax3.set_ylabel("server CPU %")
    ax3.set_title("server CPU over time")
    ax3.grid(alpha=0.3)
    ax3.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
