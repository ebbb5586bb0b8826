"""The PutMedia transport against real servers on loopback: signing, TLS, full duplex, errors, backoff.

The KVS emulator is the main server for end-to-end tests (test_uploader.py); here a small h11 server scripted per test
gives exact control of timing and error responses. Signatures are checked with botocore (kvs_edge.emulator.sigv4).
"""

from __future__ import annotations

import hashlib
import random
import socket
import ssl
import threading
import time

import h11
import pytest
import trustme
from botocore.credentials import Credentials

from kvs_edge.kvs.acks import Ack
from kvs_edge.kvs.transport import (
    ConnectionLost, PutMediaConnection, TransportError, http_error, producer_timestamp, signed_request)

AKID, SECRET, TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "FwoGZXIvYXdzEXAMPLETOKEN"
CREDS = Credentials(AKID, SECRET, TOKEN).get_frozen_credentials()


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory):
    p = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(p))
    return str(p)


class ScriptedServer:
    """A real HTTP/1.1 (+TLS) server on 127.0.0.1 running `handler(server_conn, h11conn, request)` per connection."""

    def __init__(self, handler, ca=None):
        self.handler = handler
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.ctx = None
        if ca is not None:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(self.ctx)
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}"
        self.requests = []
        self.errors = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            sock, _ = self.lsock.accept()
        except OSError:
            return
        try:
            if self.ctx:
                sock = self.ctx.wrap_socket(sock, server_side=True)
            sock.settimeout(10)
            conn = h11.Connection(h11.SERVER)
            req = next_event(sock, conn)
            self.requests.append(req)
            self.handler(sock, conn, req)
        except Exception as e:  # reported by the test
            self.errors.append(e)
        finally:
            lingering_close(sock)
            self.lsock.close()


def lingering_close(sock):
    """Close as a well-behaved server does: stop writing, read what the client still sends for a moment, close."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.5)
        end = time.monotonic() + 1.0
        while time.monotonic() < end and sock.recv(65536):
            pass
    except OSError:
        pass
    sock.close()


def next_event(sock, conn):
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
            continue
        return ev


def body_until_end(sock, conn):
    data = bytearray()
    while True:
        ev = next_event(sock, conn)
        if isinstance(ev, h11.Data):
            data += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            return bytes(data)


def respond(sock, conn, status=200, headers=(), body=None):
    hs = [("Content-Type", "application/json")] + list(headers)
    if body is None:
        hs.append(("Transfer-Encoding", "chunked"))
    else:
        hs.append(("Content-Length", str(len(body))))
    sock.sendall(conn.send(h11.Response(status_code=status, headers=hs)))
    if body is not None:
        sock.sendall(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))


def open_conn(url, ca_file=None, **kw):
    target, headers = signed_request(url, stream_name="cam1", region="eu-west-1", credentials=CREDS,
                                     producer_start_ms=1_700_000_000_005)
    return PutMediaConnection.open(url, target, headers, stream_name="cam1", region="eu-west-1", ca_bundle=ca_file,
                                   **kw)


def pump_until(conn, pred, timeout=10.0):
    got = []
    end = time.monotonic() + timeout
    while not pred(got):
        assert time.monotonic() < end, f"timed out; got {got}"
        got += conn.poll(0.05)
    return got


# ------------------------------------------------------------------ signing


def test_signed_request_is_what_the_c_sdk_sends_and_verifies_with_botocore():
    from kvs_edge.emulator import sigv4

    target, headers = signed_request("https://s-1234.kinesisvideo.eu-west-1.amazonaws.com", stream_name="cam1",
                                     region="eu-west-1", credentials=CREDS, producer_start_ms=1_700_000_000_005)
    h = {k.lower(): v for k, v in headers}
    assert target == "/putMedia"
    assert h["host"] == "s-1234.kinesisvideo.eu-west-1.amazonaws.com"
    assert h["x-amzn-stream-name"] == "cam1"
    assert h["x-amzn-fragment-timecode-type"] == "ABSOLUTE"
    assert h["x-amzn-producer-start-timestamp"] == "1700000000.005"
    assert h["x-amzn-fragment-acknowledgment-required"] == "1"
    assert h["user-agent"].startswith("kvs-edge/")
    assert h["connection"] == "keep-alive" and h["transfer-encoding"] == "chunked"
    assert h["x-amz-security-token"] == TOKEN
    assert "x-amz-content-sha256" not in h
    assert h["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={AKID}/")
    assert "/eu-west-1/kinesisvideo/aws4_request" in h["authorization"]
    assert SECRET not in " ".join(v for _, v in headers)
    # recompute the signature with botocore over an empty payload (hash of b"")
    assert sigv4.verify(method="POST", target=target, headers=h, body=b"", scheme="https",
                        credentials={AKID: SECRET}, region="eu-west-1", now=time.time()) == AKID
    with pytest.raises(sigv4.AuthError):
        sigv4.verify(method="POST", target=target, headers=h, body=b"", scheme="https",
                     credentials={AKID: "wrong"}, region="eu-west-1", now=time.time())
    assert hashlib.sha256(b"").hexdigest() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_host_header_keeps_a_non_default_port_and_a_path_prefix():
    target, headers = signed_request("https://127.0.0.1:8443/base/", stream_name="s", region="us-east-1",
                                     credentials=Credentials("A", "B").get_frozen_credentials(), producer_start_ms=0)
    h = dict((k.lower(), v) for k, v in headers)
    assert target == "/base/putMedia" and h["host"] == "127.0.0.1:8443"
    assert "x-amz-security-token" not in h


@pytest.mark.parametrize("ms,text", [(0, "0.000"), (1_700_000_000_005, "1700000000.005"),
                                      (1_700_000_000_050, "1700000000.050"), (1_700_000_000_999, "1700000000.999")])
def test_producer_start_timestamp_has_zero_padded_milliseconds(ms, text):
    assert producer_timestamp(ms) == text


# ------------------------------------------------------------------ full duplex over TLS


def test_acks_arrive_while_the_body_is_still_open_over_tls(ca, ca_file):
    first_bytes = threading.Event()
    release = threading.Event()
    received = {}

    def handler(sock, conn, req):
        respond(sock, conn)  # 200 before reading the body, as KVS does
        ev = next_event(sock, conn)
        assert isinstance(ev, h11.Data)
        first_bytes.set()
        ack = b'{"EventType":"BUFFERING","FragmentTimecode":1700000000000,"FragmentNumber":"1"}\n'
        sock.sendall(conn.send(h11.Data(data=ack[:30])))
        time.sleep(0.05)
        sock.sendall(conn.send(h11.Data(data=ack[30:])))
        rest = body_until_end(sock, conn)
        received["body"] = bytes(ev.data) + rest
        release.wait(5)
        sock.sendall(conn.send(h11.Data(data=b'{"EventType":"PERSISTED","FragmentTimecode":1700000000000}\n')))
        sock.sendall(conn.send(h11.EndOfMessage()))

    srv = ScriptedServer(handler, ca)
    c = open_conn(srv.url, ca_file)
    c.write(b"first")
    acks = pump_until(c, lambda g: g)
    assert acks == [Ack("BUFFERING", 1700000000000, "1")]
    assert c.response.status == 200
    # the body is still open: keep writing a few MB in odd sizes, reading as we go
    rng = random.Random(3)
    sent = bytearray(b"first")
    while len(sent) < 3_000_000:
        piece = rng.randbytes(rng.randint(1, 200_000))
        while not c.writable:
            assert c.poll(0.05) == []
        c.write(piece)
        sent += piece
        c.poll(0)
    c.end_body()
    release.set()
    acks = pump_until(c, lambda g: g)
    assert acks == [Ack("PERSISTED", 1700000000000)]
    with pytest.raises(ConnectionLost) as ei:
        pump_until(c, lambda g: False)
    assert "ended the response" in str(ei.value)
    srv.thread.join(5)
    assert not srv.errors
    assert received["body"] == bytes(sent)
    req = srv.requests[0]
    assert req.target == b"/putMedia" and req.method == b"POST"
    assert dict(req.headers)[b"transfer-encoding"] == b"chunked"


# ACK lines as the SDK logged them from the real service (producer-sdk-cpp#226 for the ERROR), numbers from KVS docs
SERVICE_ACKS = [
    b'{"EventType":"BUFFERING","FragmentTimecode":1700000000000,'
    b'"FragmentNumber":"91343852333181442301154137053453109232642451704"}\n',
    b'{"EventType":"RECEIVED","FragmentTimecode":1700000000000,'
    b'"FragmentNumber":"91343852333181442301154137053453109232642451704"}\n',
    b'{"EventType":"PERSISTED","FragmentTimecode":1700000000000,'
    b'"FragmentNumber":"91343852333181442301154137053453109232642451704"}\n',
    b'{"EventType":"IDLE"}\n',
    b'{"EventType":"ERROR","FragmentTimecode":0,"FragmentNumber":"91343852333181571046918222741096071001568090649",'
    b'"ErrorCode":"FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS","ErrorId":4004}\n',
    b'{"EventType":"ERROR","ErrorCode":"INVALID_MKV_DATA","ErrorId":4006}\n',  # producer-sdk-cpp#315
]


@pytest.mark.parametrize("framing", ["one ACK per chunk", "all ACKs in one chunk"])
def test_acks_are_read_whatever_the_chunk_framing(ca, ca_file, framing):
    """KVS sends one ACK per HTTP chunk (the SDK's parser needs it); the client must not depend on it either way."""
    def handler(sock, conn, req):
        respond(sock, conn)
        assert isinstance(next_event(sock, conn), h11.Data)
        if framing == "one ACK per chunk":
            wire = b"".join(conn.send(h11.Data(data=a)) for a in SERVICE_ACKS)
        else:
            wire = conn.send(h11.Data(data=b"".join(SERVICE_ACKS)))
        sock.sendall(wire)
        body_until_end(sock, conn)
        sock.sendall(conn.send(h11.EndOfMessage()))

    srv = ScriptedServer(handler, ca)
    c = open_conn(srv.url, ca_file)
    c.write(b"mkv bytes")
    acks = pump_until(c, lambda g: len(g) >= len(SERVICE_ACKS))
    assert acks == [Ack("BUFFERING", 1700000000000, "91343852333181442301154137053453109232642451704"),
                    Ack("RECEIVED", 1700000000000, "91343852333181442301154137053453109232642451704"),
                    Ack("PERSISTED", 1700000000000, "91343852333181442301154137053453109232642451704"),
                    Ack("IDLE"),
                    Ack("ERROR", 0, "91343852333181571046918222741096071001568090649",
                        4004, "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS"),
                    Ack("ERROR", None, None, 4006, "INVALID_MKV_DATA")]
    c.end_body()
    with pytest.raises(ConnectionLost):
        pump_until(c, lambda g: False)
    srv.thread.join(5)
    assert not srv.errors


def test_untrusted_certificate_is_one_clear_line(ca):
    srv = ScriptedServer(lambda *a: None, ca)
    with pytest.raises(TransportError) as ei:
        open_conn(srv.url, None, connect_timeout_s=5)
    msg = str(ei.value)
    assert "not trusted" in msg and "aws.ca_bundle" in msg and "\n" not in msg


def test_connection_refused_is_a_retryable_clear_error():
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(TransportError) as ei:
        open_conn(f"http://127.0.0.1:{port}")
    assert ei.value.retryable and ei.value.refresh_endpoint and f"127.0.0.1:{port}" in str(ei.value)


def test_missing_ca_bundle_file_is_not_retryable(tmp_path):
    srv = ScriptedServer(lambda *a: None, trustme.CA())
    with pytest.raises(TransportError) as ei:
        open_conn(srv.url, str(tmp_path / "nope.pem"))
    assert not ei.value.retryable and "aws.ca_bundle" in str(ei.value)


def test_no_response_head_within_the_timeout(ca, ca_file):
    hold = threading.Event()
    srv = ScriptedServer(lambda sock, conn, req: hold.wait(5), ca)
    c = open_conn(srv.url, ca_file, response_timeout_s=0.5)
    with pytest.raises(TransportError) as ei:
        pump_until(c, lambda g: False)
    assert not hold.is_set()  # the client gave up by itself while the server was still holding the request
    hold.set()
    assert "no response" in str(ei.value) and not isinstance(ei.value, ConnectionLost)


def test_server_reset_mid_body_raises_connection_lost_with_the_acks_read_before(ca, ca_file):
    def handler(sock, conn, req):
        respond(sock, conn)
        next_event(sock, conn)
        sock.sendall(conn.send(h11.Data(data=b'{"EventType":"RECEIVED","FragmentTimecode":7}\n')))
        time.sleep(0.1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    srv = ScriptedServer(handler, ca)
    c = open_conn(srv.url, ca_file)
    c.write(b"x" * 1000)
    got = []
    with pytest.raises(ConnectionLost):
        end = time.monotonic() + 10
        while time.monotonic() < end:
            got += c.poll(0.05)
            if c.writable:
                c.write(b"y" * 10000)
    assert got == [Ack("RECEIVED", 7)]  # the ACK read before the reset is delivered, then the loss


@pytest.mark.parametrize("status,headers,body,check", [
    (403, [("x-amzn-ErrorType", "InvalidSignatureException:http://internal")],
     b'{"message":"Signature expired: 20240101T000000Z is now earlier than 20240101T000600Z"}',
     lambda e: "clock" in str(e) and "NTP" in str(e)),
    (403, [("x-amzn-ErrorType", "AccessDeniedException")], b'{"message":"User is not authorized"}',
     lambda e: "kinesisvideo:PutMedia" in str(e) and "cam1" in str(e)),
    (404, [("x-amzn-ErrorType", "ResourceNotFoundException")], b'{"message":"Stream not found"}',
     lambda e: "cam1" in str(e) and "eu-west-1" in str(e) and "create" in str(e)),
    (400, [("x-amzn-ErrorType", "ClientLimitExceededException")], b'{"message":"slow down"}',
     lambda e: e.throttled and e.retryable),
    (400, [], b'{"__type":"ConnectionLimitExceededException","message":"one connection"}',
     lambda e: e.throttled),
    (400, [("x-amzn-ErrorType", "InvalidEndpointException")], b'{"message":"wrong endpoint"}',
     lambda e: e.refresh_endpoint and "endpoint" in str(e)),
    (503, [], b"<html>busy</html>", lambda e: e.retryable and "503" in str(e)),
])
def test_http_errors_over_tls_are_mapped_to_one_line(ca, ca_file, status, headers, body, check):
    srv = ScriptedServer(lambda sock, conn, req: respond(sock, conn, status, headers, body), ca)
    c = open_conn(srv.url, ca_file)
    c.write(b"header bytes")
    with pytest.raises(TransportError) as ei:
        pump_until(c, lambda g: False)
    e = ei.value
    assert not isinstance(e, ConnectionLost)
    assert e.status == status and check(e), str(e)
    assert "\n" not in str(e) and SECRET not in str(e) and TOKEN not in str(e)


def test_http_error_mapping_without_a_server_body():
    e = http_error(500, {}, b"", stream_name="s", region="r")
    assert e.retryable and "500" in str(e)


def test_dns_failure_is_retryable_and_refetches_the_endpoint():
    with pytest.raises(TransportError) as ei:
        open_conn("https://kvs-edge-test.invalid")
    e = ei.value
    assert e.retryable and e.refresh_endpoint
    assert "cannot resolve kvs-edge-test.invalid" in str(e) and "\n" not in str(e)
