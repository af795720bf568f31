"""Ports for the servers a test starts."""

from __future__ import annotations

import os
import socket

MEDIA_HOST = os.environ.get("ROUNDTABLE_MEDIA_HOST", "127.0.0.1")


def free_udp_port() -> int:
    """A UDP port free on the media host now: each server a test starts gets its own
    media port (``ROUNDTABLE_MEDIA_PORT``), so servers never contend for the default."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((MEDIA_HOST, 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    """A TCP port free on loopback now, for a server whose URL must be known before it
    starts (a cluster node's ``ROUNDTABLE_PUBLIC_URL``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
