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

SDK_DIR = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "kvs-sdk"


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
            f"repeat-headers={1 if repeat_headers else 0}", f"aud={1 if aud else 0}"]
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
    return Encoded(b"".join(u.data for u in units), units, width, height, fps)


def _strip_sei(au: bytes) -> bytes:
    """Remove x264's SEI (its settings string) unless a test asks for it."""
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
        if au[body] & 0x1F != 6:
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
