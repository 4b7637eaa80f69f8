"""A faithful fake Cloud Controller v3 + UAA, served over HTTP on 127.0.0.1, for tests and local runs.

Response shapes follow cloudfoundry/cloud_controller_ng (docs/v3, errors/v2.yml, middleware/rate_limiter.rb)
and UAA's ``/oauth/token``: paginated lists with real ``first``/``last``/``next``/``previous`` hrefs,
``include=space`` / ``include=space.organization`` with ``included.spaces`` / ``included.organizations``,
``{"errors": [{"code", "title", "detail"}]}`` error bodies, per_page validated to 1..5000, 401
``CF-NotAuthenticated`` (no token) / ``CF-InvalidAuthToken`` (unknown or expired token).

Faults are thread-safe switches that can be flipped while the server runs::

    with FakeCloudController(Foundation.generate(orgs=2, spaces_per_org=2, apps_per_space=5)) as cc:
        cc.fail_page(2, status=503)      # every request for page 2 of /v3/apps fails
        cc.rate_limit(3, retry_after=1)  # the next 3 /v3 requests answer 429
        cc.fail_next(2, status=502)      # the next 2 /v3 requests fail
        cc.latency(0.2)                  # every response is delayed
        cc.expire_all_tokens()           # issued tokens become invalid (401)
        cc.down(); cc.up()               # connections are dropped without a response
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import random
import secrets
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


@dataclass(frozen=True, slots=True)
class Org:
    guid: str
    name: str
    created_at: str
    updated_at: str
    suspended: bool = False


@dataclass(frozen=True, slots=True)
class Space:
    guid: str
    name: str
    org_guid: str
    created_at: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class App:
    guid: str
    name: str
    space_guid: str
    state: str
    created_at: str
    updated_at: str


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
    ) -> Foundation:
        """A deterministic foundation: names ``org-O``, ``space-O-S``, ``app-O-S-A``; GUIDs from ``seed``.

        Every ``stopped_every``-th app (if > 0) is ``STOPPED``. 100 000 apps take well under a second.
        """
        rng = random.Random(seed)
        foundation = cls()
        foundation._rng = random.Random(seed + 1)
        counter = 0
        for o in range(orgs):
            org = Org(_guid(rng), f"org-{o}", _timestamp(counter), _timestamp(counter))
            foundation.orgs[org.guid] = org
            for s in range(spaces_per_org):
                counter += 1
                space = Space(
                    _guid(rng), f"space-{o}-{s}", org.guid, _timestamp(counter), _timestamp(counter)
                )
                foundation.spaces[space.guid] = space
                stamp = _timestamp(counter)
                for a in range(apps_per_space):
                    index = len(foundation.apps) + 1
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

    def _update_app(self, guid: str, **changes: str) -> App:
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

    def app_info(self, guid: str) -> AppInfo:
        app = self.apps[guid]
        space = self.spaces[app.space_guid]
        org = self.orgs[space.org_guid]
        return AppInfo(app.guid, app.name, space.guid, space.name, org.guid, org.name)

    def app_infos(self) -> dict[str, AppInfo]:
        """What a correct client should derive from this foundation."""
        with self._lock:
            return {guid: self.app_info(guid) for guid in self.apps}


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
_APP_LIST_PARAMS = frozenset(
    {
        "page",
        "per_page",
        "order_by",
        "include",
        "guids",
        "names",
        "space_guids",
        "organization_guids",
        "label_selector",
        "created_ats",
        "updated_ats",
        "lifecycle_type",
        "stacks",
    }
)
_SPACE_LIST_PARAMS = frozenset(
    {"page", "per_page", "order_by", "include", "guids", "names", "organization_guids"}
)
_ORG_LIST_PARAMS = frozenset({"page", "per_page", "order_by", "guids", "names"})


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
    ) -> None:
        self.foundation = foundation if foundation is not None else Foundation()
        self.clients: dict[str, str] = {client_id: client_secret}
        self.expires_in = expires_in
        self.scope = scope
        self._host = host
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._log: list[RequestRecord] = []
        self._down = False
        self._latency = 0.0
        self._page_failures: dict[int, list[int | None]] = {}  # page -> [status, remaining or None]
        self._next_failures: list[tuple[int, str]] = []  # (status, path prefix), one per request
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
        return f"http://{host}:{port}"

    @property
    def uaa_url(self) -> str:
        return f"{self.url}/uaa"

    # -- faults -------------------------------------------------------------------------------------

    def fail_page(self, page: int, status: int = 503, count: int | None = None) -> None:
        """Fail requests for ``page`` of ``/v3/apps`` with ``status`` (``count`` times, or until cleared)."""
        with self._lock:
            self._page_failures[page] = [status, count]

    def rate_limit(self, count: int, retry_after: int = 1, *, retry_after_epoch: bool = False) -> None:
        """The next ``count`` /v3 requests answer 429 like CC's rate limiter.

        ``Retry-After`` carries ``retry_after`` seconds, or — as the real Cloud Controller does — the reset
        time in epoch seconds when ``retry_after_epoch``. ``X-RateLimit-Reset`` is always epoch seconds.
        """
        with self._lock:
            self._rate_limited = count
            self._retry_after = retry_after
            self._retry_after_epoch = retry_after_epoch

    def fail_next(self, count: int, status: int = 503, path_prefix: str = "/v3/") -> None:
        """The next ``count`` requests whose path starts with ``path_prefix`` fail with ``status``."""
        with self._lock:
            self._next_failures.extend([(status, path_prefix)] * count)

    def latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = seconds

    def expire_all_tokens(self) -> None:
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = 0.0

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
        auth_error = self._check_auth(headers.get("Authorization"))
        if auth_error is not None:
            return auth_error
        page_failure = self._page_failure(path, query)
        if page_failure is not None:
            return page_failure
        return self._route_v3(path, query)

    def _injected_failure(self, path: str, query: dict[str, str]) -> _Reply | None:
        with self._lock:
            for index, (status, prefix) in enumerate(self._next_failures):
                if path.startswith(prefix):
                    del self._next_failures[index]
                    return _failure(status)
            if self._rate_limited > 0:
                self._rate_limited -= 1
                return self._rate_limit_reply()
        return None

    def _rate_limit_reply(self) -> _Reply:
        reset = math.ceil(time.time()) + self._retry_after
        retry_after = str(reset) if self._retry_after_epoch else str(self._retry_after)
        reply = _cf_error(429, 10013, "RateLimitExceeded", "Rate Limit Exceeded")
        reply.headers = {
            "Content-Type": "text/plain; charset=utf-8",  # sic: CC's rate limiter sends JSON as text/plain
            "X-RateLimit-Limit": "2000",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(reset),
            "Retry-After": retry_after,
        }
        return reply

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

    def _check_auth(self, header: str | None) -> _Reply | None:
        if not header:
            return _cf_error(401, 10002, "NotAuthenticated", "Authentication error")
        scheme, _, token = header.partition(" ")
        with self._lock:
            expiry = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if expiry is None or expiry <= time.monotonic():
            return _cf_error(401, 1000, "InvalidAuthToken", "Invalid Auth Token")
        return None

    def _token(self, headers: Any, body: bytes) -> _Reply:
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        client_id, client_secret = _basic_credentials(headers.get("Authorization"))
        if client_id is None:
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if client_id is None or self.clients.get(client_id) != client_secret:
            return _json_reply(
                401,
                {"error": "unauthorized", "error_description": "Bad credentials"},
                {
                    "WWW-Authenticate": 'Basic realm="UAA/client", error="unauthorized", '
                    'error_description="Bad credentials"'
                },
            )
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
            expires_in = self.expires_in
        return _json_reply(
            200,
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": expires_in,
                "scope": self.scope,
                "jti": uuid.uuid4().hex,
            },
            {"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

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

    def _route_v3(self, path: str, query: dict[str, str]) -> _Reply:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if len(parts) == 2:
            handler = {
                "apps": self._list_apps,
                "spaces": self._list_spaces,
                "organizations": self._list_orgs,
            }.get(parts[1])
            if handler is not None:
                return handler(query)
        if len(parts) == 3:
            if parts[1] == "apps":
                return self._get_app(parts[2], query)
            if parts[1] == "spaces":
                return self._get_space(parts[2], query)
            if parts[1] == "organizations":
                return self._get_org(parts[2])
        return _cf_error(*_UNKNOWN_REQUEST)

    def _v3_root(self) -> dict[str, Any]:
        url = self.url
        names = ("apps", "organizations", "spaces")
        return {"links": {"self": {"href": f"{url}/v3"}, **{n: {"href": f"{url}/v3/{n}"} for n in names}}}

    def _list_apps(self, query: dict[str, str]) -> _Reply:
        problem = _unknown_params(query, _APP_LIST_PARAMS) or _invalid_include(
            query, ("space", "space.organization")
        )
        if problem is not None:
            return problem
        apps: Sequence[App] = self.foundation.app_list()
        apps = self._filter_apps(apps, query)
        paged = _paginate(self.url, "/v3/apps", apps, query)
        if isinstance(paged, _Reply):
            return paged
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

    def _get_app(self, guid: str, query: dict[str, str]) -> _Reply:
        problem = _unknown_params(query, frozenset({"include"})) or _invalid_include(
            query, ("space", "space.organization")
        )
        if problem is not None:
            return problem
        app = self.foundation.apps.get(guid)
        if app is None:
            return _cf_error(404, 10010, "ResourceNotFound", "App not found")
        doc = self._app(app)
        included = self._included_for_apps([app], query.get("include"))
        if included is not None:
            doc["included"] = included
        return _json_reply(200, doc)

    def _list_spaces(self, query: dict[str, str]) -> _Reply:
        problem = _unknown_params(query, _SPACE_LIST_PARAMS) or _invalid_include(query, ("organization",))
        if problem is not None:
            return problem
        spaces: list[Space] = list(self.foundation.spaces.values())
        if "guids" in query:
            guids = set(_csv(query["guids"]))
            spaces = [s for s in spaces if s.guid in guids]
        if "organization_guids" in query:
            org_guids = set(_csv(query["organization_guids"]))
            spaces = [s for s in spaces if s.org_guid in org_guids]
        paged = _paginate(self.url, "/v3/spaces", spaces, query)
        if isinstance(paged, _Reply):
            return paged
        pagination, chunk = paged
        doc: dict[str, Any] = {"pagination": pagination, "resources": [self._space(s) for s in chunk]}
        if query.get("include"):
            org_guids = dict.fromkeys(s.org_guid for s in chunk)
            doc["included"] = {
                "organizations": [
                    self._org(self.foundation.orgs[g]) for g in org_guids if g in self.foundation.orgs
                ]
            }
        return _json_reply(200, doc)

    def _get_space(self, guid: str, query: dict[str, str]) -> _Reply:
        problem = _unknown_params(query, frozenset({"include"})) or _invalid_include(query, ("organization",))
        if problem is not None:
            return problem
        space = self.foundation.spaces.get(guid)
        if space is None:
            return _cf_error(404, 10010, "ResourceNotFound", "Space not found")
        doc = self._space(space)
        if query.get("include") and space.org_guid in self.foundation.orgs:
            doc["included"] = {"organizations": [self._org(self.foundation.orgs[space.org_guid])]}
        return _json_reply(200, doc)

    def _list_orgs(self, query: dict[str, str]) -> _Reply:
        problem = _unknown_params(query, _ORG_LIST_PARAMS)
        if problem is not None:
            return problem
        orgs: list[Org] = list(self.foundation.orgs.values())
        if "guids" in query:
            guids = set(_csv(query["guids"]))
            orgs = [o for o in orgs if o.guid in guids]
        paged = _paginate(self.url, "/v3/organizations", orgs, query)
        if isinstance(paged, _Reply):
            return paged
        pagination, chunk = paged
        return _json_reply(200, {"pagination": pagination, "resources": [self._org(o) for o in chunk]})

    def _get_org(self, guid: str) -> _Reply:
        org = self.foundation.orgs.get(guid)
        if org is None:
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
            "metadata": {"labels": {}, "annotations": {}},
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
            "metadata": {"labels": {}, "annotations": {}},
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
            "metadata": {"labels": {}, "annotations": {}},
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


def _unknown_params(query: dict[str, str], allowed: frozenset[str]) -> _Reply | None:
    unknown = sorted(set(query) - allowed)
    if not unknown:
        return None
    names = ", ".join(f"'{u}'" for u in unknown)
    valid = ", ".join(f"'{a}'" for a in sorted(allowed))
    return _bad_query(f"Unknown query parameter(s): {names}. Valid parameters are: {valid}")


def _invalid_include(query: dict[str, str], allowed: tuple[str, ...]) -> _Reply | None:
    if "include" not in query:
        return None
    bad = [v for v in query["include"].split(",") if v not in allowed]
    if not bad:
        return None
    valid = ", ".join(f"'{a}'" for a in allowed)
    return _bad_query(f"Invalid included resource: '{bad[0]}'. Valid included resources are: {valid}")


def _paginate(
    url: str, path: str, items: Sequence[Any], query: dict[str, str]
) -> tuple[dict[str, Any], Sequence[Any]] | _Reply:
    try:
        per_page = int(query.get("per_page", str(DEFAULT_PER_PAGE)))
    except ValueError:
        return _bad_query("Per page must be between 1 and 5000")
    if not 1 <= per_page <= MAX_PER_PAGE:
        return _bad_query("Per page must be between 1 and 5000")
    try:
        page = int(query.get("page", "1"))
    except ValueError:
        return _bad_query("Page must be greater than 0")
    if page < 1:
        return _bad_query("Page must be greater than 0")
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


def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    if not header:
        return None, None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else (None, None)


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
