"""Optional stat cache: (source path, device, inode, size, mtime_ns, ctime_ns) -> SHA-256.

With `create(..., use_stat_cache=True)` a source whose metadata is unchanged since the previous
backup, and whose object is in the repository with the right size, is not read again. The
trade-off (docs/BACKUP_FORMAT.md): the backup then trusts the file system's metadata instead of
the bytes. `ctime` cannot be set from user space, so a write that changes the content changes
it; to rule out a write within the same timestamp tick as the hashing ("racy" entries, as git
calls them), an entry is only recorded when the file's mtime and ctime are at least
`RACY_SECONDS` older than the moment the read started and did not change during the read.

The cache lives in `root/cache/stat-cache.json`, is local to this machine, is not part of any
backup, and carries its own SHA-256: a damaged cache is ignored, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ._fs import atomic_write

RACY_SECONDS = 2
_VERSION = 1

_Key = tuple[int, int, int, int, int]


def _stat_key(st: os.stat_result) -> _Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _digest(entries: dict[str, list]) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class StatCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._old: dict[str, list] = {}
        self._new: dict[str, list] = {}
        self.hits = 0
        try:
            document = json.loads(path.read_bytes())
            entries = document["entries"]
            if document.get("version") == _VERSION and isinstance(entries, dict) and document.get("sha256") == _digest(entries):
                self._old = entries
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._old = {}

    @staticmethod
    def _name(source: Path) -> str:
        return os.path.abspath(source)

    def lookup(self, source: Path, st: os.stat_result) -> str | None:
        entry = self._old.get(self._name(source))
        if not isinstance(entry, list) or len(entry) != 6:
            return None
        if tuple(entry[:5]) != _stat_key(st) or not isinstance(entry[5], str):
            return None
        return entry[5]

    def keep(self, source: Path, st: os.stat_result, sha256: str) -> None:
        """A hit: carry the entry into the new cache."""
        self.hits += 1
        self._new[self._name(source)] = [*_stat_key(st), sha256]

    def record(self, source: Path, before: os.stat_result, after: os.stat_result, sha256: str, started_ns: int) -> None:
        if _stat_key(before) != _stat_key(after):
            return  # changed while being read
        newest = max(after.st_mtime_ns, after.st_ctime_ns)
        if newest >= started_ns - RACY_SECONDS * 1_000_000_000:
            return  # racy: a write in the same tick would leave the metadata unchanged
        self._new[self._name(source)] = [*_stat_key(after), sha256]

    def save(self, tmp_dir: Path) -> None:
        """Replace the cache with this run's entries (sources no longer backed up drop out)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {"version": _VERSION, "entries": self._new, "sha256": _digest(self._new)}
        atomic_write(self.path, json.dumps(document, sort_keys=True).encode(), tmp_dir=tmp_dir)
