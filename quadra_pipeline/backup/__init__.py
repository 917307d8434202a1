"""Backups: content-defined chunks, signed manifests in a hash chain, checksummed (pure Python;
docs/BACKUP_FORMAT.md).

    repo = BackupRepository(root, keys=backup_keys, require_signature=production)
    result = repo.create([SourceFile("db/quadra.db", copy_of_db), ...], sources={...})
    repo.verify(result.manifest.backup_id).ok
    repo.history_problems()            # rollbacks, deleted or replayed backups
    repo.restore(backup_id, target_dir)
"""

from .errors import (
    BackupError,
    BackupLockedError,
    IntegrityError,
    UnknownBackupError,
    UnsafePathError,
)
from .creation import CreateResult, SourceFile, SourceStream
from .deletion import GcResult
from .repository import BackupRepository
from .verification import VerifyReport
from .tree import FileEntry

__all__ = [
    "BackupError",
    "BackupLockedError",
    "BackupRepository",
    "CreateResult",
    "FileEntry",
    "GcResult",
    "IntegrityError",
    "SourceFile",
    "SourceStream",
    "UnknownBackupError",
    "UnsafePathError",
    "VerifyReport",
]
