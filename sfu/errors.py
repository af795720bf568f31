"""Errors the media plane reports; the control plane maps their codes to its own errors."""

from __future__ import annotations


class MediaError(Exception):
    """A request the SFU refused, with a stable ``code`` (e.g. ``sdp_invalid``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
