"""The hourly re-reading rotation: every stored chunk re-read within the rotation period.

The repository's stored data (`chunks/`, and `objects/`: file lists and format 2's whole-file
objects) is split into `runs` shares by the chunk id: chunk `c` is in share `int(c[:8], 16) %
runs`. The share of hour `h` (hours since 1970, UTC) is `h % runs`, so hourly runs re-read
every share, hence every stored chunk, within `runs` hours (QUADRA_BACKUP_VERIFY_RUNS, default
24), whichever backups hold it: the newest, or only an old daily, weekly or monthly one. It is
taken from the listing of the store, not from a backup's file list, so chunks come and go
(backups added, pruned, imported) without a gap: a chunk is in its share whenever it is stored.

The local state (`cache/verify-rotation.json`: when each share was last read, the damaged chunks
found) makes the period hold when runs are missed: a share not read for `runs` hours (the
daemon was down) is read by the next run, beside that hour's own. Lost or reset, the state
starts again from the hour it is lost, one share per run (no full re-read), and every share is
read within `runs` runs again. A damaged chunk is re-read by every run until it is gone (its
backups deleted and the garbage collected) or whole again, so a check that found it stays red.

The backup's own new chunks are re-read by its integrity check (`BackupService.verify`'s
`also_read`), right after they are written; `quadra backup verify` re-reads everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .chunks import chunk_relpath
from .errors import BackupError, os_reason
from .names import is_sha256, object_relpath

if TYPE_CHECKING:
    from .repository import BackupRepository

STATE = "verify-rotation.json"


def slot_of(sha256: str, runs: int) -> int:
    """The share a chunk (or object) id falls in."""
    return int(sha256[:8], 16) % runs


def current_hour(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // 3600)


@dataclass
class RotationReport:
    of: int  # shares (QUADRA_BACKUP_VERIFY_RUNS): the period in hourly runs
    slots: list[int] = field(default_factory=list)  # the shares read by this run
    chunks_read: int = 0  # chunks re-read and re-hashed
    objects_read: int = 0  # file lists and format-2 objects re-hashed
    bytes_read: int = 0  # stored bytes read from disk (compressed where the chunk is)
    chunks_stored: int = 0  # every chunk in the repository
    objects_stored: int = 0
    problems: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)  # chunk or object id -> what is wrong
    damaged_backups: list[str] = field(default_factory=list)  # the backups holding them
    #: Hours since the share read longest ago was read, after this run: every stored chunk was
    #: re-read within that many hours. None until every share was read once since the state began.
    oldest_hours: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def metadata(self) -> dict[str, object]:
        stored = self.chunks_stored + self.objects_stored
        return {
            "rotation_shares_read": self.slots, "rotation_period_runs": self.of,
            "rotation_chunks_read": self.chunks_read, "rotation_objects_read": self.objects_read,
            "rotation_bytes_read": self.bytes_read, "chunks_stored": self.chunks_stored,
            "rotation_fraction_read": round((self.chunks_read + self.objects_read) / stored, 4) if stored else 0.0,
            "every_chunk_read_within_hours": self.oldest_hours if self.oldest_hours is not None else "not yet (the rotation began less than a period ago)",
        }


class Rotation:
    def __init__(self, repository: BackupRepository, runs: int) -> None:
        if runs < 1:
            raise ValueError("runs must be at least 1")
        self.repository = repository
        self.runs = runs
        self.state_path = repository.root / "cache" / STATE

    # State ------------------------------------------------------------------------------

    def _load(self, hour: int) -> dict:
        fresh = {"of": self.runs, "started": hour, "read": {}, "damaged": {}}
        try:
            state = json.loads(self.state_path.read_text())
            fresh["damaged"] = {str(k): str(v) for k, v in dict(state.get("damaged", {})).items() if is_sha256(str(k))}
            if state.get("of") != self.runs or not isinstance(state.get("read"), dict):
                return fresh  # another period: the shares are others (the damage found is kept)
            state["read"] = {int(k): int(v) for k, v in state["read"].items()}
            state["started"] = int(state["started"])
            state["damaged"] = fresh["damaged"]
            return state
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return fresh

    def _save(self, state: dict) -> None:
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_name(f".{STATE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**state, "read": {str(k): v for k, v in sorted(state["read"].items())}}, sort_keys=True))
            os.replace(tmp, self.state_path)
        except OSError:
            pass  # only the rotation's place: the next run starts it again

    def due(self, hour: int, state: dict | None = None) -> list[int]:
        """The shares hour `hour` reads: its own, and any not read for a whole period."""
        state = state or self._load(hour)
        own = hour % self.runs
        late = [s for s in range(self.runs) if s != own and state["read"].get(s, state["started"]) <= hour - self.runs]
        return [own, *late]

    # Reading ----------------------------------------------------------------------------

    def run(self, hour: int | None = None) -> RotationReport:
        """Re-read this hour's share (and any overdue one, and the damaged chunks found before)."""
        hour = current_hour() if hour is None else hour
        state = self._load(hour)
        slots = self.due(hour, state)
        wanted = set(slots)
        report = RotationReport(of=self.runs, slots=slots)
        previously = state["damaged"]
        damaged: dict[str, str] = {}
        store = self.repository.chunks
        for sha, path in store.iter_stored():
            report.chunks_stored += 1
            if slot_of(sha, self.runs) not in wanted and sha not in previously:
                continue
            problem, size = self._read_chunk(sha, path)
            if problem is None and size is None:
                continue  # removed (gc) since the listing
            report.chunks_read += 1
            report.bytes_read += size or 0
            if problem:
                damaged[sha] = problem
        for sha, path in self._objects():
            report.objects_stored += 1
            if slot_of(sha, self.runs) not in wanted and sha not in previously:
                continue
            problem, size = self._read_object(sha, path)
            if problem is None and size is None:
                continue
            report.objects_read += 1
            report.bytes_read += size or 0
            if problem:
                damaged[sha] = problem
        # A damaged chunk deleted by hand is not repaired while a backup still names it.
        gone = {sha for sha in previously if sha not in damaged and not store.path(sha).exists()
                and not self.repository.object_path(sha).exists()}
        if gone:
            still = self._holders(gone)
            for sha in still:
                damaged[sha] = f"chunk {chunk_relpath(sha)} is missing (it was damaged)"
        if damaged:
            holders = self._holders(set(damaged))
            report.damaged = damaged
            report.damaged_backups = sorted({b for ids in holders.values() for b in ids})
            for sha, problem in sorted(damaged.items()):
                held = holders.get(sha)
                report.problems.append(f"{problem} (held by {', '.join(held) if held else 'no backup: gc removes it'})")
        for slot in slots:
            state["read"][slot] = hour
        state["damaged"] = damaged
        if len(state["read"]) == self.runs:
            report.oldest_hours = max(hour - when for when in state["read"].values())
        self._save(state)
        return report

    def _read_chunk(self, sha: str, path: Path) -> tuple[str | None, int | None]:
        """(problem or None, stored bytes read); (None, None) when the chunk is gone."""
        try:
            size = os.lstat(path).st_size
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return f"chunk {chunk_relpath(sha)} cannot be read ({os_reason(exc)})", 0
        try:
            self.repository.chunks.read(sha, -1)
        except BackupError as exc:
            if not os.path.lexists(path):
                return None, None
            return str(exc), size
        except OSError as exc:
            return f"chunk {chunk_relpath(sha)} cannot be read ({os_reason(exc)})", size
        return None, size

    def _read_object(self, sha: str, path: Path) -> tuple[str | None, int | None]:
        from .verification import check_object

        try:
            size = os.lstat(path).st_size
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return f"object {object_relpath(sha)} cannot be read ({os_reason(exc)})", 0
        problem, _ = check_object(self.repository, sha, size)
        if problem == "is missing":
            return None, None
        return (f"object {object_relpath(sha)} {problem}" if problem else None), size

    def _objects(self):
        from .deletion import _iter_objects

        return _iter_objects(self.repository)

    def _holders(self, shas: set[str]) -> dict[str, list[str]]:
        """The backups whose data includes each of `shas` (read only when something is damaged)."""
        from .deletion import _references

        found: dict[str, list[str]] = {}
        for backup_id in self.repository.backup_ids():
            with contextlib.suppress(BackupError):
                chunks, objects = _references(self.repository, backup_id)
                for sha in shas & (chunks | objects):
                    found.setdefault(sha, []).append(backup_id)
        return found


__all__ = ["Rotation", "RotationReport", "current_hour", "slot_of"]
