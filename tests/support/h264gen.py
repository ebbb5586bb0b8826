"""Real H.264 for tests, made with PyAV's libx264 (no files shipped, no mocks).

make_h264() returns Annex B bytes plus the access units as the encoder emitted them, so tests can compare
what a muxer or a server received with what was encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SDK_DIR = Path(__file__).resolve().parents[1] / "data" / "kvs-sdk"  # the official SDK's sample output, see its README


@dataclass
class EncodedAU:
    data: bytes  # Annex B access unit
    key: bool
    pts: int  # frame index


@dataclass
class Encoded:
    annexb: bytes
    units: list[EncodedAU]
    width: int
    height: int
    fps: int


def _picture(i: int, width: int, height: int) -> np.ndarray:
    """A moving gradient with a bright bar: every frame differs, so decoded pictures can be compared."""
    y = np.arange(height, dtype=np.uint16)[:, None]
    x = np.arange(width, dtype=np.uint16)[None, :]
    img = np.zeros((height, width, 3), dtype=np.uint8)
    img[..., 0] = ((x + 4 * i) % 256).astype(np.uint8)
    img[..., 1] = ((y + 2 * i) % 256).astype(np.uint8)
    img[..., 2] = ((x + y + i) % 256).astype(np.uint8)
    bar = (i * 8) % max(width - 16, 1)
    img[:, bar:bar + 16, :] = 255
    return img


def make_h264(frames: int = 60, width: int = 320, height: int = 240, fps: int = 30, *, gop: int | None = None,
              profile: str = "baseline", slices: int = 1, repeat_headers: bool = True, aud: bool = False,
              sei: bool = False, bframes: int = 0, bitrate: int | None = None) -> Encoded:
    """Encode `frames` pictures with libx264.

    gop: key-frame interval in frames (default: fps, i.e. one IDR a second).
    repeat_headers: SPS/PPS before every IDR (True) or only the first one (False).
    aud/sei: ask x264 to emit access unit delimiters / its SEI user-data NAL.
    """
    gop = gop or fps
    opts = {
        "profile": profile,
        "preset": "ultrafast" if profile == "baseline" else "veryfast",
        "tune": "zerolatency",
    }
    x264 = [f"keyint={gop}", f"min-keyint={gop}", "scenecut=0", f"bframes={bframes}", f"slices={slices}",
            "repeat-headers=1", f"aud={1 if aud else 0}"]
    if bframes:
        x264.append("b-pyramid=none")
        opts["tune"] = "film"
    opts["x264-params"] = ":".join(x264)
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height = width, height
    enc.pix_fmt = "yuv420p"
    enc.time_base = Fraction(1, fps)
    enc.framerate = Fraction(fps, 1)
    if bitrate:
        enc.bit_rate = bitrate
    enc.options = opts
    # Annex B with headers in-band (no global header), as a camera encoder emits it
    units: list[EncodedAU] = []
    for i in range(frames):
        vf = av.VideoFrame.from_ndarray(_picture(i, width, height), format="rgb24").reformat(format="yuv420p")
        vf.pts = i
        for pkt in enc.encode(vf):
            units.append(EncodedAU(bytes(pkt), bool(pkt.is_keyframe), int(pkt.pts)))
    for pkt in enc.encode(None):
        units.append(EncodedAU(bytes(pkt), bool(pkt.is_keyframe), int(pkt.pts)))
    if not sei:
        units = [EncodedAU(_strip_sei(u.data), u.key, u.pts) for u in units]
    if not repeat_headers:
        # x264's repeat-headers=0 without a global header emits no SPS/PPS at all: keep the first IDR's only
        units = units[:1] + [EncodedAU(_strip_nal_types(u.data, (7, 8)), u.key, u.pts) for u in units[1:]]
    return Encoded(b"".join(u.data for u in units), units, width, height, fps)


def _strip_sei(au: bytes) -> bytes:
    """Remove x264's SEI (its settings string) unless a test asks for it."""
    return _strip_nal_types(au, (6,))


def _strip_nal_types(au: bytes, drop: tuple[int, ...]) -> bytes:
    """Remove the NAL units of the given types from an Annex B access unit."""
    out = bytearray()
    i = 0
    starts = []
    while True:
        j = au.find(b"\x00\x00\x01", i)
        if j < 0:
            break
        s = j - 1 if j > 0 and au[j - 1] == 0 else j
        starts.append((s, j + 3))
        i = j + 3
    for k, (s, body) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(au)
        if au[body] & 0x1F not in drop:
            out += au[s:end]
    return bytes(out)


def decode_pictures(data: bytes, fmt: str = "h264") -> list[np.ndarray]:
    """Decode every picture of an H.264 or MKV byte string with PyAV, in presentation order (as gray arrays)."""
    import io

    pics = []
    with av.open(io.BytesIO(data), format=fmt) as c:
        for f in c.decode(video=0):
            pics.append(f.to_ndarray(format="gray"))
    return pics


# ---------------------------------------------------------------- reading KVS MKV back with ebmlite (independent parser)


@dataclass
class MkvBlock:
    track: int
    rel_timecode: int  # int16, relative to the cluster
    flags: int
    payload: bytes

    @property
    def key(self) -> bool:
        return bool(self.flags & 0x80)


@dataclass
class MkvCluster:
    timecode: int
    timecode_offset: int  # byte offset of the 8-byte Timecode value in the input
    timecode_width: int  # bytes of the Timecode value
    unknown_size: bool
    blocks: list[MkvBlock]
    tags_before: list[list[tuple[str, str]]]  # Tags elements written between the previous cluster and this one


@dataclass
class MkvSession:
    ebml: dict
    segment_unknown_size: bool
    info: dict
    track: dict  # TrackEntry children by name; Video children flattened in (PixelWidth, PixelHeight)
    tracks: int
    clusters: list[MkvCluster]
    trailing_tags: list[list[tuple[str, str]]]  # Tags after the last cluster
    top_level: list[str]  # element names directly inside the Segment, in order
    track2: dict | None = None  # the second TrackEntry (audio) like `track`, Audio children flattened in


def read_kvs_mkv(data: bytes) -> MkvSession:
    """Parse one MKV session with ebmlite (not our code) into what a KVS check needs."""
    from ebmlite import loadSchema

    schema = loadSchema("matroska.xml")
    doc = schema.loads(bytes(data))
    segs = [e for e in doc if e.name == "Segment"]
    assert len(segs) == 1, f"expected one Segment, got {[e.name for e in doc]}"
    seg = segs[0]

    def unknown(el) -> bool:
        size_field = data[el.offset + len(bytes.fromhex(f"{el.id:x}".rjust(2, "0"))):el.payloadOffset]
        return size_field == b"\xff" or size_field == b"\x01\xff\xff\xff\xff\xff\xff\xff"

    def tags_of(el) -> list[tuple[str, str]]:
        out = []
        for tag in el:
            for st in tag:
                if st.name == "SimpleTag":
                    kv = {c.name: c.value for c in st}
                    out.append((kv.get("TagName"), kv.get("TagString", "")))
        return out

    info, track, clusters, pending, track2 = {}, {}, [], [], None
    ntracks = 0
    top = []
    for el in seg:
        top.append(el.name)
        if el.name == "Info":
            info = {c.name: (bytes(c.value) if isinstance(c.value, bytearray) else c.value) for c in el}
        elif el.name == "Tracks":
            entries = [t for t in el if t.name == "TrackEntry"]
            ntracks = len(entries)
            for c in entries[0]:
                if c.name == "Video":
                    for v in c:
                        track[v.name] = v.value
                else:
                    track[c.name] = bytes(c.value) if isinstance(c.value, bytearray) else c.value
            if ntracks > 1:
                track2 = {}
                for c in entries[1]:
                    for v in (list(c) if c.name == "Audio" else [c]):
                        track2[v.name] = bytes(v.value) if isinstance(v.value, bytearray) else v.value
        elif el.name == "Tags":
            pending.append(tags_of(el))
        elif el.name == "Cluster":
            tc, tco, tcw, blocks = None, None, None, []
            for c in el:
                if c.name == "Timecode":
                    tc, tco, tcw = c.value, c.payloadOffset, c.size
                elif c.name == "SimpleBlock":
                    raw = bytes(c.value)
                    assert raw[0] & 0x80, "track number vint longer than 1 byte"
                    blocks.append(MkvBlock(raw[0] & 0x7F, int.from_bytes(raw[1:3], "big", signed=True), raw[3],
                                           raw[4:]))
            clusters.append(MkvCluster(tc, tco, tcw, unknown(el), blocks, pending))
            pending = []
    return MkvSession(dict(doc.info), unknown(seg), info, track, ntracks, clusters, pending, top, track2)


def avcc_nals(payload: bytes) -> list[bytes]:
    """Split an AVCC payload (4-byte big-endian lengths) independently of kvs_edge; asserts the lengths add up."""
    out, i = [], 0
    while i < len(payload):
        assert i + 4 <= len(payload), "truncated length field"
        n = int.from_bytes(payload[i:i + 4], "big")
        assert n > 0 and i + 4 + n <= len(payload), f"NAL length {n} at {i} overruns the payload"
        out.append(payload[i + 4:i + 4 + n])
        i += 4 + n
    return out


def annexb_nals(au: bytes) -> list[bytes]:
    """Split Annex B independently of kvs_edge (regex on start codes), trailing zeros removed."""
    import re

    parts = re.split(b"\x00\x00\x01", au)
    return [p.rstrip(b"\x00") for p in parts[1:] if p.rstrip(b"\x00")]


def encode_one(width: int, height: int, *, profile: str = "high", pix_fmt: str = "yuv420p", frames: int = 1,
               x264_params: str = "") -> bytes:
    """Annex B of a few frames with arbitrary libx264 settings (e.g. cqm=jvt for SPS scaling lists, interlaced=1,
    pix_fmt yuv444p for High 4:4:4), for SPS parser tests."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height = width, height
    enc.pix_fmt = pix_fmt
    enc.time_base = Fraction(1, 25)
    enc.framerate = Fraction(25, 1)
    enc.options = {"profile": profile, "preset": "ultrafast",
                   "x264-params": ":".join(p for p in ("repeat-headers=1", x264_params) if p)}
    out = bytearray()
    for i in range(frames):
        vf = av.VideoFrame.from_ndarray(_picture(i, width, height), format="rgb24").reformat(format=pix_fmt)
        vf.pts = i
        for pkt in enc.encode(vf):
            out += bytes(pkt)
    for pkt in enc.encode(None):
        out += bytes(pkt)
    return bytes(out)
