"""The backup repository: content-defined chunks, signed manifests in a hash chain, `sha256sum` sidecars.

Layout under `root` (docs/BACKUP_FORMAT.md has the whole format):

    .lock                         flock'd by every writer (holder's pid inside)
    chunks/ab/<sha256>            format 3: each chunk once (raw, or a zstd frame), named by the
                                  SHA-256 of its content (chunks.py)
    objects/ab/<sha256>           file lists (raw JSON); format 2's whole-file objects and lists
    manifests/<id>.json           one backup (written after its chunks and file list, before the head)
    manifests/<id>.sha256         `sha256sum -c` lines for the manifest and its file list
    head.json, history/           the newest backup, and the record of deletions and imports (history.py)
    staging/<run>.lock, <run>/    work in progress; leftovers of killed runs are removed by `cleanup_staging`
    cache/                        local only: the stat cache, the deep-verification rotation

Checking stored data lives in verification.py, restoring in restore.py, deleting and garbage
collection in deletion.py, export and import in archive.py.

New backups are format 3 (format3.py); format-2 backups (format2.py) stay listable, verifiable
and restorable. Pure Python, no Dagster, no SQL: the Dagster assets and `quadra backup` build on it.
"""

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
from typing import IO, Union

from ..keys import KeyPair
from . import _fs, format2, format3
from .chunks import ChunkStore, store_stream
from .deletion import GcResult
from .errors import (
    BackupError,
    IntegrityError,
    UnknownBackupError,
    UnsafePathError,
    os_reason,
    summarize,
)
from .history import History
from .locking import repository_lock
from .names import check_backup_id, id_time, new_backup_id, object_relpath
from .signatures import SignaturePolicy
from .statcache import StatCache
from .tree import FileEntry, check_mode, check_relative_path
from .verification import Read, VerifyReport, verify_chunks, verify_objects

MAX_MANIFEST_BYTES = format2.MAX_METADATA_BYTES  # also the limit for a file-list object
AnyManifest = Union[format2.Manifest, format3.Manifest]


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


class BackupRepository:
    def __init__(
        self,
        root: Path,
        *,
        keys: KeyPair | None = None,
        hmac_key: str | bytes | None = None,
        require_signature: bool = False,
    ) -> None:
        self.root = Path(root)
        key = hmac_key.encode("utf-8") if isinstance(hmac_key, str) else hmac_key
        self.policy = SignaturePolicy(keys=keys, hmac_key=bytes(key) if key else None, required=require_signature)
        if require_signature and not self.policy.can_sign:
            raise BackupError(
                f"{self.root}: signed backups are required but no backup signing key is configured "
                "(QUADRA_BACKUP_SIGNING_KEY; quadra backup keygen makes a pair)"
            )
        self.chunks = ChunkStore(self.root)
        self.history = History(self.root, self.policy)

    def __repr__(self) -> str:
        return f"BackupRepository({str(self.root)!r}, signs={self.policy.can_sign}, require_signature={self.policy.required})"

    # Paths ------------------------------------------------------------------------------

    @property
    def objects_dir(self) -> Path:
        return self.root / "objects"

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"

    def object_path(self, sha256: str) -> Path:
        return self.root / object_relpath(sha256)

    def manifest_path(self, backup_id: str) -> Path:
        return self.manifests_dir / f"{backup_id}.json"

    def sidecar_path(self, backup_id: str) -> Path:
        return self.manifests_dir / f"{backup_id}.sha256"

    def _ensure_layout(self) -> None:
        for directory in (self.objects_dir, self.manifests_dir, self.staging_dir, self.chunks.dir):
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                _fs.fsync_dir(directory.parent)

    def lock(self, *, blocking: bool = False) -> AbstractContextManager[None]:
        """Exclusive lock on the repository (`flock` on root/.lock); re-entrant in the holding thread."""
        return repository_lock(self.root, blocking=blocking)

    # Listing and reading ---------------------------------------------------------------------

    def backup_ids(self) -> list[str]:
        """Complete backups (those with a manifest), oldest first (ids sort by time)."""
        try:
            names = os.listdir(self.manifests_dir)
        except FileNotFoundError:
            return []
        ids = []
        for name in names:
            if name.endswith(".json") and not name.startswith("."):
                try:
                    ids.append(check_backup_id(name[: -len(".json")]))
                except BackupError:
                    continue
        return sorted(ids)

    def _read_manifest_bytes(self, backup_id: str) -> bytes:
        check_backup_id(backup_id)
        path = self.manifest_path(backup_id)
        try:
            return self._read_small(path, f"backup {backup_id}: manifest")
        except FileNotFoundError:
            raise UnknownBackupError(f"backup {backup_id}: no such backup in {self.root}") from None
        except UnsafePathError as exc:
            raise IntegrityError(str(exc)) from None
        except OSError as exc:
            raise BackupError(f"{path}: cannot read manifest: {os_reason(exc)}") from None

    def _read_small(self, path: Path, what: str) -> bytes:
        """A metadata file's bytes (at most MAX_MANIFEST_BYTES), never through a symlink."""
        fd = _fs.open_regular(path, what)
        try:
            if os.fstat(fd).st_size > MAX_MANIFEST_BYTES:
                raise IntegrityError(f"{what} {path} is larger than {MAX_MANIFEST_BYTES} bytes")
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _read_sidecar(self, backup_id: str) -> bytes | None:
        try:
            return self._read_small(self.sidecar_path(backup_id), "sidecar")
        except (FileNotFoundError, BackupError):
            return None
        except OSError as exc:
            raise BackupError(f"{self.sidecar_path(backup_id)}: cannot read sidecar: {os_reason(exc)}") from None

    def _read_metadata_object(self, sha: str) -> tuple[bytes | None, str | None]:
        """(bytes, None), or (None, what is wrong: 'is missing', 'is corrupt: ...')."""
        path = self.object_path(sha)
        try:
            data = self._read_small(path, "object")
        except FileNotFoundError:
            return None, "is missing"
        except BackupError as exc:
            return None, f"is unusable ({str(exc).removeprefix(f'object {path} ')})"
        except OSError as exc:
            return None, f"cannot be read ({os_reason(exc)})"
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha:
            return None, f"is corrupt: its content hashes to {digest[:12]}..., not its name (altered or flipped bytes)"
        return data, None

    @staticmethod
    def format_of(data: bytes) -> int | None:
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, ValueError):
            return None
        version = document.get("format_version") if isinstance(document, dict) else None
        return version if version in (format2.FORMAT_VERSION, format3.FORMAT_VERSION) else None

    def _check_manifest(
        self, backup_id: str, data: bytes, sidecar: bytes | None, load: format2.MetadataLoader | None = None
    ) -> tuple[AnyManifest | None, list[str]]:
        """Parse and check one manifest of either format with its file list (and, format 2, its
        checksum list): name == id inside, signature, sidecar, the metadata objects. Not the data."""
        load = load or self._read_metadata_object
        if self.format_of(data) == format2.FORMAT_VERSION:
            return format2.check_manifest(backup_id, data, sidecar, load, self.policy.hmac_problem)
        rel = f"manifests/{backup_id}.json"
        try:
            document = json.loads(data)
            if not isinstance(document, dict):
                raise BackupError(f"a JSON {type(document).__name__}, not an object")
            header = format3.Header.from_document(document)
        except (UnicodeDecodeError, ValueError) as exc:
            return None, [f"{rel}: manifest is not valid JSON ({exc})"]
        except BackupError as exc:
            return None, [f"{rel}: {exc}"]
        problems = []
        if header.backup_id != backup_id:
            problems.append(f"{rel} holds backup {header.backup_id!r}, not {backup_id!r} (manifest swapped, renamed or replayed)")
        problem = self.policy.problem(document, rel)
        if problem:
            problems.append(problem)
        if header.to_json() != data:
            problems.append(f"{rel} is not in its canonical form (edited by hand?)")
        expected = [(rel, hashlib.sha256(data).hexdigest()), (object_relpath(header.files_object), header.files_object)]
        problems += format2.sidecar_problems(backup_id, expected, sidecar)
        files_rel = object_relpath(header.files_object)
        file_list, problem = load(header.files_object)
        if problem:
            problems.append(f"file list {files_rel} {problem}")
        if file_list is None:
            return None, problems
        try:
            manifest = format3.Manifest.parse(header, file_list)
        except UnsafePathError as exc:
            raise UnsafePathError(f"backup {backup_id}: file list {files_rel}: {exc}") from None
        except BackupError as exc:
            return None, problems + [f"file list {files_rel}: {exc}"]
        return manifest, problems

    def read_manifest(self, backup_id: str) -> AnyManifest:
        """The manifest with its files, after checking its name, signature, sidecar and file list
        (not the data: see verify)."""
        data = self._read_manifest_bytes(backup_id)
        manifest, problems = self._check_manifest(backup_id, data, self._read_sidecar(backup_id))
        if problems or manifest is None:
            if not self.manifest_path(backup_id).exists():
                raise UnknownBackupError(f"backup {backup_id}: deleted while it was being read")
            raise IntegrityError(summarize(f"backup {backup_id}", problems), problems)
        return manifest

    def manifest_sha256(self, backup_id: str) -> str:
        """SHA-256 of the manifest file as stored (what the sidecar's first line lists)."""
        return hashlib.sha256(self._read_manifest_bytes(backup_id)).hexdigest()

    def _format3_headers(self) -> dict[str, tuple[format3.Header, str]]:
        """Every readable format-3 manifest's header and SHA-256 (damaged ones are verify's to report)."""
        found = {}
        for backup_id in self.backup_ids():
            try:
                data = self._read_manifest_bytes(backup_id)
                if self.format_of(data) != format3.FORMAT_VERSION:
                    continue
                header = format3.Header.from_document(json.loads(data))
            except (BackupError, ValueError, OSError):
                continue
            if header.backup_id == backup_id:
                found[backup_id] = (header, hashlib.sha256(data).hexdigest())
        return found

    def history_problems(self) -> list[str]:
        """What is wrong with the history (chain, head, records): rollbacks, deletions, replays."""
        problems, _ = self.history.check(self._format3_headers())
        return problems

    # Verification -----------------------------------------------------------------------

    def verify(self, backup_id: str, *, read: Read = "all") -> VerifyReport:
        """Check one backup: its manifest, signature, sidecar and file list, and every chunk it
        names: present with the right size; re-read and re-hashed with `read="all"`, or those in
        the given set (`"none"`: none). Format-2 backups re-hash every object. (The history the
        backups form is checked once for all: `history_problems`.)"""
        try:
            report, _ = self._verify(backup_id, read)
        except UnsafePathError as exc:
            return VerifyReport(backup_id, False, [str(exc)], 0, 0)
        return report

    def _verify(self, backup_id: str, read: Read) -> tuple[VerifyReport, AnyManifest | None]:
        data = self._read_manifest_bytes(backup_id)
        manifest, problems = self._check_manifest(backup_id, data, self._read_sidecar(backup_id))
        if isinstance(manifest, format2.Manifest):
            report = verify_objects(self, manifest, problems, rehash=read == "all")
        else:
            report = verify_chunks(self, backup_id, manifest, problems, read)
        if report.problems and not self.manifest_path(backup_id).exists():
            # verify takes no lock (it may run beside a backup): a concurrent delete + gc is not damage
            raise UnknownBackupError(f"backup {backup_id}: deleted while it was being verified")
        return report, manifest

    # Creating ---------------------------------------------------------------------------

    def create(
        self,
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
        self.policy.check_can_write()  # before reading anything
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

        with self.lock():
            try:
                self._ensure_layout()
                self.cleanup_staging()
            except OSError as exc:
                raise BackupError(f"{self.root}: cannot prepare backup {backup_id}: {os_reason(exc)}") from None
            while auto_id and self.manifest_path(backup_id).exists():
                backup_id = new_backup_id(created_at)
            if self.manifest_path(backup_id).exists():
                raise BackupError(f"backup {backup_id} already exists in {self.root}")
            tip = self._tip()
            while auto_id and tip is not None and backup_id <= tip.backup_id:
                # The clock is behind the newest backup's (stepped back, or a backup imported from
                # a machine whose clock ran ahead): keep the ids in the history's order.
                created_at = max(created_at, (id_time(tip.backup_id) or created_at)) + timedelta(seconds=1)
                backup_id = new_backup_id(created_at)
            previous_files = self._files_of(tip.backup_id) if tip is not None else {}
            cache = StatCache(self.root / "cache" / "stat-cache.json") if use_stat_cache else None
            added: list[Path] = []
            written: list[Path] = []
            self.chunks.forget()
            try:
                with _fs.StagingRun(self.staging_dir) as run:
                    entries, read = [], 0
                    for index, item in enumerate(files):
                        entry, was_read = self._store(item, run.dir, previous_files.get(item.path), cache, added)
                        entries.append(entry)
                        read += was_read
                        _fs.hook("object", index=index, path=item.path)
                    _fs.sync_fs(self.chunks.dir)  # every chunk durable before anything names it
                    sequence = self._sequence_after(tip)
                    manifest = format3.Manifest.build(backup_id, created_at, tuple(entries), dict(sources), sequence, tip)
                    document = self.policy.sign(manifest.header.document())
                    header = format3.Header.from_document(document)
                    manifest = format3.Manifest(header, manifest.files)
                    self._put_metadata_object(header.files_object, manifest.file_list_bytes, run, added)
                    _fs.hook("file-list")
                    data = header.to_json()
                    manifest_sha = hashlib.sha256(data).hexdigest()
                    written.append(self.sidecar_path(backup_id))
                    _fs.atomic_write(self.sidecar_path(backup_id), format3.sidecar_text(header, manifest_sha), run.dir)
                    _fs.hook("sidecar")
                    written.append(self.manifest_path(backup_id))
                    _fs.atomic_write(self.manifest_path(backup_id), data, run.dir)
                    _fs.hook("manifest")
                    # The head is the commit point of a failing run (a kill just before it leaves a
                    # complete backup one past the head, which the history accepts).
                    self.history.write_head(format3.Link(backup_id, manifest_sha), sequence, run.dir)
                    written.clear()
                    added_chunks = [p.name for p in added if p.parent.parent == self.chunks.dir]
                    stored = sum(self.chunks.known().get(sha, 0) for sha in added_chunks)
                    added.clear()
                    _fs.hook("head")
                    if cache is not None:
                        with contextlib.suppress(OSError):
                            cache.save(run.dir)  # only a cache
            except OSError as exc:
                self._undo(added, written)
                where = f" ({exc.filename})" if exc.filename else ""
                raise BackupError(f"{self.root}: cannot write backup {backup_id}: {os_reason(exc)}{where}; no backup was made") from None
            except BaseException:
                self._undo(added, written)
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

    def _tip(self) -> format3.Link | None:
        """The backup a new one extends; refuses to extend a broken history (a rollback must not
        be papered over by the next backup)."""
        problems, tip = self.history.check(self._format3_headers())
        if problems:
            raise IntegrityError(
                summarize("no backup was made: the repository's history is broken (quadra backup verify)", problems),
                problems,
            )
        return tip

    def _sequence_after(self, tip: format3.Link | None) -> int:
        if tip is None:
            return 1
        header = format3.Header.from_document(json.loads(self._read_manifest_bytes(tip.backup_id)))
        return header.sequence + 1

    def _files_of(self, backup_id: str) -> dict[str, FileEntry]:
        """path -> entry of a backup (to reuse what the stat cache says is unchanged)."""
        try:
            manifest = self.read_manifest(backup_id)
        except BackupError:
            return {}
        return {e.path: e for e in manifest.files if e.chunks is not None}

    def _store(
        self, item: SourceFile | SourceStream, staging: Path, previous: FileEntry | None, cache: StatCache | None, added: list[Path]
    ) -> tuple[FileEntry, int]:
        """(entry, 1 if the source was read)."""
        what = f"backup source for {item.path!r}:"
        if isinstance(item, SourceStream):
            try:
                with item.open() as handle:
                    sha, size, chunks = store_stream(self.chunks, handle.read, staging, added)
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
                known = self.chunks.known()
                if sha == previous.sha256 and before.st_size == previous.size and all(c[0] in known for c in previous.chunks or ()):
                    cache.keep(Path(item.source), before, sha)
                    return FileEntry(item.path, previous.size, previous.sha256, item.mode, previous.chunks), 0
            started_ns = time.time_ns()
            _fs.advise_sequential(fd)
            with os.fdopen(os.dup(fd), "rb", buffering=0) as handle:
                try:
                    sha, size, chunks = store_stream(self.chunks, handle.read, staging, added)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                        raise
                    raise BackupError(f"{what} cannot read {item.source}: {os_reason(exc)}") from None
            if cache is not None:
                cache.record(Path(item.source), before, os.fstat(fd), sha, started_ns)
        finally:
            os.close(fd)
        return FileEntry(item.path, size, sha, item.mode, tuple((c.sha256, c.length, c.stored) for c in chunks)), 1

    def _put_metadata_object(self, sha: str, payload: bytes, run: _fs.StagingRun, added: list[Path]) -> None:
        """Store a file-list object (unless the same bytes are there already: unchanged backups
        share it; a damaged copy is replaced)."""
        target = self.object_path(sha)
        data, _ = self._read_metadata_object(sha)
        if data == payload:
            return
        existed = os.path.lexists(target)
        tmp = run.dir / f"metadata-{sha}"
        _fs.write_file(tmp, payload, 0o444)
        _fs.mkdirs(target.parent, self.objects_dir)
        os.replace(tmp, target)
        if not existed:
            added.append(target)  # a repaired copy stays even if this run fails later
        _fs.fsync_dir(target.parent)

    def _undo(self, added: list[Path], written: list[Path]) -> None:
        """After a failed create/import: remove the sidecar/manifest and what this run added."""
        for path in reversed(written):
            path.unlink(missing_ok=True)
        for path in added:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when empty
        self.chunks.forget()

    # Restoring (restore.py) ------------------------------------------------------------------

    def restore(self, backup_id: str, target: Path, *, select: Callable[[str], bool] | None = None) -> AnyManifest:
        """Write the backup's tree (or the files `select` accepts) at `target`, every chunk and
        file checked as it is written; on any problem nothing appears there."""
        from .restore import restore_backup

        return restore_backup(self, backup_id, Path(target), select=select)

    # Export / import (archive.py) --------------------------------------------------------------

    def export(self, backup_id: str, out: Path) -> Path:
        """One portable tar (manifest, sidecar, file list, chunks or objects) + `<out>.sha256`."""
        from .archive import export_backup

        return export_backup(self, backup_id, Path(out))

    def import_archive(self, archive: Path) -> AnyManifest:
        """Check the archive (and its `.sha256` sidecar when present), then add it, manifest last."""
        from .archive import import_backup

        return import_backup(self, Path(archive))

    # Deleting (deletion.py) ------------------------------------------------------------------

    def delete(self, backup_id: str) -> None:
        self.delete_many([backup_id])

    def delete_many(self, backup_ids: list[str]) -> None:
        """Remove backups, recorded in a signed `pruned` record; chunks stay until `gc`."""
        from .deletion import delete_backups

        delete_backups(self, backup_ids)

    def referenced(self) -> tuple[set[str], set[str]]:
        """(chunk ids, metadata/format-2 object ids) the backups need."""
        from .deletion import referenced

        return referenced(self)

    def gc(self, *, dry_run: bool = False) -> GcResult:
        """Remove (or, dry run, list) chunks and objects that no manifest references."""
        from .deletion import collect_garbage

        return collect_garbage(self, dry_run=dry_run)

    def cleanup_staging(self) -> int:
        """Remove what killed runs left behind: staging runs (and their restore/export temp paths),
        sidecars without a manifest. Returns how many leftovers were removed."""
        with self.lock():
            removed = len(_fs.cleanup_runs(self.staging_dir))
            try:
                names = os.listdir(self.manifests_dir)
            except FileNotFoundError:
                names = []
            for name in names:
                if name.endswith(".sha256") and not (self.manifests_dir / (name[: -len(".sha256")] + ".json")).exists():
                    (self.manifests_dir / name).unlink(missing_ok=True)
                    removed += 1
                elif name.startswith(".") and name.endswith(".tmp"):
                    (self.manifests_dir / name).unlink(missing_ok=True)
                    removed += 1
            return removed

    # Sizes ---------------------------------------------------------------------------------

    def disk_usage(self) -> int:
        """Bytes on disk under root (allocated blocks), for reports and the dedup tests."""
        total = 0
        for directory, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(directory, name)).st_blocks * 512
        return total

