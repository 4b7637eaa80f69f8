"""refinery.sigv4 against botocore's own signer: the same request at the same instant must give the
same ``Authorization`` header, byte for byte (moto checks no signature, so this is the real check).

Two levels: botocore's signers (``SigV4Auth``, ``S3SigV4Auth``) on requests built here, and what
botocore's real clients send (URL, headers, signature) for the calls refinery makes, compared with
what :mod:`refinery.awsclient` builds and signs for them.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import botocore.auth
import botocore.session
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from refinery.s3client import S3Client
from refinery.sigv4 import EMPTY_SHA256, Credentials, encode_path, encode_query, sign

NOW = datetime(2026, 3, 1, 23, 59, 58, tzinfo=UTC)
KEY, SECRET, TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "FwoGZXIvYXdzEJr//token+/="
REGION = "eu-central-1"
# keys as S3 users write them: spaces, unicode, '+', '~', '=', '&', '%', consecutive slashes
KEYS = [
    "metadata/apps.json.gz",
    "dir with space/file name.json",
    "ünïcødé/日本語/キー.gz",
    "plus+sign/a+b=c&d.txt",
    "tilde~/percent%2F/semi;colon:at@",
    "double//slash/trailing/",
]


@pytest.fixture(params=["python", "crt"])
def fixed_clock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's clock fixed at NOW, and its clients' signers: its Python ones (the Lambda runtime's
    botocore has no awscrt), or, where awscrt is installed, the CRT's (aws-c-auth, another
    implementation, which botocore prefers when it can import it)."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: NOW.replace(tzinfo=None))
    if request.param == "python":
        python = {"v4": botocore.auth.SigV4Auth, "s3v4": botocore.auth.S3SigV4Auth}
        monkeypatch.setattr(botocore.auth, "AUTH_TYPE_MAPS", {**botocore.auth.AUTH_TYPE_MAPS, **python})
        return
    crt = pytest.importorskip("botocore.crt.auth", reason="awscrt is not installed")
    monkeypatch.setattr(crt, "get_current_datetime", lambda *a, **k: NOW)
    monkeypatch.setattr(
        botocore.auth, "AUTH_TYPE_MAPS", {**botocore.auth.AUTH_TYPE_MAPS, **crt.CRT_AUTH_TYPE_MAPS}
    )


def _botocore_sign(
    method: str, url: str, headers: dict[str, str], body: bytes, service: str, token: str | None
) -> dict[str, str]:
    credentials = BotoCredentials(KEY, SECRET, token)
    signer_class = botocore.auth.AUTH_TYPE_MAPS["s3v4" if service == "s3" else "v4"]  # see fixed_clock
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    signer_class(credentials, service, REGION).add_auth(request)
    return {name.lower(): value for name, value in request.headers.items()}  # the CRT's are lower-case


def _ours(
    method: str, url: str, headers: dict[str, str], body: bytes, service: str, token: str | None
) -> dict:
    payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
    creds = Credentials(KEY, SECRET, token)
    return sign(method, url, headers, payload, credentials=creds, region=REGION, service=service, now=NOW)


S3_BASES = ["https://refinery-bucket.s3.eu-central-1.amazonaws.com", "http://127.0.0.1:5000/refinery-bucket"]


@pytest.mark.usefixtures("fixed_clock")
@pytest.mark.parametrize("token", [None, TOKEN])
@pytest.mark.parametrize("base", S3_BASES)
@pytest.mark.parametrize("key", KEYS)
def test_s3_get_signatures_are_botocores(key: str, base: str, token: str | None) -> None:
    url = f"{base}/{encode_path(key)}"
    headers = {"If-None-Match": '"0123abcd"', "User-Agent": "refinery", "Accept-Encoding": "identity"}
    theirs = _botocore_sign("GET", url, headers, b"", "s3", token)
    ours = _ours("GET", url, headers, b"", "s3", token)
    assert ours["Authorization"] == theirs["authorization"]
    for name in ("X-Amz-Date", "X-Amz-Content-SHA256"):
        assert ours[name] == theirs[name.lower()]
    assert ours.get("X-Amz-Security-Token") == theirs.get("x-amz-security-token") == token


@pytest.mark.usefixtures("fixed_clock")
@pytest.mark.parametrize("token", [None, TOKEN])
def test_s3_puts_with_bodies_headers_and_query_strings_are_signed_as_botocore_signs(
    token: str | None,
) -> None:
    body = b"\x1f\x8b gzip bytes \x00\xff" * 100
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==",
        "x-amz-tagging": "refinery-checked-at=2026-03-01T23%3A59%3A58Z",
        "X-Custom": "  spaced    value  ",
    }
    for query in (
        "tagging",
        encode_query([("tagging", None)]),
        encode_query([("list-type", "2"), ("prefix", "dir with space/ü+"), ("max-keys", "10")]),
        encode_query([("b", "2"), ("a", "2"), ("a", "1"), ("continuation-token", "1/2+3=")]),
    ):
        url = f"https://refinery-bucket.s3.eu-central-1.amazonaws.com/{encode_path(KEYS[3])}?{query}"
        theirs = _botocore_sign("PUT", url, headers, body, "s3", token)
        ours = _ours("PUT", url, headers, body, "s3", token)
        assert ours["Authorization"] == theirs["authorization"], query
        assert (
            ours["X-Amz-Content-SHA256"] == theirs["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
        )


@pytest.mark.usefixtures("fixed_clock")
@pytest.mark.parametrize("token", [None, TOKEN])
@pytest.mark.parametrize(
    "url",
    [
        "https://secretsmanager.eu-central-1.amazonaws.com/",
        "http://127.0.0.1:5000/",
        "https://secretsmanager.eu-central-1.amazonaws.com:443/",
        "http://LocalHost:80/",
    ],
)
def test_json_protocol_signatures_are_botocores(url: str, token: str | None) -> None:
    body = json.dumps({"SecretId": "arn:aws:secretsmanager:eu-central-1:1:secret:refinery/ü+x"}).encode()
    headers = {"X-Amz-Target": "secretsmanager.GetSecretValue", "Content-Type": "application/x-amz-json-1.1"}
    theirs = _botocore_sign("POST", url, headers, body, "secretsmanager", token)
    ours = _ours("POST", url, headers, body, "secretsmanager", token)
    assert ours["Authorization"] == theirs["authorization"]
    assert "X-Amz-Content-SHA256" not in ours and "x-amz-content-sha256" not in theirs


# ---------------------------------------------------------------- what botocore's clients really send


class _Sent(Exception):
    def __init__(self, request: Any):
        self.request = request


def _sent_by_botocore(service: str, endpoint_url: str, call: str, **params: Any) -> Any:
    """The request botocore's client prepares and signs for ``call(**params)`` (not sent)."""
    client = botocore.session.get_session().create_client(
        service,
        region_name=REGION,
        endpoint_url=endpoint_url,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        aws_session_token=TOKEN,
    )

    def capture(request: Any, **_: Any) -> None:
        raise _Sent(request)

    client.meta.events.register(f"before-send.{client.meta.service_model.service_name}", capture)
    with pytest.raises(_Sent) as sent:
        getattr(client, call)(**params)
    return sent.value.request


def _signed_by_botocore(request: Any) -> dict[str, str]:
    """The headers botocore signed (its SignedHeaders; some, as ``amz-sdk-request``, are set after),
    but those the signer sets itself."""
    authorization = request.headers["Authorization"].decode()
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    own = ("host", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256")
    return {
        k: v.decode() if isinstance(v, bytes) else v
        for k, v in request.headers.items()
        if k.lower() in signed and k.lower() not in own
    }


def _env(endpoint_variable: str, url: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": TOKEN,
        "AWS_REGION": REGION,
        endpoint_variable: url,
    }


@pytest.mark.usefixtures("fixed_clock")
@pytest.mark.parametrize("key", KEYS)
def test_s3_object_urls_and_signatures_are_those_of_botocores_client(key: str) -> None:
    endpoint = "http://127.0.0.1:5000"
    for call, query in (("get_object", ""), ("get_object_tagging", "tagging")):
        request = _sent_by_botocore("s3", endpoint, call, Bucket="refinery-bucket", Key=key)
        client = S3Client(_env("AWS_ENDPOINT_URL_S3", endpoint))
        url = client.object_url("refinery-bucket", key, query)
        assert url == request.url.replace("?tagging=", "?tagging")
        # the headers botocore sent (its own, unsigned-for-us ones included), signed by us
        headers = _signed_by_botocore(request)
        ours = sign(
            "GET",
            request.url,
            headers,
            request.headers["X-Amz-Content-SHA256"].decode(),
            credentials=Credentials(KEY, SECRET, TOKEN),
            region=REGION,
            service="s3",
            now=NOW,
        )
        assert ours["Authorization"] == request.headers["Authorization"].decode()


@pytest.mark.usefixtures("fixed_clock")
def test_get_secret_value_is_the_request_of_botocores_client() -> None:
    endpoint = "http://127.0.0.1:5000"
    secret_id = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:refinery/influx-ü+x"
    request = _sent_by_botocore("secretsmanager", endpoint, "get_secret_value", SecretId=secret_id)
    assert request.url == endpoint + "/"
    assert request.headers["X-Amz-Target"] == b"secretsmanager.GetSecretValue"
    assert request.headers["Content-Type"] == b"application/x-amz-json-1.1"
    assert json.loads(request.body) == {"SecretId": secret_id}
    headers = _signed_by_botocore(request)
    assert {"x-amz-target", "content-type"} <= {name.lower() for name in headers}
    ours = sign(
        "POST",
        request.url,
        headers,
        hashlib.sha256(request.body).hexdigest(),
        credentials=Credentials(KEY, SECRET, TOKEN),
        region=REGION,
        service="secretsmanager",
        now=NOW,
    )
    assert ours["Authorization"] == request.headers["Authorization"].decode()


def test_the_credentials_repr_shows_neither_the_secret_key_nor_the_token() -> None:
    shown = repr(Credentials(KEY, SECRET, TOKEN))
    assert KEY in shown and SECRET not in shown and TOKEN not in shown
