"""Backups: a content-addressed, signed, checksummed repository (pure Python; docs/BACKUP_FORMAT.md).

    repo = BackupRepository(root, secret_key, require_signature=production)
    result = repo.create([SourceFile("db/quadra.db", copy_of_db), ...], sources={...})
    repo.verify(result.manifest.backup_id).ok
    repo.restore(backup_id, target_dir)
"""

from .errors import BackupError, BackupLockedError, IntegrityError, UnknownBackupError, UnsafePathError
from .manifest import FileEntry, Manifest, new_backup_id, sign, signature_ok
from .repository import BackupRepository, CreateResult, GcResult, SourceFile, VerifyReport

__all__ = [
    "BackupError",
    "BackupLockedError",
    "BackupRepository",
    "CreateResult",
    "FileEntry",
    "GcResult",
    "IntegrityError",
    "Manifest",
    "SourceFile",
    "UnknownBackupError",
    "UnsafePathError",
    "VerifyReport",
    "new_backup_id",
    "sign",
    "signature_ok",
]
