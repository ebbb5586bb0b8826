"""Property tests of the fragment log's record format (kvs_edge/log/segment.py): pure bytes in, records out."""

from __future__ import annotations

import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvs_edge.log import segment as fmt

HEADERS = {0: b"\x1a\x45\xdf\xa3 header zero", 1: b"\x1a\x45\xdf\xa3 header one, longer" * 3, 2: b""}

fragment_st = st.fixed_dictionaries({
    "header_id": st.sampled_from(sorted(HEADERS)),
    "first_ms": st.integers(-(2**40), 2**40),
    "boot_id": st.sampled_from(["", "6f1c3f1e-0000-4000-8000-000000000001", "b\u00f6\u00f6t"]),
    "head": st.binary(max_size=40),
    "frames": st.lists(st.tuples(st.binary(max_size=120), st.integers(0, 100)), max_size=6),
    "released_before": st.booleans(),
})


def build(frags: list[dict], unfinished: dict | None = None, seq0: int = 7):
    """Encode fragments the way the log writes them. Returns (segment bytes, expected list): per fragment what a scan
    returns, with `end` (where its END record ends; None when unfinished) and `prefixes`: after each of its DATA
    records, (where that record ends, what a salvage of the fragment cut there returns)."""
    out = bytearray(fmt.MAGIC)
    written_headers: set[int] = set()
    expected = []
    for i, f in enumerate(frags + ([unfinished] if unfinished else [])):
        seq = seq0 + i
        if f["released_before"]:
            out += fmt.release_record(seq - 1)
        if f["header_id"] not in written_headers:
            out += fmt.header_record(f["header_id"], HEADERS[f["header_id"]])
            written_headers.add(f["header_id"])
        rec, _ = fmt.start_record(seq, f["header_id"], f["first_ms"], f["boot_id"], f["head"])
        out += rec
        data = bytearray(f["head"])
        last = f["first_ms"]
        common = dict(seq=seq, header_id=f["header_id"], boot_id=f["boot_id"], first_ms=f["first_ms"])
        prefixes = []
        for k, (chunk, delta) in enumerate(f["frames"], 1):
            last = max(last, f["first_ms"] + delta)
            rec, _ = fmt.data_record(seq, f["first_ms"] + delta, chunk)
            out += rec
            data += chunk
            prefixes.append((len(out), dict(common, last_ms=last, frames=k, data=bytes(data), salvaged=True)))
        if f is not unfinished:
            out += fmt.end_record(seq, len(data), len(f["frames"]), f["first_ms"], last, zlib.crc32(data))
        expected.append(dict(common, last_ms=last, frames=len(f["frames"]), data=bytes(data), salvaged=False,
                             end=None if f is unfinished else len(out), prefixes=prefixes))
    return bytes(out), expected


def after_cut(expected: list[dict], cut: int) -> list[dict]:
    """What a scan of the first `cut` bytes returns: the fragments complete before the cut, then the one the cut falls
    in salvaged with its DATA records that end before the cut (when there is at least one)."""
    out = []
    for e in expected:
        if e["end"] is not None and e["end"] <= cut:
            out.append(e)
            continue
        whole = [p for end, p in e["prefixes"] if end <= cut]
        if whole:
            out.append(whole[-1])
        break
    return out


def recovered(data: bytes) -> list[dict]:
    scan = fmt.scan_segment(data)
    return [dict(seq=f.seq, header_id=f.header_id, boot_id=f.boot_id, first_ms=f.first_ms, last_ms=f.last_ms,
                 frames=f.frames, data=fmt.fragment_bytes(data, f), salvaged=f.salvaged) for f in scan.fragments]


def strip(expected: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("end", "prefixes")} for e in expected]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fragment_st, max_size=6))
def test_random_fragments_round_trip(frags):
    data, expected = build(frags)
    scan = fmt.scan_segment(data)
    assert scan.error is None
    assert scan.clean_length == len(data)
    assert recovered(data) == strip(expected)
    assert {h: HEADERS[h] for h in {f["header_id"] for f in frags}} == scan.headers
    assert scan.releases == [7 + i - 1 for i, f in enumerate(frags) if f["released_before"]]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fragment_st, max_size=5), st.one_of(st.none(), fragment_st), st.data())
def test_truncated_at_any_byte_recovers_the_complete_fragments_and_the_whole_frames_of_the_cut_one(frags, unfinished,
                                                                                                     draw):
    data, expected = build(frags, unfinished)
    cut = draw.draw(st.integers(0, len(data)), label="cut")
    torn = data[:cut]
    want = after_cut(expected, cut)
    assert recovered(torn) == strip(want)
    scan = fmt.scan_segment(torn)
    # what is kept reaches at least the end of the last fragment (complete, or salvaged up to its last whole frame)
    if cut < len(fmt.MAGIC):
        assert scan.clean_length == 0  # a torn magic: nothing worth keeping
    else:
        kept_end = len(fmt.MAGIC)
        if want:
            last = want[-1]
            kept_end = last["end"] if not last["salvaged"] else \
                next(end for end, p in expected[len(want) - 1]["prefixes"] if p["frames"] == last["frames"])
        assert kept_end <= scan.clean_length <= cut
        # cutting the file there and scanning again gives the same fragments (recovery is idempotent)
        assert recovered(torn[:scan.clean_length]) == strip(want)
        if not (want and want[-1]["salvaged"]):
            assert fmt.scan_segment(torn[:scan.clean_length]).error is None


def test_every_cut_of_one_segment():
    """Exhaustive over every byte of a small segment with an unfinished fragment at the end."""
    f = lambda n: {"header_id": n % 2, "first_ms": 1000 * n, "boot_id": "b", "head": b"H%d" % n,  # noqa: E731
                   "frames": [(bytes([n]) * (10 + k), 33 * k) for k in range(3)], "released_before": n == 2}
    data, expected = build([f(0), f(1), f(2)], unfinished=f(3))
    for cut in range(len(data) + 1):
        assert recovered(data[:cut]) == strip(after_cut(expected, cut)), cut


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fragment_st, min_size=1, max_size=5), st.data())
def test_a_corrupted_byte_never_returns_a_damaged_fragment(frags, draw):
    data, expected = build(frags)
    pos = draw.draw(st.integers(0, len(data) - 1), label="pos")
    flip = draw.draw(st.integers(1, 255), label="xor")
    bad = bytearray(data)
    bad[pos] ^= flip
    # every fragment entirely before the damaged byte survives, the damaged one only with the frames (whole, checked
    # records) before that byte, and nothing after it
    assert recovered(bytes(bad)) == strip(after_cut(expected, pos))


@given(st.binary(max_size=300))
def test_garbage_never_raises(blob):
    for data in (blob, fmt.MAGIC + blob):
        scan = fmt.scan_segment(data)
        assert 0 <= scan.clean_length <= len(data)


def test_end_record_must_match_the_bytes():
    """A fragment whose END disagrees with its data (size or checksum) is not returned, even with good record CRCs."""
    out = bytearray(fmt.MAGIC) + fmt.header_record(0, b"h")
    rec, _ = fmt.start_record(1, 0, 5, "b", b"abc")
    out += rec
    good = bytes(out) + fmt.end_record(1, 3, 0, 5, 5, zlib.crc32(b"abc"))
    assert [f.seq for f in fmt.scan_segment(good).fragments] == [1]
    wrong_crc = bytes(out) + fmt.end_record(1, 3, 0, 5, 5, zlib.crc32(b"abd"))
    wrong_size = bytes(out) + fmt.end_record(1, 4, 0, 5, 5, zlib.crc32(b"abc"))
    for data in (wrong_crc, wrong_size):
        scan = fmt.scan_segment(data)
        assert scan.fragments == [] and scan.clean_length == len(fmt.MAGIC) + len(fmt.header_record(0, b"h"))
        assert "does not match its END" in scan.error


def test_chunk_span_reads_any_range():
    frags = [{"header_id": 0, "first_ms": 0, "boot_id": "b", "head": b"0123",
              "frames": [(b"abcdef", 1), (b"", 2), (b"XY", 3), (b"zzzzzzz", 4)], "released_before": False}]
    data, expected = build(frags)
    whole = expected[0]["data"]
    scanned = fmt.scan_segment(data).fragments[0]
    for off in range(len(whole) + 1):
        for n in range(1, len(whole) + 2):
            assert fmt.read_chunks(data, scanned.offsets, scanned.ends, off, n) == whole[off:off + n]
