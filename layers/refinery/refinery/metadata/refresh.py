"""Rebuild the metadata snapshot from the Cloud Controller and publish it to S3, safely.

Order of operations: read the current snapshot (if any) → list every app → refuse an empty listing and
a listing that lost more than ``max_app_loss`` of the apps (unless forced) → write, or, when the
content is unchanged, only record the check. Any failure before the write leaves the published snapshot
untouched.

**Unchanged content writes no new object version.** The bucket is versioned; a refresh every
10 minutes that rewrote an unchanged snapshot made 144 versions a day. When the new snapshot would be
byte-identical to the published one but for ``generated_at`` (the encoding is deterministic), the
refresh instead sets the object's tag :data:`CHECKED_AT_TAG` to the time of this successful check:
tagging an existing object version neither creates a version nor changes its ETag, so warm enrichers
keep their copy. The enricher reads the tag at each snapshot check, and its ``SnapshotAge`` is the time
since the later of ``generated_at`` and the tag: a working refresh keeps it below one refresh period,
whether or not apps changed; a refresh that fails, does not run, or writes snapshots the enricher
cannot load (it keeps its old copy and reads no tag for it) lets it grow past the alarm's threshold.
A new snapshot is written with the tag already set (``put_object`` with ``Tagging``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlencode

from refinery.awsclient import error_code
from refinery.metadata.cc_client import NEEDED_SCOPES, ListStats
from refinery.metadata.gcpause import gc_paused
from refinery.metadata.snapshot import (
    CHECKED_AT_TAG,
    AppInfo,
    SnapshotError,
    decode_snapshot,
    encode_snapshot,
    rfc3339,
)

log = logging.getLogger(__name__)


class AppLister(Protocol):
    def list_apps(self, deadline: float | None = None) -> tuple[dict[str, AppInfo], ListStats]: ...


class SnapshotRefused(RuntimeError):
    """The new listing is empty or lost too many apps compared with the published snapshot; nothing
    was written."""


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """Outcome of a refresh.

    ``written`` is False when the content was unchanged and only the object's check tag was updated
    (no new version); ``replaced`` is True when a new version replaced an existing object.
    ``checked_at`` is this refresh's time, the tag's value.
    """

    apps: int
    spaces: int
    orgs: int
    pages: int
    duration_s: float
    bytes: int
    replaced: bool
    previous_apps: int | None
    reason: str
    written: bool = True
    checked_at: str = ""


@dataclass(frozen=True, slots=True)
class _Previous:
    existed: bool
    guids: frozenset[str] | None = None  # None: absent or corrupt
    data: bytes | None = None
    generated_at: datetime | None = None


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
    """List all apps through ``client`` and publish the snapshot at ``s3://bucket/key``.

    Raises :class:`SnapshotRefused`, unless ``force``, when the listing holds no app at all (a UAA
    client without a foundation-wide read scope sees only the apps of its spaces, an empty list when it
    has no role), or when more than ``max_app_loss`` (a fraction, 0..1) of the previous snapshot's apps
    are missing from it. Cloud Controller errors (``CloudControllerError`` and subclasses) and S3 errors
    other than a missing key propagate; in every such case nothing is written.
    """
    if not 0.0 <= max_app_loss <= 1.0:
        raise ValueError(f"max_app_loss must be between 0 and 1, got {max_app_loss!r}")
    started = time.monotonic()
    location = f"s3://{bucket}/{key}"
    notes: list[str] = []

    previous = _read_previous(s3_client, bucket, key, location, notes)
    apps, stats = client.list_apps(deadline=deadline)
    if stats.dropped:
        notes.append(
            f"{stats.dropped} app(s) left out: space missing {stats.missing_space},"
            f" org missing {stats.missing_org}, malformed {stats.malformed}"
        )

    previous_apps = len(previous.guids) if previous.guids is not None else None
    if not apps:
        message = _empty_listing(client, location, previous_apps)
        if not force:
            raise SnapshotRefused(message)
        notes.append("forced despite an empty listing")
    elif previous.guids:
        lost = sum(1 for guid in previous.guids if guid not in apps)
        share = lost / len(previous.guids)
        if share > max_app_loss:
            message = (
                f"refusing to replace {location}: {lost} of the {len(previous.guids)} apps in the current"
                f" snapshot ({share:.1%}) are missing from the new listing of {len(apps)} apps, more than"
                f" MAX_APP_LOSS={max_app_loss:g}; if this is intended, run the refresh with force"
                " (force=True)"
            )
            if not force:
                raise SnapshotRefused(message)
            notes.append(f"forced despite losing {lost} of {len(previous.guids)} apps ({share:.1%})")
        elif lost:
            notes.append(f"{lost} app(s) gone since the previous snapshot")

    checked = now if now is not None else datetime.now(UTC)
    checked_at = rfc3339(checked)
    body = _unchanged_body(apps, source, previous)
    written = body is None or not _tag_checked(s3_client, bucket, key, checked_at, notes)
    if written:
        body = encode_snapshot(apps, source, checked)
        s3_client.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType="application/json",
            ContentEncoding="gzip",
            Tagging=urlencode({CHECKED_AT_TAG: checked_at}),
        )
        verb = "replaced" if previous.existed else "created"
        summary = f"{verb} {location} with {len(apps)} apps"
    else:
        summary = f"{location} unchanged ({len(apps)} apps): no new version, check recorded at {checked_at}"
    assert body is not None
    reason = "; ".join([summary, *notes])
    result = RefreshResult(
        apps=len(apps),
        spaces=stats.spaces,
        orgs=stats.orgs,
        pages=stats.pages,
        duration_s=round(time.monotonic() - started, 3),
        bytes=len(body),
        replaced=written and previous.existed,
        previous_apps=previous_apps,
        reason=reason,
        written=written,
        checked_at=checked_at,
    )
    log.info(
        "metadata refresh: %s (%d pages, %d bytes, %.1fs)", reason, stats.pages, len(body), result.duration_s
    )
    return result


def _empty_listing(client: AppLister, location: str, previous_apps: int | None) -> str:
    client_id = getattr(client, "client_id", None)
    scopes = getattr(client, "granted_scopes", None)
    granted = " ".join(scopes) if scopes else ("none" if scopes is not None else "unknown")
    current = f" (the current snapshot has {previous_apps} apps)" if previous_apps else ""
    return (
        f"refusing to write {location}: the Cloud Controller listed no apps at all for UAA client"
        f" {client_id!r} (its token's scopes: {granted}){current}. The Cloud Controller answers a client"
        " without a foundation-wide read scope with only the apps of the spaces it has roles in: an empty"
        f" list, not an error, when it has none. Give the client {NEEDED_SCOPES} (for example `uaac"
        f" client update {client_id or '<client>'} --authorities cloud_controller.admin_read_only`). If"
        " the foundation really has no apps, run the refresh with force (REFRESH_FORCE=true or the event"
        ' {"force": true})'
    )


def _unchanged_body(apps: dict[str, AppInfo], source: str, previous: _Previous) -> bytes | None:
    """The published bytes, when encoding this listing with their ``generated_at`` gives them again."""
    if previous.data is None or previous.generated_at is None or previous.guids is None:
        return None
    if len(previous.guids) != len(apps):
        return None
    same = encode_snapshot(apps, source, previous.generated_at)
    return same if same == previous.data else None


def _tag_checked(s3_client: Any, bucket: str, key: str, checked_at: str, notes: list[str]) -> bool:
    """Record this check on the current object (no new version). False when S3 refused the tagging:
    then a new version is written instead, so that the snapshot's age still tells a working refresh."""
    try:
        s3_client.put_object_tagging(
            Bucket=bucket, Key=key, Tagging={"TagSet": [{"Key": CHECKED_AT_TAG, "Value": checked_at}]}
        )
    except Exception as exc:  # the client's failures: refinery.awsclient's or botocore's
        code = error_code(exc)
        if code is None:
            raise
        log.warning("cannot tag s3://%s/%s (%s); writing a new version instead", bucket, key, code)
        notes.append(f"content unchanged, but tagging failed ({code}): wrote a new version")
        return False
    return True


def _read_previous(s3_client: Any, bucket: str, key: str, location: str, notes: list[str]) -> _Previous:
    """The published object: its app GUIDs, bytes and generation time (guids None when absent or
    corrupt). A corrupt snapshot (any invalid entry) is noted, not fatal."""
    try:
        response = s3_client.get_object(Bucket=bucket, Key=key)
    except Exception as exc:  # the client's failures: refinery.awsclient's or botocore's
        if error_code(exc) in ("NoSuchKey", "404"):
            notes.append("no previous snapshot")
            return _Previous(existed=False)
        raise
    data = response["Body"].read()
    try:
        snapshot = decode_snapshot(data, lazy=True)
        check = getattr(snapshot.apps, "check", None)
        if check is not None:
            check()
        guids = frozenset(snapshot.apps)
    except SnapshotError as exc:
        log.warning("previous snapshot %s is corrupt, treating it as absent: %s", location, exc)
        notes.append(f"previous snapshot was corrupt ({exc}) and was treated as absent")
        return _Previous(existed=True)
    try:
        generated_at: datetime | None = datetime.fromisoformat(snapshot.generated_at)
    except ValueError:
        generated_at = None
    return _Previous(existed=True, guids=guids, data=data, generated_at=generated_at)
