"""The fragment log without a disk: the same API as FragmentLog, every fragment held in memory up to `max_bytes`
(oldest evicted first, as the disk log falls back to when its disk fails). The Producer's `buffer_path=None`."""

from __future__ import annotations

import math
import time
from typing import Callable

from .fragment_log import FragmentLog


class MemoryLog(FragmentLog):
    def __init__(self, max_bytes: int, *, boot_id: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("<memory>", max_bytes, boot_id=boot_id or "memory", memory_max_bytes=max_bytes, clock=clock)

    def _open_disk(self) -> None:
        """Never a disk: memory mode from the start, and no retry of a disk that is not there."""
        with self._cond:
            self._mode = "memory"
        self._retry_at = math.inf
