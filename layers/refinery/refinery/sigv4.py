"""AWS Signature Version 4, as botocore computes it, for the few requests the functions sign themselves.

Importing botocore and creating its clients is the largest part of a cold start at 512 MB (about
0.6 s), for a handful of requests: :mod:`refinery.awsclient` makes them over ``requests`` (already
imported by the sinks and the Cloud Controller client) and signs them here. The rules are botocore's
(``botocore/auth.py``: ``SigV4Auth`` and ``S3SigV4Auth``), and ``tests/unit/test_sigv4.py`` compares
the ``Authorization`` header computed here with botocore's, byte for byte, for the same requests:

* the canonical URI is the URL's path as sent (already percent-encoded, UTF-8, ``safe='/~'``); S3
  uses it as it is, other services encode it once more after removing dot segments (botocore's
  ``normalize_url_path``: only ``/`` ever occurs here);
* the canonical query string is the URL's ``key=value`` pairs, as encoded, sorted (a key without a
  value, S3's ``?tagging``, is ``tagging=``);
* every header sent is signed (lower-cased names, sorted, values with whitespace collapsed), except
  the ones botocore never signs (``user-agent``, ``x-amzn-trace-id``, …); ``host`` is always signed;
* S3 requests carry ``X-Amz-Content-SHA256`` (the payload's SHA-256; an empty body's for GET);
  others sign the payload's hash without sending it;
* ``X-Amz-Date`` and, with temporary credentials, ``X-Amz-Security-Token`` are set and signed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
TIMESTAMP = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Headers botocore never signs (``SIGNED_HEADERS_BLACKLIST``): proxies and SDKs may change them.
UNSIGNED_HEADERS = frozenset(
    {
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SET_HERE = frozenset({"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"})


class Credentials(NamedTuple):
    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:  # never the secret key or the token
        return f"Credentials(access_key={self.access_key!r}, secret_key=..., token=...)"


def encode_path(text: str) -> str:
    """A path or S3 key percent-encoded as botocore puts it in a URL (UTF-8; ``/`` and ``~`` kept)."""
    return quote(text, safe="/~")


def encode_query(params: Iterable[tuple[str, str | None]]) -> str:
    """A query string: ``key=value`` pairs encoded as botocore encodes them; a None value: the bare key."""
    parts = []
    for key, value in params:
        encoded = quote(key, safe="-_.~")
        parts.append(encoded if value is None else f"{encoded}={quote(value, safe='-_.~')}")
    return "&".join(parts)


def host_header(url: str) -> str:
    """The ``Host`` header for ``url``: lower-case, without the scheme's default port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def _canonical_uri(path: str, s3: bool) -> str:
    if s3:
        return path
    return quote(_remove_dot_segments(path) if path else "/", safe="/~")


def _remove_dot_segments(path: str) -> str:
    """botocore's ``remove_dot_segments``: RFC 3986 5.2.4, and consecutive slashes collapsed."""
    output: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if output:
                output.pop()
        elif segment and segment != ".":
            output.append(segment)
    first = "/" if path.startswith("/") else ""
    last = "/" if path.endswith("/") and output else ""
    return first + "/".join(output) + last


def _canonical_query(query: str) -> str:
    if not query:
        return ""
    pairs = []
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        pairs.append((key, value))
    return "&".join(f"{key}={value}" for key, value in sorted(pairs))


def _trimmed(value: str) -> str:
    return " ".join(value.split())


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def signing_key(secret_key: str, day: str, region: str, service: str) -> bytes:
    key = _hmac(f"AWS4{secret_key}".encode(), day)
    return _hmac(_hmac(_hmac(key, region), service), "aws4_request")


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    payload_hash: str,
    *,
    credentials: Credentials,
    region: str,
    service: str,
    now: datetime | None = None,
) -> dict[str, str]:
    """The headers to send for a request: ``headers`` (with ``Host``) plus the signature's.

    ``url`` is the URL as sent (path and query already encoded: :func:`encode_path`,
    :func:`encode_query`); ``payload_hash`` is the body's SHA-256 (hex; :data:`EMPTY_SHA256` for none).
    The service ``s3`` gets S3's rules (no path normalisation, ``X-Amz-Content-SHA256`` sent).
    """
    s3 = service == "s3"
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    timestamp = moment.strftime(TIMESTAMP)
    signed = {name: value for name, value in headers.items() if name.lower() not in _SET_HERE}
    signed.setdefault("Host", host_header(url))
    signed["X-Amz-Date"] = timestamp
    if credentials.token:
        signed["X-Amz-Security-Token"] = credentials.token
    if s3:
        signed["X-Amz-Content-SHA256"] = payload_hash
    to_sign: dict[str, list[str]] = {}
    for name, value in signed.items():
        lower = name.lower()
        if lower not in UNSIGNED_HEADERS:
            to_sign.setdefault(lower, []).append(_trimmed(value))
    names = sorted(to_sign)
    parts = urlsplit(url)
    canonical = "\n".join(
        (
            method.upper(),
            _canonical_uri(parts.path, s3),
            _canonical_query(parts.query),
            "".join(f"{name}:{','.join(to_sign[name])}\n" for name in names),
            ";".join(names),
            payload_hash,
        )
    )
    day = timestamp[:8]
    scope = f"{day}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join((ALGORITHM, timestamp, scope, hashlib.sha256(canonical.encode()).hexdigest()))
    key = signing_key(credentials.secret_key, day, region, service)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    signed["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return signed
