"""What every video source is: the interface the pipeline codes against, and the small shared parts.

A source delivers `Frame`s (one Annex B access unit, a CLOCK_MONOTONIC capture time in ns, a key flag) to an
`emit` callback on its own thread. `emit` never blocks (the pipeline's queue drops), so a source never waits on
disk or network. A source that dies for good sets `error` (the pipeline then exits non-zero); a file source that
reached its end without looping sets `finished`.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from kvs_edge.clock import Clock
from kvs_edge.errors import EXIT_CONFIG, KvsEdgeError
from kvs_edge.media.frame import Frame

log = logging.getLogger(__name__)

Emit = Callable[[Frame], None]


class SourceError(KvsEdgeError):
    """A source failed for good. str() is one line for the user: what is wrong and what to do. Exit 1: `run` is
    restarted by systemd (a camera that was unplugged may come back)."""


class SourceNotInstalled(SourceError):
    """Software the source needs is not installed (picamera2): no restart can fix it, so it exits like a
    configuration error (78, no restart loop)."""

    exit_code = EXIT_CONFIG


class Source:
    """Base of every source: a worker thread around `_run()`, a bounded stop, `error` and `finished`.

    Subclasses implement `_run(emit)`; it must return soon after `self._stopping` is set. An exception escaping
    `_run` becomes `error` (a SourceError keeps its message; anything else is wrapped).
    """

    name: str = "source"

    def __init__(self) -> None:
        self.error: SourceError | None = None
        self.finished: bool = False
        self.frames: int = 0  # frames handed to emit so far
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the interface ------------------------------------------------------------------------------------------
    def start(self, emit: Emit) -> None:
        """Start delivering frames to `emit` on the source's own thread; returns at once.

        Failures (no camera, unreadable file, ...) do not raise here: they set `error`.
        """
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: already started")

        def counted(frame: Frame) -> None:
            self.frames += 1
            emit(frame)

        self._thread = threading.Thread(target=self._main, args=(counted,), name="kvs-edge-source", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Ask the source to stop and wait at most `timeout` seconds for it; never hangs."""
        self._stopping.set()
        self._wake()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                log.warning("%s: did not stop within %.1f s; leaving it behind", self.name, timeout)

    # -- for subclasses -----------------------------------------------------------------------------------------
    def _run(self, emit: Emit) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _wake(self) -> None:
        """Called by stop(): interrupt a blocking wait in _run if the subclass has one."""

    def _fail(self, err: SourceError) -> None:
        if self.error is None:
            self.error = err
            log.error("%s: %s", self.name, err)

    def _main(self, emit: Emit) -> None:
        try:
            self._run(emit)
        except SourceError as e:
            self._fail(e)
        except Exception as e:  # a bug or an unexpected library error: still one line, the pipeline exits
            log.exception("%s failed", self.name)
            self._fail(SourceError(f"{self.name} failed: {type(e).__name__}: {e}"))


class Pacer:
    """Releases media time in real time: `wait(media_ns)` sleeps until `t0 + media_ns` and returns that instant.

    The returned instant is the frame's capture timestamp. When the source falls behind (a slow disk, a busy CPU)
    the instant is already past: it is returned at once, so timestamps keep the media's spacing.
    """

    def __init__(self, clock: Clock, stopping: threading.Event | None = None) -> None:
        self.clock = clock
        self.t0: int | None = None
        self._stopping = stopping

    def wait(self, media_ns: int) -> int:
        now = self.clock.monotonic_ns()
        if self.t0 is None:
            self.t0 = now - media_ns
        due = self.t0 + media_ns
        while now < due:
            if self._stopping is not None and self._stopping.is_set():
                break
            self.clock.sleep(min((due - now) / 1e9, 0.25))
            now = self.clock.monotonic_ns()
        return due
