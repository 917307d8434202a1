"""The backup repository: content-addressed objects, signed manifests, `sha256sum` sidecars.

Layout under `root` (docs/BACKUP_FORMAT.md has the whole format):

    .lock                         flock'd by create/restore/import/delete/gc (holder's pid inside)
    objects/ab/<sha256>           each distinct content once, stored raw: its name IS its checksum;
                                  the files' contents (data objects) and, per distinct file list,
                                  two metadata objects: the file list (JSON) and the checksum list
                                  (`sha256sum -c` lines of every data object the backup names)
    manifests/<id>.json           one backup (written LAST: a backup exists once this file does);
                                  names the file-list and checksum-list objects by SHA-256, signed
    manifests/<id>.sha256         `sha256sum -c` list: the manifest file, the file-list object, the
                                  checksum-list object (three lines, whatever the number of files)
    staging/<run>.lock, <run>/    work in progress; leftovers of killed runs are removed by
                                  `cleanup_staging` (create, restore and import call it)
    cache/stat-cache.json         optional, local: see statcache.py

Pure Python, no Dagster, no SQL: the Dagster assets and the `quadra backup` command build on it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import _fs
from .errors import BackupError, IntegrityError, UnknownBackupError, UnsafePathError, summarize
from .locking import repository_lock
from .manifest import (
    FileEntry,
    Manifest,
    ManifestHeader,
    check_backup_id,
    check_mode,
    check_relative_path,
    decode_file_list,
    is_sha256,
    new_backup_id,
    object_relpath,
    sign,
    signature_ok,
)
from .statcache import StatCache

_SIDECAR_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")
MAX_MANIFEST_BYTES = 256 << 20  # also the limit for a file-list or checksum-list object

#: (bytes, None) or (None, problem): reads a metadata object by SHA-256 (from the repository, or
#: from an import's staging area), checked against its name.
MetadataLoader = Callable[[str], "tuple[bytes | None, str | None]"]


@dataclass(frozen=True)
class SourceFile:
    """One file to back up: `path` in the restore tree, read from `source` (a consistent copy for live databases)."""

    path: str
    source: Path
    mode: int = 0o644


@dataclass
class CreateResult:
    manifest: Manifest
    manifest_sha256: str
    total_bytes: int
    stored_bytes: int  # new bytes of file content written into objects/ (after dedup; metadata objects not counted)
    file_count: int
    seconds: float
    files_read: int = 0  # sources read (the rest came from the stat cache)


@dataclass
class VerifyReport:
    backup_id: str
    ok: bool
    problems: list[str]
    files_checked: int  # files whose content was re-hashed
    bytes_checked: int  # bytes of file content re-hashed (the data objects; the metadata objects are checked too)


@dataclass
class GcResult:
    removed: list[str] = field(default_factory=list)  # object paths relative to root
    freed_bytes: int = 0


def sidecar_text(manifest: Manifest | ManifestHeader, manifest_sha256: str) -> bytes:
    """`sha256sum` format, paths relative to the repository root, three lines: the manifest file,
    the file-list object, the checksum-list object (which `sha256sum -c` then checks every data
    object with)."""
    lines = [
        f"{manifest_sha256}  manifests/{manifest.backup_id}.json",
        f"{manifest.files_object}  {object_relpath(manifest.files_object)}",
        f"{manifest.checksums_object}  {object_relpath(manifest.checksums_object)}",
    ]
    return ("\n".join(lines) + "\n").encode("ascii")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class BackupRepository:
    def __init__(self, root: Path, secret_key: str | bytes | None = None, *, require_signature: bool = False) -> None:
        self.root = Path(root)
        key = secret_key.encode("utf-8") if isinstance(secret_key, str) else secret_key
        self._key: bytes | None = bytes(key) if key else None
        self.require_signature = require_signature
        if require_signature and self._key is None:
            raise BackupError(f"{self.root}: signed backups are required but no secret key was given (QUADRA_SECRET_KEY)")

    def __repr__(self) -> str:
        return f"BackupRepository({str(self.root)!r}, signed={self._key is not None}, require_signature={self.require_signature})"

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
        for directory in (self.objects_dir, self.manifests_dir, self.staging_dir):
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                _fs.fsync_dir(directory.parent)

    # Lock -------------------------------------------------------------------------------

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
                backup_id = name[: -len(".json")]
                try:
                    check_backup_id(backup_id)
                except BackupError:
                    continue
                ids.append(backup_id)
        return sorted(ids)

    def _read_manifest_bytes(self, backup_id: str) -> bytes:
        check_backup_id(backup_id)
        path = self.manifest_path(backup_id)
        try:
            fd = _fs.open_regular(path, f"backup {backup_id}: manifest")
        except FileNotFoundError:
            raise UnknownBackupError(f"backup {backup_id}: no such backup in {self.root}") from None
        except UnsafePathError as exc:
            raise IntegrityError(str(exc)) from None
        except OSError as exc:
            raise BackupError(f"{path}: cannot read manifest: {_reason(exc)}") from None
        try:
            if os.fstat(fd).st_size > MAX_MANIFEST_BYTES:
                raise IntegrityError(f"backup {backup_id}: manifest {path} is larger than {MAX_MANIFEST_BYTES} bytes")
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise BackupError(f"{path}: cannot read manifest: {_reason(exc)}") from None
        finally:
            os.close(fd)

    def _check_manifest(
        self, backup_id: str, data: bytes, sidecar: bytes | None, load: MetadataLoader | None = None
    ) -> tuple[Manifest | None, list[str]]:
        """Parse and check one manifest and its two metadata objects: name == id inside, signature,
        sidecar, the file list (hashes to its name, parses, agrees with the manifest's counts and
        checksum list), the checksum list (hashes to its name). Not the data objects: see `_verify`.
        `load` reads a metadata object (default: from this repository). (manifest, problems);
        the manifest is None when the file list cannot be used."""
        rel = f"manifests/{backup_id}.json"
        try:
            header = ManifestHeader.from_json(data)
        except BackupError as exc:
            return None, [f"{rel}: {exc}"]
        problems = []
        if header.backup_id != backup_id:
            problems.append(
                f"{rel} holds backup {header.backup_id!r}, not {backup_id!r} (manifest swapped, renamed or replayed)"
            )
        problems += self._signature_problems(header, rel)
        problems += self._sidecar_problems(backup_id, header, hashlib.sha256(data).hexdigest(), sidecar)
        load = load or self._read_metadata_object
        files_rel = object_relpath(header.files_object)
        file_list, problem = load(header.files_object)
        if problem:
            problems.append(f"file list {files_rel} {problem}")
        _, problem = load(header.checksums_object)
        if problem:
            problems.append(f"checksum list {object_relpath(header.checksums_object)} {problem}")
        if file_list is None:
            return None, problems
        try:
            files = decode_file_list(file_list)
        except UnsafePathError as exc:
            raise UnsafePathError(f"backup {backup_id}: file list {files_rel}: {exc}") from None
        except BackupError as exc:
            return None, problems + [f"file list {files_rel}: {exc}"]
        manifest = Manifest(header.backup_id, header.created_at, files, header.sources, header.format_version, header.signature)
        # The loader checked that the file list hashes to files_object, and the checksum list to
        # checksums_object; so equal SHA-256s here mean equal bytes.
        problems += [f"{rel}: {p}" for p in header.mismatches(manifest)]
        return manifest, problems

    def _signature_problems(self, manifest: Manifest | ManifestHeader, rel: str) -> list[str]:
        if manifest.signature is None:
            if self.require_signature:
                return [f"{rel} is not signed, and this repository requires signed backups"]
            return []
        if self._key is not None and not signature_ok(manifest, self._key):
            return [f"{rel}: signature does not match (manifest altered, or signed with another key)"]
        return []

    def _sidecar_problems(self, backup_id: str, header: ManifestHeader, manifest_sha: str, sidecar: bytes | None) -> list[str]:
        rel = f"manifests/{backup_id}.sha256"
        if sidecar is None:
            return [f"checksum sidecar {rel} is missing"]
        try:
            lines = sidecar.decode("ascii").splitlines()
        except UnicodeDecodeError:
            return [f"checksum sidecar {rel} is not ASCII text"]
        entries: list[tuple[str, str]] = []
        problems = []
        for number, line in enumerate(lines, 1):
            match = _SIDECAR_LINE.fullmatch(line)
            if not match:
                problems.append(f"checksum sidecar {rel} line {number} is not '<sha256>  <path>'")
                continue
            entries.append((match.group(2), match.group(1)))
        listed = dict(entries)
        manifest_rel = f"manifests/{backup_id}.json"
        expected = [
            (manifest_rel, manifest_sha),
            (object_relpath(header.files_object), header.files_object),
            (object_relpath(header.checksums_object), header.checksums_object),
        ]
        if manifest_rel not in listed:
            problems.append(f"checksum sidecar {rel} does not list {manifest_rel}")
        elif listed[manifest_rel] != manifest_sha:
            problems.append(f"{manifest_rel} does not match the SHA-256 in {rel} (manifest or sidecar altered)")
        for path, sha in expected[1:]:
            if listed.get(path) != sha:
                problems.append(f"checksum sidecar {rel} does not list {path}")
        for path in sorted(set(listed) - {path for path, _ in expected}):
            problems.append(f"checksum sidecar {rel} lists {path}, which the manifest does not name")
        if not problems and [path for path, _ in entries] != [path for path, _ in expected]:
            problems.append(
                f"checksum sidecar {rel} is not three lines in the order: manifest, file list, checksum list"
            )
        return problems

    def _read_object_bytes(self, sha: str) -> bytes:
        """A (small) object's bytes, unchecked; FileNotFoundError, BackupError (not a regular file,
        too large) or OSError."""
        path = self.object_path(sha)
        fd = _fs.open_regular(path, "object")
        try:
            if os.fstat(fd).st_size > MAX_MANIFEST_BYTES:
                raise BackupError(f"object {path} is larger than {MAX_MANIFEST_BYTES} bytes")
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _read_metadata_object(self, sha: str) -> tuple[bytes | None, str | None]:
        """(bytes, None), or (None, what is wrong: 'is missing', 'is corrupt: ...')."""
        path = self.object_path(sha)
        try:
            data = self._read_object_bytes(sha)
        except FileNotFoundError:
            return None, "is missing"
        except BackupError as exc:
            return None, f"is unusable ({str(exc).removeprefix(f'object {path} ')})"
        except OSError as exc:
            return None, f"cannot be read ({_reason(exc)})"
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha:
            return None, f"is corrupt: its content hashes to {digest[:12]}..., not its name (altered or flipped bytes)"
        return data, None

    def _read_sidecar(self, backup_id: str) -> bytes | None:
        try:
            fd = _fs.open_regular(self.sidecar_path(backup_id), "sidecar")
        except (FileNotFoundError, BackupError):
            return None
        except OSError as exc:
            raise BackupError(f"{self.sidecar_path(backup_id)}: cannot read sidecar: {_reason(exc)}") from None
        try:
            return os.read(fd, MAX_MANIFEST_BYTES)
        finally:
            os.close(fd)

    def read_manifest(self, backup_id: str) -> Manifest:
        """The manifest with its files, after checking its name, signature, sidecar, file-list and
        checksum-list objects (not the data objects: see verify)."""
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

    # Verification -----------------------------------------------------------------------

    def verify(self, backup_id: str) -> VerifyReport:
        """Re-hash every object the backup needs (streaming): the manifest's file-list and
        checksum-list objects and every data object; check sizes, signature, id, sidecar."""
        try:
            report, _ = self._verify(backup_id)
        except UnsafePathError as exc:
            return VerifyReport(backup_id, False, [str(exc)], 0, 0)
        return report

    def _verify(self, backup_id: str) -> tuple[VerifyReport, Manifest | None]:
        data = self._read_manifest_bytes(backup_id)
        manifest, problems = self._check_manifest(backup_id, data, self._read_sidecar(backup_id))
        files_checked = bytes_checked = 0
        for sha, entries in _group_by_object(manifest.files if manifest is not None else ()).items():
            sizes = {entry.size for entry in entries}
            names = _name_files(entries)
            if len(sizes) > 1:
                problems.append(f"{names}: manifest lists object {sha[:12]}... with different sizes {sorted(sizes)}")
            problem, hashed = self._check_object(sha, entries[0].size)
            bytes_checked += hashed
            files_checked += len(entries)
            if problem:
                problems.append(f"{names}: object {object_relpath(sha)} {problem}")
        if problems and not self.manifest_path(backup_id).exists():
            # verify takes no lock (it may run beside a backup): a concurrent delete + gc is not damage
            raise UnknownBackupError(f"backup {backup_id}: deleted while it was being verified")
        ok = not problems and manifest is not None
        return VerifyReport(backup_id, ok, problems, files_checked, bytes_checked), manifest

    def _check_object(self, sha: str, size: int) -> tuple[str | None, int]:
        path = self.object_path(sha)
        try:
            fd = _fs.open_regular(path, "object")
        except FileNotFoundError:
            return "is missing", 0
        except BackupError as exc:
            return f"is unusable ({str(exc).removeprefix(f'object {path} ')})", 0
        except OSError as exc:
            return f"cannot be read ({_reason(exc)})", 0
        try:
            actual = os.fstat(fd).st_size
            if actual != size:
                word = "truncated" if actual < size else "too long"
                return f"is {word}: {actual} bytes, the manifest says {size}", 0
            _fs.advise_sequential(fd)
            digest, hashed = _fs.stream(_fs.fd_reader(fd), size_hint=size)
        except OSError as exc:
            return f"cannot be read ({_reason(exc)})", 0
        finally:
            os.close(fd)
        if digest != sha:
            return f"is corrupt: its content hashes to {digest[:12]}..., not its name (altered or flipped bytes)", hashed
        return None, hashed

    # Creating ---------------------------------------------------------------------------

    def create(
        self,
        files: Iterable[SourceFile],
        *,
        sources: Mapping,
        backup_id: str | None = None,
        created_at: datetime | None = None,
        use_stat_cache: bool = False,
    ) -> CreateResult:
        """Store each file's content once (by SHA-256), then the file-list and checksum-list objects,
        then the sidecar, then the manifest, last.

        `use_stat_cache`: skip reading sources whose (device, inode, size, mtime, ctime) match the
        previous run's and whose object is present (statcache.py explains the trade-off).
        """
        started = time.monotonic()
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
        # Validates the paths as a tree and the sources as JSON before anything is written.
        Manifest(backup_id, created_at, (), sources)
        Manifest(backup_id, created_at, tuple(FileEntry(f.path, 0, "0" * 64, f.mode) for f in files), {})

        with self.lock():
            try:
                self._ensure_layout()
                self.cleanup_staging()
            except OSError as exc:
                raise BackupError(f"{self.root}: cannot prepare backup {backup_id}: {_reason(exc)}") from None
            while auto_id and self.manifest_path(backup_id).exists():
                backup_id = new_backup_id(created_at)
            if self.manifest_path(backup_id).exists():
                raise BackupError(f"backup {backup_id} already exists in {self.root}")
            hints = self._latest_hints()
            cache = StatCache(self.root / "cache" / "stat-cache.json") if use_stat_cache else None
            added: list[Path] = []
            written: list[Path] = []
            try:
                with _fs.StagingRun(self.staging_dir) as run:
                    entries, stored, read = [], 0, 0
                    for index, item in enumerate(files):
                        entry, new_bytes, was_read = self._store(item, run, index, hints, cache, added)
                        entries.append(entry)
                        stored += new_bytes
                        read += was_read
                        _fs.hook("object", index=index, path=item.path)
                    manifest = Manifest(backup_id, created_at, tuple(entries), sources)
                    if self._key is not None:
                        manifest = sign(manifest, self._key)
                    self._put_metadata_object(manifest.files_object, manifest.file_list_bytes(), run, added)
                    _fs.hook("file-list")
                    self._put_metadata_object(manifest.checksums_object, manifest.checksum_list_bytes(), run, added)
                    _fs.hook("checksum-list")
                    data = manifest.to_json()
                    manifest_sha = hashlib.sha256(data).hexdigest()
                    written.append(self.sidecar_path(backup_id))
                    _fs.atomic_write(self.sidecar_path(backup_id), sidecar_text(manifest, manifest_sha), run.dir)
                    _fs.hook("sidecar")
                    written.append(self.manifest_path(backup_id))
                    _fs.atomic_write(self.manifest_path(backup_id), data, run.dir)
                    written.clear()
                    added.clear()
                    _fs.hook("manifest")
                    if cache is not None:
                        try:
                            cache.save(run.dir)
                        except OSError:
                            pass  # only a cache
            except OSError as exc:
                self._undo(added, written)
                where = f" ({exc.filename})" if exc.filename else ""
                raise BackupError(
                    f"{self.root}: cannot write backup {backup_id}: {_reason(exc)}{where}; no backup was made"
                ) from None
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
        )

    def _undo(self, added: list[Path], written: list[Path]) -> None:
        """After a failed create/import: remove the sidecar/manifest and the objects this run added."""
        for path in reversed(written):
            path.unlink(missing_ok=True)
        for path in added:
            path.unlink(missing_ok=True)
            try:
                path.parent.rmdir()  # only when empty
            except OSError:
                pass

    def _latest_hints(self) -> dict[str, tuple[int, str]]:
        """path -> (size, sha256) from the newest backup: which files to hash before copying."""
        for backup_id in reversed(self.backup_ids()):
            try:
                header = ManifestHeader.from_json(self._read_manifest_bytes(backup_id))
                file_list, _ = self._read_metadata_object(header.files_object)
                if file_list is None:
                    continue
                files = decode_file_list(file_list)
            except BackupError:
                continue
            return {entry.path: (entry.size, entry.sha256) for entry in files}
        return {}

    def _put_metadata_object(self, sha: str, payload: bytes, run: _fs.StagingRun, added: list[Path]) -> None:
        """Store a file-list or checksum-list object (unless the same bytes are there already:
        unchanged backups share it; a damaged copy is replaced)."""
        target = self.object_path(sha)
        try:
            if self._read_object_bytes(sha) == payload:
                return
            existed = True
        except (OSError, BackupError):
            existed = os.path.lexists(target)
        tmp = run.dir / f"metadata-{sha}"
        _fs.write_file(tmp, payload, 0o444)
        _fs.mkdirs(target.parent, self.objects_dir)
        os.replace(tmp, target)
        if not existed:
            added.append(target)  # a repaired copy stays even if this run fails later
        _fs.fsync_dir(target.parent)

    def _object_present(self, sha: str, size: int) -> bool:
        try:
            st = os.lstat(self.object_path(sha))
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    def _store(
        self,
        item: SourceFile,
        run: _fs.StagingRun,
        index: int,
        hints: Mapping[str, tuple[int, str]],
        cache: StatCache | None,
        added: list[Path],
    ) -> tuple[FileEntry, int, int]:
        """(entry, new bytes stored, 1 if the source was read)."""
        what = f"backup source for {item.path!r}:"
        try:
            fd = _fs.open_regular(Path(item.source), what)
        except FileNotFoundError:
            raise BackupError(f"{what} {item.source} does not exist") from None
        except OSError as exc:
            raise BackupError(f"{what} cannot open {item.source}: {_reason(exc)}") from None
        try:
            before = os.fstat(fd)
            if cache is not None:
                sha = cache.lookup(Path(item.source), before)
                if sha is not None and self._object_present(sha, before.st_size):
                    cache.keep(Path(item.source), before, sha)
                    return FileEntry(item.path, before.st_size, sha, item.mode), 0, 0
            started_ns = time.time_ns()
            _fs.advise_sequential(fd)
            hint = hints.get(item.path)
            if hint is not None and hint[0] == before.st_size and self._object_present(hint[1], hint[0]):
                # Probably unchanged: hash first, and copy only if the content is new after all.
                try:
                    sha, size = _fs.stream(_fs.fd_reader(fd), size_hint=before.st_size)
                except OSError as exc:
                    raise BackupError(f"{what} cannot read {item.source}: {_reason(exc)}") from None
                if self._object_present(sha, size):
                    if cache is not None:
                        cache.record(Path(item.source), before, os.fstat(fd), sha, started_ns)
                    return FileEntry(item.path, size, sha, item.mode), 0, 1
                os.lseek(fd, 0, os.SEEK_SET)
            tmp = run.dir / f"object-{index}"
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
            try:
                try:
                    sha, size = _fs.stream(_fs.fd_reader(fd), out, size_hint=before.st_size)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                        raise
                    raise BackupError(f"{what} cannot read {item.source}: {_reason(exc)}") from None
                os.fsync(out)
            finally:
                os.close(out)
            if cache is not None:
                cache.record(Path(item.source), before, os.fstat(fd), sha, started_ns)
        finally:
            os.close(fd)
        entry = FileEntry(item.path, size, sha, item.mode)
        if self._object_present(sha, size):
            tmp.unlink()
            return entry, 0, 1
        target = self.object_path(sha)
        existed = os.path.lexists(target)
        _fs.mkdirs(target.parent, self.objects_dir)
        os.replace(tmp, target)  # also replaces a truncated or corrupt copy of the same content
        if not existed:
            added.append(target)  # a repaired copy stays even if this run fails later
        _fs.fsync_dir(target.parent)
        return entry, size, 1

    # Restoring --------------------------------------------------------------------------

    def restore(self, backup_id: str, target: Path) -> Manifest:
        """Verify, then write the tree into a staging directory next to `target`, fsync, rename.

        `target` must not exist or be an empty directory. On any problem nothing appears at
        `target` and the staging directory is removed.
        """
        target = Path(target)
        with self.lock():
            try:
                self._ensure_layout()
                self.cleanup_staging()
            except OSError as exc:
                raise BackupError(f"{self.root}: cannot prepare the restore: {_reason(exc)}") from None
            _check_restore_target(target)
            try:
                report, manifest = self._verify(backup_id)
            except UnsafePathError as exc:
                raise UnsafePathError(f"{exc}; nothing was written") from None
            if not report.ok or manifest is None:
                raise IntegrityError(
                    summarize(f"backup {backup_id} cannot be restored, nothing was written", report.problems),
                    report.problems,
                )
            try:
                _fs.mkdirs(target.parent.absolute(), Path("/"))
                with _fs.StagingRun(self.staging_dir) as run:
                    stage = target.parent / f".{target.name}.restore-{run.name}"
                    run.record_external(stage)
                    try:
                        self._write_tree(manifest, stage)
                        _fs.hook("restore-before-rename")
                        os.rename(stage, target)
                    except BaseException:
                        _fs.remove_tree(stage)
                        raise
                    _fs.fsync_dir(target.parent)
                    _fs.hook("restore-renamed")
            except OSError as exc:
                raise BackupError(
                    f"{target}: cannot restore backup {backup_id}: {_reason(exc)}; nothing was written"
                ) from None
        return manifest

    def _write_tree(self, manifest: Manifest, stage: Path) -> None:
        os.mkdir(stage, 0o755)
        directories = {stage}
        for index, entry in enumerate(manifest.files):
            destination = stage / entry.path
            parent = destination.parent
            if parent not in directories:
                parent.mkdir(parents=True, exist_ok=True)
                p = parent
                while p != stage:
                    directories.add(p)
                    p = p.parent
            src = _fs.open_regular(self.object_path(entry.sha256), "object")
            try:
                out = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    _fs.advise_sequential(src)
                    sha, size = _fs.stream(_fs.fd_reader(src), out, size_hint=entry.size)
                    os.fchmod(out, entry.mode)
                    os.fsync(out)
                finally:
                    os.close(out)
            finally:
                os.close(src)
            if sha != entry.sha256 or size != entry.size:
                raise IntegrityError(
                    f"backup {manifest.backup_id}: object {object_relpath(entry.sha256)} changed during the restore "
                    f"({entry.path}); nothing was written"
                )
            _fs.hook("restore-file", index=index, path=entry.path)
        for directory in sorted(directories, key=lambda p: len(p.parts), reverse=True):
            _fs.fsync_dir(directory)

    # Export / import (archive.py) --------------------------------------------------------------

    def export(self, backup_id: str, out: Path) -> Path:
        """One portable tar (manifest, sidecar, objects) + `<out>.sha256`; returns the archive's path."""
        from .archive import export_backup

        return export_backup(self, backup_id, Path(out))

    def import_archive(self, archive: Path) -> Manifest:
        """Check the archive (and its `.sha256` sidecar when present), then add it, manifest last."""
        from .archive import import_backup

        return import_backup(self, Path(archive))

    # Deleting ---------------------------------------------------------------------------

    def delete(self, backup_id: str) -> None:
        """Remove the manifest (first: the backup stops existing) and its sidecar; objects stay until gc."""
        check_backup_id(backup_id)
        with self.lock():
            path = self.manifest_path(backup_id)
            if not path.exists() and not path.is_symlink():
                raise UnknownBackupError(f"backup {backup_id}: no such backup in {self.root}")
            try:
                path.unlink()
                _fs.fsync_dir(path.parent)
                self.sidecar_path(backup_id).unlink(missing_ok=True)
                _fs.fsync_dir(path.parent)
            except OSError as exc:
                raise BackupError(f"backup {backup_id}: cannot delete {path}: {_reason(exc)}") from None

    def referenced_objects(self) -> set[str]:
        """SHA-256s of the objects the backups need: each one's file-list and checksum-list objects
        and the data objects those name. For a manifest that does not parse, its sidecar names the
        two metadata objects; when the file list cannot be read, the checksum list names the data
        objects (and the other way round). Refuses (BackupError) when a backup's references cannot
        be told at all."""
        referenced: set[str] = set()
        for backup_id in self.backup_ids():
            referenced |= self._references(backup_id)
        return referenced

    def _references(self, backup_id: str) -> set[str]:
        metadata: list[str] = []
        try:
            header = ManifestHeader.from_json(self._read_manifest_bytes(backup_id))
            metadata = [header.files_object, header.checksums_object]
        except (BackupError, OSError):
            sidecar = self._read_sidecar(backup_id)
            if sidecar is None:
                raise BackupError(
                    f"backup {backup_id}: neither its manifest nor its sidecar can be read; refusing to collect "
                    "garbage (fix or delete that backup first)"
                ) from None
            for line in sidecar.decode("ascii", "replace").splitlines():
                match = _SIDECAR_LINE.fullmatch(line)
                if match and match.group(2).startswith("objects/"):
                    metadata.append(match.group(1))
        referenced = set(metadata)
        known = False
        for sha in metadata:
            try:
                listed = _listed_objects(self._read_object_bytes(sha))
            except (OSError, BackupError):
                continue
            if listed is not None:
                referenced |= listed
                known = True
        if not known:
            raise BackupError(
                f"backup {backup_id}: neither its file list nor its checksum list can be read; refusing to collect "
                "garbage (fix or delete that backup first)"
            )
        return referenced

    def gc(self, *, dry_run: bool = False) -> GcResult:
        """Remove (or, dry run, list) objects that no manifest references."""
        result = GcResult()
        with self.lock():
            if not dry_run:
                self.cleanup_staging()
            referenced = self.referenced_objects()
            for sha, path in self._iter_objects():
                if sha in referenced:
                    continue
                try:
                    size = path.lstat().st_size
                    if not dry_run:
                        path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise BackupError(f"{path}: cannot remove unreferenced object: {_reason(exc)}") from None
                result.removed.append(object_relpath(sha))
                result.freed_bytes += size
            if not dry_run:
                for prefix in sorted({self.root / rel.rsplit("/", 1)[0] for rel in result.removed}):
                    try:
                        prefix.rmdir()  # only when empty
                    except OSError:
                        pass
        return result

    def _iter_objects(self) -> Iterator[tuple[str, Path]]:
        try:
            prefixes = sorted(os.listdir(self.objects_dir))
        except FileNotFoundError:
            return
        for prefix in prefixes:
            directory = self.objects_dir / prefix
            if not re.fullmatch(r"[0-9a-f]{2}", prefix) or not directory.is_dir():
                continue
            for name in sorted(os.listdir(directory)):
                if is_sha256(name) and name.startswith(prefix):
                    yield name, directory / name

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
        """Bytes on disk under root (allocated blocks), for reports and the dedup test."""
        total = 0
        for directory, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                try:
                    total += os.lstat(os.path.join(directory, name)).st_blocks * 512
                except OSError:
                    pass
        return total


def _listed_objects(data: bytes) -> set[str] | None:
    """The data objects a file list or a checksum list names (read leniently: for gc, naming too
    much is safe), or None if `data` is neither."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        document = None
    if isinstance(document, list):
        return {item["sha256"] for item in document if isinstance(item, dict) and is_sha256(item.get("sha256"))}
    found: set[str] = set()
    recognised = not data
    for line in data.decode("ascii", "replace").splitlines():
        match = _SIDECAR_LINE.fullmatch(line)
        if match and match.group(2) == object_relpath(match.group(1)):
            found.add(match.group(1))
            recognised = True
    return found if recognised else None


def _group_by_object(files: Iterable[FileEntry]) -> dict[str, list[FileEntry]]:
    groups: dict[str, list[FileEntry]] = {}
    for entry in files:
        groups.setdefault(entry.sha256, []).append(entry)
    return groups


def _name_files(entries: list[FileEntry]) -> str:
    more = f" (+{len(entries) - 1} more files)" if len(entries) > 1 else ""
    return f"{entries[0].path}{more}"


def _check_restore_target(target: Path) -> None:
    if target.is_symlink():
        raise UnsafePathError(f"{target}: restore target is a symlink; refusing to restore through it")
    if target.exists():
        if not target.is_dir():
            raise BackupError(f"{target}: restore target exists and is not a directory; refusing to overwrite it")
        if any(target.iterdir()):
            raise BackupError(f"{target}: restore target is not empty; refusing to overwrite it")
