"""The metadata-refresh Lambda: list every app from the Cloud Controller v3 API, write the snapshot.

Triggered on a schedule. A failed page aborts the run and leaves the previous snapshot in place; a
snapshot that lost more than ``MAX_APP_LOSS`` of the apps is refused unless forced (setting
``REFRESH_FORCE`` or an event ``{"force": true}``).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from .config import load_config
from .enricher import cloud_controller_client
from .metadata.refresh import refresh_snapshot
from .observability import make_logger, make_metrics

logger = make_logger()
metrics = make_metrics()

#: Seconds kept back from the function's timeout, so a failure can still be reported.
TIME_RESERVE = 5.0


@metrics.log_metrics
def handler(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    config = load_config(role="refresh")
    assert config.cf is not None and config.metadata_bucket is not None
    force = config.refresh_force or bool(isinstance(event, dict) and event.get("force") is True)
    deadline = time.monotonic() + max(1.0, context.get_remaining_time_in_millis() / 1000.0 - TIME_RESERVE)
    import boto3

    client = cloud_controller_client(config.cf)
    started = time.monotonic()
    try:
        result = refresh_snapshot(
            client,
            boto3.client("s3"),
            config.metadata_bucket,
            config.metadata_key,
            source=config.cf.api_url,
            max_app_loss=config.max_app_loss,
            force=force,
            deadline=deadline,
        )
    except Exception as exc:
        metrics.add_metric(name="RefreshFailures", unit="Count", value=1)
        metrics.add_metric(name="RefreshSeconds", unit="Seconds", value=time.monotonic() - started)
        logger.error("metadata refresh failed; the previous snapshot is unchanged", extra={"error": str(exc)})
        raise
    finally:
        client.close()
    summary = asdict(result)
    summary["snapshot"] = f"s3://{config.metadata_bucket}/{config.metadata_key}"
    metrics.add_metric(name="RefreshApps", unit="Count", value=result.apps)
    metrics.add_metric(name="RefreshPages", unit="Count", value=result.pages)
    metrics.add_metric(name="RefreshSeconds", unit="Seconds", value=result.duration_s)
    metrics.add_metric(name="SnapshotBytes", unit="Bytes", value=result.bytes)
    logger.info("metadata refresh done", extra={"summary": summary})
    return summary
