"""The read side of the emulator's archive: fragment selection, duplicates, and fragments served alone.

Pure over the Store (no sockets, no threads): everything here takes the store and a stream name and returns entries or
bytes. The JSON/streaming APIs (read_api.py) and HLS/DASH build on it.

Duplicates. The store keeps every fragment it persisted, also when a later session's timestamps overlap what the stream
already holds. The service resolves this at read time; docs/kvs-read-side.md quotes API_reader_HLSFragmentSelector:
  "fragments with duplicate producer timestamps are removed ... if the same range was ingested at very different
   times, only the oldest ingested collection of fragments are returned."
`list_fragments(..., dedupe=True)` implements it: in ingestion order, a fragment whose producer frame span overlaps one
already kept is dropped, so the oldest-ingested set wins.

A fragment alone: the session file is `header + cluster + cluster ...`; each index entry records its cluster's byte
range. `fragment_document()` joins the session header (EBML header, Segment of unknown size, Info, Tracks) with the one
cluster (rewritten to a known size), optionally framed by Tags elements: a standalone MKV that PyAV/FFmpeg open.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from typing import Iterable

from kvs_edge.emulator.store import ArchiveEntry, Store, StoreError
from kvs_edge.media import ebml, mkv

PRODUCER = "PRODUCER_TIMESTAMP"
SERVER = "SERVER_TIMESTAMP"
SELECTOR_TYPES = (PRODUCER, SERVER)

_CLUSTER_ID = ebml.encode_id(ebml.CLUSTER)


@dataclass(frozen=True)
class Track:
    number: int
    codec_id: str
    codec_private: bytes | None
    width: int | None = None
    height: int | None = None


def start_ms_of(entry: ArchiveEntry, selector_type: str) -> int:
    """The fragment's start timestamp on the selector's clock (epoch ms)."""
    return entry.producer_ts_ms if selector_type == PRODUCER else entry.server_ts_ms


def duration_ms(entry: ArchiveEntry) -> int:
    """FragmentLengthInMilliseconds: the span of its frames (the last frame's own duration is not known)."""
    return max(0, entry.last_frame_ms - entry.first_frame_ms)


def entries(store: Store, stream: str) -> list[ArchiveEntry]:
    """Every persisted fragment of the stream, in ingestion order, with its byte range located."""
    return _locate(store, stream, store.archive(stream))


def list_fragments(store: Store, stream: str, *, selector_type: str = SERVER, start_ms: int | None = None,
                   end_ms: int | None = None, dedupe: bool = False) -> list[ArchiveEntry]:
    """Fragments whose start timestamp on the selector's clock lies in [start_ms, end_ms] (None: open), sorted by that
    timestamp (ties: ingestion order). dedupe=True drops fragments overlapping an older-ingested one (see the module
    docstring); use it for HLS, DASH and clips selected by PRODUCER_TIMESTAMP. An unknown stream raises
    ResourceNotFoundException; an empty range returns [] (packaging.check_playable raises for playback)."""
    if selector_type not in SELECTOR_TYPES:
        raise StoreError(400, "InvalidArgumentException", f"FragmentSelectorType must be one of {list(SELECTOR_TYPES)}.")
    got = entries(store, stream)
    if dedupe:
        got = dedupe_oldest(got)
    got = [e for e in got if (start_ms is None or start_ms_of(e, selector_type) >= start_ms)
           and (end_ms is None or start_ms_of(e, selector_type) <= end_ms)]
    return sorted(got, key=lambda e: start_ms_of(e, selector_type))  # stable: ties keep ingestion order



def dedupe_oldest(ingested: Iterable[ArchiveEntry]) -> list[ArchiveEntry]:
    """Keep, in ingestion order, each fragment whose producer frame span [first, last] overlaps no fragment kept
    before it: duplicates (same producer timestamps ingested again) disappear and the oldest-ingested set wins."""
    kept: list[ArchiveEntry] = []
    spans: list[tuple[int, int]] = []  # sorted, disjoint
    for e in ingested:
        lo, hi = e.first_frame_ms, e.last_frame_ms
        i = bisect.bisect_left(spans, (lo, lo))
        overlaps = (i > 0 and spans[i - 1][1] >= lo) or (i < len(spans) and spans[i][0] <= hi)
        if overlaps:
            continue
        spans.insert(i, (lo, hi))
        kept.append(e)
    return kept


def find(store: Store, stream: str, number: str) -> ArchiveEntry:
    """The entry of one fragment number; ResourceNotFoundException when the stream has no such fragment."""
    for e in entries(store, stream):
        if e.fragment_number == number:
            return e
    raise StoreError(404, "ResourceNotFoundException", f"Fragment {number} does not exist in stream {stream}.")


def session_header(store: Store, stream: str, entry: ArchiveEntry) -> bytes:
    """EBML header + Segment (unknown size) + Info + Tracks of the fragment's PutMedia session."""
    return store.read_bytes(stream, entry.session, 0, entry.header_size)


def fragment_cluster(store: Store, stream: str, entry: ArchiveEntry) -> bytes:
    """The fragment's Cluster with a known size (absolute Timecode in the session's TimecodeScale)."""
    data = store.read_bytes(stream, entry.session, entry.offset, entry.length)
    return cluster_with_size(data)


def cluster_with_size(data: bytes) -> bytes:
    """A stored cluster (ID + 8-byte unknown size + body) with its size field filled in."""
    if not data.startswith(_CLUSTER_ID):
        raise StoreError(500, "InternalFailure", "the archive index does not point at a Cluster")
    body_at = len(_CLUSTER_ID) + 8
    return _CLUSTER_ID + ebml.encode_size(len(data) - body_at, 8) + data[body_at:]


def fragment_document(store: Store, stream: str, entry: ArchiveEntry | str, *,
                      tags_before: Iterable[tuple[str, str]] = (),
                      tags_after: Iterable[tuple[str, str]] = ()) -> bytes:
    """One fragment as a standalone MKV: session header, [Tags], Cluster, [Tags]. `entry` may be a fragment number."""
    if isinstance(entry, str):
        entry = find(store, stream, entry)
    before, after = list(tags_before), list(tags_after)
    return b"".join([session_header(store, stream, entry), mkv.service_tags(before) if before else b"",
                     fragment_cluster(store, stream, entry), mkv.service_tags(after) if after else b""])


def tags_document(tags: list[tuple[str, str]]) -> bytes:
    """An MKV document carrying only Tags (the service's in-band error report in a media stream)."""
    return mkv.ebml_header() + mkv.encode_id(mkv.SEGMENT) + mkv.UNKNOWN_SIZE + mkv.service_tags(tags)


def tracks_of(store: Store, stream: str, entry: ArchiveEntry) -> list[Track]:
    """The tracks declared by the fragment's session header, in header order."""
    return parse_tracks(session_header(store, stream, entry))


def parse_tracks(header: bytes) -> list[Track]:
    """Tracks of an MKV session header (EBML header + Segment + Info + Tracks, no cluster)."""
    tracks: list[Track] = []
    cur: dict | None = None
    r = ebml.EbmlReader()
    try:
        events = r.feed(header)
    except ebml.EbmlError as e:
        raise StoreError(500, "InternalFailure", f"stored session header is not valid MKV: {e}") from None
    for ev in events:
        if type(ev) is ebml.Start and ev.id == ebml.TRACK_ENTRY:
            cur = {"number": 0, "codec_id": "", "codec_private": None}
        elif type(ev) is ebml.End and ev.id == ebml.TRACK_ENTRY and cur is not None:
            tracks.append(Track(**cur))
            cur = None
        elif type(ev) is ebml.Leaf and cur is not None:
            if ev.id == ebml.TRACK_NUMBER:
                cur["number"] = ebml.read_uint(ev.data)
            elif ev.id == ebml.CODEC_ID:
                cur["codec_id"] = ebml.read_string(ev.data)
            elif ev.id == ebml.CODEC_PRIVATE:
                cur["codec_private"] = bytes(ev.data) or None
            elif ev.id == ebml.PIXEL_WIDTH:
                cur["width"] = ebml.read_uint(ev.data)
            elif ev.id == ebml.PIXEL_HEIGHT:
                cur["height"] = ebml.read_uint(ev.data)
    return tracks


def wait_for_fragments(store: Store, stream: str, known: int, timeout_s: float) -> int:
    """Block until the stream holds more than `known` fragments (or the timeout); the current count."""
    return store.wait_for_fragments(stream, known, timeout_s)


def epoch_seconds(ms: int) -> str:
    """A timestamp as the service writes it in MKV tags: epoch seconds with milliseconds, e.g. 1700000000.033."""
    return f"{ms // 1000}.{ms % 1000:03d}"


def _locate(store: Store, stream: str, got: list[ArchiveEntry]) -> list[ArchiveEntry]:
    """Fill in byte ranges missing from index lines written before they were recorded (scan the session files)."""
    missing = {e.session for e in got if e.offset is None}
    if not missing:
        return got
    ranges: dict[str, list[tuple[int, int, int]]] = {}
    for path in store.archive_files(stream):
        if path.stem not in missing:
            continue
        data = path.read_bytes()
        clusters = [ev for ev in ebml.iter_events(data) if type(ev) is ebml.Start and ev.id == ebml.CLUSTER]
        header = clusters[0].offset if clusters else len(data)
        bounds = [c.offset for c in clusters] + [len(data)]
        ranges[path.stem] = [(bounds[i], bounds[i + 1] - bounds[i], header) for i in range(len(clusters))]
    out = []
    for e in got:
        if e.offset is None and ranges.get(e.session):
            off, length, header = ranges[e.session].pop(0)
            e = replace(e, offset=off, length=length, header_size=header)
        out.append(e)
    return out
