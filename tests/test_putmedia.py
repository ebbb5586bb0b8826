"""The pure PutMedia session state machine and the producer timeline (no sockets, time passed in)."""

from __future__ import annotations

import io
import random

import av
import pytest
from hypothesis import given, settings, strategies as st

from kvs_edge.kvs.acks import Ack, AckParseError
from kvs_edge.kvs.putmedia import (
    MAX_CONNECTION_S, EndBody, FragmentDone, FragmentSkipped, PutMediaSession, Report, SessionEnded, Timeline, Write,
    connection_lifetime, is_skip_error)
from kvs_edge.media import h264, mkv
from support.h264gen import make_h264

FPS = 10
CAPTURE0 = 5_000  # capture ms (monotonic) of the first frame
PRODUCER0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def media():
    """A session header and 4 one-second fragments of real H.264 (160x120, 10 fps), stamped in capture ms."""
    enc = make_h264(frames=4 * FPS, width=160, height=120, fps=FPS, gop=FPS)
    nals = h264.split_annexb(enc.units[0].data)
    sps = [n for n in nals if h264.nal_type(n) == h264.NAL_SPS]
    pps = [n for n in nals if h264.nal_type(n) == h264.NAL_PPS]
    header = mkv.session_header(width=160, height=120, codec_private=h264.build_avcc(sps, pps))
    frags = []
    for k in range(4):
        t0 = CAPTURE0 + k * 1000
        data = mkv.cluster_head(t0)
        for i in range(FPS):
            u = enc.units[k * FPS + i]
            data += mkv.simple_block(i * 100, u.key, h264.annexb_to_avcc(u.data))
        frags.append((k + 1, t0, data))  # (seq, capture first ms, bytes)
    return header, frags


def body_of(events):
    return b"".join(e.data for e in events if isinstance(e, Write))


def send(s, seq, tc, data, now, chunk=None):
    out = s.begin_fragment(seq, tc, now)
    if chunk is None:
        out += s.fragment_data(data, now)
    else:
        for i in range(0, len(data), chunk):
            out += s.fragment_data(data[i:i + chunk], now)
    return out + s.end_fragment(now)


def demux(body):
    """(pts ms, key) of every packet, by PyAV's Matroska demuxer (independent of our writer)."""
    with av.open(io.BytesIO(body), format="matroska") as c:
        return [(p.pts, p.is_keyframe) for p in c.demux(video=0) if p.size]


def test_body_is_the_header_then_retimed_clusters(media):
    header, frags = media
    s = PutMediaSession(header, now=0.0)
    out = s.start()
    for seq, first, data in frags:
        out += send(s, seq, PRODUCER0 + (first - CAPTURE0), data, 1.0, chunk=7)  # tiny reads: the head arrives split
    out += s.idle(2.0)
    body = body_of(out)
    assert body.startswith(header)
    assert body.endswith(mkv.end_of_fragment_tag())
    pkts = demux(body)
    assert [p for p, _ in pkts] == [PRODUCER0 + i * 100 for i in range(4 * FPS)]
    assert [k for _, k in pkts] == [i % FPS == 0 for i in range(4 * FPS)]
    assert s.bytes_sent == len(body)


def test_persisted_acks_complete_fragments_by_timecode(media):
    header, frags = media
    s = PutMediaSession(header, now=0.0)
    s.start()
    tcs = {}
    for seq, first, data in frags[:3]:
        tcs[seq] = PRODUCER0 + seq * 7777
        send(s, seq, tcs[seq], data, 1.0)
    assert s.outstanding == [1, 2, 3]
    assert s.on_ack(Ack("BUFFERING", tcs[2]), 1.1) == []
    assert s.on_ack(Ack("RECEIVED", tcs[2]), 1.2) == []  # a stream that keeps data waits for PERSISTED
    ev = s.on_ack(Ack("PERSISTED", tcs[2], "123"), 1.5)
    assert ev == [FragmentDone(2, tcs[2], "PERSISTED", 1.0, 1.5)]
    assert s.outstanding == [1, 3]
    assert s.on_ack(Ack("PERSISTED", tcs[2]), 1.6) == []  # duplicate ACK: nothing new
    unknown = s.on_ack(Ack("PERSISTED", 42), 1.7)
    assert len(unknown) == 1 and isinstance(unknown[0], Report)
    assert s.on_ack(Ack("IDLE"), 1.8) == []
    assert isinstance(s.on_ack(AckParseError("junk"), 1.9)[0], Report)
    assert s.state == "open"


def test_received_completes_on_a_stream_without_retention(media):
    header, frags = media
    s = PutMediaSession(header, now=0.0, keeps_data=False)
    s.start()
    seq, first, data = frags[0]
    send(s, seq, PRODUCER0, data, 0.5)
    assert s.on_ack(Ack("RECEIVED", PRODUCER0), 0.9) == [FragmentDone(1, PRODUCER0, "RECEIVED", 0.5, 0.9)]


@pytest.mark.parametrize("error_id", sorted({4001, 4002, 4004, 4005, 4006, 4007, 4008, 4009, 4010, 4011, 4012,
                                              4500, 4501, 4502, 4503, 4504, 4505, 4506}))
def test_skip_class_errors_skip_the_fragment_and_end_the_connection(media, error_id):
    header, frags = media
    s = PutMediaSession(header, now=0.0)
    s.start()
    for seq, first, data in frags[:3]:
        send(s, seq, PRODUCER0 + seq * 1000, data, 1.0)
    s.on_ack(Ack("PERSISTED", PRODUCER0 + 1000), 1.1)
    ev = s.on_ack(Ack("ERROR", PRODUCER0 + 2000, "n", error_id, "SOME_CODE"), 1.2)
    assert ev[0] == FragmentSkipped(2, PRODUCER0 + 2000, error_id, "SOME_CODE")
    assert isinstance(ev[1], SessionEnded) and ev[1].kind == "error_ack" and ev[1].resend_from == 3
    assert str(error_id) in ev[1].reason
    assert s.state == "closed" and not s.wants_data
    assert s.on_ack(Ack("PERSISTED", PRODUCER0 + 3000), 1.3) == []  # closed: nothing more


@pytest.mark.parametrize("error_id", [4000, 4003, 5000, 5001, 4013, 4499, 4507, 9999, None])
def test_resend_class_and_unknown_errors_resend_from_the_oldest_unacknowledged(media, error_id):
    header, frags = media
    s = PutMediaSession(header, now=0.0)
    s.start()
    for seq, first, data in frags[:3]:
        send(s, seq, PRODUCER0 + seq * 1000, data, 1.0)
    s.on_ack(Ack("RECEIVED", PRODUCER0 + 1000), 1.1)  # received, not persisted: still needs sending again
    ev = s.on_ack(Ack("ERROR", PRODUCER0 + 3000, "n", error_id, "X"), 1.2)
    assert len(ev) == 1 and ev[0].kind == "error_ack" and ev[0].resend_from == 1
    assert not any(isinstance(e, FragmentSkipped) for e in ev)
    assert is_skip_error(error_id) is False


# both shapes seen from KVS: -1 and "" (producer-sdk-java's ACK fixtures), no keys at all (producer-sdk-cpp#315)
@pytest.mark.parametrize("timecode,number", [(-1, ""), (None, None)])
def test_error_without_a_timecode_is_attributed_to_the_fragment_being_parsed(media, timecode, number):
    header, frags = media
    s = PutMediaSession(header, now=0.0)
    s.start()
    for seq, first, data in frags[:3]:
        send(s, seq, PRODUCER0 + seq * 1000, data, 1.0)
    s.on_ack(Ack("RECEIVED", PRODUCER0 + 1000), 1.1)
    ev = s.on_ack(Ack("ERROR", timecode, number, 4006, "INVALID_MKV_DATA"), 1.2)
    assert isinstance(ev[0], Report)
    assert ev[1] == FragmentSkipped(2, PRODUCER0 + 2000, 4006, "INVALID_MKV_DATA")
    assert ev[2].resend_from == 1


def test_connection_lost_resends_received_but_not_persisted(media):
    header, frags = media
    s = PutMediaSession(header, now=0.0)
    s.start()
    for seq, first, data in frags[:3]:
        send(s, seq, PRODUCER0 + seq * 1000, data, 1.0)
    s.on_ack(Ack("PERSISTED", PRODUCER0 + 1000), 1.1)
    s.on_ack(Ack("RECEIVED", PRODUCER0 + 2000), 1.2)
    ev = s.on_connection_lost("reset by peer", 1.3)
    assert ev == [SessionEnded("connection", "connection lost: reset by peer", 2, received_unpersisted=(2,))]


def test_connection_lost_mid_fragment_resends_that_fragment(media):
    header, frags = media
    s = PutMediaSession(header, now=0.0)
    s.start()
    seq, first, data = frags[0]
    s.begin_fragment(seq, PRODUCER0, 1.0)
    s.fragment_data(data[:100], 1.0)
    assert s.on_connection_lost("eof", 1.1)[0].resend_from == 1


def test_stale_when_no_first_ack_arrives(media):
    header, frags = media
    s = PutMediaSession(header, now=0.0, stale_after_s=3.0)
    s.start()
    seq, first, data = frags[0]
    send(s, seq, PRODUCER0, data, 10.0)
    assert s.next_deadline() == 13.0
    assert s.tick(12.99) == []
    ev = s.tick(13.0)
    assert len(ev) == 1 and ev[0].kind == "stale" and ev[0].resend_from == 1


def test_a_long_fragment_being_written_is_not_stale_but_a_missing_received_is(media):
    header, frags = media
    s = PutMediaSession(header, now=0.0, stale_after_s=3.0)
    s.start()
    seq, first, data = frags[0]
    s.begin_fragment(seq, PRODUCER0, 0.0)
    s.fragment_data(data[:200], 0.0)
    s.on_ack(Ack("BUFFERING", PRODUCER0), 0.1)
    for t in range(1, 30):  # 30 s of live data, no more ACKs: KVS can't know the fragment is complete yet
        s.fragment_data(b"", float(t))
        assert s.tick(float(t)) == []
    s.fragment_data(data[200:], 30.0)
    s.end_fragment(30.0)
    assert s.tick(40.0) == []  # still not complete on the wire: no RECEIVED is due
    s.idle(41.0)  # end-of-fragment tag: now RECEIVED is due within 3 s
    assert s.tick(43.9) == []
    s.on_ack(Ack("RECEIVED", PRODUCER0), 43.9)
    assert s.tick(46.8) == []
    ev = s.tick(46.9)  # PERSISTED due 3 s after RECEIVED
    assert ev[0].kind == "stale" and "PERSISTED" in ev[0].reason


def test_a_server_that_stops_reading_mid_fragment_is_stale(media):
    header, frags = media
    s = PutMediaSession(header, now=0.0, stale_after_s=3.0)
    s.start()
    s.begin_fragment(1, PRODUCER0, 0.0)
    s.fragment_data(frags[0][2][:300], 0.0)
    s.on_ack(Ack("BUFFERING", PRODUCER0), 0.1)  # then the server stops reading: no ACK deadline runs mid-fragment
    assert s.tick(100.0) == []
    assert s.writes_blocked(since=98.0, now=100.0) == []
    ev = s.writes_blocked(since=97.0, now=100.0)
    assert ev[0].kind == "stale" and ev[0].resend_from == 1


def test_idle_writes_one_end_of_fragment_tag(media):
    header, frags = media
    s = PutMediaSession(header, now=0.0)
    s.start()
    assert s.idle(0.1) == []  # no fragment yet: nothing to close
    seq, first, data = frags[0]
    send(s, seq, PRODUCER0, data, 1.0)
    assert s.idle(1.1) == [Write(mkv.end_of_fragment_tag())]
    assert s.idle(1.2) == []


def test_rotation_ends_on_a_fragment_boundary_and_awaits_the_last_persisted(media):
    header, frags = media
    s = PutMediaSession(header, now=100.0, lifetime_s=5.0, end_wait_s=2.0)
    s.start()
    send(s, 1, PRODUCER0, frags[0][2], 101.0)
    s.begin_fragment(2, PRODUCER0 + 1000, 104.0)
    s.fragment_data(frags[1][2][:300], 104.0)
    assert s.tick(105.0) == []  # due, but mid-fragment: keep sending
    assert s.wants_data
    s.fragment_data(frags[1][2][300:], 105.5)
    ev = s.end_fragment(106.0)
    assert ev == [Write(mkv.end_of_fragment_tag()), EndBody()]
    assert not s.wants_data and s.state == "ending"
    with pytest.raises(RuntimeError):
        s.begin_fragment(3, PRODUCER0 + 2000, 106.0)
    assert s.on_ack(Ack("PERSISTED", PRODUCER0), 106.5)[0].seq == 1
    ev = s.on_ack(Ack("PERSISTED", PRODUCER0 + 1000), 107.0)
    assert ev[0] == FragmentDone(2, PRODUCER0 + 1000, "PERSISTED", 104.0, 107.0)
    assert ev[1].kind == "rotated" and ev[1].clean and ev[1].resend_from is None


def test_rotation_between_fragments_and_its_bounded_wait(media):
    header, frags = media
    s = PutMediaSession(header, now=0.0, lifetime_s=5.0, end_wait_s=2.0, stale_after_s=60)
    s.start()
    send(s, 1, PRODUCER0, frags[0][2], 1.0)
    send(s, 2, PRODUCER0 + 1000, frags[1][2], 2.0)
    s.on_ack(Ack("PERSISTED", PRODUCER0), 2.5)
    ev = s.tick(5.0)
    assert ev == [Write(mkv.end_of_fragment_tag()), EndBody()]
    assert s.tick(6.99) == []
    ev = s.tick(7.0)
    assert ev[0].kind == "end_timeout" and ev[0].resend_from == 2


def test_finish_with_nothing_outstanding_ends_cleanly_at_once(media):
    header, _ = media
    s = PutMediaSession(header, now=0.0)
    s.start()
    ev = s.finish("draining", 1.0)
    assert ev[0] == EndBody() and ev[1].kind == "rotated" and ev[1].resend_from is None


def test_a_log_fragment_that_is_not_a_cluster_is_skipped_without_touching_the_connection(media):
    header, frags = media
    s = PutMediaSession(header, now=0.0)
    s.start()
    s.begin_fragment(7, PRODUCER0, 1.0)
    ev = s.fragment_data(b"\x00" * 40, 1.0)
    assert isinstance(ev[0], Report) and ev[1] == FragmentSkipped(7, PRODUCER0, None, "INVALID_FRAGMENT_IN_LOG")
    assert s.fragment_data(b"more", 1.0) == [] and s.end_fragment(1.0) == []
    out = send(s, 8, PRODUCER0 + 1000, frags[0][2], 1.1)
    assert body_of(out)[:mkv.CLUSTER_HEAD_SIZE] == mkv.cluster_head(PRODUCER0 + 1000)
    assert s.state == "open"


def test_connection_lifetime_is_capped_at_40_minutes_with_up_to_3_minutes_of_jitter():
    rng = random.Random(1)
    xs = [connection_lifetime(3600, rng) for _ in range(2000)]
    assert max(xs) <= MAX_CONNECTION_S and min(xs) >= MAX_CONNECTION_S - 180
    assert max(xs) - min(xs) > 150  # actually jittered
    ys = [connection_lifetime(4.0, rng) for _ in range(200)]
    assert all(4.0 * 0.925 <= y <= 4.0 for y in ys) and len(set(ys)) > 100


def test_timeline_shifts_overlapping_fragments_and_is_stable_across_resends():
    t = Timeline()
    assert t.assign(1, 1000) == (1000, 0)
    t.complete(1, 900)  # last frame at 1900
    assert t.assign(2, 1900) == (1901, 1)  # would start on the previous last frame: moved forward
    assert t.assign(1, 5) == (1000, 0)  # a resend keeps its timecode
    t.complete(2, 500)
    assert t.assign(3, 3000) == (3000, 0)
    t.forget(1)
    assert t.get(1) is None and t.get(3) == 3000


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3000)), min_size=1, max_size=30))
def test_timeline_property_strictly_after_the_previous_last_frame(frags):
    t = Timeline()
    prev_end = None
    for seq, (base, span) in enumerate(frags):
        tc, shift = t.assign(seq, base)
        assert shift >= 0 and tc == base + shift
        if prev_end is not None:
            assert tc > prev_end
            assert shift == 0 or tc == prev_end + 1  # moved no further than needed
        t.complete(seq, span)
        prev_end = tc + span
        assert t.assign(seq, base + 12345) == (tc, 0)
