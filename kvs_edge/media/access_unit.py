"""What the Producer accepts as one frame (pure): checks run on the caller's thread, before anything is queued, so a
frame KVS would reject is refused with one clear message and nothing half-formed is ever written.

Rules (docs/kvs-putmedia.md section 3): "frames are sent in decode order with PTS timecodes; B-frames break this
(4004)"; "a fragment's first frame must be strictly later than the previous fragment's last frame" (the muxer works
in milliseconds, so timestamps must increase by at least 1 ms).
"""

from __future__ import annotations

from kvs_edge.media import h264
from kvs_edge.media.h264 import NAL_IDR, NAL_PPS, NAL_SLICE, NAL_SPS, H264Error


class FrameError(ValueError):
    """A frame the Producer refuses; the message says what is wrong and what to do."""


def check_access_unit(data) -> bool:
    """Raise FrameError unless `data` is one H.264 access unit in Annex B form without B slices. Returns True when it
    holds an IDR picture (a key frame). Parameter sets on their own (SPS/PPS without a picture) are accepted."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError(f"put_frame takes the bytes of one H.264 access unit (Annex B), got {type(data).__name__}")
    data = bytes(data)
    try:
        spans = h264.nal_spans(data)
    except H264Error as e:
        raise FrameError(f"not H.264 in Annex B form ({e}): pass the encoder's output with 00 00 01 start codes, "
                         f"e.g. PyAV packets of an 'h264' stream as bytes(packet)") from None
    if not spans:
        raise FrameError("an empty access unit: pass one encoded H.264 frame")
    idr = pictures = params = 0
    for s, e in spans:
        header = data[s]
        if header & 0x80:
            raise FrameError(f"not H.264: invalid NAL unit header {header:#04x} (forbidden bit set)")
        t = header & 0x1F
        if t == NAL_IDR:
            idr += 1
        elif t == NAL_SLICE:
            pictures += 1
            try:
                b = h264.slice_type_at(data, s, e) == h264.SLICE_B
            except H264Error as err:
                raise FrameError(f"not H.264: a broken slice header ({err})") from None
            if b:
                raise FrameError("a B-frame: Kinesis Video Streams rejects B-frames (error 4004); configure the "
                                 "encoder without them (x264 'bframes=0', PyAV codec_context.max_b_frames = 0, or "
                                 "the baseline profile)")
        elif t in (NAL_SPS, NAL_PPS):
            params += 1
    if not (idr or pictures or params):
        raise FrameError("an access unit without a picture or parameter set: not an H.264 video frame")
    return idr > 0


def frame_timestamp_ns(timestamp_ns: int | None, last_ms: int | None, now_ns: int) -> int:
    """The timestamp to stamp a frame with: `timestamp_ns`, or `now_ns` when None (moved 1 ms past the previous frame
    when the clock has not advanced a millisecond). Raises FrameError when a given timestamp does not increase."""
    if timestamp_ns is None:
        if last_ms is not None and now_ns // 1_000_000 <= last_ms:
            return (last_ms + 1) * 1_000_000
        return now_ns
    if isinstance(timestamp_ns, bool) or not isinstance(timestamp_ns, int):
        raise FrameError(f"timestamp_ns must be an int of nanoseconds since the epoch (or None for now), got "
                         f"{type(timestamp_ns).__name__}")
    if timestamp_ns < 0:
        raise FrameError(f"timestamp_ns {timestamp_ns} is negative: give nanoseconds since the epoch")
    if last_ms is not None and timestamp_ns // 1_000_000 <= last_ms:
        raise FrameError(f"timestamp {timestamp_ns // 1_000_000} ms is not after the previous frame's {last_ms} ms: "
                         f"timestamps must increase by at least 1 ms (KVS rejects earlier fragments, error 4004)")
    return timestamp_ns
