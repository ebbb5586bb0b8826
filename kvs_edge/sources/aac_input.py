"""The audio stream of a PyAV container as raw AAC frames with a valid AudioSpecificConfig (the track-2 payload).

- AAC with a valid 2- or 5-byte config (MP4, MKV): passed through untouched, stamped with the container's timestamps;
- AAC in ADTS frames (MPEG-TS, .aac files, RTSP cameras): headers stripped (aac.split_adts), config built from them;
- anything else (LATM-wrapped AAC, MP3, Opus, PCM, ...): decoded and re-encoded to AAC-LC with FFmpeg's encoder.
  KVS: "AudioSpecificConfig for AAC (2 or 5 bytes; LATM is refused)" (docs/kvs-service-facts.md).

Raises AudioUnusable (one line) for audio that can be neither passed through nor decoded; the caller carries on with
video only.
"""

from __future__ import annotations

from kvs_edge.media import aac

DEFAULT_BITRATE = 64000


class AudioUnusable(ValueError):
    """The input's audio cannot become an AAC track; str() is one line."""


class AacFromStream:
    """Feed it the packets of one PyAV audio stream; `feed` returns [(raw AAC frame, media ns)]."""

    def __init__(self, stream, *, bitrate: int = DEFAULT_BITRATE, what: str = "the input") -> None:
        cc = stream.codec_context
        self.what = what
        self.codec = cc.name
        self.time_base = stream.time_base
        self.bitrate = bitrate
        extradata = bytes(cc.extradata or b"")
        self.mode = "transcode"
        self.asc: bytes | None = None
        if self.codec == "aac" and aac.valid_asc(extradata):
            self.mode, self.asc = "pass", extradata
        elif self.codec == "aac" and not extradata:
            self.mode = "adts"  # confirmed (or not) by the first packet
        self.sample_rate = cc.sample_rate
        self.channels = cc.channels
        self._stream = stream
        self._enc = None
        self._first_ns: int | None = None
        if self.mode == "pass":
            cfg = aac.parse_asc(extradata)
            self.sample_rate, self.channels = cfg.sample_rate, cfg.channels
        elif self.mode == "transcode":
            self._open_encoder()

    @property
    def description(self) -> str:
        return {"pass": "AAC passed through", "adts": "AAC, ADTS headers removed"}.get(
            self.mode, f"{self.codec} transcoded to AAC-LC")

    def _open_encoder(self) -> None:
        from kvs_edge.media.aac_encoder import AacEncoder

        rate = self.sample_rate if self.sample_rate in aac.SAMPLING_FREQUENCIES else 48000
        self._enc = AacEncoder(rate, 1 if (self.channels or 1) == 1 else 2, self.bitrate)
        self.sample_rate, self.channels, self.asc = rate, self._enc.channels, self._enc.asc

    def feed(self, packet, media_ns: int | None) -> list[tuple[bytes, int]]:
        import av

        data = bytes(packet)
        if not data:
            return []
        if self.mode == "pass":
            return [(data, media_ns)] if media_ns is not None else []
        if self.mode == "adts":
            if not aac.is_adts(data):
                raise AudioUnusable(f"{self.what}: AAC audio with neither a config nor ADTS headers: remux it")
            try:
                asc, frames = aac.split_adts(data)
            except aac.AacError as e:
                raise AudioUnusable(f"{self.what}: damaged ADTS audio ({e})") from None
            if self.asc is None:
                cfg = aac.parse_asc(asc)
                self.asc, self.sample_rate, self.channels = asc, cfg.sample_rate, cfg.channels
            elif asc != self.asc:
                raise AudioUnusable(f"{self.what}: the AAC configuration changes mid-stream")
            step = aac.SAMPLES_PER_FRAME * 1_000_000_000 // self.sample_rate
            return [(f, media_ns + i * step) for i, f in enumerate(frames)] if media_ns is not None else []
        try:
            decoded = self._stream.codec_context.decode(packet)
        except av.FFmpegError as e:
            raise AudioUnusable(f"{self.what}: the {self.codec} audio does not decode "
                                f"({getattr(e, 'strerror', None) or e}): it is neither AAC nor usable") from None
        out: list[tuple[bytes, int]] = []
        for frame in decoded:
            if self._first_ns is None:  # the first decoded sample, on the caller's time line
                self._first_ns = media_ns or 0
            out += self._stamped(self._enc.encode(frame))
        return out

    def flush(self) -> list[tuple[bytes, int]]:
        if self.mode != "transcode" or self._first_ns is None:
            return []
        return self._stamped(self._enc.encode(None))

    def _stamped(self, packets) -> list[tuple[bytes, int]]:
        return [(data, self._first_ns + k * 1_000_000_000 // self.sample_rate) for data, k in packets]
