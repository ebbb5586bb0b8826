"""Time on a device without a battery clock.

Frames are stamped on CLOCK_MONOTONIC at capture. The producer timestamp KVS stores must be wall-clock time, but a Pi's
wall clock is wrong (the last shutdown's time, restored by fake-hwclock) until NTP synchronizes it. So the muxer writes
*capture* milliseconds, the fragment log keeps them with the boot they belong to, and the uploader asks this module for
the producer timestamp of each fragment at the moment it sends it:

    producer_ms = capture_ms + offset(boot)      offset = wall - monotonic, sampled back to back

The offset of the running boot is known once the kernel says the clock is synchronized (adjtimex), or at once when
`time.require_sync` is false (devices with a real-time clock). It is saved in the buffer folder, so that a backlog left by
an earlier boot is stamped with that boot's offset after a restart. A backlog from a boot that never saw a synchronized
clock is stamped with the best guess that boot had (its unsynchronized offset), which is the only information left.

The module is pure except for `KernelClock`, the boundary to the real clocks, which tests replace with a fake clock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

log = logging.getLogger(__name__)

_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (Linux, 64-bit longs); trailing padding is generous.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


def read_timex() -> tuple[int, _Timex]:
    """adjtimex(2) in read-only mode (modes = 0): the clock state and the kernel's struct timex."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    tx = _Timex()
    return libc.adjtimex(ctypes.byref(tx)), tx


def kernel_clock_synchronized() -> bool:
    """What `timedatectl` shows as 'System clock synchronized': adjtimex() is not TIME_ERROR and STA_UNSYNC is clear."""
    state, tx = read_timex()
    if state < 0:
        return False
    return state != _TIME_ERROR and not (tx.status & _STA_UNSYNC)


def current_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


class Clock(Protocol):
    """The one boundary to the machine's clocks; `KernelClock` is the real one, tests pass fakes.

    Each user calls only what it needs, so a fake implements only that: the time base wall_ns(), monotonic_ns() and
    synchronized(); the sources (pacing, reconnect waits) monotonic_ns() and sleep(). The threads that only measure
    intervals (pipeline, uploader, fragment log) take a plain `() -> float` of monotonic seconds instead.
    """

    def wall_ns(self) -> int: ...
    def monotonic_ns(self) -> int: ...
    def synchronized(self) -> bool: ...
    def sleep(self, seconds: float) -> None: ...


class KernelClock:
    """CLOCK_REALTIME, CLOCK_MONOTONIC (the capture clock of every Frame), the kernel's NTP state, a real sleep."""

    @staticmethod
    def wall_ns() -> int:
        return time.time_ns()

    @staticmethod
    def monotonic_ns() -> int:
        return time.monotonic_ns()

    @staticmethod
    def synchronized() -> bool:
        return kernel_clock_synchronized()

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


def sample_offset_ns(clock: Clock) -> int:
    """wall - monotonic, from the tightest of three back-to-back samples (NTP may slew between them)."""
    best = None
    for _ in range(3):
        m0 = clock.monotonic_ns()
        w = clock.wall_ns()
        m1 = clock.monotonic_ns()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, w - (m0 + m1) // 2)
    return best[1]


@dataclass
class BootOffset:
    offset_ms: int
    synced: bool


class Timebase:
    """Turns (boot, capture ms) into producer ms; None while the time is not yet trustworthy.

    state_path: a small JSON file in the buffer folder holding {boot_id: {"offset_ms", "synced"}}.
    """

    SAVE_EVERY_S = 60.0
    KEEP_BOOTS = 20

    def __init__(self, *, require_sync: bool = True, clock: Clock | None = None, boot_id: str | None = None,
                 state_path: str | os.PathLike | None = None,
                 on_sync: Callable[[], None] | None = None) -> None:
        self.require_sync = require_sync
        self.clock = clock or KernelClock()
        self.boot_id = boot_id or current_boot_id()
        self.state_path = Path(state_path) if state_path else None
        self.on_sync = on_sync
        self._lock = threading.Lock()
        self._boots: dict[str, BootOffset] = self._load()
        self._synced = False
        self._last_save = float("-inf")

    # -- persistence ------------------------------------------------------------------------------------------
    def _load(self) -> dict[str, BootOffset]:
        if not self.state_path:
            return {}
        try:
            raw = json.loads(self.state_path.read_text())
            return {k: BootOffset(int(v["offset_ms"]), bool(v["synced"])) for k, v in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable time state %s (%s)", self.state_path, e.__class__.__name__)
            return {}

    def _save(self) -> None:
        if not self.state_path:
            return
        items = list(self._boots.items())[-self.KEEP_BOOTS:]
        data = {k: {"offset_ms": v.offset_ms, "synced": v.synced} for k, v in items}
        tmp = self.state_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.state_path)
        except OSError as e:
            log.warning("cannot save time state to %s: %s", self.state_path, e.strerror or e)

    # -- the current boot -------------------------------------------------------------------------------------
    def synchronized(self) -> bool:
        """True once the wall clock can be trusted (always, with require_sync off)."""
        return (not self.require_sync) or self.clock.synchronized()

    def refresh(self) -> bool:
        """Sample the clock; remember this boot's offset. Returns whether the time is trustworthy now."""
        ok = self.synchronized()
        offset_ms = sample_offset_ns(self.clock) // 1_000_000
        with self._lock:
            prev = self._boots.get(self.boot_id)
            self._boots[self.boot_id] = BootOffset(offset_ms, ok or bool(prev and prev.synced))
            if ok and not self._synced:
                self._synced = True
                log.info("wall clock synchronized: video held since boot is stamped with its capture time")
                if self.on_sync:
                    self.on_sync()
            now = time.monotonic()
            if ok and (prev is None or not prev.synced or now - self._last_save > self.SAVE_EVERY_S):
                self._last_save = now
                self._save()
            elif prev is None:
                self._save()
        return ok

    def now_ms(self) -> int:
        return self.clock.wall_ns() // 1_000_000

    def capture_ms_now(self) -> int:
        return self.clock.monotonic_ns() // 1_000_000

    # -- what the uploader asks -------------------------------------------------------------------------------
    def producer_ms(self, boot_id: str, capture_ms: int) -> int | None:
        """The producer timestamp of a frame captured at capture_ms (monotonic ms of boot boot_id).

        None when it can't be known yet: the running boot's clock is not synchronized. Never later than now.
        """
        if boot_id == self.boot_id:
            if not self.refresh():
                return None
            with self._lock:
                offset = self._boots[self.boot_id].offset_ms
        else:
            if self.require_sync and not self.refresh():
                # the past boot's offset may be known, but SigV4 needs a good clock anyway: wait
                return None
            with self._lock:
                past = self._boots.get(boot_id)
            if past is None:
                # A boot we know nothing of: the video's age is unknown; the best honest stamp is "just before now",
                # kept in capture order by the uploader's monotonic guard.
                return self.now_ms() - 1
            offset = past.offset_ms
        return min(capture_ms + offset, self.now_ms())

    def __call__(self, info) -> int | None:
        """Uploader hook: producer ms of a fragment (FragmentInfo: boot_id, first_ms)."""
        return self.producer_ms(info.boot_id, info.first_ms)


class FixedOffset:
    """A time base for files and tests: producer ms = capture ms + a constant (0 for files stamped in epoch ms)."""

    def __init__(self, offset_ms: int = 0) -> None:
        self.offset_ms = offset_ms

    def __call__(self, info) -> int:
        return info.first_ms + self.offset_ms
