"""The emulator's pure PutMedia core: SDK streams and their broken variants in, ACKs and archive records out.
No sockets, no threads: time is passed in (`now`), so timers (PERSISTED delay, IDLE, 4003) are exact."""

from __future__ import annotations

import random

import pytest

from kvs_edge.emulator.ingest import (DEFECT_NO_KEY_FRAME, Ack, Limits, PutMediaIngest, Store, StreamCursor)
from kvs_edge.media import ebml
from support.h264gen import SDK_DIR
from support.kvs_client import (block_count, cluster_timecodes, insert_before_cluster, set_block, set_cluster_timecode,
                                split_at_clusters, tags_element)

NOW = 1_800_000_000.0  # epoch seconds, after the SDK streams' 1700000000000 ms
SDK = {p.name: p.read_bytes() for p in sorted(SDK_DIR.glob("*.mkv"))}
REF = SDK["ref.mkv"]


def session(cursor=None, **kw) -> PutMediaIngest:
    return PutMediaIngest(cursor or StreamCursor(), session_id="s1", now=NOW, **kw)


def run(data: bytes, core: PutMediaIngest | None = None, *, pieces: int = 7, seed: int = 0, end=True, now=NOW):
    """Feed `data` in random pieces, then end the body. Returns (acks, stored records)."""
    core = core or session()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), pieces)) if len(data) > pieces else []
    out, last = [], 0
    for c in cuts + [len(data)]:
        out += core.feed(data[last:c], now)
        last = c
    if end:
        out += core.end(now)
    return [o for o in out if isinstance(o, Ack)], [o.record for o in out if isinstance(o, Store)]


def kinds(acks):
    return [(a.event_type, a.timecode) for a in acks]


# ------------------------------------------------------------------ accepted streams


@pytest.mark.parametrize("name", sorted(SDK), ids=str)
@pytest.mark.parametrize("seed", [0, 1])
def test_every_sdk_stream_is_acknowledged_fragment_by_fragment(name, seed):
    data = SDK[name]
    core = session()
    acks, stored = run(data, core, pieces=25, seed=seed)
    tcs = cluster_timecodes(data)
    expected = []
    for tc in tcs:
        expected += [("BUFFERING", tc), ("RECEIVED", tc), ("PERSISTED", tc)]
    assert kinds(acks) == expected
    numbers = [a.number for a in acks if a.event_type == "BUFFERING"]
    assert all(len(n) == 47 and n.isdigit() for n in numbers)
    assert [int(n) for n in numbers] == sorted(int(n) for n in set(numbers))  # increasing, distinct
    assert [r.producer_ts_ms for r in stored] == tcs
    assert sum(r.frames for r in stored) == block_count(data)
    assert all(r.defects == [] for r in stored)
    assert core.finished and core.error is None


def test_ack_lines_are_the_services_json():
    acks, _ = run(REF)
    assert acks[0].to_json() == (b'{"EventType":"BUFFERING","FragmentTimecode":1700000000000,"FragmentNumber":"'
                                 + acks[0].number.encode() + b'"}\n')
    assert Ack("IDLE").to_json() == b'{"EventType":"IDLE"}\n'
    # the key order the SDK logged from the real service (producer-sdk-cpp#226): ErrorCode before ErrorId
    err = Ack("ERROR", 5, "9", 4004).to_json()
    assert err == (b'{"EventType":"ERROR","FragmentTimecode":5,"FragmentNumber":"9",'
                   b'"ErrorCode":"FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS","ErrorId":4004}\n')
    # an error that names no fragment, as logged from the service in producer-sdk-cpp#315
    assert Ack("ERROR", None, None, 4006).to_json() == b'{"EventType":"ERROR","ErrorCode":"INVALID_MKV_DATA","ErrorId":4006}\n'


def test_received_comes_with_the_next_cluster_or_end_of_fragment_tag_not_before():
    core = session()
    header, c0, c1, *rest = split_at_clusters(REF)
    got = core.feed(header + c0, NOW)
    assert kinds(got) == [("BUFFERING", 1700000000000)]  # the fragment may still grow
    got = core.feed(c1[:20], NOW)  # the next cluster's head completes it
    assert [a.event_type for a in got if isinstance(a, Ack)] == ["RECEIVED", "PERSISTED", "BUFFERING"]
    eofr = SDK["eofr.session1.mkv"]
    core = session()
    header, c0, *_ = split_at_clusters(eofr)
    got = core.feed(header + c0, NOW)  # c0 ends with the end-of-fragment tag
    assert [a.event_type for a in got if isinstance(a, Ack)] == ["BUFFERING", "RECEIVED", "PERSISTED"]


def test_archived_record_is_a_cluster_with_every_frame():
    _, stored = run(REF)
    for rec in stored:
        evs = ebml.iter_events(rec.session_header + rec.data)
        blocks = [e for e in evs if isinstance(e, ebml.Leaf) and e.id == ebml.SIMPLE_BLOCK]
        assert len(blocks) == rec.frames == 30
        tc = next(e for e in evs if isinstance(e, ebml.Leaf) and e.id == ebml.TIMECODE)
        assert int.from_bytes(tc.data, "big") == rec.producer_ts_ms
    # the session header is the stream's own, up to its first cluster
    assert stored[0].session_header == REF[:277]


def test_relative_timecodes_add_the_producer_start_timestamp():
    shifted = REF
    for i, tc in enumerate(cluster_timecodes(REF)):
        shifted = set_cluster_timecode(shifted, i, tc - 1_700_000_000_000)
    acks, stored = run(shifted, session(timecode_type="RELATIVE", producer_start_ms=1_700_000_000_000))
    assert [a.timecode for a in acks if a.event_type == "RECEIVED"] == [0, 1000, 2000, 3000, 4000, 5000]
    assert [r.producer_ts_ms for r in stored] == cluster_timecodes(REF)
    assert stored[-1].last_frame_ms == 1_700_000_005_966


def test_retention_zero_gets_received_but_no_persisted_and_stores_nothing():
    acks, stored = run(REF, session(retention_hours=0))
    assert {a.event_type for a in acks} == {"BUFFERING", "RECEIVED"}
    assert stored == []


def test_persisted_comes_after_the_delay():
    core = session(persist_delay_s=2.0)
    header, c0, c1, *_ = split_at_clusters(REF)
    out = core.feed(header + c0 + c1[:20], NOW)
    assert [o.event_type for o in out if isinstance(o, Ack)] == ["BUFFERING", "RECEIVED", "BUFFERING"]
    assert core.deadline() == NOW + 2.0
    assert core.poll(NOW + 1.9) == []
    out = core.poll(NOW + 2.0)
    assert isinstance(out[0], Store) and out[1] == Ack("PERSISTED", 1700000000000, out[0].record.number)


def test_end_of_body_completes_the_last_fragment_and_finishes_after_its_persisted():
    core = session(persist_delay_s=1.0)
    acks, _ = run(SDK["reset.session1.mkv"], core)
    assert acks[-1].event_type == "RECEIVED" and acks[-1].timecode == 1700000003000
    assert not core.finished
    out = core.poll(NOW + 1.0)
    assert [o.event_type for o in out if isinstance(o, Ack)] == ["PERSISTED"] * 4
    assert core.finished


def test_a_dropped_connection_loses_the_open_fragment_only():
    core = session(persist_delay_s=5.0)
    acks, _ = run(SDK["reset.session1.mkv"], core, end=False)
    assert kinds(acks)[-1] == ("BUFFERING", 1700000003000)
    stored = [o.record for o in core.abort(NOW) if isinstance(o, Store)]
    assert [r.producer_ts_ms for r in stored] == [1700000000000, 1700000001000, 1700000002000]
    assert core.finished


def test_sessions_of_one_stream_continue_and_4004_applies_within_a_session_only():
    cursor = StreamCursor()
    core1 = session(cursor)
    run(SDK["reset.session1.mkv"], core1, end=False)
    core1.abort(NOW)
    acks, stored = run(SDK["reset.session2.mkv"], session(cursor))
    assert [r.producer_ts_ms for r in stored] == [1700000003000, 1700000004000, 1700000005000]
    numbers = [a.number for a in acks if a.event_type == "RECEIVED"]
    # a new connection re-sending older fragments (what the SDK does after a reset) is accepted, numbered upwards
    acks, stored = run(SDK["reset.session1.mkv"], session(cursor))
    assert [r.producer_ts_ms for r in stored] == [1700000000000, 1700000001000, 1700000002000, 1700000003000]
    assert "ERROR" not in [a.event_type for a in acks]
    assert min(int(a.number) for a in acks if a.event_type == "RECEIVED") > max(int(n) for n in numbers)
    assert cursor.last_frame_ms >= 1700000005000  # the stream's newest frame is kept, not moved back


def test_4004_within_one_session_names_the_fragment():
    twice = REF + REF[REF.index(ebml.encode_id(ebml.CLUSTER)):]  # the same clusters once more in the same body
    acks, stored = run(twice)
    assert kinds(acks)[-1] == ("ERROR", 1700000000000) and acks[-1].error_id == 4004
    assert len(stored) == 6


def test_idle_acks_while_no_data_then_close_after_the_idle_timeout():
    core = session(idle_timeout_s=30.0, idle_ack_s=3.0)
    header, c0, *_ = split_at_clusters(REF)
    core.feed(header + c0, NOW)
    assert core.poll(NOW + 2.9) == []
    assert core.poll(NOW + 3.0) == [Ack("IDLE")]
    assert core.poll(NOW + 4.0) == []
    assert core.poll(NOW + 6.0) == [Ack("IDLE")]
    assert core.feed(b"", NOW + 7) == []
    core.poll(NOW + 29.9)
    assert not core.finished
    core.poll(NOW + 30.0)
    assert core.finished and core.error is None


def test_error_4003_at_the_maximum_connection_duration():
    core = session(max_connection_s=60.0)
    header, c0, c1, *_ = split_at_clusters(REF)
    out = core.feed(header + c0 + c1, NOW)
    for t in range(1, 60):
        core.feed(b"", NOW + t)  # (no data: nothing happens)
    out = core.poll(NOW + 60.0)
    acks = [o for o in out if isinstance(o, Ack)]
    assert acks[-1].event_type == "ERROR" and acks[-1].error_id == 4003
    assert acks[-1].timecode == 1700000001000  # the fragment in progress
    assert core.finished


# ------------------------------------------------------------------ rejected streams


NO_FRAGMENT = "no fragment"  # an ERROR that names no fragment: neither FragmentTimecode nor FragmentNumber


def expect_error(data: bytes, error_id: int, timecode: int | str | None = None, core=None, now=NOW, **kw):
    core = core or session(**kw)
    acks, stored = run(data, core, now=now)
    assert acks[-1].event_type == "ERROR", kinds(acks)
    assert acks[-1].error_id == error_id, core.error
    if timecode == NO_FRAGMENT:
        assert acks[-1].timecode is None and acks[-1].number is None
    elif timecode is not None:
        assert acks[-1].timecode == timecode
    assert core.finished
    assert len([a for a in acks if a.event_type == "ERROR"]) == 1
    return acks, stored


def test_timecodes_going_back_get_4004():
    bad = set_cluster_timecode(REF, 3, 1700000001500)  # before cluster 2's last frame (1700000002966)
    acks, stored = expect_error(bad, 4004, 1700000001500)
    assert [r.producer_ts_ms for r in stored] == [1700000000000, 1700000001000, 1700000002000]


def test_a_21_second_fragment_gets_4002():
    bad = set_block(REF, 1, 29, rel_timecode=21000)
    expect_error(bad, 4002, 1700000001000)


def test_eleven_tags_for_a_fragment_get_4009_but_ten_pass():
    ok = insert_before_cluster(REF, 2, tags_element([f"T{i}" for i in range(10)]))
    acks, stored = run(ok)
    assert acks[-1].event_type == "PERSISTED" and len(stored) == 6
    bad = insert_before_cluster(REF, 2, tags_element([f"T{i}" for i in range(11)]))
    expect_error(bad, 4009, 1700000002000)


def test_tag_groups_closed_by_end_of_fragment_tags_count_per_fragment_for_4009():
    # What the SDK sends on a new connection after skipping fragments: their tags again, each group closed by an
    # end-of-fragment tag, then the next cluster. 3 x 9 tags are not 27 for one fragment.
    eofr = "AWS_KINESISVIDEO_END_OF_FRAGMENT"
    groups = b"".join(tags_element([f"K{i}" for i in range(9)] + [eofr]) for _ in range(3))
    acks, stored = run(insert_before_cluster(REF, 2, groups))
    assert acks[-1].event_type == "PERSISTED" and len(stored) == 6
    # ... but 11 tags closed by one end-of-fragment tag are too many for the fragment they close
    bad = insert_before_cluster(REF, 2, tags_element([f"K{i}" for i in range(11)] + [eofr]))
    expect_error(bad, 4009, 1700000001000)


def test_a_frame_of_an_undeclared_track_gets_4010():
    expect_error(set_block(REF, 2, 5, track=2), 4010, 1700000002000)


def test_garbage_gets_4006():
    expect_error(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(1000), 4006, NO_FRAGMENT)  # a JPEG, the classic mistake
    # garbage after cluster 2: that fragment was still open (not known complete), so it is the one rejected
    acks, stored = expect_error(insert_before_cluster(REF, 3, b"\x00garbage" * 20), 4006, 1700000002000)
    assert len(stored) == 2


def test_inconsistent_avcc_lengths_get_4006():
    expect_error(set_block(REF, 1, 3, first_nal_length=1_000_000), 4006, 1700000001000)


def test_a_producer_timestamp_in_the_future_gets_4007():
    now = 1_699_999_995.0  # the stream's frames run from 5 s to 11 s ahead of this server's clock
    acks, stored = expect_error(REF, 4007, 1700000005000, now=now,
                                 core=PutMediaIngest(StreamCursor(), session_id="s", now=now))
    assert len(stored) == 5  # up to 10 s ahead is tolerated


def test_more_than_three_tracks_get_4012():
    entry = next(e for e in ebml.iter_events(REF) if isinstance(e, ebml.Start) and e.id == ebml.TRACK_ENTRY)
    tracks = next(e for e in ebml.iter_events(REF) if isinstance(e, ebml.Start) and e.id == ebml.TRACKS)
    one = REF[entry.offset:entry.offset + entry.header_size + entry.size]
    extra = b""
    for n in (2, 3, 4):
        body = one[entry.header_size:].replace(b"\xd7\x81\x01", b"\xd7\x81" + bytes([n]), 1)
        extra += ebml.encode_element(ebml.TRACK_ENTRY, body)
    new_tracks = ebml.encode_element(ebml.TRACKS, REF[tracks.offset + tracks.header_size:
                                                      tracks.offset + tracks.header_size + tracks.size] + extra)
    data = REF[:tracks.offset] + new_tracks + REF[tracks.offset + tracks.header_size + tracks.size:]
    expect_error(data, 4012, NO_FRAGMENT)


def test_a_fragment_over_the_size_limit_gets_4001():
    expect_error(REF, 4001, 1700000000000, limits=Limits(max_fragment_bytes=10_000))


def test_a_fragment_without_a_key_frame_first_is_accepted_with_a_defect():
    # cluster 1's key frame becomes a non-key frame
    at = next(e for e in ebml.iter_events(REF) if isinstance(e, ebml.Leaf) and e.id == ebml.SIMPLE_BLOCK
              and e.offset > 15004)
    flags = at.offset + at.header_size + 3
    data = REF[:flags] + bytes([REF[flags] & 0x7F]) + REF[flags + 1:]
    acks, stored = run(data)
    assert acks[-1].event_type == "PERSISTED"
    assert [r.defects for r in stored] == [[], [DEFECT_NO_KEY_FRAME], [], [], [], []]


def test_an_injected_error_replaces_the_nth_fragments_received():
    calls = iter([None, 5000])
    core = session(error_hook=lambda: next(calls, None))
    acks, stored = run(REF, core)
    assert kinds(acks) == [("BUFFERING", 1700000000000), ("RECEIVED", 1700000000000), ("PERSISTED", 1700000000000),
                           ("BUFFERING", 1700000001000), ("ERROR", 1700000001000)]
    assert acks[-1].event_type == "ERROR" and acks[-1].error_id == 5000 and acks[-1].timecode == 1700000001000
    assert len(stored) == 1
