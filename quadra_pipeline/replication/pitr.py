"""Point-in-time restore of the embedded default: every replicated SQLite database to one
instant with `litestream restore -timestamp`, and the artifacts the restored registry names from
the hourly backups (content-addressed: the first backup taken at or after that instant holds
every artifact that existed then; only those the restored databases name are restored, so none
is newer). `quadra restore --to TIME --target DIR`.

Into DIR (new or empty; written beside it and renamed at the end, like a backup restore):

    project-db/<file>                    the project database at TIME
    mlflow-db/<file>                     MLflow's store at TIME
    dagster/history/runs.db              Dagster's instance at TIME (a DAGSTER_HOME without dagster.yaml)
    dagster/schedules/schedules.db
    dagster/history/runs/index.db, <run id>.db   the event logs of the runs runs.db names at TIME
    mlartifacts/...                      the artifacts of the runs and models MLflow's store names at TIME

A time outside what the replica keeps (before the oldest snapshot Litestream keeps of any of the
databases, or in the future) is refused, naming the range. After the newest replicated change
the newest state is restored (nothing changed in between, as far as the replica knows: a stalled
replication is what the lag check is for). Precision: Litestream keeps every transaction for 5
minutes (level 0), then compacts them (30 s, 5 min, 1 h windows): a time older than 5 minutes is
restored to the newest compacted state at or before it.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .litestream import (
    Database,
    Replica,
    ReplicationError,
    databases,
    litestream,
    ltx_files,
    replica_of,
    restore_command,
)

FOLDERS = {"project": "project-db", "mlflow": "mlflow-db", "dagster": "dagster/history",
           "dagster-schedules": "dagster/schedules", "dagster-runs": "dagster/history/runs"}


@dataclass
class Kept:
    earliest: dt.datetime  # the oldest snapshot kept: a time must be after it
    newest: dt.datetime  # the newest change shipped
    newest_txid: int


@dataclass
class PointInTimeResult:
    when: dt.datetime
    target: Path
    databases: dict[str, Path] = field(default_factory=dict)
    runs: int = 0
    artifacts_from: str = ""
    artifact_files: int = 0
    missing_artifacts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 / ISO 8601 instant with its time zone ("2026-12-07T10:15:30Z")."""
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ReplicationError(f"{text!r} is not a time: give one like 2026-12-07T10:15:30Z") from None
    if moment.tzinfo is None:
        raise ReplicationError(f"{text!r} has no time zone: add Z for UTC (2026-12-07T10:15:30Z)")
    return moment.astimezone(dt.UTC)


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _show(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kept(location: str) -> Kept | None:
    """What the replica keeps of one database (None: nothing)."""
    files = ltx_files(location)
    if not files:
        return None
    times = [parse_time(f["timestamp"]) for f in files]
    # A restore starts from a snapshot (level 9), or from a file that starts at the database's
    # first transaction (a database Litestream picked up while running gets no snapshot until
    # its snapshot interval, 24 h by default).
    snapshots = [parse_time(f["timestamp"]) for f in files if int(f["level"]) == 9 or int(f["min_txid"], 16) == 1]
    if not snapshots:
        return None
    return Kept(min(snapshots), max(times), max(int(f["max_txid"], 16) for f in files))


def _restore_one(location: str, output: Path, when: dt.datetime, keeps: Kept) -> str:
    """One database at `when` into `output`; what was done (a line), or ReplicationError."""
    output.parent.mkdir(parents=True, exist_ok=True)
    done = litestream(restore_command(location, output, timestamp=_stamp(when)))
    if done.returncode == 0:
        return f"at {_stamp(when)}"
    message = (done.stderr or done.stdout).strip().splitlines()
    reason = message[-1] if message else f"exit {done.returncode}"
    if "timestamp does not exist" in reason and when >= keeps.newest - dt.timedelta(seconds=1):
        # After the newest shipped change: the newest state is the state at `when`.
        done = litestream(restore_command(location, output, txid=keeps.newest_txid))
        if done.returncode == 0:
            return f"at its newest change ({_show(keeps.newest)}, transaction {keeps.newest_txid}): nothing newer was shipped"
        message = (done.stderr or done.stdout).strip().splitlines()
        reason = message[-1] if message else f"exit {done.returncode}"
    raise ReplicationError(f"litestream restore {location.split('?')[0]} to {_stamp(when)}: {reason}")


def _run_ids(runs_db: Path) -> list[str]:
    connection = sqlite3.connect(f"file:{runs_db}?mode=ro", uri=True)
    try:
        return [r[0] for r in connection.execute("select run_id from runs")]
    except sqlite3.Error:
        return []
    finally:
        connection.close()


def _named_by_mlflow(mlflow_db: Path) -> tuple[set[str], list[str]]:
    """(run and logged-model ids, artifact folders of the model versions relative to the
    artifact root) that MLflow's store names."""
    connection = sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True)
    ids: set[str] = set()
    locations: list[str] = []
    try:
        tables = {r[0] for r in connection.execute("select name from sqlite_master where type='table'")}
        if "runs" in tables:
            ids |= {r[0] for r in connection.execute("select run_uuid from runs")}
        if "logged_models" in tables:
            ids |= {r[0] for r in connection.execute("select model_id from logged_models")}
        if "model_versions" in tables:
            columns = {r[1] for r in connection.execute("pragma table_info(model_versions)")}
            column = "storage_location" if "storage_location" in columns else "source"
            for (location,) in connection.execute(f"select {column} from model_versions where current_stage != 'Deleted_Internal'"):
                rel = _artifact_rel(location or "")
                if rel:
                    locations.append(rel)
    finally:
        connection.close()
    return ids, sorted(set(locations))


def _artifact_rel(location: str) -> str | None:
    for marker in ("/mlartifacts/", "mlflow-artifacts:/"):
        if marker in location:
            return location.split(marker, 1)[1].strip("/")
    return None


def _artifacts(settings: Any, when: dt.datetime, stage: Path, mlflow_db: Path, result: PointInTimeResult) -> None:
    """The artifacts the restored MLflow store names: from the first backup taken at or after
    `when` (it holds every artifact that existed then), else (no backup since) the live folder."""
    from ..backup.service import BackupService

    ids, versions = _named_by_mlflow(mlflow_db)

    def wanted(path: str) -> bool:
        parts = path.split("/")
        return parts[0] == "mlartifacts" and any(part in ids for part in parts[1:])

    service = BackupService(settings, log_fn=lambda line: None)
    chosen = None
    for backup_id in service.repository.backup_ids():
        try:
            manifest = service.repository.read_manifest(backup_id)
        except Exception:  # noqa: BLE001 - a damaged backup is not a source; verify reports it
            continue
        if manifest.created_at >= when:
            chosen = manifest
            break
    if chosen is not None:
        scratch = stage / ".artifacts"
        service.repository.restore(chosen.backup_id, scratch, select=wanted)
        if (scratch / "mlartifacts").exists():
            shutil.move(str(scratch / "mlartifacts"), str(stage / "mlartifacts"))
        shutil.rmtree(scratch, ignore_errors=True)
        result.artifacts_from = f"backup {chosen.backup_id} (the first taken at or after {_show(when)})"
    live = settings.mlflow_artifact_root
    for rel in versions:  # a version registered after the newest backup: from the live folder
        there = stage / "mlartifacts" / rel
        if (there.is_dir() and any(there.rglob("*"))) or there.is_file():
            continue
        source = live / rel
        if source.exists():
            shutil.copytree(source, there) if source.is_dir() else shutil.copy2(source, there)
            result.notes.append(f"mlartifacts/{rel}: from the live artifact folder (no backup since {_show(when)})")
        else:
            result.missing_artifacts.append(f"mlartifacts/{rel}")
    if chosen is None:
        result.artifacts_from = f"the live artifact folder {live} (no backup taken at or after {_show(when)})"
        if live.exists():
            for path in sorted(live.rglob("*")):
                rel = path.relative_to(live).as_posix()
                if path.is_file() and wanted(f"mlartifacts/{rel}") and not (stage / "mlartifacts" / rel).exists():
                    (stage / "mlartifacts" / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, stage / "mlartifacts" / rel)
    result.artifact_files = sum(1 for p in (stage / "mlartifacts").rglob("*") if p.is_file()) \
        if (stage / "mlartifacts").exists() else 0


def kept_ranges(replica: Replica, groups: list[Database]) -> dict[str, Kept | None]:
    """What the replica keeps of each single database (not the per-run event logs)."""
    found: dict[str, Kept | None] = {}
    for group in groups:
        if group.pattern == "*.db":
            found[f"{group.name}/index.db"] = kept(replica.location(group.name, "index.db"))
        else:
            found[group.name] = kept(replica.location(group.name, group.pattern))
    return found


def restore_to(settings: Any, when: dt.datetime, target: Path, *, dagster_home: Path | None = None,
               now: dt.datetime | None = None, log=print) -> PointInTimeResult:
    """Every replicated database at `when`, and the artifacts they name, into `target`."""
    started = time.perf_counter()
    replica = replica_of(settings)
    groups = databases(settings, dagster_home)
    now = now or dt.datetime.now(dt.UTC)
    ranges = kept_ranges(replica, groups)
    required = {g.name for g in groups if g.required}
    absent = sorted(name for name, keeps in ranges.items() if keeps is None and name in required)
    if absent:
        raise ReplicationError(f"the replica {settings.replica} holds nothing of {', '.join(absent)}: no point-in-time "
                               "restore (is replication running? make dev starts it when QUADRA_REPLICA is set)")
    present = {name: keeps for name, keeps in ranges.items() if keeps is not None}
    earliest = max(k.earliest for k in present.values())
    newest = max(k.newest for k in present.values())
    described = "; ".join(f"{n} {_show(k.earliest)} .. {_show(k.newest)}" for n, k in sorted(present.items()))
    if when <= earliest or when > now:
        raise ReplicationError(
            f"{_show(when)} is outside what the replica keeps: from {_show(earliest)} (the oldest snapshot every "
            f"database has) to now ({_show(now)}; newest change shipped {_show(newest)}). Per database: {described}"
        )
    target = Path(target).absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ReplicationError(f"{target}: restore target is not empty; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.pitr-", dir=target.parent))
    result = PointInTimeResult(when, target)
    try:
        for group in groups:
            if group.pattern == "*.db":
                continue
            keeps = ranges.get(group.name)
            if keeps is None:
                result.notes.append(f"{group.name}: not in the replica (never made here)")
                continue
            output = stage / FOLDERS[group.name] / group.pattern
            how = _restore_one(replica.location(group.name, group.pattern), output, when, keeps)
            result.databases[group.name] = target / FOLDERS[group.name] / group.pattern
            log(f"{group.name}: {output.name} {how}")
        runs_group = next((g for g in groups if g.pattern == "*.db"), None)
        runs_db = stage / FOLDERS["dagster"] / "runs.db"
        if runs_group is not None and runs_db.exists():
            names = ["index.db"] + [f"{run_id}.db" for run_id in _run_ids(runs_db)]
            for name in names:
                keeps = kept(replica.location(runs_group.name, name))
                if keeps is None or keeps.earliest >= when:
                    if name != "index.db":
                        result.notes.append(f"run {name[:-3]}: its event log was not replicated before "
                                            f"{_show(when)} (started within a second of it, or before replication)")
                    continue
                _restore_one(replica.location(runs_group.name, name), stage / FOLDERS["dagster-runs"] / name, when, keeps)
                result.runs += name != "index.db"
        mlflow_db = stage / FOLDERS["mlflow"] / next((g.pattern for g in groups if g.name == "mlflow"), "mlflow.db")
        if mlflow_db.exists():
            _artifacts(settings, when, stage, mlflow_db, result)
        for leftover in stage.rglob("*-txid"):  # litestream's note of the restored transaction
            leftover.unlink()
        if target.exists():
            target.rmdir()
        stage.rename(target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    result.seconds = time.perf_counter() - started
    return result
