"""The PutMedia ingest core of the emulator: MKV bytes in, ACKs and archive writes out. Pure: no sockets, no threads,
no clock (every call takes `now`, epoch seconds).

    core = PutMediaIngest(cursor, session_id="...", now=t0)
    out = core.feed(chunk, now)      # -> [Ack | Store]; Store = a fragment to archive (emitted before its PERSISTED)
    out = core.poll(now)             # timers: PERSISTED after the delay, IDLE, idle close, ERROR 4003 at the limit
    out = core.end(now)              # the request body ended cleanly
    out = core.abort(now)            # the connection dropped: the open fragment is lost, received ones are stored
    core.finished                    # nothing more to send: end the response and close
    core.deadline()                  # when poll() next has something to do

What KVS checks (docs/kvs-putmedia.md) and the ERROR it sends, after which the connection ends:
  4006 not valid MKV (no EBML header, a second Segment, a frame outside a cluster, AVCC NAL lengths that do not add up,
       a Block Group, a broken element), 4012 more than 3 tracks, 4010 a frame of a track not in the header,
  4004 a fragment whose first frame is not strictly later than the previous fragment's last frame of the same
       PutMedia session (a new connection may re-send what an earlier one already delivered: the SDK does so after
       every reset), 4002 a fragment longer than 20 s, 4001 larger than 50 MB,
  4007 a producer timestamp too far in the future, 4009 more than 10 metadata tags for a fragment (tags closed by an
       AWS_KINESISVIDEO_END_OF_FRAGMENT tag count for the fragment they close, not the next one), 4003 connection
       open longer than the maximum.
A fragment that does not start with a key frame is accepted and recorded with the playback defect "no-key-frame".
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Callable

from kvs_edge.media import ebml
from kvs_edge.media.ebml import EbmlError, EbmlReader, End, Leaf, LeafStart, Start
from kvs_edge.media.h264 import H264Error, iter_avcc, parse_avcc

BUFFERING, RECEIVED, PERSISTED, ERROR, IDLE = "BUFFERING", "RECEIVED", "PERSISTED", "ERROR", "IDLE"

ERROR_CODES = {
    4000: "STREAM_READ_ERROR",
    4001: "MAX_FRAGMENT_SIZE_REACHED",
    4002: "MAX_FRAGMENT_DURATION_REACHED",
    4003: "MAX_CONNECTION_DURATION_REACHED",
    4004: "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS",
    4005: "MORE_THAN_ONE_TRACK_FOUND",
    4006: "INVALID_MKV_DATA",
    4007: "INVALID_PRODUCER_TIMESTAMP",
    4008: "STREAM_NOT_ACTIVE",
    4009: "FRAGMENT_METADATA_LIMIT_REACHED",
    4010: "TRACK_NUMBER_MISMATCH",
    4011: "FRAMES_MISSING_FOR_TRACK",
    4012: "MORE_THAN_ALLOWED_TRACKS_FOUND",
    4500: "KMS_KEY_ACCESS_DENIED",
    4501: "KMS_KEY_DISABLED",
    4502: "KMS_KEY_VALIDATION_ERROR",
    4503: "KMS_KEY_UNAVAILABLE",
    4504: "KMS_KEY_INVALID_USAGE",
    4505: "KMS_KEY_INVALID_STATE",
    4506: "KMS_KEY_NOT_FOUND",
    5000: "INTERNAL_ERROR",
    5001: "ARCHIVAL_ERROR",
}

END_OF_FRAGMENT_TAG = "AWS_KINESISVIDEO_END_OF_FRAGMENT"
H264_CODEC_ID = "V_MPEG4/ISO/AVC"
DEFECT_NO_KEY_FRAME = "no-key-frame"
DEFECT_CODEC_PRIVATE = "bad-codec-private"

_CLUSTER_UNKNOWN = ebml.encode_id(ebml.CLUSTER) + ebml.encode_size(None, 8)
_TIMECODE_HEAD = ebml.encode_id(ebml.TIMECODE) + ebml.encode_size(8)
_BLOCK_ID = ebml.encode_id(ebml.SIMPLE_BLOCK)
_EBML_ID = ebml.encode_id(ebml.EBML)


@dataclass(frozen=True)
class Limits:
    max_fragment_ms: int = 20_000
    max_fragment_bytes: int = 50 * 1024 * 1024
    max_tracks: int = 3
    max_tags: int = 10
    future_tolerance_ms: int = 10_000
    max_header_bytes: int = 2 * 1024 * 1024  # EBML header + Info + Tracks (CodecPrivate is capped at 1 MiB by the SDK)


@dataclass(frozen=True)
class Ack:
    event_type: str
    timecode: int | None = None
    number: str | None = None
    error_id: int | None = None

    def to_json(self) -> bytes:
        """One ACK line exactly as KVS writes it: compact JSON, keys in the service's order, newline-terminated.

        The key order of an ERROR is the one the SDK logged from the real service (producer-sdk-cpp#226):
          {"EventType":"ERROR","FragmentTimecode":0,"FragmentNumber":"9134...",
           "ErrorCode":"FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS","ErrorId":4004}
        An error that belongs to no fragment (the MKV could not be parsed: no cluster to name) carries neither
        FragmentTimecode nor FragmentNumber, as logged from the service in producer-sdk-cpp#315:
          {"EventType":"ERROR","ErrorCode":"INVALID_MKV_DATA","ErrorId":4006}
        (The PIC's ACK parser reads FragmentTimecode with an unsigned STRTOUI64, so a `-1` there would make it drop
        the whole ACK; without the key it falls back to "the current view item", PIC StreamEvent.c
        streamFragmentAckEvent: "Fix-up the invalid timestamp".)
        """
        if self.event_type == IDLE:
            obj: dict = {"EventType": IDLE}
        else:
            obj = {"EventType": self.event_type}
            if self.timecode is not None:
                obj["FragmentTimecode"] = self.timecode
                obj["FragmentNumber"] = self.number
            if self.event_type == ERROR:
                obj["ErrorCode"] = ERROR_CODES.get(self.error_id, "UNKNOWN_ERROR")
                obj["ErrorId"] = self.error_id
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


@dataclass
class FragmentRecord:
    """A fragment received whole: what the archive stores (data = a Cluster with an absolute Timecode)."""

    number: str
    timecode: int  # the cluster Timecode as sent (echoed in ACKs)
    producer_ts_ms: int  # absolute producer timestamp of the fragment (epoch ms)
    server_ts_ms: int  # when its first byte arrived
    size: int  # bytes received for it
    frames: int
    first_frame_ms: int
    last_frame_ms: int
    defects: list[str]
    session_id: str
    session_header: bytes
    data: bytes
    tags: list[str] = field(default_factory=list)  # "NAME=VALUE" of the metadata tags sent before its cluster


@dataclass(frozen=True)
class Store:
    record: FragmentRecord


Output = Ack | Store


class StreamCursor:
    """Per-stream state that outlives a connection: the newest frame time received (kept for the record; rule 4004
    applies within one session only) and the last fragment number handed out. Thread-safe: an old session may still finish while a new one runs."""

    NUMBER_PREFIX = "91343852333"

    def __init__(self, last_frame_ms: int | None = None, last_number: int = 0):
        self.last_frame_ms = last_frame_ms
        self.last_number = last_number
        self._lock = threading.Lock()

    def next_number(self, server_ms: int) -> str:
        """Increasing 47-digit decimal strings, like the real ones (prefix, server time, counter)."""
        with self._lock:
            candidate = int(f"{self.NUMBER_PREFIX}{server_ms:013d}{0:023d}")
            self.last_number = max(self.last_number + 1, candidate)
            return str(self.last_number)

    def to_dict(self) -> dict:
        return {"last_frame_ms": self.last_frame_ms, "last_number": str(self.last_number)}

    @classmethod
    def from_dict(cls, d: dict) -> "StreamCursor":
        return cls(d.get("last_frame_ms"), int(d.get("last_number") or 0))


@dataclass
class _Track:
    number: int | None = None
    codec_id: str = ""
    codec_private: bytes | None = None
    length_size: int | None = None  # AVCC NAL length size for H.264 tracks


@dataclass
class _Fragment:
    number: str
    timecode: int
    producer_ts_ms: int
    server_ts_ms: int
    archived_timecode: int
    size: int = 0
    frames: int = 0
    first_frame_ms: int | None = None
    last_frame_ms: int | None = None
    defects: list[str] = field(default_factory=list)
    blocks: list[bytes] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


class _Reject(Exception):
    def __init__(self, error_id: int, message: str):
        super().__init__(message)
        self.error_id = error_id


class PutMediaIngest:
    """One PutMedia request body. See the module docstring."""

    def __init__(self, cursor: StreamCursor, *, session_id: str, now: float, timecode_type: str = "ABSOLUTE",
                 producer_start_ms: int | None = None, retention_hours: int = 24, persist_delay_s: float = 0.0,
                 idle_timeout_s: float = 30.0, idle_ack_s: float | None = None, max_connection_s: float = 2700.0,
                 limits: Limits = Limits(), error_hook: Callable[[], int | None] | None = None):
        if timecode_type not in ("ABSOLUTE", "RELATIVE"):
            raise ValueError("timecode_type must be ABSOLUTE or RELATIVE")
        if timecode_type == "RELATIVE" and producer_start_ms is None:
            raise ValueError("RELATIVE timecodes need producer_start_ms")
        self.cursor = cursor
        self.session_id = session_id
        self.relative_ms = producer_start_ms if timecode_type == "RELATIVE" else 0
        self.keeps_data = retention_hours > 0
        self.persist_delay_s = persist_delay_s
        self.idle_timeout_s = idle_timeout_s
        self.idle_ack_s = idle_ack_s if idle_ack_s is not None else min(3.0, idle_timeout_s / 3)
        self.limits = limits
        self.error_hook = error_hook
        self.started = now
        self.max_connection_at = now + max_connection_s
        self.last_data = now
        self.last_idle = now
        self.reader = EbmlReader(max_leaf=limits.max_fragment_bytes)
        self.finished = False
        self.body_ended = False
        self.error: tuple[int, str] | None = None  # (error id, message) of the ERROR sent
        self.bytes_in = 0
        # MKV state
        self._header = bytearray()
        self._header_done = False
        self._segment_seen = False
        self._ebml_done = False
        self._segment_size_field: tuple[int, int] | None = None  # (offset, width) of the Segment's size vint
        self._session_header = b""
        self._scale = 1_000_000
        self._tracks: dict[int, _Track] = {}
        self._track: _Track | None = None
        self._track_count = 0
        self._in_cluster = False
        self._cluster_offset = 0
        self._cluster_hdr = 0
        self._tag_name: str | None = None
        self._pending_tags = 0
        self._tag_list: list[str] = []  # the user/event tags waiting for the next cluster, "NAME=VALUE"
        self._fragment: _Fragment | None = None
        self._last: _Fragment | None = None  # last fragment started (for 4003's timecode)
        self._last_frame_ms: int | None = None  # last frame of the previous fragment of this session (rule 4004)
        self._to_persist: list[tuple[float, FragmentRecord]] = []

    # ---------------------------------------------------------------- public API
    def feed(self, data: bytes, now: float) -> list[Output]:
        out: list[Output] = []
        if self.finished or self.body_ended or not data:
            return out
        self.bytes_in += len(data)
        self.last_data = self.last_idle = now
        if not self._header_done:
            self._header += data
            if not self._header.startswith(_EBML_ID[:len(self._header)]):
                self._fail(4006, "the body does not start with an EBML header", out)
                return out
        try:
            for ev in self.reader.feed(data):
                self._event(ev, now, out)
        except EbmlError as e:
            self._fail(4006, f"not valid MKV: {e}", out)
        except _Reject as e:
            self._fail(e.error_id, str(e), out)
        if not self.finished and not self._header_done and len(self._header) > self.limits.max_header_bytes:
            self._fail(4006, "no cluster within the first %d bytes" % self.limits.max_header_bytes, out)
        self._due(now, out)
        return out

    def end(self, now: float) -> list[Output]:
        """The client finished the body (chunked terminator): the open fragment is complete."""
        out: list[Output] = []
        if self.finished or self.body_ended:
            return out
        self.body_ended = True
        try:
            for ev in self.reader.close():
                self._event(ev, now, out)
            self._complete(now, out)
        except EbmlError as e:
            self._fail(4006, f"not valid MKV: {e}", out)
        except _Reject as e:
            self._fail(e.error_id, str(e), out)
        self._due(now, out)
        return out

    def abort(self, now: float) -> list[Output]:
        """The connection is gone: the open fragment is lost; fragments already received are stored (no ACKs)."""
        out: list[Output] = []
        self._fragment = None
        out += [Store(r) for _, r in self._to_persist]
        self._to_persist.clear()
        self.finished = True
        return out

    def poll(self, now: float) -> list[Output]:
        out: list[Output] = []
        if self.finished:
            return out
        self._due(now, out)
        if self.finished:
            return out
        if now >= self.max_connection_at:
            self._fail(4003, "connection open longer than the maximum", out)
            return out
        if not self.body_ended:
            if now - self.last_data >= self.idle_timeout_s:
                out += [Store(r) for _, r in self._to_persist]  # received data is kept; its ACKs are lost
                self._to_persist.clear()
                self.finished = True
            elif now - self.last_idle >= self.idle_ack_s:
                self.last_idle = now
                out.append(Ack(IDLE))
        return out

    def deadline(self) -> float | None:
        if self.finished:
            return None
        times = [self.max_connection_at]
        if self._to_persist:
            times.append(self._to_persist[0][0])
        if not self.body_ended:
            times.append(min(self.last_idle + self.idle_ack_s, self.last_data + self.idle_timeout_s))
        return min(times)

    @property
    def holds_slot(self) -> bool:
        """True while the body is still open: the stream's single PutMedia connection slot."""
        return not (self.finished or self.body_ended)

    # ---------------------------------------------------------------- internals
    def _due(self, now: float, out: list[Output]) -> None:
        while self._to_persist and self._to_persist[0][0] <= now:
            _, rec = self._to_persist.pop(0)
            out.append(Store(rec))
            out.append(Ack(PERSISTED, rec.timecode, rec.number))
        if self.body_ended and not self._to_persist and not self.finished:
            self.finished = True

    def archive_failed(self, record: FragmentRecord, message: str) -> list[Output]:
        """The shell could not archive `record` (its Store output failed): instead of its PERSISTED, an ERROR 5001
        (ARCHIVAL_ERROR, "failed to persist": the SDK resends, docs/kvs-putmedia.md section 2), and, as after every
        ERROR, the connection ends."""
        out: list[Output] = []
        if not self.finished:
            self._fail(5001, f"fragment {record.number} could not be archived: {message}", out, record)
        return out

    def _fail(self, error_id: int, message: str, out: list[Output], frag=None) -> None:
        frag = frag or self._fragment or (self._last if error_id == 4003 else None)
        if frag is not None:
            out.append(Ack(ERROR, frag.timecode, frag.number, error_id))
        else:
            out.append(Ack(ERROR, None, None, error_id))  # no fragment to name: see Ack.to_json
        self.error = (error_id, message)
        self._fragment = None
        out += [Store(r) for _, r in self._to_persist]
        self._to_persist.clear()
        self.finished = True

    def _complete(self, now: float, out: list[Output]) -> None:
        frag = self._fragment
        if frag is None:
            return
        self._fragment = None
        if frag.frames == 0:
            raise _Reject(4006, "a fragment without frames")
        injected = self.error_hook() if self.error_hook else None
        if injected:
            self._fragment = frag
            raise _Reject(injected, "injected fault")
        self._last_frame_ms = frag.last_frame_ms
        if self.cursor.last_frame_ms is None or frag.last_frame_ms > self.cursor.last_frame_ms:
            self.cursor.last_frame_ms = frag.last_frame_ms
        out.append(Ack(RECEIVED, frag.timecode, frag.number))
        if self.keeps_data:
            data = b"".join([_CLUSTER_UNKNOWN, _TIMECODE_HEAD, frag.archived_timecode.to_bytes(8, "big", signed=True),
                             *frag.blocks])
            rec = FragmentRecord(frag.number, frag.timecode, frag.producer_ts_ms, frag.server_ts_ms, frag.size,
                                 frag.frames, frag.first_frame_ms, frag.last_frame_ms, frag.defects, self.session_id,
                                 self._session_header, data, list(frag.tags))
            if self.persist_delay_s <= 0 and not self._to_persist:
                out.append(Store(rec))
                out.append(Ack(PERSISTED, rec.timecode, rec.number))
            else:
                self._to_persist.append((now + self.persist_delay_s, rec))
        frag.blocks = []

    def _ms(self, units: int) -> int:
        return units * self._scale // 1_000_000

    def _event(self, ev, now: float, out: list[Output]) -> None:
        eid = ev.id
        if self._fragment is not None and type(ev) is Leaf and self._in_cluster:
            self._fragment.size += ev.header_size + len(ev.data)
        if type(ev) is Start:
            if eid == ebml.EBML:
                if self._segment_seen or ev.offset != 0:
                    raise _Reject(4006, "more than one EBML header / Segment in one PutMedia body")
            elif eid == ebml.SEGMENT:
                if self._segment_seen:
                    raise _Reject(4006, "more than one Segment in one PutMedia body")
                if not self._ebml_done:
                    raise _Reject(4006, "the body does not start with an EBML header")
                self._segment_seen = True
                idlen = len(ebml.encode_id(eid))
                self._segment_size_field = (ev.offset + idlen, ev.header_size - idlen)
            elif eid == ebml.TRACK_ENTRY:
                self._track = _Track()
            elif eid == ebml.CLUSTER:
                self._start_cluster(ev, now, out)
            elif eid == ebml.BLOCK_GROUP:
                raise _Reject(4006, "Block Groups are not supported; send SimpleBlocks")
            elif eid == ebml.TAGS and self._in_cluster:
                pass
            elif not self._segment_seen and eid != ebml.EBML:
                raise _Reject(4006, "the body does not start with an EBML header")
            return
        if type(ev) is End:
            if eid == ebml.TRACK_ENTRY:
                self._end_track_entry()
            elif eid == ebml.TRACKS:
                if not self._tracks:
                    raise _Reject(4006, "no track in the header")
            elif eid == ebml.CLUSTER:
                self._in_cluster = False
            elif eid == ebml.EBML:
                self._ebml_done = True
            return
        if type(ev) is LeafStart:
            if eid == ebml.SIMPLE_BLOCK:
                raise _Reject(4001, "a frame larger than the maximum fragment size")
            raise _Reject(4006, f"element 0x{eid:X} of {ev.size} bytes is too large")
        # Leaf
        if not self._segment_seen and self.reader.depth == 0:
            raise _Reject(4006, "the body does not start with an EBML header")
        data = ev.data
        if eid == ebml.SIMPLE_BLOCK:
            self._block(ev, now, out)
        elif eid == ebml.TIMECODE:
            self._cluster_timecode(ebml.read_uint(data), now, out)
        elif eid == ebml.DOC_TYPE:
            if ebml.read_string(data) not in ("matroska", "webm"):
                raise _Reject(4006, f"DocType {ebml.read_string(data)!r} is not matroska")
        elif eid == ebml.TIMECODE_SCALE:
            self._scale = ebml.read_uint(data) or 1_000_000
        elif self._track is not None and eid == ebml.TRACK_NUMBER:
            self._track.number = ebml.read_uint(data)
        elif self._track is not None and eid == ebml.CODEC_ID:
            self._track.codec_id = ebml.read_string(data)
        elif self._track is not None and eid == ebml.CODEC_PRIVATE:
            self._track.codec_private = data
        elif eid == ebml.TAG_NAME:
            name = ebml.read_string(data)
            if name == END_OF_FRAGMENT_TAG:
                # An end-of-fragment tag closes the fragment before it together with the metadata tags sent since
                # its frames: the SDK writes "Cluster, frames, its tags, END_OF_FRAGMENT", and after skipping
                # fragments (4004, 4009, ...) it re-sends their tags, each group closed by this tag, before the
                # next cluster. 4009 is "fragment metadata limit" and the limit is per fragment
                # (docs/kvs-putmedia.md section 3, "at most 10 metadata tags"), so the groups do not add up.
                tags, self._pending_tags = self._pending_tags, 0
                if tags > self.limits.max_tags and self._fragment is not None:
                    raise _Reject(4009, f"{tags} metadata tags for one fragment (at most {self.limits.max_tags})")
                self._complete(now, out)
            else:
                self._pending_tags += 1
                self._tag_name = name
        elif eid == ebml.TAG_STRING and self._tag_name is not None:
            self._tag_list.append(f"{self._tag_name}={ebml.read_string(data)}")
            self._tag_name = None

    def _end_track_entry(self) -> None:
        t, self._track = self._track, None
        if t is None or not t.number:
            raise _Reject(4006, "a TrackEntry without a TrackNumber")
        if t.number in self._tracks:
            raise _Reject(4006, f"track number {t.number} declared twice")
        self._track_count += 1
        if self._track_count > self.limits.max_tracks:
            raise _Reject(4012, f"more than {self.limits.max_tracks} tracks")
        if t.codec_id == H264_CODEC_ID:
            try:
                t.length_size = parse_avcc(t.codec_private or b"").length_size
            except H264Error:
                t.length_size = None  # KVS validates CodecPrivate on playback, not on ingest: a defect
        self._tracks[t.number] = t

    def _start_cluster(self, ev: Start, now: float, out: list[Output]) -> None:
        if not self._tracks:
            raise _Reject(4006, "a Cluster before the Tracks header")
        if not self._header_done:
            self._header_done = True
            header = bytearray(self._header[:ev.offset])
            off, width = self._segment_size_field
            header[off:off + width] = ebml.encode_size(None, width)  # the archive appends clusters to this segment
            self._session_header = bytes(header)
            self._header = bytearray()
        self._complete(now, out)
        self._in_cluster = True
        self._cluster_offset = ev.offset
        self._cluster_hdr = ev.header_size

    def _cluster_timecode(self, tc: int, now: float, out: list[Output]) -> None:
        if not self._in_cluster or self._fragment is not None:
            raise _Reject(4006, "a Timecode outside a cluster's start")
        server_ms = int(now * 1000)
        producer_ms = self._ms(tc) + self.relative_ms
        archived = tc + (self.relative_ms * 1_000_000 // self._scale)
        frag = _Fragment(self.cursor.next_number(server_ms), tc, producer_ms, server_ms, archived,
                         size=self._cluster_hdr + len(_TIMECODE_HEAD) + 8)
        self._fragment = self._last = frag
        out.append(Ack(BUFFERING, tc, frag.number))
        tags, self._pending_tags = self._pending_tags, 0
        frag.tags, self._tag_list = self._tag_list, []
        if tags > self.limits.max_tags:
            raise _Reject(4009, f"{tags} metadata tags for one fragment (at most {self.limits.max_tags})")

    def _block(self, ev: Leaf, now: float, out: list[Output]) -> None:
        frag = self._fragment
        if frag is None:
            raise _Reject(4006, "a SimpleBlock outside a cluster (or before its Timecode)")
        data = ev.data
        n = ebml._vint_len(data[0]) if data else 0
        if n == 0 or len(data) < n + 3:
            raise _Reject(4006, "a SimpleBlock too short for its header")
        track_no = int.from_bytes(data[:n], "big") & ((1 << (7 * n)) - 1)
        track = self._tracks.get(track_no)
        if track is None:
            raise _Reject(4010, f"a frame of track {track_no}, which is not in the header")
        rel = int.from_bytes(data[n:n + 2], "big", signed=True)
        flags = data[n + 2]
        key = bool(flags & 0x80)
        ts = self._ms(frag.timecode + rel) + self.relative_ms
        if frag.frames == 0:
            # AWS: "4004 - FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS - Fragment timecode is less than the timecode
            # previous time code (within a PutMedia call, you cannot send fragments out of order)." Within one
            # call only: a new connection re-sends from the last fragment it has no ACK for (the SDK's rollback,
            # docs/kvs-putmedia.md section 5), and that is accepted (kept twice if it was stored before).
            if self._last_frame_ms is not None and ts <= self._last_frame_ms:
                raise _Reject(4004, f"fragment starts at {ts} ms, not after the previous one's last frame "
                                    f"{self._last_frame_ms} ms")
            frag.first_frame_ms = frag.last_frame_ms = ts
            if not key and DEFECT_NO_KEY_FRAME not in frag.defects:
                frag.defects.append(DEFECT_NO_KEY_FRAME)
        if ts > now * 1000 + self.limits.future_tolerance_ms:
            raise _Reject(4007, f"producer timestamp {ts} ms is in the future")
        frag.first_frame_ms = min(frag.first_frame_ms, ts)
        frag.last_frame_ms = max(frag.last_frame_ms, ts)
        if frag.last_frame_ms - frag.first_frame_ms > self.limits.max_fragment_ms:
            raise _Reject(4002, f"fragment longer than {self.limits.max_fragment_ms} ms")
        if frag.size > self.limits.max_fragment_bytes:
            raise _Reject(4001, f"fragment larger than {self.limits.max_fragment_bytes} bytes")
        if track.codec_id == H264_CODEC_ID:
            if track.length_size is None:
                if DEFECT_CODEC_PRIVATE not in frag.defects:
                    frag.defects.append(DEFECT_CODEC_PRIVATE)
            elif not flags & 0x06:  # no lacing: the payload is one AVCC access unit
                try:
                    for _ in iter_avcc(data[n + 3:], track.length_size):
                        pass
                except H264Error as e:
                    raise _Reject(4006, f"frame at {ts} ms: {e}") from None
        frag.frames += 1
        if self.keeps_data:
            frag.blocks.append(_BLOCK_ID + ebml.encode_size(len(data), 8) + data)
