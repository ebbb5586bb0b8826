"""The test pattern: decodable H.264 at the configured size, no B-frames, a key frame per fragment, a frame counter a
viewer (and this test) can read, paced on the monotonic clock (a fake clock here), near the configured bitrate."""

from __future__ import annotations

import io
import time
from fractions import Fraction
from types import SimpleNamespace

import av
import pytest
from av.video.frame import PictureType

from fakes.fake_clock import FakeClock
from kvs_edge.sources import SourceError, open_source
from kvs_edge.media.h264 import NAL_IDR, NAL_PPS, NAL_SPS, nal_types
from kvs_edge.sources.testpattern import Pattern, TestPatternSource, read_counter


def cfg(**over):
    base = dict(type="testpattern", uri=None, width=320, height=240, fps=30, bitrate=300_000, profile="high",
                hflip=False, vflip=False, rotation=0, tuning_file=None, camera_index=0, loop=False)
    base.update(over)
    return SimpleNamespace(**base)


def run(src, limit: float = 30.0):
    frames = []
    src.start(frames.append)
    deadline = time.monotonic() + limit
    while not src.finished and src.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    src.stop()
    return frames


def decode(frames):
    with av.open(io.BytesIO(b"".join(f.data for f in frames)), format="h264") as c:
        return list(c.decode(video=0))


@pytest.mark.parametrize("width,height,fps,fragment_seconds", [(320, 240, 30, 1.0), (640, 360, 25, 2.0)])
def test_pattern_is_decodable_at_the_right_size_without_b_frames(width, height, fps, fragment_seconds):
    clock = FakeClock(start_ns=7_000_000_000)
    keyint = round(fps * fragment_seconds)
    n = 2 * keyint + 5
    src = TestPatternSource(cfg(width=width, height=height, fps=fps), fragment_seconds=fragment_seconds, clock=clock,
                            max_frames=n)
    frames = run(src)
    assert src.error is None and len(frames) == n == src.frames
    pics = decode(frames)
    assert len(pics) == n
    assert {(p.width, p.height) for p in pics} == {(width, height)}
    kinds = {PictureType(p.pict_type) for p in pics}
    assert kinds == {PictureType.I, PictureType.P}  # no B-frames
    assert [i for i, f in enumerate(frames) if f.key] == [0, keyint, 2 * keyint]
    for f in frames:
        t = nal_types(f.data)
        assert (NAL_IDR in t) == f.key
        if f.key:
            assert NAL_SPS in t and NAL_PPS in t  # repeat headers: any fragment can start a session
    # the visible counter reads back as the frame number after encoding and decoding
    assert [read_counter(p.to_ndarray(format="gray")[:height]) for p in pics] == list(range(n))
    # paced on the (fake) monotonic clock at the frame rate
    assert [f.timestamp_ns for f in frames] == [7_000_000_000 + int(Fraction(i * 10 ** 9, fps)) for i in range(n)]
    assert clock.now == frames[-1].timestamp_ns


def test_pattern_moves():
    p = Pattern(320, 240)
    a, b = p.render(0, "00:00:00.000"), p.render(1, "00:00:00.000")
    assert (a[:240] != b[:240]).mean() > 0.5


def test_bitrate_is_near_the_configured_one():
    fps, bitrate, seconds = 30, 400_000, 4
    src = TestPatternSource(cfg(fps=fps, bitrate=bitrate), fragment_seconds=1.0, clock=FakeClock(),
                            max_frames=fps * seconds)
    frames = run(src)
    measured = sum(len(f.data) for f in frames) * 8 / seconds
    print(f"test pattern 320x240@30 asked {bitrate} bit/s, made {measured:.0f} bit/s")
    assert 0.5 * bitrate < measured < 1.5 * bitrate


def test_open_source_makes_a_test_pattern_and_refuses_odd_sizes():
    src = open_source(cfg(width=1280, height=720), fragment_seconds=2.0)
    assert isinstance(src, TestPatternSource)
    assert src.keyint == 60 and src.name == "testpattern 1280x720@30"
    with pytest.raises(SourceError, match=r"^test pattern size 321x240: width and height must be even"):
        open_source(cfg(width=321), fragment_seconds=2.0)


def test_unknown_source_type_lists_the_valid_ones():
    with pytest.raises(SourceError) as e:
        open_source(cfg(type="webcam"), fragment_seconds=2.0)
    assert str(e.value) == "source.type 'webcam': unknown; use one of picamera, testpattern, file, rtsp, v4l2"


def test_real_time_test_pattern_stops_promptly_when_asked():
    src = open_source(cfg(), fragment_seconds=1.0)
    frames = []
    src.start(frames.append)
    deadline = time.monotonic() + 10
    while len(frames) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    src.stop(timeout=3.0)
    assert len(frames) >= 5 and src.error is None
    assert not src._thread.is_alive()
    ts = [f.timestamp_ns for f in frames]
    assert all(b > a for a, b in zip(ts, ts[1:]))


def test_a_pattern_that_falls_behind_skips_pictures_and_stays_live():
    fps, t0 = 30, 3_000_000_000
    clock = FakeClock(start_ns=t0)
    frames = []

    def emit(frame):
        frames.append(frame)
        if len(frames) == 10:
            clock.now += 1_000_000_000  # the process was starved for a second (CPU, swap)

    src = TestPatternSource(cfg(fps=fps), fragment_seconds=1.0, clock=clock, max_frames=60)
    src.start(emit)
    deadline = time.monotonic() + 20
    while not src.finished and src.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    src.stop()
    assert src.finished and src.error is None
    indices = [round((f.timestamp_ns - t0) * fps / 10 ** 9) for f in frames]
    # after the pause it jumps to the picture that is due now instead of sending a second of stale ones
    assert indices[:10] == list(range(10))
    # frame 9 went out at 300 ms, then a 1 s pause: 1300 ms is picture 39
    assert indices[10:] == list(range(39, 60))
    # timestamps stay on the frame grid, and the counter shows which pictures were skipped
    assert [f.timestamp_ns for f in frames] == [t0 + int(Fraction(i * 10 ** 9, fps)) for i in indices]
    assert [read_counter(p.to_ndarray(format="gray")[:240]) for p in decode(frames)] == indices
