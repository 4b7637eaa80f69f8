"""The metadata-refresh Lambda: list every app from the Cloud Controller v3 API, write the snapshot.

Triggered on a schedule. A failed page aborts the run and leaves the previous snapshot in place; a
snapshot that lost more than ``MAX_APP_LOSS`` of the apps is refused unless forced (setting
``REFRESH_FORCE`` or an event ``{"force": true}``).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from .. import snapstart
from ..config import ConfigError, load_refresh_config
from ..metadata.cc_factory import client_for
from ..metadata.refresh import refresh_snapshot
from ..observability import (
    emit_failure_metric,
    emit_refresh_metrics,
    error_fields,
    make_logger,
    make_metrics,
    warn_if_tls_unverified,
)
from ..tracing import trace_handler

logger = make_logger()
metrics = make_metrics()
# SnapStart only: the Cloud Controller client's modules and the AWS clients' data, before the snapshot
snapstart.prepare(("refinery.metadata.cc_client",), ("s3", "secretsmanager"))

#: Seconds kept back from the function's timeout, so a failure can still be reported.
TIME_RESERVE = 5.0


@metrics.log_metrics(capture_cold_start_metric=True)
@logger.inject_lambda_context(clear_state=True)
@trace_handler
def handler(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    try:
        config = load_refresh_config()
    except ConfigError as exc:
        emit_failure_metric(metrics, "RefreshFailures")
        logger.error("metadata refresh not started: invalid configuration", extra=error_fields(exc))
        raise
    warn_if_tls_unverified(logger, config)
    force = config.refresh_force or bool(isinstance(event, dict) and event.get("force") is True)
    deadline = time.monotonic() + max(1.0, context.get_remaining_time_in_millis() / 1000.0 - TIME_RESERVE)
    from ..s3 import BoundedClient, make_client

    # Every S3 call ends by the deadline (a hung S3 must not outlive the invocation).
    s3_client = BoundedClient(make_client(), lambda: max(0.0, deadline - time.monotonic()))
    client = client_for(config.cf)
    started = time.monotonic()
    try:
        result = refresh_snapshot(
            client,
            s3_client,
            config.metadata_bucket,
            config.metadata_key,
            source=config.cf.api_url,
            max_app_loss=config.max_app_loss,
            force=force,
            deadline=deadline,
        )
    except Exception as exc:
        emit_failure_metric(metrics, "RefreshFailures")
        metrics.add_metric(name="RefreshSeconds", unit="Seconds", value=time.monotonic() - started)
        logger.error("metadata refresh failed; the previous snapshot is unchanged", extra=error_fields(exc))
        raise
    finally:
        client.close()
    summary = asdict(result)
    summary["snapshot"] = f"s3://{config.metadata_bucket}/{config.metadata_key}"
    emit_refresh_metrics(metrics, result)
    logger.info("metadata refresh done", extra={"summary": summary})
    return summary
