"""refinery.awsclient's requests, signed by refinery itself, against moto's server (S3, Secrets Manager,
SSM) and against a small HTTP server that answers as AWS does when it refuses, throttles, fails or
hangs. moto checks no signature: tests/unit/test_sigv4.py compares them with botocore's."""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest

from refinery import aws, awsclient
from refinery.config import ConfigError, load_enricher_config
from refinery.metadata.store import S3SnapshotSource
from refinery.s3client import S3Client

pytestmark = pytest.mark.integration

KEYS = ["metadata/apps.json.gz", "dir with space/ünïcødé+plus=&.json", "tilde~/percent%20/x"]


@pytest.fixture
def moto(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-session-token")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", aws_env)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", aws_env)
    aws.reset()
    yield aws_env
    aws.reset()


def _boto3(service: str, url: str) -> Any:
    return boto3.session.Session().client(service, endpoint_url=url)


def test_objects_round_trip_with_botocore_reading_what_refinery_wrote(moto: str, s3_bucket: str) -> None:
    s3 = aws.client("s3")
    assert isinstance(s3, S3Client)
    theirs = _boto3("s3", moto)
    for number, key in enumerate(KEYS):
        body = gzip.compress(json.dumps({"n": number, "key": key}).encode())
        s3.put_object(
            Bucket=s3_bucket,
            Key=key,
            Body=body,
            ContentType="application/json",
            ContentEncoding="gzip",
            Tagging="refinery-checked-at=2026-01-01T00%3A00%3A00Z&x=a%20b",
        )
        seen = theirs.get_object(Bucket=s3_bucket, Key=key)
        assert seen["Body"].read() == body  # as written: the gzip bytes
        assert seen["ContentType"] == "application/json" and seen["ContentEncoding"] == "gzip"
        tags = theirs.get_object_tagging(Bucket=s3_bucket, Key=key)["TagSet"]
        assert {t["Key"]: t["Value"] for t in tags} == {
            "refinery-checked-at": "2026-01-01T00:00:00Z",
            "x": "a b",
        }
        got = s3.get_object(Bucket=s3_bucket, Key=key)
        assert got["Body"].read() == body  # not decompressed: Content-Encoding is the object's
        assert got["ETag"] == seen["ETag"] and got["ContentLength"] == len(body)


def test_tags_round_trip_and_a_conditional_get_of_an_unchanged_object_is_a_304(
    moto: str, s3_bucket: str
) -> None:
    s3 = aws.client("s3")
    key = KEYS[1]
    s3.put_object(Bucket=s3_bucket, Key=key, Body=b"snapshot")
    tags = [
        {"Key": "refinery-checked-at", "Value": "2026-01-01T00:00:00Z"},
        {"Key": "b", "Value": "b+c=d/e_f.g"},
    ]
    s3.put_object_tagging(Bucket=s3_bucket, Key=key, Tagging={"TagSet": tags})
    assert s3.get_object_tagging(Bucket=s3_bucket, Key=key)["TagSet"] == tags
    theirs = _boto3("s3", moto).get_object_tagging(Bucket=s3_bucket, Key=key)["TagSet"]
    assert theirs == tags
    etag = s3.get_object(Bucket=s3_bucket, Key=key)["ETag"]
    with pytest.raises(awsclient.AwsServiceError) as unchanged:
        s3.get_object(Bucket=s3_bucket, Key=key, IfNoneMatch=etag)
    assert unchanged.value.status == 304 and awsclient.error_code(unchanged.value) == "304"
    source = S3SnapshotSource(s3_bucket, key)  # through the bounded client, as the enricher reads it
    assert source.fetch(None) == (b"snapshot", etag)
    assert source.fetch(etag) == (None, etag)


def test_s3_errors_name_the_code_the_bucket_and_the_key(moto: str, s3_bucket: str) -> None:
    s3 = aws.client("s3")
    with pytest.raises(awsclient.AwsServiceError) as missing:
        s3.get_object(Bucket=s3_bucket, Key="no such/kéy")
    assert missing.value.code == "NoSuchKey" and missing.value.status == 404
    assert f"GetObject on s3://{s3_bucket}/no such/kéy: NoSuchKey (HTTP 404)" in str(missing.value)
    with pytest.raises(awsclient.AwsServiceError) as no_bucket:
        s3.put_object(Bucket=f"absent-{uuid.uuid4().hex[:8]}", Key="k", Body=b"x")
    assert no_bucket.value.code == "NoSuchBucket"
    from refinery.metadata.store import SnapshotUnavailable

    with pytest.raises(SnapshotUnavailable, match=f"cannot read s3://{s3_bucket}/absent: NoSuchKey"):
        S3SnapshotSource(s3_bucket, "absent").fetch(None)
    assert S3SnapshotSource(s3_bucket, "absent").checked_at() is None


def test_secrets_and_parameters_are_read_and_a_missing_one_is_named_without_any_value(
    moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = _boto3("secretsmanager", moto)
    name = f"refinery/{uuid.uuid4().hex[:8]}"
    arn = secrets.create_secret(Name=name, SecretString="s3cret-välue")["ARN"]
    binary = secrets.create_secret(Name=name + "-bin", SecretBinary=b"b1nary")["ARN"]
    _boto3("ssm", moto).put_parameter(Name=f"/{name}/token", Value="t0ken", Type="SecureString")
    assert aws.secret_value(arn) == aws.secret_value(name) == "s3cret-välue"
    assert aws.secret_value(binary) == "b1nary"
    assert aws.parameter_value(f"/{name}/token") == "t0ken"
    with pytest.raises(awsclient.AwsServiceError) as missing:
        aws.secret_value(name + "-absent")
    assert missing.value.code == "ResourceNotFoundException"  # AWS: HTTP 400, moto: 404
    assert f"GetSecretValue on secret '{name}-absent': ResourceNotFoundException" in str(missing.value)
    with pytest.raises(awsclient.AwsServiceError, match="ParameterNotFound"):
        aws.parameter_value(f"/{name}/absent")
    # as a function resolves its settings
    for variable, value in {
        "INFLUX_URL": "http://127.0.0.1:9",
        "INFLUX_DATABASE": "db",
        "INFLUX_USERNAME": "refinery",
        "INFLUX_PASSWORD_SECRET": arn,
        "METADATA_BUCKET": "refinery-snapshots",
    }.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("INFLUX_PASSWORD", raising=False)
    assert load_enricher_config().influx.password == "s3cret-välue"  # type: ignore[union-attr]
    monkeypatch.setenv("INFLUX_PASSWORD_SECRET", name + "-absent")
    with pytest.raises(ConfigError) as caught:
        load_enricher_config()
    problem = (
        f"INFLUX_PASSWORD_SECRET: cannot read '{name}-absent': AwsServiceError ResourceNotFoundException"
    )
    assert problem in caught.value.problems
    assert "s3cret" not in str(caught.value)


# ------------------------------------------------------------- refusals, throttling, failures, hangs


class _Aws(ThreadingHTTPServer):
    """Answers each request with the next of ``answers`` (status, headers, body), or hangs."""

    daemon_threads = True

    def __init__(self, answers: list[tuple[int, dict[str, str], bytes] | None]):
        self.answers = answers
        self.requests: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.requests.append(dict(self.headers))
                answer = outer.answers.pop(0) if len(outer.answers) > 1 else outer.answers[0]
                if answer is None:
                    time.sleep(3)
                    return
                status, headers, body = answer
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = _answer

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def _s3_error(code: str, message: str) -> bytes:
    return f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()


def _json_error(code: str, message: str) -> bytes:
    return json.dumps({"__type": f"com.amazonaws.secretsmanager#{code}", "message": message}).encode()


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., _Aws]]:
    servers: list[_Aws] = []

    def start(*answers: tuple[int, dict[str, str], bytes] | None) -> _Aws:
        server = _Aws(list(answers))
        servers.append(server)
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        return server

    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKID",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _quick(client: awsclient.Client) -> awsclient.Client:
    client.sleep = lambda seconds: None
    return client


def test_access_denied_is_named_and_not_retried(fake_aws: Callable[..., _Aws]) -> None:
    server = fake_aws((403, {}, _s3_error("AccessDenied", "Access Denied")))
    with pytest.raises(awsclient.AwsServiceError) as denied:
        _quick(S3Client()).get_object(Bucket="bucket", Key="a key")
    assert str(denied.value) == "GetObject on s3://bucket/a key: AccessDenied (HTTP 403): Access Denied"
    assert len(server.requests) == 1
    server.answers = [(400, {}, _json_error("AccessDeniedException", "not authorized"))]
    with pytest.raises(awsclient.AwsServiceError) as denied:
        _quick(awsclient.SecretsManagerClient()).get_secret_value(SecretId="refinery/x")
    assert denied.value.code == "AccessDeniedException" and "secret 'refinery/x'" in str(denied.value)
    assert server.requests[-1]["X-Amz-Target"] == "secretsmanager.GetSecretValue"
    assert server.requests[-1]["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID/")


def test_throttling_and_5xx_are_retried_with_backoff_and_retry_after(
    fake_aws: Callable[..., _Aws],
) -> None:
    server = fake_aws(
        (503, {}, _s3_error("SlowDown", "Please reduce your request rate.")),
        (500, {"Retry-After": "0.25"}, _s3_error("InternalError", "We encountered an internal error.")),
        (200, {"ETag": '"e"'}, b"body"),
    )
    client = S3Client(max_attempts=3)
    waits: list[float] = []
    client.sleep = waits.append
    assert client.get_object(Bucket="b", Key="k")["Body"].read() == b"body"
    assert len(server.requests) == 3 and waits[1] == 0.25 and 0 <= waits[0] <= awsclient.BACKOFF_BASE
    assert server.requests[0]["X-Amz-Date"] <= server.requests[2]["X-Amz-Date"]  # each attempt signed anew
    server.answers = [(400, {}, _json_error("ThrottlingException", "Rate exceeded"))]
    with pytest.raises(awsclient.AwsServiceError, match="ThrottlingException"):
        _quick(awsclient.SecretsManagerClient(max_attempts=2)).get_secret_value(SecretId="s")
    assert len(server.requests) == 5


def test_no_answer_ends_in_a_connection_error_within_the_timeouts(fake_aws: Callable[..., _Aws]) -> None:
    server = fake_aws(None)  # accepts, never answers
    client = _quick(S3Client(read_timeout=0.3, max_attempts=2))
    started = time.monotonic()
    with pytest.raises(awsclient.AwsConnectionError, match=r"GetObject on s3://b/k: no answer .* 2 attempt"):
        client.get_object(Bucket="b", Key="k")
    assert time.monotonic() - started < 2.0 and len(server.requests) == 2
    server.shutdown()
    server.server_close()
    with pytest.raises(awsclient.AwsConnectionError, match="ConnectionError"):
        _quick(awsclient.SecretsManagerClient(max_attempts=2)).get_secret_value(SecretId="s")


def test_a_bucket_in_another_region_is_followed_there_once_s3_names_it(fake_aws: Callable[..., _Aws]) -> None:
    moved = _s3_error("PermanentRedirect", "The bucket you are attempting to access must be addressed ...")
    server = fake_aws((301, {"x-amz-bucket-region": "eu-central-1"}, moved), (200, {"ETag": '"e"'}, b"body"))
    client = _quick(S3Client())
    assert client.get_object(Bucket="elsewhere", Key="k")["Body"].read() == b"body"
    scopes = [r["Authorization"].split("Credential=AKID/")[1].split(",")[0] for r in server.requests]
    assert [scope.split("/")[1] for scope in scopes] == ["eu-west-1", "eu-central-1"]
    assert client.get_object(Bucket="elsewhere", Key="k")["ETag"] == '"e"'  # remembered: asked there at once
    assert server.requests[-1]["Authorization"].count("/eu-central-1/s3/") == 1 and len(server.requests) == 3
    assert client.object_url("elsewhere", "k", region="eu-central-1").startswith(server.url)
    aws_s3 = S3Client({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_REGION": "eu-west-1"})
    assert aws_s3.object_url("elsewhere", "k", region="eu-central-1") == (
        "https://elsewhere.s3.eu-central-1.amazonaws.com/k"
    )
