"""Restoring a backup: every chunk and every file checked as it is written, into a staging
directory renamed into place, so a damaged backup never leaves a partial tree behind."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import _fs, format3
from .chunks import chunk_relpath, decode
from .errors import BackupError, IntegrityError, UnsafePathError, os_reason, summarize
from .tree import FileEntry

if TYPE_CHECKING:
    from .repository import AnyManifest, BackupRepository


def restore_backup(repo: BackupRepository, backup_id: str, target: Path, *, select: Callable[[str], bool] | None = None) -> AnyManifest:
    """Check the backup's manifest, signature and history, then write its tree (or the files
    `select` accepts) into a staging directory next to `target`, each chunk and each file
    checked as it is written, fsync, rename. Every byte is read once.

    `target` must not exist or be an empty directory. On any problem nothing appears at
    `target` and the staging directory is removed.
    """
    target = Path(target)
    with repo.lock():
        try:
            repo._ensure_layout()
            repo.cleanup_staging()
        except OSError as exc:
            raise BackupError(f"{repo.root}: cannot prepare the restore: {os_reason(exc)}") from None
        _check_restore_target(target)
        try:
            report, manifest = repo._verify(backup_id, "none")
            if isinstance(manifest, format3.Manifest):
                report.problems += [p for p in repo.history_problems() if backup_id in p]
                report.ok = report.ok and not report.problems
        except UnsafePathError as exc:
            raise UnsafePathError(f"{exc}; nothing was written") from None
        if not report.ok or manifest is None:
            raise IntegrityError(summarize(f"backup {backup_id} cannot be restored, nothing was written", report.problems), report.problems)
        files = [e for e in manifest.files if select is None or select(e.path)]
        try:
            _fs.mkdirs(target.parent.absolute(), Path("/"))
            with _fs.StagingRun(repo.staging_dir) as run:
                stage = target.parent / f".{target.name}.restore-{run.name}"
                run.record_external(stage)
                try:
                    _write_tree(repo, backup_id, files, stage)
                    _fs.hook("restore-before-rename")
                    os.rename(stage, target)
                except BaseException:
                    _fs.remove_tree(stage)
                    raise
                _fs.fsync_dir(target.parent)
                _fs.hook("restore-renamed")
        except OSError as exc:
            raise BackupError(f"{target}: cannot restore backup {backup_id}: {os_reason(exc)}; nothing was written") from None
    return manifest

def _write_tree(repo: BackupRepository, backup_id: str, files: list[FileEntry], stage: Path) -> None:
    os.mkdir(stage, 0o755)
    directories = {stage}
    for index, entry in enumerate(files):
        destination = stage / entry.path
        parent = destination.parent
        if parent not in directories:
            parent.mkdir(parents=True, exist_ok=True)
            p = parent
            while p != stage:
                directories.add(p)
                p = p.parent
        out = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if entry.chunks is None:
                sha, size = _copy_object(repo, entry, out)
            else:
                sha, size = _copy_chunks(repo, entry, out, backup_id)
            os.fchmod(out, entry.mode)
            os.fsync(out)
        finally:
            os.close(out)
        if sha != entry.sha256 or size != entry.size:
            raise IntegrityError(
                f"backup {backup_id}: {entry.path} does not restore to its SHA-256 (its data changed or is damaged); "
                "nothing was written"
            )
        _fs.hook("restore-file", index=index, path=entry.path)
    for directory in sorted(directories, key=lambda p: len(p.parts), reverse=True):
        _fs.fsync_dir(directory)

def _copy_chunks(repo: BackupRepository, entry: FileEntry, out: int, backup_id: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for sha, length, _ in entry.chunks or ():
        try:
            fd = _fs.open_regular(repo.chunks.path(sha), "chunk")
        except FileNotFoundError:
            raise IntegrityError(f"backup {backup_id}: {entry.path}: chunk {chunk_relpath(sha)} is missing; nothing was written") from None
        try:
            stored = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
        finally:
            os.close(fd)
        try:
            content = decode(stored, length, f"chunk {chunk_relpath(sha)}")
        except BackupError as exc:
            raise IntegrityError(f"backup {backup_id}: {entry.path}: {exc}; nothing was written") from None
        digest.update(content)
        _fs.write_all(out, memoryview(content))
        size += len(content)
    return digest.hexdigest(), size

def _copy_object(repo: BackupRepository, entry: FileEntry, out: int) -> tuple[str, int]:
    src = _fs.open_regular(repo.object_path(entry.sha256), "object")
    try:
        _fs.advise_sequential(src)
        return _fs.stream(_fs.fd_reader(src), out, size_hint=entry.size)
    finally:
        os.close(src)


def _check_restore_target(target: Path) -> None:
    if target.is_symlink():
        raise UnsafePathError(f"{target}: restore target is a symlink; refusing to restore through it")
    if target.exists():
        if not target.is_dir():
            raise BackupError(f"{target}: restore target exists and is not a directory; refusing to overwrite it")
        if any(target.iterdir()):
            raise BackupError(f"{target}: restore target is not empty; refusing to overwrite it")
