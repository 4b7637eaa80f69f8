"""``refinery demo``: the main job on embedded defaults, on loopback, leaving nothing running.

1. start S3 (moto's server) and the fake Cloud Controller (v3 API + UAA) on free loopback ports,
   the latter serving a sample foundation that holds the app of the bundled envelopes;
2. run the real metadata-refresh handler: it lists every app and writes the snapshot to S3;
3. run the real enricher handler over the bundled nozzle envelopes (an MSK event);
4. print the enriched points and the batch summary, and stop everything.

With ``INFLUX_URL`` (and its settings) in the environment the points are written there instead.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

from .environ import patched_environ
from .events import build_kafka_event
from .fake_cc import FakeCloudController, Foundation
from .samples import SAMPLE_APP, sample_envelopes
from .servers import MotoS3Server

BUCKET = "refinery-demo"
METADATA_KEY = "metadata/apps.json.gz"


def _print_summary(summary: dict[str, Any], out: Any) -> None:
    rows = [
        ("records in", summary["records_in"]),
        ("written", summary["written"]),
        ("points", summary["points"]),
        ("dropped", f"{summary['dropped']} {summary['dropped_by_reason'] or ''}"),
        ("quarantined", f"{summary['quarantined']} {summary['quarantined_by_reason'] or ''}"),
        (
            "partitions",
            ", ".join(
                f"{k} [{v['first_offset']}..{v['last_offset']}]" for k, v in summary["partitions"].items()
            ),
        ),
    ]
    for name, value in rows:
        print(f"  {name:<12} {value}", file=out)


def sample_foundation() -> Foundation:
    """A small generated foundation plus the org, space and app of the bundled envelopes."""
    foundation = Foundation.generate(orgs=3, spaces_per_org=2, apps_per_space=4, seed=7, stopped_every=5)
    org = foundation.add_org(SAMPLE_APP.org_name, guid=SAMPLE_APP.org_guid)
    space = foundation.add_space(SAMPLE_APP.space_name, org.guid, guid=SAMPLE_APP.space_guid)
    foundation.add_app(SAMPLE_APP.name, space.guid, guid=SAMPLE_APP.guid)
    return foundation


def run_demo(out: Any = None) -> int:
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
    with MotoS3Server() as s3, FakeCloudController(sample_foundation()) as cc:
        settings.update(AWS_ENDPOINT_URL_S3=s3.url, CF_API_URL=cc.url)
        with patched_environ(settings):
            print(f"S3 (moto) on {s3.url}; fake Cloud Controller (v3 API + UAA) on {cc.url}", file=out)
            return _refresh_then_enrich(out)


def _refresh_then_enrich(out: Any) -> int:
    import boto3

    from .. import enricher, refresher
    from ..config import load_config
    from ..sinks import PrintSink
    from .lambda_context import LocalContext

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            refreshed = refresher.handler({}, LocalContext(function_name="refinery-metadata-refresh"))
    except Exception as exc:
        print(f"\nthe metadata refresh failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(
        f"metadata refresh: {refreshed['apps']} apps, {refreshed['spaces']} spaces, {refreshed['orgs']} orgs"
        f" in {refreshed['pages']} page(s) -> {refreshed['snapshot']} ({refreshed['bytes']} bytes)",
        file=out,
    )
    config = load_config()
    target = "printing the points" if config.influx is None else f"writing to {config.influx.url}"
    print(f"enricher: {len(sample_envelopes())} nozzle envelopes from an MSK event, {target}\n", file=out)
    enricher.reset_runtime(enricher.build_runtime(config, PrintSink(out) if config.influx is None else None))
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = enricher.handler(build_kafka_event(sample_envelopes(), partitions=2), LocalContext())
    except Exception as exc:
        print(f"\nthe enricher failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        enricher.reset_runtime()
    print("\nsummary:", file=out)
    _print_summary(result["summary"], out)
    print(f"\nfull result: {json.dumps(result['summary'], sort_keys=True)}", file=sys.stderr)
    return 0
