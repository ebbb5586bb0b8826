"""kvs_edge.media.mkv read back with ebmlite and PyAV (independent parsers), plus EBML encoding properties."""

from __future__ import annotations

import io

import av
import pytest
from ebmlite import loadSchema
from hypothesis import given, settings
from hypothesis import strategies as hs

from kvs_edge import __version__
from kvs_edge.media import h264, mkv
from support.h264gen import SDK_DIR, annexb_nals, avcc_nals, make_h264, read_kvs_mkv

SCHEMA = loadSchema("matroska.xml")


def read_vint(data: bytes) -> tuple[int, int]:
    """EBML variable-length integer -> (value, width), written here from the spec, not from kvs_edge."""
    first = data[0]
    width = 1
    while width <= 8 and not first & (0x80 >> (width - 1)):
        width += 1
    assert width <= 8
    value = first & (0xFF >> width)
    for b in data[1:width]:
        value = (value << 8) | b
    return value, width


# ---------------------------------------------------------------- primitives


@settings(max_examples=500, deadline=None)
@given(hs.integers(0, (1 << 56) - 2))
def test_size_vint_round_trip_and_shortest(size):
    enc = mkv.encode_size(size)
    assert read_vint(enc) == (size, len(enc))
    # shortest: one byte less could not hold it (all-ones is reserved for "unknown")
    assert len(enc) == 1 or size >= (1 << (7 * (len(enc) - 1))) - 1
    assert size != (1 << (7 * len(enc))) - 1  # never the reserved all-ones ("unknown size") value


@settings(max_examples=200, deadline=None)
@given(hs.integers(0, 1000), hs.integers(1, 8))
def test_size_vint_fixed_width(size, width):
    if size >= (1 << (7 * width)) - 1:
        with pytest.raises(ValueError):
            mkv.encode_size(size, width)
    else:
        enc = mkv.encode_size(size, width)
        assert len(enc) == width and read_vint(enc) == (size, width)


def test_reserved_sizes_take_a_longer_field():
    assert mkv.encode_size(126) == b"\xfe" and mkv.encode_size(127) == b"\x40\x7f"
    with pytest.raises(ValueError):
        mkv.encode_size(-1)


@pytest.mark.parametrize("eid", [0xA3, 0x4286, 0x2AD7B1, 0x1A45DFA3, 0x1F43B675, 0x63A2])
def test_element_ids_encode_as_their_bytes(eid):
    enc = mkv.encode_id(eid)
    assert int.from_bytes(enc, "big") == eid and read_vint(enc)[1] == len(enc)


def test_bad_ids_are_rejected():
    for eid in (0, 0x0A, 0x8000, 0x1FFFFFFFFF):
        with pytest.raises(ValueError):
            mkv.encode_id(eid)


@settings(max_examples=100, deadline=None)
@given(hs.binary(max_size=300), hs.sampled_from([mkv.CODEC_PRIVATE, mkv.SEGMENT_UID, mkv.TAG_STRING]))
def test_element_framing_is_id_size_payload(payload, eid):
    el = mkv.element(eid, payload)
    value, w = read_vint(el[len(mkv.encode_id(eid)):])
    assert value == len(payload) and len(el) == len(mkv.encode_id(eid)) + w + len(payload)


# ---------------------------------------------------------------- session header


def sample_header(uid: bytes | None = None) -> tuple[bytes, bytes]:
    enc = make_h264(2, 320, 240)
    nals = annexb_nals(enc.units[0].data)
    cp = h264.build_avcc([n for n in nals if n[0] & 0x1F == 7], [n for n in nals if n[0] & 0x1F == 8])
    return mkv.session_header(width=320, height=240, codec_private=cp, segment_uid=uid), cp


def test_session_header_has_the_kvs_layout():
    head, cp = sample_header(b"\x11" * 16)
    s = read_kvs_mkv(head)
    assert s.ebml == {"EBMLVersion": 1, "EBMLReadVersion": 1, "EBMLMaxIDLength": 4, "EBMLMaxSizeLength": 8,
                      "DocType": "matroska", "DocTypeVersion": 2, "DocTypeReadVersion": 2}
    assert s.segment_unknown_size
    assert s.info == {"SegmentUID": b"\x11" * 16, "TimecodeScale": 1_000_000,
                      "MuxingApp": f"kvs-edge {__version__}", "WritingApp": f"kvs-edge {__version__}"}
    assert s.tracks == 1
    assert s.track["TrackNumber"] == 1 and s.track["TrackType"] == 1
    assert s.track["CodecID"] == "V_MPEG4/ISO/AVC" and s.track["CodecPrivate"] == cp
    assert (s.track["PixelWidth"], s.track["PixelHeight"]) == (320, 240)
    assert s.top_level == ["Info", "Tracks"] and s.clusters == []


def test_segment_uid_is_random_by_default():
    a, _ = sample_header()
    b, _ = sample_header()
    ua, ub = read_kvs_mkv(a).info["SegmentUID"], read_kvs_mkv(b).info["SegmentUID"]
    assert len(ua) == 16 and ua != ub


def test_session_header_rejects_bad_arguments():
    for kw in (dict(width=0, height=240, codec_private=b"\x01"), dict(width=320, height=240, codec_private=b""),
               dict(width=320, height=240, codec_private=b"\x01", segment_uid=b"short")):
        with pytest.raises(ValueError):
            mkv.session_header(**kw)


# ---------------------------------------------------------------- clusters and blocks


@settings(max_examples=200, deadline=None)
@given(hs.integers(0, (1 << 64) - 1), hs.integers(0, (1 << 64) - 1))
def test_cluster_timecode_sits_at_the_fixed_offset_and_can_be_rewritten(tc, tc2):
    head = mkv.cluster_head(tc)
    o = mkv.CLUSTER_TIMECODE_OFFSET
    assert o == 7 and len(head) == mkv.CLUSTER_HEAD_SIZE
    assert head[:5] == bytes.fromhex("1F43B675FF") and int.from_bytes(head[o:o + 8], "big") == tc
    re = mkv.retime_cluster_head(head, tc2)
    assert len(re) == len(head) and int.from_bytes(re[o:o + 8], "big") == tc2
    assert re[:o] == head[:o] and re[o + 8:] == head[o + 8:]


def test_cluster_and_blocks_parse_with_ebmlite():
    head, _ = sample_header()
    payloads = [b"\x00\x00\x00\x02\x65\x88", b"\x00\x00\x00\x03\x41\x9a\x01", b"\x00\x00\x00\x01\x41"]
    rels = [0, -32768, 32767]
    data = head + mkv.cluster_head(1_700_000_000_000)
    data += b"".join(mkv.simple_block(r, i == 0, p) for i, (r, p) in enumerate(zip(rels, payloads)))
    data += mkv.end_of_fragment_tag()
    data = mkv.retime_cluster_head(data[len(head):], 1_700_000_000_123)  # retime works on a head + more bytes
    data = head + data
    s = read_kvs_mkv(data)
    (c,) = s.clusters
    assert c.unknown_size and c.timecode == 1_700_000_000_123 and c.timecode_width == 8
    assert c.timecode_offset == len(head) + mkv.CLUSTER_TIMECODE_OFFSET
    assert [(b.track, b.rel_timecode, b.key, b.payload) for b in c.blocks] == [
        (1, r, i == 0, p) for i, (r, p) in enumerate(zip(rels, payloads))]
    assert s.trailing_tags == [[("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")]]


def test_block_timecode_must_fit_int16():
    for bad in (32768, -32769):
        with pytest.raises(ValueError):
            mkv.simple_block(bad, True, b"x")


def test_pyav_plays_a_hand_built_session():
    enc = make_h264(20, 320, 240, gop=10)
    nals = annexb_nals(enc.units[0].data)
    cp = h264.build_avcc([n for n in nals if n[0] & 0x1F == 7], [n for n in nals if n[0] & 0x1F == 8])
    out = mkv.session_header(width=320, height=240, codec_private=cp)
    for i, u in enumerate(enc.units):
        if u.key:
            base = 1000 + i * 40
            out += mkv.cluster_head(base)
        out += mkv.simple_block(1000 + i * 40 - base, u.key, h264.annexb_to_avcc(u.data))
    out += mkv.end_of_fragment_tag()
    with av.open(io.BytesIO(out), format="matroska") as c:
        pkts = [(p.pts, p.is_keyframe, avcc_nals(bytes(p))) for p in c.demux(video=0) if p.size]
    assert pkts == [(1000 + i * 40, u.key, annexb_nals(u.data)) for i, u in enumerate(enc.units)]


# ---------------------------------------------------------------- tags


def test_user_tags_parse_with_ebmlite_and_respect_kvs_limits():
    pairs = [(f"name{i}", f"value {i}") for i in range(9)] + [("n" * 128, "v" * 256)]
    data = sample_header()[0] + mkv.tags(pairs) + mkv.cluster_head(5) + mkv.simple_block(0, True, b"\0\0\0\1\x65")
    s = read_kvs_mkv(data)
    assert s.clusters[0].tags_before == [pairs]


@pytest.mark.parametrize("pairs, why", [
    ([("AWS_X", "v")], "AWS"),
    ([("n" * 129, "v")], "128"),
    ([("name", "v" * 257)], "256"),
    ([("é" * 65, "v")], "128"),  # bytes, not characters
    ([(f"n{i}", "v") for i in range(11)], "10"),
    ([("", "v")], "empty"),
    ([], "no tags"),
])
def test_invalid_user_tags_are_refused_with_the_reason(pairs, why):
    with pytest.raises(ValueError, match=why):
        mkv.tags(pairs)


def test_end_of_fragment_tag_parses_like_the_sdk_one():
    sdk = read_kvs_mkv((SDK_DIR / "client.session1.mkv").read_bytes())  # SDK session closed by its own tag
    ours = read_kvs_mkv(sample_header()[0] + mkv.cluster_head(1) + mkv.simple_block(0, True, b"\0\0\0\1\x65")
                        + mkv.end_of_fragment_tag())
    assert ours.trailing_tags == sdk.trailing_tags == [[("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")]]
    assert ours.top_level[-1] == sdk.top_level[-1] == "Tags"
