"""`roundtable serve` and TLS: the one warning for plain HTTP where browsers will refuse the
camera, a clear refusal of unusable certificate files, and SIGHUP never killing the server.
The page, API and WSS over HTTPS in a real browser: tests/browser/test_https.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.certs import make_cert

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
