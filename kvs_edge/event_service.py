"""Events, schedule and DVR in the running appliance: the wiring of upload_gate, the control socket and motion.

`EventService.for_appliance(app)` returns None in `upload.mode: continuous` (the uploader reads the log as before).
Otherwise it holds:
    gate      UploadGate over the appliance's fragment log; the uploader reads through it
    control   ControlServer on events.control_socket: `trigger` (-> gate.trigger) and `status`
    retention a timer thread releasing video older than buffer.retain_seconds (gate.expire), also while the
              uploader cannot reach KVS
    motion    (events.motion) pictures go to a one-slot queue (dropped when the detector is busy, never blocking the
              camera) and the detector thread compares them at most events.motion_fps times a second; each motion
              triggers the gate ("motion"). On the Pi camera the pictures are the luma of Picamera2's lores stream
              (sources/picamera.py `want_lores`, at motion_fps); for other sources, or a camera that refused the
              lores stream, a tap on the pipeline's emit queues key frames and the detector thread decodes them
`upload_status()` is the "upload" part of the status file.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path

from kvs_edge.schedule import Window, parse_cron, zone
from kvs_edge.service.control_socket import ControlServer
from kvs_edge.upload_gate import UploadGate
from kvs_edge.upload_policy import Mode

log = logging.getLogger("kvs_edge.events")


def control_socket_for(path: str, camera_label: str | None) -> str:
    """events.control_socket of one camera: the path itself for the single camera (or the first, unnamed, of a
    `cameras:` list), else `control.<label>.sock`, so that several cameras never take each other's socket."""
    if camera_label is None:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.{camera_label}{ext}"


def camera_label(cfg) -> str | None:
    cam = cfg.cameras[0] if getattr(cfg, "cameras", None) else None
    if cam is None or (cam.name is None and cam.index == 0):
        return None
    return cam.label


def build_gate(cfg, frag_log, timebase, folder) -> UploadGate | None:
    mode = Mode(cfg.upload.mode)
    if mode is Mode.CONTINUOUS:
        return None

    def other_boot_ms(info):
        producer = timebase.producer_ms(info.boot_id, info.first_ms)
        if producer is None:
            return None
        return producer - (timebase.now_ms() - timebase.capture_ms_now())

    return UploadGate(frag_log, mode=mode, pre_seconds=cfg.events.pre_seconds, post_seconds=cfg.events.post_seconds,
                      retain_seconds=cfg.buffer.retain_seconds,
                      windows=tuple(Window(parse_cron(w.cron), w.minutes) for w in cfg.upload.schedule),
                      tz=zone(cfg.upload.timezone), notify=cfg.events.notify, images=cfg.events.images,
                      clock=timebase.clock, boot_id=timebase.boot_id, synchronized=timebase.synchronized,
                      other_boot_ms=other_boot_ms, folder=folder)


class _Luma:
    """A lores picture from the camera thread: Y plane (uint8 H x W) and its SensorTimestamp."""

    __slots__ = ("luma", "timestamp_ns")

    def __init__(self, luma, timestamp_ns: int) -> None:
        self.luma, self.timestamp_ns = luma, timestamp_ns


class MotionTap:
    """Lores pictures from the camera (or key frames from the pipeline's emit) -> the motion detector on its own
    thread -> gate.trigger("motion")."""

    def __init__(self, cfg, gate: UploadGate, source=None) -> None:
        from kvs_edge.motion import MotionDetector
        e = cfg.events
        self.detector = MotionDetector(threshold=e.motion_threshold, area=e.motion_area,
                                       cooldown_s=e.motion_cooldown_seconds, roi=e.motion_roi)
        self.interval_s = 1.0 / e.motion_fps
        self.gate = gate
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_fed = -1e18
        self.dropped = 0
        self.compared = 0
        self.lores = False  # pictures come from the camera's lores stream: key frames are not decoded
        want_lores = getattr(source, "want_lores", None)
        if want_lores is not None:
            want_lores(self.feed_luma, e.motion_fps)

    def feed_luma(self, luma, timestamp_ns: int) -> None:
        """The camera's lores luma (on the camera thread): queued for the detector, never blocking."""
        self.lores = True
        try:
            self._queue.put_nowait(_Luma(luma, timestamp_ns))
        except queue.Full:
            self.dropped += 1

    def wrap(self, emit):
        def tapped(frame) -> None:
            emit(frame)
            if frame.key and not self.lores:
                try:
                    self._queue.put_nowait(frame)
                except queue.Full:
                    self.dropped += 1
        return tapped

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kvs-edge-motion", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def _run(self) -> None:
        from kvs_edge.motion import KeyFrameLuma, Motion
        luma = KeyFrameLuma()
        while not self._stop.is_set():
            try:
                frame = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            t = frame.timestamp_ns / 1e9
            if t - self._last_fed < self.interval_s and not isinstance(frame, _Luma):  # the camera paces lores
                continue
            try:
                pic = frame.luma if isinstance(frame, _Luma) else luma.decode(frame.data)
                if pic is None:
                    continue
                self._last_fed = t
                self.compared += 1
                seen = self.detector.feed(pic, t)
                if seen is not None:
                    self.gate.trigger("motion", at_ms=frame.timestamp_ns // 1_000_000,
                                      continues=seen is Motion.CONTINUE)
            except Exception:  # the detector must never take the appliance down
                log.exception("motion detector failed on a frame")


class EventService:
    def __init__(self, app, gate: UploadGate) -> None:
        self.app = app
        self.gate = gate
        self.control: ControlServer | None = None
        self.motion: MotionTap | None = None
        self._started_at = time.time()
        self._stop = threading.Event()
        self._expiry: threading.Thread | None = None
        if app.cfg.events.motion:
            self.motion = MotionTap(app.cfg, gate, app.source)
            app.pipeline.emit = self.motion.wrap(app.pipeline.emit)

    @classmethod
    def for_appliance(cls, app) -> "EventService | None":
        gate = build_gate(app.cfg, app.fragment_log, app.timebase, Path(app.cfg.buffer.path) / "log")
        return None if gate is None else cls(app, gate)

    def start(self) -> None:
        self._started_at = time.time()
        path = control_socket_for(self.app.cfg.events.control_socket, camera_label(self.app.cfg))
        try:
            self.control = ControlServer(path, {"trigger": self._trigger, "status": self._status}).start()
        except OSError as e:  # triggers by socket are lost, recording and uploading go on
            log.error("cannot open the control socket %s: %s (kvs-edge trigger will not work)", path,
                      getattr(e, "strerror", None) or e)
        if self.motion is not None:
            self.motion.start()
        if self.gate.retain_ms is not None:
            self._stop.clear()
            self._expiry = threading.Thread(target=self._expire_loop, name="kvs-edge-retention", daemon=True)
            self._expiry.start()

    def stop(self) -> None:
        self._stop.set()
        if self._expiry is not None:
            self._expiry.join(5.0)
        if self.control is not None:
            self.control.stop()
        if self.motion is not None:
            self.motion.stop()

    def _expire_loop(self) -> None:
        """buffer.retain_seconds holds on its own clock: the uploader's scans expire video too, but it does not scan
        while it cannot reach KVS (no network, no credentials), which is when the device records the longest."""
        every = min(10.0, max(1.0, self.gate.retain_ms / 4000))
        while not self._stop.wait(every):
            try:
                self.gate.expire()
            except Exception:  # a failed pass is retried at the next; recording never depends on it
                log.exception("expiring video older than buffer.retain_seconds failed")

    def _trigger(self, req: dict) -> dict:
        seconds = req.get("seconds", 0)
        label = req.get("label") or "trigger"
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
            raise ValueError("seconds must be a number from 0 to 3600")
        if not isinstance(label, str) or label.startswith("AWS") or len(label.encode()) > 256:
            raise ValueError("label must be text of at most 256 bytes, not starting with AWS")
        if self.gate.mode is not Mode.EVENTS:
            raise ValueError(f"upload.mode is {self.gate.mode.value}: triggers only select video in events mode")
        rec = self.gate.trigger(label, float(seconds))
        return {"label": rec.label, "at_ms": rec.at_ms, "wall_ms": rec.wall_ms}

    def _status(self, req: dict) -> dict:
        from kvs_edge.supervisor import build_status
        return {"status": build_status(self.app, started_at=self._started_at)}

    def upload_status(self) -> dict:
        return upload_status(self.app, self.gate)


def upload_status(app, gate: UploadGate | None) -> dict:
    """The status file's "upload" part: mode, the retained span, events, bytes uploaded vs recorded."""
    st = app.fragment_log.stats()
    retained = None
    if st.oldest_first_ms is not None and st.newest_last_ms is not None:
        retained = round((st.newest_last_ms - st.oldest_first_ms) / 1000.0, 3)
    out = {"mode": app.cfg.upload.mode, "retained_s": retained}
    if gate is not None:
        s = gate.stats
        out.update({"events": s.triggers, "event_active": gate.active_event(), "bytes_uploaded": s.bytes_uploaded,
                    "bytes_recorded": s.bytes_recorded, "fragments_expired": s.fragments_expired})
    return out
