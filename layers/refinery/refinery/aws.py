"""AWS clients of both functions: made on first use, shared by the container.

In Lambda, where the credentials and the region are in the environment, a client is one of
:mod:`refinery.awsclient`'s: requests signed by refinery itself (:mod:`refinery.sigv4`) over
``requests``, with no botocore import at all — importing botocore and creating its clients cost more
than half of the enricher's cold start at 512 MB (``refinery_tools.dev.coldstart``). Elsewhere (a
developer's profile or SSO, a container credentials endpoint as SnapStart's, FIPS or dual-stack
endpoints: :func:`refinery.awsclient.unsupported`) it is a botocore client of one botocore session
per container, which the Lambda runtime provides (the layers do not ship it), never boto3. Both kinds
take the same calls, answer the same keys, and their errors are told apart by
:func:`refinery.awsclient.error_code` and :func:`refinery.awsclient.is_aws_failure`.

A client belongs to the ``AWS_*`` environment it was made in (region, credentials, endpoints): if
that changes — tests and local runs do it, Lambda never does — the next call makes a new one.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

_lock = threading.Lock()
_state: dict[str, Any] = {"environment": None, "session": None, "clients": {}}
#: Variables that change from one invocation to the next without changing what the session is.
_PER_INVOCATION = ("AWS_LAMBDA_", "AWS_XRAY_")


def _environment() -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted(
            (k, v)
            for k, v in os.environ.items()
            if k.startswith("AWS_") and not k.startswith(_PER_INVOCATION)
        )
    )


def _current(environment: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """The clients made in ``environment`` (all forgotten when it changed); call under the lock."""
    if _state["environment"] != environment:
        _state.update(environment=environment, session=None, clients={})
    clients: dict[str, Any] = _state["clients"]
    return clients


def session() -> Any:
    """The container's botocore session (made on first use, and again if ``AWS_*`` changed)."""
    environment = _environment()
    with _lock:
        _current(environment)
        if _state["session"] is None:
            import botocore.session

            from . import tracing

            _state["session"] = botocore.session.get_session()
            tracing.patch_botocore()  # its calls become subsegments when tracing is on
        return _state["session"]


def signed_here() -> bool:
    """Whether clients are :mod:`refinery.awsclient`'s (the environment has all they need)."""
    from . import awsclient

    return awsclient.unsupported(os.environ) is None


def client(service: str, **config: Any) -> Any:
    """The container's client for ``service`` (made on first use) with botocore ``Config(**config)``'s
    settings: ``connect_timeout``, ``read_timeout`` and ``retries`` (``total_max_attempts`` or
    ``max_attempts``) are what a :mod:`refinery.awsclient` client takes."""
    key = f"{service} {json.dumps(config, sort_keys=True)}"
    environment = _environment()
    with _lock:
        made = _current(environment).get(key)
    if made is not None:
        return made
    if signed_here():
        from . import awsclient
        from .s3client import S3Client

        retries = config.get("retries") or {}
        attempts = retries.get("total_max_attempts") or 1 + retries.get("max_attempts", 2)
        signed: dict[str, type[awsclient.Client]] = {
            "s3": S3Client,
            "secretsmanager": awsclient.SecretsManagerClient,
            "ssm": awsclient.SsmClient,
        }
        made = signed[service](
            connect_timeout=float(config.get("connect_timeout", awsclient.CONNECT_TIMEOUT)),
            read_timeout=float(config.get("read_timeout", awsclient.READ_TIMEOUT)),
            max_attempts=int(attempts),
        )
    else:
        from botocore.config import Config

        made = session().create_client(service, config=Config(**config) if config else None)
    with _lock:
        return _current(environment).setdefault(key, made)


def warm(*services: str) -> None:
    """Load what creating clients for ``services`` loads, without resolving credentials or connecting:
    clients made later, with the credentials of their time, find it all loaded. SnapStart runs this
    before the snapshot (:mod:`refinery.snapstart`), where Lambda gives the credentials through its
    container credentials endpoint, not the environment: botocore's clients are warmed too then
    (its modules, the endpoint data, the service models: the loader caches them)."""
    from . import awsclient  # noqa: F401  (imported, nothing made)

    if signed_here():
        return
    current = session()
    for service in services:
        throwaway = current.create_client(service, aws_access_key_id="warm", aws_secret_access_key="warm")
        throwaway.close()


def secret_value(secret_id: str) -> str:
    """A Secrets Manager secret's value (its string, or its binary decoded as UTF-8)."""
    response = client("secretsmanager").get_secret_value(SecretId=secret_id)
    if "SecretString" in response:
        return str(response["SecretString"])
    return bytes(response["SecretBinary"]).decode()


def parameter_value(name: str) -> str:
    """An SSM parameter's value, decrypted (a SecureString's plain text)."""
    return str(client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])


def reset() -> None:
    """Forget the session and its clients: tests only."""
    with _lock:
        _state.update(environment=None, session=None, clients={})
