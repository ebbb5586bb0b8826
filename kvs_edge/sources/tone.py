"""The test pattern's sound (pure): a quiet 440 Hz tone with a loud 2 kHz beep starting exactly at each flash of the
picture, so the A/V offset of anything downstream can be measured flash by flash."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

TONE_HZ, TONE_LEVEL = 440.0, 0.1
BEEP_HZ, BEEP_LEVEL, BEEP_MS = 2000.0, 0.8, 40


class ToneTrack:
    """samples(start, n): float32 (channels, n) for sample indices start..start+n-1.

    A flash is video frame i with i % flash_every == 0; its beep starts at sample ceil(i * rate / fps), the first
    sample at or after the frame's instant.
    """

    def __init__(self, sample_rate: int, channels: int, fps: Fraction, flash_every: int) -> None:
        self.rate, self.channels = sample_rate, channels
        self.fps = Fraction(fps)
        self.flash_every = flash_every
        self.beep_samples = sample_rate * BEEP_MS // 1000
        self._flash_period = Fraction(flash_every * sample_rate) / self.fps  # samples between beeps

    def beep_start(self, flash: int) -> int:
        """The first sample of beep number `flash` (the beep of video frame flash * flash_every)."""
        return -(-flash * self._flash_period.numerator // self._flash_period.denominator)

    def samples(self, start: int, n: int) -> np.ndarray:
        k = np.arange(start, start + n, dtype=np.int64)
        t = k / self.rate
        out = TONE_LEVEL * np.sin(2 * np.pi * TONE_HZ * t)
        num, den = self._flash_period.numerator, self._flash_period.denominator
        flash = (k * den) // num  # the last flash at or before sample k
        since = k - (-(-flash * num // den))  # samples since that flash's beep started (int64 all the way)
        beep = (since >= 0) & (since < self.beep_samples)
        out = np.where(beep, BEEP_LEVEL * np.sin(2 * np.pi * BEEP_HZ * since / self.rate), out)
        return np.repeat(out.astype(np.float32)[None, :], self.channels, axis=0)
