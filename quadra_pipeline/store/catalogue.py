"""The backup catalogue: one row per backup in the repository (which stays the source of truth)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from ._checks import _add_guarded, _aware, _count, _first_line, _label, _sha256
from .errors import DuplicateError, InvalidDataError, StoreError, UnknownBackupError
from .models import BACKUP_STATUSES, Backup


def record_backup(
    session: Session,
    *,
    backup_id: str,
    manifest_sha256: str,
    location: str,
    total_bytes: int = 0,
    stored_bytes: int = 0,
    file_count: int = 0,
    partition_key: str | None = None,
    signed: bool = False,
    status: str = "created",
    created_at: dt.datetime | None = None,
    error: str | None = None,
) -> Backup:
    """Add a backup to the catalogue; `DuplicateError` if the backup id is taken."""
    _label(backup_id, "backup_id", 100)
    _label(location, "location", 10_000)
    if partition_key is not None:
        _label(partition_key, "partition_key", 100)
    _check_backup_status(status)
    created = _aware(created_at, "created_at")
    backup = Backup(
        backup_id=backup_id,
        created_at=created,
        partition_key=partition_key,
        manifest_sha256=_sha256(manifest_sha256, "manifest_sha256"),
        total_bytes=_count(total_bytes, "total_bytes"),
        stored_bytes=_count(stored_bytes, "stored_bytes"),
        file_count=_count(file_count, "file_count"),
        status=status,
        verified_at=created if status == "verified" else None,
        location=location,
        signed=bool(signed),
        error=error,
    )
    _add_guarded(
        session,
        backup,
        lambda exc: DuplicateError(f"backup {backup_id!r} is already in the catalogue")
        if get_backup_or_none(session, backup_id) is not None
        else StoreError(f"cannot record backup {backup_id!r}: {_first_line(exc)}"),
    )
    return backup


def get_backup_or_none(session: Session, backup_id: str) -> Backup | None:
    return session.scalars(select(Backup).where(Backup.backup_id == backup_id)).first()


def get_backup(session: Session, backup_id: str) -> Backup:
    """The catalogue entry; `UnknownBackupError` if there is none."""
    found = get_backup_or_none(session, backup_id)
    if found is None:
        raise UnknownBackupError(f"backup {backup_id!r} is not in the catalogue")
    return found


def list_backups(
    session: Session,
    *,
    status: str | Iterable[str] | None = None,
    partition_key: str | None = None,
    since: dt.datetime | None = None,
    limit: int | None = None,
    newest_first: bool = True,
) -> list[Backup]:
    """Catalogue entries, newest first by default, filtered by status(es), partition, age."""
    if newest_first:
        order = (Backup.created_at.desc(), Backup.id.desc())
    else:
        order = (Backup.created_at.asc(), Backup.id.asc())
    query = select(Backup).order_by(*order)
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        for value in statuses:
            _check_backup_status(value)
        query = query.where(Backup.status.in_(statuses))
    if partition_key is not None:
        query = query.where(Backup.partition_key == partition_key)
    if since is not None:
        query = query.where(Backup.created_at >= _aware(since, "since"))
    if limit is not None:
        query = query.limit(_count(limit, "limit"))
    return list(session.scalars(query))


def mark_backup(
    session: Session,
    backup_id: str,
    status: str,
    *,
    error: str | None = None,
    when: dt.datetime | None = None,
) -> Backup:
    """Set a backup's status. "verified" stamps `verified_at` and clears `error`; "failed"
    records `error`. A "deleted" backup cannot change status again."""
    _check_backup_status(status)
    at = _aware(when, "when")
    backup = get_backup(session, backup_id)
    if backup.status == "deleted" and status != "deleted":
        raise StoreError(f"backup {backup_id!r} is deleted; it cannot become {status!r}")
    backup.status = status
    if status == "verified":
        backup.verified_at = at
        backup.error = None
    elif error is not None:
        backup.error = error
    session.flush()
    return backup


def _check_backup_status(status: str) -> None:
    if status not in BACKUP_STATUSES:
        allowed = ", ".join(BACKUP_STATUSES)
        raise InvalidDataError(f"backup status must be one of {allowed}; got {status!r}")
