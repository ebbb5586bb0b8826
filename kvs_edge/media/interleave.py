"""Two timestamped streams (video, audio) in, one stream out in timestamp order (pure).

An item is released once the other stream has reached its timestamp (each stream's own timestamps increase, so nothing
earlier can still come from it), or once it has waited `max_wait_ms` of its own stream's time for a stream that went
quiet (an unplugged microphone must not hold the video back). An item that arrives earlier than what was already
released is dropped and counted (`late`): the output never goes backwards. On equal timestamps video goes first, so a
key frame opens its fragment before the audio that starts with it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

VIDEO, AUDIO = 0, 1


class Interleaver:
    def __init__(self, max_wait_ms: int = 500) -> None:
        self.max_wait_ms = max_wait_ms
        self._q = (deque(), deque())
        self._newest: list[int | None] = [None, None]
        self._released: int | None = None
        self.late = [0, 0]  # items dropped because they came after later ones were released, per stream

    def push(self, kind: int, ts_ms: int, item: Any) -> list[tuple[int, int, Any]]:
        """Add an item of stream `kind` (VIDEO or AUDIO); returns the (kind, ts_ms, item) now due, in order."""
        if self._released is not None and ts_ms < self._released:
            self.late[kind] += 1
            return []
        self._q[kind].append((ts_ms, item))
        if self._newest[kind] is None or ts_ms > self._newest[kind]:
            self._newest[kind] = ts_ms
        return self._release(final=False)

    def newest(self, kind: int) -> int | None:
        """The newest timestamp pushed on stream `kind` (None before the first)."""
        return self._newest[kind]

    def flush(self) -> list[tuple[int, int, Any]]:
        return self._release(final=True)

    def _release(self, final: bool) -> list[tuple[int, int, Any]]:
        out: list[tuple[int, int, Any]] = []
        v, a = self._q
        while v or a:
            if v and a:
                kind = VIDEO if v[0][0] <= a[0][0] else AUDIO
            else:
                kind = VIDEO if v else AUDIO
                other = self._newest[1 - kind]
                ts = self._q[kind][0][0]
                if not (final or (other is not None and other >= ts)
                        or self._newest[kind] - ts >= self.max_wait_ms):
                    break
            ts, item = self._q[kind].popleft()
            self._released = ts
            out.append((kind, ts, item))
        return out
