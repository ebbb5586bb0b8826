"""Frames in, KVS MKV out (pure): cuts fragments at key frames and keeps the stream acceptable to KVS.

`push(access_unit, timestamp_ms, key)` returns events in order:
  SessionStart  a new MKV session header (first frame, or SPS/PPS changed, or a timestamp went backwards)
  FragmentStart a new cluster (its head bytes; Timecode = the key frame's timestamp)
  FrameWritten  one SimpleBlock (AVCC payload, timecode relative to the cluster; track 2 for an audio frame)
  FragmentEnd   the current cluster is complete (always before the next FragmentStart / SessionStart)
  Notice        something a person should know (dropped frames, forced cuts, B-frames, timestamp trouble)

Rules (docs/kvs-putmedia.md sections 3 and 4):
  - a fragment starts at a key frame once the current one has lasted `target_ms`;
  - a fragment never spans `max_ms` (KVS: 20 s) or the int16 block timecode range: when no key frame comes in time the
    fragment is ended (forced) and frames are dropped until the next key frame, so that every cluster starts with one;
  - frames before the first key frame that has SPS/PPS are dropped;
  - different SPS/PPS on a key frame start a new session (new codec private data);
  - a timestamp that does not increase ends the session: frames are dropped up to the next key frame, which starts a
    new session (KVS rejects a fragment earlier than the previous one with error 4004);
  - B slices are never written (KVS needs decode order = presentation order): dropped, counted, reported.

Audio (optional, `audio=AudioTrack(...)`): the session header declares track 2 (A_AAC, the AudioSpecificConfig as
CodecPrivate) and `push_audio(aac_frame, timestamp_ms)` writes one raw AAC frame into the open fragment. The caller
pushes video and audio in timestamp order (media/interleave.py), so blocks are interleaved in timestamp order within
each cluster; audio never opens a fragment (every cluster starts with a video key frame): audio before the first key
frame, while frames are dropped up to a key frame, earlier than the open cluster or going backwards is dropped and
counted.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from kvs_edge.media import h264, mkv
from kvs_edge.media.h264 import (_SLICE_TYPE_BY_BYTE, NAL_IDR, NAL_PPS, NAL_SLICE, NAL_SPS, SLICE_B, H264Error,
                                  nal_spans, slice_type_at)
from kvs_edge.media.mkv import simple_block_head


@dataclass(frozen=True, slots=True)
class SessionStart:
    header: bytes
    width: int
    height: int
    codec_private: bytes


@dataclass(frozen=True, slots=True)
class FragmentStart:
    timecode_ms: int
    data: bytes  # cluster head (mkv.cluster_head)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3x more, and this one is made every frame
class FrameWritten:
    timecode_ms: int  # absolute
    key: bool
    data: bytes  # SimpleBlock
    track: int = 1  # mkv.AUDIO_TRACK for an audio frame


@dataclass(frozen=True, slots=True)
class AudioTrack:
    """The audio track a session declares: AAC with its 2- or 5-byte AudioSpecificConfig."""

    asc: bytes
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class FragmentEnd:
    first_ms: int
    last_ms: int
    frames: int
    forced: bool  # True when not ended at a key frame (time limit reached, timestamp went backwards)


@dataclass(frozen=True, slots=True)
class Notice:
    kind: str  # "dropped_before_key" | "forced_cut" | "timestamp" | "b_frames" | "malformed" | "parameters_changed"
    #            | "audio_changed"
    message: str


Event = SessionStart | FragmentStart | FrameWritten | FragmentEnd | Notice


@dataclass
class FragmenterStats:
    frames_in: int = 0
    frames_written: int = 0
    sessions: int = 0
    fragments: int = 0
    forced_cuts: int = 0
    dropped_before_key: int = 0  # waiting for the first key frame with SPS/PPS
    dropped_after_cut: int = 0  # waiting for a key frame after a forced cut or a timestamp reset
    dropped_b_frames: int = 0
    dropped_malformed: int = 0
    timestamp_resets: int = 0  # non-increasing timestamps seen (each ends the session)
    parameter_changes: int = 0  # SPS/PPS changes (each starts a new session)
    audio_in: int = 0
    audio_written: int = 0
    audio_dropped: int = 0  # no open fragment (before the first key frame, after a cut), earlier than it, backwards

    @property
    def dropped(self) -> int:
        return self.dropped_before_key + self.dropped_after_cut + self.dropped_b_frames + self.dropped_malformed

    def as_dict(self) -> dict[str, int]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["dropped"] = self.dropped
        return d


B_FRAMES_MESSAGE = ("the stream has B-frames, which Kinesis Video Streams rejects (error 4004): they are dropped; "
                    "configure the encoder without B-frames (e.g. baseline profile or x264 bframes=0)")


class Fragmenter:
    def __init__(self, target_ms: int, max_ms: int = 20000, audio: AudioTrack | None = None):
        if not 0 <= target_ms <= max_ms:
            raise ValueError(f"target_ms {target_ms} must be between 0 and max_ms {max_ms}")
        if not 0 < max_ms <= mkv.INT16_MAX:
            raise ValueError(f"max_ms {max_ms} must be 1..{mkv.INT16_MAX} (the int16 block timecode range)")
        self.target_ms = target_ms
        self.max_ms = max_ms
        self.stats = FragmenterStats()
        self.audio = audio
        # the TrackEntry is built (and the ASC checked: ValueError) once, here
        self._audio_entry = mkv.audio_track_entry(audio.asc, audio.sample_rate, audio.channels) if audio else None
        self._last_audio_ms: int | None = None
        self._audio_changed = False  # set_audio() was called: the next key frame starts a session with the new tracks
        self._sps: list[bytes] = []  # parameter sets of the current session
        self._pps: list[bytes] = []
        self._pending_sps: list[bytes] = []  # parameter sets seen in an access unit without a picture
        self._pending_pps: list[bytes] = []
        self._in_session = False
        self._need_key = True  # drop until a key frame (before the first one, after a forced cut or reset)
        self._frag_first: int | None = None  # cluster timecode of the open fragment
        self._frag_last = 0
        self._frag_frames = 0
        self._last_ms: int | None = None  # last timestamp written in this session
        self._warned_b = False
        self._drop_reason = ""  # why frames are being dropped: "" (no session yet), "timestamp", "forced_cut"
        self._pending_drops = 0  # dropped since the last report

    # ------------------------------------------------------------ public

    def push(self, data: bytes, timestamp_ms: int, key: bool) -> list[Event]:
        """One access unit (Annex B) with its timestamp in ms; returns the events it causes."""
        st = self.stats
        st.frames_in += 1
        ev: list[Event] = []
        if type(data) is not bytes:
            data = bytes(data)
        try:
            spans = nal_spans(data)
        except H264Error as e:
            st.dropped_malformed += 1
            return [Notice("malformed", f"dropped a frame at {timestamp_ms} ms that is not Annex B H.264: {e}")]
        sps: list[bytes] = []
        pps: list[bytes] = []
        has_slice = has_idr = is_b = False
        # the SimpleBlock's pieces are gathered in the same pass: head, then each NAL unit's 4-byte length and a view
        mv = memoryview(data)
        parts: list = [b""]
        size = 4 * len(spans)
        for s, e in spans:
            parts += ((e - s).to_bytes(4, "big"), mv[s:e])
            size += e - s
            h = data[s]
            t = h & 0x1F
            if t == NAL_SLICE:
                has_slice = True
                if not is_b:
                    # the first slice of a picture: slice_type from one byte (h264._SLICE_TYPE_BY_BYTE)
                    sty = _SLICE_TYPE_BY_BYTE[data[s + 1]] if e - s > 1 else -1
                    if sty < 0:
                        try:
                            sty = slice_type_at(data, s, e)
                        except H264Error as err:
                            st.dropped_malformed += 1
                            return [Notice("malformed", f"dropped a frame at {timestamp_ms} ms with a broken slice "
                                                        f"header: {err}")]
                    is_b = sty == SLICE_B
            elif t == NAL_IDR:
                has_slice = has_idr = True
            elif t == NAL_SPS:
                sps.append(data[s:e])
            elif t == NAL_PPS:
                pps.append(data[s:e])
            if h & 0x80 or not t:
                st.dropped_malformed += 1
                return [Notice("malformed", f"dropped a frame at {timestamp_ms} ms with an invalid NAL unit header "
                                            f"{h:#04x}")]
        if not has_slice:
            if sps or pps:  # parameter sets delivered on their own: keep them for the next picture
                self._pending_sps = _unique(self._pending_sps + sps) if sps else self._pending_sps
                self._pending_pps = _unique(self._pending_pps + pps) if pps else self._pending_pps
                st.frames_in -= 1  # not a frame
                return []
            st.dropped_malformed += 1
            return [Notice("malformed", f"dropped an access unit at {timestamp_ms} ms without any picture")]
        prefix: list[bytes] = []
        if self._pending_sps or self._pending_pps:
            prefix = self._pending_sps + self._pending_pps
            sps = sps or self._pending_sps
            pps = pps or self._pending_pps
            self._pending_sps, self._pending_pps = [], []
        key = bool(key) or has_idr
        if is_b:
            st.dropped_b_frames += 1
            if not self._warned_b:
                self._warned_b = True
                return [Notice("b_frames", B_FRAMES_MESSAGE)]
            return []

        # timestamps must increase within a session
        if self._in_session and self._last_ms is not None and timestamp_ms <= self._last_ms:
            st.timestamp_resets += 1
            ev.extend(self._end_fragment(forced=True))
            self._in_session = False
            self._need_key = True
            self._drop_reason = "timestamp"
            ev.append(Notice("timestamp", f"timestamp {timestamp_ms} ms is not after the previous frame's "
                                          f"{self._last_ms} ms: ending the session; a new one starts at the next "
                                          f"key frame"))
            self._last_ms = None

        if key:
            new_sps = _unique(sps) if sps else self._sps
            new_pps = _unique(pps) if pps else self._pps
            if not new_sps or not new_pps:
                self._drop()
                return ev
            if self._in_session and (new_sps != self._sps or new_pps != self._pps):
                st.parameter_changes += 1
                ev.extend(self._end_fragment(forced=False))
                self._in_session = False
                ev.append(Notice("parameters_changed", f"SPS/PPS changed at {timestamp_ms} ms: starting a new "
                                                       f"session with new codec private data"))
            elif self._in_session and self._audio_changed:
                ev.extend(self._end_fragment(forced=False))
                self._in_session = False
                what = f"{self.audio.sample_rate} Hz x {self.audio.channels}" if self.audio else "none (video only)"
                ev.append(Notice("audio_changed", f"audio track {what} from {timestamp_ms} ms: starting a new "
                                                  f"session"))
            if not self._in_session:
                try:
                    ev.append(self._start_session(new_sps, new_pps))
                except (H264Error, ValueError) as e:
                    st.dropped_malformed += 1
                    ev.append(Notice("malformed", f"dropped a key frame at {timestamp_ms} ms with unusable "
                                                  f"SPS/PPS: {e}"))
                    return ev
            if self._need_key:
                ev.extend(self._report_drops())
                self._need_key = False
            if self._frag_first is None or timestamp_ms - self._frag_first >= self.target_ms:
                ev.extend(self._end_fragment(forced=False))
                ev.append(self._start_fragment(timestamp_ms))
        else:
            if self._need_key or not self._in_session:
                self._drop()
                return ev
            if timestamp_ms - self._frag_first >= self.max_ms:
                st.forced_cuts += 1
                ev.extend(self._end_fragment(forced=True))
                self._need_key = True
                self._drop_reason = "forced_cut"
                ev.append(Notice("forced_cut", f"no key frame within {self.max_ms} ms: fragment ended at "
                                               f"{self._frag_last} ms, frames are dropped until the next key frame; "
                                               f"set the encoder's key-frame interval below the fragment duration"))
                self._drop()
                return ev

        # SimpleBlock with the AVCC payload (4-byte lengths), joined from views of `data`: one copy
        if prefix:  # parameter sets that came on their own go first
            parts[1:1] = [x for n in prefix for x in (len(n).to_bytes(4, "big"), n)]
            size += sum(4 + len(n) for n in prefix)
        parts[0] = simple_block_head(timestamp_ms - self._frag_first, key, size)
        self._frag_last = self._last_ms = timestamp_ms
        self._frag_frames += 1
        st.frames_written += 1
        ev.append(FrameWritten(timestamp_ms, key, b"".join(parts)))
        return ev

    def set_audio(self, audio: AudioTrack | None) -> None:
        """Declare another audio track (or none: video only) from the next key frame on, which starts a new session.

        KVS refuses a fragment in which a track of the header has no frame (error 4011, docs/kvs-putmedia.md): a
        microphone that went away must leave the header, and is declared again when it is back.
        """
        if audio == self.audio:
            return
        self._audio_entry = mkv.audio_track_entry(audio.asc, audio.sample_rate, audio.channels) if audio else None
        self.audio = audio
        self._audio_changed = self._in_session

    @property
    def audio_in_session(self) -> bool:
        """True when the current session's header declares the audio track (push_audio writes)."""
        return self._in_session and self.audio is not None and not self._audio_changed

    def push_audio(self, data: bytes, timestamp_ms: int) -> list[Event]:
        """One raw AAC frame (no ADTS header) with its timestamp in ms: [FrameWritten] or [] when dropped."""
        st = self.stats
        st.audio_in += 1
        if self._audio_entry is None or self._audio_changed:  # no audio track declared (yet) in this session
            st.audio_dropped += 1
            return []
        first = self._frag_first
        if (first is None or self._need_key or not self._in_session or timestamp_ms < first
                or timestamp_ms - first > mkv.INT16_MAX or not data
                or (self._last_audio_ms is not None and timestamp_ms < self._last_audio_ms)):
            st.audio_dropped += 1
            return []
        self._last_audio_ms = timestamp_ms
        st.audio_written += 1
        return [FrameWritten(timestamp_ms, True, mkv.simple_block(timestamp_ms - first, True, bytes(data),
                                                                   mkv.AUDIO_TRACK), mkv.AUDIO_TRACK)]

    def close(self) -> list[Event]:
        """End the open fragment. The next push starts a new session."""
        ev = self._end_fragment(forced=False)
        ev.extend(self._report_drops())
        self._in_session = False
        self._need_key = True
        self._last_ms = None
        return ev

    # ------------------------------------------------------------ internals

    def _start_session(self, sps: list[bytes], pps: list[bytes]) -> SessionStart:
        info = h264.parse_sps(sps[0])
        cp = h264.build_avcc(sps, pps)
        header = mkv.session_header(width=info.width, height=info.height, codec_private=cp, audio=self._audio_entry)
        self._sps, self._pps = sps, pps
        self._in_session = True
        self._last_ms = None
        self._last_audio_ms = None
        self._audio_changed = False
        self.stats.sessions += 1
        return SessionStart(header, info.width, info.height, cp)

    def _start_fragment(self, timestamp_ms: int) -> FragmentStart:
        self._frag_first = timestamp_ms
        self._frag_last = timestamp_ms
        self._frag_frames = 0
        self.stats.fragments += 1
        return FragmentStart(timestamp_ms, mkv.cluster_head(timestamp_ms))

    def _end_fragment(self, forced: bool) -> list[Event]:
        if self._frag_first is None:
            return []
        e = FragmentEnd(self._frag_first, self._frag_last, self._frag_frames, forced)
        self._frag_first = None
        self._frag_frames = 0
        return [e]

    def _drop(self) -> None:
        if self._in_session or self._drop_reason:
            self.stats.dropped_after_cut += 1
        else:
            self.stats.dropped_before_key += 1
        self._pending_drops += 1

    def _report_drops(self) -> list[Event]:
        n = self._pending_drops
        self._pending_drops = 0
        reason, self._drop_reason = self._drop_reason, ""
        if not n:
            return []
        if reason:
            return [Notice("dropped_after_cut", f"dropped {n} frames while waiting for a key frame")]
        return [Notice("dropped_before_key", f"dropped {n} frames before the first key frame with SPS/PPS")]


def _unique(nals: list[bytes]) -> list[bytes]:
    seen: list[bytes] = []
    for n in nals:
        if n not in seen:
            seen.append(n)
    return seen
