"""The incremental EBML reader (kvs_edge.media.ebml): checked against ebmlite (an independent EBML parser), the SDK's
own element dump (ref.layout.txt), and random element trees fed in random pieces (hypothesis)."""

from __future__ import annotations

import re

import ebmlite.core
import pytest
from ebmlite import loadSchema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvs_edge.media import ebml
from kvs_edge.media.ebml import EbmlError, EbmlReader, End, Leaf, LeafChunk, LeafEnd, LeafStart, Schema, Start
from support.h264gen import SDK_DIR

SDK_FILES = sorted(SDK_DIR.glob("*.mkv"))


def feed_in_pieces(data: bytes, cuts: list[int], **kw) -> list:
    r = EbmlReader(**kw)
    events, last = [], 0
    for c in sorted(set(cuts)) + [len(data)]:
        events += r.feed(data[last:c])
        last = c
    return events + r.close()


def merge_chunks(events: list) -> list:
    """LeafChunk runs depend on how the bytes were split: join them to compare."""
    out = []
    for ev in events:
        if isinstance(ev, LeafChunk) and out and isinstance(out[-1], LeafChunk) and out[-1].id == ev.id:
            out[-1] = LeafChunk(ev.id, out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


# ------------------------------------------------------------------ real streams, independent parsers


def _ebmlite_elements(path) -> list[tuple[int, int, int]]:
    out = []

    def walk(el):
        out.append((el.id, el.offset, el.size))
        if isinstance(el, ebmlite.core.MasterElement):
            for c in el:
                walk(c)

    for el in loadSchema("matroska.xml").load(str(path)):
        walk(el)
    return out


@pytest.mark.parametrize("path", SDK_FILES, ids=lambda p: p.name)
def test_every_element_of_the_sdk_streams_matches_ebmlite(path):
    data = path.read_bytes()
    events = ebml.iter_events(data)
    seg = next(e for e in events if isinstance(e, Start) and e.id == ebml.SEGMENT)
    ends = {}
    for e in events:
        if isinstance(e, End):
            ends.setdefault((e.id, e.offset), e)
    ours = []
    stack = []
    for e in events:
        if isinstance(e, Start):
            stack.append(len(ours))
            ours.append([e.id, e.offset, e.size, e.header_size])
        elif isinstance(e, End):
            i = stack.pop()
            if ours[i][2] is None:  # unknown size: what ebmlite reports is the measured size
                ours[i][2] = e.offset - ours[i][1] - ours[i][3]
        elif isinstance(e, Leaf):
            ours.append([e.id, e.offset, len(e.data), e.header_size])
    ours = [(i, o, s) for i, o, s, _ in ours if o >= seg.offset]
    theirs = _ebmlite_elements(path)
    assert len(ours) > 100
    assert ours == theirs


def test_ref_mkv_matches_the_sdk_layout_dump():
    """ref.layout.txt lists every element the SDK wrote with its offset, size-field width and size."""
    data = (SDK_DIR / "ref.mkv").read_bytes()
    layout = []
    for line in (SDK_DIR / "ref.layout.txt").read_text().splitlines():
        m = re.search(r"@(\d+) id=([0-9A-F]+) szw=(\d+) size=(\w+)", line)
        if m:
            size = None if m[4] == "unknown" else int(m[4])
            layout.append((int(m[2], 16), int(m[1]), size, int(m[3])))
    events = ebml.iter_events(data)
    ours = {(e.id, e.offset): e for e in events if isinstance(e, (Start, Leaf))}
    assert len(layout) > 40
    for eid, off, size, szw in layout:
        e = ours[(eid, off)]
        assert e.header_size == len(ebml.encode_id(eid)) + szw
        assert (e.size if isinstance(e, Start) else len(e.data)) == size
    # the dump lists 3 blocks per cluster; every cluster starts where the dump says
    clusters = [e.offset for e in events if isinstance(e, Start) and e.id == ebml.CLUSTER]
    assert clusters == [off for eid, off, _, _ in layout if eid == ebml.CLUSTER]


def test_unknown_size_cluster_ends_at_next_cluster_tags_and_end_of_stream():
    data = (SDK_DIR / "eofr.session1.mkv").read_bytes()
    events = ebml.iter_events(data)
    opened = [e for e in events if isinstance(e, Start) and e.id == ebml.CLUSTER]
    closed = [e for e in events if isinstance(e, End) and e.id == ebml.CLUSTER]
    tags = [e for e in events if isinstance(e, Start) and e.id == ebml.TAGS]
    assert len(opened) == len(closed) == 6
    # every cluster of this stream is followed by an end-of-fragment Tags element: it closes the cluster
    assert [c.offset for c in closed] == [t.offset for t in tags]
    assert isinstance(events[-1], End) and events[-1].id == ebml.SEGMENT and events[-1].offset == len(data)


@pytest.mark.parametrize("path", SDK_FILES[:3], ids=lambda p: p.name)
def test_byte_by_byte_feeding_gives_the_same_events(path):
    data = path.read_bytes()[:20000]
    whole = EbmlReader().feed(data)
    r = EbmlReader()
    pieces = []
    for i in range(len(data)):
        pieces += r.feed(data[i:i + 1])
    assert pieces == whole


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("data,msg", [
    (b"\x00\x81\x00", "invalid element ID"),
    (b"\x1A\x45\xDF\xA3\x00", "invalid element size"),
    (b"\x1A\x45\xDF\xA3\x83\x42\x86\xFF", "unknown size not allowed"),  # a leaf of unknown size
    (b"\x1A\x45\xDF\xA3\x83\x42\x86\x85\x01\x02\x03\x04\x05", "overruns its parent"),
    (b"\x18\x53\x80\x67\xFF\x1F\x43\xB6\x75\xFF\x43\x21\x81\x00", "unexpected element 0x4321 in 0x1F43B675"),
    (b"\x1F\x43\xB6\x75\x80", "outside of its parent"),  # a Cluster at top level
])
def test_broken_ebml_raises_with_the_offset(data, msg):
    r = EbmlReader()
    with pytest.raises(EbmlError, match=msg):
        r.feed(data)
        r.close()
    with pytest.raises(EbmlError):  # the reader stays failed
        r.feed(b"\x42\x86\x81\x01")


def test_a_stream_cut_inside_an_element_is_an_error_at_close():
    data = (SDK_DIR / "ref.mkv").read_bytes()[:1000]
    r = EbmlReader()
    r.feed(data)
    with pytest.raises(EbmlError, match="stream ends inside"):
        r.close()


def test_big_leaves_are_streamed_in_chunks_not_buffered():
    payload = bytes(range(256)) * 400  # 102400 bytes
    seg = ebml.encode_id(ebml.SEGMENT) + b"\xff"
    cluster = ebml.encode_id(ebml.CLUSTER) + b"\xff" + ebml.encode_element(ebml.TIMECODE, b"\x05")
    data = seg + cluster + ebml.encode_element(ebml.SIMPLE_BLOCK, payload) + ebml.encode_element(ebml.TIMECODE, b"\x01")
    r = EbmlReader(max_leaf=1000)
    events = []
    for i in range(0, len(data), 4096):
        events += r.feed(data[i:i + 4096])
        assert len(r._buf) <= 4096 + 16  # noqa: SLF001 - the point of the test: nothing accumulates
    events = merge_chunks(events + r.close())
    assert [type(e) for e in events] == [Start, Start, Leaf, LeafStart, LeafChunk, LeafEnd, Leaf, End, End]
    assert events[4].data == payload
    assert events[3].size == len(payload) and events[5].offset == events[3].offset + events[3].header_size + len(payload)


# ------------------------------------------------------------------ property tests: random trees, random splits

A, B, C = 0x81, 0x4281, 0x214281  # masters (A may have unknown size)
LEAVES = [0x82, 0x83, 0x4282, 0x3FFFFE, 0x10000001]
TEST_SCHEMA = Schema(masters=frozenset({A, B, C}), parents={A: frozenset({None}), B: frozenset({A, C}),
                                                            C: frozenset({A, B})},
                     unknown_size_ok=frozenset({A}))


@st.composite
def trees(draw, depth=0, parent=None):
    """A list of (id, children | bytes, size-field width) nodes."""
    nodes = []
    for _ in range(draw(st.integers(0, 4 if depth < 3 else 0))):
        if depth < 3 and draw(st.booleans()):
            mid = draw(st.sampled_from([B, C]))
            nodes.append((mid, draw(trees(depth + 1, mid)), draw(st.integers(1, 8))))
        else:
            nodes.append((draw(st.sampled_from(LEAVES)), draw(st.binary(max_size=300)), draw(st.integers(1, 8))))
    return nodes


def encode(nodes, offset: int, events: list, unknown: bool = False) -> bytes:
    """Encode `nodes` starting at `offset`, appending the events a reader must report."""
    out = b""
    for eid, content, width in nodes:
        idb = ebml.encode_id(eid)
        if isinstance(content, list):
            width = max(width, 3)  # children here are < 2**21 bytes
            start_ev = len(events)
            events.append(None)
            body = encode(content, offset + len(idb) + width, events)
            hdr = idb + ebml.encode_size(len(body), width)
            events[start_ev] = Start(eid, offset, len(hdr), len(body))
            events.append(End(eid, offset + len(hdr) + len(body)))
            out += hdr + body
            offset += len(hdr) + len(body)
        else:
            width = max(width, 2)  # leaves here are < 16383 bytes
            hdr = idb + ebml.encode_size(len(content), width)
            events.append(Leaf(eid, offset, len(hdr), content))
            out += hdr + content
            offset += len(hdr) + len(content)
    return out


@st.composite
def documents(draw):
    """Top-level A masters, some of unknown size (they end where the next A starts, or at the end)."""
    tops = draw(st.lists(st.tuples(trees(), st.booleans(), st.integers(1, 8)), min_size=1, max_size=3))
    data, events = b"", []
    for children, unknown, width in tops:
        width = max(width, 3)
        idb = ebml.encode_id(A)
        hdr_len = len(idb) + width
        ev_start = len(events)
        events.append(None)
        body = encode(children, len(data) + hdr_len, events)
        size = None if unknown else len(body)
        events[ev_start] = Start(A, len(data), hdr_len, size)
        data += idb + ebml.encode_size(size, width) + body
        events.append(End(A, len(data)))
    return data, events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents(), cuts=st.lists(st.integers(0, 5000), max_size=12))
def test_random_trees_in_random_pieces_give_the_encoded_events(doc, cuts):
    data, expected = doc
    cuts = [c % (len(data) + 1) for c in cuts]
    assert feed_in_pieces(data, cuts, schema=TEST_SCHEMA) == expected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents(), cuts=st.lists(st.integers(0, 5000), max_size=12), max_leaf=st.integers(0, 64))
def test_streamed_leaves_carry_the_same_bytes_whatever_the_split(doc, cuts, max_leaf):
    data, expected = doc
    cuts = [c % (len(data) + 1) for c in cuts]
    got = merge_chunks(feed_in_pieces(data, cuts, schema=TEST_SCHEMA, max_leaf=max_leaf))
    flat = []
    for e in expected:  # what the leaves become when streamed
        if isinstance(e, Leaf) and len(e.data) > max_leaf:
            flat.append(LeafStart(e.id, e.offset, e.header_size, len(e.data)))
            if e.data:
                flat.append(LeafChunk(e.id, e.data))
            flat.append(LeafEnd(e.id, e.offset + e.header_size + len(e.data)))
        else:
            flat.append(e)
    assert got == flat


@settings(max_examples=100, deadline=None)
@given(size=st.one_of(st.none(), st.integers(0, (1 << 56) - 2)), width=st.integers(1, 8))
def test_size_vints_round_trip(size, width):
    try:
        enc = ebml.encode_size(size, width)
    except ValueError:
        assert size is not None and size >= (1 << (7 * width)) - 1
        return
    assert ebml.decode_size(enc, 0) == (size, width)
    assert ebml.decode_size(enc[:-1], 0) is None  # incomplete: wait for more
