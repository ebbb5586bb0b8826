"""The appliance assembled from a Config: source, pipeline, fragment log, time base, and the link to KVS.

`kvs-edge run` and `kvs-edge demo` both use this, so the demo runs exactly the code the Pi runs.
The link to KVS is resolved inside the uploader thread: a Pi that boots without network must still capture into the
log, so DescribeStream / CreateStream / GetDataEndpoint are retried there with backoff, never at start-up.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kvs_edge.clock import Timebase
from kvs_edge.config import Config
from kvs_edge.event_service import EventService
from kvs_edge.kvs.control import ControlPlane, ControlPlaneError, DataEndpoint
from kvs_edge.kvs.credentials import resolve_credentials
from kvs_edge.kvs.putmedia import SessionEndKind
from kvs_edge.kvs.uploader import Connected, Disconnected, Error, FragmentSkipped, Uploader
from kvs_edge.log import FragmentLog
from kvs_edge.pipeline import Pipeline
from kvs_edge.retry import STREAM_LOOKUP, Backoff
from kvs_edge.sources import open_source

log = logging.getLogger(__name__)


FREE_SPACE_RESERVE = 64 << 20  # left free for the system on the buffer's file system


def buffer_cap(buffer: Path, max_bytes: int) -> int:
    """buffer.max_bytes, lowered to what the file system can hold (with a reserve), so that a long outage evicts the
    oldest video from a full log instead of running the disk full."""
    import shutil

    try:
        free = shutil.disk_usage(buffer).free
    except OSError:
        return max_bytes
    held = sum(f.stat().st_size for f in (buffer / "log").glob("*") if f.is_file()) if (buffer / "log").is_dir() else 0
    room = max(free + held - FREE_SPACE_RESERVE, 16 << 20)
    if room < max_bytes:
        log.warning("buffer.max_bytes is %.0f MB but %s has room for %.0f MB: buffering at most %.0f MB",
                    max_bytes / 1e6, buffer, room / 1e6, room / 1e6)
        return room
    return max_bytes


class StreamLink:
    """The uploader thread's body: find the stream (with retries), then run the Uploader until stopped.

    Holds the connection state that status, metrics and the journal report. That state is changed only by
    `apply_event`, on the thread that drains the pipeline's event queue (the supervisor's): the uploader thread
    posts its events there and touches nothing but `heartbeat`.
    """

    def __init__(self, app: "Appliance", events, rng: random.Random | None = None) -> None:
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
            self.app.upload_log, stream_name=cfg.stream.name, region=cfg.stream.region,
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


@dataclass(frozen=True)
class SharedParts:
    """What the cameras of one process share (camera_set.py): one time base, one credentials provider, one
    control-plane client."""

    timebase: Timebase
    credentials: object
    control: ControlPlane


def shared_parts(cfg: Config, *, config_path: str | None = None, clock=None) -> SharedParts:
    buffer = Path(cfg.buffer.path)
    buffer.mkdir(parents=True, exist_ok=True)
    timebase = Timebase(require_sync=cfg.time.require_sync, clock=clock, state_path=buffer / "timebase.json")
    credentials = resolve_credentials(cfg.aws, config_path=config_path, defer=True)
    control = ControlPlane(cfg.stream.region, credentials, endpoint_url=cfg.aws.endpoint_url,
                           ca_bundle=cfg.aws.ca_bundle)
    return SharedParts(timebase, credentials, control)


class Appliance:
    """Everything `run` needs for one camera, built from a validated Config (its `stream`, `source`, `buffer`,
    `upload`). Nothing touches the network at construction. shared: the parts several cameras share (owned by the
    caller, which closes them), else its own."""

    def __init__(self, cfg: Config, *, config_path: str | None = None, source=None, clock=None,
                 on_persisted=None, shared: SharedParts | None = None) -> None:
        self.cfg = cfg
        self.on_persisted = on_persisted
        self._owns_shared = shared is None
        shared = shared or shared_parts(cfg, config_path=config_path, clock=clock)
        buffer = Path(cfg.buffer.path)
        buffer.mkdir(parents=True, exist_ok=True)
        self.timebase, self.credentials, self.control = shared.timebase, shared.credentials, shared.control
        self.fragment_log = FragmentLog(buffer / "log", buffer_cap(buffer, cfg.buffer.max_bytes),
                               boot_id=self.timebase.boot_id, sync_interval_s=cfg.buffer.sync_seconds)
        self.source = source or open_source(cfg.source, fragment_seconds=cfg.stream.fragment_seconds,
                                            stall_seconds=cfg.health.stall_seconds)
        self.pipeline = Pipeline(source=self.source, frag_log=self.fragment_log,
                                 fragment_seconds=cfg.stream.fragment_seconds, stall_seconds=cfg.health.stall_seconds)
        self.link = StreamLink(self, self.pipeline.events)
        self.pipeline.uploader = self.link
        # upload.mode events/schedule: the uploader reads the log through the upload gate (event_service.py)
        self.events = EventService.for_appliance(self)
        self.upload_log = self.events.gate if self.events else self.fragment_log

    def start(self) -> None:
        self.timebase.refresh()
        if self.events:
            self.events.start()
        self.pipeline.start()

    def process_events(self) -> int:
        """The supervisor's thread (the only one that may call it): apply what the muxer and uploader threads
        posted since the last call, in order. Returns how many events were applied."""
        events = self.pipeline.events.drain()
        for ev in events:
            latency = self.pipeline.apply_event(ev)
            self.link.apply_event(ev)
            if latency is not None and self.on_persisted:
                self.on_persisted(latency)
        return len(events)

    # -- what the supervisor asks of one camera or of a CameraSet (camera_set.py) ------------------------------
    def check(self) -> None:
        self.pipeline.check()

    def last_frame_mono(self) -> float | None:
        return self.pipeline.counters.last_frame_mono

    def heartbeat_now(self) -> float:
        return self.link.heartbeat_now()

    def buffered_fragments(self) -> int:
        return self.fragment_log.stats().fragments

    def describe(self) -> str:
        return f"{getattr(self.source, 'name', 'source')} -> stream {self.cfg.stream.name} ({self.cfg.stream.region})"

    def stop(self, timeout: float = 5.0) -> None:
        if self.events:
            self.events.stop()
        self.pipeline.stop(timeout)
        if not self._owns_shared:
            return
        try:
            self.control.close()
        except Exception as e:  # nothing is lost (the control plane holds no data), but say why
            log.warning("closing the KVS control-plane client: %s", e)
