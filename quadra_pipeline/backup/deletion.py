"""Deleting backups and collecting the chunks and objects no backup needs any more.

Deletions of format-3 backups are written into a signed `pruned` record first (history.py), so
the hash chain stays legal; chunks stay until `collect_garbage`, which refuses to run while any
backup's references cannot be told.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import _fs, format2, format3
from .errors import BackupError, UnknownBackupError, os_reason
from .history import Entry
from .names import check_backup_id, is_sha256
from .tree import decode_file_list

if TYPE_CHECKING:
    from .repository import BackupRepository


@dataclass
class GcResult:
    removed: list[str] = field(default_factory=list)  # paths relative to root
    freed_bytes: int = 0


def delete_backups(repo: BackupRepository, backup_ids: list[str]) -> None:
    """Remove backups (manifest first: a backup stops existing; then its sidecar). The
    format-3 ones are written into a signed `pruned` record first, so the history stays
    legal; if the newest goes, the head moves to the newest one left. Chunks stay until gc."""
    for backup_id in backup_ids:
        check_backup_id(backup_id)
    with repo.lock():
        present = repo._format3_headers()
        for backup_id in backup_ids:
            path = repo.manifest_path(backup_id)
            if not path.exists() and not path.is_symlink():
                raise UnknownBackupError(f"backup {backup_id}: no such backup in {repo.root}")
        entries = [Entry.of(*present[i]) for i in backup_ids if i in present]
        try:
            with _fs.StagingRun(repo.staging_dir) as run:
                if entries:
                    repo.history.write_record("pruned", entries, run.dir)
                for backup_id in backup_ids:
                    path = repo.manifest_path(backup_id)
                    path.unlink()
                    _fs.fsync_dir(path.parent)
                    repo.sidecar_path(backup_id).unlink(missing_ok=True)
                _move_head_if_gone(repo, {i for i in backup_ids if i in present}, present, run.dir)
        except OSError as exc:
            raise BackupError(f"{repo.root}: cannot delete backups {', '.join(backup_ids)}: {os_reason(exc)}") from None

def _move_head_if_gone(repo: BackupRepository, gone: set[str], present: dict[str, tuple[format3.Header, str]], tmp_dir: Path) -> None:
    head, _ = repo.history.read_head()
    if head is None or head.link.backup_id not in gone:
        return
    left = {i: v for i, v in present.items() if i not in gone}
    if not left:
        repo.history.head_path.unlink(missing_ok=True)
        return
    newest = max(left, key=lambda i: left[i][0].sequence)
    repo.history.write_head(format3.Link(newest, left[newest][1]), left[newest][0].sequence, tmp_dir)

def referenced(repo: BackupRepository) -> tuple[set[str], set[str]]:
    """(chunk ids, metadata/format-2 object ids) the backups need. Refuses (BackupError) when
    a backup's references cannot be told at all."""
    chunks: set[str] = set()
    objects: set[str] = set()
    for backup_id in repo.backup_ids():
        c, o = _references(repo, backup_id)
        chunks |= c
        objects |= o
    return chunks, objects

def _references(repo: BackupRepository, backup_id: str) -> tuple[set[str], set[str]]:
    metadata: list[str] = []
    try:
        data = repo._read_manifest_bytes(backup_id)
        document = json.loads(data)
        metadata = [document["files_object"]] + ([document["checksums_object"]] if "checksums_object" in document else [])
        if not all(is_sha256(m) for m in metadata):
            raise ValueError
    except (BackupError, OSError, ValueError, KeyError, TypeError):
        sidecar = repo._read_sidecar(backup_id)
        if sidecar is None:
            raise BackupError(
                f"backup {backup_id}: neither its manifest nor its sidecar can be read; refusing to collect "
                "garbage (fix or delete that backup first)"
            ) from None
        entries, _ = format2.sidecar_entries(sidecar)
        metadata = [sha for path, sha in entries if path.startswith("objects/")]
    objects, chunks = set(metadata), set()
    known = False
    for sha in metadata:
        try:
            data = repo._read_small(repo.object_path(sha), "object")
        except (OSError, BackupError):
            continue
        listed = format2.listed_objects(data)
        if listed is None:
            continue
        known = True
        with contextlib.suppress(BackupError, ValueError):
            for entry in decode_file_list(data, chunked=True):
                chunks |= {c[0] for c in entry.chunks or ()}
            listed = set()  # a format-3 file list names chunks, not objects
        objects |= listed
    if not known:
        raise BackupError(
            f"backup {backup_id}: neither its file list nor its checksum list can be read; refusing to collect "
            "garbage (fix or delete that backup first)"
        )
    return chunks, objects

def collect_garbage(repo: BackupRepository, *, dry_run: bool = False) -> GcResult:
    """Remove (or, dry run, list) chunks and objects that no manifest references."""
    result = GcResult()
    with repo.lock():
        if not dry_run:
            repo.cleanup_staging()
        chunks, objects = referenced(repo)
        unreferenced = [(sha, path) for sha, path in repo.chunks.iter_stored() if sha not in chunks]
        unreferenced += [(sha, path) for sha, path in _iter_objects(repo) if sha not in objects]
        for _, path in unreferenced:
            try:
                size = path.lstat().st_size
                if not dry_run:
                    path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise BackupError(f"{path}: cannot remove unreferenced data: {os_reason(exc)}") from None
            result.removed.append(path.relative_to(repo.root).as_posix())
            result.freed_bytes += size
        if not dry_run:
            repo.chunks.forget()
            for prefix in sorted({repo.root / rel.rsplit("/", 1)[0] for rel in result.removed}):
                with contextlib.suppress(OSError):
                    prefix.rmdir()  # only when empty
    return result

def _iter_objects(repo: BackupRepository) -> Iterator[tuple[str, Path]]:
    try:
        prefixes = sorted(os.listdir(repo.objects_dir))
    except FileNotFoundError:
        return
    for prefix in prefixes:
        directory = repo.objects_dir / prefix
        if len(prefix) != 2 or not directory.is_dir():
            continue
        for name in sorted(os.listdir(directory)):
            if is_sha256(name) and name.startswith(prefix):
                yield name, directory / name
