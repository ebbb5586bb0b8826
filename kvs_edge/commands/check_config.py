"""`kvs-edge check-config [FILE]`: validate a configuration file.

Exit 0 with "FILE: ok" on stdout when the file is usable, followed by the stream (and IoT thing) names filled in for
this machine when the file uses placeholders or several cameras (identity.py); warnings (the example's placeholders still in place, keys in a
file other users can read) go to stderr, each prefixed "warning: ", and do not change the exit code.
Exit 2 with every problem on stderr, one line each ("FILE: key.path: problem"), when it is not: "invalid" is this
command's answer, not a failure to run (README "Exit codes"); `run` and `upload` exit 78 on the same file.
"""

from __future__ import annotations

import argparse
import sys

from kvs_edge import identity
from kvs_edge.config import ConfigError, config_warnings, load_config
from kvs_edge.errors import EXIT_OK, EXIT_USAGE


def main(args: argparse.Namespace) -> int:
    path = args.file
    try:
        cfg = load_config(path)
    except ConfigError as e:
        for message in e.messages:
            print(message, file=sys.stderr)
        return EXIT_USAGE
    for warning in config_warnings(cfg, path):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: ok")
    names = [cam.stream.name for cam in cfg.cameras] + ([cfg.aws.iot.thing_name] if cfg.aws.iot else [])
    if len(cfg.cameras) > 1 or any(identity.placeholders_in(n) for n in names):
        # the names this device would use; on another machine (a laptop) they show that machine's values
        try:
            for line in identity.resolved_names(identity.resolve_config(cfg, identity.read_identity())):
                print(f"  {line}")
        except identity.IdentityError as e:
            print(f"warning: {path}: {e} (the names are filled in on the device)", file=sys.stderr)
    return EXIT_OK
