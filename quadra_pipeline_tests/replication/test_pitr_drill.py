"""The drill of the SQLite point-in-time restore, for real: a data home with trained, signed,
registered versions and a champion (MLflow's own SQLite store), a real Dagster instance,
Litestream (the `litestream` binary) replicating all of them to a folder, and `quadra restore ...
--drill` run as a user runs it (the CLI in a child process). No hourly backup here, so the restore
takes the artifacts from the live folder (test_litestream.py covers artifacts from a backup)."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest

from quadra_pipeline.replication import lag
from quadra_pipeline.replication.pitr import _stamp
from quadra_pipeline_tests.backup.live_home import DRILL_TIMES, build_live_home, quadra
from quadra_pipeline_tests.replication.test_litestream import (
    SHIPPED_WITHIN_S,
    Replicating,
    _wait_for,
)

#: What the drill must have checked in a restored home (besides each run's event log).
DATABASES = {"project-db/quadra.db", "mlflow-db/mlflow.db", "dagster/history/runs.db",
             "dagster/schedules/schedules.db", "dagster/history/runs/index.db"}


def _dagster_instance(dagster_home: Path) -> None:
    """A real Dagster SQLite instance with one run: runs.db, schedules.db, index.db, <run>.db."""
    import dagster as dg

    @dg.asset
    def drill_probe() -> int:
        return 1

    dagster_home.mkdir(parents=True, exist_ok=True)
    with dg.DagsterInstance.local_temp(str(dagster_home)) as instance:
        assert dg.materialize([drill_probe], instance=instance).success


def _drill(home: Path, env: dict, *args: str, check: int) -> dict | str:
    done = quadra(home, "restore", *args, "--drill", *(["--json"] if check == 0 else []), check=check, **env)
    return json.loads(done.stdout) if check == 0 else done.stdout + done.stderr


@pytest.mark.slow
def test_the_drill_restores_every_database_and_checks_the_champion_then_finds_a_flipped_byte(tmp_path, monkeypatch):
    from quadra_pipeline.registry import ModelRegistry
    from quadra_pipeline.registry.service import promote
    from quadra_pipeline.settings import load_settings
    from quadra_pipeline.store import make_engine
    from quadra_pipeline_tests.registry.test_signing import flip_a_byte, stored_file

    home, dagster_home, replica = tmp_path / "home", tmp_path / "dagster", tmp_path / "replica"
    env = {"QUADRA_REPLICA": str(replica), "DAGSTER_HOME": str(dagster_home), "QUADRA_BACKUP_DIR": str(tmp_path / "backups"),
           "TMPDIR": str(tmp_path / "tmp")}  # where the drills' scratch folders go (and must be gone from)
    (tmp_path / "tmp").mkdir()
    for var in ("MLFLOW_TRACKING_URI", "DATABASE_URL", "QUADRA_ENV", "QUADRA_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("QUADRA_HOME", str(home))
    for name, value in env.items():
        if name != "TMPDIR":
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    build_live_home(home, versions=2)  # two signed versions, version 1 the champion
    _dagster_instance(dagster_home)
    settings = load_settings()
    running = Replicating(settings, dagster_home)
    try:
        replica_of = __import__("quadra_pipeline.replication.litestream", fromlist=["replica_of"]).replica_of(settings)
        _wait_for(lambda: all(lag.replica_txid(replica_of, name, file) > 0 for name, file in
                              (("project", "quadra.db"), ("mlflow", "mlflow.db"), ("dagster", "runs.db"))),
                  what="the first snapshots")
        time.sleep(1.1)  # a time after every first snapshot
        when = dt.datetime.now(dt.UTC)
        time.sleep(1.0)
        registry = ModelRegistry.from_settings(settings)
        engine = make_engine(settings.database_url)
        promote(registry, engine, 2, moved_by="test", reason="after the drill's instant")
        engine.dispose()
        time.sleep(SHIPPED_WITHIN_S)

        # To the instant: version 1 was the champion then; every database restored and checked.
        started = time.monotonic()
        at_when = _drill(home, env, "--to", _stamp(when), check=0)
        checked_text = (f"{len(at_when['checks'])} checks: every database's integrity and tables, the champion's SHA-256, "
                        f"signature, load (the drill itself {at_when['seconds']:.1f} s)")
        DRILL_TIMES.append(("point-in-time drill, SQLite (`quadra restore --to T --drill`, whole command)",
                            time.monotonic() - started, checked_text))
        assert at_when["ok"] and at_when["champion_version"] == 1, at_when
        checked = {c["name"] for c in at_when["checks"] if c["ok"]}
        assert DATABASES <= checked and "champion quadra-matrix version 1" in checked, checked
        assert at_when["details"]["champion"]["signature"] == "verified"
        assert any(name.startswith("dagster/history/runs/") and name != "dagster/history/runs/index.db" for name in checked)

        # The newest state: version 2 is the champion.
        newest = _drill(home, env, check=0)
        assert newest["ok"] and newest["champion_version"] == 2 and newest["target"] == "newest", newest

        # A flipped byte in the champion's checkpoint where the restore finds it (the live folder): the
        # drill fails, naming it.
        flip_a_byte(stored_file(registry, 2, "extra_files/checkpoint.pt"))
        failed = _drill(home, env, check=1)
        assert "FAILED  champion quadra-matrix version 2: checkpoint SHA-256" in failed, failed
        assert "quadra: error: point-in-time drill failed (1 of " in failed and "champion quadra-matrix version 2" in failed
        # At the instant before the promotion the champion is version 1, whose files are intact: good.
        assert _drill(home, env, "--to", _stamp(when), check=0)["ok"]

        # Outside what the replica keeps: refused with the range, in one line.
        refused = _drill(home, env, "--to", _stamp(when - dt.timedelta(hours=1)), check=1)
        assert "is outside what the replica keeps: from " in refused and refused.count("\n") == 1, refused
        # Nothing left behind by any of the drills.
        assert not list((tmp_path / "tmp").iterdir())
    finally:
        running.stop()
