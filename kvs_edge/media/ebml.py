"""Incremental (push) EBML reader: bytes in, element events out. Pure: no I/O, no threads.

    reader = EbmlReader()                 # Matroska schema by default
    for chunk in chunks:
        for ev in reader.feed(chunk): ...
    tail = reader.close()                 # ends open unknown-size masters; EbmlError if cut mid-element

Events (offsets are absolute positions in the fed stream):
  Start(id, offset, header_size, size)    a master element opened; size None = unknown size
  End(id, offset)                          a master element closed; offset = first byte after it
  Leaf(id, offset, header_size, data)      a whole non-master element (data = its content)
  LeafStart(id, offset, header_size, size) / LeafChunk(id, data) / LeafEnd(id, offset)
                                           a non-master element larger than `max_leaf`, streamed as it arrives
                                           (never buffered: the reader's memory stays bounded by max_leaf)

An unknown-size master (Matroska: Segment, Cluster) ends where an element that cannot be its child begins: one whose
known parent is an ancestor (e.g. the next Cluster or Tags ends a Cluster; a new EBML header ends a Segment). Unknown
IDs and the global elements Void/CRC-32 are taken as children of the innermost open master.

The reader never loops over bytes in Python: element payloads are sliced out of the buffer whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple

UNKNOWN_SIZE = None


class EbmlError(ValueError):
    """The byte stream is not valid EBML (or breaks the schema's nesting). `offset` is where it went wrong."""

    def __init__(self, message: str, offset: int):
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset


class Start(NamedTuple):
    id: int
    offset: int
    header_size: int
    size: int | None


class End(NamedTuple):
    id: int
    offset: int


class Leaf(NamedTuple):
    id: int
    offset: int
    header_size: int
    data: bytes


class LeafStart(NamedTuple):
    id: int
    offset: int
    header_size: int
    size: int


class LeafChunk(NamedTuple):
    id: int
    data: bytes


class LeafEnd(NamedTuple):
    id: int
    offset: int


Event = Start | End | Leaf | LeafStart | LeafChunk | LeafEnd

# Matroska IDs: one table (matroska_ids) for the writer and this reader
from kvs_edge.media.matroska_ids import (  # noqa: F401  (re-exported: ebml.CLUSTER etc. are public)
    ATTACHMENTS, AUDIO, BLOCK, BLOCK_GROUP, CHAPTERS, CLUSTER, CODEC_ID, CODEC_PRIVATE, CRC32, CUES, DATE_UTC,
    DEFAULT_DURATION, DOC_TYPE, DOC_TYPE_READ_VERSION, DOC_TYPE_VERSION, DURATION, EBML, EBML_MAX_ID_LENGTH,
    EBML_MAX_SIZE_LENGTH, EBML_READ_VERSION, EBML_VERSION, ENCRYPTED_BLOCK, INFO, MUXING_APP, NAME, PIXEL_HEIGHT,
    PIXEL_WIDTH, POSITION, PREV_SIZE, SEEK_HEAD, SEGMENT, SEGMENT_UID, SILENT_TRACKS, SIMPLE_BLOCK, SIMPLE_TAG, TAG,
    TAGS, TAG_BINARY, TAG_DEFAULT, TAG_LANGUAGE, TAG_NAME, TAG_STRING, TARGETS, TIMECODE, TIMECODE_SCALE, TITLE,
    TRACKS, TRACK_ENTRY, TRACK_NUMBER, TRACK_TYPE, TRACK_UID, VIDEO, VOID, WRITING_APP,
)


@dataclass(frozen=True)
class Schema:
    """What the reader needs to know about a document type.

    masters: IDs whose content is a list of child elements.
    parents: ID -> the set of IDs it may appear in (None in the set = top level). Used only to close unknown-size
             masters; IDs not listed are children of whatever master is open.
    unknown_size_ok: masters that may have unknown size.
    closed: masters whose children are all listed in `parents`: any other ID inside them (except Void/CRC-32) is an
            error, so garbage is caught at its first bytes instead of being read as an element of random size.
    """

    masters: frozenset[int]
    parents: dict[int, frozenset[int | None]]
    unknown_size_ok: frozenset[int]
    closed: frozenset[int] = frozenset()


def _parents(pairs: Iterable[tuple[int | None, Iterable[int]]]) -> dict[int, frozenset[int | None]]:
    out: dict[int, set[int | None]] = {}
    for parent, children in pairs:
        for c in children:
            out.setdefault(c, set()).add(parent)
    return {k: frozenset(v) for k, v in out.items()}


MATROSKA = Schema(
    masters=frozenset({EBML, SEGMENT, SEEK_HEAD, INFO, TRACKS, TRACK_ENTRY, VIDEO, AUDIO, CLUSTER, BLOCK_GROUP, CUES,
                       CHAPTERS, TAGS, TAG, TARGETS, SIMPLE_TAG, ATTACHMENTS, SILENT_TRACKS}),
    parents=_parents([
        (None, [EBML, SEGMENT]),
        (EBML, [EBML_VERSION, EBML_READ_VERSION, EBML_MAX_ID_LENGTH, EBML_MAX_SIZE_LENGTH, DOC_TYPE, DOC_TYPE_VERSION,
                DOC_TYPE_READ_VERSION]),
        (SEGMENT, [SEEK_HEAD, INFO, TRACKS, CLUSTER, CUES, CHAPTERS, TAGS, ATTACHMENTS]),
        (INFO, [SEGMENT_UID, TIMECODE_SCALE, DURATION, TITLE, MUXING_APP, WRITING_APP, DATE_UTC]),
        (TRACKS, [TRACK_ENTRY]),
        (TRACK_ENTRY, [TRACK_NUMBER, TRACK_UID, TRACK_TYPE, NAME, CODEC_ID, CODEC_PRIVATE, DEFAULT_DURATION, VIDEO,
                       AUDIO]),
        (VIDEO, [PIXEL_WIDTH, PIXEL_HEIGHT]),
        (CLUSTER, [TIMECODE, POSITION, PREV_SIZE, SIMPLE_BLOCK, BLOCK_GROUP, SILENT_TRACKS, ENCRYPTED_BLOCK]),
        (BLOCK_GROUP, [BLOCK]),
        (TAGS, [TAG]),
        (TAG, [TARGETS, SIMPLE_TAG]),
        (SIMPLE_TAG, [SIMPLE_TAG, TAG_NAME, TAG_STRING, TAG_LANGUAGE, TAG_DEFAULT, TAG_BINARY]),
    ]),
    unknown_size_ok=frozenset({SEGMENT, CLUSTER}),
    closed=frozenset({SEGMENT, CLUSTER}),
)

_GLOBAL = frozenset({VOID, CRC32})
_UNKNOWN_BY_LEN = {n: (1 << (7 * n)) - 1 for n in range(1, 9)}


def _vint_len(first: int) -> int:
    """Length in bytes of a vint from its first byte (0 = invalid: more than 8 bytes)."""
    return 8 - first.bit_length() + 1 if first else 0


def decode_id(buf, pos: int) -> tuple[int, int] | None:
    """(element id with its marker bits, length) at buf[pos:], or None when more bytes are needed."""
    if pos >= len(buf):
        return None
    n = _vint_len(buf[pos])
    if n == 0 or n > 4:
        raise EbmlError(f"invalid element ID byte 0x{buf[pos]:02X}", pos)
    if pos + n > len(buf):
        return None
    return int.from_bytes(buf[pos:pos + n], "big"), n


def decode_size(buf, pos: int) -> tuple[int | None, int] | None:
    """(data size or None for unknown, length) at buf[pos:], or None when more bytes are needed."""
    if pos >= len(buf):
        return None
    n = _vint_len(buf[pos])
    if n == 0:
        raise EbmlError("invalid element size (first byte 0x00)", pos)
    if pos + n > len(buf):
        return None
    value = int.from_bytes(buf[pos:pos + n], "big") & ((1 << (7 * n)) - 1)
    return (None if value == _UNKNOWN_BY_LEN[n] else value), n


def encode_id(element_id: int) -> bytes:
    """An element ID as its bytes (IDs keep their marker bits, so this is the big-endian minimal form)."""
    if element_id <= 0:
        raise ValueError(f"invalid EBML ID {element_id:#x}")
    n = (element_id.bit_length() + 7) // 8
    if n > 4:
        raise ValueError(f"EBML ID {element_id:#x} longer than 4 bytes")
    b = element_id.to_bytes(n, "big")
    # the first byte's leading 1 bit must mark the length: 1xxxxxxx for 1 byte, 01xxxxxx for 2, ...
    if b[0] >> (8 - n) != 1:
        raise ValueError(f"EBML ID {element_id:#x} has an inconsistent length marker")
    return b


def encode_size(size: int | None, width: int | None = None) -> bytes:
    """An element data size as an EBML variable-length integer (shortest form unless `width` is given).

    None = unknown size (all value bits set; 1 byte 0xFF unless `width` is given). All-ones values are reserved for
    "unknown size", so e.g. 127 takes two bytes.
    """
    if size is None:
        w = width or 1
        if not 1 <= w <= 8:
            raise ValueError(f"EBML size width {w} is not 1..8")
        return (_UNKNOWN_BY_LEN[w] | (1 << (7 * w))).to_bytes(w, "big")
    if size < 0:
        raise ValueError("negative EBML size")
    if width is None:
        width = 1
        while size >= _UNKNOWN_BY_LEN[width]:
            if width == 8:
                raise ValueError(f"EBML size {size} too large")
            width += 1
    elif not 1 <= width <= 8 or size >= _UNKNOWN_BY_LEN[width]:
        raise ValueError(f"EBML size {size} does not fit {width} bytes")
    return ((1 << (7 * width)) | size).to_bytes(width, "big")


def encode_element(element_id: int, data: bytes) -> bytes:
    return encode_id(element_id) + encode_size(len(data)) + data


class _Open:
    __slots__ = ("id", "end")

    def __init__(self, element_id: int, end: int | None):
        self.id = element_id
        self.end = end  # absolute end offset, None = unknown size


class EbmlReader:
    """Push parser. feed() bytes as they arrive; each call returns the events completed by them.

    max_leaf: non-master elements up to this size arrive whole as Leaf; larger ones are streamed as
    LeafStart/LeafChunk.../LeafEnd. After an EbmlError the reader is unusable (every later call raises it again).
    """

    def __init__(self, schema: Schema = MATROSKA, *, max_leaf: int = 16 << 20):
        self.schema = schema
        self.max_leaf = max_leaf
        self._buf = bytearray()
        self._base = 0  # absolute offset of _buf[0]
        self._stack: list[_Open] = []
        self._streaming: tuple[int, int] | None = None  # (id, end offset) of a LeafStart being streamed
        self._error: EbmlError | None = None
        self._closed = False

    @property
    def offset(self) -> int:
        """Absolute offset of the first byte not yet consumed."""
        return self._base

    @property
    def depth(self) -> int:
        return len(self._stack)

    def open_ids(self) -> list[int]:
        return [o.id for o in self._stack]

    def feed(self, data: bytes) -> list[Event]:
        if self._error:
            raise self._error
        if self._closed:
            raise EbmlError("feed() after close()", self._base)
        events: list[Event] = []
        try:
            self._buf += data
            self._parse(events)
        except EbmlError as e:
            self._error = e
            raise
        return events

    def close(self) -> list[Event]:
        """End of stream: close open unknown-size masters. Raises EbmlError if the stream stops inside an element."""
        if self._error:
            raise self._error
        events: list[Event] = []
        self._closed = True
        if self._streaming or self._buf:
            self._error = EbmlError("stream ends inside an element", self._base)
            raise self._error
        while self._stack:
            o = self._stack[-1]
            if o.end is not None and o.end != self._base:
                self._error = EbmlError(f"stream ends inside element 0x{o.id:X}", self._base)
                raise self._error
            self._stack.pop()
            events.append(End(o.id, self._base))
        return events

    # -- internals ------------------------------------------------------------------------------------------------
    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self._base += n

    def _close_finished(self, events: list[Event]) -> None:
        stack = self._stack
        while stack and stack[-1].end is not None and stack[-1].end == self._base:
            o = stack.pop()
            events.append(End(o.id, self._base))

    def _parse(self, events: list[Event]) -> None:
        buf = self._buf
        schema = self.schema
        while True:
            if self._streaming is not None:
                sid, send = self._streaming
                take = min(len(buf), send - self._base)
                if take:
                    events.append(LeafChunk(sid, bytes(buf[:take])))
                    self._consume(take)
                if self._base < send:
                    return
                self._streaming = None
                events.append(LeafEnd(sid, self._base))
                self._close_finished(events)
                continue
            self._close_finished(events)
            got = decode_id(buf, 0)
            if got is None:
                return
            eid, idlen = got
            got = decode_size(buf, idlen)
            if got is None:
                return
            size, szlen = got
            hdr = idlen + szlen
            start = self._base
            # an element that cannot live in the open unknown-size master(s) closes them
            parents = schema.parents.get(eid)
            if parents is None and eid not in _GLOBAL and self._stack and self._stack[-1].id in schema.closed:
                raise EbmlError(f"unexpected element 0x{eid:X} in 0x{self._stack[-1].id:X}", start)
            if parents is not None and eid not in _GLOBAL:
                stack = self._stack
                while stack and stack[-1].end is None and stack[-1].id not in parents:
                    o = stack.pop()
                    events.append(End(o.id, start))
                if not stack and None not in parents:
                    raise EbmlError(f"element 0x{eid:X} outside of its parent", start)
            parent_end = self._stack[-1].end if self._stack else None
            if eid in schema.masters:
                if size is None and eid not in schema.unknown_size_ok:
                    raise EbmlError(f"unknown size not allowed for element 0x{eid:X}", start)
                end = None if size is None else start + hdr + size
                if end is not None and parent_end is not None and end > parent_end:
                    raise EbmlError(f"element 0x{eid:X} overruns its parent", start)
                if size is None and parent_end is not None:
                    raise EbmlError(f"unknown-size element 0x{eid:X} inside a known-size parent", start)
                self._consume(hdr)
                self._stack.append(_Open(eid, end))
                events.append(Start(eid, start, hdr, size))
                continue
            if size is None:
                raise EbmlError(f"unknown size not allowed for element 0x{eid:X}", start)
            end = start + hdr + size
            if parent_end is not None and end > parent_end:
                raise EbmlError(f"element 0x{eid:X} overruns its parent", start)
            if size > self.max_leaf:
                self._consume(hdr)
                events.append(LeafStart(eid, start, hdr, size))
                self._streaming = (eid, end)
                continue
            if len(buf) < hdr + size:
                return
            events.append(Leaf(eid, start, hdr, bytes(buf[hdr:hdr + size])))
            self._consume(hdr + size)


def read_uint(data: bytes) -> int:
    if len(data) > 8:
        raise ValueError("unsigned integer longer than 8 bytes")
    return int.from_bytes(data, "big")


def read_string(data: bytes) -> str:
    return data.rstrip(b"\x00").decode("utf-8", "replace")


def iter_events(data: bytes, schema: Schema = MATROSKA, **kw) -> list[Event]:
    """Every event of a complete byte string (feed + close)."""
    r = EbmlReader(schema, **kw)
    return r.feed(data) + r.close()
