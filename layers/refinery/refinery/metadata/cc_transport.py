"""The Cloud Controller client's transport: UAA client-credentials tokens, retries, JSON answers.

UAA client authentication is HTTP Basic with the id and secret URL-encoded first (RFC 6749 §2.3.1), as
UAA's ``ClientBasicAuthenticationFilter`` URL-decodes them (a raw ``+`` would become a space), with
``X-CF-ENCODED-CREDENTIALS: true`` so that UAAs in URI-encoding compatibility mode decode them too.

Transient failures (connection errors, timeouts, HTTP 429 and 5xx) are retried on the shared schedule
(:mod:`refinery.retry`), honouring ``Retry-After`` and ``X-RateLimit-Reset``, bounded by a maximum
attempt count and an optional per-call ``deadline`` (a value of the client's monotonic ``clock``). A
401 from the Cloud Controller renews the UAA token once and retries the request once.

:class:`CloudControllerTransport` holds no state of its own: the client
(:class:`refinery.metadata.cc_client.CloudControllerClient`) sets the attributes it declares.
"""

from __future__ import annotations

import logging
import random
import threading
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import orjson
import requests

from refinery.metadata.cc_documents import link_href, loads_acyclic
from refinery.metadata.cc_errors import (
    CloudControllerAuthError,
    CloudControllerError,
    CloudControllerUnavailable,
    cf_details,
    cf_titles,
    describe_response,
    describe_status,
    is_retryable,
    oauth_error,
    url_path,
)
from refinery.retry import ASKED_TOO_LONG, NoRetry, RetryPolicy
from refinery.retry_after import parse_retry_after
from refinery.tracing import traced

log = logging.getLogger("refinery.metadata.cc_client")

#: Token scopes that let a client read every app of the foundation (CC's ``can_read_globally?``).
GLOBAL_READ_SCOPES = (
    "cloud_controller.admin",
    "cloud_controller.admin_read_only",
    "cloud_controller.global_auditor",
)
NEEDED_SCOPES = "cloud_controller.admin_read_only or cloud_controller.global_auditor"


@dataclass(slots=True)
class _Token:
    value: str
    refresh_at: float  # client clock


def token_refresh_margin(expires_in: float) -> float:
    """Renew this long before expiry: max(30 s, 10 %), but never more than half the lifetime."""
    return min(max(30.0, 0.1 * expires_in), expires_in / 2)


class CloudControllerTransport:
    """Requests to the Cloud Controller and UAA: tokens, retries within a deadline, JSON answers."""

    api_url: str
    client_id: str
    _client_secret: str
    _uaa_url: str | None
    timeout: tuple[float, float]
    verify: bool | str
    user_agent: str
    max_attempts: int
    max_retry_wait: float
    retry: RetryPolicy
    granted_scopes: tuple[str, ...] | None
    _session: requests.Session
    _clock: Callable[[], float]
    _sleep: Callable[[float], None]
    _wall_clock: Callable[[], float]
    _rng: random.Random
    _token: _Token | None
    _lock: threading.Lock

    @property
    def uaa_url(self) -> str | None:
        """The UAA base URL: as given, or as discovered (``None`` until the first token request)."""
        return self._uaa_url

    def discover_uaa_url(self, deadline: float | None = None) -> str:
        """The UAA URL from ``GET {api_url}/`` (``links.uaa``, else ``links.login``); cached."""
        if self._uaa_url is None:
            url = self.api_url + "/"
            resp = self._with_retries("GET", url, deadline=deadline, headers=self._headers())
            doc = self._json(resp, "GET", url, expected=(200,))
            links = doc.get("links") if isinstance(doc, dict) else None
            href = link_href(links, "uaa") or link_href(links, "login")
            if not href:
                raise CloudControllerError(
                    "GET /: Cloud Controller root has neither links.uaa nor links.login; set the UAA URL",
                    method="GET",
                    path="/",
                    status=resp.status_code,
                )
            self._uaa_url = href.rstrip("/")
            log.info("discovered UAA at %s", self._uaa_url)
        return self._uaa_url

    def _headers(self, token: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if token is not None:
            headers["Authorization"] = f"bearer {token}"
        return headers

    def _get_json(self, url: str, *, deadline: float | None, not_found_ok: bool = False) -> Any:
        """Authenticated GET; renews the token once on 401. ``None`` for 404 CF-ResourceNotFound."""
        for renewed in (False, True):
            token = self._access_token(deadline, force=renewed)
            resp = self._with_retries("GET", url, deadline=deadline, headers=self._headers(token))
            if resp.status_code != 401:
                break
            if renewed:
                raise CloudControllerAuthError(
                    describe_response("GET", url, resp) + " even with a freshly issued token",
                    method="GET",
                    path=url_path(url),
                    status=401,
                    cf_errors=cf_titles(resp),
                )
            log.info("Cloud Controller answered 401 to GET %s; renewing the UAA token", url_path(url))
        if resp.status_code == 404 and not_found_ok and "CF-ResourceNotFound" in cf_titles(resp):
            return None
        return self._json(resp, "GET", url, expected=(200,))

    def _json(self, resp: requests.Response, method: str, url: str, *, expected: tuple[int, ...]) -> Any:
        if resp.status_code not in expected:
            cls = CloudControllerAuthError if resp.status_code in (401, 403) else CloudControllerError
            message = describe_response(method, url, resp)
            if resp.status_code == 403 and "CF-NotAuthorized" in cf_titles(resp):
                message += (
                    f": UAA client {self.client_id!r} may not read the Cloud Controller (its token has"
                    f" {' '.join(self.granted_scopes or ()) or 'no scopes'}); it needs {NEEDED_SCOPES}"
                )
            raise cls(
                message,
                method=method,
                path=url_path(url),
                status=resp.status_code,
                cf_errors=cf_titles(resp),
                cf_details=cf_details(resp),
            )
        try:
            return loads_acyclic(resp.content)
        except orjson.JSONDecodeError as exc:
            raise CloudControllerError(
                f"{method} {url_path(url)}: HTTP {resp.status_code} body is not valid JSON",
                method=method,
                path=url_path(url),
                status=resp.status_code,
            ) from exc

    def _access_token(self, deadline: float | None, *, force: bool = False) -> str:
        with self._lock:
            current = self._token
            if current is not None and not force and self._clock() < current.refresh_at:
                return current.value
            self._token = None
            self._token = self._fetch_token(deadline)
            return self._token.value

    @traced("## uaa token")
    def _fetch_token(self, deadline: float | None) -> _Token:
        url = self.discover_uaa_url(deadline) + "/oauth/token"
        started = self._clock()
        headers = self._headers()
        # RFC 6749 §2.3.1: form-urlencode id and secret, then Basic; UAA URL-decodes them (a raw "+" in a
        # secret would arrive as a space), and the header makes UAAs in compatibility mode decode them too.
        credentials = f"{quote_plus(self.client_id, safe='')}:{quote_plus(self._client_secret, safe='')}"
        headers["Authorization"] = "Basic " + b64encode(credentials.encode("utf-8")).decode("ascii")
        headers["X-CF-ENCODED-CREDENTIALS"] = "true"
        resp = self._with_retries(
            "POST", url, deadline=deadline, headers=headers, data={"grant_type": "client_credentials"}
        )
        if resp.status_code in (400, 401, 403):
            raise CloudControllerAuthError(
                f"POST {url_path(url)}: HTTP {resp.status_code} {oauth_error(resp)}: UAA rejected the client"
                f" credentials of client {self.client_id!r}",
                method="POST",
                path=url_path(url),
                status=resp.status_code,
            )
        doc = self._json(resp, "POST", url, expected=(200,))
        value = doc.get("access_token") if isinstance(doc, dict) else None
        expires_in = doc.get("expires_in") if isinstance(doc, dict) else None
        if not isinstance(value, str) or not value or not isinstance(expires_in, int | float):
            raise CloudControllerError(
                f"POST {url_path(url)}: token response lacks access_token or expires_in",
                method="POST",
                path=url_path(url),
                status=resp.status_code,
            )
        scope = doc.get("scope")
        self.granted_scopes = tuple(scope.split()) if isinstance(scope, str) else ()
        token_type = str(doc.get("token_type", "bearer"))
        if token_type.lower() != "bearer":
            log.warning("UAA issued a token of type %r; using it as a bearer token", token_type)
        refresh_at = started + expires_in - token_refresh_margin(float(expires_in))
        log.info("obtained UAA token for client %r (expires in %ss)", self.client_id, expires_in)
        return _Token(value, refresh_at)

    def _with_retries(
        self, method: str, url: str, *, deadline: float | None, **kwargs: Any
    ) -> requests.Response:
        """Send until the answer is neither a transport error nor 429/5xx, within attempts and deadline."""
        attempt = 0
        while True:
            attempt += 1
            timeout = self._timeout_for(method, url, deadline)
            hint: float | None = None
            cause: Exception | None = None
            try:
                resp = self._session.request(
                    method, url, timeout=timeout, verify=self.verify, allow_redirects=False, **kwargs
                )
            except requests.exceptions.SSLError as exc:
                raise CloudControllerError(
                    f"{method} {url_path(url)}: TLS error ({type(exc).__name__})",
                    method=method,
                    path=url_path(url),
                ) from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem, status, cause = type(exc).__name__, None, exc
            else:
                if not is_retryable(resp.status_code):
                    return resp
                problem, status, cause = describe_status(resp), resp.status_code, None
                hint = self._retry_hint(resp)
            where = f"{method} {url_path(url)}"
            if attempt >= self.max_attempts:
                raise CloudControllerUnavailable(
                    f"{where}: {problem}; gave up after {attempt} attempts",
                    method=method,
                    path=url_path(url),
                    status=status,
                ) from cause
            time_left = None if deadline is None else deadline - self._clock()
            try:
                delay = self.retry.wait(attempt, hint, time_left=time_left, rng=self._rng.random)
            except NoRetry as stop:
                if stop.reason == ASKED_TOO_LONG:
                    allowed = self.max_retry_wait
                    why = f"server asks to wait {stop.wait:.0f}s, more than the {allowed:.0f}s allowed"
                else:
                    why = f"a retry in {stop.wait:.1f}s would pass the deadline (attempt {attempt})"
                raise CloudControllerUnavailable(
                    f"{where}: {problem}; {why}", method=method, path=url_path(url), status=status
                ) from cause
            log.warning("%s: %s; retry %d/%d in %.2fs", where, problem, attempt, self.max_attempts - 1, delay)
            self._sleep(delay)

    def _timeout_for(self, method: str, url: str, deadline: float | None) -> tuple[float, float]:
        connect, read = self.timeout
        if deadline is None:
            return connect, read
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise CloudControllerUnavailable(
                f"{method} {url_path(url)}: deadline reached before the request",
                method=method,
                path=url_path(url),
            )
        return min(connect, remaining), min(read, remaining)

    def _retry_hint(self, resp: requests.Response) -> float | None:
        now = self._wall_clock()
        retry_after = resp.headers.get("Retry-After")
        if retry_after:
            delay = parse_retry_after(retry_after, now)
            if delay is not None:
                return delay
        reset = resp.headers.get("X-RateLimit-Reset")
        if resp.status_code == 429 and reset:
            try:
                return max(0.0, float(reset) + 1 - now)
            except ValueError:
                return None
        return None
