"""refresh_snapshot end to end: fake Cloud Controller + UAA on loopback, moto S3 (``s3_bucket``)."""

from __future__ import annotations

import gc
import gzip
import random
from collections.abc import Iterator
from datetime import UTC, datetime

import boto3
import orjson
import pytest
import requests
from botocore.exceptions import ClientError

from refinery.metadata.cc_client import (
    CloudControllerAuthError,
    CloudControllerClient,
    CloudControllerUnavailable,
)
from refinery.metadata.refresh import RefreshResult, SnapshotRefused, refresh_snapshot
from refinery.metadata.snapshot import CHECKED_AT_TAG, decode_snapshot, encode_snapshot
from refinery.metadata.store import MetadataStore, S3SnapshotSource
from refinery.observability import snapshot_age_s
from refinery_tools.dev.fake_cc import FakeCloudController, Foundation, _paginate, _Reply

pytestmark = pytest.mark.integration

KEY = "metadata/apps.json.gz"
SECRET = "refresh-secret"
NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


@pytest.fixture
def foundation() -> Foundation:
    # 4 orgs x 3 spaces x 10 apps = 120 apps; every 5th app is STOPPED
    return Foundation.generate(orgs=4, spaces_per_org=3, apps_per_space=10, seed=11, stopped_every=5)


@pytest.fixture
def cc(foundation: Foundation) -> Iterator[FakeCloudController]:
    with FakeCloudController(foundation, client_id="refinery", client_secret=SECRET) as server:
        yield server


@pytest.fixture
def client(cc: FakeCloudController) -> CloudControllerClient:
    return CloudControllerClient(
        cc.url, "refinery", SECRET, per_page=25, sleep=lambda s: None, rng=random.Random(0), max_attempts=3
    )


@pytest.fixture
def s3(s3_bucket: str):
    return boto3.client("s3")


def _refresh(client: CloudControllerClient, s3, bucket: str, **kwargs) -> RefreshResult:
    kwargs.setdefault("now", NOW)
    return refresh_snapshot(client, s3, bucket, KEY, source="https://api.example.org", **kwargs)


def _stored(s3, bucket: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=KEY)["Body"].read()


def test_full_refresh_writes_a_valid_snapshot(
    client: CloudControllerClient, cc: FakeCloudController, foundation: Foundation, s3, s3_bucket: str
) -> None:
    result = _refresh(client, s3, s3_bucket)

    assert (result.apps, result.spaces, result.orgs, result.pages) == (120, 12, 4, 5)
    assert result.replaced is False and result.previous_apps is None
    assert "no previous snapshot" in result.reason
    body = _stored(s3, s3_bucket)
    assert result.bytes == len(body)
    snapshot = decode_snapshot(body)
    assert snapshot.apps == foundation.app_infos()
    assert snapshot.source == "https://api.example.org"
    assert snapshot.generated_at == "2026-11-21T10:00:00Z"
    head = s3.head_object(Bucket=s3_bucket, Key=KEY)
    assert head["ContentType"] == "application/json" and head["ContentEncoding"] == "gzip"
    assert cc.token_requests == 1


def test_refresh_keeps_stopped_apps(
    client: CloudControllerClient, foundation: Foundation, s3, s3_bucket: str
) -> None:
    stopped = {a.guid for a in foundation.apps.values() if a.state == "STOPPED"}
    assert len(stopped) == 24
    _refresh(client, s3, s3_bucket)
    assert stopped <= decode_snapshot(_stored(s3, s3_bucket)).apps.keys()


def test_second_refresh_replaces_and_sees_changes(
    client: CloudControllerClient, foundation: Foundation, s3, s3_bucket: str
) -> None:
    _refresh(client, s3, s3_bucket)
    guids = list(foundation.apps)
    foundation.rename_app(guids[0], "renamed-app")
    foundation.delete_app(guids[1])
    added = foundation.add_app("brand-new", next(iter(foundation.spaces)))

    result = _refresh(client, s3, s3_bucket)

    assert result.replaced is True and result.previous_apps == 120 and result.apps == 120
    assert "1 app(s) gone" in result.reason
    apps = decode_snapshot(_stored(s3, s3_bucket)).apps
    assert apps[guids[0]].name == "renamed-app"
    assert guids[1] not in apps and added.guid in apps


def test_failure_on_page_n_leaves_previous_snapshot_untouched(
    client: CloudControllerClient, cc: FakeCloudController, foundation: Foundation, s3, s3_bucket: str
) -> None:
    _refresh(client, s3, s3_bucket)
    before = _stored(s3, s3_bucket)
    foundation.rename_app(next(iter(foundation.apps)), "would-change-the-snapshot")
    cc.fail_listing_after(cc.list_requests + 2, status=503)  # the third page of this refresh

    with pytest.raises(CloudControllerUnavailable, match=r"created_ats%5Bgte%5D=.*503"):
        _refresh(client, s3, s3_bucket, now=datetime(2026, 11, 21, 11, 0, tzinfo=UTC))

    assert _stored(s3, s3_bucket) == before
    assert [r.status for r in cc.requests if r.path == "/v3/apps"][-5:] == [200, 200, 503, 503, 503]


def test_auth_failure_leaves_previous_snapshot_untouched(
    client: CloudControllerClient, cc: FakeCloudController, s3, s3_bucket: str
) -> None:
    _refresh(client, s3, s3_bucket)
    before = _stored(s3, s3_bucket)
    cc.clients["refinery"] = "rotated"
    cc.expire_all_tokens()
    with pytest.raises(CloudControllerAuthError, match="401") as caught:
        _refresh(client, s3, s3_bucket)
    assert SECRET not in str(caught.value)
    assert _stored(s3, s3_bucket) == before


def test_large_loss_is_refused_then_forced(
    client: CloudControllerClient, foundation: Foundation, s3, s3_bucket: str
) -> None:
    _refresh(client, s3, s3_bucket)
    before = _stored(s3, s3_bucket)
    for guid in list(foundation.apps)[:70]:  # 70 of 120 = 58 % lost
        foundation.delete_app(guid)

    with pytest.raises(SnapshotRefused) as caught:
        _refresh(client, s3, s3_bucket)
    message = str(caught.value)
    assert "70 of the 120" in message and "50 apps" in message
    assert "MAX_APP_LOSS=0.5" in message and "force" in message
    assert _stored(s3, s3_bucket) == before

    result = _refresh(client, s3, s3_bucket, force=True)
    assert result.apps == 50 and result.previous_apps == 120 and "forced" in result.reason
    assert len(decode_snapshot(_stored(s3, s3_bucket)).apps) == 50


def test_loss_within_the_limit_is_accepted(
    client: CloudControllerClient, foundation: Foundation, s3, s3_bucket: str
) -> None:
    _refresh(client, s3, s3_bucket)
    for guid in list(foundation.apps)[:60]:  # exactly 50 % is not more than 50 %
        foundation.delete_app(guid)
    assert _refresh(client, s3, s3_bucket).apps == 60
    for guid in list(foundation.apps)[:11]:  # 11 of 60 = 18 %
        foundation.delete_app(guid)
    with pytest.raises(SnapshotRefused, match=r"MAX_APP_LOSS=0\.1"):
        _refresh(client, s3, s3_bucket, max_app_loss=0.1)
    assert _refresh(client, s3, s3_bucket, max_app_loss=0.2).apps == 49


def test_corrupt_previous_snapshot_is_treated_as_absent(
    client: CloudControllerClient, s3, s3_bucket: str
) -> None:
    s3.put_object(Bucket=s3_bucket, Key=KEY, Body=gzip.compress(b'{"schema_version": 99}'))
    result = _refresh(client, s3, s3_bucket)
    assert result.replaced is True and result.previous_apps is None
    assert "corrupt" in result.reason and "schema_version" in result.reason
    assert len(decode_snapshot(_stored(s3, s3_bucket)).apps) == 120


def test_empty_listing_does_not_replace_a_populated_snapshot(
    client: CloudControllerClient, foundation: Foundation, s3, s3_bucket: str
) -> None:
    previous = dict(list(foundation.app_infos().items())[:3])
    s3.put_object(Bucket=s3_bucket, Key=KEY, Body=encode_snapshot(previous, "old", NOW))
    for guid in list(foundation.apps):
        foundation.delete_app(guid)
    with pytest.raises(SnapshotRefused, match="listed no apps at all") as caught:
        _refresh(client, s3, s3_bucket)
    assert "the current snapshot has 3 apps" in str(caught.value)
    assert decode_snapshot(_stored(s3, s3_bucket)).apps == previous


def test_invalid_max_app_loss_rejected(client: CloudControllerClient, s3, s3_bucket: str) -> None:
    with pytest.raises(ValueError, match="max_app_loss"):
        _refresh(client, s3, s3_bucket, max_app_loss=1.5)


# ------------------------------------------------------------------------------ fake fidelity checks


def _token(cc: FakeCloudController) -> str:
    resp = requests.post(
        cc.uaa_url + "/oauth/token",
        auth=("refinery", SECRET),
        data={"grant_type": "client_credentials"},
        timeout=5,
    )
    resp.raise_for_status()
    return resp.json()["access_token"]


def test_fake_validates_per_page_and_auth(cc: FakeCloudController) -> None:
    headers = {"Authorization": f"bearer {_token(cc)}"}
    for per_page in ("0", "5001", "x"):
        resp = requests.get(f"{cc.url}/v3/apps", params={"per_page": per_page}, headers=headers, timeout=5)
        assert resp.status_code == 400
        assert resp.json()["errors"][0]["title"] == "CF-BadQueryParameter"
        assert resp.json()["errors"][0]["code"] == 10005
    assert requests.get(f"{cc.url}/v3/apps", timeout=5).json()["errors"][0]["title"] == "CF-NotAuthenticated"
    bad = requests.get(f"{cc.url}/v3/apps", headers={"Authorization": "bearer nope"}, timeout=5)
    assert bad.status_code == 401
    assert bad.json() == {
        "errors": [{"detail": "Invalid Auth Token", "title": "CF-InvalidAuthToken", "code": 1000}]
    }
    missing = requests.get(f"{cc.url}/v3/apps/nope", headers=headers, timeout=5)
    assert missing.status_code == 404
    assert missing.json()["errors"][0] == {
        "detail": "App not found",
        "title": "CF-ResourceNotFound",
        "code": 10010,
    }


def test_fake_pagination_links_and_include(cc: FakeCloudController, foundation: Foundation) -> None:
    headers = {"Authorization": f"bearer {_token(cc)}"}
    resp = requests.get(
        f"{cc.url}/v3/apps",
        params={"per_page": 50, "page": 2, "include": "space"},
        headers=headers,
        timeout=5,
    )
    doc = resp.json()
    pagination = doc["pagination"]
    assert pagination["total_results"] == 120 and pagination["total_pages"] == 3
    assert pagination["first"]["href"] == f"{cc.url}/v3/apps?include=space&page=1&per_page=50"
    assert pagination["last"]["href"] == f"{cc.url}/v3/apps?include=space&page=3&per_page=50"
    assert pagination["next"]["href"] == f"{cc.url}/v3/apps?include=space&page=3&per_page=50"
    assert pagination["previous"]["href"] == f"{cc.url}/v3/apps?include=space&page=1&per_page=50"
    assert len(doc["resources"]) == 50
    assert set(doc["included"]) == {"spaces"}
    app = doc["resources"][0]
    assert {"guid", "name", "state", "created_at", "updated_at", "relationships", "links"} <= app.keys()
    assert app["relationships"]["space"]["data"]["guid"] in {s["guid"] for s in doc["included"]["spaces"]}
    assert doc["included"]["spaces"][0]["relationships"]["organization"]["data"]["guid"] in foundation.orgs
    root = requests.get(cc.url + "/", timeout=5).json()["links"]
    assert root["uaa"]["href"] == cc.url + "/uaa" and root["cloud_controller_v3"]["href"] == cc.url + "/v3"


def test_fake_rate_limit_headers(cc: FakeCloudController) -> None:
    headers = {"Authorization": f"bearer {_token(cc)}"}
    cc.rate_limit(1, retry_after=2)
    resp = requests.get(f"{cc.url}/v3/apps", headers=headers, timeout=5)
    assert resp.status_code == 429
    assert resp.headers["Retry-After"] == "2"
    assert resp.headers["X-RateLimit-Remaining"] == "0" and int(resp.headers["X-RateLimit-Reset"]) > 1e9
    assert resp.json()["errors"][0]["title"] == "CF-RateLimitExceeded"
    assert requests.get(f"{cc.url}/v3/apps", headers=headers, timeout=5).status_code == 200


def test_a_schema_1_snapshot_is_compared_then_replaced_by_schema_2(
    client: CloudControllerClient, foundation: Foundation, s3, s3_bucket: str
) -> None:
    """The upgrade: the previous release published schema 1; the loss check reads it, the refresh
    replaces it with schema 2."""
    old = encode_snapshot(foundation.app_infos(), "old", NOW, schema_version=1)
    s3.put_object(Bucket=s3_bucket, Key=KEY, Body=old)
    for guid in list(foundation.apps)[:70]:
        foundation.delete_app(guid)
    with pytest.raises(SnapshotRefused, match="70 of the 120"):
        _refresh(client, s3, s3_bucket)
    assert _stored(s3, s3_bucket) == old

    result = _refresh(client, s3, s3_bucket, force=True)
    assert result.previous_apps == 120 and result.apps == 50
    body = _stored(s3, s3_bucket)
    assert orjson.loads(gzip.decompress(body))["schema_version"] == 2
    assert dict(decode_snapshot(body).apps) == foundation.app_infos()


def test_a_previous_snapshot_with_one_invalid_entry_is_treated_as_absent(
    client: CloudControllerClient, foundation: Foundation, s3, s3_bucket: str
) -> None:
    doc = orjson.loads(gzip.decompress(encode_snapshot(foundation.app_infos(), "old", NOW)))
    doc["spaces"]["org"][-1] = len(doc["orgs"]["guid"])  # an org row that does not exist
    s3.put_object(Bucket=s3_bucket, Key=KEY, Body=gzip.compress(orjson.dumps(doc)))
    result = _refresh(client, s3, s3_bucket)
    assert result.previous_apps is None and "corrupt" in result.reason and "'orgs'" in result.reason
    assert dict(decode_snapshot(_stored(s3, s3_bucket)).apps) == foundation.app_infos()


def test_fake_list_pages_are_the_documents_built_resource_by_resource(
    cc: FakeCloudController, foundation: Foundation
) -> None:
    """The fake serves app pages from serialised resources (fast); the bytes are what serialising the
    documents built by _app/_space/_org gives, also after changes and on a new port."""

    def expected(query: dict[str, str]) -> bytes:
        paged = _paginate(cc.url, "/v3/apps", foundation.app_list(), query)
        assert not isinstance(paged, _Reply)
        pagination, chunk = paged
        doc: dict = {"pagination": pagination, "resources": [cc._app(a) for a in chunk]}
        included = cc._included_for_apps(chunk, query.get("include"))
        if included is not None:
            doc["included"] = included
        return orjson.dumps(doc)

    headers = {"Authorization": f"bearer {_token(cc)}"}
    queries = [
        {"include": "space.organization", "per_page": "50", "page": "2"},
        {"include": "space", "per_page": "7", "page": "1"},
        {"per_page": "5000"},
        {"include": "space.organization", "per_page": "50", "page": "9"},  # past the end
    ]

    def check() -> None:
        for query in queries:
            resp = requests.get(f"{cc.url}/v3/apps", params=query, headers=headers, timeout=5)
            assert (
                resp.status_code == 200 and resp.headers["Content-Type"] == "application/json; charset=utf-8"
            )
            assert resp.content == expected(query), query

    check()
    first = foundation.app_list()[0]
    foundation.rename_app(first.guid, "renamed")
    foundation.rename_space(first.space_guid, "renamed-space")
    foundation.rename_org(foundation.spaces[first.space_guid].org_guid, "renamed-org")
    foundation.set_app_state(foundation.app_list()[1].guid, "STOPPED")
    check()
    assert (
        b'"renamed-org"'
        in requests.get(
            f"{cc.url}/v3/apps", params=queries[0] | {"page": "1"}, headers=headers, timeout=5
        ).content
    )
    cc.stop()
    cc.start()  # a new port: every link changes
    headers = {"Authorization": f"bearer {_token(cc)}"}
    check()


def test_the_refresh_runs_with_the_collector_paused_and_restores_it(
    client: CloudControllerClient, cc: FakeCloudController, s3, s3_bucket: str
) -> None:
    seen: list[bool] = []
    list_apps = client.list_apps

    def spy(deadline: float | None = None):
        seen.append(gc.isenabled())
        return list_apps(deadline)

    client.list_apps = spy  # type: ignore[method-assign]
    assert gc.isenabled()
    _refresh(client, s3, s3_bucket)
    assert seen == [False] and gc.isenabled()
    cc.fail_listing_after(cc.list_requests + 1, status=500, count=10)
    with pytest.raises(CloudControllerUnavailable):
        _refresh(client, s3, s3_bucket)
    assert gc.isenabled()
    gc.disable()
    try:
        with pytest.raises(CloudControllerUnavailable):
            _refresh(client, s3, s3_bucket)
        assert not gc.isenabled()  # left as it was
    finally:
        gc.enable()


# ------------------------------------------------------------------- issue 15: scopes, versions, age


def test_an_empty_listing_is_refused_naming_the_scopes_then_written_when_forced(
    cc: FakeCloudController, foundation: Foundation, s3, s3_bucket: str
) -> None:
    """A client with cloud_controller.read and no role gets a real 200 with no apps: with no previous
    snapshot to compare with, that must not become the published snapshot."""
    cc.add_client("reader", "reader-secret", scope="cloud_controller.read")
    reader = CloudControllerClient(cc.url, "reader", "reader-secret", per_page=25)
    with pytest.raises(SnapshotRefused) as caught:
        _refresh(reader, s3, s3_bucket)
    message = str(caught.value)
    assert "listed no apps at all for UAA client 'reader'" in message
    assert "its token's scopes: cloud_controller.read" in message
    assert "cloud_controller.admin_read_only or cloud_controller.global_auditor" in message
    assert "reader-secret" not in message
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=s3_bucket, Key=KEY)

    result = _refresh(reader, s3, s3_bucket, force=True)  # an operator who knows the foundation is empty
    assert result.apps == 0 and "forced despite an empty listing" in result.reason
    assert decode_snapshot(_stored(s3, s3_bucket)).apps == {}

    cc.add_client("dev", "dev-secret", scope="cloud_controller.read", spaces=[next(iter(foundation.spaces))])
    dev = CloudControllerClient(cc.url, "dev", "dev-secret", per_page=25)
    assert _refresh(dev, s3, s3_bucket).apps == 10  # one space's apps: not empty, so not refused


def _versions(s3, bucket: str) -> list[dict]:
    return s3.list_object_versions(Bucket=bucket, Prefix=KEY).get("Versions", [])


def _checked_at(s3, bucket: str) -> str | None:
    tags = s3.get_object_tagging(Bucket=bucket, Key=KEY)["TagSet"]
    return next((t["Value"] for t in tags if t["Key"] == CHECKED_AT_TAG), None)


def test_an_unchanged_listing_writes_no_new_version_and_the_snapshot_age_still_tells_a_working_refresh(
    client: CloudControllerClient, foundation: Foundation, s3, s3_bucket: str
) -> None:
    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    t = [datetime(2026, 11, 21, 10, minute, tzinfo=UTC) for minute in (0, 10, 20, 30, 40)]
    store = MetadataStore(S3SnapshotSource(s3_bucket, KEY, client=s3), check_interval=0)

    def age_at(moment: datetime) -> float | None:  # what the enricher reports as SnapshotAge
        store.refresh_if_due()
        return snapshot_age_s(store.current_as_of(), now=moment.timestamp())

    first = _refresh(client, s3, s3_bucket, now=t[0])
    assert first.written and len(_versions(s3, s3_bucket)) == 1
    assert _checked_at(s3, s3_bucket) == "2026-11-21T10:00:00Z"
    assert age_at(t[1]) == 600
    etag = s3.head_object(Bucket=s3_bucket, Key=KEY)["ETag"]

    second = _refresh(client, s3, s3_bucket, now=t[1])  # nothing changed in the foundation
    assert not second.written and not second.replaced and "unchanged" in second.reason
    assert len(_versions(s3, s3_bucket)) == 1 and s3.head_object(Bucket=s3_bucket, Key=KEY)["ETag"] == etag
    assert decode_snapshot(_stored(s3, s3_bucket)).generated_at == "2026-11-21T10:00:00Z"
    assert _checked_at(s3, s3_bucket) == second.checked_at == "2026-11-21T10:10:00Z"
    assert age_at(t[2]) == 600  # a working refresh: 10 minutes since it last listed the same content

    foundation.rename_app(next(iter(foundation.apps)), "renamed")
    third = _refresh(client, s3, s3_bucket, now=t[2])
    assert third.written and third.replaced and len(_versions(s3, s3_bucket)) == 2
    assert age_at(t[3]) == 600
    assert store.snapshot is not None and store.snapshot.generated_at == "2026-11-21T10:20:00Z"

    # a stuck refresh (failing, or not running): nothing new is recorded, the age grows
    assert age_at(t[4]) == 1200
    # a refresh that publishes what the enricher cannot load: it keeps its copy, and that copy's age
    s3.put_object(
        Bucket=s3_bucket, Key=KEY, Body=b"not gzip", Tagging=f"{CHECKED_AT_TAG}=2026-11-21T10:40:00Z"
    )
    assert age_at(t[4]) == 1200 and store.stats.failures == 1


def test_when_tagging_is_refused_an_unchanged_snapshot_is_written_again(
    client: CloudControllerClient, s3, s3_bucket: str
) -> None:
    """Without the tagging permission (a stack updated halfway), a new version keeps the age right."""
    _refresh(client, s3, s3_bucket, now=NOW)

    class NoTagging:
        def __init__(self, inner) -> None:
            self.inner = inner

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

        def put_object_tagging(self, **kwargs) -> None:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutObjectTagging")

    later = datetime(2026, 11, 21, 10, 10, tzinfo=UTC)
    result = _refresh(client, NoTagging(s3), s3_bucket, now=later)
    assert result.written and "tagging failed (AccessDenied)" in result.reason
    assert decode_snapshot(_stored(s3, s3_bucket)).generated_at == "2026-11-21T10:10:00Z"


def test_the_refresh_handler_reports_an_unchanged_snapshot(
    cc: FakeCloudController, s3, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from refinery.handlers import metadata_refresh
    from refinery_tools.lambda_context import LocalContext

    for name, value in {
        "METADATA_BUCKET": s3_bucket,
        "CF_API_URL": cc.url,
        "CF_CLIENT_ID": "refinery",
        "CF_CLIENT_SECRET": SECRET,
    }.items():
        monkeypatch.setenv(name, value)
    first = metadata_refresh.handler({}, LocalContext(function_name="refresh", timeout_seconds=30))
    second = metadata_refresh.handler({}, LocalContext(function_name="refresh", timeout_seconds=30))
    assert first["written"] is True and second["written"] is False
    assert second["checked_at"] >= first["checked_at"] and second["apps"] == first["apps"] == 120
    assert _checked_at(s3, s3_bucket) == second["checked_at"]
