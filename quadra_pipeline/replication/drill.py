"""The drill of a point-in-time restore of the embedded default: `quadra restore [--to TIME] --drill`.

Why: `quadra restore --to TIME --target DIR` is what one runs on the worst day; a restore that
has never been tried is a hope, not a plan. The drill does exactly that restore (`pitr.restore_to`:
every Litestream-replicated database at TIME, the artifacts the restored MLflow store names from
the backups) into a temporary folder, then checks what came back the way the system would use
it, and removes the folder whatever happened:

- each restored database (project, MLflow, Dagster's runs, schedules and event logs) passes
  `PRAGMA integrity_check` and has its tables (`backup/pitr_drill.py`, EXPECTED_TABLES);
- every artifact folder the restored registry names was found (none missing);
- the champion the restored MLflow store's alias names is among the restored artifacts and
  passes the hourly drill's own check (`backup/champion.py`: SHA-256 as tagged, signature,
  loads and runs).

Without TIME: the newest replicated state (now). A time outside what the replica keeps is
refused before anything is restored (`pitr.restore_to` names the range).
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backup.champion import ChampionProblem, artifact_path
from ..backup.pitr_drill import (
    PitrDrillReport,
    check_champion,
    check_sqlite_database,
    sqlite_query,
)
from . import pitr

#: The role (EXPECTED_TABLES) of each replicated database.
ROLES = {"project": "project", "mlflow": "mlflow", "dagster": "dagster-sqlite", "dagster-schedules": "dagster-schedules"}


def drill(settings: Any, when: dt.datetime | None = None, *, dagster_home: Path | None = None,
          now: dt.datetime | None = None, log: Callable[[str], None] = print) -> PitrDrillReport:
    """Restore everything to `when` (None: the newest state) into a temporary folder, check it,
    remove it. `ReplicationError` when nothing could be restored (a time outside what the
    replica keeps, an empty replica); otherwise every problem is a failed check of the report."""
    started = time.perf_counter()
    now = now or dt.datetime.now(dt.UTC)
    report = PitrDrillReport("sqlite", when, log=log)
    scratch = Path(tempfile.mkdtemp(prefix="quadra-pitr-drill-"))
    try:
        target = scratch / "restored"
        restored = pitr.restore_to(settings, when or now, target, dagster_home=dagster_home, now=now,
                                   log=lambda line: report.details.setdefault("restored", []).append(line))
        report.recovered_to = restored.when
        report.check("restore", True, f"{len(restored.databases)} databases at {pitr._show(restored.when)}, "
                                      f"{restored.runs} runs' event logs, {restored.artifact_files} artifact files "
                                      f"from {restored.artifacts_from or 'nowhere (none named)'} ({restored.seconds:.2f} s)")
        for note in restored.notes:
            report.note(note)
        for name, path in restored.databases.items():
            check_sqlite_database(report, path.relative_to(target).as_posix(), path, ROLES.get(name, name))
        for path in sorted((target / pitr.FOLDERS["dagster-runs"]).glob("*.db")):
            check_sqlite_database(report, path.relative_to(target).as_posix(), path, "dagster-runs")
        if restored.missing_artifacts:
            report.check("artifacts", False, f"{len(restored.missing_artifacts)} folders the restored registry names are in "
                                             f"no backup and not in the live folder: {', '.join(restored.missing_artifacts)}")
        mlflow_db = restored.databases.get("mlflow")
        if mlflow_db is None:
            report.check("champion", False, "MLflow's store is not among the restored databases: no registry to check")
        else:
            check_champion(report, settings, sqlite_query(mlflow_db), lambda champion: _restored_files(settings, target, champion))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        report.seconds = time.perf_counter() - started
    return report


def _restored_files(settings: Any, target: Path, champion: Any) -> Path:
    """The champion's folder among the restored artifacts (`mlartifacts/<path under the root>`)."""
    inside = artifact_path(settings.mlflow_artifact_root, champion.storage_location)
    if inside is None:
        raise ChampionProblem(f"{champion.label}: its files ({champion.storage_location}) are not under the artifact root "
                              f"{settings.mlflow_artifact_root}, so no restore brings them back")
    folder = target / "mlartifacts" / inside
    if not folder.is_dir():
        raise ChampionProblem(f"{champion.label}: its files (mlartifacts/{inside}/) are not among the restored artifacts")
    return folder


__all__ = ["drill"]
