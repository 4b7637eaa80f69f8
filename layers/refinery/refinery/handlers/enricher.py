"""The enricher Lambda: wiring of configuration, warm-container state and the pipeline.

State built once per container (on the first invocation) and kept while it is warm: the validated
configuration, the metadata store (snapshot + per-app tag cache) and the sink's connections.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import snapstart
from ..config import EnricherConfig, load_enricher_config
from ..kafka_event import describe
from ..metadata.cc_factory import client_for
from ..metadata.store import FileSnapshotSource, MetadataStore, S3SnapshotSource
from ..observability import (
    SERVICE,
    batch_lag_ms,
    emit_batch_metrics,
    emit_failure_metric,
    error_fields,
    log_implementation,
    make_logger,
    make_metrics,
    partition_ranges,
    snapshot_age_s,
    warn_if_tls_unverified,
)
from ..pipeline import process_batch
from ..pipeline_metrics import batch_line, batch_topics, failure_line, write_line
from ..quarantine import Quarantine, QuarantineError
from ..sinks import Deadline, FlushError, Sink, build_sink
from ..tracing import trace_handler

if TYPE_CHECKING:
    from ..point_stage import PointStage
    from ..routing import Router

logger = make_logger()
metrics = make_metrics()
# SnapStart only: what the first invocation imports and the AWS clients' data, loaded before the snapshot
snapstart.prepare(
    ("refinery.metadata.cc_client", "refinery.sinks.influx_v1", "refinery.sinks.influx_v2"),
    ("s3", "secretsmanager"),
)


@dataclass
class Runtime:
    config: EnricherConfig
    store: MetadataStore
    sink: Sink
    quarantine: Quarantine
    stage: PointStage | None = None  # filters, extra tags, recording rules; None: none configured
    router: Router | None = None  # tenant routing (routing.py); None: every point to INFLUX_* settings


_runtime: Runtime | None = None


def build_runtime(config: EnricherConfig, sink: Sink | None = None) -> Runtime:
    source = (
        FileSnapshotSource(config.metadata_file)
        if config.metadata_file
        else S3SnapshotSource(config.metadata_bucket or "", config.metadata_key)
    )
    store = MetadataStore(
        source,
        check_interval=config.snapshot_check_interval,
        expire=config.metadata_expire,
        cache_size=config.metadata_cache_size,
        negative_expire=config.negative_cache_expire,
        live=client_for(config.cf) if config.cf is not None else None,
        live_max=config.live_lookup_max,
        live_budget=config.live_lookup_budget,
    )
    router = None
    if config.routes_file or config.routes_key:  # tenant routing: the InfluxDB sink writes per route
        from ..routing import build_router
        from ..sinks.routed import with_routing

        router = build_router(config, store)
        if router is not None:
            sink = with_routing(sink or build_sink(config.influx, config.prometheus), router)
    return Runtime(
        router=router,
        config=config,
        store=store,
        sink=sink if sink is not None else build_sink(config.influx, config.prometheus),
        quarantine=Quarantine(config.quarantine_bucket, config.quarantine_prefix, config.quarantine_dir),
        stage=point_stage(config),
    )


def point_stage(config: EnricherConfig) -> PointStage | None:
    """Filters, extra tags and recording rules, when any is configured (imported only then)."""
    if config.point_filter is None and not config.rules_file and not config.rules_key:
        return None
    from ..point_stage import PointStage
    from ..rules.loader import RuleBook

    rule_book = None
    if config.rules_file or config.rules_key:
        source = (
            FileSnapshotSource(config.rules_file)
            if config.rules_file
            else S3SnapshotSource(config.rules_bucket or "", config.rules_key or "")
        )
        rule_book = RuleBook(source, check_interval=config.rules_check_interval)
        from ..rules.ledger import ledger_for

        bucket = config.metadata_bucket or config.quarantine_bucket
        ledger = ledger_for(bucket, config.quarantine_dir, source.description)
        return PointStage(config.point_filter, rule_book, ledger)
    return PointStage(config.point_filter, rule_book)


def _expected_failure(exc: BaseException) -> bool:
    """A failure the event source mapping's retry may cure: an unacknowledged flush, an unwritable
    quarantine, an unreachable recording-rules ledger (rules/ledger.py, loaded only with rules)."""
    if isinstance(exc, (FlushError, QuarantineError)):
        return True
    ledger = sys.modules.get("refinery.rules.ledger")
    return ledger is not None and isinstance(exc, ledger.LedgerError)


def runtime() -> Runtime:
    """The container's state, built on first use; a configuration error names every bad setting."""
    global _runtime
    if _runtime is None:
        config = load_enricher_config()
        warn_if_tls_unverified(logger, config)
        log_implementation(logger)
        _runtime = build_runtime(config)
    return _runtime


def reset_runtime(new: Runtime | None = None) -> None:
    """Drop (or replace) the container state: tests and local runs only."""
    global _runtime
    if _runtime is not None and new is None:
        _runtime.sink.close()
    _runtime = new


@metrics.log_metrics(capture_cold_start_metric=True)
@logger.inject_lambda_context(clear_state=True)
@trace_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # Every line of this invocation carries the request id, cold_start and the batch's coordinates.
    logger.append_keys(partitions=partition_ranges(event) if isinstance(event, dict) else {})
    started_ns = time.time_ns()  # the pipeline point's timestamp (PIPELINE_METRICS)
    rt: Runtime | None = None
    deadline: Deadline | None = None
    try:
        rt = runtime()
        info = describe(event)
        deadline = Deadline(context.get_remaining_time_in_millis, rt.config.flush_time_reserve)
        rt.store.deadline = rt.quarantine.deadline = deadline  # their S3 calls end before it
        if rt.stage is not None and rt.stage.ledger is not None:
            rt.stage.ledger.deadline = deadline  # the recording rules' ledger (rules/ledger.py)
        before = rt.store.stats.tiers()
        failures_before = rt.store.stats.failures
        result = process_batch(
            event,
            rt.store,
            rt.sink,
            rt.quarantine,
            deadline,
            max_record_age=rt.config.max_record_age or None,
            partial_failures=rt.config.report_batch_item_failures,
            timestamp_digits=rt.config.timestamp_digits,
            stage=rt.stage,
        )
    except Exception as exc:
        emit_failure_metric(metrics, "BatchFailures")
        _pipeline_failure(rt, deadline, event, context, started_ns)
        if _expected_failure(exc):  # a sink, the quarantine or the rules' ledger is unreachable: no traceback
            logger.error(
                "batch failed; the event source mapping will retry it",
                extra={**error_fields(exc), **_failed_batch(event)},
            )
        else:
            logger.exception("batch failed unexpectedly", extra={**error_fields(exc), **_failed_batch(event)})
        raise
    summary = result.summary()
    summary["event_source"] = info.source
    summary["metadata"] = {k: v - before[k] for k, v in rt.store.stats.tiers().items()}
    summary["snapshot_failures"] = rt.store.stats.failures - failures_before
    if summary["snapshot_failures"]:
        summary["snapshot_error"] = rt.store.stats.last_error
    summary["sink"] = rt.sink.name
    summary["batch_lag_ms"] = batch_lag_ms(event)
    # since the snapshot was last known current: written, or its content listed again by a refresh
    summary["snapshot_age_s"] = snapshot_age_s(rt.store.current_as_of())
    if rt.config.pipeline_metrics:  # after the flush, its outcome known; never fails the batch
        line = batch_line(summary, function=_function(context), topic=batch_topics(event), at_ns=started_ns)
        summary["pipeline_metrics"] = write_line(rt.sink, line, deadline)
    if result.batch_item_failures:
        emit_failure_metric(metrics, "BatchPartialFailures")
        logger.error(
            "flush failed part-way; reporting the first unacknowledged offset per partition",
            extra={"summary": summary},
        )
    else:
        logger.info("batch done", extra={"summary": summary})
    emit_batch_metrics(metrics, summary)
    return {"batchItemFailures": result.batch_item_failures, "summary": summary}


def _function(context: Any) -> str:
    return str(getattr(context, "function_name", "") or SERVICE)


def _pipeline_failure(
    rt: Runtime | None, deadline: Deadline | None, event: Any, context: Any, started_ns: int
) -> None:
    """The failed batch's pipeline point (PIPELINE_METRICS), best effort: the batch still fails."""
    if rt is None or deadline is None or not rt.config.pipeline_metrics or not isinstance(event, dict):
        return
    try:
        line = failure_line(
            function=_function(context),
            topic=batch_topics(event),
            at_ns=started_ns,
            batch_lag_ms=batch_lag_ms(event),
        )
        write_line(rt.sink, line, deadline)
    except Exception:  # never mask the batch's own error
        logger.warning("pipeline metrics point of the failed batch not written", exc_info=True)


def _failed_batch(event: Any) -> dict[str, Any]:
    """What the error line says about the batch that failed: its partitions, offsets and lag."""
    if not isinstance(event, dict):
        return {}
    return {"partitions": partition_ranges(event), "batch_lag_ms": batch_lag_ms(event)}
