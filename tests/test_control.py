"""Control plane: against moto's kinesisvideo server (an independent implementation), our emulator, and a loopback
server that answers with AWS's REST-JSON error shapes for the failures neither of those can produce (IAM denials,
clock skew, throttling)."""

from __future__ import annotations

import http.server
import json
import logging
import ssl
import threading
import time
import uuid

import botocore.session
import pytest
import trustme
from botocore.credentials import Credentials

from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from kvs_edge.kvs.control import ControlPlane, ControlPlaneError, DataEndpoint
from support.pki import server_files

REGION = "eu-west-1"
ACCESS_KEY = "AKIAKVSEDGETEST00001"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYkvsEdgeSecret"


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text
    assert SECRET not in text
    return text


def unique(prefix="cam") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------------------------------------------
# moto


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_cp(moto_url):
    cp = ControlPlane(REGION, Credentials(ACCESS_KEY, SECRET), endpoint_url=moto_url)
    yield cp
    cp.close()


@pytest.fixture
def moto_client(moto_url):
    """A plain botocore client: the independent view of what our code did."""
    client = botocore.session.Session().create_client(
        "kinesisvideo", region_name=REGION, endpoint_url=moto_url,
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET)
    yield client
    client.close()


def test_moto_missing_stream_says_how_to_create_it(moto_cp):
    name = unique()
    with pytest.raises(ControlPlaneError) as err:
        moto_cp.describe_stream(name)
    msg = one_line(err.value)
    assert err.value.code == "ResourceNotFoundException"
    assert f"'{name}'" in msg and REGION in msg and "stream.create: true" in msg
    assert f"aws kinesisvideo create-stream --stream-name {name} --data-retention-in-hours 24 --region {REGION}" in msg
    with pytest.raises(ControlPlaneError) as err2:
        moto_cp.ensure_stream(name, create=False)
    assert err2.value.code == "ResourceNotFoundException"


def test_moto_ensure_stream_creates_only_when_asked(moto_cp, moto_client):
    name = unique()
    info = moto_cp.ensure_stream(name, create=True, retention_hours=48)
    assert info["StreamName"] == name and info["Status"] == "ACTIVE"
    seen = moto_client.describe_stream(StreamName=name)["StreamInfo"]
    assert seen["DataRetentionInHours"] == 48 and seen["MediaType"] == "video/h264"
    assert seen["StreamARN"] == info["StreamARN"]
    # a second start finds it and creates nothing (moto would answer ResourceInUseException to a second create)
    again = moto_cp.ensure_stream(name, create=True, retention_hours=48)
    assert again["StreamARN"] == info["StreamARN"]
    assert [s["StreamName"] for s in moto_client.list_streams()["StreamInfoList"]].count(name) == 1


def test_moto_keeps_data_follows_retention(moto_cp, moto_client):
    kept, live = unique("kept"), unique("live")
    moto_client.create_stream(StreamName=kept, DataRetentionInHours=24)
    moto_client.create_stream(StreamName=live, DataRetentionInHours=0)
    assert moto_cp.keeps_data(kept) is True
    assert moto_cp.keeps_data(live) is False


def test_moto_data_endpoint_is_cached_until_invalidated(moto_cp, moto_client):
    name = unique()
    arn = moto_client.create_stream(StreamName=name, DataRetentionInHours=24)["StreamARN"]
    expected = moto_client.get_data_endpoint(StreamName=name, APIName="PUT_MEDIA")["DataEndpoint"]
    handle = DataEndpoint(moto_cp, name)
    assert handle.get() == expected
    moto_client.delete_stream(StreamARN=arn)
    assert handle.get() == expected  # cached: no second GetDataEndpoint
    handle.invalidate()
    with pytest.raises(ControlPlaneError) as err:  # asked again: the stream is gone now
        handle.get()
    assert err.value.code == "ResourceNotFoundException" and err.value.operation == "GetDataEndpoint"


def test_unreachable_endpoint_says_network(moto_url):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cp = ControlPlane(REGION, Credentials(ACCESS_KEY, SECRET), endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1)
    with pytest.raises(ControlPlaneError) as err:
        cp.data_endpoint("cam")
    msg = one_line(err.value)
    assert "network or DNS" in msg and f"127.0.0.1:{port}" in msg and err.value.code == "EndpointConnectionError"


# ---------------------------------------------------------------------------------------------------------------
# AWS error shapes from a loopback server


class AwsErrors:
    """Answers each request with the next scripted response, in KVS's REST-JSON shape; records what came in."""

    def __init__(self, tls: tuple | None = None):
        self.script: list[tuple[int, str | None, dict]] = []
        self.requests: list[tuple[str, dict]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.requests.append((self.path, dict(self.headers), body))
                status, code, payload = owner.script.pop(0) if owner.script else (500, "InternalFailure", {})
                data = json.dumps(payload).encode()
                self.send_response(status)
                if code:
                    self.send_header("x-amzn-ErrorType", f"{code}:http://internal.amazon.com/coral/com.amazon.coral/")
                self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def error(self, status: int, code: str, message: str) -> None:
        self.script.append((status, code, {"message": message}))

    def ok(self, payload: dict) -> None:
        self.script.append((200, None, payload))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def aws():
    server = AwsErrors()
    yield server
    server.close()


def control(url: str, creds=None, **kw) -> ControlPlane:
    return ControlPlane(REGION, creds or Credentials(ACCESS_KEY, SECRET), endpoint_url=url, max_attempts=1,
                        sleep=lambda s: None, **kw)


@pytest.mark.parametrize("call, action", [
    (lambda cp: cp.describe_stream("cam"), "kinesisvideo:DescribeStream"),
    (lambda cp: cp.data_endpoint("cam"), "kinesisvideo:GetDataEndpoint"),
])
def test_access_denied_names_the_iam_action(aws, call, action):
    aws.error(401, "AccessDeniedException",
              f"User: arn:aws:iam::123456789012:user/cam is not authorized to perform: {action}")
    with pytest.raises(ControlPlaneError) as err:
        call(control(aws.url))
    msg = one_line(err.value)
    assert f"access denied to {action}" in msg and "'cam'" in msg and "IAM policy" in msg


def test_access_denied_on_create_names_create_stream(aws):
    aws.error(404, "ResourceNotFoundException", "The requested stream is not found or not active.")
    aws.error(401, "AccessDeniedException", "not authorized to perform: kinesisvideo:CreateStream")
    with pytest.raises(ControlPlaneError) as err:
        control(aws.url).ensure_stream("cam", create=True)
    assert "kinesisvideo:CreateStream" in one_line(err.value)
    create_body = json.loads(aws.requests[1][2])
    assert aws.requests[1][0] == "/createStream"
    assert create_body["StreamName"] == "cam" and create_body["DataRetentionInHours"] == 24


@pytest.mark.parametrize("status, code, message, expect", [
    (403, "InvalidSignatureException",
     "Signature expired: 20240101T000000Z is now earlier than 20240101T001000Z (20240101T001500Z - 5 min.)",
     "clock is wrong"),
    (403, "InvalidSignatureException",
     "The request signature we calculated does not match the signature you provided.", "secret access key"),
    (403, "UnrecognizedClientException", "The security token included in the request is invalid.",
     "does not accept these credentials"),
    (403, "ExpiredTokenException", "The security token included in the request is expired", "expired"),
])
def test_credential_and_clock_errors_say_what_to_fix(aws, status, code, message, expect):
    aws.error(status, code, message)
    with pytest.raises(ControlPlaneError) as err:
        control(aws.url).describe_stream("cam")
    msg = one_line(err.value)
    assert expect in msg and err.value.code == code


def test_server_errors_are_retried_by_botocore(aws):
    aws.error(500, "InternalFailure", "boom")
    aws.error(503, "ServiceUnavailable", "busy")
    aws.ok({"DataEndpoint": "https://s-1234.kinesisvideo.eu-west-1.amazonaws.com"})
    cp = ControlPlane(REGION, Credentials(ACCESS_KEY, SECRET), endpoint_url=aws.url, max_attempts=3)
    assert cp.data_endpoint("cam") == "https://s-1234.kinesisvideo.eu-west-1.amazonaws.com"
    assert [p for p, _, _ in aws.requests] == ["/getDataEndpoint"] * 3


def test_kvs_throttling_is_retried_with_backoff(aws):
    aws.error(400, "ClientLimitExceededException", "rate exceeded")
    aws.error(400, "ClientLimitExceededException", "rate exceeded")
    aws.ok({"DataEndpoint": "https://s-1.example"})
    slept: list[float] = []
    cp = ControlPlane(REGION, Credentials(ACCESS_KEY, SECRET), endpoint_url=aws.url, max_attempts=4,
                      sleep=slept.append)
    assert cp.data_endpoint("cam") == "https://s-1.example"
    assert len(aws.requests) == 3 and len(slept) == 2 and all(s >= 0 for s in slept)


def test_throttling_that_persists_is_one_line(aws):
    for _ in range(3):
        aws.error(400, "ClientLimitExceededException", "rate exceeded")
    cp = ControlPlane(REGION, Credentials(ACCESS_KEY, SECRET), endpoint_url=aws.url, max_attempts=3,
                      sleep=lambda s: None)
    with pytest.raises(ControlPlaneError) as err:
        cp.data_endpoint("cam")
    assert "throttled" in one_line(err.value) and len(aws.requests) == 3


def test_requests_are_signed_with_the_given_credentials(aws):
    aws.ok({"StreamInfo": {"StreamName": "cam", "Status": "ACTIVE", "DataRetentionInHours": 2}})
    control(aws.url, Credentials(ACCESS_KEY, SECRET, "session-token-1")).describe_stream("cam")
    path, headers, _ = aws.requests[0]
    headers = {k.lower(): v for k, v in headers.items()}
    assert path == "/describeStream"
    assert f"Credential={ACCESS_KEY}/" in headers["authorization"]
    assert f"/{REGION}/kinesisvideo/aws4_request" in headers["authorization"]
    assert headers["x-amz-security-token"] == "session-token-1"


def test_tls_endpoint_with_ca_bundle(tmp_path):
    ca = trustme.CA()
    files = server_files(ca, tmp_path)
    server = AwsErrors(tls=(str(files.cert_file), str(files.key_file)))
    try:
        server.ok({"DataEndpoint": "https://s-1.example"})
        assert control(server.url, ca_bundle=str(files.ca_file)).data_endpoint("cam") == "https://s-1.example"
        with pytest.raises(ControlPlaneError) as err:  # without the CA: not trusted, said in one line
            control(server.url).data_endpoint("cam")
        msg = one_line(err.value)
        assert "not trusted" in msg and "aws.ca_bundle" in msg
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------------------------
# our emulator (SigV4 checked with botocore on the server side)


def emu_control(emu, access_key=DEFAULT_ACCESS_KEY_ID, secret=DEFAULT_SECRET_ACCESS_KEY, token=None, **kw):
    return ControlPlane(emu.region, Credentials(access_key, secret, token), endpoint_url=emu.url, max_attempts=1, **kw)


def test_emulator_create_describe_and_data_endpoint(emulator):
    cp = emu_control(emulator)
    name = unique()
    with pytest.raises(ControlPlaneError) as err:
        cp.ensure_stream(name)
    assert err.value.code == "ResourceNotFoundException" and emulator.region in one_line(err.value)
    info = cp.ensure_stream(name, create=True, retention_hours=6)
    assert info["StreamName"] == name and info["DataRetentionInHours"] == 6
    assert cp.keeps_data(name) is True
    assert DataEndpoint(cp, name).get() == emulator.url
    live = unique("live")
    emulator.create_stream(live, retention_hours=0)
    assert cp.keeps_data(live) is False


def test_the_client_does_not_keep_botocore_endpoints_data(emulator):
    """endpoints.json (every AWS service, ~7 MB as Python objects) is read to build the client, then let go
    (kvs/control.py _forget_endpoints_data): no live object holds it, and the client still works, in any region."""
    import gc

    def endpoints_data_alive() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, dict) and isinstance(o.get("partitions"), list)
                   and o["partitions"] and isinstance(o["partitions"][0], dict) and "services" in o["partitions"][0])

    gc.collect()
    before = endpoints_data_alive()
    cp = emu_control(emulator)
    assert endpoints_data_alive() == before
    name = unique()
    assert cp.ensure_stream(name, create=True)["StreamName"] == name
    assert DataEndpoint(cp, name).get() == emulator.url
    cn = ControlPlane("cn-north-1", Credentials("a", "b"))  # the endpoint resolver saw the China partition
    assert cn.endpoint_url == "https://kinesisvideo.cn-north-1.amazonaws.com.cn"
    assert endpoints_data_alive() == before


def test_emulator_over_tls_with_ca_bundle(tls_emulator):
    name = unique()
    tls_emulator.create_stream(name)
    cp = emu_control(tls_emulator, ca_bundle=tls_emulator.ca_file)
    assert cp.describe_stream(name)["StreamName"] == name
    assert cp.data_endpoint(name) == tls_emulator.url and tls_emulator.url.startswith("https://")
    with pytest.raises(ControlPlaneError) as err:  # the same endpoint without its CA
        emu_control(tls_emulator).describe_stream(name)
    assert "not trusted" in one_line(err.value)


def test_emulator_wrong_secret_is_one_line_and_never_shows_the_secret(emulator, caplog):
    name = unique()
    emulator.create_stream(name)
    wrong = "Wr0ngSecretThatMustNeverBeShown/abcdefgh"
    with caplog.at_level(logging.DEBUG), pytest.raises(ControlPlaneError) as err:
        emu_control(emulator, secret=wrong).describe_stream(name)
    msg = one_line(err.value)
    assert "secret access key" in msg and err.value.code == "InvalidSignatureException"
    assert wrong not in msg and wrong not in caplog.text and wrong not in repr(err.value)


def test_emulator_unknown_access_key_and_wrong_region(emulator):
    name = unique()
    emulator.create_stream(name)
    with pytest.raises(ControlPlaneError) as err:
        emu_control(emulator, access_key="AKIAUNKNOWNKEY000000").describe_stream(name)
    assert "does not accept these credentials" in one_line(err.value)
    other_region = "ap-southeast-2" if emulator.region != "ap-southeast-2" else "eu-west-1"
    cp = ControlPlane(other_region, Credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY),
                      endpoint_url=emulator.url, max_attempts=1)
    with pytest.raises(ControlPlaneError) as err:
        cp.describe_stream(name)
    assert "stream.region" in one_line(err.value)


def test_emulator_throttling_fault_is_retried(emulator):
    name = unique()
    emulator.create_stream(name)
    emulator.faults.fail_next(2, "throttle", paths=["/getDataEndpoint"])
    slept: list[float] = []
    cp = ControlPlane(emulator.region, Credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY),
                      endpoint_url=emulator.url, max_attempts=3, sleep=slept.append)
    assert cp.data_endpoint(name) == emulator.url
    assert len(slept) == 2


def test_emulator_accepts_requests_signed_with_refreshed_iot_credentials(tls_emulator, tmp_path):
    """IoT credentials that expire every few seconds: every request succeeds, signed with each new key pair."""
    from kvs_edge.config import AwsConfig, IotConfig
    from kvs_edge.emulator.iot import IotCredentialsServer
    from kvs_edge.kvs.credentials import resolve_credentials
    from support.pki import client_files, write_ca

    server_ca, device_ca = trustme.CA(), trustme.CA()
    srv = server_files(server_ca, tmp_path / "iot")
    dev = client_files(device_ca, tmp_path / "dev", "camera-01")
    iot = IotCredentialsServer(srv.cert_file, srv.key_file, write_ca(device_ca, tmp_path / "device-ca.pem"),
                               access_key_id="unused", secret_access_key="unused", lifetime_s=4,
                               rotate_keys=True, on_issue=tls_emulator.add_credentials).start()
    try:
        creds = resolve_credentials(AwsConfig(credentials="iot", iot=IotConfig(
            endpoint=iot.endpoint, role_alias=iot.role_alias, thing_name="camera-01", cert_file=str(dev.cert_file),
            key_file=str(dev.key_file), ca_file=str(srv.ca_file))))
        name = unique()
        tls_emulator.create_stream(name)
        cp = ControlPlane(tls_emulator.region, creds, endpoint_url=tls_emulator.url, ca_bundle=tls_emulator.ca_file,
                          max_attempts=1)
        keys = []
        deadline = time.monotonic() + 30
        while iot.issued < 3 and time.monotonic() < deadline:
            assert cp.describe_stream(name)["StreamName"] == name  # raises ControlPlaneError on any failure
            keys.append(creds.get_frozen_credentials().access_key)
            time.sleep(0.1)
        assert iot.issued >= 3
        assert len(set(keys)) >= 3  # requests went out under at least three different issued key pairs
    finally:
        iot.stop()


def test_credentials_that_cannot_be_fetched_surface_as_one_control_plane_line(emulator, tmp_path):
    """Deferred IoT credentials whose provider is unreachable: the control-plane call says so, in one line."""
    import socket

    from kvs_edge.config import AwsConfig, IotConfig
    from kvs_edge.kvs.credentials import resolve_credentials
    from support.pki import client_files

    dev = client_files(trustme.CA(), tmp_path / "dev")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"
    creds = resolve_credentials(AwsConfig(credentials="iot", iot=IotConfig(
        endpoint=endpoint, role_alias="kvs-edge-role", thing_name="camera-01", cert_file=str(dev.cert_file),
        key_file=str(dev.key_file))), defer=True)
    with pytest.raises(ControlPlaneError) as err:
        ControlPlane(emulator.region, creds, endpoint_url=emulator.url, max_attempts=1).describe_stream("cam")
    msg = one_line(err.value)
    assert err.value.code == "CredentialsError" and "cannot reach the IoT credentials provider" in msg
