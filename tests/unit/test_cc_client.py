"""CloudControllerClient against the fake Cloud Controller + UAA on loopback."""

from __future__ import annotations

import base64
import gc
import logging
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
import requests

from refinery.metadata.cc_client import (
    CloudControllerAuthError,
    CloudControllerClient,
    CloudControllerError,
    CloudControllerUnavailable,
    token_refresh_margin,
)
from refinery.retry_after import parse_retry_after
from refinery_tools.dev.fake_cc import FakeCloudController, Foundation, Space, java_url_decode

SECRET = "refinery-secret"


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """Records requested waits instead of sleeping; optional callback on each wait."""

    def __init__(self, clock: FakeClock | None = None, on_sleep=None) -> None:
        self.waits: list[float] = []
        self.clock = clock
        self.on_sleep = on_sleep

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.clock is not None:
            self.clock.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(len(self.waits))


@pytest.fixture
def foundation() -> Foundation:
    return Foundation.generate(orgs=3, spaces_per_org=2, apps_per_space=10, seed=7, stopped_every=4)


@pytest.fixture
def cc(foundation: Foundation) -> Iterator[FakeCloudController]:
    with FakeCloudController(foundation, client_secret=SECRET) as server:
        yield server


def make_client(cc: FakeCloudController, **kwargs) -> CloudControllerClient:
    kwargs.setdefault("per_page", 7)
    kwargs.setdefault("sleep", Sleeps())
    kwargs.setdefault("rng", random.Random(1))
    kwargs.setdefault("timeout", (2.0, 5.0))
    return CloudControllerClient(cc.url, "refinery", SECRET, **kwargs)


# ----------------------------------------------------------------------------------------- listing


def test_list_apps_across_pages_joins_names(cc: FakeCloudController, foundation: Foundation) -> None:
    client = make_client(cc)
    apps, stats = client.list_apps()

    assert apps == foundation.app_infos()
    # keyset pages: 7 apps, then 6 new ones each (the boundary app is read again): 7 + 9 × 6 >= 60
    assert stats.pages == 10 and stats.duplicates == 9 and stats.resources == 69
    assert (stats.apps, stats.spaces, stats.orgs) == (60, 6, 3)
    assert stats.dropped == 0
    pages = [r for r in cc.requests if r.path == "/v3/apps"]
    assert all(r.query["include"] == "space.organization" and r.query["per_page"] == "7" for r in pages)
    assert all(r.query["order_by"] == "created_at" and "page" not in r.query for r in pages)
    by_time = sorted(foundation.apps.values(), key=lambda a: (a.created_at, a.guid))
    cursors = [r.query.get("created_ats[gte]") for r in pages]
    assert cursors == [None] + [by_time[6 * n + 6].created_at for n in range(9)]


def test_list_apps_keeps_stopped_apps(cc: FakeCloudController, foundation: Foundation) -> None:
    stopped = {a.guid for a in foundation.apps.values() if a.state == "STOPPED"}
    assert stopped
    apps, _ = make_client(cc).list_apps()
    assert stopped <= apps.keys()


def test_iter_app_pages_yields_raw_v3_pages(cc: FakeCloudController) -> None:
    pages = list(make_client(cc, per_page=25).iter_app_pages())
    assert [len(p["resources"]) for p in pages] == [25, 25, 12]  # 25 + 24 + 11 new apps
    first, last = pages[0]["pagination"], pages[-1]["pagination"]
    assert first["total_results"] == 60 and first["total_pages"] == 3
    assert first["previous"] is None and "page=2" in first["next"]["href"]
    assert last["next"] is None and last["total_results"] == 12
    assert {"spaces", "organizations"} <= pages[0]["included"].keys()
    assert pages[0]["resources"][-1]["guid"] == pages[1]["resources"][0]["guid"]


def _churn(foundation: Foundation) -> Callable[[int], None]:
    """After the first page: 3 of its apps deleted and 2 created, as blue-green deploys do all day."""

    def hook(request: int) -> None:
        if request == 1:
            for app in sorted(foundation.apps.values(), key=lambda a: (a.created_at, a.guid))[:3]:
                foundation.delete_app(app.guid)
            space = next(iter(foundation.spaces))
            foundation.add_app("blue-green-1", space)
            foundation.add_app("blue-green-2", space)

    return hook


def test_keyset_listing_misses_no_app_when_apps_are_deleted_and_created_between_pages(
    cc: FakeCloudController, foundation: Foundation
) -> None:
    cc.after_list_request(_churn(foundation))
    before = foundation.app_infos()
    apps, _ = make_client(cc, per_page=10).list_apps()
    after = foundation.app_infos()
    throughout = before.keys() & after.keys()
    assert len(throughout) == 57
    assert throughout <= apps.keys()  # every app that lived for the whole listing
    assert {a.name for a in apps.values()} >= {"blue-green-1", "blue-green-2"}  # created after the cursor
    assert before.keys() <= apps.keys()  # the 3 deleted ones had been read before they went


def test_the_fake_shifts_offset_pages_under_deletions_as_the_cloud_controller_does(
    cc: FakeCloudController, foundation: Foundation
) -> None:
    """CC pages by LIMIT/OFFSET over the live table (sequel_paginator.rb), and so does the fake: a walk
    of the ``next`` links, what the client did before, skips one live app per app deleted from a page
    already read."""
    cc.after_list_request(_churn(foundation))
    token = requests.post(
        cc.uaa_url + "/oauth/token",
        auth=("refinery", SECRET),
        data={"grant_type": "client_credentials"},
        timeout=5,
    ).json()["access_token"]
    before = foundation.app_infos()
    url: str | None = f"{cc.url}/v3/apps?per_page=10"
    seen: set[str] = set()
    while url:
        page = requests.get(url, headers={"Authorization": f"bearer {token}"}, timeout=5).json()
        seen.update(r["guid"] for r in page["resources"])
        url = page["pagination"]["next"]["href"] if page["pagination"]["next"] else None
    missed = (before.keys() & foundation.app_infos().keys()) - seen
    assert len(missed) == 3


def test_apps_created_in_one_second_beyond_a_page_are_walked_by_offset() -> None:
    """More than per_page apps with one created_at (one-second resolution) cannot be told apart by the
    cursor: the client walks that second with page=2, 3, ... and then goes on by keyset."""
    bulk = Foundation.generate(orgs=2, spaces_per_org=2, apps_per_space=15, seed=5, apps_per_second=20)
    with FakeCloudController(bulk, client_secret=SECRET) as server:
        apps, stats = make_client(server, per_page=7).list_apps()
        assert apps == bulk.app_infos()
        queries = [r.query for r in server.requests if r.path == "/v3/apps"]
        assert any(q.get("page") == "3" for q in queries)  # a second of 20 apps, 7 per page
        assert stats.pages == len(queries)


def test_apps_whose_space_or_org_is_missing_are_counted(
    cc: FakeCloudController, foundation: Foundation
) -> None:
    # A space whose org is unknown, and apps in a space that no longer exists (e.g. deleted mid-listing).
    foundation.spaces["orphan-space"] = Space("orphan-space", "orphan", "no-such-org", "", "")
    orphan = foundation.add_app("orphan", "orphan-space")
    foundation.spaces["gone-space"] = Space("gone-space", "gone", next(iter(foundation.orgs)), "", "")
    ghosts = {foundation.add_app(f"ghost-{n}", "gone-space").guid for n in range(2)}
    del foundation.spaces["gone-space"]

    apps, stats = make_client(cc).list_apps()

    assert (stats.missing_space, stats.missing_org, stats.dropped) == (2, 1, 3)
    assert set(stats.unresolved) == ghosts | {orphan.guid}
    assert stats.resources == 63 + stats.duplicates and stats.apps == len(apps) == 60
    assert not (ghosts | {orphan.guid}) & apps.keys()


# ------------------------------------------------------------------------------------------- get_app


def test_get_app_returns_info_or_none(cc: FakeCloudController, foundation: Foundation) -> None:
    client = make_client(cc)
    guid = next(iter(foundation.apps))
    assert client.get_app(guid) == foundation.app_info(guid)
    assert client.get_app("00000000-0000-4000-8000-000000000000") is None
    assert cc.count("/v3/apps/00000000-0000-4000-8000-000000000000") == 1
    assert cc.count(prefix="/v3/apps/") == 2


def test_get_app_sees_renames(cc: FakeCloudController, foundation: Foundation) -> None:
    client = make_client(cc)
    guid = next(iter(foundation.apps))
    foundation.rename_app(guid, "renamed")
    info = client.get_app(guid)
    assert info is not None and info.name == "renamed"


def test_unknown_route_404_is_an_error_not_a_missing_app(cc: FakeCloudController) -> None:
    client = CloudControllerClient(cc.url + "/wrong", "refinery", SECRET, uaa_url=cc.uaa_url)
    with pytest.raises(CloudControllerError, match=r"404 CF-NotFound"):
        client.get_app("whatever")


# -------------------------------------------------------------------------------------- UAA / tokens


def test_uaa_url_discovered_from_root(cc: FakeCloudController) -> None:
    client = make_client(cc)
    assert client.uaa_url is None
    client.list_apps()
    assert client.uaa_url == f"{cc.url}/uaa"
    assert cc.count("/") == 1
    assert cc.count("/uaa/oauth/token", method="POST") == 1


def test_uaa_discovery_falls_back_to_login_link(foundation: Foundation) -> None:
    class NoUaaLink(FakeCloudController):
        def _root(self):
            doc = super()._root()
            doc["links"]["uaa"] = None
            return doc

    with NoUaaLink(foundation, client_secret=SECRET) as server:
        client = make_client(server)
        assert client.get_app(next(iter(foundation.apps))) is not None
        assert client.uaa_url == f"{server.url}/login"
        assert server.count("/login/oauth/token", method="POST") == 1


def test_explicit_uaa_url_skips_discovery(cc: FakeCloudController) -> None:
    client = make_client(cc, uaa_url=cc.uaa_url + "/")
    client.list_apps()
    assert cc.count("/") == 0


def test_token_is_cached_across_pages_and_calls(cc: FakeCloudController, foundation: Foundation) -> None:
    client = make_client(cc)
    _, stats = client.list_apps()
    for guid in list(foundation.apps)[:5]:
        client.get_app(guid)
    assert cc.token_requests == 1
    assert cc.count(prefix="/v3/") == stats.pages + 5


def test_token_renewed_after_server_side_expiry(cc: FakeCloudController) -> None:
    client = make_client(cc)
    client.list_apps()
    cc.expire_all_tokens()
    apps, _ = client.list_apps()
    assert len(apps) == 60
    assert cc.token_requests == 2
    assert [r.status for r in cc.requests if r.status == 401] == [401]


def test_token_renewed_proactively_before_expiry(foundation: Foundation) -> None:
    clock = FakeClock()
    with FakeCloudController(foundation, client_secret=SECRET, expires_in=100) as server:
        client = make_client(server, clock=clock)
        guid = next(iter(foundation.apps))
        client.get_app(guid)
        clock.now += 100 - token_refresh_margin(100) - 1
        client.get_app(guid)
        assert server.token_requests == 1
        clock.now += 2
        client.get_app(guid)
        assert server.token_requests == 2
        assert server.count(prefix="/v3/") == 3  # no 401 round trip


def test_token_refresh_margin() -> None:
    assert token_refresh_margin(43199) == pytest.approx(4319.9)
    assert token_refresh_margin(120) == 30
    assert token_refresh_margin(20) == 10  # never more than half the lifetime


def test_second_401_raises_auth_error_without_leaking(foundation: Foundation) -> None:
    with FakeCloudController(foundation, client_secret=SECRET, expires_in=0) as server:
        client = make_client(server)
        with pytest.raises(CloudControllerAuthError) as caught:
            client.get_app(next(iter(foundation.apps)))
        message = str(caught.value)
        assert "401" in message and "/v3/apps/" in message and "CF-InvalidAuthToken" in message
        assert SECRET not in message
        assert not any(token in message for token in server._tokens)
        assert server.token_requests == 2


def test_bad_client_credentials_raise_auth_error(cc: FakeCloudController) -> None:
    client = CloudControllerClient(cc.url, "refinery", "wrong-secret", sleep=Sleeps())
    with pytest.raises(CloudControllerAuthError) as caught:
        client.list_apps()
    message = str(caught.value)
    assert "/uaa/oauth/token" in message and "401" in message and "unauthorized" in message
    assert "wrong-secret" not in message and "wrong-secret" not in repr(client)
    assert cc.token_requests == 1  # not retried


def test_form_body_client_auth_is_accepted_by_fake(cc: FakeCloudController) -> None:
    resp = requests.post(
        cc.uaa_url + "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": "refinery", "client_secret": SECRET},
        timeout=5,
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 43199
    assert {"access_token", "scope", "jti"} <= body.keys()


# ------------------------------------------------------------------------------------------- retries


def test_429_with_retry_after_is_retried(cc: FakeCloudController) -> None:
    sleeps = Sleeps()
    client = make_client(cc, sleep=sleeps)
    client.get_app("warm-up-token")  # discovery + token first, so the 429s hit /v3/apps
    cc.rate_limit(2, retry_after=1)
    apps, _ = client.list_apps()
    assert len(apps) == 60
    assert sleeps.waits == [1.0, 1.0]
    assert [r.status for r in cc.requests].count(429) == 2


def test_429_with_cc_style_epoch_retry_after(cc: FakeCloudController) -> None:
    sleeps = Sleeps()
    client = make_client(cc, sleep=sleeps)
    client.get_app("warm-up-token")
    cc.rate_limit(1, retry_after=1, retry_after_epoch=True)  # what cloud_controller_ng really sends
    client.list_apps()
    assert len(sleeps.waits) == 1 and 0 < sleeps.waits[0] <= 3.0


def test_429_retry_after_zero_retries_immediately(cc: FakeCloudController) -> None:
    sleeps = Sleeps()
    client = make_client(cc, sleep=sleeps)
    client.get_app("warm-up-token")
    cc.rate_limit(3, retry_after=0)
    client.list_apps()
    assert sleeps.waits == [0.0, 0.0, 0.0]


def test_429_waiting_longer_than_allowed_raises_at_once(cc: FakeCloudController) -> None:
    sleeps = Sleeps()
    client = make_client(cc, sleep=sleeps, max_retry_wait=60)
    client.get_app("warm-up-token")
    cc.rate_limit(1, retry_after=3600)
    with pytest.raises(CloudControllerUnavailable, match=r"429 CF-RateLimitExceeded.*wait 3600s"):
        client.list_apps()
    assert sleeps.waits == []


def test_503_retried_then_success(cc: FakeCloudController) -> None:
    sleeps = Sleeps()
    client = make_client(cc, sleep=sleeps)
    cc.fail_next(2, status=503)
    apps, _ = client.list_apps()
    assert len(apps) == 60
    assert len(sleeps.waits) == 2
    assert 0.25 <= sleeps.waits[0] <= 0.5 and 0.5 <= sleeps.waits[1] <= 1.0  # exponential, jittered


def test_plain_text_502_retried(cc: FakeCloudController) -> None:
    sleeps = Sleeps()
    client = make_client(cc, sleep=sleeps)
    cc.fail_next(1, status=502)
    assert len(client.list_apps()[0]) == 60
    assert len(sleeps.waits) == 1


def test_persistent_5xx_on_page_n_aborts(cc: FakeCloudController) -> None:
    sleeps = Sleeps()
    client = make_client(cc, per_page=10, sleep=sleeps, max_attempts=4)
    cc.fail_listing_after(2, status=503)
    with pytest.raises(CloudControllerUnavailable) as caught:
        client.list_apps()
    message = str(caught.value)
    assert "/v3/apps?" in message and "created_ats%5Bgte%5D" in message
    assert "503" in message and "4 attempts" in message
    assert caught.value.status == 503
    listing = [r for r in cc.requests if r.path == "/v3/apps"]
    assert [r.status for r in listing] == [200, 200, 503, 503, 503, 503]  # nothing after the failing page
    assert len({r.query["created_ats[gte]"] for r in listing[2:]}) == 1  # the same page, retried
    assert len(sleeps.waits) == 3


def test_retry_that_would_pass_the_deadline_raises_immediately(cc: FakeCloudController) -> None:
    clock = FakeClock()
    sleeps = Sleeps(clock)
    client = make_client(cc, clock=clock, sleep=sleeps, backoff_base=5.0)
    cc.fail_listing_after(1, status=500)
    with pytest.raises(CloudControllerUnavailable, match="deadline"):
        client.list_apps(deadline=clock.now + 1.0)
    assert sleeps.waits == []


def test_deadline_bounds_total_retry_time(cc: FakeCloudController) -> None:
    clock = FakeClock()
    sleeps = Sleeps(clock)
    client = make_client(cc, clock=clock, sleep=sleeps, max_attempts=50, backoff_base=1.0, backoff_cap=4.0)
    cc.fail_page(1, status=503)
    with pytest.raises(CloudControllerUnavailable, match="deadline"):
        client.list_apps(deadline=clock.now + 20.0)
    assert sum(sleeps.waits) <= 20.0


def test_connection_drop_retried_until_server_is_back(cc: FakeCloudController) -> None:
    client = make_client(cc)
    client.get_app("warm-up-token")
    sleeps = Sleeps(on_sleep=lambda n: cc.up() if n == 2 else None)
    client._sleep = sleeps
    cc.down()
    apps, _ = client.list_apps()
    assert len(apps) == 60
    assert len(sleeps.waits) == 2
    assert any(r.status == 0 for r in cc.requests)


def test_read_timeout_retried(cc: FakeCloudController) -> None:
    client = make_client(cc, timeout=(2.0, 0.2))
    client.get_app("warm-up-token")
    client._sleep = Sleeps(on_sleep=lambda n: cc.latency(0))
    cc.latency(0.5)
    assert client.get_app("missing") is None
    assert len(client._sleep.waits) == 1


def test_down_exhausts_attempts(cc: FakeCloudController) -> None:
    client = make_client(cc, max_attempts=3)
    cc.down()
    with pytest.raises(CloudControllerUnavailable, match=r"GET /: ConnectionError; gave up after 3 attempts"):
        client.list_apps()


def test_no_secret_or_token_in_logs(cc: FakeCloudController, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(cc)
    cc.fail_next(1, status=503)
    client.list_apps()
    cc.expire_all_tokens()
    client.get_app("missing")
    with pytest.raises(CloudControllerAuthError):
        CloudControllerClient(cc.url, "refinery", "another-secret").list_apps()
    assert caplog.records
    assert SECRET not in caplog.text and "another-secret" not in caplog.text
    assert not any(token in caplog.text for token in cc._tokens)


# ------------------------------------------------------------------------------------------- helpers


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 0 ", now) == 0.0
    http_date = format_datetime(datetime.fromtimestamp(now + 5, UTC), usegmt=True)
    assert parse_retry_after(http_date, now) == pytest.approx(5.0)
    assert parse_retry_after(str(int(now) + 4), now) == pytest.approx(5.0)  # CC's epoch form, +1 s slack
    assert parse_retry_after(str(int(now) - 100), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-1", now) is None


def test_x_ratelimit_reset_alone_is_honoured() -> None:
    client = CloudControllerClient(
        "https://api.example.org", "id", "secret", wall_clock=lambda: 1_700_000_000.0
    )
    resp = requests.Response()
    resp.status_code = 429
    resp.headers["X-RateLimit-Reset"] = "1700000010"
    assert client._retry_hint(resp) == pytest.approx(11.0)
    resp.status_code = 503
    assert client._retry_hint(resp) is None


def test_the_listing_never_follows_links_to_another_host(foundation: Foundation) -> None:
    """CC builds its pagination links from its external domain, not the host called: the keyset listing
    builds its own requests on the configured API URL, so the token never goes to that other host."""
    with FakeCloudController(
        foundation, client_secret=SECRET, external_url="https://api.sys.example"
    ) as server:
        apps, stats = make_client(server, per_page=10).list_apps()
        assert apps == foundation.app_infos() and stats.pages == 7
        page = requests.get(
            f"{server.url}/v3/apps?per_page=10", headers=_token_for(server, "refinery", SECRET), timeout=5
        ).json()
        assert page["pagination"]["next"]["href"].startswith("https://api.sys.example/v3/apps?")


def test_constructor_validates_and_repr_hides_secret() -> None:
    with pytest.raises(ValueError):
        CloudControllerClient("https://api.example.org", "id", "secret", per_page=5001)
    with pytest.raises(ValueError):
        CloudControllerClient("api.example.org", "id", "secret")
    assert "secret" not in repr(CloudControllerClient("https://api.example.org", "id", "s3cr3t-value"))


def test_generate_is_deterministic_and_fast() -> None:
    started = time.perf_counter()
    big = Foundation.generate(orgs=10, spaces_per_org=10, apps_per_space=1000, seed=3)
    elapsed = time.perf_counter() - started
    assert len(big.apps) == 100_000 and len(big.spaces) == 100 and len(big.orgs) == 10
    assert elapsed < 5.0
    again = Foundation.generate(orgs=2, spaces_per_org=2, apps_per_space=2, seed=3)
    assert list(again.apps)[:4] == list(Foundation.generate(2, 2, 2, seed=3).apps)[:4]


@pytest.mark.parametrize("enabled", [True, False])
def test_listing_pauses_the_collector_and_leaves_it_as_it_was(
    cc: FakeCloudController, foundation: Foundation, enabled: bool
) -> None:
    """Pages are parsed with the cyclic GC paused (it would scan every new dict of a 9 MB page many
    times); afterwards it is on again only if it was on, also when a page fails."""
    seen: list[bool] = []
    client = make_client(cc)
    original = client._get_json

    def spy(url: str, **kwargs):
        doc = original(url, **kwargs)
        seen.append(gc.isenabled())
        return doc

    client._get_json = spy  # type: ignore[method-assign]
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        apps, _ = client.list_apps()
        assert apps == foundation.app_infos() and seen and not any(seen)
        assert gc.isenabled() is enabled
        cc.fail_listing_after(cc.list_requests + 1, status=500)
        with pytest.raises(CloudControllerUnavailable):
            make_client(cc, max_attempts=1).list_apps()
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


# ------------------------------------------------------- the real UAA and CC behaviours (issue 15)

#: What `openssl rand -base64 24` gives, with a "%" and a ":" besides: UAA URL-decodes Basic credentials.
AWKWARD_SECRET = "k9+Vd/Q2x%4Z==:é+"


def _raw_basic(server: FakeCloudController, client_id: str, secret: str) -> requests.Response:
    """A token request with the raw id and secret in Basic (UTF-8, as UAA reads them), not URL-encoded."""
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return requests.post(
        server.uaa_url + "/oauth/token",
        headers={"Authorization": f"Basic {basic}"},
        data={"grant_type": "client_credentials"},
        timeout=5,
    )


def test_uaa_url_decodes_basic_credentials_so_the_client_encodes_them() -> None:
    foundation = Foundation.generate(orgs=1, spaces_per_org=1, apps_per_space=3, seed=1)
    with FakeCloudController(foundation, client_id="refinery+ops", client_secret=AWKWARD_SECRET) as server:
        client = CloudControllerClient(server.url, "refinery+ops", AWKWARD_SECRET, sleep=Sleeps())
        apps, _ = client.list_apps()
        assert apps == foundation.app_infos()

        plus = _raw_basic(server, "refinery+ops", AWKWARD_SECRET.replace("%", ""))  # "+" becomes " "
        assert plus.status_code == 401
        assert plus.json() == {"error": "unauthorized", "error_description": "Bad credentials"}
        stray = _raw_basic(server, "refinery+ops", AWKWARD_SECRET)  # "%4Z" is not an escape
        assert stray.status_code == 401
        assert stray.json()["error_description"] == "Failed to URL Decode credentials"
        form = requests.post(  # the form body is decoded once, by the form
            server.uaa_url + "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "refinery+ops",
                "client_secret": AWKWARD_SECRET,
            },
            timeout=5,
        )
        assert form.status_code == 200

    with FakeCloudController(
        foundation,
        client_id="refinery+ops",
        client_secret=AWKWARD_SECRET,
        uri_encoding_compatibility_mode=True,
    ) as server:
        # compatibility mode decodes only when asked to: the client's X-CF-ENCODED-CREDENTIALS header
        assert CloudControllerClient(server.url, "refinery+ops", AWKWARD_SECRET).list_apps()[0]
        assert _raw_basic(server, "refinery+ops", AWKWARD_SECRET).status_code == 200


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [("a+b", "a b"), ("%2B%25", "+%"), ("%C3%A9t%C3%A9", "été"), ("%+1", "\x01"), ("plain", "plain")],
)
def test_the_fake_decodes_as_javas_url_decoder(encoded: str, decoded: str) -> None:
    assert java_url_decode(encoded) == decoded


@pytest.mark.parametrize("bad", ["%", "abc%4", "%zz", "%-1", "x%G0"])
def test_the_fake_refuses_what_javas_url_decoder_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="URLDecoder"):
        java_url_decode(bad)


def _token_for(server: FakeCloudController, client_id: str, secret: str) -> dict[str, str]:
    token = requests.post(
        server.uaa_url + "/oauth/token",
        auth=(client_id, secret),
        data={"grant_type": "client_credentials"},
        timeout=5,
    ).json()["access_token"]
    return {"Authorization": f"bearer {token}"}


def test_visibility_follows_the_tokens_scopes_and_the_clients_roles(
    cc: FakeCloudController, foundation: Foundation
) -> None:
    spaces = list(foundation.spaces)
    cc.add_client("reader", "r", scope="cloud_controller.read")  # no role anywhere
    cc.add_client("dev", "d", scope="cloud_controller.read", spaces=[spaces[0]])
    cc.add_client("auditor", "a", scope="cloud_controller.global_auditor")
    cc.add_client("other", "o", scope="uaa.resource")

    empty = requests.get(f"{cc.url}/v3/apps", headers=_token_for(cc, "reader", "r"), timeout=5)
    assert empty.status_code == 200 and empty.json()["resources"] == []
    assert empty.json()["pagination"]["total_results"] == 0
    dev = requests.get(f"{cc.url}/v3/apps?per_page=100", headers=_token_for(cc, "dev", "d"), timeout=5).json()
    assert {r["relationships"]["space"]["data"]["guid"] for r in dev["resources"]} == {spaces[0]}
    hidden = next(a for a in foundation.apps.values() if a.space_guid != spaces[0])
    not_found = requests.get(f"{cc.url}/v3/apps/{hidden.guid}", headers=_token_for(cc, "dev", "d"), timeout=5)
    assert not_found.status_code == 404 and not_found.json()["errors"][0]["title"] == "CF-ResourceNotFound"
    every = requests.get(f"{cc.url}/v3/apps?per_page=100", headers=_token_for(cc, "auditor", "a"), timeout=5)
    assert len(every.json()["resources"]) == 60
    refused = requests.get(f"{cc.url}/v3/apps", headers=_token_for(cc, "other", "o"), timeout=5)
    assert refused.status_code == 403
    assert refused.json() == {
        "errors": [
            {
                "detail": "You are not authorized to perform the requested action",
                "title": "CF-NotAuthorized",
                "code": 10003,
            }
        ]
    }


def test_a_client_without_a_global_read_scope_lists_nothing_and_is_warned_about(
    cc: FakeCloudController, caplog: pytest.LogCaptureFixture
) -> None:
    cc.add_client("reader", "r", scope="cloud_controller.read")
    client = CloudControllerClient(cc.url, "reader", "r")
    apps, _ = client.list_apps()
    assert apps == {} and client.granted_scopes == ("cloud_controller.read",)
    assert "cloud_controller.admin_read_only or cloud_controller.global_auditor" in caplog.text


def test_a_403_names_the_scopes_the_client_needs(cc: FakeCloudController) -> None:
    cc.add_client("other", "o-secret", scope="uaa.resource openid")
    with pytest.raises(CloudControllerAuthError) as caught:
        CloudControllerClient(cc.url, "other", "o-secret").list_apps()
    message = str(caught.value)
    assert "403 CF-NotAuthorized" in message and "uaa.resource openid" in message
    assert "cloud_controller.admin_read_only or cloud_controller.global_auditor" in message
    assert "o-secret" not in message


def test_max_total_results_is_a_400_as_cc_words_it(foundation: Foundation) -> None:
    with FakeCloudController(foundation, client_secret=SECRET, max_total_results=50) as server:
        headers = _token_for(server, "refinery", SECRET)
        for query in ("per_page=51", "page=2&per_page=30", "page=51"):
            resp = requests.get(f"{server.url}/v3/apps?{query}", headers=headers, timeout=5)
            assert resp.status_code == 400, query
            assert resp.json()["errors"] == [
                {
                    "detail": "The query parameter is invalid: Maximum result (page * per_page) must be less"
                    " than 50",
                    "title": "CF-BadQueryParameter",
                    "code": 10005,
                }
            ]
        ok = requests.get(f"{server.url}/v3/apps?page=2&per_page=25", headers=headers, timeout=5)
        assert ok.status_code == 200  # 50 is not "more than" 50
        both = requests.get(
            f"{server.url}/v3/apps?page=0&per_page=x&order_by=guid", headers=headers, timeout=5
        )
        assert both.json()["errors"][0]["detail"] == (
            "The query parameter is invalid: Page must be a positive integer, Per page must be a positive"
            " integer, Order by can only be: 'created_at', 'updated_at', 'name', 'state'"
        )
        unknown = requests.get(f"{server.url}/v3/apps?fields[apps]=name", headers=headers, timeout=5)
        assert unknown.status_code == 400 and "Unknown query parameter(s): 'fields'" in unknown.text


def test_the_client_lowers_per_page_to_max_total_results(
    foundation: Foundation, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeCloudController(foundation, client_secret=SECRET, max_total_results=25) as server:
        client = make_client(server, per_page=5000)
        apps, stats = client.list_apps()
        assert apps == foundation.app_infos()
        assert stats.per_page == 25
        statuses = [(r.status, r.query["per_page"]) for r in server.requests if r.path == "/v3/apps"]
        assert statuses[0] == (400, "5000") and all(s == (200, "25") for s in statuses[1:])
        assert "max_total_results" in caplog.text


def test_a_second_of_apps_beyond_max_total_results_is_an_error_that_says_so() -> None:
    bulk = Foundation.generate(orgs=1, spaces_per_org=1, apps_per_space=30, seed=2, apps_per_second=30)
    with (
        FakeCloudController(bulk, client_secret=SECRET, max_total_results=20) as server,
        pytest.raises(CloudControllerError, match=r"caps page × per_page at 20.*within one second"),
    ):
        make_client(server, per_page=10).list_apps()


def test_rate_limit_headers_and_a_429_retried_after_its_seconds(foundation: Foundation) -> None:
    with FakeCloudController(
        foundation, client_secret=SECRET, scope="cloud_controller.global_auditor"
    ) as server:
        server.enable_rate_limiting(limit=4, interval=1.0)
        headers = _token_for(server, "refinery", SECRET)
        first = requests.get(f"{server.url}/v3/apps", headers=headers, timeout=5)
        assert first.headers["X-RateLimit-Limit"] == "4" and first.headers["X-RateLimit-Remaining"] == "3"
        assert int(first.headers["X-RateLimit-Reset"]) >= int(time.time())
        for _ in range(3):
            requests.get(f"{server.url}/v3/apps", headers=headers, timeout=5)
        limited = requests.get(f"{server.url}/v3/apps", headers=headers, timeout=5)
        assert limited.status_code == 429 and limited.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert limited.json()["errors"][0]["title"] == "CF-RateLimitExceeded"
        assert int(limited.headers["Retry-After"]) <= 1  # seconds until the window ends
        sleeps = Sleeps()
        client = make_client(server, per_page=10, sleep=lambda s: (sleeps(s), time.sleep(s)))
        apps, _ = client.list_apps()  # 7 pages at 4 per second: waits as told, then goes on
        assert apps == foundation.app_infos() and sleeps.waits and max(sleeps.waits) <= 1.0
    with FakeCloudController(foundation, client_secret=SECRET) as server:  # admin_read_only is exempt
        server.enable_rate_limiting(limit=1, interval=60.0)
        headers = _token_for(server, "refinery", SECRET)
        for _ in range(3):
            resp = requests.get(f"{server.url}/v3/apps", headers=headers, timeout=5)
            assert resp.status_code == 200 and "X-RateLimit-Limit" not in resp.headers


def test_gorouters_plain_text_503_is_retried_like_the_cloud_controllers(cc: FakeCloudController) -> None:
    sleeps = Sleeps()
    client = make_client(cc, sleep=sleeps)
    client.get_app("warm-up-token")
    cc.fail_next(2, status=503, router=True)
    headers = _token_for(cc, "refinery", SECRET)
    raw = requests.get(f"{cc.url}/v3/apps", headers=headers, timeout=5)
    assert raw.status_code == 503 and raw.headers["X-Cf-Routererror"] == "no_endpoints"
    assert raw.text.startswith("503 Service Unavailable: Requested route (")
    apps, _ = client.list_apps()
    assert len(apps) == 60 and len(sleeps.waits) == 1
