"""Rebuild the metadata snapshot from the Cloud Controller and publish it to S3, safely.

Order of operations: read the current snapshot (if any) → list every app → check the app loss against
``max_app_loss`` → write. Any failure before the write leaves the published snapshot untouched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from botocore.exceptions import ClientError

from refinery.metadata.cc_client import ListStats
from refinery.metadata.gcpause import gc_paused
from refinery.metadata.snapshot import AppInfo, SnapshotError, encode_snapshot, snapshot_app_guids

log = logging.getLogger(__name__)


class AppLister(Protocol):
    def list_apps(self, deadline: float | None = None) -> tuple[dict[str, AppInfo], ListStats]: ...


class SnapshotRefused(RuntimeError):
    """The new listing lost too many apps compared with the published snapshot; nothing was written."""


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """Outcome of a refresh. ``replaced`` is True when an existing object was overwritten."""

    apps: int
    spaces: int
    orgs: int
    pages: int
    duration_s: float
    bytes: int
    replaced: bool
    previous_apps: int | None
    reason: str


@gc_paused()  # it builds ~100 000 acyclic objects several times over (see refinery.metadata.gcpause)
def refresh_snapshot(
    client: AppLister,
    s3_client: Any,
    bucket: str,
    key: str,
    *,
    source: str,
    max_app_loss: float = 0.5,
    force: bool = False,
    deadline: float | None = None,
    now: datetime | None = None,
) -> RefreshResult:
    """List all apps through ``client`` and write the snapshot to ``s3://bucket/key``.

    Raises :class:`SnapshotRefused` when more than ``max_app_loss`` (a fraction, 0..1) of the previous
    snapshot's apps are missing from the new listing, unless ``force``. Cloud Controller errors
    (``CloudControllerError`` and subclasses) and S3 errors other than a missing key propagate; in every
    such case nothing is written.
    """
    if not 0.0 <= max_app_loss <= 1.0:
        raise ValueError(f"max_app_loss must be between 0 and 1, got {max_app_loss!r}")
    started = time.monotonic()
    location = f"s3://{bucket}/{key}"
    notes: list[str] = []

    existed, previous = _read_previous(s3_client, bucket, key, location, notes)
    apps, stats = client.list_apps(deadline=deadline)
    if stats.dropped:
        notes.append(
            f"{stats.dropped} app(s) left out: space missing {stats.missing_space},"
            f" org missing {stats.missing_org}, malformed {stats.malformed}"
        )

    previous_apps = len(previous) if previous is not None else None
    if previous:
        lost = sum(1 for guid in previous if guid not in apps)
        share = lost / len(previous)
        if share > max_app_loss:
            message = (
                f"refusing to replace {location}: {lost} of the {len(previous)} apps in the current snapshot"
                f" ({share:.1%}) are missing from the new listing of {len(apps)} apps, more than"
                f" MAX_APP_LOSS={max_app_loss:g}; if this is intended, run the refresh with force"
                " (force=True)"
            )
            if not force:
                raise SnapshotRefused(message)
            notes.append(f"forced despite losing {lost} of {len(previous)} apps ({share:.1%})")
        elif lost:
            notes.append(f"{lost} app(s) gone since the previous snapshot")

    generated_at = now if now is not None else datetime.now(UTC)
    body = encode_snapshot(apps, source, generated_at)
    s3_client.put_object(
        Bucket=bucket, Key=key, Body=body, ContentType="application/json", ContentEncoding="gzip"
    )
    verb = "replaced" if existed else "created"
    reason = "; ".join([f"{verb} {location} with {len(apps)} apps", *notes])
    result = RefreshResult(
        apps=len(apps),
        spaces=stats.spaces,
        orgs=stats.orgs,
        pages=stats.pages,
        duration_s=round(time.monotonic() - started, 3),
        bytes=len(body),
        replaced=existed,
        previous_apps=previous_apps,
        reason=reason,
    )
    log.info(
        "metadata refresh: %s (%d pages, %d bytes, %.1fs)", reason, stats.pages, len(body), result.duration_s
    )
    return result


def _read_previous(
    s3_client: Any, bucket: str, key: str, location: str, notes: list[str]
) -> tuple[bool, frozenset[str] | None]:
    """(object exists, its app GUIDs or None when absent/corrupt). A corrupt snapshot (any invalid entry)
    is noted, not fatal."""
    try:
        response = s3_client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404"):
            notes.append("no previous snapshot")
            return False, None
        raise
    data = response["Body"].read()
    try:
        guids = snapshot_app_guids(data)
    except SnapshotError as exc:
        log.warning("previous snapshot %s is corrupt, treating it as absent: %s", location, exc)
        notes.append(f"previous snapshot was corrupt ({exc}) and was treated as absent")
        return True, None
    return True, guids
