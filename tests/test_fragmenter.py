"""The fragmenter fed with real libx264 frames; its output read back with ebmlite and PyAV."""

from __future__ import annotations

import io
from functools import lru_cache

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from kvs_edge.media.fragmenter import (Fragmenter, FragmentEnd, FragmentStart, FrameWritten, Notice, SessionStart)
from support.h264gen import annexb_nals, avcc_nals, decode_pictures, make_h264, read_kvs_mkv


@lru_cache(maxsize=None)
def clip(frames=90, width=160, height=120, fps=30, gop=15, **kw):
    return make_h264(frames, width, height, fps, gop=gop, **kw)


def run(frag: Fragmenter, items) -> list:
    events = []
    for data, ts, key in items:
        events.extend(frag.push(data, ts, key))
    events.extend(frag.close())
    return events


def sessions_of(events) -> list[bytes]:
    """The MKV bytes of each session, as an uploader would send them."""
    out: list[bytearray] = []
    for e in events:
        if isinstance(e, SessionStart):
            out.append(bytearray(e.header))
        elif isinstance(e, (FragmentStart, FrameWritten)):
            out[-1] += e.data
    return [bytes(s) for s in out]


def check_order(events) -> None:
    """Contract: FragmentEnd before every next FragmentStart/SessionStart; close() ends the last fragment."""
    open_frag = False
    for e in events:
        if isinstance(e, (FragmentStart, SessionStart)):
            assert not open_frag, f"{type(e).__name__} while a fragment is open"
        if isinstance(e, FragmentStart):
            open_frag = True
        elif isinstance(e, FragmentEnd):
            assert open_frag
            open_frag = False
        elif isinstance(e, FrameWritten):
            assert open_frag
    assert not open_frag


def check_kvs_rules(session: bytes, max_ms: int = 20000) -> list[tuple[int, bool]]:
    """ebmlite view: each cluster starts with a key frame, timecodes strictly increase, blocks fit int16 and max_ms."""
    s = read_kvs_mkv(session)
    assert s.segment_unknown_size and all(c.unknown_size for c in s.clusters)
    frames, last = [], None
    for c in s.clusters:
        assert c.blocks and c.blocks[0].key and c.blocks[0].rel_timecode == 0
        for b in c.blocks:
            assert 0 <= b.rel_timecode < max_ms
            t = c.timecode + b.rel_timecode
            assert last is None or t > last
            last = t
            frames.append((t, b.key))
    return frames


def stamps(n, fps=30, start=1_000_000):
    return [start + i * 1000 // fps for i in range(n)]


def test_fragments_cut_at_key_frames_once_the_target_is_reached():
    enc = clip()  # 3 s, key frame every 0.5 s
    ts = stamps(len(enc.units))
    ev = run(Fragmenter(target_ms=2000), [(u.data, t, u.key) for u, t in zip(enc.units, ts)])
    check_order(ev)
    (session,) = sessions_of(ev)
    s = read_kvs_mkv(session)
    assert [c.timecode for c in s.clusters] == [ts[0], ts[60]]  # key frames at 0, 0.5, ... ; cut at the one >= 2 s
    assert [len(c.blocks) for c in s.clusters] == [60, 30]
    ends = [e for e in ev if isinstance(e, FragmentEnd)]
    assert [(e.first_ms, e.last_ms, e.frames, e.forced) for e in ends] == [(ts[0], ts[59], 60, False),
                                                                         (ts[60], ts[89], 30, False)]
    assert check_kvs_rules(session) == [(t, u.key) for t, u in zip(ts, enc.units)]
    # payloads: every NAL of the access unit (SPS/PPS too), in AVCC
    blocks = [b for c in s.clusters for b in c.blocks]
    assert [avcc_nals(b.payload) for b in blocks] == [annexb_nals(u.data) for u in enc.units]
    # PyAV plays it: same pictures as the original
    ours, original = decode_pictures(session, "matroska"), decode_pictures(enc.annexb)
    assert len(ours) == len(original) == len(enc.units)  # counts first: zip() stops at the shorter list
    assert all((a == b).all() for a, b in zip(ours, original))


def test_no_key_frame_in_time_forces_a_cut_and_drops_until_the_next_key_frame():
    enc = clip(frames=120, gop=90)  # key frames at 0 s and 3 s
    ts = stamps(120)
    frag = Fragmenter(target_ms=1000, max_ms=2000)
    ev = run(frag, [(u.data, t, u.key) for u, t in zip(enc.units, ts)])
    check_order(ev)
    ends = [e for e in ev if isinstance(e, FragmentEnd)]
    assert ends[0].forced and ends[0].first_ms == ts[0] and ends[0].last_ms < ts[0] + 2000
    assert not ends[1].forced and ends[1].first_ms == ts[90]
    notices = [e for e in ev if isinstance(e, Notice)]
    assert [n.kind for n in notices] == ["forced_cut", "dropped_after_cut"]
    assert "key frame" in notices[0].message
    written = check_kvs_rules(sessions_of(ev)[0], max_ms=2000)
    assert len(written) == 60 + 30 and written[60] == (ts[90], True)
    assert frag.stats.forced_cuts == 1 and frag.stats.dropped_after_cut == 30


def test_limits_cannot_exceed_the_int16_block_timecode():
    with pytest.raises(ValueError):
        Fragmenter(target_ms=2000, max_ms=40000)
    with pytest.raises(ValueError):
        Fragmenter(target_ms=3000, max_ms=2000)


def test_frames_before_the_first_key_frame_with_sps_pps_are_dropped_and_counted():
    enc = clip()
    ts = stamps(90)
    frag = Fragmenter(target_ms=2000)
    ev = run(frag, [(u.data, t, u.key) for u, t in zip(enc.units[5:], ts[5:])])
    assert frag.stats.dropped_before_key == 10 and frag.stats.frames_written == 75
    (n,) = [e for e in ev if isinstance(e, Notice)]
    assert n.kind == "dropped_before_key" and "10 frames" in n.message
    assert check_kvs_rules(sessions_of(ev)[0])[0] == (ts[15], True)


def test_sps_pps_only_on_the_first_idr():
    enc = clip(repeat_headers=False)
    assert sum(any(n[0] & 0x1F == 7 for n in annexb_nals(u.data)) for u in enc.units) == 1
    ts = stamps(90)
    frag = Fragmenter(target_ms=1000)
    ev = run(frag, [(u.data, t, u.key) for u, t in zip(enc.units, ts)])
    (session,) = sessions_of(ev)
    assert len(read_kvs_mkv(session).clusters) == 3
    assert len(decode_pictures(session, "matroska")) == 90
    # started without the first IDR: no SPS/PPS ever, so nothing is written
    frag2 = Fragmenter(target_ms=2000)
    ev2 = run(frag2, [(u.data, t, u.key) for u, t in zip(enc.units[1:], ts[1:])])
    assert sessions_of(ev2) == [] and frag2.stats.dropped_before_key == 89


def test_parameter_sets_delivered_on_their_own_are_used_for_the_next_key_frame():
    enc = clip()
    first = annexb_nals(enc.units[0].data)
    headers = b"".join(b"\x00\x00\x00\x01" + n for n in first if n[0] & 0x1F in (7, 8))
    idr = b"".join(b"\x00\x00\x00\x01" + n for n in first if n[0] & 0x1F not in (7, 8))
    items = [(headers, 999_999, True), (idr, 1_000_000, True)]
    items += [(u.data, t, u.key) for u, t in zip(enc.units[1:], stamps(90)[1:])]
    ev = run(Fragmenter(target_ms=2000), items)
    (session,) = sessions_of(ev)
    assert len(decode_pictures(session, "matroska")) == 90


def test_sps_change_starts_a_new_session():
    a, b = clip(frames=30), clip(frames=30, width=192, height=108)
    items = [(u.data, t, u.key) for u, t in zip(a.units + b.units, stamps(60))]
    frag = Fragmenter(target_ms=500)
    ev = run(frag, items)
    check_order(ev)
    starts = [e for e in ev if isinstance(e, SessionStart)]
    assert [(s.width, s.height) for s in starts] == [(160, 120), (192, 108)]
    i = ev.index(starts[1])
    assert isinstance(ev[i - 2], FragmentEnd) and ev[i - 1].kind == "parameters_changed"
    s1, s2 = sessions_of(ev)
    assert [p.shape for p in decode_pictures(s1, "matroska")] == [(120, 160)] * 30
    assert [p.shape for p in decode_pictures(s2, "matroska")] == [(108, 192)] * 30
    assert read_kvs_mkv(s2).track["CodecPrivate"] == starts[1].codec_private
    assert frag.stats.sessions == 2 and frag.stats.parameter_changes == 1


def test_timestamp_going_back_ends_the_session_and_restarts_at_a_key_frame():
    enc = clip()
    ts = stamps(90)
    ts[40:] = [t - 5000 for t in ts[40:]]  # clock step back inside a GOP (key frames at 0, 15, 30, 45, ...)
    frag = Fragmenter(target_ms=500)
    ev = run(frag, [(u.data, t, u.key) for u, t in zip(enc.units, ts)])
    check_order(ev)
    s1, s2 = sessions_of(ev)
    assert [t for t, _ in check_kvs_rules(s1)] == ts[:40]
    assert [t for t, _ in check_kvs_rules(s2)] == ts[45:]
    assert frag.stats.timestamp_resets == 1 and frag.stats.dropped_after_cut == 5
    ends = [e for e in ev if isinstance(e, FragmentEnd)]
    assert [e.forced for e in ends] == [False, False, True, False, False, False]
    assert (ends[2].first_ms, ends[2].last_ms) == (ts[30], ts[39])
    assert "not after" in next(e for e in ev if isinstance(e, Notice) and e.kind == "timestamp").message


def test_equal_timestamp_on_a_key_frame_starts_a_new_session_at_once():
    enc = clip()
    ts = stamps(90)
    ts[45] = ts[44]
    ev = run(Fragmenter(target_ms=500), [(u.data, t, u.key) for u, t in zip(enc.units, ts)])
    s1, s2 = sessions_of(ev)
    assert len(check_kvs_rules(s1)) == 45 and len(check_kvs_rules(s2)) == 45


@settings(max_examples=40, deadline=None)
@given(hs.lists(hs.integers(-3000, 3000), min_size=60, max_size=60), hs.integers(0, 2500), hs.integers(500, 5000))
def test_any_timestamp_sequence_gives_streams_kvs_accepts(deltas, target, max_ms):
    """Whatever the clock does, each session has strictly increasing timecodes, key frames first, in-range blocks."""
    enc = clip(frames=60)
    target = min(target, max_ms)
    t, items = 10_000_000, []
    for u, d in zip(enc.units, deltas):
        t += d
        items.append((u.data, t, u.key))
    frag = Fragmenter(target_ms=target, max_ms=max_ms)
    ev = run(frag, items)
    check_order(ev)
    written = sum(len(check_kvs_rules(s, max_ms)) for s in sessions_of(ev))
    st = frag.stats
    assert written == st.frames_written == st.frames_in - st.dropped == 60 - st.dropped


def test_b_frames_are_reported_once_and_never_written():
    enc = make_h264(36, 160, 120, profile="main", bframes=2, gop=12)
    with av.open(io.BytesIO(enc.annexb), format="h264") as c:
        b_count = sum(int(f.pict_type) == 3 for f in c.decode(video=0))  # AV_PICTURE_TYPE_B, by libavcodec
    assert b_count > 0
    frag = Fragmenter(target_ms=400)
    items = [(u.data, 1_000_000 + u.pts * 33, u.key) for u in enc.units]  # decode order, PTS timestamps
    ev = run(frag, items)
    notices = [e for e in ev if isinstance(e, Notice)]
    assert [n.kind for n in notices] == ["b_frames"] and "B-frames" in notices[0].message
    assert frag.stats.dropped_b_frames == b_count
    (session,) = sessions_of(ev)
    assert len(check_kvs_rules(session)) == 36 - b_count
    assert len(decode_pictures(session, "matroska")) == 36 - b_count


def test_aud_and_sei_stay_inside_the_frames():
    enc = clip(frames=30, aud=True, sei=True)
    ev = run(Fragmenter(target_ms=2000), [(u.data, t, u.key) for u, t in zip(enc.units, stamps(30))])
    blocks = [b for c in read_kvs_mkv(sessions_of(ev)[0]).clusters for b in c.blocks]
    got = [avcc_nals(b.payload) for b in blocks]
    assert got == [annexb_nals(u.data) for u in enc.units]
    assert [n[0] & 0x1F for n in got[0]][:1] == [9] and 6 in [n[0] & 0x1F for n in got[0]]


def test_garbage_frames_are_dropped_with_a_notice():
    enc = clip(frames=30)
    items = [(u.data, t, u.key) for u, t in zip(enc.units, stamps(30))]
    items.insert(10, (b"\x47\x40\x11\x10garbage", 1_000_000 + 330, False))  # not Annex B
    items.insert(12, (b"\x00\x00\x01\xff\xff\xff", 1_000_000 + 340, False))  # forbidden_zero_bit set
    frag = Fragmenter(target_ms=2000)
    ev = run(frag, items)
    assert [e.kind for e in ev if isinstance(e, Notice)] == ["malformed", "malformed"]
    assert frag.stats.dropped_malformed == 2 and frag.stats.frames_written == 30
