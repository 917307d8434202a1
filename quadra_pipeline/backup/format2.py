"""Format 2 (read, verify, restore; no longer written): whole-file objects, an HMAC-signed manifest.

A backup is `manifests/<id>.json` (this module's `ManifestHeader`: id, time, sources, and the
SHA-256s of its file-list object and its checksum-list object), `manifests/<id>.sha256` (three
`sha256sum` lines: the manifest, the file list, the checksum list) and `objects/ab/<sha256>`: each
file's content, stored raw under its SHA-256. The signature is HMAC-SHA256 under
`QUADRA_SECRET_KEY` over the canonical JSON of the manifest without the signature. Format 3
(`format3.py`) replaced it; docs/BACKUP_FORMAT.md describes both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from .errors import BackupError, UnsafePathError
from .names import (
    FORMAT_NAME,
    canonical,
    check_backup_id,
    check_fields,
    utc_created_at,
    format_time,
    is_sha256,
    normalize_sources,
    object_relpath,
    parse_time,
)
from .tree import FileEntry, check_tree, decode_file_list, encode_file_list

FORMAT_VERSION = 2
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
_SIDECAR_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")
MAX_METADATA_BYTES = 256 << 20

#: (bytes, None) or (None, problem): reads a metadata object by SHA-256, checked against its name.
MetadataLoader = Callable[[str], "tuple[bytes | None, str | None]"]


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
        object.__setattr__(self, "created_at", utc_created_at(self.backup_id, self.created_at))
        object.__setattr__(self, "sources", normalize_sources(self.sources))
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
            "created_at": format_time(self.created_at),
            "sources": self.sources,
            "files_object": self.files_object,
            "checksums_object": self.checksums_object,
            "file_count": self.file_count,
            "total_bytes": self.total_bytes,
        }

    def signed_bytes(self) -> bytes:
        """The canonical JSON the signature covers: everything but the signature."""
        return canonical(self._document())

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
        check_fields(document, _REQUIRED_KEYS, _TOP_LEVEL_KEYS, "manifest")
        return cls(
            backup_id=check_backup_id(document["backup_id"]),
            created_at=parse_time(document["created_at"]),
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
        object.__setattr__(self, "created_at", utc_created_at(self.backup_id, self.created_at))
        files = tuple(self.files)
        if not all(isinstance(f, FileEntry) for f in files):
            raise BackupError(f"backup {self.backup_id}: files must be FileEntry objects")
        check_tree(files)
        object.__setattr__(self, "files", tuple(sorted(files, key=lambda entry: entry.path)))
        object.__setattr__(self, "sources", normalize_sources(self.sources))
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
            files = decode_file_list(file_list, chunked=False)
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




def sidecar_text(manifest: Manifest | ManifestHeader, manifest_sha256: str) -> bytes:
    """`sha256sum` format, paths relative to the repository root, three lines: the manifest file,
    the file-list object, the checksum-list object."""
    lines = [
        f"{manifest_sha256}  manifests/{manifest.backup_id}.json",
        f"{manifest.files_object}  {object_relpath(manifest.files_object)}",
        f"{manifest.checksums_object}  {object_relpath(manifest.checksums_object)}",
    ]
    return ("\n".join(lines) + "\n").encode("ascii")


# Reading and checking a format-2 backup ------------------------------------------------------


def sidecar_entries(sidecar: bytes) -> tuple[list[tuple[str, str]], list[str]]:
    """((path, sha256) per well-formed line, problems) of a `sha256sum` sidecar."""
    try:
        lines = sidecar.decode("ascii").splitlines()
    except UnicodeDecodeError:
        return [], ["is not ASCII text"]
    entries, problems = [], []
    for number, line in enumerate(lines, 1):
        match = _SIDECAR_LINE.fullmatch(line)
        if not match:
            problems.append(f"line {number} is not '<sha256>  <path>'")
            continue
        entries.append((match.group(2), match.group(1)))
    return entries, problems


def sidecar_problems(backup_id: str, expected: list[tuple[str, str]], sidecar: bytes | None) -> list[str]:
    """How a sidecar differs from the lines `expected` ((path, sha256), in order; the first is
    the manifest file)."""
    rel = f"manifests/{backup_id}.sha256"
    if sidecar is None:
        return [f"checksum sidecar {rel} is missing"]
    entries, bad = sidecar_entries(sidecar)
    problems = [f"checksum sidecar {rel} {p}" for p in bad]
    listed = dict(entries)
    manifest_rel, manifest_sha = expected[0]
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
        order = ", ".join(["manifest", "file list", "checksum list"][: len(expected)])
        count = {2: "two", 3: "three"}.get(len(expected), str(len(expected)))
        problems.append(f"checksum sidecar {rel} is not {count} lines in the order: {order}")
    return problems


def check_manifest(
    backup_id: str, data: bytes, sidecar: bytes | None, load: MetadataLoader, signature_problem: Callable[[bytes, str | None, str], str | None]
) -> tuple[Manifest | None, list[str]]:
    """Parse and check one format-2 manifest and its two metadata objects: name == id inside,
    signature, sidecar, the file list (hashes to its name, parses, agrees with the counts and
    the checksum list), the checksum list. Not the data objects. (manifest, problems)."""
    rel = f"manifests/{backup_id}.json"
    try:
        header = ManifestHeader.from_json(data)
    except BackupError as exc:
        return None, [f"{rel}: {exc}"]
    problems = []
    if header.backup_id != backup_id:
        problems.append(f"{rel} holds backup {header.backup_id!r}, not {backup_id!r} (manifest swapped, renamed or replayed)")
    problem = signature_problem(header.signed_bytes(), header.signature, rel)
    if problem:
        problems.append(problem)
    expected = [
        (rel, hashlib.sha256(data).hexdigest()),
        (object_relpath(header.files_object), header.files_object),
        (object_relpath(header.checksums_object), header.checksums_object),
    ]
    problems += sidecar_problems(backup_id, expected, sidecar)
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
        files = decode_file_list(file_list, chunked=False)
    except UnsafePathError as exc:
        raise UnsafePathError(f"backup {backup_id}: file list {files_rel}: {exc}") from None
    except BackupError as exc:
        return None, problems + [f"file list {files_rel}: {exc}"]
    manifest = Manifest(header.backup_id, header.created_at, files, header.sources, header.format_version, header.signature)
    problems += [f"{rel}: {p}" for p in header.mismatches(manifest)]
    return manifest, problems


def listed_objects(data: bytes) -> set[str] | None:
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


def group_by_object(files: Iterable[FileEntry]) -> dict[str, list[FileEntry]]:
    groups: dict[str, list[FileEntry]] = {}
    for entry in files:
        groups.setdefault(entry.sha256, []).append(entry)
    return groups
