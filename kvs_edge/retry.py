"""The one retry policy: exponential backoff with full jitter and a cap.

The n-th delay (n = 0, 1, ...) is uniform in [0, min(cap_s, base_s * 2**n)] ("full jitter": many devices that lost
the same network do not come back in lock step). `reset()` after a success starts again at base_s. The random source
is injectable so that tests can seed it. Used by the PutMedia uploader, the control plane's throttling retries, the
appliance's stream lookup and the PyAV live sources; the supervisor's "uploader wedged" limit is derived from the
largest cap (`wedge_limit`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """The numbers of one backoff: the first ceiling and the cap, in seconds."""

    base_s: float
    cap_s: float


# Where each retry loop's numbers live (docs/internals.md "Retry policy").
UPLOAD = RetryPolicy(base_s=0.5, cap_s=30.0)  # PutMedia sessions that failed
CONTROL_THROTTLED = RetryPolicy(base_s=1.0, cap_s=8.0)  # kinesisvideo calls throttled (ClientLimitExceeded)
STREAM_LOOKUP = RetryPolicy(base_s=1.0, cap_s=60.0)  # DescribeStream/CreateStream before the uploader starts
LIVE_SOURCE = RetryPolicy(base_s=0.5, cap_s=30.0)  # reconnecting an RTSP camera or a V4L2 device
THROTTLE_FLOOR = RetryPolicy(base_s=1.0, cap_s=1.0)  # a throttled PutMedia waits at least a draw from this


class Backoff:
    """Exponential backoff with full jitter. `next()` -> the seconds to wait before the next attempt."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None):
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"backoff needs 0 < base_s <= cap_s (got {base_s}, {cap_s})")
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    @classmethod
    def of(cls, policy: RetryPolicy, rng: random.Random | None = None) -> "Backoff":
        return cls(policy.base_s, policy.cap_s, rng)

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap_s, self.base_s * (2 ** min(self.attempt, 64)))

    def next(self) -> float:
        ceiling = self.ceiling()
        self.attempt += 1
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def wedge_limit(*policies: RetryPolicy, factor: float = 2.0) -> float:
    """How long a loop that sleeps at most one backoff per turn may go without turning before it counts as wedged:
    `factor` times the largest cap (the rest of a turn, connect and read timeouts, fits in the other half)."""
    return factor * max(p.cap_s for p in policies)
