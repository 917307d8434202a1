"""Format 3 (what new backups are): content-defined chunks, an Ed25519-signed manifest in a hash chain.

A backup is:

    manifests/<id>.json     the manifest (`Header`): id, time, sources, the SHA-256 of its file
                            list, counts, its place in the history (`sequence`, and `previous`:
                            the id and manifest SHA-256 of the backup before it), the signature
    manifests/<id>.sha256   `sha256sum` lines: the manifest, the file-list object
    objects/ab/<sha256>     the file list (`tree.encode_file_list`): every file's path, size,
                            SHA-256, mode and chunks [sha256, length, stored length], raw JSON
    chunks/ab/<sha256>      the chunks (`chunks.py`), shared by every backup that holds them

The signature (`signatures.py`) covers the canonical JSON of every manifest field but itself; the
file list is covered through its SHA-256, the chunks through theirs. `history.py` checks the chain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from .errors import BackupError
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

FORMAT_VERSION = 3
_KEYS = {
    "format", "format_version", "backup_id", "created_at", "sources", "files_object", "file_count", "total_bytes",
    "chunk_count", "sequence", "previous", "signature",
}
_REQUIRED = _KEYS - {"signature"}


@dataclass(frozen=True)
class Link:
    """A backup's place in the history: its id and the SHA-256 of its manifest file."""

    backup_id: str
    manifest_sha256: str

    def __post_init__(self) -> None:
        check_backup_id(self.backup_id)
        if not is_sha256(self.manifest_sha256):
            raise BackupError(f"link to {self.backup_id}: manifest_sha256 is not 64 lowercase hex digits")

    def to_dict(self) -> dict[str, str]:
        return {"backup_id": self.backup_id, "manifest_sha256": self.manifest_sha256}

    @classmethod
    def from_dict(cls, data: object) -> Link | None:
        if data is None:
            return None
        if not isinstance(data, dict) or set(data) != {"backup_id", "manifest_sha256"}:
            raise BackupError(f"a link is {{backup_id, manifest_sha256}}, not {data!r}")
        return cls(data["backup_id"], data["manifest_sha256"])


def _count(value: object, name: str, backup_id: object, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BackupError(f"backup {backup_id}: {name} {value!r} is not a count")
    return value


@dataclass(frozen=True)
class Header:
    """The manifest file as stored; `signature` None when unsigned."""

    backup_id: str
    created_at: datetime
    sources: dict[str, Any] = field(hash=False)
    files_object: str
    file_count: int
    total_bytes: int
    chunk_count: int
    sequence: int
    previous: Link | None = None
    signature: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        check_backup_id(self.backup_id)
        object.__setattr__(self, "created_at", utc_created_at(self.backup_id, self.created_at))
        object.__setattr__(self, "sources", normalize_sources(self.sources))
        if not is_sha256(self.files_object):
            raise BackupError(f"backup {self.backup_id}: files_object is not 64 lowercase hex digits")
        for name in ("file_count", "total_bytes", "chunk_count"):
            _count(getattr(self, name), name, self.backup_id)
        _count(self.sequence, "sequence", self.backup_id, minimum=1)

    @property
    def format_version(self) -> int:
        return FORMAT_VERSION

    def document(self) -> dict[str, Any]:
        """Every field; the signature only if signed."""
        document: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "backup_id": self.backup_id,
            "created_at": format_time(self.created_at),
            "sources": self.sources,
            "files_object": self.files_object,
            "file_count": self.file_count,
            "total_bytes": self.total_bytes,
            "chunk_count": self.chunk_count,
            "sequence": self.sequence,
            "previous": None if self.previous is None else self.previous.to_dict(),
        }
        if self.signature is not None:
            document["signature"] = self.signature
        return document

    def to_json(self) -> bytes:
        """The manifest file: one top-level field per line (keys sorted), each value compact JSON."""
        document = self.document()
        lines = [f"  {json.dumps(k)}: {canonical(document[k]).decode('ascii')}" for k in sorted(document)]
        return ("{\n" + ",\n".join(lines) + "\n}\n").encode("ascii")

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Header:
        check_fields(document, _REQUIRED, _KEYS, "manifest")
        if document.get("format") != FORMAT_NAME or document.get("format_version") != FORMAT_VERSION:
            raise BackupError(f"not a format-{FORMAT_VERSION} {FORMAT_NAME} manifest")
        return cls(
            backup_id=check_backup_id(document["backup_id"]),
            created_at=parse_time(document["created_at"]),
            sources=document["sources"],
            files_object=document["files_object"],
            file_count=document["file_count"],
            total_bytes=document["total_bytes"],
            chunk_count=document["chunk_count"],
            sequence=document["sequence"],
            previous=Link.from_dict(document["previous"]),
            signature=document.get("signature"),
        )

    def mismatches(self, files: tuple[FileEntry, ...]) -> list[str]:
        """How the file list this header names disagrees with the header's counts."""
        rel = object_relpath(self.files_object)
        problems = []
        if len(files) != self.file_count:
            problems.append(f"file list {rel} has {len(files)} files, the manifest says {self.file_count}")
        total = sum(entry.size for entry in files)
        if total != self.total_bytes:
            problems.append(f"file list {rel} has {total} bytes, the manifest says {self.total_bytes}")
        chunks = len(distinct_chunks(files))
        if chunks != self.chunk_count:
            problems.append(f"file list {rel} names {chunks} chunks, the manifest says {self.chunk_count}")
        return problems


def distinct_chunks(files: tuple[FileEntry, ...]) -> dict[str, tuple[int, int]]:
    """sha256 -> (length, stored length) of every chunk the files name."""
    found: dict[str, tuple[int, int]] = {}
    for entry in files:
        for sha, length, stored in entry.chunks or ():
            found[sha] = (length, stored)
    return found


@dataclass(frozen=True)
class Manifest:
    """One backup with its files (the header, and the file list it names)."""

    header: Header
    files: tuple[FileEntry, ...]

    @classmethod
    def build(
        cls, backup_id: str, created_at: datetime, files: tuple[FileEntry, ...], sources: dict[str, Any],
        sequence: int, previous: Link | None,
    ) -> Manifest:
        files = tuple(sorted(files, key=lambda e: e.path))
        check_tree(files)
        file_list = encode_file_list(files)
        header = Header(
            backup_id=backup_id, created_at=created_at, sources=sources,
            files_object=hashlib.sha256(file_list).hexdigest(), file_count=len(files),
            total_bytes=sum(e.size for e in files), chunk_count=len(distinct_chunks(files)),
            sequence=sequence, previous=previous,
        )
        manifest = cls(header, files)
        manifest.__dict__["file_list_bytes"] = file_list
        return manifest

    @classmethod
    def parse(cls, header: Header, file_list: bytes) -> Manifest:
        files = decode_file_list(file_list, chunked=True)
        problems = header.mismatches(files)
        if problems:
            raise BackupError("; ".join(problems))
        return cls(header, files)

    @cached_property
    def file_list_bytes(self) -> bytes:
        return encode_file_list(self.files)

    # The interface format-2 manifests share (service, drill, CLI use it for either format).
    @property
    def backup_id(self) -> str:
        return self.header.backup_id

    @property
    def created_at(self) -> datetime:
        return self.header.created_at

    @property
    def sources(self) -> dict[str, Any]:
        return self.header.sources

    @property
    def signature(self) -> dict[str, Any] | None:
        return self.header.signature

    @property
    def format_version(self) -> int:
        return FORMAT_VERSION

    @property
    def total_bytes(self) -> int:
        return self.header.total_bytes

    @property
    def file_count(self) -> int:
        return self.header.file_count

    @property
    def chunks(self) -> dict[str, tuple[int, int]]:
        return distinct_chunks(self.files)


def sidecar_text(header: Header, manifest_sha256: str) -> bytes:
    """`sha256sum` format, paths relative to the repository root: the manifest, the file list."""
    return (
        f"{manifest_sha256}  manifests/{header.backup_id}.json\n"
        f"{header.files_object}  {object_relpath(header.files_object)}\n"
    ).encode("ascii")
