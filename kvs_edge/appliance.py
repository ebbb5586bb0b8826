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
from pathlib import Path

from kvs_edge.clock import Timebase
from kvs_edge.config import Config
from kvs_edge.kvs.control import ControlPlane, ControlPlaneError, DataEndpoint
from kvs_edge.kvs.credentials import resolve_credentials
from kvs_edge.kvs.uploader import (Connected, Disconnected, Error, FragmentPersisted, FragmentSkipped,
                                   RetryScheduled, Uploader)
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

    Holds the connection state that status, metrics and the journal report.
    """

    def __init__(self, app: "Appliance", rng: random.Random | None = None) -> None:
        self.app = app
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
                                             kms_key_id=cfg.stream.kms_key_id)
                keeps_data = int(info.get("DataRetentionInHours") or 0) > 0
                break
            except ControlPlaneError as e:
                delay = self._backoff.next()
                self._set_state("offline", str(e))
                log.error("%s (retrying in %.0f s)", e, delay)
            except Exception as e:  # DNS, TLS, a bug: never kill the thread that must keep retrying
                delay = self._backoff.next()
                self._set_state("offline", f"control plane: {e}")
                log.error("control plane unreachable: %s (retrying in %.0f s)", e, delay)
            stop.wait(delay)
        if stop.is_set():
            return
        if not keeps_data:
            log.warning("stream %s keeps no data (retention 0): fragments are released on RECEIVED",
                        cfg.stream.name)
        self.uploader = Uploader(
            self.app.log, stream_name=cfg.stream.name, region=cfg.stream.region,
            endpoint=DataEndpoint(control, cfg.stream.name), credentials=self.app.credentials,
            timebase=self.app.timebase, keeps_data=keeps_data, ca_bundle=cfg.aws.ca_bundle,
            stale_after_s=cfg.upload.stale_seconds, max_connection_s=cfg.upload.max_connection_minutes * 60.0,
            connect_timeout_s=cfg.upload.connect_timeout_seconds, on_event=self._on_event)
        self.uploader.run(stop)

    def _on_event(self, ev) -> None:
        self.heartbeat = time.monotonic()
        if isinstance(ev, Connected):
            if self.state != "connected":
                log.info("connected: streaming to %s", self.app.cfg.stream.name)
            self._set_state("connected")
            self.last_error = None
        elif isinstance(ev, Disconnected):
            if ev.kind != "rotated":
                self._set_state("offline" if ev.kind in ("connection", "http") else "connecting", ev.reason)
        elif isinstance(ev, FragmentPersisted):
            latency = self.app.pipeline.fragment_persisted(ev.seq)
            if self.app.on_persisted and latency is not None:
                self.app.on_persisted(latency)
        elif isinstance(ev, FragmentSkipped):
            self.app.pipeline.counters.fragments_skipped += 1
            self.last_error = f"KVS rejected fragment {ev.seq} ({ev.error_code or ev.error_id})"
        elif isinstance(ev, Error):
            self.last_error = ev.message
        elif isinstance(ev, RetryScheduled):
            pass  # the uploader logs the wait itself


class Appliance:
    """Everything `run` needs, built from a validated Config. Nothing touches the network at construction."""

    def __init__(self, cfg: Config, *, config_path: str | None = None, source=None, clock=None,
                 on_persisted=None) -> None:
        self.cfg = cfg
        self.on_persisted = on_persisted
        buffer = Path(cfg.buffer.path)
        buffer.mkdir(parents=True, exist_ok=True)
        self.timebase = Timebase(require_sync=cfg.time.require_sync, clock=clock,
                                 state_path=buffer / "timebase.json")
        self.credentials = resolve_credentials(cfg.aws, config_path=config_path, defer=True)
        self.control = ControlPlane(cfg.stream.region, self.credentials, endpoint_url=cfg.aws.endpoint_url,
                                    ca_bundle=cfg.aws.ca_bundle)
        self.log = FragmentLog(buffer / "log", buffer_cap(buffer, cfg.buffer.max_bytes),
                               boot_id=self.timebase.boot_id, sync_interval_s=cfg.buffer.sync_seconds)
        self.source = source or open_source(cfg.source, fragment_seconds=cfg.stream.fragment_seconds,
                                            stall_seconds=cfg.health.stall_seconds)
        self.link = StreamLink(self)
        self.pipeline = Pipeline(source=self.source, frag_log=self.log, uploader=self.link,
                                 fragment_seconds=cfg.stream.fragment_seconds,
                                 stall_seconds=cfg.health.stall_seconds)

    def start(self) -> None:
        self.timebase.refresh()
        self.pipeline.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.pipeline.stop(timeout)
        try:
            self.control.close()
        except Exception as e:  # nothing is lost (the control plane holds no data), but say why
            log.warning("closing the KVS control-plane client: %s", e)
