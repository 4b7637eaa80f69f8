"""A small Cloud Controller v3 client: UAA client-credentials auth, retries, keyset app listing.

Only what the metadata refresh and the enricher need:

* :meth:`CloudControllerClient.list_apps` — every app (any state) joined to its space and org, listed
  by **keyset pagination** on the creation time (see :meth:`CloudControllerClient.iter_app_pages`), so
  that apps deleted or created during the listing never make it skip an app that lived throughout;
* :meth:`CloudControllerClient.get_app` — one app by GUID (``None`` when the Cloud Controller says it
  does not exist).

UAA client authentication is HTTP Basic with the id and secret URL-encoded first (RFC 6749 §2.3.1), as
UAA's ``ClientBasicAuthenticationFilter`` URL-decodes them (a raw ``+`` would become a space), with
``X-CF-ENCODED-CREDENTIALS: true`` so that UAAs in URI-encoding compatibility mode decode them too.

Transient failures (connection errors, timeouts, HTTP 429 and 5xx) are retried with exponential backoff
and jitter, honouring ``Retry-After`` and ``X-RateLimit-Reset``, bounded by a maximum attempt count and an
optional per-call ``deadline`` (a value of the client's monotonic ``clock``). A 401 from the Cloud
Controller renews the UAA token once and retries the request once.

The client secret and tokens never appear in log records, exception messages or ``repr``.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from base64 import b64encode
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus, urlencode, urlsplit

import orjson
import requests

from refinery.metadata.gcpause import gc_paused
from refinery.metadata.snapshot import AppInfo, Labels
from refinery.retry import ASKED_TOO_LONG, NoRetry, RetryPolicy
from refinery.retry_after import parse_retry_after
from refinery.tracing import traced

log = logging.getLogger(__name__)

MAX_PER_PAGE = 5000
_SAMPLE_LIMIT = 10
#: Token scopes that let a client read every app of the foundation (CC's ``can_read_globally?``).
GLOBAL_READ_SCOPES = (
    "cloud_controller.admin",
    "cloud_controller.admin_read_only",
    "cloud_controller.global_auditor",
)
NEEDED_SCOPES = "cloud_controller.admin_read_only or cloud_controller.global_auditor"
#: CC's 400 when page × per_page exceeds its ``max_total_results`` (list_message.rb).
_MAX_TOTAL_RESULTS = re.compile(r"\(page \* per_page\) must be less than (\d+)")


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


@dataclass(slots=True)
class ListStats:
    """What :meth:`CloudControllerClient.list_apps` saw.

    ``apps`` counts apps in the result; ``resources`` counts app resources received (including
    duplicates — keyset pages overlap on the creation second at their boundary — and unresolvable ones).
    Apps whose space or org was not in ``included`` are dropped from the result but counted in
    ``missing_space`` / ``missing_org`` (a few GUIDs kept in ``unresolved``). ``per_page`` is the page
    size finally used (smaller than asked when the Cloud Controller caps ``max_total_results``).
    """

    pages: int = 0
    apps: int = 0
    spaces: int = 0
    orgs: int = 0
    resources: int = 0
    duplicates: int = 0
    malformed: int = 0
    missing_space: int = 0
    missing_org: int = 0
    per_page: int = 0
    unresolved: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return self.malformed + self.missing_space + self.missing_org


@dataclass(slots=True)
class _Token:
    value: str
    refresh_at: float  # client clock


def token_refresh_margin(expires_in: float) -> float:
    """Renew this long before expiry: max(30 s, 10 %), but never more than half the lifetime."""
    return min(max(30.0, 0.1 * expires_in), expires_in / 2)


class CloudControllerClient:
    """Cloud Controller v3 client authenticated with a UAA client-credentials grant."""

    def __init__(
        self,
        api_url: str,
        client_id: str,
        client_secret: str,
        *,
        uaa_url: str | None = None,
        timeout: tuple[float, float] = (5.0, 30.0),
        verify_tls: bool = True,
        ca_bundle: str | None = None,
        per_page: int = MAX_PER_PAGE,
        session: requests.Session | None = None,
        user_agent: str = "refinery/0.1",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        max_retry_wait: float = 120.0,
        rng: random.Random | None = None,
        label_keys: Iterable[str] = (),
    ) -> None:
        if not api_url.startswith(("http://", "https://")):
            raise ValueError(f"api_url must be an http(s) URL, got {api_url!r}")
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be between 1 and {MAX_PER_PAGE}, got {per_page}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.api_url = api_url.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self._uaa_url = uaa_url.rstrip("/") if uaa_url else None
        self.timeout = timeout
        self.verify_tls = verify_tls
        #: What requests verifies the servers' certificates with: the CA bundle's path, or the flag.
        self.verify: bool | str = ca_bundle if (ca_bundle and verify_tls) else verify_tls
        self.per_page = per_page
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        self.user_agent = user_agent
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self.max_attempts = max_attempts
        self.max_retry_wait = max_retry_wait
        # a Retry-After over max_retry_wait ends the retries (the refresh runs on a schedule: it tries later)
        self.retry = RetryPolicy(
            base=backoff_base, cap=backoff_cap, max_asked=max_retry_wait, cap_server_wait=False
        )
        self._rng = rng if rng is not None else random.Random()
        self._token: _Token | None = None
        self._lock = threading.Lock()
        #: Label keys whose values are kept for apps, spaces and orgs (tenant routing: ROUTES_LABEL_KEYS).
        self.label_keys: frozenset[str] = frozenset(label_keys)
        #: The scopes of the last token UAA issued (``None`` before the first): not secret.
        self.granted_scopes: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        return f"CloudControllerClient(api_url={self.api_url!r}, client_id={self.client_id!r})"

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def __enter__(self) -> CloudControllerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------- public API

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
            href = _href(links, "uaa") or _href(links, "login")
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

    def iter_app_pages(self, deadline: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield each parsed page of every app, by keyset pagination on ``created_at``.

        The Cloud Controller pages by LIMIT/OFFSET over the live table: an app deleted from a page
        already read shifts the later pages, and following ``pagination.next`` then skips live apps.
        Instead each request asks for the first page of ``order_by=created_at`` with
        ``created_ats[gte]=<creation time of the last app read>``: an app that exists for the whole
        listing is on one of these first pages whatever is deleted or created meanwhile (deletions only
        shrink a query's result, creations land after the cursor). Pages overlap on the boundary second
        (CC's timestamps have one-second resolution); the caller dedupes by GUID. Each request is page 1,
        so ``page × per_page`` stays within an operator's ``max_total_results``; if ``per_page`` itself
        exceeds it (a 400 naming the cap), ``per_page`` is lowered to the cap and the request repeated.

        More than ``per_page`` apps created within one second (a full page, all with the cursor's
        time) cannot be told apart by the cursor: those are walked with ``page=2, 3, …`` of the same
        query, the one place where concurrent deletions could still shift a page (only of that second's
        apps).
        """
        cursor: str | None = None
        page_number = 1
        seen: set[tuple[str | None, int, int]] = set()
        while True:
            params: dict[str, Any] = {"include": "space.organization", "order_by": "created_at"}
            if cursor is not None:
                params["created_ats[gte]"] = cursor
            if page_number > 1:
                params["page"] = page_number
            params["per_page"] = self.per_page
            step = (cursor, page_number, self.per_page)
            url = f"{self.api_url}/v3/apps?{urlencode(params)}"
            if step in seen:
                raise CloudControllerError(
                    f"GET {_path(url)}: the listing does not advance (a page already read)",
                    method="GET",
                    path=_path(url),
                )
            seen.add(step)
            try:
                page = self._get_json(url, deadline=deadline)
            except CloudControllerError as exc:
                if self._lower_per_page(exc, page_number, url):
                    continue
                raise
            resources = page.get("resources") if isinstance(page, dict) else None
            if not isinstance(resources, list):
                raise CloudControllerError(
                    f"GET {_path(url)}: response is not a v3 list (no 'resources' array)",
                    method="GET",
                    path=_path(url),
                    status=200,
                )
            yield page
            pagination = page.get("pagination")
            if not resources or not (isinstance(pagination, dict) and _href(pagination, "next")):
                return
            last = _get_str(resources[-1], "created_at")
            if last is None:
                raise CloudControllerError(
                    f"GET {_path(url)}: the last app of the page has no created_at to continue from",
                    method="GET",
                    path=_path(url),
                    status=200,
                )
            if last == cursor:  # a full page of apps created in one second: the next page of that second
                page_number += 1
            else:
                cursor, page_number = last, 1

    def _lower_per_page(self, exc: CloudControllerError, page_number: int, url: str) -> bool:
        """True when ``exc`` is CC's ``max_total_results`` 400 and a smaller ``per_page`` can satisfy it."""
        if exc.status != 400:
            return False
        match = next((m for m in map(_MAX_TOTAL_RESULTS.search, exc.cf_details) if m), None)
        if match is None:
            return False
        cap = int(match.group(1))
        if page_number == 1 and 1 <= cap < self.per_page:
            log.warning(
                "the Cloud Controller caps page × per_page at %d (max_total_results): listing %d apps"
                " per page",
                cap,
                cap,
            )
            self.per_page = cap
            return True
        why = (
            f"more than {self.per_page * (page_number - 1)} apps were created within one second, and"
            " reading past them needs a larger cap"
            if page_number > 1
            else "which leaves no page size to list with"
        )
        raise CloudControllerError(
            f"GET {_path(url)}: the Cloud Controller caps page × per_page at {cap} (max_total_results),"
            f" {why}; raise the Cloud Controller's renderer.max_total_results",
            method="GET",
            path=_path(url),
            status=400,
            cf_errors=exc.cf_errors,
        ) from exc

    @traced("## cc list apps")
    def list_apps(self, deadline: float | None = None) -> tuple[dict[str, AppInfo], ListStats]:
        """All apps visible to the client (every state), joined to space and org names."""
        stats = ListStats()
        spaces: dict[str, tuple[str, str | None]] = {}
        orgs: dict[str, str] = {}
        raw_apps: dict[str, tuple[str, str | None]] = {}
        labels: dict[str, Labels] | None = {} if self.label_keys else None  # by GUID: app, space or org
        pages = self.iter_app_pages(deadline=deadline)
        while True:
            with gc_paused():  # see _loads_acyclic; and the page is freed before the collector runs
                page = next(pages, None)
                if page is None:
                    break
                stats.pages += 1
                _collect_included(page.get("included"), spaces, orgs, labels, self.label_keys)
                _collect_apps(page["resources"], raw_apps, stats, labels, self.label_keys)
                del page
        stats.per_page = self.per_page
        apps: dict[str, AppInfo] = {}
        for guid, (name, space_guid) in raw_apps.items():
            info = _join(guid, name, space_guid, spaces, orgs, stats, labels)
            if info is not None:
                apps[guid] = info
        stats.apps, stats.spaces, stats.orgs = len(apps), len(spaces), len(orgs)
        if self.granted_scopes is not None and not set(self.granted_scopes) & set(GLOBAL_READ_SCOPES):
            log.warning(
                "UAA client %r has none of the scopes %s (its token has: %s): the Cloud Controller lists"
                " only the apps of the spaces it has roles in",
                self.client_id,
                NEEDED_SCOPES,
                " ".join(self.granted_scopes) or "none",
            )
        if stats.dropped:
            log.warning(
                "Cloud Controller listing: %d app(s) dropped (space missing: %d, org missing: %d,"
                " malformed: %d), e.g. %s",
                stats.dropped,
                stats.missing_space,
                stats.missing_org,
                stats.malformed,
                ", ".join(stats.unresolved),
            )
        return apps, stats

    @traced("## cc get app")
    def get_app(self, guid: str, deadline: float | None = None) -> AppInfo | None:
        """One app by GUID, or ``None`` when the Cloud Controller answers 404 CF-ResourceNotFound."""
        url = f"{self.api_url}/v3/apps/{quote(guid, safe='')}?include=space.organization"
        doc = self._get_json(url, deadline=deadline, not_found_ok=True)
        if doc is None:
            return None
        name = _get_str(doc, "name")
        if name is None:
            raise CloudControllerError(
                f"GET {_path(url)}: app resource has no name", method="GET", path=_path(url)
            )
        spaces: dict[str, tuple[str, str | None]] = {}
        orgs: dict[str, str] = {}
        labels: dict[str, Labels] | None = {} if self.label_keys else None
        _collect_included(doc.get("included"), spaces, orgs, labels, self.label_keys)
        stats = ListStats()
        app_guid = _get_str(doc, "guid") or guid
        if labels is not None:
            _keep_labels(doc, app_guid, labels, self.label_keys)
        info = _join(app_guid, name, _relationship_guid(doc, "space"), spaces, orgs, stats, labels)
        if info is None:
            raise CloudControllerError(
                f"GET {_path(url)}: app's space or organization missing from 'included'",
                method="GET",
                path=_path(url),
                status=200,
            )
        return info

    # ------------------------------------------------------------------------------------ internals

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
                    _describe("GET", url, resp) + " even with a freshly issued token",
                    method="GET",
                    path=_path(url),
                    status=401,
                    cf_errors=_cf_titles(resp),
                )
            log.info("Cloud Controller answered 401 to GET %s; renewing the UAA token", _path(url))
        if resp.status_code == 404 and not_found_ok and "CF-ResourceNotFound" in _cf_titles(resp):
            return None
        return self._json(resp, "GET", url, expected=(200,))

    def _json(self, resp: requests.Response, method: str, url: str, *, expected: tuple[int, ...]) -> Any:
        if resp.status_code not in expected:
            cls = CloudControllerAuthError if resp.status_code in (401, 403) else CloudControllerError
            message = _describe(method, url, resp)
            if resp.status_code == 403 and "CF-NotAuthorized" in _cf_titles(resp):
                message += (
                    f": UAA client {self.client_id!r} may not read the Cloud Controller (its token has"
                    f" {' '.join(self.granted_scopes or ()) or 'no scopes'}); it needs {NEEDED_SCOPES}"
                )
            raise cls(
                message,
                method=method,
                path=_path(url),
                status=resp.status_code,
                cf_errors=_cf_titles(resp),
                cf_details=_cf_details(resp),
            )
        try:
            return _loads_acyclic(resp.content)
        except orjson.JSONDecodeError as exc:
            raise CloudControllerError(
                f"{method} {_path(url)}: HTTP {resp.status_code} body is not valid JSON",
                method=method,
                path=_path(url),
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
                f"POST {_path(url)}: HTTP {resp.status_code} {_oauth_error(resp)}: UAA rejected the client"
                f" credentials of client {self.client_id!r}",
                method="POST",
                path=_path(url),
                status=resp.status_code,
            )
        doc = self._json(resp, "POST", url, expected=(200,))
        value = doc.get("access_token") if isinstance(doc, dict) else None
        expires_in = doc.get("expires_in") if isinstance(doc, dict) else None
        if not isinstance(value, str) or not value or not isinstance(expires_in, int | float):
            raise CloudControllerError(
                f"POST {_path(url)}: token response lacks access_token or expires_in",
                method="POST",
                path=_path(url),
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
            try:
                resp = self._session.request(
                    method, url, timeout=timeout, verify=self.verify, allow_redirects=False, **kwargs
                )
            except requests.exceptions.SSLError as exc:
                raise CloudControllerError(
                    f"{method} {_path(url)}: TLS error ({type(exc).__name__})", method=method, path=_path(url)
                ) from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem, status, cause = type(exc).__name__, None, exc
            else:
                if not _retryable(resp.status_code):
                    return resp
                problem, status, cause = _describe_status(resp), resp.status_code, None
                hint = self._retry_hint(resp)
            where = f"{method} {_path(url)}"
            if attempt >= self.max_attempts:
                raise CloudControllerUnavailable(
                    f"{where}: {problem}; gave up after {attempt} attempts",
                    method=method,
                    path=_path(url),
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
                    f"{where}: {problem}; {why}", method=method, path=_path(url), status=status
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
                f"{method} {_path(url)}: deadline reached before the request", method=method, path=_path(url)
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


# ------------------------------------------------------------------------------------------ helpers


def _loads_acyclic(body: bytes) -> Any:
    """``orjson.loads`` with the cyclic garbage collector paused (see :mod:`.gcpause`) while it runs.

    A 5000-app page with ``include`` is ~9 MB of JSON: ~200 000 dicts and lists, all new and all
    surviving the parse, so the collector runs hundreds of times meanwhile, and full collections over
    everything else the process holds (boto3's models, the apps listed so far) more than double the
    cost of the parse. A parsed document has no reference cycles, so there is nothing to collect in it.
    """
    with gc_paused():
        return orjson.loads(body)


def _collect_apps(
    resources: list[Any],
    raw_apps: dict[str, tuple[str, str | None]],
    stats: ListStats,
    labels: dict[str, Labels] | None = None,
    label_keys: frozenset[str] = frozenset(),
) -> None:
    for resource in resources:
        stats.resources += 1
        guid, name = _get_str(resource, "guid"), _get_str(resource, "name")
        if guid is None or name is None:
            stats.malformed += 1
            continue
        if guid in raw_apps:
            stats.duplicates += 1
        raw_apps[guid] = (name, _relationship_guid(resource, "space"))
        if labels is not None:
            _keep_labels(resource, guid, labels, label_keys)


def _keep_labels(resource: Any, guid: str, labels: dict[str, Labels], keys: frozenset[str]) -> None:
    """The values of ``keys`` among a v3 resource's ``metadata.labels`` (string values only)."""
    metadata = resource.get("metadata") if isinstance(resource, Mapping) else None
    found = metadata.get("labels") if isinstance(metadata, Mapping) else None
    if not isinstance(found, Mapping):
        labels.pop(guid, None)
        return
    kept = tuple(sorted((k, v) for k, v in found.items() if k in keys and isinstance(v, str) and v))
    if kept:
        labels[guid] = kept
    else:
        labels.pop(guid, None)


def _retryable(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _href(links: Any, name: str) -> str | None:
    if not isinstance(links, Mapping):
        return None
    link = links.get(name)
    href = link.get("href") if isinstance(link, Mapping) else None
    return href if isinstance(href, str) and href else None


def _get_str(doc: Any, key: str) -> str | None:
    value = doc.get(key) if isinstance(doc, Mapping) else None
    return value if isinstance(value, str) else None


def _relationship_guid(resource: Mapping[str, Any], name: str) -> str | None:
    try:
        guid = resource["relationships"][name]["data"]["guid"]
    except (KeyError, TypeError):
        return None
    return guid if isinstance(guid, str) else None


def _collect_included(
    included: Any,
    spaces: dict[str, tuple[str, str | None]],
    orgs: dict[str, str],
    labels: dict[str, Labels] | None = None,
    label_keys: frozenset[str] = frozenset(),
) -> None:
    if not isinstance(included, Mapping):
        return
    for space in included.get("spaces") or ():
        guid, name = _get_str(space, "guid"), _get_str(space, "name")
        if guid is not None and name is not None:
            spaces[guid] = (name, _relationship_guid(space, "organization"))
            if labels is not None:
                _keep_labels(space, guid, labels, label_keys)
    for org in included.get("organizations") or ():
        guid, name = _get_str(org, "guid"), _get_str(org, "name")
        if guid is not None and name is not None:
            orgs[guid] = name
            if labels is not None:
                _keep_labels(org, guid, labels, label_keys)


def _join(
    guid: str,
    name: str,
    space_guid: str | None,
    spaces: Mapping[str, tuple[str, str | None]],
    orgs: Mapping[str, str],
    stats: ListStats,
    labels: Mapping[str, Labels] | None = None,
) -> AppInfo | None:
    if space_guid is None or (space := spaces.get(space_guid)) is None:
        stats.missing_space += 1
        _sample(stats, guid)
        return None
    space_name, org_guid = space
    if org_guid is None or (org_name := orgs.get(org_guid)) is None:
        stats.missing_org += 1
        _sample(stats, guid)
        return None
    if labels:
        return AppInfo(
            guid,
            name,
            space_guid,
            space_name,
            org_guid,
            org_name,
            labels.get(org_guid, ()),
            labels.get(space_guid, ()),
            labels.get(guid, ()),
        )
    return AppInfo(guid, name, space_guid, space_name, org_guid, org_name)


def _sample(stats: ListStats, guid: str) -> None:
    if len(stats.unresolved) < _SAMPLE_LIMIT:
        stats.unresolved.append(guid)


def _cf_titles(resp: requests.Response) -> tuple[str, ...]:
    """``("CF-ResourceNotFound", ...)`` from a v3 error body (any content type), else ``()``."""
    try:
        doc = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return ()
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return ()
    return tuple(str(e.get("title")) for e in errors if isinstance(e, dict) and e.get("title"))


def _cf_details(resp: requests.Response) -> tuple[str, ...]:
    """The ``detail`` of each error of a v3 error body, else ``()``."""
    try:
        doc = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return ()
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return ()
    return tuple(str(e["detail"]) for e in errors if isinstance(e, dict) and isinstance(e.get("detail"), str))


def _oauth_error(resp: requests.Response) -> str:
    try:
        doc = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return "(no OAuth error body)"
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        return "(no OAuth error body)"
    description = doc.get("error_description")
    return doc["error"] + (f" ({description})" if isinstance(description, str) else "")


def _describe_status(resp: requests.Response) -> str:
    titles = _cf_titles(resp)
    return f"HTTP {resp.status_code}" + (f" {', '.join(titles)}" if titles else "")


def _describe(method: str, url: str, resp: requests.Response) -> str:
    text = f"{method} {_path(url)}: {_describe_status(resp)}"
    request_id = resp.headers.get("X-Vcap-Request-Id")
    return text + (f" (X-Vcap-Request-Id {request_id})" if request_id else "")
