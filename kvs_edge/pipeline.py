"""The appliance's threads: source -> bounded queue -> muxer -> fragment log -> uploader.

    source thread   emit(frame): never blocks; when the queue is full, frames are dropped up to the next key frame
    muxer thread    Fragmenter events -> FragmentLog (frame by frame, so the uploader can send a frame at once)
    uploader thread Uploader.run(stop): PutMedia sessions from the oldest unacknowledged fragment
    supervisor      the caller's thread: Pipeline.check() reports dead threads, a stalled camera, a failed source;
                    apply_event() takes what the muxer and uploader threads posted to `events` (event_queue.py)

Everything here is wiring; the decisions live in the pure cores (fragmenter, putmedia session, clock).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from kvs_edge.config import HealthConfig
from kvs_edge.errors import KvsEdgeError
from kvs_edge.event_queue import EventQueue, FragmentStarted
from kvs_edge.kvs.uploader import FragmentPersisted, FragmentSkipped
from kvs_edge.media.av_muxer import AvMuxer
from kvs_edge.media.fragmenter import AudioTrack
from kvs_edge.media.frame import AudioFrame, Frame
from kvs_edge.recorder import Recorder

log = logging.getLogger(__name__)

_STOP = object()
CAPTURE_TIMES_KEPT = 4096  # fragments whose capture time is kept for the latency figure (oldest forgotten first)


class PipelineFailure(KvsEdgeError):
    """A part of the pipeline died or stalled: the process must exit non-zero. Exit 1 (systemd restarts it), or the
    exit code of the KvsEdgeError that caused it (a missing picamera2 package: 78, no restart loop)."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message, exit_code=cause.exit_code if isinstance(cause, KvsEdgeError) else None)


@dataclass
class Counters:
    frames_in: int = 0
    frames_dropped: int = 0  # queue full (camera thread must not block) or rejected by the muxer
    frames_muxed: int = 0
    fragments_written: int = 0
    fragments_persisted: int = 0
    fragments_skipped: int = 0
    notices: dict[str, int] = field(default_factory=dict)
    last_frame_mono: float | None = None
    last_persisted_mono: float | None = None
    latencies: deque = field(default_factory=lambda: deque(maxlen=2048))  # capture -> PERSISTED, seconds
    events_applied: int = 0  # events from the muxer and uploader threads the supervisor has taken
    audio_frames_in: int = 0
    audio_frames_dropped: int = 0  # the queue was full (audio is never worth blocking the source for)


class Pipeline:
    """Wires a source, the fragmenter, a FragmentLog and an uploader together.

    uploader: an object with run(stop_event), run on the uploader thread (the appliance's StreamLink); None runs
    without uploading (tests, offline capture). It reports what it does by posting to `events`.
    clock: monotonic seconds, the clock frames are stamped with (Frame.timestamp_ns) and latencies measured on.
    """

    def __init__(self, *, source, frag_log, uploader=None, fragment_seconds: float, queue_frames: int = 240,
                 stall_seconds: float = HealthConfig.stall_seconds, clock: Callable[[], float] = time.monotonic,
                 tags=None, audio: bool = False, audio_source=None) -> None:
        self.source = source
        self.fragment_log = frag_log
        self.uploader = uploader
        # audio: AAC frames go into track 2 of the same fragments (media/av_muxer.py), from the video source itself
        # (file, test pattern: audio=True) or from a capture beside it (audio_source: sources/alsa.AlsaAudio)
        self.audio_source = audio_source if audio_source is not None else (
            source if audio and hasattr(source, "on_audio") else None)
        self.audio = self.audio_source is not None
        self.muxer = AvMuxer(int(fragment_seconds * 1000), self._audio_track, audio=self.audio)
        self.fragmenter = self.muxer.fragmenter
        if self.audio:
            self.audio_source.on_audio = self.emit_audio
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.counters = Counters()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_frames)
        self._dropping = False
        self._stop = threading.Event()
        self.recorder = Recorder(frag_log, tags)  # tags: FragmentTags, the static ones of the `metadata:` block
        self.events = EventQueue(self.clock)  # muxer and uploader threads -> the supervisor's thread
        # seq -> capture ms of its first frame, for the latency figure: only the thread that drains `events` touches it
        self._capture_ms: dict[int, int] = {}
        self._threads: list[threading.Thread] = []
        self._muxer_error: BaseException | None = None
        self._uploader_error: BaseException | None = None
        self.started_mono: float | None = None
        self.capture_stopped = False

    # -- the camera side: must never block ---------------------------------------------------------------------
    def emit(self, frame: Frame) -> None:
        c = self.counters
        c.frames_in += 1
        c.last_frame_mono = self.clock()
        if self._dropping and not frame.key:
            c.frames_dropped += 1
            return
        try:
            self._queue.put_nowait(frame)
            self._dropping = False
        except queue.Full:
            if not self._dropping:
                log.warning("muxer is behind: dropping frames up to the next key frame")
            self._dropping = True
            c.frames_dropped += 1

    def emit_audio(self, frame: AudioFrame) -> None:
        self.counters.audio_frames_in += 1
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            self.counters.audio_frames_dropped += 1

    def _audio_track(self) -> AudioTrack | None:
        a = getattr(self.audio_source, "audio", None) if self.audio else None
        return AudioTrack(a.asc, a.sample_rate, a.channels) if a is not None and a.asc else None

    def audio_state(self) -> str:
        """"off" (not configured), "ok" (the current session carries audio) or "missing" (video only for now)."""
        if not self.audio:
            return "off"
        return "ok" if self.muxer.audio_active else "missing"

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.started_mono = self.clock()
        self._spawn("muxer", self._mux_loop)
        if self.uploader is not None:
            self._spawn("uploader", self._upload_loop)
        self.source.start(self.emit)
        if self.audio and self.audio_source is not self.source:
            self.audio_source.start()

    def _spawn(self, name: str, target) -> None:
        t = threading.Thread(target=target, name=f"kvs-edge-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def stop_capture(self, timeout: float = 3.0) -> None:
        """Stop the source and let the muxer write what is queued and close the current fragment (bounded)."""
        self.capture_stopped = True
        if self.audio and self.audio_source is not self.source:
            self.audio_source.stop(timeout=max(0.5, timeout / 4))
        try:
            self.source.stop(timeout=max(0.5, timeout / 2))
        except Exception as e:  # a source that fails to stop must not keep us from saving the log
            log.warning("source did not stop cleanly: %s", e)
        self._queue_put_stop()
        for t in self._threads:
            if t.name.endswith("muxer"):
                t.join(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop capturing, then uploading, then close the log. Bounded: never hangs on a stuck part; what is in the
        log stays there for the next start."""
        deadline = time.monotonic() + timeout  # real time: joins wait on real threads whatever clock is injected
        self.stop_capture(timeout / 2)
        self._stop.set()
        wake = getattr(self.fragment_log, "wake", None)
        if wake:
            wake()
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        muxer = [t for t in self._threads if t.name.endswith("muxer") and t.is_alive()]
        if muxer:
            # the muxer is the log's single writer: closing the log under it would break that rule (a write racing
            # the close). Leave the log open; the process is about to exit and recovery reads it at the next start.
            log.warning("the muxer thread did not stop within %.1f s: the fragment log is left open (its last "
                        "fragment is recovered at the next start)", timeout)
            return
        try:
            self.fragment_log.close()
        except Exception as e:
            log.warning("closing the fragment log: %s", e)

    def put_control(self, item, timeout: float) -> None:
        """Queue a control item (`item.run(pipeline)` on the muxer thread, in order with the frames). Waits for room
        at most `timeout` seconds (the muxer, never the network); queue.Full after that."""
        self._queue.put(item, timeout=timeout)

    def _queue_put_stop(self) -> None:
        while True:
            try:
                self._queue.put_nowait(_STOP)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass

    # -- muxer thread ------------------------------------------------------------------------------------------
    def _mux_loop(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                if type(item) is AudioFrame:
                    self._apply(self.muxer.push_audio(item.data, item.timestamp_ns // 1_000_000))
                    continue
                if not isinstance(item, Frame):  # a control item put by the Producer (producer.py): tags, flush
                    item.run(self)
                    continue
                self._apply(self.muxer.push_video(item.data, item.timestamp_ns // 1_000_000, item.key))
                self.counters.frames_muxed += 1
            self.close_fragment()
        except BaseException as e:  # noticed by check(): the process exits non-zero
            log.exception("muxer thread died")
            self._muxer_error = e

    def close_fragment(self) -> None:
        """The muxer thread: end the fragment being written (the next frame that is written starts a new session at a
        key frame)."""
        self._apply(self.muxer.close())

    def _apply(self, events) -> None:
        started, notices = self.recorder.apply(events)
        self.counters.fragments_written = self.recorder.fragments
        for seq, first_ms in started:
            self.events.post(FragmentStarted(seq, first_ms))
        for ev in notices:
            n = self.counters.notices
            n[ev.kind] = n.get(ev.kind, 0) + 1
            if n[ev.kind] <= 3 or n[ev.kind] % 100 == 0:
                log.warning("%s (%d so far)", ev.message, n[ev.kind])

    # -- events from the muxer and uploader threads (the thread that drains `events` only) ------------------------
    def apply_event(self, ev, at: float | None = None) -> float | None:
        """Apply one event taken from `events` (posted at `at` on this pipeline's clock; None: now); returns the
        capture -> PERSISTED latency in seconds when `ev` is a FragmentPersisted for a fragment this process captured
        (and still remembers), else None."""
        self.counters.events_applied += 1
        if isinstance(ev, FragmentStarted):
            self._capture_ms[ev.seq] = ev.capture_ms
            if len(self._capture_ms) > CAPTURE_TIMES_KEPT:  # a long outage: forget the oldest
                del self._capture_ms[next(iter(self._capture_ms))]
        elif isinstance(ev, FragmentPersisted):
            return self.fragment_persisted(ev.seq, at)
        elif isinstance(ev, FragmentSkipped):
            self.counters.fragments_skipped += 1
        return None

    def fragment_persisted(self, seq: int, at: float | None = None) -> float | None:
        """Count an acknowledged fragment (acknowledged at `at` on this pipeline's clock; None: now); returns its
        capture -> PERSISTED latency in seconds (first frame), when it was captured by this process."""
        c = self.counters
        now = self.clock() if at is None else at
        c.fragments_persisted += 1
        c.last_persisted_mono = now
        first_ms = self._capture_ms.pop(seq, None)
        if first_ms is None:
            return None
        latency = now - first_ms / 1000.0
        c.latencies.append(latency)
        return latency

    # -- uploader thread ---------------------------------------------------------------------------------------
    def _upload_loop(self) -> None:
        try:
            self.uploader.run(self._stop)
        except BaseException as e:
            log.exception("uploader thread died")
            self._uploader_error = e

    # -- supervision (the caller's thread) ---------------------------------------------------------------------
    def last_frame_age(self) -> float | None:
        t = self.counters.last_frame_mono
        return None if t is None else self.clock() - t

    def camera_state(self) -> str:
        age = self.last_frame_age()
        if age is None:
            since = self.clock() - (self.started_mono or self.clock())
            return "stalled" if since > max(self.stall_seconds, 15.0) else "starting"
        return "stalled" if age > self.stall_seconds else "ok"

    def check(self) -> None:
        """Raise PipelineFailure when a part died or the camera stopped; the caller exits non-zero."""
        err = getattr(self.source, "error", None)
        if err is not None:
            raise PipelineFailure(str(err), err)
        if self._muxer_error is not None:
            raise PipelineFailure(f"muxer failed: {self._muxer_error}")
        if self._uploader_error is not None:
            raise PipelineFailure(f"uploader failed: {self._uploader_error}")
        if not self._stop.is_set():
            for t in self._threads:
                if not t.is_alive() and not (self.capture_stopped and t.name.endswith("muxer")):
                    raise PipelineFailure(f"thread {t.name} stopped unexpectedly")
        # a network camera that is reconnecting (with backoff) is an outage of the source, not a stall of this process
        reconnecting = getattr(self.source, "connected", True) is False
        if self.camera_state() == "stalled" and not (self.capture_stopped or reconnecting
                                                     or getattr(self.source, "finished", False)):
            age = self.last_frame_age()
            what = "no frame yet" if age is None else f"no frame for {age:.0f} s"
            raise PipelineFailure(f"camera stalled ({what}): check the camera cable and power supply")
