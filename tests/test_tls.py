"""`roundtable serve` and TLS: the one warning for plain HTTP where browsers will refuse the
camera, a clear refusal of unusable certificate files, and SIGHUP never killing the server.
The page, API and WSS over HTTPS in a real browser: tests/browser/test_https.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.certs import make_cert, served_certificate

BIN = Path(sys.executable).parent / "roundtable"
ROOT = Path(__file__).resolve().parents[1]
WARNING = "browsers refuse camera and microphone"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUNDTABLE_")}
    env.update(
        ROUNDTABLE_STATE_DIR=str(tmp_path / "state"),
        ROUNDTABLE_MEDIA_HOST="127.0.0.1",
        ROUNDTABLE_MEDIA_PORT="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _output_until_listening(
    tmp_path: Path,
    *args: str,
    hup: bool = False,
    while_running: Callable[[str], None] | None = None,
    **extra: str,
) -> tuple[str, int | None]:
    """Start serve, wait for "listening on" (optionally send SIGHUP), stop it; its output
    and the exit code it had before we stopped it (None: it was still running)."""
    log = tmp_path / f"serve-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN), "serve", "--port", "0", *args],
            env=_env(tmp_path, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while "listening on" not in log.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            if while_running is not None and proc.poll() is None:
                while_running(log.read_text())
            if hup and proc.poll() is None:
                proc.send_signal(signal.SIGHUP)
                time.sleep(0.5)
            early = proc.poll()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=15)
    return log.read_text(), early


def test_plain_http_on_a_public_address_warns_once(tmp_path: Path) -> None:
    text, early = _output_until_listening(tmp_path, "--host", "0.0.0.0")
    assert early is None, text
    assert text.count(WARNING) == 1, text
    warning = next(line for line in text.splitlines() if WARNING in line)
    assert "WARNING" in warning and "--tls-cert" in warning and "ROUNDTABLE_PUBLIC_URL" in warning


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("--host", "127.0.0.1"), {}),
        (("--host", "0.0.0.0"), {"ROUNDTABLE_PUBLIC_URL": "https://talk.example.org"}),
    ],
)
def test_no_warning_on_loopback_or_behind_a_tls_proxy(
    tmp_path: Path, args: tuple[str, ...], extra: dict[str, str]
) -> None:
    text, early = _output_until_listening(tmp_path, *args, **extra)
    assert early is None and "listening on http://" in text, text
    assert WARNING not in text, text


def test_built_in_tls_on_a_public_address_does_not_warn_and_survives_sighup(
    tmp_path: Path,
) -> None:
    cert = make_cert(tmp_path / "certs")
    healthy: list[int] = []

    def container_health_check(output: str) -> None:
        # deploy/healthcheck.py, as the container runs it, speaks HTTPS when TLS is on.
        port = output.split("listening on https://127.0.0.1:", 1)[1].split()[0]
        done = subprocess.run(
            [sys.executable, str(ROOT / "deploy" / "healthcheck.py")],
            env={
                "ROUNDTABLE_HOST": "0.0.0.0",
                "ROUNDTABLE_PORT": port,
                "ROUNDTABLE_TLS_CERT": str(cert.cert),
            },
            timeout=30,
        )
        healthy.append(done.returncode)

    text, early = _output_until_listening(
        tmp_path,
        "--host",
        "0.0.0.0",
        "--tls-cert",
        str(cert.cert),
        "--tls-key",
        str(cert.key),
        hup=True,
        while_running=container_health_check,
    )
    assert healthy == [0], text
    assert early is None, text
    assert "listening on https://127.0.0.1:" in text and WARNING not in text, text
    assert "TLS certificate reloaded" in text, text


def test_sighup_without_tls_does_not_stop_the_server(tmp_path: Path) -> None:
    text, early = _output_until_listening(tmp_path, "--host", "127.0.0.1", hup=True)
    assert early is None, text
    assert "no TLS certificate to reload" in text, text


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path) -> None:
    one, other = make_cert(tmp_path / "a", "one"), make_cert(tmp_path / "b", "other")
    out = subprocess.run(
        [
            str(BIN),
            "serve",
            "--port",
            "0",
            "--tls-cert",
            str(one.cert),
            "--tls-key",
            str(other.key),
        ],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2, out
    assert "cannot use" in out.stderr and str(one.cert) in out.stderr, out.stderr


def _two_free_ports() -> int:
    import socket

    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
        try:
            with socket.socket() as second:
                second.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


def test_sighup_reloads_the_certificate_of_every_worker(tmp_path: Path, redis_url: str) -> None:
    """``serve --workers 2`` over TLS: one SIGHUP to the parent (what ``systemctl reload``
    sends) and both workers present the renewed certificate to new connections."""
    first, second = make_cert(tmp_path / "a", "first"), make_cert(tmp_path / "b", "second")
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copyfile(first.cert, live_cert)
    shutil.copyfile(first.key, live_key)
    port = _two_free_ports()
    env = _env(tmp_path, ROUNDTABLE_REDIS_URL=redis_url, ROUNDTABLE_DRAIN_TIMEOUT="0")
    proc = subprocess.Popen(
        [str(BIN), "serve", "--workers", "2", "--port", str(port)]
        + ["--tls-cert", str(live_cert), "--tls-key", str(live_key)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def all_show(fingerprint: str) -> bool:
        try:
            return all(served_certificate("127.0.0.1", p) == fingerprint for p in (port, port + 1))
        except OSError:
            return False

    def wait_for(fingerprint: str) -> None:
        deadline = time.monotonic() + 60
        while not all_show(fingerprint):
            assert proc.poll() is None, f"serve --workers exited with {proc.returncode}"
            assert time.monotonic() < deadline, "workers do not show the expected certificate"
            time.sleep(0.2)

    try:
        wait_for(first.der_sha256)
        shutil.copyfile(second.cert, live_cert)
        shutil.copyfile(second.key, live_key)
        proc.send_signal(signal.SIGHUP)
        wait_for(second.der_sha256)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
