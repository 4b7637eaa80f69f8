"""What a failed Cloud Controller or UAA request raises, and how an answer is described in it.

Messages name the method, the path and the status (and the Cloud Controller's error titles), never a
secret: no query string, no credentials, no token.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import orjson
import requests


class CloudControllerError(Exception):
    """A Cloud Controller or UAA request failed. The message names method, path and status, never secrets."""

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        cf_errors: tuple[str, ...] = (),
        cf_details: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.status = status
        self.cf_errors = cf_errors
        self.cf_details = cf_details


class CloudControllerAuthError(CloudControllerError):
    """Credentials rejected by UAA, or the Cloud Controller refused the (renewed) token (401/403)."""


class CloudControllerUnavailable(CloudControllerError):
    """Transient failures persisted: attempts exhausted, wait longer than allowed, or deadline reached."""


def is_retryable(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def url_path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _v3_errors(resp: requests.Response) -> list[dict[str, object]]:
    """The ``errors`` of a v3 error body (any content type), else ``[]``."""
    try:
        doc = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return []
    errors = doc.get("errors") if isinstance(doc, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def cf_titles(resp: requests.Response) -> tuple[str, ...]:
    """``("CF-ResourceNotFound", ...)`` from a v3 error body, else ``()``."""
    return tuple(str(e["title"]) for e in _v3_errors(resp) if e.get("title"))


def cf_details(resp: requests.Response) -> tuple[str, ...]:
    """The ``detail`` of each error of a v3 error body, else ``()``."""
    return tuple(detail for e in _v3_errors(resp) if isinstance(detail := e.get("detail"), str))


def oauth_error(resp: requests.Response) -> str:
    try:
        doc = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return "(no OAuth error body)"
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        return "(no OAuth error body)"
    description = doc.get("error_description")
    return doc["error"] + (f" ({description})" if isinstance(description, str) else "")


def describe_status(resp: requests.Response) -> str:
    titles = cf_titles(resp)
    return f"HTTP {resp.status_code}" + (f" {', '.join(titles)}" if titles else "")


def describe_response(method: str, url: str, resp: requests.Response) -> str:
    text = f"{method} {url_path(url)}: {describe_status(resp)}"
    request_id = resp.headers.get("X-Vcap-Request-Id")
    return text + (f" (X-Vcap-Request-Id {request_id})" if request_id else "")
