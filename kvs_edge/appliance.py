"""The appliance assembled from a Config: source, pipeline, fragment log, time base, and the link to KVS.

`kvs-edge run` and `kvs-edge demo` both use this, so the demo runs exactly the code the Pi runs.
The link to KVS is resolved inside the uploader thread: a Pi that boots without network must still capture into the
log, so DescribeStream / CreateStream / GetDataEndpoint are retried there with backoff, never at start-up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kvs_edge.clock import Timebase
from kvs_edge.config import Config
from kvs_edge.kvs.control import ControlPlane
from kvs_edge.kvs.credentials import resolve_credentials
from kvs_edge.log import FragmentLog
from kvs_edge.producer import Producer
from kvs_edge.sources import open_source
from kvs_edge.stream_link import StreamLink  # noqa: F401  (kvs_edge.appliance.StreamLink stays importable)

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
        self.timebase, self.credentials = shared.timebase, shared.credentials
        fragment_log = FragmentLog(buffer / "log", buffer_cap(buffer, cfg.buffer.max_bytes),
                                   boot_id=self.timebase.boot_id, sync_interval_s=cfg.buffer.sync_seconds)
        self.source = source or open_source(cfg.source, fragment_seconds=cfg.stream.fragment_seconds,
                                            stall_seconds=cfg.health.stall_seconds)
        # one engine: the library's Producer (muxer, fragment log, uploader thread), fed by the camera source
        self.producer = Producer._engine(cfg, credentials=self.credentials, timebase=self.timebase,
                                         fragment_log=fragment_log, source=self.source, control=shared.control)
        self.fragment_log = fragment_log
        self.control = self.producer.control
        self.pipeline = self.producer.pipeline
        self.link = self.producer.link
        # upload.mode events/schedule: the uploader reads the log through the upload gate (event_service.py)
        self.events = None
        if cfg.upload.mode != "continuous":  # imported only then: a continuous run never loads the event features
            from kvs_edge.event_service import EventService

            self.events = EventService.for_appliance(self)
        self.upload_log = self.producer.upload_log = self.events.gate if self.events else fragment_log

    def start(self) -> None:
        self.timebase.refresh()
        if self.events:
            self.events.start()
        self.pipeline.start()

    def process_events(self) -> int:
        """The supervisor's thread (the only one that may call it): apply what the muxer and uploader threads
        posted since the last call, in order. Returns how many events were applied."""
        events = self.pipeline.events.drain_stamped()
        for at, ev in events:
            latency = self.pipeline.apply_event(ev, at)
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
