"""`kvs-edge trigger [--seconds N] [--label TEXT] [--config F | --socket PATH]`: start (or extend) an event in the
running service (upload.mode events) through its control socket. Exit 0 on success, 1 when the service refused or
cannot be reached (the one line says why)."""

from __future__ import annotations

import sys

from kvs_edge.errors import EXIT_FAILURE, EXIT_OK
from kvs_edge.service.control_socket import ControlError, request


def socket_path(args) -> str:
    from kvs_edge.event_service import control_socket_for
    if args.socket:
        return args.socket
    from kvs_edge.config import EventsConfig, load_config
    try:
        path = load_config(args.config).events.control_socket
    except Exception:  # no or unreadable config: the default socket is the best guess
        path = EventsConfig.control_socket
    return control_socket_for(path, args.camera)


def main(args) -> int:
    path = socket_path(args)
    try:
        answer = request(path, {"cmd": "trigger", "seconds": args.seconds, "label": args.label})
    except ControlError as e:
        print(f"kvs-edge trigger: {e}", file=sys.stderr)
        return EXIT_FAILURE
    if not answer.get("ok"):
        print(f"kvs-edge trigger: {answer.get('error', 'refused')}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"event {answer['label']!r} triggered")
    return EXIT_OK
