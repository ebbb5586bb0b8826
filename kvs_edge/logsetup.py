"""Logging for a service whose output goes to the journal: one line per event, no timestamps under systemd
(journald adds them), and never a secret (the code never formats one; this is the single place the format is set)."""

from __future__ import annotations

import logging
import os
import sys


def configure(level: str = "info", verbose: bool = False) -> None:
    under_systemd = bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(message)s" if under_systemd else "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else getattr(logging, level.upper(), 20),
                        format=fmt, datefmt="%H:%M:%S", force=True)
    for noisy in ("botocore", "urllib3", "libav", "h11"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
