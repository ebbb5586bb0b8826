"""The service loop around an Appliance: supervision, journal lines, status file, metrics, systemd notify, signals.

One line per state change (camera, connection, clock, backlog growth, recovery) so a journal can hold months of it;
never a secret. A dead thread or a stalled camera ends the loop with PipelineFailure: `run` then exits non-zero and
systemd restarts the process (Picamera2's stop() can hang, so recovery never depends on a clean stop).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable

from kvs_edge.errors import EXIT_CONFIG
from kvs_edge.pipeline import PipelineFailure
from kvs_edge.retry import STREAM_LOOKUP, UPLOAD, wedge_limit
from kvs_edge.service.notify import Notifier, WatchdogGate, watchdog_interval
from kvs_edge.service.status import upload_status, write_status

log = logging.getLogger("kvs_edge")

STATUS_EVERY_S = 2.0
BACKLOG_LOG_EVERY_S = 60.0


def build_status(app, *, started_at: float, state_override: str | None = None) -> dict:
    """The status-file dict (docs/internals.md "Status file") for the running appliance."""
    if hasattr(app, "status"):  # several cameras (camera_set.py): the same figures summed, and one entry per camera
        return app.status(build_status, started_at=started_at, state_override=state_override)
    p = app.pipeline
    c = p.counters
    st = app.fragment_log.stats()
    link = app.link
    now_mono = time.monotonic()
    synced = app.timebase.synchronized()
    camera = p.camera_state()
    if state_override:
        state = state_override
    elif not synced:
        state = "waiting_for_clock"
    elif getattr(getattr(getattr(app, "events", None), "gate", None), "idle", False):
        state = "recording"  # upload.mode events/schedule with nothing selected: recording only, by design
    elif link.state == "connected":
        state = "streaming"
    elif link.state == "connecting" and c.frames_in == 0:
        state = "starting"
    else:
        state = "offline"
    age = p.last_frame_age()
    return {
        "version": 1,
        "pid": os.getpid(),
        "updated_at": time.time(),
        "started_at": started_at,
        "stream": app.cfg.stream.name,
        "state": state,
        "camera": {"state": camera, "frames": c.frames_in, "last_frame_age_s": None if age is None else round(age, 3)},
        # off (no source.audio) | ok (fragments carry track 2) | missing (video only until the audio is back)
        "audio": {"state": p.audio_state(), "frames": c.audio_frames_in,
                  "written": p.fragmenter.stats.audio_written,
                  "dropped": c.audio_frames_dropped + p.fragmenter.stats.audio_dropped},
        "connection": {"state": link.state, "since": link.since},
        "backlog": {"fragments": st.fragments, "bytes": st.bytes, "seconds": round(st.backlog_ms / 1000.0, 3)},
        "last_persisted_age_s": None if c.last_persisted_mono is None else round(now_mono - c.last_persisted_mono, 3),
        "fragments_persisted": c.fragments_persisted,
        "frames_dropped": c.frames_dropped + p.fragmenter.stats.dropped,  # queue full + refused by the muxer
        "fragments_evicted": st.evicted_fragments,
        "clock_synced": synced,
        "last_error": link.last_error or st.last_error,
        "latency_s": _percentiles(c.latencies),
        "upload": upload_status(app, getattr(getattr(app, "events", None), "gate", None)),
    }


def _percentiles(values) -> dict:
    """Capture -> PERSISTED latency of the recent fragments (first frame's capture to the PERSISTED ACK)."""
    v = sorted(values)
    if not v:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    pick = lambda q: round(v[min(len(v) - 1, int(q * len(v)))], 3)  # noqa: E731
    return {"count": len(v), "p50": pick(0.5), "p99": pick(0.99), "max": round(v[-1], 3)}


def _gate(app) -> WatchdogGate:
    """Pings stop at half the stall limit: the process exits by itself at the limit (PipelineFailure); the watchdog
    is the backstop for when it can't (a camera stop() that hangs), so it must already be running out by then."""
    # the uploader thread's loops (stream lookup, then PutMedia sessions) turn at least once per backoff, even while
    # offline: twice the longest backoff cap without a turn is a wedge
    return WatchdogGate(stall_seconds=max(1.0, app.cfg.health.stall_seconds / 2),
                        wedge_seconds=wedge_limit(STREAM_LOOKUP, UPLOAD))


def summary_line(status: dict) -> str:
    b = status["backlog"]
    return (f"{status['state']}: camera {status['camera']['state']}, {status['camera']['frames']} frames, "
            f"{status['fragments_persisted']} fragments persisted, backlog {b['fragments']} fragments "
            f"({b['seconds']:.0f} s)")


class Supervisor:
    """Runs an Appliance until a signal, a failure, or `until()` says so. Returns the process exit code."""

    def __init__(self, app, *, status_file: str | None = None, metrics_listen: str | None = None,
                 notifier: Notifier | None = None, tick_s: float = 0.5,
                 reload: tuple[Callable[[], object], Callable[[object], object]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """clock: monotonic seconds for the loop's cadence (status file, summaries, backlog lines, watchdog pings)."""
        self.app = app
        self.clock = clock
        self.status_file = status_file
        self.metrics_listen = metrics_listen
        self.notifier = notifier or Notifier()
        self.tick_s = tick_s
        self.reload = reload
        self.metrics = None
        if metrics_listen:  # prometheus_client is loaded only when metrics are asked for
            from kvs_edge.service.metrics import Metrics

            self.metrics = Metrics()
        self._metrics_server = None
        self._stop = threading.Event()
        self._hup = threading.Event()
        self.started_at = time.time()
        self._last: dict[str, object] = {}
        self._last_backlog_log = 0.0
        self._ready_sent = False
        self.last_status: dict | None = None
        self.gate = _gate(app)
        self.watchdog_every = watchdog_interval()
        self._last_ping = 0.0

    # -- signals -------------------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._hup.set())

    def request_stop(self) -> None:
        self._stop.set()

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(self, until: Callable[[], bool] | None = None, on_tick: Callable[[dict], None] | None = None) -> int:
        app = self.app
        if self.metrics is not None:
            from kvs_edge.service.metrics import serve

            try:
                self._metrics_server = serve(self.metrics, self.metrics_listen)
                log.info("metrics on http://%s/metrics", self.metrics_listen)
            except OSError as e:
                log.error("cannot serve metrics on %s: %s (continuing without)", self.metrics_listen, e.strerror or e)
        app.on_persisted = self.metrics.capture_to_persisted.observe if self.metrics else None
        app.start()
        log.info("kvs-edge started: %s", app.describe())
        code = 0
        last_status = 0.0
        try:
            while not self._stop.is_set():
                now = self.clock()
                if self._hup.is_set():
                    self._hup.clear()
                    self._reload()
                    app = self.app
                app.process_events()  # this thread alone applies what the muxer and uploader threads post
                app.check()
                status = build_status(app, started_at=self.started_at)
                self.last_status = status
                self._log_changes(status, now)
                self._notify(status, now)
                if now - last_status >= STATUS_EVERY_S:
                    last_status = now
                    self._publish(status)
                if on_tick:
                    on_tick(status)
                if until and until():
                    break
                self._stop.wait(self.tick_s)
        except PipelineFailure as e:
            code = e.exit_code
            if code == EXIT_CONFIG:
                log.error("%s: exiting without a restart (exit %d): fix this first", e.message, code)
            else:
                log.error("%s: exiting so that the service is restarted", e.message)
            self._publish(build_status(app, started_at=self.started_at, state_override="stopping") | {"last_error": str(e)})
        finally:
            self.notifier.stopping()
            self.app.stop()
            self.app.process_events()  # what the threads posted while stopping counts in the final status
            if self._metrics_server:
                self._metrics_server.close()
            if code == 0 and self.status_file:
                final = build_status(self.app, started_at=self.started_at, state_override="stopping")
                self._publish(final)
            self._log_stopped(code)
        return code

    def _log_stopped(self, code: int) -> None:
        try:
            kept = self.app.buffered_fragments()
        except Exception as e:  # a log that failed to close: the next start recovers what is on disk
            log.warning("kvs-edge stopped (exit %d); the buffer's fragment count is unknown: %s", code, e)
            return
        log.info("kvs-edge stopped%s; %d fragment%s kept in the buffer for the next start",
                 f" (exit {code})" if code else "", kept, "" if kept == 1 else "s")

    def _reload(self) -> None:
        """SIGHUP: validate the file again; a broken one is reported and the running configuration kept."""
        if not self.reload:
            return
        load, build = self.reload
        self.notifier.reloading()
        old = self.app
        try:
            cfg = load()
        except Exception as e:
            log.error("reload refused, keeping the running configuration: %s", "; ".join(getattr(e, "messages", [str(e)])))
            self.notifier.ready()
            return
        if cfg == old.cfg:
            log.info("reload: configuration unchanged")
            self.notifier.ready()
            return
        log.info("configuration changed: restarting the pipeline (the buffer is kept)")
        old.stop()
        old.process_events()
        try:
            new_app = build(cfg)
        except Exception as e:
            log.error("new configuration cannot start (%s): going back to the previous one", e)
            new_app = build(old.cfg)
        new_app.on_persisted = self.metrics.capture_to_persisted.observe if self.metrics else None
        self.app = new_app
        self.gate = _gate(new_app)
        new_app.start()
        self.notifier.ready()

    def _publish(self, status: dict) -> None:
        if self.metrics is not None:
            self.metrics.apply_status(status)
        if self.status_file:
            try:
                write_status(self.status_file, status)
            except OSError as e:
                if self._last.get("status_error") != e.errno:
                    log.warning("cannot write status file %s: %s", self.status_file, e.strerror or e)
                self._last["status_error"] = e.errno

    def _notify(self, status: dict, now: float) -> None:
        last_frame = self.app.last_frame_mono()  # several cameras: the newest frame of any (fed while one is healthy)
        if last_frame is not None:
            self.gate.frame(last_frame)
        self.gate.uploader_beat(self.app.heartbeat_now())
        if not self._ready_sent and status["camera"]["state"] == "ok":
            self._ready_sent = True
            self.notifier.ready(summary_line(status))
        if self.watchdog_every and now - self._last_ping >= self.watchdog_every and self.gate.should_ping(now):
            self._last_ping = now
            self.notifier.watchdog()
        if self._last.get("summary_at", 0) + 5 <= now:  # type: ignore[operator]
            self._last["summary_at"] = now
            self.notifier.status(summary_line(status))

    def _log_changes(self, status: dict, now: float) -> None:
        def changed(key: str, value) -> bool:
            old = self._last.get(key, object())
            self._last[key] = value
            return old != value

        cam = status["camera"]["state"]
        if changed("camera", cam) and cam != "starting":
            log.info("camera %s", "delivering frames" if cam == "ok" else cam)
        audio = (status.get("audio") or {}).get("state", "off")
        if changed("audio", audio) and audio != "off" and (audio == "missing" or "audio_was" in self._last):
            log.warning("audio missing: sending video only until it is back") if audio == "missing" else \
                log.info("audio back: fragments carry the sound again")
            self._last["audio_was"] = audio
        conn = status["connection"]["state"]
        if changed("connection", conn):
            if conn == "connected":
                log.info("upload recovered: connected" if self._last.get("was_offline") else "upload connected")
                self._last["was_offline"] = False
            elif conn == "offline":
                self._last["was_offline"] = True
                log.warning("outage: %s; buffering on disk", status["last_error"] or "cannot reach KVS")
        if changed("clock", status["clock_synced"]) and not status["clock_synced"]:
            # (the time base logs the moment it synchronizes)
            log.info("waiting for the clock to be synchronized (NTP); video is kept and uploaded with its capture "
                     "time once it is")
        b = status["backlog"]
        if b["seconds"] > 3 * self.app.cfg.stream.fragment_seconds and now - self._last_backlog_log > BACKLOG_LOG_EVERY_S:
            self._last_backlog_log = now
            log.info("backlog: %d fragments, %.0f s of video, %.1f MB", b["fragments"], b["seconds"], b["bytes"] / 1e6)
