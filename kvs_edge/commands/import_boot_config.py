"""`kvs-edge import-boot-config [--boot DIR]... [--target FILE]`: apply kvs-edge.yaml from the boot partition.

Run as root by kvs-edge-boot-config.service before kvs-edge.service. Exit 0 when there was nothing to do or the file
was applied, 2 when the file was invalid (renamed .invalid, with a .error file), 1 when the files could not be
read or written.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from kvs_edge.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from kvs_edge.service.boot_config import BOOT_DIRS, import_boot_config


def main(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    boot_dirs = [Path(d) for d in args.boot] if args.boot else list(BOOT_DIRS)
    target = Path(args.target)
    try:
        result = import_boot_config(boot_dirs, target)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"cannot import the boot-partition configuration:{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    stream = sys.stdout if result.outcome != "invalid" else sys.stderr
    print(result.summary(), file=stream)
    for w in result.warnings:
        print(w, file=sys.stderr)
    if result.outcome == "invalid":
        for m in result.messages:
            print(m, file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
