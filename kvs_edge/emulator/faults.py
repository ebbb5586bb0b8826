"""Faults on demand, for the tests of everything that talks to KVS. Thread-safe; read by the server's connection threads.

    faults.drop_after_bytes(n, times=1)     reset the next PutMedia connection(s) after about n bytes of body
                                            (counted on the wire, chunk framing included)
    faults.drop_at_random(seed, max_bytes=1_000_000, times=1)   ... after a random number of bytes (reproducible)
    faults.delay_acks(seconds)              hold every ACK back this long (until clear())
    faults.error_on_fragment(error_id, nth) the nth fragment completed from now on gets ERROR error_id (one shot)
    faults.fail_next(k, kind, paths=None)   the next k requests get 500, 503 or "throttle" (400
                                            ClientLimitExceededException); paths: only requests to these paths
    faults.set_offline(True|False)          refuse connections (the listening socket is closed; open ones are cut)
    faults.stall(seconds)                   stop reading request bodies for this long, starting now
    faults.rate_limit(bytes_per_s)          cap how fast request bodies are read (None = no cap)
    faults.clear()

`parse_fault_spec` turns the command line's --fault SPEC into these calls.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable

FAIL_KINDS = {
    "500": (500, "InternalFailure", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailableException", "The service is unavailable. Please try again later."),
    "throttle": (400, "ClientLimitExceededException",
                 "Kinesis Video Streams has throttled the request because you have exceeded the limit of allowed "
                 "client calls. Try making the call later."),
}


class FaultSpecError(ValueError):
    pass


class Faults:
    def __init__(self, on_offline: Callable[[bool], None] | None = None):
        self._lock = threading.Lock()
        self._on_offline = on_offline
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._drops: list[int] = []  # byte counts for the next connections
            self._ack_delay = 0.0
            self._error: tuple[int, int] | None = None  # (error id, fragments left until it)
            self._fail: list[tuple[str, set[str] | None]] = []
            self._stall_until = 0.0
            self._rate: float | None = None
            offline, self._offline = getattr(self, "_offline", False), False
        if offline and self._on_offline:
            self._on_offline(False)

    # -- setters ---------------------------------------------------------------------------------------------------
    def drop_after_bytes(self, n: int, times: int = 1) -> None:
        if n < 0 or times < 1:
            raise ValueError("drop_after_bytes needs n >= 0 and times >= 1")
        with self._lock:
            self._drops += [n] * times

    def drop_at_random(self, seed: int, max_bytes: int = 1_000_000, times: int = 1) -> None:
        rng = random.Random(seed)
        with self._lock:
            self._drops += [rng.randint(1, max_bytes) for _ in range(times)]

    def delay_acks(self, seconds: float) -> None:
        with self._lock:
            self._ack_delay = max(0.0, float(seconds))

    def error_on_fragment(self, error_id: int, nth: int = 1) -> None:
        if nth < 1:
            raise ValueError("nth counts from 1")
        with self._lock:
            self._error = (int(error_id), int(nth))

    def fail_next(self, k: int, kind: str = "503", paths: list[str] | None = None) -> None:
        if kind not in FAIL_KINDS:
            raise ValueError(f"kind must be one of {sorted(FAIL_KINDS)}")
        with self._lock:
            self._fail += [(kind, set(paths) if paths else None)] * k

    def set_offline(self, offline: bool) -> None:
        with self._lock:
            changed = self._offline != bool(offline)
            self._offline = bool(offline)
        if changed and self._on_offline:
            self._on_offline(bool(offline))

    def stall(self, seconds: float) -> None:
        with self._lock:
            self._stall_until = time.monotonic() + seconds

    def rate_limit(self, bytes_per_s: float | None) -> None:
        with self._lock:
            self._rate = float(bytes_per_s) if bytes_per_s else None

    # -- used by the server ----------------------------------------------------------------------------------------
    @property
    def offline(self) -> bool:
        return self._offline

    @property
    def ack_delay(self) -> float:
        return self._ack_delay

    @property
    def rate(self) -> float | None:
        return self._rate

    def stalled_for(self) -> float:
        return max(0.0, self._stall_until - time.monotonic())

    def take_drop(self) -> int | None:
        """Bytes after which to cut a new PutMedia connection (None: don't)."""
        with self._lock:
            return self._drops.pop(0) if self._drops else None

    def take_failure(self, path: str) -> tuple[int, str, str] | None:
        with self._lock:
            for i, (kind, paths) in enumerate(self._fail):
                if paths is None or path in paths:
                    del self._fail[i]
                    return FAIL_KINDS[kind]
            return None

    def fragment_error(self) -> int | None:
        """Called once per completed fragment: the error id to inject, if this is the chosen one."""
        with self._lock:
            if self._error is None:
                return None
            error_id, left = self._error
            if left <= 1:
                self._error = None
                return error_id
            self._error = (error_id, left - 1)
            return None


def parse_fault_spec(spec: str, faults: Faults) -> Callable[[], None] | None:
    """Apply one --fault SPEC. Returns a callable for faults that start later (refuse=S ends the offline period).

    drop-after-bytes=N[xTIMES]   drop-random=SEED      delay-acks=SECONDS    error=ID@NTH
    fail=K:KIND[@PATH] (KIND 500|503|throttle; PATH e.g. /putMedia: only requests to it)
    refuse=SECONDS (offline from start for SECONDS)
    stall=SECONDS (from start)   rate=BYTES_PER_S
    """
    key, sep, value = spec.partition("=")
    if not sep or not value:
        raise FaultSpecError(f"--fault {spec!r}: expected NAME=VALUE, e.g. drop-after-bytes=100000")
    try:
        if key == "drop-after-bytes":
            n, _, times = value.partition("x")
            faults.drop_after_bytes(int(n), int(times or 1))
        elif key == "drop-random":
            faults.drop_at_random(int(value))
        elif key == "delay-acks":
            faults.delay_acks(float(value))
        elif key == "error":
            eid, _, nth = value.partition("@")
            faults.error_on_fragment(int(eid), int(nth or 1))
        elif key == "fail":
            k, _, kind = value.partition(":")
            kind, _, path = kind.partition("@")
            faults.fail_next(int(k), kind or "503", paths=[path] if path else None)
        elif key == "refuse":
            seconds = float(value)
            faults.set_offline(True)
            timer = threading.Timer(seconds, faults.set_offline, (False,))
            timer.daemon = True
            return timer.start
        elif key == "stall":
            faults.stall(float(value))
        elif key == "rate":
            faults.rate_limit(float(value))
        else:
            raise FaultSpecError(f"--fault {spec!r}: unknown fault {key!r} (drop-after-bytes, drop-random, "
                                 "delay-acks, error, fail, refuse, stall, rate)")
    except ValueError as e:
        if isinstance(e, FaultSpecError):
            raise
        raise FaultSpecError(f"--fault {spec!r}: {e}") from None
    return None
