"""Shared test setup: every aiortc peer in the test process gathers on the media host."""

from __future__ import annotations

import os

import pytest

from sfu import aiortc_hooks

MEDIA_HOST = os.environ.get("ROUNDTABLE_MEDIA_HOST", "127.0.0.1")


@pytest.fixture(autouse=True, scope="session")
def _media_host() -> None:
    # aioice skips loopback on its own; the suite runs in a loopback-only namespace.
    aiortc_hooks.use_media_host(MEDIA_HOST)
