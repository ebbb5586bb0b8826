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
