"""Errors of the backup format: each message is one line naming the backup or file and the problem."""

from __future__ import annotations


class BackupError(Exception):
    """A backup cannot be written, read, restored, exported or imported; one line, names what and why."""


class IntegrityError(BackupError):
    """Verification, restore or import found problems; `problems` lists each one, one line each."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems else [message]


class BackupLockedError(BackupError):
    """Another backup or restore holds the repository's lock."""


class UnknownBackupError(BackupError):
    """No complete backup with that id in the repository."""


class SnapshotError(BackupError):
    """A source cannot be snapshotted (or a dump restored); one line, passwords masked."""


class UnsafePathError(BackupError):
    """A manifest or archive names a path outside the tree ('..', absolute), a symlink or a device."""


def os_reason(exc: OSError) -> str:
    """The readable part of an OSError ("No space left on device"), for one-line messages."""
    return exc.strerror or str(exc)


def summarize(subject: str, problems: list[str], limit: int = 3) -> str:
    """One line: '<subject>: N problems: first; second; third (and K more)'."""
    count = len(problems)
    shown = "; ".join(problems[:limit])
    more = f" (and {count - limit} more)" if count > limit else ""
    noun = "problem" if count == 1 else "problems"
    return f"{subject}: {count} {noun}: {shown}{more}"
