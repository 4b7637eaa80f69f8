"""kafka-python clients for the local commands, with errors that name the bootstrap address."""

from __future__ import annotations

import logging
import re
from typing import Any

_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")


class KafkaUnavailable(RuntimeError):
    """The broker cannot be reached or refused what we asked; the message says which and where."""


def parse_bootstrap(value: str) -> list[str]:
    """``HOST:PORT[,HOST:PORT…]`` → a list; ``ValueError`` naming the bad entry."""
    servers = [s.strip() for s in value.split(",") if s.strip()]
    if not servers:
        raise ValueError("--bootstrap is empty; give HOST:PORT (e.g. 127.0.0.1:9092)")
    for server in servers:
        match = _HOST_PORT.match(server)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"--bootstrap entry {server!r} is not HOST:PORT (e.g. 127.0.0.1:9092)")
    return servers


def quiet_kafka_logs(verbose: bool = False) -> None:
    """kafka-python logs every failed connection attempt; the commands report what matters themselves."""
    logging.getLogger("kafka").setLevel(logging.INFO if verbose else logging.CRITICAL)


def describe_error(exc: BaseException) -> str:
    """``Name: message``, without the name twice (kafka-python's errors start with it already)."""
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


def unreachable(bootstrap: str, timeout: float, exc: BaseException) -> KafkaUnavailable:
    return KafkaUnavailable(
        f"cannot reach a Kafka broker at {bootstrap} within {timeout:g} s "
        f"({describe_error(exc)}); is it running? check --bootstrap"
    )


def _bootstrap_errors() -> tuple[type[BaseException], ...]:
    from kafka import errors

    # NoBrokersAvailable is gone from kafka-python 3; older versions raise it.
    return tuple(
        getattr(errors, name)
        for name in ("KafkaTimeoutError", "KafkaConnectionError", "NoBrokersAvailable")
        if hasattr(errors, name)
    )


def open_consumer(bootstrap: str, *, connect_timeout: float, **config: Any) -> Any:
    from kafka import KafkaConsumer

    try:
        return KafkaConsumer(
            bootstrap_servers=parse_bootstrap(bootstrap),
            bootstrap_timeout_ms=int(connect_timeout * 1000),
            **config,
        )
    except _bootstrap_errors() as exc:
        raise unreachable(bootstrap, connect_timeout, exc) from None


def open_producer(bootstrap: str, *, connect_timeout: float, **config: Any) -> Any:
    from kafka import KafkaProducer

    try:
        return KafkaProducer(
            bootstrap_servers=parse_bootstrap(bootstrap),
            bootstrap_timeout_ms=int(connect_timeout * 1000),
            **config,
        )
    except _bootstrap_errors() as exc:
        raise unreachable(bootstrap, connect_timeout, exc) from None


def ensure_topic(bootstrap: str, topic: str, partitions: int, *, connect_timeout: float) -> bool:
    """Create ``topic`` with ``partitions`` partitions unless it exists; True if it was created."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=parse_bootstrap(bootstrap),
            bootstrap_timeout_ms=int(connect_timeout * 1000),
            request_timeout_ms=int(max(connect_timeout, 5.0) * 1000),
        )
    except _bootstrap_errors() as exc:
        raise unreachable(bootstrap, connect_timeout, exc) from None
    try:
        if topic in set(admin.list_topics()):
            return False
        admin.create_topics([NewTopic(topic, partitions, 1)])
        return True
    except TopicAlreadyExistsError:
        return False
    except KafkaError as exc:
        raise KafkaUnavailable(
            f"cannot create topic {topic!r} on {bootstrap}: {describe_error(exc)}"
        ) from None
    finally:
        admin.close()
