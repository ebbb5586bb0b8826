"""SigV4 verification for the emulator: the signature is recomputed with botocore (never hand-rolled) and compared in
constant time. Pure: takes the request's parts and the time, returns the access key or raises AuthError."""

from __future__ import annotations

import datetime as dt
import hmac
import re
from dataclasses import dataclass

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

SERVICE = "kinesisvideo"
MAX_SKEW_S = 300
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<akid>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/(?P<service>[^/,\s]+)"
    r"/aws4_request\s*,\s*SignedHeaders=(?P<signed>[a-z0-9\-;]+)\s*,\s*Signature=(?P<sig>[0-9a-f]{64})\s*$")
_AMZ_DATE = "%Y%m%dT%H%M%SZ"


@dataclass
class AuthError(Exception):
    status: int
    error_type: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.error_type}: {self.message}"


class _Verifier(SigV4Auth):
    """botocore's signer, told exactly which headers the client signed (instead of choosing them itself)."""

    def __init__(self, credentials: Credentials, region: str, signed: HTTPHeaders):
        super().__init__(credentials, SERVICE, region)
        self._signed = signed

    def headers_to_sign(self, request):  # noqa: D401 - botocore's hook
        return self._signed


def verify(*, method: str, target: str, headers: dict[str, str], body: bytes, scheme: str,
           credentials: dict[str, str], region: str, now: float) -> str:
    """Check the Authorization header of one request. headers: lower-case names -> values. body: b"" for PutMedia
    (the streamed body is not signed). credentials: access key id -> secret. Returns the access key id."""
    auth = headers.get("authorization")
    if not auth:
        raise AuthError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    m = _AUTH_RE.match(auth)
    if not m:
        raise AuthError(403, "IncompleteSignatureException",
                        "Authorization header requires Credential, SignedHeaders and Signature (AWS4-HMAC-SHA256)")
    akid = m["akid"]
    secret = credentials.get(akid)
    if secret is None:
        raise AuthError(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
    amz_date = headers.get("x-amz-date", "")
    try:
        t = dt.datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        raise AuthError(403, "IncompleteSignatureException", "X-Amz-Date header missing or not YYYYMMDDTHHMMSSZ")
    if abs(now - t) > MAX_SKEW_S:
        server = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime(_AMZ_DATE)
        direction = "earlier" if t < now else "later"
        bound = dt.datetime.fromtimestamp(now - MAX_SKEW_S if t < now else now + MAX_SKEW_S,
                                          dt.timezone.utc).strftime(_AMZ_DATE)
        raise AuthError(403, "InvalidSignatureException",
                        f"Signature expired: {amz_date} is now {direction} than {bound} "
                        f"({server} {'-' if t < now else '+'} 5 min.)")
    if m["date"] != amz_date[:8]:
        raise AuthError(403, "InvalidSignatureException", "Credential date does not match X-Amz-Date")
    if m["service"] != SERVICE:
        raise AuthError(403, "InvalidSignatureException", f"Credential should be scoped to correct service: '{SERVICE}'.")
    if m["region"] != region:
        raise AuthError(403, "InvalidSignatureException",
                        f"Credential should be scoped to a valid region, not '{m['region']}'. ")
    names = m["signed"].split(";")
    if "host" not in names:
        raise AuthError(403, "InvalidSignatureException", "'Host' must be a signed header")
    signed = HTTPHeaders()
    for name in names:
        if name not in headers:
            raise AuthError(403, "InvalidSignatureException", f"signed header {name!r} is missing from the request")
        signed[name] = headers[name]
    req = AWSRequest(method=method, url=f"{scheme}://{headers['host']}{target}", data=body,
                     headers={k: v for k, v in signed.items()})
    req.context["timestamp"] = amz_date
    v = _Verifier(Credentials(akid, secret), region, signed)
    canonical = v.canonical_request(req)
    expected = v.signature(v.string_to_sign(req, canonical), req)
    if not hmac.compare_digest(expected.encode(), m["sig"].encode()):
        raise AuthError(403, "InvalidSignatureException",
                        "The request signature we calculated does not match the signature you provided. "
                        "Check your AWS Secret Access Key and signing method.")
    return akid
