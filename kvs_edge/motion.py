"""Motion detection by frame differencing (pure core: luma arrays in, decisions out).

`MotionDetector.feed(luma, t_s)` compares a grey picture (uint8, H x W: Picamera2's lores Y plane, or a decoded key
frame) with the previous one:
    1. crop to the region of interest (x, y, w, h as shares of the picture), when one is set;
    2. average BLOCK x BLOCK pixel blocks: sensor noise is independent per pixel, so a block mean cuts it by BLOCK
       (a 4x4 mean of noise with sigma 8 has sigma 2), while an object covers whole blocks;
    3. a block changed when the absolute difference of its means exceeds `threshold` (0-255);
    4. motion when the changed share of blocks is at least `area`.
It returns Start when motion begins, Continue while it goes on (motion again within `cooldown_s` of the last motion:
the same event, which the upload gate extends), None otherwise. So a person walking through is one event, and noise
alone (no block over the threshold) is none.

`KeyFrameLuma` (the shell for H.264 sources) decodes key frames with PyAV to such arrays; the appliance feeds it
on the detector's own thread at most `motion_fps` times a second (bench/motion.py measures both costs).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

BLOCK = 4


class Motion(str, enum.Enum):
    START = "start"
    CONTINUE = "continue"


@dataclass(frozen=True)
class Measure:
    changed: float  # share of blocks over the threshold
    motion: bool


def block_means(luma: np.ndarray, block: int = BLOCK) -> np.ndarray:
    h, w = luma.shape[0] // block * block, luma.shape[1] // block * block
    if h == 0 or w == 0:
        raise ValueError(f"picture {luma.shape} smaller than a {block}x{block} block")
    v = luma[:h, :w].astype(np.float32)
    return v.reshape(h // block, block, w // block, block).mean(axis=(1, 3))


def crop(luma: np.ndarray, roi: tuple[float, float, float, float] | None) -> np.ndarray:
    if roi is None:
        return luma
    hh, ww = luma.shape[:2]
    x, y, w, h = roi
    x0, y0 = int(x * ww), int(y * hh)
    return luma[y0:max(y0 + 1, int((y + h) * hh)), x0:max(x0 + 1, int((x + w) * ww))]


class MotionDetector:
    def __init__(self, *, threshold: int, area: float, cooldown_s: float,
                 roi: tuple[float, float, float, float] | None = None) -> None:
        self.threshold = float(threshold)
        self.area = float(area)
        self.cooldown_s = float(cooldown_s)
        self.roi = roi
        self._previous: np.ndarray | None = None
        self._last_motion: float | None = None
        self.events = 0
        self.last: Measure | None = None

    def measure(self, luma: np.ndarray) -> Measure | None:
        cur = block_means(crop(luma, self.roi))
        prev, self._previous = self._previous, cur
        if prev is None or prev.shape != cur.shape:
            return None
        changed = float(np.count_nonzero(np.abs(cur - prev) > self.threshold)) / cur.size
        self.last = Measure(changed, changed >= self.area)
        return self.last

    def feed(self, luma: np.ndarray, t_s: float) -> Motion | None:
        m = self.measure(luma)
        if m is None or not m.motion:
            return None
        same = self._last_motion is not None and t_s - self._last_motion <= self.cooldown_s
        self._last_motion = t_s
        if same:
            return Motion.CONTINUE
        self.events += 1
        return Motion.START


class KeyFrameLuma:
    """H.264 key frames (Annex B access units with their SPS/PPS) -> grey pictures, decoded with PyAV."""

    def __init__(self) -> None:
        import av
        self._ctx = av.CodecContext.create("h264", "r")

    def decode(self, access_unit: bytes) -> np.ndarray | None:
        import av
        try:
            frames = self._ctx.decode(av.Packet(access_unit))
        except av.error.FFmpegError:
            return None
        if not frames:
            return None
        return frames[-1].to_ndarray(format="gray")
