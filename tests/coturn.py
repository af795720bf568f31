"""A real coturn (Debian's ``/usr/bin/turnserver``) for tests, configured as docs/turn.md
describes for production except for what a loopback-only namespace needs
(``allow-loopback-peers``, no TLS, a small relay port range)."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

TURNSERVER = "/usr/bin/turnserver"
REALM = "roundtable.test"


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on ``host`` (TURN listens on both)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP+UDP port")


@dataclass(frozen=True, slots=True)
class Coturn:
    host: str
    port: int
    secret: str
    log_path: Path

    @property
    def url_udp(self) -> str:
        return f"turn:{self.host}:{self.port}?transport=udp"

    @property
    def url_tcp(self) -> str:
        return f"turn:{self.host}:{self.port}?transport=tcp"

    def allocations(self, username: str) -> int:
        """Relays coturn allocated for ``username`` (from its verbose log)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return text.count(f"user <{username}>: incoming packet ALLOCATE processed, success")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def run_coturn(
    workdir: Path,
    host: str = "127.0.0.1",
    relay_ip: str = "127.0.0.1",
    *,
    allow_loopback: bool = True,
    config: Path | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[Coturn]:
    """Start turnserver with ``use-auth-secret`` on a free port of ``host``; stop it after."""
    if shutil.which(TURNSERVER) is None:
        # make test installs coturn; a missing server fails, it does not skip.
        pytest.fail(f"{TURNSERVER} missing: the TURN tests need Debian's coturn (make system-deps)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    relay_low = free_port(relay_ip)
    # deploy/turnserver.conf logs to stdout (for `docker logs`), and coturn keeps a config
    # file's log-file over --log-file: read its stdout then.
    log_path = workdir / ("turnserver.log" if config is None else "turnserver.out")
    turn = Coturn(host, port, secrets.token_urlsafe(24), log_path)
    args = [
        TURNSERVER,
        # A config file (e.g. deploy/turnserver.conf), or none: then everything is here.
        # What follows on the command line wins over the file, as in deploy/compose.yaml.
        *(["-c", str(config)] if config is not None else ["-n"]),
        f"--listening-ip={host}",
        f"--listening-port={port}",
        f"--relay-ip={relay_ip}",
        # A narrow relay range near a port just found free; coturn skips taken ones.
        f"--min-port={min(relay_low, 65535 - 200)}",
        f"--max-port={min(relay_low, 65535 - 200) + 200}",
        "--use-auth-secret",
        f"--static-auth-secret={turn.secret}",
        f"--realm={REALM}",
        # Tests only: the SFU listens on 127.0.0.1 inside the loopback-only namespace.
        *(["--allow-loopback-peers"] if allow_loopback else []),
        "--no-multicast-peers",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--fingerprint",
        f"--log-file={turn.log_path}",
        "--simple-log",
        "--verbose",  # one line per allocation with its username: tests read them
        f"--userdb={workdir / 'turndb'}",
        f"--pidfile={workdir / 'turnserver.pid'}",
        *extra,
    ]
    with (workdir / "turnserver.out").open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"turnserver exited with {proc.returncode}:\n{turn.log_tail()}")
            try:
                with socket.create_connection((host, port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"turnserver did not listen on {host}:{port}:\n{turn.log_tail()}")
                time.sleep(0.05)
        yield turn
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
