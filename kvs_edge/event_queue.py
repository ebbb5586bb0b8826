"""How the worker threads tell the supervisor what happened: one queue, drained by one thread.

    muxer thread     post(FragmentStarted(seq, capture_ms))     a fragment entered the log
    uploader thread  post(<uploader event>)                     Connected, Disconnected, FragmentPersisted, ...
    supervisor       drain() -> [events, in the order posted]   applies them: connection state, counters, latency

Posting never blocks and never fails (the camera side of the muxer must not wait on the supervisor). Only the thread
that drains mutates the state the events feed, so that state needs no lock: before this queue, the muxer and the
uploader threads both changed one dict, and a long outage's drain could kill the muxer thread (issue 18).

Unbounded on purpose: the supervisor drains it every tick (0.5 s); a fragment produces two or three events, so even
a supervisor that stopped draining would hold a few MB after a day, while a bounded queue would have to drop events
(a persisted fragment not counted) or block a producer.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FragmentStarted:
    """The muxer started fragment `seq` in the log; its first frame was captured at `capture_ms` (monotonic ms)."""
    seq: int
    capture_ms: int


class EventQueue:
    """clock: when an event happened is when it was posted, on this clock (the pipeline's), so that what is measured
    from it (capture -> PERSISTED latency) does not include the wait for the supervisor's next tick."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._clock = clock

    def post(self, event: object) -> None:
        """Any thread: hand an event to the supervisor."""
        self._q.put((self._clock(), event))

    def drain(self) -> list[object]:
        """The consuming thread: the events posted before the call, oldest first."""
        return [event for _, event in self.drain_stamped()]

    def drain_stamped(self) -> list[tuple[float, object]]:
        """The consuming thread: (posted at, event) for the events posted before the call, oldest first (bounded:
        producers that keep posting cannot keep the consumer here)."""
        out = []
        for _ in range(self._q.qsize()):
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:  # pragma: no cover - one consumer: qsize() only grows meanwhile
                break
        return out
