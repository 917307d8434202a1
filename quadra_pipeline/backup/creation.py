"""Creating a backup (format 3): each source read once, hashed and cut into chunks as it is
read, only new chunks written, the file system synced, then the file list, the sidecar, the
manifest (extending the hash chain) and the head, last. A failure undoes what the run added."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING

from . import _fs, format3
from .chunks import store_stream
from .errors import BackupError, IntegrityError, os_reason, summarize
from .names import check_backup_id, id_time, new_backup_id
from .statcache import StatCache
from .tree import FileEntry, check_mode, check_relative_path

if TYPE_CHECKING:
    from .repository import BackupRepository


@dataclass(frozen=True)
class SourceFile:
    """One file to back up: `path` in the restore tree, read from `source` (a consistent copy for live databases)."""

    path: str
    source: Path
    mode: int = 0o644


@dataclass(frozen=True)
class SourceStream:
    """One file to back up from a stream (a database dump): `open()` is a context manager that
    yields a binary stream, read to its end once, and raises if what produced it failed."""

    path: str
    open: Callable[[], AbstractContextManager[IO[bytes]]]
    mode: int = 0o600


@dataclass
class CreateResult:
    manifest: format3.Manifest
    manifest_sha256: str
    total_bytes: int
    stored_bytes: int  # bytes of new chunks written (compressed where it paid; the rest was deduplicated)
    file_count: int
    seconds: float
    files_read: int = 0  # sources read (the rest came from the stat cache)
    added_chunks: list[str] = field(default_factory=list)  # what this backup wrote (its integrity check re-reads them)


def create_backup(
    repo: BackupRepository,
    files: Iterable[SourceFile | SourceStream],
    *,
    sources: Mapping,
    backup_id: str | None = None,
    created_at: datetime | None = None,
    use_stat_cache: bool = False,
) -> CreateResult:
    """A format-3 backup: each source read once (hashed and cut into chunks as it is read),
    only new chunks written, the file system synced, then the file list, the sidecar, the
    manifest (extending the chain) and the head, last.

    `use_stat_cache`: skip reading files whose (device, inode, size, mtime, ctime) match the
    previous run's and whose chunks are all present (statcache.py explains the trade-off).
    `sources` may be changed by the streams while they are read (a dump records the row
    counts it saw); it is read after the last file.
    """
    started = time.monotonic()
    repo.policy.check_can_write()  # before reading anything
    created_at = created_at or datetime.now(UTC)
    if created_at.utcoffset() is None:
        raise BackupError("create: created_at must be timezone-aware (UTC)")
    auto_id = backup_id is None
    backup_id = new_backup_id(created_at) if backup_id is None else check_backup_id(backup_id)
    files = sorted(files, key=lambda f: f.path)
    seen: set[str] = set()
    for item in files:
        check_relative_path(item.path, f"backup {backup_id} file list")
        check_mode(item.mode, item.path, f"backup {backup_id} file list")
        if item.path in seen:
            raise BackupError(f"backup {backup_id}: path {item.path!r} is given twice")
        seen.add(item.path)
    format3.Manifest.build(backup_id, created_at, tuple(FileEntry(f.path, 0, "0" * 64, f.mode, ()) for f in files), {}, 1, None)

    with repo.lock():
        try:
            repo._ensure_layout()
            repo.cleanup_staging()
        except OSError as exc:
            raise BackupError(f"{repo.root}: cannot prepare backup {backup_id}: {os_reason(exc)}") from None
        while auto_id and repo.manifest_path(backup_id).exists():
            backup_id = new_backup_id(created_at)
        if repo.manifest_path(backup_id).exists():
            raise BackupError(f"backup {backup_id} already exists in {repo.root}")
        tip = _tip(repo)
        while auto_id and tip is not None and backup_id <= tip.backup_id:
            # The clock is behind the newest backup's (stepped back, or a backup imported from
            # a machine whose clock ran ahead): keep the ids in the history's order.
            created_at = max(created_at, (id_time(tip.backup_id) or created_at)) + timedelta(seconds=1)
            backup_id = new_backup_id(created_at)
        previous_files = _files_of(repo, tip.backup_id) if tip is not None else {}
        cache = StatCache(repo.root / "cache" / "stat-cache.json") if use_stat_cache else None
        added: list[Path] = []
        written: list[Path] = []
        repo.chunks.forget()
        try:
            with _fs.StagingRun(repo.staging_dir) as run:
                entries, read = [], 0
                for index, item in enumerate(files):
                    entry, was_read = _store_source(repo, item, run.dir, previous_files.get(item.path), cache, added)
                    entries.append(entry)
                    read += was_read
                    _fs.hook("object", index=index, path=item.path)
                _fs.sync_fs(repo.chunks.dir)  # every chunk durable before anything names it
                sequence = _sequence_after(repo, tip)
                manifest = format3.Manifest.build(backup_id, created_at, tuple(entries), dict(sources), sequence, tip)
                document = repo.policy.sign(manifest.header.document())
                header = format3.Header.from_document(document)
                manifest = format3.Manifest(header, manifest.files)
                _put_metadata_object(repo, header.files_object, manifest.file_list_bytes, run, added)
                _fs.hook("file-list")
                data = header.to_json()
                manifest_sha = hashlib.sha256(data).hexdigest()
                written.append(repo.sidecar_path(backup_id))
                _fs.atomic_write(repo.sidecar_path(backup_id), format3.sidecar_text(header, manifest_sha), run.dir)
                _fs.hook("sidecar")
                written.append(repo.manifest_path(backup_id))
                _fs.atomic_write(repo.manifest_path(backup_id), data, run.dir)
                _fs.hook("manifest")
                # The head is the commit point of a failing run (a kill just before it leaves a
                # complete backup one past the head, which the history accepts).
                repo.history.write_head(format3.Link(backup_id, manifest_sha), sequence, run.dir)
                written.clear()
                added_chunks = [p.name for p in added if p.parent.parent == repo.chunks.dir]
                stored = sum(repo.chunks.known().get(sha, 0) for sha in added_chunks)
                added.clear()
                _fs.hook("head")
                if cache is not None:
                    with contextlib.suppress(OSError):
                        cache.save(run.dir)  # only a cache
        except OSError as exc:
            repo._undo(added, written)
            where = f" ({exc.filename})" if exc.filename else ""
            raise BackupError(f"{repo.root}: cannot write backup {backup_id}: {os_reason(exc)}{where}; no backup was made") from None
        except BaseException:
            repo._undo(added, written)
            raise
    return CreateResult(
        manifest=manifest,
        manifest_sha256=manifest_sha,
        total_bytes=manifest.total_bytes,
        stored_bytes=stored,
        file_count=len(entries),
        seconds=time.monotonic() - started,
        files_read=read,
        added_chunks=added_chunks,
    )

def _tip(repo: BackupRepository) -> format3.Link | None:
    """The backup a new one extends; refuses to extend a broken history (a rollback must not
    be papered over by the next backup)."""
    problems, tip = repo.history.check(repo._format3_headers())
    if problems:
        raise IntegrityError(
            summarize("no backup was made: the repository's history is broken (quadra backup verify)", problems),
            problems,
        )
    return tip

def _sequence_after(repo: BackupRepository, tip: format3.Link | None) -> int:
    if tip is None:
        return 1
    header = format3.Header.from_document(json.loads(repo._read_manifest_bytes(tip.backup_id)))
    return header.sequence + 1

def _files_of(repo: BackupRepository, backup_id: str) -> dict[str, FileEntry]:
    """path -> entry of a backup (to reuse what the stat cache says is unchanged)."""
    try:
        manifest = repo.read_manifest(backup_id)
    except BackupError:
        return {}
    return {e.path: e for e in manifest.files if e.chunks is not None}

def _store_source(
    repo: BackupRepository, item: SourceFile | SourceStream, staging: Path, previous: FileEntry | None, cache: StatCache | None, added: list[Path]
) -> tuple[FileEntry, int]:
    """(entry, 1 if the source was read)."""
    what = f"backup source for {item.path!r}:"
    if isinstance(item, SourceStream):
        try:
            with item.open() as handle:
                sha, size, chunks = store_stream(repo.chunks, handle.read, staging, added)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            raise BackupError(f"{what} cannot read the stream: {os_reason(exc)}") from None
        return FileEntry(item.path, size, sha, item.mode, tuple((c.sha256, c.length, c.stored) for c in chunks)), 1
    try:
        fd = _fs.open_regular(Path(item.source), what)
    except FileNotFoundError:
        raise BackupError(f"{what} {item.source} does not exist") from None
    except OSError as exc:
        raise BackupError(f"{what} cannot open {item.source}: {os_reason(exc)}") from None
    try:
        before = os.fstat(fd)
        if cache is not None and previous is not None:
            sha = cache.lookup(Path(item.source), before)
            known = repo.chunks.known()
            if sha == previous.sha256 and before.st_size == previous.size and all(c[0] in known for c in previous.chunks or ()):
                cache.keep(Path(item.source), before, sha)
                return FileEntry(item.path, previous.size, previous.sha256, item.mode, previous.chunks), 0
        started_ns = time.time_ns()
        _fs.advise_sequential(fd)
        with os.fdopen(os.dup(fd), "rb", buffering=0) as handle:
            try:
                sha, size, chunks = store_stream(repo.chunks, handle.read, staging, added)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise
                raise BackupError(f"{what} cannot read {item.source}: {os_reason(exc)}") from None
        if cache is not None:
            cache.record(Path(item.source), before, os.fstat(fd), sha, started_ns)
    finally:
        os.close(fd)
    return FileEntry(item.path, size, sha, item.mode, tuple((c.sha256, c.length, c.stored) for c in chunks)), 1

def _put_metadata_object(repo: BackupRepository, sha: str, payload: bytes, run: _fs.StagingRun, added: list[Path]) -> None:
    """Store a file-list object (unless the same bytes are there already: unchanged backups
    share it; a damaged copy is replaced)."""
    target = repo.object_path(sha)
    data, _ = repo._read_metadata_object(sha)
    if data == payload:
        return
    existed = os.path.lexists(target)
    tmp = run.dir / f"metadata-{sha}"
    _fs.write_file(tmp, payload, 0o444)
    _fs.mkdirs(target.parent, repo.objects_dir)
    os.replace(tmp, target)
    if not existed:
        added.append(target)  # a repaired copy stays even if this run fails later
    _fs.fsync_dir(target.parent)
