"""S3, Secrets Manager and SSM requests signed by refinery itself (:mod:`refinery.sigv4`) over ``requests``.

The functions make few AWS requests (the snapshot's GET, a quarantine PUT, a secret or two), and
importing botocore and creating its clients cost more than half of a cold start at 512 MB. In Lambda
the credentials are in the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``) and so is the region (``AWS_REGION``, ``AWS_DEFAULT_REGION``): these clients
use them, over ``requests``, which the sinks and the Cloud Controller client have imported anyway.
Where the environment does not hold them (a developer's profile, SSO, a container credentials
endpoint as SnapStart uses), :func:`unsupported` says why and :mod:`refinery.aws` uses botocore.

Endpoints are botocore's: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL_SECRETS_MANAGER``,
``AWS_ENDPOINT_URL_SSM``, then ``AWS_ENDPOINT_URL`` (unless ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS``),
else the region's (``https://secretsmanager.<region>.amazonaws.com``). The S3 operations are
:mod:`refinery.s3client`'s (path-style at a configured endpoint: moto, MinIO, LocalStack all take it).

Each request has a connect and a read timeout and is retried, with exponential backoff and full
jitter (``Retry-After`` honoured), on connection errors, timeouts, HTTP 429 and 5xx and the services'
throttling codes, up to ``max_attempts``. An error answer raises :class:`AwsServiceError`, which
names the operation, the bucket and key or the secret's id, the error code and the HTTP status (as
botocore's ``ClientError``, and with the same ``response`` shape); no answer at all raises
:class:`AwsConnectionError`. A secret's value never appears in either.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import requests

from .retry import RetryPolicy
from .retry_after import parse_retry_after
from .sigv4 import EMPTY_SHA256, Credentials, sign
from .tracing import subsegment

#: Each service's endpoint variable (botocore's ``AWS_ENDPOINT_URL_<service id>``) and display name.
ENDPOINT_VARIABLES = {
    "s3": "AWS_ENDPOINT_URL_S3",
    "secretsmanager": "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "ssm": "AWS_ENDPOINT_URL_SSM",
}
SERVICE_NAMES = {"s3": "S3", "secretsmanager": "Secrets Manager", "ssm": "SSM"}
_TRUE = ("1", "true", "yes", "on")
#: Error codes retried like HTTP 429 and 5xx (botocore's standard retry mode's throttling and transient ones).
RETRIED_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
    }
)
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE = 0.2
BACKOFF_CAP = 5.0
#: The shared schedule (refinery/retry.py); a longer Retry-After is shortened to BACKOFF_CAP.
RETRY = RetryPolicy(base=BACKOFF_BASE, cap=BACKOFF_CAP)
#: Default timeouts (seconds): each connection, each read.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0

log = logging.getLogger(__name__)


class AwsError(Exception):
    """An AWS request failed (see :class:`AwsServiceError` and :class:`AwsConnectionError`)."""


class AwsServiceError(AwsError):
    """The service answered with an error; ``response`` is shaped as botocore's ``ClientError``'s."""

    def __init__(
        self, operation: str, resource: str, status: int, code: str, message: str, region: str | None = None
    ):
        self.operation_name = operation
        self.region = region  # S3's x-amz-bucket-region: where the bucket is, when it is not here
        self.resource = resource
        self.status = status
        self.code = code
        self.response = {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        detail = f": {message}" if message else ""
        super().__init__(f"{operation} on {resource}: {code} (HTTP {status}){detail}")


class AwsConnectionError(AwsError):
    """No answer (the endpoint unreachable, or silent past the timeouts) in any attempt."""


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a service's error answer (this module's or botocore's ``ClientError``);
    None for any other exception."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):
        return str(response["Error"].get("Code", "")) or str(
            response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        )
    return None


def is_aws_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is an AWS request's failure: this module's, or botocore's (without importing it)."""
    return isinstance(exc, AwsError) or any(
        cls.__module__ == "botocore.exceptions" for cls in type(exc).__mro__
    )


# ----------------------------------------------------------------------------- the environment


def credentials(env: Mapping[str, str]) -> Credentials | None:
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        return None
    return Credentials(key, secret, env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None)


def region(env: Mapping[str, str]) -> str | None:
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None


def unsupported(env: Mapping[str, str]) -> str | None:
    """Why these clients cannot serve in ``env`` (botocore must), or None when they can."""
    if credentials(env) is None:
        return "no AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
    where = region(env)
    if where is None:
        return "no AWS_REGION or AWS_DEFAULT_REGION in the environment"
    for variable in ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT"):
        if env.get(variable, "").strip().lower() in _TRUE:
            return f"{variable} is set"
    if where.startswith(("us-iso", "eu-isoe")):
        return f"region {where} is in an isolated partition"
    return None


def endpoint(service: str, env: Mapping[str, str]) -> str | None:
    """The endpoint configured for ``service`` in ``env`` (botocore's variables), or None."""
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() in _TRUE:
        return None
    url = env.get(ENDPOINT_VARIABLES[service]) or env.get("AWS_ENDPOINT_URL")
    return url.rstrip("/") if url else None


def dns_suffix(where: str) -> str:
    return "amazonaws.com.cn" if where.startswith("cn-") else "amazonaws.com"


# ------------------------------------------------------------------------------------- clients


class Client:
    """One service's requests: signing, timeouts, retries, errors (the container shares one per service)."""

    service = ""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        max_attempts: int = 3,
    ):
        env = os.environ if env is None else env
        reason = unsupported(env)
        if reason:
            raise ValueError(f"cannot sign {SERVICE_NAMES[self.service]} requests: {reason}")
        self.credentials = credentials(env)
        self.region = region(env) or ""
        self.endpoint_url = endpoint(self.service, env)
        self.timeout = (connect_timeout, read_timeout)
        self.max_attempts = max(1, max_attempts)
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy variables, no .netrc: botocore does not read them either
        self.sleep = time.sleep

    def default_endpoint(self) -> str:
        return f"https://{self.service}.{self.region}.{dns_suffix(self.region)}"

    def close(self) -> None:
        self.session.close()

    def send(
        self,
        operation: str,
        resource: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        stream: bool = False,
        region: str | None = None,
    ) -> requests.Response:
        """The successful (2xx) response, after retries; :class:`AwsError` otherwise. ``region``: the
        one to sign for, when not the client's."""
        assert self.credentials is not None
        payload_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        name = SERVICE_NAMES[self.service]
        with subsegment(f"## {name} {operation}"):
            for attempt in range(1, self.max_attempts + 1):
                signed = sign(
                    method,
                    url,
                    {"User-Agent": "refinery", "Accept-Encoding": "identity", **headers},
                    payload_hash,
                    credentials=self.credentials,
                    region=region or self.region,
                    service=self.service,
                )
                last = attempt == self.max_attempts
                try:
                    response = self.session.request(
                        method,
                        url,
                        headers=signed,
                        data=body or None,
                        timeout=self.timeout,
                        stream=stream,
                        allow_redirects=False,
                    )
                except (requests.ConnectionError, requests.Timeout) as exc:
                    if last:
                        raise AwsConnectionError(
                            f"{operation} on {resource}: no answer from {name} at {url.split('?')[0]}"
                            f" after {attempt} attempt(s): {type(exc).__name__}: {exc}"
                        ) from None
                    self.sleep(RETRY.wait(attempt))
                    continue
                # what was asked and the status: never a body (a secret's value is one)
                log.debug("%s %s on %s: HTTP %d", name, operation, resource, response.status_code)
                if response.status_code < 300:
                    return response
                error = self._error(operation, resource, response)
                if last or not (error.status in RETRIED_STATUSES or error.code in RETRIED_CODES):
                    raise error
                self.sleep(RETRY.wait(attempt, parse_retry_after(response.headers.get("Retry-After"))))
        raise AssertionError("unreachable")

    def _error(self, operation: str, resource: str, response: requests.Response) -> AwsServiceError:
        text = response.content.decode("utf-8", "replace")
        response.close()
        code, message = self.parse_error(text, response.headers)
        status = response.status_code
        message = message or response.reason or ""
        region = response.headers.get("x-amz-bucket-region")
        return AwsServiceError(operation, resource, status, code or str(status), message, region)

    def parse_error(self, text: str, headers: Mapping[str, str]) -> tuple[str, str]:
        raise NotImplementedError


class JsonClient(Client):
    """A JSON-protocol service (``X-Amz-Target``, ``application/x-amz-json-1.1``)."""

    target_prefix = ""

    def call(self, operation: str, resource: str, params: Mapping[str, Any]) -> dict[str, Any]:
        url = (self.endpoint_url or self.default_endpoint()) + "/"
        headers = {
            "X-Amz-Target": f"{self.target_prefix}.{operation}",
            "Content-Type": "application/x-amz-json-1.1",
        }
        response = self.send(operation, resource, "POST", url, headers, json.dumps(params).encode())
        return dict(response.json())

    def parse_error(self, text: str, headers: Mapping[str, str]) -> tuple[str, str]:
        try:
            parsed = json.loads(text) if text.strip() else {}
        except ValueError:
            parsed = {}
        if not isinstance(parsed, dict):
            parsed = {}
        code = str(headers.get("x-amzn-ErrorType") or parsed.get("__type") or parsed.get("code") or "")
        code = code.split(":")[0].rsplit("#", 1)[-1]
        return code, str(parsed.get("message") or parsed.get("Message") or "")


class SecretsManagerClient(JsonClient):
    service = "secretsmanager"
    target_prefix = "secretsmanager"

    def get_secret_value(self, *, SecretId: str) -> dict[str, Any]:
        answer = self.call("GetSecretValue", f"secret {SecretId!r}", {"SecretId": SecretId})
        if "SecretBinary" in answer:
            answer["SecretBinary"] = base64.b64decode(answer["SecretBinary"])
        return answer


class SsmClient(JsonClient):
    service = "ssm"
    target_prefix = "AmazonSSM"

    def get_parameter(self, *, Name: str, WithDecryption: bool = False) -> dict[str, Any]:
        params = {"Name": Name, "WithDecryption": WithDecryption}
        return self.call("GetParameter", f"parameter {Name!r}", params)
