"""Credentials: botocore's default chain, static keys, and AWS IoT certificates over real mutual TLS on loopback."""

from __future__ import annotations

import datetime
import logging
import os
import time

import pytest
import requests
import trustme
from botocore.credentials import RefreshableCredentials

from kvs_edge.config import AwsConfig, IotConfig
from kvs_edge.emulator.iot import IotCredentialsServer
from kvs_edge.kvs.credentials import (
    BOTOCORE_ADVISORY_S,
    BOTOCORE_MANDATORY_S,
    CredentialsError,
    IotCredentialFetcher,
    other_readers,
    IotSettings,
    refresh_windows,
    resolve_credentials,
)
from support.pki import client_files, server_files, write_ca

ACCESS_KEY = "AKIAKVSEDGETEST00001"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYkvsEdgeSecret"


@pytest.fixture
def clean_aws_env(monkeypatch, tmp_path):
    """No AWS settings from the machine running the tests: no env keys, no ~/.aws, no instance metadata."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def assert_no_secret(*texts: str, secrets=(SECRET,)) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text
    return text


# ---------------------------------------------------------------------------------------------------------------
# default chain


def test_default_chain_reads_the_environment(clean_aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok-from-env")
    creds = resolve_credentials(AwsConfig()).get_frozen_credentials()
    assert (creds.access_key, creds.secret_key, creds.token) == (ACCESS_KEY, SECRET, "tok-from-env")


def test_default_chain_reads_a_shared_credentials_file_and_profile(clean_aws_env, monkeypatch):
    shared = clean_aws_env / "credentials"
    shared.write_text(
        "[default]\naws_access_key_id = AKIADEFAULTPROFILE01\naws_secret_access_key = default-secret\n\n"
        f"[camera]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    default = resolve_credentials(AwsConfig(credentials="default")).get_frozen_credentials()
    assert default.access_key == "AKIADEFAULTPROFILE01"
    camera = resolve_credentials(AwsConfig(credentials="default", profile="camera")).get_frozen_credentials()
    assert (camera.access_key, camera.secret_key) == (ACCESS_KEY, SECRET)


def test_default_chain_with_nothing_says_what_to_set(clean_aws_env):
    with pytest.raises(CredentialsError) as err:
        resolve_credentials(AwsConfig())
    msg = one_line(err.value)
    assert "AWS_ACCESS_KEY_ID" in msg and "aws.credentials" in msg


def test_default_chain_names_a_missing_profile(clean_aws_env):
    with pytest.raises(CredentialsError) as err:
        resolve_credentials(AwsConfig(profile="nosuchprofile"))
    msg = one_line(err.value)
    assert "aws.profile" in msg and "nosuchprofile" in msg


def test_default_chain_partial_environment_is_one_line_without_the_secret(clean_aws_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # the key id is missing
    with pytest.raises(CredentialsError) as err:
        resolve_credentials(AwsConfig())
    assert_no_secret(one_line(err.value))


# ---------------------------------------------------------------------------------------------------------------
# static


def test_static_keys_and_the_permission_warning(tmp_path, caplog):
    config = tmp_path / "config.yaml"
    config.write_text("aws: {credentials: static}\n")
    cfg = AwsConfig(credentials="static", access_key_id=ACCESS_KEY, secret_access_key=SECRET, session_token="tok")

    config.chmod(0o644)
    with caplog.at_level(logging.DEBUG):
        creds = resolve_credentials(cfg, config_path=config)
    frozen = creds.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == (ACCESS_KEY, SECRET, "tok")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(config) in warnings[0] and "every user" in warnings[0]
    assert f"chmod o-r {config}" in warnings[0]
    assert_no_secret(caplog.text, repr(creds))

    caplog.clear()
    config.chmod(0o600)
    with caplog.at_level(logging.DEBUG):
        resolve_credentials(cfg, config_path=config)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_who_else_reads_the_config_by_its_mode_and_group():
    # install.sh: 0640 root:kvs-edge, kvs-edge the service user's own group: nobody else reads it, no warning
    assert other_readers(0o100640, "kvs-edge", {"kvs-edge"}, "kvs-edge") is None
    assert other_readers(0o100600, "root", {"root", "pi"}, "kvs-edge") is None
    # a group with other members, or o+r: a warning naming who
    assert other_readers(0o100640, "video", {"kvs-edge", "pi"}, "kvs-edge") == "the group video (pi)"
    assert other_readers(0o100604, "kvs-edge", {"kvs-edge"}, "kvs-edge") == "every user on this machine"


def test_static_without_the_secret_names_the_key(tmp_path):
    with pytest.raises(CredentialsError) as err:
        resolve_credentials(AwsConfig(credentials="static", access_key_id=ACCESS_KEY), config_path=tmp_path / "c.yaml")
    msg = one_line(err.value)
    assert "aws.secret_access_key" in msg and "aws.access_key_id" not in msg


# ---------------------------------------------------------------------------------------------------------------
# iot


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    server_ca, device_ca, rogue_ca = trustme.CA(), trustme.CA(), trustme.CA()
    return {
        "server": server_files(server_ca, d / "server"),
        "device_ca": write_ca(device_ca, d / "device-ca.pem"),
        "device": client_files(device_ca, d / "device", "camera-01"),
        "rogue": client_files(rogue_ca, d / "rogue", "camera-01"),
    }


def start_iot(pki, **kw) -> IotCredentialsServer:
    s = pki["server"]
    kw.setdefault("access_key_id", ACCESS_KEY)
    kw.setdefault("secret_access_key", SECRET)
    return IotCredentialsServer(s.cert_file, s.key_file, pki["device_ca"], **kw).start()


@pytest.fixture
def iot_server(pki):
    server = start_iot(pki, lifetime_s=900, thing_name="camera-01")
    yield server
    server.stop()


def iot_cfg(pki, server, **over) -> AwsConfig:
    fields = dict(endpoint=server.endpoint, role_alias=server.role_alias, thing_name="camera-01",
                  cert_file=str(pki["device"].cert_file), key_file=str(pki["device"].key_file),
                  ca_file=str(pki["server"].ca_file))
    fields.update(over)
    return AwsConfig(credentials="iot", iot=IotConfig(**fields))


def test_iot_fetches_credentials_over_mutual_tls(pki, iot_server, caplog):
    with caplog.at_level(logging.DEBUG):
        creds = resolve_credentials(iot_cfg(pki, iot_server))
    assert isinstance(creds, RefreshableCredentials)
    frozen = creds.get_frozen_credentials()
    assert iot_server.issued == 1
    assert (frozen.access_key, frozen.secret_key) == (ACCESS_KEY, SECRET)
    assert frozen.token == iot_server.tokens[-1]
    # 900 s credentials: refreshed at a quarter of their life, not on every request (botocore's 15 min would).
    assert not creds.refresh_needed()
    creds.get_frozen_credentials()
    assert iot_server.issued == 1
    assert_no_secret(caplog.text, repr(creds), secrets=(SECRET, frozen.token))


def test_iot_credentials_are_refreshed_before_they_expire(pki):
    server = start_iot(pki, lifetime_s=4)
    try:
        creds = resolve_credentials(iot_cfg(pki, server))
        seen = []
        deadline = time.monotonic() + 30
        while server.issued < 3 and time.monotonic() < deadline:
            frozen = creds.get_frozen_credentials()  # what a signer does before each request
            now = datetime.datetime.now(datetime.timezone.utc)
            # never hand out a token that the issuer considers expired
            assert server.expirations[frozen.token] > now, "used an expired token"
            seen.append(frozen.token)
            time.sleep(0.05)
        assert server.issued >= 3
        assert len(set(seen)) >= 3 and seen[-1] == server.tokens[-1]
    finally:
        server.stop()


def test_iot_refresh_failure_in_the_mandatory_window_is_one_line(pki, caplog):
    server = start_iot(pki, lifetime_s=3)
    creds = resolve_credentials(iot_cfg(pki, server))
    token = creds.get_frozen_credentials().token
    server.stop()  # the provider goes away: advisory refreshes fail quietly, then the mandatory one raises
    deadline = time.monotonic() + 10
    with caplog.at_level(logging.DEBUG), pytest.raises(CredentialsError) as err:
        while time.monotonic() < deadline:
            creds.get_frozen_credentials()
            time.sleep(0.05)
    msg = one_line(err.value)
    assert "cannot reach" in msg and server.endpoint in msg
    assert_no_secret(msg, caplog.text, secrets=(SECRET, token))


def test_iot_wrong_client_certificate_fails_the_handshake(pki, iot_server):
    cfg = iot_cfg(pki, iot_server, cert_file=str(pki["rogue"].cert_file), key_file=str(pki["rogue"].key_file))
    with pytest.raises(CredentialsError) as err:
        resolve_credentials(cfg)
    msg = one_line(err.value)
    assert "rejected the device certificate" in msg and "aws.iot.cert_file" in msg
    # the server thread counts the failed handshake after the client has already seen it fail
    deadline = time.monotonic() + 5
    while iot_server.handshake_failures < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert iot_server.issued == 0 and iot_server.handshake_failures >= 1


def test_iot_server_requires_a_client_certificate(pki, iot_server):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(iot_server.url, headers={"x-amzn-iot-thingname": "camera-01"},
                     verify=str(pki["server"].ca_file), timeout=5)
    assert iot_server.issued == 0


def test_iot_server_errors_like_the_real_one(pki, iot_server):
    device = (str(pki["device"].cert_file), str(pki["device"].key_file))
    get = lambda url, **h: requests.get(url, headers=h, cert=device, verify=str(pki["server"].ca_file), timeout=5)
    no_header = get(iot_server.url)
    assert no_header.status_code == 400 and "x-amzn-iot-thingname" in no_header.json()["message"]
    wrong_alias = get(iot_server.url.replace(iot_server.role_alias, "other-alias"), **{"x-amzn-iot-thingname": "camera-01"})
    assert wrong_alias.status_code == 404 and wrong_alias.json()["message"]
    ok = get(iot_server.url, **{"x-amzn-iot-thingname": "camera-01"})
    assert ok.status_code == 200 and set(ok.json()["credentials"]) == {
        "accessKeyId", "secretAccessKey", "sessionToken", "expiration"}
    assert iot_server.issued == 1


@pytest.mark.parametrize("over, expect", [
    ({"role_alias": "no-such-alias"}, ["'no-such-alias'", "aws.iot.role_alias", "404"]),
    ({"thing_name": "camera-99"}, ["'camera-99'", "403", "iot:AssumeRoleWithCertificate"]),
    ({"ca_file": None}, ["not trusted", "aws.iot.ca_file"]),
    ({"endpoint": "127.0.0.1:1"}, ["cannot reach", "network or DNS"]),
    ({"cert_file": "/nonexistent/device.crt"}, ["aws.iot.cert_file", "/nonexistent/device.crt"]),
])
def test_iot_errors_are_one_clear_line(pki, iot_server, over, expect):
    with pytest.raises(CredentialsError) as err:
        resolve_credentials(iot_cfg(pki, iot_server, **over))
    msg = one_line(err.value)
    for part in expect:
        assert part in msg
    assert_no_secret(msg)


def test_iot_missing_settings_are_named():
    with pytest.raises(CredentialsError) as err:
        resolve_credentials(AwsConfig(credentials="iot"))
    assert "aws.iot" in one_line(err.value)


def test_iot_expiry_is_placed_on_the_device_clock(pki, iot_server):
    """A device whose clock is a month off (no NTP yet) still gets an expiry `lifetime` ahead of its own clock."""
    skewed_now = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)
    cfg = iot_cfg(pki, iot_server)
    fetcher = IotCredentialFetcher(IotSettings(**vars(cfg.iot)), now=lambda: skewed_now)
    meta = fetcher()
    expiry = datetime.datetime.fromisoformat(meta["expiry_time"])
    ahead = (expiry - skewed_now).total_seconds()
    assert iot_server.lifetime_s - 2 <= ahead <= iot_server.lifetime_s + 1


def test_refresh_windows_follow_botocore_for_long_lived_and_shrink_for_short():
    assert refresh_windows(3600) == (BOTOCORE_ADVISORY_S, BOTOCORE_MANDATORY_S)
    assert (BOTOCORE_ADVISORY_S, BOTOCORE_MANDATORY_S) == (
        RefreshableCredentials._advisory_refresh_timeout, RefreshableCredentials._mandatory_refresh_timeout)
    for lifetime in (4, 60, 900, 1800):
        advisory, mandatory = refresh_windows(lifetime)
        assert 0 < mandatory < advisory < lifetime / 2


def test_iot_deferred_fetches_on_first_use_and_retries_after_a_failure(pki):
    server = start_iot(pki, lifetime_s=900)
    port_cfg = iot_cfg(pki, server)
    server.stop()  # offline at boot: resolving must not fail, the first use does, in one line
    creds = resolve_credentials(port_cfg, defer=True)
    with pytest.raises(CredentialsError) as err:
        creds.get_frozen_credentials()
    assert "cannot reach" in one_line(err.value)
    server = start_iot(pki, lifetime_s=900, port=server.port)  # back online on the same endpoint
    try:
        assert server.issued == 0
        frozen = creds.get_frozen_credentials()
        assert server.issued == 1 and frozen.token == server.tokens[-1]
        creds.get_frozen_credentials()
        assert server.issued == 1  # cached until its refresh window
    finally:
        server.stop()
