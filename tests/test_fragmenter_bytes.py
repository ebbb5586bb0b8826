"""The fragmenter's bytes against a writer written here from the specifications, without kvs_edge: every SimpleBlock and
cluster head must be byte-identical, with either start-code scanner (the regex one, and the numpy one used when numpy
is already loaded), on the official SDK's input and on libx264 streams of several layouts. Guards the muxer's fast
paths (issue 18 item 10): they may change how the bytes are made, never which bytes."""

from __future__ import annotations

import io
import re
import sys

import av
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from kvs_edge.media import h264, mkv
from kvs_edge.media.fragmenter import Fragmenter, FragmentEnd, FragmentStart, FrameWritten, SessionStart
from kvs_edge.media.h264 import H264Error
from support.h264gen import decode_pictures, make_h264
from support.sdk_data import sdk_file

START = 1_700_000_000_000


# ---------------------------------------------------------------- the independent writer (H.264 Annex B, Matroska)


def naive_start_codes(data: bytes) -> list[int]:
    """Every offset of 00 00 01, one byte at a time."""
    return [i for i in range(len(data) - 2) if data[i] == 0 and data[i + 1] == 0 and data[i + 2] == 1]


def naive_nals(data: bytes) -> list[bytes]:
    """H.264 Annex B: NAL units between start codes; zero bytes before a start code or the end belong to the byte
    stream (leading_zero_8bits, zero_byte, trailing_zero_8bits); anything else before the first start code is an
    error (ValueError)."""
    codes = naive_start_codes(data)
    if not codes or any(data[:codes[0]]):
        if any(data):
            raise ValueError("not Annex B")
        return []
    nals = []
    for k, c in enumerate(codes):
        body = data[c + 3:codes[k + 1] if k + 1 < len(codes) else len(data)]
        body = body.rstrip(b"\x00")
        if body:
            nals.append(body)
    return nals


def vint(size: int) -> bytes:
    """EBML data size, shortest form; all-ones values are reserved (unknown size)."""
    for width in range(1, 9):
        if size < 2 ** (7 * width) - 1:
            return (size | 1 << (7 * width)).to_bytes(width, "big")
    raise ValueError(size)


def independent_block(access_unit: bytes, rel_ms: int, key: bool) -> bytes:
    """Matroska SimpleBlock (ID A3): track 1 as a vint, int16 timecode, flags (0x80 key frame), then the AVCC payload
    (ISO/IEC 14496-15: each NAL unit after its 4-byte big-endian length)."""
    payload = b"".join(len(n).to_bytes(4, "big") + n for n in naive_nals(access_unit))
    body = b"\x81" + rel_ms.to_bytes(2, "big", signed=True) + (b"\x80" if key else b"\x00") + payload
    return b"\xa3" + vint(len(body)) + body


def independent_cluster_head(timecode_ms: int) -> bytes:
    """Cluster (1F43B675) of unknown size, Timecode (E7) as 8 bytes, Position (A7) 0: the KVS layout."""
    return b"\x1f\x43\xb6\x75\xff" + b"\xe7\x88" + timecode_ms.to_bytes(8, "big") + b"\xa7\x81\x00"


# ---------------------------------------------------------------- inputs


def sdk_units() -> list[tuple[bytes, bool]]:
    with av.open(str(sdk_file("in.h264")), format="h264") as c:
        return [(bytes(p), bool(p.is_keyframe)) for p in c.demux(video=0) if p.size]


def restart(units: list[tuple[bytes, bool]]) -> list[tuple[bytes, bool]]:
    """The same NAL units with 3- and 4-byte start codes alternating and trailing zero bytes after some of them."""
    out = []
    for i, (au, key) in enumerate(units):
        parts = []
        for k, nal in enumerate(naive_nals(au)):
            parts.append((b"\x00\x00\x01" if (i + k) % 2 else b"\x00\x00\x00\x01") + nal + b"\x00" * ((i * k) % 3))
        out.append((b"".join(parts), key))
    return out


SHAPES = {
    "baseline-640x480": dict(frames=45, width=640, height=480, fps=30, gop=15),
    "high-1280x720-2-slices": dict(frames=12, width=1280, height=720, fps=30, gop=6, profile="high", slices=2),
    "aud-sei-4-slices": dict(frames=30, width=320, height=240, fps=30, gop=10, aud=True, sei=True, slices=4),
    "headers-on-first-idr-only": dict(frames=30, width=320, height=240, fps=30, gop=10, repeat_headers=False),
}


def inputs(name: str) -> list[tuple[bytes, bool]]:
    base = name.removesuffix("+restart")
    units = sdk_units() if base == "sdk" else [(u.data, u.key) for u in make_h264(**SHAPES[base]).units]
    return restart(units) if name.endswith("+restart") else units


@pytest.fixture(params=["regex", "numpy"])
def scanner(request, monkeypatch):
    """Force one of h264.start_codes' two scanners for every access unit (numpy is loaded by this module)."""
    monkeypatch.setattr(h264, "_NUMPY_SCAN_MIN", 0 if request.param == "numpy" else 1 << 62)
    return request.param


# ---------------------------------------------------------------- tests


def mux_and_check(units: list[tuple[bytes, bool]], target_ms: int) -> bytes:
    """Push every access unit; each cluster head and block must equal the independent writer's. Returns the session."""
    frag = Fragmenter(target_ms=target_ms)
    blocks = heads = 0
    cluster = None
    session = bytearray()
    for i, (au, key) in enumerate(units):
        ts = START + i * 1000 // 30
        for e in frag.push(au, ts, key):
            if isinstance(e, FragmentStart):
                assert e.data == independent_cluster_head(ts)
                cluster = ts
                heads += 1
                session += e.data
            elif isinstance(e, FrameWritten):
                assert e.timecode_ms == ts and e.track == 1
                assert e.data == independent_block(au, ts - cluster, key)
                blocks += 1
                session += e.data
            elif isinstance(e, SessionStart):
                assert not session  # one session
                session += e.header
            else:
                assert isinstance(e, FragmentEnd), e
    assert blocks == len(units) == frag.stats.frames_written  # no frame left out
    assert heads == sum(1 for _, k in units if k) >= 2
    return bytes(session)


@pytest.mark.parametrize("name", ["sdk", "sdk+restart", *SHAPES, "high-1280x720-2-slices+restart"])
def test_every_block_equals_the_independent_writer(name, scanner):
    units = inputs(name)
    session = mux_and_check(units, target_ms=0)
    # and what PyAV decodes from the session is what it decodes from the Annex B input, picture for picture
    ours, orig = decode_pictures(session, "matroska"), decode_pictures(b"".join(au for au, _ in units))
    assert len(ours) == len(orig) == len(units)
    assert all((a == b).all() for a, b in zip(ours, orig))


def test_a_1080p_stream_with_the_default_scanner_choice():
    """1080p frames are over the numpy threshold (8 KiB): with numpy loaded (this module imports it) the numpy scan
    runs without forcing, and the blocks are still the independent writer's."""
    enc = make_h264(frames=6, width=1920, height=1080, fps=30, gop=3, profile="high")
    assert min(len(u.data) for u in enc.units) >= h264._NUMPY_SCAN_MIN
    session = mux_and_check([(u.data, u.key) for u in enc.units], target_ms=0)
    with av.open(io.BytesIO(session), format="matroska") as c:
        assert sum(1 for p in c.demux(video=0) if p.size) == len(enc.units)


# bytes that make start codes likely: zeros, 01, 03 (emulation prevention) and NAL headers
PIECES = hs.lists(hs.one_of(hs.sampled_from([b"\x00", b"\x01", b"\x03", b"\x41", b"\x65", b"\x00\x00\x01",
                                             b"\x00\x00\x00\x01", b"\x00\x00\x03", b"\x00\x00"]),
                            hs.binary(min_size=1, max_size=40)), max_size=60)


@settings(max_examples=400, deadline=None)
@given(PIECES)
def test_both_scanners_find_every_start_code(pieces):
    data = b"".join(pieces)
    want = naive_start_codes(data)
    assert list(h264._start_codes_numpy(numpy, data)) == want
    assert [m.start() for m in re.finditer(b"\x00\x00\x01", data)] == want  # what the regex path does


@settings(max_examples=300, deadline=None)
@given(PIECES, hs.booleans())
def test_nal_spans_agrees_with_the_naive_splitter(pieces, use_numpy):
    data = b"".join(pieces)
    old = h264._NUMPY_SCAN_MIN
    h264._NUMPY_SCAN_MIN = 0 if use_numpy else 1 << 62
    try:
        try:
            want = naive_nals(data)
        except ValueError:
            with pytest.raises(H264Error):
                h264.nal_spans(data)
            return
        assert [data[s:e] for s, e in h264.nal_spans(data)] == want
    finally:
        h264._NUMPY_SCAN_MIN = old


def test_the_numpy_scan_is_used_only_when_numpy_is_loaded(monkeypatch):
    """Never imported for the scan (it would cost ~15 MB of RSS); used for large access units once loaded."""
    big = b"\x00\x00\x00\x01\x65" + bytes(range(1, 256)) * 64
    calls = []
    real = h264._start_codes_numpy
    monkeypatch.setattr(h264, "_start_codes_numpy", lambda np, d: calls.append(len(d)) or real(np, d))
    monkeypatch.delitem(sys.modules, "numpy")
    assert h264.nal_spans(big) == [(4, len(big))] and calls == []
    monkeypatch.setitem(sys.modules, "numpy", numpy)
    assert h264.nal_spans(big) == [(4, len(big))] and calls == [len(big)]
    assert h264.nal_spans(big[:100]) == [(4, 100)] and calls == [len(big)]  # small: the regex is cheaper


@pytest.mark.parametrize("payload", [0, 1, 118, 122, 123, 124, 200, 16374, 16378, 16379, 16380, 40000, 2097142,
                                     2097146, 2097147, 2097148, 268435450, 268435451, 268435452])
@pytest.mark.parametrize("rel, key, track", [(0, True, 1), (-32768, False, 1), (32767, False, 2), (-1, True, 126)])
def test_simple_block_head_at_every_size_width_boundary(payload, rel, key, track):
    body_head = bytes((0x80 | track,)) + rel.to_bytes(2, "big", signed=True) + (b"\x80" if key else b"\x00")
    assert mkv.simple_block_head(rel, key, payload, track) == b"\xa3" + vint(payload + 4) + body_head
