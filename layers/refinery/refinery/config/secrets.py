"""Secrets given by reference, and CA bundles.

``INFLUX_TOKEN``, ``INFLUX_PASSWORD``, ``CF_CLIENT_SECRET``, ``PROM_PASSWORD``, ``PROM_BEARER_TOKEN`` and
the ``*_CA_BUNDLE`` settings may be given directly or by reference: ``<NAME>_SECRET`` names a Secrets
Manager secret, ``<NAME>_PARAMETER`` an SSM SecureString parameter. References are resolved once per
container; the values never appear in logs or error messages.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping

from .settings import SETTINGS_BY_NAME

SecretResolver = Callable[[str, str, str], str]


def resolve_secret_reference(setting: str, kind: str, reference: str) -> str:
    """Fetch a secret by reference: Secrets Manager's ``GetSecretValue`` or SSM's ``GetParameter`` (with
    decryption), through the container's clients (:mod:`refinery.aws`: signed by refinery in Lambda)."""
    from .. import aws

    return aws.secret_value(reference) if kind == "SECRET" else aws.parameter_value(reference)


def read_secret(env: Mapping[str, str], name: str, resolver: SecretResolver, problems: list[str]) -> str:
    if env.get(name):
        return env[name]
    for kind in ("SECRET", "PARAMETER"):
        reference = env.get(f"{name}_{kind}")
        if reference:
            try:
                return resolver(name, kind, reference)
            except Exception as exc:
                # The reference (a name or ARN) is not secret; the value never reaches this message,
                # nor the service's text: only the error's type and AWS's error code.
                from ..awsclient import error_code

                code = error_code(exc)
                what = f"{type(exc).__name__} {code}" if code else type(exc).__name__
                problems.append(f"{name}_{kind}: cannot read {reference!r}: {what}")
                return ""
    return SETTINGS_BY_NAME[name].default or ""


#: Where CA bundles given as PEM text (or by a secret) are written for requests, which wants a path.
CA_BUNDLE_DIR = os.path.join(tempfile.gettempdir(), "refinery-ca")


def ca_bundle(
    env: Mapping[str, str],
    name: str,
    verify_tls: bool | None,
    resolver: SecretResolver,
    problems: list[str],
) -> str | None:
    """A ``*_CA_BUNDLE`` setting as the path of a PEM file holding at least one certificate (None: unset).

    The value is a path (absolute, or relative to the working directory: the function's code in Lambda)
    or the PEM text itself; a ``_SECRET`` / ``_PARAMETER`` reference must hold the PEM text. PEM text
    is written once to a file named by its digest under :data:`CA_BUNDLE_DIR`.
    """
    value = read_secret(env, name, resolver, problems).strip()
    if not value:
        return None
    switch = name.replace("CA_BUNDLE", "VERIFY_TLS")
    if verify_tls is False:
        problems.append(f"{name}: given with {switch}=false, which turns verification off; give one of them")
        return None
    if not env.get(name) and not value.startswith("-----BEGIN"):
        if value == "unresolved-offline":  # `refinery config --check --offline` fetches no secret
            return None
        kind = "SECRET" if env.get(f"{name}_SECRET") else "PARAMETER"
        problems.append(f"{name}_{kind}: {env.get(f'{name}_{kind}')!r} does not hold a PEM certificate")
        return None
    if value.startswith("-----BEGIN"):
        os.makedirs(CA_BUNDLE_DIR, exist_ok=True)
        path = os.path.join(CA_BUNDLE_DIR, hashlib.sha256(value.encode()).hexdigest()[:24] + ".pem")
        if not os.path.isfile(path):
            with tempfile.NamedTemporaryFile("w", dir=CA_BUNDLE_DIR, delete=False, suffix=".tmp") as handle:
                handle.write(value + "\n")
            os.replace(handle.name, path)
        shown = "the PEM text given"
    else:
        path = os.path.abspath(value)
        shown = repr(value)
        if not os.path.isfile(path):
            problems.append(
                f"{name}: {shown} is not a readable file (give the path of a PEM file, absolute or relative"
                f" to {os.getcwd()!r}, or the PEM text)"
            )
            return None
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        problems.append(
            f"{name}: {shown} holds no usable PEM certificate ({getattr(exc, 'reason', None) or exc})"
        )
        return None
    return path
