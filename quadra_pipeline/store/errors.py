"""Errors raised by the store. Every message is one line and never contains a password."""

from __future__ import annotations


class StoreError(Exception):
    """The store cannot do what was asked (bad URL, missing driver, unreachable server, ...)."""


class NotFoundError(StoreError, LookupError):
    """A row the caller named does not exist."""


class UnknownVersionError(NotFoundError):
    """No model version with that label (or id) is registered."""


class UnknownRunError(NotFoundError):
    """No training run with that id (or external run id)."""


class UnknownBackupError(NotFoundError):
    """No backup with that backup id in the catalogue."""


class DuplicateError(StoreError):
    """A row would break a uniqueness rule (same version label, same backup id, ...)."""


class DuplicateMetricsError(DuplicateError):
    """Metrics for a batch number that the run already has (or that appears twice in the input)."""


class InvalidDataError(StoreError, ValueError):
    """A value cannot be stored as given (missing column, NaN, naive datetime, bad hash, ...)."""


class SchemaError(StoreError):
    """The database schema is not one this code can use or migrate."""


__all__ = [
    "DuplicateError",
    "DuplicateMetricsError",
    "InvalidDataError",
    "NotFoundError",
    "SchemaError",
    "StoreError",
    "UnknownBackupError",
    "UnknownRunError",
    "UnknownVersionError",
]
