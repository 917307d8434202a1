"""The backup service on a real data home, and `quadra backup` as a user runs it."""

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest

from quadra_pipeline_tests.production import set_production

from quadra_pipeline.backup import BackupError, IntegrityError
from quadra_pipeline.backup.service import BackupService
from quadra_pipeline.settings import load_settings
from quadra_pipeline_tests.backup.live_home import build_live_home, quadra

KEY = "5e" * 32


@pytest.fixture(scope="module")
def live_template(tmp_path_factory):
    """One trained home per module; tests copy nothing from it but read it (or back it up)."""
    home = tmp_path_factory.mktemp("live") / "home"
    old = os.environ.get("QUADRA_HOME")
    os.environ["QUADRA_HOME"] = str(home)
    try:
        build_live_home(home, versions=1)
    finally:
        if old is None:
            os.environ.pop("QUADRA_HOME")
        else:
            os.environ["QUADRA_HOME"] = old
    return home


@pytest.fixture
def service(live_template, monkeypatch, tmp_path):
    for name in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "QUADRA_ENV", "QUADRA_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QUADRA_HOME", str(live_template))
    monkeypatch.setenv("QUADRA_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.chdir(tmp_path)
    return BackupService(load_settings())


def stored_bytes(root: Path) -> int:
    """Bytes of every file in the repository (objects, manifests, sidecars)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.fixture
def own_service(tmp_path, monkeypatch):
    """A home of its own: in-place restores swap its files, so it is not shared with other tests."""
    for name in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "QUADRA_ENV", "QUADRA_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "own-home"
    monkeypatch.setenv("QUADRA_HOME", str(home))
    monkeypatch.setenv("QUADRA_BACKUP_DIR", str(tmp_path / "own-backups"))
    monkeypatch.chdir(tmp_path)
    build_live_home(home, versions=1)
    return BackupService(load_settings())


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def test_24_hourly_backups_of_an_unchanged_system_take_at_most_1_1x_one(service):
    first = service.create(partition_key="2026-11-29-00:00")
    one, one_on_disk = stored_bytes(service.repository.root), disk_bytes(service.repository.root)
    assert first.file_count > 5 and first.stored_bytes > 0
    for hour in range(1, 24):
        result = service.create(partition_key=f"2026-11-29-{hour:02d}:00")
        assert result.stored_bytes == 0, "an unchanged system stores no new content"
    assert len(service.repository.backup_ids()) == 24
    assert stored_bytes(service.repository.root) <= 1.1 * one
    # On disk each backup's own manifest and sidecar take a 4 KiB block each; still within 1.1x here.
    assert disk_bytes(service.repository.root) <= 1.1 * one_on_disk
    # The catalogue (which each backup changes) is not what made the copies differ: it is left out.
    parts = service.repository.read_manifest(service.repository.backup_ids()[-1]).sources["parts"]
    assert parts["project-db"]["catalogue"].startswith("left out")


def test_signed_in_production_and_a_wrong_key_is_caught(service, monkeypatch):
    set_production(monkeypatch, KEY)
    signed = BackupService(load_settings())
    backup_id = signed.create().manifest.backup_id
    assert signed.repository.read_manifest(backup_id).signature
    assert signed.verify([backup_id])[0].ok
    monkeypatch.setenv("QUADRA_SECRET_KEY", "7a" * 32)  # another key: the manifest no longer checks out
    [report] = BackupService(load_settings()).verify([backup_id])
    assert not report.ok and any("signature" in p for p in report.problems)


def test_prune_keeps_the_policy_and_the_newest_verified(service):
    repo = service.repository
    now = dt.datetime(2026, 11, 29, 12, tzinfo=dt.timezone.utc)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "f.txt"
        data.write_text("same content")
        from quadra_pipeline.backup import SourceFile

        made = []
        for hours_ago in (1, 2, 30, 31, 24 * 40, 24 * 40 + 1, 24 * 800):
            when = now - dt.timedelta(hours=hours_ago)
            made.append(repo.create([SourceFile("f.txt", data)], sources={}, created_at=when).manifest.backup_id)
    dry = service.prune(dry_run=True, now=now)
    assert dry.deleted == [] and repo.backup_ids() == sorted(made)
    # 1 h, 2 h, 30 h, 31 h: distinct hours within 7 days (hourly). 40 d and 40 d + 1 h: the same
    # ISO week, past the 30 daily days: only the newer stays (weekly). 800 d: past 24 months.
    expected_gone = {made[5], made[6]}
    assert set(dry.plan.delete) == expected_gone
    result = service.prune(now=now)
    assert set(result.deleted) == expected_gone
    assert set(repo.backup_ids()) == set(made) - expected_gone


def test_restore_refuses_a_tampered_backup_and_writes_nothing(service, tmp_path):
    backup_id = service.create().manifest.backup_id
    manifest = service.repository.read_manifest(backup_id)
    victim = next(e for e in manifest.files if e.path.endswith(".db"))
    obj = service.repository.object_path(victim.sha256)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(obj, 0o644)
    obj.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="corrupt"):
        service.restore(backup_id, tmp_path / "target")
    assert not (tmp_path / "target").exists()
    with pytest.raises(BackupError, match="exactly one of"):
        service.restore(backup_id)


def test_cli_create_list_verify_export_import_prune(service, live_template, tmp_path):
    env = {"QUADRA_BACKUP_DIR": str(tmp_path / "backups")}
    created = [quadra(live_template, "backup", "create", **env).stdout.strip() for _ in range(2)]
    listing = quadra(live_template, "backup", "list", **env).stdout.splitlines()
    assert [line.split()[0] for line in listing] == created  # one line per backup, its id first
    verified = quadra(live_template, "backup", "verify", **env)
    assert verified.stdout.count(" OK ") == 2

    archive = tmp_path / "offsite" / "b.tar"
    archive.parent.mkdir()
    quadra(live_template, "backup", "export", created[0], "--out", archive, **env)
    check = subprocess.run(["sha256sum", "-c", "b.tar.sha256"], cwd=archive.parent, capture_output=True, text=True)
    assert check.returncode == 0
    other = {"QUADRA_BACKUP_DIR": str(tmp_path / "elsewhere")}
    assert quadra(live_template, "backup", "import", archive, **other).stdout.strip() == created[0]
    assert quadra(live_template, "backup", "verify", created[0], **other).returncode == 0

    dry = quadra(live_template, "backup", "prune", "--dry-run", **env)
    # Two backups in the same hour: the hourly tier keeps the newer; dry-run deletes nothing.
    assert f"would delete {created[0]}" in dry.stdout and "would delete 1 backups" in dry.stdout
    assert [line.split()[0] for line in quadra(live_template, "backup", "list", **env).stdout.splitlines()] == created

    # Tamper: verify (default: all) exits non-zero, names the backup and the problem, in one line on stderr.
    manifest_file = tmp_path / "backups" / "manifests" / f"{created[1]}.json"
    os.chmod(manifest_file, 0o644)
    manifest = json.loads(manifest_file.read_text())
    manifest["total_bytes"] += 1
    manifest_file.write_text(json.dumps(manifest))
    bad = quadra(live_template, "backup", "verify", check=None, **env)
    assert bad.returncode != 0
    assert f"{created[1]}  FAILED" in bad.stdout and f"{created[0]}  OK" in bad.stdout
    assert bad.stderr.strip().splitlines() == ["quadra: error: 1 of 2 backups failed verification"]
    listed = quadra(live_template, "backup", "list", **env).stdout.splitlines()  # one bad manifest: the others still list
    assert listed[0].startswith(f"{created[0]}  2026") and listed[1].startswith(f"{created[1]}  DAMAGED")
    refused = quadra(live_template, "backup", "restore", created[1], "--target", tmp_path / "r", check=None, **env)
    assert refused.returncode != 0 and created[1] in refused.stderr and not (tmp_path / "r").exists()


def home_state(home: Path) -> tuple[dict, dict]:
    """Bytes of every file but the databases, and the databases' row counts. (Database bytes
    change when the last connection checkpoints its WAL, and on restore; their rows must not.
    The catalogue table is left out: it mirrors the repository, and is rebuilt from it.)"""
    import hashlib

    from quadra_pipeline.backup.service import table_counts

    files = {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in home.rglob("*") if p.is_file() and "restore-aside" not in p.parts
             and not p.relative_to(home).parts[0].startswith(".") and ".db" not in p.name}
    counts = {db: {t: n for t, n in table_counts(home / db).items() if t != "backups"} for db in ("quadra.db", "mlflow.db")}
    return files, counts


def test_an_in_place_restore_that_fails_half_way_puts_everything_back(own_service, monkeypatch):
    """All or nothing: a move that fails after others were made undoes them."""
    import shutil

    service = own_service
    home = service.settings.home
    service.create()
    (home / "checkpoints" / "added-after-backup.bin").write_bytes(b"changed since the backup")
    before = home_state(home)
    real_move, calls = shutil.move, []

    def failing_move(src, dst):
        calls.append((src, dst))
        if len(calls) == 5:  # after the databases went in, while the artifacts are being swapped
            raise OSError(28, "No space left on device")
        return real_move(src, dst)

    monkeypatch.setattr(shutil, "move", failing_move)
    with pytest.raises(OSError, match="No space left"):
        service.restore("latest", in_place=True)
    monkeypatch.setattr(shutil, "move", real_move)
    assert home_state(home) == before
    (home / "checkpoints" / "added-after-backup.bin").unlink()


@pytest.mark.postgres
def test_backup_and_restore_drill_with_the_project_database_on_postgresql(tmp_path, monkeypatch):
    """Production's shape: the project database on PostgreSQL (pg_dump), MLflow on SQLite."""
    import sqlalchemy as sa

    from quadra_pipeline.backup.drill import restore_drill

    from quadra_pipeline_tests.postgres import ADMIN_URL, scratch_database

    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with scratch_database("quadra_bk") as database_url:
        home = tmp_path / "home"
        for var in ("MLFLOW_TRACKING_URI", "QUADRA_ENV", "QUADRA_SECRET_KEY"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("QUADRA_HOME", str(home))
        monkeypatch.setenv("DATABASE_URL", database_url.render_as_string(hide_password=False))
        monkeypatch.setenv("QUADRA_BACKUP_DIR", str(tmp_path / "backups"))
        monkeypatch.chdir(tmp_path)
        build_live_home(home, versions=1)
        service = BackupService(load_settings())
        backup_id = service.create().manifest.backup_id
        parts = service.repository.read_manifest(backup_id).sources["parts"]
        assert parts["project-db"]["kind"] == "postgresql" and parts["project-db"]["path"].endswith(".pgdump")
        drill = restore_drill(service, backup_id, tmp_path / "drill")
        assert drill.ok, drill.problems
        assert drill.checked["project-db"]["restored_into"] == "scratch PostgreSQL database"
        assert drill.checked["project-db"]["rows"] > 0 and drill.checked["champion"]["version"] == 1
        with admin.connect() as conn:  # the scratch database is gone again
            left = conn.execute(sa.text("select count(*) from pg_database where datname like 'quadra_drill_%'")).scalar()
        assert left == 0

        # In place: rows written after the backup are gone again, and the database as it was
        # before the restore is kept aside as a dump.
        live = sa.create_engine(os.environ["DATABASE_URL"])
        with live.begin() as conn:
            conn.execute(sa.text("delete from training_metrics"))
        result = service.restore(backup_id, in_place=True)
        with live.connect() as conn:
            assert conn.execute(sa.text("select count(*) from training_metrics")).scalar() == 3
        live.dispose()
        assert (result.moved_aside / "project-db" / "quadra.pgdump").stat().st_size > 0
    admin.dispose()


KILL_MID_SWAP = """
import os, shutil, signal, sys
from quadra_pipeline.backup.service import BackupService
from quadra_pipeline.settings import load_settings
real, calls = shutil.move, []
def move(src, dst):
    calls.append(src)
    if len(calls) == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)  # the machine dies in the middle of the swap
    return real(src, dst)
shutil.move = move
BackupService(load_settings()).restore("latest", in_place=True)
"""


def test_a_restore_killed_mid_swap_loses_nothing_and_running_it_again_finishes_it(own_service, tmp_path):
    import hashlib

    service = own_service
    import subprocess
    import sys

    home = service.settings.home

    def files_of(root, skip=("restore-aside",)):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in root.rglob("*") if p.is_file() and not set(skip) & set(p.relative_to(root).parts)
                and not p.relative_to(root).parts[0].startswith(".")}

    def state():
        return home_state(home)

    backup_id = service.create().manifest.backup_id
    expected = state()
    # Change the live data after the backup, so old and restored content differ.
    (home / "checkpoints" / "added-after-backup.bin").write_bytes(b"new data")
    live_before = files_of(home)

    killed = subprocess.run([sys.executable, "-c", KILL_MID_SWAP, "4"], env=os.environ.copy(), capture_output=True, timeout=300)
    assert killed.returncode == -9
    # Nothing lost: every file of the live data before the restore is in place or moved aside.
    aside_files = {}
    for folder in (home / "restore-aside").iterdir():
        aside_files.update(files_of(folder, skip=()))
    now = files_of(home)
    for path, digest in live_before.items():
        assert now.get(path) == digest or aside_files.get(path) == digest, path
    # Running the same restore again finishes it.
    assert list(home.glob(".restore-*"))  # the killed run's staging copy is still there...
    service.restore(backup_id, in_place=True)
    assert state() == expected
    assert not list(home.glob(".restore-*"))  # ...and the next restore cleaned it up
