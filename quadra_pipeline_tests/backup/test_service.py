"""The backup service on a real data home, and `quadra backup` as a user runs it."""

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest

from quadra_pipeline.backup import BackupError, IntegrityError
from quadra_pipeline.backup.service import BackupService
from quadra_pipeline.settings import load_settings
from quadra_pipeline_tests.backup.live_home import build_live_home, quadra
from quadra_pipeline_tests.production import set_production

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


def test_24_hourly_backups_of_an_unchanged_system_add_only_their_manifests(service):
    """Each unchanged hour adds its ~3 KB manifest and sidecar: the backup catalogue, which each
    backup changes (its row), is streamed as an empty table, so the database streams to the same
    bytes and its chunks and the file list are all there already. (A 50 MB database over 24
    hours with the checks: benchmarks/bench_backup_hours.py and test_hourly.py.)"""
    first = service.create(partition_key="2026-11-29-00:00")
    one, one_on_disk = stored_bytes(service.repository.root), disk_bytes(service.repository.root)
    assert first.file_count > 5 and first.stored_bytes > 0
    for hour in range(1, 24):
        result = service.create(partition_key=f"2026-11-29-{hour:02d}:00")
        assert result.stored_bytes <= 64 << 10, result.stored_bytes  # (0 but when the catalogue takes a page)
    assert len(service.repository.backup_ids()) == 24
    assert (stored_bytes(service.repository.root) - one) / 23 <= 8 << 10
    assert (disk_bytes(service.repository.root) - one_on_disk) / 23 <= 16 << 10  # 4 KiB blocks
    # The catalogue's rows are not in the stream (it is rebuilt from the repository after a restore).
    last = service.repository.read_manifest(service.repository.backup_ids()[-1]).sources["parts"]["project-db"]
    assert last["tables"]["backups"] == 0 and last["left_out_data"] == ["backups"]
    assert last["method"] == "read transaction, streamed from the database file"


def test_signed_in_production_and_a_wrong_key_is_caught(service, monkeypatch):
    from quadra_pipeline.keys import generate

    set_production(monkeypatch, KEY)
    signed = BackupService(load_settings())
    backup_id = signed.create().manifest.backup_id
    assert signed.repository.read_manifest(backup_id).signature["algorithm"] == "ed25519"
    assert all(r.ok for r in signed.verify([backup_id]))
    monkeypatch.setenv("QUADRA_BACKUP_SIGNING_KEY", generate("ed25519").private_pem.decode())  # another key
    report, history = BackupService(load_settings()).verify([backup_id])
    assert not report.ok and any("signed with another key" in p for p in report.problems)
    assert not history.ok and any("head.json is signed with another key" in p for p in history.problems)


def test_a_backup_of_a_misconfigured_home_fails_and_names_it(tmp_path, monkeypatch):
    """Every source absent (QUADRA_HOME pointing at the wrong folder): no green, empty backup."""
    for name in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "QUADRA_ENV", "QUADRA_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QUADRA_HOME", str(tmp_path / "typo-home"))
    monkeypatch.setenv("QUADRA_BACKUP_DIR", str(tmp_path / "backups"))
    service = BackupService(load_settings())
    with pytest.raises(BackupError, match=f"nothing to back up: every source is absent or empty under the data home {tmp_path / 'typo-home'}"):
        service.create()
    assert service.repository.backup_ids() == []


def test_the_catalogue_catches_a_repository_rolled_back_by_one(service):
    """Delete the newest backup and put the head before it back (validly signed, from the
    repository's own past): the chain alone cannot tell, the catalogue can."""
    import shutil

    service.create()
    head = service.repository.history.head_path.read_bytes()
    newest = service.create().manifest.backup_id
    service.repository.manifest_path(newest).unlink()
    service.repository.sidecar_path(newest).unlink()
    service.repository.history.head_path.write_bytes(head)
    assert service.repository.history_problems() == []
    *_, history = service.verify()
    assert history.problems == [
        f"backup {newest} is in the catalogue but not in the repository, and no signed record says it was pruned "
        "(the repository was rolled back or replaced by an older copy?)"
    ]
    assert shutil  # (imported for symmetry with the other tests)


def test_prune_keeps_the_policy_and_the_newest_verified(service):
    repo = service.repository
    now = dt.datetime(2026, 11, 29, 12, tzinfo=dt.timezone.utc)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "f.txt"
        data.write_text("same content")
        from quadra_pipeline.backup import SourceFile

        made = {}
        for hours_ago in (24 * 800, 24 * 40 + 1, 24 * 40, 31, 30, 2, 1):  # oldest first, as hours pass
            when = now - dt.timedelta(hours=hours_ago)
            made[hours_ago] = repo.create([SourceFile("f.txt", data)], sources={}, created_at=when).manifest.backup_id
    dry = service.prune(dry_run=True, now=now)
    assert dry.deleted == [] and repo.backup_ids() == sorted(made.values())
    assert all(dry.plan.keep) and all(repo.verify(i, read="none").ok for i in made.values())
    # 1 h, 2 h, 30 h, 31 h: distinct hours within 7 days (hourly). 40 d and 40 d + 1 h: the same
    # ISO week, past the 30 daily days: only the newer stays (weekly). 800 d: past 24 months.
    expected_gone = {made[24 * 40 + 1], made[24 * 800]}
    assert set(dry.plan.delete) == expected_gone
    result = service.prune(now=now)
    assert set(result.deleted) == expected_gone
    assert set(repo.backup_ids()) == set(made.values()) - expected_gone
    assert repo.history_problems() == []  # one signed record says which left


def test_prune_prefers_a_verified_backup_and_survives_a_damaged_one(service):
    """Each backup is checked (not only the newest), so a day's representative is one that
    restores; a damaged backup whose id is not time-shaped does not crash retention."""
    from quadra_pipeline.backup import SourceFile

    repo = service.repository
    now = dt.datetime(2026, 11, 29, 12, tzinfo=dt.timezone.utc)
    data = Path(service.settings.home) / "checkpoints" / "prune-probe.txt"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("same content")
    day = now - dt.timedelta(days=20)  # past the hourly tier: one backup per day is kept
    other = data.with_name("prune-probe-2.txt")
    other.write_text("other content")
    older = repo.create([SourceFile("f.txt", data)], sources={}, created_at=day.replace(hour=1)).manifest.backup_id
    newer = repo.create([SourceFile("g.txt", other)], sources={}, created_at=day.replace(hour=9)).manifest.backup_id
    recent = repo.create([SourceFile("f.txt", data)], sources={}, created_at=now - dt.timedelta(hours=1)).manifest.backup_id
    [(sha, _, _)] = repo.read_manifest(newer).files[0].chunks
    repo.chunks.path(sha).unlink()  # the day's newest no longer verifies
    (repo.manifests_dir / "not-a-time-id.json").write_text("garbage")  # damaged, and no date in its name
    result = service.prune(dry_run=True, now=now)
    plan = result.plan
    assert older in plan.keep and newer in plan.delete and recent in plan.keep
    assert "not-a-time-id" in plan.keep or "not-a-time-id" in plan.delete  # dated by its file, no crash
    assert "neither its manifest nor its sidecar can be read" in result.gc_skipped  # collecting waits, safely
    assert any(reason.startswith("daily") for reason in plan.keep[older])
    data.unlink()
    other.unlink()


def test_restore_refuses_a_tampered_backup_and_writes_nothing(service, tmp_path):
    backup_id = service.create().manifest.backup_id
    manifest = service.repository.read_manifest(backup_id)
    victim = next(e for e in manifest.files if e.path.endswith(".db"))
    obj = service.repository.chunks.path(victim.chunks[0][0])
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(obj, 0o644)
    obj.write_bytes(bytes(data))
    # A flipped bit in a compressed chunk breaks its zstd frame; in a stored one, its SHA-256.
    with pytest.raises(IntegrityError, match="is corrupt|does not restore to its SHA-256"):
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
    assert [line.split()[:2] for line in verified.stdout.splitlines()] == [
        [created[0], "OK"], [created[1], "OK"], ["read", verified.stdout.splitlines()[2].split()[1]], ["history", "OK"]]
    # No option: every chunk of every backup re-read (each once); --all says the same, --sample a share.
    assert all(f"{c} of {c} chunks re-read" in verified.stdout for c in [line.split()[4] for line in verified.stdout.splitlines()[:2]])
    assert "distinct chunks re-read and re-hashed" in verified.stdout
    assert quadra(live_template, "backup", "verify", "--all", **env).stdout == verified.stdout
    assert "sampled: this hour's share" in quadra(live_template, "backup", "verify", "--sample", **env).stdout

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
    assert "history" in bad.stdout.splitlines()[-1] and "FAILED" in bad.stdout.splitlines()[-1]  # the head no longer matches
    assert bad.stderr.strip().splitlines() == ["quadra: error: 2 of 3 checks failed (the backups and their history)"]
    listed = quadra(live_template, "backup", "list", **env).stdout.splitlines()  # one bad manifest: the others still list
    assert listed[0].startswith(f"{created[0]}  2026") and listed[1].startswith(f"{created[1]}  DAMAGED")
    refused = quadra(live_template, "backup", "restore", created[1], "--target", tmp_path / "r", check=None, **env)
    assert refused.returncode != 0 and created[1] in refused.stderr and not (tmp_path / "r").exists()


def test_cli_keygen_pair_signs_and_its_public_key_alone_verifies(service, live_template, tmp_path):
    """`quadra backup keygen` writes a pair; backups made with the private key verify on a host
    that holds only the public key, and not with another public key."""
    made = quadra(live_template, "backup", "keygen", "--out", tmp_path / "k" / "backup.pem")
    assert "QUADRA_BACKUP_SIGNING_KEY_FILE=" in made.stdout and "QUADRA_BACKUP_VERIFY_KEY_FILE=" in made.stdout
    private, public = tmp_path / "k" / "backup.pem", tmp_path / "k" / "backup.pub"
    assert oct(private.stat().st_mode & 0o777) == "0o600" and b"PUBLIC KEY" in public.read_bytes()
    again = quadra(live_template, "backup", "keygen", "--out", private, check=1)
    assert "refusing to overwrite a key" in again.stderr
    quadra(live_template, "backup", "keygen", "--out", tmp_path / "k" / "other.pem")

    env = {"QUADRA_BACKUP_DIR": str(tmp_path / "signed")}
    backup_id = quadra(live_template, "backup", "create", QUADRA_BACKUP_SIGNING_KEY_FILE=str(private), **env).stdout.strip()
    document = json.loads((tmp_path / "signed" / "manifests" / f"{backup_id}.json").read_text())
    assert document["signature"]["algorithm"] == "ed25519"
    verifier = quadra(live_template, "backup", "verify", QUADRA_BACKUP_VERIFY_KEY_FILE=str(public), **env)
    assert [line.split()[:2] for line in verifier.stdout.splitlines() if not line.startswith("read")] == [[backup_id, "OK"], ["history", "OK"]]
    wrong = quadra(live_template, "backup", "verify", check=1, QUADRA_BACKUP_VERIFY_KEY_FILE=str(tmp_path / "k" / "other.pub"), **env)
    assert f"{backup_id}  FAILED" in wrong.stdout and "is signed with another key" in wrong.stdout
    # A verify-only host cannot write backups: it holds no private key.
    forger = quadra(live_template, "backup", "create", check=1, QUADRA_BACKUP_VERIFY_KEY_FILE=str(public), **env)
    assert "this host verifies backups and cannot write them" in forger.stderr and len(forger.stderr.strip().splitlines()) == 1
    assert quadra(live_template, "backup", "list", **env).stdout.count("\n") == 1  # nothing was added


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
        assert parts["project-db"]["kind"] == "postgresql" and parts["project-db"]["path"] == "project-db/quadra.sql"
        drill = restore_drill(service, backup_id, tmp_path / "drill")
        assert drill.ok, drill.problems
        assert drill.checked["project-db"]["restored_into"] == "scratch PostgreSQL database"
        assert drill.checked["project-db"]["rows"] > 0 and drill.checked["champion"]["version"] == 1
        with admin.connect() as conn:  # the scratch database is gone again
            left = conn.execute(sa.text("select count(*) from pg_database where datname like 'quadra_drill_%'")).scalar()
        assert left == 0

        # In place: restored into a new database, swapped in by renaming; the database as it was
        # is kept aside under another name. Refused (naming it) while another session uses it.
        live = sa.create_engine(os.environ["DATABASE_URL"], connect_args={"application_name": "a-dagster-run"})
        with live.begin() as conn:
            conn.execute(sa.text("delete from training_metrics"))
            conn.execute(sa.text("create table added_after_the_backup (x int)"))
        holder = live.connect()
        with pytest.raises(BackupError, match=r"cannot restore in place: database \S+ is in use by a-dagster-run \(postgres@"):
            service.restore(backup_id, in_place=True)
        with live.connect() as conn:  # untouched by the refused restore
            assert conn.execute(sa.text("select count(*) from training_metrics")).scalar() == 0
        with admin.connect() as conn:
            assert conn.execute(sa.text("select count(*) from pg_database where datname like '%_restore_%'")).scalar() == 0
        result = service.restore(backup_id, in_place=True, stop_writers=True)
        assert any("a-dagster-run" in s for s in result.stopped)
        holder.close()
        live.dispose()
        live = sa.create_engine(os.environ["DATABASE_URL"])
        with live.connect() as conn:
            assert conn.execute(sa.text("select count(*) from training_metrics")).scalar() == 3
            assert conn.execute(sa.text("select to_regclass('added_after_the_backup')")).scalar() is None  # exact
        live.dispose()
        [(live_name, aside_name)] = [line.split(" -> ") for line in (result.moved_aside / "databases.txt").read_text().splitlines()]
        with admin.connect() as conn:
            assert conn.execute(sa.text("select count(*) from pg_database where datname = :n"), {"n": aside_name}).scalar() == 1
            conn.execute(sa.text(f'DROP DATABASE "{aside_name}" WITH (FORCE)'))
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


def test_what_lives_in_s3_is_backed_up_from_a_refreshed_copy_and_the_drill_finds_the_champion(tmp_path, monkeypatch, s3_env):
    """MLflow's artifacts in an S3 bucket (its server's --artifacts-destination) and the shared
    object store in S3: the hourly backup copies what changed and backs up the copy; the drill
    loads the champion from it by SHA-256 and signature; an unchanged hour fetches nothing."""
    import shutil
    import uuid

    from quadra_pipeline.backup.drill import restore_drill
    from quadra_pipeline.objectstore import open_object_store

    for name in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "QUADRA_ENV", "QUADRA_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "s3-home"
    monkeypatch.setenv("QUADRA_HOME", str(home))
    monkeypatch.setenv("QUADRA_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.chdir(tmp_path)
    build_live_home(home, versions=1)
    bucket = s3_env.make_bucket(f"b-{uuid.uuid4().hex[:10]}")
    artifacts = open_object_store(f"s3://{bucket}/artifacts")
    for path in (home / "mlartifacts").rglob("*"):
        if path.is_file():
            artifacts.put_file(path.relative_to(home / "mlartifacts").as_posix(), path)
    shutil.move(home / "mlartifacts", tmp_path / "not-here-any-more")  # the server's disk: S3 alone has them
    shared = open_object_store(f"s3://{bucket}/shared")
    shared.put_bytes("corpus/0123456789abcdef/train.parquet", b"PAR1 a snapshot")
    monkeypatch.setenv("QUADRA_MLFLOW_ARTIFACTS_STORE", f"s3://{bucket}/artifacts")
    monkeypatch.setenv("QUADRA_OBJECT_STORE", f"s3://{bucket}/shared")
    said: list[str] = []
    service = BackupService(load_settings(), log_fn=said.append)

    first = service.create()
    paths = {entry.path for entry in first.manifest.files}
    assert "objects/corpus/0123456789abcdef/train.parquet" in paths
    assert any(p.startswith("mlartifacts/") and p.endswith("checkpoint.pt") for p in paths)
    drill = restore_drill(service, first.manifest.backup_id, tmp_path / "drill")
    assert drill.ok, drill.problems
    assert drill.checked["champion"]["version"] == 1 and drill.checked["champion"]["signature"] == "verified"

    said.clear()
    service.create()
    mirrored = [line for line in said if line.startswith("mirrored")]
    assert len(mirrored) == 2 and all(" 0 fetched (0 bytes)" in line for line in mirrored), mirrored
