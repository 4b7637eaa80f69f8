"""The Prometheus remote-write 1.0 messages, built with the protobuf library from a descriptor.

The subset of ``prometheus/prompb`` (``remote.proto``, ``types.proto``) that a writer of float
samples needs, with the same package, names, field numbers and types, so the encoding is exactly
Prometheus' own::

    message WriteRequest { repeated TimeSeries timeseries = 1; reserved 2; }
    message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    message Label        { string name = 1; string value = 2; }
    message Sample       { double value = 1; int64 timestamp = 2; }  // timestamp in ms

The descriptor is built in code (no generated ``_pb2`` module, so no protoc and no coupling to one
protobuf runtime version) in a private pool. Importing protobuf costs ~50 ms: this module is
imported only when the remote-write sink is configured.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FIELD = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="refinery/prompb_remote.proto", package="prometheus")
    proto.syntax = "proto3"

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            item = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                item.type_name = type_name

    optional, repeated = _FIELD.LABEL_OPTIONAL, _FIELD.LABEL_REPEATED
    message(
        "Label", ("name", 1, _FIELD.TYPE_STRING, optional, ""), ("value", 2, _FIELD.TYPE_STRING, optional, "")
    )
    message(
        "Sample",
        ("value", 1, _FIELD.TYPE_DOUBLE, optional, ""),
        ("timestamp", 2, _FIELD.TYPE_INT64, optional, ""),
    )
    message(
        "TimeSeries",
        ("labels", 1, _FIELD.TYPE_MESSAGE, repeated, ".prometheus.Label"),
        ("samples", 2, _FIELD.TYPE_MESSAGE, repeated, ".prometheus.Sample"),
    )
    message("WriteRequest", ("timeseries", 1, _FIELD.TYPE_MESSAGE, repeated, ".prometheus.TimeSeries"))
    proto.message_type[-1].reserved_range.add(start=2, end=3)
    return proto


@cache
def write_request_class() -> Any:
    """The ``prometheus.WriteRequest`` message class."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("prometheus.WriteRequest"))
