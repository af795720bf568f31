"""What an operator installs: ``GET /`` says what the server is; a wheel built from a clean
checkout carries the page (with the vendored Socket.IO client) and the licence, and an
installed (non-editable) copy serves the page."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.controlplane import running_server
from tests.ports import free_udp_port

ROOT = Path(__file__).resolve().parents[1]
NOT_PAGE = ("web/package.json", "web/package-lock.json")


async def test_the_bare_address_says_what_this_is(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/") as resp:
                assert resp.status == 200
                assert resp.content_type == "text/html"
                assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
                text = await resp.text()
            async with http.get(f"{server.url}/static/package.json") as npm:
                assert npm.status == 404
    assert "persönlichen Link" in text and "personal link" in text
    assert 'lang="de"' in text and 'lang="en"' in text


# -- the wheel ---------------------------------------------------------------------------


def _clean_checkout(dest: Path) -> Path:
    """The files git tracks, as a fresh clone has them: no web/vendor, no node_modules."""
    git = shutil.which("git")
    if git is None:
        pytest.fail("git is needed to make a clean checkout")
    listed = subprocess.run(
        [git, "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        rel = Path(name.decode())
        if not (ROOT / rel).is_file():
            continue  # deleted in the work tree
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    assert not (dest / "web" / "vendor").exists()
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("wheel")
    source = _clean_checkout(base / "src")
    out = base / "dist"
    # No network here: no build isolation (setuptools comes with the test extras), and
    # setup.py vendors Socket.IO with `npm ci --prefer-offline` from npm's cache.
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (built,) = out.glob("roundtable-*.whl")
    yield built


@pytest.mark.slow
def test_wheel_from_a_clean_checkout_carries_the_page_and_licence(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "web"], capture_output=True, text=True, check=True
    ).stdout.split()
    # Every file of the page that git tracks: a new kind of file (a font, an image) that
    # pyproject's package-data does not name fails here, not in an operator's browser.
    page = [p for p in tracked if p not in NOT_PAGE]
    assert "web/index.html" in page and "web/welcome.html" in page
    for rel in page:
        assert "roundtable_web/" + rel.removeprefix("web/") in names, rel
    assert "roundtable_web/vendor/socket.io.min.js" in names
    assert not [n for n in names if "node_modules" in n or n.endswith("package.json")]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.slow
def test_an_installed_wheel_serves_the_page(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
        + ["--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUNDTABLE_")}
    # The installed copy first on the path; its dependencies come from this venv.
    env.update(
        PYTHONPATH=str(target),
        PYTHONUNBUFFERED="1",
        ROUNDTABLE_SECRET=secrets.token_urlsafe(32),
        ROUNDTABLE_API_KEY=secrets.token_urlsafe(24),
        ROUNDTABLE_STATE_DIR=str(tmp_path / "state"),
        ROUNDTABLE_MEDIA_HOST="127.0.0.1",
        ROUNDTABLE_MEDIA_PORT=str(free_udp_port()),
    )
    where = subprocess.run(
        [sys.executable, "-c", "import server.config as c; print(c.__file__); print(c.WEB_DIR)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where == [str(target / "server" / "config.py"), str(target / "roundtable_web")]

    port = _free_tcp_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if _get(base + "/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            status, body = _get(base + "/")
            assert status == 200 and "persönlichen Link".encode() in body
            status, body = _get(base + "/join")
            assert status == 200 and b"/static/vendor/socket.io.min.js" in body
            status, body = _get(base + "/static/vendor/socket.io.min.js")
            assert status == 200 and len(body) > 10_000
            assert _get(base + "/static/app.js")[0] == 200
            assert _get(base + "/static/package.json")[0] == 404
        finally:
            proc.terminate()
            proc.wait(timeout=15)
