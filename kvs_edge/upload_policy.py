"""Which recorded fragments leave the device: the upload policy (pure: no clock, no threads, no I/O).

Inputs: the mode, a fragment's span (first_ms, last_ms on the recording clock, the CLOCK_MONOTONIC milliseconds the
muxer writes), the merged events, whether an upload window is open, `now_ms` on the same clock, and the retention.
Output: a Decision per fragment. The shell (upload_gate.py) gives the uploader only the UPLOAD fragments, releases the
EXPIRED ones and keeps the rest in the log (the DVR).

    continuous  everything: UPLOAD
    events      a fragment overlapping an event span [trigger - pre, last trigger + seconds + post]: UPLOAD;
                else EXPIRED once it ended more than retain_ms ago, else KEEP (a later trigger may reach back to it)
    schedule    window open: UPLOAD (the backlog drains oldest first while live video continues); closed: KEEP.
                Nothing expires by age: what waits for a window is bounded by buffer.max_bytes alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Mode(str, enum.Enum):
    CONTINUOUS = "continuous"
    EVENTS = "events"
    SCHEDULE = "schedule"


class Decision(str, enum.Enum):
    UPLOAD = "upload"
    KEEP = "keep"  # recorded only, for now
    EXPIRED = "expired"  # older than the retention and in no event: the log may drop it


@dataclass(frozen=True, slots=True)
class Trigger:
    at_ms: int  # recording clock
    label: str = "trigger"
    seconds: float = 0.0  # the event lasts this long after at_ms, before post_seconds start


@dataclass(frozen=True, slots=True)
class EventSpan:
    start_ms: int  # first trigger - pre
    end_ms: int  # last trigger end + post
    first_ms: int  # the first trigger
    label: str  # the first trigger's label
    triggers: int


def merge(triggers, pre_ms: int, post_ms: int) -> list[EventSpan]:
    """Triggers -> event spans, sorted; spans that overlap or touch merge into one (the first trigger's label)."""
    spans: list[EventSpan] = []
    for t in sorted(triggers, key=lambda t: t.at_ms):
        start = t.at_ms - pre_ms
        end = t.at_ms + int(t.seconds * 1000) + post_ms
        if spans and start <= spans[-1].end_ms:
            last = spans[-1]
            spans[-1] = EventSpan(last.start_ms, max(last.end_ms, end), last.first_ms, last.label, last.triggers + 1)
        else:
            spans.append(EventSpan(start, end, t.at_ms, t.label, 1))
    return spans


def event_for(spans: list[EventSpan], first_ms: int, last_ms: int) -> EventSpan | None:
    """The span a fragment [first_ms, last_ms] overlaps (the fragment holding the span's edges included)."""
    for s in spans:
        if first_ms <= s.end_ms and last_ms >= s.start_ms:
            return s
    return None


def decide(mode: Mode, first_ms: int, last_ms: int, *, now_ms: int, spans: list[EventSpan] = (),
           window_is_open: bool = False, retain_ms: int | None = None) -> Decision:
    if mode is Mode.CONTINUOUS:
        return Decision.UPLOAD
    if mode is Mode.SCHEDULE:
        return Decision.UPLOAD if window_is_open else Decision.KEEP
    if event_for(spans, first_ms, last_ms) is not None:
        return Decision.UPLOAD
    if retain_ms is not None and last_ms < now_ms - retain_ms:
        return Decision.EXPIRED
    return Decision.KEEP


def forget_before(spans: list[EventSpan], oldest_ms: int | None) -> list[EventSpan]:
    """The spans still relevant once nothing older than oldest_ms is in the log (None: the log is empty, keep all)."""
    if oldest_ms is None:
        return list(spans)
    return [s for s in spans if s.end_ms >= oldest_ms]
