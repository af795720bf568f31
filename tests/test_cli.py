"""The `roundtable` command: `serve` with no secrets configured prints a command that,
pasted, creates a session; `token` prints a token the server accepts."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from signaling.store import MemoryStore
from signaling.tokens import TokenService
from tests.ports import free_udp_port
from tests.process import WatchedProcess

BIN = Path(sys.executable).parent / "roundtable"


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUNDTABLE_")}
    env.update(
        ROUNDTABLE_STATE_DIR=str(state),
        ROUNDTABLE_MEDIA_HOST="127.0.0.1",
        ROUNDTABLE_MEDIA_PORT=str(free_udp_port()),
        PYTHONUNBUFFERED="1",
    )
    return env


class Serve(WatchedProcess):
    """`roundtable serve` in a subprocess, its stdout read line by line."""

    def __init__(self, state: Path, *args: str) -> None:
        self._watch(
            subprocess.Popen(
                [str(BIN), "serve", "--host", "127.0.0.1", "--port", "0", *args],
                env=_env(state),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[callable]:
    started: list[Serve] = []

    def start(*args: str) -> Serve:
        s = Serve(tmp_path / "state", *args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def _run_printed_command(command: str) -> tuple[int, dict]:
    """Run what an operator would paste: with curl if present, else the same request."""
    argv = shlex.split(command)
    assert argv[0] == "curl" and "-X" in argv and argv[argv.index("-X") + 1] == "POST"
    if shutil.which("curl"):
        out = subprocess.run(
            [*argv, "-sS", "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=30
        )
        body, _, code = out.stdout.rpartition("\n")
        return int(code), json.loads(body)
    header = argv[argv.index("-H") + 1]
    name, _, value = header.partition(": ")
    req = urllib.request.Request(argv[-1], method="POST", headers={name: value})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def test_help_texts() -> None:
    for args, needle in (([], "serve"), (["serve"], "--public-url"), (["token"], "--role")):
        out = subprocess.run(
            [str(BIN), *args, "--help"], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0 and needle in out.stdout, out


def test_serve_without_secrets_prints_a_command_that_creates_a_session(
    serve, tmp_path: Path
) -> None:
    first = serve()
    url = first.line_with("listening on").rsplit(" ", 1)[1]
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
    assert "secrets created" in first.line_with("secrets ")
    command = first.line_with("curl -X POST").strip()

    secrets_file = tmp_path / "state" / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    stored = json.loads(secrets_file.read_text())
    key = stored["api_key"]
    # stdout is a pipe here, as into a log file: the key is named, never printed.
    assert key not in "\n".join(first.seen) and "$ROUNDTABLE_API_KEY" in command
    command = command.replace("$ROUNDTABLE_API_KEY", key)

    status, room = _run_printed_command(command)
    assert status == 201, room
    assert room["client_url"].startswith(f"{url}/join#token=")

    # The printed links carry tokens signed with the stored secret.
    token = room["client_url"].split("#token=", 1)[1]
    claims = TokenService(stored["secret"], MemoryStore()).verify(token, room=room["room"])
    assert claims.role == "client"

    # A bad key is refused by the running server.
    status, _ = _try(command.replace(key, "nope"))
    assert status == 401
    assert first.stop() == 0

    # A restart reuses the same secrets: links stay valid, the key stays the same.
    second = serve()
    assert "secrets loaded" in second.line_with("secrets ")
    second.line_with("curl -X POST")
    assert key not in "\n".join(second.seen)
    assert json.loads(secrets_file.read_text())["api_key"] == key


def test_api_key_is_printed_only_when_just_generated_and_to_a_terminal(tmp_path: Path) -> None:
    import pty

    def start() -> str:
        leader, follower = pty.openpty()
        proc = subprocess.Popen(
            [str(BIN), "serve", "--host", "127.0.0.1", "--port", "0"],
            env=_env(tmp_path / "state"),
            stdout=follower,
            stderr=subprocess.DEVNULL,
        )
        os.close(follower)
        out = b""
        deadline = time.monotonic() + 30
        try:
            while b"/api/rooms" not in out and time.monotonic() < deadline:
                try:
                    out += os.read(leader, 4096)
                except OSError:
                    break
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            os.close(leader)
        return out.decode()

    first = start()
    key = json.loads((tmp_path / "state" / "secrets.json").read_text())["api_key"]
    assert f"API key: {key}" in first, first
    again = start()
    assert "/api/rooms" in again and key not in again, again


def _try(command: str) -> tuple[int, dict]:
    try:
        return _run_printed_command(command)
    except urllib.error.HTTPError as exc:  # the urllib fallback raises on 401
        return exc.code, json.loads(exc.read())


def test_token_command_uses_the_generated_secret(serve, tmp_path: Path) -> None:
    env = _env(tmp_path / "state")
    missing = subprocess.run(
        [str(BIN), "token", "--room", "r_x", "--role", "client", "--name", "K"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2 and "ROUNDTABLE_SECRET" in missing.stderr

    s = serve()
    s.line_with("curl -X POST")
    out = subprocess.run(
        [
            str(BIN),
            "token",
            "--room",
            "r_x",
            "--role",
            "partner",
            "--name",
            "DRV",
            "--grants",
            "audio,subscribe",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    token = out.stdout.strip()
    secret = json.loads((tmp_path / "state" / "secrets.json").read_text())["secret"]
    claims = TokenService(secret, MemoryStore()).verify(token, room="r_x")
    assert (claims.role, claims.name, claims.grants) == (
        "partner",
        "DRV",
        frozenset({"audio", "subscribe"}),
    )

    bad = subprocess.run(
        [str(BIN), "token", "--room", "r_x", "--role", "client", "--name", "K", "--grants", "root"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "unknown grants" in bad.stderr


def test_serve_says_when_the_media_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        env = _env(tmp_path / "state") | {"ROUNDTABLE_MEDIA_PORT": str(port)}
        out = subprocess.run(
            [str(BIN), "serve", "--port", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1
    assert f"cannot bind the media port udp 127.0.0.1:{port}" in out.stderr
    assert "ROUNDTABLE_MEDIA_PORT" in out.stderr and "Traceback" not in out.stderr


def test_the_server_runs_on_asyncio_unless_told_uvloop_and_uvloop_needs_the_shared_port() -> None:
    import uvloop

    from server.cli import loop_factory
    from server.config import Config, ConfigError

    assert loop_factory(Config()) is None
    assert loop_factory(Config(event_loop="uvloop")) is uvloop.new_event_loop
    assert loop_factory(Config(event_loop="UVLOOP")) is uvloop.new_event_loop
    assert loop_factory(Config(event_loop="asyncio")) is None
    # a socket per connection: only asyncio's loop lets the C reader take it over
    assert loop_factory(Config(event_loop="uvloop", media_port=0)) is None
    assert loop_factory(Config(event_loop="uvloop", media_ports="40000-40010")) is None
    with pytest.raises((ConfigError, ValueError)):
        Config(event_loop="trio")
