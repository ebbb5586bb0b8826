"""Raw H.264 files split into access units without FFmpeg (media/annexb_stream.py), checked against FFmpeg's own h264
demuxer and parser (PyAV): the same units, NAL unit for NAL unit, whatever the block size the file is read in."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import av
import pytest

from kvs_edge.media import h264
from kvs_edge.media.annexb_stream import AccessUnitSplitter, first_mb_in_slice
from support.h264gen import make_h264
from support.sdk_data import sdk_file


def ffmpeg_units(path: Path) -> list[list[bytes]]:
    with av.open(str(path), format="h264") as c:
        return [h264.split_annexb(bytes(p)) for p in c.demux(video=0) if p.size]


def our_units(data: bytes, block: int) -> list[list[bytes]]:
    sp = AccessUnitSplitter()
    out: list[list[bytes]] = []
    for i in range(0, len(data), block):
        out += sp.feed(data[i:i + block])
    return out + sp.flush()


ENCODINGS = {
    "one slice": {},
    "4 slices a picture": dict(slices=4, profile="high"),
    "AUD and SEI": dict(aud=True, sei=True),
    "parameter sets once": dict(repeat_headers=False),
    "B-frames": dict(bframes=2, profile="high"),
}


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_access_units_are_the_ones_ffmpeg_finds(tmp_path, name):
    enc = make_h264(40, 320, 240, 15, gop=10, **ENCODINGS[name])
    path = tmp_path / "in.h264"
    path.write_bytes(enc.annexb)
    want = ffmpeg_units(path)
    assert len(want) == 40
    for block in (1 << 20, 4096, 7, 1):
        assert our_units(enc.annexb, block) == want, f"block {block}"


def test_the_sdk_sample_clip_splits_as_ffmpeg_splits_it():
    clip = sdk_file("in.h264")
    data = clip.read_bytes()
    want = ffmpeg_units(clip)
    for block in (1 << 20, 1000):
        assert our_units(data, block) == want


def test_first_mb_in_slice_reads_the_exp_golomb_code():
    assert first_mb_in_slice(bytes([0x65, 0x88])) == 0  # "1"
    assert first_mb_in_slice(bytes([0x41, 0x40])) == 1  # "010"
    assert first_mb_in_slice(bytes([0x41, 0x0C, 0x80])) == 24  # "0000 1 1001": 2**4 - 1 + 9
    assert first_mb_in_slice(bytes([0x41])) == 0  # nothing to read: as the first slice


def test_a_stream_without_start_codes_is_refused():
    sp = AccessUnitSplitter()
    assert sp.feed(b"\x00\x00") == []
    with pytest.raises(h264.H264Error, match="no Annex B start code"):
        sp.feed(b"not video" * 200_000)
    sp = AccessUnitSplitter()
    assert sp.feed(b"junk") == []
    with pytest.raises(h264.H264Error, match="no Annex B start code"):
        sp.flush()


def test_a_raw_file_run_loads_neither_ffmpeg_nor_the_event_features(tmp_path):
    """The footprint contract of `kvs-edge run` with one raw-file camera in continuous mode: the appliance is built
    and its source delivers frames without PyAV/FFmpeg, numpy, the emulator or the events/schedule modules being
    imported (each costs memory a Pi needs: README "Measured"). A fresh interpreter; nothing is sent anywhere."""
    clip = tmp_path / "in.h264"
    clip.write_bytes(make_h264(10, 160, 120, 15, gop=5).annexb)
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent(f"""\
        stream: {{name: cam, region: us-east-1}}
        aws: {{credentials: static, access_key_id: AKIAKVSEDGETEST00001, secret_access_key: abc,
              endpoint_url: "http://127.0.0.1:9"}}
        source: {{type: file, uri: {clip}, fps: 15}}
        buffer: {{path: {tmp_path / "buf"}, max_bytes: 64MiB}}
        time: {{require_sync: false}}
        """))
    config.chmod(0o600)
    code = textwrap.dedent("""\
        import sys, threading
        from kvs_edge.commands.run import build_appliance, load_valid
        import kvs_edge.supervisor
        cfg = load_valid(sys.argv[1])
        app = build_appliance(cfg, sys.argv[1])
        got, done = [], threading.Event()
        def emit(frame):
            got.append(frame)
            if len(got) == 10:
                done.set()
        app.source.paced = False
        app.source.start(emit)
        done.wait(60)
        app.source.stop(5)
        assert len(got) == 10 and got[0].key, (len(got), app.source.error)
        print(app.source.width, app.source.height)
        print(" ".join(sorted(sys.modules)))
        """)
    out = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    size, modules = out.stdout.splitlines()
    assert size == "160 120"
    loaded = set(modules.split())
    assert "kvs_edge.appliance" in loaded and "kvs_edge.media.annexb_stream" in loaded
    unwanted = {"av", "numpy", "kvs_edge.emulator", "kvs_edge.event_service", "kvs_edge.upload_gate",
                "kvs_edge.schedule", "kvs_edge.service.control_socket", "kvs_edge.motion"}
    assert loaded & unwanted == set()
