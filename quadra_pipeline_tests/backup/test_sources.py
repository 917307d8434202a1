"""What a backup takes from the live system: SQLite databases streamed in a read transaction,
file trees, no secrets. PostgreSQL dumps are in test_sources_postgres.py."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from quadra_pipeline.backup.errors import BackupError
from quadra_pipeline.backup.sources import (
    DEFAULT_EXCLUDE,
    REMOTE_NOTE,
    WORKDIR_PREFIX,
    SnapshotError,
    SourceFile,
    is_excluded,
)

from .source_homes import REVISION, Home, leftover_workdirs, make_sqlite, sha256, stream_to_file, write


# Empty home ---------------------------------------------------------------------------------


def test_empty_home_gives_an_empty_valid_snapshot(home: Home) -> None:
    with home.snapshot() as snapshot:
        assert snapshot.files == []
        sources = json.loads(json.dumps(snapshot.sources))  # JSON-able
        assert sources["absent"] == ["project-db", "mlflow-db", "mlartifacts", "checkpoints"]
        assert sources["files"] == 0 and sources["bytes"] == 0
        for name, part in sources["parts"].items():
            assert part["present"] is False and part["note"].startswith("absent: "), name
        assert sources["packages"]["quadra-pipeline"]
        assert set(sources["packages"]) >= {"quadra-pipeline", "mlflow", "torch"}
    assert leftover_workdirs(home.backups) == []
    assert not home.project_db.exists() and not home.mlflow_db.exists()  # never created by a backup


# SQLite -------------------------------------------------------------------------------------


def test_sqlite_databases_are_streamed_from_the_file_in_a_read_transaction(home: Home, tmp_path: Path) -> None:
    make_sqlite(home.project_db, 120)
    make_sqlite(home.mlflow_db, 30, wal=False, revision="mlflow-rev-1")
    with home.snapshot() as snapshot:
        assert [f.path for f in snapshot.files] == ["mlflow-db/mlflow.db", "project-db/quadra.db"]
        for f in snapshot.files:
            restored = stream_to_file(snapshot, f.path, tmp_path / f.path.replace("/", "-"))
            connection = sqlite3.connect(f"file:{restored}?mode=ro", uri=True)
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            connection.close()
        project = snapshot.sources["parts"]["project-db"]
        assert project["kind"] == "sqlite" and project["present"] is True
        assert project["location"] == f"sqlite:///{home.project_db}"
        assert project["method"] == "read transaction, streamed from the database file"
        assert project["alembic_revision"] == REVISION
        assert project["tables"] == {"alembic_version": 1, "t": 120}  # from the streamed pages
        assert project["journal_mode"] == "wal"
        assert project["path"] == "project-db/quadra.db"
        assert project["bytes"] == (tmp_path / "project-db-quadra.db").stat().st_size
        mlflow = snapshot.sources["parts"]["mlflow-db"]
        assert mlflow["alembic_revision"] == "mlflow-rev-1" and mlflow["tables"]["t"] == 30
        assert mlflow["journal_mode"] == "delete"
        assert snapshot.sources["absent"] == ["mlartifacts", "checkpoints"]
        directory = snapshot.directory
        assert directory is not None and directory.parent == home.backups
        assert list(directory.rglob("*.db")) == []  # no copy was made
    assert not directory.exists()


def test_database_without_migrations_has_no_revision(home: Home, tmp_path: Path) -> None:
    make_sqlite(home.project_db, 3, revision=None)
    with home.snapshot() as snapshot:
        stream_to_file(snapshot, "project-db/quadra.db", tmp_path / "q.db")
        assert snapshot.sources["parts"]["project-db"]["alembic_revision"] is None


def test_an_unchanged_database_streams_to_the_same_bytes(home: Home, tmp_path: Path) -> None:
    make_sqlite(home.project_db, 500)
    # A reader/writer keeps the WAL alive with committed pages not yet checkpointed.
    live = sqlite3.connect(home.project_db, isolation_level=None)
    live.execute("PRAGMA wal_autocheckpoint = 0")
    live.execute("INSERT INTO t (v) VALUES (-1)")
    assert Path(f"{home.project_db}-wal").stat().st_size > 0
    digests = []
    for index in range(3):
        with home.snapshot() as snapshot:
            digests.append(sha256(stream_to_file(snapshot, "project-db/quadra.db", tmp_path / f"{index}.db")))
    live.close()
    assert len(set(digests)) == 1, digests
    live = sqlite3.connect(home.project_db, isolation_level=None)
    live.execute("INSERT INTO t (v) VALUES (-2)")
    live.close()
    with home.snapshot() as snapshot:
        assert sha256(stream_to_file(snapshot, "project-db/quadra.db", tmp_path / "changed.db")) != digests[0]


WRITER = textwrap.dedent(
    """
    import os, sqlite3, sys
    path, mode, stop, ready = sys.argv[1:5]
    connection = sqlite3.connect(path, timeout=60, isolation_level=None)
    connection.execute(f"PRAGMA journal_mode = {mode}")
    n = connection.execute("SELECT count(*) FROM t").fetchone()[0]
    while not os.path.exists(stop):
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(
            "INSERT INTO t (v, pad) VALUES (?, randomblob(400))", [(n + i,) for i in range(10)]
        )
        connection.execute("COMMIT")
        n += 10
        if n >= 300 and not os.path.exists(ready):
            open(ready, "w").close()
    print(n)
    """
)


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_sqlite_snapshot_is_consistent_while_another_process_writes(home: Home, tmp_path: Path, journal_mode: str) -> None:
    make_sqlite(home.project_db, 0, wal=journal_mode == "wal", revision=None)
    stop, ready = tmp_path / "stop", tmp_path / "ready"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(home.project_db), journal_mode, str(stop), str(ready)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert writer.poll() is None, "the writer died"
            assert time.monotonic() < deadline, "the writer never got going"
            time.sleep(0.01)
        counts = []
        for index in range(5):
            with home.snapshot() as snapshot:
                copy = stream_to_file(snapshot, "project-db/quadra.db", tmp_path / f"snapshot-{index}.db")
                connection = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
                try:
                    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                    count, low, high, distinct = connection.execute(
                        "SELECT count(*), min(v), max(v), count(DISTINCT v) FROM t"
                    ).fetchone()
                finally:
                    connection.close()
            # A state the writer committed: whole transactions of 10 rows, 0..count-1, no gap.
            assert count % 10 == 0 and count >= 300
            assert (low, high, distinct) == (0, count - 1, count)
            assert snapshot.sources["parts"]["project-db"]["tables"]["t"] == count
            counts.append(count)
            time.sleep(0.02)
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    final = int(out.strip())
    assert counts == sorted(counts) and counts[-1] <= final
    assert counts[0] < counts[-1], f"the writer made no progress during the snapshots: {counts}"


def test_a_snapshot_leaves_this_processs_own_connections_working(home: Home, tmp_path: Path) -> None:
    """SQLite's locks are POSIX locks, dropped when a process closes any descriptor of the file:
    the snapshot must not open the database in this process, or the reader's exit would take
    this process's connections for gone and delete the WAL under them ("disk I/O error")."""
    make_sqlite(home.project_db, 50)
    mine = sqlite3.connect(home.project_db, isolation_level=None)
    mine.execute("INSERT INTO t (v) VALUES (-1)")
    for index in range(2):
        with home.snapshot() as snapshot:
            stream_to_file(snapshot, "project-db/quadra.db", tmp_path / f"{index}.db")
        assert Path(f"{home.project_db}-wal").exists() and Path(f"{home.project_db}-shm").exists()
        mine.execute("INSERT INTO t (v) VALUES (?)", (index,))
        assert mine.execute("SELECT count(*) FROM t").fetchone()[0] == 52 + index
    mine.close()


def test_corrupt_sqlite_database_is_a_clear_error(home: Home, tmp_path: Path) -> None:
    write(home.project_db, b"this is not a database at all" * 200)
    with home.snapshot() as snapshot, pytest.raises(SnapshotError) as caught:
        stream_to_file(snapshot, "project-db/quadra.db", tmp_path / "q.db")
    message = str(caught.value)
    assert message == f"cannot back up the project database sqlite:///{home.project_db}: file is not a database"
    assert isinstance(caught.value, BackupError)
    assert leftover_workdirs(home.backups) == []


def test_sqlite_database_with_damaged_b_tree_pages_is_refused(home: Home, tmp_path: Path) -> None:
    make_sqlite(home.project_db, 2000, wal=False, revision=None)
    connection = sqlite3.connect(home.project_db)
    connection.execute("CREATE INDEX t_v ON t (v)")
    connection.commit()
    root = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 't_v'").fetchone()[0]
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    connection.close()
    with open(home.project_db, "r+b") as f:  # scribble over the index's root page
        f.seek((root - 1) * page_size + 8)
        f.write(b"\xff" * 64)
    with home.snapshot() as snapshot, pytest.raises(SnapshotError) as caught:
        stream_to_file(snapshot, "project-db/quadra.db", tmp_path / "q.db")
    message = str(caught.value)
    assert message.startswith(
        f"cannot back up the project database sqlite:///{home.project_db}: its b-tree pages are damaged (index t_v: page "
    )
    assert message.endswith("PRAGMA integrity_check says more") and "\n" not in message


def test_in_memory_and_unsupported_databases_are_refused(home: Home) -> None:
    for memory in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(SnapshotError) as caught:
            home.snapshot(database_url=memory)
        assert str(caught.value) == (
            f"cannot back up the project database {memory}: only a SQLite database file can be backed up"
        )
    with pytest.raises(SnapshotError) as caught:
        home.snapshot(database_url="mysql://app:hunter2@db.example/quadra")
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)
    assert "only sqlite:/// and postgresql://" in str(caught.value)
    with pytest.raises(SnapshotError, match="MLflow tracking store .*file:///srv/mlruns"):
        home.snapshot(mlflow_tracking_uri="file:///srv/mlruns")
    assert leftover_workdirs(home.backups) == []


# MLflow -------------------------------------------------------------------------------------


def test_remote_mlflow_server_backs_up_only_the_local_artifacts(home: Home) -> None:
    write(home.artifacts / "1" / "run" / "artifacts" / "model.pt", b"weights")
    with home.snapshot(mlflow_tracking_uri="https://alice:t0ps3cret@mlflow.example.com:8443/") as snapshot:
        part = snapshot.sources["parts"]["mlflow-db"]
        assert part["kind"] == "remote" and part["note"] == REMOTE_NOTE
        assert part["location"] == "https://alice:***@mlflow.example.com:8443/"
        assert "t0ps3cret" not in json.dumps(snapshot.sources)
        assert [f.path for f in snapshot.files] == ["mlartifacts/1/run/artifacts/model.pt"]
    shutil.rmtree(home.artifacts)
    with home.snapshot(mlflow_tracking_uri="http://mlflow:5000") as snapshot:
        assert snapshot.files == []
        assert "mlartifacts" in snapshot.sources["absent"]


# File trees ---------------------------------------------------------------------------------


def test_trees_keep_relative_paths_and_never_store_secrets(home: Home, tmp_path: Path) -> None:
    outside_secret = write(tmp_path / "elsewhere" / "secret.txt", "do not follow me")
    a, c = home.artifacts, home.checkpoints
    write(a / "1" / "abc" / "artifacts" / "model" / "checkpoint.pt", b"w" * 1000)
    write(a / "1" / "abc" / "artifacts" / "metrics.json", "{}")
    write(a / ".env", "QUADRA_SECRET_KEY=leak")
    write(a / "1" / "key.pem", "-----BEGIN PRIVATE KEY-----")
    write(a / "1" / ".env.production", "DATABASE_URL=postgresql://u:p@h/d")
    write(a / "1" / ".env.example", "QUADRA_SECRET_KEY=change-me")  # a template: kept
    write(c / "step_100.pt", b"c" * 500)
    write(c / "nested" / "step_200.pt", b"d" * 300)
    write(c / ".env", "QUADRA_SECRET_KEY=leak")
    write(c / "key.pem", "-----BEGIN PRIVATE KEY-----")
    write(c / "server.KEY", "secret")  # case does not matter
    write(c / "id_rsa", "ssh key")
    write(c / "id_ed25519.pub", "ssh key")
    write(c / "bundle.p12", b"\x00")
    write(c / "secrets" / "token.txt", "hunter2")
    write(c / "step_300.pt.tmp", b"half written")
    write(c / ".step_400.pt.tmp", b"half written")
    (c / "link_to_secret").symlink_to(outside_secret)
    (c / "link_to_dir").symlink_to(outside_secret.parent, target_is_directory=True)
    (c / "broken_link").symlink_to(tmp_path / "missing")
    os.chmod(c / "step_100.pt", 0o600)

    with home.snapshot() as snapshot:
        by_path = {f.path: f for f in snapshot.files}
        assert list(by_path) == [
            "checkpoints/nested/step_200.pt",
            "checkpoints/step_100.pt",
            "mlartifacts/1/.env.example",
            "mlartifacts/1/abc/artifacts/metrics.json",
            "mlartifacts/1/abc/artifacts/model/checkpoint.pt",
        ]
        assert by_path["checkpoints/step_100.pt"].source == (c / "step_100.pt").resolve()
        assert by_path["checkpoints/step_100.pt"].mode == 0o600
        assert by_path["checkpoints/nested/step_200.pt"].mode == 0o644
        for f in snapshot.files:
            assert b"leak" not in f.source.read_bytes() and b"PRIVATE KEY" not in f.source.read_bytes()
        checkpoints = snapshot.sources["parts"]["checkpoints"]
        assert checkpoints["files"] == 2 and checkpoints["bytes"] == 800
        assert checkpoints["excluded"] == [
            ".env", "bundle.p12", "id_ed25519.pub", "id_rsa", "key.pem", "secrets/", "server.KEY",
        ]
        assert checkpoints["skipped_symlinks"] == ["broken_link", "link_to_dir", "link_to_secret"]
        assert checkpoints["skipped_temporary"] == [".step_400.pt.tmp", "step_300.pt.tmp"]
        assert checkpoints["skipped_special"] == []
        artifacts = snapshot.sources["parts"]["mlartifacts"]
        assert artifacts["excluded"] == [".env", "1/.env.production", "1/key.pem"]
        assert artifacts["files"] == 3 and artifacts["bytes"] == 1000 + 2 + len("QUADRA_SECRET_KEY=change-me")
        assert snapshot.sources["files"] == 5
        assert snapshot.sources["absent"] == ["project-db", "mlflow-db"]


def test_exclude_patterns() -> None:
    assert is_excluded(".env") and is_excluded("a/b/.env") and is_excluded(".ENV")
    assert is_excluded(".env.local") and not is_excluded(".env.example")
    assert is_excluded("deep/tls/server.pem") and is_excluded("x.key") and is_excluded("id_rsa.pub")
    assert is_excluded("secrets", is_dir=True) and not is_excluded("secrets")  # folders only
    assert not is_excluded("checkpoint.pt") and not is_excluded("environment.yaml")
    custom = (*DEFAULT_EXCLUDE, "*.log", "runs/*/cache/", "!keep.key")
    assert is_excluded("train.log", custom) and not is_excluded("keep.key", custom)
    assert is_excluded("runs/7/cache", custom, is_dir=True) and not is_excluded("other/7/cache", custom, is_dir=True)


def test_custom_exclude_and_extra_dirs(home: Home, tmp_path: Path) -> None:
    write(home.checkpoints / "a.pt")
    write(home.checkpoints / "train.log")
    write(home.checkpoints / ".env")
    state = tmp_path / "state"
    write(state / "trainer.json", "{}")
    write(state / "debug.log")
    with home.snapshot(extra_dirs={"state": state}, exclude=(*DEFAULT_EXCLUDE, "*.log")) as snapshot:
        assert [f.path for f in snapshot.files] == ["checkpoints/a.pt", "state/trainer.json"]
        assert snapshot.sources["parts"]["state"]["excluded"] == ["debug.log"]
    with home.snapshot(exclude=()) as snapshot:  # the caller may opt out; temp files never
        assert ".env" in {Path(f.path).name for f in snapshot.files}
    for bad in ("checkpoints", "../up", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="extra folder name"):
            home.snapshot(extra_dirs={bad: state})


def test_a_symlinked_root_is_followed_but_nothing_inside(home: Home, tmp_path: Path) -> None:
    real = tmp_path / "big-disk" / "checkpoints"
    write(real / "a.pt", b"a")
    (real / "loop").symlink_to(real, target_is_directory=True)
    home.root.mkdir(parents=True)
    home.checkpoints.symlink_to(real, target_is_directory=True)
    with home.snapshot() as snapshot:
        assert [f.path for f in snapshot.files] == ["checkpoints/a.pt"]
        part = snapshot.sources["parts"]["checkpoints"]
        assert part["resolved"] == str(real.resolve()) and part["skipped_symlinks"] == ["loop"]


def test_special_files_are_skipped(home: Home) -> None:
    write(home.checkpoints / "a.pt")
    os.mkfifo(home.checkpoints / "pipe")
    with home.snapshot() as snapshot:
        assert [f.path for f in snapshot.files] == ["checkpoints/a.pt"]
        assert snapshot.sources["parts"]["checkpoints"]["skipped_special"] == ["pipe"]


def test_a_root_that_is_a_file_is_an_error(home: Home) -> None:
    write(home.checkpoints, b"oops")
    with pytest.raises(SnapshotError, match=r"cannot back up checkpoints: .*checkpoints is not a folder"):
        home.snapshot()


def test_live_database_inside_a_tree_is_never_copied_raw(home: Home) -> None:
    mlflow_db = make_sqlite(home.artifacts / "mlflow.db", 5)
    write(home.artifacts / "0" / "meta.yaml", "x")
    with home.snapshot(mlflow_tracking_uri=f"sqlite:///{mlflow_db}") as snapshot:
        assert [f.path for f in snapshot.files] == ["mlartifacts/0/meta.yaml", "mlflow-db/mlflow.db"]
        assert snapshot.sources["parts"]["mlartifacts"]["skipped_internal"] == ["mlflow.db"]


def test_the_snapshot_workdir_inside_a_tree_is_skipped(home: Home) -> None:
    make_sqlite(home.project_db, 5)
    write(home.checkpoints / "a.pt")
    with home.snapshot(workdir=home.checkpoints / "backups") as snapshot:
        assert [f.path for f in snapshot.files] == ["checkpoints/a.pt", "project-db/quadra.db"]
        assert snapshot.sources["parts"]["checkpoints"]["skipped_internal"] == ["backups/"]


UNREADABLE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from quadra_pipeline.backup.sources import SnapshotError, take_snapshot
    home = Path(sys.argv[1])
    try:
        with take_snapshot(
            database_url=f"sqlite:///{home / 'quadra.db'}",
            mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
            mlflow_artifact_root=home / "mlartifacts",
            checkpoint_dir=home / "checkpoints",
            workdir=home / "backups",
        ) as snapshot:
            for source in snapshot.files:  # the databases are read when stored, as a backup does
                if hasattr(source, "open"):
                    with source.open() as stream:
                        stream.read()
    except SnapshotError as exc:
        print(exc)
    else:
        print("NO ERROR")
    """
)


def run_without_read_override(home: Path) -> str:
    """Run a snapshot in a child process to which file permissions apply (root loses the
    capabilities that bypass them); its one-line error message."""
    argv = [sys.executable, "-c", UNREADABLE, str(home)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop CAP_DAC_OVERRIDE")
        caps = "-dac_override,-dac_read_search"
        argv = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_an_unreadable_file_is_a_clear_error_naming_it(home: Home) -> None:
    write(home.checkpoints / "ok.pt")
    locked = write(home.checkpoints / "nested" / "locked.pt", b"x")
    locked.chmod(0)
    message = run_without_read_override(home.root)
    assert message == f"cannot back up checkpoints: cannot read {locked}: Permission denied"
    assert leftover_workdirs(home.backups) == []


def test_an_unreadable_folder_is_a_clear_error_naming_it(home: Home) -> None:
    locked = home.artifacts / "1"
    write(locked / "a.pt")
    locked.chmod(0)
    try:
        message = run_without_read_override(home.root)
    finally:
        locked.chmod(0o755)
    assert message == f"cannot back up mlartifacts: cannot read the folder {locked}: Permission denied"


def test_an_unreadable_database_is_a_clear_error_naming_it(home: Home) -> None:
    make_sqlite(home.project_db, 3)
    home.project_db.chmod(0)
    message = run_without_read_override(home.root)
    assert message == (
        f"cannot back up the project database sqlite:///{home.project_db}: "
        f"cannot read {home.project_db}: Permission denied"
    )


# Temporary folder ---------------------------------------------------------------------------


def test_temporary_copies_are_removed_on_close_and_on_error(home: Home) -> None:
    make_sqlite(home.project_db, 3)
    snapshot = home.snapshot()
    directory = snapshot.directory
    assert directory is not None and directory.exists()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700  # database copies are private
    snapshot.close()
    snapshot.close()  # idempotent
    assert not directory.exists()

    write(home.checkpoints, b"not a folder")  # fails after the database copy was made
    with pytest.raises(SnapshotError):
        home.snapshot()
    assert leftover_workdirs(home.backups) == []


def test_stale_temporary_folders_of_killed_snapshots_are_cleaned(home: Home) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    import socket

    host = socket.gethostname()
    stale = home.backups / f"{WORKDIR_PREFIX}{host}-{dead_pid}-abc123"
    alive = home.backups / f"{WORKDIR_PREFIX}{host}-{os.getppid()}-def456"  # our parent: alive
    other_host = home.backups / f"{WORKDIR_PREFIX}otherhost-{dead_pid}-ghi789"
    for folder in (stale, alive, other_host):
        write(folder / "project-db" / "quadra.db", b"old copy")
    with home.snapshot():
        pass
    assert not stale.exists()
    assert alive.exists() and other_host.exists()


def test_source_file_defaults() -> None:
    f = SourceFile("checkpoints/a.pt", Path("/x/a.pt"))
    assert f.mode == 0o644
    with pytest.raises(AttributeError):
        f.path = "other"  # type: ignore[misc]
