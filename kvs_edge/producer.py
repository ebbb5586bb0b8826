"""kvs_edge as a library: `Producer`, a Kinesis Video Streams producer for Python programs.

    from kvs_edge import Producer
    with Producer("my-stream", region="eu-west-1") as p:
        p.put_frame(access_unit)                  # one H.264 access unit, Annex B; never waits for the network
        p.put_audio(aac_frame)                    # with Producer(..., audio=AudioFormat(48000, 1)): track 2, AAC
        p.put_metadata("camera", "front")         # a tag on the next fragment
        p.flush(timeout=30)                       # True once everything put so far is PERSISTED

It is the appliance's engine (one engine, not two): the Pipeline's muxer thread (Fragmenter + Recorder), the fragment
log (on disk, crash-safe, or in memory) and the uploader thread (StreamLink -> Uploader). `kvs-edge run` builds the
same object from its Config with `Producer._engine` and feeds it from a camera source; a library user feeds it with
`put_frame`. Frames are checked on the caller's thread (media/access_unit.py) before they are queued: a frame KVS would
reject raises FrameError and nothing of it is written.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from kvs_edge.clock import FixedOffset
from kvs_edge.config import PRODUCER_BUFFER_MAX_BYTES, Config, StreamConfig, parse_config
from kvs_edge.errors import KvsEdgeError
from kvs_edge.kvs.control import ControlPlane
from kvs_edge.kvs.uploader import Connected, Disconnected, FragmentPersisted, FragmentSkipped
from kvs_edge.media.aac import AacError, build_asc, is_adts, parse_asc, split_adts
from kvs_edge.media.access_unit import FrameError, check_access_unit, frame_timestamp_ns
from kvs_edge.media.fragment_tags import FragmentTags, TagError
from kvs_edge.media.fragmenter import AudioTrack
from kvs_edge.media.frame import AudioFrame, Frame
from kvs_edge.pipeline import Pipeline
from kvs_edge.sources import audio_beside
from kvs_edge.stream_link import StreamLink

log = logging.getLogger(__name__)

ProducerEvent = Connected | Disconnected | FragmentPersisted | FragmentSkipped
PUBLIC_EVENTS = (Connected, Disconnected, FragmentPersisted, FragmentSkipped)
EVENTS_KEPT = 1000  # events waiting for `events()`; the oldest are dropped beyond that
DISPATCH_INTERVAL_S = 0.05
CONTROL_TIMEOUT_S = 5.0  # put_metadata waits at most this long for the muxer thread (never for the network)


class ProducerError(KvsEdgeError, ValueError):
    """The Producer cannot do what was asked (closed, misconfigured); the message says what to do."""


@dataclass(frozen=True)
class ProducerStats:
    """A snapshot of `Producer.stats`."""

    frames: int  # frames accepted by put_frame
    frames_dropped: int  # queued frames dropped (the muxer fell behind; dropped up to the next key frame)
    fragments: int  # fragments written to the buffer
    fragments_persisted: int
    fragments_skipped: int  # rejected by KVS (see the FragmentSkipped event for the error id)
    backlog_fragments: int  # in the buffer, not yet acknowledged (the one being written included)
    backlog_bytes: int
    fragments_evicted: int  # dropped from a full buffer
    connection: str  # "connecting" | "connected" | "offline"
    last_error: str | None
    audio_frames: int = 0  # AAC frames accepted by put_audio
    audio_frames_dropped: int = 0  # the muxer's queue was full


@dataclass(frozen=True)
class AudioFormat:
    """The Producer's audio track (track 2, AAC, in the same fragments as the video).

    sample_rate, channels: what the AAC frames given to put_audio hold. asc: the encoder's AudioSpecificConfig (its
    codec private data, 2 or 5 bytes, e.g. PyAV's `codec_context.extradata`); None writes AAC-LC's for sample_rate
    and channels. KVS plays back only a 2- or 5-byte config (docs/kvs-putmedia.md).
    """

    sample_rate: int = 48000
    channels: int = 1
    asc: bytes | None = None

    def track(self) -> AudioTrack:
        """The checked track; ProducerError says what does not fit."""
        try:
            asc = bytes(self.asc) if self.asc is not None else build_asc(self.sample_rate, self.channels)
            cfg = parse_asc(asc)
        except AacError as e:
            raise ProducerError(f"audio: {e}") from None
        if (cfg.sample_rate, cfg.channels) != (self.sample_rate, self.channels):
            raise ProducerError(f"audio: the AudioSpecificConfig says {cfg.sample_rate} Hz, {cfg.channels} channel(s); "
                                f"AudioFormat says {self.sample_rate} Hz, {self.channels}: make them agree")
        return AudioTrack(asc, cfg.sample_rate, cfg.channels)


class _CallerSource:
    """The Producer's source: the frames come from put_frame (and put_audio) on the caller's thread."""

    error = None
    finished = False

    def __init__(self, audio: AudioTrack | None = None) -> None:
        self.audio = audio  # read by the Pipeline when it declares the audio track
        if audio is not None:
            self.on_audio = None  # the Pipeline sets it (emit_audio); put_audio calls the Pipeline directly

    def start(self, emit) -> None:
        pass

    def stop(self, timeout: float = 0.0) -> None:
        pass


class _Control:
    """Something the muxer thread does in order with the frames; the caller waits for `done`."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self, pipeline: Pipeline) -> None:
        try:
            self.apply(pipeline)
        except BaseException as e:  # handed back to the caller's thread
            self.error = e
        finally:
            self.done.set()

    def apply(self, pipeline: Pipeline) -> None:
        raise NotImplementedError


class _PutTag(_Control):
    def __init__(self, name: str, value: str, persistent: bool) -> None:
        super().__init__()
        self.args = (name, value, persistent)

    def apply(self, pipeline: Pipeline) -> None:
        pipeline.recorder.tags.put(*self.args)


class _Flush(_Control):
    last_seq: int | None = None

    def apply(self, pipeline: Pipeline) -> None:
        pipeline.close_fragment()
        self.last_seq = pipeline.recorder.last_seq


def _credentials(credentials: Any, cfg: Config):
    """None: botocore's chain; ("AKIA...", "secret"[, "token"]); or botocore credentials (anything with
    get_frozen_credentials)."""
    from kvs_edge.kvs.credentials import default_credentials, static_credentials

    if credentials is None:
        return default_credentials(cfg.aws.profile)
    if isinstance(credentials, (tuple, list)):
        if len(credentials) not in (2, 3):
            raise ProducerError("credentials: give (access_key_id, secret_access_key[, session_token]), "
                                "botocore credentials, or None for botocore's chain")
        return static_credentials(*credentials)
    if hasattr(credentials, "get_frozen_credentials"):
        return credentials
    raise ProducerError(f"credentials: expected None, a (key id, secret[, token]) tuple or botocore credentials, got "
                        f"{type(credentials).__name__}")


def _region(region: str | None) -> str:
    if region:
        return region
    import botocore.session

    return botocore.session.get_session().get_config_variable("region") or StreamConfig.region


class Producer:
    """Streams H.264 to one Kinesis Video Streams stream. Thread-safe for one feeding thread.

    Args:
        stream_name: the KVS stream.
        region: the AWS region (None: botocore's configured region, else us-east-1).
        credentials: None (botocore's chain: environment, profile, instance role), a tuple
            ("AKIA...", "secret"[, "token"]), or botocore credentials (refreshable ones are refreshed).
        endpoint_url: another KVS endpoint, e.g. the local emulator (`kvs-edge emulator`).
        ca_bundle: a PEM file of CAs to trust for endpoint_url.
        fragment_seconds: target fragment length (1..20 s); fragments start at key frames.
        buffer_path: None keeps unsent video in memory; a folder holds it in the crash-safe disk log (what is not
            acknowledged is sent after a restart).
        buffer_max_bytes: the buffer's size ("512MiB", "2GiB" or an int); the oldest video goes when it is full.
        create_stream: create the stream when it does not exist.
        metadata: static tags written on every fragment ({name: value}).
        on_event: called on the Producer's event thread with each event (see `events()`).
        audio: an AudioFormat to add an AAC track fed by `put_audio` (None: video only).
    """

    def __init__(self, stream_name: str, region: str | None = None, credentials: Any = None,
                 endpoint_url: str | None = None, ca_bundle: str | None = None,
                 fragment_seconds: float = StreamConfig.fragment_seconds, buffer_path: str | None = None,
                 buffer_max_bytes: str | int = PRODUCER_BUFFER_MAX_BYTES, create_stream: bool = False, *,
                 metadata: dict[str, str] | None = None,
                 on_event: Callable[[ProducerEvent], None] | None = None,
                 audio: AudioFormat | None = None) -> None:
        from kvs_edge.log import FragmentLog
        from kvs_edge.log.memory_log import MemoryLog

        data: dict[str, Any] = {
            "stream": {"name": stream_name, "region": _region(region), "fragment_seconds": fragment_seconds,
                       "create": create_stream},
            "aws": {"endpoint_url": endpoint_url, "ca_bundle": ca_bundle},
            "buffer": {"max_bytes": buffer_max_bytes},
            "time": {"require_sync": False},  # put_frame takes wall-clock timestamps: nothing to map
            "metadata": metadata,
        }
        if buffer_path is not None:
            data["buffer"]["path"] = str(buffer_path)
        cfg = parse_config(data, "Producer")  # ConfigError: every problem, one per line
        if audio is not None and not isinstance(audio, AudioFormat):
            raise ProducerError(f"audio: expected an AudioFormat or None, got {type(audio).__name__}")
        track = audio.track() if audio is not None else None
        creds = _credentials(credentials, cfg)
        if buffer_path is None:
            frag_log = MemoryLog(cfg.buffer.max_bytes)
        else:
            frag_log = FragmentLog(cfg.buffer.path, cfg.buffer.max_bytes, sync_interval_s=cfg.buffer.sync_seconds)
        self._build(cfg, credentials=creds, timebase=FixedOffset(0), fragment_log=frag_log,
                    source=_CallerSource(track), on_event=on_event, caller_audio=track is not None)
        self.start()

    @classmethod
    def _engine(cls, cfg: Config, *, credentials, timebase, fragment_log, source,
                control: ControlPlane | None = None) -> "Producer":
        """The engine for the appliance: frames come from `source`, events are drained by its Supervisor (no event
        thread here), put_frame is not used. control: a control-plane client shared by several cameras (its owner
        closes it)."""
        self = cls.__new__(cls)
        self._build(cfg, credentials=credentials, timebase=timebase, fragment_log=fragment_log, source=source,
                    on_event=None, control=control, audio=True)
        return self

    def _build(self, cfg: Config, *, credentials, timebase, fragment_log, source, on_event,
               control: ControlPlane | None = None, audio: bool = False, caller_audio: bool = False) -> None:
        self.cfg = cfg
        self.credentials = credentials
        self.timebase = timebase
        self.fragment_log = fragment_log
        self.control = control or ControlPlane(cfg.stream.region, credentials, endpoint_url=cfg.aws.endpoint_url,
                                               ca_bundle=cfg.aws.ca_bundle)
        self.pipeline = Pipeline(source=source, frag_log=fragment_log, fragment_seconds=cfg.stream.fragment_seconds,
                                 stall_seconds=cfg.health.stall_seconds,
                                 tags=FragmentTags(dict(cfg.metadata.tags)),
                                 # source.audio (issue 14): the camera source's own sound, or a microphone beside it
                                 **({"audio": cfg.source.audio is not None, "audio_source": audio_beside(cfg.source)}
                                    if audio else {"audio": caller_audio}))
        self.link = StreamLink(self, self.pipeline.events)
        self.pipeline.uploader = self.link
        self._on_event = on_event
        self._events: queue.Queue = queue.Queue(maxsize=EVENTS_KEPT)
        self._lock = threading.Lock()  # put_frame's own state (one feeding thread, but be safe)
        self._last_ms: int | None = None
        self._frames = 0
        self._last_audio_ms: int | None = None
        self._audio_frames = 0
        self._skipped: list[int] = []
        self._answered = -1  # highest seq with a PERSISTED or skipped event
        self._dispatcher: threading.Thread | None = None
        self._dispatch_stop = threading.Event()
        self._closed = False
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the muxer, uploader and event threads (the constructor does it)."""
        if self._started:
            return
        self._started = True
        self.pipeline.start()
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="kvs-edge-events", daemon=True)
        self._dispatcher.start()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> bool:
        """End the last fragment, wait up to `timeout` s for everything to be PERSISTED, stop the threads. Returns
        what flush returned. What is not acknowledged stays in a disk buffer for the next Producer on that folder."""
        if self._closed:
            return True
        ok = self.flush(timeout) if timeout > 0 else False
        self._closed = True
        self.pipeline.stop()
        self._dispatch_stop.set()
        if self._dispatcher is not None:
            self._dispatcher.join(2.0)
        try:
            self.control.close()
        except Exception as e:  # nothing is lost: the control plane holds no data
            log.warning("closing the KVS control-plane client: %s", e)
        return ok

    # ------------------------------------------------------------------ feeding

    def put_frame(self, access_unit: bytes, timestamp_ns: int | None = None, key: bool | None = None) -> None:
        """Queue one H.264 access unit (Annex B, with start codes) for the stream. Never waits for the network.

        timestamp_ns: wall-clock (epoch) nanoseconds of the frame; None stamps it now. Must increase by >= 1 ms.
        key: True for a key frame; None detects it (an IDR picture). A fragment starts at a key frame carrying
            SPS/PPS: frames before the first one are dropped by the muxer (a warning in the log).
        Raises FrameError (a ValueError) for what KVS would reject: not H.264 Annex B, a B-frame, a timestamp that
        does not increase; the frame is then not queued at all. ProducerError after close().
        """
        if self._closed:
            raise ProducerError("put_frame after close(): create a new Producer")
        detected = check_access_unit(access_unit)
        with self._lock:
            ts = frame_timestamp_ns(timestamp_ns, self._last_ms, time.time_ns())
            self._last_ms = ts // 1_000_000
            self._frames += 1
        self.pipeline.emit(Frame(bytes(access_unit), ts, detected if key is None else bool(key)))

    def put_audio(self, aac_frame: bytes, timestamp_ns: int | None = None) -> None:
        """Queue one AAC frame (raw, or with its ADTS header) for the audio track. Never waits for the network.

        timestamp_ns: wall-clock (epoch) nanoseconds of the frame's first sample, on the same clock as put_frame's
            (None stamps it now). Must increase by >= 1 ms. Video and audio are written in timestamp order: the muxer
            holds video up to 1 s for audio to catch up, then goes on video only (audio that comes later is
            declared again at the next key frame it reaches).
        Raises ProducerError when the Producer has no audio (give `audio=AudioFormat(...)`) or is closed; FrameError
        for an empty frame, ADTS of another configuration or several frames in one call, a timestamp that does not
        increase.
        """
        if self._closed:
            raise ProducerError("put_audio after close(): create a new Producer")
        track = self.pipeline.source.audio if isinstance(self.pipeline.source, _CallerSource) else None
        if track is None:
            raise ProducerError("put_audio needs an audio track: Producer(..., audio=AudioFormat(sample_rate, "
                                "channels))")
        data = bytes(aac_frame)
        if is_adts(data):
            try:
                asc, units = split_adts(data)
                same = parse_asc(asc) == parse_asc(track.asc)
            except AacError as e:
                raise FrameError(f"put_audio: {e}") from None
            if len(units) != 1 or not same:
                raise FrameError("put_audio: give one AAC frame per call, in the AudioFormat's configuration "
                                 f"({track.sample_rate} Hz, {track.channels} channel(s))")
            data = units[0]
        if not data:
            raise FrameError("put_audio: an empty AAC frame")
        with self._lock:
            ts = frame_timestamp_ns(timestamp_ns, self._last_audio_ms, time.time_ns())
            self._last_audio_ms = ts // 1_000_000
            self._audio_frames += 1
        self.pipeline.emit_audio(AudioFrame(data, ts))

    def put_metadata(self, name: str, value: str, persistent: bool = False) -> None:
        """Tag the next fragment (the one that starts after this call) with name=value; persistent=True tags every
        fragment from then on (put it again to change the value, with "" to remove it). KVS's limits are checked
        here: at most 10 tags per fragment, name <= 128 bytes and value <= 256 bytes (UTF-8), names not starting
        with "AWS" except the service's event tags. Raises TagError (a ValueError) with the limit broken."""
        if self._closed:
            raise ProducerError("put_metadata after close(): create a new Producer")
        self._control(_PutTag(name, value, persistent))

    def flush(self, timeout: float = 30.0) -> bool:
        """End the current fragment and wait until everything put so far is PERSISTED. True when it is; False after
        `timeout` s, or when KVS skipped a fragment (see the FragmentSkipped event). After a flush the stream resumes
        at the next key frame."""
        deadline = time.monotonic() + timeout
        if self._closed:
            return False
        marker = _Flush()
        try:
            self._control(marker, timeout=max(0.0, timeout))
        except ProducerError:
            return False
        last = marker.last_seq
        if last is None:
            return True  # nothing was ever written
        while True:
            first = self.fragment_log.next_fragment(None, timeout=0)
            if (first is None or first.seq > last) and self._answered >= last:
                break
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        skipped = [s for s in self._skipped if s <= last]
        self._skipped = [s for s in self._skipped if s > last]
        return not skipped

    def _control(self, item: _Control, timeout: float = CONTROL_TIMEOUT_S) -> None:
        try:
            self.pipeline.put_control(item, timeout=timeout)
        except queue.Full:
            raise ProducerError("the muxer thread is not keeping up: try again") from None
        if not item.done.wait(timeout):
            raise ProducerError("the muxer thread did not answer in time: is the Producer closed?")
        if item.error is not None:
            raise item.error

    # ------------------------------------------------------------------ events and stats

    def events(self, timeout: float | None = None) -> Iterator[ProducerEvent]:
        """Iterate over events as they happen: Connected, Disconnected (reason, kind), FragmentPersisted (seq,
        producer_ms, latency_s), FragmentSkipped (seq, producer_ms, error_id, error_code). Ends after `timeout`
        seconds without an event (None: when the Producer is closed)."""
        while True:
            try:
                yield self._events.get(timeout=timeout if timeout is not None else 0.2)
            except queue.Empty:
                if timeout is not None or self._closed:
                    return

    @property
    def stats(self) -> ProducerStats:
        c = self.pipeline.counters
        st = self.fragment_log.stats()
        return ProducerStats(frames=self._frames, frames_dropped=c.frames_dropped, fragments=c.fragments_written,
                             fragments_persisted=c.fragments_persisted, fragments_skipped=c.fragments_skipped,
                             backlog_fragments=st.fragments, backlog_bytes=st.bytes,
                             fragments_evicted=st.evicted_fragments, connection=self.link.state,
                             last_error=self.link.last_error, audio_frames=self._audio_frames,
                             audio_frames_dropped=c.audio_frames_dropped)

    def _dispatch_loop(self) -> None:
        """The event thread: the only one that applies the muxer and uploader threads' events (as the appliance's
        supervisor does), then hands the public ones to on_event and events()."""
        while not self._dispatch_stop.wait(DISPATCH_INTERVAL_S):
            self._process_events()
        self._process_events()

    def _process_events(self) -> None:
        for at, ev in self.pipeline.events.drain_stamped():
            self.pipeline.apply_event(ev, at)
            self.link.apply_event(ev)
            if isinstance(ev, FragmentSkipped):
                self._skipped.append(ev.seq)
            if isinstance(ev, (FragmentPersisted, FragmentSkipped)):
                self._answered = max(self._answered, ev.seq)
            if not isinstance(ev, PUBLIC_EVENTS):
                continue
            if self._on_event is not None:
                try:
                    self._on_event(ev)
                except Exception:
                    log.exception("Producer on_event callback failed")
            try:
                self._events.put_nowait(ev)
            except queue.Full:  # nobody reads events(): keep the newest
                try:
                    self._events.get_nowait()
                    self._events.put_nowait(ev)
                except (queue.Empty, queue.Full):
                    pass


__all__ = ["Producer", "ProducerStats", "ProducerError", "AudioFormat", "FrameError", "TagError", "ProducerEvent"]
