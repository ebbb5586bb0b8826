"""Beep-to-flash offsets in an MKV with the test pattern's picture and sound (sources/testpattern.py, tone.py).

Decoded with PyAV (FFmpeg): a flash is a frame whose mean luma is near white, at the frame's timestamp; a beep onset is
the first sample after a quiet stretch whose amplitude exceeds half the beep level (the tone stays at 0.1, the beep is
0.8), at the decoded frame's timestamp plus the sample's index. Each flash is paired with the nearest beep onset.
"""

from __future__ import annotations

import io

import av
import numpy as np

FLASH_LUMA = 200
BEEP_THRESHOLD = 0.4


def beep_onsets(chunks) -> list[float]:
    """Beep onsets (ms) in decoded sound: chunks of (start ms, one channel's samples as floats, sample rate) in time
    order. An onset is the first sample above BEEP_THRESHOLD over 200 ms after the last one (beeps are 40 ms long,
    a second apart)."""
    beeps: list[float] = []
    last_loud = -1e9
    for t_ms, x, rate in chunks:
        for i in np.nonzero(np.abs(x) > BEEP_THRESHOLD)[0]:
            ms = t_ms + i * 1000.0 / rate
            if ms - last_loud > 200:
                beeps.append(ms)
            last_loud = ms
    return beeps


def first_channel(f) -> np.ndarray:
    """The first channel of a decoded PyAV AudioFrame (planar or packed) as floats."""
    return f.to_ndarray().reshape(f.layout.nb_channels if f.format.is_planar else 1, -1)[0]


def flashes_and_beeps(data: bytes) -> tuple[list[float], list[float]]:
    flashes: list[float] = []
    sound = []
    with av.open(io.BytesIO(data), format="matroska") as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        for pkt in c.demux(v, a):
            if pkt.size == 0:
                continue
            try:
                frames = pkt.decode()
            except av.error.InvalidDataError:
                continue
            for f in frames:
                t_ms = float(f.pts * f.time_base * 1000)
                if pkt.stream is v:
                    if f.to_ndarray(format="gray").mean() > FLASH_LUMA:
                        flashes.append(t_ms)
                else:
                    sound.append((t_ms, first_channel(f), f.sample_rate))
    # a flash lasts one frame but the encoder may keep it bright for a second frame: keep each run's first
    runs = [t for i, t in enumerate(flashes) if i == 0 or t - flashes[i - 1] > 200]
    return runs, beep_onsets(sorted(sound, key=lambda c: c[0]))


def offsets_ms(data: bytes) -> list[float]:
    """beep onset - flash time, for every flash that has a beep within 500 ms."""
    flashes, beeps = flashes_and_beeps(data)
    out = []
    for t in flashes:
        if beeps:
            b = min(beeps, key=lambda x: abs(x - t))
            if abs(b - t) < 500:
                out.append(b - t)
    return out
