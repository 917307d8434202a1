"""The manifest: one backup's id and time, the sources' versions, and the SHA-256s of its two
metadata objects (the file list and the checksum list), signed with HMAC-SHA256.

Format version 2 keeps the per-backup metadata O(1): the list of files (path, size, SHA-256,
mode) is not in the manifest but in a content-addressed *file-list object*, and the `sha256sum`
lines of every data object in a content-addressed *checksum-list object*. The manifest names both
by their SHA-256 (`files_object`, `checksums_object`), with `file_count` and `total_bytes`, so the
signature covers the file list through its hash, and backups of an unchanged system share both
objects (each adds only its small manifest and a three-line sidecar).

The signature covers the *canonical JSON* of every manifest field but the signature itself: keys
sorted, no whitespace, ASCII only (`json.dumps(..., sort_keys=True, separators=(",", ":"),
ensure_ascii=True, allow_nan=False)`). The file on disk (`to_json`) is the same document, one
top-level field per line for people, with the signature added. The file list is canonical JSON
too, one entry per line (`encode_file_list`), and only that exact encoding is accepted, so its
hash names one list. docs/BACKUP_FORMAT.md describes every field.

Everything here is validated on construction, so a `Manifest` in memory never names a path that
could leave the restore tree: `..`, absolute paths, empty or `.` components, control characters,
file-type bits in a mode (a symlink or a device) are refused with `UnsafePathError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from .errors import BackupError, UnsafePathError

FORMAT_NAME = "quadra-backup"
FORMAT_VERSION = 2

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_BACKUP_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CREATED_AT_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_TOP_LEVEL_KEYS = {
    "format",
    "format_version",
    "backup_id",
    "created_at",
    "sources",
    "files_object",
    "checksums_object",
    "file_count",
    "total_bytes",
    "signature",
}
_REQUIRED_KEYS = _TOP_LEVEL_KEYS - {"signature"}
_FILE_KEYS = {"path", "size", "sha256", "mode"}
_MAX_PATH = 4096
_MAX_COMPONENT = 255


def check_relative_path(path: object, where: str = "manifest") -> str:
    """A relative POSIX path that stays inside the tree, or `UnsafePathError` saying why not."""
    if not isinstance(path, str):
        raise UnsafePathError(f"path {path!r} in {where} is not a string")
    if path == "":
        raise UnsafePathError(f"empty path in {where}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise UnsafePathError(f"path {path!r} in {where} contains a control character")
    if path.startswith("/"):
        raise UnsafePathError(f"absolute path {path!r} in {where}")
    if "\\" in path:
        raise UnsafePathError(f"path {path!r} in {where} contains a backslash")
    parts = path.split("/")
    if ".." in parts:
        raise UnsafePathError(f"path {path!r} in {where} contains '..'")
    if any(part in ("", ".") for part in parts):
        raise UnsafePathError(f"path {path!r} in {where} is not normalized (empty or '.' component)")
    encoded = path.encode("utf-8", "surrogateescape")
    if len(encoded) > _MAX_PATH or any(len(p.encode("utf-8", "surrogateescape")) > _MAX_COMPONENT for p in parts):
        raise UnsafePathError(f"path {path[:80]!r}... in {where} is too long")
    return path


def check_mode(mode: object, path: str, where: str = "manifest") -> int:
    """Permission bits only (0o000-0o777); a symlink or device type is an `UnsafePathError`."""
    if not isinstance(mode, int) or isinstance(mode, bool) or mode < 0:
        raise BackupError(f"{path!r} in {where}: mode {mode!r} is not a permission number")
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise UnsafePathError(f"{path!r} in {where} is a symlink (mode {mode:o}); only regular files are allowed")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise UnsafePathError(f"{path!r} in {where} is a device (mode {mode:o}); only regular files are allowed")
    if kind and not stat.S_ISREG(mode):
        raise UnsafePathError(f"{path!r} in {where} is not a regular file (mode {mode:o})")
    if stat.S_IMODE(mode) & ~0o777:
        raise BackupError(f"{path!r} in {where}: mode {mode:o} has setuid, setgid or sticky bits; refusing them")
    return stat.S_IMODE(mode)


def check_backup_id(backup_id: object) -> str:
    if not isinstance(backup_id, str) or not _BACKUP_ID_RE.fullmatch(backup_id):
        raise BackupError(
            f"backup id {backup_id!r} is not valid (letters, digits, '.', '_', '-', at most 128, not starting with a symbol)"
        )
    return backup_id


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and _SHA256_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class FileEntry:
    """One file of the restore tree: relative POSIX path, size in bytes, SHA-256 (hex), permission bits."""

    path: str
    size: int
    sha256: str
    mode: int = 0o644

    def __post_init__(self) -> None:
        check_relative_path(self.path)
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise BackupError(f"{self.path!r} in manifest: size {self.size!r} is not a byte count")
        if not is_sha256(self.sha256):
            raise BackupError(f"{self.path!r} in manifest: sha256 {self.sha256!r} is not 64 lowercase hex digits")
        object.__setattr__(self, "mode", check_mode(self.mode, self.path))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "mode": f"{self.mode:04o}"}

    @classmethod
    def from_dict(cls, data: object) -> FileEntry:
        if not isinstance(data, Mapping):
            raise BackupError(f"a file entry is a {type(data).__name__}, not an object")
        unknown = set(data) - _FILE_KEYS
        if unknown:
            raise BackupError(f"file entry {data.get('path')!r} has unknown fields {sorted(unknown)}")
        missing = {"path", "size", "sha256"} - set(data)
        if missing:
            raise BackupError(f"file entry {data.get('path')!r} lacks {sorted(missing)}")
        mode: Any = data.get("mode", "0644")
        if isinstance(mode, str):
            if not re.fullmatch(r"[0-7]{1,7}", mode):
                raise BackupError(f"{data['path']!r} in manifest: mode {mode!r} is not an octal number")
            mode = int(mode, 8)
        return cls(path=data["path"], size=data["size"], sha256=data["sha256"], mode=mode)


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: object) -> datetime:
    if not isinstance(text, str) or not _CREATED_AT_RE.fullmatch(text):
        raise BackupError(f"created_at {text!r} is not a UTC time like 2026-11-29T16:00:00.000000Z")
    try:
        return datetime.fromisoformat(text[:-1] + "+00:00")
    except ValueError:
        raise BackupError(f"created_at {text!r} is not a valid time") from None


def _normalize_sources(sources: object) -> dict[str, Any]:
    if not isinstance(sources, Mapping):
        raise BackupError(f"sources must be a mapping, got a {type(sources).__name__}")
    try:
        return json.loads(json.dumps(dict(sources), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise BackupError(f"sources are not JSON-serialisable: {exc}") from None


def _check_tree(files: tuple[FileEntry, ...]) -> None:
    paths: set[str] = set()
    for entry in files:
        if entry.path in paths:
            raise BackupError(f"path {entry.path!r} is listed twice in the manifest")
        paths.add(entry.path)
    for entry in files:
        parts = entry.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in paths:
                raise UnsafePathError(f"path {entry.path!r} in manifest lies under {parent!r}, which is a file")


def object_relpath(sha256: str) -> str:
    """Where an object lives, relative to the repository root: `objects/ab/<sha256>`."""
    return f"objects/{sha256[:2]}/{sha256}"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def encode_file_list(files: Iterable[FileEntry]) -> bytes:
    """The file-list object: a JSON array of the entries (sorted by path), one canonical entry per line.

    `[` and `]` on lines of their own, entries separated by `,` + newline, a final newline;
    an empty list is `[]` + newline. Only this exact encoding is accepted (`decode_file_list`).
    """
    entries = [_canonical(entry.to_dict()) for entry in files]
    if not entries:
        return b"[]\n"
    return b"[\n" + b",\n".join(entries) + b"\n]\n"


def decode_file_list(data: bytes) -> tuple[FileEntry, ...]:
    """The entries of a file-list object, validated (paths, tree, sorted, canonical encoding)."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BackupError(f"not valid JSON ({exc})") from None
    if not isinstance(document, list):
        raise BackupError(f"a JSON {type(document).__name__}, not a list of files")
    files = tuple(FileEntry.from_dict(item) for item in document)
    _check_tree(files)
    paths = [entry.path for entry in files]
    if paths != sorted(paths):
        raise BackupError("the files are not sorted by path")
    if encode_file_list(files) != data:
        raise BackupError("not in canonical form (one canonical JSON entry per line)")
    return files


def encode_checksum_list(object_ids: Iterable[str]) -> bytes:
    """The checksum-list object: `sha256sum` lines (`<sha256>  objects/ab/<sha256>`), sorted, unique."""
    return "".join(f"{sha}  {object_relpath(sha)}\n" for sha in sorted(set(object_ids))).encode("ascii")


def _check_count(value: object, name: str, backup_id: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BackupError(f"backup {backup_id}: {name} {value!r} is not a count")
    return value


def _check_version(version: object, subject: str) -> None:
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise BackupError(f"{subject}format version {version!r} is not supported (this program reads version {FORMAT_VERSION})")


@dataclass(frozen=True)
class ManifestHeader:
    """The manifest file as stored (`manifests/<id>.json`): everything but the file list, which it
    names by SHA-256 (`files_object`), with the SHA-256 of the checksum list (`checksums_object`).
    `signature` is HMAC-SHA256 (hex) over `signed_bytes()`; None when unsigned."""

    backup_id: str
    created_at: datetime
    sources: dict[str, Any] = field(hash=False)
    files_object: str
    checksums_object: str
    file_count: int
    total_bytes: int
    format_version: int = FORMAT_VERSION
    signature: str | None = None

    def __post_init__(self) -> None:
        check_backup_id(self.backup_id)
        if not isinstance(self.created_at, datetime) or self.created_at.utcoffset() is None:
            raise BackupError(f"backup {self.backup_id}: created_at must be a timezone-aware datetime")
        object.__setattr__(self, "created_at", self.created_at.astimezone(UTC))
        object.__setattr__(self, "sources", _normalize_sources(self.sources))
        for name in ("files_object", "checksums_object"):
            if not is_sha256(getattr(self, name)):
                raise BackupError(f"backup {self.backup_id}: {name} {getattr(self, name)!r} is not 64 lowercase hex digits")
        _check_count(self.file_count, "file_count", self.backup_id)
        _check_count(self.total_bytes, "total_bytes", self.backup_id)
        _check_version(self.format_version, f"backup {self.backup_id}: manifest ")
        if self.signature is not None and not is_sha256(self.signature):
            raise BackupError(f"backup {self.backup_id}: signature is not 64 lowercase hex digits")

    def _document(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "backup_id": self.backup_id,
            "created_at": _format_time(self.created_at),
            "sources": self.sources,
            "files_object": self.files_object,
            "checksums_object": self.checksums_object,
            "file_count": self.file_count,
            "total_bytes": self.total_bytes,
        }

    def signed_bytes(self) -> bytes:
        """The canonical JSON the signature covers: everything but the signature."""
        return _canonical(self._document())

    def to_json(self) -> bytes:
        """The manifest file: one top-level field per line (keys sorted), each value compact JSON."""
        document = self._document()
        if self.signature is not None:
            document["signature"] = self.signature
        lines = [
            f"  {json.dumps(key)}: {json.dumps(document[key], sort_keys=True, ensure_ascii=True, allow_nan=False)}"
            for key in sorted(document)
        ]
        return ("{\n" + ",\n".join(lines) + "\n}\n").encode("ascii")

    @classmethod
    def from_json(cls, data: bytes) -> ManifestHeader:
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BackupError(f"manifest is not valid JSON ({exc})") from None
        if not isinstance(document, dict):
            raise BackupError(f"manifest is a JSON {type(document).__name__}, not an object")
        if document.get("format") != FORMAT_NAME:
            raise BackupError(f"not a {FORMAT_NAME} manifest (format is {document.get('format')!r})")
        _check_version(document.get("format_version"), "manifest ")
        missing = _REQUIRED_KEYS - set(document)
        if missing:
            raise BackupError(f"manifest lacks {sorted(missing)}")
        unknown = set(document) - _TOP_LEVEL_KEYS
        if unknown:
            raise BackupError(f"manifest has unknown fields {sorted(unknown)}")
        return cls(
            backup_id=check_backup_id(document["backup_id"]),
            created_at=_parse_time(document["created_at"]),
            sources=document["sources"],
            files_object=document["files_object"],
            checksums_object=document["checksums_object"],
            file_count=document["file_count"],
            total_bytes=document["total_bytes"],
            format_version=document["format_version"],
            signature=document.get("signature"),
        )

    def mismatches(self, manifest: Manifest) -> list[str]:
        """How `manifest` (built from the file list this header names) disagrees with the header."""
        rel = object_relpath(self.files_object)
        problems = []
        if manifest.files_object != self.files_object:
            problems.append(f"file list {rel} is not the one the manifest names")
        if manifest.file_count != self.file_count:
            problems.append(f"file list {rel} has {manifest.file_count} files, the manifest says {self.file_count}")
        if manifest.total_bytes != self.total_bytes:
            problems.append(f"file list {rel} has {manifest.total_bytes} bytes, the manifest says {self.total_bytes}")
        if manifest.checksums_object != self.checksums_object:
            problems.append(
                f"checksums_object {self.checksums_object[:12]}... is not the checksum list of the files in {rel} "
                f"(that is {manifest.checksums_object[:12]}...)"
            )
        return problems


@dataclass(frozen=True)
class Manifest:
    """One backup, with its files. On disk it is a `ManifestHeader` (`header`, `to_json`) plus two
    content-addressed objects: the file list (`file_list_bytes`) and the checksum list
    (`checksum_list_bytes`). `signature` is HMAC-SHA256 (hex) over `signed_bytes()`; None when unsigned."""

    backup_id: str
    created_at: datetime
    files: tuple[FileEntry, ...]
    sources: dict[str, Any] = field(hash=False)
    format_version: int = FORMAT_VERSION
    signature: str | None = None

    def __post_init__(self) -> None:
        check_backup_id(self.backup_id)
        if not isinstance(self.created_at, datetime) or self.created_at.utcoffset() is None:
            raise BackupError(f"backup {self.backup_id}: created_at must be a timezone-aware datetime")
        object.__setattr__(self, "created_at", self.created_at.astimezone(UTC))
        files = tuple(self.files)
        if not all(isinstance(f, FileEntry) for f in files):
            raise BackupError(f"backup {self.backup_id}: files must be FileEntry objects")
        _check_tree(files)
        object.__setattr__(self, "files", tuple(sorted(files, key=lambda entry: entry.path)))
        object.__setattr__(self, "sources", _normalize_sources(self.sources))
        _check_version(self.format_version, f"backup {self.backup_id}: manifest ")
        if self.signature is not None and not is_sha256(self.signature):
            raise BackupError(f"backup {self.backup_id}: signature is not 64 lowercase hex digits")

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    @property
    def file_count(self) -> int:
        return len(self.files)

    @property
    def object_ids(self) -> list[str]:
        """The distinct SHA-256s of the files' contents (the data objects), sorted."""
        return sorted({entry.sha256 for entry in self.files})

    @cached_property
    def _file_list(self) -> bytes:
        return encode_file_list(self.files)

    @cached_property
    def _checksum_list(self) -> bytes:
        return encode_checksum_list(self.object_ids)

    def file_list_bytes(self) -> bytes:
        """The content of the file-list object."""
        return self._file_list

    def checksum_list_bytes(self) -> bytes:
        """The content of the checksum-list object (`sha256sum -c` checks every data object with it)."""
        return self._checksum_list

    @property
    def files_object(self) -> str:
        return hashlib.sha256(self._file_list).hexdigest()

    @property
    def checksums_object(self) -> str:
        return hashlib.sha256(self._checksum_list).hexdigest()

    @property
    def metadata_object_ids(self) -> list[str]:
        """The file-list object and the checksum-list object, in that order."""
        return [self.files_object, self.checksums_object]

    @property
    def header(self) -> ManifestHeader:
        return ManifestHeader(
            backup_id=self.backup_id,
            created_at=self.created_at,
            sources=self.sources,
            files_object=self.files_object,
            checksums_object=self.checksums_object,
            file_count=self.file_count,
            total_bytes=self.total_bytes,
            format_version=self.format_version,
            signature=self.signature,
        )

    def signed_bytes(self) -> bytes:
        """The canonical JSON the signature covers: the manifest file without the signature."""
        return self.header.signed_bytes()

    def to_json(self) -> bytes:
        """The manifest file (the header); the files go to the file-list object."""
        return self.header.to_json()

    @classmethod
    def from_header(cls, header: ManifestHeader, file_list: bytes) -> Manifest:
        """The manifest of `header` with the files of `file_list` (the file-list object's bytes).

        BackupError (UnsafePathError for a path outside the tree) if the file list is not the
        one the header names, does not parse, or disagrees with the header's counts.
        """
        rel = object_relpath(header.files_object)
        digest = hashlib.sha256(file_list).hexdigest()
        if digest != header.files_object:
            raise BackupError(f"file list {rel} hashes to {digest[:12]}..., not its name (altered or flipped bytes)")
        try:
            files = decode_file_list(file_list)
        except UnsafePathError:
            raise
        except BackupError as exc:
            raise BackupError(f"file list {rel}: {exc}") from None
        manifest = cls(header.backup_id, header.created_at, files, header.sources, header.format_version, header.signature)
        problems = header.mismatches(manifest)
        if problems:
            raise BackupError("; ".join(problems))
        return manifest

    @classmethod
    def from_json(cls, data: bytes, file_list: bytes) -> Manifest:
        """Parse a manifest file and the file-list object it names (see `from_header`)."""
        return cls.from_header(ManifestHeader.from_json(data), file_list)


def _key_bytes(key: str | bytes) -> bytes:
    data = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if not data:
        raise BackupError("the signing key is empty")
    return data


def compute_signature(manifest: Manifest | ManifestHeader, key: str | bytes) -> str:
    return hmac.new(_key_bytes(key), manifest.signed_bytes(), hashlib.sha256).hexdigest()


def sign(manifest: Manifest, key: str | bytes) -> Manifest:
    """The same manifest (or header) with `signature` = HMAC-SHA256(key, canonical JSON)."""
    return dataclasses.replace(manifest, signature=compute_signature(manifest, key))


def signature_ok(manifest: Manifest | ManifestHeader, key: str | bytes) -> bool:
    if manifest.signature is None:
        return False
    return hmac.compare_digest(compute_signature(manifest, key), manifest.signature)


def new_backup_id(now: datetime | None = None) -> str:
    """Sortable by time and unique: '20261129T160000Z-3f9a1c2b' (UTC second, then 8 hex digits:
    the microsecond in the high 20 bits and 12 random bits, so ids of one second still sort by time)."""
    moment = now if now is not None else datetime.now(UTC)
    if moment.utcoffset() is None:
        raise BackupError("new_backup_id needs a timezone-aware time")
    moment = moment.astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{(moment.microsecond << 12) | secrets.randbits(12):08x}"
