"""Media the read APIs hand out, made with PyAV from stored fragments: GetClip's MP4 (remuxed, never re-encoded) and
GetImages' JPEG/PNG (decoded, scaled, encoded). Bytes in, bytes out; no store, no sockets."""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Iterable

import av

JPEG, PNG = "JPEG", "PNG"


class MediaError(Exception):
    """The stored media could not be parsed or converted (the service's InvalidMediaFrameException / MEDIA_ERROR)."""


def remux_mp4(documents: Iterable[bytes]) -> bytes:
    """One MP4 file from standalone MKV documents (one or more fragments each, same tracks and codec private data).

    Packets are copied as they are (the codec private data becomes the MP4 sample description); timestamps are
    rebased so the clip starts at 0. A document whose timestamps go back (fragments listed by server time whose
    producer times overlap) is moved to follow the previous one: every frame stays, in the order given. MKV carries no
    decoding times: where FFmpeg's parser gives none, or one not after the previous, the next tick is used (MP4 needs
    them strictly increasing)."""
    out_buf = io.BytesIO()
    origin = None
    last: dict[int, tuple[int, int]] = {}  # output stream index -> (last dts, last step), in the input time base
    try:
        with av.open(out_buf, "w", format="mp4") as out:
            streams: list | None = None
            for doc in documents:
                with av.open(io.BytesIO(doc), "r", format="matroska") as src:
                    ins = [s for s in src.streams if s.type in ("video", "audio")]
                    if streams is None:
                        streams = [out.add_stream_from_template(s) for s in ins]
                    by_index = {s.index: o for s, o in zip(ins, streams)}
                    shift: dict[int, int] = {}  # this document's offset per output stream
                    for pkt in src.demux(ins):
                        o = by_index.get(pkt.stream.index)
                        if pkt.size == 0 or pkt.pts is None or o is None:
                            continue  # the demuxer's flush packets
                        tb = pkt.time_base
                        dts = pkt.dts if pkt.dts is not None else pkt.pts
                        if origin is None:
                            origin = dts * tb
                        prev = last.get(o.index)
                        if o.index not in shift:
                            shift[o.index] = int(origin / tb)
                            if prev is not None and dts - shift[o.index] <= prev[0]:
                                shift[o.index] = dts - (prev[0] + prev[1])
                        dts -= shift[o.index]
                        pts = pkt.pts - shift[o.index]
                        if prev is not None and dts <= prev[0]:
                            dts = prev[0] + 1
                        pkt.dts, pkt.pts = dts, max(pts, dts)
                        last[o.index] = (dts, dts - prev[0] if prev is not None else 1)
                        pkt.stream = o
                        out.mux(pkt)
            if streams is None:
                raise MediaError("no media to put in the clip")
    except av.FFmpegError as e:
        raise MediaError(f"the stored media could not be remuxed: {e}") from None
    return out_buf.getvalue()


def decode_video(document: bytes) -> list[tuple[int, av.VideoFrame]]:
    """Every video frame of a standalone MKV document with its timestamp (ms on the document's clock)."""
    frames = []
    try:
        with av.open(io.BytesIO(document), "r", format="matroska") as src:
            vs = src.streams.video[0]
            for f in src.decode(vs):
                if f.pts is None:
                    continue
                frames.append((int(f.pts * f.time_base * 1000), f))
    except (av.FFmpegError, IndexError) as e:
        raise MediaError(f"the stored media could not be decoded: {e}") from None
    return frames


def encode_image(frame: av.VideoFrame, fmt: str, *, width: int | None = None, height: int | None = None,
                 jpeg_quality: int = 80) -> bytes:
    """One frame as a JPEG or PNG file, scaled to width x height when given (stretched, as the service does)."""
    w, h = width or frame.width, height or frame.height
    if fmt == JPEG:
        cc = av.CodecContext.create("mjpeg", "w")
        cc.pix_fmt = "yuvj420p"
        q = jpeg_qscale(jpeg_quality)
        cc.options = {"qmin": str(q), "qmax": str(q)}
    elif fmt == PNG:
        cc = av.CodecContext.create("png", "w")
        cc.pix_fmt = "rgb24"
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    cc.width, cc.height = w, h
    cc.time_base = Fraction(1, 1000)
    try:
        img = frame.reformat(width=w, height=h, format=cc.pix_fmt)
        img.pts = 0
        packets = cc.encode(img) + cc.encode(None)
    except av.FFmpegError as e:
        raise MediaError(f"the frame could not be encoded as {fmt}: {e}") from None
    return b"".join(bytes(p) for p in packets)


def jpeg_qscale(quality: int) -> int:
    """JPEGQuality 1 (smallest) .. 100 (best) -> FFmpeg's MJPEG quantiser scale 31 (worst) .. 2 (best)."""
    quality = min(100, max(1, int(quality)))
    return round(31 - (quality - 1) * 29 / 99)
