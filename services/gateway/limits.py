"""The gateway's rate limit: a token bucket per referrer organisation, for HTTPS (429) and MLLP (AR RATE_LIMITED)."""

import time
from collections.abc import Callable


class RateLimit:
    """A token bucket per referrer: `per_minute` requests a minute, in bursts of as many."""

    def __init__(self, per_minute: int, now: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.per_second, self.now = float(per_minute), per_minute / 60.0, now
        self.buckets: dict[str, tuple[float, float]] = {}

    def wait_s(self, who: str) -> float:
        """0 when `who` may go ahead now (and a token is taken), else how long until it may."""
        now = self.now()
        tokens, last = self.buckets.get(who, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.per_second)
        if tokens >= 1:
            self.buckets[who] = (tokens - 1, now)
            return 0.0
        self.buckets[who] = (tokens, now)
        return (1 - tokens) / self.per_second
