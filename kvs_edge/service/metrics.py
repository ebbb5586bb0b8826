"""Prometheus metrics: the same figures as the status file, as counters, gauges and a latency histogram.

Uses its own CollectorRegistry (not prometheus_client's global one), so several pipelines in one process (tests, the
demo) do not collide. `serve()` exposes it over HTTP, bound to localhost unless told otherwise.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

DEFAULT_LISTEN = "127.0.0.1:9108"
# From a frame captured to KVS saying PERSISTED: a fragment (1..20 s) plus upload and KVS's own delay.
LATENCY_BUCKETS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


class Metrics:
    """All kvs-edge metrics, named kvs_edge_*. Attributes are prometheus_client objects (`.inc()`, `.set()`,
    `.observe()`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r, ns = self.registry, "kvs_edge"
        self.frames = Counter("frames", "Frames received from the source", namespace=ns, registry=r)
        self.frames_dropped = Counter("frames_dropped", "Frames dropped before the fragment log (queue full, bad data)",
                                      namespace=ns, registry=r)
        self.fragments_persisted = Counter("fragments_persisted", "Fragments KVS acknowledged as PERSISTED",
                                           namespace=ns, registry=r)
        self.fragments_evicted = Counter("fragments_evicted", "Fragments dropped unsent because the buffer was full",
                                         namespace=ns, registry=r)
        self.upload_errors = Counter("upload_errors", "PutMedia sessions that ended in an error",
                                     namespace=ns, registry=r)
        self.backlog_fragments = Gauge("backlog_fragments", "Fragments in the buffer not yet PERSISTED",
                                       namespace=ns, registry=r)
        self.backlog_bytes = Gauge("backlog_bytes", "Bytes in the buffer not yet PERSISTED", namespace=ns, registry=r)
        self.backlog_seconds = Gauge("backlog_seconds", "Seconds of video in the buffer not yet PERSISTED",
                                     namespace=ns, registry=r)
        self.connected = Gauge("connected", "1 while a PutMedia connection is up", namespace=ns, registry=r)
        self.camera_ok = Gauge("camera_ok", "1 while frames arrive from the camera", namespace=ns, registry=r)
        self.audio_ok = Gauge("audio_ok", "1 while fragments carry the audio track (source.audio)", namespace=ns,
                              registry=r)
        self.clock_synced = Gauge("clock_synced", "1 once the system clock is synchronized", namespace=ns, registry=r)
        self.capture_to_persisted = Histogram(
            "capture_to_persisted_seconds", "From the capture of a fragment's last frame to PERSISTED",
            namespace=ns, registry=r, buckets=LATENCY_BUCKETS)
        # upload.mode events/schedule (the status file's "upload" part)
        self.retained_seconds = Gauge("retained_seconds", "Seconds of video the fragment log holds (the DVR)",
                                      namespace=ns, registry=r)
        self.events = Gauge("events", "Triggers recorded since the start (upload.mode events)", namespace=ns,
                            registry=r)
        self.bytes_uploaded = Gauge("bytes_uploaded", "Fragment bytes acknowledged since the start (events/schedule)",
                                    namespace=ns, registry=r)
        self.bytes_recorded = Gauge("bytes_recorded", "Fragment bytes recorded since the start (events/schedule)",
                                    namespace=ns, registry=r)
        # several cameras (camera_set.py): the same figures per camera, labelled with its name and stream
        labels = ("camera", "stream")
        self.camera_up = Gauge("camera_up", "1 while this camera delivers frames", labels, namespace=ns, registry=r)
        self.camera_connected = Gauge("camera_connected", "1 while this camera's PutMedia connection is up", labels,
                                      namespace=ns, registry=r)
        self.camera_failures = Gauge("camera_failures", "Times this camera's pipeline failed and was restarted",
                                     labels, namespace=ns, registry=r)
        self.camera_backlog_fragments = Gauge("camera_backlog_fragments", "This camera's fragments not yet PERSISTED",
                                              labels, namespace=ns, registry=r)
        self.camera_fragments_persisted = Counter("camera_fragments_persisted",
                                                  "This camera's fragments KVS acknowledged as PERSISTED", labels,
                                                  namespace=ns, registry=r)
        self._totals: dict[str, float] = {}

    def apply_status(self, status: dict[str, Any]) -> None:
        """Bring every figure up to a status dict (the schema of service/status.py).

        Counters move by the growth of the totals in the status since the previous call (a total that went down, as
        after a restart of the pipeline, restarts the baseline). `upload_errors` and the latency histogram are fed
        directly (`metrics.upload_errors.inc()`, `metrics.capture_to_persisted.observe(s)`).
        """
        camera = status.get("camera") or {}
        backlog = status.get("backlog") or {}
        connection = status.get("connection") or {}
        for counter, key, value in (
            (self.frames, "frames", camera.get("frames")),
            (self.frames_dropped, "frames_dropped", status.get("frames_dropped")),
            (self.fragments_persisted, "fragments_persisted", status.get("fragments_persisted")),
            (self.fragments_evicted, "fragments_evicted", status.get("fragments_evicted")),
        ):
            if not isinstance(value, (int, float)):
                continue
            previous = self._totals.get(key, 0)
            if value > previous:
                counter.inc(value - previous)
            self._totals[key] = value
        self.backlog_fragments.set(backlog.get("fragments") or 0)
        self.backlog_bytes.set(backlog.get("bytes") or 0)
        self.backlog_seconds.set(backlog.get("seconds") or 0)
        self.connected.set(1 if connection.get("state") == "connected" else 0)
        self.camera_ok.set(1 if camera.get("state") == "ok" else 0)
        self.audio_ok.set(1 if (status.get("audio") or {}).get("state") == "ok" else 0)
        self.clock_synced.set(1 if status.get("clock_synced") else 0)
        upload = status.get("upload") or {}
        self.retained_seconds.set(upload.get("retained_s") or 0)
        for gauge, key in ((self.events, "events"), (self.bytes_uploaded, "bytes_uploaded"),
                           (self.bytes_recorded, "bytes_recorded")):
            if isinstance(upload.get(key), (int, float)):
                gauge.set(upload[key])
        for cam in status.get("cameras") or []:
            labels = (str(cam.get("name")), str(cam.get("stream")))
            self.camera_up.labels(*labels).set(1 if cam.get("state") == "ok" else 0)
            self.camera_connected.labels(*labels).set(1 if cam.get("connection") == "connected" else 0)
            self.camera_failures.labels(*labels).set(cam.get("failures") or 0)
            self.camera_backlog_fragments.labels(*labels).set((cam.get("backlog") or {}).get("fragments") or 0)
            value, key = cam.get("fragments_persisted"), f"persisted/{labels}"
            if isinstance(value, (int, float)):
                previous = self._totals.get(key, 0)
                if value > previous:
                    self.camera_fragments_persisted.labels(*labels).inc(value - previous)
                self._totals[key] = value


class MetricsServer:
    """The HTTP endpoint; `close()` stops it. `address` is the (host, port) it listens on."""

    def __init__(self, server: Any, thread: Any) -> None:
        self._server = server
        self._thread = thread
        self.address: tuple[str, int] = server.server_address[:2]

    @property
    def port(self) -> int:
        return self.address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_listen(listen: str) -> tuple[str, int]:
    """ "127.0.0.1:9108", "[::1]:9108", ":9108" (localhost) or "9108" -> (host, port); ValueError with the reason."""
    text = listen.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"metrics listen address {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:9108") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics listen address {listen!r}: port {port} is out of range")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"metrics listen address {listen!r}: {host!r} is not an IP address") from None
    return host, port


def serve(metrics: Metrics, listen: str = DEFAULT_LISTEN) -> MetricsServer:
    """Start the /metrics endpoint in a daemon thread. OSError (e.g. the port is taken) propagates."""
    host, port = parse_listen(listen)
    started = start_http_server(port, addr=host, registry=metrics.registry)
    if started is None:  # before 0.20 it returned nothing, and the server could not be stopped
        raise RuntimeError("prometheus_client 0.20 or newer is needed: pip install -U prometheus_client")
    server, thread = started
    return MetricsServer(server, thread)
