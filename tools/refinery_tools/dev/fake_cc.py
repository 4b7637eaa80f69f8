"""A faithful fake Cloud Controller v3 + UAA, served over HTTP on 127.0.0.1, for tests and local runs.

It follows the servers' sources (cloudfoundry/cloud_controller_ng and cloudfoundry/uaa; see
``../shared/reference/real-cloud-controller.md`` for the facts and their paths), not the client's
assumptions:

* **UAA** ``/oauth/token`` (client credentials): HTTP Basic credentials are base64-decoded, then
  **URL-decoded** as ``ClientBasicAuthenticationFilter`` does (Java's ``URLDecoder``: ``+`` is a space,
  a stray ``%`` is ``401 Failed to URL Decode credentials``), unless ``uri_encoding_compatibility_mode``
  and no ``X-CF-ENCODED-CREDENTIALS: true`` header; form-body ``client_id``/``client_secret`` are taken
  as the form decodes them. Bad credentials: ``401 {"error":"unauthorized","error_description":"Bad
  credentials"}``.
* **Lists are LIMIT/OFFSET over the live data** (``sequel_paginator.rb``): a page is computed from the
  foundation as it is when the request arrives, so an app deleted from a page already read shifts every
  later page. ``order_by`` (``created_at``, ``updated_at``, ``name``, ``state``, ``+``/``-``) sorts, then
  ``guid`` breaks ties; the default order is creation order. ``created_ats``/``updated_ats`` filter by a
  list of timestamps or one relational operator (``[lt]``, ``[lte]``, ``[gt]``, ``[gte]``).
* ``max_total_results`` (an operator cap; none by default): ``page × per_page`` above it is ``400
  CF-BadQueryParameter`` "Maximum result (page * per_page) must be less than N" (``list_message.rb``).
* **Scope-based visibility** (``application_controller.rb``, ``permissions.rb``): a token with
  ``cloud_controller.admin``, ``.admin_read_only`` or ``.global_auditor`` reads everything; one with only
  ``cloud_controller.read`` sees the apps and spaces of the spaces it has roles in (200 with an empty
  list when none) and a GET of another app is 404; a token with none of these scopes gets ``403
  CF-NotAuthorized``. See :meth:`FakeCloudController.add_client`.
* ``metadata.labels`` of every org, space and app (and of those under ``included``) hold what
  :meth:`Foundation.set_labels` set, as ``PATCH …/:guid {"metadata": {"labels": …}}`` leaves them (a
  ``null`` value removes its key; ``updated_at`` moves); ``annotations`` are always ``{}``.
* Error bodies ``{"errors": [{"detail", "title", "code"}]}`` as ``errors/v2.yml`` words them; query
  validation messages as ``list_message.rb`` and ``base_message.rb`` word them.
* Rate limiting (:meth:`FakeCloudController.enable_rate_limiting`, ``base_rate_limiter.rb``): every
  limited response carries ``X-RateLimit-Limit``/``-Reset``/``-Remaining``; past the limit, ``429``
  ``text/plain`` with a JSON ``CF-RateLimitExceeded`` body and ``Retry-After`` in seconds; admin and
  admin_read_only tokens are exempt unless an admin limit is set.

Faults are thread-safe switches that can be flipped while the server runs::

    with FakeCloudController(Foundation.generate(orgs=2, spaces_per_org=2, apps_per_space=5)) as cc:
        cc.fail_page(2, status=503)      # every request for page=2 of /v3/apps fails
        cc.fail_listing_after(3, 503)    # /v3/apps list requests fail once 3 of them have succeeded
        cc.rate_limit(3, retry_after=1)  # the next 3 /v3 requests answer 429
        cc.fail_next(2, status=502)      # the next 2 /v3 requests fail
        cc.latency(0.2)                  # every response is delayed
        cc.expire_all_tokens()           # issued tokens become invalid (401)
        cc.down(); cc.up()               # connections are dropped without a response
        cc.after_list_request(hook)      # hook(n) runs after the n-th /v3/apps list was answered
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import random
import re
import secrets
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from operator import attrgetter
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import orjson

from refinery.metadata.snapshot import AppInfo

MAX_PER_PAGE = 5000
DEFAULT_PER_PAGE = 50
DEFAULT_QUOTA_GUID = "d4c91047-7b29-4fda-b7f9-04033e5c9c9f"
APP_STATES = ("STARTED", "STOPPED")
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def _timestamp(offset_s: int = 0) -> str:
    return (_EPOCH + timedelta(seconds=offset_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------ foundation

#: A resource's ``metadata.labels``, as sorted (key, value) pairs (the resources are frozen and hashed).
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Org:
    guid: str
    name: str
    created_at: str
    updated_at: str
    suspended: bool = False
    labels: Labels = ()


@dataclass(frozen=True, slots=True)
class Space:
    guid: str
    name: str
    org_guid: str
    created_at: str
    updated_at: str
    labels: Labels = ()


@dataclass(frozen=True, slots=True)
class App:
    guid: str
    name: str
    space_guid: str
    state: str
    created_at: str
    updated_at: str
    labels: Labels = ()


@dataclass
class Foundation:
    """Orgs, spaces and apps, in creation order (the Cloud Controller's default list order).

    Mutators are thread-safe and may be called while a :class:`FakeCloudController` serves the foundation.
    """

    orgs: dict[str, Org] = field(default_factory=dict)
    spaces: dict[str, Space] = field(default_factory=dict)
    apps: dict[str, App] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False, compare=False)
    _app_list: list[App] | None = field(default=None, init=False, repr=False, compare=False)
    _rng: random.Random = field(
        default_factory=lambda: random.Random(0), init=False, repr=False, compare=False
    )

    @classmethod
    def generate(
        cls,
        orgs: int = 3,
        spaces_per_org: int = 3,
        apps_per_space: int = 5,
        seed: int = 0,
        stopped_every: int = 0,
        apps_per_second: int = 1,
    ) -> Foundation:
        """A deterministic foundation: names ``org-O``, ``space-O-S``, ``app-O-S-A``; GUIDs from ``seed``.

        Every ``stopped_every``-th app (if > 0) is ``STOPPED``. Resources are created one second apart,
        apps ``apps_per_second`` at a time (CC's timestamps have one-second resolution: a bulk import
        gives many apps the same ``created_at``). 100 000 apps take well under a second.
        """
        if apps_per_second < 1:
            raise ValueError("apps_per_second must be at least 1")
        rng = random.Random(seed)
        foundation = cls()
        foundation._rng = random.Random(seed + 1)
        tick = 0
        for o in range(orgs):
            org = Org(_guid(rng), f"org-{o}", _timestamp(tick), _timestamp(tick))
            foundation.orgs[org.guid] = org
            for s in range(spaces_per_org):
                tick += 1
                space = Space(_guid(rng), f"space-{o}-{s}", org.guid, _timestamp(tick), _timestamp(tick))
                foundation.spaces[space.guid] = space
                for a in range(apps_per_space):
                    index = len(foundation.apps) + 1
                    if (index - 1) % apps_per_second == 0:
                        tick += 1
                        stamp = _timestamp(tick)
                    state = "STOPPED" if stopped_every and index % stopped_every == 0 else "STARTED"
                    app = App(_guid(rng), f"app-{o}-{s}-{a}", space.guid, state, stamp, stamp)
                    foundation.apps[app.guid] = app
        return foundation

    # -- mutators -----------------------------------------------------------------------------------

    def add_org(self, name: str, guid: str | None = None) -> Org:
        with self._lock:
            stamp = _now_timestamp()
            org = Org(guid or _guid(self._rng), name, stamp, stamp)
            self.orgs[org.guid] = org
            return org

    def add_space(self, name: str, org_guid: str, guid: str | None = None) -> Space:
        with self._lock:
            if org_guid not in self.orgs:
                raise KeyError(f"no org {org_guid}")
            stamp = _now_timestamp()
            space = Space(guid or _guid(self._rng), name, org_guid, stamp, stamp)
            self.spaces[space.guid] = space
            return space

    def add_app(self, name: str, space_guid: str, *, state: str = "STARTED", guid: str | None = None) -> App:
        if state not in APP_STATES:
            raise ValueError(f"state must be one of {APP_STATES}")
        with self._lock:
            if space_guid not in self.spaces:
                raise KeyError(f"no space {space_guid}")
            stamp = _now_timestamp()
            app = App(guid or _guid(self._rng), name, space_guid, state, stamp, stamp)
            self.apps[app.guid] = app
            self._app_list = None
            return app

    def rename_app(self, guid: str, name: str) -> App:
        return self._update_app(guid, name=name)

    def set_app_state(self, guid: str, state: str) -> App:
        if state not in APP_STATES:
            raise ValueError(f"state must be one of {APP_STATES}")
        return self._update_app(guid, state=state)

    def move_app(self, guid: str, space_guid: str) -> App:
        if space_guid not in self.spaces:
            raise KeyError(f"no space {space_guid}")
        return self._update_app(guid, space_guid=space_guid)

    def delete_app(self, guid: str) -> App:
        with self._lock:
            app = self.apps.pop(guid)
            self._app_list = None
            return app

    def rename_space(self, guid: str, name: str) -> Space:
        with self._lock:
            space = replace(self.spaces[guid], name=name, updated_at=_now_timestamp())
            self.spaces[guid] = space
            return space

    def rename_org(self, guid: str, name: str) -> Org:
        with self._lock:
            org = replace(self.orgs[guid], name=name, updated_at=_now_timestamp())
            self.orgs[guid] = org
            return org

    def set_labels(self, guid: str, labels: Mapping[str, str | None]) -> Org | Space | App:
        """``PATCH /v3/{organizations,spaces,apps}/:guid`` with ``{"metadata": {"labels": …}}``: the
        keys given are set, a ``None`` value removes its key, the others are kept; ``updated_at`` moves."""
        with self._lock:
            tables: tuple[dict[str, Any], ...] = (self.orgs, self.spaces, self.apps)
            for table in tables:
                if guid in table:
                    resource = table[guid]
                    merged = dict(resource.labels)
                    for key, value in labels.items():
                        if value is None:
                            merged.pop(key, None)
                        else:
                            merged[key] = value
                    stamp = _now_timestamp()
                    changed = replace(resource, labels=tuple(sorted(merged.items())), updated_at=stamp)
                    table[guid] = changed
                    if table is self.apps:
                        self._app_list = None
                    return changed
            raise KeyError(f"no org, space or app {guid}")

    def _update_app(self, guid: str, **changes: Any) -> App:
        with self._lock:
            app = replace(self.apps[guid], updated_at=_now_timestamp(), **changes)
            self.apps[guid] = app  # an existing key keeps its position
            self._app_list = None
            return app

    # -- views --------------------------------------------------------------------------------------

    def app_list(self) -> list[App]:
        """All apps in creation order (cached until the next change; do not mutate)."""
        with self._lock:
            if self._app_list is None:
                self._app_list = list(self.apps.values())
            return self._app_list

    def app_info(self, guid: str, label_keys: Iterable[str] = ()) -> AppInfo:
        """The app as a client keeping the values of ``label_keys`` derives it."""
        app = self.apps[guid]
        space = self.spaces[app.space_guid]
        org = self.orgs[space.org_guid]
        keys = frozenset(label_keys)
        if not keys:
            return AppInfo(app.guid, app.name, space.guid, space.name, org.guid, org.name)

        def kept(labels: Labels) -> Labels:
            return tuple((k, v) for k, v in labels if k in keys)

        return AppInfo(
            app.guid,
            app.name,
            space.guid,
            space.name,
            org.guid,
            org.name,
            kept(org.labels),
            kept(space.labels),
            kept(app.labels),
        )

    def app_infos(self, label_keys: Iterable[str] = ()) -> dict[str, AppInfo]:
        """What a correct client (keeping the values of ``label_keys``) should derive from this foundation."""
        with self._lock:
            return {guid: self.app_info(guid, label_keys) for guid in self.apps}


def _guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# ------------------------------------------------------------------------------------- request log


@dataclass(frozen=True, slots=True)
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    status: int  # 0 when the connection was dropped (down())
    at: float


# ----------------------------------------------------------------------------------------- server


class _Reply:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}


def _json_reply(status: int, doc: Any, headers: dict[str, str] | None = None) -> _Reply:
    merged = {"Content-Type": "application/json; charset=utf-8"}
    merged.update(headers or {})
    return _Reply(status, orjson.dumps(doc), merged)


def _cf_error(
    status: int, code: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> _Reply:
    return _json_reply(
        status, {"errors": [{"detail": detail, "title": f"CF-{title}", "code": code}]}, headers
    )


def _bad_query(detail: str) -> _Reply:
    return _cf_error(400, 10005, "BadQueryParameter", f"The query parameter is invalid: {detail}")


_UNKNOWN_REQUEST = (404, 10000, "NotFound", "Unknown request")
_NOT_AUTHORIZED = (403, 10003, "NotAuthorized", "You are not authorized to perform the requested action")
_APP_LIST_PARAMS = (  # apps_list_message.rb: its keys, then the list and filtering keys it inherits
    "names",
    "guids",
    "organization_guids",
    "space_guids",
    "stacks",
    "include",
    "lifecycle_type",
    "label_selector",
    "page",
    "per_page",
    "order_by",
    "created_ats",
    "updated_ats",
)
_SPACE_LIST_PARAMS = ("names", "guids", "organization_guids", "include", "page", "per_page", "order_by")
_ORG_LIST_PARAMS = ("names", "guids", "page", "per_page", "order_by")
#: ``order_by`` values (list_message.rb: created_at, updated_at; apps_list_message.rb adds name, state).
_APP_ORDER_BY = ("created_at", "updated_at", "name", "state")
_ORDER_BY = ("created_at", "updated_at", "name")
_RELATIONAL = ("lt", "lte", "gt", "gte")
_TIMESTAMP = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
#: Token scopes that read the whole foundation (permissions.rb ``can_read_globally?``).
GLOBAL_READ_SCOPES = (
    "cloud_controller.admin",
    "cloud_controller.admin_read_only",
    "cloud_controller.global_auditor",
)
#: Scopes the rate limiter treats as admin (base_rate_limiter.rb ``admin?``).
_RATE_LIMIT_ADMIN_SCOPES = ("cloud_controller.admin", "cloud_controller.admin_read_only")


@dataclass(frozen=True, slots=True)
class _Caller:
    """Who a valid token belongs to, and what it may read (None: everything)."""

    client_id: str
    scopes: frozenset[str]
    readable_spaces: frozenset[str] | None


class FakeCloudController:
    """Serve a :class:`Foundation` as Cloud Controller v3 + UAA on ``127.0.0.1:<free port>``."""

    def __init__(
        self,
        foundation: Foundation | None = None,
        *,
        client_id: str = "refinery",
        client_secret: str = "refinery-secret",
        expires_in: int = 43199,
        scope: str = "cloud_controller.admin_read_only",
        host: str = "127.0.0.1",
        max_total_results: int | None = None,
        uri_encoding_compatibility_mode: bool = False,
        external_url: str | None = None,
    ) -> None:
        self.foundation = foundation if foundation is not None else Foundation()
        #: client id -> secret (UAA's client registrations); see :meth:`add_client` for scopes and roles.
        self.clients: dict[str, str] = {}
        self.client_scopes: dict[str, str] = {}
        self.client_spaces: dict[str, frozenset[str]] = {}  # spaces where the client has a space role
        self.client_managed_orgs: dict[str, frozenset[str]] = {}  # orgs where it is org manager
        self.add_client(client_id, client_secret, scope=scope)
        self.expires_in = expires_in
        #: CC's ``renderer.max_total_results`` (None: no cap, the default).
        self.max_total_results = max_total_results
        #: UAA's ``authentication.enableUriEncodingCompatibilityMode`` (false by default).
        self.uri_encoding_compatibility_mode = uri_encoding_compatibility_mode
        #: CC's ``external_protocol://external_domain``, which its pagination links carry whatever host
        #: was called (paginated_list_presenter.rb); None: the URL it serves on.
        self.external_url = external_url
        self._host = host
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._token_clients: dict[str, str] = {}  # token -> client id
        self._list_requests = 0  # /v3/apps list requests answered 200
        self._list_hook: Callable[[int], None] | None = None
        self._listing_failure: tuple[int, int, int | None] | None = None  # (after, status, remaining)
        self._rate_limiting: dict[str, Any] | None = None
        self._rate_counts: dict[str, tuple[int, float]] = {}  # client id -> (count, window end, epoch s)
        self._log: list[RequestRecord] = []
        self._down = False
        self._latency = 0.0
        self._page_failures: dict[int, list[int | None]] = {}  # page -> [status, remaining or None]
        self._next_failures: list[tuple[int, str, bool]] = []  # (status, path prefix, gorouter), one each
        self._rate_limited = 0
        self._retry_after = 1
        self._retry_after_epoch = False
        self._connections: set[socket.socket] = set()
        # Serialised resources, built once per resource version (App, Space and Org are immutable: a change
        # replaces the object, so a stale entry is never found again). They embed self.url: reset on start.
        self._fragments: dict[App | Space | Org, bytes] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> FakeCloudController:
        if self._server is not None:
            return self
        server = _Server((self._host, 0), _Handler)
        server.fake = self
        self._fragments = {}
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-cc", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeCloudController:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeCloudController is not running; call start()")
        host, port = self._server.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"

    @property
    def uaa_url(self) -> str:
        return f"{self.url}/uaa"

    # -- clients ------------------------------------------------------------------------------------

    def add_client(
        self,
        client_id: str,
        secret: str,
        *,
        scope: str = "cloud_controller.read",
        spaces: Iterable[str] = (),
        managed_orgs: Iterable[str] = (),
    ) -> None:
        """Register a UAA client with the authorities ``scope`` (space-separated) and CC roles: a space
        role in each of ``spaces``, org manager of each of ``managed_orgs`` (which reads all their spaces)."""
        self.clients[client_id] = secret
        self.client_scopes[client_id] = scope
        self.client_spaces[client_id] = frozenset(spaces)
        self.client_managed_orgs[client_id] = frozenset(managed_orgs)

    def enable_rate_limiting(
        self, limit: int = 2000, *, interval: float = 3600.0, admin_limit: int | None = None
    ) -> None:
        """CC's rate limiter: ``limit`` requests per client per ``interval`` seconds (CC configures
        minutes), with the ``X-RateLimit-*`` headers on every limited response; admin and admin_read_only
        tokens are exempt unless ``admin_limit`` is set."""
        with self._lock:
            self._rate_limiting = {"limit": limit, "interval": interval, "admin_limit": admin_limit}
            self._rate_counts.clear()

    # -- faults -------------------------------------------------------------------------------------

    def fail_page(self, page: int, status: int = 503, count: int | None = None) -> None:
        """Fail requests for ``page`` of ``/v3/apps`` with ``status`` (``count`` times, or until cleared)."""
        with self._lock:
            self._page_failures[page] = [status, count]

    def fail_listing_after(self, answered: int, status: int = 503, count: int | None = None) -> None:
        """``/v3/apps`` list requests fail with ``status`` once ``answered`` of them have been answered 200
        (``count`` times, or until cleared): a listing that breaks part-way, whatever its paging."""
        with self._lock:
            self._listing_failure = (answered, status, count)

    def after_list_request(self, hook: Callable[[int], None] | None) -> None:
        """Run ``hook(n)`` after the n-th ``/v3/apps`` list request was answered 200 (before the next
        request is read): e.g. delete apps between two pages, as users do during a real listing."""
        with self._lock:
            self._list_hook = hook

    def rate_limit(self, count: int, retry_after: int = 1, *, retry_after_epoch: bool = False) -> None:
        """The next ``count`` /v3 requests answer 429 like CC's rate limiter (a fault: any client).

        ``Retry-After`` carries ``retry_after`` seconds, as the Cloud Controller does since commit 411ab44c11
        (2023-05-16), or the reset time in epoch seconds as it did before, when ``retry_after_epoch``.
        ``X-RateLimit-Reset`` is always epoch seconds.
        """
        with self._lock:
            self._rate_limited = count
            self._retry_after = retry_after
            self._retry_after_epoch = retry_after_epoch

    def fail_next(
        self, count: int, status: int = 503, path_prefix: str = "/v3/", *, router: bool = False
    ) -> None:
        """The next ``count`` requests whose path starts with ``path_prefix`` fail with ``status``; with
        ``router``, as gorouter answers when no Cloud Controller instance is registered (plain text,
        ``X-Cf-Routererror: no_endpoints``) instead of the Cloud Controller's own error body."""
        with self._lock:
            self._next_failures.extend([(status, path_prefix, router)] * count)

    def latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = seconds

    def expire_all_tokens(self) -> None:
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = 0.0

    @property
    def list_requests(self) -> int:
        """How many ``/v3/apps`` list requests were answered 200."""
        with self._lock:
            return self._list_requests

    def down(self) -> None:
        """Drop open connections and answer every new request by closing the connection."""
        with self._lock:
            self._down = True
        self._drop_connections()

    def up(self) -> None:
        with self._lock:
            self._down = False

    def clear_faults(self) -> None:
        with self._lock:
            self._page_failures.clear()
            self._listing_failure = None
            self._list_hook = None
            self._next_failures.clear()
            self._rate_limited = 0
            self._latency = 0.0
            self._down = False

    # -- request log --------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def count(self, path: str | None = None, *, prefix: str | None = None, method: str | None = None) -> int:
        """How many logged requests match an exact ``path``, a path ``prefix`` and/or ``method``."""
        return sum(
            1
            for r in self.requests
            if (path is None or r.path == path)
            and (prefix is None or r.path.startswith(prefix))
            and (method is None or r.method == method)
        )

    @property
    def token_requests(self) -> int:
        return self.count(method="POST", prefix="/uaa/oauth/token") + self.count(
            method="POST", prefix="/login/oauth/token"
        )

    # -- internals used by the handler --------------------------------------------------------------

    def _register(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _drop_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            _reset(conn)

    def _record(self, method: str, path: str, query: dict[str, str], status: int) -> None:
        with self._lock:
            self._log.append(RequestRecord(method, path, query, status, time.time()))

    def _pre_dispatch(self) -> tuple[bool, float]:
        with self._lock:
            return self._down, self._latency

    def _handle(self, method: str, path: str, query: dict[str, str], headers: Any, body: bytes) -> _Reply:
        if path in ("/uaa/oauth/token", "/login/oauth/token"):
            if method != "POST":
                return _json_reply(405, {"error": "method_not_allowed", "error_description": "Use POST"})
            return self._token(headers, body)
        if method != "GET":
            return _cf_error(*_UNKNOWN_REQUEST)
        if path in ("", "/"):
            return _json_reply(200, self._root())
        if path == "/v3":
            return _json_reply(200, self._v3_root())  # like GET /, no token needed
        if not path.startswith("/v3"):
            return _cf_error(*_UNKNOWN_REQUEST)
        injected = self._injected_failure(path, query)
        if injected is not None:
            return injected
        caller = self._caller(headers.get("Authorization"))
        if isinstance(caller, _Reply):
            return caller
        limited, rate_headers = self._rate_limit_check(caller)
        if limited is not None:
            return limited
        reply = self._page_failure(path, query) or self._listing_fault(path)
        if reply is None:
            if not caller.scopes & {*GLOBAL_READ_SCOPES, "cloud_controller.read"}:
                reply = _cf_error(*_NOT_AUTHORIZED)  # application_controller.rb check_read_permissions!
            else:
                reply = self._route_v3(path, query, caller)
        reply.headers.update(rate_headers)
        if path == "/v3/apps" and reply.status == 200:
            with self._lock:
                self._list_requests += 1
                answered, hook = self._list_requests, self._list_hook
            if hook is not None:
                hook(answered)
        return reply

    def _injected_failure(self, path: str, query: dict[str, str]) -> _Reply | None:
        with self._lock:
            for index, (status, prefix, router) in enumerate(self._next_failures):
                if path.startswith(prefix):
                    del self._next_failures[index]
                    return _router_failure(status, urlsplit(self.url).netloc) if router else _failure(status)
            if self._rate_limited > 0:
                self._rate_limited -= 1
                return self._rate_limit_reply()
        return None

    def _rate_limit_reply(self) -> _Reply:
        reset = math.ceil(time.time()) + self._retry_after
        retry_after = str(reset) if self._retry_after_epoch else str(self._retry_after)
        return _too_many_requests(
            retry_after,
            {"X-RateLimit-Limit": "2000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)},
        )

    def _rate_limit_check(self, caller: _Caller) -> tuple[_Reply | None, dict[str, str]]:
        """CC's RateLimiter middleware for an authenticated request: (429 reply or None, headers)."""
        with self._lock:
            settings = self._rate_limiting
            if settings is None:
                return None, {}
            limit = settings["limit"]
            if caller.scopes & set(_RATE_LIMIT_ADMIN_SCOPES):
                if settings["admin_limit"] is None:
                    return None, {}
                limit = settings["admin_limit"]
            now = time.time()
            count, window_end = self._rate_counts.get(caller.client_id, (0, 0.0))
            if window_end <= now:
                count, window_end = 0, now + settings["interval"]
            count += 1
            self._rate_counts[caller.client_id] = (count, window_end)
        expires_in = max(0, math.ceil(window_end - now))
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Reset": str(math.ceil(now) + expires_in),
            "X-RateLimit-Remaining": str(max(0, limit - count)),
        }
        if count > limit:
            return _too_many_requests(str(expires_in), headers), {}
        return None, headers

    def _page_failure(self, path: str, query: dict[str, str]) -> _Reply | None:
        if path != "/v3/apps":
            return None
        try:
            page = int(query.get("page", "1"))
        except ValueError:
            return None
        with self._lock:
            entry = self._page_failures.get(page)
            if entry is None:
                return None
            status, remaining = entry
            if remaining is not None:
                if remaining <= 0:
                    del self._page_failures[page]
                    return None
                entry[1] = remaining - 1
        return _failure(int(status or 503))

    def _listing_fault(self, path: str) -> _Reply | None:
        if path != "/v3/apps":
            return None
        with self._lock:
            if self._listing_failure is None:
                return None
            answered, status, remaining = self._listing_failure
            if self._list_requests < answered:
                return None
            if remaining is not None:
                if remaining <= 0:
                    self._listing_failure = None
                    return None
                self._listing_failure = (answered, status, remaining - 1)
        return _failure(status)

    def _caller(self, header: str | None) -> _Caller | _Reply:
        """The token's client and what it may read, or the 401 CC answers (no token / invalid token)."""
        if not header:
            return _cf_error(401, 10002, "NotAuthenticated", "Authentication error")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        with self._lock:
            expiry = self._tokens.get(token) if scheme.lower() == "bearer" else None
            client_id = self._token_clients.get(token)
        if expiry is None or expiry <= time.monotonic() or client_id is None:
            return _cf_error(401, 1000, "InvalidAuthToken", "Invalid Auth Token")
        scopes = frozenset(self.client_scopes.get(client_id, "").split())
        if scopes & set(GLOBAL_READ_SCOPES):
            return _Caller(client_id, scopes, None)
        managed = self.client_managed_orgs.get(client_id, frozenset())
        readable = set(self.client_spaces.get(client_id, frozenset()))
        readable.update(g for g, space in list(self.foundation.spaces.items()) if space.org_guid in managed)
        return _Caller(client_id, scopes, frozenset(readable))

    def _token(self, headers: Any, body: bytes) -> _Reply:
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        header = headers.get("Authorization")
        client_id: str | None
        client_secret: str | None
        if header and header.lower().startswith("basic "):
            try:
                client_id, client_secret = self._basic_credentials(header, headers)
            except _BadCredentials as exc:
                return _unauthorized(str(exc))
        else:  # ClientCredentialsTokenEndpointFilter: the form's values, decoded once by the form
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if client_id is None or self.clients.get(client_id) != client_secret:
            return _unauthorized("Bad credentials")
        grant_type = form.get("grant_type")
        if grant_type != "client_credentials":
            return _json_reply(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": f"Unsupported grant type: {grant_type}",
                },
            )
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.expires_in
            self._token_clients[token] = client_id
            expires_in = self.expires_in
        return _json_reply(
            200,
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": expires_in,
                "scope": self.client_scopes.get(client_id, ""),
                "jti": uuid.uuid4().hex,
            },
            {"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def _basic_credentials(self, header: str, headers: Any) -> tuple[str, str]:
        """ClientBasicAuthenticationFilter: base64, split at the first ``:``, then URL-decode both
        parts, unless compatibility mode is on and the request lacks ``X-CF-ENCODED-CREDENTIALS: true``."""
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            raise _BadCredentials("Failed to decode basic authentication token") from None
        token = decoded.decode("utf-8", "replace")
        client_id, sep, secret = token.partition(":")
        if not sep:
            raise _BadCredentials("Invalid basic authentication token")
        encoded = (headers.get("X-CF-ENCODED-CREDENTIALS") or "false").lower() == "true"
        if self.uri_encoding_compatibility_mode and not encoded:
            return client_id, secret
        try:
            return java_url_decode(client_id), java_url_decode(secret)
        except ValueError:
            raise _BadCredentials("Failed to URL Decode credentials") from None

    def _root(self) -> dict[str, Any]:
        url = self.url
        return {
            "links": {
                "self": {"href": url},
                "bits_service": None,
                "cloud_controller_v2": None,
                "cloud_controller_v3": {"href": f"{url}/v3", "meta": {"version": "3.180.0"}},
                "network_policy_v0": {"href": f"{url}/networking/v0/external"},
                "network_policy_v1": {"href": f"{url}/networking/v1/external"},
                "login": {"href": f"{url}/login"},
                "uaa": {"href": f"{url}/uaa"},
                "credhub": None,
                "routing": {"href": f"{url}/routing"},
                "logging": None,
                "log_cache": {"href": f"{url}/log-cache"},
                "log_stream": {"href": f"{url}/log-stream"},
                "app_ssh": {
                    "href": "127.0.0.1:2222",
                    "meta": {"host_key_fingerprint": "fake", "oauth_client": "ssh-proxy"},
                },
            }
        }

    # -- v3 resources -------------------------------------------------------------------------------

    def _route_v3(self, path: str, query: dict[str, str], caller: _Caller) -> _Reply:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if len(parts) == 2:
            if parts[1] == "apps":
                return self._list_apps(query, caller)
            if parts[1] == "spaces":
                return self._list_spaces(query, caller)
            if parts[1] == "organizations":
                return self._list_orgs(query, caller)
        if len(parts) == 3:
            if parts[1] == "apps":
                return self._get_app(parts[2], query, caller)
            if parts[1] == "spaces":
                return self._get_space(parts[2], query, caller)
            if parts[1] == "organizations":
                return self._get_org(parts[2], caller)
        return _cf_error(*_UNKNOWN_REQUEST)

    def _v3_root(self) -> dict[str, Any]:
        url = self.url
        names = ("apps", "organizations", "spaces")
        return {"links": {"self": {"href": f"{url}/v3"}, **{n: {"href": f"{url}/v3/{n}"} for n in names}}}

    def _validate_list(
        self, query: dict[str, str], allowed: tuple[str, ...], order_by: tuple[str, ...]
    ) -> _Reply | None:
        """A list request's query as CC's ListMessage validates it: unknown keys first, then every
        problem of the others, joined as ``errors.full_messages`` are."""
        unknown = _unknown_params(query, allowed)
        if unknown is not None:
            return unknown
        problems = _pagination_problems(query, order_by, self.max_total_results)
        for name in ("created_ats", "updated_ats"):
            problems += _timestamp_problems(query, name)
        return _bad_query(", ".join(problems)) if problems else None

    def _list_apps(self, query: dict[str, str], caller: _Caller) -> _Reply:
        problem = self._validate_list(query, _APP_LIST_PARAMS, _APP_ORDER_BY) or _invalid_include(
            query, ("space", "space.organization")
        )
        if problem is not None:
            return problem
        apps: Sequence[App] = self.foundation.app_list()
        if caller.readable_spaces is not None:
            readable = caller.readable_spaces
            apps = [a for a in apps if a.space_guid in readable]
        apps = _ordered(_timestamp_filtered(self._filter_apps(apps, query), query), query)
        paged = _paginate(self.external_url or self.url, "/v3/apps", apps, query)
        pagination, chunk = paged
        # The same bytes as orjson.dumps({"pagination": …, "resources": [self._app(a) …], "included": …}),
        # assembled from serialised resources so that a 5000-app page costs milliseconds, not 0.1 s.
        parts = [
            b'{"pagination":',
            orjson.dumps(pagination),
            b',"resources":[',
            b",".join(map(self._fragment, chunk)),
            b"]",
        ]
        include = query.get("include")
        if include:
            spaces, orgs = self._included_resources(chunk, include)
            parts += [b',"included":{"spaces":[', b",".join(map(self._fragment, spaces)), b"]"]
            if orgs is not None:
                parts += [b',"organizations":[', b",".join(map(self._fragment, orgs)), b"]"]
            parts.append(b"}")
        parts.append(b"}")
        return _Reply(200, b"".join(parts), {"Content-Type": "application/json; charset=utf-8"})

    def _fragment(self, resource: App | Space | Org) -> bytes:
        """The JSON of one resource (:meth:`_app`, :meth:`_space` or :meth:`_org`), cached."""
        body = self._fragments.get(resource)
        if body is None:
            if isinstance(resource, App):
                body = orjson.dumps(self._app(resource))
            elif isinstance(resource, Space):
                body = orjson.dumps(self._space(resource))
            else:
                body = orjson.dumps(self._org(resource))
            known = len(self.foundation.apps) + len(self.foundation.spaces) + len(self.foundation.orgs)
            if len(self._fragments) > 2 * known:
                self._fragments = {}  # old versions of changed resources pile up: start again
            self._fragments[resource] = body
        return body

    def _filter_apps(self, apps: Sequence[App], query: dict[str, str]) -> Sequence[App]:
        checks: list[Callable[[App], bool]] = []
        if "guids" in query:
            guids = set(_csv(query["guids"]))
            checks.append(lambda a: a.guid in guids)
        if "names" in query:
            names = set(_csv(query["names"]))
            checks.append(lambda a: a.name in names)
        if "space_guids" in query:
            space_guids = set(_csv(query["space_guids"]))
            checks.append(lambda a: a.space_guid in space_guids)
        if "organization_guids" in query:
            org_guids = set(_csv(query["organization_guids"]))
            spaces = self.foundation.spaces
            checks.append(lambda a: a.space_guid in spaces and spaces[a.space_guid].org_guid in org_guids)
        if not checks:
            return apps
        return [a for a in apps if all(check(a) for check in checks)]

    def _included_for_apps(self, apps: Iterable[App], include: str | None) -> dict[str, Any] | None:
        if not include:
            return None
        spaces, orgs = self._included_resources(apps, include)
        included: dict[str, Any] = {"spaces": [self._space(s) for s in spaces]}
        if orgs is not None:
            included["organizations"] = [self._org(o) for o in orgs]
        return included

    def _included_resources(self, apps: Iterable[App], include: str) -> tuple[list[Space], list[Org] | None]:
        """The spaces of ``apps`` and, for ``include=space.organization``, their orgs (else None)."""
        foundation = self.foundation
        space_guids = dict.fromkeys(a.space_guid for a in apps)
        spaces = [foundation.spaces[g] for g in space_guids if g in foundation.spaces]
        if "space.organization" not in _csv(include):
            return spaces, None
        org_guids = dict.fromkeys(s.org_guid for s in spaces)
        return spaces, [foundation.orgs[g] for g in org_guids if g in foundation.orgs]

    def _get_app(self, guid: str, query: dict[str, str], caller: _Caller) -> _Reply:
        problem = _unknown_params(query, ("include",)) or _invalid_include(
            query, ("space", "space.organization")
        )
        if problem is not None:
            return problem
        app = self.foundation.apps.get(guid)
        if app is None or (
            caller.readable_spaces is not None and app.space_guid not in caller.readable_spaces
        ):
            return _cf_error(404, 10010, "ResourceNotFound", "App not found")
        doc = self._app(app)
        included = self._included_for_apps([app], query.get("include"))
        if included is not None:
            doc["included"] = included
        return _json_reply(200, doc)

    def _visible_spaces(self, caller: _Caller) -> list[Space]:
        spaces = list(self.foundation.spaces.values())
        if caller.readable_spaces is None:
            return spaces
        return [s for s in spaces if s.guid in caller.readable_spaces]

    def _list_spaces(self, query: dict[str, str], caller: _Caller) -> _Reply:
        problem = self._validate_list(query, _SPACE_LIST_PARAMS, _ORDER_BY) or _invalid_include(
            query, ("organization",)
        )
        if problem is not None:
            return problem
        spaces = self._visible_spaces(caller)
        if "guids" in query:
            guids = set(_csv(query["guids"]))
            spaces = [s for s in spaces if s.guid in guids]
        if "organization_guids" in query:
            org_guids = set(_csv(query["organization_guids"]))
            spaces = [s for s in spaces if s.org_guid in org_guids]
        pagination, chunk = _paginate(
            self.external_url or self.url, "/v3/spaces", _ordered(spaces, query), query
        )
        doc: dict[str, Any] = {"pagination": pagination, "resources": [self._space(s) for s in chunk]}
        if query.get("include"):
            included_orgs = dict.fromkeys(s.org_guid for s in chunk)
            doc["included"] = {
                "organizations": [
                    self._org(self.foundation.orgs[g]) for g in included_orgs if g in self.foundation.orgs
                ]
            }
        return _json_reply(200, doc)

    def _get_space(self, guid: str, query: dict[str, str], caller: _Caller) -> _Reply:
        problem = _unknown_params(query, ("include",)) or _invalid_include(query, ("organization",))
        if problem is not None:
            return problem
        space = self.foundation.spaces.get(guid)
        if space is None or (caller.readable_spaces is not None and guid not in caller.readable_spaces):
            return _cf_error(404, 10010, "ResourceNotFound", "Space not found")
        doc = self._space(space)
        if query.get("include") and space.org_guid in self.foundation.orgs:
            doc["included"] = {"organizations": [self._org(self.foundation.orgs[space.org_guid])]}
        return _json_reply(200, doc)

    def _visible_orgs(self, caller: _Caller) -> list[Org]:
        orgs = list(self.foundation.orgs.values())
        if caller.readable_spaces is None:
            return orgs
        # ROLES_FOR_ORG_READING: any org role; a space role implies the org user role
        member = {s.org_guid for s in self._visible_spaces(caller)}
        member |= self.client_managed_orgs.get(caller.client_id, frozenset())
        return [o for o in orgs if o.guid in member]

    def _list_orgs(self, query: dict[str, str], caller: _Caller) -> _Reply:
        problem = self._validate_list(query, _ORG_LIST_PARAMS, _ORDER_BY)
        if problem is not None:
            return problem
        orgs = self._visible_orgs(caller)
        if "guids" in query:
            guids = set(_csv(query["guids"]))
            orgs = [o for o in orgs if o.guid in guids]
        pagination, chunk = _paginate(
            self.external_url or self.url, "/v3/organizations", _ordered(orgs, query), query
        )
        return _json_reply(200, {"pagination": pagination, "resources": [self._org(o) for o in chunk]})

    def _get_org(self, guid: str, caller: _Caller) -> _Reply:
        org = self.foundation.orgs.get(guid)
        if org is None or org not in self._visible_orgs(caller):
            return _cf_error(404, 10010, "ResourceNotFound", "Organization not found")
        return _json_reply(200, self._org(org))

    def _app(self, app: App) -> dict[str, Any]:
        base = f"{self.url}/v3/apps/{app.guid}"
        return {
            "guid": app.guid,
            "name": app.name,
            "state": app.state,
            "created_at": app.created_at,
            "updated_at": app.updated_at,
            "lifecycle": {"type": "buildpack", "data": {"buildpacks": [], "stack": "cflinuxfs4"}},
            "relationships": {"space": {"data": {"guid": app.space_guid}}},
            "metadata": {"labels": dict(app.labels), "annotations": {}},
            "links": {
                "self": {"href": base},
                "environment_variables": {"href": f"{base}/environment_variables"},
                "space": {"href": f"{self.url}/v3/spaces/{app.space_guid}"},
                "processes": {"href": f"{base}/processes"},
                "packages": {"href": f"{base}/packages"},
                "current_droplet": {"href": f"{base}/droplets/current"},
                "droplets": {"href": f"{base}/droplets"},
                "tasks": {"href": f"{base}/tasks"},
                "start": {"href": f"{base}/actions/start", "method": "POST"},
                "stop": {"href": f"{base}/actions/stop", "method": "POST"},
                "revisions": {"href": f"{base}/revisions"},
                "deployed_revisions": {"href": f"{base}/revisions/deployed"},
                "features": {"href": f"{base}/features"},
            },
        }

    def _space(self, space: Space) -> dict[str, Any]:
        base = f"{self.url}/v3/spaces/{space.guid}"
        return {
            "guid": space.guid,
            "created_at": space.created_at,
            "updated_at": space.updated_at,
            "name": space.name,
            "relationships": {
                "organization": {"data": {"guid": space.org_guid}},
                "quota": {"data": None},
            },
            "metadata": {"labels": dict(space.labels), "annotations": {}},
            "links": {
                "self": {"href": base},
                "features": {"href": f"{base}/features"},
                "organization": {"href": f"{self.url}/v3/organizations/{space.org_guid}"},
                "apply_manifest": {"href": f"{base}/actions/apply_manifest", "method": "POST"},
            },
        }

    def _org(self, org: Org) -> dict[str, Any]:
        base = f"{self.url}/v3/organizations/{org.guid}"
        return {
            "guid": org.guid,
            "created_at": org.created_at,
            "updated_at": org.updated_at,
            "name": org.name,
            "suspended": org.suspended,
            "relationships": {"quota": {"data": {"guid": DEFAULT_QUOTA_GUID}}},
            "metadata": {"labels": dict(org.labels), "annotations": {}},
            "links": {
                "self": {"href": base},
                "domains": {"href": f"{base}/domains"},
                "default_domain": {"href": f"{base}/domains/default"},
                "quota": {"href": f"{self.url}/v3/organization_quotas/{DEFAULT_QUOTA_GUID}"},
            },
        }


# --------------------------------------------------------------------------------- module helpers


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def _param_name(key: str) -> str:
    """``created_ats[gte]`` -> ``created_ats``: Rails parses bracketed keys into one hash parameter."""
    return key.split("[", 1)[0]


def _unknown_params(query: dict[str, str], allowed: tuple[str, ...]) -> _Reply | None:
    unknown = sorted({_param_name(k) for k in query} - set(allowed))
    if not unknown:
        return None
    names = "', '".join(unknown)
    valid = "', '".join(allowed)
    return _bad_query(f"Unknown query parameter(s): '{names}'. Valid parameters are: '{valid}'")


def _invalid_include(query: dict[str, str], allowed: tuple[str, ...]) -> _Reply | None:
    if "include" not in query:
        return None
    bad = [v for v in query["include"].split(",") if v not in allowed]
    if not bad:
        return None
    valid = "', '".join(allowed)
    return _bad_query(f"Invalid included resource: '{bad[0]}'. Valid included resources are: '{valid}'")


def _ruby_to_i(text: str) -> int:
    """Ruby's ``String#to_i``: the leading integer, 0 when there is none (``"2x"`` is 2)."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def _pagination_problems(
    query: dict[str, str], order_by: tuple[str, ...], max_total: int | None
) -> list[str]:
    """``ListMessage``'s PaginationPageValidator and PaginationOrderValidator, as full messages."""
    problems: list[str] = []
    page, per_page = query.get("page"), query.get("per_page")
    if page is not None and _ruby_to_i(page) <= 0:
        problems.append("Page must be a positive integer")
    if per_page is not None:
        if _ruby_to_i(per_page) <= 0:
            problems.append("Per page must be a positive integer")
        elif _ruby_to_i(per_page) > MAX_PER_PAGE:
            problems.append(f"Per page must be between 1 and {MAX_PER_PAGE}")
    if (page is not None or per_page is not None) and max_total is not None:
        pages = _ruby_to_i(page) if page is not None else 1
        size = _ruby_to_i(per_page) if per_page is not None else DEFAULT_PER_PAGE
        if pages * size > max_total:
            problems.append(f"Maximum result (page * per_page) must be less than {max_total}")
    value = query.get("order_by")
    if value and not re.fullmatch(rf"[+-]?({'|'.join(order_by)})", value):
        valid = "', '".join(order_by)
        problems.append(f"Order by can only be: '{valid}'")
    return problems


def _timestamp_problems(query: dict[str, str], name: str) -> list[str]:
    """``TimestampValidator`` (messages/validators.rb) for ``created_ats`` / ``updated_ats``."""
    label = name.replace("_", " ").capitalize()
    problems: list[str] = []
    bad_format = (
        f"{label} has an invalid timestamp format. Timestamps should be formatted as 'YYYY-MM-DDThh:mm:ssZ'"
    )
    if name in query and not all(_TIMESTAMP.match(v) for v in query[name].split(",")):
        problems.append(bad_format)
    for key, value in query.items():
        if not key.startswith(name + "["):
            continue
        operator = key[len(name) + 1 :].rstrip("]")
        if operator not in _RELATIONAL:
            problems.append(f"{label} Invalid relational operator: '{operator}'")
        if "," in value:
            problems.append(f"{label} only accepts one value when using a relational operator")
        elif not _TIMESTAMP.match(value):
            problems.append(bad_format)
    return problems


def _member_of(get: Callable[[Any], str], values: set[str]) -> Callable[[Any], bool]:
    return lambda item: get(item) in values


def _compared(
    get: Callable[[Any], str], compare: Callable[[str, str], bool], bound: str
) -> Callable[[Any], bool]:
    return lambda item: compare(get(item), bound)


def _timestamp_filtered(items: Sequence[Any], query: dict[str, str]) -> Sequence[Any]:
    """BaseListFetcher.advanced_filtering at the presented (second) precision: ``lte``/``gt`` and the
    equality list take the whole second, ``lt``/``gte`` its start."""
    checks: list[Callable[[Any], bool]] = []
    for name, attribute in (("created_ats", "created_at"), ("updated_ats", "updated_at")):
        get = attrgetter(attribute)
        if name in query:
            checks.append(_member_of(get, set(query[name].split(","))))
        for operator in _RELATIONAL:
            bound = query.get(f"{name}[{operator}]")
            if bound is not None:
                compare = {"lt": str.__lt__, "lte": str.__le__, "gt": str.__gt__, "gte": str.__ge__}[operator]
                checks.append(_compared(get, compare, bound))
    if not checks:
        return items
    return [item for item in items if all(check(item) for check in checks)]


def _ordered(items: Sequence[Any], query: dict[str, str]) -> Sequence[Any]:
    """SequelPaginator: by ``order_by`` then ``guid``, both in its direction; default: creation order."""
    value = query.get("order_by")
    if not value:
        return items
    descending = value.startswith("-")
    column = value.lstrip("+-")
    return sorted(items, key=attrgetter(column, "guid"), reverse=descending)


def _paginate(
    url: str, path: str, items: Sequence[Any], query: dict[str, str]
) -> tuple[dict[str, Any], Sequence[Any]]:
    """LIMIT/OFFSET over ``items`` (the live data, already validated by :func:`_pagination_problems`),
    with links on the CC's own origin and the query re-serialised with its keys sorted (Rails to_query)."""
    per_page = _ruby_to_i(query.get("per_page", str(DEFAULT_PER_PAGE)))
    page = _ruby_to_i(query.get("page", "1"))
    total = len(items)
    total_pages = -(-total // per_page)

    def link(number: int) -> dict[str, str]:
        params = {**query, "page": str(number), "per_page": str(per_page)}
        return {"href": f"{url}{path}?{urlencode(sorted(params.items()))}"}

    pagination = {
        "total_results": total,
        "total_pages": total_pages,
        "first": link(1),
        "last": link(max(total_pages, 1)),
        "next": link(page + 1) if page < total_pages else None,
        "previous": link(page - 1) if page > 1 else None,
    }
    start = (page - 1) * per_page
    return pagination, items[start : start + per_page]


def _failure(status: int) -> _Reply:
    if status == 500:
        return _cf_error(500, 10001, "ServerError", "Server error")
    if status == 503:
        return _cf_error(503, 10015, "ServiceUnavailable", "Service unavailable")
    reason = {502: "Bad Gateway", 504: "Gateway Timeout"}.get(status, "Error")
    # gorouter-style plain-text body, as a load balancer or router would answer
    return _Reply(status, f"{status} {reason}\n".encode(), {"Content-Type": "text/plain; charset=utf-8"})


def _router_failure(status: int, host: str) -> _Reply:
    """gorouter's own error: plain text naming the route, and the ``X-Cf-Routererror`` header."""
    reason = {502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Error")
    text = f"{status} {reason}: Requested route ('{host}') has no available endpoints.\n"
    headers = {"Content-Type": "text/plain; charset=utf-8", "X-Cf-Routererror": "no_endpoints"}
    return _Reply(status, text.encode(), headers)


class _BadCredentials(Exception):
    """UAA's BadCredentialsException; its message becomes the 401's ``error_description``."""


def _unauthorized(description: str) -> _Reply:
    """UAA's 401 from the token endpoint's authentication entry point."""
    return _json_reply(
        401,
        {"error": "unauthorized", "error_description": description},
        {
            "WWW-Authenticate": 'Basic realm="UAA/client", error="unauthorized",'
            f' error_description="{description}"'
        },
    )


def _too_many_requests(retry_after: str, rate_headers: dict[str, str]) -> _Reply:
    """base_rate_limiter.rb ``too_many_requests!``: JSON sent as text/plain, Retry-After in seconds."""
    reply = _cf_error(429, 10013, "RateLimitExceeded", "Rate Limit Exceeded")
    reply.headers = {**rate_headers, "Retry-After": retry_after, "Content-Type": "text/plain; charset=utf-8"}
    return reply


def java_url_decode(text: str) -> str:
    """``java.net.URLDecoder.decode(text, UTF_8)``: ``+`` is a space, ``%XY`` runs are UTF-8 bytes
    (malformed ones become U+FFFD); a ``%`` not followed by two characters that ``Integer.parseInt(…, 16)``
    reads as a non-negative number raises :class:`ValueError`, as Java's IllegalArgumentException."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "+":
            out.append(" ")
            i += 1
        elif c == "%":
            raw = bytearray()
            while i + 2 < n and c == "%":
                digits = text[i + 1 : i + 3]  # Integer.parseInt(s, i + 1, i + 3, 16): a sign is allowed
                if not re.fullmatch(r"[+-]?[0-9A-Fa-f]+", digits):
                    raise ValueError("URLDecoder: Illegal hex characters in escape (%) pattern")
                value = int(digits, 16)
                if value < 0:
                    raise ValueError(
                        "URLDecoder: Illegal hex characters in escape (%) pattern - negative value"
                    )
                raw.append(value)
                i += 3
                if i < n:
                    c = text[i]
            if i < n and c == "%":
                raise ValueError("URLDecoder: Incomplete trailing escape (%) pattern")
            out.append(raw.decode("utf-8", "replace"))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _reset(conn: socket.socket) -> None:
    """Close a connection with a TCP RST (no response, no graceful FIN)."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeCloudController

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # dropped connections and client timeouts are expected in fault tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Server
    server_version = "fake-cloud-controller/1.0"

    def setup(self) -> None:
        super().setup()
        self.server.fake._register(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._register(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        is_down, delay = fake._pre_dispatch()
        if is_down:
            fake._record(method, path, query, 0)
            self.close_connection = True
            _reset(self.connection)
            return
        if delay > 0:
            time.sleep(delay)
        reply = fake._handle(method, path, query, self.headers, body)
        fake._record(method, path, query, reply.status)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("X-Vcap-Request-Id", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)
