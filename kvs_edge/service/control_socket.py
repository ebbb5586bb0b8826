"""The running service's local control socket (a Unix stream socket, owner-only: 0600 in a 0700-or-tighter folder).

Protocol: one JSON object per line each way; the server answers each request line with one line and closes after
the client half-closes or after IDLE_S. Requests:
    {"cmd": "trigger", "seconds": N, "label": "TEXT"}  -> {"ok": true, "label": ..., "at_ms": ...}
    {"cmd": "status"}                                    -> {"ok": true, "status": {...}} (the status file's content)
Errors come back as {"ok": false, "error": "one line"}. `ControlServer(path, handlers)` serves on a daemon thread;
`request(path, obj)` is the client (`kvs-edge trigger`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
from typing import Callable

log = logging.getLogger("kvs_edge.control_socket")

IDLE_S = 5.0
MAX_LINE = 64 * 1024


class ControlError(OSError):
    pass


class ControlServer:
    def __init__(self, path: str | os.PathLike, handlers: dict[str, Callable[[dict], dict]]) -> None:
        self.path = os.fspath(path)
        self.handlers = handlers
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> "ControlServer":
        folder = os.path.dirname(self.path) or "."
        os.makedirs(folder, mode=0o700, exist_ok=True)
        try:
            st = os.lstat(self.path)
            if stat.S_ISSOCK(st.st_mode):
                os.unlink(self.path)  # left by a process that died (a service runs once: systemd)
            else:
                raise ControlError(f"{self.path} exists and is not a socket; remove it or set events.control_socket")
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # created 0600: only the service's user (and root) may talk to it
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(8)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="kvs-edge-control", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(IDLE_S)
                try:
                    self._session(conn)
                except (OSError, ValueError) as e:
                    log.debug("control connection: %s", e)

    def _session(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
            if len(buf) > MAX_LINE:
                conn.sendall(b'{"ok": false, "error": "request too long"}\n')
                return
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                conn.sendall((json.dumps(self.answer(line)) + "\n").encode())

    def answer(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "not a JSON request"}
        if not isinstance(req, dict) or req.get("cmd") not in self.handlers:
            return {"ok": False, "error": f"unknown command; one of: {', '.join(sorted(self.handlers))}"}
        try:
            return {"ok": True, **self.handlers[req["cmd"]](req)}
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a bug in a handler must not kill the socket
            log.exception("control command %s failed", req.get("cmd"))
            return {"ok": False, "error": f"internal error ({type(e).__name__})"}


def request(path: str | os.PathLike, obj: dict, timeout: float = 5.0) -> dict:
    """Send one request to the service's socket; raises ControlError with one line a user can act on."""
    path = os.fspath(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(f"kvs-edge is not running with a control socket at {path} (upload.mode events or "
                               "schedule opens it; start the service with `systemctl start kvs-edge`)") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (try with sudo)") from None
        except ConnectionRefusedError:
            raise ControlError(f"nothing answers on {path}: the service is not running") from None
        sock.sendall((json.dumps(obj) + "\n").encode())
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        raise ControlError(f"the service did not answer on {path} within {timeout:.0f} s") from None
    finally:
        sock.close()
    try:
        return json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        raise ControlError(f"unexpected answer from {path}") from None
