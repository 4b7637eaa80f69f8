"""``refinery replay SOURCE``: run quarantined and failed records through the pipeline again.

``SOURCE`` is an S3 prefix (``s3://bucket/prefix``) or a local path: the ``QUARANTINE_DIR`` that
local runs write (``refinery-quarantine/``), any folder under it, or one file. Under it are read:

* quarantine objects (``*.jsonl.gz``, written by the enricher): each line is one record with its
  topic, partition, offset, timestamp and raw value;
* on-failure destination objects of the event source mapping (JSON, possibly gzip): the original
  invocation record is found under ``payload`` (an object, a JSON string, or base64 of one) or the
  object itself is a Kafka event with ``records``.

A record that one sink refused (``rejected_by_server`` with the ``sink`` and the ``line`` it refused)
is replayed by writing exactly that line to that sink only: what the other sinks (and that sink, in
the record's other points) acknowledged is never written again, and no recording-rule output is
computed again from it — a replay can only add what was never acknowledged. Every other record
(``too_old``, the metadata reasons, a malformed one, and ``rejected_by_server`` objects written
before sinks were named) was written nowhere: it is regrouped by topic-partition into Kafka events
and processed by the same pipeline as the enricher (same configuration, same sinks), so its points
are identical to what a first successful run would have written: replaying twice creates no
duplicates. Records that are still refused are
quarantined again under ``<QUARANTINE_PREFIX>replay/…`` (keys derived from their coordinates), never
over the objects being replayed; replay skips that folder when it replays the quarantine itself, so
a second replay does not read its own output (replay ``…/replay/`` explicitly to retry those).

Opt-in, once every batch went through (nothing is touched if one failed): ``after="delete"``
removes the objects replayed, ``after="move"`` moves them to ``move_to`` (same kind of location,
outside ``SOURCE``), keeping their path under ``SOURCE``. Records still refused are safe in their
new quarantine object by then. Unreadable objects are always left where they are.

With ``dry_run`` nothing is written, re-quarantined, moved or deleted: the points are printed, the
records that would be re-quarantined too.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from refinery.quarantine import decode_records

REPLAY_PREFIX = "replay/"
#: Records per replayed invocation (the Lambda default batch size is far smaller; memory-bound here).
REPLAY_BATCH = 5000
AFTER_CHOICES = ("keep", "delete", "move")
#: ``ReplayReport.exit_code``: every record written or dropped / an object unreadable / records refused.
EXIT_OK, EXIT_ERROR, EXIT_STILL_REFUSED = 0, 1, 3


class ReplayError(ValueError):
    pass


@dataclass
class ReplayReport:
    objects: int = 0
    records: int = 0
    written: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    still_refused: Counter[str] = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)
    quarantine_objects: list[str] = field(default_factory=list)
    source: str = ""
    dry_run: bool = False
    after: str = "keep"
    deleted: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    moved_to: str | None = None

    @property
    def exit_code(self) -> int:
        if self.unreadable:
            return EXIT_ERROR
        return EXIT_STILL_REFUSED if self.still_refused else EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dry_run": self.dry_run,
            "objects": self.objects,
            "records": self.records,
            "written": self.written,
            "dropped": dict(self.dropped),
            "still_refused": dict(self.still_refused),
            "unreadable_objects": self.unreadable,
            "new_quarantine_objects": self.quarantine_objects,
            "after": self.after,
            "deleted_objects": self.deleted,
            "moved_objects": self.moved,
            "moved_to": self.moved_to,
        }

    def print_summary(self, out: TextIO) -> None:
        """A few readable lines: what was read, written, dropped, still refused, and done after."""

        def reasons(counts: Counter[str]) -> str:
            return ", ".join(f"{r} {n:,}" for r, n in counts.most_common())

        verb = "would write" if self.dry_run else "written"
        refused = sum(self.still_refused.values())
        rows = [
            ("objects", f"{self.objects:,}", f"read under {self.source}"),
            ("records", f"{self.records:,}", ""),
            (verb, f"{self.written:,}", ""),
            ("dropped", f"{sum(self.dropped.values()):,}", reasons(self.dropped)),
            ("still refused", f"{refused:,}", reasons(self.still_refused)),
        ]
        if self.quarantine_objects:
            rows.append(
                ("re-quarantined", f"{len(self.quarantine_objects):,}", ", ".join(self.quarantine_objects))
            )
        if self.unreadable:
            rows.append(("unreadable", f"{len(self.unreadable):,}", "; ".join(self.unreadable)))
        objects = len(self.deleted) + len(self.moved)
        if self.after == "keep":
            rows.append(("left in place", f"{self.objects:,}", "(--delete or --move-to to clear them)"))
        elif self.dry_run:
            rows.append((f"would {self.after}", f"{self.objects - len(self.unreadable):,}", ""))
        elif self.after == "delete":
            rows.append(("deleted", f"{objects:,}", "the objects replayed"))
        else:
            rows.append(("moved", f"{objects:,}", f"to {self.moved_to}"))
        title = "dry run: nothing was written, quarantined, moved or deleted" if self.dry_run else "done"
        print(f"refinery replay: {title}", file=out)
        for name, value, detail in rows:
            print(f"  {name:<15} {value:>9}  {detail}".rstrip(), file=out)
        if refused and not self.dry_run:
            print(
                f"  {refused:,} record(s) are still refused: fix the cause, then replay"
                f" {', '.join(self.quarantine_objects) or 'the replay/ folder'}",
                file=out,
            )
        out.flush()


# ---------------------------------------------------------------------------------------- reading


def parse_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://") or len(url) <= 5:
        raise ReplayError(f"{url!r} is not an s3://bucket/prefix URL")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise ReplayError(f"{url!r} names no bucket")
    return bucket, prefix


def _maybe_gunzip(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def records_of_failure_object(data: bytes) -> list[dict[str, Any]]:
    """Kafka records of an on-failure destination object (see the module doc for the shapes)."""
    doc = json.loads(_maybe_gunzip(data))
    event = doc.get("payload", doc) if isinstance(doc, dict) else None
    if isinstance(event, str):
        try:
            event = json.loads(event)
        except ValueError:
            try:
                event = json.loads(base64.b64decode(event, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise ReplayError("payload is neither JSON nor base64 JSON") from exc
    if not isinstance(event, dict) or not isinstance(event.get("records"), dict):
        raise ReplayError("no Kafka event with 'records' found (under 'payload' or at the top)")
    records = []
    for key, batch in event["records"].items():
        for record in batch:
            records.append({**record, "partition_key": key})
    return records


def _records_of(name: str, data: bytes) -> list[dict[str, Any]]:
    return decode_records(data) if name.endswith(".jsonl.gz") else records_of_failure_object(data)


@dataclass(frozen=True)
class StoredObject:
    """One object to replay: its printable name, its path under the source, and how to read it."""

    name: str
    relative: str
    read: Callable[[], bytes]


class S3Location:
    def __init__(self, url: str, client: Any):
        self.bucket, self.prefix = parse_s3_url(url)
        self.client = client
        self.url = url

    def objects(self, skip: str | None) -> Iterator[StoredObject]:
        """Every object under the prefix, but those under ``skip`` unless the prefix is inside it."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/") or (skip and key.startswith(skip) and not self.prefix.startswith(skip)):
                    continue
                yield StoredObject(
                    f"s3://{self.bucket}/{key}",
                    key[len(self.prefix) :].lstrip("/") or key.rsplit("/", 1)[-1],
                    functools.partial(self.read_key, key),
                )

    def read_key(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def delete(self, obj: StoredObject) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=obj.name[len(f"s3://{self.bucket}/") :])

    def move(self, obj: StoredObject, dest: str) -> str:
        bucket, prefix = parse_s3_url(dest)
        key = obj.name[len(f"s3://{self.bucket}/") :]
        target = f"{prefix.rstrip('/')}/{obj.relative}" if prefix.strip("/") else obj.relative
        self.client.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": key})
        self.client.delete_object(Bucket=self.bucket, Key=key)
        return f"s3://{bucket}/{target}"

    def inside(self, dest: str) -> bool:
        if not dest.startswith("s3://"):
            raise ReplayError(
                f"--move-to {dest!r}: replaying S3 objects, give an s3://bucket/prefix to move to"
            )
        bucket, prefix = parse_s3_url(dest)
        return bucket == self.bucket and prefix.startswith(self.prefix)


class LocalLocation:
    def __init__(self, path: str):
        if not os.path.exists(path):
            raise ReplayError(f"{path!r} does not exist (give the quarantine directory, a folder or a file)")
        self.path = path
        self.root = os.path.abspath(path)
        self.url = path

    def objects(self, skip: str | None) -> Iterator[StoredObject]:
        """Every file under the path (or the file), but those under ``skip`` unless the path is inside."""
        skip_dir = os.path.abspath(skip) + os.sep if skip else None
        if skip_dir and (self.root + os.sep).startswith(skip_dir):
            skip_dir = None
        if os.path.isfile(self.root):
            files = [self.root]
            base = os.path.dirname(self.root)
        else:
            base = self.root
            files = []
            for folder, dirs, names in os.walk(self.root):
                dirs.sort()
                files += [os.path.join(folder, n) for n in sorted(names) if not n.startswith(".")]
        for path in files:
            if skip_dir and path.startswith(skip_dir):
                continue
            yield StoredObject(path, os.path.relpath(path, base), functools.partial(_read_file, path))

    def delete(self, obj: StoredObject) -> None:
        os.remove(obj.name)

    def move(self, obj: StoredObject, dest: str) -> str:
        target = os.path.join(dest, obj.relative)
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        shutil.move(obj.name, target)
        return target

    def inside(self, dest: str) -> bool:
        if dest.startswith("s3://"):
            raise ReplayError(f"--move-to {dest!r}: replaying local files, give a local directory to move to")
        target = os.path.abspath(dest) + os.sep
        return target.startswith(self.root + os.sep) or target == self.root + os.sep


def _read_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def read_objects(
    client: Any, bucket: str, prefix: str, skip: str | None = None
) -> Iterator[tuple[str, list[dict[str, Any]] | str]]:
    """(key, records) per object under an S3 prefix, or (key, error message) when unreadable."""
    location = S3Location(f"s3://{bucket}/{prefix}", client)
    for obj in location.objects(skip):
        key = obj.name[len(f"s3://{bucket}/") :]
        content = _read(obj)
        yield key, content


def _read(obj: StoredObject) -> list[dict[str, Any]] | str:
    try:
        return _records_of(obj.name, obj.read())
    except (ReplayError, ValueError, OSError, EOFError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _distinct(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per Kafka record: a record quarantined by several deliveries (a redelivery cut
    differently writes another quarantine object) is replayed once."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for record in records:
        offset = record.get("offset")
        if isinstance(offset, int):
            key = (record.get("topic"), record.get("partition"), record.get("partition_key"), offset)
            if key in seen:
                continue
            seen.add(key)
        out.append(record)
    return out


def to_events(records: list[dict[str, Any]], size: int = REPLAY_BATCH) -> Iterator[dict[str, Any]]:
    """Kafka events of at most ``size`` records, grouped by topic-partition in offset order (the same
    events from the same records, whatever order the objects were listed in)."""

    def order(r: dict[str, Any]) -> tuple[str, int]:
        offset = r.get("offset")
        return (str(r.get("partition_key")), offset if isinstance(offset, int) else -1)

    records = sorted(records, key=order)
    for start in range(0, len(records), size):
        grouped: dict[str, list[dict[str, Any]]] = {}
        for record in records[start : start + size]:
            key = record.get("partition_key") or f"{record.get('topic')}-{record.get('partition')}"
            grouped.setdefault(key, []).append(_kafka_record(record))
        yield {"eventSource": "aws:kafka", "records": grouped}


# ----------------------------------------------------------------------------------------- replay


def replay(
    url: str,
    *,
    client: Any = None,
    timeout: float = 600.0,
    dry_run: bool = False,
    after: str = "keep",
    move_to: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> ReplayReport:
    """Replay every readable object under ``url`` (``s3://…`` or a local path) with the enricher's
    configuration; then keep, delete or move (``move_to``) what was replayed. See the module doc."""
    from refinery.config import load_enricher_config
    from refinery.handlers import enricher
    from refinery.pipeline import process_batch
    from refinery.quarantine import Quarantine
    from refinery.sinks import Deadline, PrintSink

    if after not in AFTER_CHOICES:
        raise ReplayError(f"after must be one of {', '.join(AFTER_CHOICES)}, not {after!r}")
    if (after == "move") != (move_to is not None):
        raise ReplayError("give a destination to move to with after='move' (and only then)")
    if url.startswith("s3://"):
        if client is None:
            import boto3

            client = boto3.client("s3")
        location: S3Location | LocalLocation = S3Location(url, client)
    else:
        location = LocalLocation(url)
    if move_to is not None and location.inside(move_to):
        raise ReplayError(
            f"--move-to {move_to!r} is inside {url!r}: the next replay would read the moved objects again"
        )
    config = load_enricher_config()
    if dry_run:
        from refinery_tools.dryrun import PrintQuarantine

        runtime = enricher.build_runtime(config, PrintSink(out))
    else:
        runtime = enricher.build_runtime(config)
    if runtime.stage is not None:
        # The records replayed here are in no aggregate (written nowhere): aggregate exactly them, outside
        # the stream's ledger, whose covered offsets would count them as aggregated (rules/ledger.py).
        runtime.stage.ledger = None
    replay_quarantine: Quarantine = Quarantine(
        runtime.quarantine.bucket,
        runtime.quarantine.prefix + REPLAY_PREFIX,
        runtime.quarantine.directory,
        client=client if runtime.quarantine.bucket else None,
    )
    if dry_run:
        replay_quarantine = PrintQuarantine(replay_quarantine, err)
    report = ReplayReport(source=url, dry_run=dry_run, after=after, moved_to=move_to)
    if isinstance(location, S3Location):
        skip = replay_quarantine.prefix if replay_quarantine.bucket == location.bucket else None
    else:
        skip = (
            os.path.join(replay_quarantine.directory or ".", replay_quarantine.prefix)
            if not replay_quarantine.bucket
            else None
        )
    all_records: list[dict[str, Any]] = []
    replayed: list[StoredObject] = []
    try:
        for obj in location.objects(skip):
            report.objects += 1
            content = _read(obj)
            if isinstance(content, str):
                report.unreadable.append(f"{obj.name}: {content}")
                continue
            replayed.append(obj)
            all_records.extend(content)
        refused = [r for r in all_records if r.get("sink") and isinstance(r.get("line"), str)]
        if refused:
            _replay_refused_lines(refused, runtime.sink, replay_quarantine, report, timeout, dry_run, out)
        others = _distinct(r for r in all_records if not (r.get("sink") and isinstance(r.get("line"), str)))
        for event in to_events(others):
            deadline = Deadline(lambda: int(timeout * 1000), reserve=0.0)
            result = process_batch(
                event,
                runtime.store,
                runtime.sink,
                replay_quarantine,
                deadline,
                stage=runtime.stage,
                timestamp_digits=config.timestamp_digits,  # the same point times as the first run
            )
            report.records += result.records_in
            report.written += result.written
            report.dropped.update(result.dropped)
            report.still_refused.update(result.quarantined)
            if result.quarantine_object:
                report.quarantine_objects.append(result.quarantine_object)
    finally:
        runtime.sink.close()
    # Every batch went through: the records are written, dropped by policy or re-quarantined.
    if not dry_run and after != "keep":
        for obj in replayed:
            if after == "delete":
                location.delete(obj)
                report.deleted.append(obj.name)
            else:
                report.moved.append(location.move(obj, move_to or ""))
    return report


def _replay_refused_lines(
    entries: list[dict[str, Any]],
    sink: Any,
    replay_quarantine: Any,
    report: ReplayReport,
    timeout: float,
    dry_run: bool,
    out: TextIO | None,
) -> None:
    """Write each refused line to the sink that refused it, and only there; re-quarantine what is
    still refused (with the same sink and line). A record counts as written when every line refused
    for it is now acknowledged."""
    from refinery.pipeline import refusal_reason
    from refinery.quarantine import QuarantinedRecord, batch_object_key
    from refinery.sinks import Deadline, PrintSink
    from refinery.sinks.fanout import find_member

    def record_key(entry: dict[str, Any]) -> tuple[Any, ...]:
        return (_partition_key(entry), entry.get("offset"), entry.get("value"))

    still: dict[tuple[Any, ...], str] = {}  # record -> why it is still refused
    keys: dict[tuple[Any, ...], None] = {}
    by_sink: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for entry in entries:
        keys.setdefault(record_key(entry), None)
        by_sink.setdefault((str(entry["sink"]), bool(entry.get("aggregate"))), []).append(entry)
    for (name, aggregates), items in by_sink.items():
        lines = list(dict.fromkeys(str(entry["line"]) for entry in items))
        member = PrintSink(out) if dry_run else find_member(sink, name)
        if member is None:
            refused = dict.fromkeys(lines, f"{name} is not configured: set its settings to replay these")
        else:
            deadline = Deadline(lambda: int(timeout * 1000), reserve=0.0)
            # Aggregates as the pipeline writes them: one request, a stored value kept (remote write).
            write = getattr(member, "write_atomic", member.write) if aggregates else member.write
            written = write(lines, deadline)
            refused = {lines[index]: message for index, message in written.rejected}
        again = [entry for entry in items if entry["line"] in refused]
        for entry in again:
            still[record_key(entry)] = refusal_reason(refused[entry["line"]])
        if again and not dry_run:
            bad = [
                QuarantinedRecord(
                    _partition_key(entry),
                    _kafka_record(entry),
                    refusal_reason(refused[entry["line"]]),
                    refused[entry["line"]],
                    name,
                    entry["line"],
                    aggregates,
                )
                for entry in again
            ]
            spans: dict[str, list[Any]] = {}
            for item in bad:
                offset = item.record.get("offset")
                span = spans.setdefault(item.partition_key, [offset, offset])
                if isinstance(offset, int):
                    span[0] = offset if not isinstance(span[0], int) else min(span[0], offset)
                    span[1] = offset if not isinstance(span[1], int) else max(span[1], offset)
            what = f"sink:{name}:{'aggregates' if aggregates else 'points'}"
            coordinates = [(what, 0, 0), *((k, v[0], v[1]) for k, v in spans.items())]
            stamp = bad[0].record.get("timestamp")
            key = batch_object_key(replay_quarantine.prefix, coordinates, stamp)
            report.quarantine_objects.append(replay_quarantine.write(key, bad))
    report.records += len(keys)
    report.written += len(keys) - len(still)
    report.still_refused.update(still.values())


def _partition_key(record: dict[str, Any]) -> str:
    return str(record.get("partition_key") or f"{record.get('topic')}-{record.get('partition')}")


def _kafka_record(record: dict[str, Any]) -> dict[str, Any]:
    """A quarantine entry back in the Kafka event's record shape."""
    return {
        "topic": record.get("topic"),
        "partition": record.get("partition"),
        "offset": record.get("offset"),
        "timestamp": record.get("timestamp"),
        "timestampType": record.get("timestamp_type") or record.get("timestampType"),
        "key": record.get("key"),
        "value": record.get("value"),
        "headers": [],
    }
