"""The KVS control plane through botocore's `kinesisvideo` client: the stream, and where to send PutMedia.

`ControlPlane(region, credentials, endpoint_url=..., ca_bundle=...)`:
- `describe_stream(name)` -> StreamInfo dict; `ensure_stream(name, create=..., retention_hours=..., kms_key_id=...)`
  describes the stream and creates it only when asked to;
- `data_endpoint(name)` -> the PUT_MEDIA data endpoint URL, cached until `invalidate()` (call it after an
  InvalidEndpointException or a failed connection to that endpoint);
- `keeps_data(name)` -> whether PERSISTED ACKs will come (retention > 0), else the uploader settles for RECEIVED.

`DataEndpoint(control, stream_name)` is the small `.get()` / `.invalidate()` handle the uploader holds.

Every failure is a `ControlPlaneError` with one line in the user's terms (which stream, which region, which IAM action,
what to run); botocore's own retries (standard mode) handle throttling, 5xx and connection failures first.
Secrets never appear in messages or logs.
"""

from __future__ import annotations

import datetime
import gc
import logging
import random
import threading
import time
from typing import Any, Callable

import botocore.config
import botocore.exceptions
import botocore.session
from botocore.credentials import CredentialProvider, CredentialResolver, Credentials, RefreshableCredentials

from kvs_edge import __version__
from kvs_edge.errors import EXIT_CONFIG, KvsEdgeError, one_line
from kvs_edge.kvs.credentials import CredentialsError
from kvs_edge.retry import CONTROL_THROTTLED, Backoff

log = logging.getLogger(__name__)

# KVS throttles with its own error code, which botocore's retry modes do not know: retried here.
KVS_THROTTLING_CODES = frozenset({"ClientLimitExceededException"})

# operation -> the IAM action it needs
IAM_ACTIONS = {
    "DescribeStream": "kinesisvideo:DescribeStream",
    "CreateStream": "kinesisvideo:CreateStream",
    "GetDataEndpoint": "kinesisvideo:GetDataEndpoint",
}


class ControlPlaneError(KvsEdgeError):
    """A control-plane call failed. str() is one line saying what is wrong and what to do, free of secrets.

    `code`: the AWS error code (or a local one: "EndpointConnectionError", "SSLError", ...), `operation`: the API.
    Exit code: 78 when the client cannot even be set up from the configuration (`operation` None: no region, an
    unusable endpoint_url), else 1 (the service, the network or IAM said no: a later attempt may succeed), from
    every command alike.
    """

    def __init__(self, message: str, *, code: str | None = None, operation: str | None = None):
        super().__init__(message, exit_code=EXIT_CONFIG if operation is None else None)
        self.code = code
        self.operation = operation


class _GivenCredentials(CredentialProvider):
    """Hands botocore the credentials object we resolved (refreshable ones keep refreshing inside botocore)."""

    METHOD = "kvs-edge"
    CANONICAL_NAME = "custom-kvs-edge"

    def __init__(self, credentials: Credentials):
        super().__init__()
        self._credentials = credentials

    def load(self) -> Credentials:
        return self._credentials


def create_stream_hint(name: str, region: str, retention_hours: int = 24) -> str:
    return (f"aws kinesisvideo create-stream --stream-name {name} --data-retention-in-hours {retention_hours} "
            f"--region {region}")


ENDPOINTS_CACHE_KEY = ("load_data_with_path", "endpoints")


def _forget_endpoints_data(loader) -> None:
    """endpoints.json (every service of every partition, about 7 MB as Python objects) is only read while the client
    is built (its region and signing name), yet two copies stay: botocore's data loader (which the client keeps)
    caches every file it read, and the session's endpoint resolver lives on as cyclic garbage until a full
    collection, which may not come for hours. The caller drops the session and collects; this drops the loader's
    copy (should the loader need the file again, it reads it again). The peak RSS of `kvs-edge run` is lower by about
    that much (bench/pipeline.py, README "Measured")."""
    cache = getattr(loader, "_cache", None)
    if isinstance(cache, dict):
        cache.pop(ENDPOINTS_CACHE_KEY, None)


class ControlPlane:
    """Thread-safe: the data-endpoint cache is guarded; botocore clients may be shared between threads."""

    def __init__(
        self,
        region: str,
        credentials: Credentials,
        *,
        endpoint_url: str | None = None,
        ca_bundle: str | None = None,
        max_attempts: int = 4,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        if not region:
            raise ControlPlaneError("stream.region is not set: set it to the stream's AWS region, e.g. us-east-1")
        self.region = region
        self._credentials = credentials
        self._sleep = sleep
        self._rng = rng
        self._max_attempts = max(1, int(max_attempts))
        self._lock = threading.Lock()
        self._endpoints: dict[str, str] = {}
        session = botocore.session.Session()
        session.register_component("credential_provider", CredentialResolver([_GivenCredentials(credentials)]))
        config = botocore.config.Config(
            region_name=region,
            retries={"mode": "standard", "total_max_attempts": self._max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            user_agent_extra=f"kvs-edge/{__version__}",
        )
        try:
            self._client = session.create_client(
                "kinesisvideo",
                region_name=region,
                endpoint_url=endpoint_url or None,
                verify=str(ca_bundle) if ca_bundle else None,
                config=config,
            )
        except botocore.exceptions.BotoCoreError as exc:
            raise ControlPlaneError(f"cannot set up the KVS client: {self._scrub(one_line(exc))}",
                                    code=type(exc).__name__) from None
        _forget_endpoints_data(session.get_component("data_loader"))
        del session
        gc.collect()  # the session (a reference cycle) and its endpoint resolver
        self.endpoint_url = self._client.meta.endpoint_url
        self.ca_bundle = ca_bundle

    def __repr__(self) -> str:
        return f"ControlPlane(region={self.region!r}, endpoint_url={self.endpoint_url!r})"

    # ----------------------------------------------------------------------------------------------------------
    # API

    def describe_stream(self, name: str) -> dict:
        """DescribeStream -> StreamInfo (StreamName, StreamARN, Status, DataRetentionInHours, ...)."""
        resp = self._call("DescribeStream", name, self._client.describe_stream, StreamName=name)
        return resp["StreamInfo"]

    def ensure_stream(
        self,
        name: str,
        *,
        create: bool = False,
        retention_hours: int = 24,
        kms_key_id: str | None = None,
        tags: dict[str, str] | None = None,
        wait_s: float = 60.0,
    ) -> dict:
        """The stream's StreamInfo once it is ACTIVE; creates it (CreateStream) only when `create` and it is missing,
        with its retention and `tags` (CreateStream's Tags: "A list of tags to associate with the specified stream";
        an existing stream's tags are left as they are)."""
        try:
            info = self.describe_stream(name)
        except ControlPlaneError as exc:
            if exc.code != "ResourceNotFoundException" or not create:
                raise
            params: dict[str, Any] = {"StreamName": name, "DataRetentionInHours": int(retention_hours),
                                      "MediaType": "video/h264"}
            if kms_key_id:
                params["KmsKeyId"] = kms_key_id
            if tags:
                params["Tags"] = dict(tags)
            try:
                self._call("CreateStream", name, self._client.create_stream, **params)
                log.info("created stream %s in %s (retention %d h)", name, self.region, retention_hours)
            except ControlPlaneError as cexc:
                if cexc.code != "ResourceInUseException":  # created meanwhile by someone else: fine
                    raise
            info = self.describe_stream(name)
        deadline = time.monotonic() + wait_s
        while info.get("Status", "ACTIVE") != "ACTIVE":
            status = info.get("Status")
            if status == "DELETING":
                raise ControlPlaneError(
                    f"stream {name!r} in {self.region} is being deleted: wait, then create it again "
                    f"({create_stream_hint(name, self.region, retention_hours)})", code="StreamDeleting",
                    operation="DescribeStream")
            if time.monotonic() >= deadline:
                raise ControlPlaneError(f"stream {name!r} in {self.region} is still {status} after {wait_s:g} s: "
                                        "try again later", code="StreamNotActive", operation="DescribeStream")
            self._sleep(1.0)
            info = self.describe_stream(name)
        return info

    def keeps_data(self, name: str) -> bool:
        """True when the stream stores fragments (DataRetentionInHours > 0): PERSISTED ACKs will come."""
        return int(self.describe_stream(name).get("DataRetentionInHours") or 0) > 0

    def data_endpoint(self, name: str) -> str:
        """The PUT_MEDIA data endpoint of stream `name`; fetched once, then cached until invalidate()."""
        with self._lock:
            cached = self._endpoints.get(name)
        if cached:
            return cached
        resp = self._call("GetDataEndpoint", name, self._client.get_data_endpoint, StreamName=name,
                          APIName="PUT_MEDIA")
        url = resp["DataEndpoint"]
        with self._lock:
            self._endpoints[name] = url
        log.info("PutMedia endpoint for %s: %s", name, url)
        return url

    def invalidate(self, name: str | None = None) -> None:
        """Forget the cached data endpoint of `name` (all when None): the next data_endpoint() asks again."""
        with self._lock:
            if name is None:
                self._endpoints.clear()
            else:
                self._endpoints.pop(name, None)

    def close(self) -> None:
        self._client.close()

    # ----------------------------------------------------------------------------------------------------------
    # errors in the user's terms

    def _call(self, operation: str, stream: str, fn: Callable[..., dict], **params: Any) -> dict:
        attempt = 0
        backoff = Backoff.of(CONTROL_THROTTLED, self._rng)
        while True:
            attempt += 1
            try:
                return self._call_once(operation, stream, fn, **params)
            except ControlPlaneError as exc:
                if exc.code not in KVS_THROTTLING_CODES or attempt >= self._max_attempts:
                    raise
                delay = backoff.next()
                log.info("kinesisvideo %s throttled (%s), retrying in %.2f s", operation, exc.code, delay)
                self._sleep(delay)

    def _call_once(self, operation: str, stream: str, fn: Callable[..., dict], **params: Any) -> dict:
        try:
            return fn(**params)
        except botocore.exceptions.ClientError as exc:
            raise self._client_error(operation, stream, exc) from None
        except CredentialsError as exc:  # refreshable credentials that could not be fetched while signing
            raise ControlPlaneError(str(exc), code="CredentialsError", operation=operation) from None
        except botocore.exceptions.NoCredentialsError:
            raise ControlPlaneError(
                "no AWS credentials: set aws.credentials (default, static or iot) and the keys it needs",
                code="NoCredentialsError", operation=operation) from None
        except botocore.exceptions.SSLError:
            hint = " (aws.ca_bundle is set: is it the CA that signed that server's certificate?)" \
                if self.ca_bundle else " (a private endpoint needs aws.ca_bundle)"
            raise ControlPlaneError(
                f"TLS to the KVS control plane {self.endpoint_url} failed: its certificate is not trusted{hint}, "
                "or the device clock is wrong", code="SSLError", operation=operation) from None
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError,
                botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError) as exc:
            raise ControlPlaneError(
                f"cannot reach the KVS control plane {self.endpoint_url} (network or DNS problem, "
                f"{type(exc).__name__}): check the network connection"
                + (" and aws.endpoint_url" if self._custom_endpoint() else ""),
                code="EndpointConnectionError", operation=operation) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ControlPlaneError(f"kinesisvideo {operation} failed: {self._scrub(one_line(exc))}",
                                    code=type(exc).__name__, operation=operation) from None

    def _custom_endpoint(self) -> bool:
        return "amazonaws.com" not in (self.endpoint_url or "")

    def _scrub(self, text: str) -> str:
        """Remove the secret key and session token from text that came back from elsewhere (belt and braces)."""
        creds = self._credentials
        if isinstance(creds, RefreshableCredentials):
            frozen = getattr(creds, "_frozen_credentials", None)  # the current set, without triggering a refresh
        else:
            frozen = creds.get_frozen_credentials()
        if frozen is None:
            return text
        for secret in (frozen.secret_key, frozen.token):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def _client_error(self, operation: str, stream: str, exc: botocore.exceptions.ClientError) -> ControlPlaneError:
        err = exc.response.get("Error", {}) or {}
        code = str(err.get("Code") or "")
        message = self._scrub(one_line(err.get("Message") or ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        lowered = message.lower()
        action = IAM_ACTIONS.get(operation, f"kinesisvideo:{operation}")

        def error(text: str) -> ControlPlaneError:
            return ControlPlaneError(text, code=code, operation=operation)

        if code == "ResourceNotFoundException":
            return error(
                f"stream {stream!r} does not exist in region {self.region}: create it with "
                f"`{create_stream_hint(stream, self.region)}`, or set stream.create: true in the config")
        if "signature expired" in lowered or "signature not yet current" in lowered or code in (
                "RequestTimeTooSkewed", "RequestExpired", "SignatureExpired"):
            now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            return error(
                f"AWS rejected the request as signed at the wrong time: this device's clock is wrong (it says {now}): "
                "synchronise it (NTP, timedatectl) and try again")
        if code in ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation") or (
                code == "NotAuthorizedException" and "signature" not in lowered and "token" not in lowered):
            return error(
                f"access denied to {action} on stream {stream!r} in {self.region}: allow {action} in the IAM policy "
                "of these credentials")
        if "scoped to a valid region" in lowered or "scoped to correct region" in lowered:
            return error(
                f"the endpoint {self.endpoint_url} is not in region {self.region}: set stream.region to the "
                "stream's region (or fix aws.endpoint_url)")
        if code in ("InvalidSignatureException", "SignatureDoesNotMatch") or "signature we calculated" in lowered:
            return error(
                "AWS rejected the request signature: the secret access key does not belong to the access key id "
                "(check aws.secret_access_key or the credentials source)")
        if code in ("ExpiredTokenException", "ExpiredToken") or "token has expired" in lowered \
                or "token is expired" in lowered:
            return error("the AWS credentials have expired (session token expired): refresh them or check the "
                         "credentials source")
        if code in ("UnrecognizedClientException", "InvalidClientTokenId", "MissingAuthenticationToken",
                    "IncompleteSignature", "InvalidAccessKeyId", "NotAuthorizedException"):
            return error(
                "AWS does not accept these credentials (unknown access key id or invalid session token): "
                "check aws.access_key_id / the credentials source")
        if code in ("ClientLimitExceededException", "ThrottlingException", "LimitExceededException"):
            return error(f"kinesisvideo {operation} was throttled for stream {stream!r} ({code}): try again later")
        if code == "AccountStreamLimitExceededException":
            return error(f"cannot create stream {stream!r}: the account's stream limit in {self.region} is reached")
        if code in ("InvalidArgumentException", "ValidationException", "InvalidParameterValue"):
            return error(f"kinesisvideo {operation} refused stream {stream!r}: {message or code}")
        if code == "ResourceInUseException":
            return error(f"stream {stream!r} in {self.region}: {message or 'already exists'}")
        detail = f"{code or 'HTTP ' + str(status)}" + (f": {message}" if message else "")
        return error(f"kinesisvideo {operation} failed for stream {stream!r} in {self.region}: {detail}")


class DataEndpoint:
    """The uploader's handle on one stream's PutMedia endpoint: `get()` (cached) and `invalidate()`."""

    def __init__(self, control: ControlPlane, stream_name: str):
        self.control = control
        self.stream_name = stream_name

    def __repr__(self) -> str:
        return f"DataEndpoint({self.stream_name!r})"

    def get(self) -> str:
        return self.control.data_endpoint(self.stream_name)

    def invalidate(self) -> None:
        self.control.invalidate(self.stream_name)
