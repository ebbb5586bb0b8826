"""A fake monotonic clock for pacing tests: sleep() advances time at once and is recorded."""

from __future__ import annotations

import threading


class FakeClock:
    """The part of kvs_edge.clock.Clock a source uses: monotonic_ns() and sleep(seconds)."""

    def __init__(self, start_ns: int = 1_000_000_000_000) -> None:
        self.now = start_ns
        self.slept_ns = 0
        self.sleeps = 0
        self._lock = threading.Lock()

    def monotonic_ns(self) -> int:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        step = max(0, round(seconds * 1e9))
        with self._lock:
            self.now += step
            self.slept_ns += step
            self.sleeps += 1


class ScriptedClock:
    """A recording clock a test drives by setting `ms`: monotonic_ns() is `ms`, wall_ns() is `ms + wall_offset_ms`
    (the part of kvs_edge.clock.Clock the upload gate uses)."""

    def __init__(self, ms: int = 0, wall_offset_ms: int = 0) -> None:
        self.ms = ms
        self.wall_offset_ms = wall_offset_ms

    def monotonic_ns(self) -> int:
        return self.ms * 1_000_000

    def wall_ns(self) -> int:
        return (self.ms + self.wall_offset_ms) * 1_000_000
