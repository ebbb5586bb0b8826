"""Video frames and audio frames -> fragmenter events, in timestamp order (pure).

The audio track of a session must be declared in its header, and its AudioSpecificConfig may only be known once the
first audio frame is out (ADTS input, a transcoder). So the Fragmenter is built at the first item the interleaver
releases: by then the interleaver has waited for the audio to reach the video's first timestamp (or for `max_wait_ms`
of video without any audio, and then the session is video only).
"""

from __future__ import annotations

from typing import Callable

from kvs_edge.media.fragmenter import AudioTrack, Event, Fragmenter
from kvs_edge.media.interleave import AUDIO, VIDEO, Interleaver


class AvMuxer:
    """push_video(data, ts_ms, key) / push_audio(data, ts_ms) / close() -> fragmenter events.

    audio_track: called once, when the fragmenter is built: the AudioTrack to declare, or None (video only).
    """

    def __init__(self, target_ms: int, audio_track: Callable[[], AudioTrack | None], *, max_wait_ms: int = 1000,
                 max_ms: int = 20000) -> None:
        self.target_ms = target_ms
        self.max_ms = max_ms
        self._audio_track = audio_track
        self.interleaver = Interleaver(max_wait_ms)
        self.fragmenter: Fragmenter | None = None

    def push_video(self, data: bytes, ts_ms: int, key: bool) -> list[Event]:
        return self._apply(self.interleaver.push(VIDEO, ts_ms, (data, key)))

    def push_audio(self, data: bytes, ts_ms: int) -> list[Event]:
        return self._apply(self.interleaver.push(AUDIO, ts_ms, data))

    def close(self) -> list[Event]:
        ev = self._apply(self.interleaver.flush())
        if self.fragmenter is not None:
            ev += self.fragmenter.close()
        return ev

    def _apply(self, items) -> list[Event]:
        ev: list[Event] = []
        for kind, ts, item in items:
            if self.fragmenter is None:
                self.fragmenter = Fragmenter(self.target_ms, self.max_ms, audio=self._audio_track())
            f = self.fragmenter
            if kind == VIDEO:
                ev += f.push(item[0], ts, item[1])
            elif f.audio is not None:
                ev += f.push_audio(item, ts)
        return ev
