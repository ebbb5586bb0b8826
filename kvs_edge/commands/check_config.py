"""`kvs-edge check-config [FILE]`: validate a configuration file.

Exit 0 with "FILE: ok" on stdout when the file is usable; warnings (the example's placeholders still in place, keys in a
file other users can read) go to stderr, each prefixed "warning: ", and do not change the exit code.
Exit 2 with every problem on stderr, one line each ("FILE: key.path: problem"), when it is not: "invalid" is this
command's answer, not a failure to run (README "Exit codes"); `run` and `upload` exit 78 on the same file.
"""

from __future__ import annotations

import argparse
import sys

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
    return EXIT_OK
