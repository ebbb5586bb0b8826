"""The Prometheus endpoint, scraped over HTTP on loopback and read with prometheus_client's own text parser."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from kvs_edge.service.metrics import Metrics, parse_listen, serve


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {sample.name + ("" if not sample.labels else str(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def status(frames, persisted, backlog_fragments, connected=True):
    return {
        "camera": {"state": "ok", "frames": frames, "last_frame_age_s": 0.03},
        "connection": {"state": "connected" if connected else "offline", "since": None},
        "backlog": {"fragments": backlog_fragments, "bytes": backlog_fragments * 250_000,
                    "seconds": backlog_fragments * 2.0},
        "fragments_persisted": persisted, "frames_dropped": 3, "fragments_evicted": 0, "clock_synced": True,
    }


def test_scrape_shows_the_figures_moving():
    metrics = Metrics()
    with serve(metrics, "127.0.0.1:0") as server:
        assert server.address[0] == "127.0.0.1"
        metrics.apply_status(status(frames=300, persisted=4, backlog_fragments=1))
        metrics.capture_to_persisted.observe(2.7)
        first = scrape(server.port)
        assert first["kvs_edge_frames_total"] == 300
        assert first["kvs_edge_fragments_persisted_total"] == 4
        assert first["kvs_edge_frames_dropped_total"] == 3
        assert first["kvs_edge_backlog_fragments"] == 1
        assert first["kvs_edge_backlog_bytes"] == 250_000
        assert first["kvs_edge_backlog_seconds"] == 2.0
        assert first["kvs_edge_connected"] == 1
        assert first["kvs_edge_camera_ok"] == 1
        assert first["kvs_edge_clock_synced"] == 1
        assert first["kvs_edge_capture_to_persisted_seconds_count"] == 1
        assert first["kvs_edge_capture_to_persisted_seconds_sum"] == 2.7
        assert first["kvs_edge_capture_to_persisted_seconds_bucket[('le', '3.0')]"] == 1
        assert first["kvs_edge_capture_to_persisted_seconds_bucket[('le', '2.0')]"] == 0

        # an outage: frames keep coming, nothing is persisted, the backlog grows
        metrics.apply_status(status(frames=900, persisted=4, backlog_fragments=11, connected=False))
        metrics.upload_errors.inc()
        second = scrape(server.port)
        assert second["kvs_edge_frames_total"] == 900
        assert second["kvs_edge_fragments_persisted_total"] == 4
        assert second["kvs_edge_backlog_fragments"] == 11
        assert second["kvs_edge_backlog_seconds"] == 22.0
        assert second["kvs_edge_connected"] == 0
        assert second["kvs_edge_upload_errors_total"] == 1
        assert second["kvs_edge_fragments_evicted_total"] == 0


def test_counters_never_go_back_when_the_totals_restart():
    metrics = Metrics()
    metrics.apply_status(status(frames=500, persisted=10, backlog_fragments=0))
    metrics.apply_status(status(frames=20, persisted=1, backlog_fragments=0))  # a restarted pipeline counts from 0
    metrics.apply_status(status(frames=50, persisted=2, backlog_fragments=0))
    assert metrics.registry.get_sample_value("kvs_edge_frames_total") == 530
    assert metrics.registry.get_sample_value("kvs_edge_fragments_persisted_total") == 11


def test_own_registry_two_instances_do_not_collide():
    a, b = Metrics(), Metrics()
    a.frames.inc(5)
    assert b.registry.get_sample_value("kvs_edge_frames_total") == 0
    assert REGISTRY.get_sample_value("kvs_edge_frames_total") is None  # nothing in the global registry


def test_default_listen_is_localhost_only():
    # 127.0.0.2 is this machine too, but a socket bound to 127.0.0.1 alone does not answer there; one bound to
    # every address does (the control case shows the probe can tell the difference).
    with serve(Metrics(), ":0") as server:
        assert server.address[0] == "127.0.0.1"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", server.port), timeout=2).close()
    with serve(Metrics(), "0.0.0.0:0") as everywhere:
        socket.create_connection(("127.0.0.2", everywhere.port), timeout=2).close()


def test_close_stops_the_endpoint():
    server = serve(Metrics(), "127.0.0.1:0")
    port = server.port
    assert "kvs_edge_frames_total" in scrape(port)
    server.close()
    with pytest.raises(OSError):
        scrape(port)


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9108", ("127.0.0.1", 9108)),
    ("0.0.0.0:9100", ("0.0.0.0", 9100)),
    ("[::1]:9108", ("::1", 9108)),
    (":9108", ("127.0.0.1", 9108)),
    ("9108", ("127.0.0.1", 9108)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text, problem", [
    ("localhost:http", "expected HOST:PORT"),
    ("127.0.0.1:70000", "out of range"),
    ("camera.local:9108", "is not an IP address"),
])
def test_parse_listen_errors(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_listen(text)


def test_upload_part_of_the_status_becomes_gauges():
    from prometheus_client import generate_latest

    from kvs_edge.service.metrics import Metrics
    m = Metrics()
    m.apply_status({"upload": {"mode": "events", "retained_s": 120.5, "events": 3, "bytes_uploaded": 1000,
                               "bytes_recorded": 50000}})
    text = generate_latest(m.registry).decode()
    for line in ("kvs_edge_retained_seconds 120.5", "kvs_edge_events 3.0", "kvs_edge_bytes_uploaded 1000.0",
                 "kvs_edge_bytes_recorded 50000.0"):
        assert line in text
