"""The drill of PostgreSQL's point-in-time recovery, for real: a throwaway PostgreSQL 15 cluster of
our own (initdb; the test server at 127.0.0.1:5432 allows no replication connections), the
project's, MLflow's and Dagster's databases in it (MLflow and Dagster make their own schemas; a
trained, signed champion registered through MLflow), pg_receivewal streaming the WAL through a
slot as the stack's `wal` service does, base backups by `quadra wal base-backup`, and `quadra wal
drill` run as a user runs it (the CLI in a child process); then the `pitr_drill` check as
`base_backup_job` runs it.

PostgreSQL refuses to run as root, and tests here run as root: the cluster and the receiver run
as `nobody`, so the archive's WAL folder is nobody's, and the drill (as root) runs its server as
that owner (backup/wal_drill.py)."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from quadra_pipeline_tests.backup.live_home import DRILL_TIMES, build_live_home, quadra
from quadra_pipeline_tests.postgres import postgres_required


def _server_bindir() -> Path:
    from quadra_pipeline.backup.wal_drill import WalDrillError, server_bindir

    try:
        return server_bindir("15")
    except WalDrillError as exc:
        if postgres_required():
            pytest.fail(f"{exc} (required: CI or QUADRA_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(str(exc))


def _as_cluster_user() -> dict:
    """Popen arguments that run a PostgreSQL program as the cluster's owner (nobody under root)."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def _run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, check=False,
                          **_as_cluster_user(), **kwargs)
    assert done.returncode == 0, f"{argv[0]}: {done.stdout}{done.stderr}"
    return done


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def system() -> Iterator[SimpleNamespace]:
    """The cluster with its three databases, a home with two signed versions (the first the
    champion), the WAL streamed into the archive since before the first base backup."""
    bindir = _server_bindir()
    base = Path(tempfile.mkdtemp(prefix="quadra-wal-drill-test-"))  # not pytest's tmp: nobody must enter it
    tmp = base / "tmp"  # the CLI's TMPDIR: the drill's scratch folders go there (and must be gone)
    for folder in (base / "archive" / "wal", tmp):
        folder.mkdir(parents=True)
    if os.geteuid() == 0:
        for path in (base, base / "archive", base / "archive" / "wal"):
            os.chown(path, _as_cluster_user()["user"], _as_cluster_user()["group"])
    port = _free_port()
    data = base / "data"
    _run([bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync"])
    with open(data / "postgresql.conf", "a") as conf:  # initdb's pg_hba.conf allows local replication
        # (autovacuum off: no transaction but the test's own, so "nothing committed after TIME" is certain)
        conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{base}'\n"
                   "wal_level = replica\nautovacuum = off\n")
    _run([bindir / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "start"])
    receiver = None
    admin_url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    try:
        receive = [bindir / "pg_receivewal", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "--no-password"]
        _run([*receive, "--slot=quadra_wal", "--create-slot", "--if-not-exists"])
        with open(base / "receiver.log", "wb") as log:  # as the stack's wal service runs it
            receiver = subprocess.Popen([str(a) for a in [*receive, "-D", base / "archive" / "wal", "--slot=quadra_wal",
                                                            "--synchronous", "--status-interval=1"]],
                                        stdout=log, stderr=subprocess.STDOUT, **_as_cluster_user())
        admin = sa.create_engine(f"{admin_url}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            for name in ("quadra", "mlflow", "dagster"):
                connection.execute(sa.text(f"create database {name}"))
        admin.dispose()
        home = base / "home"
        env = {"DATABASE_URL": f"{admin_url}/quadra", "MLFLOW_TRACKING_URI": f"{admin_url}/mlflow",
               "QUADRA_WAL_ARCHIVE": str(base / "archive"), "QUADRA_WAL_URL": f"postgresql://postgres@127.0.0.1:{port}/postgres",
               "DAGSTER_PG_DB": "dagster", "QUADRA_BACKUP_DIR": str(base / "backups"), "TMPDIR": str(tmp)}
        with pytest.MonkeyPatch.context() as patch:
            for var in ("QUADRA_ENV", "QUADRA_SECRET_KEY", "QUADRA_MLFLOW_ARTIFACTS_STORE", "QUADRA_REPLICA"):
                patch.delenv(var, raising=False)
            patch.setenv("QUADRA_HOME", str(home))
            for name, value in env.items():
                if name != "TMPDIR":
                    patch.setenv(name, value)
            patch.chdir(base)
            build_live_home(home, versions=2)  # MLflow's own schema on PostgreSQL; version 1 the champion
            with _dagster_instance(port):  # Dagster's own schema in its database
                pass
            quadra(home, "wal", "base-backup", **env)
            yield SimpleNamespace(base=base, home=home, env=env, tmp=tmp, admin_url=admin_url, bindir=bindir)
    finally:
        if receiver is not None:
            receiver.terminate()
            receiver.wait(timeout=30)
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True,
                       timeout=120, check=False, **_as_cluster_user())
        shutil.rmtree(base, ignore_errors=True)


def _dagster_instance(port: int):
    import dagster as dg

    return dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_db": {
        "username": "postgres", "password": "", "hostname": "127.0.0.1", "port": port, "db_name": "dagster",
        "scheme": "postgresql+psycopg2"}}}})


def _rows(url: str) -> dict[str, int]:
    """Every table's row count, as the drill counts them (public schema)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            tables = connection.execute(sa.text("select table_name from information_schema.tables where table_schema = "
                                                "'public' and table_type = 'BASE TABLE'")).scalars().all()
            return {t: connection.execute(sa.text(f'select count(*) from "{t}"')).scalar_one() for t in tables}
    finally:
        engine.dispose()


def _drill(system: SimpleNamespace, *args: str, check: int) -> dict | str:
    done = quadra(system.home, "wal", "drill", *args, *(["--json"] if check == 0 else []), check=check, **system.env)
    return json.loads(done.stdout) if check == 0 else done.stdout + done.stderr


def _wait_until_streamed(system: SimpleNamespace, timeout: float = 60) -> None:
    """Until the receiver has flushed everything the server has written (a condition, not a
    sleep: under load the stream may take longer than any fixed pause)."""
    engine = sa.create_engine(f"{system.admin_url}/postgres")
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as connection:
                behind = connection.execute(sa.text(
                    "select pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn) from pg_stat_replication "
                    "where application_name = 'pg_receivewal'")).scalar()
            if behind is not None and behind <= 0:
                return
            assert time.monotonic() < deadline, f"the WAL receiver is still {behind} bytes behind after {timeout} s"
            time.sleep(0.1)
    finally:
        engine.dispose()


def _no_scratch_server_left(system: SimpleNamespace) -> None:
    assert not list(system.tmp.iterdir())  # the scratch folders are gone
    running = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(system.tmp) not in running  # and no server started in one is left running


@pytest.mark.slow
def test_the_drill_recovers_to_a_time_and_checks_every_database_and_the_champion(system):
    from quadra_pipeline.registry import ModelRegistry
    from quadra_pipeline.registry.service import promote
    from quadra_pipeline.settings import load_settings
    from quadra_pipeline.store import make_engine
    from quadra_pipeline_tests.registry.test_signing import flip_a_byte, stored_file

    project = sa.create_engine(f"{system.admin_url}/quadra")
    with project.begin() as connection:
        connection.execute(sa.text("create table drill_marks (n int primary key)"))
        connection.execute(sa.text("insert into drill_marks values (1), (2), (3)"))
    at_target = _rows(f"{system.admin_url}/quadra")
    time.sleep(1.0)
    when = dt.datetime.now(dt.UTC)
    time.sleep(1.0)
    with project.begin() as connection:  # after the target: must not be there
        connection.execute(sa.text("insert into drill_marks values (4), (5)"))
    project.dispose()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in system.env.items():
            if name != "TMPDIR":
                patch.setenv(name, value)
        patch.setenv("QUADRA_HOME", str(system.home))
        settings = load_settings()
        registry = ModelRegistry.from_settings(settings)
        engine = make_engine(settings.database_url)
        promote(registry, engine, 2, moved_by="test", reason="after the drill's instant")
        engine.dispose()
        v1_checkpoint = stored_file(registry, 1, "extra_files/checkpoint.pt")
    _wait_until_streamed(system)  # every commit above is in the archive (flushed by the receiver)
    archive = system.base / "archive"
    before = sorted(p.name for p in archive.iterdir())

    started = time.monotonic()
    report = _drill(system, "--to", when.isoformat(), check=0)
    seconds = time.monotonic() - started
    assert report["ok"], report
    passed = {c["name"] for c in report["checks"] if c["ok"]}
    assert {"base backup", "recovery", "database quadra", "database mlflow", "database dagster",
            "champion quadra-matrix version 1"} <= passed, passed
    assert report["champion_version"] == 1  # the champion at that time, not version 2 promoted since
    assert report["details"]["database quadra"]["table_rows"]["drill_marks"] == 3  # rows after the target are absent
    assert report["details"]["database quadra"]["table_rows"] == at_target
    assert dt.datetime.fromisoformat(report["recovered_to"]) <= when
    assert sorted(p.name for p in archive.iterdir()) == before  # the archive is left as it was (no wal-* set aside)
    _no_scratch_server_left(system)
    checked = (f"{len(report['checks'])} checks: base backup, recovery to T, 3 databases and their tables, the champion's "
               f"SHA-256, signature, load (recovery {report['details']['recovery_seconds']:.1f} s, the drill itself "
               f"{report['seconds']:.1f} s)")
    DRILL_TIMES.append(("point-in-time drill, PostgreSQL (`quadra wal drill --to T`, whole command)", seconds, checked))

    # As far as the WAL goes: the rows written after the target and the new champion are there.
    newest = _drill(system, check=0)
    assert newest["ok"] and newest["champion_version"] == 2, newest
    assert newest["details"]["database quadra"]["table_rows"]["drill_marks"] == 5

    # A time after the last transaction the archive holds (its newest WAL): PostgreSQL would end
    # with "recovery ended before configured recovery target was reached"; the drill recovers to
    # the end of the WAL instead, which is the state at that time, and says so.
    status = json.loads(quadra(system.home, "wal", "status", "--json", **system.env).stdout)
    last = _drill(system, "--to", status["continuous_to"], check=0)
    assert last["ok"] and last["champion_version"] == 2, last
    assert any("recovering to the end of the archived WAL instead" in note for note in last["notes"]), last["notes"]
    assert last["details"]["database quadra"]["table_rows"]["drill_marks"] == 5

    # The champion of that time altered in MLflow's artifact store: the drill fails, naming it.
    flip_a_byte(v1_checkpoint)
    try:
        failed = _drill(system, "--to", when.isoformat(), check=1)
    finally:
        flip_a_byte(v1_checkpoint)  # back as it was, for the other tests of this module
    assert "FAILED  champion quadra-matrix version 1: checkpoint SHA-256" in failed, failed
    assert "quadra: error: point-in-time drill failed (1 of " in failed
    _no_scratch_server_left(system)

    # A time the archive does not keep: refused in one line, nothing tried.
    refused = _drill(system, "--to", (when - dt.timedelta(hours=1)).isoformat(), check=1)
    assert "cannot recover to " in refused and "the archive keeps any moment from" in refused and refused.count("\n") == 1


@pytest.mark.slow
def test_pitr_drill_runs_after_the_base_backup_in_base_backup_job(system):
    """The asset check as base_backup_job runs it (in-process here), recording on the cluster's
    own Dagster database: the base backup, then the drill; non-blocking, with its figures."""
    import dagster as dg

    from quadra_pipeline.definitions import defs as load_defs

    with pytest.MonkeyPatch.context() as patch:
        for name, value in system.env.items():
            patch.setenv(name, value)  # (TMPDIR too: the check's scratch folder goes there)
        patch.setenv("QUADRA_HOME", str(system.home))
        tempfile.tempdir = None  # TMPDIR is read again
        try:
            job = load_defs().resolve_job_def("base_backup_job")
            with _dagster_instance(int(system.admin_url.rsplit(":", 1)[1])) as instance:
                result = job.execute_in_process(instance=instance, raise_on_error=False)
        finally:
            tempfile.tempdir = None
    evaluations = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
                   for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION}
    drill = evaluations["pitr_drill"]
    assert drill.passed, drill.description
    assert not drill.blocking
    metadata = {k: v.value for k, v in drill.metadata.items()}
    assert {"target", "recovered_to", "seconds", "champion_version", "checks"} <= set(metadata)
    assert metadata["champion_version"] in (1, 2)
    assert all(c["ok"] for c in metadata["checks"]) and len(metadata["checks"]) >= 6
    _no_scratch_server_left(system)
    DRILL_TIMES.append(("point-in-time drill, PostgreSQL (the pitr_drill check in base_backup_job)", metadata["seconds"],
                        f"{len(metadata['checks'])} checks, recovered to {metadata['target']}"))


def test_without_continuous_archiving_pitr_drill_is_skipped_with_the_asset(tmp_path, monkeypatch):
    """The embedded default: wal_archive materialises nothing, so its pitr_drill step is skipped
    (no evaluation, no failure) and base_backup_job succeeds."""
    import dagster as dg

    from quadra_pipeline.definitions import defs as load_defs

    for name in list(os.environ):
        if name.startswith("QUADRA_") or name in {"DATABASE_URL", "MLFLOW_TRACKING_URI"}:
            monkeypatch.delenv(name)
    monkeypatch.setenv("QUADRA_HOME", str(tmp_path / "home"))
    with dg.instance_for_test() as instance:
        result = load_defs().resolve_job_def("base_backup_job").execute_in_process(instance=instance)
    assert result.success
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
    skipped = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_SKIPPED}
    assert "wal_archive_pitr_drill" in skipped
