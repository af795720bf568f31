"""How often a publisher hears our bandwidth estimate (REMB), the way libwebrtc paces it.

aiortc's ``RemoteBitrateEstimator`` returns a fresh estimate on every packet while its
overuse detector says OVERUSING, which on a jittery host is often, and aiortc sends
each one as an RTCP REMB: a packet out per packet in. The publisher's encoder only
needs to hear a new figure about once a second, and at once when the estimate drops.
"""

from __future__ import annotations

SEND_INTERVAL_MS = 1000  # resend the estimate at least this often
MIN_INTERVAL_MS = 200  # never send two REMBs closer than this
DROP_RATIO = 0.97  # a drop below this share of the last sent figure goes out early


class RembThrottle:
    """Decides which of one receiver's estimates are sent as REMB.

    Send when at least :data:`SEND_INTERVAL_MS` passed since the last REMB, or — not
    sooner than :data:`MIN_INTERVAL_MS` after it — when the estimate fell below
    :data:`DROP_RATIO` of what was last sent. The estimator itself is fed every
    packet regardless; this only thins what goes on the wire.
    """

    __slots__ = ("last_ms", "last_bitrate")

    def __init__(self) -> None:
        self.last_ms: int | None = None
        self.last_bitrate = 0

    def should_send(self, bitrate: int, now_ms: int) -> bool:
        """Whether to send ``bitrate`` (bits/s) now; if so it counts as sent."""
        last_ms = self.last_ms
        if last_ms is not None:
            elapsed = now_ms - last_ms
            # (a negative ``elapsed`` is the wall clock stepping back: start afresh)
            if 0 <= elapsed < SEND_INTERVAL_MS and (
                elapsed < MIN_INTERVAL_MS or bitrate >= DROP_RATIO * self.last_bitrate
            ):
                return False
        self.last_ms = now_ms
        self.last_bitrate = bitrate
        return True
