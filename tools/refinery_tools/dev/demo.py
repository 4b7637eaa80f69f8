"""``refinery demo``: the main job on embedded defaults, on loopback, leaving nothing running.

1. start S3 (moto's server) and the fake Cloud Controller (v3 API + UAA) on free loopback ports,
   the latter serving a sample foundation that holds the app of the bundled envelopes;
2. run the real metadata-refresh handler: it lists every app and writes the snapshot to S3;
3. create one more app in the fake Cloud Controller (after the snapshot: the enricher must look it
   up live), then run the real enricher handler over the six bundled nozzle envelopes and three
   more: a log line of that new app, one of an app that does not exist, and a broken record;
4. show each record beside what it became — the envelope's app GUID and the point's org, space and
   app names, or why it was dropped or quarantined — then the points as written and the summary,
   and stop everything.

The per-record table comes from :mod:`refinery_tools.tap` (the pipeline's own transform, record
by record, with a fresh metadata store), checked line for line against what the handler wrote. The
functions' JSON logs and EMF metrics are shown only with ``verbose``. With ``INFLUX_URL`` (and its
settings) in the environment the points are written there instead of printed.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from refinery_tools.dev.environ import patched_environ
from refinery_tools.dev.fake_cc import FakeCloudController, Foundation
from refinery_tools.dev.samples import SAMPLE_APP, sample_envelopes
from refinery_tools.dev.servers import MotoS3Server
from refinery_tools.events import build_kafka_event

BUCKET = "refinery-demo"
METADATA_KEY = "metadata/apps.json.gz"
#: An app created after the snapshot was written (the enricher looks it up live) and one that does
#: not exist at all (the Cloud Controller answers 404: dropped as unknown_app).
NEW_APP = ("checkout", "4f2d8c1a-6b3e-4d7f-9a0b-2c5e8f1d3a7b")
MISSING_APP = "0badc0de-1111-4222-8333-944455556666"
EVENT_TYPES = {
    4: "HttpStartStop",
    5: "LogMessage",
    6: "ValueMetric",
    7: "CounterEvent",
    8: "Error",
    9: "ContainerMetric",
}
WHY = {
    "value_metric": "a platform metric, not an app event",
    "counter_event": "a platform counter, not an app event",
    "unknown_app": "no such app: not in the snapshot, and the Cloud Controller says it does not exist",
    "log_source_not_app_or_rtr": "a log of a platform component, not of the app or its router",
}


def sample_foundation() -> Foundation:
    """A small generated foundation plus the org, space and app of the bundled envelopes."""
    foundation = Foundation.generate(orgs=3, spaces_per_org=2, apps_per_space=4, seed=7, stopped_every=5)
    org = foundation.add_org(SAMPLE_APP.org_name, guid=SAMPLE_APP.org_guid)
    space = foundation.add_space(SAMPLE_APP.space_name, org.guid, guid=SAMPLE_APP.space_guid)
    foundation.add_app(SAMPLE_APP.name, space.guid, guid=SAMPLE_APP.guid)
    return foundation


def demo_envelopes() -> list[bytes]:
    """The six bundled envelopes, a log line of the app created after the snapshot, one of an app
    that does not exist, and a record cut short (not JSON)."""
    samples = sample_envelopes()
    app_log = next(e for e in samples if b'"source_type":"APP' in e)
    guid = SAMPLE_APP.guid.encode()
    return [
        *samples,
        app_log.replace(guid, NEW_APP[1].encode()),
        app_log.replace(guid, MISSING_APP.encode()),
        samples[0][: len(samples[0]) // 2],
    ]


def run_demo(out: TextIO | None = None, *, verbose: bool = False) -> int:
    out = out or sys.stdout
    settings = {
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_DEFAULT_REGION": "us-east-1",
        "METADATA_BUCKET": BUCKET,
        "METADATA_KEY": METADATA_KEY,
        "CF_CLIENT_ID": "refinery",
        "CF_CLIENT_SECRET": "refinery-secret",
    }
    if not verbose:  # the functions' INFO lines; warnings and errors still show
        settings.setdefault("POWERTOOLS_LOG_LEVEL", os.environ.get("POWERTOOLS_LOG_LEVEL") or "WARNING")
    foundation = sample_foundation()
    with MotoS3Server() as s3, FakeCloudController(foundation) as cc:
        settings.update(AWS_ENDPOINT_URL_S3=s3.url, CF_API_URL=cc.url)
        with patched_environ(settings):
            print(f"S3 (moto) on {s3.url}; fake Cloud Controller (v3 API + UAA) on {cc.url}", file=out)
            return _refresh_then_enrich(out, foundation, verbose)


def _refresh_then_enrich(out: TextIO, foundation: Foundation, verbose: bool) -> int:
    import boto3

    from refinery.config import load_enricher_config
    from refinery.handlers import enricher, metadata_refresh
    from refinery.sinks import PrintSink
    from refinery_tools.lambda_context import LocalContext
    from refinery_tools.tap import Tap

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    with _function_output(verbose) as function_out:
        try:
            with contextlib.redirect_stdout(function_out):
                refreshed = metadata_refresh.handler(
                    {}, LocalContext(function_name="refinery-metadata-refresh")
                )
        except Exception as exc:
            print(f"\nthe metadata refresh failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(
            f"metadata refresh: {refreshed['apps']} apps, {refreshed['spaces']} spaces, {refreshed['orgs']}"
            f" orgs in {refreshed['pages']} page(s) -> {refreshed['snapshot']} ({refreshed['bytes']} bytes)",
            file=out,
        )
        space = next(s for s in foundation.spaces.values() if s.guid == SAMPLE_APP.space_guid)
        foundation.add_app(NEW_APP[0], space.guid, guid=NEW_APP[1])
        print(f"then app {NEW_APP[0]!r} ({NEW_APP[1]}) was created: it is not in the snapshot", file=out)
        config = load_enricher_config()
        envelopes = demo_envelopes()
        event = build_kafka_event(envelopes, partitions=2)
        printed = io.StringIO()
        target = "printing the points" if config.influx is None else f"writing to {config.influx.url}"
        print(f"enricher: {len(envelopes)} records in an MSK event, {target}\n", file=out)
        enricher.reset_runtime(
            enricher.build_runtime(config, PrintSink(printed) if config.influx is None else None)
        )
        try:
            with contextlib.redirect_stdout(function_out):
                result = enricher.handler(event, LocalContext())
        except Exception as exc:
            print(f"\nthe enricher failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        finally:
            enricher.reset_runtime()
        # The same records again, one by one, with a fresh store: what became of each, and why.
        fresh = enricher.build_runtime(config, PrintSink(io.StringIO()))
        with contextlib.redirect_stdout(function_out):
            walked = list(Tap(config, fresh.store).event(event))
    fresh.sink.close()
    envelope_of = _envelope_kinds(event)
    print_walk(walked, envelope_of, out)
    summary = result["summary"]
    if config.influx is None:
        written = printed.getvalue().splitlines()
        if sorted(written) != sorted(t.line for t in walked if t.line and not t.same_point_as):
            print("\nthe per-record walk does not match what the handler wrote:", file=sys.stderr)
            print("\n".join(written), file=sys.stderr)
            return 1
        print("\nthe points, as written (line protocol; tags and fields sorted, time in ns):", file=out)
        for line in written:
            print(f"  {line}", file=out)
    print("\nsummary:", file=out)
    _print_summary(summary, event, out)
    return 0


@contextlib.contextmanager
def _function_output(verbose: bool) -> Any:
    """Where the functions' stdout (EMF metrics) goes: stderr with --verbose, else nowhere."""
    if verbose:
        yield sys.stderr
        return
    with open(os.devnull, "w") as devnull:
        yield devnull


def _envelope_kinds(event: dict[str, Any]) -> dict[str, str]:
    """``partition@offset`` -> what the record is (event type, log source), for the table."""
    from refinery.envelope import Poison, decode_value

    kinds = {}
    for key, records in event["records"].items():
        for record in records:
            try:
                envelope = decode_value(record["value"])
            except Poison:
                kind = "(broken record)"
            else:
                event_type = envelope.get("eventType")
                kind = EVENT_TYPES.get(event_type, "") if isinstance(event_type, int) else ""
                kind = kind or f"eventType {event_type}"
                source = (envelope.get("logMessage") or {}).get("source_type")
                if source:
                    kind += f" {source}"
            kinds[f"{key}@{record['offset']}"] = kind
    return kinds


def _became(tapped: Any) -> str:
    if tapped.outcome != "written":
        why = WHY.get(tapped.reason or "", tapped.detail or "")
        return f"{tapped.outcome}: {tapped.reason}" + (f" ({why})" if why else "")
    from refinery.lineparse import parse_line

    point = parse_line(tapped.line)
    tags = point.tags
    names = f"{tags.get('org', '?')} / {tags.get('space', '?')} / {tags.get('app', '?')}"
    enrichment = {"app", "app_guid", "space", "space_guid", "org", "org_guid"}
    rest = " ".join(f"{k}={v}" for k, v in sorted(tags.items()) if k not in enrichment)
    return f"{point.measurement:<13} {names}  {rest}"


def print_walk(walked: list[Any], envelope_of: dict[str, str], out: TextIO) -> None:
    """The table: each record's envelope and app GUID beside the point it became (org / space / app)."""
    rows = [("record", "envelope", "app GUID (in the envelope)", "named by", "became: org / space / app")]
    for tapped in walked:
        rows.append(
            (
                tapped.position,
                envelope_of.get(tapped.position, "?"),
                tapped.app_guid or "-",
                tapped.tier or "-",
                _became(tapped),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for index, row in enumerate(rows):
        cells = [c.ljust(w) for c, w in zip(row[:4], widths, strict=True)]
        print("  " + "  ".join([*cells, row[4]]).rstrip(), file=out)
        if index == 0:
            print("  " + "  ".join("-" * w for w in [*widths, len(row[4])]), file=out)
    print(
        "\n  named by: the metadata tier that gave the app's names: the S3 snapshot the refresh wrote, a live"
        "\n  Cloud Controller lookup (an app created since), or none; every point also carries the app's,"
        "\n  space's and org's GUIDs as tags.",
        file=out,
    )


def _age(ms: float) -> str:
    days = ms / 86_400_000
    return f"{days / 365.25:.1f} years" if days > 365 else f"{ms / 1000:,.1f} s"


def _print_summary(summary: dict[str, Any], event: dict[str, Any], out: TextIO) -> None:
    tiers = {k: v for k, v in (summary.get("metadata") or {}).items() if v}
    rows = [
        ("records in", summary["records_in"], ""),
        ("written", summary["written"], f"{summary['points']} point(s)"),
        ("dropped", summary["dropped"], _reasons(summary["dropped_by_reason"])),
        ("quarantined", summary["quarantined"], _reasons(summary["quarantined_by_reason"])),
    ]
    if summary.get("quarantine_object"):
        # In the demo's S3, gone when it ends; a real run replays it with `refinery replay`.
        rows.append(("", "", f"-> {summary['quarantine_object']}"))
    rows.append(("metadata", "", ", ".join(f"{k} {v}" for k, v in tiers.items())))
    partitions = ", ".join(
        f"{k} [{v['first_offset']}..{v['last_offset']}]" for k, v in summary["partitions"].items()
    )
    rows.append(("partitions", "", partitions))
    lag = summary.get("batch_lag_ms")
    if lag is not None:
        rows.append(("batch lag", "", _age(lag)))
    age = summary.get("snapshot_age_s")
    if age is not None:
        rows.append(("snapshot age", "", f"{age:,.1f} s"))
    for name, value, detail in rows:
        print(f"  {name:<13} {value!s:>3}  {detail}".rstrip(), file=out)
    first = min(
        (r["timestamp"] for records in event["records"].values() for r in records if r.get("timestamp")),
        default=None,
    )
    if first is not None:
        recorded = datetime.fromtimestamp(first / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
        print(
            f"\n  About the ages: the bundled envelopes were recorded on {recorded}, and their Kafka"
            "\n  timestamps too, so the batch lag (now minus the oldest record's timestamp) is years here;"
            "\n  in production it is seconds. The snapshot age is small because the refresh just wrote it."
            f"\n  The points are dated {recorded[:10]}: look there in Grafana.",
            file=out,
        )


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())
