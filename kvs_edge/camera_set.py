"""Several cameras in one process (issue 16): one pipeline per camera, isolated from the others.

Each camera is a unit built from its own slice of the Config (`camera_config`): its stream, source and upload
settings, its own fragment log folder (<buffer.path>/cameras/<label>) and its share of buffer.max_bytes, its own
PutMedia connection ("the service allows one per stream"). The time base, the credentials provider and the
control-plane client are built once and shared (`appliance.SharedParts`).

Isolation: a camera whose pipeline fails (its source errors, it stalls, a thread dies) is stopped, reported (journal,
status, metrics) and rebuilt after a wait drawn from the common Backoff (`retry.LIVE_SOURCE`), while the others keep
streaming. A network camera that reconnects by itself (RTSP, V4L2) is shown as "reconnecting". The process fails
(PipelineFailure: the service stops being ready and systemd restarts it) only when no camera has delivered a frame
for the stall limit (health.stall_seconds).

The supervisor drives a CameraSet as it drives one Appliance: start, process_events, check, status, stop.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from pathlib import Path
from typing import Callable

from kvs_edge.appliance import Appliance, SharedParts, shared_parts
from kvs_edge.config import CameraConfig, Config
from kvs_edge.errors import KvsEdgeError
from kvs_edge.pipeline import PipelineFailure
from kvs_edge.retry import LIVE_SOURCE, Backoff

log = logging.getLogger(__name__)

MIN_SHARE_BYTES = 16 << 20  # the smallest fragment log a camera gets (config.py: buffer.max_bytes >= 16MiB)


def split_budget(total: int, shares: list[float]) -> list[int]:
    """buffer.max_bytes split by weight (equal weights by default); each at least MIN_SHARE_BYTES. Pure."""
    weight = sum(shares)
    return [max(MIN_SHARE_BYTES, int(total * s / weight)) for s in shares]


def camera_config(cfg: Config, cam: CameraConfig, max_bytes: int) -> Config:
    """The Config of one camera's unit: its stream, source, upload and events, its log folder and its share of the
    buffer."""
    buffer = dataclasses.replace(cfg.buffer, path=str(Path(cfg.buffer.path) / "cameras" / cam.label),
                                 max_bytes=max_bytes)
    return dataclasses.replace(cfg, stream=cam.stream, source=cam.source, upload=cam.upload, events=cam.events,
                               buffer=buffer, cameras=(cam,))


class CameraUnit:
    """One camera: its Appliance while it runs, else when it is retried and why it failed."""

    def __init__(self, cam: CameraConfig, cfg: Config, build: Callable[[], Appliance], rng=None) -> None:
        self.cam = cam
        self.cfg = cfg
        self.build = build
        self.app: Appliance | None = None
        self.failures = 0
        self.last_error: str | None = None
        self.retry_at: float | None = None
        self.backoff = Backoff.of(LIVE_SOURCE, rng)

    @property
    def label(self) -> str:
        return self.cam.label

    def describe(self) -> str:
        return f"camera {self.label} (stream {self.cam.stream.name})"

    def start(self, now: float) -> None:
        try:
            self.app = self.build()
            self.app.start()
        except (KvsEdgeError, OSError) as e:
            self.fail(getattr(e, "message", None) or str(e), now)

    def fail(self, reason: str, now: float) -> None:
        """Stop what runs (bounded) and schedule the next attempt."""
        if self.app is not None:
            try:
                self.app.stop(timeout=2.0)
                self.app.process_events()
            except Exception as e:  # a camera that will not stop must not take the others down
                log.warning("%s: stopping it: %s", self.describe(), e)
            self.app = None
        self.failures += 1
        self.last_error = reason
        delay = self.backoff.next()
        self.retry_at = now + delay
        log.error("%s failed: %s (retrying in %.1f s; the other cameras keep streaming)", self.describe(), reason,
                  delay)

    def state(self) -> str:
        """ok | starting | stalled | reconnecting | failed."""
        if self.app is None:
            return "failed"
        if getattr(self.app.source, "connected", True) is False:
            return "reconnecting"
        return self.app.pipeline.camera_state()


class CameraSet:
    """The appliance with several cameras. Nothing touches the network at construction.

    sources: {label: Source} to use instead of opening the configured ones (tests), clock: monotonic seconds.
    """

    def __init__(self, cfg: Config, *, config_path: str | None = None, sources: dict | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
                 shared: SharedParts | None = None, on_persisted=None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.shared = shared or shared_parts(cfg, config_path=config_path)
        self.timebase, self.credentials, self.control = (self.shared.timebase, self.shared.credentials,
                                                         self.shared.control)
        budgets = split_budget(cfg.buffer.max_bytes, [c.share for c in cfg.cameras])
        self._on_persisted = on_persisted
        self.units: list[CameraUnit] = []
        for cam, budget in zip(cfg.cameras, budgets):
            sub = camera_config(cfg, cam, budget)
            self.units.append(CameraUnit(cam, sub, self._builder(sub, (sources or {}).get(cam.label), config_path),
                                         rng))
        self._none_healthy_since: float | None = None

    def _builder(self, sub: Config, source, config_path) -> Callable[[], Appliance]:
        def build() -> Appliance:
            return Appliance(sub, config_path=config_path, source=source, shared=self.shared,
                             on_persisted=self._on_persisted)
        return build

    @property
    def on_persisted(self):
        return self._on_persisted

    @on_persisted.setter
    def on_persisted(self, fn) -> None:
        self._on_persisted = fn
        for u in self.units:
            if u.app is not None:
                u.app.on_persisted = fn

    def running(self) -> list[Appliance]:
        return [u.app for u in self.units if u.app is not None]

    # -- lifecycle (the supervisor's thread) ------------------------------------------------------------------
    def start(self) -> None:
        self.timebase.refresh()
        now = self.clock()
        for u in self.units:
            u.start(now)

    def process_events(self) -> int:
        return sum(app.process_events() for app in self.running())

    def check(self) -> None:
        """Fail and reschedule a camera whose pipeline failed; rebuild those whose wait is over. PipelineFailure only
        when no camera has been healthy for the stall limit."""
        now = self.clock()
        for u in self.units:
            if u.app is not None:
                try:
                    u.app.check()
                except PipelineFailure as e:
                    u.fail(e.message, now)
            elif u.retry_at is not None and now >= u.retry_at:
                log.info("%s: starting again (attempt %d)", u.describe(), u.failures + 1)
                u.start(now)
                if u.app is not None:
                    u.app.on_persisted = self._on_persisted
        if any(u.state() == "ok" for u in self.units):
            self._none_healthy_since = None
            for u in self.units:
                if u.state() == "ok" and u.failures and u.last_error is not None:
                    log.info("%s recovered: delivering frames", u.describe())
                    u.last_error = None
                    u.backoff.reset()
            return
        if self._none_healthy_since is None:
            self._none_healthy_since = now
        elif now - self._none_healthy_since > self.cfg.health.stall_seconds and \
                not all(u.state() == "starting" for u in self.units):
            reasons = "; ".join(f"{u.describe()}: {u.last_error or u.state()}" for u in self.units)
            raise PipelineFailure(f"every camera failed for {self.cfg.health.stall_seconds:g} s ({reasons})")

    def stop(self, timeout: float = 5.0) -> None:
        for app in self.running():
            app.pipeline.stop_capture(timeout=max(0.5, timeout / 2))
        for app in self.running():
            app.stop(timeout)
        try:
            self.control.close()
        except Exception as e:
            log.warning("closing the KVS control-plane client: %s", e)

    # -- what the supervisor reads ------------------------------------------------------------------------------
    def last_frame_mono(self) -> float | None:
        times = [app.last_frame_mono() for app in self.running()]
        times = [t for t in times if t is not None]
        return max(times) if times else None

    def heartbeat_now(self) -> float:
        beats = [app.heartbeat_now() for app in self.running()]
        return max(beats) if beats else time.monotonic()

    def buffered_fragments(self) -> int:
        return sum(app.buffered_fragments() for app in self.running())

    def describe(self) -> str:
        return f"{len(self.units)} cameras: " + ", ".join(u.describe() for u in self.units)

    def status(self, build_status, *, started_at: float, state_override: str | None = None) -> dict:
        """The status-file dict: every figure summed over the cameras, the top-level camera "ok" while one is, and
        "cameras": one entry per camera (name, stream, state, frames, connection, backlog, last_error, ...)."""
        entries = []
        per = []
        for u in self.units:
            if u.app is not None:
                s = build_status(u.app, started_at=started_at, state_override=state_override)
                per.append(s)
            else:
                s = None
            entries.append(_camera_entry(u, s))
        states = [e["state"] for e in entries]
        camera_state = "ok" if "ok" in states else "starting" if "starting" in states else "stalled"
        conns = [s["connection"]["state"] for s in per]
        conn = "connected" if "connected" in conns else "connecting" if "connecting" in conns else "offline"
        total = lambda key: sum(s[key] for s in per)  # noqa: E731
        ages = [s["camera"]["last_frame_age_s"] for s in per if s["camera"]["last_frame_age_s"] is not None]
        persisted = [s["last_persisted_age_s"] for s in per if s["last_persisted_age_s"] is not None]
        synced = self.timebase.synchronized()
        if state_override:
            state = state_override
        elif not synced:
            state = "waiting_for_clock"
        elif conn == "connected":
            state = "streaming"
        elif camera_state == "starting":
            state = "starting"
        else:
            state = "offline"
        errors = [f"camera {e['name']}: {e['last_error']}" for e in entries if e["last_error"]]
        latency = {"count": sum(s["latency_s"]["count"] for s in per),
                   "p50": max((s["latency_s"]["p50"] for s in per if s["latency_s"]["p50"] is not None), default=None),
                   "p99": max((s["latency_s"]["p99"] for s in per if s["latency_s"]["p99"] is not None), default=None),
                   "max": max((s["latency_s"]["max"] for s in per if s["latency_s"]["max"] is not None), default=None)}
        return {
            "version": 1,
            "pid": per[0]["pid"] if per else __import__("os").getpid(),
            "updated_at": time.time(),
            "started_at": started_at,
            "stream": ", ".join(u.cam.stream.name for u in self.units),
            "state": state,
            "camera": {"state": camera_state, "frames": sum(s["camera"]["frames"] for s in per),
                       "last_frame_age_s": min(ages) if ages else None},
            # audio (issue 14): "missing" while one camera's sound is missing, "ok" while one carries it, else "off"
            "audio": {"state": next((st for st in ("missing", "ok") if st in [s["audio"]["state"] for s in per]), "off"),
                      **{k: sum(s["audio"][k] for s in per) for k in ("frames", "written", "dropped")}},
            "connection": {"state": conn, "since": min((s["connection"]["since"] for s in per), default=None)},
            "backlog": {k: round(sum(s["backlog"][k] for s in per), 3) for k in ("fragments", "bytes", "seconds")},
            "last_persisted_age_s": min(persisted) if persisted else None,
            "fragments_persisted": total("fragments_persisted"),
            "frames_dropped": total("frames_dropped"),
            "fragments_evicted": total("fragments_evicted"),
            "clock_synced": synced,
            "last_error": "; ".join(errors) or None,
            "latency_s": latency,  # the worst camera's percentiles (a bound, not a merged distribution)
            "cameras": entries,
        }


def _camera_entry(u: CameraUnit, s: dict | None) -> dict:
    entry = {"name": u.label, "stream": u.cam.stream.name, "state": u.state(), "failures": u.failures,
             "retry_in_s": None, "last_error": u.last_error}
    if s is None:
        entry["retry_in_s"] = None if u.retry_at is None else round(max(0.0, u.retry_at - time.monotonic()), 1)
        entry.update(frames=0, frames_dropped=0, last_frame_age_s=None, connection="offline", fragments_persisted=0,
                     backlog={"fragments": 0, "bytes": 0, "seconds": 0.0})
        return entry
    entry.update(frames=s["camera"]["frames"], frames_dropped=s["frames_dropped"],
                 last_frame_age_s=s["camera"]["last_frame_age_s"],
                 connection=s["connection"]["state"], fragments_persisted=s["fragments_persisted"],
                 backlog=s["backlog"], audio=s["audio"]["state"])
    if entry["last_error"] is None and s["last_error"]:
        entry["last_error"] = s["last_error"]
    if entry["state"] == "reconnecting" and entry["last_error"] is None:
        entry["last_error"] = "the camera is unreachable; reconnecting"
    return entry
