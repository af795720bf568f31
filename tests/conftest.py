"""Shared test setup: every aiortc peer in the test process gathers on the media host;
the state-store fixture that runs a contract test against every store."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from sfu import aiortc_hooks
from signaling.redis_store import RedisStore
from signaling.sqlite_store import SqliteStore
from signaling.store import MemoryStore, StateStore

MEDIA_HOST = os.environ.get("ROUNDTABLE_MEDIA_HOST", "127.0.0.1")


@pytest.fixture(autouse=True, scope="session")
def _media_host() -> None:
    # aioice skips loopback on its own; the suite runs in a loopback-only namespace.
    aiortc_hooks.use_media_host(MEDIA_HOST)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server on a free loopback port, for the whole session."""
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        # make test installs it; a missing server must fail the run, not skip it.
        pytest.fail("redis-server is not installed (make test installs it from Debian)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest, tmp_path: Path):
    """Each state store in turn: a contract test runs against all three."""
    if request.param == "memory":
        s: StateStore = MemoryStore()
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "state.sqlite3")
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), prefix=f"t{uuid.uuid4().hex}:")
    yield s
    await s.close()


@pytest.fixture
async def clients(server):
    """Socket.IO participants of the module's ``server`` fixture, closed after the test."""
    from tests.controlplane import Clients

    made = Clients(server)
    yield made
    await made.close()
