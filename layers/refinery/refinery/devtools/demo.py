"""``refinery demo``: the main job on embedded defaults, on loopback, leaving nothing running.

1. start S3 (moto's server) on a free loopback port and create a bucket;
2. put the metadata snapshot there;
3. run the real enricher handler over the bundled nozzle envelopes (an MSK event);
4. print the enriched points and the batch summary.

With ``INFLUX_URL`` (and its settings) in the environment the points are written there instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

from .events import build_kafka_event
from .samples import sample_envelopes, sample_snapshot
from .servers import MotoS3Server

BUCKET = "refinery-demo"
METADATA_KEY = "metadata/apps.json.gz"


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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


def run_demo(out: Any = None) -> int:
    out = out or sys.stdout
    import boto3

    from .. import enricher
    from ..config import load_config
    from ..sinks import PrintSink
    from .lambda_context import LocalContext

    with (
        MotoS3Server() as s3,
        _environment(
            {
                "AWS_ACCESS_KEY_ID": "demo",
                "AWS_SECRET_ACCESS_KEY": "demo",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL_S3": s3.url,
                "METADATA_BUCKET": BUCKET,
                "METADATA_KEY": METADATA_KEY,
            }
        ),
    ):
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=METADATA_KEY, Body=sample_snapshot())
        print(f"S3 (moto) on {s3.url}: s3://{BUCKET}/{METADATA_KEY} holds the metadata snapshot", file=out)

        config = load_config()
        target = "printing the points" if config.influx is None else f"writing to {config.influx.url}"
        print(f"enricher: {len(sample_envelopes())} nozzle envelopes from an MSK event, {target}\n", file=out)
        runtime = enricher.build_runtime(config, PrintSink(out) if config.influx is None else None)
        enricher.reset_runtime(runtime)
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
