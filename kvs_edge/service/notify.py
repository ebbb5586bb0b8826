"""systemd's notify protocol (sd_notify) in stdlib, and the decision when a watchdog ping is deserved.

`Notifier` sends datagrams such as ``READY=1`` to the socket systemd names in ``$NOTIFY_SOCKET`` (a file system path,
or a Linux abstract socket when it starts with ``@``). Without ``$NOTIFY_SOCKET`` (run from a terminal) it does nothing.

`WatchdogGate` is pure: the pipeline tells it when a frame arrived and when the uploader's loop went round, and it says
whether ``WATCHDOG=1`` may be sent now. A stalled camera or a wedged uploader stops the pings, so systemd kills and
restarts the service (Picamera2's ``stop()`` can hang: recovery must not depend on a clean stop).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


def _socket_address(value: str) -> str:
    # "@name" is the abstract namespace: the kernel wants a leading NUL byte instead of the '@'.
    return "\0" + value[1:] if value.startswith("@") else value


class Notifier:
    """Sends state changes to systemd. Every method returns True when a datagram was sent."""

    def __init__(self, socket_path: str | None = None, *, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(path) if path else None
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send one datagram with the given ``KEY=value`` lines."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self._address)
            return True
        except OSError as exc:
            # systemd treats notifications as best effort; so do we, but say it once.
            if not self._warned:
                log.warning("cannot notify systemd through $NOTIFY_SOCKET: %s", exc)
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        """The service is up: camera frames flow and the pipeline runs."""
        return self.notify("READY=1", *([_status_line(status)] if status is not None else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """A one-line summary shown by `systemctl status`."""
        return self.notify(_status_line(text))

    def reloading(self) -> bool:
        """Configuration reload started (SIGHUP); send `ready()` once done."""
        return self.notify("RELOADING=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _status_line(text: str) -> str:
    return "STATUS=" + " ".join(str(text).split())


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec=), or None when systemd expects none.

    ``$WATCHDOG_USEC`` is the period; ``$WATCHDOG_PID``, when set, names the process the watchdog is meant for.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    wanted_pid = env.get("WATCHDOG_PID")
    if wanted_pid:
        try:
            if int(wanted_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2_000_000


@dataclass
class WatchdogGate:
    """Decides whether the service has earned a WATCHDOG=1 ping. Times are monotonic seconds, given by the caller.

    stall_seconds: the camera counts as stalled when its last frame is older than this (health.stall_seconds).
    wedge_seconds: the uploader counts as wedged when its loop has not gone round for this long. Its loop turns at
    least every read/ACK timeout even while offline, so an outage is not a wedge; a thread that died or hangs is.
    """

    stall_seconds: float = 5.0
    wedge_seconds: float = 30.0
    last_frame: float | None = None
    last_uploader_beat: float | None = None

    def frame(self, now: float) -> None:
        """A frame arrived from the source."""
        self.last_frame = now

    def uploader_beat(self, now: float) -> None:
        """The uploader's loop went round."""
        self.last_uploader_beat = now

    def problem(self, now: float) -> str | None:
        """Why no ping is deserved now, or None when it is."""
        if self.last_frame is None:
            return "no frame from the camera yet"
        age = now - self.last_frame
        if age >= self.stall_seconds:
            return f"camera stalled: no frame for {age:.1f} s"
        if self.last_uploader_beat is None:
            return "uploader not running yet"
        beat_age = now - self.last_uploader_beat
        if beat_age >= self.wedge_seconds:
            return f"uploader wedged: its loop has not run for {beat_age:.1f} s"
        return None

    def should_ping(self, now: float) -> bool:
        return self.problem(now) is None
