"""The VM camera's clip, encoded here (never in the guest): the project's test pattern, a readable frame counter, H.264
as a camera encoder makes it (libx264 ultrafast/zerolatency, no B-frames, SPS/PPS before every IDR, one IDR per
fragment). Written in the feeder's format (image-build/vm/guest/feeder.py): a JSON header line, then per access unit a
4-byte big-endian length and its Annex B bytes.

Every picture differs (the counter and a moving square), so the slice data identifies a frame of the clip: the
archive check (archive.py) knows, for every frame KVS stored, which clip frame it was. The length of the clip is a
whole number of key-frame intervals, so that playing it in a loop keeps one IDR every `keyint_seconds`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from kvs_edge.media.h264 import nal_type, split_annexb, iter_avcc

SLICE_TYPES = (1, 5)


def slice_key(nals) -> str:
    """Identity of a coded picture: the hash of its slice NAL units (parameter sets and SEI left out)."""
    h = hashlib.sha256()
    for nal in nals:
        if nal and nal_type(nal) in SLICE_TYPES:
            h.update(nal)
    return h.hexdigest()[:20]


def avcc_key(payload: bytes) -> str:
    return slice_key(iter_avcc(payload))


def make_clip(path: Path, *, width: int = 320, height: int = 240, fps: int = 15, seconds: int = 20,
              keyint_seconds: int = 2) -> dict[str, int]:
    """Encode the clip; returns {slice key: frame index}."""
    import av
    from fractions import Fraction

    from kvs_edge.sources.testpattern import Pattern

    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, fps), Fraction(fps)
    keyint = fps * keyint_seconds
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline",
                   "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0:repeat-headers=1:aud=0"}
    enc.open()
    pattern = Pattern(width, height)
    units: list[bytes] = []
    total = fps * seconds
    for i in range(total):
        vf = av.VideoFrame.from_ndarray(pattern.render(i, f"{i:04d}"), format="yuv420p")
        vf.pts = i
        units += [bytes(p) for p in enc.encode(vf)]
    units += [bytes(p) for p in enc.encode(None)]
    if len(units) != total:
        raise RuntimeError(f"the encoder gave {len(units)} access units for {total} pictures")
    keys = {slice_key(split_annexb(u)): i for i, u in enumerate(units)}
    if len(keys) != total:
        raise RuntimeError("two pictures of the clip have the same slice data: frames could not be told apart")
    with open(path, "wb") as f:
        f.write(json.dumps({"width": width, "height": height, "fps": fps, "frames": total,
                            "keyint": keyint}).encode() + b"\n")
        for u in units:
            f.write(struct.pack(">I", len(u)) + u)
    return keys
