"""What the two point-in-time drills share: the report (one line per check) and what a recovered
database must have.

A point-in-time recovery is only known to work once it has been done: `quadra restore --to TIME
--drill` (the SQLite databases from Litestream's replica, `replication/drill.py`) and `quadra wal
drill [--to TIME]` (PostgreSQL from its base backups and archived WAL, `wal_drill.py`) each
recover the whole system into scratch space, check it, and remove it. Their checks: each database
opens and has its tables, and the champion the recovered registry names passes the hourly drill's
own champion check (`champion.py`). The report is the same for both, so the CLI prints, and the
Dagster check records, the same thing for either.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Tables each recovered database must have: those that have existed since the first schema of
#: each (a recovery to an older time may predate newer tables, never these).
EXPECTED_TABLES: dict[str, frozenset[str]] = {
    "project": frozenset({"training_runs", "training_metrics", "model_versions"}),
    "mlflow": frozenset({"experiments", "runs", "registered_models", "model_versions", "model_version_tags",
                         "registered_model_aliases"}),
    "dagster": frozenset({"runs", "event_logs"}),  # PostgreSQL: Dagster's storage in one database
    # SQLite: Dagster's storage in files (runs.db, schedules.db, the event logs).
    "dagster-sqlite": frozenset({"runs", "run_tags"}),
    "dagster-schedules": frozenset({"jobs", "job_ticks"}),
    "dagster-runs": frozenset({"event_logs"}),
}


def _show(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class DrillCheck:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok    ' if self.ok else 'FAILED'}  {self.name}: {self.detail}"


@dataclass
class PitrDrillReport:
    """The outcome of one point-in-time drill: what was asked (`target`, None: the newest state),
    what was reached (`recovered_to`), each check, and figures for the record (`details`)."""

    kind: str  # "sqlite" (Litestream) or "postgresql" (base backup + WAL)
    target: dt.datetime | None
    log: Callable[[str], None] = field(default=lambda line: None, repr=False)
    recovered_to: dt.datetime | None = None
    champion_version: int | None = None
    checks: list[DrillCheck] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(DrillCheck(name, ok, detail))
        self.log(self.checks[-1].line())
        return ok

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.log(f"note    {text}")

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[DrillCheck]:
        return [c for c in self.checks if not c.ok]

    def summary(self) -> str:
        """One line: what passed, or what failed (named)."""
        if self.ok:
            return f"point-in-time drill passed: {len(self.checks)} checks in {self.seconds:.1f} s"
        if not self.checks:
            return "point-in-time drill failed: nothing was checked"
        return (f"point-in-time drill failed ({len(self.failed)} of {len(self.checks)} checks): "
                + "; ".join(f"{c.name}: {c.detail}" for c in self.failed))

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "ok": self.ok, "target": _show(self.target) or "newest",
            "recovered_to": _show(self.recovered_to), "champion_version": self.champion_version,
            "seconds": round(self.seconds, 2), "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "notes": self.notes, "details": self.details,
        }


def check_sqlite_database(report: PitrDrillReport, name: str, path: Path, role: str) -> bool:
    """A restored SQLite file: `PRAGMA integrity_check` says ok and the tables of its `role`
    (EXPECTED_TABLES) are there. Opened read-only: a drill never changes what it checks."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            status = "; ".join(str(r[0]) for r in connection.execute("pragma integrity_check").fetchall()[:3])
            tables = {r[0] for r in connection.execute("select name from sqlite_master where type = 'table'")}
            rows = {t: connection.execute(f'select count(*) from "{t}"').fetchone()[0] for t in sorted(tables)}
        finally:
            connection.close()
    except sqlite3.Error as exc:
        return report.check(name, False, f"cannot open the restored database ({exc})")
    report.details[name] = {"tables": len(tables), "rows": sum(rows.values()), "table_rows": rows}
    if status != "ok":
        return report.check(name, False, f"integrity_check says {status}")
    missing = sorted(EXPECTED_TABLES[role] - tables)
    if missing:
        return report.check(name, False, f"integrity ok, but tables missing: {', '.join(missing)}")
    return report.check(name, True, f"integrity ok, {len(tables)} tables, {sum(rows.values())} rows")


def sqlite_query(path: Path) -> Callable[..., list[tuple]]:
    """SQL on a restored SQLite file, read-only (what `champion.read_champion` runs)."""

    def query(sql: str, **params: Any) -> list[tuple]:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    return query


def check_champion(report: PitrDrillReport, settings: Any, registry: Callable[..., list[tuple]],
                   locate: Callable[[Any], Path]) -> None:
    """The champion of the recovered registry through the hourly drill's check (`champion.py`).
    `locate(champion)` puts the version's files in a folder and returns it (or raises
    `ChampionProblem` naming why it cannot)."""
    from .champion import ChampionProblem, read_champion, verify_champion_files

    try:
        champion = read_champion(registry)
    except ChampionProblem as exc:
        report.check("champion", False, str(exc))
        return
    if champion is None:
        report.check("champion", True, "none registered at that time: nothing to check")
        return
    report.champion_version = champion.version
    try:
        checked = verify_champion_files(settings, champion, locate(champion))
    except ChampionProblem as exc:
        report.check(champion.label, False, str(exc).removeprefix(f"{champion.label}: "))
        return
    report.details["champion"] = checked
    report.check(champion.label, True, f"SHA-256 {checked['sha256'][:12]} as tagged, signature verified, loads and runs")


__all__ = ["EXPECTED_TABLES", "DrillCheck", "PitrDrillReport", "check_champion", "check_sqlite_database", "sqlite_query"]
