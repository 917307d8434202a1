"""How far behind the replica each database is: the lag, in seconds (no Dagster here; the
replication check calls `measure_lags` and compares with QUADRA_REPLICATION_MAX_LAG).

The lag of one database is the age of the oldest change the replica does not have yet, made of
two parts that Litestream's own files tell:

- **shipping**: Litestream turns each change it sees into an LTX file in its local state
  (`.<db>-litestream/ltx/0/<min>-<max>.ltx`, time-stamped) and ships it to the replica; the age
  of the oldest local file whose transactions the replica lacks (one listing of the replica);
- **capturing**: a change Litestream has not seen yet (its WAL written after Litestream's
  newest local file). Litestream looks every second, so a change is given `settle` seconds
  (about 3) to be captured; one still not captured then means Litestream is stalled or not
  running, and the lag counts from the last change it did capture.

A database with no Litestream state at all (Litestream never ran on it) has an infinite lag;
one that does not exist (yet) is not reported. Nothing is written to any database.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .litestream import (
    MONITOR_INTERVAL_S,
    SYNC_INTERVAL_S,
    Replica,
    databases,
    replica_of,
)

LTX_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")
WAL_HEADER_BYTES = 32


@dataclass
class Lag:
    name: str  # "project", "mlflow", "dagster", "dagster-runs/<file>", ...
    path: Path
    seconds: float  # math.inf: not replicated at all
    local_txid: int = 0
    replica_txid: int = 0
    detail: str = ""

    def as_metadata(self) -> dict[str, Any]:
        return {"database": str(self.path), "lag_seconds": None if math.isinf(self.seconds) else round(self.seconds, 3),
                "local_txid": self.local_txid, "replica_txid": self.replica_txid, "detail": self.detail}


def _local_files(db: Path) -> list[tuple[int, int, float]]:
    """(min txid, max txid, time) of Litestream's local LTX files of `db` (level 0)."""
    directory = db.with_name(f".{db.name}-litestream") / "ltx" / "0"
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = LTX_NAME.match(entry.name)
        if match:
            try:
                found.append((int(match[1], 16), int(match[2], 16), entry.stat().st_mtime))
            except FileNotFoundError:
                continue  # removed by Litestream's retention meanwhile
    return found


def replica_txid(replica: Replica, *names: str) -> int:
    """The newest transaction the replica holds for one database (0: none), from one listing."""
    newest = 0
    for key in replica.store().keys("/".join(names)):
        match = LTX_NAME.match(key.rsplit("/", 1)[-1])
        if match:
            newest = max(newest, int(match[2], 16))
    return newest


def _uncaptured(db: Path, newest_local: float) -> float | None:
    """The WAL's modification time when it holds frames written after Litestream's newest local
    file (a change not captured yet), else None. A truncated WAL holds nothing to capture."""
    wal = db.with_name(db.name + "-wal")
    try:
        stat = wal.stat()
    except FileNotFoundError:
        return None
    if stat.st_size <= WAL_HEADER_BYTES or stat.st_mtime <= newest_local:
        return None
    return stat.st_mtime


def measure(name: str, db: Path, replica: Replica, replica_names: Iterable[str], *, now: float | None = None,
            settle: float = 2 * MONITOR_INTERVAL_S + 1.0) -> Lag:
    """The lag of one database (see the module's docstring)."""
    local = _local_files(db)
    if not local:
        return Lag(name, db, math.inf, detail="no Litestream state for this database: Litestream has never replicated "
                                              "it (is `litestream replicate` running? make dev starts it)")
    shipped = replica_txid(replica, *replica_names)
    newest_local = max(t for _, _, t in local)
    seen = _uncaptured(db, newest_local)
    if seen is not None:  # give Litestream its monitor interval (and a margin) to see the change
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            time.sleep(0.2)
            local = _local_files(db) or local
            newest_local = max(t for _, _, t in local)
            if newest_local >= seen:
                break
        else:
            shipped = replica_txid(replica, *replica_names)
    now = time.time() if now is None else now
    local_txid = max(m for _, m, _ in local)
    lag, detail = 0.0, "up to date"
    pending = [t for _, m, t in local if m > shipped]
    if pending:
        lag, detail = now - min(pending), f"{len(pending)} LTX files not yet in the replica"
    if seen is not None and newest_local < seen:
        lag = max(lag, now - newest_local)
        detail = (f"the WAL changed {now - seen:.1f} s ago and Litestream has not captured it (stalled or not running; "
                  f"its last capture was {now - newest_local:.1f} s ago)")
    return Lag(name, db, max(lag, 0.0), local_txid, shipped, detail)


def measure_lags(settings: Any, *, dagster_home: Path | None = None, recent_s: float | None = None,
                 now: float | None = None) -> list[Lag]:
    """The lag of every replicated database that exists: the project, MLflow and Dagster
    databases, and the event logs of runs written within `recent_s` (default 10 x the limit:
    a finished run's log no longer changes). For the replication check: it fails when any
    `seconds` is above QUADRA_REPLICATION_MAX_LAG."""
    replica = replica_of(settings)
    recent_s = 10 * settings.replication_max_lag if recent_s is None else recent_s
    lags = []
    for group in databases(settings, dagster_home):
        for path in group.files():
            if group.pattern == "*.db" and path.name != "index.db" and not _written_within(path, recent_s):
                continue
            label = group.name if group.pattern != "*.db" else f"{group.name}/{path.name}"
            lags.append(measure(label, path, replica, (group.name, path.name), now=now))
    return lags


def _written_within(path: Path, seconds: float) -> bool:
    newest = 0.0
    for candidate in (path, path.with_name(path.name + "-wal")):
        try:
            newest = max(newest, candidate.stat().st_mtime)
        except FileNotFoundError:
            continue
    return time.time() - newest <= seconds


def lag_problems(lags: Iterable[Lag], max_lag: float) -> list[str]:
    """One line per database whose replica is further behind than `max_lag` seconds."""
    return [f"{lag.name}: {'not replicated' if math.isinf(lag.seconds) else f'{lag.seconds:.1f} s behind'} "
            f"(limit {max_lag:g} s): {lag.detail}" for lag in lags if lag.seconds > max_lag]


__all__ = ["SYNC_INTERVAL_S", "Lag", "lag_problems", "measure", "measure_lags", "replica_txid"]
