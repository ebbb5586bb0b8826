"""The PutMedia request on the wire: SigV4 signing (botocore), HTTP/1.1 framing (h11) and TLS (ssl), full duplex.

PutMedia is full duplex: KVS answers 200 before it reads the body and streams ACKs while the client is still sending
(docs/kvs-putmedia.md section 1.5). `PutMediaConnection` therefore owns one non-blocking socket and does all its I/O in
one thread, in `poll()`: it writes queued body bytes and reads ACKs in the same `selectors` loop. TLS runs through an
`ssl.SSLObject` on memory buffers, so no TLS object is ever shared between threads.

Signing follows the C SDK (section 1.4): `SigV4Auth` (service kinesisvideo, the stream's region) over an `AWSRequest`
with an EMPTY body, so the canonical payload hash is that of the empty string and there is no x-amz-content-sha256
header; a session token goes out as x-amz-security-token. Nothing here logs or repeats a header value.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from kvs_edge import __version__
from kvs_edge.errors import KvsEdgeError, one_line
from kvs_edge.kvs.acks import Ack, AckParseError, AckParser

USER_AGENT = f"kvs-edge/{__version__}"
SERVICE = "kinesisvideo"
HIGH_WATER = 256 * 1024  # body bytes queued but not yet on the socket before the caller should wait
_RECV = 256 * 1024
_MAX_ERROR_BODY = 64 * 1024


# ------------------------------------------------------------------ errors


class TransportError(KvsEdgeError):
    """A PutMedia request failed. str() is one line meant for a user, never with a secret in it.

    retryable: try again after a backoff; throttled: the service asked us to slow down; refresh_endpoint: fetch the
    data endpoint again before the next attempt; status: the HTTP status when there was one.
    """

    def __init__(self, message: str, *, retryable: bool = True, throttled: bool = False,
                 refresh_endpoint: bool = False, status: int | None = None, error_type: str | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.throttled = throttled
        self.refresh_endpoint = refresh_endpoint
        self.status = status
        self.error_type = error_type


class ConnectionLost(TransportError):
    """The connection ended (reset, closed, or the response finished) after the request was accepted."""


def http_error(status: int, headers: dict[str, str], body: bytes, *, stream_name: str, region: str) -> TransportError:
    """Map an HTTP error response of PutMedia to a TransportError a user can act on."""
    error_type = (headers.get("x-amzn-errortype") or "").split(":")[0]
    message = ""
    try:
        doc = json.loads(body.decode("utf-8")) if body else {}
        if isinstance(doc, dict):
            message = str(doc.get("message") or doc.get("Message") or "")
            error_type = error_type or str(doc.get("__type") or doc.get("code") or "").split("#")[-1]
    except (UnicodeDecodeError, ValueError):
        message = body[:200].decode("utf-8", "replace")
    detail = one_line(f"{error_type}: {message}" if error_type and message else (error_type or message or "no details"))
    if status in (401, 403) and "signature expired" in f"{message} {body[:500]!r}".lower():
        now = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        return TransportError(
            f"KVS rejected the request as signed too far from its own time: this device's clock is wrong "
            f"(it says {now}); sync it (NTP) and the upload resumes", status=status, error_type=error_type)
    if status in (401, 403):
        return TransportError(
            f"access denied writing to stream '{stream_name}' ({detail}): check the AWS credentials and that the IAM "
            f"policy allows kinesisvideo:PutMedia on it", status=status, error_type=error_type)
    if status == 404:
        return TransportError(
            f"stream '{stream_name}' not found in {region}: create it (aws kinesisvideo create-stream --stream-name "
            f"{stream_name} --data-retention-in-hours 24) or set stream.create: true", status=status,
            error_type=error_type, refresh_endpoint=True)
    if error_type in ("ClientLimitExceededException", "ConnectionLimitExceededException") or status == 429:
        return TransportError(f"KVS is throttling PutMedia on '{stream_name}' ({detail}): backing off",
                              throttled=True, status=status, error_type=error_type)
    if error_type == "InvalidEndpointException":
        return TransportError(f"the data endpoint is no longer valid ({detail}): fetching it again",
                              refresh_endpoint=True, status=status, error_type=error_type)
    if status >= 500:
        return TransportError(f"KVS server error {status} ({detail}): retrying", status=status, error_type=error_type)
    return TransportError(f"PutMedia refused with HTTP {status} ({detail})", status=status, error_type=error_type)


# ------------------------------------------------------------------ the request


def producer_timestamp(ms: int) -> str:
    """Epoch milliseconds as `seconds.mmm` with the milliseconds zero-padded (the C SDK's unpadded form is a bug)."""
    return f"{ms // 1000}.{ms % 1000:03d}"


def _target(url: str) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, Host header, request target) of the PutMedia URL for a data endpoint."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise TransportError(f"data endpoint {url!r} is not an http(s) URL", retryable=False, refresh_endpoint=True)
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    return parts.scheme, host, port, host_header, parts.path.rstrip("/") + "/putMedia"


def signed_request(endpoint: str, *, stream_name: str, region: str, credentials, producer_start_ms: int,
                   user_agent: str = USER_AGENT) -> tuple[str, list[tuple[str, str]]]:
    """(request target, headers) of a signed PutMedia request. `credentials` has access_key, secret_key, token
    (botocore's frozen credentials)."""
    _, _, _, host_header, target = _target(endpoint)
    headers = {
        "Host": host_header,
        "x-amzn-stream-name": stream_name,
        "x-amzn-fragment-timecode-type": "ABSOLUTE",
        "x-amzn-producer-start-timestamp": producer_timestamp(producer_start_ms),
        "x-amzn-fragment-acknowledgment-required": "1",
        "user-agent": user_agent,
        "connection": "keep-alive",
    }
    req = AWSRequest(method="POST", url=endpoint.rstrip("/") + "/putMedia", data=b"", headers=headers)
    SigV4Auth(credentials, SERVICE, region).add_auth(req)
    out = [(k, v) for k, v in req.headers.items()]
    out.append(("Transfer-Encoding", "chunked"))
    return target, out


# ------------------------------------------------------------------ the connection


def _keepalive(sock: socket.socket, idle_s: int = 15, interval_s: int = 5, count: int = 3) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle_s), ("TCP_KEEPINTVL", interval_s), ("TCP_KEEPCNT", count)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _connect_error(host: str, port: int, e: BaseException) -> TransportError:
    if isinstance(e, socket.gaierror):
        return TransportError(f"cannot resolve {host}: {e.strerror or e}; check DNS and the network",
                              refresh_endpoint=True)
    if isinstance(e, ssl.SSLCertVerificationError):
        return TransportError(f"TLS certificate of {host} is not trusted ({e.verify_message or e.reason}): "
                              f"if the endpoint uses a private CA, set aws.ca_bundle to its certificate")
    if isinstance(e, (socket.timeout, TimeoutError)):
        return TransportError(f"cannot connect to {host}:{port}: timed out", refresh_endpoint=True)
    if isinstance(e, ssl.SSLError):
        return TransportError(f"TLS handshake with {host}:{port} failed: {e.reason or e}", refresh_endpoint=True)
    if isinstance(e, OSError):
        return TransportError(f"cannot connect to {host}:{port}: {e.strerror or e}", refresh_endpoint=True)
    return TransportError(f"cannot connect to {host}:{port}: {e}", refresh_endpoint=True)


@dataclass
class ResponseHead:
    status: int
    headers: dict[str, str]


class PutMediaConnection:
    """One PutMedia request on one connection. Single-threaded: the owner calls write()/end_body() and poll().

    poll() returns parsed ACKs; it raises TransportError for an HTTP error response (mapped by `http_error`) and
    ConnectionLost when the connection or the response ends.
    """

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject | None, incoming: ssl.MemoryBIO | None,
                 outgoing: ssl.MemoryBIO | None, *, host: str, stream_name: str, region: str,
                 response_timeout_s: float, opened_at: float):
        self._sock = sock
        self._tls = tls
        self._in = incoming
        self._out = outgoing
        self.host = host
        self._stream = stream_name
        self._region = region
        self._h11 = h11.Connection(h11.CLIENT)
        self._plain: deque[bytes] = deque()  # framed body bytes not yet given to TLS
        self._plain_len = 0
        self._wire = bytearray()  # bytes ready for the socket
        self._sel = selectors.DefaultSelector()
        self._sel.register(sock, selectors.EVENT_READ)
        self._want_write = False
        self._acks = AckParser()
        self.response: ResponseHead | None = None
        self._error_body: bytearray | None = None
        self._response_deadline = opened_at + response_timeout_s
        self._response_timeout_s = response_timeout_s
        self._closed = False
        self._pending_error: ConnectionLost | None = None
        self._body_ended = False
        self.bytes_written = 0  # body bytes handed to write()
        self.wire_bytes_sent = 0  # bytes put on the socket (framing and TLS included)

    # -------------------------------------------------------------- opening

    @classmethod
    def open(cls, endpoint: str, target: str, headers: list[tuple[str, str]], *, stream_name: str, region: str,
             ca_bundle: str | None = None, connect_timeout_s: float = 10.0,
             response_timeout_s: float | None = None) -> "PutMediaConnection":
        """Connect (DNS, TCP, TLS with verification), send the request head. Raises TransportError."""
        scheme, host, port, _, _ = _target(endpoint)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        except OSError as e:
            raise _connect_error(host, port, e) from None
        tls = incoming = outgoing = None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _keepalive(sock)
            if scheme == "https":
                ctx = ssl.create_default_context(cafile=ca_bundle)  # verification ON, hostname checked
                incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                tls = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
                _handshake(sock, tls, incoming, outgoing, time.monotonic() + connect_timeout_s)
            sock.setblocking(False)
        except (OSError, ssl.SSLError) as e:
            sock.close()
            if isinstance(e, FileNotFoundError) or (isinstance(e, OSError) and e.errno == errno.ENOENT):
                raise TransportError(f"CA bundle {ca_bundle!r} not found: fix aws.ca_bundle", retryable=False) from None
            raise _connect_error(host, port, e) from None
        conn = cls(sock, tls, incoming, outgoing, host=host, stream_name=stream_name, region=region,
                   response_timeout_s=response_timeout_s if response_timeout_s is not None else connect_timeout_s,
                   opened_at=time.monotonic())
        conn._queue(conn._h11.send(h11.Request(method="POST", target=target, headers=headers)))
        return conn

    # -------------------------------------------------------------- body

    @property
    def pending_output(self) -> int:
        """Bytes accepted by write() and not yet on the socket."""
        return self._plain_len + len(self._wire) + (self._out.pending if self._out is not None else 0)

    @property
    def writable(self) -> bool:
        return not self._closed and not self._body_ended and self.pending_output < HIGH_WATER

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._closed or self._body_ended:
            raise ConnectionLost("write after the request body was closed")
        try:
            pieces = self._h11.send_with_data_passthrough(h11.Data(data=data))
        except h11.LocalProtocolError as e:
            raise ConnectionLost(f"cannot send more body: {e}") from None
        self.bytes_written += len(data)
        self._queue(b"".join(pieces))

    def end_body(self) -> None:
        if self._closed or self._body_ended:
            return
        self._body_ended = True
        try:
            self._queue(self._h11.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            pass

    def _queue(self, data: bytes | None) -> None:
        if not data:
            return
        if self._tls is None:
            self._wire += data
        else:
            self._plain.append(data)
            self._plain_len += len(data)

    # -------------------------------------------------------------- I/O

    def poll(self, timeout: float = 0.0) -> list[Ack | AckParseError]:
        """Send what can be sent and read what has arrived, waiting up to `timeout` s for the socket.

        When the connection ends, the ACKs read before the end are returned first; the next poll() raises.
        """
        if self._pending_error is not None:
            raise self._pending_error
        if self._closed:
            raise ConnectionLost("connection closed")
        out: list[Ack | AckParseError] = []
        try:
            self._flush()
            if self.response is None:
                timeout = max(0.0, min(timeout, self._response_deadline - time.monotonic()))
            want_write = bool(self._wire or self._plain)
            if want_write != self._want_write:
                self._sel.modify(self._sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0))
                self._want_write = want_write
            for _, mask in self._sel.select(timeout):
                if mask & selectors.EVENT_READ:
                    self._read(out)
                if mask & selectors.EVENT_WRITE:
                    self._flush()
        except ConnectionLost as e:
            if out:
                self._pending_error = e
                return out
            raise
        if self.response is None and time.monotonic() >= self._response_deadline:
            self.close()
            raise TransportError(f"no response from {self.host} within {self._response_timeout_s:g} s",
                                 refresh_endpoint=True)
        return out

    def _flush(self) -> None:
        while True:
            if self._tls is not None and self._plain and len(self._wire) < HIGH_WATER:
                while self._plain and self._out.pending < HIGH_WATER:
                    piece = self._plain.popleft()
                    try:
                        n = self._tls.write(piece)
                    except ssl.SSLWantReadError:
                        self._plain.appendleft(piece)
                        break
                    except ssl.SSLError as e:
                        self._lost(f"TLS error while sending: {e.reason or e}")
                    self._plain_len -= n
                    if n < len(piece):
                        self._plain.appendleft(piece[n:])
                if self._out.pending:
                    self._wire += self._out.read()
            if not self._wire:
                return
            try:
                n = self._sock.send(self._wire)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._lost(f"sending failed: {e.strerror or e}")
            del self._wire[:n]
            self.wire_bytes_sent += n
            if self._wire:
                return

    def _read(self, out: list) -> None:
        try:
            data = self._sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._lost(f"receiving failed: {e.strerror or e}", out)
        if self._tls is None:
            plain = data
        else:
            if data:
                self._in.write(data)
            else:
                self._in.write_eof()
            chunks = []
            while True:
                try:
                    chunks.append(self._tls.read(_RECV))
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    data = b""
                    break
                except ssl.SSLError as e:
                    self._lost(f"TLS error while receiving: {e.reason or e}", out)
            plain = b"".join(chunks)
            if self._out.pending:  # TLS 1.3 may answer (key update, session tickets)
                self._wire += self._out.read()
        if plain:
            self._h11.receive_data(plain)
        if not data:
            self._h11.receive_data(b"")
        self._events(out)

    def _events(self, out: list) -> None:
        while True:
            try:
                ev = self._h11.next_event()
            except h11.RemoteProtocolError as e:
                self._lost(f"invalid HTTP from {self.host}: {e}", out)
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.InformationalResponse):
                continue
            if isinstance(ev, h11.Response):
                self.response = ResponseHead(ev.status_code, {k.decode("latin-1").lower(): v.decode("latin-1")
                                                              for k, v in ev.headers})
                if ev.status_code != 200:
                    self._error_body = bytearray()
                continue
            if isinstance(ev, h11.Data):
                if self._error_body is not None:
                    self._error_body += ev.data[: _MAX_ERROR_BODY - len(self._error_body)]
                    if len(self._error_body) >= _MAX_ERROR_BODY:
                        self._http_error()
                else:
                    out.extend(self._acks.feed(bytes(ev.data)))
                continue
            if isinstance(ev, h11.EndOfMessage):
                if self._error_body is not None:
                    self._http_error()
                self._lost("KVS ended the response", out)
            if isinstance(ev, h11.ConnectionClosed):
                if self._error_body is not None:
                    self._http_error()
                self._lost("connection closed by the server", out)

    def _http_error(self) -> None:
        head = self.response
        body = bytes(self._error_body or b"")
        self.close()
        raise http_error(head.status, head.headers, body, stream_name=self._stream, region=self._region)

    def _lost(self, reason: str, out: list | None = None) -> None:
        if out is not None:
            out.extend(self._acks.close())  # a last ACK cut short is reported
        self.close()
        raise ConnectionLost(reason if self.response is not None else f"{reason} (before any response)",
                             refresh_endpoint=self.response is None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sel.close()
        finally:
            self._sock.close()


def _handshake(sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
               deadline: float) -> None:
    while True:
        try:
            tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        if outgoing.pending:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock.sendall(outgoing.read())
        if done:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("TLS handshake timed out")
        sock.settimeout(remaining)
        data = sock.recv(_RECV)
        if not data:
            raise ConnectionResetError(errno.ECONNRESET, "connection closed during the TLS handshake")
        incoming.write(data)
