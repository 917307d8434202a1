"""Checking a backup's stored data: format 3's chunks (present with their size, re-read where
asked) and format 2's whole-file objects. The manifest, signature and sidecar are checked by
`BackupRepository._check_manifest` first; the history by `History.check`."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from . import _fs, format2, format3
from .errors import BackupError, os_reason
from .names import object_relpath
from .tree import FileEntry

if TYPE_CHECKING:
    from .repository import BackupRepository

Read = Union[str, Collection[str]]  # "all", "none", or the chunk ids to re-read
#: What one verification run found per chunk (or format-2 object) id: (re-read?, problem or
#: None). Shared by the backups of one run, so a chunk many backups hold is checked, and read,
#: once.
Memo = dict[str, tuple[bool, Union[str, None]]]


@dataclass
class VerifyReport:
    backup_id: str
    ok: bool
    problems: list[str]
    files_checked: int  # files whose every chunk (or object) was checked
    bytes_checked: int  # bytes of content re-read and re-hashed
    chunks_checked: int = 0  # chunks checked (present, right size)
    chunks_read: int = 0  # chunks re-read and re-hashed
    format_version: int = 3


def verify_chunks(repo: BackupRepository, backup_id: str, manifest: format3.Manifest | None, problems: list[str], read: Read,
                  memo: Memo | None = None) -> VerifyReport:
    """Format 3: every chunk the backup names present with its stored size; re-read and
    re-hashed when `read` is "all" or holds it (once per `memo`: a chunk found by an earlier
    backup of the same run is not read again). Damage is reported per file, with the chunk."""
    chunks_checked = chunks_read = bytes_checked = 0
    files = manifest.files if manifest is not None else ()
    bad: dict[str, str] = {}
    memo = {} if memo is None else memo
    for sha, (length, stored) in (manifest.chunks if manifest is not None else {}).items():
        chunks_checked += 1
        deep = read == "all" or (not isinstance(read, str) and sha in read)
        known = memo.get(sha)
        if known is not None and (known[0] or not deep):
            problem = known[1]
        else:
            problem = repo.chunks.problem(sha, stored, read=deep)
            memo[sha] = (deep, problem)
            if deep and problem is None:
                bytes_checked += length
        if deep and problem is None:
            chunks_read += 1
        if problem:
            bad[sha] = problem
    for entry in files:
        for sha, _, _ in entry.chunks or ():
            if sha in bad:
                problems.append(f"{entry.path}: {bad[sha]}")
    ok = not problems and manifest is not None
    return VerifyReport(backup_id, ok, problems, len(files), bytes_checked, chunks_checked, chunks_read, 3)

def verify_objects(repo: BackupRepository, manifest: format2.Manifest, problems: list[str], *, rehash: bool,
                   memo: Memo | None = None) -> VerifyReport:
    """Format 2: every whole-file object present with its size, and re-hashed with `rehash`
    (once per `memo`)."""
    files_checked = bytes_checked = 0
    memo = {} if memo is None else memo
    for sha, entries in format2.group_by_object(manifest.files).items():
        sizes = {entry.size for entry in entries}
        names = _name_files(entries)
        if len(sizes) > 1:
            problems.append(f"{names}: manifest lists object {sha[:12]}... with different sizes {sorted(sizes)}")
        known = memo.get(sha)
        if known is not None and (known[0] or not rehash):
            problem = known[1]
        else:
            problem, hashed = check_object(repo, sha, entries[0].size, rehash=rehash)
            memo[sha] = (rehash, problem)
            bytes_checked += hashed
        files_checked += len(entries)
        if problem:
            problems.append(f"{names}: object {object_relpath(sha)} {problem}")
    return VerifyReport(manifest.backup_id, not problems, problems, files_checked, bytes_checked, format_version=2)

def check_object(repo: BackupRepository, sha: str, size: int, *, rehash: bool = True) -> tuple[str | None, int]:
    path = repo.object_path(sha)
    try:
        fd = _fs.open_regular(path, "object")
    except FileNotFoundError:
        return "is missing", 0
    except BackupError as exc:
        return f"is unusable ({str(exc).removeprefix(f'object {path} ')})", 0
    except OSError as exc:
        return f"cannot be read ({os_reason(exc)})", 0
    try:
        actual = os.fstat(fd).st_size
        if actual != size:
            word = "truncated" if actual < size else "too long"
            return f"is {word}: {actual} bytes, the manifest says {size}", 0
        if not rehash:
            return None, 0
        _fs.advise_sequential(fd)
        digest, hashed = _fs.stream(_fs.fd_reader(fd), size_hint=size)
    except OSError as exc:
        return f"cannot be read ({os_reason(exc)})", 0
    finally:
        os.close(fd)
    if digest != sha:
        return f"is corrupt: its content hashes to {digest[:12]}..., not its name (altered or flipped bytes)", hashed
    return None, hashed


def _name_files(entries: list[FileEntry]) -> str:
    more = f" (+{len(entries) - 1} more files)" if len(entries) > 1 else ""
    return f"{entries[0].path}{more}"
