"""Issue 14, Show 1 and the file part of Show 4: `kvs-edge upload` of files with H.264 + audio into the emulator.

The archive the emulator keeps (what reached the endpoint) is read back with PyAV: both tracks, the AAC config KVS
playback accepts (2 or 5 bytes), every AAC frame of the input bit for bit, the input's A/V offset kept.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import pytest

from kvs_edge.media import aac
from support.appliance import config_dict, write_config
from support.avgen import make_av_file, read_tracks, sound_file

ROOT = Path(__file__).resolve().parents[1]


def upload(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "kvs_edge", "upload", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


def archive_bytes(emu, stream) -> bytes:
    files = emu.archive_files(stream)
    assert len(files) == 1, files  # one session
    return Path(files[0]).read_bytes()


def aac_packets(src) -> list[tuple[float, bytes]]:
    """(ms, bytes) of every audio packet of a file (path) or an MKV (bytes), read with PyAV."""
    import io

    with av.open(io.BytesIO(src) if isinstance(src, bytes) else str(src)) as c:
        a = c.streams.audio[0]
        return [(float(p.pts * p.time_base * 1000), bytes(p)) for p in c.demux(a) if p.size]


@pytest.fixture
def cfg(emulator, tmp_path):
    return write_config(tmp_path / "c.yaml", config_dict(emulator, tmp_path / "buf"))


@pytest.mark.timeout(150)
@pytest.mark.parametrize("audio_start_ms", [0, 200])
def test_upload_mp4_with_aac_keeps_every_frame_and_the_offset(emulator, cfg, tmp_path, audio_start_ms):
    src = tmp_path / "in.mp4"
    make_av_file(src, seconds=4, audio_start_ms=audio_start_ms)
    stream = f"cam{audio_start_ms}"
    emulator.create_stream(stream)
    r = upload(src, "--config", cfg, "--stream", stream)
    assert r.returncode == 0, r.stderr
    assert "audio frames" in r.stdout

    out = archive_bytes(emulator, stream)
    got = read_tracks(out)
    assert got["video_codec"] == "h264" and got["audio_codec"] == "aac"
    assert len(got["audio_extradata"]) in (2, 5)
    assert aac.parse_asc(got["audio_extradata"]) == aac.AudioSpecificConfig(2, 48000, 1)

    inp = read_tracks(src)
    v0 = inp["video_ms"][0]
    # every AAC frame from the first video frame on (earlier ones -- the encoder's priming frame -- have no
    # fragment to go in: fragments start at a video key frame), bit for bit, in order
    want = [(ms - v0, data) for ms, data in aac_packets(src) if ms >= v0]
    have = [(ms - got["video_ms"][0], data) for ms, data in aac_packets(out)]
    assert [d for _, d in have] == [d for _, d in want]
    # ... and they cover every sample of the input's audio
    assert len(have) * aac.SAMPLES_PER_FRAME >= round(4 * 48000 * 1000 - audio_start_ms * 48000) // 1000
    # the first audio and video timestamps keep the input's offset within 10 ms (ms rounding: within 1 ms)
    assert abs(have[0][0] - want[0][0]) <= 10
    assert max(abs(h[0] - w[0]) for h, w in zip(have, want)) <= 1.0 + 1e-6
    assert len(got["video_ms"]) == len(inp["video_ms"])


@pytest.mark.timeout(150)
@pytest.mark.parametrize("name, audio, how", [("adts.ts", "aac", "ADTS stripped"),
                                              ("mp2.mkv", "mp2", "transcoded"),
                                              ("pcm.mkv", "pcm_s16le", "transcoded")])
def test_upload_other_audio_becomes_raw_aac(emulator, cfg, tmp_path, name, audio, how):
    src = tmp_path / name
    make_av_file(src, seconds=3, audio=audio)
    stream = name.replace(".", "-")
    emulator.create_stream(stream)
    r = upload(src, "--config", cfg, "--stream", stream)
    assert r.returncode == 0, r.stderr
    got = read_tracks(archive_bytes(emulator, stream))
    assert got["audio_codec"] == "aac" and aac.valid_asc(got["audio_extradata"])
    assert len(got["audio_extradata"]) == 2  # the plain config, never LATM or ADTS
    packets = aac_packets(archive_bytes(emulator, stream))
    assert not any(aac.is_adts(d) for _, d in packets)
    # the sound is all there: decoded samples cover the 3 s (less what precedes the first video frame)
    assert got["audio_samples"] >= 3 * 48000 - 2 * aac.SAMPLES_PER_FRAME
    assert abs(got["audio_ms"][0] - got["video_ms"][0]) <= 25  # the first frame at most one AAC frame after


@pytest.mark.timeout(150)
def test_undecodable_audio_is_one_line_and_the_video_goes(emulator, cfg, tmp_path):
    src = tmp_path / "noise.mkv"
    make_av_file(src, seconds=3, audio="mp2", garble_audio=True)
    emulator.create_stream("noise")
    r = upload(src, "--config", cfg, "--stream", "noise")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "audio" in lines[0] and "video only" in lines[0], r.stderr
    assert "45 frames" in r.stdout
    got = read_tracks(archive_bytes(emulator, "noise"))
    assert len(got["video_ms"]) == 45


# ---------------------------------------------------------------- kvs-edge mux VIDEO --audio AUDIO


def mux(*args):
    return subprocess.run([sys.executable, "-m", "kvs_edge", "mux", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.mark.parametrize("name, codec", [("s.adts", "aac"), ("s.wav", "pcm_s16le")])
def test_mux_with_audio(tmp_path, name, codec):
    from support.h264gen import make_h264

    enc = make_h264(90, 160, 120, fps=30, gop=30)
    video = tmp_path / "v.h264"
    video.write_bytes(enc.annexb)
    sound = sound_file(tmp_path / name, codec)
    out = tmp_path / "o.mkv"
    r = mux(video, "-o", out, "--fps", 30, "--start-ms", 1_700_000_000_000, "--audio", sound)
    assert r.returncode == 0, r.stderr
    assert "audio frames" in r.stdout
    got = read_tracks(out.read_bytes())
    assert got["audio_codec"] == "aac" and len(got["audio_extradata"]) == 2
    assert len(got["video_ms"]) == 90
    assert got["audio_ms"][0] - got["video_ms"][0] < 22  # the sound starts with the picture
    assert got["audio_samples"] >= 3 * 48000 - 2 * aac.SAMPLES_PER_FRAME  # all of it, to the last picture and past


def test_mux_audio_errors_are_one_line(tmp_path):
    from support.h264gen import make_h264

    video = tmp_path / "v.h264"
    video.write_bytes(make_h264(30, 160, 120, fps=30).annexb)
    bad = tmp_path / "x.wav"
    bad.write_bytes(b"RIFF" + b"\x00" * 100)
    for audio in (bad, tmp_path / "missing.aac"):
        r = mux(video, "-o", tmp_path / "o.mkv", "--audio", audio)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--audio" in r.stderr, r.stderr
        assert not (tmp_path / "o.mkv").exists()
