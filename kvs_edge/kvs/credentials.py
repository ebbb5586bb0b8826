"""AWS credentials for kvs-edge: botocore's chain, static keys, or AWS IoT certificates.

`resolve_credentials(aws_cfg)` turns the `aws:` section of the config into a botocore `Credentials` object:

- ``default``: botocore's own chain (environment, shared files and profiles, container and instance roles);
  ``aws.profile`` picks a profile.
- ``static``: ``aws.access_key_id`` / ``aws.secret_access_key`` (/ ``aws.session_token``) from the config file; a
  warning when that file is readable by other users.
- ``iot``: the AWS IoT credentials provider (``GET https://<endpoint>/role-aliases/<alias>/credentials`` over mutual
  TLS with the device certificate), wrapped in botocore's ``RefreshableCredentials`` so that the keys are fetched
  again well before they expire.

Callers sign with ``creds.get_frozen_credentials()`` (one consistent key/secret/token triple) and never log it.
Every failure a user can fix is a ``CredentialsError`` whose message is one line and never holds a secret.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import os
import stat
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import botocore.exceptions
import botocore.session
from botocore.credentials import Credentials, DeferredRefreshableCredentials, RefreshableCredentials

from kvs_edge.errors import EXIT_CONFIG, KvsEdgeError, one_line

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

# botocore's own windows for long-lived session credentials (RefreshableCredentials defaults).
BOTOCORE_ADVISORY_S = 15 * 60
BOTOCORE_MANDATORY_S = 10 * 60

IOT_THING_NAME_HEADER = "x-amzn-iot-thingname"
IOT_MIN_LIFETIME_S = 900  # shortest credentialDurationSeconds a role alias allows


class CredentialsError(KvsEdgeError):
    """Credentials are missing, unusable or could not be fetched. str() is one line, free of secrets. Exit 78: the
    configuration (or the files and roles it names) must change."""

    exit_code = EXIT_CONFIG


def refresh_windows(lifetime_s: float) -> tuple[float, float]:
    """(advisory, mandatory) seconds-before-expiry at which to refresh credentials that live `lifetime_s`.

    botocore uses 15 and 10 minutes, made for hour-long credentials. IoT role aliases may issue credentials for as
    little as 15 minutes, where those windows would refresh on every request; so the windows shrink with the lifetime:
    advisory at a quarter and mandatory at a sixth of it, never more than botocore's.
    """
    lifetime_s = max(float(lifetime_s), 0.0)
    return min(BOTOCORE_ADVISORY_S, lifetime_s / 4), min(BOTOCORE_MANDATORY_S, lifetime_s / 6)


# --------------------------------------------------------------------------------------------------------------
# default: botocore's chain


def default_credentials(profile: str | None = None) -> Credentials:
    """botocore's credential chain (as the AWS CLI resolves it), optionally for a named profile."""
    try:
        session = botocore.session.Session(profile=profile or None)
        creds = session.get_credentials()
    except botocore.exceptions.ProfileNotFound:
        raise CredentialsError(
            f"aws.profile: profile {profile!r} is not in the AWS config or credentials files "
            "(~/.aws/credentials, or AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE): add it or fix the name"
        ) from None
    except botocore.exceptions.BotoCoreError as exc:
        # PartialCredentialsError, CredentialRetrievalError, ...: botocore's messages name what is missing,
        # never a secret value.
        raise CredentialsError(f"AWS credentials (aws.credentials: default): {one_line(exc, 300)}") from None
    if creds is None:
        raise CredentialsError(
            "no AWS credentials found (aws.credentials: default): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or a profile in ~/.aws/credentials (aws.profile), or an instance/container role; "
            "or use aws.credentials: static or iot in the config"
        )
    return creds


# --------------------------------------------------------------------------------------------------------------
# static: keys in the config file


def other_readers(mode: int, group: str, group_users: set[str], me: str | None) -> str | None:
    """Who besides `me` (the reading service's user) may read a file, by its mode bits; None when nobody.

    group_users: the users of the file's group (its listed members and those with it as their primary group). The
    installed /etc/kvs-edge/config.yaml is 0640 root:kvs-edge, and kvs-edge is the service user's own group: only the
    service (and root) read it, which is how it must be."""
    if mode & stat.S_IROTH:
        return "every user on this machine"
    if mode & stat.S_IRGRP:
        others = sorted(group_users - {me})
        if others:
            return f"the group {group} ({', '.join(others)})"
    return None


def _group_users(gid: int) -> tuple[str, set[str]]:
    import grp
    import pwd

    try:
        g = grp.getgrgid(gid)
    except KeyError:
        return str(gid), {f"gid {gid}"}  # an unnamed group: assume others
    return g.gr_name, set(g.gr_mem) | {p.pw_name for p in pwd.getpwall() if p.pw_gid == gid}


def warn_if_readable_by_others(path: str | os.PathLike) -> bool:
    """Log a warning when users other than this process's can read the file holding secrets. True when it warned."""
    import pwd

    try:
        st = os.stat(path)
    except OSError:
        return False
    if not st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        return False
    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        me = None
    group, users = _group_users(st.st_gid) if st.st_mode & stat.S_IRGRP else ("", set())
    who = other_readers(st.st_mode, group, users, me)
    if who:
        fix = "chmod o-r" if st.st_mode & stat.S_IROTH else "chmod g-r"
        log.warning("%s holds aws.secret_access_key and is readable by %s: run %s %s", path, who, fix, path)
        return True
    return False


def static_credentials(
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None = None,
    *,
    config_path: str | os.PathLike | None = None,
) -> Credentials:
    where = f" in {config_path}" if config_path else ""
    missing = [k for k, v in (("aws.access_key_id", access_key_id), ("aws.secret_access_key", secret_access_key))
               if not v]
    if missing:
        raise CredentialsError(
            f"aws.credentials is static but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            f"not set{where}: set both keys, or use aws.credentials: default"
        )
    if config_path is not None:
        warn_if_readable_by_others(config_path)
    return Credentials(access_key_id, secret_access_key, session_token or None, method="kvs-edge-static")


# --------------------------------------------------------------------------------------------------------------
# iot: AWS IoT credentials provider over mutual TLS


@dataclass(frozen=True)
class IotSettings:
    endpoint: str  # host[:port] of the credentials provider (aws iot describe-endpoint --endpoint-type iot:CredentialProvider)
    role_alias: str
    thing_name: str
    cert_file: str
    key_file: str
    ca_file: str | None = None


def _check_iot_settings(iot: Any) -> IotSettings:
    if iot is None:
        raise CredentialsError(
            "aws.credentials is iot but the aws.iot section is missing: set aws.iot.endpoint, role_alias, "
            "thing_name, cert_file and key_file"
        )
    names = ("endpoint", "role_alias", "thing_name", "cert_file", "key_file")
    missing = [f"aws.iot.{n}" for n in names if not getattr(iot, n, None)]
    if missing:
        raise CredentialsError(f"aws.credentials is iot but {', '.join(missing)} not set: set them in the config")
    s = IotSettings(
        endpoint=str(iot.endpoint), role_alias=str(iot.role_alias), thing_name=str(iot.thing_name),
        cert_file=os.fspath(iot.cert_file), key_file=os.fspath(iot.key_file),
        ca_file=os.fspath(iot.ca_file) if getattr(iot, "ca_file", None) else None,
    )
    for key in ("cert_file", "key_file", "ca_file"):
        path = getattr(s, key)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise CredentialsError(f"aws.iot.{key}: cannot read {path} ({exc.strerror or exc}): fix the path "
                                   "or the file's permissions") from None
    return s


def _endpoint_base(endpoint: str) -> str:
    endpoint = endpoint.strip().rstrip("/")
    if endpoint.startswith("https://"):
        return endpoint
    if endpoint.startswith("http://"):
        raise CredentialsError(f"aws.iot.endpoint: {endpoint} must use https (the provider needs mutual TLS)")
    return "https://" + endpoint


def _parse_http_date(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt


def _parse_iso(value: str) -> datetime.datetime:
    dt = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class IotCredentialFetcher:
    """Fetches one set of credentials from the AWS IoT credentials provider; botocore's `refresh_using` callback.

    Returns botocore's metadata dict (access_key, secret_key, token, expiry_time) plus `lifetime_s`. The expiry is
    placed on *this* device's clock: `now + (expiration - server Date)`, so a device whose clock is off (a Pi before
    NTP sync) still refreshes on time.
    """

    def __init__(self, settings: IotSettings, *, timeout: float = 10.0,
                 now: Callable[[], datetime.datetime] = _utcnow):
        self.settings = settings
        self.timeout = timeout
        self._now = now
        self.url = (f"{_endpoint_base(settings.endpoint)}/role-aliases/"
                    f"{urllib.parse.quote(settings.role_alias, safe='')}/credentials")
        self.fetches = 0

    def __repr__(self) -> str:
        return f"IotCredentialFetcher({self.url!r}, thing={self.settings.thing_name!r})"

    def __call__(self) -> dict:
        import requests  # only devices using AWS IoT credentials pay for it (about 4 MB of RSS)

        s = self.settings
        where = f"IoT credentials provider {s.endpoint}"
        try:
            resp = requests.get(
                self.url,
                headers={IOT_THING_NAME_HEADER: s.thing_name, "Accept": "application/json"},
                cert=(s.cert_file, s.key_file),
                verify=s.ca_file or True,
                timeout=self.timeout,
            )
        except requests.exceptions.SSLError as exc:
            text = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
                raise CredentialsError(
                    f"{where}: its server certificate is not trusted: set aws.iot.ca_file to the CA that signed it "
                    "(for AWS: AmazonRootCA1.pem), and check the device clock"
                ) from None
            if "KEY_VALUES_MISMATCH" in text or "PEM" in text:
                raise CredentialsError(
                    f"aws.iot.key_file {s.key_file} does not match aws.iot.cert_file {s.cert_file} (or is not PEM): "
                    "use the private key of the device certificate"
                ) from None
            raise CredentialsError(
                f"{where} rejected the device certificate (TLS handshake failed): check that aws.iot.cert_file and "
                "aws.iot.key_file are the device's certificate and key, registered and ACTIVE in AWS IoT"
            ) from None
        except requests.exceptions.ConnectionError as exc:
            if _looks_like_reset(exc):
                raise CredentialsError(
                    f"the {where} closed the connection: a network problem, or it rejected the device certificate "
                    "(check aws.iot.cert_file and aws.iot.key_file)"
                ) from None
            raise CredentialsError(
                f"cannot reach the {where} (network or DNS problem): check the network and aws.iot.endpoint "
                "(aws iot describe-endpoint --endpoint-type iot:CredentialProvider)"
            ) from None
        except requests.exceptions.Timeout:
            raise CredentialsError(
                f"the {where} did not answer within {self.timeout:g} s: check the network"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise CredentialsError(f"{where}: request failed: {one_line(type(exc).__name__, 300)}") from None
        except OSError as exc:  # certificate files unreadable / not PEM when loading the client cert
            raise CredentialsError(
                f"aws.iot.cert_file/key_file: cannot load the device certificate ({exc.strerror or type(exc).__name__})"
            ) from None
        self.fetches += 1
        return self._parse(resp)

    def _parse(self, resp: requests.Response) -> dict:
        s = self.settings
        where = f"IoT credentials provider {s.endpoint}"
        if resp.status_code != 200:
            detail = _server_message(resp)
            if resp.status_code == 404:
                raise CredentialsError(
                    f"{where}: role alias {s.role_alias!r} not found (HTTP 404{detail}): check aws.iot.role_alias "
                    "and that aws.iot.endpoint is the credentials endpoint "
                    "(aws iot describe-endpoint --endpoint-type iot:CredentialProvider)"
                )
            if resp.status_code in (401, 403):
                raise CredentialsError(
                    f"{where} denied credentials for thing {s.thing_name!r} (HTTP {resp.status_code}{detail}): "
                    "attach the certificate to that thing and allow iot:AssumeRoleWithCertificate on role alias "
                    f"{s.role_alias!r} in its IoT policy"
                )
            if resp.status_code == 400:
                raise CredentialsError(f"{where} refused the request (HTTP 400{detail}): check aws.iot.thing_name")
            raise CredentialsError(f"{where} answered HTTP {resp.status_code}{detail}: try again later")
        try:
            body = resp.json()
            c = body["credentials"]
            access_key, secret_key = c["accessKeyId"], c["secretAccessKey"]
            token, expiration = c["sessionToken"], _parse_iso(c["expiration"])
            if not all(isinstance(v, str) and v for v in (access_key, secret_key, token)):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CredentialsError(f"{where}: unexpected answer (not the credentials JSON): check aws.iot.endpoint") \
                from None
        server_now = _parse_http_date(resp.headers.get("Date"))
        now = self._now()
        lifetime = (expiration - (server_now or now)).total_seconds()
        expiry_local = now + datetime.timedelta(seconds=lifetime)
        log.info("fetched AWS credentials from %s for thing %s, valid %.0f s", s.endpoint, s.thing_name, lifetime)
        return {
            "access_key": access_key,
            "secret_key": secret_key,
            "token": token,
            "expiry_time": expiry_local.isoformat(),
            "lifetime_s": lifetime,
        }


def _looks_like_reset(exc: BaseException) -> bool:
    # With TLS 1.3 the server checks the client certificate after the client's side of the handshake is done; the
    # rejection usually arrives as an SSL alert (SSLError), but can also surface as a reset connection.
    text = repr(exc)
    return any(k in text for k in ("ConnectionResetError", "BrokenPipe", "EOF occurred", "UNEXPECTED_EOF",
                                   "RemoteDisconnected"))


def _server_message(resp: requests.Response) -> str:
    try:
        msg = resp.json().get("message")
    except (ValueError, AttributeError):
        msg = None
    return f": {one_line(msg, 120)}" if isinstance(msg, str) and msg else ""


class _DeferredIotCredentials(DeferredRefreshableCredentials):
    """botocore's deferred credentials (first fetch on first use) with our refresh windows."""

    def __init__(self, refresh_using: Callable[[], dict], method: str, advisory_s: float, mandatory_s: float):
        super().__init__(refresh_using, method)
        # the same instance override RefreshableCredentials.__init__ makes for advisory_timeout/mandatory_timeout
        self._advisory_refresh_timeout = advisory_s
        self._mandatory_refresh_timeout = mandatory_s


def iot_credentials(
    iot: Any,
    *,
    advisory_refresh_s: float | None = None,
    mandatory_refresh_s: float | None = None,
    timeout: float = 10.0,
    defer: bool = False,
) -> RefreshableCredentials:
    """Credentials from the AWS IoT credentials provider, refreshed before they expire.

    By default the first fetch happens now, so a wrong certificate or alias fails at start-up with one line, and the
    refresh windows follow `refresh_windows(lifetime)` of that first answer. With `defer=True` nothing is fetched
    until the credentials are first used (a device that boots offline); a failed fetch then raises CredentialsError
    at that use and is tried again at the next, and the windows are those of the shortest lifetime AWS IoT issues
    (900 s) unless given.
    """
    settings = _check_iot_settings(iot)
    fetcher = IotCredentialFetcher(settings, timeout=timeout)
    if defer:
        advisory, mandatory = refresh_windows(IOT_MIN_LIFETIME_S)
        advisory = advisory if advisory_refresh_s is None else advisory_refresh_s
        mandatory = mandatory if mandatory_refresh_s is None else mandatory_refresh_s
        return _DeferredIotCredentials(fetcher, "kvs-edge-iot", advisory, min(mandatory, advisory))
    metadata = fetcher()
    advisory, mandatory = refresh_windows(metadata["lifetime_s"])
    advisory = advisory if advisory_refresh_s is None else advisory_refresh_s
    mandatory = mandatory if mandatory_refresh_s is None else mandatory_refresh_s
    return RefreshableCredentials.create_from_metadata(
        metadata, refresh_using=fetcher, method="kvs-edge-iot",
        advisory_timeout=advisory, mandatory_timeout=min(mandatory, advisory),
    )


# --------------------------------------------------------------------------------------------------------------


def resolve_credentials(
    aws_cfg: Any,
    *,
    config_path: str | os.PathLike | None = None,
    advisory_refresh_s: float | None = None,
    mandatory_refresh_s: float | None = None,
    defer: bool = False,
) -> Credentials:
    """Credentials for the config's `aws:` section (any object with AwsConfig's attribute names).

    Raises CredentialsError (one line, no secrets) when none can be found or fetched. `defer` (iot only): fetch on
    first use instead of now. The refresh windows (iot only) default to `refresh_windows()`.
    """
    kind = getattr(aws_cfg, "credentials", None) or "default"
    if kind == "default":
        return default_credentials(getattr(aws_cfg, "profile", None))
    if kind == "static":
        return static_credentials(
            getattr(aws_cfg, "access_key_id", None),
            getattr(aws_cfg, "secret_access_key", None),
            getattr(aws_cfg, "session_token", None),
            config_path=config_path,
        )
    if kind == "iot":
        return iot_credentials(
            getattr(aws_cfg, "iot", None),
            advisory_refresh_s=advisory_refresh_s,
            mandatory_refresh_s=mandatory_refresh_s,
            defer=defer,
        )
    raise CredentialsError(f"aws.credentials: {kind!r} is not one of default, static, iot")


def credentials_from_config(aws_cfg: Any, *, config_path: str | os.PathLike | None = None) -> Credentials:
    """Alias of resolve_credentials for callers that hold a Config's `aws` section."""
    return resolve_credentials(aws_cfg, config_path=config_path)
