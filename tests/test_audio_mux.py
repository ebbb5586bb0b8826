"""Audio in the pure cores: AAC config/ADTS helpers, the MKV audio track, the interleaver, the multi-track fragmenter
and AvMuxer (degrade to video only and back). Read back with ebmlite and PyAV (independent parsers); real H.264
(libx264) and real AAC (FFmpeg's encoder) through PyAV."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from kvs_edge.log import FragmentLog
from kvs_edge.media import aac, mkv
from kvs_edge.media.av_muxer import AvMuxer
from kvs_edge.media.fragmenter import AudioTrack, FragmentEnd, FragmentStart, Fragmenter, FrameWritten, \
    SessionStart
from kvs_edge.media.interleave import AUDIO, VIDEO, Interleaver
from kvs_edge.recorder import Recorder
from support.avgen import tone
from support.h264gen import make_h264, read_kvs_mkv

RATE = 48000


def encode_aac(seconds: float, rate: int = RATE, channels: int = 1) -> list[bytes]:
    """Raw AAC-LC frames from FFmpeg's encoder (a 440 Hz tone)."""
    enc = av.CodecContext.create("aac", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = rate, "mono" if channels == 1 else "stereo", "fltp", 64000
    enc.time_base = Fraction(1, rate)
    enc.open()
    out = []
    for k in range(0, int(seconds * rate), 1024):
        f = av.AudioFrame.from_ndarray(tone(1024, k, rate, channels), format="fltp", layout=enc.layout.name)
        f.sample_rate = rate
        out += [bytes(p) for p in enc.encode(f)]
    out += [bytes(p) for p in enc.encode(None)]
    return out


AAC_FRAMES = None


def aac_frames():
    global AAC_FRAMES
    if AAC_FRAMES is None:
        AAC_FRAMES = encode_aac(6.0)
    return AAC_FRAMES


TRACK = AudioTrack(aac.build_asc(RATE, 1), RATE, 1)


# ---------------------------------------------------------------- AudioSpecificConfig and ADTS


@given(hs.sampled_from(aac.SAMPLING_FREQUENCIES + (50000, 37800)), hs.integers(1, 7))
def test_asc_round_trip(rate, channels):
    asc = aac.build_asc(rate, channels)
    assert len(asc) == (2 if rate in aac.SAMPLING_FREQUENCIES else 5)
    assert aac.parse_asc(asc) == aac.AudioSpecificConfig(aac.AAC_LC, rate, channels)


def test_asc_ffmpeg_writes_is_accepted_and_others_are_not():
    enc = av.CodecContext.create("aac", "w")
    enc.sample_rate, enc.layout, enc.format = 44100, "stereo", "fltp"
    enc.open()
    ffmpeg_asc = bytes(enc.extradata)
    assert aac.parse_asc(ffmpeg_asc) == aac.AudioSpecificConfig(2, 44100, 2)
    for bad, why in [(b"", "0 bytes"), (b"\x12", "1 bytes"), (b"\x12\x10\x00", "3 bytes"),
                     (b"\x56\xe5\x00\x00\x00\x00\x00", "7 bytes"),  # a LATM StreamMuxConfig-sized blob
                     (b"\x00\x10", "object type 0"), (b"\x16\x88", "reserved sampling frequency index 13"),
                     (b"\x11\x80", "channel configuration 0")]:
        with pytest.raises(aac.AacError, match=why):
            aac.parse_asc(bad)


def test_adts_from_ffmpeg_splits_into_the_encoders_raw_frames():
    raw = aac_frames()[:50]
    asc = aac.build_asc(RATE, 1)
    buf = io.BytesIO()
    with av.open(buf, "w", format="adts") as out:  # FFmpeg's own ADTS muxer, not ours
        st = out.add_stream("aac", rate=RATE, layout="mono")
        st.codec_context.extradata = aac.build_asc(RATE, 1)
        for i, r in enumerate(raw):
            p = av.Packet(r)
            p.stream, p.pts, p.dts, p.time_base = st, i * 1024, i * 1024, Fraction(1, RATE)
            out.mux(p)
    got_asc, frames = aac.split_adts(buf.getvalue())
    assert got_asc == asc and frames == raw
    # and our own header makes the same framing
    assert b"".join(aac.adts_header(len(r), asc) + r for r in raw) == buf.getvalue()
    with pytest.raises(aac.AacError, match="claims"):
        aac.split_adts(buf.getvalue()[:-3])
    with pytest.raises(aac.AacError, match="sync"):
        aac.split_adts(b"\x00" * 20)


# ---------------------------------------------------------------- the MKV audio track


def test_audio_track_entry_parses_with_ebmlite():
    enc = make_h264(10, 160, 120, fps=10, gop=10)
    f = Fragmenter(1000, audio=TRACK)
    ev = f.push(enc.units[0].data, 1000, True)
    header = next(e for e in ev if isinstance(e, SessionStart)).header
    s = read_kvs_mkv(header + next(e for e in ev if isinstance(e, FragmentStart)).data)
    assert s.tracks == 2
    t = s.track2
    assert (t["TrackNumber"], t["TrackType"], t["CodecID"], t["CodecPrivate"]) == (2, 2, "A_AAC", TRACK.asc)
    assert (t["SamplingFrequency"], t["Channels"]) == (48000.0, 1)


def test_a_config_kvs_playback_refuses_never_makes_a_track():
    for asc in (b"", b"\x12", b"\x12\x10\x00\x00"):
        with pytest.raises(ValueError):
            Fragmenter(1000, audio=AudioTrack(asc, RATE, 1))
    with pytest.raises(ValueError, match="48000 Hz x 1, the track 44100 Hz x 1"):
        mkv.audio_track_entry(aac.build_asc(48000, 1), 44100, 1)


# ---------------------------------------------------------------- interleaver


def test_interleaver_orders_two_streams_and_waits_for_the_slower():
    il = Interleaver(max_wait_ms=500)
    assert il.push(VIDEO, 0, "v0") == []  # audio may still bring something earlier
    assert il.push(VIDEO, 66, "v1") == []
    assert il.push(AUDIO, 10, "a0") == [(VIDEO, 0, "v0"), (AUDIO, 10, "a0")]
    assert il.push(AUDIO, 66, "a1") == [(VIDEO, 66, "v1"), (AUDIO, 66, "a1")]  # video first on a tie
    assert il.push(AUDIO, 40, "late") == [] and il.late == [0, 1]


def test_interleaver_does_not_hold_video_for_quiet_audio():
    il = Interleaver(max_wait_ms=500)
    out = []
    for t in range(0, 2000, 100):
        out += il.push(VIDEO, t, t)
    assert [ts for _, ts, _ in out] == list(range(0, 1500, 100))  # each released once 500 ms newer video exists
    assert [ts for _, ts, _ in il.flush()] == list(range(1500, 2000, 100))


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.tuples(hs.sampled_from([VIDEO, AUDIO]), hs.integers(0, 40)), max_size=200))
def test_interleaver_output_is_sorted_and_complete(steps):
    il = Interleaver(max_wait_ms=10**9)
    t = [0, 0]
    out, pushed = [], 0
    for kind, dt in steps:
        t[kind] += dt
        out += il.push(kind, t[kind], None)
        pushed += 1
    out += il.flush()
    assert len(out) == pushed and il.late == [0, 0]
    assert [ts for _, ts, _ in out] == sorted(ts for _, ts, _ in out)


# ---------------------------------------------------------------- fragmenter and AvMuxer with audio


def run_muxer(video_units, audio, *, fps=15, audio_offset_ms=0, audio_jitter=None, gone=None, target_ms=1000):
    """Feed real H.264 at `fps` and AAC frames (every 1024 samples) through an AvMuxer in arrival order: audio lags
    video by up to `audio_jitter` ms. gone=(start_ms, end_ms): no audio in that span (a microphone unplugged)."""
    m = AvMuxer(target_ms, lambda: TRACK, max_wait_ms=300)
    items = [(i * 1000 // fps, VIDEO, u) for i, u in enumerate(video_units)]
    arrived = -10**9
    for j, a in enumerate(audio):
        ts = audio_offset_ms + j * 1024 * 1000 // RATE
        if gone and gone[0] <= ts < gone[1]:
            continue
        lag = audio_jitter[j % len(audio_jitter)] if audio_jitter else 0
        arrived = max(arrived, ts + lag)  # a stream arrives in its own order, each item late by its lag
        items.append((arrived, AUDIO, (ts, a)))
    items.sort(key=lambda x: (x[0], x[1]))
    events = []
    for _, kind, it in items:
        if kind == VIDEO:
            events += m.push_video(it.data, _, it.key)
        else:
            events += m.push_audio(it[1], it[0])
    events += m.close()
    return m, events


def sessions_of(events) -> list[bytes]:
    out, cur = [], None
    for e in events:
        if isinstance(e, SessionStart):
            if cur is not None:
                out.append(bytes(cur))
            cur = bytearray(e.header)
        elif isinstance(e, (FragmentStart, FrameWritten)):
            cur += e.data
        elif isinstance(e, FragmentEnd):
            pass
    if cur is not None:
        out.append(bytes(cur + mkv.end_of_fragment_tag()))
    return [s if s.endswith(mkv.end_of_fragment_tag()) else s + mkv.end_of_fragment_tag() for s in out]


def check_kvs_rules(session: bytes, with_audio: bool):
    s = read_kvs_mkv(session)
    assert s.tracks == (2 if with_audio else 1)
    for c in s.clusters:
        assert c.blocks[0].track == 1 and c.blocks[0].key  # every fragment starts at a video key frame
        times = [c.timecode + b.rel_timecode for b in c.blocks]
        assert times == sorted(times)  # blocks interleaved in timestamp order
        if with_audio:  # KVS 4011: every track of the header has a frame in every fragment
            assert any(b.track == 2 for b in c.blocks)
        assert all(b.key for b in c.blocks if b.track == 2)
    return s


def test_fragmenter_writes_both_tracks_pyav_plays_them():
    enc = make_h264(60, 160, 120, fps=15, gop=15)
    audio = aac_frames()[:180]  # ~3.8 s
    m, events = run_muxer(enc.units, audio, audio_jitter=[0, 40, 120, 10])
    (session,) = sessions_of(events)
    s = check_kvs_rules(session, with_audio=True)
    assert len(s.clusters) == 4
    with av.open(io.BytesIO(session), format="matroska") as c:
        a = c.streams.audio[0]
        assert (a.codec_context.name, a.codec_context.sample_rate) == ("aac", RATE)
        assert bytes(a.codec_context.extradata) == TRACK.asc
        pkts, samples = [], 0
        for p in c.demux():
            if p.size:
                pkts.append((p.stream.type, float(p.pts * p.time_base * 1000), bytes(p)))
                if p.stream.type == "audio":
                    samples += sum(f.samples for f in p.decode())
    got_audio = [(ms, d) for kind, ms, d in pkts if kind == "audio"]
    last_video_ms = 59 * 1000 // 15
    expected = [(j * 1024 * 1000 // RATE, d) for j, d in enumerate(audio) if j * 1024 * 1000 // RATE <= 4000]
    assert [d for _, d in got_audio] == [d for _, d in expected][:len(got_audio)]
    assert len(got_audio) >= sum(1 for ms, _ in expected if ms <= last_video_ms)
    assert all(abs(g[0] - e[0]) < 1 for g, e in zip(got_audio, expected))
    assert samples >= (len(got_audio) - 1) * 1024 and m.fragmenter.stats.audio_dropped == 0


def test_audio_that_goes_away_leaves_the_header_and_comes_back():
    enc = make_h264(150, 160, 120, fps=15, gop=15)  # 10 s
    audio = encode_aac(10.0)
    m, events = run_muxer(enc.units, audio, gone=(3000, 6000))
    sessions = sessions_of(events)
    assert [read_kvs_mkv(s).tracks for s in sessions] == [2, 1, 2]
    for s in sessions:
        check_kvs_rules(s, with_audio=read_kvs_mkv(s).tracks == 2)
    notices = [e.message for e in events if getattr(e, "kind", "") == "audio_changed"]
    assert len(notices) == 2 and "video only" in notices[0] and "48000 Hz" in notices[1]
    assert m.fragmenter.audio == TRACK and not m.audio_active  # closed: no session; the track stays declared
    frames = [e for e in events if isinstance(e, FrameWritten) and e.track == 1]
    assert len(frames) == 150  # the video never stopped


@settings(max_examples=25, deadline=None)
@given(offset=hs.integers(-300, 600), jitter=hs.lists(hs.integers(0, 250), min_size=1, max_size=8),
       gop=hs.sampled_from([5, 15, 30]))
def test_any_arrival_order_keeps_the_kvs_rules(offset, jitter, gop):
    enc = _video(gop)
    m, events = run_muxer(enc.units, aac_frames()[:150], audio_offset_ms=offset, audio_jitter=jitter)
    for s in sessions_of(events):
        check_kvs_rules(s, with_audio=read_kvs_mkv(s).tracks == 2)
    assert sum(1 for e in events if isinstance(e, FrameWritten) and e.track == 1) == 60


_VIDEO = {}


def _video(gop):
    if gop not in _VIDEO:
        _VIDEO[gop] = make_h264(60, 96, 64, fps=15, gop=gop)
    return _VIDEO[gop]


def test_the_fragment_log_carries_audio_with_its_video(tmp_path):
    enc = make_h264(45, 160, 120, fps=15, gop=15)
    _, events = run_muxer(enc.units, aac_frames()[:140])
    log = FragmentLog(str(tmp_path / "log"), 64 << 20, sync_interval_s=3600)
    rec = Recorder(log)
    rec.apply(events)
    assert rec.frames == 45 and rec.audio_frames > 100
    info = log.next_fragment(None, 1.0)
    body = b""
    seqs = []
    while info is not None:
        seqs.append(info.seq)
        data, done = log.read(info.seq, 0, 1 << 24, 1.0)
        body += data
        info = log.next_fragment(info.seq, 0.1)
    session = log.header(log.info(seqs[0]).header_id) + body + mkv.end_of_fragment_tag()
    s = check_kvs_rules(session, with_audio=True)
    assert sum(1 for c in s.clusters for b in c.blocks if b.track == 2) == rec.audio_frames
    log.close()
