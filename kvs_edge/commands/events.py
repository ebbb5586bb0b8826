"""`kvs-edge events [--config F | --dir FOLDER] [--json]`: the triggers recorded in the fragment log folder
(events.jsonl, written by the service in upload.mode events), oldest first."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from kvs_edge.errors import EXIT_OK
from kvs_edge.upload_gate import read_events


def folder(args) -> str:
    from kvs_edge.dvr import log_folder
    if args.dir:
        return str(log_folder(args.dir))
    from kvs_edge.config import load_config
    from pathlib import Path
    return str(Path(load_config(args.config).buffer.path) / "log")


def grouped(triggers):
    """One entry per event start; `continues` lines (motion still seen) become its `until_ms`."""
    out = []
    for t in triggers:
        if t.continues and out and out[-1]["label"] == t.label and out[-1]["boot_id"] == t.boot_id:
            out[-1]["until_ms"] = t.at_ms
            continue
        out.append({**t.__dict__, "until_ms": t.at_ms})
    return out


def main(args) -> int:
    events = grouped(read_events(folder(args)))
    if args.json:
        print(json.dumps(events, indent=2))
        return EXIT_OK
    if not events:
        print("no events recorded", file=sys.stderr)
    for e in events:
        when = (datetime.fromtimestamp(e["wall_ms"] / 1000, timezone.utc).astimezone().isoformat(timespec="seconds")
                if e["wall_ms"] is not None
                else f"boot {e['boot_id'][:8]} +{e['at_ms'] / 1000:.1f} s (clock not synchronized)")
        extra = f" for {e['seconds']:g} s" if e["seconds"] else ""
        seen = (e["until_ms"] - e["at_ms"]) / 1000
        extra += f", seen for {seen:.0f} s" if seen > 0 else ""
        print(f"{when}  {e['label']}{extra}")
    return EXIT_OK
