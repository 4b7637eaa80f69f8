"""The Lambda event of an MSK or self-managed Kafka event source mapping.

``records`` maps ``"<topic>-<partition>"`` to a list of records with ``topic``, ``partition``,
``offset``, ``timestamp`` (epoch ms), ``timestampType``, optional ``key`` and ``value`` (base64) and
``headers``. The hot path (``pipeline.convert_batch``) reads the plain dicts, and so does
:func:`describe` for the event-level fields (source, cluster ARN, bootstrap servers): Powertools'
``KafkaEvent`` data class would give the same, but importing its package cost the first invocation
~50 ms at 512 MB (``refinery_tools.dev.coldstart``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EVENT_SOURCES = ("aws:kafka", "aws:SelfManagedKafka")


class NotAKafkaEvent(ValueError):
    """The event is not what an MSK / self-managed Kafka event source mapping sends."""


@dataclass(frozen=True, slots=True)
class EventInfo:
    source: str
    source_arn: str | None
    bootstrap_servers: list[str]


def describe(event: Any) -> EventInfo:
    """Validate the event's shape; raise :class:`NotAKafkaEvent` naming what is wrong."""
    if not isinstance(event, dict):
        raise NotAKafkaEvent(f"event is a {type(event).__name__}, not a Kafka event object")
    source = event.get("eventSource")
    if source not in EVENT_SOURCES:
        raise NotAKafkaEvent(f"eventSource is {source!r}; expected one of {', '.join(EVENT_SOURCES)}")
    records = event.get("records")
    if not isinstance(records, dict):
        raise NotAKafkaEvent("event has no 'records' object keyed by topic-partition")
    for key, batch in records.items():
        if not isinstance(batch, list):
            raise NotAKafkaEvent(f"records[{key!r}] is not a list")
    servers = str(event["bootstrapServers"]).split(",") if event.get("bootstrapServers") else []
    return EventInfo(source=source, source_arn=event.get("eventSourceArn"), bootstrap_servers=servers)
