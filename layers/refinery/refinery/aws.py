"""AWS clients of both functions: one botocore session per container, each client made on first use.

The functions call S3, Secrets Manager and SSM through botocore, which the Lambda runtime provides
(the layers do not ship it), and not through boto3: importing boto3 and its S3 transfer manager, and
creating clients through sessions of their own (boto3's default one, Powertools Parameters' own),
cost the enricher's first invocation ~0.4 s at 512 MB (``refinery.devtools.coldstart``). All clients
share one botocore session, so its loaders (endpoints, partitions, service models) and its
credentials are read once; a client is created on first use, under a lock, and reused while the
container is warm (botocore clients are thread-safe).

The session belongs to the ``AWS_*`` environment it was made in (region, credentials, endpoints):
if that changes — tests and local runs do it, Lambda never does — the next call makes a new one.
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


def session() -> Any:
    """The container's botocore session (made on first use, and again if ``AWS_*`` changed)."""
    environment = _environment()
    with _lock:
        if _state["session"] is None or _state["environment"] != environment:
            import botocore.session

            _state.update(environment=environment, session=botocore.session.get_session(), clients={})
        return _state["session"]


def client(service: str, **config: Any) -> Any:
    """The container's client for ``service`` with botocore ``Config(**config)`` (made on first use)."""
    current = session()
    key = (service, json.dumps(config, sort_keys=True))
    with _lock:
        clients: dict[tuple[str, str], Any] = _state["clients"]
        made = clients.get(key) if _state["session"] is current else None
        if made is None:
            from botocore.config import Config

            made = current.create_client(service, config=Config(**config) if config else None)
            if _state["session"] is current:
                clients[key] = made
        return made


def warm(*services: str) -> None:
    """Load what creating clients for ``services`` loads (botocore's modules, the endpoint data, the
    service models: the loader caches them), without resolving credentials or connecting: clients
    made later, with the credentials of their time, find it all loaded. SnapStart runs this before
    the snapshot (:mod:`refinery.snapstart`)."""
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
