"""Video frames and audio frames -> fragmenter events, in timestamp order (pure).

The audio track of a session must be declared in its header, and its AudioSpecificConfig may only be known once the
first audio frame is out (ADTS input, a transcoder). So the track is declared at the first item the interleaver
releases: by then the interleaver has waited for the audio to reach the video's first timestamp (or for `max_wait_ms`
of video without any audio, and then the session is video only).

KVS refuses a fragment in which a track of the header has no frame (error 4011, docs/kvs-putmedia.md). So at each key
frame (a fragment may start there) the audio must already have reached the key frame's time; when it has not (the
interleaver let the key frame go after `max_wait_ms` without audio: a USB microphone unplugged, a file whose sound ends
first), the key frame starts a video-only session. Audio that comes back is declared again at the next key frame it
reaches. `audio_active` says which state it is in.
"""

from __future__ import annotations

from typing import Callable

from kvs_edge.media.fragmenter import AudioTrack, Event, Fragmenter
from kvs_edge.media.interleave import AUDIO, VIDEO, Interleaver


class AvMuxer:
    """push_video(data, ts_ms, key) / push_audio(data, ts_ms) / close() -> fragmenter events.

    audio_track: the AudioTrack to declare, or None (not known yet); asked at the first item and whenever audio
    comes back. audio=False: video only, straight to the fragmenter (no interleaving delay).
    """

    def __init__(self, target_ms: int, audio_track: Callable[[], AudioTrack | None], *, max_wait_ms: int = 1000,
                 max_ms: int = 20000, audio: bool = True) -> None:
        self.target_ms = target_ms
        self.audio = audio
        self.max_ms = max_ms
        self._audio_track = audio_track
        self.interleaver = Interleaver(max_wait_ms)
        self.fragmenter = Fragmenter(target_ms, max_ms)  # the audio track is declared at the first item released
        self._started = False

    def push_video(self, data: bytes, ts_ms: int, key: bool) -> list[Event]:
        if not self.audio:
            return self.fragmenter.push(data, ts_ms, key)
        return self._apply(self.interleaver.push(VIDEO, ts_ms, (data, key)))

    def push_audio(self, data: bytes, ts_ms: int) -> list[Event]:
        return self._apply(self.interleaver.push(AUDIO, ts_ms, data))

    def close(self) -> list[Event]:
        return self._apply(self.interleaver.flush()) + self.fragmenter.close()

    def _apply(self, items) -> list[Event]:
        ev: list[Event] = []
        for kind, ts, item in items:
            f = self.fragmenter
            if not self._started:
                self._started = True
                f.set_audio(self._audio_track())
            if kind == VIDEO:
                newest_audio = self.interleaver.newest(AUDIO)
                if item[1] and f.audio is not None and (newest_audio is None or newest_audio < ts):
                    f.set_audio(None)  # no audio at this key frame: it starts a video-only session
                ev += f.push(item[0], ts, item[1])
                continue
            if f.audio is None:
                track = self._audio_track()
                if track is not None:
                    f.set_audio(track)  # declared from the next key frame on
            ev += f.push_audio(item, ts)
        return ev

    @property
    def audio_active(self) -> bool:
        """True while the current session carries the audio track."""
        return self.fragmenter.audio_in_session
