"""What the emulator stored, frame by frame, checked against the clip the VM's camera played (docs/vm-test.md).

`read_frames` demuxes the emulator's session files with PyAV (FFmpeg's Matroska demuxer, not kvs-edge's parser) and
names each frame by its slice data (clip.py). `check_sequence` is pure: given (timestamp ms, clip index) of every
stored frame it tells whether the frames are in order and where frames are missing, and how many.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

SLICE_TYPES = (1, 5)


def _avcc_slices(payload: bytes):
    i = 0
    while i + 4 <= len(payload):
        n = int.from_bytes(payload[i:i + 4], "big")
        nal = payload[i + 4:i + 4 + n]
        if nal and nal[0] & 0x1F in SLICE_TYPES:
            yield nal
        i += 4 + n


def frame_key(payload: bytes) -> str:
    h = hashlib.sha256()
    for nal in _avcc_slices(payload):
        h.update(nal)
    return h.hexdigest()[:20]


def read_frames(files: list[Path], clip_keys: dict[str, int]) -> list[tuple[int, int]]:
    """(pts ms, clip index or -1 when not a clip frame) of every frame in the session files, in file order."""
    import av

    out = []
    for path in files:
        with av.open(str(path)) as c:
            st = c.streams.video[0]
            tb = st.time_base
            for pkt in c.demux(st):
                if pkt.size == 0 or pkt.pts is None:
                    continue
                out.append((int(round(pkt.pts * tb * 1000)), clip_keys.get(frame_key(bytes(pkt)), -1)))
    return out


@dataclass
class Gap:
    before_ms: int
    after_ms: int
    lost: int          # clip frames missing between the two stored frames

    @property
    def seconds(self) -> float:
        return (self.after_ms - self.before_ms) / 1000


@dataclass
class SequenceReport:
    frames: int = 0                 # distinct stored frames
    duplicates: int = 0             # frames stored twice (same timestamp, same picture): a re-sent fragment
    unknown: int = 0                # frames that are no picture of the clip
    gaps: list[Gap] = field(default_factory=list)
    misordered: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(g.lost for g in self.gaps)

    def gaps_between(self, start_ms: float, end_ms: float) -> list[Gap]:
        return [g for g in self.gaps if g.after_ms >= start_ms and g.before_ms <= end_ms]


def check_sequence(frames: list[tuple[int, int]], clip_len: int, frame_ms: float) -> SequenceReport:
    """Sorted by timestamp, each stored frame must be the clip frame after the previous one (modulo the clip's length).

    A jump is a gap: the frames lost are the clip frames skipped, with as many whole loops of the clip as the time
    between the two frames says. A jump further than the time allows is a misordering.
    """
    rep = SequenceReport()
    seen: dict[int, int] = {}
    for ts, idx in frames:
        if idx < 0:
            rep.unknown += 1
            continue
        if ts in seen:
            if seen[ts] != idx:
                rep.misordered.append(f"two different pictures at {ts} ms (clip frames {seen[ts]} and {idx})")
            else:
                rep.duplicates += 1
            continue
        seen[ts] = idx
    ordered = sorted(seen.items())
    rep.frames = len(ordered)
    for (t1, i1), (t2, i2) in zip(ordered, ordered[1:]):
        skipped = (i2 - i1 - 1) % clip_len
        by_time = (t2 - t1) / frame_ms - 1
        loops = max(0, round((by_time - skipped) / clip_len))
        lost = skipped + loops * clip_len
        # More pictures skipped than the time that passed allows: they came out of order. (Fewer is a camera that
        # delivered late, e.g. a feeder that fell behind: nothing was lost.)
        if lost > by_time + max(5.0, 0.1 * by_time):
            rep.misordered.append(f"clip frame {i2} at {t2} ms after clip frame {i1} at {t1} ms: "
                                  f"{lost} frames skipped in {t2 - t1} ms")
        elif lost:
            rep.gaps.append(Gap(t1, t2, lost))
    return rep


# ------------------------------------------------------------------------------------------------------------ sound
@dataclass
class AudioTrack:
    codec: str = ""
    config_bytes: int = 0                                 # CodecPrivate (the AudioSpecificConfig): 2 or 5 for AAC
    chunks: list = field(default_factory=list)            # (start ms, first channel's samples, sample rate)


def read_audio(files: list[Path]) -> AudioTrack | None:
    """The sound track of the session files decoded with PyAV (FFmpeg's AAC decoder); None when there is none."""
    import av

    from support.av_sync import first_channel

    track = None
    for path in files:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                continue
            st = c.streams.audio[0]
            if track is None:
                track = AudioTrack(st.codec_context.name, len(st.codec_context.extradata or b""))
            for pkt in c.demux(st):
                if pkt.size == 0 or pkt.pts is None:
                    continue
                t_ms = float(pkt.pts * st.time_base * 1000)
                for f in pkt.decode():
                    track.chunks.append((t_ms, first_channel(f), f.sample_rate))
    if track is not None:
        track.chunks.sort(key=lambda c: c[0])
    return track


@dataclass
class AudioCoverage:
    seconds: float           # the sound decoded (samples / rate)
    first_ms: float
    end_ms: float            # the end of the last chunk
    gaps: list = field(default_factory=list)       # (at ms, ms missing) where a chunk starts after the last one ended
    overlaps: int = 0                              # chunks starting before the last one ended (a re-anchor back)


def audio_coverage(chunks: list[tuple[float, int, int]], tolerance_ms: float = 2.0) -> AudioCoverage:
    """Pure: (start ms, samples, rate) of each decoded chunk in time order -> how much sound, over what span, where it
    jumps. Block timestamps are whole milliseconds, hence the tolerance."""
    if not chunks:
        return AudioCoverage(0.0, 0.0, 0.0)
    cov = AudioCoverage(sum(n / rate for _, n, rate in chunks), chunks[0][0], 0.0)
    end = None
    for t, n, rate in chunks:
        if end is not None and t - end > tolerance_ms:
            cov.gaps.append((end, t - end))
        elif end is not None and end - t > tolerance_ms:
            cov.overlaps += 1
        end = t + n * 1000.0 / rate
    cov.end_ms = end
    return cov


def beep_offsets(beeps_ms: list[float], frames: list[tuple[int, int]], clip_len: int, fps: int) -> list[float]:
    """Pure: each beep (the VM's sound beeps at every wall-clock second, guest/player.py) minus the timestamp of the
    clip frame the camera showed at that second (frame (second * fps) mod the clip's length, guest/feeder.py), both
    as stored: how far the archive puts the sound from the picture of the same moment (positive: the sound later).
    Beeps with no such frame within 500 ms are left out."""
    by_index: dict[int, list[int]] = {}
    for ts, idx in frames:
        by_index.setdefault(idx, []).append(ts)
    out = []
    for b in beeps_ms:
        second = round(b / 1000)
        stamps = by_index.get((second * fps) % clip_len, [])
        if stamps:
            ts = min(stamps, key=lambda t: abs(t - b))
            if abs(ts - b) < 500:
                out.append(b - ts)
    return out


def frame_lateness(frames: list[tuple[int, int]], clip_len: int, fps: int) -> list[float]:
    """Pure: how long after the feeder wrote it (clip frame i at the moments t with floor(t * fps) = i mod the clip's
    length, guest/feeder.py) each stored frame is stamped, in ms: the camera path's capture latency as stamped."""
    out = []
    for ts, idx in frames:
        if idx < 0:
            continue
        tick = idx + clip_len * round((ts * fps / 1000 - idx) / clip_len)
        out.append(ts - tick * 1000 / fps)
    return out
