"""The metadata snapshot format: schema 2 (string tables) round-trips, schema 1 is still read."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from refinery.metadata.snapshot import (
    AppInfo,
    LazyApps,
    SnapshotError,
    TableApps,
    decode_snapshot,
    encode_snapshot,
    snapshot_app_guids,
)
from refinery_tools.dev.fake_cc import Foundation

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
SOURCE = "https://api.sys.example.com"


@pytest.fixture(scope="module")
def apps() -> dict[str, AppInfo]:
    return Foundation.generate(orgs=3, spaces_per_org=4, apps_per_space=5, seed=3).app_infos()


def doc_of(data: bytes) -> dict[str, Any]:
    return orjson.loads(gzip.decompress(data))


def gz(doc: dict[str, Any]) -> bytes:
    return gzip.compress(orjson.dumps(doc), mtime=0)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("version", [1, 2])
def test_round_trip(apps: dict[str, AppInfo], version: int, lazy: bool) -> None:
    snapshot = decode_snapshot(encode_snapshot(apps, SOURCE, NOW, schema_version=version), lazy=lazy)
    assert (snapshot.source, snapshot.generated_at) == (SOURCE, "2026-11-21T10:00:00Z")
    assert len(snapshot.apps) == len(apps) and list(snapshot.apps) == sorted(apps)
    assert dict(snapshot.apps) == apps
    guid = next(iter(apps))
    assert guid in snapshot.apps and snapshot.apps.get(guid) == apps[guid] == snapshot.apps[guid]
    assert snapshot.apps.get("no-such-app") is None and "no-such-app" not in snapshot.apps
    with pytest.raises(KeyError):
        snapshot.apps["no-such-app"]
    if lazy:
        assert isinstance(snapshot.apps, TableApps if version == 2 else LazyApps)


def test_schema_2_is_the_default_and_holds_each_space_and_org_once(apps: dict[str, AppInfo]) -> None:
    data = encode_snapshot(apps, SOURCE, NOW)
    assert data == encode_snapshot(dict(reversed(apps.items())), SOURCE, NOW)  # deterministic
    doc = doc_of(data)
    assert doc["schema_version"] == 2 and (doc["source"], doc["generated_at"]) == (
        SOURCE,
        "2026-11-21T10:00:00Z",
    )
    assert doc["apps"]["guid"] == sorted(apps)
    assert len(doc["orgs"]["guid"]) == 3 and len(doc["spaces"]["guid"]) == 12
    assert doc["orgs"]["guid"] == sorted(doc["orgs"]["guid"])
    guid = doc["apps"]["guid"][7]
    space = doc["apps"]["space"][7]
    org = doc["spaces"]["org"][space]
    assert (
        AppInfo(
            guid,
            doc["apps"]["name"][7],
            doc["spaces"]["guid"][space],
            doc["spaces"]["name"][space],
            doc["orgs"]["guid"][org],
            doc["orgs"]["name"][org],
        )
        == apps[guid]
    )
    assert len(data) < len(encode_snapshot(apps, SOURCE, NOW, schema_version=1))


def test_schema_2_keeps_inconsistent_names_exactly() -> None:
    """Schema 1 could say two things about one space; schema 2 keeps both (a row per combination)."""
    apps = {
        "a1": AppInfo("a1", "one", "s", "dev", "o", "acme"),
        "a2": AppInfo("a2", "two", "s", "dev-renamed", "o", "acme"),
        "a3": AppInfo("a3", "three", "s", "dev", "o", "acme-renamed"),
    }
    data = encode_snapshot(apps, SOURCE, NOW)
    assert dict(decode_snapshot(data).apps) == apps
    doc = doc_of(data)
    assert doc["spaces"]["guid"] == ["s", "s", "s"] and doc["orgs"]["guid"] == ["o", "o"]


def test_empty_snapshot(apps: dict[str, AppInfo]) -> None:
    for version in (1, 2):
        data = encode_snapshot({}, SOURCE, NOW, schema_version=version)
        assert len(decode_snapshot(data, lazy=True).apps) == 0 and snapshot_app_guids(data) == frozenset()


def test_snapshot_app_guids_checks_every_entry(apps: dict[str, AppInfo]) -> None:
    for version in (1, 2):
        assert snapshot_app_guids(encode_snapshot(apps, SOURCE, NOW, schema_version=version)) == set(apps)
    doc = doc_of(encode_snapshot(apps, SOURCE, NOW))
    doc["apps"]["name"][-1] = None
    with pytest.raises(SnapshotError, match=r"field 'name' is not a string"):
        snapshot_app_guids(gz(doc))
    v1 = doc_of(encode_snapshot(apps, SOURCE, NOW, schema_version=1))
    v1["apps"][next(iter(apps))]["org_name"] = 1
    with pytest.raises(SnapshotError, match="org_name"):
        snapshot_app_guids(gz(v1))


def _break(doc: dict[str, Any], change: str) -> None:
    if change == "name":
        doc["apps"]["name"][0] = 5
    elif change == "space out of range":
        doc["apps"]["space"][0] = len(doc["spaces"]["guid"])
    elif change == "space negative":
        doc["apps"]["space"][0] = -1
    elif change == "space not int":
        doc["apps"]["space"][0] = True
    elif change == "space name":
        doc["spaces"]["name"][doc["apps"]["space"][0]] = ["dev"]
    elif change == "org out of range":
        doc["spaces"]["org"][doc["apps"]["space"][0]] = 99
    elif change == "org guid":
        doc["orgs"]["guid"][doc["spaces"]["org"][doc["apps"]["space"][0]]] = {}


@pytest.mark.parametrize(
    "change",
    [
        "name",
        "space out of range",
        "space negative",
        "space not int",
        "space name",
        "org out of range",
        "org guid",
    ],
)
def test_an_invalid_row_fails_when_read_lazily_and_at_once_otherwise(
    apps: dict[str, AppInfo], change: str
) -> None:
    doc = doc_of(encode_snapshot(apps, SOURCE, NOW))
    bad = doc["apps"]["guid"][0]
    org_of = lambda row: doc["spaces"]["org"][doc["apps"]["space"][row]]  # noqa: E731
    good = next(g for row, g in enumerate(doc["apps"]["guid"]) if org_of(row) != org_of(0))  # unaffected
    _break(doc, change)
    data = gz(doc)
    lazy = decode_snapshot(data, lazy=True).apps
    assert lazy.get(good) == apps[good]
    with pytest.raises(SnapshotError):
        lazy.get(bad)
    with pytest.raises(SnapshotError):
        decode_snapshot(data)
    with pytest.raises(SnapshotError):
        snapshot_app_guids(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("spaces"), "'spaces' is missing"),
        (lambda d: d["apps"].pop("space"), r"'apps.space' is missing"),
        (lambda d: d["orgs"].update(name="acme"), r"'orgs.name' is missing or not an array"),
        (lambda d: d["apps"]["name"].pop(), "'apps': its arrays differ in length"),
        (lambda d: d["apps"]["guid"].__setitem__(0, 7), "'apps.guid' holds a value that is not a string"),
        (lambda d: d.update(generated_at=None), "'generated_at' and 'source' must be strings"),
        (lambda d: d.update(schema_version=3), r"unsupported snapshot schema_version 3 \(expected 1 or 2\)"),
    ],
)
def test_a_malformed_document_is_refused_at_once(apps: dict[str, AppInfo], change: Any, message: str) -> None:
    doc = doc_of(encode_snapshot(apps, SOURCE, NOW))
    change(doc)
    with pytest.raises(SnapshotError, match=message):
        decode_snapshot(gz(doc), lazy=True)


def test_schema_1_written_by_an_older_refresh_is_read(apps: dict[str, AppInfo]) -> None:
    """Exactly the bytes the previous release published (keys sorted, level 6, mtime 0)."""
    old = {
        "schema_version": 1,
        "generated_at": "2026-11-21T10:00:00Z",
        "source": SOURCE,
        "apps": {guid: apps[guid].as_dict() for guid in sorted(apps)},
    }
    data = gzip.compress(orjson.dumps(old, option=orjson.OPT_SORT_KEYS), compresslevel=6, mtime=0)
    assert dict(decode_snapshot(data, lazy=True).apps) == apps
    assert snapshot_app_guids(data) == set(apps)


def test_cannot_write_an_unknown_schema(apps: dict[str, AppInfo]) -> None:
    with pytest.raises(ValueError, match="schema_version 3"):
        encode_snapshot(apps, SOURCE, NOW, schema_version=3)
