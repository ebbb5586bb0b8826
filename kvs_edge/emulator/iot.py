"""A local AWS IoT credentials provider: `GET /role-aliases/<alias>/credentials` over mutual TLS.

What the real one does, small: the device presents its certificate (signed by a CA this server trusts) and names its
thing in the `x-amzn-iot-thingname` header; the answer is short-lived session credentials as JSON:

    {"credentials": {"accessKeyId": ..., "secretAccessKey": ..., "sessionToken": ..., "expiration": "...Z"}}

The key pair handed out is the one the local KVS emulator was started with (it accepts a single pair), with a fresh
random session token and an expiration `lifetime_s` ahead. `issued` counts the credentials handed out, so tests can
prove that a client refreshed.

Errors like the real service: no or untrusted client certificate -> the TLS handshake fails; unknown role alias ->
404 {"message": "..."}; no thing-name header -> 400; a thing name other than the configured one -> 403.
"""

from __future__ import annotations

import datetime
import http.server
import json
import logging
import os
import secrets
import ssl
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

THING_NAME_HEADER = "x-amzn-iot-thingname"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    server_version = "kvs-edge-iot-emulator"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("iot emulator: " + format, *args)

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        owner: IotCredentialsServer = self.server.owner
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 3 or parts[0] != "role-aliases" or parts[2] != "credentials":
            self._json(404, {"message": "Not Found"})
            return
        if parts[1] != owner.role_alias:
            self._json(404, {"message": "Role alias does not exist"})
            return
        thing = self.headers.get(THING_NAME_HEADER)
        if not thing:
            self._json(400, {"message": f"Missing header: {THING_NAME_HEADER}"})
            return
        if owner.thing_name is not None and thing != owner.thing_name:
            self._json(403, {"message": "Access Denied"})
            return
        self._json(200, {"credentials": owner._issue(thing)})

    def do_POST(self) -> None:  # noqa: N802
        self._json(405, {"message": "Method Not Allowed"})


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "IotCredentialsServer"

    def get_request(self):
        sock, addr = super().get_request()
        # The handshake runs in the request's thread (first read), not in the accept loop, so a slow or bad client
        # cannot hold up the others.
        return self.owner._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address) -> None:
        # A client without an acceptable certificate ends up here (handshake failure): count it, keep quiet.
        with self.owner._lock:
            self.owner.handshake_failures += 1
        log.debug("iot emulator: connection from %s failed", client_address, exc_info=True)


class IotCredentialsServer:
    """A mutual-TLS HTTPS server issuing short-lived credentials, on 127.0.0.1 (port 0 = a free one).

    `server_cert`, `server_key`: PEM files of the server's certificate (chain) and key; `client_ca`: PEM file of the
    CA(s) whose client certificates are accepted.

    `rotate_keys=True` hands out a fresh key pair each time (as the real provider does), calling
    `on_issue(access_key_id, secret_access_key)` first: pass the KVS emulator's `add_credentials` so that it accepts them.
    """

    def __init__(
        self,
        server_cert: str | os.PathLike,
        server_key: str | os.PathLike,
        client_ca: str | os.PathLike,
        *,
        access_key_id: str,
        secret_access_key: str,
        lifetime_s: float = 900,
        role_alias: str = "kvs-edge-role",
        thing_name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        rotate_keys: bool = False,
        on_issue: Callable[[str, str], None] | None = None,
    ):
        self.access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self.lifetime_s = lifetime_s
        self.rotate_keys = rotate_keys
        self._on_issue = on_issue
        self.role_alias = role_alias
        self.thing_name = thing_name
        self.issued = 0
        self.handshake_failures = 0
        self.tokens: list[str] = []  # session tokens handed out, oldest first
        self.expirations: dict[str, datetime.datetime] = {}  # session token -> its expiration (UTC)
        self._lock = threading.Lock()

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.fspath(server_cert), os.fspath(server_key))
        ctx.load_verify_locations(cafile=os.fspath(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        self._context = ctx

        self._httpd = _Server((host, port), _Handler, bind_and_activate=True)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"IotCredentialsServer({self.endpoint!r}, role_alias={self.role_alias!r}, issued={self.issued})"

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        """host:port, what goes into `aws.iot.endpoint`."""
        host = self._httpd.server_address[0]
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.endpoint}/role-aliases/{self.role_alias}/credentials"

    def _issue(self, thing: str) -> dict:
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        expiration = now + datetime.timedelta(seconds=self.lifetime_s)
        token = "IQoJ-emulated-" + secrets.token_urlsafe(48)
        access_key_id, secret_access_key = self.access_key_id, self._secret_access_key
        if self.rotate_keys:
            access_key_id = "ASIA" + secrets.token_hex(8).upper()
            secret_access_key = secrets.token_urlsafe(30)
        if self._on_issue is not None:
            self._on_issue(access_key_id, secret_access_key)
        with self._lock:
            self.issued += 1
            self.tokens.append(token)
            self.expirations[token] = expiration
        log.info("iot emulator: issued credentials to thing %s, expiring %s", thing, expiration.isoformat())
        return {
            "accessKeyId": access_key_id,
            "secretAccessKey": secret_access_key,
            "sessionToken": token,
            "expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def start(self) -> "IotCredentialsServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="iot-credentials-emulator", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "IotCredentialsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
