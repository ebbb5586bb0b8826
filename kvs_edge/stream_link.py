"""The uploader thread's body, shared by the appliance and the Producer: find the stream (retrying with backoff),
then run the Uploader until stopped. A device that starts without network keeps capturing into the log meanwhile."""

from __future__ import annotations

import logging
import random
import threading
import time

from kvs_edge.kvs.control import ControlPlaneError, DataEndpoint
from kvs_edge.kvs.putmedia import SessionEndKind
from kvs_edge.kvs.uploader import Connected, Disconnected, Error, FragmentSkipped, Uploader
from kvs_edge.retry import STREAM_LOOKUP, Backoff

log = logging.getLogger("kvs_edge.appliance")


class StreamLink:
    """The uploader thread's body: find the stream (with retries), then run the Uploader until stopped.

    app: the engine's parts: `cfg` (a Config), `control`, `fragment_log`, `credentials`, `timebase` (a Producer).

    Holds the connection state that status, metrics and the journal report. That state is changed only by
    `apply_event`, on the thread that drains the pipeline's event queue (the supervisor's): the uploader thread
    posts its events there and touches nothing but `heartbeat`.
    """

    def __init__(self, app, events, rng: random.Random | None = None) -> None:
        self.app = app
        self.events = events  # EventQueue: uploader thread -> supervisor
        self.state = "connecting"  # connecting | connected | offline
        self.since = time.time()
        self.last_error: str | None = None
        self.uploader: Uploader | None = None
        self.heartbeat = time.monotonic()  # the watchdog checks that this thread is not wedged
        self._backoff = Backoff.of(STREAM_LOOKUP, rng)

    def heartbeat_now(self) -> float:
        """When this thread last showed life: its own loop, an uploader event, or the uploader's loop."""
        beat = self.heartbeat
        if self.uploader is not None:
            beat = max(beat, getattr(self.uploader, "heartbeat", beat))
        return beat

    def _set_state(self, state: str, error: str | None = None) -> None:
        if error:
            self.last_error = error
        if state != self.state:
            self.state = state
            self.since = time.time()

    def run(self, stop: threading.Event) -> None:
        cfg = self.app.cfg
        control = self.app.control
        keeps_data = True
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                info = control.ensure_stream(cfg.stream.name, create=cfg.stream.create,
                                             retention_hours=cfg.stream.retention_hours,
                                             kms_key_id=cfg.stream.kms_key_id, tags=dict(cfg.stream.tags))
                keeps_data = int(info.get("DataRetentionInHours") or 0) > 0
                break
            except ControlPlaneError as e:
                delay = self._backoff.next()
                self.events.post(Disconnected(str(e), SessionEndKind.CONNECTION))
                log.error("%s (retrying in %.0f s)", e, delay)
            except Exception as e:  # DNS, TLS, a bug: never kill the thread that must keep retrying
                delay = self._backoff.next()
                self.events.post(Disconnected(f"control plane: {e}", SessionEndKind.CONNECTION))
                log.error("control plane unreachable: %s (retrying in %.0f s)", e, delay)
            stop.wait(delay)
        if stop.is_set():
            return
        if not keeps_data:
            log.warning("stream %s keeps no data (retention 0): fragments are released on RECEIVED",
                        cfg.stream.name)
        self.uploader = Uploader(
            # upload.mode events/schedule: the upload gate over the log (event_service.py), else the log itself
            getattr(self.app, "upload_log", self.app.fragment_log), stream_name=cfg.stream.name,
            region=cfg.stream.region,
            endpoint=DataEndpoint(control, cfg.stream.name), credentials=self.app.credentials,
            timebase=self.app.timebase, keeps_data=keeps_data, ca_bundle=cfg.aws.ca_bundle,
            stale_after_s=cfg.upload.stale_seconds, max_connection_s=cfg.upload.max_connection_minutes * 60.0,
            connect_timeout_s=cfg.upload.connect_timeout_seconds, on_event=self._on_event)
        self.uploader.run(stop)

    def _on_event(self, ev) -> None:
        """The uploader thread: note that it is alive, and pass the event to the supervisor."""
        self.heartbeat = time.monotonic()
        self.events.post(ev)

    def apply_event(self, ev) -> None:
        """The supervisor's thread: the connection state that an uploader event changes."""
        if isinstance(ev, Connected):
            if self.state != "connected":
                log.info("connected: streaming to %s", self.app.cfg.stream.name)
            self._set_state("connected")
            self.last_error = None
        elif isinstance(ev, Disconnected):
            if ev.kind is not SessionEndKind.ROTATED:
                offline = ev.kind in (SessionEndKind.CONNECTION, SessionEndKind.HTTP)
                self._set_state("offline" if offline else "connecting", ev.reason)
        elif isinstance(ev, FragmentSkipped):
            self.last_error = f"KVS rejected fragment {ev.seq} ({ev.error_code or ev.error_id})"
        elif isinstance(ev, Error):
            self.last_error = ev.message
