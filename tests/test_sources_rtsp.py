"""The live (RTSP / V4L2) source: a real RTSP conversation with a small RTSP camera on loopback (tests/fakes/
rtsp_camera.py: RTSP 1.0 + H.264 RTP interleaved over TCP), read by FFmpeg's RTSP demuxer through PyAV. The camera
drops off the network and comes back; the source reconnects and frames resume, passed through without re-encoding."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest

from fakes.rtsp_camera import RtspCamera, split_annexb
from kvs_edge.sources import open_source
from kvs_edge.sources.av import StreamSource, rtsp_source, v4l2_source
from support.h264gen import make_h264


def wait_for(pred, limit: float = 20.0) -> bool:
    deadline = time.monotonic() + limit
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.02)
    return pred()


@pytest.fixture(scope="module")
def units():
    enc = make_h264(30, 320, 240, 30, gop=10, profile="baseline")
    return [u.data for u in enc.units]


def test_rtsp_camera_that_drops_and_comes_back_is_reconnected(units, caplog):
    caplog.set_level(logging.INFO)
    cam = RtspCamera(units, fps=30).start()
    url = cam.url.replace("rtsp://", "rtsp://admin:hunter2@")
    src = rtsp_source(SimpleNamespace(uri=url), backoff_initial=0.1, backoff_max=0.4)
    frames = []
    src.start(frames.append)
    try:
        assert wait_for(lambda: len(frames) >= 20), src.last_failure
        cam.drop()
        assert wait_for(lambda: src.reconnects >= 3)  # the end of stream, then refused connections, with backoff
        before = len(frames)
        assert src.error is None and not src.connected
        cam.restart()
        assert wait_for(lambda: cam.sessions == 2 and len(frames) >= before + 20), src.last_failure
        assert src.connected
    finally:
        src.stop(timeout=3.0)
        cam.drop()
    assert src.error is None and src.connects == 2
    # transport: RTP interleaved on the RTSP TCP connection
    assert "SETUP RTP/AVP/TCP;unicast;interleaved=0-1" in cam.requests
    # passed through without re-encoding: every frame's NAL units are exactly one of the camera's access units
    served = {tuple(split_annexb(u)) for u in units}
    assert all(tuple(split_annexb(f.data)) in served for f in frames)
    # each connection starts at a key frame (frames before it are dropped), key flags are right
    assert frames[0].key and frames[before].key
    assert all(f.key == (5 in [n[0] & 0x1F for n in split_annexb(f.data)]) for f in frames)
    ts = [f.timestamp_ns for f in frames]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    # the password never reaches the log
    assert "hunter2" not in caplog.text and "admin:***@" in caplog.text


def test_open_source_builds_an_rtsp_source_over_tcp():
    src = open_source(SimpleNamespace(type="rtsp", uri="rtsp://u:secret@10.1.2.3/s1", width=1280, height=720, fps=30,
                                      bitrate=4_000_000), fragment_seconds=2.0)
    assert isinstance(src, StreamSource)
    assert src.options["rtsp_transport"] == "tcp"
    assert src.name == "rtsp rtsp://u:***@10.1.2.3/s1"


def test_camera_not_reachable_is_retried_not_fatal(caplog):
    cam = RtspCamera([make_h264(2, 64, 48, 30).units[0].data]).start()
    url = cam.url
    cam.drop()  # nothing listens there now
    src = rtsp_source(SimpleNamespace(uri=url), backoff_initial=0.05, backoff_max=0.1)
    src.start(lambda f: None)
    try:
        assert wait_for(lambda: src.reconnects >= 3)
        assert src.error is None
        assert src.last_failure == "cannot open: Connection refused"
    finally:
        src.stop(timeout=3.0)


def test_v4l2_device_that_does_not_exist_is_one_clear_line(tmp_path):
    dev = tmp_path / "video9"
    src = v4l2_source(SimpleNamespace(uri=str(dev), width=1280, height=720, fps=30))
    assert src.options["input_format"] == "h264" and src.format == "v4l2"
    src.start(lambda f: None)
    assert wait_for(lambda: src.error is not None, 10)
    src.stop()
    assert str(src.error) == (f"source.uri {dev}: no such V4L2 device: check the USB camera is plugged in "
                              "(ls /dev/video*)")


def test_camera_that_hangs_with_the_connection_open_is_noticed_by_the_read_timeout(units):
    cam = RtspCamera(units, fps=30).start()
    src = rtsp_source(SimpleNamespace(uri=cam.url), read_timeout=1.0, backoff_initial=0.1, backoff_max=0.2)
    frames = []
    src.start(frames.append)
    try:
        assert wait_for(lambda: len(frames) >= 10)
        cam.frozen.set()  # TCP connection up, RTSP answered, but no more RTP
        assert wait_for(lambda: src.reconnects >= 1, 15)
        assert src.last_failure.startswith("no video for 1 s after ") and src.error is None
        stuck_at = len(frames)
        cam.frozen.clear()
        assert wait_for(lambda: len(frames) >= stuck_at + 10, 15), src.last_failure
    finally:
        src.stop(timeout=3.0)
        cam.drop()
    assert cam.sessions >= 2
