"""A small Cloud Controller v3 client: UAA client-credentials auth, retries, keyset app listing.

Only what the metadata refresh and the enricher need:

* :meth:`CloudControllerClient.list_apps` — every app (any state) joined to its space and org, listed
  by **keyset pagination** on the creation time (see :meth:`CloudControllerClient.iter_app_pages`), so
  that apps deleted or created during the listing never make it skip an app that lived throughout;
* :meth:`CloudControllerClient.get_app` — one app by GUID (``None`` when the Cloud Controller says it
  does not exist).

Its transport (UAA tokens, retries within a deadline, JSON answers) is :mod:`.cc_transport`, the
documents it reads :mod:`.cc_documents`, what it raises :mod:`.cc_errors`.

The client secret and tokens never appear in log records, exception messages or ``repr``.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote, urlencode

import requests

from refinery.config import default_of
from refinery.metadata.cc_documents import (
    ListStats,
    collect_apps,
    collect_included,
    get_str,
    join_apps,
    keep_labels,
    link_href,
    relationship_guid,
)
from refinery.metadata.cc_errors import (
    CloudControllerAuthError,
    CloudControllerError,
    CloudControllerUnavailable,
    url_path,
)
from refinery.metadata.cc_transport import (
    GLOBAL_READ_SCOPES,
    NEEDED_SCOPES,
    CloudControllerTransport,
    token_refresh_margin,
)
from refinery.metadata.gcpause import gc_paused
from refinery.metadata.snapshot import AppInfo, Labels
from refinery.retry import RetryPolicy
from refinery.tracing import traced

__all__ = [
    "NEEDED_SCOPES",
    "CloudControllerAuthError",
    "CloudControllerClient",
    "CloudControllerError",
    "CloudControllerUnavailable",
    "ListStats",
    "token_refresh_margin",
]

log = logging.getLogger(__name__)

MAX_PER_PAGE = 5000
#: CC's 400 when page × per_page exceeds its ``max_total_results`` (list_message.rb).
_MAX_TOTAL_RESULTS = re.compile(r"\(page \* per_page\) must be less than (\d+)")


class CloudControllerClient(CloudControllerTransport):
    """Cloud Controller v3 client authenticated with a UAA client-credentials grant."""

    def __init__(
        self,
        api_url: str,
        client_id: str,
        client_secret: str,
        *,
        uaa_url: str | None = None,
        timeout: tuple[float, float] = (5.0, default_of("CF_TIMEOUT")),  # connect, read
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
        self._token = None
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
                    f"GET {url_path(url)}: the listing does not advance (a page already read)",
                    method="GET",
                    path=url_path(url),
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
                    f"GET {url_path(url)}: response is not a v3 list (no 'resources' array)",
                    method="GET",
                    path=url_path(url),
                    status=200,
                )
            yield page
            pagination = page.get("pagination")
            if not resources or not (isinstance(pagination, dict) and link_href(pagination, "next")):
                return
            last = get_str(resources[-1], "created_at")
            if last is None:
                raise CloudControllerError(
                    f"GET {url_path(url)}: the last app of the page has no created_at to continue from",
                    method="GET",
                    path=url_path(url),
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
            f"GET {url_path(url)}: the Cloud Controller caps page × per_page at {cap} (max_total_results),"
            f" {why}; raise the Cloud Controller's renderer.max_total_results",
            method="GET",
            path=url_path(url),
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
                collect_included(page.get("included"), spaces, orgs, labels, self.label_keys)
                collect_apps(page["resources"], raw_apps, stats, labels, self.label_keys)
                del page
        stats.per_page = self.per_page
        apps: dict[str, AppInfo] = {}
        for guid, (name, space_guid) in raw_apps.items():
            info = join_apps(guid, name, space_guid, spaces, orgs, stats, labels)
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
        name = get_str(doc, "name")
        if name is None:
            raise CloudControllerError(
                f"GET {url_path(url)}: app resource has no name", method="GET", path=url_path(url)
            )
        spaces: dict[str, tuple[str, str | None]] = {}
        orgs: dict[str, str] = {}
        labels: dict[str, Labels] | None = {} if self.label_keys else None
        collect_included(doc.get("included"), spaces, orgs, labels, self.label_keys)
        stats = ListStats()
        app_guid = get_str(doc, "guid") or guid
        if labels is not None:
            keep_labels(doc, app_guid, labels, self.label_keys)
        info = join_apps(app_guid, name, relationship_guid(doc, "space"), spaces, orgs, stats, labels)
        if info is None:
            raise CloudControllerError(
                f"GET {url_path(url)}: app's space or organization missing from 'included'",
                method="GET",
                path=url_path(url),
                status=200,
            )
        return info
