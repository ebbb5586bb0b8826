"""Issue 14 at the emulator's read side (h13's packaging checks, reused): the sound plays back in a GetClip MP4 and in
HLS (FFmpeg's demuxers read them), and an audio track whose config playback refuses gets the service's
InvalidCodecPrivateDataException (KVS accepts such a stream at ingest and refuses it only when packaging)."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from kvs_edge.media import mkv
from kvs_edge.media.fragmenter import SessionStart
from support.appliance import config_dict, write_config
from support.avgen import make_av_file
from support.h264gen import make_h264, read_kvs_mkv
from support.kvs_client import PutMediaClient
from test_audio_mux import RATE, aac_frames, run_muxer, sessions_of
from test_emulator_hls import on_demand
from test_read_api import data_client

ROOT = Path(__file__).resolve().parents[1]


def clip(emu, stream):
    archive = emu.archive(stream)
    c = data_client(emu, stream, "GET_CLIP")
    return c, lambda: c.get_clip(StreamName=stream, ClipFragmentSelector={
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": archive[0].producer_ts_ms / 1000,
                           "EndTimestamp": archive[-1].producer_ts_ms / 1000}})


@pytest.mark.timeout(150)
def test_clip_and_hls_play_the_sound(emulator, tmp_path):
    src = tmp_path / "in.mp4"
    make_av_file(src, seconds=4)
    emulator.create_stream("av")
    cfg = write_config(tmp_path / "c.yaml", config_dict(emulator, tmp_path / "buf", stream="av"))
    r = subprocess.run([sys.executable, "-m", "kvs_edge", "upload", str(src), "--config", str(cfg)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    stored = [b.payload for f in emulator.archive_files("av") for c in read_kvs_mkv(f.read_bytes()).clusters
              for b in c.blocks if b.track == 2]

    _, get = clip(emulator, "av")
    mp4 = get()["Payload"].read()
    with av.open(io.BytesIO(mp4)) as m:
        a = m.streams.audio[0]
        assert a.codec_context.name == "aac" and a.codec_context.sample_rate == 48000
        packets = [bytes(p) for p in m.demux(a) if p.size]
    assert packets == stored  # remuxed, not re-encoded: every stored AAC frame, byte for byte

    with av.open(on_demand(emulator, "av"), timeout=30) as h:
        assert [s.type for s in h.streams if s.type in ("video", "audio")].count("audio") == 1
        a = h.streams.audio[0]
        samples = sum(f.samples for p in h.demux(a) if p.size for f in p.decode())
    assert samples >= (len(stored) - 2) * 1024  # the HLS segments carry the sound too


def session_with_audio_cpd(asc: bytes) -> bytes:
    """A real two-track session whose audio TrackEntry carries `asc` (written by hand: our writer refuses to)."""
    enc = make_h264(45, 96, 64, fps=15, gop=15)
    _, events = run_muxer(enc.units, aac_frames()[:130])
    start = next(e for e in events if isinstance(e, SessionStart))
    (good,) = sessions_of(events)
    entry = mkv.element(mkv.TRACK_ENTRY, b"".join((
        mkv.uint_element(mkv.TRACK_NUMBER, 2), mkv.uint_element(mkv.TRACK_UID, 2), mkv.uint_element(mkv.TRACK_TYPE, 2),
        mkv.string_element(mkv.CODEC_ID, "A_AAC"),
        mkv.element(mkv.AUDIO, mkv.float_element(mkv.SAMPLING_FREQUENCY, RATE) + mkv.uint_element(mkv.CHANNELS, 1)),
        mkv.element(mkv.CODEC_PRIVATE, asc))))
    return mkv.session_header(width=96, height=64, codec_private=start.codec_private, audio=entry) + \
        good[len(start.header):]


@pytest.mark.timeout(60)
def test_an_audio_config_playback_refuses_is_taken_at_ingest_and_refused_at_playback(emulator):
    emulator.create_stream("latm", retention_hours=24)
    data = session_with_audio_cpd(b"\x12\x10\x00\x00\x00\x00\x00")  # 7 bytes: what a LATM-wrapped input carried
    with PutMediaClient(emulator.url, "latm", timecode_type="RELATIVE", producer_start=time.time() - 60) as pm:
        pm.send(data)
        pm.finish()
        acks = pm.read_until_end()
    assert [a["EventType"] for a in acks].count("PERSISTED") == 3  # accepted at ingest, as KVS does
    c, get = clip(emulator, "latm")
    with pytest.raises(c.exceptions.InvalidCodecPrivateDataException, match="2 or 5"):
        get()
