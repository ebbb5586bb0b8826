"""A small PutMedia test client: h11 over a (TLS) socket, full duplex, signed with botocore's SigV4Auth.

Independent of kvs_edge's own uploader on purpose: the emulator's tests must not depend on the code they will later
test. Also `put_media_requests()`: the same request sent by `requests` with a generator body (a stock HTTP client).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import time
from typing import Iterable
from unittest import mock
from urllib.parse import urlsplit

import h11
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY


def signed_headers(url: str, headers: dict[str, str], *, body: bytes = b"", access_key_id=DEFAULT_ACCESS_KEY_ID,
                   secret_access_key=DEFAULT_SECRET_ACCESS_KEY, region="us-east-1",
                   when: dt.datetime | None = None) -> dict[str, str]:
    """Headers + X-Amz-Date + Authorization, as the KVS SDKs sign PutMedia (empty-payload hash)."""
    req = AWSRequest(method="POST", url=url, headers=dict(headers), data=body)
    auth = SigV4Auth(Credentials(access_key_id, secret_access_key), "kinesisvideo", region)
    if when is None:
        auth.add_auth(req)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            auth.add_auth(req)
    return dict(req.headers.items())


def put_media_headers(url: str, stream: str, *, timecode_type="ABSOLUTE", producer_start: float | None = None,
                      **sign) -> dict[str, str]:
    h = {"x-amzn-stream-name": stream, "x-amzn-fragment-timecode-type": timecode_type,
         "x-amzn-fragment-acknowledgment-required": "1"}
    if producer_start is not None:
        h["x-amzn-producer-start-timestamp"] = f"{producer_start:.3f}"
    return signed_headers(url.rstrip("/") + "/putMedia", h, **sign)


def parse_acks(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.split(b"\n") if line.strip()]


class PutMediaClient:
    """One PutMedia request, driven step by step: send part of the body, read the ACKs so far, send more..."""

    def __init__(self, url: str, stream: str, *, ca_file: str | None = None, headers: dict[str, str] | None = None,
                 timeout: float = 10.0, extra_headers: dict[str, str] | None = None, **kw):
        self.url = url.rstrip("/")
        u = urlsplit(self.url)
        self.headers = headers if headers is not None else put_media_headers(self.url, stream, **kw)
        self.headers = {**self.headers, **(extra_headers or {})}
        raw = socket.create_connection((u.hostname, u.port), timeout=timeout)
        if u.scheme == "https":
            ctx = ssl.create_default_context(cafile=ca_file)
            raw = ctx.wrap_socket(raw, server_hostname=u.hostname)
        self.sock = raw
        self.timeout = timeout
        self.h = h11.Connection(h11.CLIENT)
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self.error_body: dict | None = None
        self.ended = False  # the response ended (the server closed the request)
        self._buf = b""
        self.acks: list[dict] = []  # every ACK read so far
        self.chunks: list[bytes] = []  # the response body's HTTP chunks as they were framed on the wire
        self.informational: list[int] = []  # 1xx responses before the final one (100 Continue)
        hdrs = [("host", u.netloc), ("transfer-encoding", "chunked")] + [
            (k, v) for k, v in self.headers.items() if k.lower() != "host"]
        self.sock.sendall(self.h.send(h11.Request(method="POST", target="/putMedia", headers=hdrs)))

    def response(self, timeout: float | None = None) -> int:
        """Wait for the response head (KVS sends it before reading the body). Returns the HTTP status."""
        while self.status is None:
            ev = self._next(timeout or self.timeout)
            if isinstance(ev, h11.InformationalResponse):
                self.informational.append(ev.status_code)
            elif isinstance(ev, h11.Response):
                self.status = ev.status_code
                self.response_headers = {k.decode(): v.decode() for k, v in ev.headers}
            elif ev is None:
                raise TimeoutError("no response head")
        if self.status != 200 and self.error_body is None:
            body = b""
            while True:
                ev = self._next(timeout or self.timeout)
                if isinstance(ev, h11.Data):
                    body += ev.data
                elif ev is None or isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            self.error_body = json.loads(body) if body else {}
            self.ended = True
        return self.status

    def send(self, data: bytes) -> None:
        if data:
            self.sock.sendall(self.h.send(h11.Data(data=data)))

    def finish(self) -> None:
        """End the body cleanly (the chunked terminator)."""
        self.sock.sendall(self.h.send(h11.EndOfMessage()))

    def abort(self) -> None:
        """Drop the connection without ending the body (a TCP reset), as a lost network looks to the server."""
        import struct

        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def read_acks(self, timeout: float = 0.5, until=None) -> list[dict]:
        """ACKs arriving within `timeout` (or until `until(ack)` is true for one, or the response ends)."""
        if self.status is None:
            self.response()
        got: list[dict] = []
        deadline = time.monotonic() + timeout
        while not self.ended:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ev = self._next(left)
            if ev is None:
                break
            if isinstance(ev, h11.Data):
                if ev.chunk_start or not self.chunks:
                    self.chunks.append(b"")
                self.chunks[-1] += ev.data
                self._buf += ev.data
                *lines, self._buf = self._buf.split(b"\n")
                new = [json.loads(x) for x in lines if x.strip()]
                got += new
                self.acks += new
                if until and any(until(a) for a in new):
                    break
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                self.ended = True
        return got

    def read_until_end(self, timeout: float = 10.0) -> list[dict]:
        got = self.read_acks(timeout)
        if not self.ended:
            raise TimeoutError("the response did not end")
        return got

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _next(self, timeout: float):
        while True:
            ev = self.h.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            except (ConnectionResetError, ssl.SSLError):
                return h11.ConnectionClosed()
            self.h.receive_data(data)
            if not data:
                try:
                    return self.h.next_event()
                except h11.RemoteProtocolError:
                    return h11.ConnectionClosed()


def put_media_requests(url: str, stream: str, data: bytes | Iterable[bytes], *, chunk_size: int = 8192,
                       ca_file: str | None = None, timeout: float = 30.0, **kw) -> tuple[int, list[dict], dict]:
    """Send a whole body with `requests` (chunked, from a generator), then read the response.
    Returns (status, ACKs, error body or {})."""
    headers = put_media_headers(url, stream, **kw)

    def body():
        if isinstance(data, (bytes, bytearray)):
            for i in range(0, len(data), chunk_size):
                yield bytes(data[i:i + chunk_size])
        else:
            yield from data

    r = requests.post(url.rstrip("/") + "/putMedia", data=body(), headers=headers, timeout=timeout,
                      verify=ca_file if ca_file else True)
    if r.status_code != 200:
        return r.status_code, [], r.json()
    return r.status_code, parse_acks(r.content), {}


# ------------------------------------------------------------------ test streams: the SDK's, broken the ways KVS rejects
# Byte surgery on a real SDK stream, located with the EBML reader; each returns new bytes.

from kvs_edge.media import ebml as _ebml  # noqa: E402


def _clusters(data: bytes) -> list[dict]:
    out: list[dict] = []
    for ev in _ebml.iter_events(data):
        if isinstance(ev, _ebml.Start) and ev.id == _ebml.CLUSTER:
            out.append({"offset": ev.offset, "blocks": []})
        elif isinstance(ev, _ebml.Leaf) and ev.id == _ebml.TIMECODE:
            out[-1]["timecode_at"] = ev.offset + ev.header_size
            out[-1]["timecode"] = int.from_bytes(ev.data, "big")
        elif isinstance(ev, _ebml.Leaf) and ev.id == _ebml.SIMPLE_BLOCK:
            out[-1]["blocks"].append(ev.offset + ev.header_size)  # where the block's track vint starts
    return out


def cluster_timecodes(data: bytes) -> list[int]:
    return [c["timecode"] for c in _clusters(data)]


def block_count(data: bytes) -> int:
    return sum(len(c["blocks"]) for c in _clusters(data))


def set_cluster_timecode(data: bytes, index: int, timecode: int) -> bytes:
    c = _clusters(data)[index]
    out = bytearray(data)
    out[c["timecode_at"]:c["timecode_at"] + 8] = timecode.to_bytes(8, "big")
    return bytes(out)


def set_block(data: bytes, cluster: int, block: int, *, rel_timecode: int | None = None, track: int | None = None,
              first_nal_length: int | None = None) -> bytes:
    """Rewrite a SimpleBlock's header (1-byte track vint, int16 relative timecode) or its first AVCC length field."""
    at = _clusters(data)[cluster]["blocks"][block]
    out = bytearray(data)
    if track is not None:
        out[at] = 0x80 | track
    if rel_timecode is not None:
        out[at + 1:at + 3] = rel_timecode.to_bytes(2, "big", signed=True)
    if first_nal_length is not None:
        out[at + 4:at + 8] = first_nal_length.to_bytes(4, "big")
    return bytes(out)


def insert_before_cluster(data: bytes, index: int, blob: bytes) -> bytes:
    at = _clusters(data)[index]["offset"]
    return data[:at] + blob + data[at:]


def tags_element(names: list[str]) -> bytes:
    """A Tags element with one SimpleTag per name (value "v"), as the SDK writes fragment metadata."""
    simple = b"".join(_ebml.encode_element(_ebml.SIMPLE_TAG, _ebml.encode_element(_ebml.TAG_NAME, n.encode())
                                           + _ebml.encode_element(_ebml.TAG_STRING, b"v")) for n in names)
    return _ebml.encode_element(_ebml.TAGS, _ebml.encode_element(_ebml.TAG, simple))


def split_at_clusters(data: bytes) -> list[bytes]:
    """[session header, cluster 0 (with anything before cluster 1), cluster 1, ...]."""
    offs = [c["offset"] for c in _clusters(data)] + [len(data)]
    return [data[:offs[0]]] + [data[a:b] for a, b in zip(offs, offs[1:])]
