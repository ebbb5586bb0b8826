"""`kvs-edge import-boot-config [--boot DIR]... [--target FILE] [--iot-dir DIR]`: apply kvs-edge.yaml, and IoT
device credentials (a kvs-edge-iot/ folder: service/iot_provision.py), from the boot partition.

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
from kvs_edge.service.iot_provision import import_iot_credentials


def main(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    boot_dirs = [Path(d) for d in args.boot] if args.boot else list(BOOT_DIRS)
    target = Path(args.target)
    try:
        result = import_boot_config(boot_dirs, target)
    except OSError as exc:
        return _io_failure("the boot-partition configuration", exc)
    stream = sys.stdout if result.outcome != "invalid" else sys.stderr
    print(result.summary(), file=stream)
    for w in result.warnings:
        print(w, file=sys.stderr)
    if result.outcome == "invalid":
        for m in result.messages:
            print(m, file=sys.stderr)
    # IoT device credentials (issue 16): into <target folder>/iot/, owner-only; never printed
    iot_dir = Path(args.iot_dir) if getattr(args, "iot_dir", None) else target.parent / "iot"
    try:
        iot = import_iot_credentials(boot_dirs, iot_dir)
    except OSError as exc:
        return _io_failure("the IoT credentials", exc)
    if iot.outcome != "none":
        print(iot.summary(), file=sys.stdout if iot.outcome == "installed" else sys.stderr)
    return EXIT_USAGE if "invalid" in (result.outcome, iot.outcome) else EXIT_OK


def _io_failure(what: str, exc: OSError) -> int:
    where = f" {exc.filename}" if exc.filename else ""
    print(f"cannot import {what}:{where}: {exc.strerror or exc}", file=sys.stderr)
    return EXIT_FAILURE
