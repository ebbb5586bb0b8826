"""The emulator's network shell: a listening socket, a thread per connection, HTTP framing by h11, TLS by `ssl`.

Control plane (POST /createStream, /describeStream, /listStreams, /deleteStream, /getDataEndpoint), PutMedia
(POST /putMedia) and the archive index (GET /archive/<stream>) share one port. The PutMedia body goes through the pure
`PutMediaIngest` core; this module only moves bytes, runs timers, applies faults and writes the archive.
"""

from __future__ import annotations

import collections
import json
import logging
import select
import socket
import ssl
import struct
import threading
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import h11

from kvs_edge.emulator import control, read_http, sigv4, web
from kvs_edge.emulator.faults import Faults
from kvs_edge.emulator.ingest import Ack, Limits, PutMediaIngest, Store as StoreOut, ERROR
from kvs_edge.emulator.playback import Playback
from kvs_edge.emulator.store import ArchiveEntry, Store, StoreError, StreamStats

log = logging.getLogger(__name__)

# Documented demo credentials: the emulator accepts these unless told otherwise. Not secret, never valid on AWS.
DEFAULT_ACCESS_KEY_ID = "AKIAKVSEDGEEMULATOR0"
DEFAULT_SECRET_ACCESS_KEY = "kvs-edge-emulator-secret"

MAX_CONTROL_BODY = 1 << 20
READ_SIZE = 256 * 1024
STALL_BUFFER = 32 << 20  # what a stalled connection still takes off the socket before it stops reading
SERVER_NAME = b"kvs-edge-emulator"


class _Closed(Exception):
    """The peer went away."""


class Emulator:
    """A local Kinesis Video Streams endpoint. Use as a context manager, or start()/stop()."""

    def __init__(self, data_dir, host: str = "127.0.0.1", port: int = 0, tls_cert: str | None = None,
                 tls_key: str | None = None, access_key_id: str = DEFAULT_ACCESS_KEY_ID,
                 secret_access_key: str = DEFAULT_SECRET_ACCESS_KEY, region: str = "us-east-1",
                 persist_delay_s: float = 0.0, max_connection_s: float = 2700.0, idle_timeout_s: float = 30.0,
                 future_tolerance_s: float = 10.0, idle_ack_s: float | None = None, limits: Limits | None = None,
                 advertise_url: str | None = None):
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("TLS needs both a certificate and a key")
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        # What GetDataEndpoint answers: this URL when given, else the address the client reached (its Host header).
        self.advertise_url = advertise_url.rstrip("/") if advertise_url else None
        self.region = region
        self.persist_delay_s = persist_delay_s
        self.max_connection_s = max_connection_s
        self.idle_timeout_s = idle_timeout_s
        self.idle_ack_s = idle_ack_s
        self.limits = replace(limits or Limits(), future_tolerance_ms=int(future_tolerance_s * 1000))
        self.access_key_id = access_key_id
        self._credentials = {access_key_id: secret_access_key}
        self._ssl: ssl.SSLContext | None = None
        if tls_cert:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(tls_cert, tls_key)
        self.store = Store(self.data_dir, region)
        self.faults = Faults(on_offline=self._set_offline)
        self.playback = Playback(self.store)  # HLS streaming sessions (web.py serves them)
        self._listener: socket.socket | None = None
        self._listening = False
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._running = False
        self._accept_thread: threading.Thread | None = None
        self._session_seq = 0

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self._ssl else 'http'}://{host}:{self.port}"

    def data_endpoint(self, headers: dict) -> str:
        """The data endpoint GetDataEndpoint hands out ({"DataEndpoint": "https://s-xxxxxxxx.kinesisvideo...."} in
        AWS): --advertise-url when given; else the scheme and Host of the request, i.e. the address this client
        reached, which is the emulator's also through a port forwarder or a NAT (a guest VM's 10.0.2.100:PORT);
        the listening address only when a client sent no Host."""
        if self.advertise_url:
            return self.advertise_url
        scheme = "https" if self._ssl else "http"
        host = headers.get("host", "").strip()
        if host and all(c.isalnum() or c in ".-:[]_" for c in host):
            if not host.rsplit("]", 1)[-1].count(":"):
                # no port in Host (the C producer SDK sends just "localhost", as for AWS on 443): the port it reached
                if self.port != (443 if self._ssl else 80):
                    host = f"{host}:{self.port}"
            return f"{scheme}://{host}"
        return self.url

    def start(self) -> "Emulator":
        # Offline from the start (`--fault refuse=S`): the port is bound (so it is known and stays ours) but not
        # listening, which refuses connections; going online later starts listening on this very socket.
        self._listen(listening=not self.faults.offline)
        self._running = True
        self._accept_thread = threading.Thread(target=self._accept_loop, name="kvs-emulator-accept", daemon=True)
        self._accept_thread.start()
        # DEBUG: `kvs-edge emulator` prints its own start line (with region and credentials) on stdout
        log.debug("KVS emulator listening on %s (data in %s)", self.url, self.data_dir)
        return self

    def stop(self) -> None:
        self._running = False
        with self._lock:
            lst, self._listener = self._listener, None
            conns = list(self._conns)
        if lst:
            _shutdown(lst)
            lst.close()
        for c in conns:
            _shutdown(c)
        if self._accept_thread:
            self._accept_thread.join(5)
        for t in list(self._threads):
            t.join(5)

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_credentials(self, access_key_id: str, secret_access_key: str) -> None:
        """Accept another key pair as well (e.g. one a test's credential provider hands out)."""
        self._credentials[access_key_id] = secret_access_key

    def remove_credentials(self, access_key_id: str) -> None:
        """Stop accepting a key pair (as AWS does once temporary credentials expire)."""
        self._credentials.pop(access_key_id, None)

    # ---------------------------------------------------------------- Python API over the store
    def create_stream(self, name: str, retention_hours: int = 24) -> str:
        return self.store.create(name, retention_hours=retention_hours)["StreamARN"]

    def archive(self, stream: str) -> list[ArchiveEntry]:
        return self.store.archive(stream)

    def archive_files(self, stream: str) -> list[Path]:
        return self.store.archive_files(stream)

    def stats(self, stream: str) -> StreamStats:
        s = self.store.get(stream)
        with s.lock:
            st = s.stats
            return replace(st, error_acks=list(st.error_acks), http_errors=list(st.http_errors))

    # ---------------------------------------------------------------- sockets
    def _listen(self, listening: bool = True) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        if listening:
            s.listen(64)
        s.settimeout(0.2)
        self.port = s.getsockname()[1]
        with self._lock:
            self._listener = s
            self._listening = listening

    def _set_offline(self, offline: bool) -> None:
        if not self._running:
            return
        if offline:
            with self._lock:
                lst, self._listener = self._listener, None
                conns = list(self._conns)
            if lst:
                _shutdown(lst)  # stops listening at once (a close alone waits for the accept thread's poll)
                lst.close()
            for c in conns:
                _shutdown(c)
        else:
            with self._lock:
                bound = self._listener if not self._listening else None
                if bound is not None:
                    bound.listen(64)
                    self._listening = True
            if bound is None:
                self._listen()

    def _accept_loop(self) -> None:
        while self._running:
            lst = self._listener
            if lst is None or not self._listening:
                time.sleep(0.05)
                continue
            try:
                conn, addr = lst.accept()
            except (socket.timeout, OSError):
                continue
            conn.setblocking(True)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = threading.Thread(target=self._serve, args=(conn,), name=f"kvs-emulator-{addr[1]}", daemon=True)
            with self._lock:
                self._conns.add(conn)
                self._threads.add(t)
            t.start()

    def _serve(self, raw: socket.socket) -> None:
        conn = raw
        try:
            if self._ssl:
                raw.settimeout(10)
                conn = self._ssl.wrap_socket(raw, server_side=True)
                with self._lock:
                    self._conns.discard(raw)
                    self._conns.add(conn)
            conn.settimeout(self.idle_timeout_s + 5)
            h = h11.Connection(h11.SERVER)
            while self._running:
                ev = _next_event(h, conn)
                if isinstance(ev, h11.ConnectionClosed):
                    break
                if not isinstance(ev, h11.Request):
                    break
                keep = self._request(h, conn, ev)
                if not keep or h.our_state is h11.MUST_CLOSE or h.their_state is not h11.DONE:
                    break
                h.start_next_cycle()
        except (_Closed, OSError, ssl.SSLError, h11.ProtocolError) as e:
            log.debug("connection ended: %s", e)
        except Exception:  # noqa: BLE001 - a server thread must not die silently
            log.exception("emulator connection failed")
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._conns.discard(raw)
                self._threads.discard(threading.current_thread())
            _linger_close(conn)

    # ---------------------------------------------------------------- requests
    def _request(self, h: h11.Connection, conn: socket.socket, req: h11.Request) -> bool:
        target = req.target.decode("latin-1")
        path = unquote(urlsplit(target).path)
        method = req.method.decode()
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in req.headers}
        failure = self.faults.take_failure(path)
        if failure:
            status, etype, msg = failure
            if path == "/putMedia":  # answered before the (endless) body is read, then closed
                self._note_http_error(headers, status, etype)
                _send_error(h, conn, status, etype, msg)
                return False
            self._drain(h, conn)
            _send_error(h, conn, status, etype, msg)
            return True
        handled = web.dispatch(self, h, conn, method, target, path, headers)  # HLS, session URLs, the console
        if handled is not None:
            return handled
        if method == "GET" and path.startswith("/archive/"):
            self._drain(h, conn)
            try:
                entries = self.store.archive(path[len("/archive/"):])
            except StoreError as e:
                _send_error(h, conn, e.status, e.error_type, e.message)
                return True
            _send_json(h, conn, 200, [asdict(e) for e in entries])
            return True
        if path == "/putMedia" and method == "POST":
            return self._put_media(h, conn, target, headers)
        body = self._drain(h, conn, MAX_CONTROL_BODY)
        if body is None:
            _send_error(h, conn, 413, "InvalidArgumentException", "Request body too large.")
            return False
        if method == "POST" and path in read_http.OPERATIONS:  # ListFragments, GetMedia, GetClip, GetImages, ...
            return read_http.serve(self, h, conn, path, target, headers, body)
        if method != "POST" or path not in control.OPERATIONS:
            if path == "/" and method == "POST":
                _send_error(h, conn, 400, "SerializationException",
                            "Kinesis Video Streams routes by URI path (REST-JSON): POST /putMedia with an MKV body, "
                            "or a control-plane path such as /describeStream.")
            else:
                _send_error(h, conn, 404, "UnknownOperationException", f"Unknown operation {method} {path}")
            return True
        ok, out = self._signed_json(h, conn, method, target, headers, body,
                                    lambda doc: control.handle(self.store, path, doc, self.data_endpoint(headers)))
        if ok:
            _send_json(h, conn, 200, out)
        return True

    def _signed_json(self, h: h11.Connection, conn: socket.socket, method: str, target: str, headers: dict,
                     body: bytes, run) -> tuple[bool, object]:
        """Check SigV4, parse the JSON body and return (True, run(doc)); on any failure the AWS error is sent and
        (False, None) returned. Shared by the control plane and the read APIs."""
        try:
            self._authenticate(method, target, headers, body)
            return True, run(json.loads(body or b"{}"))
        except sigv4.AuthError as e:
            _send_error(h, conn, e.status, e.error_type, e.message)
        except json.JSONDecodeError:
            _send_error(h, conn, 400, "SerializationException", "The request body is not valid JSON.")
        except StoreError as e:
            _send_error(h, conn, e.status, e.error_type, e.message)
        return False, None

    def _authenticate(self, method: str, target: str, headers: dict, body: bytes) -> str:
        return sigv4.verify(method=method, target=target, headers=headers, body=body,
                            scheme="https" if self._ssl else "http", credentials=self._credentials,
                            region=self.region, now=time.time())

    def _drain(self, h: h11.Connection, conn: socket.socket, limit: int = MAX_CONTROL_BODY) -> bytes | None:
        """Read the whole (small) request body; None when it exceeds `limit`."""
        _continue(h, conn)
        parts, size = [], 0
        while True:
            ev = _next_event(h, conn)
            if isinstance(ev, h11.Data):
                size += len(ev.data)
                if size <= limit:
                    parts.append(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                return b"".join(parts) if size <= limit else None
            else:
                raise _Closed("connection closed inside a request body")

    def _note_http_error(self, headers: dict, status: int, etype: str) -> None:
        name = headers.get("x-amzn-stream-name")
        try:
            s = self.store.get(name) if name else None
        except StoreError:
            s = None
        if s is not None:
            with s.lock:
                s.stats.http_errors.append((status, etype))

    def _put_media(self, h: h11.Connection, conn: socket.socket, target: str, headers: dict) -> bool:
        def reject(status: int, etype: str, msg: str) -> bool:
            self._note_http_error(headers, status, etype)
            _send_error(h, conn, status, etype, msg)
            return False  # the body was not read: close the connection

        try:
            self._authenticate("POST", target, headers, b"")
        except sigv4.AuthError as e:
            return reject(e.status, e.error_type, e.message)
        name, arn = headers.get("x-amzn-stream-name"), headers.get("x-amzn-stream-arn")
        if (name is None) == (arn is None):
            return reject(400, "InvalidArgumentException",
                          "Specify exactly one of the x-amzn-stream-name and x-amzn-stream-arn headers.")
        try:
            stream = self.store.get(name, arn)
        except StoreError as e:
            return reject(e.status, e.error_type, e.message)
        tc_type = headers.get("x-amzn-fragment-timecode-type")
        if tc_type not in ("ABSOLUTE", "RELATIVE"):
            return reject(400, "InvalidArgumentException",
                          "x-amzn-fragment-timecode-type must be ABSOLUTE or RELATIVE.")
        start_ms = None
        if "x-amzn-producer-start-timestamp" in headers:
            try:
                start_ms = round(float(headers["x-amzn-producer-start-timestamp"]) * 1000)
            except ValueError:
                return reject(400, "InvalidArgumentException",
                              "x-amzn-producer-start-timestamp must be epoch seconds, e.g. 1700000000.000.")
        if tc_type == "RELATIVE" and start_ms is None:
            return reject(400, "InvalidArgumentException",
                          "RELATIVE timecodes need the x-amzn-producer-start-timestamp header.")
        with stream.lock:
            stream.stats.connections_total += 1
            stream.stats.max_concurrent = max(stream.stats.max_concurrent, stream.stats.active + 1)
            if stream.body_open >= 1:
                busy = True
            else:
                busy = False
                stream.body_open += 1
                stream.stats.active += 1
        with self._lock:
            self._session_seq += 1
            session_id = f"session-{int(time.time() * 1000):013d}-{self._session_seq:04d}"
        if busy:
            return reject(400, "ConnectionLimitExceededException",
                          "Kinesis Video Streams allows one PutMedia connection per stream; another one is open.")
        slot = [True]

        def release_slot() -> None:
            if slot[0]:
                slot[0] = False
                with stream.lock:
                    stream.body_open -= 1

        try:
            now = time.time()
            core = PutMediaIngest(stream.cursor, session_id=session_id, now=now, timecode_type=tc_type,
                                  producer_start_ms=start_ms,
                                  retention_hours=int(stream.info.get("DataRetentionInHours", 0)),
                                  persist_delay_s=self.persist_delay_s, idle_timeout_s=self.idle_timeout_s,
                                  idle_ack_s=self.idle_ack_s, max_connection_s=self.max_connection_s,
                                  limits=self.limits, error_hook=self.faults.fragment_error)
            _continue(h, conn)
            conn.sendall(h.send(h11.Response(status_code=200, headers=[
                (b"content-type", b"application/json"), (b"x-amzn-requestid", str(uuid.uuid4()).encode()),
                (b"server", SERVER_NAME)])))
            self._ingest(h, conn, core, stream, release_slot)
        finally:
            release_slot()
            with stream.lock:
                stream.stats.active -= 1
            self.store.save_cursor(stream)
        return False

    def _ingest(self, h, conn, core: PutMediaIngest, stream, release_slot) -> None:
        queue: collections.deque[tuple[float, bytes]] = collections.deque()
        drop_at = self.faults.take_drop()
        received = 0
        next_read = 0.0  # monotonic time before which the rate limit forbids reading
        body_done = False
        alive = True
        stalled_bytes = 0  # read (not processed) during the current stall

        def handle(outputs) -> None:
            delay = self.faults.ack_delay
            pending = list(outputs)
            while pending:
                o = pending.pop(0)
                if isinstance(o, StoreOut):
                    try:
                        self.store.store_fragment(stream, o.record)
                    except (StoreError, OSError) as e:
                        # Never PERSISTED for what is not in the archive: ERROR 5001 instead, which ends the
                        # connection (the producer resends); what else this batch had to archive is still tried.
                        log.error("cannot archive fragment %s of stream %s: %s", o.record.number,
                                  stream.info.get("StreamName"), getattr(e, "message", None) or e)
                        pending = core.archive_failed(o.record, str(e)) + [x for x in pending
                                                                            if isinstance(x, StoreOut)]
                elif isinstance(o, Ack):
                    with stream.lock:
                        if o.event_type == "RECEIVED":
                            stream.stats.fragments_received += 1
                        elif o.event_type == ERROR:
                            stream.stats.error_acks.append((o.error_id, o.timecode))
                    queue.append((time.monotonic() + delay, o.to_json()))
            flush()

        def flush() -> None:
            if not alive:
                queue.clear()
                return
            now = time.monotonic()
            out = []
            while queue and queue[0][0] <= now:
                # One ACK per HTTP chunk. The SDK hands every chunk curl delivers to its ACK parser (producer-c
                # Response.c postWriteCallback -> PIC kinesisVideoStreamParseFragmentAck), which takes the upload
                # handle once per call and forgets it after the first ACK it parses (PIC AckParser.c
                # processParsedAck -> resetAckParserState): a second ACK in the same chunk is dropped as "received
                # for an already expired upload handle". The SDK works against the real service, so the service
                # sends each ACK in its own chunk.
                out.append(h.send(h11.Data(data=queue.popleft()[1])))
            if out:
                conn.sendall(b"".join(out))

        try:
            while self._running:
                if core.finished and not queue:
                    break
                now_m = time.monotonic()
                stall = self.faults.stalled_for()
                if stall > 0 and not body_done:
                    # Stalled: nothing is processed or acknowledged. The front end still takes bytes off the
                    # socket (up to STALL_BUFFER, then it stops reading), as the service's TLS-terminating front
                    # end does: so it sees a client that gives up and closes (its FIN waits behind the data it
                    # had queued), and frees the stream's single connection slot for the client's next attempt.
                    if stalled_bytes < STALL_BUFFER:
                        conn.settimeout(min(stall, 0.1))
                        try:
                            data = conn.recv(min(READ_SIZE, STALL_BUFFER - stalled_bytes))
                        except (socket.timeout, ssl.SSLWantReadError):
                            continue
                        if not data:
                            raise _Closed("the client closed the connection while the server was stalled")
                        h.receive_data(data)  # held by h11 until the stall ends
                        stalled_bytes += len(data)
                        received += len(data)
                    else:
                        _stalled_wait(conn, min(stall, 0.1))
                    continue
                stalled_bytes = 0
                waits = []
                dl = core.deadline()
                if dl is not None:
                    waits.append(dl - time.time())
                if queue:
                    waits.append(queue[0][0] - now_m)
                if body_done or core.finished:
                    time.sleep(max(0.0, min(waits + [0.5])))
                    handle(core.poll(time.time()))
                    flush()
                    continue
                if next_read > now_m:
                    pause = min(waits + [next_read - now_m])
                    time.sleep(max(0.0, pause))
                    handle(core.poll(time.time()))
                    continue
                if _pump_events(h, stream, core, handle):  # events h11 already holds (read with the headers)
                    body_done = True
                    release_slot()
                    continue
                if core.finished:
                    continue
                timeout = max(0.001, min(waits)) if waits else None
                size = READ_SIZE
                rate = self.faults.rate
                if rate:
                    size = max(1, min(READ_SIZE, int(rate * 0.05)))
                if drop_at is not None:
                    size = max(1, min(size, drop_at - received))
                conn.settimeout(timeout)
                try:
                    data = conn.recv(size)
                except (socket.timeout, ssl.SSLWantReadError):
                    handle(core.poll(time.time()))
                    continue
                if rate:
                    next_read = max(next_read, time.monotonic()) + len(data) / rate
                while self._running and self.faults.stalled_for() > 0:  # a stall that began during this recv
                    _stalled_wait(conn, min(self.faults.stalled_for(), 0.1))
                h.receive_data(data)
                received += len(data)
                if _pump_events(h, stream, core, handle):
                    body_done = True
                    release_slot()
                if drop_at is not None and received >= drop_at and not body_done:
                    log.info("fault: dropping the PutMedia connection after %d bytes", received)
                    _abort(conn)
                    raise _Closed("dropped by fault")
            if self._running and alive:
                conn.sendall(h.send(h11.EndOfMessage()))
        except (_Closed, OSError, ssl.SSLError, h11.ProtocolError) as e:
            alive = False
            log.debug("PutMedia connection ended: %s", e)
            handle(core.abort(time.time()))
        finally:
            if not core.finished:
                handle(core.abort(time.time()))


def _pump_events(h: h11.Connection, stream, core: PutMediaIngest, handle) -> bool:
    """Feed every body event h11 can produce from what it holds to the core. True when the body ended."""
    while True:
        if core.finished:
            return False
        ev = h.next_event()
        if ev is h11.NEED_DATA or ev is h11.PAUSED:
            return False
        if isinstance(ev, h11.Data):
            with stream.lock:
                stream.stats.bytes_received += len(ev.data)
            handle(core.feed(ev.data, time.time()))
        elif isinstance(ev, h11.EndOfMessage):
            handle(core.end(time.time()))
            return True
        elif isinstance(ev, h11.ConnectionClosed):
            raise _Closed("client closed the connection")


def _stalled_wait(sock: socket.socket, seconds: float) -> None:
    """Wait without reading (a stalled server), but notice the client going away: a client that gives up on a
    stalled connection closes it, and its stream's single connection slot must be free for the next one (else every
    reconnect gets ConnectionLimitExceeded until the stall ends). Raises _Closed when the peer closed or reset."""
    p = select.poll()
    p.register(sock.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    if p.poll(max(0, int(seconds * 1000))):
        raise _Closed("the client closed the connection while the server was stalled")


def _continue(h: h11.Connection, conn: socket.socket) -> None:
    """`100 Continue` to a client that sent `Expect: 100-continue` (curl, hence the SDK, does on every PutMedia and
    waits up to a second or more for it before sending the body, RFC 9110 section 10.1.1)."""
    if h.they_are_waiting_for_100_continue:
        conn.sendall(h.send(h11.InformationalResponse(status_code=100, headers=[])))


def _next_event(h: h11.Connection, conn: socket.socket):
    while True:
        ev = h.next_event()
        if ev is h11.NEED_DATA:
            data = conn.recv(READ_SIZE)
            h.receive_data(data)
            if not data and h.their_state is h11.IDLE:
                return h11.ConnectionClosed()
            continue
        return ev


def _send_json(h: h11.Connection, conn: socket.socket, status: int, obj, extra: list | None = None) -> None:
    body = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-amzn-requestid", str(uuid.uuid4()).encode()), (b"server", SERVER_NAME)] + (extra or [])
    conn.sendall(h.send(h11.Response(status_code=status, headers=headers)) + h.send(h11.Data(data=body))
                 + h.send(h11.EndOfMessage()))


def _send_error(h: h11.Connection, conn: socket.socket, status: int, error_type: str, message: str) -> None:
    """An AWS REST-JSON error: x-amzn-ErrorType header, JSON body with the message."""
    if h.our_state is not h11.SEND_RESPONSE:
        return
    _send_json(h, conn, status, {"__type": error_type, "Message": message},
               [(b"x-amzn-errortype", error_type.encode())])


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _linger_close(sock: socket.socket, seconds: float = 1.0, max_bytes: int = 8 << 20) -> None:
    """Close without destroying what we sent: half-close, then read (and discard) what the client still sends for a
    moment. Closing with unread input makes the kernel send a reset, which can wipe our last response or ACK from
    the client's receive buffer before it reads it."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        got = 0
        while got < max_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                break
            got += len(data)
    except (OSError, ValueError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass


def _abort(sock: socket.socket) -> None:
    """Close with a TCP reset, as a dropped connection looks to the client."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
