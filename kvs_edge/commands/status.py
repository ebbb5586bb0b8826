"""`kvs-edge status [--json] [--file F]`: the running service's state.

Exit codes: 0 healthy, 1 unhealthy (the reasons are printed), 3 no status file (the service is not running),
2 the file is not a status file.
"""

from __future__ import annotations

import json
import sys
import time

from kvs_edge.errors import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE
from kvs_edge.service.status import StatusError, assess, format_human, pid_alive, read_status

DEFAULT_STATUS_FILE = "/run/kvs-edge/status.json"


def _default_file() -> str:
    """health.status_file of the installed configuration when readable, else the built-in default."""
    try:
        from kvs_edge.config import load_config
        from kvs_edge.cli import DEFAULT_CONFIG

        return str(load_config(DEFAULT_CONFIG).health.status_file)
    except Exception:  # no config, unreadable by this user, invalid: the default is the best guess
        return DEFAULT_STATUS_FILE


def main(args) -> int:
    path = args.file or _default_file()
    try:
        status = read_status(path)
    except FileNotFoundError:
        print(f"kvs-edge is not running: no status file {path} (start it with `systemctl start kvs-edge`)",
              file=sys.stderr)
        return EXIT_NOT_RUNNING
    except PermissionError:
        print(f"cannot read {path}: permission denied (try with sudo)", file=sys.stderr)
        return EXIT_USAGE
    except (StatusError, OSError) as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE

    now = time.time()
    alive = pid_alive(status.get("pid"))
    healthy, reasons = assess(status, now, process_alive=alive)
    if args.json:
        print(json.dumps({**status, "healthy": healthy, "reasons": reasons}, indent=2, sort_keys=True))
    else:
        print(format_human(status, now, process_alive=alive))
    return EXIT_OK if healthy else EXIT_FAILURE  # unhealthy: 1
