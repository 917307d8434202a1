"""The hourly run as the Dagster asset makes it (`BackupService.hourly`), on a data home where
nothing changes: what an unchanged hour costs, with the catalogue in the project database it
copies (each run adds its row and marks it), and the rotation's reads over a whole period."""

from __future__ import annotations

import os
import random
import sqlite3

import pytest

from quadra_pipeline.backup.service import BackupService
from quadra_pipeline.settings import load_settings

HOURS = 24
HOUR = 500_000  # the hour index of the first run (hours since 1970): the runs stand for consecutive hours


@pytest.fixture
def service(tmp_path, monkeypatch):
    """A 6 MB SQLite project database with the project's tables (the catalogue already holding
    300 rows of another repository, so its table and indexes span several pages), and checkpoints."""
    from quadra_pipeline.store import ensure_schema, make_engine

    for name in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "QUADRA_ENV", "QUADRA_SECRET_KEY", "QUADRA_BACKUP_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    engine = make_engine(f"sqlite:///{home / 'quadra.db'}")
    ensure_schema(engine)
    engine.dispose()
    db = sqlite3.connect(home / "quadra.db")
    db.execute("create table filler (id integer primary key, payload blob)")
    db.executemany("insert into filler values (?, ?)", ((i, random.Random(i).randbytes(1000)) for i in range(6000)))
    db.executemany("insert into backups (backup_id, created_at, manifest_sha256, total_bytes, stored_bytes, file_count, "
                   "status, location, signed) values (?, '2026-01-01 00:00:00', ?, 0, 0, 0, 'verified', '/elsewhere', 0)",
                   ((f"2026010{i % 9}T000000Z-{i:08x}", "ab" * 32) for i in range(300)))
    db.commit()
    db.close()
    (home / "checkpoints" / "run-1").mkdir(parents=True)
    (home / "checkpoints" / "run-1" / "ckpt.pt").write_bytes(os.urandom(2 << 20))
    monkeypatch.setenv("QUADRA_HOME", str(home))
    monkeypatch.setenv("QUADRA_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.chdir(tmp_path)
    return BackupService(load_settings())


def files_bytes(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_an_unchanged_hour_costs_its_manifest_and_the_rotation_reads_everything_in_a_period(service, tmp_path):
    first = service.hourly(partition_key="first", workdir=tmp_path, hour=HOUR)
    assert first.good, first.why_bad()
    root = service.repository.root
    grown, read = [], {}
    for index in range(1, HOURS + 1):
        before = files_bytes(root)
        run = service.hourly(partition_key=f"hour {index}", workdir=tmp_path, hour=HOUR + index)
        assert run.good, run.why_bad()
        assert run.create.added_chunks == [], f"hour {index} stored new chunks"
        grown.append(files_bytes(root) - before)
        read[index] = run.rotation.chunks_read
    # The target: at most 64 KiB per unchanged hour; here it is the manifest, its sidecar, the head.
    assert max(grown) <= 64 << 10 and sum(grown) / len(grown) <= 8 << 10, grown
    # The catalogue grew by a row an hour (and took pages for them) without touching the stream.
    with sqlite3.connect(service.settings.home / "quadra.db") as db:
        assert db.execute("select count(*) from backups where location != '/elsewhere'").fetchone()[0] == HOURS + 1
        assert db.execute("select count(distinct status) from backups where location != '/elsewhere'").fetchone()[0] == 1
    # Each hour re-read its share; the shares of 24 consecutive hours are every stored chunk.
    stored = sum(1 for _ in service.repository.chunks.iter_stored())
    assert sum(read[i] for i in range(1, HOURS + 1)) == stored and max(read.values()) < stored / 4
    assert run.rotation.oldest_hours == HOURS - 1
