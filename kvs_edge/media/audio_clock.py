"""Audio capture timestamps from the sample count, on the clock the video is stamped with (pure).

A sound card's clock is not the monotonic clock: it runs some ppm fast or slow, so stamping sample k at
`anchor + k / nominal_rate` drifts away from the video by 0.36 s per hour at 100 ppm. And stamping a chunk at its
arrival time carries the scheduling jitter of every read. `AudioClock` does both right:

- sample k is stamped `base_ns + (k - base_k) * period_ns`: chunks follow each other exactly (no jitter);
- every `window_s` of audio, the smallest `arrival - predicted arrival` of the window (reads are only ever late, so
  the minimum is the phase error without the jitter) corrects the phase (`base_ns`) and the period (the card's real
  rate): a second-order loop that tracks any constant drift with no steady error;
- a chunk captured earlier than the prediction by more than `resync_ms` re-anchors at once (reads are never early:
  the anchor was set on a late read); one that arrives later by more than `resync_ms` is an xrun (samples lost: every
  read from then on is late) or only a read held up (a loaded machine, a sound card that hands over two periods at
  once: the reads after it catch up). So lateness re-anchors only once it has lasted `confirm_s` of audio, by the
  least late arrival of that stretch (a caller that knows samples were lost says so: `discontinuity`, at once).
  Each re-anchor is counted in `resyncs` and returned in `Stamp.resync`, so the caller logs it. (Found in the VM test
  bed, capturing from snd-aloop in 8 ms periods with an 8 s buffer, so no sample was lost: in the loaded TCG guest a
  read now and then returned over 100 ms late, and re-anchoring on it at once moved the sound about 107 ms forward
  and, at the next read on time, back again: overlapping blocks the fragmenter then dropped.)

Timestamps are nanoseconds on the injected arrival clock (CLOCK_MONOTONIC in the appliance, like Frame.timestamp_ns).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stamp:
    timestamp_ns: int  # capture time of the chunk's first sample
    resync: bool  # True when this chunk re-anchored the clock (the reason is in AudioClock.last_resync)


class AudioClock:
    def __init__(self, sample_rate: int, *, latency_ns: int = 0, window_s: float = 5.0, resync_ms: float = 100.0,
                 max_ppm: float = 1000.0, confirm_s: float = 0.5) -> None:
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        self.sample_rate = sample_rate
        self.latency_ns = latency_ns  # from the end of a chunk's capture to its read returning (device buffer)
        self.window_samples = max(1, int(window_s * sample_rate))
        self.resync_ns = int(resync_ms * 1_000_000)
        self.max_skew = max_ppm * 1e-6
        self.nominal_period_ns = 1e9 / sample_rate
        self.period_ns = self.nominal_period_ns
        self.samples = 0  # samples stamped so far
        self.resyncs = 0
        self.last_resync = ""
        self._base_ns: float | None = None
        self._base_k = 0
        self._win_start = 0
        self._win_min: float | None = None
        self.confirm_samples = max(1, int(confirm_s * sample_rate))
        self._late_since: int | None = None  # first sample of the chunk that began the current late stretch
        self._late_min = 0.0

    @property
    def drift_ppm(self) -> float:
        """The card's clock against the arrival clock as estimated now (positive: the card runs slow)."""
        return (self.period_ns / self.nominal_period_ns - 1) * 1e6

    def stamp(self, n_samples: int, arrival_ns: int, discontinuity: bool = False) -> Stamp:
        """The timestamp of the first of `n_samples` samples whose read returned at `arrival_ns`.

        discontinuity: the capture layer knows samples were lost (xrun reported, device reopened): re-anchor.
        """
        if n_samples <= 0:
            raise ValueError("a chunk needs at least one sample")
        k = self.samples
        captured_end = arrival_ns - self.latency_ns  # when the chunk's last sample was captured, plus read jitter
        resync = False
        if self._base_ns is None or discontinuity:
            self.last_resync = "start" if self._base_ns is None else "discontinuity reported by the capture"
            resync = self._base_ns is not None
            self._anchor(k, captured_end - n_samples * self.period_ns)
        else:
            predicted_end = self._base_ns + (k + n_samples - self._base_k) * self.period_ns
            err = captured_end - predicted_end
            if err < -self.resync_ns:
                self.last_resync = f"the audio ran {-err / 1e6:.0f} ms ahead of its clock"
                resync = True
                self._anchor(k, captured_end - n_samples * self.period_ns)
            elif err > self.resync_ns:
                if self._late_since is None:
                    self._late_since, self._late_min = k, err
                self._late_min = min(self._late_min, err)
                if k + n_samples - self._late_since >= self.confirm_samples:
                    self.last_resync = (f"the audio arrived {self._late_min / 1e6:.0f} ms late for "
                                        f"{(k + n_samples - self._late_since) / self.sample_rate:.1f} s "
                                        f"(xrun or lost samples)")
                    resync = True
                    self._anchor(k, predicted_end + self._late_min - n_samples * self.period_ns)
            else:
                self._late_since = None
                self._win_min = err if self._win_min is None else min(self._win_min, err)
        if resync:
            self.resyncs += 1
        ts = self._base_ns + (k - self._base_k) * self.period_ns
        self.samples = k + n_samples
        if self.samples - self._win_start >= self.window_samples and self._win_min is not None:
            self._correct(self.samples - self._win_start)
        return Stamp(int(round(ts)), resync)

    def _anchor(self, k: int, base_ns: float) -> None:
        self._base_ns, self._base_k = base_ns, k
        self._win_start, self._win_min = k, None
        self._late_since = None

    def _correct(self, window: int) -> None:
        """End of a window: move the phase by half its error and the period by a quarter of the error's slope."""
        err = self._win_min
        k = self.samples
        now = self._base_ns + (k - self._base_k) * self.period_ns
        self.period_ns += 0.25 * err / window
        lo, hi = self.nominal_period_ns * (1 - self.max_skew), self.nominal_period_ns * (1 + self.max_skew)
        self.period_ns = min(max(self.period_ns, lo), hi)
        self._base_ns, self._base_k = now + 0.5 * err, k
        self._win_start, self._win_min = k, None
