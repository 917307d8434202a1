"""A history that cannot be rolled back or forged: the hash chain of format-3 manifests.

Each manifest names its predecessor (`previous`: id and manifest SHA-256) and its `sequence`
(1, 2, ...). `head.json`, signed, names the newest backup and its manifest's SHA-256. Records in
`history/` (signed) say which backups left legally: `pruned` (retention, or `delete`) with each
one's own link and predecessor, so the chain can be followed across them; `imported` (an
archive brought in from elsewhere: its predecessors are not here). `check` walks from the head
back to the first backup and finds:

- the newest backup deleted (the head names a backup that is not there: a rollback), or the
  head itself deleted or replaced (it no longer matches);
- a backup deleted from the middle (a predecessor missing that no `pruned` record names);
- a manifest replayed or inserted (present but not on the chain the head leads to, or pruned
  and back again), or the chain reordered (a predecessor's SHA-256 or sequence does not match).

What it cannot see alone: the whole repository replaced by an older copy of itself (old head,
old manifests, all validly signed). The backup catalogue in the project database is the second
witness for that: `BackupService.verify` compares the two.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import _fs
from .errors import BackupError
from .format3 import Header, Link
from .names import format_time
from .signatures import SignaturePolicy

HEAD_FORMAT = "quadra-backup-head"
RECORD_FORMAT = "quadra-backup-history"
EVENTS = ("pruned", "imported")


@dataclass(frozen=True)
class Entry:
    """A backup as a history record remembers it."""

    link: Link
    sequence: int
    previous: Link | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.link.to_dict(), "sequence": self.sequence, "previous": None if self.previous is None else self.previous.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        return cls(Link(data["backup_id"], data["manifest_sha256"]), int(data["sequence"]), Link.from_dict(data["previous"]))

    @classmethod
    def of(cls, header: Header, manifest_sha256: str) -> Entry:
        return cls(Link(header.backup_id, manifest_sha256), header.sequence, header.previous)


@dataclass(frozen=True)
class Head:
    link: Link
    sequence: int


@dataclass
class Records:
    pruned: dict[str, Entry] = field(default_factory=dict)
    imported: dict[str, Entry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class History:
    """`root/head.json` and `root/history/`."""

    def __init__(self, root: Path, policy: SignaturePolicy) -> None:
        self.root = root
        self.policy = policy

    @property
    def head_path(self) -> Path:
        return self.root / "head.json"

    @property
    def records_dir(self) -> Path:
        return self.root / "history"

    # Writing -------------------------------------------------------------------------------

    def write_head(self, link: Link, sequence: int, tmp_dir: Path) -> None:
        document = self.policy.sign({"format": HEAD_FORMAT, **link.to_dict(), "sequence": sequence})
        _fs.atomic_write(self.head_path, _json(document), tmp_dir)

    def write_record(self, event: str, entries: list[Entry], tmp_dir: Path) -> Path:
        assert event in EVENTS
        now = datetime.now(UTC)
        document = self.policy.sign({
            "format": RECORD_FORMAT, "event": event, "at": format_time(now),
            "backups": [e.to_dict() for e in sorted(entries, key=lambda e: e.sequence)],
        })
        self.records_dir.mkdir(exist_ok=True)
        path = self.records_dir / f"{now:%Y%m%dT%H%M%S.%fZ}-{event}-{secrets.token_hex(4)}.json"
        _fs.atomic_write(path, _json(document), tmp_dir)
        return path

    # Reading -------------------------------------------------------------------------------

    def read_head(self) -> tuple[Head | None, str | None]:
        """(head, None), (None, None) when there is none, or (None, the problem)."""
        try:
            document = json.loads(self.head_path.read_bytes())
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            return None, f"head.json cannot be read ({exc})"
        if not isinstance(document, dict) or document.get("format") != HEAD_FORMAT:
            return None, "head.json is not a backup head"
        problem = self.policy.problem(document, "head.json")
        if problem:
            return None, problem
        try:
            return Head(Link(document["backup_id"], document["manifest_sha256"]), int(document["sequence"])), None
        except (KeyError, TypeError, ValueError, BackupError) as exc:
            return None, f"head.json is malformed ({exc})"

    def documents(self) -> list[tuple[str, object]]:
        """(name, parsed JSON or None when unreadable) of `head.json` and every record, unchecked
        (for listings of who signed what; `check` is what verifies them)."""
        found: list[tuple[str, object]] = []
        try:
            names = sorted(n for n in os.listdir(self.records_dir) if n.endswith(".json"))
        except FileNotFoundError:
            names = []
        for rel, path in [("head.json", self.head_path)] + [(f"history/{n}", self.records_dir / n) for n in names]:
            try:
                found.append((rel, json.loads(path.read_bytes())))
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                found.append((rel, None))
        return found

    def records(self) -> Records:
        result = Records()
        try:
            names = sorted(os.listdir(self.records_dir))
        except FileNotFoundError:
            return result
        for name in names:
            if not name.endswith(".json"):
                continue
            rel = f"history/{name}"
            try:
                document = json.loads((self.records_dir / name).read_bytes())
                if not isinstance(document, dict) or document.get("format") != RECORD_FORMAT or document.get("event") not in EVENTS:
                    raise ValueError("not a history record")
                problem = self.policy.problem(document, rel)
                if problem:
                    result.problems.append(problem)
                    continue
                entries = [Entry.from_dict(item) for item in document["backups"]]
            except (OSError, ValueError, KeyError, TypeError, BackupError) as exc:
                result.problems.append(f"{rel} cannot be used ({exc})")
                continue
            target = result.pruned if document["event"] == "pruned" else result.imported
            for entry in entries:
                target[entry.link.backup_id] = entry
        return result

    # Checking ------------------------------------------------------------------------------

    def check(self, present: dict[str, tuple[Header, str]]) -> tuple[list[str], Link | None]:
        """Problems with the chain of the format-3 manifests `present` (id -> (header, SHA-256
        of its manifest file)), and the link of the newest backup (the tip a new one extends)."""
        records = self.records()
        problems = list(records.problems)
        head, problem = self.read_head()
        if problem:
            problems.append(problem)
        if head is None:
            if present and not problem:
                problems.append("head.json is missing although format-3 backups exist (the repository was rolled back or damaged)")
            return problems, None
        for backup_id in sorted(set(present) & set(records.pruned)):
            problems.append(f"backup {backup_id} was pruned (a signed record says so) but its manifest is back (replayed?)")
        tip = head.link
        start = head.link.backup_id
        # A crash between a new manifest and the new head leaves one manifest just past the head.
        pending = [h for h, _ in present.values() if h.previous == head.link and h.sequence == head.sequence + 1]
        if len(pending) == 1:
            start = pending[0].backup_id
            tip = Link(start, present[start][1])
        if head.link.backup_id not in present:
            if head.link.backup_id in records.pruned:
                problems.append(f"head.json names backup {head.link.backup_id}, which was pruned")
            else:
                problems.append(
                    f"head.json names backup {head.link.backup_id}, which is missing (the newest backup was deleted: rollback)"
                )
            return problems, None
        if present[head.link.backup_id][1] != head.link.manifest_sha256:
            problems.append(f"head.json does not match backup {head.link.backup_id}'s manifest (replaced or rewritten)")
        visited = self._walk(start, present, records, problems)
        for backup_id in sorted(set(present) - visited - set(records.imported)):
            if backup_id not in records.pruned:
                problems.append(
                    f"backup {backup_id} is not in the history the head leads to (an old manifest replayed, or one inserted)"
                )
        return problems, tip

    def _walk(self, start: str, present: dict[str, tuple[Header, str]], records: Records, problems: list[str]) -> set[str]:
        visited: set[str] = set()
        current: str | None = start
        while current is not None and current not in visited:
            visited.add(current)
            header = present[current][0]
            if header.previous is None or current in records.imported:
                return visited
            link, sequence, after = header.previous, header.sequence - 1, current
            while link.backup_id not in present and link.backup_id in records.pruned:
                entry = records.pruned[link.backup_id]
                if entry.link != link or entry.sequence != sequence:
                    problems.append(f"the pruned record of backup {link.backup_id} does not match what {after} names")
                    return visited
                if entry.previous is None:
                    return visited
                link, sequence, after = entry.previous, entry.sequence - 1, link.backup_id
            if link.backup_id not in present:
                problems.append(
                    f"backup {link.backup_id}, the predecessor of {after}, is missing and was not pruned "
                    "(deleted from the middle of the history)"
                )
                return visited
            found, sha = present[link.backup_id]
            if sha != link.manifest_sha256:
                problems.append(f"backup {after} names {link.backup_id} as its predecessor with another manifest SHA-256 (replaced or reordered)")
                return visited
            if found.sequence != sequence:
                problems.append(f"backup {link.backup_id} has sequence {found.sequence}, but {after} expects {sequence} (reordered)")
                return visited
            current = link.backup_id
        return visited


def _json(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, sort_keys=True, indent=1, ensure_ascii=True) + "\n").encode("ascii")


__all__ = ["Entry", "Head", "History", "Records"]
