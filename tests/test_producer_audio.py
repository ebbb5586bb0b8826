"""Producer with an audio track (put_audio): H.264 and AAC from a real MPEG-TS file (libx264 and FFmpeg's AAC encoder,
ADTS-framed as TS carries it) into the emulator; what is archived is read back with PyAV (FFmpeg's Matroska demuxer):
every AAC frame put is there, the track's CodecPrivate is the AudioSpecificConfig, and the input's A/V offset kept."""

from __future__ import annotations

import time

import av
import pytest

from kvs_edge import AudioFormat, FrameError, Producer, ProducerError
from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from kvs_edge.media.aac import is_adts
from support.avgen import make_av_file

CREDS = (DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY)
OFFSET_MS = 120  # the input's audio starts this long after its video


def _packets(path):
    """(kind, epoch-relative ms, bytes) in the file's demux order: H.264 Annex B access units, ADTS AAC frames."""
    out = []
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        for pkt in c.demux(v, a):
            if pkt.size == 0 or pkt.pts is None:
                continue
            out.append(("v" if pkt.stream is v else "a", int(round(pkt.pts * pkt.time_base * 1000)), bytes(pkt)))
    return out


@pytest.mark.timeout(120)
def test_put_audio_archives_every_aac_frame_with_its_config_and_offset(emulator, tmp_path):
    src = tmp_path / "in.ts"
    make_av_file(src, seconds=4.0, fps=15, gop=15, rate=48000, channels=1, audio_start_ms=OFFSET_MS)
    packets = _packets(src)
    audio_in = [p for p in packets if p[0] == "a"]
    assert audio_in and all(is_adts(p[2]) for p in audio_in)  # TS carries ADTS: put_audio strips it
    emulator.create_stream("cam")
    base_ms = int(time.time() * 1000) - 30_000
    with Producer("cam", region="us-east-1", credentials=CREDS, endpoint_url=emulator.url, fragment_seconds=1.0,
                  audio=AudioFormat(48000, 1)) as p:
        for kind, ms, data in packets:
            if kind == "v":
                p.put_frame(data, timestamp_ns=(base_ms + ms) * 1_000_000)
            else:
                p.put_audio(data, timestamp_ns=(base_ms + ms) * 1_000_000)
            time.sleep(0.005)  # a live feed: put_* never wait, and a full queue drops (its bound is 240 items)
        assert p.flush(timeout=30)
        assert p.stats.audio_frames == len(audio_in) and p.stats.audio_frames_dropped == 0
    first_v = min(ms for k, ms, _ in packets if k == "v")
    first_a = min(ms for k, ms, _ in audio_in)
    got_audio, video_ts, audio_ts, privates = 0, [], [], set()
    for f in emulator.archive_files("cam"):
        with av.open(str(f)) as c:
            assert len(c.streams.audio) == 1, f"{f.name}: no audio track"
            privates.add(bytes(c.streams.audio[0].codec_context.extradata or b""))
            for pkt in c.demux():
                if pkt.size == 0 or pkt.pts is None:
                    continue
                ts = int(round(pkt.pts * pkt.time_base * 1000))
                if pkt.stream.type == "audio":
                    got_audio += 1
                    audio_ts.append(ts)
                    assert not is_adts(bytes(pkt))  # raw AAC in the MKV, as KVS plays it
                else:
                    video_ts.append(ts)
    assert got_audio == len(audio_in)
    assert privates == {AudioFormat(48000, 1).track().asc}
    # the archive's clock is the producer timestamps (epoch ms): the offset between the tracks is the input's
    assert first_a - first_v >= OFFSET_MS - 30  # the input has the offset (minus the encoder's priming)
    assert abs((min(audio_ts) - min(video_ts)) - (first_a - first_v)) <= 10


def test_put_audio_misuse_is_one_clear_error(emulator):
    emulator.create_stream("cam")
    with Producer("cam", region="us-east-1", credentials=CREDS, endpoint_url=emulator.url) as p:
        with pytest.raises(ProducerError, match="audio=AudioFormat"):
            p.put_audio(b"\x21\x10")
    with pytest.raises(ProducerError, match="make them agree"):
        Producer("cam", region="us-east-1", credentials=CREDS, endpoint_url=emulator.url,
                 audio=AudioFormat(44100, 1, asc=AudioFormat(48000, 1).track().asc))
    with Producer("cam", region="us-east-1", credentials=CREDS, endpoint_url=emulator.url,
                  audio=AudioFormat(48000, 1)) as p:
        with pytest.raises(FrameError, match="empty"):
            p.put_audio(b"")
        now = time.time_ns()
        p.put_audio(b"\x21\x10\x04", timestamp_ns=now)
        with pytest.raises(FrameError, match="not after"):
            p.put_audio(b"\x21\x10\x04", timestamp_ns=now)
        stereo_adts = bytes([0xFF, 0xF1, 0x4C, 0x80, 0x01, 0x3F, 0xFC]) + b"\x00" * 2  # 48 kHz, 2 channels
        with pytest.raises(FrameError, match="configuration"):
            p.put_audio(stereo_adts)
