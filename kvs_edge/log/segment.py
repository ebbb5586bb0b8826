"""The on-disk record format of the fragment log (pure: bytes in, records out).

A segment file is MAGIC followed by records. Every record is

    type: u8 | length: u32 big-endian | payload (length bytes) | crc32(type + length + payload): u32

so a torn or corrupted tail is detected at the first bad record. The records:

    HEADER   header_id u32 | session header bytes          (written into a segment before the first START using it)
    START    seq u64 | header_id u32 | timecode_ms i64 | boot_id len u16 + utf-8 | first bytes of the fragment
    DATA     seq u64 | timecode_ms i64 | bytes appended to the fragment (one frame)
    END      seq u64 | size u64 | frames u32 | first_ms i64 | last_ms i64 | crc32 of all the fragment's bytes
    RELEASE  seq u64                                        (the uploader got this fragment acknowledged)

A fragment's bytes are the START data followed by every DATA record's data, in order. A fragment whose END record is
present and matches (size, frame count, timecodes and checksum of the bytes) is complete. A fragment cut short by a
crash or a power cut (no END record: the tail of the file is torn, or simply ends) is *salvaged*: its START and its
whole DATA records are each checked by their own CRC, and the Cluster has an unknown size, so its first frames are a
valid, shorter fragment. Without this the fragment being written at a power cut was lost whole, even the part of it
already flushed, and a power cut could lose up to fragment_seconds + sync_seconds instead of sync_seconds.
`scan_segment` returns the complete fragments and the salvaged one (`salvaged` True), and `clean_length` says where
the torn tail begins.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field

MAGIC = b"KVSLOG\x01\n"

REC_HEADER = 1
REC_START = 2
REC_DATA = 3
REC_END = 4
REC_RELEASE = 5
_TYPES = frozenset((REC_HEADER, REC_START, REC_DATA, REC_END, REC_RELEASE))

_FRAME = struct.Struct(">BI")  # record type, payload length
_CRC = struct.Struct(">I")
_HEADER = struct.Struct(">I")
_START = struct.Struct(">QIqH")
_DATA = struct.Struct(">Qq")
_END = struct.Struct(">QQIqqI")
_RELEASE = struct.Struct(">Q")

RECORD_OVERHEAD = _FRAME.size + _CRC.size
MAX_PAYLOAD = 1 << 30  # anything bigger is garbage, not a record


def _record(rtype: int, prefix: bytes, data: bytes = b"") -> bytes:
    head = _FRAME.pack(rtype, len(prefix) + len(data))
    crc = zlib.crc32(data, zlib.crc32(prefix, zlib.crc32(head)))
    return b"".join((head, prefix, data, _CRC.pack(crc)))


def header_record(header_id: int, header: bytes) -> bytes:
    return _record(REC_HEADER, _HEADER.pack(header_id), header)


def start_record(seq: int, header_id: int, timecode_ms: int, boot_id: str, data: bytes) -> tuple[bytes, int]:
    """The START record and the offset of `data` inside it."""
    boot = boot_id.encode()
    prefix = _START.pack(seq, header_id, timecode_ms, len(boot)) + boot
    return _record(REC_START, prefix, data), _FRAME.size + len(prefix)


def data_record(seq: int, timecode_ms: int, data: bytes) -> tuple[bytes, int]:
    """The DATA record and the offset of `data` inside it."""
    return _record(REC_DATA, _DATA.pack(seq, timecode_ms), data), _FRAME.size + _DATA.size


def end_record(seq: int, size: int, frames: int, first_ms: int, last_ms: int, crc: int) -> bytes:
    return _record(REC_END, _END.pack(seq, size, frames, first_ms, last_ms, crc))


def release_record(seq: int) -> bytes:
    return _record(REC_RELEASE, _RELEASE.pack(seq))


@dataclass
class ScannedFragment:
    """A complete fragment found in a segment. Its bytes are chunks of the file: chunk i starts at file offset
    offsets[i] and holds the fragment's bytes [ends[i-1], ends[i])."""

    seq: int
    header_id: int
    boot_id: str
    first_ms: int
    last_ms: int
    frames: int
    size: int
    crc: int
    offsets: array = field(default_factory=lambda: array("Q"))
    ends: array = field(default_factory=lambda: array("Q"))
    salvaged: bool = False  # no END record: the first `frames` frames of a fragment cut short


@dataclass
class SegmentScan:
    headers: dict[int, bytes]
    fragments: list[ScannedFragment]  # complete ones (and a salvaged one), in file order
    releases: list[int]
    clean_length: int  # keep the file up to here; what follows is torn or corrupt (or an unfinished fragment's START
    #                    with no frame yet)
    error: str | None  # why the scan stopped before the end of the data (None: every record was good)
    max_seq: int  # highest seq named by any good record (also of an unfinished fragment), -1 if none


def scan_segment(data: bytes | bytearray | memoryview) -> SegmentScan:
    """Parse a whole segment file. Never raises on bad input: it stops at the first bad record."""
    mv = memoryview(data)
    n = len(mv)
    headers: dict[int, bytes] = {}
    fragments: list[ScannedFragment] = []
    releases: list[int] = []
    max_seq = -1
    if n < len(MAGIC) or mv[: len(MAGIC)] != MAGIC:
        return SegmentScan(headers, fragments, releases, 0, "not a segment (bad magic)" if n else None, max_seq)
    pos = clean = len(MAGIC)
    cur: ScannedFragment | None = None
    crc = last_ms = frames = 0
    error: str | None = None
    while pos < n:
        if n - pos < _FRAME.size:
            error = "torn record header"
            break
        rtype, plen = _FRAME.unpack_from(mv, pos)
        if rtype not in _TYPES or plen > MAX_PAYLOAD:
            error = "corrupt record header"
            break
        end = pos + _FRAME.size + plen + _CRC.size
        if end > n:
            error = "torn record"
            break
        body = pos + _FRAME.size
        if zlib.crc32(mv[pos:body + plen]) != _CRC.unpack_from(mv, body + plen)[0]:
            error = "record checksum mismatch"
            break
        if rtype == REC_HEADER:
            if plen < _HEADER.size:
                error = "short HEADER record"
                break
            (hid,) = _HEADER.unpack_from(mv, body)
            headers[hid] = bytes(mv[body + _HEADER.size:body + plen])
        elif rtype == REC_START:
            if cur is not None:
                error = "START inside an unfinished fragment"
                break
            if plen < _START.size:
                error = "short START record"
                break
            seq, hid, tc, blen = _START.unpack_from(mv, body)
            dstart = body + _START.size + blen
            if dstart > body + plen:
                error = "short START record"
                break
            max_seq = max(max_seq, seq)
            if hid not in headers:
                error = f"fragment {seq} names header {hid}, which this segment does not hold"
                break
            try:
                boot = bytes(mv[body + _START.size:dstart]).decode()
            except UnicodeDecodeError:
                error = "bad boot id"
                break
            size = body + plen - dstart
            cur = ScannedFragment(seq, hid, boot, tc, tc, 0, 0, 0)
            cur.offsets.append(dstart)
            cur.ends.append(size)
            crc = zlib.crc32(mv[dstart:body + plen])
            last_ms, frames = tc, 0
        elif rtype == REC_DATA:
            if plen < _DATA.size:
                error = "short DATA record"
                break
            seq, tc = _DATA.unpack_from(mv, body)
            max_seq = max(max_seq, seq)
            if cur is None or seq != cur.seq:
                error = f"DATA of fragment {seq} outside that fragment"
                break
            dstart = body + _DATA.size
            cur.offsets.append(dstart)
            cur.ends.append(cur.ends[-1] + body + plen - dstart)
            crc = zlib.crc32(mv[dstart:body + plen], crc)
            last_ms = max(last_ms, tc)
            frames += 1
        elif rtype == REC_END:
            if plen != _END.size:
                error = "bad END record"
                break
            seq, size, nframes, first_ms, end_ms, end_crc = _END.unpack_from(mv, body)
            max_seq = max(max_seq, seq)
            if cur is None or seq != cur.seq:
                error = f"END of fragment {seq} outside that fragment"
                break
            if (size, nframes, first_ms, end_ms, end_crc) != (cur.ends[-1], frames, cur.first_ms, last_ms, crc):
                error = f"fragment {seq} does not match its END record (size, frames, timecodes or checksum)"
                break
            cur.size, cur.frames, cur.last_ms, cur.crc = size, frames, last_ms, crc
            fragments.append(cur)
            cur = None
        else:  # REC_RELEASE
            if plen != _RELEASE.size:
                error = "bad RELEASE record"
                break
            (seq,) = _RELEASE.unpack_from(mv, body)
            releases.append(seq)
        pos = end
        if cur is None:
            clean = pos
    if cur is not None:
        if error is None:
            error = f"fragment {cur.seq} has no END record (unfinished)"
        # Salvage a fragment cut short: every record up to `pos` passed its CRC. Not when its END record disagrees
        # with its data (that is no torn write, and the writer's view cannot be trusted).
        if frames > 0 and not error.startswith(f"fragment {cur.seq} does not match"):
            cur.size, cur.frames, cur.last_ms, cur.crc, cur.salvaged = cur.ends[-1], frames, last_ms, crc, True
            fragments.append(cur)
            clean = pos
            error += f": kept its first {frames} frames"
    return SegmentScan(headers, fragments, releases, clean, error, max_seq)


def fragment_bytes(data: bytes | memoryview, frag: ScannedFragment) -> bytes:
    """The bytes of a scanned fragment, gathered from the segment data (for tests and tools)."""
    return read_chunks(data, frag.offsets, frag.ends, 0, frag.size)


def chunk_span(offsets: array, ends: array, offset: int, max_bytes: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Plan a read of the fragment's bytes [offset, offset+max_bytes): one file range (start, stop) covering them and
    the pieces (file_offset, length) to cut out of it, in order."""
    total = ends[-1] if len(ends) else 0
    stop_at = min(total, offset + max_bytes)
    pieces: list[tuple[int, int]] = []
    i = bisect_right(ends, offset)
    pos = offset
    while pos < stop_at:
        chunk_start = ends[i - 1] if i else 0
        file_off = offsets[i] + (pos - chunk_start)
        n = min(ends[i], stop_at) - pos
        pieces.append((file_off, n))
        pos += n
        i += 1
    if not pieces:
        return 0, 0, pieces
    return pieces[0][0], pieces[-1][0] + pieces[-1][1], pieces


def read_chunks(data: bytes | memoryview, offsets: array, ends: array, offset: int, max_bytes: int) -> bytes:
    start, _stop, pieces = chunk_span(offsets, ends, offset, max_bytes)
    mv = memoryview(data)
    return b"".join(bytes(mv[o:o + n]) for o, n in pieces)
