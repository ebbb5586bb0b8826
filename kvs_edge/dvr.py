"""The local DVR: read a fragment log folder without opening it as a FragmentLog (no lock, no recovery, no writes), so
`kvs-edge export` works while the service records, and on a copied folder.

`recorded_fragments(folder)` scans every segment file (log/segment.py's `scan_segment`, which keeps only complete
fragments and stops at a torn tail: a segment being written is read up to its last complete fragment). A segment the
service deletes while we read it is skipped. Fragments uploaded but still in a segment file are included: the DVR
holds whatever the folder still holds.

Times: a fragment's first_ms is CLOCK_MONOTONIC ms of its boot; `timebase.json` (next to the log folder, written by
clock.Timebase) gives each boot's wall-clock offset, so `wall_ms = first_ms + offset(boot)`. A process restart keeps
the boot (and the offset); a reboot brings a new boot id with its own offset. Fragments of a boot without a known
offset cannot be placed in time and are left out (counted).

`export_clip(fragments, start_ms, end_ms, output)` writes the fragments overlapping [start_ms, end_ms] as one MKV
session with cluster timecodes on the wall clock (relative to the first), then copies the packets into the output
container with PyAV (.mkv or .mp4), frame by frame, no re-encoding.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kvs_edge.errors import KvsEdgeError
from kvs_edge.log import segment as fmt
from kvs_edge.media.mkv import CLUSTER_HEAD_SIZE, SEGMENT_UID, encode_id, encode_size, retime_cluster_head
from kvs_edge.replace_file import replacing

log = logging.getLogger("kvs_edge.dvr")


@dataclass(frozen=True)
class RecordedFragment:
    seq: int
    boot_id: str
    wall_ms: int | None  # first frame, epoch ms (None: the boot's offset is unknown)
    duration_ms: int
    frames: int
    header: bytes
    data: bytes


def log_folder(path: str | os.PathLike) -> Path:
    """The folder holding the .seg files: `path` itself, or its `log` subfolder (a buffer.path)."""
    p = Path(path)
    if not p.is_dir():
        raise KvsEdgeError(f"{p}: no such folder; give buffer.path or its log folder (or a copy of it)")
    if not list(p.glob("*.seg")) and (p / "log").is_dir():
        return p / "log"
    return p


def boot_offsets(folder: Path) -> dict[str, int]:
    for cand in (folder / "timebase.json", folder.parent / "timebase.json"):
        try:
            raw = json.loads(cand.read_text())
            return {k: int(v["offset_ms"]) for k, v in raw.items()}
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable %s (%s)", cand, type(e).__name__)
    return {}


def recorded_fragments(path: str | os.PathLike, offsets: dict[str, int] | None = None) -> list[RecordedFragment]:
    """Every complete fragment in the folder, in seq order (one copy per seq)."""
    folder = log_folder(path)
    offsets = boot_offsets(folder) if offsets is None else offsets
    found: dict[int, RecordedFragment] = {}
    for seg in sorted(folder.glob("*.seg")):
        try:
            data = seg.read_bytes()
        except FileNotFoundError:  # deleted by the service meanwhile
            continue
        scan = fmt.scan_segment(data)
        for f in scan.fragments:
            if f.seq in found:
                continue
            off = offsets.get(f.boot_id)
            found[f.seq] = RecordedFragment(f.seq, f.boot_id, None if off is None else f.first_ms + off,
                                            f.last_ms - f.first_ms, f.frames, scan.headers[f.header_id],
                                            fmt.fragment_bytes(data, f))
    return [found[k] for k in sorted(found)]


def select(fragments: list[RecordedFragment], start_ms: int, end_ms: int) -> list[RecordedFragment]:
    out = [f for f in fragments if f.wall_ms is not None and f.wall_ms <= end_ms and f.wall_ms + f.duration_ms >= start_ms]
    return sorted(out, key=lambda f: (f.wall_ms, f.seq))


_SEGMENT_UID = encode_id(SEGMENT_UID) + encode_size(16)


def codec_key(header: bytes) -> bytes:
    """A session header without its SegmentUID (random per recording session): equal keys, same video format."""
    i = header.find(_SEGMENT_UID)
    if i < 0:
        return header
    j = i + len(_SEGMENT_UID)
    return header[:j] + header[j + 16:]


def session_bytes(fragments: list[RecordedFragment]) -> bytes:
    """One MKV session: the first fragment's header, then every cluster retimed to wall ms since the first."""
    base = fragments[0].wall_ms
    parts = [fragments[0].header]
    last_tc = -1
    for f in fragments:
        tc = max(f.wall_ms - base, last_tc + 1)  # strictly increasing, whatever the clocks did
        last_tc = tc + f.duration_ms
        parts.append(retime_cluster_head(f.data[:CLUSTER_HEAD_SIZE], tc))
        parts.append(f.data[CLUSTER_HEAD_SIZE:])
    return b"".join(parts)


def export_clip(fragments: list[RecordedFragment], output: str | os.PathLike) -> int:
    """Write the fragments (from select()) to output (.mkv or .mp4); returns the number of frames written."""
    import av

    out_path = Path(output)
    fmt_name = {".mkv": "matroska", ".mp4": "mp4"}.get(out_path.suffix.lower())
    if fmt_name is None:
        raise KvsEdgeError(f"{out_path}: the output must end in .mkv or .mp4")
    if not fragments:
        raise KvsEdgeError("no recorded video in that span (see kvs-edge events, or widen --from/--to)")
    keys = [codec_key(f.header) for f in fragments]
    if len(set(keys)) > 1:  # a new codec configuration: export up to it (and say so)
        cut = next(i for i, k in enumerate(keys) if k != keys[0])
        log.warning("the video format changes after %d fragments: exporting up to there", cut)
        fragments = fragments[:cut]
    blob = session_bytes(fragments)
    frames = 0
    with replacing(out_path, suffix=out_path.suffix) as tmp, av.open(io.BytesIO(blob), format="matroska") as src, \
            av.open(tmp, "w", format=fmt_name) as dst:
        ins = src.streams.video[0]
        outs = dst.add_stream_from_template(ins)
        for pkt in src.demux(ins):
            if pkt.dts is None:
                continue
            pkt.stream = outs
            dst.mux(pkt)
            frames += 1
    return frames
