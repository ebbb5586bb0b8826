"""The unit a source hands to the pipeline."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Frame:
    """One encoded picture.

    data: one H.264 access unit in Annex B form (start codes), as an encoder emits it.
    timestamp_ns: capture time in nanoseconds: CLOCK_MONOTONIC from the appliance's sources (the Timebase maps it),
        wall-clock epoch from Producer.put_frame (a FixedOffset(0) time base).
    key: True for an IDR access unit (a point where decoding can start).
    """

    data: bytes
    timestamp_ns: int
    key: bool


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One raw AAC access unit (no ADTS header) and the capture time of its first sample (CLOCK_MONOTONIC ns, the
    clock video frames are stamped on)."""

    data: bytes
    timestamp_ns: int
