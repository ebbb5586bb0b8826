"""Fragmenter events -> the fragment log: the one place that knows how a fragment is recorded.

Used by the appliance's muxer thread and by `kvs-edge upload`. Returns the Notices so that each caller reports them
its own way (journal lines, or one line on stderr).
"""

from __future__ import annotations

import logging

from kvs_edge.media.fragment_tags import FragmentTags
from kvs_edge.media.fragmenter import FragmentEnd, FragmentStart, FrameWritten, Notice, SessionStart

log = logging.getLogger(__name__)


class Recorder:
    """tags: the fragment metadata (media/fragment_tags.py) written before each fragment's cluster, in the fragment's
    own bytes in the log, so that a resend carries them again."""

    def __init__(self, frag_log, tags: FragmentTags | None = None) -> None:
        self.fragment_log = frag_log
        self.tags = tags if tags is not None else FragmentTags()
        self.header_id: int | None = None
        self.open_seq: int | None = None  # the fragment being written
        self.last_seq: int | None = None  # the fragment started last
        self.fragments = 0
        self.frames = 0  # video frames
        self.audio_frames = 0

    def apply(self, events) -> tuple[list[tuple[int, int]], list[Notice]]:
        """Write the events; returns ((seq, first timecode ms) of the fragments started, notices)."""
        started: list[tuple[int, int]] = []
        notices: list[Notice] = []
        for ev in events:
            if isinstance(ev, FrameWritten):
                self.fragment_log.append(ev.data, ev.timecode_ms)
                if ev.track == 1:
                    self.frames += 1
                else:
                    self.audio_frames += 1
            elif isinstance(ev, FragmentStart):
                self.open_seq = self.fragment_log.start_fragment(self.header_id, ev.timecode_ms,
                                                                 self.tags.take() + ev.data)
                self.last_seq = self.open_seq
                started.append((self.open_seq, ev.timecode_ms))
            elif isinstance(ev, FragmentEnd):
                if self.open_seq is not None:
                    self.fragment_log.end_fragment()
                    self.open_seq = None
                    self.fragments += 1
            elif isinstance(ev, SessionStart):
                self.header_id = self.fragment_log.add_header(ev.header)
                log.info("video %dx%d: new stream header", ev.width, ev.height)
            elif isinstance(ev, Notice):
                notices.append(ev)
        return started, notices
