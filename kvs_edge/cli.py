"""The `kvs-edge` command: argument parsing only; each subcommand lives in kvs_edge/commands/<name>.py.

Exit codes: kvs_edge/errors.py (one table for every command, README "Exit codes"). A KvsEdgeError that a command
does not handle itself ends it here with its one-line message and its own exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kvs_edge import __version__
from kvs_edge.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, KvsEdgeError

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

DEFAULT_CONFIG = "/etc/kvs-edge/config.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvs-edge", description="Stream H.264 video to Amazon Kinesis Video Streams.")
    p.add_argument("--version", action="version", version=f"kvs-edge {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("run", help="run the appliance (camera -> fragment log -> KVS) until SIGTERM")
    s.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML configuration (default {DEFAULT_CONFIG})")

    s = sub.add_parser("demo", help="stream a test pattern to an embedded local KVS emulator")
    s.add_argument("--seconds", type=float, default=20.0, help="how long to stream (default 20)")
    s.add_argument("--data-dir", default=None, help="where the emulator archives the video (default ./demo-data)")
    s.add_argument("--watch", action="store_true",
                   help="in a terminal: then keep streaming, with the emulator's web console URL, until Ctrl-C")

    s = sub.add_parser("emulator", help="run a local Kinesis Video Streams endpoint (control plane + PutMedia)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=4566)
    s.add_argument("--data-dir", default="./kvs-emulator-data")
    s.add_argument("--tls-cert", default=None)
    s.add_argument("--tls-key", default=None)
    s.add_argument("--access-key-id", default=None)
    s.add_argument("--secret-access-key", default=None)
    s.add_argument("--region", default="us-east-1")
    s.add_argument("--persist-delay", type=float, default=None, help="seconds between RECEIVED and PERSISTED")
    s.add_argument("--max-connection-seconds", type=float, default=None, help="ERROR 4003 after this (default 2700)")
    s.add_argument("--advertise-url", default=None,
                   help="the data endpoint GetDataEndpoint answers, e.g. http://10.0.2.100:4566 (default: the scheme "
                        "and Host of the request, i.e. the address the client reached)")
    s.add_argument("--list", metavar="STREAM", default=None, help="print the archive index of STREAM and exit")
    s.add_argument("--iot-port", type=int, default=None,
                   help="also serve an AWS IoT credentials provider (mutual TLS) on this port (0: a free one); "
                        "needs --tls-cert/--tls-key and --iot-client-ca")
    s.add_argument("--iot-client-ca", default=None, help="CA (PEM) that signed the device certificates it accepts")
    s.add_argument("--iot-lifetime", type=float, default=900.0, help="lifetime of the credentials it issues (s)")
    s.add_argument("--iot-role-alias", default="kvs-edge-role")
    s.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="inject a fault, e.g. drop-after-bytes=100000, error=5000@3, refuse=5, stall=10, rate=1000000")

    s = sub.add_parser("mux", help="Annex B H.264 file -> the MKV session the uploader would send")
    s.add_argument("input")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--fps", type=float, default=30.0)
    s.add_argument("--start-ms", type=int, default=None, help="producer timestamp of the first frame, epoch ms")
    s.add_argument("--audio", default=None, help="a sound file to add as an AAC track (AAC kept, others transcoded)")

    s = sub.add_parser("upload", help="send a file (.h264, .mkv, .mp4) to KVS and wait until every fragment is PERSISTED")
    s.add_argument("input")
    s.add_argument("--config", default=None)
    s.add_argument("--stream", default=None)
    s.add_argument("--fps", type=float, default=None, help="frame rate of a raw .h264 file")

    s = sub.add_parser("check-config", help="validate a configuration file (exit 0, or 2 with messages)")
    s.add_argument("file", nargs="?", default=DEFAULT_CONFIG)

    s = sub.add_parser("status", help="show the running service's state (non-zero exit when unhealthy)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--file", default=None, help="status file (default: the service's)")

    s = sub.add_parser("trigger", help="start an event in the running service (upload.mode events)")
    s.add_argument("--seconds", type=float, default=0.0, help="how long the event lasts before events.post_seconds")
    s.add_argument("--label", default="trigger", help="the kvs-edge.event tag of its fragments (default trigger)")
    s.add_argument("--config", default=DEFAULT_CONFIG)
    s.add_argument("--socket", default=None, help="control socket (default: events.control_socket of --config)")
    s.add_argument("--camera", default=None, help="with several cameras: which one (its name, or its index)")

    s = sub.add_parser("events", help="list the events recorded in the fragment log")
    s.add_argument("--config", default=DEFAULT_CONFIG)
    s.add_argument("--dir", default=None, help="a log folder (buffer.path, or a copy) instead of --config's")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("export", help="write recorded video from the fragment log to a .mkv or .mp4 file")
    s.add_argument("--from", required=True, metavar="TIME", help="ISO 8601 (local time unless zoned) or epoch s")
    s.add_argument("--to", required=True, metavar="TIME")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--config", default=DEFAULT_CONFIG)
    s.add_argument("--dir", default=None, help="a log folder (buffer.path, or a copy) instead of --config's")

    s = sub.add_parser("import-boot-config", help="apply kvs-edge.yaml from the boot partition (run by a oneshot unit)")
    s.add_argument("--boot", action="append", default=None, help="boot partition folder(s) to look in")
    s.add_argument("--target", default=DEFAULT_CONFIG)
    s.add_argument("--iot-dir", default=None, help="where IoT credentials go (default: iot/ next to --target)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    module = importlib.import_module(f"kvs_edge.commands.{args.command.replace('-', '_')}")
    try:
        return int(module.main(args) or 0)
    except KvsEdgeError as e:
        print(f"kvs-edge {args.command}: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
