"""kvs_edge.media.h264 against real libx264 streams (PyAV) and hypothesis properties."""

from __future__ import annotations

import io

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from kvs_edge.media import h264
from kvs_edge.media.h264 import H264Error
from support.h264gen import SDK_DIR, annexb_nals, encode_one, make_h264

# ---------------------------------------------------------------- helpers independent of the module under test


def escape(rbsp: bytes) -> bytes:
    """Insert emulation prevention bytes (H.264 7.4.1), written independently of kvs_edge."""
    out = bytearray()
    zeros = 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


# a NAL unit as it appears in a byte stream: header byte non-zero, escaped payload, last byte non-zero
nal_st = hs.builds(lambda hdr, body: bytes([hdr]) + escape(body + b"\x80"),
                   hs.integers(1, 0x7F), hs.binary(max_size=64))


def first_of(data: bytes, t: int) -> bytes:
    return next(n for n in annexb_nals(data) if n[0] & 0x1F == t)


# ---------------------------------------------------------------- Annex B


@settings(max_examples=300, deadline=None)
@given(hs.lists(nal_st, max_size=8), hs.lists(hs.sampled_from([3, 4]), min_size=8, max_size=8),
       hs.lists(hs.integers(0, 3), min_size=8, max_size=8))
def test_split_join_round_trip_with_3_and_4_byte_start_codes_and_trailing_zeros(nals, codes, trailing):
    data = b"".join((b"\x00" * (c - 3)) + b"\x00\x00\x01" + n + b"\x00" * z for n, c, z in zip(nals, codes, trailing))
    assert h264.split_annexb(data) == nals
    assert h264.split_annexb(h264.join_annexb(nals)) == nals


@settings(max_examples=300, deadline=None)
@given(hs.binary(max_size=200))
def test_unescape_inverts_emulation_prevention(rbsp):
    esc = escape(rbsp)
    assert b"\x00\x00\x00" not in esc and b"\x00\x00\x01" not in esc and b"\x00\x00\x02" not in esc
    assert h264.unescape_rbsp(esc) == rbsp


@settings(max_examples=200, deadline=None)
@given(hs.binary(max_size=300))
def test_split_never_fails_other_than_h264error(data):
    try:
        nals = h264.split_annexb(data)
    except H264Error:
        return
    assert all(n and n[-1] != 0 and b"\x00\x00\x01" not in n for n in nals)


def test_split_rejects_bytes_before_the_first_start_code_and_ignores_leading_zeros():
    with pytest.raises(H264Error):
        h264.split_annexb(b"\x12\x34\x00\x00\x01\x65\x88")
    with pytest.raises(H264Error):
        h264.split_annexb(b"no start code here")
    assert h264.split_annexb(b"\x00\x00\x00\x00\x00\x01\x65\x88\x00\x00") == [b"\x65\x88"]
    assert h264.split_annexb(b"") == [] and h264.split_annexb(b"\x00\x00") == []
    # an empty NAL between two start codes is skipped
    assert h264.split_annexb(b"\x00\x00\x01\x00\x00\x01\x09\xf0") == [b"\x09\xf0"]


def test_split_matches_the_encoder_access_units():
    enc = make_h264(10, 160, 120, aud=True, sei=True)
    for u in enc.units:
        assert h264.split_annexb(u.data) == annexb_nals(u.data)
    types = [h264.nal_type(n) for n in h264.split_annexb(enc.units[0].data)]
    assert types[0] == h264.NAL_AUD and h264.NAL_SPS in types and h264.NAL_PPS in types
    assert h264.NAL_SEI in types and types[-1] == h264.NAL_IDR


@settings(max_examples=200, deadline=None)
@given(hs.lists(nal_st, max_size=8))
def test_annexb_to_avcc_and_back(nals):
    avcc = h264.annexb_to_avcc(h264.join_annexb(nals))
    assert len(avcc) == sum(4 + len(n) for n in nals)
    assert list(h264.iter_avcc(avcc)) == nals


def test_iter_avcc_rejects_lengths_that_do_not_add_up():
    good = h264.annexb_to_avcc(b"\x00\x00\x01\x65\x88\x84")
    for bad in (good[:-1], good + b"\x00", b"\x00\x00\x00\x09\x65", b"\x00\x00\x00\x00"):
        with pytest.raises(H264Error):
            list(h264.iter_avcc(bad))
    assert list(h264.iter_avcc(b"\x00\x03\x65\x88\x84", length_size=2)) == [b"\x65\x88\x84"]


# ---------------------------------------------------------------- SPS against PyAV's decoder

SPS_SHAPES = [
    dict(width=640, height=480, profile="baseline"),
    dict(width=1920, height=1080, profile="high", x264_params="cabac=1:8x8dct=1"),  # coded 1088, cropped
    dict(width=640, height=480, profile="high", x264_params="cabac=1:8x8dct=1:cqm=jvt"),  # scaling lists in the SPS
    dict(width=1920, height=1080, profile="high", x264_params="interlaced=1"),  # frame_mbs_only=0, crop in pairs
    dict(width=352, height=288, profile="high444", pix_fmt="yuv444p", x264_params="cqm=jvt"),  # 12 scaling lists
    dict(width=330, height=250, profile="high422", pix_fmt="yuv422p"),  # odd crop, 4:2:2
    dict(width=320, height=240, profile="high10", pix_fmt="yuv420p10le"),
]


@pytest.mark.parametrize("shape", SPS_SHAPES, ids=lambda s: f"{s['profile']}-{s['width']}x{s['height']}-"
                                                         f"{s.get('x264_params', '')}")
def test_parse_sps_agrees_with_libavcodec(shape):
    data = encode_one(**shape)
    sps = h264.parse_sps(first_of(data, h264.NAL_SPS))
    with av.open(io.BytesIO(data), format="h264") as c:
        frame = next(c.decode(video=0))
        ctx = c.streams.video[0].codec_context
        fmt = frame.format
    assert (sps.width, sps.height) == (frame.width, frame.height) == (shape["width"], shape["height"])
    assert sps.coded_width == -(-shape["width"] // 16) * 16
    mbs_h = -(-shape["height"] // (16 * (1 if sps.frame_mbs_only else 2))) * (1 if sps.frame_mbs_only else 2)
    assert sps.coded_height == mbs_h * 16
    assert sps.frame_mbs_only == ("interlaced=1" not in shape.get("x264_params", ""))
    chroma = {"yuv420p": 1, "yuv420p10le": 1, "yuv422p": 2, "yuv444p": 3}[shape.get("pix_fmt", "yuv420p")]
    assert sps.chroma_format_idc == chroma
    assert sps.bit_depth_luma == sps.bit_depth_chroma == (10 if "10" in fmt.name else 8)
    expected_profile = {"Constrained Baseline": 66, "Baseline": 66, "Main": 77, "High": 100, "High 10": 110,
                        "High 4:2:2": 122, "High 4:4:4 Predictive": 244}[ctx.profile]
    assert sps.profile_idc == expected_profile
    assert sps.level_idc == first_of(data, h264.NAL_SPS)[3]


def test_parse_sps_of_the_sdk_input_with_emulation_prevention():
    sps_nal = first_of((SDK_DIR / "in.h264").read_bytes(), h264.NAL_SPS)
    assert b"\x00\x00\x03" in sps_nal  # the escaped form is what parse_sps gets
    sps = h264.parse_sps(sps_nal)
    assert (sps.width, sps.height, sps.profile_idc, sps.level_idc) == (640, 480, 100, 30)  # README: 640x480


def test_parse_sps_rejects_nonsense():
    for bad in (b"", b"\x68\x00\x00\x00", b"\x67\x42", b"\x67\x42\x00\x1e", b"\x67\x64\x00\x1f\x00"):
        with pytest.raises(H264Error):
            h264.parse_sps(bad)


@settings(max_examples=200, deadline=None)
@given(hs.binary(max_size=40))
def test_parse_sps_never_raises_anything_but_h264error(body):
    try:
        h264.parse_sps(b"\x67" + body)
    except H264Error:
        pass


# ---------------------------------------------------------------- slice_type


def test_slice_type_matches_the_decoder_picture_types():
    enc = make_h264(24, 160, 120, profile="main", bframes=2, gop=12)
    ours = []
    for u in enc.units:
        types = {h264.slice_type(n) for n in h264.split_annexb(u.data) if h264.nal_type(n) in (1, 5)}
        assert len(types) == 1
        ours.append({0: "P", 1: "B", 2: "I"}[types.pop()])
    # PyAV decodes in presentation order; the encoder's pts of each unit maps decode order to it
    with av.open(io.BytesIO(enc.annexb), format="h264") as c:
        by_pts = [{1: "I", 2: "P", 3: "B"}[int(f.pict_type)] for f in c.decode(video=0)]  # AVPictureType
    assert [by_pts[u.pts] for u in enc.units] == ours
    assert "B" in ours and ours[0] == "I"


def test_slice_type_rejects_non_slices():
    with pytest.raises(H264Error):
        h264.slice_type(b"\x67\x42\x00\x1e")


# ---------------------------------------------------------------- avcC


def ffmpeg_avcc(annexb: bytes) -> bytes:
    """The avcC that libavformat's Matroska muxer writes for this stream (FFmpeg's own builder)."""
    from ebmlite import loadSchema

    buf = io.BytesIO()
    with av.open(io.BytesIO(annexb), format="h264") as src, av.open(buf, "w", format="matroska") as dst:
        st = dst.add_stream_from_template(src.streams.video[0])
        for pkt in src.demux(video=0):
            if pkt.size:
                pkt.stream = st
                if pkt.pts is None:
                    pkt.pts = pkt.dts = 0
                dst.mux(pkt)
                break
    doc = loadSchema("matroska.xml").loads(buf.getvalue())
    seg = [e for e in doc if e.name == "Segment"][0]
    tracks = [e for e in seg if e.name == "Tracks"][0]
    entry = [e for e in tracks if e.name == "TrackEntry"][0]
    return bytes([c for c in entry if c.name == "CodecPrivate"][0].value)


@pytest.mark.parametrize("shape", [SPS_SHAPES[0], SPS_SHAPES[1], SPS_SHAPES[5], SPS_SHAPES[6]],
                         ids=["baseline", "high", "high422", "high10"])
def test_build_avcc_matches_ffmpeg(shape):
    data = encode_one(**shape)
    sps, pps = first_of(data, h264.NAL_SPS), first_of(data, h264.NAL_PPS)
    ours = h264.build_avcc([sps], [pps])
    assert ours == ffmpeg_avcc(data)
    cfg = h264.parse_avcc(ours)
    assert (cfg.sps, cfg.pps, cfg.length_size, cfg.profile_idc, cfg.level_idc) == ([sps], [pps], 4, sps[1], sps[3])
    info = h264.parse_sps(sps)
    if sps[1] in (100, 110, 122, 144):
        assert (cfg.chroma_format_idc, cfg.bit_depth_luma, cfg.bit_depth_chroma) == (
            info.chroma_format_idc, info.bit_depth_luma, info.bit_depth_chroma)
    else:
        assert cfg.chroma_format_idc is None and len(ours) == 11 + len(sps) + len(pps)


def test_parse_avcc_accepts_the_sdk_record_without_high_profile_extension():
    # CodecPrivate of ref.mkv (ref.layout.txt): High profile, no extension bytes
    sdk = bytes.fromhex("0164001effe100196764001eacb201407b6022000003000200000300781e2c5c9001000668ebc3cb22c0")
    cfg = h264.parse_avcc(sdk)
    data = (SDK_DIR / "in.h264").read_bytes()
    assert cfg.sps == [first_of(data, 7)] and cfg.pps == [first_of(data, 8)]
    assert (cfg.profile_idc, cfg.level_idc, cfg.length_size, cfg.chroma_format_idc) == (100, 30, 4, None)
    # ours carries the same SPS/PPS plus the extension
    ours = h264.build_avcc(cfg.sps, cfg.pps)
    assert ours.startswith(sdk) and len(ours) == len(sdk) + 4


sps_like = hs.builds(lambda p, body: bytes([0x67, p]) + body, hs.sampled_from([66, 77, 88]), hs.binary(min_size=2,
                                                                                                    max_size=40))
pps_like = hs.builds(lambda body: b"\x68" + body, hs.binary(min_size=1, max_size=20))


@settings(max_examples=200, deadline=None)
@given(hs.lists(sps_like, min_size=1, max_size=3), hs.lists(pps_like, min_size=1, max_size=3))
def test_avcc_round_trip(sps, pps):
    cfg = h264.parse_avcc(h264.build_avcc(sps, pps))
    assert (cfg.sps, cfg.pps, cfg.version, cfg.length_size) == (sps, pps, 1, 4)
    assert (cfg.profile_idc, cfg.profile_compat, cfg.level_idc) == (sps[0][1], sps[0][2], sps[0][3])


@settings(max_examples=300, deadline=None)
@given(hs.binary(max_size=80))
def test_parse_avcc_raises_only_h264error(data):
    try:
        h264.parse_avcc(data)
    except H264Error:
        pass


def test_avcc_nonsense_is_rejected():
    good = h264.build_avcc([b"\x67\x42\xc0\x1e\xda"], [b"\x68\xce\x3c\x80"])
    for bad in (b"", good[:6], good[:-1], b"\x02" + good[1:], good[:4] + b"\xfe" + good[5:],
                good[:5] + b"\xe0" + good[6:]):
        with pytest.raises(H264Error):
            h264.parse_avcc(bad)
    with pytest.raises(H264Error):
        h264.build_avcc([], [b"\x68\xce"])
    with pytest.raises(H264Error):
        h264.build_avcc([b"\x68\xce\x3c\x80"], [b"\x68\xce"])


def reference_slice_type(nal: bytes) -> int | None:
    """slice_type % 5 read with a bit string, written here from the spec (None when the header is cut short)."""
    raw = bytearray()
    zeros = 0
    for b in nal[1:24]:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        raw.append(b)
        zeros = zeros + 1 if b == 0 else 0
    bits = "".join(f"{b:08b}" for b in raw)
    pos, vals = 0, []
    for _ in range(2):
        lz = len(bits) - len(bits[pos:].lstrip("0")) - pos
        if pos + 2 * lz + 1 > len(bits) or lz > 31:
            return None
        vals.append(int(bits[pos + lz:pos + 2 * lz + 1], 2) - 1)
        pos += 2 * lz + 1
    return vals[1] % 5 if vals[1] <= 9 else None


@settings(max_examples=500, deadline=None)
@given(hs.sampled_from([0x01, 0x21, 0x41, 0x65, 0x25]), hs.binary(min_size=1, max_size=30))
def test_slice_type_fast_path_agrees_with_a_bit_string_reader(hdr, body):
    nal = bytes([hdr]) + body
    want = reference_slice_type(nal)
    if want is None:
        with pytest.raises(H264Error):
            h264.slice_type(nal)
    else:
        assert h264.slice_type(nal) == want


@pytest.mark.parametrize("first", range(256))
def test_slice_type_of_every_first_byte_agrees_with_the_bit_string_reader(first):
    """The one-byte table (first_mb_in_slice = 0) and the 64-bit path, for every byte after the NAL header."""
    for tail in (b"", b"\x80", b"\xff" * 8, b"\x12\x34\x56\x78\x9a\xbc\xde\xf0", b"\x00\x00\x03\x01\x80\x00\x00\x01"):
        nal = bytes([0x41, first]) + tail
        want = reference_slice_type(nal)
        if want is None:
            with pytest.raises(H264Error):
                h264.slice_type(nal)
        else:
            assert h264.slice_type(nal) == want, nal.hex()
