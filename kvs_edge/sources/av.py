"""Sources read through PyAV (FFmpeg): a file, an RTSP camera, a V4L2 device. H.264 only, never re-encoded.

- `FileSource`: .h264/.264 (raw Annex B, at source.fps: split into access units by media/annexb_stream.py as FFmpeg's
  h264 parser splits them, without loading PyAV), .mkv/.mp4/.mov (AVCC, converted to Annex B with SPS/PPS in
  front of every key frame), optionally looped. Paced at the file's own frame rate for `run` (frames arrive in real
  time, stamped on the monotonic clock), or unpaced for `kvs-edge upload` (as fast as read, stamped with the file's
  own timestamps in ns from 0).
- `StreamSource`: a live input that reconnects with exponential backoff. `rtsp` opens the camera over TCP
  (rtsp_transport=tcp) with socket and read timeouts; `v4l2` asks the device for H.264 (input_format h264).
  Transient failures (camera rebooting, network down, stream ended) are logged and retried; only problems retrying
  cannot fix (another codec, a device that does not exist) set `error`.

Another codec than H.264 gets one line naming the codec and what to do. URLs are shown with any password masked.

The audio of a file or an RTSP camera (InputAudio, when the pipeline sets `on_audio`) is the one thing that may be
re-encoded: AAC with a valid config passes through, anything else becomes AAC-LC (sources/aac_input.py).
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
from fractions import Fraction
from typing import Callable

from kvs_edge.clock import Clock, KernelClock
from kvs_edge.media import h264
from kvs_edge.media.frame import Frame
from kvs_edge.retry import LIVE_SOURCE, Backoff

from .base import Emit, Pacer, Source, SourceError

log = logging.getLogger(__name__)

RAW_H264_EXTENSIONS = (".h264", ".264", ".h26l", ".avc")


# -- pure helpers ---------------------------------------------------------------------------------------------------

def redact_uri(uri: str) -> str:
    """rtsp://user:secret@host/x -> rtsp://user:***@host/x (passwords never reach a log line or an error)."""
    return re.sub(r"(?<=://)([^/@:]*):[^/@]*@", r"\1:***@", str(uri))


def codec_error(what: str, codec: str, live: bool) -> SourceError:
    if live:
        hint = "set the camera's video encoding to H.264 in its settings"
    else:
        hint = "convert it first, e.g. ffmpeg -i INPUT -c:v libx264 -bf 0 -g 60 OUTPUT.mp4"
    return SourceError(f"{what}: the video is {codec}, not H.264: kvs-edge streams H.264 without re-encoding; {hint}")


def _parameter_sets(extradata: bytes) -> tuple[int | None, list[bytes]]:
    """(NAL length size or None for Annex B, [SPS..., PPS...]) of a stream's codec private data."""
    if extradata[:1] != b"\x01":
        try:
            return None, h264.split_annexb(extradata)
        except h264.H264Error as e:
            raise SourceError(f"the H.264 parameter sets of the input are damaged ({e}): re-mux the file") from e
    try:
        cfg = h264.parse_avcc(extradata)
    except h264.H264Error as e:
        raise SourceError(f"the H.264 configuration (avcC) of the input is damaged ({e}): re-mux the file") from e
    return cfg.length_size, cfg.sps + cfg.pps


class AnnexBConverter:
    """Turns a demuxed H.264 packet into an Annex B access unit with SPS/PPS in front of every IDR.

    extradata: the stream's codec private data: an avcC record (MP4/MKV: packets are length-prefixed) or Annex B
    parameter sets (raw H.264, RTSP sprop-parameter-sets). Parameter sets seen in-band are remembered too, so a stream
    that sends them once still gets them on every key frame.
    """

    def __init__(self, extradata: bytes | None) -> None:
        self.length_size: int | None = None
        self.sps: dict[int, bytes] = {}
        self.pps: list[bytes] = []
        self.length_size, sets = _parameter_sets(bytes(extradata or b""))
        self._remember(sets)

    def _remember(self, nals: list[bytes]) -> None:
        sps = [n for n in nals if h264.nal_type(n) == h264.NAL_SPS]
        pps = [n for n in nals if h264.nal_type(n) == h264.NAL_PPS]
        if sps:
            self.sps = {0: sps[-1]} if len(sps) == 1 else {i: s for i, s in enumerate(sps)}
        if pps:
            self.pps = pps

    def _nals(self, payload: bytes) -> list[bytes]:
        try:
            if self.length_size is None:  # never sniff: an AVCC length of 256..511 starts with 00 00 01
                return h264.split_annexb(payload)
            return list(h264.iter_avcc(payload, self.length_size))
        except h264.H264Error as e:
            raise SourceError(f"a packet's NAL units do not add up ({e}): the file is damaged") from e

    def convert(self, payload: bytes) -> tuple[bytes, bool]:
        """(Annex B access unit, key) where key means the unit holds an IDR slice."""
        return self.convert_nals(self._nals(payload))

    def convert_nals(self, nals: list[bytes]) -> tuple[bytes, bool]:
        """convert() of an access unit already split into NAL units (a raw file: media/annexb_stream.py)."""
        types = [h264.nal_type(n) for n in nals]
        key = h264.NAL_IDR in types
        has_sps, has_pps = h264.NAL_SPS in types, h264.NAL_PPS in types
        if has_sps or has_pps:
            self._remember(nals)
        if key and not (has_sps and has_pps) and self.sps and self.pps:
            head = [n for n in nals if h264.nal_type(n) == h264.NAL_AUD]  # an access unit delimiter stays first
            rest = [n for n in nals if h264.nal_type(n) not in (h264.NAL_AUD, h264.NAL_SPS, h264.NAL_PPS)]
            nals = head + list(self.sps.values()) + self.pps + rest
        return h264.join_annexb(nals), key


class LiveTimestamps:
    """Capture times for a live input: the stream's own spacing, mapped onto the monotonic clock of arrival.

    offset = the smallest (arrival - media time) seen: a frame is never stamped later than it arrived, network jitter
    does not show in the timestamps, and a burst of buffered frames does not push later ones into the future.
    A media clock that jumps (camera restart) or drifts more than `max_drift_ns` behind arrival re-anchors the
    mapping at arrival. Output is strictly increasing.
    """

    def __init__(self, max_drift_ns: int = 2_000_000_000) -> None:
        self.max_drift_ns = max_drift_ns
        self._offset: int | None = None
        self._last = -1

    def reset(self) -> None:
        self._offset = None

    @property
    def offset(self) -> int | None:
        """monotonic ns - media ns of the current mapping (None until the first frame): the input's audio, on the
        same media clock, is mapped with it."""
        return self._offset

    def stamp(self, media_ns: int | None, now_ns: int) -> int:
        if media_ns is None:
            ts = now_ns
        else:
            candidate = now_ns - media_ns
            if self._offset is None or candidate < self._offset:
                self._offset = candidate
            ts = media_ns + self._offset
            if ts <= self._last or now_ns - ts > self.max_drift_ns:  # jumped back, or fell behind arrival
                self._offset = candidate
                ts = now_ns
        ts = max(ts, self._last + 1)
        self._last = ts
        return ts


def _media_ns(packet, time_base) -> int | None:
    t = packet.dts if packet.dts is not None else packet.pts
    if t is None or time_base is None:
        return None
    return int(Fraction(t) * Fraction(time_base) * 1_000_000_000)


def _duration_ns(packet, time_base) -> int | None:
    if not packet.duration or time_base is None:
        return None
    return int(Fraction(packet.duration) * Fraction(time_base) * 1_000_000_000)


def _av_error_text(e: BaseException, uri: str) -> str:
    """One line for an FFmpeg/OS error, with the URL's password masked (PyAV puts the URL into str(e))."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return redact_uri(str(text).replace(str(uri), redact_uri(uri)))


class InputAudio:
    """The input's own audio track (file, RTSP) as raw AAC (sources/aac_input.py) for `on_audio`.

    `audio` (its AacFromStream) is set once the input is open, `audio_error` (one line) when its audio is unusable:
    the video then goes on alone.
    """

    on_audio: Callable | None = None
    audio_bitrate: int = 64000
    audio = None
    audio_error: str | None = None
    name = "input"
    raw = False  # a raw H.264 file has no audio

    @property
    def _audio_what(self) -> str:
        return getattr(self, "path", None) or redact_uri(getattr(self, "url", self.name))

    def _open_audio(self, container):
        """The container's first audio stream when audio is wanted and usable; else None (video goes on alone)."""
        from .aac_input import AacFromStream, AudioUnusable

        if self.on_audio is None or self.raw or not container.streams.audio or self.audio_error:
            return None
        astream = container.streams.audio[0]
        try:
            self.audio = AacFromStream(astream, bitrate=self.audio_bitrate, what=self._audio_what)
        except (AudioUnusable, ValueError) as e:
            self._audio_failed(str(e))
            return None
        except Exception as e:  # an audio codec FFmpeg has no decoder for, and the like
            self._audio_failed(f"{self._audio_what}: its {astream.codec_context.name} audio cannot be used ({e})")
            return None
        log.info("%s: audio %s Hz x %s: %s", self.name, self.audio.sample_rate, self.audio.channels,
                 self.audio.description)
        return astream

    def _audio_failed(self, message: str) -> None:
        if self.audio_error is None:
            self.audio_error = message
            log.warning("%s; sending video only", message)
        self.audio = None


# -- files ----------------------------------------------------------------------------------------------------------

RAW_READ_BYTES = 64 * 1024  # a raw file is read in blocks of this size (under glibc's mmap threshold, run.py)


class FileSource(InputAudio, Source):
    """A video file: paced in real time (run) or as fast as it reads (upload); optionally looped."""

    def __init__(self, cfg, *, paced: bool = True, clock: Clock | None = None,
                 loop: bool | None = None, on_audio: Callable | None = None, audio_bitrate: int = 64000) -> None:
        super().__init__()
        # on_audio(AudioFrame): the file's audio track as raw AAC (sources/aac_input.py), on the video's time line;
        # `audio` (its AacFromStream) is set once the file is open, `audio_error` when its audio is unusable
        self.on_audio = on_audio
        self.audio_bitrate = audio_bitrate
        self.audio = None
        self.audio_error: str | None = None
        uri = getattr(cfg, "uri", None)
        if not uri:
            raise SourceError("source.uri is missing: give the path of an .h264, .mp4 or .mkv file")
        self.path = os.path.expanduser(str(uri))
        self.fps = Fraction(cfg.fps).limit_denominator(1001) if getattr(cfg, "fps", None) else Fraction(30)
        self.loop = bool(getattr(cfg, "loop", False)) if loop is None else loop
        self.paced = paced
        self.clock = clock or KernelClock()
        self.raw = self.path.lower().endswith(RAW_H264_EXTENSIONS)
        self.name = f"file {os.path.basename(self.path)}" + (" (looped)" if self.loop else "")
        self.width: int | None = None
        self.height: int | None = None

    def _open(self):
        import av

        if not os.path.isfile(self.path):
            raise SourceError(f"source.uri {self.path}: no such file: check the path")
        try:
            container = av.open(self.path)
        except av.FFmpegError as e:
            raise SourceError(f"{self.path}: cannot be read as video ({_av_error_text(e, self.path)}): "
                              "give an .h264, .mp4 or .mkv file") from e
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.path}: has no video stream: give an .h264, .mp4 or .mkv file with H.264 video")
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        if codec != "h264":
            container.close()
            raise codec_error(self.path, codec, live=False)
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        return container, stream

    def _run(self, emit: Emit) -> None:
        pacer = Pacer(self.clock, self._stopping)
        offset = 0  # media ns added on each pass of a looped file
        while not self._stopping.is_set():
            passed = self._raw_pass(emit, pacer, offset) if self.raw else self._av_pass(emit, pacer, offset)
            if passed is None:  # stopped
                return
            index, end_ns = passed
            if index == 0:
                raise SourceError(f"{self.path}: contains no H.264 frames")
            if not self.loop:
                self.finished = True
                log.info("%s: end of file after %d frames", self.name, index)
                return
            offset += end_ns  # the next pass starts where this one's last frame ended
            log.debug("%s: looping", self.name)

    def _raw_units(self):
        """The access units of a raw H.264 file, read in RAW_READ_BYTES blocks, split as FFmpeg's h264 parser splits
        them (media/annexb_stream.py): no PyAV, no FFmpeg (about 25 MB of memory) for the file source benches and
        demos use most."""
        from kvs_edge.media.annexb_stream import AccessUnitSplitter

        if not os.path.isfile(self.path):
            raise SourceError(f"source.uri {self.path}: no such file: check the path")
        splitter = AccessUnitSplitter()
        try:
            with open(self.path, "rb") as f:
                while block := f.read(RAW_READ_BYTES):
                    yield from splitter.feed(block)
            yield from splitter.flush()
        except h264.H264Error as e:
            raise SourceError(f"{self.path}: cannot be read as video ({e}): give an .h264, .mp4 or .mkv file") from e
        except OSError as e:
            raise SourceError(f"{self.path}: cannot be read as video ({e.strerror or e})") from e

    def _raw_pass(self, emit: Emit, pacer, offset: int) -> tuple[int, int] | None:
        """One pass over a raw H.264 file at source.fps: (frames, media ns of its end), or None when stopped."""
        conv = AnnexBConverter(None)
        num, den = 1_000_000_000 * self.fps.denominator, self.fps.numerator  # int(index * 1e9 / fps), in integers
        index = 0
        for nals in self._raw_units():
            if self._stopping.is_set():
                return None
            if self.width is None:
                self._size_from(nals)
            data, key = conv.convert_nals(nals)
            media = index * num // den
            index += 1
            ts = pacer.wait(offset + media) if self.paced else offset + media
            if self._stopping.is_set():
                return None
            emit(Frame(data, ts, key))
        return index, index * num // den

    def _size_from(self, nals: list[bytes]) -> None:
        for n in nals:
            if h264.nal_type(n) == h264.NAL_SPS:
                try:
                    sps = h264.parse_sps(n)
                except (h264.H264Error, IndexError):
                    return
                self.width, self.height = sps.width, sps.height
                return

    def _av_pass(self, emit: Emit, pacer, offset: int) -> tuple[int, int] | None:
        """One pass over a container file (MP4, MKV, ...) through PyAV with the file's own timestamps (and its audio):
        (frames, media ns of its end), or None when stopped."""
        import av

        frame_ns = int(1_000_000_000 / self.fps)
        container, stream = self._open()
        conv = AnnexBConverter(stream.codec_context.extradata)
        astream = self._open_audio(container)
        early_audio: list = []  # audio packets before the first video one, stamped once its time is known
        first: int | None = None
        last_ns = -frame_ns
        end_ns = 0
        index = 0
        try:
            for packet in container.demux(*([stream, astream] if astream is not None else [stream])):
                if self._stopping.is_set():
                    return None
                if packet.size == 0:
                    continue
                if astream is not None and packet.stream is astream:
                    if first is None:
                        early_audio.append(packet)
                    else:
                        self._audio_packet(packet, first, offset, pacer)
                    continue
                data, key = conv.convert(bytes(packet))
                media = _media_ns(packet, stream.time_base)
                if media is None:
                    media = int(index * 1_000_000_000 / self.fps)
                elif first is None:
                    first = media
                media = media - (first or 0)
                media = max(media, last_ns + 1)
                last_ns = media
                index += 1
                dur = _duration_ns(packet, stream.time_base)
                end_ns = media + (dur if dur else frame_ns)
                ts = pacer.wait(offset + media) if self.paced else offset + media
                if self._stopping.is_set():
                    return None
                emit(Frame(data, ts, key))
                for p in early_audio:
                    self._audio_packet(p, first or 0, offset, pacer)
                early_audio.clear()
            if self.audio is not None and self.on_audio is not None:
                self._deliver_audio(self.audio.flush(), offset, pacer)
        except av.FFmpegError as e:
            raise SourceError(f"{self.path}: read error after {index} frames "
                              f"({_av_error_text(e, self.path)}): the file is damaged") from e
        finally:
            container.close()
        return index, end_ns

    def _audio_packet(self, packet, first_ns: int, offset: int, pacer) -> None:
        from .aac_input import AudioUnusable

        if self.audio is None:
            return
        media = _media_ns(packet, packet.stream.time_base)
        try:
            frames = self.audio.feed(packet, None if media is None else media - first_ns)
        except AudioUnusable as e:
            self._audio_failed(str(e))
            return
        self._deliver_audio(frames, offset, pacer)

    def _deliver_audio(self, frames, offset: int, pacer) -> None:
        from kvs_edge.media.frame import AudioFrame

        for data, media in frames:
            ts = pacer.wait(offset + media) if self.paced and media >= 0 else offset + media
            self.on_audio(AudioFrame(data, ts))


# -- live inputs ----------------------------------------------------------------------------------------------------

class StreamSource(InputAudio, Source):
    """A live input (RTSP camera, V4L2 device, or any URL FFmpeg opens) that reconnects with exponential backoff.

    With `on_audio` set (source.audio on an rtsp source), the camera's audio track goes along as raw AAC
    (InputAudio: AAC with a valid config passed through, LATM/ADTS/G.711/... transcoded), stamped with the video's
    mapping of media time to the monotonic clock (LiveTimestamps.offset), so the input's A/V offset is kept.

    fatal_open: called with the exception of a failed first open; returns a SourceError to give up at once (e.g. a
    V4L2 device that does not exist) or None to keep retrying.
    """

    def __init__(self, url: str, *, name: str, format: str | None = None, options: dict[str, str] | None = None,
                 open_timeout: float = 10.0, read_timeout: float = 5.0, backoff_initial: float = LIVE_SOURCE.base_s,
                 backoff_max: float = LIVE_SOURCE.cap_s, clock: Clock | None = None,
                 fatal_open: Callable[[BaseException], SourceError | None] | None = None,
                 rng: random.Random | None = None, audio_bitrate: int = 64000, audio_sync_wait_s: float = 10.0) -> None:
        super().__init__()
        self.audio_bitrate = audio_bitrate
        self.audio_waiting = 0  # audio packets dropped: before the first key frame or the first RTCP Sender Report
        self.audio_sync_wait_s = audio_sync_wait_s  # no Sender Report for this long: one warning line
        self._audio_last = -1
        self._unsynced_since: int | None = None
        self._no_rtcp_warned = False
        self.url = url
        self.name = name
        self.format = format
        self.options = dict(options or {})
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._retry = Backoff(backoff_initial, backoff_max, rng)
        self.clock = clock or KernelClock()
        self.fatal_open = fatal_open
        self.connects = 0  # successful opens (the first one included)
        self.reconnects = 0  # retries after a failure or an end of stream
        self.last_failure: str | None = None
        self.connected = False  # True while frames can flow; False while (re)connecting or backing off
        self._wakeup = threading.Event()

    def _wake(self) -> None:
        self._wakeup.set()

    def _backoff(self, delay: float) -> None:
        self._wakeup.wait(delay)

    def _run(self, emit: Emit) -> None:
        import av

        self._retry.reset()
        stamps = LiveTimestamps()
        ever_opened = False
        while not self._stopping.is_set():
            try:
                container = av.open(self.url, format=self.format, options=self.options,
                                    timeout=(self.open_timeout, self.read_timeout))
            except (av.FFmpegError, OSError) as e:
                fatal = self.fatal_open(e) if (self.fatal_open and not ever_opened) else None
                if fatal is not None:
                    raise fatal from e
                why = (f"no answer within {self.open_timeout:g} s" if isinstance(e, av.ExitError)
                       else _av_error_text(e, self.url))
                self._retry_later(f"cannot open: {why}")
                continue
            ever_opened = True
            self.connects += 1
            self.connected = True
            delivered = 0
            try:
                if not container.streams.video:
                    raise SourceError(f"{redact_uri(self.url)}: has no video stream: check the URL / device")
                stream = container.streams.video[0]
                codec = stream.codec_context.name
                if codec != "h264":
                    raise codec_error(redact_uri(self.url), codec, live=True)
                log.info("%s: connected (%sx%s)", self.name, stream.codec_context.width, stream.codec_context.height)
                conv = AnnexBConverter(stream.codec_context.extradata)
                stamps.reset()
                astream = self._open_audio(container)
                waiting_for_key = True
                for packet in container.demux(*([stream, astream] if astream is not None else [stream])):
                    if self._stopping.is_set():
                        return
                    if packet.size == 0:
                        continue
                    if astream is not None and packet.stream is astream:
                        self._live_audio(packet, stamps.offset, container.start_time_realtime is not None)
                        continue
                    data, key = conv.convert(bytes(packet))
                    if waiting_for_key and not key:
                        continue  # a (re)connection starts where decoding can start
                    waiting_for_key = False
                    ts = stamps.stamp(_media_ns(packet, stream.time_base), self.clock.monotonic_ns())
                    emit(Frame(data, ts, key))
                    delivered += 1
                    if delivered == 1:
                        self._retry.reset()  # it works again: the next failure starts the backoff afresh
                reason = "the stream ended"
            except av.ExitError:  # PyAV's read timeout interrupted FFmpeg: the camera went quiet
                reason = f"no video for {self.read_timeout:g} s"
            except (av.FFmpegError, OSError) as e:
                reason = _av_error_text(e, self.url)
            finally:
                self.connected = False
                try:
                    container.close()
                except Exception:  # closing a broken connection may fail too; nothing to save
                    pass
            if self._stopping.is_set():
                return
            self._retry_later(f"{reason} after {delivered} frames")

    def _live_audio(self, packet, offset: int | None, rtcp_synced: bool) -> None:
        """One audio packet of the camera -> AudioFrames on the video's time line.

        FFmpeg's RTSP demuxer gives each track its own time line starting at 0 until an RTCP Sender Report arrives
        (RFC 3550 6.4.1: "the NTP timestamp ... and the RTP timestamp correspond to the same time"); from then on
        it maps every track through it onto one time line (rtpdec.c finalize_packet), and PyAV's
        start_time_realtime is set. Audio before that, or before the first key frame (no video mapping yet), has
        nothing to be synchronized with and is dropped (counted in audio_waiting).
        """
        from kvs_edge.media.frame import AudioFrame

        from .aac_input import AudioUnusable

        if self.audio is None:
            return
        if offset is None or not rtcp_synced:
            self.audio_waiting += 1
            now = self.clock.monotonic_ns()
            self._unsynced_since = self._unsynced_since or now
            if not rtcp_synced and not self._no_rtcp_warned \
                    and now - self._unsynced_since > self.audio_sync_wait_s * 1e9:
                self._no_rtcp_warned = True
                log.warning("%s: no RTCP Sender Report for %g s: its audio cannot be synchronized with the video; "
                            "sending video only until one comes (check the camera's RTCP setting)", self.name,
                            self.audio_sync_wait_s)
            return
        self._unsynced_since = None
        try:
            frames = self.audio.feed(packet, _media_ns(packet, packet.stream.time_base))
        except AudioUnusable as e:
            self._audio_failed(str(e))
            return
        for data, media in frames:
            ts = max(media + offset, self._audio_last + 1)
            self._audio_last = ts
            self.on_audio(AudioFrame(data, ts))

    def _retry_later(self, what: str) -> None:
        delay = self._retry.next()
        self.last_failure = what
        self.reconnects += 1
        log.warning("%s: %s; retrying in %.1f s", self.name, what, delay)
        self._backoff(delay)


def rtsp_source(cfg, *, clock: Clock | None = None, **kw) -> StreamSource:
    """An RTSP camera over TCP (interleaved RTP: no lost UDP packets, one port through firewalls)."""
    uri = getattr(cfg, "uri", None)
    if not uri:
        raise SourceError("source.uri is missing: give the camera's RTSP URL, e.g. rtsp://user:pass@192.168.1.20/stream1")
    read_timeout = kw.pop("read_timeout", 5.0)
    options = {
        "rtsp_transport": "tcp",
        "timeout": str(int(read_timeout * 1_000_000)),  # socket I/O timeout, microseconds
        "analyzeduration": "1000000",
        "probesize": "1000000",
        # frames read while probing the stream would come out in one burst with no spacing to stamp them by:
        # drop them; the stream starts at the next key frame.
        "fflags": "nobuffer",
    }
    return StreamSource(str(uri), name=f"rtsp {redact_uri(uri)}", options=options, read_timeout=read_timeout,
                        clock=clock, **kw)


def v4l2_source(cfg, *, clock: Clock | None = None, **kw) -> StreamSource:
    """A V4L2 device (USB camera) that encodes H.264 itself; asked for it at the configured size and rate."""
    device = getattr(cfg, "uri", None) or "/dev/video0"
    options = {"input_format": "h264", "video_size": f"{int(cfg.width)}x{int(cfg.height)}",
               "framerate": str(cfg.fps), "fflags": "nobuffer"}

    def fatal(e: BaseException) -> SourceError | None:
        if not os.path.exists(device):
            return SourceError(f"source.uri {device}: no such V4L2 device: check the USB camera is plugged in "
                               "(ls /dev/video*)")
        if isinstance(e, PermissionError) or getattr(e, "errno", None) == 13:
            return SourceError(f"{device}: permission denied: add the service user to the video group")
        return SourceError(f"{device}: cannot deliver H.264 at {int(cfg.width)}x{int(cfg.height)}@{cfg.fps} "
                           f"({_av_error_text(e, device)}): check `v4l2-ctl -d {device} --list-formats-ext` "
                           "for an H.264 format and pick a listed size and rate")

    return StreamSource(device, name=f"v4l2 {device}", format="v4l2", options=options, clock=clock,
                        fatal_open=fatal, **kw)
