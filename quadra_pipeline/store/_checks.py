"""Validation shared by the store's functions: one clear `InvalidDataError` per bad value."""

from __future__ import annotations

import datetime as dt
import math
import operator
import re
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .errors import InvalidDataError, StoreError
from .models import utcnow

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _aware(value: dt.datetime | None, name: str) -> dt.datetime:
    if value is None:
        return utcnow()
    if not isinstance(value, dt.datetime):
        raise InvalidDataError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise InvalidDataError(
            f"{name} is a naive datetime ({value.isoformat()}): pass a timezone-aware one"
        )
    return value.astimezone(dt.timezone.utc)


def _sha256(value: str, name: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value.lower()):
        raise InvalidDataError(f"{name} must be 64 hexadecimal characters, got {value!r}")
    return value.lower()


def _label(value: str, name: str, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidDataError(f"{name} must be a non-empty string")
    if len(value) > max_length:
        raise InvalidDataError(f"{name} is longer than {max_length} characters: {value[:40]!r}...")
    return value


def _count(value: int, name: str) -> int:
    number = _as_int(value, name)
    if number < 0:
        raise InvalidDataError(f"{name} must not be negative, got {number}")
    return number


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidDataError(f"{name} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise InvalidDataError(f"{name} must be an integer, got {value!r}")
    return int(number)


def _as_float(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidDataError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(number):
        # SQLite would store NULL (or fail NOT NULL), PostgreSQL NaN: refuse on both.
        raise InvalidDataError(f"{name} is NaN")
    return number


def _floats(values: Iterable[Any], name: str) -> list[float]:
    return [_as_float(v, f"{name}[{i}]") for i, v in enumerate(values)]


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


def _add_guarded(
    session: Session, obj: Any, on_conflict: Callable[[IntegrityError], StoreError]
) -> None:
    """Insert `obj` in a SAVEPOINT; a constraint violation becomes `on_conflict(exc)`."""
    try:
        with session.begin_nested():
            session.add(obj)
    except IntegrityError as exc:
        raise on_conflict(exc) from None
