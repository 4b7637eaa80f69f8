"""Filters and extra tags: settings, decisions, escaping, accounting; nothing changes when unset."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refinery.batch import BatchResult
from refinery.config import ConfigError, load_enricher_config
from refinery.filters import PointFilter, parse_extra_tags
from refinery.handlers.enricher import build_runtime
from refinery.lineparse import parse_line, parse_series, render_line
from refinery.lineproto import escape_tag
from refinery.metadata.store import FileSnapshotSource, MetadataStore
from refinery.pipeline import process_batch
from refinery.point_stage import PointStage
from refinery.quarantine import Quarantine
from refinery.sinks import Deadline
from refinery.sinks.chunked import ChunkedSink
from refinery_tools.dev.samples import sample_envelopes, sample_snapshot
from refinery_tools.events import build_kafka_event
from support.collecting_sink import CollectingSink

DEADLINE = Deadline(lambda: 60_000, reserve=1.0)
ROOT = Path(__file__).resolve().parents[2]
LOG = (
    "log,app=my\\ app,app_guid=g,instance=0,org=a\\,b,org_guid=o,space=dev\\=x,space_guid=s,type=OUT"
    " count=1i,size=93i 1537510364199999999"
)


def run(tmp_path, stage: PointStage | None, values=None):
    snapshot = tmp_path / "snapshot.json.gz"
    snapshot.write_bytes(sample_snapshot())
    store = MetadataStore(FileSnapshotSource(str(snapshot)))
    sink = CollectingSink()
    quarantine = Quarantine(None, "quarantine/", directory=str(tmp_path / "q"))
    event = build_kafka_event(values or sample_envelopes(), partitions=2)
    result = process_batch(event, store, sink, quarantine, DEADLINE, stage=stage)
    return result, sink.lines


def test_extra_tags_parse_sorted_and_validated() -> None:
    assert parse_extra_tags("region=eu, foundation=eu-prod") == (("foundation", "eu-prod"), ("region", "eu"))
    assert parse_extra_tags("k=a=b c") == (("k", "a=b c"),)
    for text, fragment in [
        ("foundation", "is not key=value"),
        ("foundation=", "is not key=value"),
        ("1x=a", "letters, digits and _"),
        ("app=x", "one of the schema's own tags"),
        ("partition=x", "one of the schema's own tags"),
        ("a=1,a=2", "given twice"),
        ("a=\\", "cannot be written as a tag"),
    ]:
        with pytest.raises(ValueError, match=re.escape(fragment)):
            parse_extra_tags(text)


def test_bad_settings_are_named(tmp_path) -> None:
    snapshot = tmp_path / "s.json.gz"
    snapshot.write_bytes(b"x")
    with pytest.raises(ConfigError) as caught:
        load_enricher_config(
            {
                "METADATA_FILE": str(snapshot),
                "FILTER_EXCLUDE_APPS": "test-(",
                "EXTRA_TAGS": "org=x",
            }
        )
    assert [p.split(":")[0] for p in caught.value.problems] == ["FILTER_EXCLUDE_APPS", "EXTRA_TAGS"]
    config = load_enricher_config({"METADATA_FILE": str(snapshot), "FILTER_EXCLUDE_APPS": "test-.*"})
    assert config.point_filter is not None and config.point_filter.exclude_apps.pattern == "test-.*"
    assert load_enricher_config({"METADATA_FILE": str(snapshot)}).point_filter is None


def test_filters_match_whole_unescaped_names() -> None:
    series = LOG.split(" count")[0]
    assert PointFilter(include_apps=re.compile("my app")).keeps(series)
    assert not PointFilter(include_apps=re.compile("my")).keeps(series)  # the whole name
    assert not PointFilter(exclude_orgs=re.compile("a,b")).keeps(series)
    assert not PointFilter(exclude_spaces=re.compile("dev=x")).keeps(series)
    assert PointFilter(include_measurements=re.compile("log|instance")).keeps(series)
    assert not PointFilter(exclude_measurements=re.compile("log")).keeps(series)
    assert not PointFilter(include_orgs=re.compile("a,b"), exclude_apps=re.compile("my.*")).keeps(series)
    assert PointFilter(exclude_apps=re.compile("")).keeps(series)
    assert not PointFilter(include_apps=re.compile(".+")).keeps("log,instance=0")  # no app tag: ""


def test_extra_tags_are_escaped_and_inserted_in_order() -> None:
    point_filter = PointFilter(extra_tags=parse_extra_tags("zone=z 1,foundation=eu=prod,b=x\\y"))
    series = point_filter.rewrite(LOG.split(" count")[0])
    assert series == (
        "log,app=my\\ app,app_guid=g,b=x\\y,foundation=eu\\=prod,instance=0,org=a\\,b,org_guid=o,"
        "space=dev\\=x,space_guid=s,type=OUT,zone=z\\ 1"
    )
    _, tags = parse_series(series)
    assert (tags["foundation"], tags["zone"], tags["b"], tags["org"]) == ("eu=prod", "z 1", "x\\y", "a,b")


def test_output_is_byte_identical_without_filters_rules_or_extra_tags(tmp_path) -> None:
    config = load_enricher_config({"METADATA_FILE": str(ROOT / "events" / "sample-snapshot.json.gz")})
    assert build_runtime(config, CollectingSink()).stage is None
    _, plain = run(tmp_path, None)
    _, inactive = run(tmp_path, PointStage(PointFilter()))
    assert inactive == plain and len(plain) == 4


def test_filtered_points_are_dropped_with_a_reason_and_extra_tags_added(tmp_path) -> None:
    stage = PointStage(
        PointFilter(exclude_measurements=re.compile("log"), extra_tags=(("foundation", "eu-prod"),))
    )
    result, lines = run(tmp_path, stage)
    assert [line.split(",")[0] for line in lines] == ["http_request", "instance"]
    assert all(",foundation=eu-prod,instance=" in line for line in lines)
    assert result.dropped == {"value_metric": 1, "counter_event": 1, "filtered": 2}
    assert (result.records_in, result.written, result.points) == (6, 2, 2) and result.balanced
    assert result.summary()["dropped_by_reason"]["filtered"] == 2


def test_an_app_excluded_by_name(tmp_path) -> None:
    result, lines = run(tmp_path, PointStage(PointFilter(exclude_apps=re.compile("my.*"))))
    assert lines == [] and result.dropped["filtered"] == 4 and result.balanced


NAMES = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r"), min_size=1, max_size=12
)


@given(name=NAMES, value=NAMES, extra=NAMES)
def test_lines_with_any_names_parse_back_and_stay_valid(name: str, value: str, extra: str) -> None:
    """What the transform escapes, the stages read back unchanged (as InfluxDB does)."""
    tags = {"app": name, "org": value}
    line = render_line("log", tags, {"count": 1}, 5)
    point = parse_line(line)
    assert point.tags == {k: v.rstrip("\\") for k, v in tags.items() if escape_tag(v)}
    if not escape_tag(extra):
        return
    rewritten = PointFilter(extra_tags=(("foundation", extra),)).rewrite(line.split(" count=")[0])
    assert rewritten is not None
    again = parse_line(rewritten + " count=1i 5")
    assert again.tags["foundation"] == extra.rstrip("\\") and again.tags.get("app") == point.tags.get("app")


def test_a_partial_failure_keeps_the_filtered_accounting(tmp_path) -> None:
    from refinery.sinks.base import Misconfigured
    from refinery_tools.dev.envelopes import http_envelope, log_envelope
    from refinery_tools.dev.samples import SAMPLE_APP

    class FailingSink(ChunkedSink):
        def __init__(self) -> None:
            super().__init__(batch_size=2)
            self.ok = 1

        def post(self, body: bytes, timeout: float) -> None:
            if self.ok <= 0:
                raise Misconfigured("answered 401", 401)
            self.ok -= 1

    values = [
        (log_envelope if i % 2 else http_envelope)(SAMPLE_APP.guid, 10**18 + i * 1000) for i in range(8)
    ]  # offsets 0..7: http, log, http, log, ...
    snapshot = tmp_path / "snapshot.json.gz"
    snapshot.write_bytes(sample_snapshot())
    store = MetadataStore(FileSnapshotSource(str(snapshot)))
    quarantine = Quarantine(None, "quarantine/", directory=str(tmp_path / "q"))

    def flush(stage: PointStage) -> BatchResult:
        return process_batch(
            build_kafka_event(values, partitions=1),
            store,
            FailingSink(),
            quarantine,
            DEADLINE,
            partial_failures=True,
            stage=stage,
        )

    result = flush(PointStage(PointFilter(exclude_measurements=re.compile("log"), extra_tags=(("f", "x"),))))
    # Chunk 1 (offsets 0 and 2) written, chunk 2 (offset 4, 6) refused: redelivered from offset 4.
    assert result.batch_item_failures == [{"itemIdentifier": {"partition": "cf-firehose-0", "offset": 4}}]
    assert (result.written, result.dropped, result.redelivered) == (2, {"filtered": 2}, 4)
    assert result.balanced

    result = flush(PointStage(PointFilter(include_measurements=re.compile("log"))))  # the other way round
    # Logs at offsets 1 and 3 written, 5 and 7 refused: redelivered from 5 (with the filtered 6).
    assert result.batch_item_failures == [{"itemIdentifier": {"partition": "cf-firehose-0", "offset": 5}}]
    assert (result.written, result.dropped, result.redelivered) == (2, {"filtered": 3}, 3)
    assert result.balanced
