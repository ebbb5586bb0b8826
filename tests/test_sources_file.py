"""The file source (PyAV): raw .h264, .mp4 and .mkv made with PyAV in the test, paced (fake clock) and unpaced,
looped; other codecs get a clear error; pure parts (AVCC -> Annex B, live timestamps, URL masking) directly."""

from __future__ import annotations

import io
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from fakes.fake_clock import FakeClock
from kvs_edge.sources import SourceError, open_source
from kvs_edge.sources.av import AnnexBConverter, FileSource, LiveTimestamps, redact_uri
from kvs_edge.media.h264 import NAL_IDR, NAL_PPS, NAL_SPS, nal_types, split_annexb
from support.h264gen import _picture, make_h264

W, H, FPS, GOP, N = 160, 120, 15, 15, 45


def cfg(uri, **over):
    base = dict(type="file", uri=None if uri is None else str(uri), width=W, height=H, fps=FPS, bitrate=1_000_000, profile="high",
                hflip=False, vflip=False, rotation=0, tuning_file=None, camera_index=0, loop=False)
    base.update(over)
    return SimpleNamespace(**base)


def encode_file(path: Path, codec: str = "libx264", frames: int = N, fps: int = FPS, gop: int = GOP) -> Path:
    """A real container file written by PyAV's muxer (AVCC packets + avcC for H.264 in MP4/MKV)."""
    with av.open(str(path), "w") as out:
        st = out.add_stream(codec, rate=fps)
        st.width, st.height, st.pix_fmt = W, H, "yuv420p"
        if codec == "libx264":
            st.codec_context.options = {"preset": "ultrafast",
                                        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
        elif codec == "libx265":
            st.codec_context.options = {"preset": "ultrafast", "x265-params": "log-level=none"}
        for i in range(frames):
            vf = av.VideoFrame.from_ndarray(_picture(i, W, H), format="rgb24").reformat(format="yuv420p")
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return path


def run(src, limit: float = 20.0, want: int | None = None):
    frames = []
    src.start(frames.append)
    deadline = time.monotonic() + limit
    while (not src.finished and src.error is None and time.monotonic() < deadline
           and (want is None or len(frames) < want)):
        time.sleep(0.01)
    src.stop(timeout=3.0)
    return frames


def decode_gray(data: bytes, fmt: str) -> list[np.ndarray]:
    with av.open(io.BytesIO(data), format=fmt) as c:
        return [f.to_ndarray(format="gray") for f in c.decode(video=0)]


def test_raw_h264_unpaced_passes_access_units_through_with_frame_rate_timestamps(tmp_path):
    enc = make_h264(N, W, H, FPS, gop=GOP)
    path = tmp_path / "in.h264"
    path.write_bytes(enc.annexb)
    clock = FakeClock()
    src = open_source(cfg(path), fragment_seconds=1.0, paced=False)
    src.clock = clock
    frames = run(src)
    assert src.error is None and src.finished
    assert [split_annexb(f.data) for f in frames] == [split_annexb(u.data) for u in enc.units]
    assert [f.key for f in frames] == [u.key for u in enc.units]
    assert [i for i, f in enumerate(frames) if f.key] == [0, 15, 30]
    assert [f.timestamp_ns for f in frames] == [int(Fraction(i * 10 ** 9, FPS)) for i in range(N)]
    assert clock.sleeps == 0  # unpaced: never waits


def test_raw_h264_paced_follows_the_frame_rate_on_the_clock(tmp_path):
    enc = make_h264(N, W, H, FPS, gop=GOP)
    path = tmp_path / "in.264"
    path.write_bytes(enc.annexb)
    clock = FakeClock(start_ns=5_000_000_000)
    src = FileSource(cfg(path), paced=True, clock=clock)
    frames = run(src)
    assert src.finished
    t0 = 5_000_000_000
    assert [f.timestamp_ns for f in frames] == [t0 + int(Fraction(i * 10 ** 9, FPS)) for i in range(N)]
    # the source slept until each frame was due: the clock reached the last frame's time, not before
    assert clock.now >= frames[-1].timestamp_ns
    assert clock.slept_ns == frames[-1].timestamp_ns - t0


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_containers_are_converted_to_annexb_with_parameter_sets_on_every_key_frame(tmp_path, ext):
    path = encode_file(tmp_path / f"in.{ext}")
    src = open_source(cfg(path), fragment_seconds=1.0, paced=False)
    frames = run(src)
    assert src.error is None and src.finished and len(frames) == N
    assert [i for i, f in enumerate(frames) if f.key] == [0, 15, 30]
    for f in frames:
        assert f.data.startswith(b"\x00\x00\x00\x01")
        types = nal_types(f.data)
        assert (NAL_IDR in types) == f.key
        if f.key:
            assert types.index(NAL_SPS) < types.index(NAL_PPS) < types.index(NAL_IDR)
    # the Annex B stream decodes to the same pictures as the file itself (PyAV as the independent reference)
    annexb = b"".join(f.data for f in frames)
    reference = decode_gray(path.read_bytes(), ext if ext == "mp4" else "matroska")
    ours = decode_gray(annexb, "h264")
    assert len(ours) == len(reference) == N
    assert all(np.array_equal(a, b) for a, b in zip(ours, reference))
    # and decoding can start at any key frame (what a new PutMedia session needs)
    assert len(decode_gray(b"".join(f.data for f in frames[15:]), "h264")) == N - 15
    # timestamps are the file's own, from 0 (MKV keeps milliseconds)
    for i, f in enumerate(frames):
        assert abs(f.timestamp_ns - i * 10 ** 9 / FPS) <= 1_000_000


def test_looped_file_keeps_time_running_across_the_wrap(tmp_path):
    enc = make_h264(30, W, H, FPS, gop=GOP)
    path = tmp_path / "loop.h264"
    path.write_bytes(enc.annexb)
    src = open_source(cfg(path, loop=True), fragment_seconds=1.0, paced=False)
    frames = run(src, want=75)
    assert src.error is None and not src.finished
    assert len(frames) >= 75
    ts = [f.timestamp_ns for f in frames[:75]]
    assert ts == [int(Fraction(i * 10 ** 9, FPS)) for i in range(30)] + \
        [int(Fraction(30 * 10 ** 9, FPS)) + int(Fraction(i * 10 ** 9, FPS)) for i in range(30)] + \
        [2 * int(Fraction(30 * 10 ** 9, FPS)) + int(Fraction(i * 10 ** 9, FPS)) for i in range(15)]
    assert [f.data for f in frames[30:60]] == [f.data for f in frames[:30]]
    assert frames[30].key


def test_stream_with_parameter_sets_only_once_gets_them_on_every_key_frame(tmp_path):
    enc = make_h264(N, W, H, FPS, gop=GOP)
    units = [enc.units[0].data]
    for u in enc.units[1:]:  # keep SPS/PPS only in the first access unit, as some encoders do
        units.append(b"".join(b"\x00\x00\x00\x01" + n for n in split_annexb(u.data) if n[0] & 0x1F not in (7, 8)))
    path = tmp_path / "once.h264"
    path.write_bytes(b"".join(units))
    frames = run(FileSource(cfg(path), paced=False))
    assert [i for i, f in enumerate(frames) if f.key] == [0, 15, 30]
    assert all(NAL_SPS in nal_types(f.data) and NAL_PPS in nal_types(f.data) for f in frames if f.key)
    assert len(decode_gray(b"".join(f.data for f in frames[30:]), "h264")) == N - 30


@pytest.mark.parametrize("codec,ext,name", [("mpeg4", "mp4", "mpeg4"), ("libx265", "mkv", "hevc")])
def test_another_codec_is_refused_with_what_to_do(tmp_path, codec, ext, name):
    path = encode_file(tmp_path / f"other.{ext}", codec=codec, frames=5)
    src = open_source(cfg(path), fragment_seconds=1.0, paced=False)
    frames = run(src)
    assert frames == []
    assert str(src.error) == (f"{path}: the video is {name}, not H.264: kvs-edge streams H.264 without re-encoding; "
                              "convert it first, e.g. ffmpeg -i INPUT -c:v libx264 -bf 0 -g 60 OUTPUT.mp4")


def test_missing_file_and_missing_uri(tmp_path):
    src = open_source(cfg(tmp_path / "nope.mp4"), fragment_seconds=1.0)
    run(src)
    assert str(src.error) == f"source.uri {tmp_path / 'nope.mp4'}: no such file: check the path"
    with pytest.raises(SourceError, match=r"^source.uri is missing"):
        open_source(cfg(None), fragment_seconds=1.0)


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "junk.mp4"
    path.write_bytes(b"not a video at all" * 100)
    src = open_source(cfg(path), fragment_seconds=1.0)
    run(src)
    assert str(src.error).startswith(f"{path}: cannot be read as video (")


def test_garbage_raw_file_is_refused(tmp_path):
    path = tmp_path / "junk.h264"  # read without FFmpeg (media/annexb_stream.py): the same kind of message
    path.write_bytes(b"not a video at all" * 100)
    src = open_source(cfg(path), fragment_seconds=1.0, paced=False)
    assert run(src) == []
    assert str(src.error) == (f"{path}: cannot be read as video (no Annex B start code (00 00 01) found): "
                              "give an .h264, .mp4 or .mkv file")


# -- pure parts ------------------------------------------------------------------------------------------------------

def test_avcc_lengths_that_look_like_start_codes_are_still_avcc():
    sps = bytes([0x67, 0x42, 0xC0, 0x0A, 0xDA, 0x0A, 0x11, 0xF9])
    pps = bytes([0x68, 0xCE, 0x0F, 0xC8])
    avcc = bytes([1, 0x42, 0xC0, 0x0A, 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps + b"\x01" + \
        len(pps).to_bytes(2, "big") + pps
    idr = bytes([0x65]) + bytes(range(1, 256)) + b"\x11" * 44  # 300 bytes: AVCC length 00 00 01 2C
    assert len(idr) == 300
    conv = AnnexBConverter(avcc)
    data, key = conv.convert(len(idr).to_bytes(4, "big") + idr)
    assert key
    assert split_annexb(data) == [sps, pps, idr]
    p_slice = bytes([0x41, 0x9A, 0x20])
    data, key = conv.convert(len(p_slice).to_bytes(4, "big") + p_slice)
    assert (data, key) == (b"\x00\x00\x00\x01" + p_slice, False)
    with pytest.raises(SourceError, match="do not add up"):
        conv.convert((500).to_bytes(4, "big") + p_slice)
    with pytest.raises(SourceError, match=r"avcC\) of the input is damaged"):
        AnnexBConverter(bytes([1, 0x42, 0xC0, 0x0A, 0xFF, 0xE1, 0x00, 0x40, 0x67]))


def test_live_timestamps_keep_the_stream_spacing_without_jitter_or_future_stamps():
    T, F = 10_000_000_000, 40_000_000
    ts = LiveTimestamps(max_drift_ns=2_000_000_000)
    jitter = [5, 30, 5, 12, 5]  # ms of network delay per packet
    out = [ts.stamp(i * F, T + i * F + j * 1_000_000) for i, j in enumerate(jitter)]
    assert out == [T + 5_000_000 + i * F for i in range(5)]  # the jitter is gone
    # media time jumping back (camera restarted its clock): re-anchored at arrival, still increasing
    later = T + 10 * F
    assert ts.stamp(0, later) == later
    # no media time at all: arrival time, strictly increasing
    assert ts.stamp(None, later) == later + 1

    burst = LiveTimestamps()
    # three buffered frames arrive at once, then the stream is live: never stamped later than arrival
    got = [burst.stamp(m, T) for m in (0, F, 2 * F)] + [burst.stamp(3 * F, T + F)]
    assert got == [T, T + 1, T + 2, T + F]
    assert all(b > a for a, b in zip(got, got[1:]))


def test_urls_are_shown_without_passwords():
    assert redact_uri("rtsp://admin:hunter2@10.0.0.5:554/stream1") == "rtsp://admin:***@10.0.0.5:554/stream1"
    assert redact_uri("rtsp://10.0.0.5/stream1") == "rtsp://10.0.0.5/stream1"
    assert redact_uri("/dev/video0") == "/dev/video0"


def test_annexb_parameter_sets_follow_the_one_trailing_zero_rule_of_media_h264():
    sps = bytes([0x67, 0x42, 0xC0, 0x0A, 0xDA, 0x0A, 0x11, 0xF9])
    pps = bytes([0x68, 0xCE, 0x0F, 0xC8])
    # trailing_zero_8bits after the last NAL unit belong to the byte stream, as before a start code (H.264 B.2)
    conv = AnnexBConverter(b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps + b"\x00\x00")
    idr = bytes([0x65, 0x88, 0x84])
    data, key = conv.convert(b"\x00\x00\x01" + idr)
    assert conv.pps == [pps]  # not pps + b"\x00\x00"
    assert key and split_annexb(data) == [sps, pps, idr]
    with pytest.raises(SourceError, match="parameter sets of the input are damaged"):
        AnnexBConverter(b"\x02garbage")
