"""The restore tree: safe relative paths, permission bits, file entries and the file-list encoding.

Everything here is validated on construction, so an entry in memory never names a path that
could leave the restore tree: `..`, absolute paths, empty or `.` components, control
characters, file-type bits in a mode (a symlink or a device) are refused with `UnsafePathError`.
A format-3 entry also lists its chunks: `[sha256, length, stored length]` each, in order, their
lengths summing to the file's size.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import BackupError, UnsafePathError
from .names import canonical, is_sha256

_FILE_KEYS = {"path", "size", "sha256", "mode", "chunks"}
_MAX_PATH = 4096
_MAX_COMPONENT = 255

ChunkRef = tuple[str, int, int]  # sha256 of the content, content length, stored length


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


@dataclass(frozen=True)
class FileEntry:
    """One file of the restore tree: relative POSIX path, size in bytes, SHA-256 (hex), permission bits."""

    path: str
    size: int
    sha256: str
    mode: int = 0o644
    chunks: tuple[ChunkRef, ...] | None = None  # format 3 only

    def __post_init__(self) -> None:
        check_relative_path(self.path)
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise BackupError(f"{self.path!r} in manifest: size {self.size!r} is not a byte count")
        if not is_sha256(self.sha256):
            raise BackupError(f"{self.path!r} in manifest: sha256 {self.sha256!r} is not 64 lowercase hex digits")
        object.__setattr__(self, "mode", check_mode(self.mode, self.path))
        if self.chunks is not None:
            object.__setattr__(self, "chunks", _check_chunks(self.chunks, self.path, self.size))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256, "mode": f"{self.mode:04o}"}
        if self.chunks is not None:
            data["chunks"] = [list(c) for c in self.chunks]
        return data

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
        chunks = data.get("chunks")
        if chunks is not None and not isinstance(chunks, list):
            raise BackupError(f"{data['path']!r} in manifest: chunks is not a list")
        return cls(path=data["path"], size=data["size"], sha256=data["sha256"], mode=mode,
                   chunks=None if chunks is None else tuple(tuple(c) if isinstance(c, list) else c for c in chunks))


def check_tree(files: tuple[FileEntry, ...]) -> None:
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


def encode_file_list(files: Iterable[FileEntry]) -> bytes:
    """The file-list object: a JSON array of the entries (sorted by path), one canonical entry per line.

    `[` and `]` on lines of their own, entries separated by `,` + newline, a final newline;
    an empty list is `[]` + newline. Only this exact encoding is accepted (`decode_file_list`).
    """
    entries = [canonical(entry.to_dict()) for entry in files]
    if not entries:
        return b"[]\n"
    return b"[\n" + b",\n".join(entries) + b"\n]\n"


def decode_file_list(data: bytes, *, chunked: bool) -> tuple[FileEntry, ...]:
    """The entries of a file-list object, validated (paths, tree, sorted, canonical encoding;
    chunk lists present in format 3 (`chunked`), absent in format 2)."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BackupError(f"not valid JSON ({exc})") from None
    if not isinstance(document, list):
        raise BackupError(f"a JSON {type(document).__name__}, not a list of files")
    files = tuple(FileEntry.from_dict(item) for item in document)
    for entry in files:
        if (entry.chunks is None) == chunked:
            word = "lacks its chunk list" if chunked else "has a chunk list, which format 2 does not know"
            raise BackupError(f"{entry.path!r} {word}")
    check_tree(files)
    paths = [entry.path for entry in files]
    if paths != sorted(paths):
        raise BackupError("the files are not sorted by path")
    if encode_file_list(files) != data:
        raise BackupError("not in canonical form (one canonical JSON entry per line)")
    return files


def _check_chunks(chunks: object, path: str, size: int) -> tuple[ChunkRef, ...]:
    refs = []
    total = 0
    for index, item in enumerate(chunks):  # type: ignore[union-attr]
        if not (isinstance(item, tuple) and len(item) == 3 and is_sha256(item[0])
                and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in item[1:])):
            raise BackupError(f"{path!r} in manifest: chunk {index} is not [sha256, length, stored length]")
        refs.append((item[0], item[1], item[2]))
        total += item[1]
    if total != size:
        raise BackupError(f"{path!r} in manifest: its chunks hold {total} bytes, its size is {size}")
    return tuple(refs)
