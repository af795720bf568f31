"""Small in-process rate limiters for events per connection and joins per address."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    """``rate`` events per second on average, bursts up to ``burst``."""

    rate: float
    burst: float
    now: Callable[[], float] = time.monotonic
    tokens: float = -1.0
    stamp: float = 0.0

    def allow(self) -> bool:
        t = self.now()
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, t
        self.tokens = min(self.burst, self.tokens + (t - self.stamp) * self.rate)
        self.stamp = t
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class SlidingWindow:
    """At most ``limit`` hits per key within ``window`` seconds."""

    limit: int
    window: float
    now: Callable[[], float] = time.monotonic
    hits: dict[str, deque[float]] = field(default_factory=dict)

    def allow(self, key: str) -> bool:
        t = self.now()
        q = self.hits.setdefault(key, deque())
        while q and q[0] <= t - self.window:
            q.popleft()
        if len(q) >= self.limit:
            return False
        q.append(t)
        if len(self.hits) > 10_000:
            # Keep memory bounded under a flood of distinct addresses.
            for k in [k for k, v in self.hits.items() if not v or v[-1] <= t - self.window]:
                del self.hits[k]
        return True
