"""Dry runs change nothing: a quarantine that prints what it would write instead of writing it.

``refinery invoke --dry-run``, ``consume --dry-run`` and ``replay --dry-run`` build the enricher's
runtime with a :class:`~refinery.sinks.PrintSink` (the line protocol on stdout) and this quarantine
(each refused record on stderr, as the JSON line the quarantine object would hold), so nothing is
written to InfluxDB, S3 or the local quarantine directory.
"""

from __future__ import annotations

import sys
from typing import TextIO

import orjson

from refinery.quarantine import Quarantine, QuarantinedRecord

DRY_RUN_MARK = " (dry run: not written)"


class PrintQuarantine(Quarantine):
    """Prints the records it would quarantine, and where; writes nothing."""

    def __init__(self, like: Quarantine, stream: TextIO | None = None):
        super().__init__(like.bucket, like.prefix, like.directory)
        self.stream = stream
        self.printed = 0

    def write(self, key: str, records: list[QuarantinedRecord]) -> str:
        stream = self.stream or sys.stderr
        where = self.location(key)
        print(f"refinery: dry run: would quarantine {len(records)} record(s) to {where}:", file=stream)
        for record in records:
            stream.write("  " + orjson.dumps(record.as_dict()).decode() + "\n")
        stream.flush()
        self.printed += len(records)
        return where + DRY_RUN_MARK
