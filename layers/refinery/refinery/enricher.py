"""The enricher Lambda: wiring of configuration, warm-container state and the pipeline.

State built once per container (on the first invocation) and kept while it is warm: the validated
configuration, the metadata store (snapshot + per-app tag cache) and the sink's connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Config, load_config
from .kafka_event import describe
from .metadata.store import FileSnapshotSource, MetadataStore, S3SnapshotSource
from .observability import emit_batch_metrics, make_logger, make_metrics
from .pipeline import process_batch
from .quarantine import Quarantine, QuarantineError
from .sinks import Deadline, FlushError, Sink, build_sink

logger = make_logger()
metrics = make_metrics()


@dataclass
class Runtime:
    config: Config
    store: MetadataStore
    sink: Sink
    quarantine: Quarantine


_runtime: Runtime | None = None


def build_runtime(config: Config, sink: Sink | None = None) -> Runtime:
    source = (
        FileSnapshotSource(config.metadata_file)
        if config.metadata_file
        else S3SnapshotSource(config.metadata_bucket or "", config.metadata_key)
    )
    return Runtime(
        config=config,
        store=MetadataStore(source, check_interval=config.snapshot_check_interval),
        sink=sink if sink is not None else build_sink(config.influx),
        quarantine=Quarantine(config.quarantine_bucket, config.quarantine_prefix, config.quarantine_dir),
    )


def runtime() -> Runtime:
    """The container's state, built on first use; a configuration error names every bad setting."""
    global _runtime
    if _runtime is None:
        _runtime = build_runtime(load_config())
    return _runtime


def reset_runtime(new: Runtime | None = None) -> None:
    """Drop (or replace) the container state: tests and local runs only."""
    global _runtime
    if _runtime is not None and new is None:
        _runtime.sink.close()
    _runtime = new


@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    rt = runtime()
    info = describe(event)
    deadline = Deadline(context.get_remaining_time_in_millis, rt.config.flush_time_reserve)
    try:
        result = process_batch(event, rt.store, rt.sink, rt.quarantine, deadline)
    except (FlushError, QuarantineError) as exc:
        metrics.add_metric(name="BatchFailures", unit="Count", value=1)
        logger.error("batch failed; the event source mapping will retry it", extra={"error": str(exc)})
        raise
    summary = result.summary()
    summary["event_source"] = info.source
    summary["snapshot_failures"] = rt.store.stats.failures
    if rt.store.stats.last_error:
        summary["snapshot_error"] = rt.store.stats.last_error
    logger.info("batch done", extra={"summary": summary})
    emit_batch_metrics(metrics, summary)
    return {"batchItemFailures": [], "summary": summary}
