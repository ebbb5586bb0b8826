"""`kvs-edge mux`: real H.264 in, KVS MKV out, read back with PyAV and ebmlite; the SDK's ref.mkv as the reference."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest

from kvs_edge.cli import main as cli_main
from support.h264gen import SDK_DIR, annexb_nals, avcc_nals, decode_pictures, make_h264, read_kvs_mkv

START = 1_700_000_000_000


def expected_ms(i: int, fps) -> int:
    return START + math.floor(i * 1000 / Fraction(str(fps)))


def independent_avcc(cp: bytes) -> tuple[list[bytes], list[bytes]]:
    """SPS/PPS out of an avcC record, per ISO/IEC 14496-15, written here without kvs_edge."""
    assert cp[0] == 1 and cp[4] & 3 == 3
    i, sps, pps = 6, [], []
    for _ in range(cp[5] & 0x1F):
        n = int.from_bytes(cp[i:i + 2], "big")
        sps.append(cp[i + 2:i + 2 + n])
        i += 2 + n
    count = cp[i]
    i += 1
    for _ in range(count):
        n = int.from_bytes(cp[i:i + 2], "big")
        pps.append(cp[i + 2:i + 2 + n])
        i += 2 + n
    return sps, pps


def mux(tmp_path: Path, data: bytes, *extra: str, name="in.h264") -> tuple[int, Path]:
    src = tmp_path / name
    src.write_bytes(data)
    out = tmp_path / "out.mkv"
    rc = cli_main(["mux", str(src), "-o", str(out), *extra])
    return rc, out


SHAPES = {
    "baseline-640x480": dict(frames=60, width=640, height=480, fps=30, gop=30),
    "high-1920x1080": dict(frames=20, width=1920, height=1080, fps=10, gop=10, profile="high"),
    "4-slices": dict(frames=60, width=320, height=240, fps=30, gop=30, slices=4),
    "aud-sei": dict(frames=60, width=320, height=240, fps=30, gop=30, aud=True, sei=True),
    "headers-on-first-idr-only": dict(frames=90, width=320, height=240, fps=30, gop=30, repeat_headers=False),
    "headers-on-every-idr": dict(frames=90, width=320, height=240, fps=30, gop=30, repeat_headers=True),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_mux_output_reads_back_with_pyav_and_ebmlite(tmp_path, shape):
    enc = make_h264(**shape)
    fps = shape["fps"]
    rc, out = mux(tmp_path, enc.annexb, "--fps", str(fps), "--start-ms", str(START))
    assert rc == 0
    data = out.read_bytes()
    n = len(enc.units)

    # PyAV (libavformat's Matroska demuxer): every frame, key flags, timestamps, NALs
    with av.open(io.BytesIO(data), format="matroska") as c:
        st = c.streams.video[0]
        assert (st.codec_context.width, st.codec_context.height) == (shape["width"], shape["height"])
        pkts = [p for p in c.demux(video=0) if p.size]
        assert [int(p.pts * p.time_base * 1000) for p in pkts] == [expected_ms(i, fps) for i in range(n)]
        assert [p.is_keyframe for p in pkts] == [u.key for u in enc.units]
        assert [avcc_nals(bytes(p)) for p in pkts] == [annexb_nals(u.data) for u in enc.units]
    # ... and decodes to the same pictures as the original H.264
    ours, orig = decode_pictures(data, "matroska"), decode_pictures(enc.annexb)
    assert len(ours) == len(orig) == n and all((a == b).all() for a, b in zip(ours, orig))

    # ebmlite: the KVS layout
    s = read_kvs_mkv(data)
    assert s.segment_unknown_size and s.tracks == 1
    assert s.track["CodecID"] == "V_MPEG4/ISO/AVC"
    assert (s.track["PixelWidth"], s.track["PixelHeight"]) == (shape["width"], shape["height"])
    first = annexb_nals(enc.units[0].data)
    assert independent_avcc(s.track["CodecPrivate"]) == ([x for x in first if x[0] & 0x1F == 7],
                                                        [x for x in first if x[0] & 0x1F == 8])
    keys = [i for i, u in enumerate(enc.units) if u.key]
    assert [c.timecode for c in s.clusters] == [expected_ms(i, fps) for i in keys]  # absolute, one per key frame
    i = 0
    for c in s.clusters:
        assert c.unknown_size and c.timecode_width == 8
        assert [b.key for b in c.blocks] == [True] + [False] * (len(c.blocks) - 1)
        for b in c.blocks:
            assert -32768 <= b.rel_timecode <= 32767 and c.timecode + b.rel_timecode == expected_ms(i, fps)
            assert b.track == 1 and avcc_nals(b.payload) == annexb_nals(enc.units[i].data)  # lengths add up
            i += 1
    assert i == n
    assert s.trailing_tags == [[("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")]]


def test_same_session_as_the_official_sdk(tmp_path):
    """`kvs-edge mux in.h264 --fps 30 --start-ms 1700000000000` carries what the SDK's ref.mkv carries."""
    out = tmp_path / "out.mkv"
    r = subprocess.run([sys.executable, "-m", "kvs_edge", "mux", str(SDK_DIR / "in.h264"), "-o", str(out),
                        "--fps", "30", "--start-ms", "1700000000000"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ours, ref = read_kvs_mkv(out.read_bytes()), read_kvs_mkv((SDK_DIR / "ref.mkv").read_bytes())
    assert len(ref.clusters) == 6 and sum(len(c.blocks) for c in ref.clusters) == 180
    assert [c.timecode for c in ours.clusters] == [c.timecode for c in ref.clusters]
    assert [[(b.track, b.rel_timecode, b.flags, b.payload) for b in c.blocks] for c in ours.clusters] == \
           [[(b.track, b.rel_timecode, b.flags, b.payload) for b in c.blocks] for c in ref.clusters]
    assert independent_avcc(ours.track["CodecPrivate"]) == independent_avcc(ref.track["CodecPrivate"])
    for k in ("CodecID", "PixelWidth", "PixelHeight", "TrackNumber", "TrackType"):
        assert ours.track[k] == ref.track[k]
    assert ours.info["TimecodeScale"] == ref.info["TimecodeScale"] == 1_000_000
    assert ours.ebml == ref.ebml and ours.segment_unknown_size and ref.segment_unknown_size


def test_fractional_fps_and_default_start(tmp_path):
    enc = make_h264(40, 160, 120, fps=30, gop=30)
    rc, out = mux(tmp_path, enc.annexb, "--fps", "29.97", "--start-ms", str(START))
    assert rc == 0
    s = read_kvs_mkv(out.read_bytes())
    got = [c.timecode + b.rel_timecode for c in s.clusters for b in c.blocks]
    assert got == [START + (i * 100_000) // 2997 for i in range(40)]
    before = int(time.time() * 1000)
    rc, out = mux(tmp_path, enc.annexb)
    after = int(time.time() * 1000)
    assert rc == 0 and before <= read_kvs_mkv(out.read_bytes()).clusters[0].timecode <= after


def strip(data: bytes, types) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + n for n in annexb_nals(data) if n[0] & 0x1F not in types)


def _bad_inputs():
    enc = make_h264(30, 160, 120, gop=15)
    return {
        "empty": (b"", "empty"),
        "random-bytes": (bytes((i * 7919 + 13) % 251 for i in range(20000)), "not"),
        "text": (b"this is not video\n" * 200, "not"),
        "no-sps-pps": (strip(enc.annexb, (7, 8)), "SPS/PPS"),
        "truncated-last-frame": (enc.annexb[:-40], "truncated"),
        "b-frames": (make_h264(30, 160, 120, profile="main", bframes=2).annexb, "B-frames"),
        "garbage-inside": (enc.annexb[:3000] + b"\x00\x00\x01\xff\xfe\xfd" * 10 + enc.annexb[3000:], "damaged"),
    }


BAD = _bad_inputs()


@pytest.mark.parametrize("case", BAD.keys())
def test_unusable_input_one_line_exit_2_nothing_left_behind(tmp_path, capsys, case):
    data, words = BAD[case]
    out = tmp_path / "out.mkv"
    out.write_bytes(b"previous content")  # an existing output is not clobbered by a failed run
    rc, _ = mux(tmp_path, data, "--fps", "30")
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvs-edge mux: ") and words in lines[0], err
    assert "Traceback" not in err
    assert out.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h264", "out.mkv"]  # no temp file left


def test_missing_input_and_bad_fps(tmp_path, capsys):
    assert cli_main(["mux", str(tmp_path / "nope.h264"), "-o", str(tmp_path / "o.mkv")]) == 2
    assert "nope.h264" in capsys.readouterr().err
    rc, _ = mux(tmp_path, make_h264(5, 160, 120).annexb, "--fps", "0")
    assert rc == 2 and "--fps" in capsys.readouterr().err
    assert not (tmp_path / "o.mkv").exists() and not (tmp_path / "out.mkv").exists()


def test_output_file_gets_normal_permissions(tmp_path):
    rc, out = mux(tmp_path, make_h264(5, 160, 120).annexb, "--start-ms", str(START))
    umask = os.umask(0)
    os.umask(umask)
    assert rc == 0 and out.stat().st_mode & 0o777 == 0o666 & ~umask
