"""Export one backup as a portable tar archive, and import such an archive.

The archive holds the repository layout of that one backup, so extracting it anywhere gives a
directory where `sha256sum -c manifests/<id>.sha256` passes (and the checks of
docs/BACKUP_FORMAT.md work):

    manifests/<id>.json
    manifests/<id>.sha256
    objects/ab/<sha256>   the file-list object (format 2: then the checksum-list object)
    chunks/ab/<sha256>    format 3: each chunk the file list names, once (sorted), as stored
    objects/ab/<sha256>   format 2: each data object the file list names, once (sorted)

Members are plain files (POSIX pax format; mode 0644/0444, uid/gid 0, mtime = the backup's time,
so exporting the same backup twice gives the same bytes). Next to the archive, `<archive>.sha256`
holds its SHA-256 in `sha256sum` format with the archive's *base name*, so
`cd DIR && sha256sum -c x.tar.sha256` works wherever the pair is copied.

Import checks the sidecar (when present) before parsing anything, accepts only the members
above (an absolute path, `..`, a symlink, a hard link or a device is an `UnsafePathError`),
re-hashes every object and chunk while copying it into staging, checks the manifest (name,
signature, sidecar), its metadata objects (present, hash to their names, agree with the
manifest) and that every chunk or object the file list names arrived with the right size, and
only then adds the data (deduplicated), the metadata objects and, last, the sidecar and the
manifest. A format-3 backup is recorded in the history as `imported` (its predecessors are not
here) and becomes the head of a repository that had none.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from . import _fs, format2, format3
from .chunks import chunk_relpath, decode
from .errors import BackupError, IntegrityError, UnsafePathError, os_reason, summarize
from .history import Entry
from .names import check_backup_id, object_relpath
from .repository import MAX_MANIFEST_BYTES, AnyManifest

if TYPE_CHECKING:
    from .repository import BackupRepository

_MANIFEST_MEMBER = re.compile(r"manifests/([^/]+)\.json")
_SIDECAR_MEMBER = re.compile(r"manifests/([^/]+)\.sha256")
_OBJECT_MEMBER = re.compile(r"objects/([0-9a-f]{2})/([0-9a-f]{64})")
_CHUNK_MEMBER = re.compile(r"chunks/([0-9a-f]{2})/([0-9a-f]{64})")
_DIR_MEMBER = re.compile(r"manifests|objects|objects/[0-9a-f]{2}|chunks|chunks/[0-9a-f]{2}")
_ARCHIVE_SIDECAR = re.compile(r"([0-9a-f]{64}) [ *](.+)")


# Export -----------------------------------------------------------------------------------


class _ArchiveWriter:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.digest = hashlib.sha256()
        self.offset = 0

    def write(self, view: memoryview | bytes) -> None:
        view = memoryview(view)
        self.digest.update(view)
        _fs.write_all(self.fd, view)
        self.offset += len(view)

    def member(self, name: str, size: int, mtime: int, mode: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.type = size, mtime, mode, tarfile.REGTYPE
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def pad(self, size: int) -> None:
        remainder = size % tarfile.BLOCKSIZE
        if remainder:
            self.write(bytes(tarfile.BLOCKSIZE - remainder))

    def close(self) -> None:
        self.write(bytes(2 * tarfile.BLOCKSIZE))
        remainder = self.offset % tarfile.RECORDSIZE
        if remainder:
            self.write(bytes(tarfile.RECORDSIZE - remainder))


def export_backup(repo: BackupRepository, backup_id: str, out: Path) -> Path:
    check_backup_id(backup_id)
    if out.is_dir() and not out.is_symlink():
        out = out / f"{backup_id}.tar"
    if "\n" in out.name or "\\" in out.name:
        raise BackupError(f"{out}: an archive name must not contain a newline or a backslash (sha256sum would escape it)")
    sidecar = out.with_name(out.name + ".sha256")
    for path in (out, sidecar):
        if path.exists() or path.is_symlink():
            raise BackupError(f"{path}: already exists; refusing to overwrite it")
    data = repo._read_manifest_bytes(backup_id)
    side = repo._read_sidecar(backup_id)
    manifest, problems = repo._check_manifest(backup_id, data, side)
    if problems or manifest is None or side is None:
        raise IntegrityError(summarize(f"backup {backup_id} cannot be exported, nothing was written", problems), problems)
    mtime = int(manifest.created_at.timestamp())
    with contextlib.ExitStack() as stack:
        run_name = os.urandom(6).hex()
        try:
            run = stack.enter_context(_fs.StagingRun(repo.staging_dir))
            run_name = run.name
        except OSError:
            run = None  # a read-only repository can still be exported; a killed export then leaves its temp file
        try:
            _fs.mkdirs(out.parent.absolute(), Path("/"))
            tmp = out.parent / f".{out.name}.{run_name}.tmp"
            if run is not None:
                run.record_external(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BackupError(f"{out}: cannot write the archive: {os_reason(exc)}") from None
        try:
            try:
                writer = _ArchiveWriter(fd)
                for name, payload in ((f"manifests/{backup_id}.json", data), (f"manifests/{backup_id}.sha256", side)):
                    writer.member(name, len(payload), mtime, 0o644)
                    writer.write(payload)
                    writer.pad(len(payload))
                # The metadata objects, as checked above (equal SHA-256s: the same bytes as stored).
                if isinstance(manifest, format2.Manifest):
                    metadata = {
                        manifest.files_object: manifest.file_list_bytes(),
                        manifest.checksums_object: manifest.checksum_list_bytes(),
                    }
                else:
                    metadata = {manifest.header.files_object: manifest.file_list_bytes}
                for sha, payload in metadata.items():
                    writer.member(object_relpath(sha), len(payload), mtime, 0o444)
                    writer.write(payload)
                    writer.pad(len(payload))
                buffer = memoryview(bytearray(_fs.CHUNK))
                if isinstance(manifest, format2.Manifest):
                    for sha, entries in sorted(format2.group_by_object(manifest.files).items()):
                        if sha not in metadata:  # (a file whose content is a metadata object: already there)
                            _export_object(repo, writer, buffer, repo.object_path(sha), object_relpath(sha), sha,
                                           entries[0].size, entries[0].path, mtime, backup_id)
                else:
                    for sha, (_, stored) in sorted(manifest.chunks.items()):
                        _export_object(repo, writer, buffer, repo.chunks.path(sha), chunk_relpath(sha), sha,
                                       stored, "a chunk", mtime, backup_id)
                writer.close()
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, out)
            _fs.fsync_dir(out.parent)
            _fs.atomic_write(sidecar, f"{writer.digest.hexdigest()}  {out.name}\n".encode("utf-8"))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise BackupError(f"{out}: cannot write the archive: {os_reason(exc)}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return out


def _export_object(
    repo: BackupRepository,
    writer: _ArchiveWriter,
    buffer: memoryview,
    source: Path,
    rel: str,
    sha: str,
    size: int,
    path: str,
    mtime: int,
    backup_id: str,
) -> None:
    """One stored object or chunk into the archive, byte for byte (checked: an object's bytes
    hash to its name; a chunk's decode to content that does)."""
    chunk = rel.startswith("chunks/")

    def refuse(problem: str) -> IntegrityError:
        line = f"{path}: {'chunk' if chunk else 'object'} {rel} {problem}"
        return IntegrityError(summarize(f"backup {backup_id} cannot be exported, nothing was written", [line]), [line])

    try:
        src = _fs.open_regular(source, "object")
    except FileNotFoundError:
        raise refuse("is missing") from None
    except BackupError as exc:
        raise refuse(f"is unusable ({exc})") from None
    try:
        actual = os.fstat(src).st_size
        if actual != size:
            raise refuse(f"is {'truncated' if actual < size else 'too long'}: {actual} bytes, the manifest says {size}")
        _fs.advise_sequential(src)
        writer.member(rel, size, mtime, 0o444)
        digest = hashlib.sha256()
        kept = bytearray() if chunk else None
        remaining = size
        while remaining:
            n = os.readv(src, [buffer[: min(remaining, len(buffer))]])
            if not n:
                raise refuse(f"shrank while being exported ({size - remaining} of {size} bytes)")
            view = buffer[:n]
            if kept is None:
                digest.update(view)
            else:
                kept += view
            writer.write(view)
            remaining -= n
        writer.pad(size)
    finally:
        os.close(src)
    if kept is not None:
        try:
            digest.update(decode(bytes(kept), -1, rel))
        except BackupError as exc:
            raise refuse(f"is corrupt ({exc})") from None
    if digest.hexdigest() != sha:
        raise refuse("is corrupt: its content does not match its name (altered or flipped bytes)")
    _fs.hook("export-object", sha=sha)


# Import -----------------------------------------------------------------------------------


def _archive_sidecar_sha(archive: Path) -> str | None:
    sidecar = archive.with_name(archive.name + ".sha256")
    try:
        text = sidecar.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{sidecar}: cannot read the archive's checksum sidecar ({exc})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    match = _ARCHIVE_SIDECAR.fullmatch(lines[0]) if len(lines) == 1 else None
    if match is None:
        raise IntegrityError(f"{sidecar}: not a one-line sha256sum file ('<sha256>  {archive.name}')")
    return match.group(1)


def _check_member(member: tarfile.TarInfo, archive: Path) -> str:
    """'manifest' | 'sidecar' | 'object' | 'chunk' | 'dir', or an error naming the member and the problem."""
    name = member.name
    parts = name.split("/")
    if name.startswith("/") or re.match(r"[A-Za-z]:[\\/]", name):
        raise UnsafePathError(f"{archive}: member {name!r} has an absolute path; refusing the archive")
    if ".." in parts or ".." in name.split("\\"):
        raise UnsafePathError(f"{archive}: member {name!r} contains '..'; refusing the archive")
    if member.issym():
        raise UnsafePathError(f"{archive}: member {name!r} is a symlink (to {member.linkname!r}); refusing the archive")
    if member.islnk():
        raise UnsafePathError(f"{archive}: member {name!r} is a hard link (to {member.linkname!r}); refusing the archive")
    if member.ischr() or member.isblk():
        raise UnsafePathError(f"{archive}: member {name!r} is a device; refusing the archive")
    if member.isdir():
        if _DIR_MEMBER.fullmatch(name.rstrip("/")):
            return "dir"
        raise BackupError(f"{archive}: unexpected directory {name!r} (not a backup archive?)")
    if not member.isreg():
        raise UnsafePathError(f"{archive}: member {name!r} is not a regular file (type {member.type!r}); refusing the archive")
    if _MANIFEST_MEMBER.fullmatch(name):
        return "manifest"
    if _SIDECAR_MEMBER.fullmatch(name):
        return "sidecar"
    match = _OBJECT_MEMBER.fullmatch(name)
    if match and match.group(2).startswith(match.group(1)):
        return "object"
    match = _CHUNK_MEMBER.fullmatch(name)
    if match and match.group(2).startswith(match.group(1)):
        return "chunk"
    raise BackupError(f"{archive}: unexpected member {name!r} (a backup archive holds manifests/, objects/ and chunks/ only)")


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> bytes:
    if member.size > MAX_MANIFEST_BYTES:
        raise IntegrityError(f"{archive}: member {member.name!r} is too large for a manifest ({member.size} bytes)")
    handle = tar.extractfile(member)
    assert handle is not None
    data = handle.read()
    if len(data) != member.size:
        raise IntegrityError(f"{archive}: member {member.name!r} is truncated")
    return data


def import_backup(repo: BackupRepository, archive: Path) -> AnyManifest:
    try:
        fd = _fs.open_regular(archive, "archive")
    except FileNotFoundError:
        raise BackupError(f"{archive}: no such archive") from None
    except OSError as exc:
        raise BackupError(f"{archive}: cannot read the archive: {os_reason(exc)}") from None
    with os.fdopen(fd, "rb", buffering=0) as handle:
        expected = _archive_sidecar_sha(archive)
        if expected is not None:
            _fs.advise_sequential(handle.fileno())
            actual, _ = _fs.stream(_fs.fd_reader(handle.fileno()))
            if actual != expected:
                problem = f"{archive}: does not match its sidecar {archive.name}.sha256 (archive corrupt or altered)"
                raise IntegrityError(problem + "; nothing was imported", [problem])
            handle.seek(0)
        with repo.lock():
            try:
                repo._ensure_layout()
                repo.cleanup_staging()
            except OSError as exc:
                raise BackupError(f"{repo.root}: cannot prepare the import of {archive}: {os_reason(exc)}") from None
            added: list[Path] = []
            written: list[Path] = []
            try:
                with _fs.StagingRun(repo.staging_dir) as run:
                    manifest = _import_staged(repo, archive, handle, run, added, written)
            except OSError as exc:
                repo._undo(added, written)
                raise BackupError(f"{repo.root}: cannot import {archive}: {os_reason(exc)}; nothing was added") from None
            except BaseException:
                repo._undo(added, written)
                raise
    return manifest


def _import_staged(repo: BackupRepository, archive: Path, handle, run: _fs.StagingRun, added: list[Path], written: list[Path]) -> AnyManifest:
    manifest_data: bytes | None = None
    sidecar_data: bytes | None = None
    manifest_id = sidecar_id = None
    staged: dict[str, tuple[Path, int]] = {}  # objects/ members
    staged_chunks: dict[str, tuple[Path, int]] = {}  # chunks/ members
    damaged: set[str] = set()  # objects or chunks that arrived corrupt or truncated (already a problem)
    problems: list[str] = []
    try:
        tar = tarfile.open(fileobj=handle, mode="r:", copybufsize=_fs.CHUNK)
    except (tarfile.TarError, EOFError) as exc:
        raise IntegrityError(f"{archive}: not a readable backup archive ({exc})") from None
    seen: set[str] = set()
    try:
        with tar:
            for member in tar:
                kind = _check_member(member, archive)
                if kind == "dir":
                    continue
                if member.name in seen:
                    raise IntegrityError(f"{archive}: member {member.name!r} appears twice")
                seen.add(member.name)
                if kind == "manifest":
                    if manifest_data is not None:
                        raise IntegrityError(f"{archive}: holds more than one manifest")
                    manifest_id = _MANIFEST_MEMBER.fullmatch(member.name).group(1)
                    manifest_data = _read_small(tar, member, archive)
                elif kind == "sidecar":
                    if sidecar_data is not None:
                        raise IntegrityError(f"{archive}: holds more than one checksum sidecar")
                    sidecar_id = _SIDECAR_MEMBER.fullmatch(member.name).group(1)
                    sidecar_data = _read_small(tar, member, archive)
                else:
                    sha = member.name.rsplit("/", 1)[1]
                    source = tar.extractfile(member)
                    assert source is not None
                    tmp = run.dir / f"{kind}-{len(staged) + len(staged_chunks)}-{len(problems)}"
                    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
                    try:
                        digest, size = _fs.stream(source.readinto, out, size_hint=member.size)
                        os.fsync(out)
                    finally:
                        os.close(out)
                    if kind == "chunk" and size == member.size:
                        try:
                            digest = hashlib.sha256(decode(tmp.read_bytes(), -1, member.name)).hexdigest()
                        except BackupError:
                            digest = "not a readable chunk"
                    if size != member.size:
                        problems.append(f"{member.name} is truncated: {size} of {member.size} bytes")
                        damaged.add(sha)
                    elif digest != sha:
                        problems.append(f"{member.name} is corrupt: its content hashes to {digest[:12]}..., not its name")
                        damaged.add(sha)
                    else:
                        (staged if kind == "object" else staged_chunks)[sha] = (tmp, size)
                    _fs.hook("import-object", sha=sha)
    except (tarfile.TarError, EOFError) as exc:
        raise IntegrityError(f"{archive}: not a readable backup archive (truncated or corrupt: {exc})") from None

    if manifest_data is None or manifest_id is None:
        raise IntegrityError(f"{archive}: holds no manifest (manifests/<id>.json); not a backup archive")
    try:
        check_backup_id(manifest_id)
    except BackupError as exc:
        raise IntegrityError(f"{archive}: {exc}") from None
    if sidecar_id is not None and sidecar_id != manifest_id:
        problems.append(f"the archive's sidecar is for backup {sidecar_id!r}, its manifest for {manifest_id!r}")
        sidecar_data = None

    def load(sha: str) -> tuple[bytes | None, str | None]:
        """A metadata object from staging (hashed against its name on the way in)."""
        if sha in damaged:
            return None, None  # the problem is listed already
        if sha not in staged:
            return None, "is missing from the archive"
        tmp, size = staged[sha]
        if size > MAX_MANIFEST_BYTES:
            return None, f"is larger than {MAX_MANIFEST_BYTES} bytes"
        return tmp.read_bytes(), None

    try:
        manifest, manifest_problems = repo._check_manifest(manifest_id, manifest_data, sidecar_data, load)
    except UnsafePathError as exc:
        raise UnsafePathError(f"{archive}: {exc}") from None
    problems = manifest_problems + problems
    metadata: list[str] = []
    if isinstance(manifest, format2.Manifest):
        metadata = manifest.metadata_object_ids
        groups = format2.group_by_object(manifest.files)
        for sha, entries in groups.items():
            if sha not in staged:
                if not any(p.startswith(object_relpath(sha)) for p in problems):
                    problems.append(f"{entries[0].path}: object {object_relpath(sha)} is missing from the archive")
            elif staged[sha][1] != entries[0].size:
                problems.append(
                    f"{entries[0].path}: object {object_relpath(sha)} has {staged[sha][1]} bytes, the manifest says {entries[0].size}"
                )
        for sha in sorted(set(staged) - set(groups) - set(metadata)):
            problems.append(f"{object_relpath(sha)} is in the archive but the manifest does not name it")
        for sha in sorted(staged_chunks):
            problems.append(f"{chunk_relpath(sha)} is in the archive but a format-2 backup has no chunks")
    elif manifest is not None:
        metadata = [manifest.header.files_object]
        needed = manifest.chunks
        for sha, (_, stored) in sorted(needed.items()):
            if sha not in staged_chunks:
                if sha not in damaged:
                    problems.append(f"chunk {chunk_relpath(sha)} is missing from the archive")
            elif staged_chunks[sha][1] != stored:
                problems.append(f"chunk {chunk_relpath(sha)} has {staged_chunks[sha][1]} bytes, the file list says {stored}")
        for sha in sorted(set(staged_chunks) - set(needed)):
            problems.append(f"{chunk_relpath(sha)} is in the archive but the manifest does not name it")
        for sha in sorted(set(staged) - set(metadata)):
            problems.append(f"{object_relpath(sha)} is in the archive but the manifest does not name it")
    if problems or manifest is None:
        raise IntegrityError(summarize(f"{archive} cannot be imported, nothing was added", problems), problems)

    existing = repo.manifest_path(manifest.backup_id)
    if existing.exists() or existing.is_symlink():
        if repo._read_manifest_bytes(manifest.backup_id) != manifest_data:
            raise BackupError(
                f"{archive}: backup {manifest.backup_id} already exists in {repo.root} with a different manifest; "
                "refusing to overwrite it"
            )
    # Data first (chunks, data objects), then the metadata objects, the sidecar, the manifest last.
    items = [(repo.chunks.path(sha), repo.chunks.dir, tmp, size) for sha, (tmp, size) in sorted(staged_chunks.items())]
    items += [(repo.object_path(sha), repo.objects_dir, tmp, size)
              for sha, (tmp, size) in sorted(staged.items(), key=lambda item: item[0] in metadata)]
    for target, top, tmp, size in items:
        if target.is_file() and not target.is_symlink() and target.stat().st_size == size:
            continue
        _fs.mkdirs(target.parent, top)
        os.replace(tmp, target)
        added.append(target)
        _fs.fsync_dir(target.parent)
    repo.chunks.forget()
    if not existing.exists():
        manifest_sha = hashlib.sha256(manifest_data).hexdigest()
        sidecar = (format2.sidecar_text(manifest, manifest_sha) if isinstance(manifest, format2.Manifest)
                   else format3.sidecar_text(manifest.header, manifest_sha))
        written.append(repo.sidecar_path(manifest.backup_id))
        _fs.atomic_write(repo.sidecar_path(manifest.backup_id), sidecar, run.dir)
        _fs.hook("import-sidecar")
        written.append(existing)
        _fs.atomic_write(existing, manifest_data, run.dir)
        if isinstance(manifest, format3.Manifest):
            entry = Entry.of(manifest.header, manifest_sha)
            repo.history.write_record("imported", [entry], run.dir)
            head, _ = repo.history.read_head()
            if head is None:
                repo.history.write_head(entry.link, entry.sequence, run.dir)
    written.clear()
    added.clear()
    _fs.hook("import-manifest")
    return manifest
