"""Prometheus remote read 1.0: what a server holds, to tell a refused rewrite from refused new data.

Prometheus refuses a whole remote-write request (400) when one sample is older than its series'
newest (``out of order sample``), older than its head (``out of bounds``, or ``too old sample`` with an
out-of-order window) or at an existing timestamp with another value (``duplicate sample for
timestamp``) — also when that sample is one it already holds, identical, because a redelivered
batch wrote it again. The remote-write sink then reads those series back (``/api/v1/read``, one
request) and treats every sample the server already holds with the same value as acknowledged.

The messages, a subset of ``prometheus/prompb`` ``remote.proto`` with the same package, names and
field numbers (the ``LabelMatcher`` type enum is sent as its varint)::

    message ReadRequest  { repeated Query queries = 1; }
    message Query        { int64 start_timestamp_ms = 1; int64 end_timestamp_ms = 2;
                           repeated LabelMatcher matchers = 3; }
    message LabelMatcher { Type type = 1; string name = 2; string value = 3; }   // EQ = 0
    message ReadResponse { repeated QueryResult results = 1; }
    message QueryResult  { repeated TimeSeries timeseries = 1; }

Request and answer bodies are snappy block-compressed (``Content-Encoding: snappy``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FIELD = descriptor_pb2.FieldDescriptorProto
Labels = tuple[tuple[str, str], ...]
READ_HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Read-Version": "0.1.0",
}


def read_url(write_url: str) -> str | None:
    """Prometheus' read endpoint beside its write endpoint (``…/api/v1/write`` -> ``…/api/v1/read``)."""
    base, sep, query = write_url.partition("?")
    if not base.rstrip("/").endswith("/api/v1/write"):
        return None
    return base.rstrip("/")[: -len("write")] + "read" + (sep + query if sep else "")


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="refinery/prompb_read.proto", package="prometheus")
    proto.syntax = "proto3"
    optional, repeated = _FIELD.LABEL_OPTIONAL, _FIELD.LABEL_REPEATED
    string, int64, double, message = (
        _FIELD.TYPE_STRING,
        _FIELD.TYPE_INT64,
        _FIELD.TYPE_DOUBLE,
        _FIELD.TYPE_MESSAGE,
    )

    def add(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            item = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                item.type_name = type_name

    add("Label", ("name", 1, string, optional, ""), ("value", 2, string, optional, ""))
    add("Sample", ("value", 1, double, optional, ""), ("timestamp", 2, int64, optional, ""))
    add(
        "TimeSeries",
        ("labels", 1, message, repeated, ".prometheus.Label"),
        ("samples", 2, message, repeated, ".prometheus.Sample"),
    )
    add(
        "LabelMatcher",
        ("type", 1, _FIELD.TYPE_INT32, optional, ""),
        ("name", 2, string, optional, ""),
        ("value", 3, string, optional, ""),
    )
    add(
        "Query",
        ("start_timestamp_ms", 1, int64, optional, ""),
        ("end_timestamp_ms", 2, int64, optional, ""),
        ("matchers", 3, message, repeated, ".prometheus.LabelMatcher"),
    )
    add("ReadRequest", ("queries", 1, message, repeated, ".prometheus.Query"))
    add("QueryResult", ("timeseries", 1, message, repeated, ".prometheus.TimeSeries"))
    add("ReadResponse", ("results", 1, message, repeated, ".prometheus.QueryResult"))
    return proto


@cache
def _classes() -> tuple[Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file())
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("prometheus.ReadRequest")), get(
        pool.FindMessageTypeByName("prometheus.ReadResponse")
    )


def encode_read_request(queries: Iterable[tuple[Labels, int, int]]) -> bytes:
    """A ReadRequest (not compressed) asking, per series (its exact labels), for [start, end] ms."""
    request = _classes()[0]()
    for labels, start, end in queries:
        query = request.queries.add(start_timestamp_ms=start, end_timestamp_ms=end)
        for name, value in labels:
            query.matchers.add(type=0, name=name, value=value)
    return bytes(request.SerializeToString())


def decode_read_response(data: bytes) -> dict[tuple[Labels, int], float]:
    """Every sample of a ReadResponse (not compressed), by (sorted labels, timestamp ms)."""
    response = _classes()[1].FromString(data)
    stored: dict[tuple[Labels, int], float] = {}
    for result in response.results:
        for series in result.timeseries:
            labels = tuple(sorted((label.name, label.value) for label in series.labels))
            for sample in series.samples:
                stored[(labels, sample.timestamp)] = sample.value
    return stored


def same_value(a: float, b: float) -> bool:
    """Equal as Prometheus compares a rewrite: bit for bit (so NaN equals the same NaN)."""
    return struct.pack("<d", a) == struct.pack("<d", b)
