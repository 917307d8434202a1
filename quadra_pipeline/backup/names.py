"""Names and encodings shared by both backup formats: ids, SHA-256s, object paths, canonical JSON, times."""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from .errors import BackupError

FORMAT_NAME = "quadra-backup"

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_BACKUP_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CREATED_AT_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and _SHA256_RE.fullmatch(value) is not None


def check_fields(document: Any, required: set[str] | frozenset[str], known: set[str] | frozenset[str], what: str) -> None:
    """`BackupError` unless `document` has every `required` key and only `known` ones."""
    missing = set(required) - set(document)
    if missing:
        raise BackupError(f"{what} lacks {sorted(missing)}")
    unknown = set(document) - set(known)
    if unknown:
        raise BackupError(f"{what} has unknown fields {sorted(unknown)}")


def utc_created_at(backup_id: str, created_at: object) -> datetime:
    """A manifest's time, in UTC; `BackupError` for a naive or non-datetime value."""
    if not isinstance(created_at, datetime) or created_at.utcoffset() is None:
        raise BackupError(f"backup {backup_id}: created_at must be a timezone-aware datetime")
    return created_at.astimezone(UTC)


def check_backup_id(backup_id: object) -> str:
    if not isinstance(backup_id, str) or not _BACKUP_ID_RE.fullmatch(backup_id):
        raise BackupError(
            f"backup id {backup_id!r} is not valid (letters, digits, '.', '_', '-', at most 128, not starting with a symbol)"
        )
    return backup_id


def object_relpath(sha256: str) -> str:
    """Where a metadata object (or, in format 2, any object) lives: `objects/ab/<sha256>`."""
    return f"objects/{sha256[:2]}/{sha256}"


def canonical(value: Any) -> bytes:
    """The one JSON encoding signatures and content addresses cover: keys sorted, no
    whitespace, ASCII only, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: object, what: str = "created_at") -> datetime:
    if not isinstance(text, str) or not _CREATED_AT_RE.fullmatch(text):
        raise BackupError(f"{what} {text!r} is not a UTC time like 2026-11-29T16:00:00.000000Z")
    try:
        return datetime.fromisoformat(text[:-1] + "+00:00")
    except ValueError:
        raise BackupError(f"{what} {text!r} is not a valid time") from None


def normalize_sources(sources: object) -> dict[str, Any]:
    if not isinstance(sources, dict):
        from collections.abc import Mapping

        if not isinstance(sources, Mapping):
            raise BackupError(f"sources must be a mapping, got a {type(sources).__name__}")
    try:
        return json.loads(json.dumps(dict(sources), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise BackupError(f"sources are not JSON-serialisable: {exc}") from None


def new_backup_id(now: datetime | None = None) -> str:
    """Sortable by time and unique: '20261129T160000Z-3f9a1c2b' (UTC second, then 8 hex digits:
    the microsecond in the high 20 bits and 12 random bits, so ids of one second still sort by time)."""
    moment = now if now is not None else datetime.now(UTC)
    if moment.utcoffset() is None:
        raise BackupError("new_backup_id needs a timezone-aware time")
    moment = moment.astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{(moment.microsecond << 12) | secrets.randbits(12):08x}"


def id_time(backup_id: str) -> datetime | None:
    """The time a backup id was made from (None: not a time-shaped id)."""
    try:
        return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
