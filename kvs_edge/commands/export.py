"""`kvs-edge export --from TIME --to TIME -o clip.mkv|mp4 [--config F | --dir FOLDER]`: recorded video out of the
fragment log (the service's own, while it runs, or a copied folder) into a playable file. TIME: ISO 8601
(2026-11-30T03:20:00, local time unless it names a zone), or epoch seconds."""

from __future__ import annotations

import sys
from datetime import datetime

from kvs_edge.dvr import export_clip, recorded_fragments, select
from kvs_edge.errors import EXIT_OK, UsageError


def parse_time(text: str) -> int:
    """Epoch ms of an ISO 8601 time or epoch seconds."""
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{text!r} is not a time; use ISO 8601 like 2026-11-30T03:20:00 or epoch seconds") from None
    if t.tzinfo is None:
        t = t.astimezone()
    return int(t.timestamp() * 1000)


def main(args) -> int:
    from kvs_edge.commands.events import folder
    start, end = parse_time(getattr(args, "from")), parse_time(args.to)
    if end < start:
        raise UsageError("--to is before --from")
    frags = recorded_fragments(folder(args))
    unplaced = sum(1 for f in frags if f.wall_ms is None)
    if unplaced:
        print(f"kvs-edge export: {unplaced} fragments recorded before the clock was ever synchronized cannot be placed "
              "in time and are left out", file=sys.stderr)
    chosen = select(frags, start, end)
    frames = export_clip(chosen, args.output)
    print(f"{args.output}: {frames} frames from {len(chosen)} fragments")
    return EXIT_OK
