"""AAC-LC encoding with FFmpeg's encoder through PyAV: PCM in (any layout/format/rate PyAV decodes), raw AAC frames
out, each stamped with the index of its first sample, and the plain 2-byte AudioSpecificConfig (FFmpeg's own extradata
carries a 3-byte extension that KVS playback does not need)."""

from __future__ import annotations

from fractions import Fraction

from kvs_edge.media import aac


class AacEncoder:
    def __init__(self, sample_rate: int, channels: int, bitrate: int = 64000) -> None:
        import av

        if sample_rate not in aac.SAMPLING_FREQUENCIES:
            raise ValueError(f"{sample_rate} Hz is not an AAC sampling frequency")
        if channels not in (1, 2):
            raise ValueError("AAC encoding here takes 1 or 2 channels")
        self.sample_rate, self.channels = sample_rate, channels
        self.layout = "mono" if channels == 1 else "stereo"
        enc = av.CodecContext.create("aac", "w")
        enc.sample_rate, enc.layout, enc.format, enc.bit_rate = sample_rate, self.layout, "fltp", bitrate
        enc.time_base = Fraction(1, sample_rate)
        enc.open()
        self._enc = enc
        self._fifo = av.AudioFifo()
        self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=sample_rate)
        self.asc = aac.build_asc(sample_rate, channels)
        self.samples_in = 0  # samples (at sample_rate) taken so far
        self._packets = 0

    def encode(self, frame) -> list[tuple[bytes, int]]:
        """A PyAV AudioFrame (or None at the end) -> [(raw AAC frame, index of its first sample)].

        Packet j holds samples from (j - 1) * 1024 on: the encoder's first packet is its 1024-sample priming, so it is
        stamped one frame early (as MP4 edit lists do) and the sound lines up with its capture time.
        """
        if frame is not None:
            frame.pts = None  # timing comes from the sample count; the FIFO checks pts continuity otherwise
            for rf in self._resampler.resample(frame):
                rf.pts = None
                self.samples_in += rf.samples
                self._fifo.write(rf)
        out = []
        n = aac.SAMPLES_PER_FRAME
        while self._fifo.samples >= n or (frame is None and self._fifo.samples):
            out += self._packets_of(self._fifo.read(min(n, self._fifo.samples)))
        if frame is None:
            out += self._packets_of(None)
        return out

    def encode_array(self, samples) -> list[tuple[bytes, int]]:
        """float32 planar samples shaped (channels, n) in -1..1."""
        import av

        f = av.AudioFrame.from_ndarray(samples, format="fltp", layout=self.layout)
        f.sample_rate = self.sample_rate
        return self.encode(f)

    def _packets_of(self, frame) -> list[tuple[bytes, int]]:
        out = []
        for p in self._enc.encode(frame):
            out.append((bytes(p), (self._packets - 1) * aac.SAMPLES_PER_FRAME))
            self._packets += 1
        return out
