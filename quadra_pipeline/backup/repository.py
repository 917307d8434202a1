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

Creating a backup lives in creation.py, checking stored data in verification.py, restoring in
restore.py, deleting and garbage collection in deletion.py, export and import in archive.py.

New backups are format 3 (format3.py); format-2 backups (format2.py) stay listable, verifiable
and restorable. Pure Python, no Dagster, no SQL: the Dagster assets and `quadra backup` build on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Union

from ..keys import Keyring, KeyPair
from . import _fs, format2, format3
from .chunks import ChunkStore
from .creation import CreateResult, SourceFile, SourceStream, create_backup
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
from .names import check_backup_id, object_relpath
from .signatures import SignaturePolicy, signer
from .verification import Memo, Read, VerifyReport, verify_chunks, verify_objects

#: `signers()`'s names for what no Ed25519 key id signed.
UNSIGNED, FORMAT2_HMAC, UNREADABLE = "unsigned", "format 2 (HMAC with QUADRA_SECRET_KEY)", "unreadable"
MAX_MANIFEST_BYTES = format2.MAX_METADATA_BYTES  # also the limit for a file-list object
AnyManifest = Union[format2.Manifest, format3.Manifest]


class BackupRepository:
    def __init__(
        self,
        root: Path,
        *,
        keys: KeyPair | None = None,
        keyring: Keyring | None = None,
        hmac_key: str | bytes | None = None,
        require_signature: bool = False,
    ) -> None:
        """`keys` signs new backups (its public key verifies); `keyring` adds the public keys of
        retired signing keys, so what they signed still verifies. `require_signature`
        (production): nothing unsigned or unchecked is accepted, and writing needs the signing
        key (refused when a backup is created or pruned, not here: a host that only verifies
        or restores holds no private key)."""
        self.root = Path(root)
        key = hmac_key.encode("utf-8") if isinstance(hmac_key, str) else hmac_key
        self.policy = SignaturePolicy(keys=keys, hmac_key=bytes(key) if key else None, required=require_signature,
                                      keyring=keyring)
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

    def signers(self) -> dict[str, list[str]]:
        """Who each backup and history document claims as its signer: key id -> backup ids (and
        `head.json`, `history/<record>`); `UNSIGNED`, `FORMAT2_HMAC` and `UNREADABLE` for the
        rest. Claims, not checks (`verify` checks): for `quadra backup keys`."""
        found: dict[str, list[str]] = {}
        for backup_id in self.backup_ids():
            try:
                document = json.loads(self._read_manifest_bytes(backup_id))
            except (BackupError, OSError, ValueError):
                document = None
            if not isinstance(document, dict):
                key = UNREADABLE
            elif document.get("format_version") == format2.FORMAT_VERSION:
                key = FORMAT2_HMAC if document.get("signature") else UNSIGNED
            else:
                key = signer(document) or UNSIGNED
            found.setdefault(key, []).append(backup_id)
        for name, document in self.history.documents():
            key = UNREADABLE if not isinstance(document, dict) else signer(document) or UNSIGNED
            found.setdefault(key, []).append(name)
        return found

    def history_problems(self) -> list[str]:
        """What is wrong with the history (chain, head, records): rollbacks, deletions, replays."""
        problems, _ = self.history.check(self._format3_headers())
        return problems

    # Verification -----------------------------------------------------------------------

    def verify(self, backup_id: str, *, read: Read = "all", memo: Memo | None = None) -> VerifyReport:
        """Check one backup: its manifest, signature, sidecar and file list, and every chunk it
        names: present with the right size; re-read and re-hashed with `read="all"`, or those in
        the given set (`"none"`: none). Format-2 backups re-hash every object (but with "none").
        `memo`, shared by the backups of one run, checks each chunk once. (The history the
        backups form is checked once for all: `history_problems`.)"""
        try:
            report, _ = self._verify(backup_id, read, memo)
        except UnsafePathError as exc:
            return VerifyReport(backup_id, False, [str(exc)], 0, 0)
        return report

    def _verify(self, backup_id: str, read: Read, memo: Memo | None = None) -> tuple[VerifyReport, AnyManifest | None]:
        data = self._read_manifest_bytes(backup_id)
        manifest, problems = self._check_manifest(backup_id, data, self._read_sidecar(backup_id))
        if isinstance(manifest, format2.Manifest):
            report = verify_objects(self, manifest, problems, rehash=read == "all", memo=memo)
        else:
            report = verify_chunks(self, backup_id, manifest, problems, read, memo)
        if report.problems and not self.manifest_path(backup_id).exists():
            # verify takes no lock (it may run beside a backup): a concurrent delete + gc is not damage
            raise UnknownBackupError(f"backup {backup_id}: deleted while it was being verified")
        return report, manifest

    # Creating (creation.py) ------------------------------------------------------------------

    def create(
        self,
        files: Iterable[SourceFile | SourceStream],
        *,
        sources: Mapping,
        backup_id: str | None = None,
        created_at: datetime | None = None,
        use_stat_cache: bool = False,
    ) -> CreateResult:
        """A format-3 backup of `files`, recorded with `sources` (creation.py: each source read
        once, only new chunks written, the head last; on any failure nothing is added).
        `use_stat_cache` skips files the stat cache says are unchanged (statcache.py)."""
        return create_backup(
            self, files, sources=sources, backup_id=backup_id, created_at=created_at, use_stat_cache=use_stat_cache
        )

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

